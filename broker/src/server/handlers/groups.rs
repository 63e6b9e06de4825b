//! The group coordinator's APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, ListGroups, DescribeGroups, DeleteGroups, OffsetDelete.
//!
//! Each handler translates between the wire messages of its version and the coordinator in
//! `crate::groups`. JoinGroup and SyncGroup park until other members arrive; they return a
//! pending reply, so the connection's reader is never blocked. Writes are answered only once
//! they are durable (fsynced).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::offset_delete_response::{OffsetDeleteResponsePartition, OffsetDeleteResponseTopic};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions, OffsetFetchResponseTopic,
    OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::{Encodable, HeaderVersion, StrBytes};
use kafka_protocol::ResponseError;

use super::{respond, text, Reply};
use crate::groups::{
    CommitPartition, CommitReply, CommitRequest, CommittedOffset, GroupError, JoinOutcome, JoinReply, JoinRequest,
    Protocol, SyncOutcome, SyncReply, SyncRequest, REBALANCE_TIMEOUT_MAX_MS,
};
use crate::protocol::frame::{decode_body, encode_response, FrameError, RequestFrame};
use crate::Broker;

/// FindCoordinator key types.
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;
/// The ACL operations DescribeGroups v3+ reports when asked. With no authorizer every group
/// operation is allowed: READ (3), DELETE (6), DESCRIBE (8).
const GROUP_AUTHORIZED_OPERATIONS: i32 = (1 << 3) | (1 << 6) | (1 << 8);
/// The only group type this coordinator runs (ListGroups v5).
const CLASSIC_GROUP_TYPE: &str = "classic";
/// A parked JoinGroup/SyncGroup is always answered by the coordinator within the longest
/// rebalance; this cap is a safety net on top of that, never the normal path.
const PARKED_REQUEST_MAX: Duration = Duration::from_millis(REBALANCE_TIMEOUT_MAX_MS as u64 + 10_000);

fn string(s: &StrBytes) -> String {
    s.as_str().to_string()
}

fn error_code(result: Result<(), GroupError>) -> i16 {
    result.err().map_or(0, GroupError::code)
}

fn client_id(request: &RequestFrame) -> String {
    request.header.client_id.as_ref().map(string).unwrap_or_default()
}

/// A reply sent once `response` resolves; the writer keeps responses in request order.
fn later<R, F>(request: &RequestFrame, response: F) -> Reply
where
    R: Encodable + HeaderVersion + Send + 'static,
    F: Future<Output = R> + Send + 'static,
{
    let (api, correlation_id, version) = (request.api_key, request.header.correlation_id, request.api_version);
    Reply::Later(Box::pin(async move {
        let response = response.await;
        encode_response(api, correlation_id, version, &response).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot encode group response");
            Bytes::new()
        })
    }))
}

pub(super) fn find_coordinator(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let body: FindCoordinatorRequest = decode_body(request)?;
    let version = request.api_version;
    let (host, port) = broker.config.advertised();
    // One node coordinates every group and transaction. Groups need `__consumer_offsets`,
    // created here so the first commit does not pay for it.
    let outcome = match body.key_type {
        KEY_TYPE_GROUP => broker.groups().ensure_offsets_topic(broker).map_err(|e| (e.code(), e.to_string())),
        KEY_TYPE_TRANSACTION => Ok(()),
        other => Err((ResponseError::InvalidRequest.code(), format!("unsupported coordinator key type {other}"))),
    };
    let mut response = FindCoordinatorResponse::default();
    let (node_id, host, port, error_code, message) = match outcome {
        Ok(()) => (broker.config.node_id, host, port, 0, None),
        Err((code, message)) => (-1, String::new(), -1, code, Some(message)),
    };
    if version >= 4 {
        for key in &body.coordinator_keys {
            let mut coordinator = Coordinator::default();
            coordinator.key = key.clone();
            coordinator.node_id = BrokerId(node_id);
            coordinator.host = text(host.clone());
            coordinator.port = port;
            coordinator.error_code = error_code;
            coordinator.error_message = message.clone().map(text);
            response.coordinators.push(coordinator);
        }
    } else {
        response.node_id = BrokerId(node_id);
        response.host = text(host);
        response.port = port;
        response.error_code = error_code;
        if version >= 1 {
            response.error_message = message.map(text);
        }
    }
    respond(request, &response)
}

pub(super) fn join_group(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let body: JoinGroupRequest = decode_body(request)?;
    let version = request.api_version;
    // Kafka keeps one protocol per name (the first).
    let mut protocols: Vec<Protocol> = Vec::with_capacity(body.protocols.len());
    for protocol in &body.protocols {
        if !protocols.iter().any(|p| p.name == protocol.name.as_str()) {
            protocols.push(Protocol { name: string(&protocol.name), metadata: protocol.metadata.clone() });
        }
    }
    let join = JoinRequest {
        group_id: string(&body.group_id.0),
        member_id: string(&body.member_id),
        group_instance_id: body.group_instance_id.as_ref().map(string),
        client_id: client_id(request),
        // The peer address is not passed to handlers yet; Kafka shows "/ip" here.
        client_host: String::new(),
        session_timeout_ms: body.session_timeout_ms,
        // v0 has no rebalance timeout: the session timeout serves for both.
        rebalance_timeout_ms: if version == 0 { body.session_timeout_ms } else { body.rebalance_timeout_ms },
        protocol_type: string(&body.protocol_type),
        protocols,
        require_known_member_id: version >= 4,
        supports_skip_assignment: version >= 9,
    };
    let member_id = join.member_id.clone();
    match broker.groups().join(broker, join) {
        JoinReply::Now(outcome) => respond(request, &join_response(outcome, version)),
        JoinReply::Wait(parked) => Ok(later(request, async move {
            let outcome = match tokio::time::timeout(PARKED_REQUEST_MAX, parked).await {
                Ok(Ok(outcome)) => outcome,
                _ => JoinOutcome::error(&member_id, GroupError::RebalanceInProgress),
            };
            join_response(outcome, version)
        })),
    }
}

fn join_response(outcome: JoinOutcome, version: i16) -> JoinGroupResponse {
    let mut response = JoinGroupResponse::default();
    response.error_code = error_code(outcome.error.map_or(Ok(()), Err));
    response.generation_id = outcome.generation_id;
    response.protocol_type = outcome.protocol_type.map(text);
    // The protocol name is only nullable from v7 on.
    response.protocol_name = match outcome.protocol_name {
        None if version < 7 => Some(text("")),
        name => name.map(text),
    };
    response.leader = text(outcome.leader_id);
    response.skip_assignment = version >= 9 && outcome.skip_assignment;
    response.member_id = text(outcome.member_id);
    response.members = outcome
        .members
        .into_iter()
        .map(|m| {
            let mut member = JoinGroupResponseMember::default();
            member.member_id = text(m.member_id);
            member.group_instance_id = m.group_instance_id.map(text);
            member.metadata = m.metadata;
            member
        })
        .collect();
    response
}

pub(super) fn sync_group(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let body: SyncGroupRequest = decode_body(request)?;
    let sync = SyncRequest {
        group_id: string(&body.group_id.0),
        member_id: string(&body.member_id),
        group_instance_id: body.group_instance_id.as_ref().map(string),
        generation_id: body.generation_id,
        protocol_type: body.protocol_type.as_ref().map(string),
        protocol_name: body.protocol_name.as_ref().map(string),
        assignments: body.assignments.iter().map(|a| (string(&a.member_id), a.assignment.clone())).collect(),
    };
    match broker.groups().sync(broker, sync) {
        SyncReply::Now(outcome) => respond(request, &sync_response(outcome)),
        SyncReply::Wait(parked, durable) => Ok(later(request, async move {
            let mut outcome = match tokio::time::timeout(PARKED_REQUEST_MAX, parked).await {
                Ok(Ok(outcome)) => outcome,
                _ => SyncOutcome::error(GroupError::RebalanceInProgress),
            };
            // The leader's answer waits until the group's new generation is on disk.
            if let Some(durable) = durable {
                if let Err(error) = durable.wait().await {
                    outcome = SyncOutcome::error(error);
                }
            }
            sync_response(outcome)
        })),
    }
}

fn sync_response(outcome: SyncOutcome) -> SyncGroupResponse {
    let mut response = SyncGroupResponse::default();
    response.error_code = error_code(outcome.error.map_or(Ok(()), Err));
    response.protocol_type = outcome.protocol_type.map(text);
    response.protocol_name = outcome.protocol_name.map(text);
    response.assignment = outcome.assignment;
    response
}

pub(super) fn heartbeat(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let body: HeartbeatRequest = decode_body(request)?;
    let instance = body.group_instance_id.as_ref().map(string);
    let result = broker.groups().heartbeat(
        broker,
        body.group_id.0.as_str(),
        body.member_id.as_str(),
        instance.as_deref(),
        body.generation_id,
    );
    let mut response = HeartbeatResponse::default();
    response.error_code = error_code(result);
    respond(request, &response)
}

pub(super) fn leave_group(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let body: LeaveGroupRequest = decode_body(request)?;
    let version = request.api_version;
    let leaving: Vec<(String, Option<String>)> = if version >= 3 {
        body.members.iter().map(|m| (string(&m.member_id), m.group_instance_id.as_ref().map(string))).collect()
    } else {
        vec![(string(&body.member_id), None)]
    };
    let mut response = LeaveGroupResponse::default();
    match broker.groups().leave(broker, body.group_id.0.as_str(), &leaving) {
        Err(error) => response.error_code = error.code(),
        // v0–2 name one member and carry its error at the top level.
        Ok(results) if version < 3 => response.error_code = results.first().map_or(0, |r| error_code(*r)),
        Ok(results) => {
            response.members = leaving
                .into_iter()
                .zip(results)
                .map(|((member_id, instance), result)| {
                    let mut member = MemberResponse::default();
                    member.member_id = text(member_id);
                    member.group_instance_id = instance.map(text);
                    member.error_code = error_code(result);
                    member
                })
                .collect();
        }
    }
    respond(request, &response)
}

pub(super) fn offset_commit(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let body: OffsetCommitRequest = decode_body(request)?;
    let version = request.api_version;
    let mut partitions = Vec::new();
    for topic in &body.topics {
        for p in &topic.partitions {
            partitions.push(CommitPartition {
                topic: string(&topic.name.0),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: if version >= 6 { p.committed_leader_epoch } else { -1 },
                metadata: p.committed_metadata.as_ref().map(string),
            });
        }
    }
    let commit = CommitRequest {
        group_id: string(&body.group_id.0),
        member_id: string(&body.member_id),
        group_instance_id: body.group_instance_id.as_ref().map(string),
        generation_id: body.generation_id_or_member_epoch,
        missing_group_error: if version >= 9 { GroupError::GroupIdNotFound } else { GroupError::IllegalGeneration },
        partitions,
    };
    let CommitReply { results, durable } = broker.groups().commit(broker, commit);
    let mut codes = results.into_iter().map(error_code);
    let mut response = OffsetCommitResponse::default();
    for topic in &body.topics {
        let mut topic_response = OffsetCommitResponseTopic::default();
        topic_response.name = topic.name.clone();
        for p in &topic.partitions {
            let mut partition = OffsetCommitResponsePartition::default();
            partition.partition_index = p.partition_index;
            partition.error_code = codes.next().unwrap_or(0);
            topic_response.partitions.push(partition);
        }
        response.topics.push(topic_response);
    }
    let Some(durable) = durable else { return respond(request, &response) };
    // A commit is acknowledged only once it is on disk.
    Ok(later(request, async move {
        if let Err(error) = durable.wait().await {
            for partition in response.topics.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
                if partition.error_code == 0 {
                    partition.error_code = error.code();
                }
            }
        }
        response
    }))
}

/// The committed offset as OffsetFetch reports it: -1 and empty metadata when none.
fn fetched(offset: Option<CommittedOffset>) -> (i64, i32, String) {
    match offset {
        Some(o) => (o.offset, o.leader_epoch, o.metadata),
        None => (-1, -1, String::new()),
    }
}

pub(super) fn offset_fetch(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let body: OffsetFetchRequest = decode_body(request)?;
    let version = request.api_version;
    let mut response = OffsetFetchResponse::default();
    if version >= 8 {
        for group in &body.groups {
            let topics: Option<Vec<(String, Vec<i32>)>> = group
                .topics
                .as_ref()
                .map(|topics| topics.iter().map(|t| (string(&t.name.0), t.partition_indexes.clone())).collect());
            let offsets = broker.groups().fetch_offsets(group.group_id.0.as_str(), topics.as_deref());
            let mut group_response = OffsetFetchResponseGroup::default();
            group_response.group_id = group.group_id.clone();
            for (topic, partitions) in offsets {
                let mut topic_response = OffsetFetchResponseTopics::default();
                let topic_name = topic.clone();
                topic_response.name = TopicName(text(topic));
                for (index, offset) in partitions {
                    let (committed, epoch, metadata) = fetched(offset);
                    let mut partition = OffsetFetchResponsePartitions::default();
                    partition.partition_index = index;
                    partition.committed_offset = committed;
                    partition.committed_leader_epoch = epoch;
                    // Offsets an open transaction will change are not stable yet (KIP-447).
                    if body.require_stable
                        && broker.groups().has_pending_offset(group.group_id.0.as_str(), &topic_name, index)
                    {
                        partition.error_code = ResponseError::UnstableOffsetCommit.code();
                    }
                    partition.metadata = Some(text(metadata));
                    topic_response.partitions.push(partition);
                }
                group_response.topics.push(topic_response);
            }
            response.groups.push(group_response);
        }
        return respond(request, &response);
    }
    let topics: Option<Vec<(String, Vec<i32>)>> = body
        .topics
        .as_ref()
        .map(|topics| topics.iter().map(|t| (string(&t.name.0), t.partition_indexes.clone())).collect());
    for (topic, partitions) in broker.groups().fetch_offsets(body.group_id.0.as_str(), topics.as_deref()) {
        let mut topic_response = OffsetFetchResponseTopic::default();
        let topic_name = topic.clone();
        topic_response.name = TopicName(text(topic));
        for (index, offset) in partitions {
            let (committed, epoch, metadata) = fetched(offset);
            let mut partition = OffsetFetchResponsePartition::default();
            partition.partition_index = index;
            partition.committed_offset = committed;
            partition.committed_leader_epoch = epoch;
            if version >= 7
                && body.require_stable
                && broker.groups().has_pending_offset(body.group_id.0.as_str(), &topic_name, index)
            {
                partition.error_code = ResponseError::UnstableOffsetCommit.code();
            }
            partition.metadata = Some(text(metadata));
            topic_response.partitions.push(partition);
        }
        response.topics.push(topic_response);
    }
    respond(request, &response)
}

pub(super) fn list_groups(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let body: ListGroupsRequest = decode_body(request)?;
    let states: Vec<String> = body.states_filter.iter().map(string).collect();
    // Every group here is a classic group: a type filter without "classic" matches none.
    let type_matches =
        body.types_filter.is_empty() || body.types_filter.iter().any(|t| t.eq_ignore_ascii_case(CLASSIC_GROUP_TYPE));
    let mut response = ListGroupsResponse::default();
    if type_matches {
        for listing in broker.groups().list(&states) {
            let mut group = ListedGroup::default();
            group.group_id = GroupId(text(listing.group_id));
            group.protocol_type = text(listing.protocol_type);
            group.group_state = text(listing.state.name());
            group.group_type = text(CLASSIC_GROUP_TYPE);
            response.groups.push(group);
        }
    }
    respond(request, &response)
}

pub(super) fn describe_groups(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let body: DescribeGroupsRequest = decode_body(request)?;
    let version = request.api_version;
    let mut response = DescribeGroupsResponse::default();
    for group_id in &body.groups {
        let mut described = DescribedGroup::default();
        described.group_id = group_id.clone();
        match broker.groups().describe(group_id.0.as_str()) {
            None => {
                described.group_state = text("Dead");
                // KIP-1043: v6 reports an unknown group as an error instead of a Dead group.
                if version >= 6 {
                    described.error_code = GroupError::GroupIdNotFound.code();
                    described.error_message = Some(text(format!("Group {} not found.", group_id.0.as_str())));
                }
            }
            Some(description) => {
                described.group_state = text(description.state.name());
                described.protocol_type = text(description.protocol_type);
                described.protocol_data = text(description.protocol_data);
                described.members = description
                    .members
                    .into_iter()
                    .map(|m| {
                        let mut member = DescribedGroupMember::default();
                        member.member_id = text(m.member_id);
                        member.group_instance_id = m.group_instance_id.map(text);
                        member.client_id = text(m.client_id);
                        member.client_host = text(m.client_host);
                        member.member_metadata = m.metadata;
                        member.member_assignment = m.assignment;
                        member
                    })
                    .collect();
            }
        }
        if version >= 3 && body.include_authorized_operations {
            described.authorized_operations = GROUP_AUTHORIZED_OPERATIONS;
        }
        response.groups.push(described);
    }
    respond(request, &response)
}

pub(super) fn delete_groups(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let body: DeleteGroupsRequest = decode_body(request)?;
    let ids: Vec<String> = body.groups_names.iter().map(|g| string(&g.0)).collect();
    let (results, durable) = broker.groups().delete_groups(broker, &ids);
    let mut response = DeleteGroupsResponse::default();
    for (group_id, result) in body.groups_names.iter().zip(results) {
        let mut deleted = DeletableGroupResult::default();
        deleted.group_id = group_id.clone();
        deleted.error_code = error_code(result);
        response.results.push(deleted);
    }
    let Some(durable) = durable else { return respond(request, &response) };
    Ok(later(request, async move {
        if let Err(error) = durable.wait().await {
            for result in response.results.iter_mut().filter(|r| r.error_code == 0) {
                result.error_code = error.code();
            }
        }
        response
    }))
}

pub(super) fn offset_delete(broker: &Arc<Broker>, request: &RequestFrame) -> Result<Reply, FrameError> {
    let body: OffsetDeleteRequest = decode_body(request)?;
    let partitions: Vec<(String, i32)> = body
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (string(&t.name.0), p.partition_index)))
        .collect();
    let mut response = OffsetDeleteResponse::default();
    let reply = match broker.groups().delete_offsets(broker, body.group_id.0.as_str(), &partitions) {
        Ok(reply) => reply,
        Err(error) => {
            response.error_code = error.code();
            return respond(request, &response);
        }
    };
    let mut codes = reply.results.into_iter().map(error_code);
    for topic in &body.topics {
        let mut topic_response = OffsetDeleteResponseTopic::default();
        topic_response.name = topic.name.clone();
        for p in &topic.partitions {
            let mut partition = OffsetDeleteResponsePartition::default();
            partition.partition_index = p.partition_index;
            partition.error_code = codes.next().unwrap_or(0);
            topic_response.partitions.push(partition);
        }
        response.topics.push(topic_response);
    }
    let Some(durable) = reply.durable else { return respond(request, &response) };
    Ok(later(request, async move {
        if let Err(error) = durable.wait().await {
            response.error_code = error.code();
        }
        response
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::leave_group_request::MemberIdentity;
    use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
    use kafka_protocol::messages::offset_delete_request::{OffsetDeleteRequestPartition, OffsetDeleteRequestTopic};
    use kafka_protocol::messages::offset_fetch_request::{
        OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
    };
    use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
    use kafka_protocol::messages::ApiKey;

    use super::super::test_support::call;
    use super::*;
    use crate::metadata::MetadataCommand;

    const NONE: i16 = 0;

    /// The broker binary's allocator, so that the codec's up-front reservations for hostile
    /// array counts in the mutation test reserve address space instead of aborting the test
    /// process — exactly what happens in production (see `crate::alloc`).
    #[global_allocator]
    static GLOBAL: crate::alloc::Allocator = crate::alloc::Allocator;

    fn code(error: ResponseError) -> i16 {
        error.code()
    }

    /// A broker whose groups rebalance quickly: short initial delay, short sessions allowed.
    fn open(dir: &Path) -> Arc<Broker> {
        open_with_delay(dir, 50)
    }

    fn open_with_delay(dir: &Path, initial_rebalance_delay_ms: i64) -> Arc<Broker> {
        let config = crate::config::BrokerConfig {
            data_dir: dir.to_path_buf(),
            group_initial_rebalance_delay_ms: initial_rebalance_delay_ms,
            group_min_session_timeout_ms: 100,
            ..Default::default()
        };
        Broker::open(config).expect("broker opens")
    }

    /// What the server's background task does: run group deadlines as they fall due.
    fn spawn_timers(broker: &Arc<Broker>) -> tokio::task::JoinHandle<()> {
        let broker = Arc::clone(broker);
        tokio::spawn(async move {
            loop {
                broker.groups().wait_for_timers(broker.now_ms()).await;
                broker.groups().run_timers(&broker);
            }
        })
    }

    fn create_topic(broker: &Broker, name: &str, partitions: i32) {
        let command = MetadataCommand::CreateTopic {
            name: name.into(),
            topic_id: uuid::Uuid::new_v4().to_string(),
            partitions,
            configs: BTreeMap::new(),
        };
        broker.propose(command).expect("topic created");
    }

    use crate::groups::tests::subscription;

    fn join_request(group: &str, member_id: &str, instance: Option<&str>, version: i16) -> JoinGroupRequest {
        let mut request = JoinGroupRequest::default();
        request.group_id = GroupId(text(group));
        request.member_id = text(member_id);
        request.session_timeout_ms = 10_000;
        if version >= 1 {
            request.rebalance_timeout_ms = 10_000;
        }
        if version >= 5 {
            request.group_instance_id = instance.map(text);
        }
        request.protocol_type = text("consumer");
        let mut protocol = JoinGroupRequestProtocol::default();
        protocol.name = text("range");
        protocol.metadata = subscription(&["t"]);
        request.protocols = vec![protocol];
        request
    }

    /// Joins, completing the MEMBER_ID_REQUIRED handshake of v4+.
    async fn join(broker: &Arc<Broker>, group: &str, instance: Option<&str>, version: i16) -> JoinGroupResponse {
        let first: JoinGroupResponse =
            call(broker, ApiKey::JoinGroup, version, &join_request(group, "", instance, version)).await;
        if first.error_code != code(ResponseError::MemberIdRequired) {
            return first;
        }
        assert!(version >= 4 && instance.is_none(), "v{version}");
        let request = join_request(group, first.member_id.as_str(), instance, version);
        call(broker, ApiKey::JoinGroup, version, &request).await
    }

    async fn sync(
        broker: &Arc<Broker>,
        group: &str,
        joined: &JoinGroupResponse,
        assignments: &[(&str, &str)],
        version: i16,
    ) -> SyncGroupResponse {
        let mut request = SyncGroupRequest::default();
        request.group_id = GroupId(text(group));
        request.generation_id = joined.generation_id;
        request.member_id = joined.member_id.clone();
        if version >= 5 {
            request.protocol_type = Some(text("consumer"));
            request.protocol_name = joined.protocol_name.clone();
        }
        request.assignments = assignments
            .iter()
            .map(|(member, assignment)| {
                let mut a = SyncGroupRequestAssignment::default();
                a.member_id = text(*member);
                a.assignment = Bytes::from(assignment.to_string());
                a
            })
            .collect();
        call(broker, ApiKey::SyncGroup, version, &request).await
    }

    async fn heartbeat(broker: &Arc<Broker>, group: &str, member: &StrBytes, generation: i32, version: i16) -> i16 {
        let mut request = HeartbeatRequest::default();
        request.group_id = GroupId(text(group));
        request.member_id = member.clone();
        request.generation_id = generation;
        let response: HeartbeatResponse = call(broker, ApiKey::Heartbeat, version, &request).await;
        response.error_code
    }

    #[allow(clippy::too_many_arguments)]
    async fn commit(
        broker: &Arc<Broker>,
        group: &str,
        member: &str,
        generation: i32,
        topic: &str,
        partition: i32,
        offset: i64,
        version: i16,
    ) -> i16 {
        let mut p = OffsetCommitRequestPartition::default();
        p.partition_index = partition;
        p.committed_offset = offset;
        p.committed_metadata = Some(text(format!("meta-{offset}")));
        if version >= 6 {
            p.committed_leader_epoch = 3;
        }
        let mut t = OffsetCommitRequestTopic::default();
        t.name = TopicName(text(topic));
        t.partitions = vec![p];
        let mut request = OffsetCommitRequest::default();
        request.group_id = GroupId(text(group));
        request.member_id = text(member);
        request.generation_id_or_member_epoch = generation;
        request.topics = vec![t];
        let response: OffsetCommitResponse = call(broker, ApiKey::OffsetCommit, version, &request).await;
        response.topics[0].partitions[0].error_code
    }

    /// (topic, partition, offset, metadata) as OffsetFetch reports them at `version`.
    async fn fetch(
        broker: &Arc<Broker>,
        group: &str,
        topics: Option<&[(&str, &[i32])]>,
        version: i16,
    ) -> Vec<(String, i32, i64, String)> {
        let mut request = OffsetFetchRequest::default();
        if version >= 8 {
            let mut g = OffsetFetchRequestGroup::default();
            g.group_id = GroupId(text(group));
            g.topics = topics.map(|ts| {
                ts.iter()
                    .map(|(name, partitions)| {
                        let mut t = OffsetFetchRequestTopics::default();
                        t.name = TopicName(text(*name));
                        t.partition_indexes = partitions.to_vec();
                        t
                    })
                    .collect()
            });
            request.groups = vec![g];
        } else {
            request.group_id = GroupId(text(group));
            request.topics = topics.map(|ts| {
                ts.iter()
                    .map(|(name, partitions)| {
                        let mut t = OffsetFetchRequestTopic::default();
                        t.name = TopicName(text(*name));
                        t.partition_indexes = partitions.to_vec();
                        t
                    })
                    .collect()
            });
        }
        let response: OffsetFetchResponse = call(broker, ApiKey::OffsetFetch, version, &request).await;
        let mut found = Vec::new();
        if version >= 8 {
            assert_eq!(response.groups[0].error_code, NONE);
            for t in &response.groups[0].topics {
                for p in &t.partitions {
                    let metadata = p.metadata.as_ref().map(string).unwrap_or_default();
                    found.push((string(&t.name.0), p.partition_index, p.committed_offset, metadata));
                }
            }
        } else {
            for t in &response.topics {
                for p in &t.partitions {
                    assert_eq!(p.error_code, NONE);
                    let metadata = p.metadata.as_ref().map(string).unwrap_or_default();
                    found.push((string(&t.name.0), p.partition_index, p.committed_offset, metadata));
                }
            }
        }
        found
    }

    #[tokio::test]
    async fn find_coordinator_names_this_broker_at_every_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path());
        for version in 0..=6i16 {
            let mut request = FindCoordinatorRequest::default();
            if version >= 4 {
                request.coordinator_keys = vec![text("g1"), text("g2")];
            } else {
                request.key = text("g1");
            }
            let response: FindCoordinatorResponse = call(&broker, ApiKey::FindCoordinator, version, &request).await;
            if version >= 4 {
                let keys: Vec<&str> = response.coordinators.iter().map(|c| c.key.as_str()).collect();
                assert_eq!(keys, ["g1", "g2"]);
                assert!(response.coordinators.iter().all(|c| c.error_code == NONE && c.port == 9092));
            } else {
                assert_eq!((response.error_code, response.node_id.0, response.port), (NONE, 0, 9092), "v{version}");
                assert_eq!(response.host.as_str(), "127.0.0.1");
            }
        }
        assert!(broker.topic("__consumer_offsets").is_some(), "created on first lookup");
        let mut transaction = FindCoordinatorRequest::default();
        transaction.key = text("txn");
        transaction.key_type = KEY_TYPE_TRANSACTION;
        let response: FindCoordinatorResponse = call(&broker, ApiKey::FindCoordinator, 3, &transaction).await;
        assert_eq!(response.error_code, NONE);
        let mut share = FindCoordinatorRequest::default();
        share.coordinator_keys = vec![text("s")];
        share.key_type = 2;
        let response: FindCoordinatorResponse = call(&broker, ApiKey::FindCoordinator, 6, &share).await;
        assert_eq!(response.coordinators[0].error_code, code(ResponseError::InvalidRequest));
    }

    #[tokio::test]
    async fn one_member_joins_syncs_heartbeats_commits_and_leaves_at_every_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path());
        let _timers = spawn_timers(&broker);
        create_topic(&broker, "t", 2);
        for version in 0..=9i16 {
            let group = format!("g{version}");
            let joined = join(&broker, &group, None, version).await;
            assert_eq!(joined.error_code, NONE, "v{version}");
            assert_eq!(joined.generation_id, 1);
            assert_eq!(joined.leader, joined.member_id, "a lone member leads");
            assert_eq!(joined.members.len(), 1);
            assert_eq!(joined.protocol_name.as_ref().map(string).as_deref(), Some("range"));
            let member = string(&joined.member_id);
            assert!(member.starts_with("handler-test-"), "{member}");
            let sync_version = version.min(5);
            let synced = sync(&broker, &group, &joined, &[(member.as_str(), "A")], sync_version).await;
            assert_eq!((synced.error_code, synced.assignment.as_ref()), (NONE, b"A".as_ref()), "v{version}");
            let heartbeat_version = version.min(4);
            let generation = joined.generation_id;
            assert_eq!(heartbeat(&broker, &group, &joined.member_id, generation, heartbeat_version).await, NONE);
            let commit_version = version.clamp(2, 9);
            assert_eq!(commit(&broker, &group, &member, generation, "t", 1, 77, commit_version).await, NONE);
            let fetched = fetch(&broker, &group, Some(&[("t", &[0, 1])]), version.clamp(1, 9)).await;
            assert_eq!(
                fetched,
                vec![("t".into(), 0, -1, String::new()), ("t".into(), 1, 77, "meta-77".into())],
                "v{version}"
            );
            let mut leave = LeaveGroupRequest::default();
            leave.group_id = GroupId(text(&group));
            let leave_version = version.min(5);
            if leave_version >= 3 {
                let mut identity = MemberIdentity::default();
                identity.member_id = joined.member_id.clone();
                leave.members = vec![identity];
            } else {
                leave.member_id = joined.member_id.clone();
            }
            let left: LeaveGroupResponse = call(&broker, ApiKey::LeaveGroup, leave_version, &leave).await;
            assert_eq!(left.error_code, NONE);
            assert!(left.members.iter().all(|m| m.error_code == NONE));
            let gone = heartbeat(&broker, &group, &joined.member_id, generation, heartbeat_version).await;
            assert_eq!(gone, code(ResponseError::UnknownMemberId));
        }
    }

    #[tokio::test]
    async fn members_joining_together_share_a_generation_and_get_their_own_assignments() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Long enough that all three land in the first round even on a loaded machine.
        let broker = open_with_delay(dir.path(), 500);
        let _timers = spawn_timers(&broker);
        let joins: Vec<_> = (0..3)
            .map(|_| {
                let broker = Arc::clone(&broker);
                tokio::spawn(async move { join(&broker, "shared", None, 7).await })
            })
            .collect();
        let mut joined = Vec::new();
        for handle in joins {
            joined.push(handle.await.expect("join task"));
        }
        assert!(joined.iter().all(|j| j.error_code == NONE && j.generation_id == 1));
        let leader_id = joined[0].leader.clone();
        let (leaders, followers): (Vec<_>, Vec<_>) = joined.into_iter().partition(|j| j.member_id == leader_id);
        assert_eq!((leaders.len(), followers.len()), (1, 2));
        assert_eq!(leaders[0].members.len(), 3);
        assert!(followers.iter().all(|f| f.members.is_empty()));
        // Followers park in SyncGroup until the leader's assignment arrives.
        let parked: Vec<_> = followers
            .into_iter()
            .map(|follower| {
                let broker = Arc::clone(&broker);
                tokio::spawn(async move {
                    let synced = sync(&broker, "shared", &follower, &[], 5).await;
                    (string(&follower.member_id), synced)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let assignments: Vec<(String, String)> = leaders[0]
            .members
            .iter()
            .map(|m| (string(&m.member_id), format!("for-{}", m.member_id.as_str())))
            .collect();
        let pairs: Vec<(&str, &str)> = assignments.iter().map(|(m, a)| (m.as_str(), a.as_str())).collect();
        let leader_sync = sync(&broker, "shared", &leaders[0], &pairs, 5).await;
        assert_eq!(leader_sync.error_code, NONE);
        for handle in parked {
            let (member, synced) = handle.await.expect("sync task");
            assert_eq!(synced.error_code, NONE);
            assert_eq!(synced.assignment, Bytes::from(format!("for-{member}")));
        }
        let mut describe = DescribeGroupsRequest::default();
        describe.groups = vec![GroupId(text("shared"))];
        let described: DescribeGroupsResponse = call(&broker, ApiKey::DescribeGroups, 5, &describe).await;
        assert_eq!(described.groups[0].group_state.as_str(), "Stable");
        assert_eq!(described.groups[0].protocol_data.as_str(), "range");
        assert_eq!(described.groups[0].members.len(), 3);
    }

    #[tokio::test]
    async fn commit_metadata_round_trips_and_bad_commits_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path());
        create_topic(&broker, "t", 3);
        for (index, version) in (2..=9i16).enumerate() {
            let offset = 10 + index as i64;
            assert_eq!(commit(&broker, "simple", "", -1, "t", 0, offset, version).await, NONE, "v{version}");
            for fetch_version in 1..=9i16 {
                let fetched = fetch(&broker, "simple", Some(&[("t", &[0])]), fetch_version).await;
                assert_eq!(fetched, vec![("t".into(), 0, offset, format!("meta-{offset}"))], "v{fetch_version}");
            }
        }
        // Null topics: everything committed.
        assert_eq!(commit(&broker, "simple", "", -1, "t", 2, 5, 8).await, NONE);
        for version in [2i16, 7, 8, 9] {
            assert_eq!(fetch(&broker, "simple", None, version).await.len(), 2, "v{version}");
        }
        assert!(fetch(&broker, "nobody", None, 8).await.is_empty());
        let unknown = code(ResponseError::UnknownTopicOrPartition);
        assert_eq!(commit(&broker, "simple", "", -1, "missing", 0, 1, 8).await, unknown);
        assert_eq!(commit(&broker, "simple", "", -1, "t", 3, 1, 8).await, unknown);
        // A generation for a group that does not exist.
        assert_eq!(commit(&broker, "ghost", "m", 4, "t", 0, 1, 8).await, code(ResponseError::IllegalGeneration));
        assert_eq!(commit(&broker, "ghost", "m", 4, "t", 0, 1, 9).await, code(ResponseError::GroupIdNotFound));
    }

    #[tokio::test]
    async fn a_group_with_members_refuses_simple_commits_and_deletion() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path());
        let _timers = spawn_timers(&broker);
        create_topic(&broker, "t", 1);
        let joined = join(&broker, "busy", None, 5).await;
        let member = string(&joined.member_id);
        sync(&broker, "busy", &joined, &[(member.as_str(), "A")], 5).await;
        assert_eq!(commit(&broker, "busy", "", -1, "t", 0, 1, 8).await, code(ResponseError::UnknownMemberId));
        let stale = commit(&broker, "busy", &member, joined.generation_id + 1, "t", 0, 1, 8).await;
        assert_eq!(stale, code(ResponseError::IllegalGeneration));
        assert_eq!(commit(&broker, "busy", &member, joined.generation_id, "t", 0, 1, 8).await, NONE);

        let mut delete = DeleteGroupsRequest::default();
        delete.groups_names = vec![GroupId(text("busy")), GroupId(text("never"))];
        let response: DeleteGroupsResponse = call(&broker, ApiKey::DeleteGroups, 2, &delete).await;
        let codes: Vec<i16> = response.results.iter().map(|r| r.error_code).collect();
        assert_eq!(codes, [code(ResponseError::NonEmptyGroup), code(ResponseError::GroupIdNotFound)]);

        // OffsetDelete: the group consumes "t", so its offsets stay.
        create_topic(&broker, "u", 1);
        assert_eq!(commit(&broker, "busy", &member, joined.generation_id, "u", 0, 9, 8).await, NONE);
        let mut offset_delete = OffsetDeleteRequest::default();
        offset_delete.group_id = GroupId(text("busy"));
        offset_delete.topics = ["t", "u"]
            .iter()
            .map(|name| {
                let mut topic = OffsetDeleteRequestTopic::default();
                topic.name = TopicName(text(*name));
                let mut partition = OffsetDeleteRequestPartition::default();
                partition.partition_index = 0;
                topic.partitions = vec![partition];
                topic
            })
            .collect();
        let response: OffsetDeleteResponse = call(&broker, ApiKey::OffsetDelete, 0, &offset_delete).await;
        assert_eq!(response.error_code, NONE);
        let codes: Vec<i16> = response.topics.iter().map(|t| t.partitions[0].error_code).collect();
        assert_eq!(codes, [code(ResponseError::GroupSubscribedToTopic), NONE]);
        assert_eq!(fetch(&broker, "busy", None, 8).await, vec![("t".into(), 0, 1, "meta-1".into())]);

        // Once the member leaves the group is Empty and can be deleted with its offsets.
        let mut leave = LeaveGroupRequest::default();
        leave.group_id = GroupId(text("busy"));
        leave.member_id = joined.member_id.clone();
        let _: LeaveGroupResponse = call(&broker, ApiKey::LeaveGroup, 1, &leave).await;
        delete.groups_names = vec![GroupId(text("busy"))];
        let response: DeleteGroupsResponse = call(&broker, ApiKey::DeleteGroups, 0, &delete).await;
        assert_eq!(response.results[0].error_code, NONE);
        assert!(fetch(&broker, "busy", None, 8).await.is_empty());
        offset_delete.group_id = GroupId(text("busy"));
        let response: OffsetDeleteResponse = call(&broker, ApiKey::OffsetDelete, 0, &offset_delete).await;
        assert_eq!(response.error_code, code(ResponseError::GroupIdNotFound));
    }

    #[tokio::test]
    async fn list_and_describe_groups_with_filters_at_every_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path());
        let _timers = spawn_timers(&broker);
        create_topic(&broker, "t", 1);
        let joined = join(&broker, "live", None, 5).await;
        let member = string(&joined.member_id);
        sync(&broker, "live", &joined, &[(member.as_str(), "A")], 5).await;
        assert_eq!(commit(&broker, "offsets-only", "", -1, "t", 0, 1, 8).await, NONE);
        for version in 0..=5i16 {
            let mut request = ListGroupsRequest::default();
            if version >= 4 {
                request.states_filter = vec![text("stable")];
            }
            let response: ListGroupsResponse = call(&broker, ApiKey::ListGroups, version, &request).await;
            let mut groups: Vec<(String, String)> =
                response.groups.iter().map(|g| (string(&g.group_id.0), string(&g.protocol_type))).collect();
            groups.sort();
            if version >= 4 {
                assert_eq!(groups, [("live".to_string(), "consumer".to_string())], "v{version}");
                assert_eq!(response.groups[0].group_state.as_str(), "Stable");
            } else {
                assert_eq!(groups.len(), 2, "v{version}");
            }
        }
        let mut typed = ListGroupsRequest::default();
        typed.types_filter = vec![text("consumer")];
        let response: ListGroupsResponse = call(&broker, ApiKey::ListGroups, 5, &typed).await;
        assert!(response.groups.is_empty(), "every group here is classic");
        typed.types_filter = vec![text("Classic")];
        let response: ListGroupsResponse = call(&broker, ApiKey::ListGroups, 5, &typed).await;
        assert_eq!(response.groups.len(), 2);

        for version in 0..=6i16 {
            let mut request = DescribeGroupsRequest::default();
            request.groups = vec![GroupId(text("live")), GroupId(text("unknown"))];
            request.include_authorized_operations = version >= 3;
            let response: DescribeGroupsResponse = call(&broker, ApiKey::DescribeGroups, version, &request).await;
            let live = &response.groups[0];
            assert_eq!((live.error_code, live.group_state.as_str()), (NONE, "Stable"));
            assert_eq!(live.members[0].member_assignment, Bytes::from_static(b"A"));
            assert_eq!(live.members[0].client_id.as_str(), "handler-test");
            let unknown = &response.groups[1];
            assert_eq!(unknown.group_state.as_str(), "Dead");
            let expected = if version >= 6 { code(ResponseError::GroupIdNotFound) } else { NONE };
            assert_eq!(unknown.error_code, expected, "v{version}");
        }
    }

    #[tokio::test]
    async fn a_silent_member_is_removed_when_its_session_expires() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path());
        let _timers = spawn_timers(&broker);
        let mut request = join_request("quiet", "", None, 3);
        request.session_timeout_ms = 200;
        let joined: JoinGroupResponse = call(&broker, ApiKey::JoinGroup, 3, &request).await;
        assert_eq!(joined.error_code, NONE);
        let member = string(&joined.member_id);
        sync(&broker, "quiet", &joined, &[(member.as_str(), "A")], 3).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let description = broker.groups().describe("quiet").expect("the group stays, Empty");
        assert_eq!(description.state.name(), "Empty");
        assert!(description.members.is_empty());
        assert_eq!(heartbeat(&broker, "quiet", &joined.member_id, 1, 3).await, code(ResponseError::UnknownMemberId));
        // A session timeout outside the broker's range is refused.
        request.session_timeout_ms = 50;
        let refused: JoinGroupResponse = call(&broker, ApiKey::JoinGroup, 3, &request).await;
        assert_eq!(refused.error_code, code(ResponseError::InvalidSessionTimeout));
    }

    #[tokio::test]
    async fn a_restarted_static_member_gets_its_assignment_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path());
        let _timers = spawn_timers(&broker);
        let first = join(&broker, "static", Some("instance-1"), 5).await;
        let first_id = string(&first.member_id);
        assert!(first_id.starts_with("instance-1-"), "{first_id}");
        sync(&broker, "static", &first, &[(first_id.as_str(), "A")], 5).await;
        // The process restarts: same instance id, no member id. No rebalance, same generation.
        let second = join(&broker, "static", Some("instance-1"), 5).await;
        assert_eq!((second.error_code, second.generation_id), (NONE, first.generation_id));
        assert_ne!(second.member_id, first.member_id);
        assert_ne!(second.leader, second.member_id, "the old leader id keeps it from reassigning");
        let synced = sync(&broker, "static", &second, &[], 5).await;
        assert_eq!(synced.assignment, Bytes::from_static(b"A"));
        let mut fenced = HeartbeatRequest::default();
        fenced.group_id = GroupId(text("static"));
        fenced.member_id = first.member_id.clone();
        fenced.group_instance_id = Some(text("instance-1"));
        fenced.generation_id = first.generation_id;
        let response: HeartbeatResponse = call(&broker, ApiKey::Heartbeat, 4, &fenced).await;
        assert_eq!(response.error_code, code(ResponseError::FencedInstanceId));
    }

    #[tokio::test]
    async fn offsets_and_groups_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (member, generation) = {
            let broker = open(dir.path());
            let timers = spawn_timers(&broker);
            create_topic(&broker, "t", 2);
            let joined = join(&broker, "durable", None, 7).await;
            let member = string(&joined.member_id);
            sync(&broker, "durable", &joined, &[(member.as_str(), "assigned")], 5).await;
            assert_eq!(commit(&broker, "durable", &member, joined.generation_id, "t", 1, 42, 8).await, NONE);
            assert_eq!(commit(&broker, "gone", "", -1, "t", 0, 1, 8).await, NONE);
            let mut delete = DeleteGroupsRequest::default();
            delete.groups_names = vec![GroupId(text("gone"))];
            let _: DeleteGroupsResponse = call(&broker, ApiKey::DeleteGroups, 2, &delete).await;
            timers.abort();
            let _ = timers.await;
            (member, joined.generation_id)
        };
        let broker = open(dir.path());
        assert_eq!(fetch(&broker, "durable", None, 8).await, vec![("t".into(), 1, 42, "meta-42".into())]);
        assert!(fetch(&broker, "gone", None, 8).await.is_empty(), "tombstones win on replay");
        // The group is back, Stable, with its member: no rebalance after a quick restart.
        let description = broker.groups().describe("durable").expect("restored");
        assert_eq!(description.state.name(), "Stable");
        assert_eq!(description.members[0].assignment, Bytes::from_static(b"assigned"));
        assert_eq!(heartbeat(&broker, "durable", &text(member), generation, 4).await, NONE);
    }

    /// A request frame's bytes (header and body, no size prefix).
    fn raw<R: Encodable>(api: ApiKey, version: i16, body: &R) -> Bytes {
        use kafka_protocol::messages::RequestHeader;
        let mut buf = bytes::BytesMut::new();
        let mut header = RequestHeader::default();
        header.request_api_key = api as i16;
        header.request_api_version = version;
        header.correlation_id = 7;
        header.client_id = Some(text("mutant"));
        kafka_protocol::protocol::encode_request_header_into_buffer(&mut buf, &header).expect("header");
        body.encode(&mut buf, version).expect("body");
        buf.freeze()
    }

    /// One valid request of every group API at every served version.
    fn seeds() -> Vec<Bytes> {
        let mut seeds = Vec::new();
        let group = || GroupId(text("g"));
        for version in 0..=6 {
            let mut request = FindCoordinatorRequest::default();
            if version >= 4 {
                request.coordinator_keys = vec![text("g")];
            } else {
                request.key = text("g");
            }
            seeds.push(raw(ApiKey::FindCoordinator, version, &request));
        }
        for version in 0..=9 {
            seeds.push(raw(ApiKey::JoinGroup, version, &join_request("g", "", Some("i"), version)));
            seeds.push(raw(ApiKey::JoinGroup, version, &join_request("g", "m", None, version)));
        }
        for version in 0..=5 {
            let mut request = SyncGroupRequest::default();
            request.group_id = group();
            request.member_id = text("m");
            let mut assignment = SyncGroupRequestAssignment::default();
            assignment.member_id = text("m");
            assignment.assignment = Bytes::from_static(b"\x00\x00\x00\x00\x00\x01");
            request.assignments = vec![assignment];
            seeds.push(raw(ApiKey::SyncGroup, version, &request));
            let mut leave = LeaveGroupRequest::default();
            leave.group_id = group();
            if version >= 3 {
                let mut identity = MemberIdentity::default();
                identity.member_id = text("m");
                leave.members = vec![identity];
            } else {
                leave.member_id = text("m");
            }
            seeds.push(raw(ApiKey::LeaveGroup, version, &leave));
            let mut list = ListGroupsRequest::default();
            if version >= 4 {
                list.states_filter = vec![text("Stable")];
            }
            seeds.push(raw(ApiKey::ListGroups, version, &list));
        }
        for version in 0..=4 {
            let mut request = HeartbeatRequest::default();
            request.group_id = group();
            request.member_id = text("m");
            seeds.push(raw(ApiKey::Heartbeat, version, &request));
        }
        for version in 2..=9 {
            let mut partition = OffsetCommitRequestPartition::default();
            partition.committed_offset = 5;
            partition.committed_metadata = Some(text("meta"));
            let mut topic = OffsetCommitRequestTopic::default();
            topic.name = TopicName(text("t"));
            topic.partitions = vec![partition];
            let mut request = OffsetCommitRequest::default();
            request.group_id = group();
            request.topics = vec![topic];
            seeds.push(raw(ApiKey::OffsetCommit, version, &request));
        }
        for version in 1..=9 {
            let mut request = OffsetFetchRequest::default();
            if version >= 8 {
                let mut g = OffsetFetchRequestGroup::default();
                g.group_id = group();
                g.topics = None;
                request.groups = vec![g];
            } else {
                request.group_id = group();
            }
            seeds.push(raw(ApiKey::OffsetFetch, version, &request));
        }
        for version in 0..=6 {
            let mut request = DescribeGroupsRequest::default();
            request.groups = vec![group()];
            seeds.push(raw(ApiKey::DescribeGroups, version, &request));
        }
        for version in 0..=2 {
            let mut request = DeleteGroupsRequest::default();
            request.groups_names = vec![group()];
            seeds.push(raw(ApiKey::DeleteGroups, version, &request));
        }
        let mut offset_delete = OffsetDeleteRequest::default();
        offset_delete.group_id = group();
        let mut topic = OffsetDeleteRequestTopic::default();
        topic.name = TopicName(text("t"));
        topic.partitions = vec![OffsetDeleteRequestPartition::default()];
        offset_delete.topics = vec![topic];
        seeds.push(raw(ApiKey::OffsetDelete, 0, &offset_delete));
        seeds
    }

    #[tokio::test]
    async fn mutated_group_requests_never_panic_the_broker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path());
        create_topic(&broker, "t", 1);
        // A fixed-seed LCG: every run mutates the same way, so a failure reproduces.
        let mut state: u64 = 0x5eed_0f97_0901;
        let mut next = move |bound: usize| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as usize) % bound.max(1)
        };
        let (mut answered, mut refused) = (0, 0);
        for seed in seeds() {
            for _ in 0..200 {
                let mut bytes = seed.to_vec();
                // Keep the api key and version; mutate the rest.
                for _ in 0..1 + next(4) {
                    let at = 4 + next(bytes.len() - 4);
                    bytes[at] = match next(3) {
                        0 => 0xff,
                        1 => 0x00,
                        _ => next(256) as u8,
                    };
                }
                if next(4) == 0 {
                    bytes.truncate(4 + next(bytes.len() - 4));
                }
                let Ok(frame) = crate::protocol::frame::decode_request(Bytes::from(bytes)) else { continue };
                match super::super::dispatch(&broker, frame).await {
                    // Parked replies are dropped unanswered, as by a client that disconnects.
                    Ok(_) => answered += 1,
                    Err(_) => refused += 1,
                }
            }
        }
        assert!(answered > 1000 && refused > 100, "answered {answered}, refused {refused}");
        // The broker still works.
        assert_eq!(commit(&broker, "after", "", -1, "t", 0, 1, 8).await, NONE);
    }
    #[tokio::test]
    async fn ids_too_long_to_store_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path());
        create_topic(&broker, "t", 1);
        // Flexible versions carry strings longer than the records' i16 lengths can hold.
        let long = "g".repeat(40_000);
        let joined: JoinGroupResponse = call(&broker, ApiKey::JoinGroup, 9, &join_request(&long, "", None, 9)).await;
        assert_eq!(joined.error_code, code(ResponseError::InvalidGroupId));
        let static_member = join_request("g", "", Some(&"i".repeat(32_750)), 9);
        let joined: JoinGroupResponse = call(&broker, ApiKey::JoinGroup, 9, &static_member).await;
        assert_eq!(joined.error_code, code(ResponseError::InvalidGroupId));
        assert_eq!(commit(&broker, &long, "", -1, "t", 0, 1, 8).await, code(ResponseError::InvalidGroupId));
        assert!(broker.groups().list(&[]).is_empty());
    }
}
