//! Group requests: each goes to the shard that coordinates its group (here, or over the
//! cross-shard channel); ListGroups asks every shard.
//!
//! In a cluster a group's coordinator is the leader of its `__consumer_offsets`
//! partition, on the shard that owns the partition there. A native request that reaches
//! another node is forwarded to that node (so Spate's clients need only one address); a
//! Kafka request gets NOT_COORDINATOR, and Kafka clients find the coordinator again, as
//! they do with Kafka.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::broker::metadata::shard_for;
use crate::cluster::NodeId;
use crate::group::coordinator::{GroupAnswer, GroupCall};
use crate::group::coordinator_shard;
use crate::group::offsets::{OFFSETS_TOPIC, offsets_partition};
use crate::limits::GROUP_REBALANCE_TIMEOUT_MAX_MS;
use crate::protocol::{ErrorCode, GroupListing, Request, Response, Status};
use crate::server::shard::{Shard, ShardMessage};

/// How long a group request waits for its group to have a coordinator (the offsets topic
/// being created, a leader being elected, the new leader loading the offsets) before it
/// is answered NotCoordinator.
const COORDINATOR_WAIT: Duration = Duration::from_secs(10);
/// The pause between two looks for a coordinator.
const COORDINATOR_RETRY: Duration = Duration::from_millis(100);
/// A forwarded request may be held by the coordinator (a join, for up to the rebalance
/// timeout); one that takes longer than this has lost its node.
const FORWARD_TIMEOUT: Duration =
    Duration::from_millis(GROUP_REBALANCE_TIMEOUT_MAX_MS as u64 + 30_000);

/// Where a group is coordinated, as this node sees the cluster now.
enum Coordinator {
    /// On this node, by this shard.
    Here(usize),
    /// On another node, reached at this address.
    There(NodeId, SocketAddr),
    /// Nowhere now: no leader of its offsets partition, or one this node cannot reach.
    Nowhere,
}

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
    if shard.view.borrow().clustered() {
        return cluster_call(shard, call).await;
    }
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

/// Where the coordinator of the groups in offsets partition `partition` is now.
async fn coordinator(shard: &Shard, partition: u32) -> Result<Coordinator, Status> {
    shard.ensure_offsets_topic().await?;
    let view = shard.view.borrow().clone();
    let Some(leader) = view
        .partition(OFFSETS_TOPIC, partition)
        .and_then(|state| state.leader)
    else {
        return Ok(Coordinator::Nowhere);
    };
    if view.node_id == Some(leader) {
        return Ok(if view.registered() {
            Coordinator::Here(shard_for(OFFSETS_TOPIC, partition, shard.count))
        } else {
            Coordinator::Nowhere
        });
    }
    Ok(match shard.node_address(leader) {
        Some(address) => Coordinator::There(leader, address),
        None => Coordinator::Nowhere,
    })
}

/// The Kafka broker (a shard of some node, by its metadata id) that coordinates
/// `group_id`; `None` while there is none.
pub(crate) async fn kafka_coordinator(
    shard: &Shard,
    group_id: &str,
) -> Result<Option<u64>, Status> {
    let partition = offsets_partition(group_id);
    let coordinator = coordinator(shard, partition).await?;
    let view = shard.view.borrow().clone();
    Ok(match coordinator {
        Coordinator::Here(_) | Coordinator::There(..) => view
            .partition(OFFSETS_TOPIC, partition)
            .and_then(|state| state.leader)
            .and_then(|leader| view.replica_shard(leader, OFFSETS_TOPIC, partition)),
        Coordinator::Nowhere => None,
    })
}

/// Whether an answer says the shard asked does not (yet, or any more) coordinate the
/// group: then the call goes to the coordinator again.
fn not_coordinator(answer: &GroupAnswer) -> bool {
    let status = match answer {
        GroupAnswer::Native(Response::Failed(status))
        | GroupAnswer::Joined(Err(status))
        | GroupAnswer::Synced(Err(status))
        | GroupAnswer::Described(Err(status)) => status,
        _ => return false,
    };
    status.code == ErrorCode::NotCoordinator
}

/// A group call in a cluster: served by this node's coordinator shard, forwarded to the
/// coordinator's node (native requests), or refused NotCoordinator (Kafka requests for
/// another node). Waits up to `COORDINATOR_WAIT` for a coordinator to exist.
async fn cluster_call(shard: &Rc<Shard>, call: GroupCall) -> Result<GroupAnswer, Status> {
    let partition = offsets_partition(call.group_id());
    let deadline = Instant::now() + COORDINATOR_WAIT;
    loop {
        let last_try = Instant::now() >= deadline || shard.stopping.is_set();
        let refused = match coordinator(shard, partition).await {
            Err(status) => status,
            Ok(Coordinator::Here(owner)) => {
                let answer = if owner == shard.id {
                    shard.groups.call(call.clone(), &shard.stopping).await
                } else {
                    let call = call.clone();
                    shard
                        .ask(owner, |reply| ShardMessage::Group { call, reply })
                        .await?
                };
                if !not_coordinator(&answer) || last_try {
                    return Ok(answer);
                }
                Status::error(ErrorCode::NotCoordinator, "loading")
            }
            Ok(Coordinator::There(node, address)) => {
                let GroupCall::Native(request) = &call else {
                    return Err(Status::error(
                        ErrorCode::NotCoordinator,
                        format!(
                            "group {} is coordinated by node {node}: find its coordinator again",
                            crate::protocol::quoted(call.group_id())
                        ),
                    ));
                };
                match forward(shard, node, address, request).await {
                    Ok(response) => {
                        let answer = GroupAnswer::Native(response);
                        if !not_coordinator(&answer) || last_try {
                            return Ok(answer);
                        }
                        Status::error(ErrorCode::NotCoordinator, "moving")
                    }
                    Err(error) => Status::error(
                        ErrorCode::NotCoordinator,
                        format!(
                            "the coordinator, node {node} at {address}, cannot be reached: {error}"
                        ),
                    ),
                }
            }
            Ok(Coordinator::Nowhere) => Status::error(
                ErrorCode::NotCoordinator,
                format!(
                    "{OFFSETS_TOPIC}-{partition}, where group {} is kept, has no leader now",
                    crate::protocol::quoted(call.group_id())
                ),
            ),
        };
        if last_try || !refused.code.is_retriable() {
            return Err(refused);
        }
        futures_lite::future::or(glommio::timer::sleep(COORDINATOR_RETRY), async {
            shard.stopping.wait().await;
        })
        .await;
    }
}

/// Sends a native group request to the node that coordinates its group, over a
/// connection of this shard's pool to it.
async fn forward(
    shard: &Shard,
    node: NodeId,
    address: SocketAddr,
    request: &Request,
) -> std::io::Result<Response> {
    let pooled = shard
        .group_links
        .borrow_mut()
        .get_mut(&node)
        .and_then(Vec::pop);
    let mut stream = match pooled {
        Some((to, stream)) if to == address => stream,
        _ => {
            let stream = glommio::net::TcpStream::connect(address).await?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(FORWARD_TIMEOUT))?;
            stream
        }
    };
    let correlation_id = shard.next_forward_id();
    let answer = super::super::peer::exchange(&mut stream, request, correlation_id).await?;
    shard
        .group_links
        .borrow_mut()
        .entry(node)
        .or_default()
        .push((address, stream));
    Ok(answer)
}
