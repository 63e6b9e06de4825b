//! Consumer-group throughput: the same topic read by a group of one member and by a group of
//! several, each member a librdkafka consumer that subscribes (JoinGroup/SyncGroup, heartbeats,
//! auto-commit) rather than assigning partitions itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::kafka::Overrides as _;
use crate::{BenchArgs, Throughput};

/// Every wait ends: a stuck rebalance fails the run instead of hanging it.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// One group run: how long the group took to form (first record seen) and the throughput from
/// then until every record was read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupRun {
    pub(crate) members: u32,
    pub(crate) join: Duration,
    pub(crate) throughput: Throughput,
}

fn member(args: &BenchArgs, group: &str, topic: &str) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        // Commits are part of what a group costs: keep librdkafka's default auto-commit, often.
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("fetch.wait.max.ms", "100")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .set("session.timeout.ms", "10000")
        .extend_from(&args.client_config)
        .create()
        .context("creating group member")?;
    consumer.subscribe(&[topic]).context("subscribing")?;
    Ok(consumer)
}

/// Reads every record of `topic` (`args.records` of them) with a fresh group of `members`.
pub(crate) fn consume_with_group(args: &BenchArgs, topic: &str, members: u32) -> anyhow::Result<GroupRun> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let group = format!("runnel-bench-group-{members}-{nanos}");
    let received = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let first_record_us = AtomicU64::new(u64::MAX);
    let members = members.max(1);
    // All members subscribe before any polls, so one rebalance forms the whole group (the
    // broker's group.initial.rebalance.delay.ms gathers them) instead of one per arrival.
    let ready = Arc::new(Barrier::new(members as usize));
    let started = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..members)
            .map(|_| {
                let (received, bytes, first, ready, group) =
                    (&received, &bytes, &first_record_us, ready.clone(), group.as_str());
                scope.spawn(move || -> anyhow::Result<()> {
                    let consumer = member(args, group, topic)?;
                    ready.wait();
                    let mut last_progress = Instant::now();
                    while received.load(Ordering::Relaxed) < args.records {
                        match consumer.poll(Duration::from_millis(50)) {
                            Some(Ok(message)) => {
                                if first.load(Ordering::Relaxed) == u64::MAX {
                                    let _ = first.compare_exchange(
                                        u64::MAX,
                                        started.elapsed().as_micros() as u64,
                                        Ordering::Relaxed,
                                        Ordering::Relaxed,
                                    );
                                }
                                received.fetch_add(1, Ordering::Relaxed);
                                bytes.fetch_add(message.payload_len() as u64, Ordering::Relaxed);
                                last_progress = Instant::now();
                            }
                            Some(Err(e)) => anyhow::bail!("group member error: {e}"),
                            None => anyhow::ensure!(
                                last_progress.elapsed() < STALL_TIMEOUT,
                                "group of {members} stalled at {} records",
                                received.load(Ordering::Relaxed)
                            ),
                        }
                    }
                    // Leave cleanly so the next run's group is not slowed by this one's members.
                    consumer.unsubscribe();
                    Ok(())
                })
            })
            .collect();
        for worker in workers {
            worker.join().map_err(|_| anyhow::anyhow!("group member thread panicked"))??;
        }
        Ok(())
    })?;
    let total = started.elapsed();
    let join = Duration::from_micros(first_record_us.load(Ordering::Relaxed).min(total.as_micros() as u64));
    let records = received.into_inner();
    anyhow::ensure!(records >= args.records, "group of {members} read {records} of {} records", args.records);
    Ok(GroupRun {
        members,
        join,
        throughput: Throughput { bytes: bytes.into_inner(), records, elapsed: total.saturating_sub(join), cpu: None },
    })
}
