//! One client connection: read frames in order, dispatch, write responses in order.
//!
//! A request's synchronous part (e.g. appending to the log) runs in arrival order, as Kafka
//! requires for pipelined produces; only the wait for durability runs concurrently, so acks=all
//! requests from one connection share fsyncs. Responses are written in request order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use super::handlers::{self, Reply};
use super::sendfile;
use crate::metrics::ApiLabels;
use crate::protocol::fetch_frame::Piece;
use crate::protocol::frame::{self, MIN_REQUEST_BYTES};
use crate::Broker;

/// Responses queued per connection before the reader stops reading: bounds memory per client.
pub const MAX_IN_FLIGHT_PER_CONNECTION: usize = 64;
/// Read buffer per connection.
const READ_BUFFER_BYTES: usize = 16 * 1024;
/// A client that starts a frame must finish it within this time, or it is dropped; this keeps
/// a stalled sender from pinning its share of the request-bytes budget.
const FRAME_BODY_TIMEOUT: Duration = Duration::from_secs(30);

struct Pending {
    reply: Reply,
    api: &'static str,
    started: Instant,
    _bytes: OwnedSemaphorePermit,
}

pub(super) async fn run(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
    request_bytes: Arc<Semaphore>,
) {
    broker.metrics.connections.inc();
    let span = tracing::info_span!("connection", %peer);
    async {
        let (reader, writer) = stream.into_split();
        // Small requests (a size prefix and a few KB) arrive in one read instead of two or
        // more; frames larger than the buffer are read straight into their own memory.
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, reader);
        let (queue, pending) = mpsc::channel::<Pending>(MAX_IN_FLIGHT_PER_CONNECTION);
        let writer_task = tokio::spawn(write_responses(Arc::clone(&broker), writer, pending).in_current_span());
        loop {
            let mut size_prefix = [0u8; 4];
            tokio::select! {
                _ = stop.changed() => break,
                read = reader.read_exact(&mut size_prefix) => {
                    if read.is_err() {
                        break; // peer closed or reset
                    }
                }
            }
            let size = i32::from_be_bytes(size_prefix);
            let max = broker.config.socket_request_max_bytes;
            if size < MIN_REQUEST_BYTES as i32 || size as usize > max {
                tracing::warn!(size, max, "invalid request size; closing connection");
                break;
            }
            let size = size as usize;
            let Ok(permit) = Arc::clone(&request_bytes).acquire_many_owned(size as u32).await else { break };
            // Read into uninitialized capacity: zeroing every request first showed in profiles.
            let mut body = BytesMut::with_capacity(size);
            match tokio::time::timeout(FRAME_BODY_TIMEOUT, read_frame_body(&mut reader, &mut body, size)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => {
                    tracing::warn!(size, "request body not received in time; closing connection");
                    break;
                }
            }
            broker.metrics.bytes_in.inc_by(size as u64 + 4);
            let started = Instant::now();
            let request = match frame::decode_request(body.freeze()) {
                Ok(request) => request,
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable request; closing connection");
                    break;
                }
            };
            let api = api_name(request.api_key);
            let reply = match handlers::dispatch(&broker, request).await {
                Ok(reply) => reply,
                Err(e) => {
                    broker.metrics.request_errors.get_or_create(&ApiLabels { api }).inc();
                    tracing::warn!(error = %e, "bad request; closing connection");
                    break;
                }
            };
            if queue.send(Pending { reply, api, started, _bytes: permit }).await.is_err() {
                break; // writer failed: the peer is gone
            }
        }
        drop(queue);
        let _ = writer_task.await;
    }
    .instrument(span)
    .await;
    broker.metrics.connections.dec();
}

async fn read_frame_body(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    body: &mut BytesMut,
    size: usize,
) -> std::io::Result<()> {
    while body.len() < size {
        let mut limited = (&mut *reader).take((size - body.len()) as u64);
        if limited.read_buf(body).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

async fn write_responses(broker: Arc<Broker>, writer: OwnedWriteHalf, mut pending: mpsc::Receiver<Pending>) {
    let mut writer = BufWriter::new(writer);
    while let Some(item) = pending.recv().await {
        let response: Vec<Piece> = match item.reply {
            Reply::Ready(bytes) => vec![Piece::Bytes(bytes)],
            Reply::Pieces(pieces) => pieces,
            Reply::Later(future) => vec![Piece::Bytes(future.await)],
            Reply::None => Vec::new(),
        };
        let labels = ApiLabels { api: item.api };
        broker.metrics.requests.get_or_create(&labels).inc();
        broker.metrics.request_seconds.get_or_create(&labels).observe(item.started.elapsed().as_secs_f64());
        let mut pieces = response.into_iter().peekable();
        while pieces.peek().is_some() {
            // Consecutive in-memory pieces go out in one vectored write; a file piece follows
            // whatever is buffered ahead of it, straight from the page cache.
            let mut run = Vec::new();
            while let Some(Piece::Bytes(_)) = pieces.peek() {
                if let Some(Piece::Bytes(bytes)) = pieces.next() {
                    run.push(bytes);
                }
            }
            let file = pieces.next();
            let run_bytes: usize = run.iter().map(bytes::Bytes::len).sum();
            broker.metrics.bytes_out.inc_by((run_bytes + file.as_ref().map_or(0, Piece::len)) as u64);
            let mut sent = write_all_vectored(&mut writer, &mut run).await;
            if let (Ok(()), Some(Piece::File(slice))) = (&sent, file) {
                sent = match writer.flush().await {
                    Ok(()) => {
                        sendfile::send_file(writer.get_ref().as_ref(), slice.file(), slice.position(), slice.len())
                            .await
                    }
                    Err(e) => Err(e),
                };
            }
            if let Err(e) = sent {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    // The frame is short now; closing is the only way the client can tell.
                    tracing::warn!(error = %e, "segment shrank under a fetch response; closing connection");
                }
                return;
            }
        }
        // Flush when nothing else is ready, so pipelined responses share a syscall.
        if pending.is_empty() && writer.flush().await.is_err() {
            return;
        }
    }
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}

/// Writes every buffer, as few system calls as the socket allows (small ones are buffered).
async fn write_all_vectored(
    writer: &mut BufWriter<OwnedWriteHalf>,
    buffers: &mut [bytes::Bytes],
) -> std::io::Result<()> {
    use bytes::Buf;
    let mut first = 0;
    while first < buffers.len() {
        if buffers[first].is_empty() {
            first += 1;
            continue;
        }
        let slices: Vec<std::io::IoSlice<'_>> = buffers[first..].iter().map(|b| std::io::IoSlice::new(b)).collect();
        let mut written = writer.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let take = written.min(buffers[first].len());
            buffers[first].advance(take);
            written -= take;
            if buffers[first].is_empty() {
                first += 1;
            }
        }
    }
    Ok(())
}

fn api_name(api: kafka_protocol::messages::ApiKey) -> &'static str {
    use kafka_protocol::messages::ApiKey;
    match api {
        ApiKey::Produce => "produce",
        ApiKey::Fetch => "fetch",
        ApiKey::ListOffsets => "list_offsets",
        ApiKey::Metadata => "metadata",
        ApiKey::ApiVersions => "api_versions",
        ApiKey::CreateTopics => "create_topics",
        ApiKey::DeleteTopics => "delete_topics",
        ApiKey::DescribeConfigs => "describe_configs",
        ApiKey::AlterConfigs => "alter_configs",
        ApiKey::CreatePartitions => "create_partitions",
        ApiKey::IncrementalAlterConfigs => "incremental_alter_configs",
        ApiKey::DescribeCluster => "describe_cluster",
        ApiKey::FindCoordinator => "find_coordinator",
        ApiKey::JoinGroup => "join_group",
        ApiKey::SyncGroup => "sync_group",
        ApiKey::Heartbeat => "heartbeat",
        ApiKey::LeaveGroup => "leave_group",
        ApiKey::OffsetCommit => "offset_commit",
        ApiKey::OffsetFetch => "offset_fetch",
        ApiKey::ListGroups => "list_groups",
        ApiKey::DescribeGroups => "describe_groups",
        ApiKey::DeleteGroups => "delete_groups",
        ApiKey::OffsetDelete => "offset_delete",
        ApiKey::InitProducerId => "init_producer_id",
        _ => "other",
    }
}
