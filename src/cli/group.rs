//! `runnel group list|describe|reset-offsets|delete`: consumer groups over the Kafka protocol,
//! asked of the group's coordinator (FindCoordinator), so it works against Apache Kafka too.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bytes::Buf;
use clap::{Args, Subcommand};
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ConsumerProtocolAssignment, DeleteGroupsRequest, DescribeGroupsRequest, FindCoordinatorRequest, GroupId,
    ListGroupsRequest, OffsetCommitRequest, OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};

use super::client::Client;
use super::cluster::Cluster;
use super::error;
use super::offsets::{list_offsets, OffsetSpec};
use super::ConnectArgs;

/// COORDINATOR_NOT_AVAILABLE / COORDINATOR_LOAD_IN_PROGRESS: the coordinator is starting up
/// (e.g. creating `__consumer_offsets`); asking again shortly succeeds.
const COORDINATOR_RETRIABLE: [i16; 2] = [15, 14];
/// FindCoordinator attempts × backoff bound the wait for a starting coordinator: 10 × 200 ms.
const FIND_COORDINATOR_ATTEMPTS: u32 = 10;
const FIND_COORDINATOR_BACKOFF: Duration = Duration::from_millis(200);
/// The consumer protocol's type name: only its assignments can be decoded into partitions.
const CONSUMER_PROTOCOL_TYPE: &str = "consumer";
/// The newest ConsumerProtocolAssignment version the codec knows; newer ones share its prefix.
const ASSIGNMENT_VERSION_MAX: i16 = 3;

#[derive(Subcommand, Debug)]
pub(crate) enum GroupCommand {
    /// List consumer groups, one per line, sorted
    List {
        /// Also print each group's state
        #[arg(long)]
        state: bool,
    },
    /// Show a group's state and members, and per partition the committed offset, log end and lag
    Describe {
        /// Group id
        group: String,
    },
    /// Move a group's committed offsets for a topic; the group must have no active members
    ResetOffsets {
        /// Group id
        group: String,
        /// Topic whose partitions are reset (all of them)
        #[arg(long)]
        topic: String,
        #[command(flatten)]
        target: ResetTarget,
        /// Print the new offsets without committing them
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete a group and its committed offsets; the group must have no active members
    Delete {
        /// Group id
        group: String,
    },
}

/// Where `reset-offsets` moves each partition; exactly one is required.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub(crate) struct ResetTarget {
    /// The log start offset
    #[arg(long)]
    to_earliest: bool,
    /// The log end offset (skip everything there is now)
    #[arg(long)]
    to_latest: bool,
    /// This offset, clamped to [log start, log end]
    #[arg(long, value_name = "N")]
    to_offset: Option<i64>,
    /// The first offset at or after this time, e.g. 2024-05-01T12:00:00Z (no zone: UTC)
    #[arg(long, value_name = "ISO8601", value_parser = parse_datetime_ms)]
    to_datetime: Option<i64>,
}

pub(crate) async fn run(connect: &ConnectArgs, command: GroupCommand) -> Result<()> {
    let mut cluster = Cluster::connect(&connect.brokers).await?;
    match command {
        GroupCommand::List { state } => list(&mut cluster, state).await,
        GroupCommand::Describe { group } => describe(&mut cluster, &group).await,
        GroupCommand::ResetOffsets { group, topic, target, dry_run } => {
            reset_offsets(&mut cluster, &group, &topic, &target, dry_run).await
        }
        GroupCommand::Delete { group } => delete(&mut cluster, &group).await,
    }
}

fn text(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// The node id of `group`'s coordinator.
async fn find_coordinator(cluster: &mut Cluster, group: &str) -> Result<i32> {
    let client = cluster.any();
    let version = client.version(ApiKey::FindCoordinator)?;
    let mut request = FindCoordinatorRequest::default();
    if version >= 4 {
        request.coordinator_keys = vec![text(group)];
    } else {
        request.key = text(group);
    }
    let mut last = String::new();
    for attempt in 0..FIND_COORDINATOR_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(FIND_COORDINATOR_BACKOFF).await;
        }
        let response = client.send(&request, version).await?;
        let (code, message, node_id) = match response.coordinators.first() {
            Some(c) if version >= 4 => (c.error_code, c.error_message.clone(), c.node_id.0),
            _ => (response.error_code, response.error_message.clone(), response.node_id.0),
        };
        if code == 0 {
            return Ok(node_id);
        }
        last = error::describe(code, message.as_deref());
        if !COORDINATOR_RETRIABLE.contains(&code) {
            break;
        }
    }
    bail!("cannot find the coordinator of group '{group}': {last}")
}

/// The connection to `group`'s coordinator (the metadata refresh learns broker addresses).
async fn coordinator<'a>(cluster: &'a mut Cluster, group: &str) -> Result<&'a mut Client> {
    let node_id = find_coordinator(cluster, group).await?;
    cluster.topic_names().await?;
    cluster.leader(node_id).await
}

async fn list(cluster: &mut Cluster, with_state: bool) -> Result<()> {
    // Each broker knows only the groups it coordinates: ask every one.
    cluster.topic_names().await?;
    let mut groups: BTreeMap<String, String> = BTreeMap::new();
    for node_id in cluster.broker_ids() {
        let client = cluster.leader(node_id).await?;
        let version = client.version(ApiKey::ListGroups)?;
        let response = client.send(&ListGroupsRequest::default(), version).await?;
        if response.error_code != 0 {
            bail!("listing groups on node {node_id} failed: {}", error::describe(response.error_code, None));
        }
        for group in response.groups {
            groups.insert(group.group_id.as_str().to_string(), group.group_state.as_str().to_string());
        }
    }
    let mut out = std::io::stdout().lock();
    for (group, state) in &groups {
        match (with_state, state.is_empty()) {
            (true, false) => writeln!(out, "{group}\t{state}")?,
            _ => writeln!(out, "{group}")?,
        }
    }
    out.flush()?;
    Ok(())
}

/// A group as DescribeGroups reports it, with assignments decoded.
struct Described {
    state: String,
    protocol_type: String,
    protocol: String,
    members: Vec<Member>,
}

struct Member {
    member_id: String,
    client_id: String,
    host: String,
    /// Assigned partitions by topic (consumer protocol only).
    assigned: BTreeMap<String, Vec<i32>>,
}

async fn describe_group(cluster: &mut Cluster, group: &str) -> Result<Described> {
    let client = coordinator(cluster, group).await?;
    let version = client.version(ApiKey::DescribeGroups)?;
    let mut request = DescribeGroupsRequest::default();
    request.groups = vec![GroupId(text(group))];
    let response = client.send(&request, version).await?;
    let described = response.groups.into_iter().next().context("broker returned no group description")?;
    if described.error_code != 0 {
        bail!("describing group '{group}' failed: {}", error::describe(described.error_code, None));
    }
    let consumer = described.protocol_type.as_str() == CONSUMER_PROTOCOL_TYPE;
    let members = described
        .members
        .into_iter()
        .map(|m| {
            let assigned = if consumer { decode_assignment(m.member_assignment) } else { BTreeMap::new() };
            Member {
                member_id: m.member_id.to_string(),
                client_id: m.client_id.to_string(),
                host: m.client_host.to_string(),
                assigned,
            }
        })
        .collect();
    Ok(Described {
        state: described.group_state.to_string(),
        protocol_type: described.protocol_type.to_string(),
        protocol: described.protocol_data.to_string(),
        members,
    })
}

/// A consumer-protocol assignment (`version: i16` then the assignment) as topic → partitions;
/// empty when it does not decode.
fn decode_assignment(mut bytes: bytes::Bytes) -> BTreeMap<String, Vec<i32>> {
    let mut assigned = BTreeMap::new();
    if bytes.remaining() < 2 {
        return assigned;
    }
    let version = bytes.get_i16().clamp(0, ASSIGNMENT_VERSION_MAX);
    if let Ok(assignment) = ConsumerProtocolAssignment::decode(&mut bytes, version) {
        for topic in assignment.assigned_partitions {
            assigned.entry(topic.topic.as_str().to_string()).or_insert_with(Vec::new).extend(topic.partitions);
        }
    }
    assigned
}

/// topic → partition → committed offset (every committed partition when `topic` is `None`).
async fn committed_offsets(
    cluster: &mut Cluster,
    group: &str,
    topic: Option<(&str, &[i32])>,
) -> Result<BTreeMap<String, BTreeMap<i32, i64>>> {
    let client = coordinator(cluster, group).await?;
    let version = client.version(ApiKey::OffsetFetch)?;
    let mut request = OffsetFetchRequest::default();
    request.group_id = GroupId(text(group));
    request.topics = topic.map(|(name, partitions)| {
        let mut requested = OffsetFetchRequestTopic::default();
        requested.name = TopicName(text(name));
        requested.partition_indexes = partitions.to_vec();
        vec![requested]
    });
    let response = client.send(&request, version).await?;
    if response.error_code != 0 {
        bail!("fetching offsets of group '{group}' failed: {}", error::describe(response.error_code, None));
    }
    let mut offsets: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    for topic in response.topics {
        for partition in topic.partitions {
            if partition.error_code != 0 {
                bail!(
                    "fetching the offset of {}-{} failed: {}",
                    topic.name.as_str(),
                    partition.partition_index,
                    error::describe(partition.error_code, None)
                );
            }
            if partition.committed_offset >= 0 {
                offsets
                    .entry(topic.name.as_str().to_string())
                    .or_default()
                    .insert(partition.partition_index, partition.committed_offset);
            }
        }
    }
    Ok(offsets)
}

async fn describe(cluster: &mut Cluster, group: &str) -> Result<()> {
    let described = describe_group(cluster, group).await?;
    let committed = committed_offsets(cluster, group, None).await?;
    if described.state == "Dead" && committed.is_empty() {
        bail!("group '{group}' does not exist");
    }
    // Every partition that is assigned or has a committed offset, with its owner if any.
    let mut rows: BTreeMap<(String, i32), Option<usize>> = BTreeMap::new();
    for (topic, partitions) in &committed {
        for partition in partitions.keys() {
            rows.insert((topic.clone(), *partition), None);
        }
    }
    for (index, member) in described.members.iter().enumerate() {
        for (topic, partitions) in &member.assigned {
            for partition in partitions {
                rows.insert((topic.clone(), *partition), Some(index));
            }
        }
    }
    let log_end = log_end_offsets(cluster, rows.keys()).await?;
    let mut table = vec![row(&[
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "LOG-END-OFFSET",
        "LAG",
        "CONSUMER-ID",
        "HOST",
        "CLIENT-ID",
    ])];
    for ((topic, partition), owner) in &rows {
        let current = committed.get(topic).and_then(|p| p.get(partition)).copied();
        let end = log_end.get(&(topic.clone(), *partition)).copied();
        let lag = match (current, end) {
            (Some(current), Some(end)) => (end - current).max(0).to_string(),
            _ => "-".to_string(),
        };
        let (member, client_host, client_id) = match owner.map(|i| &described.members[i]) {
            Some(m) => (m.member_id.clone(), m.host.clone(), m.client_id.clone()),
            None => ("-".to_string(), "-".to_string(), "-".to_string()),
        };
        let current = current.map_or("-".to_string(), |c| c.to_string());
        let end = end.map_or("-".to_string(), |e| e.to_string());
        table.push(vec![topic.clone(), partition.to_string(), current, end, lag, member, dash(client_host), client_id]);
    }
    // Members without partitions still show, as Kafka's tool does.
    for m in &described.members {
        if m.assigned.values().all(Vec::is_empty) {
            let mut cells = vec!["-".to_string(); 5];
            cells.extend([m.member_id.clone(), dash(m.host.clone()), m.client_id.clone()]);
            table.push(cells);
        }
    }
    let mut out = std::io::stdout().lock();
    let protocol = if described.protocol.is_empty() { "-" } else { described.protocol.as_str() };
    let protocol_type = if described.protocol_type.is_empty() { "-" } else { described.protocol_type.as_str() };
    writeln!(
        out,
        "Group: {group}\tState: {}\tProtocol: {protocol_type}/{protocol}\tMembers: {}",
        described.state,
        described.members.len()
    )?;
    write_table(&mut out, &table)?;
    out.flush()?;
    Ok(())
}

/// The log end offset of each (topic, partition) that still exists.
async fn log_end_offsets<'a>(
    cluster: &mut Cluster,
    partitions: impl Iterator<Item = &'a (String, i32)>,
) -> Result<BTreeMap<(String, i32), i64>> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (topic, partition) in partitions {
        by_topic.entry(topic.as_str()).or_default().push(*partition);
    }
    let mut log_end = BTreeMap::new();
    for (topic, ids) in by_topic {
        // A topic deleted since the commit has no end offset; its lag shows as "-".
        let Ok(info) = cluster.topic(topic, false).await else { continue };
        let ids: Vec<i32> = ids.into_iter().filter(|id| info.partition(*id).is_ok()).collect();
        for (partition, end) in list_offsets(cluster, &info, &ids, OffsetSpec::Latest).await? {
            log_end.insert((topic.to_string(), partition), end);
        }
    }
    Ok(log_end)
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

fn dash(value: String) -> String {
    if value.is_empty() {
        "-".to_string()
    } else {
        value
    }
}

/// Writes rows with columns padded to their widest cell.
fn write_table(out: &mut impl Write, rows: &[Vec<String>]) -> std::io::Result<()> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..columns).map(|c| rows.iter().filter_map(|r| r.get(c)).map(String::len).max().unwrap_or(0)).collect();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        writeln!(out, "{}", cells.join("  ").trim_end())?;
    }
    Ok(())
}

async fn reset_offsets(
    cluster: &mut Cluster,
    group: &str,
    topic: &str,
    target: &ResetTarget,
    dry_run: bool,
) -> Result<()> {
    let described = describe_group(cluster, group).await?;
    // As Kafka's tool: offsets of a group that is consuming would be overwritten by its next commit.
    ensure!(
        described.state == "Empty" || described.state == "Dead",
        "offsets can only be reset when group '{group}' is inactive, but its state is {}",
        described.state
    );
    let info = cluster.topic(topic, false).await?;
    let ids: Vec<i32> = info.partitions.iter().map(|p| p.id).collect();
    let earliest = list_offsets(cluster, &info, &ids, OffsetSpec::Earliest).await?;
    let latest = list_offsets(cluster, &info, &ids, OffsetSpec::Latest).await?;
    let by_time = match target.to_datetime {
        Some(ms) => Some(list_offsets(cluster, &info, &ids, OffsetSpec::Timestamp(ms)).await?),
        None => None,
    };
    let mut new_offsets = BTreeMap::new();
    for id in &ids {
        let (low, high) = (earliest.get(id).copied().unwrap_or(0), latest.get(id).copied().unwrap_or(0));
        let offset = if target.to_earliest {
            low
        } else if target.to_latest {
            high
        } else if let Some(n) = target.to_offset {
            n.clamp(low, high)
        } else {
            // No record at or after the time: the end of the log.
            by_time.as_ref().and_then(|t| t.get(id)).copied().filter(|o| *o >= 0).unwrap_or(high)
        };
        new_offsets.insert(*id, offset);
    }
    let mut table = vec![row(&["GROUP", "TOPIC", "PARTITION", "NEW-OFFSET"])];
    for (partition, offset) in &new_offsets {
        table.push(vec![group.to_string(), topic.to_string(), partition.to_string(), offset.to_string()]);
    }
    let mut out = std::io::stdout().lock();
    write_table(&mut out, &table)?;
    out.flush()?;
    if dry_run {
        return Ok(());
    }
    commit_offsets(cluster, group, topic, &new_offsets).await
}

/// Commits offsets as an admin would: generation -1, no member (only for inactive groups).
async fn commit_offsets(cluster: &mut Cluster, group: &str, topic: &str, offsets: &BTreeMap<i32, i64>) -> Result<()> {
    let client = coordinator(cluster, group).await?;
    let version = client.version(ApiKey::OffsetCommit)?;
    let mut requested = OffsetCommitRequestTopic::default();
    requested.name = TopicName(text(topic));
    requested.partitions = offsets
        .iter()
        .map(|(partition, offset)| {
            let mut p = OffsetCommitRequestPartition::default();
            p.partition_index = *partition;
            p.committed_offset = *offset;
            p
        })
        .collect();
    let mut request = OffsetCommitRequest::default();
    request.group_id = GroupId(text(group));
    request.generation_id_or_member_epoch = -1;
    request.topics = vec![requested];
    let response = client.send(&request, version).await?;
    for topic_response in &response.topics {
        for partition in &topic_response.partitions {
            if partition.error_code != 0 {
                bail!(
                    "committing the offset of {topic}-{} failed: {}",
                    partition.partition_index,
                    error::describe(partition.error_code, None)
                );
            }
        }
    }
    Ok(())
}

async fn delete(cluster: &mut Cluster, group: &str) -> Result<()> {
    let client = coordinator(cluster, group).await?;
    let version = client.version(ApiKey::DeleteGroups)?;
    let mut request = DeleteGroupsRequest::default();
    request.groups_names = vec![GroupId(text(group))];
    let response = client.send(&request, version).await?;
    let result = response.results.first().context("broker returned no DeleteGroups result")?;
    if result.error_code != 0 {
        bail!("could not delete group '{group}': {}", error::describe(result.error_code, None));
    }
    println!("Deleted group {group}.");
    Ok(())
}

/// `YYYY-MM-DD[THH:MM[:SS[.fff]]][Z|±HH:MM|±HHMM]` → milliseconds since the epoch; no zone
/// means UTC.
pub(crate) fn parse_datetime_ms(text: &str) -> Result<i64, String> {
    let bad = || format!("'{text}' is not an ISO 8601 date-time like 2024-05-01T12:00:00Z");
    let (date, rest) = text.split_once('T').unwrap_or((text, ""));
    let mut parts = date.splitn(3, '-');
    let mut field = |len: usize| -> Result<i64, String> {
        let part = parts.next().filter(|p| p.len() == len && p.bytes().all(|b| b.is_ascii_digit())).ok_or_else(bad)?;
        part.parse().map_err(|_| bad())
    };
    let (year, month, day) = (field(4)?, field(2)?, field(2)?);
    ensure_range(month, 1, 12).and(ensure_range(day, 1, days_in_month(year, month))).map_err(|_| bad())?;
    let (time, offset_ms) = split_zone(rest).ok_or_else(bad)?;
    let mut time_ms = 0;
    if !time.is_empty() {
        let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
        let units: Vec<&str> = hms.split(':').collect();
        if !(2..=3).contains(&units.len()) {
            return Err(bad());
        }
        let number = |s: &str, max: i64| -> Result<i64, String> {
            let n: i64 = s.parse().map_err(|_| bad())?;
            if s.len() == 2 && (0..=max).contains(&n) {
                Ok(n)
            } else {
                Err(bad())
            }
        };
        let (hour, minute) = (number(units[0], 23)?, number(units[1], 59)?);
        let second = units.get(2).map_or(Ok(0), |s| number(s, 59))?;
        let millis = if fraction.is_empty() {
            0
        } else {
            let digits: String = fraction.chars().chain("000".chars()).take(3).collect();
            digits.parse::<i64>().map_err(|_| bad())?
        };
        time_ms = ((hour * 60 + minute) * 60 + second) * 1000 + millis;
    }
    Ok(days_from_civil(year, month, day) * 86_400_000 + time_ms - offset_ms)
}

fn ensure_range(value: i64, low: i64, high: i64) -> Result<(), ()> {
    if (low..=high).contains(&value) {
        Ok(())
    } else {
        Err(())
    }
}

/// Splits `HH:MM:SS.fffZ` / `…+02:00` into the time and the zone offset in ms.
fn split_zone(rest: &str) -> Option<(&str, i64)> {
    if let Some(time) = rest.strip_suffix('Z') {
        return Some((time, 0));
    }
    match rest.rfind(['+', '-']) {
        None => Some((rest, 0)),
        Some(at) => {
            let (time, zone) = rest.split_at(at);
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let digits: String = zone[1..].chars().filter(|c| *c != ':').collect();
            if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let hours: i64 = digits[..2].parse().ok()?;
            let minutes: i64 = digits[2..].parse().ok()?;
            Some((time, sign * (hours * 60 + minutes) * 60_000))
        }
    }
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_parse_with_and_without_zones() {
        assert_eq!(parse_datetime_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_datetime_ms("1970-01-02"), Ok(86_400_000));
        assert_eq!(parse_datetime_ms("2024-05-01T12:00:00Z"), Ok(1_714_564_800_000));
        assert_eq!(parse_datetime_ms("2024-05-01T12:00:00.250"), Ok(1_714_564_800_250));
        assert_eq!(parse_datetime_ms("2024-05-01T14:00+02:00"), Ok(1_714_564_800_000));
        assert_eq!(parse_datetime_ms("2024-05-01T07:00:00-0500"), Ok(1_714_564_800_000));
        assert_eq!(parse_datetime_ms("2024-02-29T00:00:00Z"), Ok(1_709_164_800_000));
        for bad in ["", "2024", "2024-13-01", "2023-02-29", "2024-05-01T25:00", "2024-05-01T12:00+2", "yesterday"] {
            assert!(parse_datetime_ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn assignments_decode_by_their_own_version() {
        use bytes::BufMut;
        use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
        use kafka_protocol::protocol::Encodable;
        for version in 0..=3i16 {
            let mut assignment = ConsumerProtocolAssignment::default();
            let mut topic = TopicPartition::default();
            topic.topic = TopicName(text("orders"));
            topic.partitions = vec![0, 2];
            assignment.assigned_partitions = vec![topic];
            let mut buf = bytes::BytesMut::new();
            buf.put_i16(version);
            assignment.encode(&mut buf, version).expect("encodes");
            let decoded = decode_assignment(buf.freeze());
            assert_eq!(decoded.get("orders"), Some(&vec![0, 2]), "v{version}");
        }
        assert!(decode_assignment(bytes::Bytes::from_static(b"\x00\x00\xff")).is_empty());
    }

    #[test]
    fn tables_pad_columns_to_the_widest_cell() {
        let mut out = Vec::new();
        write_table(&mut out, &[row(&["A", "BB"]), row(&["ccc", "d"])]).expect("writes");
        assert_eq!(String::from_utf8(out).expect("utf8"), "A    BB\nccc  d\n");
    }
}
