//! One handler per request kind (`<kind>.rs`); `handle` decodes a request and picks one.

mod api_versions;
mod fetch;
mod list_offsets;
mod metadata;
mod produce;
mod topics;

use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use glommio::sync::StaticPermit;

use super::shard::{FetchPayload, Shard};
use crate::protocol::{Acks, ApiKey, ErrorCode, Piece, Request, RequestHeader, Response, Status};
use crate::wake::Latch;

/// A response ready to be written: one encoded frame, or a fetch answer in pieces whose
/// record payloads are written as they are.
pub(crate) enum Outgoing {
    Frame(BytesMut),
    Pieces(Vec<Piece<FetchPayload>>),
    /// Close the connection after the answers before this one (how a failed acks=0
    /// produce is reported, as in Kafka: the client sees the connection drop).
    Close,
}

/// Decodes a request, or gives the failure answer for one that cannot be served: an
/// unknown kind, an unsupported version, a malformed body.
pub(crate) fn decode(header: &RequestHeader, body: Bytes) -> Result<Request, Outgoing> {
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
    Request::decode(header, body).map_err(|error| {
        tracing::warn!(%error, api_key = ?api_key, "malformed request");
        failed(ErrorCode::InvalidRequest, error.to_string())
    })
}

/// The bytes a request may hold in memory until its answer is written: its frame, plus
/// for a fetch the records it may return. A fetch asking for more than `budget` leaves
/// room for is lowered to fit (a first batch larger than that still comes whole, as
/// Kafka's fetch rules require).
pub(crate) fn weigh(request: &mut Request, frame_bytes: usize, budget: usize) -> usize {
    let answer_bytes = match request {
        Request::Fetch(fetch) => {
            let room = budget.saturating_sub(frame_bytes).max(1);
            fetch.max_bytes = fetch
                .max_bytes
                .min(fetch::FETCH_RESPONSE_BYTES_MAX)
                .min(room as u32);
            fetch.max_bytes as usize
        }
        _ => 0,
    };
    (frame_bytes + answer_bytes).min(budget)
}

/// Answers one request; `None` when no answer is due (a produce with acks=0). `closed` is
/// set when the connection is ending: a long poll then answers with what it has. `held`
/// is the request's share of the connection's byte budget; work that outlives the answer
/// keeps a clone of it.
pub(crate) async fn handle(
    shard: Rc<Shard>,
    request: Request,
    correlation_id: u32,
    closed: &Latch,
    held: &Rc<StaticPermit>,
) -> Option<Outgoing> {
    if shard.stopping.is_set() {
        // No answer for acks=0: the connection is closing anyway, after the answers of
        // the requests started before it.
        if let Request::Produce(request) = &request
            && request.acks == Acks::None
        {
            return None;
        }
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
        Request::DescribeTopics(request) => topics::describe(&shard, request),
        Request::Produce(request) => {
            return produce::handle(&shard, request, correlation_id, held).await;
        }
        Request::Fetch(request) => {
            return Some(
                match fetch::handle(&shard, request, correlation_id, closed).await {
                    Ok(outgoing) => outgoing,
                    Err(status) => Outgoing::Frame(Response::Failed(status).encode(correlation_id)),
                },
            );
        }
        Request::ListOffsets(request) => list_offsets::handle(&shard, request).await,
    };
    Some(Outgoing::Frame(response.encode(correlation_id)))
}
