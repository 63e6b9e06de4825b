//! The shell around the group state machines: one lock over every group, the
//! `__consumer_offsets` log, parked JoinGroup/SyncGroup requests and the deadline timers.
//!
//! Records are appended while the lock is held, so the log sees changes in the order they
//! happened (replay then rebuilds exactly the last state); appending only writes the page
//! cache. Waiting for fsync happens after the lock is released, through [`Durable`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use tokio::sync::oneshot;

use super::group::{
    CommittedOffset, Effects, Group, GroupDescription, GroupState, JoinOutcome, JoinRequest, JoinStep, SyncOutcome,
    SyncRequest, SyncStep,
};
use super::records::{self, KeyValue, RecordKey, StoredGroup};
use super::{GroupConfig, GroupError, GROUPS_MAX, OFFSET_METADATA_MAX_BYTES};
use crate::broker::{BrokerError, Partition};
use crate::metadata::{MetadataCommand, MetadataError, MetadataImage};
use crate::storage::StorageError;
use crate::Broker;

/// Kafka's internal topic for offsets and group metadata.
pub(crate) const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Batches appended to `__consumer_offsets` are cut at about this size.
const BATCH_BYTES_TARGET: usize = 512 * 1024;
/// The topic's `max.message.bytes`: room for the metadata of a group at `group.max.size`.
const OFFSETS_TOPIC_MAX_MESSAGE_BYTES: &str = "10485760";
/// Kafka's `offsets.topic.segment.bytes`.
const OFFSETS_TOPIC_SEGMENT_BYTES: &str = "104857600";
/// The timer wakes at least this often, whatever the deadlines say.
const TIMER_IDLE_MS: i64 = 1000;
/// Groups whose deadlines one timer run handles, bounding how long it holds the lock.
const TIMER_GROUPS_PER_RUN: usize = 10_000;
/// How long after a failed write a group's timer tries again.
const RETRY_AFTER_FAILURE_MS: i64 = 1000;
/// A generated member id is `{prefix}-{uuid}`: the uuid and its dash.
const MEMBER_ID_SUFFIX_BYTES: usize = 37;
/// Dynamic member ids start with the client id, cut to this length (ids stay short to store).
const CLIENT_ID_PREFIX_BYTES_MAX: usize = 255;

/// Everything written is durable once the partition is fsynced up to `offset`.
#[derive(Debug)]
pub(crate) struct Durable {
    partition: Arc<Partition>,
    offset: i64,
}

impl Durable {
    pub(crate) async fn wait(self) -> Result<(), GroupError> {
        self.partition.sync_to(self.offset).await.map_err(|e| {
            tracing::error!(error = %e, "fsync of {OFFSETS_TOPIC} failed");
            GroupError::NotCoordinator
        })
    }
}

/// A JoinGroup answered now, or parked until its join round completes.
#[derive(Debug)]
pub(crate) enum JoinReply {
    Now(JoinOutcome),
    Wait(oneshot::Receiver<JoinOutcome>),
}

/// A SyncGroup answered now, or parked until the leader's assignment is stored (the leader
/// also waits for the group record to be durable).
#[derive(Debug)]
pub(crate) enum SyncReply {
    Now(SyncOutcome),
    Wait(oneshot::Receiver<SyncOutcome>, Option<Durable>),
}

#[derive(Debug, Clone)]
pub(crate) struct CommitPartition {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) leader_epoch: i32,
    pub(crate) metadata: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct CommitRequest {
    pub(crate) group_id: String,
    pub(crate) member_id: String,
    pub(crate) group_instance_id: Option<String>,
    pub(crate) generation_id: i32,
    /// What a commit with a generation to a group that does not exist gets: OffsetCommit
    /// v9+ says GROUP_ID_NOT_FOUND, older versions ILLEGAL_GENERATION.
    pub(crate) missing_group_error: GroupError,
    pub(crate) partitions: Vec<CommitPartition>,
}

/// One result per requested partition, in request order.
#[derive(Debug)]
pub(crate) struct CommitReply {
    pub(crate) results: Vec<Result<(), GroupError>>,
    pub(crate) durable: Option<Durable>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupListing {
    pub(crate) group_id: String,
    pub(crate) protocol_type: String,
    pub(crate) state: GroupState,
}

/// Offsets of one topic as OffsetFetch returns them (`None`: nothing committed).
pub(crate) type TopicOffsets = (String, Vec<(i32, Option<CommittedOffset>)>);

#[derive(Debug)]
pub(crate) struct GroupCoordinator {
    config: GroupConfig,
    state: Mutex<Coordinator>,
    /// Woken when a deadline earlier than every scheduled one appears.
    timers_changed: tokio::sync::Notify,
}

type WaiterKey = (String, String);

/// A transaction's offsets: (group, topic, partition) → offset.
type PendingOffsets = BTreeMap<(String, String, i32), CommittedOffset>;

/// Bound on (group, partition) offsets one open transaction may hold; each is a small record
/// kept in memory until the transaction ends.
const PENDING_OFFSETS_PER_TRANSACTION_MAX: usize = 100_000;

/// A TxnOffsetCommit: offsets to publish when the producer's transaction commits.
#[derive(Debug, Clone)]
pub(crate) struct TxnCommitRequest {
    pub(crate) group_id: String,
    pub(crate) producer_id: i64,
    pub(crate) producer_epoch: i16,
    pub(crate) member_id: String,
    pub(crate) group_instance_id: Option<String>,
    pub(crate) generation_id: i32,
    pub(crate) partitions: Vec<CommitPartition>,
}

#[derive(Debug, Default)]
struct Coordinator {
    groups: BTreeMap<String, Group>,
    /// (deadline, group id) for every group with something to do at some point.
    schedule: BTreeSet<(i64, String)>,
    scheduled_at: HashMap<String, i64>,
    join_waiters: HashMap<WaiterKey, oneshot::Sender<JoinOutcome>>,
    sync_waiters: HashMap<WaiterKey, oneshot::Sender<SyncOutcome>>,
    /// The metadata image last checked for deleted topics.
    metadata_index_seen: u64,
    /// Offsets committed inside open transactions, by producer id: they become committed
    /// offsets when the producer's commit marker is written, and vanish on abort.
    pending_txn: BTreeMap<i64, PendingOffsets>,
    closed: bool,
}

impl GroupCoordinator {
    pub(crate) fn new(config: GroupConfig) -> GroupCoordinator {
        GroupCoordinator { config, state: Mutex::new(Coordinator::default()), timers_changed: Default::default() }
    }

    fn lock(&self) -> MutexGuard<'_, Coordinator> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates `__consumer_offsets` (one partition) unless it exists. It is compacted, as in
    /// Kafka: every record is keyed by group (and topic-partition), deletes are tombstones, so
    /// the cleaner keeps the latest state of each and nothing is lost to time-based retention.
    pub(crate) fn ensure_offsets_topic(&self, broker: &Broker) -> Result<(), GroupError> {
        if broker.partition(OFFSETS_TOPIC, 0).is_some() {
            return Ok(());
        }
        let configs = [
            ("cleanup.policy", "compact"),
            ("retention.ms", "-1"),
            ("segment.bytes", OFFSETS_TOPIC_SEGMENT_BYTES),
            ("max.message.bytes", OFFSETS_TOPIC_MAX_MESSAGE_BYTES),
        ];
        let command = MetadataCommand::CreateTopic {
            name: OFFSETS_TOPIC.to_string(),
            topic_id: uuid::Uuid::new_v4().to_string(),
            partitions: 1,
            configs: configs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        match broker.propose(command) {
            Ok(_) | Err(BrokerError::Metadata(MetadataError::TopicExists { .. })) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot create {OFFSETS_TOPIC}");
                return Err(GroupError::CoordinatorNotAvailable);
            }
        }
        broker.partition(OFFSETS_TOPIC, 0).map(|_| ()).ok_or(GroupError::CoordinatorNotAvailable)
    }

    // ---- group membership --------------------------------------------------------------

    pub(crate) fn join(&self, broker: &Broker, request: JoinRequest) -> JoinReply {
        let refuse = |error| JoinReply::Now(JoinOutcome::error(&request.member_id, error));
        // Everything stored must fit the records' i16-length strings (flexible versions can
        // carry longer ones); a member id is the instance id plus 37 bytes.
        let instance_fits = request.group_instance_id.as_ref().is_none_or(|i| storable(i, MEMBER_ID_SUFFIX_BYTES));
        if request.group_id.is_empty() || !storable(&request.group_id, 0) || !instance_fits {
            return refuse(GroupError::InvalidGroupId);
        }
        if !storable(&request.protocol_type, 0) || !request.protocols.iter().all(|p| storable(&p.name, 0)) {
            return refuse(GroupError::InconsistentGroupProtocol);
        }
        let session = request.session_timeout_ms;
        if session < self.config.min_session_timeout_ms || session > self.config.max_session_timeout_ms {
            return refuse(GroupError::InvalidSessionTimeout);
        }
        if let Err(error) = self.ensure_offsets_topic(broker) {
            return refuse(error);
        }
        let now_ms = broker.now_ms();
        let mut state = self.lock();
        if state.closed {
            return refuse(GroupError::NotCoordinator);
        }
        if !state.groups.contains_key(&request.group_id) {
            // A member id only makes sense in a group that exists.
            if !request.member_id.is_empty() {
                return refuse(GroupError::UnknownMemberId);
            }
            if state.groups.len() >= GROUPS_MAX {
                tracing::warn!(limit = GROUPS_MAX, group = %request.group_id, "group limit reached; refusing new group");
                return refuse(GroupError::CoordinatorNotAvailable);
            }
            state.groups.insert(request.group_id.clone(), Group::new(request.group_id.clone(), now_ms));
        }
        let prefix = match &request.group_instance_id {
            Some(instance) => instance.as_str(),
            None => truncated(&request.client_id, CLIENT_ID_PREFIX_BYTES_MAX),
        };
        let new_member_id = format!("{prefix}-{}", uuid::Uuid::new_v4());
        let mut fx = Effects::default();
        let group = state.groups.get_mut(&request.group_id).expect("inserted above");
        let step = group.join(&request, new_member_id, now_ms, &self.config, &mut fx);
        let reply = match step {
            JoinStep::Respond(outcome) => JoinReply::Now(outcome),
            JoinStep::Wait(member_id) => {
                let (sender, receiver) = oneshot::channel();
                let key = (request.group_id.clone(), member_id.clone());
                if let Some(superseded) = state.join_waiters.insert(key, sender) {
                    let _ = superseded.send(JoinOutcome::error(&member_id, GroupError::RebalanceInProgress));
                }
                JoinReply::Wait(receiver)
            }
        };
        self.settle(&mut state, broker, &request.group_id, fx, now_ms);
        reply
    }

    pub(crate) fn sync(&self, broker: &Broker, request: SyncRequest) -> SyncReply {
        if let Err(error) = self.ensure_offsets_topic(broker) {
            return SyncReply::Now(SyncOutcome::error(error));
        }
        let now_ms = broker.now_ms();
        let mut state = self.lock();
        if state.closed {
            return SyncReply::Now(SyncOutcome::error(GroupError::NotCoordinator));
        }
        let Some(group) = state.groups.get_mut(&request.group_id) else {
            return SyncReply::Now(SyncOutcome::error(GroupError::UnknownMemberId));
        };
        let mut fx = Effects::default();
        let (immediate, durable) = match group.sync(&request) {
            SyncStep::Respond(outcome) => (Some(outcome), None),
            SyncStep::Wait => (None, None),
            SyncStep::Store(assignments) => {
                let value = records::group_value(group, Some(&assignments));
                let (stored, durable) = match append(broker, &[(records::group_key(&group.id), Some(value))], now_ms) {
                    Ok(durable) => {
                        group.persisted = true;
                        (Ok(assignments), durable)
                    }
                    Err(error) => (Err(error), None),
                };
                // Answers every waiting member, the leader included, through `fx`.
                group.finish_leader_sync(request.generation_id, stored, now_ms, &self.config, &mut fx);
                (None, durable)
            }
        };
        let reply = match immediate {
            Some(outcome) => SyncReply::Now(outcome),
            None => {
                let (sender, receiver) = oneshot::channel();
                let key = (request.group_id.clone(), request.member_id.clone());
                if let Some(superseded) = state.sync_waiters.insert(key, sender) {
                    let _ = superseded.send(SyncOutcome::error(GroupError::RebalanceInProgress));
                }
                SyncReply::Wait(receiver, durable)
            }
        };
        self.settle(&mut state, broker, &request.group_id, fx, now_ms);
        reply
    }

    pub(crate) fn heartbeat(
        &self,
        broker: &Broker,
        group_id: &str,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
    ) -> Result<(), GroupError> {
        let now_ms = broker.now_ms();
        let mut state = self.lock();
        let group = state.groups.get_mut(group_id).ok_or(GroupError::UnknownMemberId)?;
        // A heartbeat only moves a session deadline later, so the schedule stays valid.
        group.heartbeat(member_id, group_instance_id, generation_id, now_ms)
    }

    /// LeaveGroup; the outer error is the group's, the inner ones each member's.
    pub(crate) fn leave(
        &self,
        broker: &Broker,
        group_id: &str,
        leaving: &[(String, Option<String>)],
    ) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        self.ensure_offsets_topic(broker)?;
        let now_ms = broker.now_ms();
        let mut state = self.lock();
        let Some(group) = state.groups.get_mut(group_id) else {
            return Ok(leaving.iter().map(|_| Err(GroupError::UnknownMemberId)).collect());
        };
        let mut fx = Effects::default();
        let results = group.leave(leaving, now_ms, &self.config, &mut fx);
        self.settle(&mut state, broker, group_id, fx, now_ms);
        results
    }

    // ---- offsets -------------------------------------------------------------------------

    pub(crate) fn commit(&self, broker: &Broker, request: CommitRequest) -> CommitReply {
        let all = |error: GroupError| CommitReply {
            results: request.partitions.iter().map(|_| Err(error)).collect(),
            durable: None,
        };
        if !storable(&request.group_id, 0) {
            return all(GroupError::InvalidGroupId);
        }
        if let Err(error) = self.ensure_offsets_topic(broker) {
            return all(error);
        }
        let now_ms = broker.now_ms();
        let image = broker.metadata();
        let mut state = self.lock();
        if !state.groups.contains_key(&request.group_id) {
            if request.generation_id >= 0 {
                return all(request.missing_group_error);
            }
            if state.groups.len() >= GROUPS_MAX {
                return all(GroupError::CoordinatorNotAvailable);
            }
            // A "simple" group: offsets only, for consumers without group management.
            state.groups.insert(request.group_id.clone(), Group::new(request.group_id.clone(), now_ms));
        }
        let group = state.groups.get_mut(&request.group_id).expect("present");
        let member = request.member_id.as_str();
        let reply = match group.validate_commit(member, request.group_instance_id.as_deref(), request.generation_id) {
            Err(error) => all(error),
            Ok(()) => {
                group.touch_committer(member, now_ms);
                commit_partitions(group, broker, &image, &request.partitions, now_ms)
            }
        };
        self.settle(&mut state, broker, &request.group_id, Effects::default(), now_ms);
        reply
    }

    /// Committed offsets of `topics` (every committed one when `None`).
    pub(crate) fn fetch_offsets(&self, group_id: &str, topics: Option<&[(String, Vec<i32>)]>) -> Vec<TopicOffsets> {
        let state = self.lock();
        let group = state.groups.get(group_id).filter(|g| g.state() != GroupState::Dead);
        match topics {
            Some(topics) => topics
                .iter()
                .map(|(topic, partitions)| {
                    let found =
                        partitions.iter().map(|p| (*p, group.and_then(|g| g.offset(topic, *p)).cloned())).collect();
                    (topic.clone(), found)
                })
                .collect(),
            None => {
                let mut by_topic: BTreeMap<String, Vec<(i32, Option<CommittedOffset>)>> = BTreeMap::new();
                for ((topic, partition), offset) in group.map(|g| g.offsets().iter()).into_iter().flatten() {
                    by_topic.entry(topic.clone()).or_default().push((*partition, Some(offset.clone())));
                }
                by_topic.into_iter().collect()
            }
        }
    }

    /// OffsetDelete: removes committed offsets the group no longer consumes.
    pub(crate) fn delete_offsets(
        &self,
        broker: &Broker,
        group_id: &str,
        partitions: &[(String, i32)],
    ) -> Result<CommitReply, GroupError> {
        self.ensure_offsets_topic(broker)?;
        let now_ms = broker.now_ms();
        let image = broker.metadata();
        let mut state = self.lock();
        let group = state.groups.get_mut(group_id).ok_or(GroupError::GroupIdNotFound)?;
        group.validate_offset_delete()?;
        let mut results = Vec::with_capacity(partitions.len());
        let mut doomed = Vec::new();
        for (topic, partition) in partitions {
            let result = if !partition_exists(&image, topic, *partition) {
                Err(GroupError::UnknownTopicOrPartition)
            } else if group.is_subscribed_to(topic) {
                Err(GroupError::GroupSubscribedToTopic)
            } else {
                if group.offset(topic, *partition).is_some() {
                    doomed.push((topic.clone(), *partition));
                }
                Ok(())
            };
            results.push(result);
        }
        let tombstones: Vec<KeyValue> =
            doomed.iter().map(|(t, p)| (records::offset_key(group_id, t, *p), None)).collect();
        let durable = match append(broker, &tombstones, now_ms) {
            Ok(durable) => {
                for (topic, partition) in &doomed {
                    group.remove_offset(topic, *partition);
                }
                durable
            }
            Err(error) => {
                for (result, (topic, partition)) in results.iter_mut().zip(partitions) {
                    if result.is_ok() && doomed.contains(&(topic.clone(), *partition)) {
                        *result = Err(error);
                    }
                }
                None
            }
        };
        self.settle(&mut state, broker, group_id, Effects::default(), now_ms);
        Ok(CommitReply { results, durable })
    }

    // ---- transactions ----------------------------------------------------------------------

    /// TxnOffsetCommit: stores the offsets in `__consumer_offsets` inside the producer's
    /// transaction (a transactional batch); they stay pending until its marker.
    pub(crate) fn txn_commit(&self, broker: &Broker, request: TxnCommitRequest) -> CommitReply {
        let all = |error: GroupError| CommitReply {
            results: request.partitions.iter().map(|_| Err(error)).collect(),
            durable: None,
        };
        if request.group_id.is_empty() || !storable(&request.group_id, 0) {
            return all(GroupError::InvalidGroupId);
        }
        if let Err(error) = self.ensure_offsets_topic(broker) {
            return all(error);
        }
        let now_ms = broker.now_ms();
        let image = broker.metadata();
        let mut state = self.lock();
        if let Some(group) = state.groups.get(&request.group_id) {
            // Kafka accepts a transactional commit without member and generation (older
            // producers send none); with them, they must be current.
            let anonymous = request.member_id.is_empty() && request.generation_id < 0;
            let member = request.member_id.as_str();
            if group.state() == GroupState::Dead {
                return all(GroupError::CoordinatorNotAvailable);
            }
            if !anonymous {
                if let Err(error) =
                    group.validate_commit(member, request.group_instance_id.as_deref(), request.generation_id)
                {
                    return all(error);
                }
            }
        }
        let pending = state.pending_txn.get(&request.producer_id).map_or(0, BTreeMap::len);
        if pending + request.partitions.len() > PENDING_OFFSETS_PER_TRANSACTION_MAX {
            return all(GroupError::InvalidCommitOffsetSize);
        }
        let mut results = Vec::with_capacity(request.partitions.len());
        let mut accepted = Vec::new();
        for p in &request.partitions {
            let metadata = p.metadata.clone().unwrap_or_default();
            let result = if metadata.len() > OFFSET_METADATA_MAX_BYTES {
                Err(GroupError::OffsetMetadataTooLarge)
            } else if !partition_exists(&image, &p.topic, p.partition) {
                Err(GroupError::UnknownTopicOrPartition)
            } else {
                let offset = CommittedOffset {
                    offset: p.offset,
                    leader_epoch: p.leader_epoch,
                    metadata,
                    commit_timestamp_ms: now_ms,
                };
                accepted.push(((request.group_id.clone(), p.topic.clone(), p.partition), offset));
                Ok(())
            };
            results.push(result);
        }
        let kv: Vec<KeyValue> = accepted
            .iter()
            .map(|((group, topic, partition), offset)| {
                (records::offset_key(group, topic, *partition), Some(records::offset_value(offset)))
            })
            .collect();
        let producer = Some((request.producer_id, request.producer_epoch));
        match append_records(broker, &kv, now_ms, producer) {
            Ok(durable) => {
                state.pending_txn.entry(request.producer_id).or_default().extend(accepted);
                CommitReply { results, durable }
            }
            Err(error) => {
                CommitReply { results: results.into_iter().map(|r| r.and(Err(error))).collect(), durable: None }
            }
        }
    }

    /// The producer's marker was just written to `__consumer_offsets`: publish its pending
    /// offsets (commit) or drop them (abort).
    pub(crate) fn complete_transaction(&self, producer_id: i64, commit: bool, now_ms: i64) {
        let mut state = self.lock();
        let Some(pending) = state.pending_txn.remove(&producer_id) else { return };
        if !commit {
            return;
        }
        for ((group_id, topic, partition), offset) in pending {
            if !state.groups.contains_key(&group_id) {
                if state.groups.len() >= GROUPS_MAX {
                    tracing::warn!(group = %group_id, "group limit reached; transactional offsets dropped");
                    continue;
                }
                state.groups.insert(group_id.clone(), Group::new(group_id.clone(), now_ms));
            }
            if let Some(group) = state.groups.get_mut(&group_id) {
                group.commit(&topic, partition, offset);
            }
            self.reschedule(&mut state, &group_id, now_ms);
        }
    }

    /// Whether an open transaction holds an offset for the partition (OffsetFetch with
    /// `require_stable` answers UNSTABLE_OFFSET_COMMIT then).
    pub(crate) fn has_pending_offset(&self, group_id: &str, topic: &str, partition: i32) -> bool {
        let key = (group_id.to_string(), topic.to_string(), partition);
        self.lock().pending_txn.values().any(|pending| pending.contains_key(&key))
    }

    // ---- administration ---------------------------------------------------------------------

    /// Groups in any of `states` (case-insensitive; all when empty).
    pub(crate) fn list(&self, states: &[String]) -> Vec<GroupListing> {
        let state = self.lock();
        state
            .groups
            .values()
            .filter(|g| g.state() != GroupState::Dead)
            .filter(|g| states.is_empty() || states.iter().any(|s| s.eq_ignore_ascii_case(g.state().name())))
            .map(|g| GroupListing {
                group_id: g.id.clone(),
                protocol_type: g.protocol_type.clone().unwrap_or_default(),
                state: g.state(),
            })
            .collect()
    }

    pub(crate) fn describe(&self, group_id: &str) -> Option<GroupDescription> {
        let state = self.lock();
        state.groups.get(group_id).filter(|g| g.state() != GroupState::Dead).map(Group::describe)
    }

    /// DeleteGroups: each Empty group loses its offsets and metadata (tombstones first).
    pub(crate) fn delete_groups(
        &self,
        broker: &Broker,
        group_ids: &[String],
    ) -> (Vec<Result<(), GroupError>>, Option<Durable>) {
        if let Err(error) = self.ensure_offsets_topic(broker) {
            return (group_ids.iter().map(|_| Err(error)).collect(), None);
        }
        let now_ms = broker.now_ms();
        let mut state = self.lock();
        let mut durable = None;
        let mut results = Vec::with_capacity(group_ids.len());
        for group_id in group_ids {
            let result = match state.groups.get(group_id) {
                None => Err(GroupError::GroupIdNotFound),
                Some(group) => group.validate_delete().and_then(|()| {
                    let written = append(broker, &tombstones(group), now_ms)?;
                    durable = written.or(durable.take());
                    Ok(())
                }),
            };
            if result.is_ok() {
                if let Some(mut group) = state.groups.remove(group_id) {
                    group.mark_dead(now_ms);
                }
                self.reschedule(&mut state, group_id, now_ms);
            }
            results.push(result);
        }
        (results, durable)
    }

    // ---- time ------------------------------------------------------------------------------

    /// Waits until the earliest deadline, a new earlier deadline, or [`TIMER_IDLE_MS`].
    pub(crate) async fn wait_for_timers(&self, now_ms: i64) {
        let notified = self.timers_changed.notified();
        let next = self.lock().schedule.first().map(|(at, _)| *at);
        let delay_ms = next.map_or(TIMER_IDLE_MS, |at| (at - now_ms).clamp(0, TIMER_IDLE_MS));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(delay_ms as u64)) => {}
            _ = notified => {}
        }
    }

    /// Runs every deadline that has passed (sessions, join rounds, sync phases, expiry) and
    /// drops offsets of deleted topics.
    pub(crate) fn run_timers(&self, broker: &Broker) {
        let now_ms = broker.now_ms();
        let mut state = self.lock();
        self.purge_deleted_topics(&mut state, broker, now_ms);
        for _ in 0..TIMER_GROUPS_PER_RUN {
            let Some((at, group_id)) = state.schedule.first().cloned() else { break };
            if at > now_ms {
                break;
            }
            state.schedule.remove(&(at, group_id.clone()));
            state.scheduled_at.remove(&group_id);
            self.settle(&mut state, broker, &group_id, Effects::default(), now_ms);
        }
    }

    /// Answers every parked request with NOT_COORDINATOR (clients look for the coordinator
    /// again) and refuses new waits: the broker is shutting down.
    pub(crate) fn shutdown(&self) {
        let mut state = self.lock();
        state.closed = true;
        for ((_, member_id), sender) in state.join_waiters.drain() {
            let _ = sender.send(JoinOutcome::error(&member_id, GroupError::NotCoordinator));
        }
        for (_, sender) in state.sync_waiters.drain() {
            let _ = sender.send(SyncOutcome::error(GroupError::NotCoordinator));
        }
    }

    // ---- internals -------------------------------------------------------------------------

    /// After a step on `group_id`: run its due deadlines, answer parked requests, persist the
    /// group if asked, delete it if it expired, and reschedule its next deadline.
    fn settle(&self, state: &mut Coordinator, broker: &Broker, group_id: &str, mut fx: Effects, now_ms: i64) {
        if let Some(group) = state.groups.get_mut(group_id) {
            group.advance(now_ms, &self.config, &mut fx);
        }
        for (member_id, outcome) in fx.joins {
            if let Some(sender) = state.join_waiters.remove(&(group_id.to_string(), member_id)) {
                let _ = sender.send(outcome);
            }
        }
        for (member_id, outcome) in fx.syncs {
            if let Some(sender) = state.sync_waiters.remove(&(group_id.to_string(), member_id)) {
                let _ = sender.send(outcome);
            }
        }
        let mut retry_at = None;
        if let Some(group) = state.groups.get_mut(group_id) {
            if fx.store_group {
                let record = (records::group_key(group_id), Some(records::group_value(group, None)));
                match append(broker, &[record], now_ms) {
                    Ok(_) => group.persisted = true,
                    Err(error) => tracing::warn!(group = %group_id, %error, "could not store group metadata"),
                }
            }
            if group.expires_at(&self.config).is_some_and(|at| at <= now_ms) {
                match append(broker, &tombstones(group), now_ms) {
                    Ok(_) => {
                        tracing::info!(group = %group_id, "removing expired empty group and its offsets");
                        state.groups.remove(group_id);
                    }
                    Err(error) => {
                        tracing::warn!(group = %group_id, %error, "could not delete expired group");
                        retry_at = Some(now_ms + RETRY_AFTER_FAILURE_MS);
                    }
                }
            }
        }
        self.reschedule(state, group_id, now_ms);
        if let Some(at) = retry_at {
            self.schedule_at(state, group_id, at);
        }
    }

    /// Puts the group's next deadline in the schedule (never in the past: whatever was due
    /// at `now_ms` has just been handled).
    fn reschedule(&self, state: &mut Coordinator, group_id: &str, now_ms: i64) {
        let next = state.groups.get(group_id).and_then(|g| g.next_deadline(&self.config));
        match next {
            Some(at) => self.schedule_at(state, group_id, at.max(now_ms + 1)),
            None => {
                if let Some(old) = state.scheduled_at.remove(group_id) {
                    state.schedule.remove(&(old, group_id.to_string()));
                }
            }
        }
    }

    fn schedule_at(&self, state: &mut Coordinator, group_id: &str, at: i64) {
        if let Some(old) = state.scheduled_at.remove(group_id) {
            state.schedule.remove(&(old, group_id.to_string()));
        }
        let earliest = state.schedule.first().map(|(first, _)| *first);
        state.schedule.insert((at, group_id.to_string()));
        state.scheduled_at.insert(group_id.to_string(), at);
        if earliest.is_none_or(|first| at < first) {
            self.timers_changed.notify_one();
        }
    }

    /// Kafka deletes the offsets of deleted topics; so does this, once per metadata change.
    fn purge_deleted_topics(&self, state: &mut Coordinator, broker: &Broker, now_ms: i64) {
        let image = broker.metadata();
        if image.applied_index == state.metadata_index_seen {
            return;
        }
        state.metadata_index_seen = image.applied_index;
        let ids: Vec<String> = state.groups.keys().cloned().collect();
        for group_id in ids {
            let Some(group) = state.groups.get_mut(&group_id) else { continue };
            let gone: Vec<(String, i32)> =
                group.offsets().keys().filter(|(t, p)| !partition_exists(&image, t, *p)).cloned().collect();
            if gone.is_empty() {
                continue;
            }
            let tombstones: Vec<KeyValue> =
                gone.iter().map(|(t, p)| (records::offset_key(&group_id, t, *p), None)).collect();
            if append(broker, &tombstones, now_ms).is_ok() {
                for (topic, partition) in &gone {
                    group.remove_offset(topic, *partition);
                }
                self.reschedule(state, &group_id, now_ms);
            }
        }
    }

    // ---- startup -------------------------------------------------------------------------------

    /// Replays `__consumer_offsets` from its start: later records for a key win, tombstones
    /// delete. Groups come back Stable with their stored members (sessions start now) or
    /// Empty; records that do not decode are skipped with a warning.
    pub(crate) fn load(&self, broker: &Broker) -> Result<(), StorageError> {
        let Some(partition) = broker.partition(OFFSETS_TOPIC, 0) else { return Ok(()) };
        compact_offsets_topic(broker);
        let now_ms = broker.now_ms();
        let mut replay = Replay::default();
        partition.log().replay_batches(OFFSETS_TOPIC, |header, batch| {
            if header.is_control() {
                if header.is_transactional() {
                    let commit = crate::storage::control_type(&batch) == Some(crate::storage::CONTROL_TYPE_COMMIT);
                    replay.end_transaction(header.producer_id, commit);
                }
            } else if header.is_transactional() {
                replay.apply_transactional_batch(batch, header.base_offset, header.producer_id);
            } else {
                replay.apply_batch(batch, header.base_offset);
            }
        })?;
        let pending = std::mem::take(&mut replay.pending);
        let groups = replay.into_groups(now_ms);
        let count = groups.len();
        let mut state = self.lock();
        // Transactions without a marker yet: their coordinator completes or aborts them.
        state.pending_txn = pending;
        for group in groups {
            let group_id = group.id.clone();
            state.groups.insert(group_id.clone(), group);
            self.reschedule(&mut state, &group_id, now_ms);
        }
        tracing::info!(groups = count, "loaded consumer groups from {OFFSETS_TOPIC}");
        Ok(())
    }
}

/// Validates and stores the partitions of an accepted commit; applies them once appended.
fn commit_partitions(
    group: &mut Group,
    broker: &Broker,
    image: &MetadataImage,
    partitions: &[CommitPartition],
    now_ms: i64,
) -> CommitReply {
    let mut results = Vec::with_capacity(partitions.len());
    let mut accepted = Vec::new();
    for (index, p) in partitions.iter().enumerate() {
        let metadata = p.metadata.clone().unwrap_or_default();
        let result = if metadata.len() > OFFSET_METADATA_MAX_BYTES {
            Err(GroupError::OffsetMetadataTooLarge)
        } else if !partition_exists(image, &p.topic, p.partition) {
            Err(GroupError::UnknownTopicOrPartition)
        } else {
            let offset = CommittedOffset {
                offset: p.offset,
                leader_epoch: p.leader_epoch,
                metadata,
                commit_timestamp_ms: now_ms,
            };
            accepted.push((index, offset));
            Ok(())
        };
        results.push(result);
    }
    let kv: Vec<KeyValue> = accepted
        .iter()
        .map(|(i, offset)| {
            let p = &partitions[*i];
            (records::offset_key(&group.id, &p.topic, p.partition), Some(records::offset_value(offset)))
        })
        .collect();
    match append(broker, &kv, now_ms) {
        Ok(durable) => {
            for (index, offset) in accepted {
                let p = &partitions[index];
                group.commit(&p.topic, p.partition, offset);
            }
            CommitReply { results, durable }
        }
        Err(error) => {
            for (index, _) in accepted {
                results[index] = Err(error);
            }
            CommitReply { results, durable: None }
        }
    }
}

/// Whether `text` plus `extra_bytes` fits an i16-length string of the stored records.
fn storable(text: &str, extra_bytes: usize) -> bool {
    text.len() + extra_bytes <= i16::MAX as usize
}

/// `text` cut to at most `max_bytes`, on a character boundary.
fn truncated(text: &str, max_bytes: usize) -> &str {
    let mut end = text.len().min(max_bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn partition_exists(image: &MetadataImage, topic: &str, partition: i32) -> bool {
    image.topics.get(topic).is_some_and(|t| (0..t.partitions).contains(&partition))
}

/// Tombstones for everything stored about a group: its offsets and (if written) its metadata.
/// A `__consumer_offsets` created before compaction existed keeps everything; turn its
/// compaction on once (an explicit `cleanup.policy` set by an operator is left alone).
fn compact_offsets_topic(broker: &Broker) {
    let Some(topic) = broker.topic(OFFSETS_TOPIC) else { return };
    if topic.configs.contains_key("cleanup.policy") {
        return;
    }
    let set = [("cleanup.policy".to_string(), "compact".to_string())].into_iter().collect();
    let command = MetadataCommand::AlterTopicConfig { name: OFFSETS_TOPIC.to_string(), set, delete: Vec::new() };
    match broker.propose(command) {
        Ok(_) => tracing::info!("{OFFSETS_TOPIC} is now compacted"),
        Err(e) => tracing::warn!(error = %e, "cannot turn on compaction of {OFFSETS_TOPIC}"),
    }
}

fn tombstones(group: &Group) -> Vec<KeyValue> {
    let mut records: Vec<KeyValue> =
        group.offsets().keys().map(|(t, p)| (records::offset_key(&group.id, t, *p), None)).collect();
    if group.persisted {
        records.push((records::group_key(&group.id), None));
    }
    records
}

/// Appends records to `__consumer_offsets` in batches of about [`BATCH_BYTES_TARGET`];
/// `None` when there was nothing to write.
fn append(broker: &Broker, records: &[KeyValue], now_ms: i64) -> Result<Option<Durable>, GroupError> {
    append_records(broker, records, now_ms, None)
}

/// [`append`], optionally as a transactional batch of `producer` (id, epoch).
fn append_records(
    broker: &Broker,
    records: &[KeyValue],
    now_ms: i64,
    producer: Option<(i64, i16)>,
) -> Result<Option<Durable>, GroupError> {
    if records.is_empty() {
        return Ok(None);
    }
    let partition = broker.partition(OFFSETS_TOPIC, 0).ok_or(GroupError::CoordinatorNotAvailable)?;
    let mut next_offset = 0;
    let mut start = 0;
    while start < records.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < records.len() && (end == start || bytes < BATCH_BYTES_TARGET) {
            let (key, value) = &records[end];
            bytes += key.len() + value.as_ref().map_or(0, Bytes::len) + 32;
            end += 1;
        }
        let batch = records::encode_batch(&records[start..end], now_ms, producer).map_err(|message| {
            tracing::error!(%message, "cannot encode a {OFFSETS_TOPIC} batch");
            GroupError::NotCoordinator
        })?;
        let info = partition.log().append(&batch).map_err(|e| match e {
            StorageError::BatchTooLarge { .. } => GroupError::InvalidCommitOffsetSize,
            other => {
                tracing::error!(error = %other, "append to {OFFSETS_TOPIC} failed");
                GroupError::NotCoordinator
            }
        })?;
        next_offset = info.last_offset + 1;
        start = end;
    }
    broker.notify_appended();
    Ok(Some(Durable { partition, offset: next_offset }))
}

/// What replaying the topic found, per group id.
#[derive(Debug, Default)]
struct Replay {
    groups: BTreeMap<String, ReplayedGroup>,
    /// Offsets of transactions whose marker has not been seen (yet).
    pending: BTreeMap<i64, PendingOffsets>,
}

#[derive(Debug, Default)]
struct ReplayedGroup {
    stored: Option<StoredGroup>,
    offsets: BTreeMap<(String, i32), CommittedOffset>,
}

impl Replay {
    fn apply_batch(&mut self, mut batch: Bytes, base_offset: i64) {
        let set = match RecordBatchDecoder::decode(&mut batch) {
            Ok(set) => set,
            Err(e) => {
                tracing::warn!(offset = base_offset, error = %e, "skipping undecodable batch in {OFFSETS_TOPIC}");
                return;
            }
        };
        for record in set.records {
            let Some(key) = record.key else { continue };
            match records::decode_key(&key) {
                Ok(key) => self.apply(key, record.value, record.offset),
                Err(e) => tracing::warn!(offset = record.offset, error = %e, "skipping record"),
            }
        }
    }

    /// Offsets committed in a transaction wait for its marker.
    fn apply_transactional_batch(&mut self, mut batch: Bytes, base_offset: i64, producer_id: i64) {
        let set = match RecordBatchDecoder::decode(&mut batch) {
            Ok(set) => set,
            Err(e) => {
                tracing::warn!(offset = base_offset, error = %e, "skipping undecodable batch in {OFFSETS_TOPIC}");
                return;
            }
        };
        for record in set.records {
            let (Some(key), Some(value)) = (record.key, record.value) else { continue };
            let Ok(RecordKey::Offset { group, topic, partition }) = records::decode_key(&key) else { continue };
            match records::decode_offset_value(&value) {
                Ok(committed) => {
                    self.pending.entry(producer_id).or_default().insert((group, topic, partition), committed);
                }
                Err(e) => tracing::warn!(offset = record.offset, error = %e, "skipping transactional offset record"),
            }
        }
    }

    /// A marker: the producer's pending offsets become committed, or are dropped.
    fn end_transaction(&mut self, producer_id: i64, commit: bool) {
        let Some(pending) = self.pending.remove(&producer_id) else { return };
        if commit {
            for ((group, topic, partition), offset) in pending {
                self.groups.entry(group).or_default().offsets.insert((topic, partition), offset);
            }
        }
    }

    fn apply(&mut self, key: RecordKey, value: Option<Bytes>, offset: i64) {
        match key {
            RecordKey::Offset { group, topic, partition } => {
                let offsets = &mut self.groups.entry(group).or_default().offsets;
                match value.map(|v| records::decode_offset_value(&v)) {
                    None => {
                        offsets.remove(&(topic, partition));
                    }
                    Some(Ok(committed)) => {
                        offsets.insert((topic, partition), committed);
                    }
                    Some(Err(e)) => tracing::warn!(offset, error = %e, "skipping offset record"),
                }
            }
            RecordKey::Group { group } => {
                let entry = self.groups.entry(group).or_default();
                match value.map(|v| records::decode_group_value(&v)) {
                    None => entry.stored = None,
                    Some(Ok(stored)) => entry.stored = Some(stored),
                    Some(Err(e)) => tracing::warn!(offset, error = %e, "skipping group record"),
                }
            }
        }
    }

    fn into_groups(self, now_ms: i64) -> Vec<Group> {
        let mut groups = Vec::new();
        for (group_id, replayed) in self.groups {
            if replayed.stored.is_none() && replayed.offsets.is_empty() {
                continue;
            }
            let last_commit = replayed.offsets.values().map(|o| o.commit_timestamp_ms).max().unwrap_or(now_ms);
            let mut group = Group::new(group_id, last_commit.min(now_ms));
            if let Some(stored) = replayed.stored {
                group.restore(stored, now_ms);
            }
            for ((topic, partition), offset) in replayed.offsets {
                group.commit(&topic, partition, offset);
            }
            groups.push(group);
        }
        groups
    }
}
