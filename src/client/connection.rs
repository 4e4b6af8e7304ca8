use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::protocol::{
    Acks, ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerDescription,
    CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, DescribeTopicsRequest,
    FRAME_BYTES_MAX_DEFAULT, FetchPartition, FetchPartitionResponse, FetchRequest, FetchResponse,
    FetchTopic, GroupDescription, GroupIdRequest, GroupListing, HeartbeatRequest, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, ListOffsetsPartition, ListOffsetsRequest,
    ListOffsetsTopic, MetadataRequest, MetadataResponse, NewPartitions, NewTopic,
    OffsetCommitRequest, OffsetCommitTopic, OffsetCommitTopicResponse, OffsetFetchRequest,
    OffsetFetchTopic, ProducePartition, ProducePartitionResponse, ProduceRequest, ProduceTopic,
    ProtocolError, Request, Response, Status, SyncGroupRequest, TopicDescription, TopicPartitions,
    TopicStatus, split_frame,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the broker at {address}: {source}")]
    Unreachable {
        address: String,
        source: std::io::Error,
    },
    #[error("connection to the broker failed: {0}")]
    Io(std::io::Error),
    #[error("the broker sent a malformed response: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("the broker answered with an error: {0}")]
    Broker(Status),
    #[error("the broker sent an unexpected response")]
    Unexpected,
    #[error("the broker did not answer in time (the connection is no longer usable)")]
    TimedOut,
}

/// Default longest wait for an answer (or for the broker to take a request's bytes). Every
/// wait the broker itself may add is shorter: produce timeouts and long polls are at most
/// 30 s.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(65);

/// Reads what has arrived (up to 64 KiB) onto the end of `buffer`. Bounded reads: a
/// reader that asks for a whole multi-megabyte answer at once sleeps on it, and the
/// sender must wake it for every segment. The end of the stream is an error.
pub(crate) fn read_more(stream: &mut TcpStream, buffer: &mut BytesMut) -> Result<(), ClientError> {
    const READ_BYTES: usize = 64 * 1024;
    let filled = buffer.len();
    buffer.resize(filled + READ_BYTES, 0);
    let read = stream.read(&mut buffer[filled..]);
    // On an error too: the zeros grown for the read must not look like data.
    buffer.truncate(filled + *read.as_ref().unwrap_or(&0));
    if read? == 0 {
        return Err(ClientError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the broker closed the connection",
        )));
    }
    Ok(())
}

impl ClientError {
    /// Whether trying again, after refreshing metadata, may succeed: a partition whose
    /// leader moved, a node that is down or slow, a broker stopping.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Broker(status) => status.code.is_retriable(),
            ClientError::Io(_) | ClientError::Unreachable { .. } | ClientError::TimedOut => true,
            ClientError::Protocol(_) | ClientError::Unexpected => false,
        }
    }
}

impl From<std::io::Error> for ClientError {
    fn from(error: std::io::Error) -> ClientError {
        match error.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ClientError::TimedOut,
            _ => ClientError::Io(error),
        }
    }
}

/// One connection to a broker (or one of its shards). Requests are sent one at a time.
pub struct Connection {
    stream: TcpStream,
    buffer: BytesMut,
    next_correlation_id: u32,
    /// What the broker said at the handshake.
    pub versions: ApiVersionsResponse,
}

impl Connection {
    /// Connects and negotiates versions.
    pub fn connect(address: &str, client_id: &str) -> Result<Connection, ClientError> {
        Connection::connect_with_timeout(address, client_id, ANSWER_TIMEOUT)
    }

    /// Connects and negotiates versions; a broker that leaves a request unanswered for
    /// `answer_timeout` fails it with `TimedOut`.
    pub fn connect_with_timeout(
        address: &str,
        client_id: &str,
        answer_timeout: Duration,
    ) -> Result<Connection, ClientError> {
        let unreachable = |source| ClientError::Unreachable {
            address: address.to_string(),
            source,
        };
        let addresses: Vec<_> = address.to_socket_addrs().map_err(unreachable)?.collect();
        let first = addresses.first().ok_or_else(|| {
            unreachable(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no address",
            ))
        })?;
        let stream =
            TcpStream::connect_timeout(first, Duration::from_secs(5)).map_err(unreachable)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(answer_timeout))?;
        stream.set_write_timeout(Some(answer_timeout))?;
        let mut connection = Connection {
            stream,
            buffer: BytesMut::new(),
            next_correlation_id: 1,
            versions: ApiVersionsResponse {
                broker_version: String::new(),
                apis: Vec::new(),
                shard_count: 0,
                shard_id: 0,
            },
        };
        let request = Request::ApiVersions(ApiVersionsRequest {
            client_id: client_id.to_string(),
        });
        match connection.call(&request)? {
            Response::ApiVersions(versions) => connection.versions = versions,
            _ => return Err(ClientError::Unexpected),
        }
        for api_key in ApiKey::ALL {
            if connection.versions.negotiate(api_key).is_none() {
                return Err(ClientError::Broker(Status::error(
                    crate::protocol::ErrorCode::UnsupportedVersion,
                    format!("the broker speaks no version of {api_key:?} that this client does"),
                )));
            }
        }
        Ok(connection)
    }

    /// The address this connection reached, as `host:port`.
    pub fn peer_address(&self) -> String {
        self.stream
            .peer_addr()
            .map_or_else(|_| String::new(), |address| address.to_string())
    }

    /// The socket, bytes read past the last answer, and the next correlation id: what a
    /// `Pipeline` takes over.
    pub(super) fn into_parts(self) -> (TcpStream, BytesMut, u32) {
        (self.stream, self.buffer, self.next_correlation_id)
    }

    /// Sends a request and waits for its response. A request-level failure is an error.
    pub fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        let correlation_id = self.send(request)?;
        let response = self.receive(request.api_key(), correlation_id)?;
        match response {
            Response::Failed(status) => Err(ClientError::Broker(status)),
            response => Ok(response),
        }
    }

    fn send(&mut self, request: &Request) -> Result<u32, ClientError> {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        self.stream.write_all(&request.encode(correlation_id))?;
        Ok(correlation_id)
    }

    fn receive(&mut self, api_key: ApiKey, correlation_id: u32) -> Result<Response, ClientError> {
        loop {
            if let Some(frame) = split_frame(&mut self.buffer, FRAME_BYTES_MAX_DEFAULT * 4)? {
                if frame.len() < 4 {
                    return Err(ClientError::Unexpected);
                }
                let got = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes"));
                if got != correlation_id {
                    return Err(ClientError::Unexpected);
                }
                return Ok(Response::decode(api_key, frame.slice(4..))?);
            }
            read_more(&mut self.stream, &mut self.buffer)?;
        }
    }

    pub fn metadata(&mut self, topics: &[&str]) -> Result<MetadataResponse, ClientError> {
        let topics = topics.iter().map(|topic| topic.to_string()).collect();
        match self.call(&Request::Metadata(MetadataRequest { topics }))? {
            Response::Metadata(metadata) => Ok(metadata),
            _ => Err(ClientError::Unexpected),
        }
    }

    pub fn create_topic(
        &mut self,
        name: &str,
        partitions: u32,
        configs: &[(String, String)],
    ) -> Result<TopicStatus, ClientError> {
        self.create_replicated_topic(name, partitions, 1, configs)
    }

    /// Creates a topic whose partitions each have `replication_factor` copies, on as
    /// many brokers of the cluster.
    pub fn create_replicated_topic(
        &mut self,
        name: &str,
        partitions: u32,
        replication_factor: u16,
        configs: &[(String, String)],
    ) -> Result<TopicStatus, ClientError> {
        let topic = NewTopic {
            name: name.to_string(),
            partitions,
            configs: configs.to_vec(),
            replication_factor,
        };
        match self.call(&Request::CreateTopics(CreateTopicsRequest {
            topics: vec![topic],
        }))? {
            Response::CreateTopics(mut topics) if topics.len() == 1 => Ok(topics.remove(0)),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// Grows `name` to `count` partitions in all.
    pub fn create_partitions(
        &mut self,
        name: &str,
        count: u32,
    ) -> Result<TopicStatus, ClientError> {
        let request = Request::CreatePartitions(CreatePartitionsRequest {
            topics: vec![NewPartitions {
                name: name.to_string(),
                count,
            }],
        });
        match self.call(&request)? {
            Response::CreatePartitions(mut topics) if topics.len() == 1 => Ok(topics.remove(0)),
            _ => Err(ClientError::Unexpected),
        }
    }

    pub fn delete_topic(&mut self, name: &str) -> Result<TopicStatus, ClientError> {
        match self.call(&Request::DeleteTopics(DeleteTopicsRequest {
            names: vec![name.to_string()],
        }))? {
            Response::DeleteTopics(mut topics) if topics.len() == 1 => Ok(topics.remove(0)),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// Describes the named topics, or every topic when `names` is empty.
    pub fn describe_topics(
        &mut self,
        names: &[&str],
    ) -> Result<Vec<TopicDescription>, ClientError> {
        let names = names.iter().map(|name| name.to_string()).collect();
        match self.call(&Request::DescribeTopics(DescribeTopicsRequest { names }))? {
            Response::DescribeTopics(topics) => Ok(topics),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// Appends `records` (whole batches) to one partition. With `Acks::None` nothing is
    /// awaited and `Ok(None)` is returned.
    pub fn produce(
        &mut self,
        topic: &str,
        partition: u32,
        records: Bytes,
        acks: Acks,
    ) -> Result<Option<ProducePartitionResponse>, ClientError> {
        let request = Request::Produce(ProduceRequest {
            acks,
            timeout_ms: 30_000,
            topics: vec![ProduceTopic {
                name: topic.to_string(),
                partitions: vec![ProducePartition { partition, records }],
            }],
        });
        if acks == Acks::None {
            self.send(&request)?;
            return Ok(None);
        }
        match self.call(&request)? {
            Response::Produce(mut response) => {
                let partition = response
                    .topics
                    .pop()
                    .and_then(|mut topic| topic.partitions.pop());
                partition.map(Some).ok_or(ClientError::Unexpected)
            }
            _ => Err(ClientError::Unexpected),
        }
    }

    /// Reads whole batches of one partition from `offset`, waiting up to `max_wait_ms` for
    /// at least one byte.
    pub fn fetch(
        &mut self,
        topic: &str,
        partition: u32,
        offset: i64,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<FetchPartitionResponse, ClientError> {
        let request = Request::Fetch(FetchRequest {
            max_wait_ms,
            min_bytes: 1,
            max_bytes,
            topics: vec![FetchTopic {
                name: topic.to_string(),
                partitions: vec![FetchPartition {
                    partition,
                    offset,
                    max_bytes,
                }],
            }],
        });
        match self.call(&request)? {
            Response::Fetch(mut response) => {
                let partition = response
                    .topics
                    .pop()
                    .and_then(|mut topic| topic.partitions.pop());
                partition.ok_or(ClientError::Unexpected)
            }
            _ => Err(ClientError::Unexpected),
        }
    }

    /// Reads several partitions in one request (one shard's share of a consumer's
    /// partitions); the broker answers once any has `min_bytes` or `max_wait_ms` passed.
    pub fn fetch_many(
        &mut self,
        topics: Vec<FetchTopic>,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<FetchResponse, ClientError> {
        let request = Request::Fetch(FetchRequest {
            max_wait_ms,
            min_bytes: 1,
            max_bytes,
            topics,
        });
        match self.call(&request)? {
            Response::Fetch(response) => Ok(response),
            _ => Err(ClientError::Unexpected),
        }
    }

    // ---- consumer groups ------------------------------------------------------------------

    /// Joins (or rejoins) a group; the broker answers once the rebalance completes.
    pub fn join_group(
        &mut self,
        request: JoinGroupRequest,
    ) -> Result<JoinGroupResponse, ClientError> {
        match self.call(&Request::JoinGroup(request))? {
            Response::JoinGroup(response) => Ok(response),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// The member's assignment for `generation`.
    pub fn sync_group(
        &mut self,
        group_id: &str,
        generation: i32,
        member_id: &str,
    ) -> Result<Vec<TopicPartitions>, ClientError> {
        let request = Request::SyncGroup(SyncGroupRequest {
            group_id: group_id.to_string(),
            generation,
            member_id: member_id.to_string(),
        });
        match self.call(&request)? {
            Response::SyncGroup(assignment) => Ok(assignment),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// A heartbeat the broker may hold for `max_wait_ms`, answering at once if a
    /// rebalance begins (then the error is `RebalanceInProgress`).
    pub fn heartbeat(
        &mut self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        max_wait_ms: u32,
    ) -> Result<(), ClientError> {
        let request = Request::Heartbeat(HeartbeatRequest {
            group_id: group_id.to_string(),
            generation,
            member_id: member_id.to_string(),
            max_wait_ms,
        });
        match self.call(&request)? {
            Response::Heartbeat => Ok(()),
            _ => Err(ClientError::Unexpected),
        }
    }

    pub fn leave_group(&mut self, group_id: &str, member_id: &str) -> Result<(), ClientError> {
        let request = Request::LeaveGroup(LeaveGroupRequest {
            group_id: group_id.to_string(),
            member_id: member_id.to_string(),
        });
        match self.call(&request)? {
            Response::LeaveGroup => Ok(()),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// Commits offsets; each partition answers with its own status.
    /// Commits offsets; more than a request may carry (`REQUEST_ENTRIES_MAX`) go in
    /// several requests, answered together.
    pub fn commit_offsets(
        &mut self,
        request: OffsetCommitRequest,
    ) -> Result<Vec<OffsetCommitTopicResponse>, ClientError> {
        let topics = request
            .topics
            .into_iter()
            .map(|topic| (topic.name, topic.partitions))
            .collect();
        let mut answers = Vec::new();
        for piece in request_sized_pieces(topics) {
            let piece = OffsetCommitRequest {
                group_id: request.group_id.clone(),
                generation: request.generation,
                member_id: request.member_id.clone(),
                topics: piece
                    .into_iter()
                    .map(|(name, partitions)| OffsetCommitTopic { name, partitions })
                    .collect(),
            };
            match self.call(&Request::OffsetCommit(piece))? {
                Response::OffsetCommit(topics) => answers.extend(topics),
                _ => return Err(ClientError::Unexpected),
            }
        }
        Ok(answers)
    }

    /// The group's committed offsets for `topics` (empty: all of them); more than a
    /// request may carry are asked for in several requests.
    pub fn fetch_offsets(
        &mut self,
        group_id: &str,
        topics: Vec<TopicPartitions>,
    ) -> Result<Vec<OffsetFetchTopic>, ClientError> {
        let topics: Vec<(String, Vec<u32>)> = topics
            .into_iter()
            .map(|topic| (topic.name, topic.partitions))
            .collect();
        let pieces = if topics.is_empty() {
            vec![Vec::new()]
        } else {
            request_sized_pieces(topics)
        };
        let mut answers = Vec::new();
        for piece in pieces {
            let request = Request::OffsetFetch(OffsetFetchRequest {
                group_id: group_id.to_string(),
                topics: piece
                    .into_iter()
                    .map(|(name, partitions)| TopicPartitions { name, partitions })
                    .collect(),
            });
            match self.call(&request)? {
                Response::OffsetFetch(topics) => answers.extend(topics),
                _ => return Err(ClientError::Unexpected),
            }
        }
        Ok(answers)
    }

    pub fn list_groups(&mut self) -> Result<Vec<GroupListing>, ClientError> {
        match self.call(&Request::ListGroups)? {
            Response::ListGroups(groups) => Ok(groups),
            _ => Err(ClientError::Unexpected),
        }
    }

    pub fn describe_group(&mut self, group_id: &str) -> Result<GroupDescription, ClientError> {
        let request = Request::DescribeGroup(GroupIdRequest {
            group_id: group_id.to_string(),
        });
        match self.call(&request)? {
            Response::DescribeGroup(group) => Ok(group),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// What each shard of the broker holds and is doing.
    pub fn describe_broker(&mut self) -> Result<BrokerDescription, ClientError> {
        match self.call(&Request::DescribeBroker)? {
            Response::DescribeBroker(broker) => Ok(broker),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// The cluster's nodes, its controller, and the replicas, leader and in-sync replicas
    /// of each partition of `topics` (every topic when empty).
    pub fn describe_cluster(
        &mut self,
        topics: &[&str],
    ) -> Result<crate::protocol::ClusterDescription, ClientError> {
        let request = Request::DescribeCluster(crate::protocol::DescribeClusterRequest {
            topics: topics.iter().map(|name| name.to_string()).collect(),
        });
        match self.call(&request)? {
            Response::DescribeCluster(cluster) => Ok(cluster),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// Deletes a group with no members, and its committed offsets.
    pub fn delete_group(&mut self, group_id: &str) -> Result<(), ClientError> {
        let request = Request::DeleteGroup(GroupIdRequest {
            group_id: group_id.to_string(),
        });
        match self.call(&request)? {
            Response::DeleteGroup => Ok(()),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// `timestamp`: `OFFSET_EARLIEST`, `OFFSET_LATEST` or a time in ms.
    pub fn list_offset(
        &mut self,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> Result<i64, ClientError> {
        let request = Request::ListOffsets(ListOffsetsRequest {
            topics: vec![ListOffsetsTopic {
                name: topic.to_string(),
                partitions: vec![ListOffsetsPartition {
                    partition,
                    timestamp,
                }],
            }],
        });
        match self.call(&request)? {
            Response::ListOffsets(mut response) => {
                let partition = response
                    .topics
                    .pop()
                    .and_then(|mut topic| topic.partitions.pop());
                let partition = partition.ok_or(ClientError::Unexpected)?;
                if partition.status.is_ok() {
                    Ok(partition.offset)
                } else {
                    Err(ClientError::Broker(partition.status))
                }
            }
            _ => Err(ClientError::Unexpected),
        }
    }
}

/// Splits per-topic lists into pieces a request can carry: at most `REQUEST_ENTRIES_MAX`
/// entries each, a topic and each of its items counting one (a topic's items are split
/// across pieces where needed, its name repeated).
fn request_sized_pieces<T>(topics: Vec<(String, Vec<T>)>) -> Vec<Vec<(String, Vec<T>)>> {
    let limit = crate::limits::REQUEST_ENTRIES_MAX;
    let mut pieces = vec![Vec::new()];
    let mut entries = 0;
    for (name, items) in topics {
        let mut items = items.into_iter().peekable();
        loop {
            if entries + 2 > limit {
                pieces.push(Vec::new());
                entries = 0;
            }
            let room = limit - entries - 1;
            let taken: Vec<T> = items.by_ref().take(room).collect();
            entries += 1 + taken.len();
            pieces
                .last_mut()
                .expect("one piece at least")
                .push((name.clone(), taken));
            if items.peek().is_none() {
                break;
            }
        }
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::request_sized_pieces;
    use crate::limits::REQUEST_ENTRIES_MAX;

    #[test]
    fn long_lists_are_split_into_requests_within_the_entry_limit() {
        let topics = vec![
            ("a".to_string(), (0..15_000u32).collect::<Vec<_>>()),
            ("b".to_string(), (0..15_000u32).collect()),
            ("c".to_string(), vec![7]),
        ];
        let pieces = request_sized_pieces(topics);
        assert_eq!(pieces.len(), 2);
        for piece in &pieces {
            let entries: usize = piece.iter().map(|(_, items)| 1 + items.len()).sum();
            assert!(entries <= REQUEST_ENTRIES_MAX, "{entries}");
        }
        let mut joined: Vec<(String, u32)> = Vec::new();
        for (name, items) in pieces.into_iter().flatten() {
            joined.extend(items.into_iter().map(|item| (name.clone(), item)));
        }
        assert_eq!(joined.len(), 30_001);
        assert_eq!(joined.last(), Some(&("c".to_string(), 7)));
        let small = request_sized_pieces(vec![("x".to_string(), vec![1, 2])]);
        assert_eq!(small, vec![vec![("x".to_string(), vec![1, 2])]]);
    }
}
