//! One transactional id's state machine, sans I/O: requests and a `now_ms` in, a new state
//! (to be persisted by the caller) or a typed refusal out. It never reads the clock and never
//! allocates producer ids; the coordinator shell does both.
//!
//! ```text
//! Empty ──AddPartitions──▶ Ongoing ──EndTxn(commit)──▶ PrepareCommit ──markers──▶ CompleteCommit
//!   ▲                        │    └──EndTxn(abort) / timeout / re-init──▶ PrepareAbort ──▶ CompleteAbort
//!   └──InitProducerId (epoch bump) from Empty / Complete*; Complete* ──AddPartitions──▶ Ongoing
//! ```

use std::collections::BTreeSet;

use super::TxnError;

/// Kafka's `TransactionState`, with its on-disk codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    Dead,
}

impl TxnState {
    pub(crate) fn code(self) -> i8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
            TxnState::Dead => 6,
        }
    }

    pub(crate) fn from_code(code: i8) -> Option<TxnState> {
        Some(match code {
            0 => TxnState::Empty,
            1 => TxnState::Ongoing,
            2 => TxnState::PrepareCommit,
            3 => TxnState::PrepareAbort,
            4 => TxnState::CompleteCommit,
            5 => TxnState::CompleteAbort,
            6 => TxnState::Dead,
            _ => return None,
        })
    }

    /// The name DescribeTransactions/ListTransactions report.
    pub(crate) fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::Dead => "Dead",
        }
    }

    fn is_preparing(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }
}

/// The largest epoch handed out; Kafka moves to a new producer id beyond it.
pub(crate) const EPOCH_MAX: i16 = i16::MAX - 1;

/// What the coordinator knows of one transactional id (Kafka's `TransactionMetadata`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TxnMetadata {
    pub(crate) transactional_id: String,
    pub(crate) producer_id: i64,
    pub(crate) producer_epoch: i16,
    pub(crate) timeout_ms: i32,
    pub(crate) state: TxnState,
    /// Partitions written in the open transaction (markers go to each).
    pub(crate) partitions: BTreeSet<(String, i32)>,
    /// When the open transaction began; -1 when none is open.
    pub(crate) start_ms: i64,
    pub(crate) last_update_ms: i64,
}

/// What InitProducerId must do for an existing transactional id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InitDecision {
    /// Nothing is open: bump the epoch (fencing older producers) and answer.
    BumpEpoch,
    /// The previous producer left a transaction open: abort it first (fences it too).
    AbortOngoing,
}

/// What EndTxn must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndDecision {
    /// Now Prepare{Commit,Abort}: write markers, then complete.
    WriteMarkers,
    /// A retry of an EndTxn that already completed: answer success again.
    AlreadyCompleted,
}

impl TxnMetadata {
    pub(crate) fn new(transactional_id: String, producer_id: i64, timeout_ms: i32, now_ms: i64) -> TxnMetadata {
        TxnMetadata {
            transactional_id,
            producer_id,
            producer_epoch: 0,
            timeout_ms,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            start_ms: -1,
            last_update_ms: now_ms,
        }
    }

    /// The producer of a request must be the current one (KIP-360 re-inits name it).
    pub(crate) fn validate_producer(&self, producer_id: i64, producer_epoch: i16) -> Result<(), TxnError> {
        if producer_id != self.producer_id {
            return Err(TxnError::InvalidProducerIdMapping);
        }
        if producer_epoch != self.producer_epoch {
            return Err(TxnError::ProducerFenced);
        }
        Ok(())
    }

    /// InitProducerId. `expected` is the (id, epoch) a KIP-360 client re-initialising names.
    pub(crate) fn init_decision(&self, expected: Option<(i64, i16)>) -> Result<InitDecision, TxnError> {
        if let Some((producer_id, epoch)) = expected {
            if producer_id != self.producer_id || epoch != self.producer_epoch {
                return Err(TxnError::ProducerFenced);
            }
        }
        match self.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort | TxnState::Dead => Err(TxnError::ConcurrentTransactions),
            TxnState::Ongoing => Ok(InitDecision::AbortOngoing),
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => Ok(InitDecision::BumpEpoch),
        }
    }

    /// Starts a new producer session: the next epoch, state Empty. Returns false when the
    /// epoch is exhausted; the caller then moves the id to a fresh producer id with
    /// [`TxnMetadata::rotate_producer_id`].
    pub(crate) fn bump_epoch(&mut self, timeout_ms: i32, now_ms: i64) -> bool {
        debug_assert!(!self.state.is_preparing() && self.state != TxnState::Ongoing);
        if self.producer_epoch >= EPOCH_MAX {
            return false;
        }
        self.producer_epoch += 1;
        self.reset(timeout_ms, now_ms);
        true
    }

    pub(crate) fn rotate_producer_id(&mut self, producer_id: i64, timeout_ms: i32, now_ms: i64) {
        self.producer_id = producer_id;
        self.producer_epoch = 0;
        self.reset(timeout_ms, now_ms);
    }

    fn reset(&mut self, timeout_ms: i32, now_ms: i64) {
        self.timeout_ms = timeout_ms;
        self.state = TxnState::Empty;
        self.partitions.clear();
        self.start_ms = -1;
        self.last_update_ms = now_ms;
    }

    /// AddPartitionsToTxn / AddOffsetsToTxn: the transaction is (or becomes) Ongoing with
    /// these partitions.
    pub(crate) fn add_partitions(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        partitions: impl IntoIterator<Item = (String, i32)>,
        now_ms: i64,
    ) -> Result<(), TxnError> {
        self.validate_producer(producer_id, producer_epoch)?;
        match self.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort | TxnState::Dead => {
                return Err(TxnError::ConcurrentTransactions)
            }
            TxnState::Ongoing => {}
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                self.state = TxnState::Ongoing;
                self.start_ms = now_ms;
                self.partitions.clear();
            }
        }
        self.partitions.extend(partitions);
        self.last_update_ms = now_ms;
        Ok(())
    }

    /// EndTxn from the producer.
    pub(crate) fn end(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        now_ms: i64,
    ) -> Result<EndDecision, TxnError> {
        self.validate_producer(producer_id, producer_epoch)?;
        match (self.state, commit) {
            (TxnState::Ongoing, _) => {
                self.state = if commit { TxnState::PrepareCommit } else { TxnState::PrepareAbort };
                self.last_update_ms = now_ms;
                Ok(EndDecision::WriteMarkers)
            }
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => Ok(EndDecision::AlreadyCompleted),
            (TxnState::PrepareCommit | TxnState::PrepareAbort, _) => Err(TxnError::ConcurrentTransactions),
            _ => Err(TxnError::InvalidTxnState),
        }
    }

    /// The broker aborts the open transaction itself (timeout, or a new producer taking the
    /// id over): the epoch is bumped first so the old producer is fenced by the markers.
    pub(crate) fn fence_and_prepare_abort(&mut self, now_ms: i64) {
        debug_assert_eq!(self.state, TxnState::Ongoing);
        if self.producer_epoch < EPOCH_MAX {
            self.producer_epoch += 1;
        }
        self.state = TxnState::PrepareAbort;
        self.last_update_ms = now_ms;
    }

    /// The markers are written: Prepare* becomes Complete*.
    pub(crate) fn complete(&mut self, now_ms: i64) {
        self.state = match self.state {
            TxnState::PrepareCommit => TxnState::CompleteCommit,
            TxnState::PrepareAbort => TxnState::CompleteAbort,
            other => {
                debug_assert!(false, "complete from {other:?}");
                other
            }
        };
        self.partitions.clear();
        self.start_ms = -1;
        self.last_update_ms = now_ms;
    }

    /// Whether markers still have to be written (a crash or a write failure interrupted it).
    pub(crate) fn is_preparing(&self) -> bool {
        self.state.is_preparing()
    }

    pub(crate) fn commits(&self) -> bool {
        self.state == TxnState::PrepareCommit
    }

    /// An open transaction past its `transaction.timeout.ms`.
    pub(crate) fn timed_out(&self, now_ms: i64) -> bool {
        self.state == TxnState::Ongoing && now_ms.saturating_sub(self.start_ms) > i64::from(self.timeout_ms)
    }

    /// An idle transactional id past `transactional.id.expiration.ms`.
    pub(crate) fn expired(&self, now_ms: i64, expiration_ms: i64) -> bool {
        matches!(self.state, TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort)
            && now_ms.saturating_sub(self.last_update_ms) >= expiration_ms
    }

    /// Whether a transactional produce from this producer to the partition belongs to the
    /// open transaction (it was added with AddPartitionsToTxn first).
    pub(crate) fn accepts_produce(&self, producer_epoch: i16, topic: &str, partition: i32) -> bool {
        self.state == TxnState::Ongoing
            && producer_epoch == self.producer_epoch
            && self.partitions.contains(&(topic.to_string(), partition))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn() -> TxnMetadata {
        TxnMetadata::new("tx".to_string(), 7, 60_000, 1_000)
    }

    fn p(topic: &str, partition: i32) -> (String, i32) {
        (topic.to_string(), partition)
    }

    #[test]
    fn commit_cycle_goes_through_every_state() {
        let mut t = txn();
        assert_eq!(t.init_decision(None), Ok(InitDecision::BumpEpoch));
        assert!(t.bump_epoch(60_000, 1_000));
        assert_eq!(t.producer_epoch, 1);
        t.add_partitions(7, 1, [p("a", 0)], 2_000).expect("add");
        assert_eq!((t.state, t.start_ms), (TxnState::Ongoing, 2_000));
        t.add_partitions(7, 1, [p("a", 1), p("a", 0)], 3_000).expect("add again");
        assert_eq!(t.partitions.len(), 2);
        assert_eq!(t.start_ms, 2_000, "adding more partitions keeps the start");
        assert!(t.accepts_produce(1, "a", 1));
        assert!(!t.accepts_produce(1, "b", 0));
        assert_eq!(t.end(7, 1, true, 4_000), Ok(EndDecision::WriteMarkers));
        assert_eq!(t.state, TxnState::PrepareCommit);
        assert_eq!(t.add_partitions(7, 1, [p("a", 0)], 4_000), Err(TxnError::ConcurrentTransactions));
        assert_eq!(t.init_decision(None), Err(TxnError::ConcurrentTransactions));
        t.complete(5_000);
        assert_eq!(t.state, TxnState::CompleteCommit);
        assert!(t.partitions.is_empty());
        assert_eq!(t.end(7, 1, true, 5_000), Ok(EndDecision::AlreadyCompleted), "retried EndTxn");
        assert_eq!(t.end(7, 1, false, 5_000), Err(TxnError::InvalidTxnState));
        t.add_partitions(7, 1, [p("b", 0)], 6_000).expect("next transaction");
        assert_eq!(t.partitions.len(), 1, "a new transaction starts with only its partitions");
    }

    #[test]
    fn producers_are_validated_and_empty_cannot_end() {
        let mut t = txn();
        assert_eq!(t.end(7, 0, true, 1), Err(TxnError::InvalidTxnState));
        assert_eq!(t.add_partitions(8, 0, [p("a", 0)], 1), Err(TxnError::InvalidProducerIdMapping));
        assert_eq!(t.add_partitions(7, 1, [p("a", 0)], 1), Err(TxnError::ProducerFenced));
        assert_eq!(t.init_decision(Some((7, 3))), Err(TxnError::ProducerFenced), "KIP-360 with a stale epoch");
        assert_eq!(t.init_decision(Some((7, 0))), Ok(InitDecision::BumpEpoch));
    }

    #[test]
    fn reinit_with_an_open_transaction_aborts_it_with_a_fencing_epoch() {
        let mut t = txn();
        t.add_partitions(7, 0, [p("a", 0)], 10).expect("add");
        assert_eq!(t.init_decision(None), Ok(InitDecision::AbortOngoing));
        t.fence_and_prepare_abort(20);
        assert_eq!((t.state, t.producer_epoch), (TxnState::PrepareAbort, 1));
        assert_eq!(t.add_partitions(7, 0, [p("a", 0)], 1), Err(TxnError::ProducerFenced), "old producer fenced");
        t.complete(30);
        assert_eq!(t.state, TxnState::CompleteAbort);
        assert!(t.bump_epoch(1_000, 40));
        assert_eq!((t.state, t.producer_epoch, t.timeout_ms), (TxnState::Empty, 2, 1_000));
    }

    #[test]
    fn timeouts_expiry_and_epoch_exhaustion() {
        let mut t = txn();
        assert!(!t.timed_out(i64::MAX), "nothing open");
        t.add_partitions(7, 0, [p("a", 0)], 1_000).expect("add");
        assert!(!t.timed_out(61_000));
        assert!(t.timed_out(61_001));
        assert!(!t.expired(i64::MAX, 10), "an open transaction never expires");
        t.fence_and_prepare_abort(61_001);
        t.complete(61_002);
        assert!(!t.expired(61_010, 10));
        assert!(t.expired(61_012, 10));
        t.producer_epoch = EPOCH_MAX;
        assert!(!t.bump_epoch(1, 1), "exhausted");
        t.rotate_producer_id(99, 1, 1);
        assert_eq!((t.producer_id, t.producer_epoch), (99, 0));
    }

    #[test]
    fn state_codes_round_trip() {
        for code in 0..=6 {
            let state = TxnState::from_code(code).expect("known");
            assert_eq!(state.code(), code);
            assert!(!state.name().is_empty());
        }
        assert_eq!(TxnState::from_code(9), None);
    }
}
