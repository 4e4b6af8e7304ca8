//! The metadata Raft group (issue 14, in progress): three nodes on loopback elect a
//! leader, replicate metadata commands, elect another when the leader stops, and a node
//! that comes back catches up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use spate::cluster::node::{ClusterNode, NodeConfig};
use spate::cluster::state::BrokerInfo;
use spate::cluster::{Command, CommandReply};

use crate::support::wait_for;

/// A topic of 3 partitions, each on one broker (the nodes register as brokers first).
fn create(name: &str) -> Command {
    Command::CreateTopic {
        name: name.into(),
        partitions: 3,
        replication_factor: 1,
        configs: Vec::new(),
    }
}

/// Waits until `node` has every broker of `ids` registered and unfenced.
fn registered(node: &ClusterNode, ids: &[u64]) -> bool {
    let state = node.state();
    ids.iter()
        .all(|id| state.brokers.get(id).is_some_and(|broker| !broker.fenced))
}

/// The topics `node` has applied, by name.
fn topics(node: &ClusterNode) -> Vec<String> {
    node.state().topics.into_keys().collect()
}

/// Three nodes' configs on loopback, each with its own directory under `dir`: node `from`
/// reaches node `to` at `route(from, to, where to listens)`. The listen ports are held
/// while `route` runs (so that nothing it sets up, a fault proxy say, takes one) and freed
/// on return, for the nodes to bind.
fn three_configs(
    dir: &std::path::Path,
    mut route: impl FnMut(u64, u64, SocketAddr) -> SocketAddr,
) -> BTreeMap<u64, NodeConfig> {
    let held: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let listen: BTreeMap<u64, SocketAddr> = (1..=3)
        .zip(held.iter().map(|listener| listener.local_addr().unwrap()))
        .collect();
    (1..=3)
        .map(|id| {
            let voters = (1..=3)
                .map(|to| {
                    let address = if to == id {
                        listen[&id]
                    } else {
                        route(id, to, listen[&to])
                    };
                    (to, address)
                })
                .collect();
            let config = NodeConfig {
                id,
                dir: dir.join(format!("node{id}")),
                voters,
                listen: Some(listen[&id]),
                broker: BrokerInfo {
                    address: listen[&id].to_string(),
                    ..BrokerInfo::default()
                },
            };
            (id, config)
        })
        .collect()
}

/// Starts the nodes and waits until they agree on a leader, the controller, that has
/// registered every broker; returns them and the leader.
fn form(configs: &BTreeMap<u64, NodeConfig>) -> (BTreeMap<u64, ClusterNode>, u64) {
    let nodes: BTreeMap<u64, ClusterNode> = configs
        .iter()
        .map(|(id, config)| (*id, ClusterNode::start(config.clone()).unwrap()))
        .collect();
    let leader = wait_for(Duration::from_secs(20), || agreed_leader(&nodes))
        .expect("the three nodes agree on a leader");
    // The controller registers every broker it hears from.
    assert!(
        wait_for(Duration::from_secs(10), || registered(
            &nodes[&leader],
            &[1, 2, 3]
        )
        .then_some(()))
        .is_some(),
        "the controller registers the three brokers"
    );
    (nodes, leader)
}

/// The leader every running node agrees on.
fn agreed_leader(nodes: &BTreeMap<u64, ClusterNode>) -> Option<u64> {
    let leaders: Vec<Option<u64>> = nodes.values().map(|node| node.leader()).collect();
    let first = leaders[0]?;
    (leaders.iter().all(|leader| *leader == Some(first)) && nodes.contains_key(&first))
        .then_some(first)
}

#[test]
fn three_nodes_elect_replicate_fail_over_and_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let configs = three_configs(dir.path(), |_, _, address| address);
    let (mut nodes, leader) = form(&configs);
    assert_eq!(
        nodes[&leader].write_blocking(create("orders")),
        Ok(CommandReply::Done)
    );
    // A follower forwards a write to the leader.
    let follower = *nodes.keys().find(|id| **id != leader).unwrap();
    assert_eq!(
        nodes[&follower].write_blocking(create("elsewhere")),
        Ok(CommandReply::Done)
    );
    assert!(
        wait_for(Duration::from_secs(10), || nodes
            .values()
            .all(|node| topics(node) == ["elsewhere", "orders"])
            .then_some(()))
        .is_some(),
        "every node applies the committed topic"
    );

    // The leader stops: the other two elect one of themselves and go on.
    let term = nodes[&leader].term();
    let stopped_at = Instant::now();
    drop(nodes.remove(&leader));
    let successor = wait_for(Duration::from_secs(20), || {
        agreed_leader(&nodes).filter(|_| nodes.values().all(|node| node.term() > term))
    })
    .expect("the two survivors elect a new leader");
    eprintln!(
        "failover: node {successor} leads {} ms after node {leader} stopped",
        stopped_at.elapsed().as_millis()
    );
    assert_eq!(
        nodes[&successor].write_blocking(create("clicks")),
        Ok(CommandReply::Done)
    );

    // The old leader comes back from its files and catches up.
    nodes.insert(
        leader,
        ClusterNode::start(configs[&leader].clone()).unwrap(),
    );
    assert!(
        wait_for(Duration::from_secs(20), || nodes
            .values()
            .all(|node| topics(node) == ["clicks", "elsewhere", "orders"])
            .then_some(()))
        .is_some(),
        "all three hold both topics"
    );
}

/// Each node reaches each other through a fault proxy of its own (six links): the
/// leader's links are blackholed both ways. The other two elect a leader and commit; the
/// cut-off leader commits nothing (a write to it never completes while it is alone);
/// once healed it follows the new leader and holds what the majority committed; its
/// stranded write, never committed by it, is then refused or retried through the new
/// leader, and every node agrees on the outcome.
#[test]
fn a_partitioned_leader_commits_nothing_and_rejoins_as_a_follower() {
    use crate::fault_proxy::{Fault, FaultProxy};
    let dir = tempfile::tempdir().unwrap();
    // links[(from, to)]: what `from` connects to in order to reach `to`.
    let mut links: BTreeMap<(u64, u64), FaultProxy> = BTreeMap::new();
    let configs = three_configs(dir.path(), |from, to, address| {
        let link = FaultProxy::start(address);
        let proxied = link.address;
        links.insert((from, to), link);
        proxied
    });
    let (mut nodes, leader) = form(&configs);
    assert_eq!(
        nodes[&leader].write_blocking(create("before")),
        Ok(CommandReply::Done)
    );

    for ((from, to), link) in &links {
        if *from == leader || *to == leader {
            link.set(Fault::Blackhole);
        }
    }
    let cut_off = nodes.remove(&leader).unwrap();
    let term = cut_off.term();
    let successor = wait_for(Duration::from_secs(20), || {
        agreed_leader(&nodes).filter(|_| nodes.values().all(|node| node.term() > term))
    })
    .expect("the majority elects a new leader");
    assert_eq!(
        nodes[&successor].write_blocking(create("majority")),
        Ok(CommandReply::Done)
    );
    // The cut-off leader cannot commit: its write waits for a quorum that never comes.
    let cut_off = std::sync::Arc::new(cut_off);
    let stranded = {
        let cut_off = cut_off.clone();
        std::thread::spawn(move || cut_off.write_blocking(create("alone")))
    };
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !stranded.is_finished(),
        "a write without a quorum does not complete"
    );
    assert!(!topics(&cut_off).contains(&"alone".to_string()));
    for node in nodes.values() {
        assert!(!topics(node).contains(&"alone".to_string()));
    }

    for link in links.values() {
        link.set(Fault::None);
    }
    let everyone_follows = wait_for(Duration::from_secs(20), || {
        (cut_off.leader() == Some(successor)
            && ["before", "majority"]
                .iter()
                .all(|name| topics(&cut_off).contains(&name.to_string())))
        .then_some(())
    });
    assert!(
        everyone_follows.is_some(),
        "the old leader follows node {successor} and holds what the majority committed: {:?}",
        topics(&cut_off)
    );
    // Its own proposal was never committed by it: the write failed, or was proposed
    // again through the new leader once the old one learnt it no longer led.
    let outcome = stranded.join().unwrap();
    let expected: Vec<String> = match outcome {
        Ok(CommandReply::Done) => vec!["alone".into(), "before".into(), "majority".into()],
        _ => vec!["before".into(), "majority".into()],
    };
    assert!(
        wait_for(Duration::from_secs(10), || (nodes
            .values()
            .chain([&*cut_off])
            .all(|node| topics(node) == expected))
        .then_some(()))
        .is_some(),
        "every node agrees on {expected:?} ({outcome:?})"
    );
}

/// A broker that stops is fenced once its session expires: each partition it led gets
/// another in-sync replica as leader, with a new epoch, and it leaves their ISRs; when it
/// comes back it is registered again, as a follower.
#[test]
fn a_stopped_broker_is_fenced_and_its_partitions_get_new_leaders() {
    let dir = tempfile::tempdir().unwrap();
    let configs = three_configs(dir.path(), |_, _, address| address);
    let (mut nodes, controller) = form(&configs);
    let replicated = Command::CreateTopic {
        name: "orders".into(),
        partitions: 3,
        replication_factor: 3,
        configs: Vec::new(),
    };
    assert_eq!(
        nodes[&controller].write_blocking(replicated),
        Ok(CommandReply::Done)
    );
    let victim = *nodes.keys().find(|id| **id != controller).unwrap();
    let led: Vec<usize> = nodes[&controller].state().topics["orders"]
        .partitions
        .iter()
        .enumerate()
        .filter(|(_, partition)| partition.leader == Some(victim))
        .map(|(index, _)| index)
        .collect();
    assert!(!led.is_empty(), "each broker leads a partition");

    let stopped_at = Instant::now();
    drop(nodes.remove(&victim));
    let moved = wait_for(Duration::from_secs(10), || {
        let state = nodes[&controller].state();
        let partitions = &state.topics["orders"].partitions;
        (state.brokers[&victim].fenced
            && led.iter().all(|&index| {
                let partition = &partitions[index];
                partition.leader.is_some_and(|leader| leader != victim)
                    && partition.leader_epoch == 1
                    && !partition.isr.contains(&victim)
            }))
        .then_some(())
    });
    assert!(moved.is_some(), "{:?}", nodes[&controller].state());
    eprintln!(
        "broker {victim} fenced and its partitions led again {} ms after it stopped",
        stopped_at.elapsed().as_millis()
    );
    // The other nodes applied the same change.
    let survivor = *nodes.keys().find(|id| **id != controller).unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || (nodes[&survivor].state()
            == nodes[&controller].state())
        .then_some(()))
        .is_some()
    );

    nodes.insert(
        victim,
        ClusterNode::start(configs[&victim].clone()).unwrap(),
    );
    assert!(
        wait_for(Duration::from_secs(10), || registered(
            &nodes[&controller],
            &[victim]
        )
        .then_some(()))
        .is_some(),
        "a broker heard from again is registered again"
    );
    let state = nodes[&controller].state();
    for &index in &led {
        let partition = &state.topics["orders"].partitions[index];
        assert_ne!(
            partition.leader,
            Some(victim),
            "it comes back as a follower"
        );
    }
}
