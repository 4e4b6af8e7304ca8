//! The cluster (issue 14, in progress): cluster metadata as a replicated state machine on
//! Raft (openraft 0.9, pinned), run on a thread of its own outside the data shards.
//!
//! So far: `state`, the cluster's state (brokers, and each partition's replicas, leader,
//! leader epoch and ISR) and the commands that change it; `store`, the durable Raft log
//! and the state machine that applies those commands (checked against openraft's storage
//! conformance suite); and `node`, one voter with its thread, its TCP transport, and the
//! controller's broker sessions (heartbeats; fencing on expiry). Partition replication
//! and the wiring into `spate serve` are still to come: the broker does not use this
//! module yet.

pub mod node;
pub mod state;
pub mod store;

pub use state::{ClusterCommand as Command, ClusterState};

/// A broker's node id in the cluster.
pub type NodeId = u64;

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CommandReply {
    Done,
    /// A topic creation met a topic of that name (created meanwhile by another client, or
    /// by an auto-creating node): nothing changed.
    TopicExists,
    /// The command does not fit the state it met (the controller checked it against an
    /// older copy, or a leader's epoch is stale): nothing changed.
    Refused(String),
}

openraft::declare_raft_types!(
    /// openraft's types for the cluster metadata.
    pub TypeConfig:
        D = Command,
        R = CommandReply,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);
