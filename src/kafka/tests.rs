//! The Kafka codec: round trips of what Spate's Kafka client sends, frames captured from
//! real clients, and hostile bytes (counts and lengths larger than what follows).

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

/// A frame without its length prefix.
fn body_of(frame: BytesMut) -> Bytes {
    frame.freeze().slice(4..)
}

fn round_trip(request: KafkaRequest, version: i16) -> KafkaRequest {
    let frame = body_of(encode_request(&request, version, 7, "spate-test"));
    let (header, body) = decode_header(frame).expect("header");
    assert_eq!(header.api_key, request.api_key());
    assert_eq!(header.api_version, version);
    assert_eq!(header.correlation_id, 7);
    assert_eq!(header.client_id.as_deref(), Some("spate-test"));
    decode_request(&header, body).expect("body").0
}

#[test]
fn client_requests_round_trip_at_every_supported_version() {
    let produce = KafkaRequest::Produce(ProduceRequest {
        transactional_id: None,
        acks: -1,
        timeout_ms: 30_000,
        topics: vec![ProduceTopic {
            name: "orders".into(),
            partitions: vec![ProducePartition {
                index: 3,
                records: Some(Bytes::from_static(b"batch bytes")),
            }],
        }],
    });
    let fetch = KafkaRequest::Fetch(FetchRequest {
        max_wait_ms: 500,
        min_bytes: 1,
        max_bytes: 1 << 20,
        isolation_level: 0,
        session_id: 0,
        session_epoch: -1,
        topics: vec![FetchTopic {
            topic: "orders".into(),
            partitions: vec![FetchPartition {
                partition: 1,
                fetch_offset: 42,
                partition_max_bytes: 65536,
            }],
        }],
    });
    let metadata = KafkaRequest::Metadata(MetadataRequest {
        topics: Some(vec!["orders".into()]),
        allow_auto_topic_creation: true,
    });
    let list = KafkaRequest::ListOffsets(ListOffsetsRequest {
        isolation_level: 0,
        topics: vec![ListOffsetsTopic {
            name: "orders".into(),
            partitions: vec![ListOffsetsPartition {
                partition_index: 0,
                timestamp: -2,
            }],
        }],
    });
    let cluster = KafkaRequest::DescribeCluster(DescribeClusterRequest {
        include_cluster_authorized_operations: true,
    });
    let grow = KafkaRequest::CreatePartitions(CreatePartitionsRequest {
        topics: vec![CreatePartitionsTopic {
            name: "orders".into(),
            count: 12,
            assignments: 0,
        }],
        timeout_ms: 30_000,
        validate_only: false,
    });
    for (request, api_key) in [
        (grow, api::CREATE_PARTITIONS),
        (produce, api::PRODUCE),
        (fetch, api::FETCH),
        (metadata, api::METADATA),
        (list, api::LIST_OFFSETS),
        (cluster, api::DESCRIBE_CLUSTER),
    ] {
        let range = api_range(api_key).unwrap();
        for version in range.min..=range.max {
            let mut expected = request.clone();
            // Fields a version does not carry come back as their defaults.
            if let KafkaRequest::Fetch(fetch) = &mut expected
                && version < 7
            {
                fetch.session_epoch = -1;
            }
            if let KafkaRequest::Metadata(metadata) = &mut expected
                && version < 4
            {
                metadata.allow_auto_topic_creation = true;
            }
            assert_eq!(round_trip(request.clone(), version), expected, "v{version}");
        }
    }
}

#[test]
fn a_describe_cluster_answer_is_flexible_throughout_and_reads_back() {
    let answer = DescribeClusterResponse {
        cluster_id: "spate".into(),
        controller_id: 0,
        brokers: vec![
            MetadataBroker {
                node_id: 0,
                host: "127.0.0.1".into(),
                port: 9093,
            },
            MetadataBroker {
                node_id: 1,
                host: "127.0.0.1".into(),
                port: 9094,
            },
        ],
    };
    let frame = answer.frame(0, 5).freeze();
    assert_eq!(&frame[4..8], &5i32.to_be_bytes());
    let body = frame.slice(8..);
    assert_eq!(
        DescribeClusterResponse::decode(body.clone()).unwrap(),
        answer
    );
    // Nothing may be cut off: every shorter body is an error.
    for cut in 0..body.len() {
        assert!(
            DescribeClusterResponse::decode(body.slice(..cut)).is_err(),
            "cut at {cut}"
        );
    }
}

/// kafka-python 3.0.12's first request: ApiVersions v4, which Spate does not serve.
const KAFKA_PYTHON_API_VERSIONS_V4: &[u8] =
    b"\x00\x12\x00\x04\x00\x00\x00\x01\x00\x13kafka-python-3.0.12\x00\rkafka-python\x073.0.12\x00";
/// Its Metadata v8 request for every topic.
const KAFKA_PYTHON_METADATA_V8: &[u8] =
    b"\x00\x03\x00\x08\x00\x00\x00\x03\x00\x13kafka-python-3.0.12\x00\x00\x00\x00\x01\x00\x00";

#[test]
fn a_newer_api_versions_is_refused_with_the_supported_ranges_in_the_v0_layout() {
    let frame = Bytes::from_static(KAFKA_PYTHON_API_VERSIONS_V4);
    assert_eq!(peek_header(&frame).unwrap(), (api::API_VERSIONS, 4, 1));
    assert!(matches!(
        decode_header(frame),
        Err(KafkaError::UnsupportedVersion { version: 4, .. })
    ));
    let answer = ApiVersionsResponse {
        error_code: error::UNSUPPORTED_VERSION,
    }
    .frame(4, 1)
    .freeze();
    let (code, ranges) = decode_api_versions(answer.slice(8..)).unwrap();
    assert_eq!(code, error::UNSUPPORTED_VERSION);
    assert_eq!(ranges.len(), SUPPORTED_APIS.len());
    assert!(ranges.contains(&(api::API_VERSIONS, 0, 3)));
}

#[test]
fn kafka_python_metadata_decodes() {
    let (header, body) = decode_header(Bytes::from_static(KAFKA_PYTHON_METADATA_V8)).unwrap();
    assert_eq!(header.client_id.as_deref(), Some("kafka-python-3.0.12"));
    let (request, _) = decode_request(&header, body).unwrap();
    assert_eq!(
        request,
        KafkaRequest::Metadata(MetadataRequest {
            topics: Some(Vec::new()),
            allow_auto_topic_creation: true,
        })
    );
}

#[test]
fn a_huge_array_count_is_an_error_not_an_allocation() {
    // Metadata v1 with a topic count of 2^31-1 and nothing after it.
    let mut frame = BytesMut::new();
    frame.put_i16(api::METADATA);
    frame.put_i16(1);
    frame.put_i32(9);
    frame.put_i16(-1);
    frame.put_i32(i32::MAX);
    let (header, body) = decode_header(frame.freeze()).unwrap();
    assert!(decode_request(&header, body).is_err());
}

#[test]
fn a_string_longer_than_the_frame_is_an_error() {
    let mut frame = BytesMut::new();
    frame.put_i16(api::FIND_COORDINATOR);
    frame.put_i16(1);
    frame.put_i32(9);
    frame.put_i16(-1);
    frame.put_i16(i16::MAX);
    frame.put_slice(b"short");
    let (header, body) = decode_header(frame.freeze()).unwrap();
    assert!(decode_request(&header, body).is_err());
}

#[test]
fn unknown_keys_and_versions_are_named() {
    let mut frame = BytesMut::new();
    frame.put_i16(999);
    frame.put_i16(0);
    frame.put_i32(1);
    frame.put_i16(-1);
    assert_eq!(
        decode_header(frame.freeze()),
        Err(KafkaError::UnknownApiKey(999))
    );
    assert!(peek_header(&[0, 1, 2]).is_err());
}

#[test]
fn consumer_protocol_round_trips() {
    let topics = vec!["a".to_string(), "b".to_string()];
    assert_eq!(
        consumer::decode_subscription(consumer::encode_subscription(&topics)).unwrap(),
        topics
    );
    let assignment: std::collections::BTreeMap<String, Vec<u32>> =
        [("a".to_string(), vec![0, 2]), ("b".to_string(), vec![1])].into();
    assert_eq!(
        consumer::decode_assignment(consumer::encode_assignment(&assignment)).unwrap(),
        assignment
    );
}

proptest! {
    /// Any bytes after a valid header: decoding answers, never panics or over-allocates.
    #[test]
    fn arbitrary_bodies_never_panic(key in 0i16..70, version in 0i16..12, body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut frame = BytesMut::new();
        frame.put_i16(key);
        frame.put_i16(version);
        frame.put_i32(1);
        frame.put_i16(-1);
        frame.put_slice(&body);
        if let Ok((header, body)) = decode_header(frame.freeze()) {
            let _ = decode_request(&header, body);
        }
    }
}
