//! The Rust client: a connection that speaks the native protocol (`connection.rs`), and on
//! top of it an admin client, a producer, a partition consumer and a group consumer. Depends on `protocol` and `record`
//! only: no glommio, plain blocking sockets, usable from any thread.

mod connection;
mod consumer;
mod group;
pub mod partitioner;
mod pipeline;
mod producer;
mod router;

pub(crate) use connection::read_more;
pub use connection::{ClientError, Connection};
pub use consumer::{PartitionConsumer, StartAt};
pub use group::{GroupConsumer, GroupConsumerConfig, GroupRecord, OffsetReset, RebalanceListener};
pub use pipeline::{Answer, Native, Pipeline, Wire};
pub use producer::{Delivery, Producer, ProducerConfig};
pub use router::ShardRouter;
