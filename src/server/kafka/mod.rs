//! The Kafka door: Kafka's wire protocol on every shard, translated into the same
//! `Shard` operations and group calls the native handlers use.

use std::rc::Rc;

use bytes::Bytes;

use super::connection::Decoded;
use super::handlers::{Exchange, Outgoing};
use super::shard::Shard;

/// A decoded Kafka request.
pub(crate) struct KafkaWork {}

pub(crate) fn decode(_frame: Bytes, _bytes_max: usize) -> Result<Decoded, String> {
    Err("the Kafka protocol is not served yet".to_string())
}

pub(crate) async fn handle(
    _shard: Rc<Shard>,
    _work: KafkaWork,
    _exchange: &Exchange,
) -> Option<Outgoing> {
    None
}
