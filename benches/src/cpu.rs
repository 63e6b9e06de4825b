//! The CPU time a run cost: the benchmark's own clients (this process) and the broker (its
//! `process_cpu_seconds_total` on the admin endpoint's `/metrics`).
//!
//! Why: on a machine whose cores the clients share with the broker, a throughput or a latency
//! figure alone cannot say which side set it. With both CPU times beside it, a run says how
//! many cores the clients and the broker each needed per GB, and so what a target would need
//! on this machine.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The CPU time spent during one measured phase.
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    pub wall: Duration,
    /// CPU-seconds of this process (every librdkafka thread and the benchmark's own).
    pub clients_s: f64,
    /// CPU-seconds of the broker, when its `/metrics` could be read before and after.
    pub broker_s: Option<f64>,
    /// Cores this process may run on.
    pub cores: usize,
    /// The whole machine meanwhile (`/proc/stat`), when readable.
    pub machine: Option<MachineUse>,
}

/// Shares of the machine's CPU time during a phase, from `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MachineUse {
    /// Running anything (user, system, interrupts), of all the time there was.
    pub busy: f64,
    /// Taken by the hypervisor for other guests ("steal"): a virtual machine whose host is
    /// busy runs every phase slower, the ceiling included, and its ratios are noise.
    pub stolen: f64,
}

impl CpuUse {
    /// The fraction of all cores the clients and the broker kept busy together.
    pub fn busy(&self) -> Option<f64> {
        let broker = self.broker_s?;
        Some((self.clients_s + broker) / (self.wall.as_secs_f64().max(1e-9) * self.cores as f64))
    }

    /// CPU-seconds per GB moved, for the clients and for the broker.
    pub fn per_gb(&self, bytes: u64) -> (f64, Option<f64>) {
        let gb = (bytes as f64 / 1e9).max(1e-9);
        (self.clients_s / gb, self.broker_s.map(|b| b / gb))
    }

    /// One line: both CPU times, how busy the cores were, and the cost per GB moved.
    pub fn describe(&self, bytes: u64) -> String {
        match self.describe_machine() {
            Some(machine) => format!("{}; {machine}", self.describe_processes(bytes)),
            None => self.describe_processes(bytes),
        }
    }

    /// The machine's share busy and stolen meanwhile, as a line of its own.
    pub fn describe_machine(&self) -> Option<String> {
        self.machine
            .map(|m| format!("machine {:.0} % busy, {:.0} % stolen by the host", m.busy * 100.0, m.stolen * 100.0))
    }

    fn describe_processes(&self, bytes: u64) -> String {
        let (clients_gb, broker_gb) = self.per_gb(bytes);
        match (self.broker_s, broker_gb, self.busy()) {
            (Some(broker), Some(broker_gb), Some(busy)) => format!(
                "cpu: clients {:.2} s, broker {:.2} s in {:.2} s = {:.0} % of {} cores; per GB: clients {:.2} s, broker {:.2} s",
                self.clients_s,
                broker,
                self.wall.as_secs_f64(),
                busy * 100.0,
                self.cores,
                clients_gb,
                broker_gb
            ),
            _ => format!(
                "cpu: clients {:.2} s in {:.2} s ({} cores; per GB {:.2} s); broker unknown (its /metrics was not readable at --admin)",
                self.clients_s,
                self.wall.as_secs_f64(),
                self.cores,
                clients_gb
            ),
        }
    }
}

/// Started at the beginning of a phase, stopped at its end.
pub(crate) struct CpuMeter {
    admin: String,
    started: Instant,
    clients_s: f64,
    broker_s: Option<f64>,
    machine: Option<StatTicks>,
}

impl CpuMeter {
    pub(crate) fn start(admin: &str) -> CpuMeter {
        let broker_s = broker_cpu_seconds(admin);
        CpuMeter {
            admin: admin.to_string(),
            started: Instant::now(),
            clients_s: own_cpu_seconds(),
            broker_s,
            machine: machine_ticks(),
        }
    }

    pub(crate) fn stop(self) -> CpuUse {
        let machine = self.machine.zip(machine_ticks()).and_then(|(before, after)| after.since(before));
        let wall = self.started.elapsed();
        let clients_s = own_cpu_seconds() - self.clients_s;
        let broker_s = match (self.broker_s, broker_cpu_seconds(&self.admin)) {
            // A broker restarted in between reads lower: not this phase's figure.
            (Some(before), Some(after)) if after >= before => Some(after - before),
            _ => None,
        };
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        CpuUse { wall, clients_s: clients_s.max(0.0), broker_s, cores, machine }
    }
}

/// User + system CPU time of this whole process (live and ended threads), in seconds.
fn own_cpu_seconds() -> f64 {
    runnel_broker::process_cpu_seconds().unwrap_or(0.0)
}

/// The machine-wide CPU counters of `/proc/stat`'s first line, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StatTicks {
    busy: u64,
    stolen: u64,
    total: u64,
}

impl StatTicks {
    /// Parses `cpu  user nice system idle iowait irq softirq steal ...` (guest time is already
    /// inside user); `None` for anything else.
    fn parse(line: &str) -> Option<StatTicks> {
        let mut fields = line.split_whitespace();
        if fields.next()? != "cpu" {
            return None;
        }
        let values: Vec<u64> = fields.take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
        let [user, nice, system, idle, iowait, irq, softirq, stolen] = values.try_into().ok()?;
        let busy = user + nice + system + irq + softirq;
        Some(StatTicks { busy, stolen, total: busy + idle + iowait + stolen })
    }

    fn since(self, before: StatTicks) -> Option<MachineUse> {
        let total = self.total.checked_sub(before.total).filter(|t| *t > 0)? as f64;
        Some(MachineUse {
            busy: self.busy.checked_sub(before.busy)? as f64 / total,
            stolen: self.stolen.checked_sub(before.stolen)? as f64 / total,
        })
    }
}

fn machine_ticks() -> Option<StatTicks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    StatTicks::parse(stat.lines().next()?)
}

/// How long a scrape of the broker's metrics may take before the run goes on without it.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// The broker's `process_cpu_seconds_total`, or `None` when the admin endpoint does not
/// answer or has no such metric (another Kafka broker, a wrong `--admin`).
fn broker_cpu_seconds(admin: &str) -> Option<f64> {
    let text = scrape_metrics(admin).ok()?;
    metric_value(&text, "process_cpu_seconds_total")
}

fn scrape_metrics(admin: &str) -> anyhow::Result<String> {
    let base = admin.trim_end_matches('/');
    let base = if base.contains("://") { base.to_string() } else { format!("http://{base}") };
    let uri: hyper::Uri =
        format!("{base}/metrics").parse().with_context(|| format!("bad --admin address {admin:?}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let response = tokio::time::timeout(SCRAPE_TIMEOUT, client.get(uri)).await.context("metrics timed out")??;
        anyhow::ensure!(response.status().is_success(), "metrics answered HTTP {}", response.status());
        let body = tokio::time::timeout(SCRAPE_TIMEOUT, response.into_body().collect())
            .await
            .context("metrics body timed out")??
            .to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    })
}

/// The value of an unlabelled sample `name` in Prometheus/OpenMetrics text.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let mut fields = line.split_whitespace();
        (fields.next()? == name).then(|| fields.next()?.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_read_by_its_exact_name() {
        let text = "# HELP process_cpu_seconds Total user and system CPU time spent in seconds\n\
                    # TYPE process_cpu_seconds counter\n\
                    process_cpu_seconds_total_other 9\n\
                    process_cpu_seconds_total 12.5\n\
                    runnel_kafka_bytes_in_total 100\n# EOF\n";
        assert_eq!(metric_value(text, "process_cpu_seconds_total"), Some(12.5));
        assert_eq!(metric_value(text, "runnel_kafka_bytes_in_total"), Some(100.0));
        assert_eq!(metric_value(text, "process_open_fds"), None);
        assert_eq!(metric_value("process_cpu_seconds_total not-a-number\n", "process_cpu_seconds_total"), None);
    }

    #[test]
    fn machine_shares_come_from_two_readings_of_proc_stat() {
        let before = StatTicks::parse("cpu  100 0 50 800 10 5 5 30 0 0").expect("a cpu line");
        assert_eq!(before, StatTicks { busy: 160, stolen: 30, total: 1000 });
        // 200 ticks pass: 120 busy, 50 stolen, 30 idle.
        let after = StatTicks::parse("cpu  200 0 60 830 10 10 10 80 7 0").expect("a cpu line");
        let used = after.since(before).expect("time passed");
        assert!((used.busy - 0.6).abs() < 1e-9 && (used.stolen - 0.25).abs() < 1e-9, "{used:?}");
        assert_eq!(before.since(before), None, "no time passed");
        assert_eq!(StatTicks::parse("cpu0 1 2 3 4 5 6 7 8"), None, "one core's line");
        assert_eq!(StatTicks::parse("cpu 1 2 3"), None, "too few fields");
    }

    #[test]
    fn busy_and_per_gb_follow_the_times() {
        let cpu = CpuUse { wall: Duration::from_secs(5), clients_s: 6.0, broker_s: Some(2.0), cores: 2, machine: None };
        assert!((cpu.busy().expect("both known") - 0.8).abs() < 1e-9);
        let (clients, broker) = cpu.per_gb(2_000_000_000);
        assert!((clients - 3.0).abs() < 1e-9 && (broker.expect("known") - 1.0).abs() < 1e-9);
        let unknown = CpuUse { broker_s: None, ..cpu };
        assert_eq!(unknown.busy(), None);
        assert!(unknown.describe(1).contains("broker unknown"), "{}", unknown.describe(1));
    }

    #[test]
    fn a_meter_sees_this_process_work_and_tolerates_no_broker() {
        // Port 9 (discard) on loopback: nothing listens there in a test run.
        let meter = CpuMeter::start("http://127.0.0.1:9");
        let started = Instant::now();
        let mut x = 1u64;
        while started.elapsed() < Duration::from_millis(200) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let cpu = meter.stop();
        assert!(cpu.clients_s >= 0.1, "200 ms of spinning counted as {} s", cpu.clients_s);
        assert_eq!(cpu.broker_s, None);
    }
}
