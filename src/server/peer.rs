//! Requests from one node of a cluster to another over the native protocol: a follower's
//! replica fetches (`replication`) and group requests forwarded to their coordinator
//! (`handlers::groups`).

use std::net::SocketAddr;

use bytes::Bytes;
use futures_lite::{AsyncReadExt, AsyncWriteExt};

use super::shard::Shard;
use crate::cluster::NodeId;
use crate::protocol::{Request, Response};

/// Largest answer accepted from another node (a replica fetch's partitions times their
/// byte limit, and more).
const RESPONSE_FRAME_BYTES_MAX: usize = 64 << 20;

/// One request and its answer over a connection to another node.
pub(super) async fn exchange(
    stream: &mut glommio::net::TcpStream,
    request: &Request,
    correlation_id: u32,
) -> std::io::Result<Response> {
    stream.write_all(&request.encode(correlation_id)).await?;
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).await?;
    let length = u32::from_be_bytes(length) as usize;
    if !(crate::protocol::RESPONSE_HEADER_BYTES..=RESPONSE_FRAME_BYTES_MAX).contains(&length) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("an answer of {length} bytes from another node"),
        ));
    }
    let mut frame = vec![0u8; length];
    stream.read_exact(&mut frame).await?;
    let frame = Bytes::from(frame);
    if frame[..4] != correlation_id.to_be_bytes() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "an answer to another request",
        ));
    }
    Response::decode(request.api_key(), frame.slice(4..))
        .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))
}

impl Shard {
    /// The address this node's `--cluster` gives `node` when it differs from the address
    /// `node` registered (`bootstrap`): another interface, or a fault proxy in tests. A
    /// request sent there reaches the node's shared listener, which hands it on.
    pub(super) fn route_to(&self, node: NodeId, bootstrap: SocketAddr) -> Option<SocketAddr> {
        self.config
            .cluster
            .as_ref()
            .and_then(|cluster| cluster.voters.get(&node).copied())
            .filter(|route| *route != bootstrap)
    }

    /// Where to send a request for `node`'s shared listener, as this node knows it.
    pub(super) fn node_address(&self, node: NodeId) -> Option<SocketAddr> {
        let view = self.view.borrow();
        let bootstrap: SocketAddr = view.state.brokers.get(&node)?.info.address.parse().ok()?;
        Some(self.route_to(node, bootstrap).unwrap_or(bootstrap))
    }
}
