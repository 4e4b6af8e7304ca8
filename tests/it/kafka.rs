//! The Kafka door with real Kafka clients (kafka-python 3.0.12, confluent-kafka 2.16,
//! kcat) and with Spate's own Kafka client: the seed article's snippets on the broker's
//! defaults, keyed placement, both protocols on one log, groups, compression, the
//! idempotent producer across a crash, and hostile bytes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use spate::client::partitioner::murmur2;
use spate::kafka::client::KafkaClient;
use spate::kafka::{FetchPartition, FetchRequest, FetchTopic, error};
use spate::protocol::Acks;
use spate::record::{BatchBuilder, decode_records, set_producer, split_batches};

use crate::kafka_tools::{kcat, python_script, run_for, scenario};
use crate::server::{Broker, Serving};

const LIMIT: Duration = Duration::from_secs(120);

fn bootstrap(broker: &Broker) -> String {
    format!("--bootstrap=127.0.0.1:{}", broker.kafka_port)
}

fn create(broker: &Broker, topic: &str, partitions: u32) {
    let created = broker
        .connect()
        .create_topic(topic, partitions, &[])
        .unwrap();
    assert!(created.status.is_ok(), "{}", created.status);
}

/// Every record of a partition read natively: (offset, key, value).
fn native_records(broker: &Broker, topic: &str, partition: u32) -> Vec<(i64, String, String)> {
    let mut connection = broker.connect();
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let answer = connection
            .fetch(topic, partition, offset, 1 << 20, 0)
            .unwrap();
        assert!(answer.status.is_ok(), "{}", answer.status);
        let mut got = Vec::new();
        for batch in split_batches(&answer.records) {
            let (_, range) = batch.unwrap();
            for record in decode_records(&answer.records.slice(range)).unwrap() {
                if record.offset >= offset {
                    let text = |field: Option<Bytes>| {
                        String::from_utf8_lossy(&field.unwrap_or_default()).into_owned()
                    };
                    got.push((record.offset, text(record.key), text(record.value)));
                }
            }
        }
        match got.last() {
            Some((last, _, _)) => offset = last + 1,
            None => return out,
        }
        out.extend(got);
    }
}

/// The seed article's snippets, unchanged but for its typos, against `spate serve` with no
/// flags at all in an empty directory (ports 7070 and 9092, `./spate-data`): the consumer
/// joins its group, the producer sends until the consumer prints the record.
#[test]
fn the_seed_snippets_run_against_spate_serve_on_its_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let _serving = Serving(
        Command::new(env!("CARGO_BIN_EXE_spate"))
            .arg("serve")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect("127.0.0.1:9092").is_err() {
        assert!(
            Instant::now() < deadline,
            "spate serve did not listen on 9092"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The metrics listener's default too: 127.0.0.1:9644.
    let (status, page) = crate::metrics::http("127.0.0.1:9644", "GET", "/metrics");
    assert_eq!(status, 200);
    assert!(page.contains("spate_build_info"), "{page}");
    let ready = crate::support::wait_for(Duration::from_secs(10), || {
        (crate::metrics::http("127.0.0.1:9644", "GET", "/readyz").0 == 200).then_some(())
    });
    assert!(ready.is_some(), "/readyz on the default port");
    let python = crate::kafka_tools::python();
    let script = |name: &str| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/kafka")
            .join(name)
    };
    let mut consumer = Command::new(python)
        .arg("-u")
        .arg(script("seed_consumer.py"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = consumer.stdout.take().unwrap();
    let printed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let printed = printed.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 1024];
            while let Ok(read @ 1..) = stdout.read(&mut chunk) {
                printed
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..read]));
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while !printed.lock().unwrap().contains("Data: {'amount': 50}") {
        assert!(
            Instant::now() < deadline,
            "the consumer printed nothing: {}",
            printed.lock().unwrap()
        );
        let producer = python_script("seed_producer.py", &[], Duration::from_secs(60));
        assert!(producer.status.success(), "{producer:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = consumer.kill();
    let _ = consumer.wait();
    reader.join().unwrap();
    assert!(
        printed.lock().unwrap().starts_with("Offset: "),
        "{}",
        printed.lock().unwrap()
    );
    // The record is in Spate's log, where its own tools read it.
    let data = dir.path().join("spate-data");
    assert!(data.is_dir());
}

/// kafka-python (idempotent by default) places keyed records by murmur2, as Spate's own
/// client does; what it wrote reads back natively at the same partitions and offsets, and
/// what Spate's client wrote reads back through kafka-python.
#[test]
fn keyed_records_land_where_spate_places_them_and_both_protocols_read_them() {
    let broker = Broker::start(2);
    create(&broker, "keyed", 6);
    let result = scenario(
        &[
            "kafka-python-keyed",
            &bootstrap(&broker),
            "--topic",
            "keyed",
            "--count",
            "60",
        ],
        LIMIT,
    );
    let placed = result["placed"].as_array().unwrap();
    assert_eq!(placed.len(), 60);
    for entry in placed {
        let key = entry[0].as_str().unwrap();
        let partition = entry[1].as_u64().unwrap() as u32;
        let offset = entry[2].as_i64().unwrap();
        let expected = (murmur2(key.as_bytes()) & 0x7fff_ffff) as u32 % 6;
        assert_eq!(partition, expected, "{key}");
        let stored = native_records(&broker, "keyed", partition);
        let record = stored.iter().find(|(at, _, _)| *at == offset).unwrap();
        assert_eq!(record.1, key);
    }
    // Natively written records, read by kafka-python.
    let mut connection = broker.connect();
    let mut builder = BatchBuilder::new();
    builder.push(
        spate::clock::now_ms(),
        Some(b"native"),
        Some(b"from-spate"),
        &[],
    );
    let answer = connection
        .produce("keyed", 4, builder.build(0), Acks::All)
        .unwrap()
        .unwrap();
    assert!(answer.status.is_ok());
    let read = scenario(
        &[
            "kafka-python-read",
            &bootstrap(&broker),
            "--topic",
            "keyed",
            "--count",
            "61",
        ],
        LIMIT,
    );
    let records = read["records"].as_array().unwrap();
    assert_eq!(records.len(), 61, "{read}");
    assert!(records.iter().any(|record| record[0] == 4
        && record[1] == answer.base_offset
        && record[3] == "from-spate"));
}

/// librdkafka compresses with lz4 and zstd; the batches are stored as sent and read back
/// by Spate's client (decompressing) and by librdkafka.
#[test]
fn compressed_batches_are_stored_and_read_by_both_protocols() {
    let broker = Broker::start(2);
    create(&broker, "packed", 2);
    for codec in ["lz4", "zstd"] {
        let produced = scenario(
            &[
                "confluent-produce",
                &bootstrap(&broker),
                "--topic",
                "packed",
                "--count",
                "40",
                "--compression",
                codec,
            ],
            LIMIT,
        );
        assert_eq!(
            produced["errors"].as_array().unwrap().len(),
            0,
            "{produced}"
        );
        assert_eq!(
            produced["delivered"].as_array().unwrap().len(),
            40,
            "{produced}"
        );
    }
    let mut native = Vec::new();
    for partition in 0..2 {
        for (_, _, value) in native_records(&broker, "packed", partition) {
            native.push(value);
        }
    }
    assert_eq!(native.len(), 80);
    assert_eq!(
        native
            .iter()
            .filter(|value| value.starts_with("lz4-"))
            .count(),
        40
    );
    assert_eq!(
        native
            .iter()
            .filter(|value| value.starts_with("zstd-"))
            .count(),
        40
    );
    let read = scenario(
        &[
            "confluent-read",
            &bootstrap(&broker),
            "--topic",
            "packed",
            "--group",
            "packed-reader",
            "--count",
            "80",
        ],
        LIMIT,
    );
    assert_eq!(read["records"].as_array().unwrap().len(), 80, "{read}");
}

/// A group of confluent-kafka members shares the partitions; one leaves and the others
/// take its partitions over; committed offsets read back, and a second group fans out
/// (reads everything again). The group's offsets survive a restart.
#[test]
fn a_confluent_group_shares_rebalances_commits_and_another_group_fans_out() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut broker = Broker::start_in(&data, 2, &[]);
    create(&broker, "shared", 6);
    let produced = scenario(
        &[
            "confluent-produce",
            &bootstrap(&broker),
            "--topic",
            "shared",
            "--count",
            "60",
        ],
        LIMIT,
    );
    assert_eq!(
        produced["delivered"].as_array().unwrap().len(),
        60,
        "{produced}"
    );
    let group = scenario(
        &[
            "confluent-group",
            &bootstrap(&broker),
            "--topic",
            "shared",
            "--group",
            "sharing",
            "--count",
            "60",
            "--members",
            "3",
            "--leave-after",
            "5",
        ],
        LIMIT,
    );
    let seen: std::collections::BTreeSet<(u64, u64)> = group["seen"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|records| records.as_array().unwrap().iter())
        .map(|record| (record[0].as_u64().unwrap(), record[1].as_u64().unwrap()))
        .collect();
    assert_eq!(seen.len(), 60, "{group}");
    // Several members held partitions at once: the group shared them.
    let assignments = group["assignments"].as_object().unwrap();
    assert!(assignments.len() >= 2, "{group}");
    let committed_total: i64 = group["committed"]
        .as_object()
        .unwrap()
        .values()
        .map(|offset| offset.as_i64().unwrap().max(0))
        .sum();
    assert_eq!(committed_total, 60, "{group}");
    // The offsets are the coordinator's, readable natively, and survive a restart.
    broker.stop();
    let broker = Broker::start_in(&data, 2, &[]);
    let mut connection = broker.connect();
    let offsets = connection.fetch_offsets("sharing", Vec::new()).unwrap();
    let total: i64 = offsets
        .iter()
        .flat_map(|topic| topic.partitions.iter())
        .map(|partition| partition.offset.max(0))
        .sum();
    assert_eq!(total, 60);
    // Another group reads everything again.
    let fan_out = scenario(
        &[
            "confluent-read",
            &bootstrap(&broker),
            "--topic",
            "shared",
            "--group",
            "another",
            "--count",
            "60",
        ],
        LIMIT,
    );
    assert_eq!(
        fan_out["records"].as_array().unwrap().len(),
        60,
        "{fan_out}"
    );
}

/// Kafka's admin calls through librdkafka: create (and again: already exists), describe
/// configs, metadata, add partitions (and fewer: refused), describe the cluster, delete.
#[test]
fn kafka_admin_calls_create_describe_and_delete_topics() {
    let broker = Broker::start(2);
    let result = scenario(
        &["admin", &bootstrap(&broker), "--topic", "administered"],
        LIMIT,
    );
    assert_eq!(result["created"], "administered", "{result}");
    assert_eq!(result["again"], "TOPIC_ALREADY_EXISTS", "{result}");
    assert_eq!(result["retention.ms"], "3600000", "{result}");
    assert_eq!(result["partitions"], 3, "{result}");
    assert_eq!(
        result["validated"], 3,
        "validate_only adds nothing: {result}"
    );
    assert_eq!(result["grown"], 5, "{result}");
    assert_eq!(result["shrunk"], "INVALID_PARTITIONS", "{result}");
    assert_eq!(result["brokers"], serde_json::json!([0, 1]), "{result}");
    // DescribeCluster: every shard as its own broker, on its own Kafka port.
    let (first, second) = (broker.kafka_port + 1, broker.kafka_port + 2);
    assert_eq!(
        result["cluster"],
        serde_json::json!({"id": "spate", "controller": 0, "nodes": [[0, first], [1, second]]}),
        "{result}"
    );
    let address = format!("127.0.0.1:{}", broker.kafka_port);
    let mut client = KafkaClient::connect(&address, "describer").unwrap();
    let cluster = client.describe_cluster().unwrap();
    let metadata = client.metadata(None).unwrap();
    assert_eq!(cluster.brokers, metadata.brokers);
    assert_eq!(cluster.brokers[1].port, i32::from(second));
    assert_eq!(result["deleted"], true, "{result}");
}

/// kcat (Debian's, librdkafka 2.0): metadata lists every shard as a broker, produce with
/// keys, consume with a format string. librdkafka sends each partition's requests to its
/// owner shard: no produce or fetch is forwarded.
#[test]
fn kcat_lists_produces_and_consumes_with_format_strings() {
    let broker = Broker::start(2);
    create(&broker, "cats", 4);
    let address = format!("127.0.0.1:{}", broker.kafka_port);
    let listed = run_for(Command::new(kcat()).args(["-b", &address, "-L"]), LIMIT);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains("2 brokers"), "{listed}");
    assert!(
        listed.contains("topic \"cats\" with 4 partitions"),
        "{listed}"
    );
    let mut producer = Command::new(kcat())
        .args(["-b", &address, "-P", "-t", "cats", "-K", ":"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines: String = (0..40).map(|i| format!("k{i}:v{i}\n")).collect();
    producer
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    assert!(producer.wait().unwrap().success());
    let consumed = run_for(
        Command::new(kcat()).args([
            "-b",
            &address,
            "-C",
            "-t",
            "cats",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%k=%s@%p/%o\\n",
        ]),
        LIMIT,
    );
    let consumed = String::from_utf8_lossy(&consumed.stdout).into_owned();
    // Counted before this test's own native reads, which may be forwarded.
    let described = broker.connect().describe_broker().unwrap();
    let forwarded: u64 = described
        .shards
        .iter()
        .map(|shard| shard.forwarded_requests)
        .sum();
    assert_eq!(
        forwarded, 0,
        "librdkafka reached every partition's owner directly"
    );
    let got: Vec<&str> = consumed.lines().collect();
    assert_eq!(got.len(), 40, "{consumed}");
    for line in got {
        let (key_value, place) = line.split_once('@').unwrap();
        let (key, value) = key_value.split_once('=').unwrap();
        assert_eq!(&key[1..], &value[1..], "{line}");
        let (partition, offset) = place.split_once('/').unwrap();
        let stored = native_records(&broker, "cats", partition.parse().unwrap());
        let offset: i64 = offset.parse().unwrap();
        assert!(
            stored.contains(&(offset, key.to_string(), value.to_string())),
            "{line}"
        );
    }
}

fn idempotent_batch(value: &str, producer_id: i64, sequence: i32) -> Bytes {
    let mut builder = BatchBuilder::new();
    builder.push(spate::clock::now_ms(), None, Some(value.as_bytes()), &[]);
    let mut batch = BytesMut::from(&builder.build(0)[..]);
    set_producer(&mut batch, producer_id, 0, sequence);
    batch.freeze()
}

/// A retried batch of an idempotent producer is answered with its first offset and not
/// stored twice, also after a kill -9; a gap in its sequence is refused.
#[test]
fn an_idempotent_producers_retry_is_stored_once_even_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = Broker::start_in(&data, 1, &[]);
    create(&broker, "once", 1);
    let address = format!("127.0.0.1:{}", broker.kafka_port);
    let mut client = KafkaClient::connect(&address, "retrier").unwrap();
    let producer = client.init_producer_id().unwrap();
    assert_eq!(producer.error_code, error::NONE);
    let id = producer.producer_id;
    let produce = |client: &mut KafkaClient, batch: Bytes| {
        let answer = client.produce("once", 0, batch, -1).unwrap();
        let partition = &answer.topics[0].1[0];
        (partition.error_code, partition.base_offset)
    };
    assert_eq!(produce(&mut client, idempotent_batch("a", id, 0)), (0, 0));
    assert_eq!(produce(&mut client, idempotent_batch("b", id, 1)), (0, 1));
    // The retry of "a" is answered with its offset.
    assert_eq!(produce(&mut client, idempotent_batch("a", id, 0)), (0, 0));
    assert_eq!(
        produce(&mut client, idempotent_batch("gap", id, 5)).0,
        error::OUT_OF_ORDER_SEQUENCE_NUMBER
    );
    drop(client);
    drop(broker); // SIGKILL
    let broker = Broker::start_in(&data, 1, &[]);
    let address = format!("127.0.0.1:{}", broker.kafka_port);
    let mut client = KafkaClient::connect(&address, "retrier").unwrap();
    assert_eq!(produce(&mut client, idempotent_batch("b", id, 1)), (0, 1));
    assert_eq!(produce(&mut client, idempotent_batch("c", id, 2)), (0, 2));
    let values: Vec<String> = native_records(&broker, "once", 0)
        .into_iter()
        .map(|(_, _, value)| value)
        .collect();
    assert_eq!(values, ["a", "b", "c"]);
    // And Spate's Kafka client fetches them back.
    let fetched = client
        .fetch(FetchRequest {
            max_wait_ms: 0,
            min_bytes: 1,
            max_bytes: 1 << 20,
            isolation_level: 0,
            session_id: 0,
            session_epoch: -1,
            topics: vec![FetchTopic {
                topic: "once".into(),
                partitions: vec![FetchPartition {
                    partition: 0,
                    fetch_offset: 0,
                    partition_max_bytes: 1 << 20,
                }],
            }],
        })
        .unwrap();
    let partition = &fetched.topics[0].1[0];
    assert_eq!(partition.high_watermark, 3);
    let records = &partition.records;
    let count: usize = split_batches(records)
        .map(|batch| {
            decode_records(&records.slice(batch.unwrap().1))
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(count, 3);
}

/// Hostile Kafka frames: an unknown API, a huge array count, a truncated header, an
/// ApiVersions from the future. Each gets an error or a closed connection; the broker
/// and other connections go on.
#[test]
fn hostile_kafka_frames_close_their_connection_and_nothing_else() {
    let broker = Broker::start(1);
    create(&broker, "safe", 1);
    let address = format!("127.0.0.1:{}", broker.kafka_port);
    let mut bystander = KafkaClient::connect(&address, "bystander").unwrap();
    let frame = |body: &[u8]| {
        let mut out = (body.len() as i32).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    };
    let closes = |bytes: Vec<u8>| {
        let mut stream = TcpStream::connect(&address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(&bytes).unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        rest
    };
    // Unknown API key 999.
    assert!(closes(frame(b"\x03\xe7\x00\x00\x00\x00\x00\x01\xff\xff")).is_empty());
    // Metadata v1 claiming 2^31-1 topics.
    assert!(
        closes(frame(
            b"\x00\x03\x00\x01\x00\x00\x00\x02\xff\xff\x7f\xff\xff\xff"
        ))
        .is_empty()
    );
    // A header cut short.
    assert!(closes(frame(b"\x00\x03\x00")).is_empty());
    // A length prefix far beyond the frame limit.
    assert!(closes(b"\x7f\xff\xff\xf0garbage".to_vec()).is_empty());
    // ApiVersions v9: error 35 in the v0 layout, then the connection stays usable.
    let mut stream = TcpStream::connect(&address).unwrap();
    stream
        .write_all(&frame(b"\x00\x12\x00\x09\x00\x00\x00\x05\xff\xff"))
        .unwrap();
    let mut header = [0u8; 10];
    stream.read_exact(&mut header).unwrap();
    assert_eq!(&header[4..8], &5i32.to_be_bytes());
    assert_eq!(
        i16::from_be_bytes([header[8], header[9]]),
        error::UNSUPPORTED_VERSION
    );
    // The broker and the other connection are unaffected.
    let metadata = bystander.metadata(Some(vec!["safe".into()])).unwrap();
    assert_eq!(metadata.topics[0].error_code, error::NONE);
}

/// The loopback fuzz of the native port (tests/it/hostile.rs), on the Kafka port: valid
/// requests of many APIs and versions, some with noise over their bodies, some with
/// thousands of entries. Each gets its answer (in order) or its connection closed; the
/// broker keeps serving and its memory stays bounded.
#[test]
fn kafka_loopback_fuzz_every_request_is_answered_or_refused_and_memory_stays_bounded() {
    use spate::kafka::{
        CreatableTopic, CreateTopicsRequest, DescribeClusterRequest, FindCoordinatorRequest,
        KafkaRequest, ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic, MetadataRequest,
        ProducePartition, ProduceRequest, ProduceTopic, api_range, encode_request,
    };
    let mut broker = Broker::start(2);
    create(&broker, "fuzzed", 4);
    let before = broker.peak_resident_bytes();
    let address = format!("127.0.0.1:{}", broker.kafka_port);
    let rng = &mut crate::support::Random(0x9e37_79b9_7f4a_7c15);
    let mut batch = BatchBuilder::new();
    batch.push(spate::clock::now_ms(), None, Some(b"fuzz"), &[]);
    let batch = batch.build(0);
    let connect = || {
        let stream = TcpStream::connect(&address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream
    };
    let mut stream = connect();
    let (mut answered, mut closed) = (0, 0);
    for correlation_id in 0..1500i32 {
        let entries = if rng.index(10) == 0 {
            500 + rng.index(2500)
        } else {
            rng.index(5)
        };
        let names = |entries: usize| -> Vec<String> {
            (0..entries)
                .map(|i| {
                    if i % 2 == 0 {
                        "fuzzed".into()
                    } else {
                        format!("missing-{i}")
                    }
                })
                .collect()
        };
        let (request, noisy) = match rng.index(8) {
            0 => (
                KafkaRequest::Metadata(MetadataRequest {
                    topics: Some(names(entries)),
                    allow_auto_topic_creation: false,
                }),
                true,
            ),
            1 => (
                KafkaRequest::Produce(ProduceRequest {
                    transactional_id: None,
                    acks: -1,
                    timeout_ms: 5_000,
                    topics: vec![ProduceTopic {
                        name: "fuzzed".into(),
                        partitions: (0..entries.clamp(1, 8) as i32)
                            .map(|index| ProducePartition {
                                index,
                                records: Some(batch.clone()),
                            })
                            .collect(),
                    }],
                }),
                false,
            ),
            2 => (
                KafkaRequest::Fetch(FetchRequest {
                    max_wait_ms: 0,
                    min_bytes: 1,
                    max_bytes: 1 << 20,
                    isolation_level: 0,
                    session_id: 0,
                    session_epoch: -1,
                    topics: vec![FetchTopic {
                        topic: "fuzzed".into(),
                        partitions: (0..entries.min(2000) as i32)
                            .map(|partition| FetchPartition {
                                partition,
                                fetch_offset: 0,
                                partition_max_bytes: 4096,
                            })
                            .collect(),
                    }],
                }),
                false,
            ),
            3 => (
                KafkaRequest::ListOffsets(ListOffsetsRequest {
                    isolation_level: 0,
                    topics: vec![ListOffsetsTopic {
                        name: "fuzzed".into(),
                        partitions: (0..entries as i32)
                            .map(|partition_index| ListOffsetsPartition {
                                partition_index,
                                timestamp: -1,
                            })
                            .collect(),
                    }],
                }),
                true,
            ),
            4 => (
                KafkaRequest::FindCoordinator(FindCoordinatorRequest {
                    key: format!("group-{entries}"),
                    key_type: 0,
                }),
                true,
            ),
            5 => (
                KafkaRequest::CreateTopics(CreateTopicsRequest {
                    topics: (0..entries.min(3))
                        .map(|i| CreatableTopic {
                            name: format!("fuzz-created-{correlation_id}-{i}"),
                            num_partitions: 1,
                            replication_factor: 1,
                            assignments: 0,
                            configs: Vec::new(),
                        })
                        .collect(),
                    timeout_ms: 5_000,
                    validate_only: false,
                }),
                true,
            ),
            6 => (
                // Flexible (compact lengths, tagged fields): noise lands on varints.
                KafkaRequest::DescribeCluster(DescribeClusterRequest {
                    include_cluster_authorized_operations: entries % 2 == 0,
                }),
                true,
            ),
            _ => (KafkaRequest::DescribeGroups(names(entries)), true),
        };
        let range = api_range(request.api_key()).unwrap();
        let version = range.min + rng.index((range.max - range.min + 1) as usize) as i16;
        let mut frame = encode_request(&request, version, correlation_id, "fuzz").to_vec();
        if noisy && frame.len() > 12 && rng.index(3) == 0 {
            for _ in 0..1 + rng.index(5) {
                let at = 12 + rng.index(frame.len() - 12);
                frame[at] = rng.index(256) as u8;
            }
        }
        if stream.write_all(&frame).is_err() {
            stream = connect();
            stream.write_all(&frame).unwrap();
        }
        let mut length = [0u8; 4];
        match stream.read_exact(&mut length) {
            Ok(()) => {
                let mut body = vec![0u8; i32::from_be_bytes(length) as usize];
                stream.read_exact(&mut body).unwrap();
                assert_eq!(
                    &body[..4],
                    &correlation_id.to_be_bytes(),
                    "answers come in order"
                );
                answered += 1;
            }
            Err(error) => {
                assert_ne!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock,
                    "no answer to {request:?}"
                );
                closed += 1;
                stream = connect();
            }
        }
        assert!(broker.is_running(), "the broker died on {request:?}");
    }
    assert!(answered > 1000, "{answered} answered, {closed} closed");
    let mut client = KafkaClient::connect(&address, "after").unwrap();
    let metadata = client.metadata(Some(vec!["fuzzed".into()])).unwrap();
    assert_eq!(metadata.topics[0].partitions.len(), 4);
    let grown = broker.peak_resident_bytes().saturating_sub(before);
    assert!(
        grown < 256 * 1024 * 1024,
        "peak resident memory grew by {grown} bytes"
    );
}

/// A Kafka produce on a full disk is answered KAFKA_STORAGE_ERROR (56), the records
/// acknowledged before it stay, and produces succeed again once there is room.
#[test]
fn a_kafka_produce_on_a_full_disk_gets_a_storage_error_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = crate::support::LoopMount::new(dir.path(), 64) else {
        return;
    };
    let broker = Broker::start_in(&mount.mount_point.join("data"), 1, &[]);
    create(&broker, "full", 1);
    let address = format!("127.0.0.1:{}", broker.kafka_port);
    let mut client = KafkaClient::connect(&address, "filler").unwrap();
    let produce = |client: &mut KafkaClient, value: &str| {
        let mut builder = BatchBuilder::new();
        builder.push(spate::clock::now_ms(), None, Some(value.as_bytes()), &[]);
        let answer = client.produce("full", 0, builder.build(0), -1).unwrap();
        answer.topics[0].1[0].error_code
    };
    assert_eq!(produce(&mut client, "before"), error::NONE);
    let filler = mount.mount_point.join("filler");
    crate::support::fill(&filler);
    let big = "x".repeat(64 * 1024);
    let mut acknowledged = 1;
    let refused = (0..200).find_map(|_| match produce(&mut client, &big) {
        error::NONE => {
            acknowledged += 1;
            None
        }
        code => Some(code),
    });
    assert_eq!(refused, Some(error::KAFKA_STORAGE_ERROR));
    assert_eq!(native_records(&broker, "full", 0).len(), acknowledged);
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(produce(&mut client, "after"), error::NONE);
    let values = native_records(&broker, "full", 0);
    assert_eq!(values.len(), acknowledged + 1);
    assert_eq!(values[0].2, "before");
    assert_eq!(values[acknowledged].2, "after");
}
