//! One handler per request kind (`<kind>.rs`); `handle` decodes a request and picks one.

mod api_versions;
mod fetch;
mod list_offsets;
mod metadata;
mod produce;
mod topics;

use std::rc::Rc;

use bytes::{Bytes, BytesMut};

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

/// Answers one request; `None` when no answer is due (a produce with acks=0). `closed` is
/// set when the connection is ending: a long poll then answers with what it has.
pub(crate) async fn handle(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Bytes,
    closed: &Latch,
) -> Option<Outgoing> {
    let correlation_id = header.correlation_id;
    let failed = |code, message: String| {
        Some(Outgoing::Frame(
            Response::Failed(Status::error(code, message)).encode(correlation_id),
        ))
    };
    let Ok(api_key) = ApiKey::from_u16(header.api_key) else {
        return failed(
            ErrorCode::UnknownRequestKind,
            format!("unknown request kind {}", header.api_key),
        );
    };
    let (min_version, max_version) = api_key.versions();
    let version_ok = (min_version..=max_version).contains(&header.api_version);
    if !version_ok && api_key != ApiKey::ApiVersions {
        return failed(
            ErrorCode::UnsupportedVersion,
            format!(
                "{api_key:?} version {} is not supported (this broker speaks {min_version} to {max_version})",
                header.api_version
            ),
        );
    }
    let request = match Request::decode(&header, body) {
        Ok(request) => request,
        Err(error) => {
            tracing::warn!(%error, api_key = ?api_key, "malformed request");
            return failed(ErrorCode::InvalidRequest, error.to_string());
        }
    };
    if shard.stopping.is_set() {
        if let Request::Produce(request) = &request
            && request.acks == Acks::None
        {
            return Some(Outgoing::Close);
        }
        return failed(
            ErrorCode::ShuttingDown,
            "the broker is shutting down".to_string(),
        );
    }
    let response = match request {
        Request::ApiVersions(_) => api_versions::handle(&shard),
        Request::Metadata(request) => metadata::handle(&shard, request),
        Request::CreateTopics(request) => topics::create(&shard, request).await,
        Request::DeleteTopics(request) => topics::delete(&shard, request).await,
        Request::DescribeTopics(request) => topics::describe(&shard, request),
        Request::Produce(request) => return produce::handle(&shard, request, correlation_id).await,
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
