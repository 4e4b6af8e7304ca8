//! The broker: topics and their partitions, sharded across cores. So far: the durable
//! topic metadata every shard copies, and the partition-to-shard table (issue 3 goes on
//! with the shards and the server).

pub mod metadata;
