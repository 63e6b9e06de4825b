//! Prometheus metrics for the broker, served as text on the admin endpoint's `/metrics`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ApiLabels {
    pub(crate) api: &'static str,
}

#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) requests: Family<ApiLabels, Counter>,
    pub(crate) request_errors: Family<ApiLabels, Counter>,
    pub(crate) request_seconds: Family<ApiLabels, Histogram>,
    pub(crate) bytes_in: Counter,
    pub(crate) bytes_out: Counter,
    pub(crate) connections: Gauge,
    pub(crate) partitions: Gauge,
    pub(crate) log_size_bytes: Gauge,
    pub(crate) cleaner: CleanerMetrics,
}

/// The log cleaner's counters (`runnel_cleaner_*`).
#[derive(Debug, Default)]
pub(crate) struct CleanerMetrics {
    pub(crate) passes: Counter,
    pub(crate) errors: Counter,
    pub(crate) bytes_read: Counter,
    pub(crate) bytes_written: Counter,
    pub(crate) segments_rewritten: Counter,
    pub(crate) records_removed: Counter,
    pub(crate) tombstones_removed: Counter,
}

impl CleanerMetrics {
    fn register(&self, registry: &mut Registry) {
        let counters: [(&str, &str, &Counter); 7] = [
            ("cleaner_passes", "Log cleaner passes completed", &self.passes),
            ("cleaner_errors", "Log cleaner passes that failed", &self.errors),
            ("cleaner_read_bytes", "Bytes the log cleaner read (key map and rewrite)", &self.bytes_read),
            ("cleaner_written_bytes", "Bytes of cleaned segments swapped in", &self.bytes_written),
            ("cleaner_segments_rewritten", "Segments replaced by a cleaned version", &self.segments_rewritten),
            ("cleaner_records_removed", "Records removed because a later record has their key", &self.records_removed),
            ("cleaner_tombstones_removed", "Tombstones removed after their delete horizon", &self.tombstones_removed),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
    }
}

fn latency_histogram() -> Histogram {
    // 50 µs to ~26 s: covers a cached fetch as well as a long poll.
    Histogram::new(exponential_buckets(0.00005, 2.0, 20))
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut root = Registry::default();
        // The standard `process_*` metrics carry no prefix, so dashboards and tools that know
        // them (and `runnel bench`, which reads the broker's CPU time from them) find them.
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("runnel");
        let requests = Family::<ApiLabels, Counter>::default();
        let request_errors = Family::<ApiLabels, Counter>::default();
        let request_seconds =
            Family::<ApiLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let bytes_in = Counter::default();
        let bytes_out = Counter::default();
        let connections = Gauge::default();
        let partitions = Gauge::default();
        let log_size_bytes = Gauge::default();
        registry.register("kafka_requests", "Kafka requests handled, by API", requests.clone());
        registry.register(
            "kafka_request_errors",
            "Kafka requests that failed or were refused, by API",
            request_errors.clone(),
        );
        registry.register("kafka_request_duration_seconds", "Kafka request latency, by API", request_seconds.clone());
        registry.register("kafka_bytes_in", "Bytes of Kafka requests received", bytes_in.clone());
        registry.register("kafka_bytes_out", "Bytes of Kafka responses sent", bytes_out.clone());
        registry.register("kafka_connections", "Open Kafka client connections", connections.clone());
        registry.register("partitions", "Partitions hosted by this broker", partitions.clone());
        registry.register("log_size_bytes", "Bytes of log segments on disk", log_size_bytes.clone());
        let cleaner = CleanerMetrics::default();
        cleaner.register(registry);
        Metrics {
            registry: root,
            requests,
            request_errors,
            request_seconds,
            bytes_in,
            bytes_out,
            connections,
            partitions,
            log_size_bytes,
            cleaner,
        }
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The Prometheus client libraries' usual process metrics, read on each scrape: CPU time
/// (user + system, all threads), resident memory, open file descriptors. Linux only for the
/// last two (from `/proc/self`); a value that cannot be read is left out, not reported as 0.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(seconds) = process_cpu_seconds() {
            encode_one(
                &mut encoder,
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                ConstCounter::new(seconds),
            )?;
        }
        if let Some(bytes) = process::resident_bytes() {
            encode_one(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                ConstGauge::new(bytes),
            )?;
        }
        if let Some(fds) = process::open_fds() {
            encode_one(&mut encoder, "process_open_fds", "Number of open file descriptors", ConstGauge::new(fds))?;
        }
        Ok(())
    }
}

fn encode_one(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    let descriptor = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(descriptor)
}

/// User + system CPU time of this whole process (every thread, live or ended), in seconds;
/// what `process_cpu_seconds_total` reports (`runnel bench` reads its own the same way).
pub fn process_cpu_seconds() -> Option<f64> {
    process::cpu_seconds()
}

mod process {
    //! Two system calls need `unsafe`; they are confined here.
    #![allow(unsafe_code)]

    /// User + system CPU time of the whole process (every thread, live or ended), in seconds.
    pub(super) fn cpu_seconds() -> Option<f64> {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
        // SAFETY: getrusage writes a whole `rusage` into the pointer it is given and nothing
        // else; we read it only when it reports success.
        let usage = unsafe {
            if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
                return None;
            }
            usage.assume_init()
        };
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Some(seconds(usage.ru_utime) + seconds(usage.ru_stime))
    }

    /// Resident set size from `/proc/self/statm` (its second field, in pages).
    pub(super) fn resident_bytes() -> Option<i64> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        // SAFETY: sysconf only reads a system constant.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        (page_size > 0).then(|| pages.saturating_mul(page_size as i64))
    }

    pub(super) fn open_fds() -> Option<i64> {
        let entries = std::fs::read_dir("/proc/self/fd").ok()?;
        // The directory's own descriptor, open while it is read, is one of the entries.
        Some((entries.count() as i64 - 1).max(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
            let (metric, value) = line.split_once(' ')?;
            (metric == name).then(|| value.trim().parse().ok()).flatten()
        })
    }

    #[test]
    fn process_metrics_are_unprefixed_and_follow_the_process() {
        let metrics = Metrics::new();
        let before = sample(&metrics.render(), "process_cpu_seconds_total").expect("process_cpu_seconds_total");
        // Burn some CPU the counter must see (getrusage counts at least to the scheduler tick).
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(200) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        }
        std::hint::black_box(x);
        let text = metrics.render();
        let after = sample(&text, "process_cpu_seconds_total").expect("process_cpu_seconds_total");
        assert!(after >= before + 0.1, "200 ms of spinning moved the CPU counter {before} → {after}");
        #[cfg(target_os = "linux")]
        {
            let resident = sample(&text, "process_resident_memory_bytes").expect("resident memory");
            assert!(resident > 1e6, "a test process holds more than 1 MB: {resident}");
            let file = std::fs::File::open("/proc/self/stat").expect("open a file");
            let fds = sample(&metrics.render(), "process_open_fds").expect("open fds");
            assert!(fds >= 1.0, "at least the file just opened: {fds}");
            drop(file);
        }
        // Broker metrics keep their prefix.
        assert!(text.contains("runnel_kafka_bytes_in_total"), "{text}");
        assert!(!text.contains("runnel_process_"), "{text}");
    }
}
