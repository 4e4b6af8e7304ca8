//! Consumer-group requests and responses (api keys 8 to 16): membership (join, sync,
//! heartbeat, leave), committed offsets (commit, fetch) and group administration (list,
//! describe, delete). docs/PROTOCOL.md lists the fields in the order encoded here.

use bytes::{BufMut, BytesMut};

use super::ProtocolError;
use super::wire::{Reader, put_count, put_string};

/// The generation and member id of a commit that comes from no member: an admin reset,
/// or a consumer that assigns itself partitions. Accepted only while the group has no
/// members.
pub const GENERATION_NONE: i32 = -1;

/// A topic and some of its partitions: an assignment, or the partitions a request names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicPartitions {
    pub name: String,
    pub partitions: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinGroupRequest {
    pub group_id: String,
    /// Empty for a consumer joining for the first time: the coordinator gives it an id.
    pub member_id: String,
    pub client_id: String,
    /// A member that sends no heartbeat for this long is removed from the group.
    pub session_timeout_ms: u32,
    /// How long the coordinator waits for every member to rejoin during a rebalance.
    pub rebalance_timeout_ms: u32,
    pub topics: Vec<String>,
    /// Assignment strategies the member accepts, preferred first ("range", "roundrobin",
    /// "sticky").
    pub assignors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinGroupResponse {
    pub generation: i32,
    pub member_id: String,
    pub leader_id: String,
    /// The strategy the coordinator chose for this generation.
    pub assignor: String,
    pub members: u32,
}

/// Sync, heartbeat and leave name a member of a generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncGroupRequest {
    pub group_id: String,
    pub generation: i32,
    pub member_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatRequest {
    pub group_id: String,
    pub generation: i32,
    pub member_id: String,
    /// The coordinator may hold a heartbeat this long, answering at once when a
    /// rebalance begins: members learn of a rebalance without waiting for their next
    /// heartbeat. 0 answers at once.
    pub max_wait_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaveGroupRequest {
    pub group_id: String,
    pub member_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitPartition {
    pub partition: u32,
    /// The next offset the group will read.
    pub offset: i64,
    /// Free text kept with the offset (at most `OFFSET_METADATA_BYTES_MAX` bytes).
    pub metadata: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitTopic {
    pub name: String,
    pub partitions: Vec<OffsetCommitPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitRequest {
    pub group_id: String,
    /// `GENERATION_NONE` (with an empty member id) for a commit from outside the group's
    /// membership.
    pub generation: i32,
    pub member_id: String,
    pub topics: Vec<OffsetCommitTopic>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStatus {
    pub partition: u32,
    pub status: super::Status,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitTopicResponse {
    pub name: String,
    pub partitions: Vec<PartitionStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetFetchRequest {
    pub group_id: String,
    /// Empty: every partition the group has an offset for.
    pub topics: Vec<TopicPartitions>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetFetchPartition {
    pub partition: u32,
    pub status: super::Status,
    /// -1 when the group has committed nothing for the partition.
    pub offset: i64,
    pub metadata: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetFetchTopic {
    pub name: String,
    pub partitions: Vec<OffsetFetchPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    /// "Empty", "PreparingRebalance", "CompletingRebalance" or "Stable".
    pub state: String,
    pub members: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMemberDescription {
    pub member_id: String,
    pub client_id: String,
    pub session_timeout_ms: u32,
    pub topics: Vec<String>,
    pub assignment: Vec<TopicPartitions>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    pub state: String,
    pub generation: i32,
    pub assignor: String,
    pub leader_id: String,
    pub members: Vec<GroupMemberDescription>,
}

// ---- encoding -------------------------------------------------------------------------------

fn put_strings(out: &mut BytesMut, items: &[String]) {
    put_count(out, items.len());
    for item in items {
        put_string(out, item);
    }
}

fn read_strings(reader: &mut Reader, what: &'static str) -> Result<Vec<String>, ProtocolError> {
    let count = reader.count(what, 2)?;
    (0..count).map(|_| reader.string(what)).collect()
}

pub(super) fn put_topic_partitions(out: &mut BytesMut, topics: &[TopicPartitions]) {
    put_count(out, topics.len());
    for topic in topics {
        put_string(out, &topic.name);
        put_count(out, topic.partitions.len());
        for &partition in &topic.partitions {
            out.put_u32(partition);
        }
    }
}

pub(super) fn read_topic_partitions(
    reader: &mut Reader,
) -> Result<Vec<TopicPartitions>, ProtocolError> {
    let count = reader.count("topics", 6)?;
    (0..count)
        .map(|_| {
            let name = reader.string("topic name")?;
            let partitions = reader.count("partitions", 4)?;
            Ok(TopicPartitions {
                name,
                partitions: (0..partitions)
                    .map(|_| reader.u32("partition"))
                    .collect::<Result<_, _>>()?,
            })
        })
        .collect()
}

impl JoinGroupRequest {
    pub(super) fn encode(&self, out: &mut BytesMut) {
        put_string(out, &self.group_id);
        put_string(out, &self.member_id);
        put_string(out, &self.client_id);
        out.put_u32(self.session_timeout_ms);
        out.put_u32(self.rebalance_timeout_ms);
        put_strings(out, &self.topics);
        put_strings(out, &self.assignors);
    }

    pub(super) fn decode(reader: &mut Reader) -> Result<Self, ProtocolError> {
        Ok(JoinGroupRequest {
            group_id: reader.string("group id")?,
            member_id: reader.string("member id")?,
            client_id: reader.string("client id")?,
            session_timeout_ms: reader.u32("session timeout")?,
            rebalance_timeout_ms: reader.u32("rebalance timeout")?,
            topics: read_strings(reader, "topics")?,
            assignors: read_strings(reader, "assignors")?,
        })
    }
}

impl JoinGroupResponse {
    pub(super) fn encode(&self, out: &mut BytesMut) {
        out.put_i32(self.generation);
        put_string(out, &self.member_id);
        put_string(out, &self.leader_id);
        put_string(out, &self.assignor);
        out.put_u32(self.members);
    }

    pub(super) fn decode(reader: &mut Reader) -> Result<Self, ProtocolError> {
        Ok(JoinGroupResponse {
            generation: reader.i32("generation")?,
            member_id: reader.string("member id")?,
            leader_id: reader.string("leader id")?,
            assignor: reader.string("assignor")?,
            members: reader.u32("member count")?,
        })
    }
}

impl SyncGroupRequest {
    pub(super) fn encode(&self, out: &mut BytesMut) {
        put_string(out, &self.group_id);
        out.put_i32(self.generation);
        put_string(out, &self.member_id);
    }

    pub(super) fn decode(reader: &mut Reader) -> Result<Self, ProtocolError> {
        Ok(SyncGroupRequest {
            group_id: reader.string("group id")?,
            generation: reader.i32("generation")?,
            member_id: reader.string("member id")?,
        })
    }
}

impl HeartbeatRequest {
    pub(super) fn encode(&self, out: &mut BytesMut) {
        put_string(out, &self.group_id);
        out.put_i32(self.generation);
        put_string(out, &self.member_id);
        out.put_u32(self.max_wait_ms);
    }

    pub(super) fn decode(reader: &mut Reader) -> Result<Self, ProtocolError> {
        Ok(HeartbeatRequest {
            group_id: reader.string("group id")?,
            generation: reader.i32("generation")?,
            member_id: reader.string("member id")?,
            max_wait_ms: reader.u32("heartbeat max wait")?,
        })
    }
}

impl LeaveGroupRequest {
    pub(super) fn encode(&self, out: &mut BytesMut) {
        put_string(out, &self.group_id);
        put_string(out, &self.member_id);
    }

    pub(super) fn decode(reader: &mut Reader) -> Result<Self, ProtocolError> {
        Ok(LeaveGroupRequest {
            group_id: reader.string("group id")?,
            member_id: reader.string("member id")?,
        })
    }
}

impl OffsetCommitRequest {
    pub(super) fn encode(&self, out: &mut BytesMut) {
        put_string(out, &self.group_id);
        out.put_i32(self.generation);
        put_string(out, &self.member_id);
        put_count(out, self.topics.len());
        for topic in &self.topics {
            put_string(out, &topic.name);
            put_count(out, topic.partitions.len());
            for partition in &topic.partitions {
                out.put_u32(partition.partition);
                out.put_i64(partition.offset);
                put_string(out, &partition.metadata);
            }
        }
    }

    pub(super) fn decode(reader: &mut Reader) -> Result<Self, ProtocolError> {
        let group_id = reader.string("group id")?;
        let generation = reader.i32("generation")?;
        let member_id = reader.string("member id")?;
        let count = reader.count("topics", 6)?;
        let topics = (0..count)
            .map(|_| {
                let name = reader.string("topic name")?;
                let partitions = reader.count("partitions", 14)?;
                Ok(OffsetCommitTopic {
                    name,
                    partitions: (0..partitions)
                        .map(|_| {
                            Ok(OffsetCommitPartition {
                                partition: reader.u32("partition")?,
                                offset: reader.i64("offset")?,
                                metadata: reader.string("offset metadata")?,
                            })
                        })
                        .collect::<Result<_, ProtocolError>>()?,
                })
            })
            .collect::<Result<_, ProtocolError>>()?;
        Ok(OffsetCommitRequest {
            group_id,
            generation,
            member_id,
            topics,
        })
    }
}

pub(super) fn put_partition_statuses(out: &mut BytesMut, topics: &[OffsetCommitTopicResponse]) {
    put_count(out, topics.len());
    for topic in topics {
        put_string(out, &topic.name);
        put_count(out, topic.partitions.len());
        for partition in &topic.partitions {
            out.put_u32(partition.partition);
            super::messages::put_status(out, &partition.status);
        }
    }
}

pub(super) fn read_partition_statuses(
    reader: &mut Reader,
) -> Result<Vec<OffsetCommitTopicResponse>, ProtocolError> {
    let count = reader.count("topics", 6)?;
    (0..count)
        .map(|_| {
            let name = reader.string("topic name")?;
            let partitions = reader.count("partitions", 8)?;
            Ok(OffsetCommitTopicResponse {
                name,
                partitions: (0..partitions)
                    .map(|_| {
                        Ok(PartitionStatus {
                            partition: reader.u32("partition")?,
                            status: super::messages::read_status(reader, "partition status")?,
                        })
                    })
                    .collect::<Result<_, ProtocolError>>()?,
            })
        })
        .collect()
}

pub(super) fn put_offset_fetch(out: &mut BytesMut, topics: &[OffsetFetchTopic]) {
    put_count(out, topics.len());
    for topic in topics {
        put_string(out, &topic.name);
        put_count(out, topic.partitions.len());
        for partition in &topic.partitions {
            out.put_u32(partition.partition);
            super::messages::put_status(out, &partition.status);
            out.put_i64(partition.offset);
            put_string(out, &partition.metadata);
        }
    }
}

pub(super) fn read_offset_fetch(
    reader: &mut Reader,
) -> Result<Vec<OffsetFetchTopic>, ProtocolError> {
    let count = reader.count("topics", 6)?;
    (0..count)
        .map(|_| {
            let name = reader.string("topic name")?;
            let partitions = reader.count("partitions", 18)?;
            Ok(OffsetFetchTopic {
                name,
                partitions: (0..partitions)
                    .map(|_| {
                        Ok(OffsetFetchPartition {
                            partition: reader.u32("partition")?,
                            status: super::messages::read_status(reader, "partition status")?,
                            offset: reader.i64("offset")?,
                            metadata: reader.string("offset metadata")?,
                        })
                    })
                    .collect::<Result<_, ProtocolError>>()?,
            })
        })
        .collect()
}

pub(super) fn put_group_listings(out: &mut BytesMut, groups: &[GroupListing]) {
    put_count(out, groups.len());
    for group in groups {
        put_string(out, &group.group_id);
        put_string(out, &group.state);
        out.put_u32(group.members);
    }
}

pub(super) fn read_group_listings(reader: &mut Reader) -> Result<Vec<GroupListing>, ProtocolError> {
    let count = reader.count("groups", 8)?;
    (0..count)
        .map(|_| {
            Ok(GroupListing {
                group_id: reader.string("group id")?,
                state: reader.string("group state")?,
                members: reader.u32("member count")?,
            })
        })
        .collect()
}

impl GroupDescription {
    pub(super) fn encode(&self, out: &mut BytesMut) {
        put_string(out, &self.group_id);
        put_string(out, &self.state);
        out.put_i32(self.generation);
        put_string(out, &self.assignor);
        put_string(out, &self.leader_id);
        put_count(out, self.members.len());
        for member in &self.members {
            put_string(out, &member.member_id);
            put_string(out, &member.client_id);
            out.put_u32(member.session_timeout_ms);
            put_strings(out, &member.topics);
            put_topic_partitions(out, &member.assignment);
        }
    }

    pub(super) fn decode(reader: &mut Reader) -> Result<Self, ProtocolError> {
        let group_id = reader.string("group id")?;
        let state = reader.string("group state")?;
        let generation = reader.i32("generation")?;
        let assignor = reader.string("assignor")?;
        let leader_id = reader.string("leader id")?;
        let count = reader.count("members", 16)?;
        let members = (0..count)
            .map(|_| {
                Ok(GroupMemberDescription {
                    member_id: reader.string("member id")?,
                    client_id: reader.string("client id")?,
                    session_timeout_ms: reader.u32("session timeout")?,
                    topics: read_strings(reader, "topics")?,
                    assignment: read_topic_partitions(reader)?,
                })
            })
            .collect::<Result<_, ProtocolError>>()?;
        Ok(GroupDescription {
            group_id,
            state,
            generation,
            assignor,
            leader_id,
            members,
        })
    }
}
