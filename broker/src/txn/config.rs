//! The transaction coordinator's broker configs, under Kafka's names.

use crate::config::ConfigError;

/// Settings of the transaction coordinator (Kafka's names in brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnConfig {
    /// [`transaction.max.timeout.ms`] Largest `transaction.timeout.ms` a producer may ask for;
    /// larger ones get INVALID_TRANSACTION_TIMEOUT.
    pub max_timeout_ms: i32,
    /// [`transactional.id.expiration.ms`] A transactional id with no transaction in progress
    /// is forgotten this long after its last update.
    pub id_expiration_ms: i64,
    /// [`transaction.abort.timed.out.transaction.cleanup.interval.ms`] How often open
    /// transactions are checked against their timeout (and idle ids against expiry).
    pub abort_timed_out_check_interval_ms: u64,
    /// [`transaction.state.log.num.partitions`] Partitions of `__transaction_state`, fixed
    /// when the topic is created. One node needs no spreading, hence 1 (Kafka: 50).
    pub state_log_num_partitions: i32,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            max_timeout_ms: 900_000,
            id_expiration_ms: 7 * 24 * 60 * 60 * 1000,
            abort_timed_out_check_interval_ms: 10_000,
            state_log_num_partitions: 1,
        }
    }
}

impl TxnConfig {
    /// Whether `key` is one of these configs.
    pub fn owns(key: &str) -> bool {
        matches!(
            key,
            "transaction.max.timeout.ms"
                | "transactional.id.expiration.ms"
                | "transaction.abort.timed.out.transaction.cleanup.interval.ms"
                | "transaction.state.log.num.partitions"
        )
    }

    /// (name, value, DescribeConfigs type: 3 INT, 5 LONG) of every config, for DescribeConfigs.
    pub fn entries(&self) -> Vec<(&'static str, String, i8)> {
        vec![
            ("transaction.max.timeout.ms", self.max_timeout_ms.to_string(), 3),
            ("transactional.id.expiration.ms", self.id_expiration_ms.to_string(), 3),
            (
                "transaction.abort.timed.out.transaction.cleanup.interval.ms",
                self.abort_timed_out_check_interval_ms.to_string(),
                3,
            ),
            ("transaction.state.log.num.partitions", self.state_log_num_partitions.to_string(), 3),
        ]
    }

    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let invalid = || ConfigError::InvalidValue {
            name: key.to_string(),
            value: value.to_string(),
            reason: "must be a positive integer".to_string(),
        };
        let positive = || value.trim().parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(invalid);
        match key {
            "transaction.max.timeout.ms" => self.max_timeout_ms = i32::try_from(positive()?).map_err(|_| invalid())?,
            "transactional.id.expiration.ms" => self.id_expiration_ms = positive()?,
            "transaction.abort.timed.out.transaction.cleanup.interval.ms" => {
                self.abort_timed_out_check_interval_ms = positive()? as u64
            }
            "transaction.state.log.num.partitions" => {
                self.state_log_num_partitions =
                    i32::try_from(positive()?).ok().filter(|n| *n <= 1000).ok_or_else(invalid)?
            }
            _ => return Err(ConfigError::Unknown { name: key.to_string() }),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_names_set_values_and_bad_ones_are_refused() {
        let mut config = crate::config::BrokerConfig::default();
        config.set("transaction.max.timeout.ms", "60000").expect("valid");
        config.set("transaction.abort.timed.out.transaction.cleanup.interval.ms", "250").expect("valid");
        assert_eq!(config.transactions.max_timeout_ms, 60_000);
        assert_eq!(config.transactions.abort_timed_out_check_interval_ms, 250);
        for (key, value) in [
            ("transaction.max.timeout.ms", "0"),
            ("transaction.max.timeout.ms", "99999999999"),
            ("transactional.id.expiration.ms", "soon"),
            ("transaction.state.log.num.partitions", "100000"),
        ] {
            assert!(config.set(key, value).is_err(), "{key}={value}");
        }
        assert_eq!(TxnConfig::default().entries().len(), 4);
    }
}
