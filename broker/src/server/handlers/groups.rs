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
    let version = request.api_version;
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
                topic_response.name = TopicName(text(topic));
                for (index, offset) in partitions {
                    let (committed, epoch, metadata) = fetched(offset);
                    let mut partition = OffsetFetchResponsePartitions::default();
                    partition.partition_index = index;
                    partition.committed_offset = committed;
                    partition.committed_leader_epoch = epoch;
                    partition.metadata = Some(text(metadata));
                    topic_response.partitions.push(partition);
                }
                group_response.topics.push(topic_response);
            }
            response.groups.push(group_response);
        }
        return respond(request, &response);
    }
    let topics: Option<Vec<(String, Vec<i32>)>> =
        body.topics.as_ref().map(|topics| topics.iter().map(|t| (string(&t.name.0), t.partition_indexes.clone())).collect());
    for (topic, partitions) in broker.groups().fetch_offsets(body.group_id.0.as_str(), topics.as_deref()) {
        let mut topic_response = OffsetFetchResponseTopic::default();
        topic_response.name = TopicName(text(topic));
        for (index, offset) in partitions {
            let (committed, epoch, metadata) = fetched(offset);
            let mut partition = OffsetFetchResponsePartition::default();
            partition.partition_index = index;
            partition.committed_offset = committed;
            partition.committed_leader_epoch = epoch;
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
