//! The librdkafka side of the benchmark: topic setup, produce, consume and end-to-end latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::cpu::CpuMeter;
use crate::native_batch::{BatchConsumer, BatchProducer, RECORDS_PER_CALL};
use crate::{BenchArgs, Latency, Throughput};

/// Every wait in the benchmark ends: a stuck broker fails the run instead of hanging it.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The `-X KEY=VALUE` overrides, applied last.
pub(crate) trait Overrides {
    fn extend_from(&mut self, properties: &[(String, String)]) -> &mut Self;
}

impl Overrides for ClientConfig {
    fn extend_from(&mut self, properties: &[(String, String)]) -> &mut Self {
        for (key, value) in properties {
            self.set(key, value);
        }
        self
    }
}

struct Counting {
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

fn progress(total: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(label.to_string());
    bar
}

/// Creates the benchmark topic with the wanted partitions (a fresh name unless one is given).
pub(crate) fn prepare_topic(args: &BenchArgs) -> anyhow::Result<String> {
    let topic = args.topic.clone().unwrap_or_else(|| {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        format!("runnel-bench-{nanos}")
    });
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &args.brokers).create().context("creating admin client")?;
    let runtime = std::thread::spawn({
        let topic = topic.clone();
        let partitions = args.partitions;
        move || -> anyhow::Result<()> {
            let new_topic = NewTopic::new(&topic, partitions, TopicReplication::Fixed(1));
            let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            let results = futures_block_on(admin.create_topics(&[new_topic], &options))?;
            for result in results {
                match result {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
                }
            }
            Ok(())
        }
    });
    runtime.join().map_err(|_| anyhow::anyhow!("topic setup panicked"))??;
    Ok(topic)
}

/// Deletes a topic the benchmark created for itself (not one named with `--topic`): a run leaves
/// gigabytes, and a disk that fills under later runs slows them (it did, 2026-12-02). A failure
/// is reported and the run goes on.
pub(crate) fn remove_scratch_topic(args: &BenchArgs, topic: &str) {
    if args.topic.is_some() {
        return;
    }
    let removed = (|| -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &args.brokers).create().context("creating admin client")?;
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in futures_block_on(admin.delete_topics(&[topic], &options))? {
            if let Err((name, code)) = result {
                anyhow::bail!("{name}: {code}");
            }
        }
        Ok(())
    })();
    if let Err(e) = removed {
        eprintln!("warning: could not delete the benchmark topic {topic}: {e:#}");
    }
}

/// A minimal executor for the admin client's one future: park until woken.
fn futures_block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context as TaskContext, Poll, Wake, Waker};
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut context = TaskContext::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

fn producer(args: &BenchArgs, linger_ms: &str) -> anyhow::Result<BaseProducer<Counting>> {
    let context = Counting { delivered: AtomicU64::new(0), failed: AtomicU64::new(0) };
    ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("acks", args.acks.as_config())
        .set("compression.type", &args.compression)
        .set("linger.ms", linger_ms)
        // One produce batch per partition of up to 1 MB, the broker's default max.message.bytes.
        .set("batch.size", "1000000")
        .set("batch.num.messages", "100000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("socket.send.buffer.bytes", "4194304")
        // Failures still come back as reports; success is every record leaving the queue on
        // flush without one. Saves a callback per record in the client.
        .set("delivery.report.only.error", "true")
        .set("enable.idempotence", "false")
        .extend_from(&args.client_config)
        .create_with_context(context)
        .context("creating producer")
}

fn payload(size: usize) -> Vec<u8> {
    // Varied bytes so compression has realistic (not absurd) work to do.
    (0..size).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

/// Sends `args.records` records (split over `args.clients` producers) and waits until each is
/// acknowledged.
pub(crate) fn produce(args: &BenchArgs, topic: &str) -> anyhow::Result<Throughput> {
    let clients = u64::from(args.clients.max(1));
    let bar = progress(args.records, "produce");
    // As for consumers: the clock starts once every producer is connected and knows the
    // partition leaders, so client start-up is not counted as the broker's time.
    let (ready, go) = (std::sync::Barrier::new(clients as usize + 1), std::sync::Barrier::new(clients as usize + 1));
    let mut meter = None;
    let mut started = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..clients)
            .map(|client| {
                let share = args.records / clients + u64::from(client < args.records % clients);
                let (bar, ready, go) = (&bar, &ready, &go);
                let start = move || {
                    ready.wait();
                    go.wait();
                };
                scope.spawn(move || produce_share(args, topic, share, client as i32, bar, &start))
            })
            .collect();
        ready.wait();
        meter = Some(CpuMeter::start(&args.admin));
        started = Instant::now();
        go.wait();
        for worker in workers {
            worker.join().map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
        }
        Ok(())
    })?;
    let elapsed = started.elapsed();
    let cpu = meter.map(CpuMeter::stop);
    bar.finish_and_clear();
    Ok(Throughput { bytes: args.records * args.record_size as u64, records: args.records, elapsed, cpu })
}

/// One producer's share: batches of [`RECORDS_PER_CALL`] records, each batch to the next
/// partition in turn (what librdkafka's sticky partitioner does for keyless records). `start`
/// is called once the producer knows the topic's leaders, before the first record (always,
/// even when the producer could not be made, so a caller waiting on it is not left hanging).
fn produce_share(
    args: &BenchArgs,
    topic: &str,
    records: u64,
    client: i32,
    bar: &ProgressBar,
    start: &dyn Fn(),
) -> anyhow::Result<()> {
    // Leaked once per producer (a record's worth of bytes): librdkafka points at it, uncopied,
    // until each record is sent, so it must outlive the producer.
    let value: &'static [u8] = Box::leak(payload(args.record_size).into_boxed_slice());
    let producer = producer(args, "5").and_then(|producer| {
        producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .with_context(|| format!("reading the metadata of {topic}"))?;
        Ok(producer)
    });
    start();
    let producer = producer?;
    let mut batch = BatchProducer::new(&producer, topic)?;
    let partitions = args.partitions.max(1);
    let mut partition = client % partitions;
    let mut sent = 0u64;
    while sent < records {
        let count = (records - sent).min(RECORDS_PER_CALL as u64);
        batch.send_shared(partition, value, count as usize, STALL_TIMEOUT)?;
        partition = (partition + 1) % partitions;
        sent += count;
        bar.inc(count);
        producer.poll(Duration::ZERO);
    }
    drop(batch);
    wait_delivered(&producer, records)
}

fn wait_delivered(producer: &BaseProducer<Counting>, records: u64) -> anyhow::Result<()> {
    producer.flush(STALL_TIMEOUT).context("flushing producer")?;
    let failed = producer.context().failed.load(Ordering::Relaxed);
    let left = producer.in_flight_count();
    anyhow::ensure!(failed == 0 && left == 0, "of {records} records, {failed} failed and {left} are undelivered");
    Ok(())
}

fn consumer(args: &BenchArgs, topic: &str, offset: Offset, partitions: &[i32]) -> anyhow::Result<BaseConsumer> {
    let consumer = ready_consumer(args, topic)?;
    assign(&consumer, topic, offset, partitions)?;
    Ok(consumer)
}

/// A consumer that knows `topic`'s partition leaders, not yet assigned anything.
///
/// Why the metadata first: a partition assigned before librdkafka knows its leader gets its
/// start offset looked up by a retry timer, 500 ms later ("no current leader for partition:
/// (re)starting offset query timer"). That half second of an idle client was inside every
/// consume run, whatever the broker did: half the time of a 1M-record run on this machine.
/// With the leaders known, the lookup goes out at once (first record ≈ 3 ms after `assign`).
fn ready_consumer(args: &BenchArgs, topic: &str) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", "runnel-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        // Responses of at most 16 MB: librdkafka mallocs one receive buffer per response, and
        // glibc maps anything over 32 MiB afresh; a profile with 50 MB / 10 MB-per-partition
        // fetches had the consumers' network threads spend 23 % of their time faulting in new
        // pages (1 % with these sizes).
        .set("fetch.max.bytes", "16777216")
        .set("max.partition.fetch.bytes", "2097152")
        // Keep fetching while the application drains: librdkafka otherwise pauses a partition
        // once 100k records or 64 MB are queued and backs off for fetch.queue.backoff.ms (1 s).
        .set("queued.min.messages", "1000000")
        .set("queued.max.messages.kbytes", "1048576")
        .set("fetch.queue.backoff.ms", "5")
        .set("socket.receive.buffer.bytes", "4194304")
        .extend_from(&args.client_config)
        .create()
        .context("creating consumer")?;
    consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("reading the metadata of {topic}"))?;
    Ok(consumer)
}

fn assign(consumer: &BaseConsumer, topic: &str, offset: Offset, partitions: &[i32]) -> anyhow::Result<()> {
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        assignment.add_partition_offset(topic, *partition, offset)?;
    }
    consumer.assign(&assignment)?;
    Ok(())
}

/// Records in `topic` now: the sum over its partitions of high watermark minus log start.
pub(crate) fn records_in(args: &BenchArgs, topic: &str) -> anyhow::Result<u64> {
    let consumer = consumer(args, topic, Offset::Beginning, &[])?;
    let mut total = 0u64;
    for partition in 0..args.partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .with_context(|| format!("reading the offsets of {topic}-{partition}"))?;
        total += u64::try_from(high - low).unwrap_or(0);
    }
    Ok(total)
}

/// Reads `args.records` records from the beginning of `topic`, the partitions split over
/// `args.clients` consumers.
pub(crate) fn consume(args: &BenchArgs, topic: &str) -> anyhow::Result<Throughput> {
    let clients = (args.clients.max(1) as usize).min(args.partitions.max(1) as usize);
    let shares: Vec<Vec<i32>> =
        (0..clients).map(|c| (0..args.partitions).filter(|p| *p as usize % clients == c).collect()).collect();
    let bar = progress(args.records, "consume");
    let received = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    // The clock starts once every consumer is connected and knows the leaders (client
    // start-up, not the broker's work); the offset lookups and every fetch are inside it.
    let ready = std::sync::Barrier::new(shares.len() + 1);
    let go = std::sync::Barrier::new(shares.len() + 1);
    let mut meter = None;
    let mut started = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let workers: Vec<_> = shares
            .iter()
            .map(|partitions| {
                let (received, bytes, bar, ready, go) = (&received, &bytes, &bar, &ready, &go);
                scope.spawn(move || -> anyhow::Result<()> {
                    let consumer = ready_consumer(args, topic);
                    ready.wait();
                    go.wait();
                    let consumer = consumer?;
                    assign(&consumer, topic, Offset::Beginning, partitions)?;
                    let mut batch = BatchConsumer::new(&consumer)?;
                    let mut last_progress = Instant::now();
                    let mut total = 0;
                    while total < args.records {
                        // Shared counters are bumped once per batch, not per record: two
                        // threads bouncing a cache line would measure that, not the broker.
                        let mut batch_bytes = 0u64;
                        let n = batch.poll(Duration::from_millis(50), |value| batch_bytes += value.len() as u64)?;
                        let before = total;
                        total = received.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                        bytes.fetch_add(batch_bytes, Ordering::Relaxed);
                        // Idle here but the other consumers progressed: not stalled.
                        if total > before {
                            last_progress = Instant::now();
                            bar.set_position(total);
                        }
                        anyhow::ensure!(last_progress.elapsed() < STALL_TIMEOUT, "consumer stalled at {total} records");
                    }
                    Ok(())
                })
            })
            .collect();
        ready.wait();
        meter = Some(CpuMeter::start(&args.admin));
        started = Instant::now();
        go.wait();
        for worker in workers {
            worker.join().map_err(|_| anyhow::anyhow!("consumer thread panicked"))??;
        }
        Ok(())
    })?;
    let elapsed = started.elapsed();
    let cpu = meter.map(CpuMeter::stop);
    bar.finish_and_clear();
    Ok(Throughput { bytes: bytes.into_inner(), records: received.into_inner(), elapsed, cpu })
}

/// Records stamped and sent per call at most in the e2e run: small, so a record waits in the
/// client for no more than a few microseconds before librdkafka has it.
const E2E_RECORDS_PER_CALL: u64 = 64;

/// How the producers of a pipeline run send.
#[derive(Clone, Copy, Debug)]
enum Sending {
    /// At this many records/s, each stamped with its send time, `linger.ms=0`.
    Paced(u64),
    /// As fast as the bulk produce run does (`linger.ms=5`, shared unstamped values).
    FlatOut,
}

/// Produces at `rate` records/s with the send time in each value, consumes concurrently, and
/// records each record's produce-to-consume latency. `args.clients` producers share the rate
/// (each sends to every partition in turn) and as many consumers share the partitions, as in
/// the throughput runs, so the rate a run asks for is one those clients can carry.
pub(crate) fn end_to_end(args: &BenchArgs, topic: &str, rate: u64) -> anyhow::Result<Latency> {
    pipeline(args, topic, Sending::Paced(rate)).map(|(latency, _)| latency)
}

/// The pipeline's own peak: the same producers and consumers as [`end_to_end`], running at
/// once, the producers flat out as in the produce run; records/s from the first send until
/// the consumers hold every record. On a machine whose cores the clients share with the
/// broker this is lower than either one-way peak, since both directions share the cores.
pub(crate) fn pipeline_peak(args: &BenchArgs, topic: &str) -> anyhow::Result<Throughput> {
    let (latency, elapsed) = pipeline(args, topic, Sending::FlatOut)?;
    Ok(Throughput { bytes: args.records * args.record_size as u64, records: args.records, elapsed, cpu: latency.cpu })
}

/// Runs producers and consumers at once; returns the latency of stamped records (empty when
/// flat out) and the time from the first send until the consumers had every record.
fn pipeline(args: &BenchArgs, topic: &str, sending: Sending) -> anyhow::Result<(Latency, Duration)> {
    let clients = (args.clients.max(1) as usize).min(args.partitions.max(1) as usize);
    let shares: Vec<Vec<i32>> =
        (0..clients).map(|c| (0..args.partitions).filter(|p| *p as usize % clients == c).collect()).collect();
    let records = args.records;
    let received = AtomicU64::new(0);
    // Every consumer has reached the end of its partitions before anything is sent.
    let ready = std::sync::Barrier::new(clients + 1);
    let bar = progress(records, "e2e");
    let hidden = ProgressBar::hidden();
    let stamped = matches!(sending, Sending::Paced(_));
    let mut started = Instant::now();
    let mut meter = None;
    let histograms = std::thread::scope(|scope| -> anyhow::Result<Vec<hdrhistogram::Histogram<u64>>> {
        let consumers: Vec<_> = shares
            .iter()
            .map(|partitions| {
                let (received, ready, bar) = (&received, &ready, &bar);
                scope.spawn(move || -> anyhow::Result<hdrhistogram::Histogram<u64>> {
                    let warmed = consumer(args, topic, Offset::End, partitions).and_then(|consumer| {
                        let warmup = Instant::now();
                        let mut batch = BatchConsumer::new(&consumer)?;
                        while warmup.elapsed() < Duration::from_secs(2) {
                            batch.poll(Duration::from_millis(50), |_| {})?;
                        }
                        drop(batch);
                        Ok(consumer)
                    });
                    ready.wait();
                    measure_latency(&warmed?, records, received, bar, stamped)
                })
            })
            .collect();
        ready.wait();
        meter = Some(CpuMeter::start(&args.admin));
        started = Instant::now();
        let senders: Vec<_> = (0..clients as u64)
            .map(|client| {
                let share = records / clients as u64 + u64::from(client < records % clients as u64);
                let hidden = &hidden;
                match sending {
                    Sending::Paced(rate) => {
                        let share_rate = (rate / clients as u64 + u64::from(client < rate % clients as u64)).max(1);
                        scope.spawn(move || send_paced(args, topic, share, share_rate, client as i32))
                    }
                    Sending::FlatOut => {
                        scope.spawn(move || produce_share(args, topic, share, client as i32, hidden, &|| {}))
                    }
                }
            })
            .collect();
        for sender in senders {
            sender.join().map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
        }
        consumers.into_iter().map(|c| c.join().map_err(|_| anyhow::anyhow!("consumer thread panicked"))?).collect()
    })?;
    let elapsed = started.elapsed();
    let cpu = meter.map(CpuMeter::stop);
    bar.finish_and_clear();
    let mut histogram = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for part in &histograms {
        histogram.add(part)?;
    }
    let latency = Latency {
        p50_us: histogram.value_at_quantile(0.50),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
        max_us: histogram.max(),
        count: histogram.len(),
        cpu,
        bytes: records * args.record_size as u64,
    };
    Ok((latency, elapsed))
}

/// One e2e consumer: the latency of every record it reads, until all consumers together have
/// read `records`.
fn measure_latency(
    consumer: &BaseConsumer,
    records: u64,
    received: &AtomicU64,
    bar: &ProgressBar,
    stamped: bool,
) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    let mut batch = BatchConsumer::new(consumer)?;
    let mut histogram = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut last_progress = Instant::now();
    let mut total = 0;
    while total < records {
        let mut failure = None;
        let n = batch.poll(Duration::from_millis(50), |value| {
            if !stamped {
                return;
            }
            let Some(stamp) = value.get(..8) else { return };
            let stamp = u64::from_be_bytes(stamp.try_into().expect("8 bytes"));
            let latency = now_us().saturating_sub(stamp).max(1);
            if let Err(e) = histogram.record(latency.min(60_000_000)) {
                failure.get_or_insert(e);
            }
        });
        let n = n.with_context(|| format!("after {total} records"))?;
        if let Some(e) = failure {
            return Err(e.into());
        }
        let before = total;
        total = received.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if total > before {
            last_progress = Instant::now();
            bar.set_position(total.min(records));
        }
        anyhow::ensure!(last_progress.elapsed() < STALL_TIMEOUT, "consumer stalled at {total} records");
    }
    Ok(histogram)
}

/// Shortest time between two wake-ups of an e2e sender. Waking for every record at 100k+
/// records/s cost the client more CPU than the broker spent (a `nanosleep`, a wake-up of
/// librdkafka's thread and a produce request of a few records every ~60 µs); an application
/// that produces at such rates hands its client records in bursts. A record is stamped when it
/// is handed over, so the quantum adds nothing to the latency measured.
const PACE_QUANTUM: Duration = Duration::from_micros(500);

/// An e2e sender: wakes when the next record is due (at most every [`PACE_QUANTUM`]), stamps
/// what is due with the time now, up to [`E2E_RECORDS_PER_CALL`] records per call, and hands
/// them to librdkafka (which copies them), partitions in turn from `first_partition`;
/// `linger.ms=0`.
fn send_paced(args: &BenchArgs, topic: &str, records: u64, rate: u64, first_partition: i32) -> anyhow::Result<()> {
    let producer = producer(args, "0")?;
    let mut batch = BatchProducer::new(&producer, topic)?;
    let size = args.record_size.max(8);
    let template = payload(size);
    let mut values: Vec<u8> = template.iter().copied().cycle().take(size * E2E_RECORDS_PER_CALL as usize).collect();
    let partitions = args.partitions.max(1);
    let mut partition = first_partition % partitions;
    let started = Instant::now();
    let mut woke = started;
    let mut sent = 0u64;
    while sent < records {
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64).min(records);
        if due <= sent {
            // Sleep until the next record is due (not the last one sent: that one is past).
            let wake = next_wake(started, sent + 1, rate, woke);
            let now = Instant::now();
            if wake > now {
                std::thread::sleep(wake - now);
            }
            woke = Instant::now();
            continue;
        }
        let count = (due - sent).min(E2E_RECORDS_PER_CALL) as usize;
        let stamp = now_us().to_be_bytes();
        for value in values.chunks_exact_mut(size).take(count) {
            value[..8].copy_from_slice(&stamp);
        }
        batch.send_copied(partition, &values[..count * size], size, STALL_TIMEOUT)?;
        partition = (partition + 1) % partitions;
        sent += count as u64;
        producer.poll(Duration::ZERO);
    }
    drop(batch);
    wait_delivered(&producer, records)
}

/// When a sender that last woke at `woke` wakes next: when record number `record` (counted
/// from 0 at `started`) is due at `rate`, but not before [`PACE_QUANTUM`] has passed.
fn next_wake(started: Instant, record: u64, rate: u64, woke: Instant) -> Instant {
    let due = started + Duration::from_secs_f64(record as f64 / rate.max(1) as f64);
    due.max(woke + PACE_QUANTUM)
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_wakes_when_the_next_record_is_due_but_not_sooner_than_its_quantum() {
        let started = Instant::now();
        // At 20 records/s record 1 (the second) is due 50 ms after the start: later than the
        // quantum, so the due time decides.
        assert_eq!(next_wake(started, 1, 20, started), started + Duration::from_millis(50));
        // At 1M records/s record 10 is due at 10 µs: the quantum since the last wake decides.
        let woke = started + Duration::from_millis(3);
        assert_eq!(next_wake(started, 10, 1_000_000, woke), woke + PACE_QUANTUM);
        // A record due after the quantum is waited for exactly.
        assert_eq!(next_wake(started, 5_000, 1_000_000, woke), started + Duration::from_millis(5));
    }
}
