//! Prometheus metrics for the broker, served as text on the admin endpoint's `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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
        let mut registry = Registry::with_prefix("runnel");
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
        cleaner.register(&mut registry);
        Metrics {
            registry,
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
