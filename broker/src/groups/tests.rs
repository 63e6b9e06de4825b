//! The group state machine driven from a clock: every rule is checked without sockets or
//! disks, each test a pure function of its inputs.

use bytes::{BufMut, Bytes, BytesMut};

use super::group::{Effects, Group, GroupState, JoinStep, SyncStep};
use super::records;
use super::*;

const SESSION_MS: i32 = 10_000;
const REBALANCE_MS: i32 = 30_000;

fn config() -> GroupConfig {
    GroupConfig { initial_rebalance_delay_ms: 100, ..GroupConfig::default() }
}

/// Consumer-protocol subscription metadata (version 0) for `topics`; handler tests use it too.
pub(crate) fn subscription(topics: &[&str]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    buf.put_i32(topics.len() as i32);
    for topic in topics {
        buf.put_i16(topic.len() as i16);
        buf.put_slice(topic.as_bytes());
    }
    buf.put_i32(-1);
    buf.freeze()
}

fn join_request(member_id: &str, instance: Option<&str>, protocols: &[&str]) -> JoinRequest {
    JoinRequest {
        group_id: "g".into(),
        member_id: member_id.into(),
        group_instance_id: instance.map(str::to_string),
        client_id: "client".into(),
        client_host: String::new(),
        session_timeout_ms: SESSION_MS,
        rebalance_timeout_ms: REBALANCE_MS,
        protocol_type: "consumer".into(),
        protocols: protocols
            .iter()
            .map(|name| Protocol { name: name.to_string(), metadata: subscription(&["orders"]) })
            .collect(),
        require_known_member_id: false,
        supports_skip_assignment: false,
    }
}

fn sync_request(member_id: &str, generation_id: i32, assignments: &[(&str, &str)]) -> SyncRequest {
    SyncRequest {
        group_id: "g".into(),
        member_id: member_id.into(),
        group_instance_id: None,
        generation_id,
        protocol_type: None,
        protocol_name: None,
        assignments: assignments.iter().map(|(m, a)| (m.to_string(), Bytes::from(a.to_string()))).collect(),
    }
}

/// Joins a new member and returns the id it waits under.
fn join_new(group: &mut Group, id: &str, now_ms: i64, fx: &mut Effects) -> String {
    match group.join(&join_request("", None, &["range"]), id.to_string(), now_ms, &config(), fx) {
        JoinStep::Wait(member_id) => member_id,
        JoinStep::Respond(outcome) => panic!("expected to wait, got {outcome:?}"),
    }
}

fn outcome_for<'a>(fx: &'a Effects, member_id: &str) -> &'a JoinOutcome {
    fx.joins.iter().find(|(m, _)| m == member_id).map(|(_, o)| o).unwrap_or_else(|| panic!("no join for {member_id}"))
}

/// Advances time in steps of the initial delay until the join round completes; returns when.
fn finish_join(group: &mut Group, mut now_ms: i64, fx: &mut Effects) -> i64 {
    for _ in 0..20 {
        if group.state() != GroupState::PreparingRebalance {
            return now_ms;
        }
        now_ms += config().initial_rebalance_delay_ms;
        group.advance(now_ms, &config(), fx);
    }
    panic!("the join round never completed");
}

/// Brings a group of `ids` to Stable, the first id leading; returns the generation.
fn stable_group(group: &mut Group, ids: &[&str], now_ms: i64) -> i32 {
    let mut fx = Effects::default();
    for id in ids {
        join_new(group, id, now_ms, &mut fx);
    }
    let now_ms = finish_join(group, now_ms, &mut fx);
    assert_eq!(group.state(), GroupState::CompletingRebalance);
    let generation = outcome_for(&fx, ids[0]).generation_id;
    let assignments: Vec<(&str, &str)> = ids.iter().map(|id| (*id, *id)).collect();
    let SyncStep::Store(stored) = group.sync(&sync_request(ids[0], generation, &assignments)) else {
        panic!("leader must store")
    };
    group.finish_leader_sync(generation, Ok(stored), now_ms, &config(), &mut fx);
    assert_eq!(group.state(), GroupState::Stable);
    generation
}

#[test]
fn members_joining_within_the_initial_delay_share_one_generation() {
    let mut group = Group::new("g".into(), 0);
    let mut fx = Effects::default();
    join_new(&mut group, "a", 0, &mut fx);
    join_new(&mut group, "b", 50, &mut fx);
    assert!(fx.joins.is_empty(), "the initial delay holds the round open");
    // b arrived during the delay: the round is extended by another delay.
    group.advance(100, &config(), &mut fx);
    assert!(fx.joins.is_empty());
    assert_eq!(group.state(), GroupState::PreparingRebalance);
    group.advance(200, &config(), &mut fx);
    assert_eq!(group.state(), GroupState::CompletingRebalance);
    let leader = outcome_for(&fx, "a");
    let follower = outcome_for(&fx, "b");
    assert_eq!((leader.generation_id, leader.leader_id.as_str()), (1, "a"));
    assert_eq!(leader.members.len(), 2, "the leader gets every member's metadata");
    assert!(follower.members.is_empty(), "followers get no member list");
    assert_eq!(leader.protocol_name.as_deref(), Some("range"));

    // The follower's SyncGroup waits for the leader's; then each gets its own assignment.
    assert!(matches!(group.sync(&sync_request("b", 1, &[])), SyncStep::Wait));
    let SyncStep::Store(assignments) = group.sync(&sync_request("a", 1, &[("a", "A"), ("b", "B"), ("x", "X")])) else {
        panic!("leader stores")
    };
    assert_eq!(assignments.len(), 2, "assignments for non-members are dropped");
    let mut fx = Effects::default();
    group.finish_leader_sync(1, Ok(assignments), 200, &config(), &mut fx);
    assert_eq!(group.state(), GroupState::Stable);
    let got: Vec<(&str, &[u8])> = fx.syncs.iter().map(|(m, o)| (m.as_str(), o.assignment.as_ref())).collect();
    assert!(got.contains(&("a", b"A".as_slice())) && got.contains(&("b", b"B".as_slice())), "{got:?}");
}

#[test]
fn member_id_required_hands_out_an_id_that_then_joins() {
    let mut group = Group::new("g".into(), 0);
    let mut fx = Effects::default();
    let mut request = join_request("", None, &["range"]);
    request.require_known_member_id = true;
    let JoinStep::Respond(first) = group.join(&request, "client-1".into(), 0, &config(), &mut fx) else {
        panic!("MEMBER_ID_REQUIRED is immediate")
    };
    assert_eq!((first.error, first.member_id.as_str()), (Some(GroupError::MemberIdRequired), "client-1"));
    request.member_id = "client-1".into();
    assert!(
        matches!(group.join(&request, "unused".into(), 10, &config(), &mut fx), JoinStep::Wait(id) if id == "client-1")
    );
    // An id the coordinator never handed out is refused.
    request.member_id = "made-up".into();
    let JoinStep::Respond(refused) = group.join(&request, "unused".into(), 10, &config(), &mut fx) else {
        panic!("unknown ids are refused at once")
    };
    assert_eq!(refused.error, Some(GroupError::UnknownMemberId));
}

#[test]
fn an_unused_pending_member_id_expires_with_the_session_timeout() {
    let mut group = Group::new("g".into(), 0);
    let mut fx = Effects::default();
    let mut request = join_request("", None, &["range"]);
    request.require_known_member_id = true;
    group.join(&request, "pending".into(), 0, &config(), &mut fx);
    assert_eq!(group.next_deadline(&config()), Some(i64::from(SESSION_MS)));
    group.advance(i64::from(SESSION_MS), &config(), &mut fx);
    assert_eq!(group.expires_at(&config()), Some(0), "nothing stored: the group can go at once");
}

#[test]
fn heartbeats_report_rebalances_unknown_members_and_stale_generations() {
    let mut group = Group::new("g".into(), 0);
    let generation = stable_group(&mut group, &["a", "b"], 0);
    assert_eq!(group.heartbeat("a", None, generation, 1_000), Ok(()));
    assert_eq!(group.heartbeat("zzz", None, generation, 1_000), Err(GroupError::UnknownMemberId));
    assert_eq!(group.heartbeat("a", None, generation - 1, 1_000), Err(GroupError::IllegalGeneration));
    // A third member joining starts a rebalance: the others learn it from their heartbeats.
    let mut fx = Effects::default();
    join_new(&mut group, "c", 1_000, &mut fx);
    assert_eq!(group.state(), GroupState::PreparingRebalance);
    assert_eq!(group.heartbeat("a", None, generation, 1_100), Err(GroupError::RebalanceInProgress));
}

#[test]
fn a_silent_member_is_removed_after_its_session_and_the_rest_rebalance() {
    let mut group = Group::new("g".into(), 0);
    let generation = stable_group(&mut group, &["a", "b"], 0);
    let mut fx = Effects::default();
    // a keeps heartbeating, b goes silent.
    for now in (1_000..=9_000).step_by(1_000) {
        group.heartbeat("a", None, generation, now).expect("a is healthy");
    }
    group.advance(300 + i64::from(SESSION_MS), &config(), &mut fx);
    assert_eq!(group.state(), GroupState::PreparingRebalance, "b expired");
    assert_eq!(group.describe().members.len(), 1);
    // a rejoins (it learned of the rebalance from a heartbeat): the round completes at once.
    let step = group.join(&join_request("a", None, &["range"]), "unused".into(), 10_400, &config(), &mut fx);
    assert!(matches!(step, JoinStep::Wait(_)));
    let outcome = outcome_for(&fx, "a");
    assert_eq!((outcome.generation_id, outcome.leader_id.as_str()), (generation + 1, "a"));
    assert_eq!(outcome.members.len(), 1);
}

#[test]
fn members_that_do_not_rejoin_before_the_rebalance_timeout_are_dropped() {
    let mut group = Group::new("g".into(), 0);
    let generation = stable_group(&mut group, &["a", "b"], 0);
    let mut fx = Effects::default();
    // The leader rejoins (a leader's JoinGroup always rebalances); b keeps heartbeating but
    // never rejoins, which holds the round open until the rebalance timeout.
    group.join(&join_request("a", None, &["range"]), "unused".into(), 1_000, &config(), &mut fx);
    assert_eq!(group.state(), GroupState::PreparingRebalance);
    for now in (2_000..31_000).step_by(5_000) {
        assert_eq!(group.heartbeat("b", None, generation, now), Err(GroupError::RebalanceInProgress));
        group.advance(now, &config(), &mut fx);
    }
    assert!(fx.joins.is_empty());
    group.advance(1_000 + i64::from(REBALANCE_MS), &config(), &mut fx);
    let outcome = outcome_for(&fx, "a");
    assert_eq!((outcome.generation_id, outcome.members.len()), (generation + 1, 1), "b was dropped");
    assert_eq!(group.heartbeat("b", None, generation + 1, 31_100), Err(GroupError::UnknownMemberId));
}

#[test]
fn a_member_that_never_syncs_is_removed_after_the_rebalance_timeout() {
    let mut group = Group::new("g".into(), 0);
    let mut fx = Effects::default();
    join_new(&mut group, "a", 0, &mut fx);
    join_new(&mut group, "b", 0, &mut fx);
    let now_ms = finish_join(&mut group, 0, &mut fx);
    let SyncStep::Store(stored) = group.sync(&sync_request("a", 1, &[])) else { panic!("leader") };
    group.finish_leader_sync(1, Ok(stored), now_ms, &config(), &mut fx);
    assert_eq!(group.state(), GroupState::Stable);
    // b heartbeats but never sends SyncGroup: it is dropped, the leader must rejoin.
    group.heartbeat("b", None, 1, 25_000).expect("heartbeats are fine");
    group.heartbeat("a", None, 1, 25_000).expect("heartbeats are fine");
    group.advance(200 + i64::from(REBALANCE_MS), &config(), &mut fx);
    assert_eq!(group.state(), GroupState::PreparingRebalance);
    assert_eq!(group.heartbeat("b", None, 1, 30_300), Err(GroupError::UnknownMemberId));
}

#[test]
fn leaving_rebalances_and_the_last_leave_empties_the_group() {
    let mut group = Group::new("g".into(), 0);
    stable_group(&mut group, &["a", "b"], 0);
    let mut fx = Effects::default();
    let results = group.leave(&[("b".into(), None), ("nobody".into(), None)], 1_000, &config(), &mut fx);
    assert_eq!(results, Ok(vec![Ok(()), Err(GroupError::UnknownMemberId)]));
    assert_eq!(group.state(), GroupState::PreparingRebalance);
    let results = group.leave(&[("a".into(), None)], 1_100, &config(), &mut fx);
    assert_eq!(results, Ok(vec![Ok(())]));
    assert_eq!(group.state(), GroupState::Empty);
    assert!(fx.store_group, "an emptied group is persisted");
    assert_eq!(group.generation_id, 2);
}

#[test]
fn a_restarted_static_member_takes_its_place_back_without_a_rebalance() {
    let mut group = Group::new("g".into(), 0);
    let mut fx = Effects::default();
    for (instance, id) in [("i-a", "a1"), ("i-b", "b1")] {
        group.join(&join_request("", Some(instance), &["range"]), id.into(), 0, &config(), &mut fx);
    }
    finish_join(&mut group, 0, &mut fx);
    let SyncStep::Store(stored) = group.sync(&sync_request("a1", 1, &[("a1", "A"), ("b1", "B")])) else {
        panic!("leader")
    };
    group.finish_leader_sync(1, Ok(stored), 200, &config(), &mut fx);
    // b restarts: it joins with an empty member id and its instance id.
    let mut fx = Effects::default();
    let step = group.join(&join_request("", Some("i-b"), &["range"]), "b2".into(), 5_000, &config(), &mut fx);
    let JoinStep::Respond(outcome) = step else { panic!("a stable group answers at once") };
    assert_eq!((outcome.error, outcome.generation_id, outcome.member_id.as_str()), (None, 1, "b2"));
    assert!(fx.store_group, "the new member id is persisted");
    assert_eq!(group.state(), GroupState::Stable, "no rebalance for the others");
    let SyncStep::Respond(sync) = group.sync(&sync_request("b2", 1, &[])) else { panic!("stable sync") };
    assert_eq!(sync.assignment, Bytes::from_static(b"B"), "the previous assignment comes back");
    // The old incarnation is fenced.
    assert_eq!(group.heartbeat("b1", Some("i-b"), 1, 5_100), Err(GroupError::FencedInstanceId));
    // A restarted static leader is told the old leader id, so it does not reassign.
    let step = group.join(&join_request("", Some("i-a"), &["range"]), "a2".into(), 6_000, &config(), &mut fx);
    let JoinStep::Respond(outcome) = step else { panic!("answers at once") };
    assert_eq!((outcome.leader_id.as_str(), outcome.member_id.as_str()), ("a1", "a2"));
    assert_eq!(group.leader_id.as_deref(), Some("a2"));
    // Leaving by instance id removes the static member.
    let results = group.leave(&[(String::new(), Some("i-b".into()))], 7_000, &config(), &mut fx);
    assert_eq!(results, Ok(vec![Ok(())]));
    assert_eq!(group.state(), GroupState::PreparingRebalance);
}

#[test]
fn protocols_must_be_shared_and_the_most_preferred_common_one_wins() {
    let mut group = Group::new("g".into(), 0);
    let mut fx = Effects::default();
    group.join(&join_request("", None, &["roundrobin", "range"]), "a".into(), 0, &config(), &mut fx);
    group.join(&join_request("", None, &["range", "roundrobin"]), "b".into(), 0, &config(), &mut fx);
    group.join(&join_request("", None, &["range"]), "c".into(), 0, &config(), &mut fx);
    let JoinStep::Respond(refused) =
        group.join(&join_request("", None, &["cooperative-sticky"]), "d".into(), 0, &config(), &mut fx)
    else {
        panic!("no common protocol")
    };
    assert_eq!(refused.error, Some(GroupError::InconsistentGroupProtocol));
    let mut other_type = join_request("", None, &["range"]);
    other_type.protocol_type = "connect".into();
    let JoinStep::Respond(refused) = group.join(&other_type, "e".into(), 0, &config(), &mut fx) else {
        panic!("type mismatch")
    };
    assert_eq!(refused.error, Some(GroupError::InconsistentGroupProtocol));
    finish_join(&mut group, 0, &mut fx);
    assert_eq!(group.protocol_name.as_deref(), Some("range"));
}

#[test]
fn the_group_size_is_bounded() {
    let config = GroupConfig { max_size: 2, ..config() };
    let mut group = Group::new("g".into(), 0);
    let mut fx = Effects::default();
    for id in ["a", "b"] {
        group.join(&join_request("", None, &["range"]), id.into(), 0, &config, &mut fx);
    }
    finish_join(&mut group, 0, &mut fx);
    let JoinStep::Respond(refused) = group.join(&join_request("", None, &["range"]), "c".into(), 300, &config, &mut fx)
    else {
        panic!("full")
    };
    assert_eq!(refused.error, Some(GroupError::GroupMaxSizeReached));
}

#[test]
fn offset_commits_follow_kafkas_membership_rules() {
    let mut group = Group::new("g".into(), 0);
    assert_eq!(group.validate_commit("", None, -1), Ok(()), "simple commits to an empty group");
    let generation = stable_group(&mut group, &["a"], 0);
    assert_eq!(group.validate_commit("", None, -1), Err(GroupError::UnknownMemberId));
    assert_eq!(group.validate_commit("a", None, generation), Ok(()));
    assert_eq!(group.validate_commit("a", None, generation + 5), Err(GroupError::IllegalGeneration));
    assert_eq!(group.validate_commit("x", None, generation), Err(GroupError::UnknownMemberId));
    let mut fx = Effects::default();
    join_new(&mut group, "b", 1_000, &mut fx);
    group.join(&join_request("a", None, &["range"]), "unused".into(), 1_000, &config(), &mut fx);
    assert_eq!(group.state(), GroupState::CompletingRebalance);
    let generation = outcome_for(&fx, "a").generation_id;
    assert_eq!(group.validate_commit("a", None, generation), Err(GroupError::RebalanceInProgress));
}

#[test]
fn only_empty_groups_are_deleted_and_offsets_of_subscribed_topics_stay() {
    let mut group = Group::new("g".into(), 0);
    assert_eq!(group.validate_delete(), Ok(()));
    stable_group(&mut group, &["a"], 0);
    assert_eq!(group.validate_delete(), Err(GroupError::NonEmptyGroup));
    assert_eq!(group.validate_offset_delete(), Ok(()), "consumer groups may drop unsubscribed topics");
    assert!(group.is_subscribed_to("orders"));
    assert!(!group.is_subscribed_to("payments"));
}

#[test]
fn the_stored_group_record_restores_members_and_assignments() {
    let mut group = Group::new("g".into(), 0);
    let generation = stable_group(&mut group, &["a", "b"], 0);
    let value = records::group_value(&group, None);
    let stored = records::decode_group_value(&value).expect("decodes");
    let mut restored = Group::new("g".into(), 0);
    restored.restore(stored, 50_000);
    assert_eq!(restored.state(), GroupState::Stable);
    assert_eq!(restored.generation_id, generation);
    assert_eq!(restored.leader_id.as_deref(), Some("a"));
    assert_eq!(restored.describe(), group.describe());
    // Sessions start again at load time: heartbeats with the old generation keep working.
    assert_eq!(restored.heartbeat("b", None, generation, 55_000), Ok(()));
    let mut fx = Effects::default();
    restored.advance(50_000 + i64::from(SESSION_MS), &config(), &mut fx);
    assert_eq!(restored.state(), GroupState::PreparingRebalance, "a never heartbeat after the restart");
}

#[test]
fn empty_groups_expire_after_the_offsets_retention() {
    let config = GroupConfig { offsets_retention_ms: 1_000, ..config() };
    let mut group = Group::new("g".into(), 0);
    let offset = CommittedOffset { offset: 1, leader_epoch: -1, metadata: String::new(), commit_timestamp_ms: 500 };
    group.commit("t", 0, offset);
    assert_eq!(group.expires_at(&config), Some(1_500));
    stable_group(&mut group, &["a"], 600);
    assert_eq!(group.expires_at(&config), None, "groups with members never expire");
}

#[test]
fn subscriptions_parse_and_garbage_is_unknown() {
    assert_eq!(group::subscribed_topics(&subscription(&["a", "bb"])), Some(vec!["a".to_string(), "bb".to_string()]));
    assert_eq!(group::subscribed_topics(b"\x00\x00\x7f\xff\xff\xff"), None, "a huge count is refused");
    assert_eq!(group::subscribed_topics(b"\x00"), None);
}
