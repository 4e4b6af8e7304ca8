//! Kafka's consumer protocol: the subscription a group member sends in JoinGroup and
//! the assignment its leader returns in SyncGroup, both opaque bytes to the group
//! protocol. Newer versions append fields, so readers take the versions clients send
//! (0 to 3) and ignore what follows what they know.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

use super::KafkaError;
use super::wire::{Reader, put_count, put_nullable_bytes, put_string};

/// The protocol type of Kafka consumers.
pub const CONSUMER: &str = "consumer";

/// The topics a subscription names.
pub fn decode_subscription(bytes: Bytes) -> Result<Vec<String>, KafkaError> {
    let mut r = Reader::new(bytes, crate::limits::REQUEST_ENTRIES_MAX);
    let version = r.i16("subscription version")?;
    if version < 0 {
        return Err(KafkaError::Malformed("subscription", "negative version"));
    }
    (0..r.count(false, 2, "subscribed topics")?)
        .map(|_| r.string(false, "subscribed topic"))
        .collect()
}

/// A version 0 subscription to `topics`, with no user data.
pub fn encode_subscription(topics: &[String]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_i16(0);
    put_count(&mut out, topics.len(), false);
    for topic in topics {
        put_string(&mut out, topic, false);
    }
    put_nullable_bytes(&mut out, None, false);
    out.freeze()
}

/// The partitions an assignment gives, by topic.
pub fn decode_assignment(bytes: Bytes) -> Result<BTreeMap<String, Vec<u32>>, KafkaError> {
    if bytes.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mut r = Reader::new(bytes, crate::limits::REQUEST_ENTRIES_MAX);
    let version = r.i16("assignment version")?;
    if version < 0 {
        return Err(KafkaError::Malformed("assignment", "negative version"));
    }
    let mut assigned: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for _ in 0..r.count(false, 6, "assigned topics")? {
        let topic = r.string(false, "assigned topic")?;
        let partitions = assigned.entry(topic).or_default();
        for _ in 0..r.count(false, 4, "assigned partitions")? {
            let partition = r.i32("assigned partition")?;
            let partition = u32::try_from(partition)
                .map_err(|_| KafkaError::Malformed("assigned partition", "negative"))?;
            partitions.push(partition);
        }
    }
    Ok(assigned)
}

/// A version 0 assignment of `partitions`, with no user data.
pub fn encode_assignment(partitions: &BTreeMap<String, Vec<u32>>) -> Bytes {
    let mut out = BytesMut::new();
    out.put_i16(0);
    put_count(&mut out, partitions.len(), false);
    for (topic, indexes) in partitions {
        put_string(&mut out, topic, false);
        put_count(&mut out, indexes.len(), false);
        for index in indexes {
            out.put_i32(*index as i32);
        }
    }
    put_nullable_bytes(&mut out, None, false);
    out.freeze()
}
