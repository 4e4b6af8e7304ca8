use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

fn name() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z0-9._-]{1,40}", "\\PC{0,10}"]
}

fn blob() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

fn status() -> impl Strategy<Value = Status> {
    (0u16..26, name()).prop_map(|(code, message)| Status {
        code: ErrorCode::from_u16(code).unwrap(),
        message,
    })
}

fn configs() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((name(), name()), 0..4)
}

fn partitions<T: std::fmt::Debug>(inner: BoxedStrategy<T>) -> impl Strategy<Value = Vec<T>> {
    prop::collection::vec(inner, 0..4)
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        name().prop_map(|client_id| Request::ApiVersions(ApiVersionsRequest { client_id })),
        prop::collection::vec(name(), 0..4)
            .prop_map(|topics| Request::Metadata(MetadataRequest { topics })),
        prop::collection::vec((name(), any::<u32>(), configs(), any::<u16>()), 0..3).prop_map(
            |topics| Request::CreateTopics(CreateTopicsRequest {
                topics: topics
                    .into_iter()
                    .map(|(name, partitions, configs, replication_factor)| NewTopic {
                        name,
                        partitions,
                        configs,
                        replication_factor,
                    })
                    .collect(),
            })
        ),
        prop::collection::vec(name(), 0..4)
            .prop_map(|names| Request::DeleteTopics(DeleteTopicsRequest { names })),
        prop::collection::vec((name(), any::<u32>()), 0..4).prop_map(|topics| {
            Request::CreatePartitions(CreatePartitionsRequest {
                topics: topics
                    .into_iter()
                    .map(|(name, count)| NewPartitions { name, count })
                    .collect(),
            })
        }),
        prop::collection::vec(name(), 0..4)
            .prop_map(|names| Request::DescribeTopics(DescribeTopicsRequest { names })),
        (
            prop::sample::select(vec![Acks::None, Acks::Leader, Acks::All]),
            any::<u32>(),
            prop::collection::vec((name(), partitions((any::<u32>(), blob()).boxed())), 0..3),
        )
            .prop_map(|(acks, timeout_ms, topics)| {
                Request::Produce(ProduceRequest {
                    acks,
                    timeout_ms,
                    topics: topics
                        .into_iter()
                        .map(|(name, partitions)| ProduceTopic {
                            name,
                            partitions: partitions
                                .into_iter()
                                .map(|(partition, records)| ProducePartition { partition, records })
                                .collect(),
                        })
                        .collect(),
                })
            }),
        (
            any::<(u32, u32, u32)>(),
            prop::collection::vec((name(), partitions(any::<(u32, i64, u32)>().boxed())), 0..3),
        )
            .prop_map(|((max_wait_ms, min_bytes, max_bytes), topics)| {
                Request::Fetch(FetchRequest {
                    max_wait_ms,
                    min_bytes,
                    max_bytes,
                    topics: topics
                        .into_iter()
                        .map(|(name, partitions)| FetchTopic {
                            name,
                            partitions: partitions
                                .into_iter()
                                .map(|(partition, offset, max_bytes)| FetchPartition {
                                    partition,
                                    offset,
                                    max_bytes,
                                })
                                .collect(),
                        })
                        .collect(),
                })
            }),
        prop::collection::vec((name(), partitions(any::<(u32, i64)>().boxed())), 0..3).prop_map(
            |topics| {
                Request::ListOffsets(ListOffsetsRequest {
                    topics: topics
                        .into_iter()
                        .map(|(name, partitions)| ListOffsetsTopic {
                            name,
                            partitions: partitions
                                .into_iter()
                                .map(|(partition, timestamp)| ListOffsetsPartition {
                                    partition,
                                    timestamp,
                                })
                                .collect(),
                        })
                        .collect(),
                })
            }
        ),
    ]
}

fn response() -> impl Strategy<Value = (ApiKey, Response)> {
    let fetch_partition = (any::<u32>(), status(), any::<i64>(), any::<i64>(), blob()).prop_map(
        |(partition, status, high_watermark, log_start_offset, records)| FetchPartitionResponse {
            partition,
            status,
            high_watermark,
            log_start_offset,
            records,
        },
    );
    prop_oneof![
        (
            name(),
            prop::collection::vec(any::<(u16, u16, u16)>(), 0..9),
            any::<(u16, u16)>()
        )
            .prop_map(|(broker_version, apis, (shard_count, shard_id))| {
                let apis = apis
                    .into_iter()
                    .map(|(api_key, min_version, max_version)| ApiVersionRange {
                        api_key,
                        min_version,
                        max_version,
                    })
                    .collect();
                (
                    ApiKey::ApiVersions,
                    Response::ApiVersions(ApiVersionsResponse {
                        broker_version,
                        apis,
                        shard_count,
                        shard_id,
                    }),
                )
            }),
        (
            prop::collection::vec((any::<u16>(), name(), any::<u16>()), 0..4),
            prop::collection::vec(
                (
                    name(),
                    status(),
                    prop::collection::vec(any::<(u32, u16)>(), 0..5)
                ),
                0..4
            ),
        )
            .prop_map(|(shards, topics)| {
                let shards = shards
                    .into_iter()
                    .map(|(shard_id, host, port)| ShardAddress {
                        shard_id,
                        host,
                        port,
                    })
                    .collect();
                let topics = topics
                    .into_iter()
                    .map(|(name, status, partitions)| TopicMetadata {
                        name,
                        status,
                        partitions: partitions
                            .into_iter()
                            .map(|(partition, shard_id)| PartitionMetadata {
                                partition,
                                shard_id,
                            })
                            .collect(),
                    })
                    .collect();
                (
                    ApiKey::Metadata,
                    Response::Metadata(MetadataResponse { shards, topics }),
                )
            }),
        prop::collection::vec((name(), status()), 0..4).prop_map(|topics| {
            let topics = topics
                .into_iter()
                .map(|(name, status)| TopicStatus { name, status })
                .collect();
            (ApiKey::CreateTopics, Response::CreateTopics(topics))
        }),
        prop::collection::vec((name(), status()), 0..4).prop_map(|topics| {
            let topics = topics
                .into_iter()
                .map(|(name, status)| TopicStatus { name, status })
                .collect();
            (ApiKey::CreatePartitions, Response::CreatePartitions(topics))
        }),
        prop::collection::vec((name(), status(), any::<u32>(), configs()), 0..4).prop_map(
            |topics| {
                let topics = topics
                    .into_iter()
                    .map(|(name, status, partitions, configs)| TopicDescription {
                        name,
                        status,
                        partitions,
                        configs,
                    })
                    .collect();
                (ApiKey::DescribeTopics, Response::DescribeTopics(topics))
            }
        ),
        prop::collection::vec(
            (
                name(),
                prop::collection::vec((any::<u32>(), status(), any::<(i64, i64)>()), 0..4)
            ),
            0..3
        )
        .prop_map(|topics| {
            let topics = topics
                .into_iter()
                .map(|(name, partitions)| ProduceTopicResponse {
                    name,
                    partitions: partitions
                        .into_iter()
                        .map(|(partition, status, (base_offset, log_end_offset))| {
                            ProducePartitionResponse {
                                partition,
                                status,
                                base_offset,
                                log_end_offset,
                            }
                        })
                        .collect(),
                })
                .collect();
            (
                ApiKey::Produce,
                Response::Produce(ProduceResponse { topics }),
            )
        }),
        prop::collection::vec((name(), prop::collection::vec(fetch_partition, 0..4)), 0..3)
            .prop_map(|topics| {
                let topics = topics
                    .into_iter()
                    .map(|(name, partitions)| FetchTopicResponse { name, partitions })
                    .collect();
                (ApiKey::Fetch, Response::Fetch(FetchResponse { topics }))
            }),
        (1u16..26, name()).prop_map(|(code, message)| {
            let status = Status {
                code: ErrorCode::from_u16(code).unwrap(),
                message,
            };
            (ApiKey::Produce, Response::Failed(status))
        }),
    ]
}

fn topic_partitions() -> impl Strategy<Value = Vec<TopicPartitions>> {
    prop::collection::vec(
        (name(), prop::collection::vec(any::<u32>(), 0..4))
            .prop_map(|(name, partitions)| TopicPartitions { name, partitions }),
        0..3,
    )
}

fn strings() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(name(), 0..4)
}

fn group_request() -> impl Strategy<Value = Request> {
    let commit_partition =
        (any::<u32>(), any::<i64>(), name()).prop_map(|(partition, offset, metadata)| {
            OffsetCommitPartition {
                partition,
                offset,
                metadata,
            }
        });
    prop_oneof![
        (
            name(),
            name(),
            name(),
            any::<(u32, u32)>(),
            strings(),
            strings()
        )
            .prop_map(
                |(group_id, member_id, client_id, (session, rebalance), topics, assignors)| {
                    Request::JoinGroup(JoinGroupRequest {
                        group_id,
                        member_id,
                        client_id,
                        session_timeout_ms: session,
                        rebalance_timeout_ms: rebalance,
                        topics,
                        assignors,
                    })
                }
            ),
        (name(), any::<i32>(), name()).prop_map(|(group_id, generation, member_id)| {
            Request::SyncGroup(SyncGroupRequest {
                group_id,
                generation,
                member_id,
            })
        }),
        (name(), any::<i32>(), name(), any::<u32>()).prop_map(
            |(group_id, generation, member_id, max_wait_ms)| {
                Request::Heartbeat(HeartbeatRequest {
                    group_id,
                    generation,
                    member_id,
                    max_wait_ms,
                })
            }
        ),
        (name(), name()).prop_map(|(group_id, member_id)| {
            Request::LeaveGroup(LeaveGroupRequest {
                group_id,
                member_id,
            })
        }),
        (
            name(),
            any::<i32>(),
            name(),
            prop::collection::vec(
                (name(), prop::collection::vec(commit_partition, 0..3)),
                0..3
            )
        )
            .prop_map(|(group_id, generation, member_id, topics)| {
                Request::OffsetCommit(OffsetCommitRequest {
                    group_id,
                    generation,
                    member_id,
                    topics: topics
                        .into_iter()
                        .map(|(name, partitions)| OffsetCommitTopic { name, partitions })
                        .collect(),
                })
            }),
        (name(), topic_partitions()).prop_map(|(group_id, topics)| {
            Request::OffsetFetch(OffsetFetchRequest { group_id, topics })
        }),
        Just(Request::ListGroups),
        Just(Request::DescribeBroker),
        name().prop_map(|group_id| Request::DescribeGroup(GroupIdRequest { group_id })),
        name().prop_map(|group_id| Request::DeleteGroup(GroupIdRequest { group_id })),
    ]
}

fn group_response() -> impl Strategy<Value = (ApiKey, Response)> {
    let member = (name(), name(), any::<u32>(), strings(), topic_partitions()).prop_map(
        |(member_id, client_id, session_timeout_ms, topics, assignment)| GroupMemberDescription {
            member_id,
            client_id,
            session_timeout_ms,
            topics,
            assignment,
        },
    );
    let fetched = (any::<u32>(), status(), any::<i64>(), name()).prop_map(
        |(partition, status, offset, metadata)| OffsetFetchPartition {
            partition,
            status,
            offset,
            metadata,
        },
    );
    prop_oneof![
        (any::<i32>(), name(), name(), name(), any::<u32>()).prop_map(
            |(generation, member_id, leader_id, assignor, members)| (
                ApiKey::JoinGroup,
                Response::JoinGroup(JoinGroupResponse {
                    generation,
                    member_id,
                    leader_id,
                    assignor,
                    members,
                })
            )
        ),
        topic_partitions()
            .prop_map(|assignment| (ApiKey::SyncGroup, Response::SyncGroup(assignment))),
        Just((ApiKey::Heartbeat, Response::Heartbeat)),
        Just((ApiKey::LeaveGroup, Response::LeaveGroup)),
        Just((ApiKey::DeleteGroup, Response::DeleteGroup)),
        (
            name(),
            any::<u64>(),
            prop::collection::vec(
                (
                    any::<u16>(),
                    any::<u32>(),
                    any::<u32>(),
                    any::<u32>(),
                    any::<u64>(),
                    any::<[u64; 4]>(),
                    any::<[u32; 2]>(),
                    any::<[u64; 4]>()
                ),
                0..4
            )
        )
            .prop_map(|(broker_version, open_files, shards)| {
                let shards = shards
                    .into_iter()
                    .map(
                        |(
                            shard_id,
                            partitions,
                            connections,
                            long_poll_waits,
                            forwarded_requests,
                            memory,
                            files,
                            budgets,
                        )| {
                            ShardDescription {
                                shard_id,
                                partitions,
                                connections,
                                long_poll_waits,
                                forwarded_requests,
                                memory_budget_bytes: memory[0],
                                tail_cache_bytes: memory[1],
                                tail_cache_budget_bytes: memory[2],
                                tail_cache_evicted_batches: memory[3],
                                segment_files_open: files[0],
                                segment_files_max: files[1],
                                request_bytes: budgets[0],
                                request_budget_bytes: budgets[1],
                                read_ahead_bytes: budgets[2],
                                read_ahead_budget_bytes: budgets[3],
                            }
                        },
                    )
                    .collect();
                (
                    ApiKey::DescribeBroker,
                    Response::DescribeBroker(BrokerDescription {
                        broker_version,
                        open_files,
                        shards,
                    }),
                )
            }),
        prop::collection::vec(
            (
                name(),
                prop::collection::vec((any::<u32>(), status()), 0..3)
            ),
            0..3
        )
        .prop_map(|topics| {
            let topics = topics
                .into_iter()
                .map(|(name, partitions)| OffsetCommitTopicResponse {
                    name,
                    partitions: partitions
                        .into_iter()
                        .map(|(partition, status)| PartitionStatus { partition, status })
                        .collect(),
                })
                .collect();
            (ApiKey::OffsetCommit, Response::OffsetCommit(topics))
        }),
        prop::collection::vec((name(), prop::collection::vec(fetched, 0..3)), 0..3).prop_map(
            |topics| {
                let topics = topics
                    .into_iter()
                    .map(|(name, partitions)| OffsetFetchTopic { name, partitions })
                    .collect();
                (ApiKey::OffsetFetch, Response::OffsetFetch(topics))
            }
        ),
        prop::collection::vec((name(), name(), any::<u32>()), 0..4).prop_map(|groups| {
            let groups = groups
                .into_iter()
                .map(|(group_id, state, members)| GroupListing {
                    group_id,
                    state,
                    members,
                })
                .collect();
            (ApiKey::ListGroups, Response::ListGroups(groups))
        }),
        (
            name(),
            name(),
            any::<i32>(),
            name(),
            name(),
            prop::collection::vec(member, 0..3)
        )
            .prop_map(
                |(group_id, state, generation, assignor, leader_id, members)| {
                    (
                        ApiKey::DescribeGroup,
                        Response::DescribeGroup(GroupDescription {
                            group_id,
                            state,
                            generation,
                            assignor,
                            leader_id,
                            members,
                        }),
                    )
                }
            ),
    ]
}

/// The cluster's requests (19 to 21) and their answers, with the request each answers.
fn cluster_exchange() -> impl Strategy<Value = (Request, Response)> {
    let fetched = (
        name(),
        any::<u32>(),
        status(),
        any::<(i64, i64, i32, i64)>(),
        blob(),
    )
        .prop_map(|(topic, partition, status, numbers, records)| {
            ReplicaFetchPartitionResponse {
                topic,
                partition,
                status,
                high_watermark: numbers.0,
                log_start_offset: numbers.1,
                diverging_epoch: numbers.2,
                diverging_end_offset: numbers.3,
                records,
            }
        });
    let asked = (name(), any::<(u32, u32, i64, i32)>()).prop_map(|(topic, numbers)| {
        ReplicaFetchPartition {
            topic,
            partition: numbers.0,
            leader_epoch: numbers.1,
            fetch_offset: numbers.2,
            last_fetched_epoch: numbers.3,
        }
    });
    let node = (any::<u64>(), name(), name(), any::<u16>(), any::<bool>()).prop_map(
        |(id, address, kafka_address, shards, fenced)| NodeDescription {
            id,
            address,
            kafka_address,
            shards,
            fenced,
        },
    );
    let placed = (
        any::<(u32, i64, u32)>(),
        prop::collection::vec(any::<u64>(), 0..4),
        prop::collection::vec(any::<u64>(), 0..4),
    )
        .prop_map(|(numbers, replicas, isr)| PartitionReplicas {
            partition: numbers.0,
            leader: numbers.1,
            leader_epoch: numbers.2,
            replicas,
            isr,
        });
    let topic = (name(), status(), prop::collection::vec(placed, 0..3)).prop_map(
        |(name, status, partitions)| TopicReplicas {
            name,
            status,
            partitions,
        },
    );
    prop_oneof![
        (blob(), blob()).prop_map(|(asked, answered)| (
            Request::ClusterRpc(asked),
            Response::ClusterRpc(answered)
        )),
        (
            strings(),
            any::<(u64, bool, i64)>(),
            prop::collection::vec(node, 0..4),
            prop::collection::vec(topic, 0..3)
        )
            .prop_map(|(topics, numbers, nodes, described)| (
                Request::DescribeCluster(DescribeClusterRequest { topics }),
                Response::DescribeCluster(ClusterDescription {
                    node_id: numbers.0,
                    clustered: numbers.1,
                    controller: numbers.2,
                    nodes,
                    topics: described,
                })
            )),
        (
            any::<(u64, u32, u32)>(),
            prop::collection::vec(asked, 0..4),
            prop::collection::vec(fetched, 0..4)
        )
            .prop_map(|(numbers, partitions, answers)| (
                Request::ReplicaFetch(ReplicaFetchRequest {
                    replica: numbers.0,
                    max_wait_ms: numbers.1,
                    max_bytes: numbers.2,
                    partitions,
                }),
                Response::ReplicaFetch(answers)
            )),
    ]
}

/// Frames a request and takes it apart again through the stream decoder.
fn through_the_wire(request: &Request, correlation_id: u32) -> (RequestHeader, Request) {
    let mut buffer = request.encode(correlation_id);
    let frame = split_frame(&mut buffer, usize::MAX)
        .unwrap()
        .expect("a whole frame");
    assert!(buffer.is_empty());
    let (header, body) = decode_request_header(frame).unwrap();
    (header, Request::decode(&header, body).unwrap())
}

proptest! {
    #[test]
    fn requests_round_trip(request in request(), correlation_id in any::<u32>()) {
        let (header, decoded) = through_the_wire(&request, correlation_id);
        prop_assert_eq!(header.correlation_id, correlation_id);
        prop_assert_eq!(header.api_key, request.api_key() as u16);
        prop_assert_eq!(decoded, request);
    }

    #[test]
    fn responses_round_trip((api_key, response) in response(), correlation_id in any::<u32>()) {
        let mut buffer = response.encode(correlation_id);
        let frame = split_frame(&mut buffer, usize::MAX).unwrap().expect("a whole frame");
        prop_assert!(buffer.is_empty());
        prop_assert_eq!(u32::from_be_bytes(frame[..4].try_into().unwrap()), correlation_id);
        let decoded = Response::decode(api_key, frame.slice(RESPONSE_HEADER_BYTES..)).unwrap();
        prop_assert_eq!(decoded, response);
    }

    #[test]
    fn any_truncation_of_a_request_is_an_error_not_a_panic(request in request(), cut in any::<prop::sample::Index>()) {
        let frame = request.encode(7);
        let body_start = 4 + REQUEST_HEADER_BYTES;
        prop_assume!(frame.len() > body_start);
        let (header, body) = decode_request_header(frame.freeze().slice(4..)).unwrap();
        let cut = cut.index(body.len().max(1));
        prop_assume!(cut < body.len());
        prop_assert!(Request::decode(&header, body.slice(..cut)).is_err());
        let mut longer = BytesMut::from(&body[..]);
        longer.extend_from_slice(&[0]);
        prop_assert!(Request::decode(&header, longer.freeze()).is_err(), "trailing bytes are an error");
    }

    #[test]
    fn cluster_requests_and_answers_round_trip((request, response) in cluster_exchange(), correlation_id in any::<u32>(), cut in any::<prop::sample::Index>()) {
        let (_, decoded) = through_the_wire(&request, correlation_id);
        prop_assert_eq!(&decoded, &request);
        let frame = response.encode(correlation_id).freeze();
        let body = frame.slice(4 + RESPONSE_HEADER_BYTES..);
        prop_assert_eq!(Response::decode(request.api_key(), body.clone())?, response);
        // Any cut of the answer is an error, never a panic.
        let cut = cut.index(body.len().max(1));
        if cut < body.len() {
            prop_assert!(Response::decode(request.api_key(), body.slice(..cut)).is_err());
        }
    }

    #[test]
    fn group_requests_round_trip(request in group_request(), correlation_id in any::<u32>()) {
        let (_, decoded) = through_the_wire(&request, correlation_id);
        prop_assert_eq!(decoded, request);
    }

    #[test]
    fn group_responses_round_trip((api_key, response) in group_response(), correlation_id in any::<u32>()) {
        let frame = response.encode(correlation_id).freeze();
        prop_assert_eq!(Response::decode(api_key, frame.slice(8..)).unwrap(), response);
    }

    #[test]
    fn any_truncation_of_a_group_request_is_an_error(request in group_request(), cut in any::<prop::sample::Index>()) {
        let frame = request.encode(1).freeze();
        let (header, body) = decode_request_header(frame.slice(4..)).unwrap();
        if !body.is_empty() {
            let cut = cut.index(body.len());
            prop_assert!(Request::decode(&header, body.slice(..cut)).is_err());
        }
    }

    #[test]
    fn hostile_bytes_never_panic(api_key in 0u16..24, body in prop::collection::vec(any::<u8>(), 0..200)) {
        let header = RequestHeader { api_key, api_version: 1, correlation_id: 1 };
        let _ = Request::decode(&header, Bytes::from(body.clone()));
        if let Ok(key) = ApiKey::from_u16(api_key) {
            let _ = Response::decode(key, Bytes::from(body));
        }
    }
}

#[test]
fn fetch_pieces_carry_the_records_without_copying_them() {
    let records = Bytes::from_static(b"batch bytes stand here");
    let fetch = FetchResponse {
        topics: vec![FetchTopicResponse {
            name: "t".into(),
            partitions: vec![
                FetchPartitionResponse {
                    partition: 0,
                    status: Status::ok(),
                    high_watermark: 10,
                    log_start_offset: 0,
                    records: records.clone(),
                },
                FetchPartitionResponse {
                    partition: 1,
                    status: Status::error(ErrorCode::OffsetOutOfRange, "offset 99 is past the end"),
                    high_watermark: 3,
                    log_start_offset: 0,
                    records: Bytes::new(),
                },
            ],
        }],
    };
    let pieces = fetch.clone().into_pieces(42);
    let mut joined = BytesMut::new();
    let mut payload_pointers = Vec::new();
    for piece in &pieces {
        match piece {
            Piece::Encoded(bytes) => joined.extend_from_slice(bytes),
            Piece::Payload(payload) => {
                payload_pointers.push(payload.as_ptr());
                joined.extend_from_slice(payload);
            }
        }
    }
    assert_eq!(
        payload_pointers,
        vec![records.as_ptr()],
        "the payload is the caller's bytes"
    );
    assert_eq!(joined, Response::Fetch(fetch.clone()).encode(42));
    let frame = split_frame(&mut joined, usize::MAX).unwrap().unwrap();
    let decoded = Response::decode(ApiKey::Fetch, frame.slice(4..)).unwrap();
    assert_eq!(decoded, Response::Fetch(fetch));
}

#[test]
fn frames_are_split_from_a_stream_and_bounded() {
    let first = Request::Metadata(MetadataRequest {
        topics: vec!["a".into()],
    })
    .encode(1);
    let second = Request::ApiVersions(ApiVersionsRequest {
        client_id: "c".into(),
    })
    .encode(2);
    let mut stream = BytesMut::new();
    stream.extend_from_slice(&first);
    stream.extend_from_slice(&second[..5]);
    assert!(split_frame(&mut stream, 1024).unwrap().is_some());
    assert!(
        split_frame(&mut stream, 1024).unwrap().is_none(),
        "partial frame waits"
    );
    stream.extend_from_slice(&second[5..]);
    let frame = split_frame(&mut stream, 1024).unwrap().unwrap();
    assert_eq!(decode_request_header(frame).unwrap().0.correlation_id, 2);
    assert!(stream.is_empty());

    let mut huge = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
    let error = split_frame(&mut huge, FRAME_BYTES_MAX_DEFAULT).unwrap_err();
    assert!(
        matches!(error, ProtocolError::FrameTooLarge { .. }),
        "{error}"
    );
    assert!(
        huge.capacity() < 1024,
        "nothing allocated for a hostile length"
    );
}

#[test]
fn hostile_counts_are_refused_before_allocating() {
    // A Metadata request claiming four billion topic names in a 4-byte body.
    let header = RequestHeader {
        api_key: ApiKey::Metadata as u16,
        api_version: 1,
        correlation_id: 1,
    };
    let error =
        Request::decode(&header, Bytes::from_static(&[0xff, 0xff, 0xff, 0xff])).unwrap_err();
    assert!(matches!(error, ProtocolError::Invalid { .. }), "{error}");
    let unknown = RequestHeader {
        api_key: 99,
        ..header
    };
    assert_eq!(
        Request::decode(&unknown, Bytes::new()).unwrap_err(),
        ProtocolError::UnknownApiKey(99)
    );
    let bad_acks = {
        let mut body = BytesMut::new();
        body.extend_from_slice(&[5]);
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        body.freeze()
    };
    let produce = RequestHeader {
        api_key: ApiKey::Produce as u16,
        ..header
    };
    assert!(Request::decode(&produce, bad_acks).is_err());
}

#[test]
fn versions_are_negotiated_from_both_ranges() {
    let response = |min, max| ApiVersionsResponse {
        broker_version: "x".into(),
        apis: vec![ApiVersionRange {
            api_key: ApiKey::Fetch as u16,
            min_version: min,
            max_version: max,
        }],
        shard_count: 1,
        shard_id: 0,
    };
    assert_eq!(response(1, 5).negotiate(ApiKey::Fetch), Some(1));
    assert_eq!(response(0, 1).negotiate(ApiKey::Fetch), Some(1));
    assert_eq!(
        response(2, 3).negotiate(ApiKey::Fetch),
        None,
        "no common version"
    );
    assert_eq!(
        response(1, 1).negotiate(ApiKey::Produce),
        None,
        "kind not offered"
    );
}

#[test]
fn long_status_messages_are_cut_not_fatal() {
    let message = format!("topic {} does not exist", "é".repeat(40_000));
    let response = Response::Failed(Status::error(ErrorCode::UnknownTopicOrPartition, message));
    let mut frame = response.encode(3);
    let frame = split_frame(&mut frame, usize::MAX).unwrap().unwrap();
    match Response::decode(ApiKey::Metadata, frame.slice(4..)).unwrap() {
        Response::Failed(status) => {
            assert!(status.message.len() <= STATUS_MESSAGE_BYTES_MAX);
            assert!(status.message.starts_with("topic é"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_request_with_more_entries_than_the_limit_is_refused_and_others_are_counted() {
    let header = |api_key: ApiKey| RequestHeader {
        api_key: api_key as u16,
        api_version: 1,
        correlation_id: 1,
    };
    let metadata = |names: usize| {
        let frame = Request::Metadata(MetadataRequest {
            topics: vec![String::new(); names],
        })
        .encode(1);
        frame.freeze().slice(4 + REQUEST_HEADER_BYTES..)
    };
    let limit = crate::limits::REQUEST_ENTRIES_MAX;
    let (_, entries) =
        Request::decode_counting(&header(ApiKey::Metadata), metadata(limit)).unwrap();
    assert_eq!(entries, limit);
    let error = Request::decode(&header(ApiKey::Metadata), metadata(limit + 1)).unwrap_err();
    assert_eq!(
        error,
        ProtocolError::TooManyEntries {
            what: "topics",
            max: limit
        }
    );
    // Entries count at every level: topics and the partitions under them.
    let produce = Request::Produce(ProduceRequest {
        acks: Acks::All,
        timeout_ms: 1,
        topics: (0..3)
            .map(|topic| ProduceTopic {
                name: format!("t{topic}"),
                partitions: (0..limit as u32 / 3)
                    .map(|partition| ProducePartition {
                        partition,
                        records: Bytes::new(),
                    })
                    .collect(),
            })
            .collect(),
    });
    let body = produce.encode(1).freeze().slice(4 + REQUEST_HEADER_BYTES..);
    assert!(matches!(
        Request::decode(&header(ApiKey::Produce), body),
        Err(ProtocolError::TooManyEntries { .. })
    ));
    // Responses are not limited: a client reads whatever metadata the broker has.
    let topics = (0..limit + 1)
        .map(|index| TopicMetadata {
            name: format!("t{index}"),
            status: Status::ok(),
            partitions: Vec::new(),
        })
        .collect();
    let response = Response::Metadata(MetadataResponse {
        shards: Vec::new(),
        topics,
    });
    let frame = response.encode(1).freeze();
    assert!(Response::decode(ApiKey::Metadata, frame.slice(8..)).is_ok());
}

#[test]
fn status_messages_are_cut_when_made_so_many_answers_stay_small() {
    let status = Status::error(ErrorCode::UnknownTopicOrPartition, "é".repeat(40_000));
    assert!(status.message.len() <= STATUS_MESSAGE_BYTES_MAX);
    assert!(status.message.capacity() <= STATUS_MESSAGE_BYTES_MAX);
    assert!(status.message.starts_with('é'));
}
