//! The consumer group coordinator: Kafka's classic group protocol (JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup) and committed offsets, on one node.
//!
//! Layout, from the inside out:
//! - [`group`]: one group's state machine. Sans-I/O: it is driven by requests and a `now_ms`
//!   passed in, and answers with outcomes plus [`group::Effects`] (responses owed to members
//!   that are waiting, and "persist the group"). Every rule Kafka's `GroupMetadataManager` and
//!   `ClassicGroup` apply to classic groups lives here, and the tests drive it from a clock.
//! - [`records`]: the `__consumer_offsets` key/value formats (Kafka's own, so the topic stays
//!   readable by Kafka tooling) and RecordBatch v2 encoding.
//! - [`coordinator`]: [`GroupCoordinator`], the shell. It holds every group behind one lock,
//!   appends records to `__consumer_offsets` in the order state changes happen, parks the
//!   JoinGroup/SyncGroup requests that must wait for other members on one-shot channels, runs
//!   deadlines (sessions, rebalance and initial-delay timers) and replays the topic on open.
//!
//! Durability: an OffsetCommit is answered only once its record is fsynced; group metadata
//! (generation, protocol, leader, members with their subscription and assignment) is written
//! whenever Kafka writes it (leader SyncGroup, a group becoming Empty, a static member
//! replaced in a Stable group), so a broker restart brings groups back Stable with their
//! members, whose sessions restart at load time: a quick restart does not force a rebalance.

mod coordinator;
mod group;
mod records;

#[cfg(test)]
pub(crate) mod tests;

pub(crate) use coordinator::{
    CommitPartition, CommitReply, CommitRequest, GroupCoordinator, JoinReply, SyncReply, TxnCommitRequest,
    OFFSETS_TOPIC,
};
pub(crate) use group::{CommittedOffset, JoinOutcome, JoinRequest, Protocol, SyncOutcome, SyncRequest};

use kafka_protocol::ResponseError;

/// Encodes records as `__consumer_offsets` writes them (for tests of other coordinators).
#[cfg(test)]
pub(crate) fn encode_records_for_test(records: &[(bytes::Bytes, Option<bytes::Bytes>)], now_ms: i64) -> bytes::Bytes {
    records::encode_batch(records, now_ms, None).expect("encodes")
}

/// Kafka's `offset.metadata.max.bytes`: longer commit metadata is refused per partition.
pub(crate) const OFFSET_METADATA_MAX_BYTES: usize = 4096;
/// A bound on how long a join round or a sync phase may last, whatever rebalance timeout a
/// client asks for (its `max.poll.interval.ms`, 5 minutes by default): parked requests and
/// timers always end.
pub(crate) const REBALANCE_TIMEOUT_MAX_MS: i64 = 30 * 60 * 1000;
/// A bound on groups held in memory (a group is a few hundred bytes plus its members and
/// offsets). New groups are refused with COORDINATOR_NOT_AVAILABLE (retriable) past it.
pub(crate) const GROUPS_MAX: usize = 100_000;

/// The coordinator's settings, from the broker config (Kafka's names in brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupConfig {
    /// [`group.initial.rebalance.delay.ms`] How long the first rebalance of an empty group
    /// waits for more members, so consumers started together land in one generation.
    pub(crate) initial_rebalance_delay_ms: i64,
    /// [`group.min.session.timeout.ms`] Smallest session timeout a member may ask for.
    pub(crate) min_session_timeout_ms: i32,
    /// [`group.max.session.timeout.ms`] Largest session timeout a member may ask for.
    pub(crate) max_session_timeout_ms: i32,
    /// [`group.max.size`] Members per group (Kafka: unlimited; here bounded, see README).
    pub(crate) max_size: usize,
    /// [`offsets.retention.minutes`] An Empty group's offsets (and the group) are deleted
    /// this long after it became Empty or after its last commit, whichever is later.
    pub(crate) offsets_retention_ms: i64,
}

impl GroupConfig {
    pub(crate) fn from_broker(config: &crate::config::BrokerConfig) -> GroupConfig {
        GroupConfig {
            initial_rebalance_delay_ms: config.group_initial_rebalance_delay_ms,
            min_session_timeout_ms: config.group_min_session_timeout_ms,
            max_session_timeout_ms: config.group_max_session_timeout_ms,
            max_size: config.group_max_size,
            offsets_retention_ms: config.offsets_retention_minutes.saturating_mul(60_000),
        }
    }
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            initial_rebalance_delay_ms: 3000,
            min_session_timeout_ms: 6000,
            max_session_timeout_ms: 1_800_000,
            max_size: 1000,
            offsets_retention_ms: 7 * 24 * 60 * 60 * 1000,
        }
    }
}

/// Why a group operation was refused; each maps to one Kafka error code at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum GroupError {
    #[error("the coordinator is not available")]
    CoordinatorNotAvailable,
    #[error("this broker cannot serve the group now (storage failure)")]
    NotCoordinator,
    #[error("the group id is not valid")]
    InvalidGroupId,
    #[error("the member id is not known to the group")]
    UnknownMemberId,
    #[error("the member must rejoin with the member id it was given")]
    MemberIdRequired,
    #[error("the generation is not the group's current one")]
    IllegalGeneration,
    #[error("the group is rebalancing")]
    RebalanceInProgress,
    #[error("the protocol type or protocols do not match the group's")]
    InconsistentGroupProtocol,
    #[error("the session timeout is outside the broker's allowed range")]
    InvalidSessionTimeout,
    #[error("the group has reached its maximum size")]
    GroupMaxSizeReached,
    #[error("another member with this group.instance.id replaced this one")]
    FencedInstanceId,
    #[error("the group does not exist")]
    GroupIdNotFound,
    #[error("the group still has members")]
    NonEmptyGroup,
    #[error("the group is subscribed to the topic")]
    GroupSubscribedToTopic,
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error("the offset metadata is longer than {OFFSET_METADATA_MAX_BYTES} bytes")]
    OffsetMetadataTooLarge,
    #[error("the commit is too large to store")]
    InvalidCommitOffsetSize,
}

impl GroupError {
    /// The Kafka error code sent to clients.
    pub(crate) fn code(self) -> i16 {
        let error = match self {
            GroupError::CoordinatorNotAvailable => ResponseError::CoordinatorNotAvailable,
            GroupError::NotCoordinator => ResponseError::NotCoordinator,
            GroupError::InvalidGroupId => ResponseError::InvalidGroupId,
            GroupError::UnknownMemberId => ResponseError::UnknownMemberId,
            GroupError::MemberIdRequired => ResponseError::MemberIdRequired,
            GroupError::IllegalGeneration => ResponseError::IllegalGeneration,
            GroupError::RebalanceInProgress => ResponseError::RebalanceInProgress,
            GroupError::InconsistentGroupProtocol => ResponseError::InconsistentGroupProtocol,
            GroupError::InvalidSessionTimeout => ResponseError::InvalidSessionTimeout,
            GroupError::GroupMaxSizeReached => ResponseError::GroupMaxSizeReached,
            GroupError::FencedInstanceId => ResponseError::FencedInstanceId,
            GroupError::GroupIdNotFound => ResponseError::GroupIdNotFound,
            GroupError::NonEmptyGroup => ResponseError::NonEmptyGroup,
            GroupError::GroupSubscribedToTopic => ResponseError::GroupSubscribedToTopic,
            GroupError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
            GroupError::OffsetMetadataTooLarge => ResponseError::OffsetMetadataTooLarge,
            GroupError::InvalidCommitOffsetSize => ResponseError::InvalidCommitOffsetSize,
        };
        error.code()
    }
}
