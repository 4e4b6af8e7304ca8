//! Spate: a thread-per-core event-streaming broker.
//!
//! The crate is layered bottom-up; each layer knows nothing of the ones above it:
//! - [`record`]: the Kafka RecordBatch v2 format, pure code with no I/O.
//! - [`storage`]: the partition log on direct I/O (segments, indexes, group commit,
//!   retention, recovery). It knows nothing of the network.
//! - [`protocol`]: the native binary protocol, pure code shared by server and client.
//! - [`broker`]: topics, their durable metadata and the partition-to-shard table.
//! - [`group`]: consumer groups: assignors, committed offsets, the coordinator.
//! - [`cluster`]: the cluster metadata on Raft (issue 14, in progress: its store).
//! - [`server`]: the thread-per-core network server (shards, connections, handlers).
//! - [`client`]: the Rust client (blocking sockets), on `protocol` and `record` only.
//!
//! See docs/ARCHITECTURE.md for the code map and the invariants.

pub mod broker;
pub mod client;
pub mod clock;
pub mod cluster;
#[doc(hidden)]
pub mod fuzzing;
pub mod group;
pub mod kafka;
pub mod limits;
pub mod metrics;
pub mod protocol;
pub mod record;
mod semaphore;
pub mod server;
pub mod storage;
mod wake;
