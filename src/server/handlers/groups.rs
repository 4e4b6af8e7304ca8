//! Group requests: each goes to the shard that coordinates its group (here, or over the
//! cross-shard channel); ListGroups asks every shard.

use std::rc::Rc;

use crate::group::coordinator_shard;
use crate::protocol::{Request, Response};
use crate::server::shard::{Shard, ShardMessage};

pub(crate) async fn handle(shard: &Rc<Shard>, request: Request) -> Response {
    if matches!(request, Request::ListGroups) {
        return list(shard).await;
    }
    let group_id = request
        .group_id()
        .expect("only group requests are routed here");
    let coordinator = coordinator_shard(group_id, shard.count);
    if coordinator == shard.id {
        return shard.groups.handle(request, &shard.stopping).await;
    }
    shard
        .ask(coordinator, |reply| ShardMessage::Group { request, reply })
        .await
        .unwrap_or_else(Response::Failed)
}

async fn list(shard: &Rc<Shard>) -> Response {
    let mut groups = shard.groups.list();
    for peer in (0..shard.count).filter(|&peer| peer != shard.id) {
        match shard
            .ask(peer, |reply| ShardMessage::ListGroups { reply })
            .await
        {
            Ok(listed) => groups.extend(listed),
            Err(status) => return Response::Failed(status),
        }
    }
    groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
    Response::ListGroups(groups)
}
