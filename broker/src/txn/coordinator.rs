//! The shell around the transaction state machines: one lock over every transactional id,
//! the `__transaction_state` log, marker writing, timeouts and replay on open.
//!
//! Every change is first appended to `__transaction_state` (page cache, under the lock, so the
//! log sees changes in the order they happen), then applied in memory; the answer to the
//! client waits for the fsync through [`Durable`]. Lock order: this coordinator, then the
//! group coordinator, then a partition log — never the other way round.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use super::records;
use super::state::{EndDecision, InitDecision, TxnMetadata, TxnState};
use super::{TxnConfig, TxnError};
use crate::broker::{BrokerError, Partition};
use crate::groups::OFFSETS_TOPIC;
use crate::metadata::{MetadataCommand, MetadataError};
use crate::storage::{encode_marker, StorageError};
use crate::Broker;

/// Kafka's internal topic for transaction state.
pub(crate) const TXN_TOPIC: &str = "__transaction_state";
/// Kafka's `transaction.state.log.segment.bytes`.
const TXN_TOPIC_SEGMENT_BYTES: &str = "104857600";
/// Bound on transactional ids held in memory; new ids get COORDINATOR_NOT_AVAILABLE past it.
const TXN_IDS_MAX: usize = 100_000;
/// Bound on partitions in one transaction: each needs a marker written while the lock is
/// held, so this bounds how long one EndTxn can hold it.
const TXN_PARTITIONS_MAX: usize = 10_000;
/// The coordinator epoch written into markers; one node never changes coordinator.
const COORDINATOR_EPOCH: i32 = 0;

/// Partitions written, with the offset each must be fsynced to before the client is answered.
#[derive(Debug, Default)]
pub(crate) struct Durable {
    writes: Vec<(Arc<Partition>, i64)>,
}

impl Durable {
    fn add(&mut self, partition: Arc<Partition>, offset: i64) {
        match self.writes.iter_mut().find(|(p, _)| Arc::ptr_eq(p, &partition)) {
            Some((_, at)) => *at = (*at).max(offset),
            None => self.writes.push((partition, offset)),
        }
    }

    pub(crate) async fn wait(self) -> Result<(), TxnError> {
        for (partition, offset) in self.writes {
            partition.sync_to(offset).await.map_err(|e| {
                tracing::error!(topic = %partition.topic, partition = partition.index, error = %e, "fsync failed");
                TxnError::NotCoordinator
            })?;
        }
        Ok(())
    }
}

/// One transactional id as ListTransactions/DescribeTransactions report it.
#[derive(Debug, Clone)]
pub(crate) struct TxnListing {
    pub(crate) transactional_id: String,
    pub(crate) producer_id: i64,
    pub(crate) producer_epoch: i16,
    pub(crate) state: &'static str,
    pub(crate) timeout_ms: i32,
    pub(crate) start_ms: i64,
    pub(crate) partitions: Vec<(String, i32)>,
}

#[derive(Debug)]
pub(crate) struct TxnCoordinator {
    config: TxnConfig,
    state: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    txns: BTreeMap<String, TxnMetadata>,
    /// Producer id → transactional id, to check transactional produce requests.
    by_producer: HashMap<i64, String>,
}

impl Inner {
    fn insert(&mut self, txn: TxnMetadata) {
        if let Some(old) = self.txns.get(&txn.transactional_id) {
            if old.producer_id != txn.producer_id {
                self.by_producer.remove(&old.producer_id);
            }
        }
        self.by_producer.insert(txn.producer_id, txn.transactional_id.clone());
        self.txns.insert(txn.transactional_id.clone(), txn);
    }

    fn remove(&mut self, transactional_id: &str) {
        if let Some(old) = self.txns.remove(transactional_id) {
            self.by_producer.remove(&old.producer_id);
        }
    }
}

impl TxnCoordinator {
    pub(crate) fn new(config: TxnConfig) -> TxnCoordinator {
        TxnCoordinator { config, state: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates `__transaction_state` unless it exists. Compacted, like `__consumer_offsets`: the
    /// latest record per transactional id is the state (time retention would lose open
    /// transactions).
    fn ensure_topic(&self, broker: &Broker) -> Result<(), TxnError> {
        if broker.partition(TXN_TOPIC, 0).is_some() {
            return Ok(());
        }
        let configs =
            [("cleanup.policy", "compact"), ("retention.ms", "-1"), ("segment.bytes", TXN_TOPIC_SEGMENT_BYTES)];
        let command = MetadataCommand::CreateTopic {
            name: TXN_TOPIC.to_string(),
            topic_id: uuid::Uuid::new_v4().to_string(),
            partitions: self.config.state_log_num_partitions,
            configs: configs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        match broker.propose(command) {
            Ok(_) | Err(BrokerError::Metadata(MetadataError::TopicExists { .. })) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot create {TXN_TOPIC}");
                return Err(TxnError::CoordinatorNotAvailable);
            }
        }
        broker.partition(TXN_TOPIC, 0).map(|_| ()).ok_or(TxnError::CoordinatorNotAvailable)
    }

    /// InitProducerId with a transactional id: a new producer id for a new id; otherwise the
    /// next epoch, after aborting a transaction the previous producer left open.
    pub(crate) fn init_producer_id(
        &self,
        broker: &Broker,
        transactional_id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
    ) -> Result<(i64, i16, Durable), TxnError> {
        if timeout_ms <= 0 || timeout_ms > self.config.max_timeout_ms {
            return Err(TxnError::InvalidTransactionTimeout);
        }
        self.ensure_topic(broker)?;
        let now_ms = broker.now_ms();
        let mut state = self.lock();
        let mut durable = Durable::default();
        let Some(current) = state.txns.get(transactional_id).cloned() else {
            if expected.is_some() {
                return Err(TxnError::InvalidProducerIdMapping);
            }
            if state.txns.len() >= TXN_IDS_MAX {
                return Err(TxnError::CoordinatorNotAvailable);
            }
            let producer_id = allocate(broker)?;
            let txn = TxnMetadata::new(transactional_id.to_string(), producer_id, timeout_ms, now_ms);
            persist(broker, &txn, &mut durable)?;
            state.insert(txn);
            return Ok((producer_id, 0, durable));
        };
        let mut next = current;
        if next.init_decision(expected)? == InitDecision::AbortOngoing {
            tracing::info!(
                transactional_id,
                producer_id = next.producer_id,
                "aborting the previous producer's transaction"
            );
            next.fence_and_prepare_abort(now_ms);
            persist(broker, &next, &mut durable)?;
            state.insert(next.clone());
            self.finish(broker, &mut next, now_ms, &mut durable)?;
            state.insert(next.clone());
        }
        if !next.bump_epoch(timeout_ms, now_ms) {
            next.rotate_producer_id(allocate(broker)?, timeout_ms, now_ms);
        }
        persist(broker, &next, &mut durable)?;
        let answer = (next.producer_id, next.producer_epoch);
        state.insert(next);
        Ok((answer.0, answer.1, durable))
    }

    /// AddPartitionsToTxn / AddOffsetsToTxn. Partitions must exist (the handler checks).
    pub(crate) fn add_partitions(
        &self,
        broker: &Broker,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: Vec<(String, i32)>,
    ) -> Result<Durable, TxnError> {
        let now_ms = broker.now_ms();
        let mut state = self.lock();
        let current = state.txns.get(transactional_id).ok_or(TxnError::InvalidProducerIdMapping)?;
        let mut next = current.clone();
        next.add_partitions(producer_id, producer_epoch, partitions, now_ms)?;
        if next.partitions.len() > TXN_PARTITIONS_MAX {
            return Err(TxnError::InvalidTxnState);
        }
        let mut durable = Durable::default();
        if next != *current {
            persist(broker, &next, &mut durable)?;
            state.insert(next);
        }
        Ok(durable)
    }

    /// EndTxn: commit or abort the open transaction (markers written before answering).
    pub(crate) fn end_txn(
        &self,
        broker: &Broker,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
    ) -> Result<Durable, TxnError> {
        let now_ms = broker.now_ms();
        let mut state = self.lock();
        let current = state.txns.get(transactional_id).ok_or(TxnError::InvalidProducerIdMapping)?;
        let mut next = current.clone();
        let mut durable = Durable::default();
        if next.end(producer_id, producer_epoch, commit, now_ms)? == EndDecision::AlreadyCompleted {
            return Ok(durable);
        }
        persist(broker, &next, &mut durable)?;
        state.insert(next.clone());
        let finished = self.finish(broker, &mut next, now_ms, &mut durable);
        state.insert(next);
        finished.map(|()| durable)
    }

    /// Checks that a producer is the current one of its transactional id (TxnOffsetCommit).
    pub(crate) fn verify(&self, transactional_id: &str, producer_id: i64, producer_epoch: i16) -> Result<(), TxnError> {
        let state = self.lock();
        let txn = state.txns.get(transactional_id).ok_or(TxnError::InvalidProducerIdMapping)?;
        txn.validate_producer(producer_id, producer_epoch)?;
        if txn.state != TxnState::Ongoing || !txn.partitions.iter().any(|(t, _)| t == OFFSETS_TOPIC) {
            return Err(TxnError::InvalidTxnState);
        }
        Ok(())
    }

    /// Whether a transactional batch may be appended: its producer is current and added the
    /// partition to its open transaction. Without this a producer could write transactional
    /// data no marker will ever end, holding the last stable offset back forever.
    pub(crate) fn check_produce(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        topic: &str,
        partition: i32,
    ) -> Result<(), TxnError> {
        let state = self.lock();
        let txn = state
            .by_producer
            .get(&producer_id)
            .and_then(|id| state.txns.get(id))
            .ok_or(TxnError::InvalidProducerIdMapping)?;
        if producer_epoch < txn.producer_epoch {
            return Err(TxnError::ProducerFenced);
        }
        if !txn.accepts_produce(producer_epoch, topic, partition) {
            return Err(TxnError::InvalidTxnState);
        }
        Ok(())
    }

    pub(crate) fn list(&self) -> Vec<TxnListing> {
        let state = self.lock();
        state
            .txns
            .values()
            .map(|t| TxnListing {
                transactional_id: t.transactional_id.clone(),
                producer_id: t.producer_id,
                producer_epoch: t.producer_epoch,
                state: t.state.name(),
                timeout_ms: t.timeout_ms,
                start_ms: t.start_ms,
                partitions: t.partitions.iter().cloned().collect(),
            })
            .collect()
    }

    /// Writes the markers of a Prepare* transaction, publishes or drops its offsets, and
    /// completes it (persisted). On failure the transaction stays Prepare* (persisted), and
    /// the timer tries again.
    fn finish(
        &self,
        broker: &Broker,
        txn: &mut TxnMetadata,
        now_ms: i64,
        durable: &mut Durable,
    ) -> Result<(), TxnError> {
        debug_assert!(txn.is_preparing());
        let commit = txn.commits();
        let marker = encode_marker(txn.producer_id, txn.producer_epoch, commit, COORDINATOR_EPOCH, now_ms);
        for (topic, index) in &txn.partitions {
            // A partition deleted since it was added has nothing left to mark.
            let Some(partition) = broker.partition(topic, *index) else { continue };
            let info = partition.log().append(&marker).map_err(|e| {
                tracing::error!(topic = %topic, partition = index, error = %e, "cannot write transaction marker");
                TxnError::NotCoordinator
            })?;
            durable.add(Arc::clone(&partition), info.last_offset + 1);
            if topic == OFFSETS_TOPIC {
                broker.groups().complete_transaction(txn.producer_id, commit, now_ms);
            }
        }
        broker.notify_appended();
        txn.complete(now_ms);
        persist(broker, txn, durable)?;
        tracing::debug!(transactional_id = %txn.transactional_id, commit, "transaction completed");
        Ok(())
    }

    /// Aborts transactions past their timeout (fencing their producer), retries completions
    /// that failed, and forgets ids idle past `transactional.id.expiration.ms`.
    pub(crate) fn run_timers(&self, broker: &Broker) {
        let now_ms = broker.now_ms();
        let mut state = self.lock();
        let ids: Vec<String> = state
            .txns
            .values()
            .filter(|t| t.timed_out(now_ms) || t.is_preparing() || t.expired(now_ms, self.config.id_expiration_ms))
            .map(|t| t.transactional_id.clone())
            .collect();
        for id in ids {
            let Some(mut txn) = state.txns.get(&id).cloned() else { continue };
            let mut durable = Durable::default();
            let outcome = if txn.expired(now_ms, self.config.id_expiration_ms) {
                match append(broker, partition_for(broker, &id), &[(records::key(&id), None)], now_ms) {
                    Ok(_) => {
                        tracing::info!(transactional_id = %id, "transactional id expired");
                        state.remove(&id);
                        continue;
                    }
                    Err(e) => Err(e),
                }
            } else {
                if txn.timed_out(now_ms) {
                    tracing::info!(transactional_id = %id, producer_id = txn.producer_id, "aborting timed-out transaction");
                    txn.fence_and_prepare_abort(now_ms);
                    if let Err(e) = persist(broker, &txn, &mut durable) {
                        tracing::warn!(transactional_id = %id, error = %e, "cannot abort timed-out transaction");
                        continue;
                    }
                    state.insert(txn.clone());
                }
                let finished = self.finish(broker, &mut txn, now_ms, &mut durable);
                state.insert(txn);
                finished
            };
            if let Err(e) = outcome {
                tracing::warn!(transactional_id = %id, error = %e, "transaction timer step failed; retrying later");
            }
        }
    }

    /// Replays `__transaction_state` (later records win, tombstones delete), then finishes
    /// transactions a crash left between Prepare* and Complete*. Run after the group
    /// coordinator has loaded, so offsets waiting on those markers are known.
    pub(crate) fn load(&self, broker: &Broker) -> Result<(), StorageError> {
        let topic = broker.topic(TXN_TOPIC);
        let partitions = topic.map_or(0, |t| t.partitions);
        let mut loaded: BTreeMap<String, TxnMetadata> = BTreeMap::new();
        for index in 0..partitions {
            let Some(partition) = broker.partition(TXN_TOPIC, index) else { continue };
            replay_partition(&partition, &mut loaded)?;
        }
        let now_ms = broker.now_ms();
        let mut state = self.lock();
        for (_, txn) in loaded {
            state.insert(txn);
        }
        let preparing: Vec<String> =
            state.txns.values().filter(|t| t.is_preparing()).map(|t| t.transactional_id.clone()).collect();
        for id in preparing {
            let Some(mut txn) = state.txns.get(&id).cloned() else { continue };
            let mut durable = Durable::default();
            if let Err(e) = self.finish(broker, &mut txn, now_ms, &mut durable) {
                tracing::warn!(transactional_id = %id, error = %e, "cannot complete transaction at load; the timer retries");
            }
            state.insert(txn);
        }
        tracing::info!(transactional_ids = state.txns.len(), "loaded transactions from {TXN_TOPIC}");
        Ok(())
    }
}

/// The `__transaction_state` partition of an id: Kafka's `abs(hashCode) % partitions`, over
/// the topic's actual partition count (the config only matters when the topic is created).
fn partition_for(broker: &Broker, transactional_id: &str) -> i32 {
    let partitions = broker.topic(TXN_TOPIC).map_or(1, |t| t.partitions).max(1);
    let hash = transactional_id.encode_utf16().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
    let positive = if hash == i32::MIN { 0 } else { hash.abs() };
    positive % partitions
}

fn allocate(broker: &Broker) -> Result<i64, TxnError> {
    broker.allocate_producer_id().map_err(|e| {
        tracing::error!(error = %e, "cannot allocate a producer id");
        TxnError::CoordinatorNotAvailable
    })
}

/// Appends the transaction's current state to its `__transaction_state` partition.
fn persist(broker: &Broker, txn: &TxnMetadata, durable: &mut Durable) -> Result<(), TxnError> {
    let id = &txn.transactional_id;
    if id.len() > i16::MAX as usize || txn.partitions.iter().any(|(t, _)| t.len() > i16::MAX as usize) {
        return Err(TxnError::InvalidTxnState);
    }
    let record = (records::key(id), Some(records::value(txn)));
    let (partition, offset) = append(broker, partition_for(broker, id), &[record], broker.now_ms())?;
    durable.add(partition, offset);
    Ok(())
}

/// Appends records to one partition of `__transaction_state` as one batch.
fn append(
    broker: &Broker,
    index: i32,
    records: &[(Bytes, Option<Bytes>)],
    now_ms: i64,
) -> Result<(Arc<Partition>, i64), TxnError> {
    let partition = broker.partition(TXN_TOPIC, index).ok_or(TxnError::CoordinatorNotAvailable)?;
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (key, value))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: now_ms,
            key: Some(key.clone()),
            value: value.clone(),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions { version: 2, compression: Compression::None };
    RecordBatchEncoder::encode(&mut buf, &records, &options).map_err(|e| {
        tracing::error!(error = %e, "cannot encode a {TXN_TOPIC} batch");
        TxnError::NotCoordinator
    })?;
    let info = partition.log().append(&buf).map_err(|e| {
        tracing::error!(error = %e, "append to {TXN_TOPIC} failed");
        TxnError::NotCoordinator
    })?;
    Ok((partition, info.last_offset + 1))
}

fn replay_partition(partition: &Partition, loaded: &mut BTreeMap<String, TxnMetadata>) -> Result<(), StorageError> {
    partition.log().replay_batches(TXN_TOPIC, |header, mut batch| {
        if header.is_control() {
            return;
        }
        let set = match RecordBatchDecoder::decode(&mut batch) {
            Ok(set) => set,
            Err(e) => {
                tracing::warn!(offset = header.base_offset, error = %e, "skipping undecodable batch in {TXN_TOPIC}");
                return;
            }
        };
        for record in set.records {
            let Some(key) = record.key else { continue };
            let id = match records::decode_key(&key) {
                Ok(id) => id,
                Err(e) => {
                    tracing::warn!(offset = record.offset, error = %e, "skipping record");
                    continue;
                }
            };
            match record.value.map(|v| records::decode_value(id.clone(), &v)) {
                None => {
                    loaded.remove(&id);
                }
                Some(Ok(txn)) => {
                    loaded.insert(id, txn);
                }
                Some(Err(e)) => tracing::warn!(offset = record.offset, error = %e, "skipping record"),
            }
        }
    })
}
