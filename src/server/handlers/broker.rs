use std::rc::Rc;

use crate::protocol::{BrokerDescription, Response};
use crate::server::shard::{Shard, ShardMessage};

/// Every shard's description, asked of each in turn, and the process's open files.
pub(super) async fn describe(shard: &Rc<Shard>) -> Response {
    let mut shards = Vec::with_capacity(shard.count);
    for peer in 0..shard.count {
        if peer == shard.id {
            shards.push(shard.describe());
            continue;
        }
        match shard
            .ask(peer, |reply| ShardMessage::Describe { reply })
            .await
        {
            Ok(description) => shards.push(description),
            Err(status) => return Response::Failed(status),
        }
    }
    let open_files = crate::server::open_descriptors().unwrap_or(0);
    Response::DescribeBroker(BrokerDescription {
        broker_version: env!("CARGO_PKG_VERSION").to_string(),
        open_files,
        shards,
    })
}
