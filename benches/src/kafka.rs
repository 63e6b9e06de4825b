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
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::{BenchArgs, Latency, Throughput};

/// Every wait in the benchmark ends: a stuck broker fails the run instead of hanging it.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

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
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("enable.idempotence", "false")
        .create_with_context(context)
        .context("creating producer")
}

fn payload(size: usize) -> Vec<u8> {
    // Varied bytes so compression has realistic (not absurd) work to do.
    (0..size).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

/// Sends `args.records` records (split over `args.clients` producers) and waits until each is
/// acknowledged; `rate` caps records/s.
pub(crate) fn produce(args: &BenchArgs, topic: &str, rate: Option<u64>) -> anyhow::Result<Throughput> {
    let clients = u64::from(args.clients.max(1));
    let bar = progress(args.records, "produce");
    let started = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..clients)
            .map(|client| {
                let share = args.records / clients + u64::from(client < args.records % clients);
                let bar = &bar;
                scope.spawn(move || produce_share(args, topic, share, rate.map(|r| (r / clients).max(1)), bar))
            })
            .collect();
        for worker in workers {
            worker.join().map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
        }
        Ok(())
    })?;
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    Ok(Throughput { bytes: args.records * args.record_size as u64, records: args.records, elapsed })
}

fn produce_share(
    args: &BenchArgs,
    topic: &str,
    records: u64,
    rate: Option<u64>,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let producer = producer(args, "5")?;
    let value = payload(args.record_size);
    let started = Instant::now();
    for i in 0..records {
        if let Some(rate) = rate {
            pace(started, i, rate);
        }
        send(&producer, topic, &value)?;
        if i % 10_000 == 0 {
            bar.inc(10_000.min(records - i));
            producer.poll(Duration::ZERO);
        }
    }
    wait_delivered(&producer, records)
}

fn send(producer: &BaseProducer<Counting>, topic: &str, value: &[u8]) -> anyhow::Result<()> {
    let deadline = Instant::now() + STALL_TIMEOUT;
    loop {
        match producer.send(BaseRecord::<(), [u8]>::to(topic).payload(value)) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) if Instant::now() < deadline => {
                producer.poll(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e).context("producing"),
        }
    }
}

fn wait_delivered(producer: &BaseProducer<Counting>, records: u64) -> anyhow::Result<()> {
    producer.flush(STALL_TIMEOUT).context("flushing producer")?;
    let context = producer.context();
    let failed = context.failed.load(Ordering::Relaxed);
    let delivered = context.delivered.load(Ordering::Relaxed);
    anyhow::ensure!(failed == 0 && delivered == records, "{delivered} of {records} records delivered, {failed} failed");
    Ok(())
}

fn pace(started: Instant, sent: u64, rate: u64) {
    let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
    let now = Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}

fn consumer(args: &BenchArgs, topic: &str, offset: Offset, partitions: &[i32]) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", "runnel-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .create()
        .context("creating consumer")?;
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        assignment.add_partition_offset(topic, *partition, offset)?;
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
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
    let started = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let workers: Vec<_> = shares
            .iter()
            .map(|partitions| {
                let (received, bytes, bar) = (&received, &bytes, &bar);
                scope.spawn(move || -> anyhow::Result<()> {
                    let consumer = consumer(args, topic, Offset::Beginning, partitions)?;
                    let mut last_progress = Instant::now();
                    // Counted locally and published every PUBLISH_EVERY records: two threads
                    // bumping shared atomics per record would bounce a cache line between the
                    // cores and measure that instead of the broker.
                    const PUBLISH_EVERY: u64 = 1_000;
                    let (mut local_records, mut local_bytes) = (0u64, 0u64);
                    let mut total = 0;
                    while total < args.records {
                        match consumer.poll(Duration::from_millis(50)) {
                            Some(Ok(message)) => {
                                local_records += 1;
                                local_bytes += message.payload_len() as u64;
                                if local_records == PUBLISH_EVERY {
                                    total = received.fetch_add(local_records, Ordering::Relaxed) + local_records;
                                    bytes.fetch_add(local_bytes, Ordering::Relaxed);
                                    (local_records, local_bytes) = (0, 0);
                                    last_progress = Instant::now();
                                    if total % 10_000 < PUBLISH_EVERY {
                                        bar.set_position(total);
                                    }
                                } else {
                                    total += 1;
                                }
                            }
                            Some(Err(e)) => anyhow::bail!("consume error: {e}"),
                            None => {
                                // Idle: publish, and see whether the other consumers progressed.
                                let before = total;
                                total = received.fetch_add(local_records, Ordering::Relaxed) + local_records;
                                bytes.fetch_add(local_bytes, Ordering::Relaxed);
                                (local_records, local_bytes) = (0, 0);
                                if total > before {
                                    last_progress = Instant::now();
                                }
                                anyhow::ensure!(
                                    last_progress.elapsed() < STALL_TIMEOUT,
                                    "consumer stalled at {total} records"
                                );
                            }
                        }
                    }
                    received.fetch_add(local_records, Ordering::Relaxed);
                    bytes.fetch_add(local_bytes, Ordering::Relaxed);
                    Ok(())
                })
            })
            .collect();
        for worker in workers {
            worker.join().map_err(|_| anyhow::anyhow!("consumer thread panicked"))??;
        }
        Ok(())
    })?;
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    Ok(Throughput { bytes: bytes.into_inner(), records: received.into_inner(), elapsed })
}

/// Produces at `rate` records/s with the send time in each value, consumes concurrently, and
/// records each record's produce-to-consume latency.
pub(crate) fn end_to_end(args: &BenchArgs, topic: &str, rate: u64) -> anyhow::Result<Latency> {
    let all: Vec<i32> = (0..args.partitions).collect();
    let consumer = consumer(args, topic, Offset::End, &all)?;
    // Let the consumer reach the end before anything is sent, so nothing is missed.
    let warmup = Instant::now();
    while warmup.elapsed() < Duration::from_secs(2) {
        consumer.poll(Duration::from_millis(50));
    }
    let records = args.records;
    let producer_args = args.clone();
    let topic_name = topic.to_string();
    let sender = std::thread::spawn(move || -> anyhow::Result<()> {
        let producer = producer(&producer_args, "0")?;
        let mut value = payload(producer_args.record_size.max(8));
        let started = Instant::now();
        for i in 0..records {
            pace(started, i, rate);
            value[..8].copy_from_slice(&now_us().to_be_bytes());
            send(&producer, &topic_name, &value)?;
            producer.poll(Duration::ZERO);
        }
        wait_delivered(&producer, records)
    });
    let mut histogram = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let bar = progress(records, "e2e");
    let mut received = 0u64;
    let mut last_progress = Instant::now();
    while received < records {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let Some(value) = message.payload().filter(|v| v.len() >= 8) else { continue };
                let mut stamp = [0u8; 8];
                stamp.copy_from_slice(&value[..8]);
                let latency = now_us().saturating_sub(u64::from_be_bytes(stamp)).max(1);
                histogram.record(latency.min(60_000_000))?;
                received += 1;
                last_progress = Instant::now();
                if received.is_multiple_of(1_000) {
                    bar.set_position(received);
                }
            }
            Some(Err(e)) => anyhow::bail!("consume error after {received} records: {e}"),
            None => anyhow::ensure!(last_progress.elapsed() < STALL_TIMEOUT, "consumer stalled at {received} records"),
        }
    }
    bar.finish_and_clear();
    sender.join().map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
    Ok(Latency {
        p50_us: histogram.value_at_quantile(0.50),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
        max_us: histogram.max(),
        count: histogram.len(),
    })
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}
