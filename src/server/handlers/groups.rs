//! Group requests: each goes to the shard that coordinates its group (here, or over the
//! cross-shard channel); ListGroups asks every shard.

use std::rc::Rc;

use crate::group::coordinator::{GroupAnswer, GroupCall};
use crate::group::coordinator_shard;
use crate::protocol::{GroupListing, Request, Response, Status};
use crate::server::shard::{Shard, ShardMessage};

pub(crate) async fn handle(shard: &Rc<Shard>, request: Request) -> Response {
    if matches!(request, Request::ListGroups) {
        return match list(shard).await {
            Ok(groups) => Response::ListGroups(groups),
            Err(status) => Response::Failed(status),
        };
    }
    match call(shard, GroupCall::Native(request)).await {
        Ok(GroupAnswer::Native(response)) => response,
        Ok(_) => unreachable!("a native call gets a native answer"),
        Err(status) => Response::Failed(status),
    }
}

/// Sends a group call to its group's coordinator shard (or serves it here).
pub(crate) async fn call(shard: &Rc<Shard>, call: GroupCall) -> Result<GroupAnswer, Status> {
    let coordinator = coordinator_shard(call.group_id(), shard.count);
    if coordinator == shard.id {
        return Ok(shard.groups.call(call, &shard.stopping).await);
    }
    shard
        .ask(coordinator, |reply| ShardMessage::Group { call, reply })
        .await
}

/// Every shard's groups, sorted by id.
pub(crate) async fn list(shard: &Rc<Shard>) -> Result<Vec<GroupListing>, Status> {
    let mut groups = shard.groups.list();
    for peer in (0..shard.count).filter(|&peer| peer != shard.id) {
        groups.extend(
            shard
                .ask(peer, |reply| ShardMessage::ListGroups { reply })
                .await?,
        );
    }
    groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
    Ok(groups)
}
