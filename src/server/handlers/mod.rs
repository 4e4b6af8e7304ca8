//! One handler per request kind (`<kind>.rs`); `handle` decodes a request and picks one.

mod api_versions;
mod broker;
mod cluster;
pub(crate) mod fetch;
pub(crate) mod groups;
mod list_offsets;
pub(crate) mod metadata;
pub(crate) mod produce;
pub(crate) mod topics;

use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use glommio::sync::{Semaphore, StaticPermit};

use super::shard::{FetchPayload, Shard};
use crate::limits::REQUEST_ENTRY_WEIGHT_BYTES;
use crate::protocol::{Acks, ApiKey, ErrorCode, Piece, Request, RequestHeader, Response, Status};
use crate::wake::Latch;

/// A response ready to be written: one encoded frame, or a fetch answer in pieces whose
/// record payloads are written as they are (with the room it took in the connection's
/// byte budget, given back once written).
pub(crate) enum Outgoing {
    Frame(BytesMut),
    Pieces(Vec<Piece<FetchPayload>>, Option<fetch::Room>),
    /// Close the connection after the answers before this one (how a failed acks=0
    /// produce is reported, as in Kafka: the client sees the connection drop).
    Close,
}

/// Decodes a request (with how many entries it carries), or gives the failure answer for
/// one that cannot be served: an unknown kind, an unsupported version, a malformed body,
/// too many entries.
pub(crate) fn decode(header: &RequestHeader, body: Bytes) -> Result<(Request, usize), Outgoing> {
    let failed = |code, message: String| {
        Outgoing::Frame(
            Response::Failed(Status::error(code, message)).encode(header.correlation_id),
        )
    };
    let Ok(api_key) = ApiKey::from_u16(header.api_key) else {
        return Err(failed(
            ErrorCode::UnknownRequestKind,
            format!("unknown request kind {}", header.api_key),
        ));
    };
    let (min_version, max_version) = api_key.versions();
    let version_ok = (min_version..=max_version).contains(&header.api_version);
    if !version_ok && api_key != ApiKey::ApiVersions {
        return Err(failed(
            ErrorCode::UnsupportedVersion,
            format!(
                "{api_key:?} version {} is not supported (this broker speaks {min_version} to {max_version})",
                header.api_version
            ),
        ));
    }
    Request::decode_counting(header, body).map_err(|error| {
        tracing::warn!(%error, api_key = ?api_key, "malformed request");
        failed(ErrorCode::InvalidRequest, error.to_string())
    })
}

/// The bytes a request holds in memory from the moment it is read: its frame, and for
/// each of its `entries` what is built to serve and answer it
/// (`REQUEST_ENTRY_WEIGHT_BYTES`). A fetch takes room for its answer later, only while it
/// reads (see `fetch::handle`), so a long poll waiting for data holds no more than that;
/// its `max_bytes` is lowered to what the budget can ever give it (a first batch larger
/// than that still comes whole, as Kafka's fetch rules require). A request weighing more
/// than the whole budget is counted at the budget: it runs alone.
pub(crate) fn weigh(
    request: &mut Request,
    frame_bytes: usize,
    entries: usize,
    budget: usize,
) -> usize {
    let weight = match request {
        Request::Produce(_) => produce_weight(frame_bytes, entries),
        _ => request_weight(frame_bytes, entries),
    };
    if let Request::Fetch(fetch) = request {
        fetch.max_bytes = fetch_max_bytes(fetch.max_bytes, weight, budget);
    }
    weight.min(budget)
}

/// A request's weight before the budget caps it: its frame and its entries (both doors).
pub(crate) fn request_weight(frame_bytes: usize, entries: usize) -> usize {
    frame_bytes.saturating_add(entries.saturating_mul(REQUEST_ENTRY_WEIGHT_BYTES))
}

/// A produce's weight: its frame counts twice, for the aligned copy of its batches that the
/// log writes with direct I/O (`storage::appender`), made while the request is in flight.
pub(crate) fn produce_weight(frame_bytes: usize, entries: usize) -> usize {
    request_weight(frame_bytes.saturating_mul(2), entries)
}

/// A fetch's `max_bytes` lowered to what the budget can ever give it next to its own
/// weight (both doors).
pub(crate) fn fetch_max_bytes(max_bytes: u32, weight: usize, budget: usize) -> u32 {
    let room = budget.saturating_sub(weight).max(1);
    max_bytes
        .min(fetch::FETCH_RESPONSE_BYTES_MAX)
        .min(u32::try_from(room).unwrap_or(u32::MAX))
}

/// What a handler knows about the request it answers besides the request itself.
/// A request's shares of the byte budgets that bound requests in flight: its connection's
/// (`--buffered-bytes-max-per-connection`) and its shard's (the part of `--memory-max` the
/// tail caches do not take). Held for their `Drop`, which gives them back.
pub(crate) struct Held {
    pub _connection: StaticPermit,
    pub _shard: StaticPermit,
}

pub(crate) struct Exchange {
    pub correlation_id: u32,
    /// The request's frame size, and whether it was read into a buffer of its own (which
    /// a produce's batches may then keep, instead of a copy; see `produce::handle`).
    pub frame_bytes: usize,
    pub own_frame: bool,
    /// Set when the connection is ending: a long poll then answers with what it has.
    pub closed: Rc<Latch>,
    /// The request's shares of its connection's and its shard's byte budgets (its
    /// frame). Work that outlives the answer (an append after a produce timeout) keeps a
    /// clone of them.
    pub held: Rc<Held>,
    /// The connection's byte budget, from which a fetch takes room for its answer.
    pub budget: Rc<Semaphore>,
}

/// Answers one request; `None` when no answer is due (a produce with acks=0).
pub(crate) async fn handle(
    shard: Rc<Shard>,
    request: Request,
    exchange: &Exchange,
) -> Option<Outgoing> {
    let correlation_id = exchange.correlation_id;
    if shard.stopping.is_set() {
        // No answer for acks=0: the connection is closing anyway, after the answers of
        // the requests started before it.
        if let Request::Produce(request) = &request
            && request.acks == Acks::None
        {
            return None;
        }
        shard.metrics.error(ErrorCode::ShuttingDown);
        return Some(Outgoing::Frame(
            Response::Failed(Status::error(
                ErrorCode::ShuttingDown,
                "the broker is shutting down",
            ))
            .encode(correlation_id),
        ));
    }
    let response = match request {
        Request::ApiVersions(_) => api_versions::handle(&shard),
        Request::Metadata(request) => metadata::handle(&shard, request),
        Request::CreateTopics(request) => topics::create(&shard, request).await,
        Request::DeleteTopics(request) => topics::delete(&shard, request).await,
        Request::CreatePartitions(request) => topics::create_partitions(&shard, request).await,
        Request::DescribeTopics(request) => topics::describe(&shard, request),
        Request::Produce(request) => {
            return produce::handle(&shard, request, exchange).await;
        }
        Request::Fetch(request) => {
            return Some(match fetch::handle(&shard, request, exchange).await {
                Ok(outgoing) => outgoing,
                Err(status) => {
                    shard.metrics.error(status.code);
                    Outgoing::Frame(Response::Failed(status).encode(correlation_id))
                }
            });
        }
        Request::ListOffsets(request) => list_offsets::handle(&shard, request).await,
        Request::DescribeBroker => broker::describe(&shard).await,
        Request::ClusterRpc(message) => cluster::rpc(&shard, message).await,
        Request::DescribeCluster(request) => cluster::describe(&shard, request),
        Request::ReplicaFetch(request) => {
            crate::server::replication::replica_fetch(&shard, request).await
        }
        request => groups::handle(&shard, request).await,
    };
    count_errors(&shard, &response);
    Some(Outgoing::Frame(response.encode(correlation_id)))
}

/// Counts an answer's errors in `spate_errors_total`: a request failed as a whole, or each
/// failed entry of one that answers per topic or partition (produce and fetch count theirs
/// where they are answered, for both doors).
fn count_errors(shard: &Shard, response: &Response) {
    let count = |status: &Status| shard.metrics.error(status.code);
    match response {
        Response::Failed(status) => count(status),
        Response::CreateTopics(topics)
        | Response::DeleteTopics(topics)
        | Response::CreatePartitions(topics) => {
            topics.iter().for_each(|topic| count(&topic.status));
        }
        Response::DescribeTopics(topics) => topics.iter().for_each(|topic| count(&topic.status)),
        Response::ListOffsets(answer) => answer
            .topics
            .iter()
            .flat_map(|topic| &topic.partitions)
            .for_each(|partition| count(&partition.status)),
        Response::OffsetCommit(topics) => topics
            .iter()
            .flat_map(|topic| &topic.partitions)
            .for_each(|partition| count(&partition.status)),
        Response::OffsetFetch(topics) => topics
            .iter()
            .flat_map(|topic| &topic.partitions)
            .for_each(|partition| count(&partition.status)),
        _ => {}
    }
}
