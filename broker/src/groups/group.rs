//! One consumer group's state machine, following Kafka's classic group protocol
//! (`GroupMetadataManager` + `ClassicGroup`). No I/O and no clock: time arrives as `now_ms`,
//! and what must happen outside (answer a parked JoinGroup/SyncGroup, persist the group) is
//! returned in [`Effects`].
//!
//! States: Empty → PreparingRebalance (members (re)join; the round ends when all known members
//! joined, or at the rebalance timeout, or — for a group that was Empty — after the initial
//! delay) → CompletingRebalance (generation + 1; the leader computes assignments) → Stable
//! (the leader's SyncGroup arrived). Dead is a deleted group.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::{GroupConfig, GroupError, REBALANCE_TIMEOUT_MAX_MS};

/// The protocol type of Kafka consumers; other types (connect, ...) are relayed untouched.
const CONSUMER_PROTOCOL_TYPE: &str = "consumer";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// Kafka's name for the state, as DescribeGroups and ListGroups report it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// One protocol a member supports (an assignor, for consumers) and its opaque metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Protocol {
    pub(crate) name: String,
    pub(crate) metadata: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommittedOffset {
    pub(crate) offset: i64,
    pub(crate) leader_epoch: i32,
    pub(crate) metadata: String,
    pub(crate) commit_timestamp_ms: i64,
}

/// A JoinGroup request, already validated for shape by the handler.
#[derive(Debug, Clone)]
pub(crate) struct JoinRequest {
    pub(crate) group_id: String,
    /// Empty for a member joining for the first time.
    pub(crate) member_id: String,
    pub(crate) group_instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) session_timeout_ms: i32,
    pub(crate) rebalance_timeout_ms: i32,
    pub(crate) protocol_type: String,
    pub(crate) protocols: Vec<Protocol>,
    /// JoinGroup v4+: a new dynamic member first gets MEMBER_ID_REQUIRED and its id.
    pub(crate) require_known_member_id: bool,
    /// JoinGroup v9+: a rejoining static leader may be told to skip the assignment.
    pub(crate) supports_skip_assignment: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct SyncRequest {
    pub(crate) group_id: String,
    pub(crate) member_id: String,
    pub(crate) group_instance_id: Option<String>,
    pub(crate) generation_id: i32,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol_name: Option<String>,
    pub(crate) assignments: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JoinedMember {
    pub(crate) member_id: String,
    pub(crate) group_instance_id: Option<String>,
    pub(crate) metadata: Bytes,
}

/// What a JoinGroup is answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JoinOutcome {
    pub(crate) error: Option<GroupError>,
    pub(crate) generation_id: i32,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol_name: Option<String>,
    pub(crate) leader_id: String,
    pub(crate) member_id: String,
    pub(crate) skip_assignment: bool,
    /// Every member with its metadata, for the leader only.
    pub(crate) members: Vec<JoinedMember>,
}

impl JoinOutcome {
    pub(crate) fn error(member_id: &str, error: GroupError) -> JoinOutcome {
        JoinOutcome {
            error: Some(error),
            generation_id: -1,
            protocol_type: None,
            protocol_name: None,
            leader_id: String::new(),
            member_id: member_id.to_string(),
            skip_assignment: false,
            members: Vec::new(),
        }
    }
}

/// What a SyncGroup is answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyncOutcome {
    pub(crate) error: Option<GroupError>,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol_name: Option<String>,
    pub(crate) assignment: Bytes,
}

impl SyncOutcome {
    pub(crate) fn error(error: GroupError) -> SyncOutcome {
        SyncOutcome { error: Some(error), protocol_type: None, protocol_name: None, assignment: Bytes::new() }
    }
}

/// What a JoinGroup does next: answer now, or wait for the join round to complete.
#[derive(Debug)]
pub(crate) enum JoinStep {
    Respond(JoinOutcome),
    /// The member (its id) waits for the join round to complete.
    Wait(String),
}

/// What a SyncGroup does next. `Store` is the leader's: persist the group with these
/// assignments, then call [`Group::finish_leader_sync`]; the leader waits like the others.
#[derive(Debug)]
pub(crate) enum SyncStep {
    Respond(SyncOutcome),
    Wait,
    Store(Vec<(String, Bytes)>),
}

/// What the shell must do after a step: answer parked requests, persist the group.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    pub(crate) joins: Vec<(String, JoinOutcome)>,
    pub(crate) syncs: Vec<(String, SyncOutcome)>,
    pub(crate) store_group: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub(crate) member_id: String,
    pub(crate) group_instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) rebalance_timeout_ms: i32,
    pub(crate) session_timeout_ms: i32,
    pub(crate) protocols: Vec<Protocol>,
    pub(crate) assignment: Bytes,
    awaiting_join: bool,
    awaiting_sync: bool,
    session_deadline_ms: i64,
    /// Members are ordered by when they joined: the next leader is the oldest member.
    join_order: u64,
}

impl Member {
    /// The member's metadata for `protocol` (empty when it does not support it).
    pub(crate) fn metadata(&self, protocol: Option<&str>) -> Bytes {
        let found = protocol.and_then(|name| self.protocols.iter().find(|p| p.name == name));
        found.map(|p| p.metadata.clone()).unwrap_or_default()
    }

    fn matches(&self, protocols: &[Protocol]) -> bool {
        self.protocols == protocols
    }

    fn supports(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|p| p.name == protocol)
    }
}

/// A member as DescribeGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberDescription {
    pub(crate) member_id: String,
    pub(crate) group_instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) metadata: Bytes,
    pub(crate) assignment: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupDescription {
    pub(crate) state: GroupState,
    pub(crate) protocol_type: String,
    /// The selected protocol while Stable, else empty (as Kafka reports it).
    pub(crate) protocol_data: String,
    pub(crate) members: Vec<MemberDescription>,
}

/// The initial rebalance of a group that was Empty: it keeps waiting, one delay at a time,
/// while new members keep arriving and time remains (Kafka's `InitialDelayedJoin`).
#[derive(Debug, Clone, Copy)]
struct InitialJoin {
    delay_ms: i64,
    remaining_ms: i64,
}

#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) id: String,
    state: GroupState,
    previous_state: GroupState,
    state_timestamp_ms: i64,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol_name: Option<String>,
    pub(crate) generation_id: i32,
    pub(crate) leader_id: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, with the deadline to rejoin by.
    pending_members: BTreeMap<String, i64>,
    /// Members of the current generation that have not sent SyncGroup yet.
    pending_sync: BTreeSet<String>,
    /// group.instance.id → member id.
    static_members: BTreeMap<String, String>,
    join_deadline_ms: Option<i64>,
    initial_join: Option<InitialJoin>,
    new_member_added: bool,
    /// (deadline, generation) by which every member must have sent SyncGroup.
    sync_deadline: Option<(i64, i32)>,
    offsets: BTreeMap<(String, i32), CommittedOffset>,
    next_join_order: u64,
    /// A group metadata record may exist in the log, so deleting the group needs a tombstone.
    pub(crate) persisted: bool,
}

impl Group {
    pub(crate) fn new(id: String, now_ms: i64) -> Group {
        Group {
            id,
            state: GroupState::Empty,
            previous_state: GroupState::Empty,
            state_timestamp_ms: now_ms,
            protocol_type: None,
            protocol_name: None,
            generation_id: 0,
            leader_id: None,
            members: BTreeMap::new(),
            pending_members: BTreeMap::new(),
            pending_sync: BTreeSet::new(),
            static_members: BTreeMap::new(),
            join_deadline_ms: None,
            initial_join: None,
            new_member_added: false,
            sync_deadline: None,
            offsets: BTreeMap::new(),
            next_join_order: 0,
            persisted: false,
        }
    }

    pub(crate) fn state(&self) -> GroupState {
        self.state
    }

    pub(crate) fn state_timestamp_ms(&self) -> i64 {
        self.state_timestamp_ms
    }

    /// Members in join order.
    pub(crate) fn members(&self) -> Vec<&Member> {
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by_key(|m| m.join_order);
        members
    }

    pub(crate) fn offsets(&self) -> &BTreeMap<(String, i32), CommittedOffset> {
        &self.offsets
    }

    pub(crate) fn offset(&self, topic: &str, partition: i32) -> Option<&CommittedOffset> {
        self.offsets.get(&(topic.to_string(), partition))
    }

    fn transition(&mut self, state: GroupState, now_ms: i64) {
        debug_assert!(state != self.state || state == GroupState::PreparingRebalance, "{:?} → {state:?}", self.state);
        self.previous_state = self.state;
        self.state = state;
        self.state_timestamp_ms = now_ms;
    }

    fn is_leader(&self, member_id: &str) -> bool {
        self.leader_id.as_deref() == Some(member_id)
    }

    /// The largest rebalance timeout of any member, bounded by [`REBALANCE_TIMEOUT_MAX_MS`].
    fn rebalance_timeout_ms(&self) -> i64 {
        let largest = self.members.values().map(|m| i64::from(m.rebalance_timeout_ms)).max().unwrap_or(0);
        largest.clamp(0, REBALANCE_TIMEOUT_MAX_MS)
    }

    fn all_members_joined(&self) -> bool {
        self.members.values().all(|m| m.awaiting_join) && self.pending_members.is_empty()
    }

    fn awaiting_join_count(&self) -> usize {
        self.members.values().filter(|m| m.awaiting_join).count()
    }

    /// Whether a member with these protocols could join: an Empty group takes any non-empty
    /// set; otherwise the type must match and one protocol must be supported by everyone.
    fn supports_protocols(&self, protocol_type: &str, protocols: &[Protocol]) -> bool {
        if self.state == GroupState::Empty {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && protocols.iter().any(|p| self.members.values().all(|m| m.supports(&p.name)))
    }

    /// Kafka's `acceptJoiningMember`: new members are taken up to `group.max.size`.
    fn accepts_joining_member(&self, member_id: &str, config: &GroupConfig) -> bool {
        match self.state {
            GroupState::Empty | GroupState::Dead => true,
            GroupState::PreparingRebalance => {
                self.members.get(member_id).is_some_and(|m| m.awaiting_join)
                    || self.awaiting_join_count() < config.max_size
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.members.contains_key(member_id) || self.members.len() < config.max_size
            }
        }
    }

    /// Checks that `member_id` is a member and, for a static member, still the one its
    /// instance id maps to (a replaced one is fenced).
    fn validate_member(&self, member_id: &str, group_instance_id: Option<&str>) -> Result<(), GroupError> {
        if let Some(instance) = group_instance_id {
            match self.static_members.get(instance) {
                None => return Err(GroupError::UnknownMemberId),
                Some(current) if current != member_id => return Err(GroupError::FencedInstanceId),
                Some(_) => {}
            }
        }
        if !self.members.contains_key(member_id) {
            return Err(GroupError::UnknownMemberId);
        }
        Ok(())
    }

    /// The protocol every member supports that most members prefer (ties: the one the
    /// oldest member lists first).
    fn select_protocol(&self) -> Option<String> {
        let members = self.members();
        let first = members.first()?;
        let candidates: Vec<&str> = first
            .protocols
            .iter()
            .map(|p| p.name.as_str())
            .filter(|name| members.iter().all(|m| m.supports(name)))
            .collect();
        let mut votes: Vec<(&str, usize)> = candidates.iter().map(|c| (*c, 0)).collect();
        for member in &members {
            if let Some(choice) = member.protocols.iter().find(|p| candidates.contains(&p.name.as_str())) {
                if let Some(entry) = votes.iter_mut().find(|(name, _)| *name == choice.name) {
                    entry.1 += 1;
                }
            }
        }
        let best = votes.iter().map(|(_, n)| *n).max()?;
        votes.iter().find(|(_, n)| *n == best).map(|(name, _)| name.to_string())
    }

    /// Every member with its metadata for the selected protocol: the leader's member list.
    fn current_members(&self) -> Vec<JoinedMember> {
        self.members()
            .into_iter()
            .map(|m| JoinedMember {
                member_id: m.member_id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                metadata: m.metadata(self.protocol_name.as_deref()),
            })
            .collect()
    }

    fn generation_outcome(&self, member_id: &str, with_members: bool) -> JoinOutcome {
        JoinOutcome {
            error: None,
            generation_id: self.generation_id,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader_id: self.leader_id.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            skip_assignment: false,
            members: if with_members { self.current_members() } else { Vec::new() },
        }
    }

    // ---- JoinGroup ---------------------------------------------------------------------

    /// Handles a JoinGroup. `new_member_id` is the id a new member gets (generated by the
    /// caller, so that tests choose it).
    pub(crate) fn join(
        &mut self,
        request: &JoinRequest,
        new_member_id: String,
        now_ms: i64,
        config: &GroupConfig,
        fx: &mut Effects,
    ) -> JoinStep {
        let member_id = request.member_id.as_str();
        let refuse = |error| JoinStep::Respond(JoinOutcome::error(member_id, error));
        if !self.accepts_joining_member(member_id, config) {
            self.remove(member_id, fx);
            return refuse(GroupError::GroupMaxSizeReached);
        }
        if self.state == GroupState::Dead {
            return refuse(GroupError::CoordinatorNotAvailable);
        }
        if !self.supports_protocols(&request.protocol_type, &request.protocols) {
            return refuse(GroupError::InconsistentGroupProtocol);
        }
        if member_id.is_empty() {
            self.join_new_member(request, new_member_id, now_ms, config, fx)
        } else {
            self.join_existing_member(request, now_ms, config, fx)
        }
    }

    fn join_new_member(
        &mut self,
        request: &JoinRequest,
        new_member_id: String,
        now_ms: i64,
        config: &GroupConfig,
        fx: &mut Effects,
    ) -> JoinStep {
        if let Some(instance) = &request.group_instance_id {
            return match self.static_members.get(instance).cloned() {
                Some(old_member_id) => {
                    self.rejoin_static_member(request, old_member_id, new_member_id, now_ms, config, fx)
                }
                None => self.add_member_and_rebalance(request, new_member_id, now_ms, config, fx),
            };
        }
        if !request.require_known_member_id {
            return self.add_member_and_rebalance(request, new_member_id, now_ms, config, fx);
        }
        // Bounded like members: a client looping on empty-id joins cannot grow this map.
        if self.pending_members.len() >= config.max_size {
            return JoinStep::Respond(JoinOutcome::error("", GroupError::GroupMaxSizeReached));
        }
        let deadline = now_ms + i64::from(request.session_timeout_ms);
        self.pending_members.insert(new_member_id.clone(), deadline);
        JoinStep::Respond(JoinOutcome::error(&new_member_id, GroupError::MemberIdRequired))
    }

    fn join_existing_member(
        &mut self,
        request: &JoinRequest,
        now_ms: i64,
        config: &GroupConfig,
        fx: &mut Effects,
    ) -> JoinStep {
        let member_id = request.member_id.as_str();
        if self.pending_members.contains_key(member_id) {
            // Ids handed out with MEMBER_ID_REQUIRED are dynamic; a static id never needs one.
            if request.group_instance_id.is_some() {
                return JoinStep::Respond(JoinOutcome::error(member_id, GroupError::UnknownMemberId));
            }
            return self.add_member_and_rebalance(request, member_id.to_string(), now_ms, config, fx);
        }
        if let Err(error) = self.validate_member(member_id, request.group_instance_id.as_deref()) {
            return JoinStep::Respond(JoinOutcome::error(member_id, error));
        }
        let unchanged = self.members.get(member_id).is_some_and(|m| m.matches(&request.protocols));
        match self.state {
            GroupState::PreparingRebalance => self.update_member_and_rebalance(request, now_ms, config, fx),
            // The member lost the JoinGroup response: give it the current generation again.
            GroupState::CompletingRebalance if unchanged => {
                JoinStep::Respond(self.generation_outcome(member_id, self.is_leader(member_id)))
            }
            // A leader rejoining forces a rebalance (its view of topics may have changed);
            // a follower with unchanged metadata just gets the current generation.
            GroupState::Stable if unchanged && !self.is_leader(member_id) => {
                JoinStep::Respond(self.generation_outcome(member_id, false))
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.update_member_and_rebalance(request, now_ms, config, fx)
            }
            GroupState::Empty | GroupState::Dead => {
                JoinStep::Respond(JoinOutcome::error(member_id, GroupError::UnknownMemberId))
            }
        }
    }

    fn add_member_and_rebalance(
        &mut self,
        request: &JoinRequest,
        member_id: String,
        now_ms: i64,
        config: &GroupConfig,
        fx: &mut Effects,
    ) -> JoinStep {
        if self.state == GroupState::PreparingRebalance && self.previous_state == GroupState::Empty {
            self.new_member_added = true;
        }
        if self.members.is_empty() {
            self.protocol_type = Some(request.protocol_type.clone());
        }
        if self.leader_id.is_none() {
            self.leader_id = Some(member_id.clone());
        }
        if let Some(instance) = &request.group_instance_id {
            self.static_members.insert(instance.clone(), member_id.clone());
        }
        self.pending_members.remove(&member_id);
        let member = Member {
            member_id: member_id.clone(),
            group_instance_id: request.group_instance_id.clone(),
            client_id: request.client_id.clone(),
            client_host: request.client_host.clone(),
            rebalance_timeout_ms: request.rebalance_timeout_ms,
            session_timeout_ms: request.session_timeout_ms,
            protocols: request.protocols.clone(),
            assignment: Bytes::new(),
            awaiting_join: true,
            awaiting_sync: false,
            session_deadline_ms: now_ms + i64::from(request.session_timeout_ms),
            join_order: self.next_join_order,
        };
        self.next_join_order += 1;
        self.members.insert(member_id.clone(), member);
        self.maybe_prepare_rebalance_or_complete_join(now_ms, config, fx);
        JoinStep::Wait(member_id)
    }

    fn update_member_and_rebalance(
        &mut self,
        request: &JoinRequest,
        now_ms: i64,
        config: &GroupConfig,
        fx: &mut Effects,
    ) -> JoinStep {
        if let Some(member) = self.members.get_mut(&request.member_id) {
            member.protocols = request.protocols.clone();
            member.rebalance_timeout_ms = request.rebalance_timeout_ms;
            member.session_timeout_ms = request.session_timeout_ms;
            member.awaiting_join = true;
        }
        self.maybe_prepare_rebalance_or_complete_join(now_ms, config, fx);
        JoinStep::Wait(request.member_id.clone())
    }

    /// A static member rejoined with an empty member id (it restarted): it takes over the old
    /// member's place under a new id. In a Stable group whose protocol would not change it
    /// gets the current generation back and nobody rebalances.
    fn rejoin_static_member(
        &mut self,
        request: &JoinRequest,
        old_member_id: String,
        new_member_id: String,
        now_ms: i64,
        config: &GroupConfig,
        fx: &mut Effects,
    ) -> JoinStep {
        let previous_leader = self.leader_id.clone().unwrap_or_default();
        self.replace_static_member(&old_member_id, &new_member_id, now_ms, fx);
        if let Some(member) = self.members.get_mut(&new_member_id) {
            member.protocols = request.protocols.clone();
            member.rebalance_timeout_ms = request.rebalance_timeout_ms;
            member.session_timeout_ms = request.session_timeout_ms;
            member.awaiting_join = true;
        }
        match self.state {
            GroupState::Stable if self.select_protocol() == self.protocol_name => {
                if let Some(member) = self.members.get_mut(&new_member_id) {
                    member.awaiting_join = false;
                }
                fx.store_group = true;
                let outcome = if request.supports_skip_assignment {
                    let is_leader = self.is_leader(&new_member_id);
                    JoinOutcome { skip_assignment: is_leader, ..self.generation_outcome(&new_member_id, is_leader) }
                } else {
                    // The old leader id is returned so a restarted leader does not think it
                    // must assign (its SyncGroup would not be broadcast in a Stable group).
                    JoinOutcome { leader_id: previous_leader, ..self.generation_outcome(&new_member_id, false) }
                };
                JoinStep::Respond(outcome)
            }
            GroupState::Stable => {
                self.maybe_prepare_rebalance_or_complete_join(now_ms, config, fx);
                JoinStep::Wait(new_member_id)
            }
            // The leader may already have assigned to the old id: rebalance.
            GroupState::CompletingRebalance => {
                self.prepare_rebalance(now_ms, config, fx);
                JoinStep::Wait(new_member_id)
            }
            GroupState::PreparingRebalance => {
                self.maybe_complete_join_phase(now_ms, fx);
                JoinStep::Wait(new_member_id)
            }
            GroupState::Empty | GroupState::Dead => {
                JoinStep::Respond(JoinOutcome::error("", GroupError::UnknownMemberId))
            }
        }
    }

    /// Moves a static member to a new member id, fencing whatever the old id had parked.
    fn replace_static_member(&mut self, old_member_id: &str, new_member_id: &str, now_ms: i64, fx: &mut Effects) {
        let Some(mut member) = self.members.remove(old_member_id) else { return };
        if member.awaiting_join {
            fx.joins.push((old_member_id.to_string(), JoinOutcome::error(old_member_id, GroupError::FencedInstanceId)));
        }
        if member.awaiting_sync {
            fx.syncs.push((old_member_id.to_string(), SyncOutcome::error(GroupError::FencedInstanceId)));
        }
        member.member_id = new_member_id.to_string();
        member.awaiting_join = false;
        member.awaiting_sync = false;
        member.session_deadline_ms = now_ms + i64::from(member.session_timeout_ms);
        if let Some(instance) = &member.group_instance_id {
            self.static_members.insert(instance.clone(), new_member_id.to_string());
        }
        if self.is_leader(old_member_id) {
            self.leader_id = Some(new_member_id.to_string());
        }
        if self.pending_sync.remove(old_member_id) {
            self.pending_sync.insert(new_member_id.to_string());
        }
        self.members.insert(new_member_id.to_string(), member);
    }

    // ---- rebalance -------------------------------------------------------------------

    fn maybe_prepare_rebalance_or_complete_join(&mut self, now_ms: i64, config: &GroupConfig, fx: &mut Effects) {
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance | GroupState::Empty => {
                self.prepare_rebalance(now_ms, config, fx)
            }
            GroupState::PreparingRebalance | GroupState::Dead => self.maybe_complete_join_phase(now_ms, fx),
        }
    }

    fn prepare_rebalance(&mut self, now_ms: i64, config: &GroupConfig, fx: &mut Effects) {
        if self.state == GroupState::CompletingRebalance {
            self.reset_and_propagate_assignment_error(GroupError::RebalanceInProgress, now_ms, fx);
        }
        self.pending_sync.clear();
        self.sync_deadline = None;
        let initial = self.state == GroupState::Empty;
        tracing::debug!(group = %self.id, from = self.state.name(), generation = self.generation_id, "preparing rebalance");
        self.transition(GroupState::PreparingRebalance, now_ms);
        if initial {
            let delay_ms = config.initial_rebalance_delay_ms.clamp(0, REBALANCE_TIMEOUT_MAX_MS);
            let remaining_ms = (self.rebalance_timeout_ms() - delay_ms).max(0);
            self.initial_join = Some(InitialJoin { delay_ms, remaining_ms });
            self.new_member_added = false;
            self.join_deadline_ms = Some(now_ms + delay_ms);
        } else {
            self.initial_join = None;
            if self.all_members_joined() {
                self.complete_join(now_ms, fx);
            } else {
                self.join_deadline_ms = Some(now_ms + self.rebalance_timeout_ms());
            }
        }
    }

    /// Completes the join round early once every member rejoined (never during the initial
    /// delay, which exists to gather members).
    fn maybe_complete_join_phase(&mut self, now_ms: i64, fx: &mut Effects) {
        if self.state == GroupState::PreparingRebalance
            && self.previous_state != GroupState::Empty
            && self.all_members_joined()
        {
            self.complete_join(now_ms, fx);
        }
    }

    fn on_join_deadline(&mut self, now_ms: i64, config: &GroupConfig, fx: &mut Effects) {
        if let Some(initial) = self.initial_join {
            if self.new_member_added && initial.remaining_ms > 0 {
                self.new_member_added = false;
                let delay_ms =
                    config.initial_rebalance_delay_ms.clamp(0, REBALANCE_TIMEOUT_MAX_MS).min(initial.remaining_ms);
                let remaining_ms = (initial.remaining_ms - initial.delay_ms).max(0);
                self.initial_join = Some(InitialJoin { delay_ms, remaining_ms });
                self.join_deadline_ms = Some(now_ms + delay_ms);
                return;
            }
        }
        self.complete_join(now_ms, fx);
    }

    /// Ends the join round: dynamic members that did not rejoin are removed, the generation
    /// moves on, and every waiting member gets its JoinGroup response (the leader with the
    /// member list).
    fn complete_join(&mut self, now_ms: i64, fx: &mut Effects) {
        self.join_deadline_ms = None;
        self.initial_join = None;
        let not_rejoined: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.awaiting_join && m.group_instance_id.is_none())
            .map(|m| m.member_id.clone())
            .collect();
        for member_id in not_rejoined {
            self.remove(&member_id, fx);
        }
        if self.state == GroupState::Dead {
            return;
        }
        if !self.maybe_elect_new_joined_leader() && !self.members.is_empty() {
            // Only static members that did not rejoin are left: wait another round for them
            // to rejoin or for their sessions to expire.
            self.join_deadline_ms = Some(now_ms + self.rebalance_timeout_ms());
            return;
        }
        self.generation_id = self.generation_id.wrapping_add(1);
        self.pending_sync.clear();
        if self.members.is_empty() {
            self.protocol_name = None;
            self.transition(GroupState::Empty, now_ms);
            fx.store_group = true;
            return;
        }
        self.protocol_name = self.select_protocol();
        self.transition(GroupState::CompletingRebalance, now_ms);
        tracing::info!(group = %self.id, generation = self.generation_id, members = self.members.len(), protocol = ?self.protocol_name, "join round complete");
        let leader_members = self.current_members();
        let template = self.generation_outcome("", false);
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for member_id in ids {
            let is_leader = self.is_leader(&member_id);
            let Some(member) = self.members.get_mut(&member_id) else { continue };
            if member.awaiting_join {
                member.awaiting_join = false;
                let members = if is_leader { leader_members.clone() } else { Vec::new() };
                let outcome = JoinOutcome { member_id: member_id.clone(), members, ..template.clone() };
                fx.joins.push((member_id.clone(), outcome));
            }
            member.session_deadline_ms = now_ms + i64::from(member.session_timeout_ms);
            self.pending_sync.insert(member_id);
        }
        self.sync_deadline = Some((now_ms + self.rebalance_timeout_ms(), self.generation_id));
    }

    /// Keeps the leader if it rejoined, else picks the oldest member that did. False when no
    /// member rejoined.
    fn maybe_elect_new_joined_leader(&mut self) -> bool {
        let Some(leader) = self.leader_id.clone() else { return false };
        if self.members.get(&leader).is_some_and(|m| m.awaiting_join) {
            return true;
        }
        let next = self.members().into_iter().find(|m| m.awaiting_join).map(|m| m.member_id.clone());
        match next {
            Some(member_id) => {
                self.leader_id = Some(member_id);
                true
            }
            None => false,
        }
    }

    fn reset_and_propagate_assignment_error(&mut self, error: GroupError, now_ms: i64, fx: &mut Effects) {
        for member in self.members.values_mut() {
            member.assignment = Bytes::new();
            if member.awaiting_sync {
                member.awaiting_sync = false;
                member.session_deadline_ms = now_ms + i64::from(member.session_timeout_ms);
                fx.syncs.push((member.member_id.clone(), SyncOutcome::error(error)));
            }
        }
    }

    /// Removes a member (or a pending member id), answering whatever it had parked with
    /// UNKNOWN_MEMBER_ID and handing leadership to the oldest remaining member.
    fn remove(&mut self, member_id: &str, fx: &mut Effects) {
        if let Some(member) = self.members.remove(member_id) {
            if member.awaiting_join {
                fx.joins.push((member_id.to_string(), JoinOutcome::error("", GroupError::UnknownMemberId)));
            }
            if member.awaiting_sync {
                fx.syncs.push((member_id.to_string(), SyncOutcome::error(GroupError::UnknownMemberId)));
            }
            if let Some(instance) = &member.group_instance_id {
                if self.static_members.get(instance).map(String::as_str) == Some(member_id) {
                    self.static_members.remove(instance);
                }
            }
        }
        if self.is_leader(member_id) {
            self.leader_id = self.members().first().map(|m| m.member_id.clone());
        }
        self.pending_members.remove(member_id);
        self.pending_sync.remove(member_id);
    }

    /// A member failed (session expired) or left: remove it and rebalance.
    fn remove_member_and_update(&mut self, member_id: &str, now_ms: i64, config: &GroupConfig, fx: &mut Effects) {
        self.remove(member_id, fx);
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.maybe_prepare_rebalance_or_complete_join(now_ms, config, fx)
            }
            GroupState::PreparingRebalance if self.all_members_joined() => self.complete_join(now_ms, fx),
            _ => {}
        }
    }

    // ---- SyncGroup, Heartbeat, LeaveGroup --------------------------------------------

    pub(crate) fn sync(&mut self, request: &SyncRequest) -> SyncStep {
        let refuse = |error| SyncStep::Respond(SyncOutcome::error(error));
        match self.state {
            GroupState::Empty => return refuse(GroupError::UnknownMemberId),
            GroupState::Dead => return refuse(GroupError::CoordinatorNotAvailable),
            _ => {}
        }
        let member_id = request.member_id.as_str();
        if let Err(error) = self.validate_member(member_id, request.group_instance_id.as_deref()) {
            return refuse(error);
        }
        if request.generation_id != self.generation_id {
            return refuse(GroupError::IllegalGeneration);
        }
        let inconsistent = |asked: &Option<String>, current: &Option<String>| matches!((asked, current), (Some(asked), Some(current)) if asked != current);
        if inconsistent(&request.protocol_type, &self.protocol_type)
            || inconsistent(&request.protocol_name, &self.protocol_name)
        {
            return refuse(GroupError::InconsistentGroupProtocol);
        }
        match self.state {
            GroupState::PreparingRebalance => refuse(GroupError::RebalanceInProgress),
            GroupState::CompletingRebalance => {
                if let Some(member) = self.members.get_mut(member_id) {
                    member.awaiting_sync = true;
                }
                self.pending_sync.remove(member_id);
                if !self.is_leader(member_id) {
                    return SyncStep::Wait;
                }
                // Every member gets an entry; ids that are not members are dropped.
                let assignments = self
                    .members()
                    .iter()
                    .map(|m| {
                        let given = request.assignments.iter().find(|(id, _)| *id == m.member_id);
                        (m.member_id.clone(), given.map(|(_, a)| a.clone()).unwrap_or_default())
                    })
                    .collect();
                SyncStep::Store(assignments)
            }
            _ => {
                self.pending_sync.remove(member_id);
                let assignment = self.members.get(member_id).map(|m| m.assignment.clone()).unwrap_or_default();
                SyncStep::Respond(SyncOutcome {
                    error: None,
                    protocol_type: self.protocol_type.clone(),
                    protocol_name: self.protocol_name.clone(),
                    assignment,
                })
            }
        }
    }

    /// Applies the leader's assignments once they are stored (or the storage error), and
    /// answers every member waiting in SyncGroup.
    pub(crate) fn finish_leader_sync(
        &mut self,
        generation_id: i32,
        stored: Result<Vec<(String, Bytes)>, GroupError>,
        now_ms: i64,
        config: &GroupConfig,
        fx: &mut Effects,
    ) {
        if self.state != GroupState::CompletingRebalance || generation_id != self.generation_id {
            return;
        }
        let assignments = match stored {
            Ok(assignments) => assignments,
            Err(error) => {
                self.reset_and_propagate_assignment_error(error, now_ms, fx);
                self.maybe_prepare_rebalance_or_complete_join(now_ms, config, fx);
                return;
            }
        };
        for (member_id, assignment) in assignments {
            if let Some(member) = self.members.get_mut(&member_id) {
                member.assignment = assignment;
            }
        }
        let (protocol_type, protocol_name) = (self.protocol_type.clone(), self.protocol_name.clone());
        for member in self.members.values_mut() {
            if member.awaiting_sync {
                member.awaiting_sync = false;
                member.session_deadline_ms = now_ms + i64::from(member.session_timeout_ms);
                let outcome = SyncOutcome {
                    error: None,
                    protocol_type: protocol_type.clone(),
                    protocol_name: protocol_name.clone(),
                    assignment: member.assignment.clone(),
                };
                fx.syncs.push((member.member_id.clone(), outcome));
            }
        }
        self.transition(GroupState::Stable, now_ms);
    }

    pub(crate) fn heartbeat(
        &mut self,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
        now_ms: i64,
    ) -> Result<(), GroupError> {
        if self.state == GroupState::Dead {
            return Err(GroupError::CoordinatorNotAvailable);
        }
        self.validate_member(member_id, group_instance_id)?;
        if generation_id != self.generation_id {
            return Err(GroupError::IllegalGeneration);
        }
        match self.state {
            GroupState::Empty | GroupState::Dead => Err(GroupError::UnknownMemberId),
            GroupState::PreparingRebalance => {
                self.touch(member_id, now_ms);
                Err(GroupError::RebalanceInProgress)
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.touch(member_id, now_ms);
                Ok(())
            }
        }
    }

    /// Extends a member's session.
    fn touch(&mut self, member_id: &str, now_ms: i64) {
        if let Some(member) = self.members.get_mut(member_id) {
            member.session_deadline_ms = now_ms + i64::from(member.session_timeout_ms);
        }
    }

    /// LeaveGroup for each (member id, group.instance.id); an empty member id with an
    /// instance id removes that static member (administrative removal).
    pub(crate) fn leave(
        &mut self,
        leaving: &[(String, Option<String>)],
        now_ms: i64,
        config: &GroupConfig,
        fx: &mut Effects,
    ) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        if self.state == GroupState::Dead {
            return Err(GroupError::CoordinatorNotAvailable);
        }
        let mut results = Vec::with_capacity(leaving.len());
        for (member_id, instance) in leaving {
            let result = if member_id.is_empty() {
                match instance.as_ref().and_then(|i| self.static_members.get(i)).cloned() {
                    Some(static_id) => {
                        self.remove(&static_id, fx);
                        Ok(())
                    }
                    None => Err(GroupError::UnknownMemberId),
                }
            } else if self.pending_members.contains_key(member_id) {
                self.remove(member_id, fx);
                Ok(())
            } else {
                self.validate_member(member_id, instance.as_deref()).map(|()| self.remove(member_id, fx))
            };
            results.push(result);
        }
        if results.iter().any(Result::is_ok) {
            match self.state {
                GroupState::Stable | GroupState::CompletingRebalance => {
                    self.maybe_prepare_rebalance_or_complete_join(now_ms, config, fx)
                }
                GroupState::PreparingRebalance => self.maybe_complete_join_phase(now_ms, fx),
                _ => {}
            }
        }
        Ok(results)
    }

    // ---- offsets, deletion -------------------------------------------------------------

    /// Kafka's `validateOffsetCommit` for classic groups.
    pub(crate) fn validate_commit(
        &self,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
    ) -> Result<(), GroupError> {
        if self.state == GroupState::Dead {
            return Err(GroupError::CoordinatorNotAvailable);
        }
        if generation_id < 0 && self.state == GroupState::Empty {
            // Admin tools and consumers without group management commit to empty groups.
            return Ok(());
        }
        if generation_id >= 0 || !member_id.is_empty() || group_instance_id.is_some() {
            self.validate_member(member_id, group_instance_id)?;
            if generation_id != self.generation_id {
                return Err(GroupError::IllegalGeneration);
            }
        } else if self.state != GroupState::Empty {
            return Err(GroupError::UnknownMemberId);
        }
        if self.state == GroupState::CompletingRebalance {
            return Err(GroupError::RebalanceInProgress);
        }
        Ok(())
    }

    /// A valid commit from a member keeps its session alive, as a heartbeat would.
    pub(crate) fn touch_committer(&mut self, member_id: &str, now_ms: i64) {
        if matches!(self.state, GroupState::Stable | GroupState::PreparingRebalance) {
            self.touch(member_id, now_ms);
        }
    }

    pub(crate) fn commit(&mut self, topic: &str, partition: i32, offset: CommittedOffset) {
        self.offsets.insert((topic.to_string(), partition), offset);
    }

    pub(crate) fn remove_offset(&mut self, topic: &str, partition: i32) -> Option<CommittedOffset> {
        self.offsets.remove(&(topic.to_string(), partition))
    }

    /// DeleteGroups: only Empty groups may be deleted.
    pub(crate) fn validate_delete(&self) -> Result<(), GroupError> {
        match self.state {
            GroupState::Dead => Err(GroupError::GroupIdNotFound),
            GroupState::Empty => Ok(()),
            _ => Err(GroupError::NonEmptyGroup),
        }
    }

    /// OffsetDelete: a non-empty group may only lose offsets of topics it does not consume,
    /// which can only be known for the consumer protocol.
    pub(crate) fn validate_offset_delete(&self) -> Result<(), GroupError> {
        match self.state {
            GroupState::Dead => Err(GroupError::GroupIdNotFound),
            GroupState::Empty => Ok(()),
            _ if self.protocol_type.as_deref() == Some(CONSUMER_PROTOCOL_TYPE) => Ok(()),
            _ => Err(GroupError::NonEmptyGroup),
        }
    }

    /// Whether any member's consumer subscription names `topic`. Unknown (no protocol yet,
    /// or metadata that does not parse) counts as subscribed, to stay on the safe side.
    pub(crate) fn is_subscribed_to(&self, topic: &str) -> bool {
        if self.members.is_empty() {
            return false;
        }
        let Some(protocol) = self.protocol_name.as_deref() else { return true };
        self.members.values().any(|m| match subscribed_topics(&m.metadata(Some(protocol))) {
            Some(topics) => topics.iter().any(|t| t == topic),
            None => true,
        })
    }

    pub(crate) fn mark_dead(&mut self, now_ms: i64) {
        let mut fx = Effects::default();
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for member_id in ids {
            self.remove(&member_id, &mut fx);
        }
        self.pending_members.clear();
        self.join_deadline_ms = None;
        self.sync_deadline = None;
        self.transition(GroupState::Dead, now_ms);
    }

    pub(crate) fn describe(&self) -> GroupDescription {
        let stable = self.state == GroupState::Stable;
        let protocol = self.protocol_name.as_deref();
        let members = self
            .members()
            .into_iter()
            .map(|m| MemberDescription {
                member_id: m.member_id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                metadata: if stable { m.metadata(protocol) } else { Bytes::new() },
                assignment: if stable { m.assignment.clone() } else { Bytes::new() },
            })
            .collect();
        GroupDescription {
            state: self.state,
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol_data: if stable { self.protocol_name.clone().unwrap_or_default() } else { String::new() },
            members,
        }
    }

    // ---- time ------------------------------------------------------------------------

    /// Runs every deadline that has passed: pending member ids never used, sessions without
    /// heartbeat, members that never sent SyncGroup, and the end of a join round.
    pub(crate) fn advance(&mut self, now_ms: i64, config: &GroupConfig, fx: &mut Effects) {
        let expired_pending: Vec<String> = self
            .pending_members
            .iter()
            .filter(|(_, deadline)| **deadline <= now_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for member_id in expired_pending {
            self.remove(&member_id, fx);
            if self.state == GroupState::PreparingRebalance && self.all_members_joined() {
                self.complete_join(now_ms, fx);
            }
        }
        let expired: Vec<String> =
            self.members.values().filter(|m| m.session_expired(now_ms)).map(|m| m.member_id.clone()).collect();
        for member_id in expired {
            // An earlier removal may have completed a round and restarted this session.
            if self.members.get(&member_id).is_some_and(|m| m.session_expired(now_ms)) {
                tracing::info!(group = %self.id, member = %member_id, "session expired; removing member");
                self.remove_member_and_update(&member_id, now_ms, config, fx);
            }
        }
        if let Some((deadline, generation)) = self.sync_deadline {
            if deadline <= now_ms {
                self.sync_deadline = None;
                let syncing = matches!(self.state, GroupState::CompletingRebalance | GroupState::Stable);
                if generation == self.generation_id && syncing && !self.pending_sync.is_empty() {
                    let missing: Vec<String> = std::mem::take(&mut self.pending_sync).into_iter().collect();
                    tracing::info!(group = %self.id, members = ?missing, "no SyncGroup before the rebalance timeout; removing members");
                    for member_id in missing {
                        self.remove(&member_id, fx);
                    }
                    self.prepare_rebalance(now_ms, config, fx);
                }
            }
        }
        if self.state == GroupState::PreparingRebalance && self.join_deadline_ms.is_some_and(|d| d <= now_ms) {
            self.on_join_deadline(now_ms, config, fx);
        }
    }

    /// The earliest time [`Group::advance`] has something to do, if any.
    pub(crate) fn next_deadline(&self, config: &GroupConfig) -> Option<i64> {
        let sessions =
            self.members.values().filter(|m| !m.awaiting_join && !m.awaiting_sync).map(|m| m.session_deadline_ms);
        let join = self.join_deadline_ms.filter(|_| self.state == GroupState::PreparingRebalance);
        self.pending_members
            .values()
            .copied()
            .chain(sessions)
            .chain(self.sync_deadline.map(|(deadline, _)| deadline))
            .chain(join)
            .chain(self.expires_at(config))
            .min()
    }

    /// When an Empty group with no members is deleted: at once if nothing of it is stored,
    /// else `offsets.retention` after it became Empty or after its last commit.
    pub(crate) fn expires_at(&self, config: &GroupConfig) -> Option<i64> {
        if self.state != GroupState::Empty || !self.members.is_empty() || !self.pending_members.is_empty() {
            return None;
        }
        if self.offsets.is_empty() && !self.persisted {
            return Some(self.state_timestamp_ms);
        }
        let last_commit = self.offsets.values().map(|o| o.commit_timestamp_ms).max().unwrap_or(i64::MIN);
        Some(self.state_timestamp_ms.max(last_commit).saturating_add(config.offsets_retention_ms))
    }

    // ---- restore from the log -----------------------------------------------------------

    /// Rebuilds a group from its last stored metadata: Stable with its members (sessions
    /// start now) or Empty.
    pub(crate) fn restore(&mut self, stored: super::records::StoredGroup, now_ms: i64) {
        self.protocol_type = Some(stored.protocol_type).filter(|t| !t.is_empty());
        self.generation_id = stored.generation_id;
        self.protocol_name = stored.protocol_name;
        self.leader_id = stored.leader_id;
        self.members.clear();
        self.static_members.clear();
        for (order, stored_member) in stored.members.into_iter().enumerate() {
            let protocols = match &self.protocol_name {
                Some(name) => vec![Protocol { name: name.clone(), metadata: stored_member.subscription }],
                None => Vec::new(),
            };
            if let Some(instance) = &stored_member.group_instance_id {
                self.static_members.insert(instance.clone(), stored_member.member_id.clone());
            }
            let member = Member {
                member_id: stored_member.member_id.clone(),
                group_instance_id: stored_member.group_instance_id,
                client_id: stored_member.client_id,
                client_host: stored_member.client_host,
                rebalance_timeout_ms: stored_member.rebalance_timeout_ms,
                session_timeout_ms: stored_member.session_timeout_ms,
                protocols,
                assignment: stored_member.assignment,
                awaiting_join: false,
                awaiting_sync: false,
                session_deadline_ms: now_ms + i64::from(stored_member.session_timeout_ms),
                join_order: order as u64,
            };
            self.members.insert(stored_member.member_id, member);
        }
        self.next_join_order = self.members.len() as u64;
        if self.leader_id.as_ref().is_some_and(|l| !self.members.contains_key(l)) {
            self.leader_id = self.members().first().map(|m| m.member_id.clone());
        }
        self.state = if self.members.is_empty() { GroupState::Empty } else { GroupState::Stable };
        self.previous_state = self.state;
        self.state_timestamp_ms = if stored.state_timestamp_ms >= 0 { stored.state_timestamp_ms } else { now_ms };
        self.persisted = true;
    }
}

impl Member {
    fn session_expired(&self, now_ms: i64) -> bool {
        !self.awaiting_join && !self.awaiting_sync && self.session_deadline_ms <= now_ms
    }
}

/// The topics of a consumer-protocol subscription: `version: i16`, then the v0 prefix every
/// version shares, `topics: [string]`. Parsed by hand so that hostile counts cannot allocate.
pub(crate) fn subscribed_topics(metadata: &[u8]) -> Option<Vec<String>> {
    use bytes::Buf;
    let mut buf = metadata;
    if buf.remaining() < 6 {
        return None;
    }
    let _version = buf.get_i16();
    let count = buf.get_i32();
    // Each topic takes at least two bytes, which bounds a believable count.
    if count < 0 || count as usize > buf.remaining() / 2 {
        return None;
    }
    let mut topics = Vec::with_capacity(count as usize);
    for _ in 0..count {
        if buf.remaining() < 2 {
            return None;
        }
        let len = buf.get_i16();
        if len < 0 || len as usize > buf.remaining() {
            return None;
        }
        let name = std::str::from_utf8(&buf[..len as usize]).ok()?.to_string();
        buf.advance(len as usize);
        topics.push(name);
    }
    Some(topics)
}
