//! Consumer groups: members of a group share the partitions of the topics they subscribe
//! to, and the group remembers how far it has read (committed offsets).
//!
//! - `assignor`: pure partition assignment strategies (range, round-robin, sticky).
//! - `offsets`: committed offsets in an internal, compacted log per offsets partition.
//! - `coordinator`: membership, generations and rebalances of the groups one shard owns.
//!
//! A group is owned by one shard, chosen from a hash of its id (`coordinator_shard`); any
//! shard that receives a group request forwards it there over the cross-shard channel. In
//! a cluster, the owner is the shard that leads the group's `__consumer_offsets`
//! partition, on whichever node leads it (`server::handlers::groups`).

pub mod assignor;
pub(crate) mod coordinator;
pub mod offsets;

pub use offsets::{OFFSETS_PARTITIONS, coordinator_shard, offsets_partition};
