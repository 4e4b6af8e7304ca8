//! Hostile requests against a real broker on loopback: what one request may make a shard
//! build is bounded by its frame and `limits::REQUEST_ENTRIES_MAX`, never by what the
//! request names; every request gets an answer, and the shard keeps serving others.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRng, TestRunner};
use spate::limits::REQUEST_ENTRIES_MAX;
use spate::protocol::{
    Acks, ApiKey, CreateTopicsRequest, DeleteTopicsRequest, DescribeTopicsRequest, ErrorCode,
    FetchPartition, FetchRequest, FetchTopic, GroupIdRequest, HeartbeatRequest, JoinGroupRequest,
    LeaveGroupRequest, ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic, MetadataRequest,
    NewTopic, OffsetCommitPartition, OffsetCommitRequest, OffsetCommitTopic, OffsetFetchRequest,
    ProducePartition, ProduceRequest, ProduceTopic, Request, Response, SyncGroupRequest,
    TopicPartitions,
};

use crate::server::Broker;
use crate::support::batch;

const MIB: u64 = 1 << 20;

/// One connection speaking raw frames, one request at a time.
struct RawClient {
    stream: TcpStream,
}

/// A response frame: its correlation id and body (status first).
struct Answer {
    correlation_id: u32,
    body: Bytes,
}

impl Answer {
    fn code(&self) -> u16 {
        u16::from_be_bytes([self.body[0], self.body[1]])
    }

    fn decode(&self, api_key: ApiKey) -> Response {
        Response::decode(api_key, self.body.clone()).expect("a well-formed answer")
    }
}

impl RawClient {
    fn connect(broker: &Broker) -> RawClient {
        let stream = TcpStream::connect(broker.address()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        RawClient { stream }
    }

    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(frame)
    }

    /// The next answer, or `None` if the broker closed the connection.
    fn answer(&mut self) -> Option<Answer> {
        let mut length = [0u8; 4];
        self.stream.read_exact(&mut length).ok()?;
        let mut frame = vec![0u8; u32::from_be_bytes(length) as usize];
        self.stream.read_exact(&mut frame).ok()?;
        Some(Answer {
            correlation_id: u32::from_be_bytes(frame[..4].try_into().unwrap()),
            body: Bytes::from(frame).slice(4..),
        })
    }

    fn exchange(&mut self, request: &Request, correlation_id: u32) -> Answer {
        self.send(&request.encode(correlation_id)).unwrap();
        let answer = self
            .answer()
            .expect("an answer before the connection closes");
        assert_eq!(answer.correlation_id, correlation_id);
        answer
    }
}

/// A one-shard broker holding topic "a" with 1000 partitions (flushed by the timer, so
/// hostile produces cost no fdatasyncs).
fn broker_with_a_wide_topic() -> Broker {
    let broker = Broker::start(1);
    let created = broker
        .connect()
        .create_topic("a", 1000, &[("flush.ms".into(), "1000".into())])
        .unwrap();
    assert!(created.status.is_ok(), "{}", created.status);
    broker
}

fn assert_still_serving(broker: &Broker) {
    let mut client = broker.connect();
    let topics = client.metadata(&["a"]).unwrap();
    assert_eq!(topics.topics[0].partitions.len(), 1000);
}

#[test]
fn a_metadata_request_naming_one_topic_millions_of_times_is_refused_at_once() {
    let broker = broker_with_a_wide_topic();
    let before = broker.peak_resident_bytes();
    // The request of the report: an 8 MiB frame naming "a" about 2.8 million times, each
    // of which used to be answered with all 1000 partitions (12.5 GB resident and rising).
    let names = (spate::protocol::FRAME_BYTES_MAX_DEFAULT - 64) / 3;
    let request = Request::Metadata(MetadataRequest {
        topics: vec!["a".to_string(); names],
    });
    let mut client = RawClient::connect(&broker);
    let answer = client.exchange(&request, 7);
    let Response::Failed(status) = answer.decode(ApiKey::Metadata) else {
        panic!("refused whole");
    };
    assert_eq!(status.code, ErrorCode::InvalidRequest);
    assert!(
        status
            .message
            .contains(&format!("at most {REQUEST_ENTRIES_MAX} entries")),
        "{status}"
    );
    // The connection and the shard serve on.
    let answer = client.exchange(
        &Request::Metadata(MetadataRequest {
            topics: vec!["a".to_string(); REQUEST_ENTRIES_MAX],
        }),
        8,
    );
    let Response::Metadata(metadata) = answer.decode(ApiKey::Metadata) else {
        panic!("answered");
    };
    assert_eq!(metadata.topics.len(), 1, "a repeated name is answered once");
    assert_eq!(metadata.topics[0].partitions.len(), 1000);
    assert_still_serving(&broker);
    let grown = broker.peak_resident_bytes().saturating_sub(before);
    assert!(
        grown < 64 * MIB,
        "peak resident memory grew by {grown} bytes"
    );
}

/// A request of kind `kind` carrying `entries` entries of the most expensive shape each
/// kind allows: the same name over and over, a long unknown name, many partitions.
fn wide_request(kind: ApiKey, entries: usize, name: &str) -> Request {
    let names = || vec![name.to_string(); entries];
    let partitions = || 0..entries as u32;
    match kind {
        ApiKey::Metadata => Request::Metadata(MetadataRequest { topics: names() }),
        ApiKey::DescribeCluster => {
            Request::DescribeCluster(spate::protocol::DescribeClusterRequest { topics: names() })
        }
        ApiKey::ReplicaFetch => Request::ReplicaFetch(spate::protocol::ReplicaFetchRequest {
            replica: 2,
            max_wait_ms: 0,
            max_bytes: 1 << 20,
            partitions: partitions()
                .map(|partition| spate::protocol::ReplicaFetchPartition {
                    topic: name.to_string(),
                    partition,
                    leader_epoch: 0,
                    fetch_offset: 0,
                    last_fetched_epoch: -1,
                })
                .collect(),
        }),
        ApiKey::DescribeTopics => Request::DescribeTopics(DescribeTopicsRequest { names: names() }),
        ApiKey::DeleteTopics => Request::DeleteTopics(DeleteTopicsRequest { names: names() }),
        ApiKey::CreateTopics => Request::CreateTopics(CreateTopicsRequest {
            topics: names()
                .into_iter()
                .map(|name| NewTopic {
                    name,
                    partitions: 10_000,
                    configs: Vec::new(),
                    replication_factor: 1,
                })
                .collect(),
        }),
        // Past every limit, so that no request (noise on one byte included) adds any.
        ApiKey::CreatePartitions => {
            Request::CreatePartitions(spate::protocol::CreatePartitionsRequest {
                topics: names()
                    .into_iter()
                    .map(|name| spate::protocol::NewPartitions {
                        name,
                        count: u32::MAX,
                    })
                    .collect(),
            })
        }
        ApiKey::Produce => Request::Produce(ProduceRequest {
            acks: Acks::All,
            timeout_ms: 30_000,
            topics: vec![ProduceTopic {
                name: name.to_string(),
                partitions: partitions()
                    .map(|partition| ProducePartition {
                        partition,
                        records: Bytes::from_static(b"not a batch"),
                    })
                    .collect(),
            }],
        }),
        ApiKey::Fetch => Request::Fetch(FetchRequest {
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: 1 << 20,
            topics: vec![FetchTopic {
                name: name.to_string(),
                partitions: partitions()
                    .map(|partition| FetchPartition {
                        partition,
                        offset: 0,
                        max_bytes: 1 << 20,
                    })
                    .collect(),
            }],
        }),
        ApiKey::ListOffsets => Request::ListOffsets(ListOffsetsRequest {
            topics: vec![ListOffsetsTopic {
                name: name.to_string(),
                partitions: partitions()
                    .map(|partition| ListOffsetsPartition {
                        partition,
                        timestamp: 0,
                    })
                    .collect(),
            }],
        }),
        ApiKey::OffsetCommit => Request::OffsetCommit(OffsetCommitRequest {
            group_id: "g".into(),
            generation: -1,
            member_id: String::new(),
            topics: vec![OffsetCommitTopic {
                name: name.to_string(),
                partitions: partitions()
                    .map(|partition| OffsetCommitPartition {
                        partition,
                        offset: 1,
                        metadata: String::new(),
                    })
                    .collect(),
            }],
        }),
        ApiKey::OffsetFetch => Request::OffsetFetch(OffsetFetchRequest {
            group_id: "g".into(),
            topics: vec![TopicPartitions {
                name: name.to_string(),
                partitions: partitions().collect(),
            }],
        }),
        ApiKey::JoinGroup => Request::JoinGroup(JoinGroupRequest {
            group_id: "g".into(),
            member_id: String::new(),
            client_id: "hostile".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 0,
            topics: names(),
            assignors: vec!["range".into()],
        }),
        other => panic!("{other:?} carries no entries"),
    }
}

const WIDE_KINDS: [ApiKey; 13] = [
    ApiKey::Metadata,
    ApiKey::DescribeCluster,
    ApiKey::ReplicaFetch,
    ApiKey::DescribeTopics,
    ApiKey::DeleteTopics,
    ApiKey::CreateTopics,
    ApiKey::CreatePartitions,
    ApiKey::Produce,
    ApiKey::Fetch,
    ApiKey::ListOffsets,
    ApiKey::OffsetCommit,
    ApiKey::OffsetFetch,
    ApiKey::JoinGroup,
];

#[test]
fn requests_of_every_kind_at_the_entry_limit_are_answered_within_bounded_memory() {
    let broker = broker_with_a_wide_topic();
    let before = broker.peak_resident_bytes();
    let long_name = "x".repeat(60_000);
    let mut client = RawClient::connect(&broker);
    let mut correlation_id = 0;
    for kind in WIDE_KINDS {
        let entries = if kind == ApiKey::Fetch {
            spate::limits::FETCH_PARTITIONS_MAX
        } else {
            REQUEST_ENTRIES_MAX - 1
        };
        // Answers quote names: a long one, named once, must not be repeated in the answer
        // of every partition under it. Kinds that repeat the name per entry get a short
        // unknown one (the frame limit bounds their bytes).
        let names_per_entry = matches!(
            kind,
            ApiKey::Metadata
                | ApiKey::DescribeCluster
                | ApiKey::ReplicaFetch
                | ApiKey::DescribeTopics
                | ApiKey::DeleteTopics
                | ApiKey::CreateTopics
                | ApiKey::CreatePartitions
                | ApiKey::JoinGroup
        );
        let other = if names_per_entry {
            "zz-unknown"
        } else {
            long_name.as_str()
        };
        for name in ["a", other] {
            if kind == ApiKey::DeleteTopics && name == "a" {
                continue; // the topic the other requests use
            }
            correlation_id += 1;
            let answer = client.exchange(&wide_request(kind, entries, name), correlation_id);
            let response = answer.decode(kind);
            if let Response::Failed(status) = &response {
                // A whole-request refusal is a clear one (a join names too many topics,
                // a commit comes from no member of a group with members).
                assert!(
                    matches!(
                        status.code,
                        ErrorCode::InvalidRequest | ErrorCode::GroupNotEmpty
                    ),
                    "{kind:?}: {status}"
                );
            }
        }
        // One entry more than the limit is refused whole, before anything is built.
        correlation_id += 1;
        let over = client.exchange(
            &wide_request(kind, REQUEST_ENTRIES_MAX + 1, "a"),
            correlation_id,
        );
        assert_eq!(over.code(), ErrorCode::InvalidRequest as u16, "{kind:?}");
    }
    assert_still_serving(&broker);
    let grown = broker.peak_resident_bytes().saturating_sub(before);
    assert!(
        grown < 256 * MIB,
        "peak resident memory grew by {grown} bytes"
    );
}

/// What the fuzz sends: a request of some kind, with a shape chosen to stress the bounds.
#[derive(Debug, Clone)]
struct Shape {
    kind: ApiKey,
    /// How many entries (mostly few, sometimes near or past the limit).
    entries: usize,
    /// Which name the entries use: the wide topic, an unknown one, or a long one.
    name: u8,
    /// Bytes of the body to overwrite with noise (position, byte): malformed input.
    noise: Vec<(usize, u8)>,
}

fn shapes() -> impl Strategy<Value = Shape> {
    let kind = prop::sample::select(ApiKey::ALL.to_vec());
    let entries = prop_oneof![
        8 => 0usize..40,
        1 => 900usize..1100,
        1 => (REQUEST_ENTRIES_MAX - 10)..(REQUEST_ENTRIES_MAX + 10),
    ];
    let noise = prop_oneof![
        3 => Just(Vec::new()),
        1 => prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
    ];
    (kind, entries, 0u8..3, noise).prop_map(|(kind, entries, name, noise)| Shape {
        kind,
        entries,
        name,
        noise,
    })
}

/// Builds the frame for `shape`: a valid request of its kind, then the noise over its
/// body (the frame length and header stay as they are, so the stream stays in step).
fn frame_for(shape: &Shape, correlation_id: u32) -> Vec<u8> {
    let long_name = "y".repeat(3000);
    let name = match shape.name {
        0 => "a",
        1 => "no-such-topic",
        _ => long_name.as_str(),
    };
    let entries = shape.entries;
    let request = match shape.kind {
        ApiKey::ApiVersions => Request::ApiVersions(spate::protocol::ApiVersionsRequest {
            client_id: name.to_string(),
        }),
        ApiKey::ListGroups => Request::ListGroups,
        ApiKey::DescribeBroker => Request::DescribeBroker,
        // A broker on its own refuses cluster messages.
        ApiKey::ClusterRpc => Request::ClusterRpc(Bytes::from(name.to_string())),
        ApiKey::DescribeGroup => Request::DescribeGroup(GroupIdRequest {
            group_id: name.to_string(),
        }),
        ApiKey::DeleteGroup => Request::DeleteGroup(GroupIdRequest {
            group_id: format!("fuzz-{name}"),
        }),
        ApiKey::SyncGroup => Request::SyncGroup(SyncGroupRequest {
            group_id: "g".into(),
            generation: entries as i32,
            member_id: name.to_string(),
        }),
        ApiKey::Heartbeat => Request::Heartbeat(HeartbeatRequest {
            group_id: "g".into(),
            generation: entries as i32,
            member_id: name.to_string(),
            max_wait_ms: 0,
        }),
        ApiKey::LeaveGroup => Request::LeaveGroup(LeaveGroupRequest {
            group_id: "g".into(),
            member_id: name.to_string(),
        }),
        ApiKey::Produce if shape.name == 0 && entries < 40 => {
            // Valid batches now and then, so the append path is exercised too.
            Request::Produce(ProduceRequest {
                acks: Acks::Leader,
                timeout_ms: 30_000,
                topics: vec![ProduceTopic {
                    name: "a".into(),
                    partitions: (0..entries as u32)
                        .map(|partition| ProducePartition {
                            partition: partition * 37 % 1000,
                            records: batch("fuzz", 2, 10, 0),
                        })
                        .collect(),
                }],
            })
        }
        // Never the topic every other request uses.
        ApiKey::DeleteTopics => wide_request(ApiKey::DeleteTopics, entries, "gone"),
        // A group of its own, so the join completes at once instead of waiting for the
        // members of earlier joins to rejoin.
        ApiKey::JoinGroup => match wide_request(ApiKey::JoinGroup, entries, name) {
            Request::JoinGroup(join) => Request::JoinGroup(JoinGroupRequest {
                group_id: format!("fuzz-{correlation_id}"),
                ..join
            }),
            _ => unreachable!(),
        },
        kind => wide_request(kind, entries, name),
    };
    let mut frame = request.encode(correlation_id).to_vec();
    let body_start = 4 + spate::protocol::REQUEST_HEADER_BYTES;
    if frame.len() > body_start {
        let body_bytes = frame.len() - body_start;
        for &(position, byte) in &shape.noise {
            frame[body_start + position % body_bytes] = byte;
        }
    }
    frame
}

/// A produce with acks=0 is not answered (and one that fails closes the connection); a
/// frame over the limit closes the connection.
fn expects_answer(frame: &[u8]) -> bool {
    let api_key = u16::from_be_bytes([frame[4], frame[5]]);
    let acks_none = api_key == ApiKey::Produce as u16 && frame[12] == 0;
    !acks_none && frame.len() - 4 <= spate::protocol::FRAME_BYTES_MAX_DEFAULT
}

#[test]
fn loopback_fuzz_every_request_is_answered_and_memory_stays_bounded() {
    let mut broker = broker_with_a_wide_topic();
    let before = broker.peak_resident_bytes();
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &[7; 32]),
    );
    let strategy = shapes();
    let mut client = RawClient::connect(&broker);
    let mut answered = 0;
    for correlation_id in 0..4000u32 {
        let shape = strategy.new_tree(&mut runner).unwrap().current();
        let frame = frame_for(&shape, correlation_id);
        if client.send(&frame).is_err() {
            client = RawClient::connect(&broker);
            client.send(&frame).unwrap();
        }
        if !expects_answer(&frame) {
            // Nothing comes back, and the connection may be closed: start a new one.
            client = RawClient::connect(&broker);
            continue;
        }
        match client.answer() {
            Some(answer) => {
                assert_eq!(answer.correlation_id, correlation_id, "{shape:?}");
                answered += 1;
            }
            None => panic!("no answer to {shape:?}"),
        }
        assert!(broker.is_running(), "the broker died on {shape:?}");
    }
    assert!(answered > 3500, "only {answered} answers");
    assert_still_serving(&broker);
    let grown = broker.peak_resident_bytes().saturating_sub(before);
    assert!(
        grown < 256 * MIB,
        "peak resident memory grew by {grown} bytes"
    );
}

/// Frames that arrive in pieces, with pauses between them (the broker's reader takes what
/// the socket holds, then waits on the stream), are put together byte for byte: a
/// 300 KB produce trickled in uneven pieces, then small frames cut across their headers.
#[test]
fn frames_trickled_in_pieces_are_read_whole() {
    use spate::protocol::{Acks, ProducePartition, ProduceRequest, ProduceTopic, Request};
    let broker = Broker::start(1);
    let mut admin = broker.connect();
    let created = admin.create_topic("trickle", 1, &[]).unwrap();
    assert!(created.status.is_ok(), "{}", created.status);
    let mut client = RawClient::connect(&broker);
    let produce = |tag: &str, count: usize, value_bytes: usize, correlation_id: u32| {
        Request::Produce(ProduceRequest {
            acks: Acks::All,
            timeout_ms: 30_000,
            topics: vec![ProduceTopic {
                name: "trickle".into(),
                partitions: vec![ProducePartition {
                    partition: 0,
                    records: crate::support::batch(tag, count, value_bytes, 0),
                }],
            }],
        })
        .encode(correlation_id)
    };
    let large = produce("large", 100, 3000, 1);
    assert!(large.len() > 300_000);
    let mut sent = 0;
    for (index, piece) in large.chunks(7 * 1024 + 13).enumerate() {
        client.send(piece).unwrap();
        sent += piece.len();
        if index % 5 == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(sent, large.len());
    let answer = client.answer().expect("an answer to the trickled produce");
    assert_eq!(answer.correlation_id, 1);
    assert_eq!(answer.code(), 0, "{:?}", answer.decode(ApiKey::Produce));
    // Three small frames back to back, cut every 3 bytes.
    let small: Vec<u8> = (2..5u32)
        .flat_map(|id| produce(&format!("small{id}"), 2, 10, id).to_vec())
        .collect();
    for piece in small.chunks(3) {
        client.send(piece).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    for id in 2..5u32 {
        let answer = client
            .answer()
            .expect("an answer to a trickled small produce");
        assert_eq!(answer.correlation_id, id);
        assert_eq!(answer.code(), 0);
    }
    let values = crate::server::read_partition(&mut admin, "trickle", 0, 0);
    assert_eq!(values.len(), 106);
    for (index, (offset, value)) in values.iter().enumerate() {
        assert_eq!(*offset as usize, index);
        let expected = if index < 100 {
            format!("large-{index}")
        } else {
            let small = (index - 100) / 2 + 2;
            format!("small{small}-{}", (index - 100) % 2)
        };
        assert!(value.starts_with(&expected), "{index}: {expected}");
    }
    // The value bytes themselves, not just their tags, came through unchanged.
    assert!(values[57].1.len() >= 3000);
    assert!(values[57].1[9..].bytes().all(|byte| byte == b'.'));
}

/// A client that stalls in the middle of a large frame for longer than the idle timeout,
/// while a request of its own is still being answered (a long poll keeps the connection),
/// then sends the rest: the frame is put together from exactly the bytes sent.
#[test]
fn a_large_frame_resumed_after_an_idle_stall_is_read_whole() {
    use spate::protocol::{
        Acks, FetchPartition, FetchRequest, FetchTopic, ProducePartition, ProduceRequest,
        ProduceTopic, Request,
    };
    let broker = Broker::start_flagged(1, &["--connections-max-idle-ms", "200"]);
    let mut admin = broker.connect();
    for topic in ["stalled", "quiet"] {
        assert!(admin.create_topic(topic, 1, &[]).unwrap().status.is_ok());
    }
    let mut client = RawClient::connect(&broker);
    // A long poll on an empty partition: in flight for 3 s.
    let poll = Request::Fetch(FetchRequest {
        max_wait_ms: 3_000,
        min_bytes: 1,
        max_bytes: 1 << 20,
        topics: vec![FetchTopic {
            name: "quiet".into(),
            partitions: vec![FetchPartition {
                partition: 0,
                offset: 0,
                max_bytes: 1 << 20,
            }],
        }],
    })
    .encode(1);
    client.send(&poll).unwrap();
    let produce = Request::Produce(ProduceRequest {
        acks: Acks::All,
        timeout_ms: 30_000,
        topics: vec![ProduceTopic {
            name: "stalled".into(),
            partitions: vec![ProducePartition {
                partition: 0,
                records: batch("stalled", 40, 2000, 0),
            }],
        }],
    })
    .encode(2);
    let half = produce.len() / 2;
    client.send(&produce[..half]).unwrap();
    std::thread::sleep(Duration::from_millis(700)); // past the idle timeout, more than once
    client.send(&produce[half..]).unwrap();
    let mut answers = [client.answer().unwrap(), client.answer().unwrap()];
    answers.sort_by_key(|answer| answer.correlation_id);
    assert_eq!(answers[1].correlation_id, 2);
    assert_eq!(
        answers[1].code(),
        0,
        "{:?}",
        answers[1].decode(ApiKey::Produce)
    );
    // A new connection: the first has been idle past the timeout meanwhile.
    let values = crate::server::read_partition(&mut broker.connect(), "stalled", 0, 0);
    assert_eq!(values.len(), 40);
    for (index, (_, value)) in values.iter().enumerate() {
        assert!(value.starts_with(&format!("stalled-{index}")), "{index}");
    }
}
