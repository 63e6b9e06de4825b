//! The coordinator shell against a real broker on a temp dir: markers, offsets published by
//! commit markers, restart replay, recovery of a transaction caught between Prepare and
//! Complete, and timeouts.

use std::sync::Arc;

use super::coordinator::TXN_TOPIC;
use super::state::{TxnMetadata, TxnState};
use super::*;
use crate::groups::{CommitPartition, TxnCommitRequest, OFFSETS_TOPIC};
use crate::protocol::batch::build_batch;
use crate::storage::ManualClock;
use crate::Broker;

const TRANSACTIONAL: i16 = 1 << 4;

fn open(dir: &std::path::Path, clock: &Arc<ManualClock>) -> Arc<Broker> {
    let config = crate::config::BrokerConfig { data_dir: dir.to_path_buf(), ..Default::default() };
    Broker::open_with_clock(config, Arc::clone(clock) as Arc<dyn crate::storage::Clock>).expect("broker opens")
}

/// Starts a transaction writing `records` records to `t-0` and offset 7 of `in-0` for group `g`.
fn open_transaction(broker: &Broker, id: &str) -> (i64, i16) {
    broker.auto_create_topic("t").expect("topic");
    broker.auto_create_topic("in").expect("topic");
    let (producer_id, epoch, _) = broker.txns().init_producer_id(broker, id, 60_000, None).expect("init");
    broker.txns().add_partitions(broker, id, producer_id, epoch, vec![("t".to_string(), 0)]).expect("add");
    let batch = build_batch(TRANSACTIONAL, 2, 1, 1, producer_id, epoch, 0, 3, b"abc");
    broker.txns().check_produce(producer_id, epoch, "t", 0).expect("partition was added");
    broker.partition("t", 0).expect("t-0").log().append(&batch).expect("append");
    broker.groups().ensure_offsets_topic(broker).expect("offsets topic");
    let offsets = vec![(OFFSETS_TOPIC.to_string(), 0)];
    broker.txns().add_partitions(broker, id, producer_id, epoch, offsets).expect("add offsets");
    broker.txns().verify(id, producer_id, epoch).expect("verified");
    let commit = TxnCommitRequest {
        group_id: "g".to_string(),
        producer_id,
        producer_epoch: epoch,
        member_id: String::new(),
        group_instance_id: None,
        generation_id: -1,
        partitions: vec![CommitPartition {
            topic: "in".to_string(),
            partition: 0,
            offset: 7,
            leader_epoch: -1,
            metadata: None,
        }],
    };
    let reply = broker.groups().txn_commit(broker, commit);
    assert!(reply.results.iter().all(Result::is_ok), "{:?}", reply.results);
    (producer_id, epoch)
}

fn committed(broker: &Broker) -> Option<i64> {
    let topics = [("in".to_string(), vec![0])];
    let found = broker.groups().fetch_offsets("g", Some(&topics));
    found.first().and_then(|(_, partitions)| partitions.first()).and_then(|(_, o)| o.as_ref()).map(|o| o.offset)
}

fn lso(broker: &Broker) -> (i64, i64) {
    let partition = broker.partition("t", 0).expect("t-0");
    let log = partition.log();
    (log.last_stable_offset(), log.high_watermark())
}

#[test]
fn commit_writes_markers_and_publishes_offsets_and_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_000_000));
    {
        let broker = open(dir.path(), &clock);
        let (producer_id, epoch) = open_transaction(&broker, "tx");
        assert_eq!(lso(&broker), (0, 3), "the open transaction holds the LSO");
        assert_eq!(committed(&broker), None, "transactional offsets are pending");
        assert!(broker.groups().has_pending_offset("g", "in", 0));
        broker.txns().end_txn(&broker, "tx", producer_id, epoch, true).expect("commit");
        assert_eq!(lso(&broker), (4, 4), "marker written, LSO at the end");
        assert_eq!(committed(&broker), Some(7));
        assert!(!broker.groups().has_pending_offset("g", "in", 0));
        assert!(broker.txns().end_txn(&broker, "tx", producer_id, epoch, true).is_ok(), "a retried EndTxn succeeds");
        assert_eq!(
            broker.txns().end_txn(&broker, "tx", producer_id, epoch, false).err(),
            Some(TxnError::InvalidTxnState)
        );
    }
    let broker = open(dir.path(), &clock);
    assert_eq!(committed(&broker), Some(7), "replay of __consumer_offsets honours the commit marker");
    let listed = broker.txns().list();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, "CompleteCommit");
    let (_, epoch, _) = broker.txns().init_producer_id(&broker, "tx", 60_000, None).expect("re-init");
    assert_eq!(epoch, 1, "the epoch survived the restart and was bumped");
}

#[test]
fn abort_drops_offsets_and_indexes_the_aborted_range_even_across_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_000_000));
    {
        let broker = open(dir.path(), &clock);
        let (producer_id, epoch) = open_transaction(&broker, "tx");
        broker.txns().end_txn(&broker, "tx", producer_id, epoch, false).expect("abort");
        assert_eq!(committed(&broker), None);
        let aborted = broker.partition("t", 0).expect("t-0").log().aborted_transactions(0, 10);
        assert_eq!(aborted.len(), 1);
        assert_eq!((aborted[0].producer_id, aborted[0].first_offset, aborted[0].last_offset), (producer_id, 0, 3));
    }
    let broker = open(dir.path(), &clock);
    assert_eq!(committed(&broker), None, "replay drops aborted offsets");
    assert_eq!(broker.partition("t", 0).expect("t-0").log().aborted_transactions(0, 10).len(), 1);
}

#[test]
fn a_transaction_left_in_prepare_commit_is_completed_at_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_000_000));
    {
        let broker = open(dir.path(), &clock);
        let (producer_id, epoch) = open_transaction(&broker, "tx");
        // A crash right after PrepareCommit was stored, before any marker: write what EndTxn
        // writes first, and stop there.
        let mut prepared = TxnMetadata::new("tx".to_string(), producer_id, 60_000, 1_000_000);
        prepared.producer_epoch = epoch;
        prepared.state = TxnState::PrepareCommit;
        prepared.start_ms = 1_000_000;
        prepared.partitions.extend([("t".to_string(), 0), (OFFSETS_TOPIC.to_string(), 0)]);
        let record = super::records::value(&prepared);
        let key = super::records::key("tx");
        let batch = crate::groups::encode_records_for_test(&[(key, Some(record))], 1_000_000);
        broker.partition(TXN_TOPIC, 0).expect("txn topic").log().append(&batch).expect("append");
        assert_eq!(lso(&broker), (0, 3));
    }
    let broker = open(dir.path(), &clock);
    assert_eq!(lso(&broker), (4, 4), "the commit marker was written at load");
    assert_eq!(committed(&broker), Some(7), "and the offsets published");
    assert_eq!(broker.txns().list()[0].state, "CompleteCommit");
}

#[test]
fn timed_out_transactions_are_aborted_with_a_fencing_epoch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_000_000));
    let broker = open(dir.path(), &clock);
    let (producer_id, epoch) = open_transaction(&broker, "tx");
    clock.advance(59_000);
    broker.txns().run_timers(&broker);
    assert_eq!(lso(&broker), (0, 3), "not yet timed out");
    clock.advance(2_000);
    broker.txns().run_timers(&broker);
    assert_eq!(lso(&broker), (4, 4), "aborted by the broker");
    assert_eq!(committed(&broker), None);
    assert_eq!(broker.txns().end_txn(&broker, "tx", producer_id, epoch, true).err(), Some(TxnError::ProducerFenced));
    assert_eq!(broker.txns().check_produce(producer_id, epoch, "t", 0).err(), Some(TxnError::ProducerFenced));
    // The late producer's data is refused by the partition too (the marker bumped the epoch).
    let late = build_batch(TRANSACTIONAL, 0, 1, 1, producer_id, epoch, 3, 1, b"x");
    assert!(broker.partition("t", 0).expect("t-0").log().append(&late).is_err());
    // Idle ids expire.
    clock.advance(8 * 24 * 60 * 60 * 1000);
    broker.txns().run_timers(&broker);
    assert!(broker.txns().list().is_empty());
}

#[test]
fn reinit_aborts_the_previous_producers_transaction_and_limits_apply() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_000_000));
    let broker = open(dir.path(), &clock);
    let (producer_id, epoch) = open_transaction(&broker, "tx");
    let (same_id, new_epoch, _) = broker.txns().init_producer_id(&broker, "tx", 60_000, None).expect("re-init");
    assert_eq!(same_id, producer_id);
    assert!(new_epoch > epoch + 1, "one bump fences (abort markers), one starts the new session");
    assert_eq!(lso(&broker), (4, 4));
    assert_eq!(committed(&broker), None);
    assert_eq!(
        broker.txns().init_producer_id(&broker, "tx", 900_001, None).err(),
        Some(TxnError::InvalidTransactionTimeout)
    );
    assert_eq!(
        broker.txns().check_produce(same_id, new_epoch, "t", 0).err(),
        Some(TxnError::InvalidTxnState),
        "not added"
    );
    assert_eq!(broker.txns().verify("tx", same_id, new_epoch).err(), Some(TxnError::InvalidTxnState));
    assert_eq!(broker.txns().end_txn(&broker, "nope", 1, 0, true).err(), Some(TxnError::InvalidProducerIdMapping));
}

#[test]
fn ids_spread_over_several_state_partitions_come_back_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_000_000));
    let mut config = crate::config::BrokerConfig { data_dir: dir.path().to_path_buf(), ..Default::default() };
    config.transactions.state_log_num_partitions = 3;
    let ids: Vec<String> = (0..12).map(|i| format!("tx-{i}")).collect();
    {
        let broker = Broker::open_with_clock(config.clone(), Arc::clone(&clock) as Arc<dyn crate::storage::Clock>)
            .expect("broker opens");
        for id in &ids {
            broker.txns().init_producer_id(&broker, id, 60_000, None).expect("init");
            broker.txns().init_producer_id(&broker, id, 60_000, None).expect("re-init");
        }
        let used = (0..3)
            .filter(|p| broker.partition(TXN_TOPIC, *p).is_some_and(|partition| partition.log().log_end_offset() > 0));
        assert!(used.count() > 1, "ids are spread over the partitions");
    }
    let broker = Broker::open_with_clock(config, clock as Arc<dyn crate::storage::Clock>).expect("broker reopens");
    let listed = broker.txns().list();
    assert_eq!(listed.len(), ids.len());
    assert!(listed.iter().all(|t| t.producer_epoch == 1 && t.state == "Empty"));
}

#[test]
fn decoders_never_panic_on_garbage() {
    // splitmix64 from a fixed seed: any failure reproduces.
    let mut state = 0x5EED_u64;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let valid = super::records::value(&TxnMetadata::new("x".to_string(), 1, 1, 1));
    for round in 0..2_000 {
        let len = (next() % 96) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if round % 2 == 0 {
            // Mutations of a valid value reach deeper than pure noise.
            bytes = valid.to_vec();
            let at = (next() as usize) % bytes.len();
            bytes[at] = next() as u8;
        }
        let _ = super::records::decode_key(&bytes);
        let _ = super::records::decode_value(String::new(), &bytes);
        let _ = crate::storage::control_type(&bytes);
    }
}
