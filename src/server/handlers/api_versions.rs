use crate::broker::view::ClusterView;
use crate::protocol::{ApiKey, ApiVersionRange, ApiVersionsResponse, Response};
use crate::server::shard::Shard;

pub(super) fn handle(shard: &Shard) -> Response {
    let apis = ApiKey::ALL
        .iter()
        .map(|&api_key| {
            let (min_version, max_version) = api_key.versions();
            ApiVersionRange {
                api_key: api_key as u16,
                min_version,
                max_version,
            }
        })
        .collect();
    Response::ApiVersions(ApiVersionsResponse {
        broker_version: env!("CARGO_PKG_VERSION").to_string(),
        apis,
        shard_count: shard.count as u16,
        // In a cluster, the shard's id in metadata (its node's shards come after the
        // shards of the nodes numbered below it).
        shard_id: match &shard.cluster {
            Some(handle) => ClusterView::global_shard_id(handle.id, shard.id) as u16,
            None => shard.id as u16,
        },
    })
}
