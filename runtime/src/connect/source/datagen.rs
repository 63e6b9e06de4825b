//! The data generator (`datagen-source`): the README tour's user-activity events,
//! `{"id": n, "user": "u17", "action": "click", "page": "/p3", "ts": <ms>}` keyed by user, for
//! demos and benchmarks. Event `n`'s user, action and page are a pure function of (`seed`, n),
//! so a run is reproducible and a restart resumes at the next `n` (position `{"next": n}`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_broker::Broker;

use super::{Polled, Source, SourceRecord};
use crate::connect::config::{invalid, Settings};
use crate::connect::ConnectError;

const ACTIONS: [&str; 6] = ["view", "click", "scroll", "purchase", "login", "logout"];
const USERS: u64 = 50;
const PAGES: u64 = 20;
/// Wait after a poll that found the rate's budget used up.
const THROTTLE_WAIT: Duration = Duration::from_millis(20);

#[derive(Debug, Clone)]
pub(crate) struct DatagenSettings {
    topic: String,
    max_records: u64,
    records_per_second: u64,
    seed: u64,
}

pub(crate) struct Datagen {
    settings: DatagenSettings,
    broker: std::sync::Arc<Broker>,
    next: u64,
    /// Rate limiting: records generated since `started`.
    started: Instant,
    since_start: u64,
}

impl Datagen {
    pub(crate) fn settings(settings: Settings<'_>) -> Result<DatagenSettings, ConnectError> {
        let max_records = match settings.str("max.records").or(settings.str("iterations")) {
            None => u64::MAX,
            Some(v) => v.parse().map_err(|_| invalid(format!("max.records={v:?}: expected a count")))?,
        };
        Ok(DatagenSettings {
            topic: settings.str("kafka.topic").or(settings.str("topic")).unwrap_or("user-activity").to_string(),
            max_records,
            records_per_second: settings.u64_or("records.per.second", 100)?,
            seed: settings.u64_or("seed", 0)?,
        })
    }

    pub(crate) fn new(settings: Settings<'_>, broker: &std::sync::Arc<Broker>) -> Result<Datagen, ConnectError> {
        Ok(Datagen {
            settings: Datagen::settings(settings)?,
            broker: std::sync::Arc::clone(broker),
            next: 0,
            started: Instant::now(),
            since_start: 0,
        })
    }
}

/// SplitMix64: a fixed, well-mixed function of its input.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Event `n` of the stream seeded `seed`: (user, action, page).
pub(crate) fn event(seed: u64, n: u64) -> (String, &'static str, String) {
    let r = mix(seed ^ mix(n));
    let user = format!("u{}", r % USERS);
    let action = ACTIONS[((r >> 16) % ACTIONS.len() as u64) as usize];
    let page = format!("/p{}", (r >> 32) % PAGES);
    (user, action, page)
}

impl Source for Datagen {
    fn topic(&self) -> &str {
        &self.settings.topic
    }

    async fn open(&mut self, position: Option<&serde_json::Value>) -> Result<(), ConnectError> {
        self.next = position.and_then(|p| p.get("next")).and_then(|n| n.as_u64()).unwrap_or(0);
        self.started = Instant::now();
        self.since_start = 0;
        Ok(())
    }

    async fn poll(&mut self, max: usize) -> Result<Option<Polled>, ConnectError> {
        let remaining = self.settings.max_records.saturating_sub(self.next);
        let mut count = remaining.min(max as u64);
        if self.settings.records_per_second > 0 {
            let allowed = (self.started.elapsed().as_secs_f64() * self.settings.records_per_second as f64) as u64;
            count = count.min(allowed.saturating_sub(self.since_start));
        }
        if count == 0 {
            return Ok(None);
        }
        let now = self.broker.now_ms();
        let records = (self.next..self.next + count)
            .map(|n| {
                let (user, action, page) = event(self.settings.seed, n);
                let value = serde_json::json!({"id": n, "user": user, "action": action, "page": page, "ts": now});
                SourceRecord {
                    timestamp_ms: now,
                    key: Some(Bytes::from(user)),
                    value: Some(Bytes::from(value.to_string())),
                    headers: Vec::new(),
                }
            })
            .collect();
        self.next += count;
        self.since_start += count;
        Ok(Some(Polled { records, position: serde_json::json!({ "next": self.next }) }))
    }

    fn idle(&self) -> Duration {
        THROTTLE_WAIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_a_function_of_seed_and_number() {
        assert_eq!(event(1, 5), event(1, 5));
        assert_ne!((0..20).map(|n| event(1, n)).collect::<Vec<_>>(), (0..20).map(|n| event(2, n)).collect::<Vec<_>>());
        let users: std::collections::BTreeSet<String> = (0..1000).map(|n| event(0, n).0).collect();
        assert!(users.len() > 40, "users spread over the {USERS}");
    }
}
