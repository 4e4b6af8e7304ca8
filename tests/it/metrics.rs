//! The metrics listener (`--metrics-listen`): `/metrics` scraped from a real broker while
//! traffic goes through both doors, `/healthz` and `/readyz`, and the Grafana dashboard in
//! docs/ checked against what a real broker exposes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use spate::client::Connection;
use spate::protocol::{Acks, OffsetCommitPartition, OffsetCommitRequest, OffsetCommitTopic};

use crate::server::{Broker, free_ports};
use crate::support::{batch, wait_for};

/// One HTTP/1.0 GET (or another method): the status code and the body.
pub fn http(address: &str, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: spate\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status code");
    (status, body.to_string())
}

/// A scrape: every sample's value by its name and labels as written
/// (`name{label="value",...}`), after checking each line's shape.
pub struct Scrape {
    pub samples: BTreeMap<String, f64>,
    /// The metric families the page declares (`# TYPE`), with their types.
    pub families: BTreeMap<String, String>,
}

impl Scrape {
    pub fn parse(page: &str) -> Scrape {
        assert!(page.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
        let mut samples = BTreeMap::new();
        let mut families = BTreeMap::new();
        for line in page.lines() {
            if let Some(declared) = line.strip_prefix("# TYPE ") {
                let (name, kind) = declared.split_once(' ').expect("# TYPE name type");
                families.insert(name.to_string(), kind.to_string());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("a sample: series value");
            let name_end = series.find('{').unwrap_or(series.len());
            let name = &series[..name_end];
            assert!(
                name.starts_with("spate_")
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "metric name {name:?} in {line:?}"
            );
            if name_end < series.len() {
                assert!(series.ends_with('}'), "labels in {line:?}");
            }
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                value => value
                    .parse()
                    .unwrap_or_else(|_| panic!("value in {line:?}")),
            };
            assert!(
                samples.insert(series.to_string(), value).is_none(),
                "series {series} twice"
            );
        }
        Scrape { samples, families }
    }

    /// A sample's value, or 0 when the page has no such series.
    pub fn value(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }

    /// The sum over every series of `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(series, _)| {
                let series_name = series.split('{').next().unwrap_or_default();
                series_name == name
                    && labels
                        .iter()
                        .all(|(key, value)| series.contains(&format!("{key}=\"{value}\"")))
            })
            .map(|(_, value)| value)
            .sum()
    }

    /// Every sample name on the page (`_total`, `_bucket`, ... included).
    pub fn names(&self) -> BTreeSet<String> {
        self.samples
            .keys()
            .map(|series| series.split('{').next().unwrap_or_default().to_string())
            .collect()
    }
}

fn scrape(address: &str) -> Scrape {
    let (status, page) = http(address, "GET", "/metrics");
    assert_eq!(status, 200, "{page}");
    Scrape::parse(&page)
}

/// A free address on 127.0.0.1 for a broker's metrics listener (see `metrics_address_on`).
pub fn metrics_address() -> String {
    metrics_address_on("127.0.0.1")
}

/// A free port on `ip` for a broker's metrics listener, below Linux's ephemeral range
/// (32768 and up): no other test's `bind(port 0)` can take it before the broker binds it,
/// and the listener itself takes none of the ephemeral ports other tests reserve for
/// their brokers' native and Kafka ports.
pub fn metrics_address_on(ip: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        + u64::from(std::process::id())
        + NEXT.fetch_add(7919, std::sync::atomic::Ordering::SeqCst);
    for attempt in 0..1000u64 {
        let port = 20_000 + ((seed + attempt * 104_729) % 12_000) as u16;
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return format!("{ip}:{port}");
        }
    }
    panic!("no free port below the ephemeral range");
}

/// A broker whose metrics listen on a port the test knows.
fn broker_with_metrics(shards: usize) -> (Broker, String) {
    let metrics = metrics_address();
    let broker = Broker::start_flagged(shards, &["--metrics-listen", &metrics]);
    (broker, metrics)
}

/// Scrapes until `ready` holds for a scrape (gauges are copied once a second).
fn scrape_until(address: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    wait_for(Duration::from_secs(10), || {
        let scrape = scrape(address);
        ready(&scrape).then_some(scrape)
    })
    .expect("the metrics did not show it within 10 s")
}

#[test]
fn health_and_readiness_answer_and_unknown_paths_do_not() {
    let (_broker, metrics) = broker_with_metrics(2);
    assert_eq!(http(&metrics, "GET", "/healthz"), (200, "ok\n".to_string()));
    // Ready once every shard serves (the broker answered on one of them).
    let ready = wait_for(Duration::from_secs(10), || {
        let answer = http(&metrics, "GET", "/readyz");
        (answer.0 == 200).then_some(answer)
    });
    assert_eq!(ready, Some((200, "ready\n".to_string())));
    assert_eq!(http(&metrics, "GET", "/nothing").0, 404);
    assert_eq!(http(&metrics, "POST", "/metrics").0, 405);
}

#[test]
fn a_reactor_held_off_its_core_counts_as_a_stall_on_every_shard() {
    let (broker, metrics) = broker_with_metrics(2);
    let counted = |scrape: &Scrape, shard: &str| {
        scrape.sum("spate_reactor_stalls_total", &[("shard", shard)])
    };
    let before = scrape_until(&metrics, |scrape| {
        scrape.sum("spate_reactor_lag_seconds_count", &[("shard", "1")]) > 0.0
    });
    // Stopped for 300 ms, every shard's 100 ms probe timer fires about 200 ms late.
    broker.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(300));
    broker.signal(libc::SIGCONT);
    let after = scrape_until(&metrics, |scrape| {
        ["0", "1"]
            .iter()
            .all(|shard| counted(scrape, shard) > counted(&before, shard))
    });
    // The lag histogram saw it: at least one wake-up later than 100 ms on each shard.
    for shard in ["0", "1"] {
        let late = |scrape: &Scrape| {
            scrape.sum("spate_reactor_lag_seconds_count", &[("shard", shard)])
                - scrape.sum(
                    "spate_reactor_lag_seconds_bucket",
                    &[("shard", shard), ("le", "0.1")],
                )
        };
        assert!(late(&after) > late(&before), "shard {shard}");
        // The bucket `late` subtracts exists under that label (else `late` is the count).
        let on_time = [("shard", shard), ("le", "0.1")];
        assert!(after.sum("spate_reactor_lag_seconds_bucket", &on_time) > 0.0);
    }
}

#[test]
fn a_cluster_node_is_ready_only_once_it_knows_a_controller() {
    // Node 1 of three, alone: its shards serve, but no controller can be elected.
    let mut nodes = crate::replication::Nodes::unstarted(&mut |_, _, address| address);
    nodes.spawn(1);
    let alone = nodes.metrics(1).to_string();
    let waiting = wait_for(Duration::from_secs(20), || {
        let (status, body) = http_or_refused(&alone, "/readyz")?;
        body.contains("controller").then_some((status, body))
    })
    .expect("node 1 never said it waits for a controller");
    assert_eq!(waiting.0, 503, "{waiting:?}");
    assert!(waiting.1.contains("knows no controller"), "{waiting:?}");
    assert_eq!(http(&alone, "GET", "/healthz").0, 200);
    // A second node makes a quorum: node 1 learns the controller and is ready.
    nodes.spawn(2);
    let ready = wait_for(Duration::from_secs(30), || {
        let answer = http_or_refused(&alone, "/readyz")?;
        (answer.0 == 200).then_some(answer)
    });
    assert_eq!(ready, Some((200, "ready\n".to_string())));
}

/// `/readyz` or the like, or None while nothing listens yet.
fn http_or_refused(address: &str, path: &str) -> Option<(u16, String)> {
    TcpStream::connect(address).ok()?;
    Some(http(address, "GET", path))
}

#[test]
fn counters_and_gauges_move_with_traffic_through_both_doors() {
    let (broker, metrics) = broker_with_metrics(2);
    let before = scrape(&metrics);
    assert_eq!(
        before.value(r#"spate_build_info{version="0.1.0",shards="2"}"#),
        1.0
    );
    assert_eq!(before.sum("spate_appended_bytes_total", &[]), 0.0);
    assert!(before.sum("spate_storage_free_bytes", &[]) > 0.0);
    assert!(before.sum("spate_memory_budget_bytes", &[("pool", "tail_cache")]) > 0.0);

    let mut client = broker.connect();
    let fsync = [("flush.ms".to_string(), "0".to_string())];
    assert!(
        client
            .create_topic("metered", 2, &fsync)
            .unwrap()
            .status
            .is_ok()
    );
    let mut payload = 0;
    for partition in 0..2 {
        for round in 0..5 {
            let records = batch(&format!("p{partition}r{round}"), 10, 100, 1_000);
            payload += records.len();
            let answer = client
                .produce("metered", partition, records, Acks::All)
                .unwrap()
                .unwrap();
            assert!(answer.status.is_ok(), "{:?}", answer.status);
        }
    }
    // Kafka's door: one more batch of 10 records on partition 0.
    let mut kafka = spate::kafka::client::KafkaClient::connect(
        &format!("127.0.0.1:{}", broker.kafka_port),
        "metrics-test",
    )
    .unwrap();
    let kafka_batch = batch("kafka", 10, 100, 1_000);
    payload += kafka_batch.len();
    kafka.produce("metered", 0, kafka_batch, -1).unwrap();
    // Reads of the tail come from memory.
    let read = client.fetch("metered", 1, 0, 1 << 20, 0).unwrap();
    assert!(read.status.is_ok());
    // A group commits what it read of partition 0 (60 records) up to 40.
    client
        .commit_offsets(commit("billing", "metered", 40))
        .unwrap();
    // Errors: a fetch of a partition that does not exist (answered per partition), a
    // topic created twice through each door (per topic), and a Kafka list-offsets of a
    // missing partition (per partition).
    let missing = client.fetch("metered", 7, 0, 1024, 0).unwrap();
    assert!(!missing.status.is_ok());
    let again = client.create_topic("metered", 2, &fsync).unwrap();
    assert!(!again.status.is_ok());
    let again = kafka.create_topic("metered", 2, -1, &[]).unwrap();
    assert_eq!(
        again.topics[0].error_code,
        spate::kafka::error::TOPIC_ALREADY_EXISTS
    );
    let offsets = kafka.list_offsets("metered", &[9], -1).unwrap();
    assert_eq!(
        offsets.topics[0].1[0].error_code,
        spate::kafka::error::UNKNOWN_TOPIC_OR_PARTITION
    );
    // A frame too short for a request header closes its connection.
    let mut garbage = TcpStream::connect(broker.address()).unwrap();
    garbage.write_all(&[0, 0, 0, 2, 1, 2]).unwrap();
    let mut rest = Vec::new();
    let _ = garbage.read_to_end(&mut rest);

    let after = scrape_until(&metrics, |scrape| {
        scrape.value(r#"spate_consumer_group_lag{group="billing",topic="metered",partition="0"}"#)
            == 20.0
            && scrape.value(r#"spate_partition_log_end_offset{topic="metered",partition="1"}"#)
                == 50.0
    });
    let native = [("protocol", "native")];
    assert_eq!(
        after.sum(
            "spate_requests_total",
            &[("protocol", "native"), ("kind", "produce")]
        ),
        10.0
    );
    assert_eq!(
        after.sum(
            "spate_requests_total",
            &[("protocol", "kafka"), ("kind", "produce")]
        ),
        1.0
    );
    assert_eq!(
        after.sum("spate_produce_latency_seconds_count", &native),
        10.0
    );
    assert_eq!(
        after.sum(
            "spate_produce_latency_seconds_bucket",
            &[("protocol", "kafka"), ("le", "+Inf")]
        ),
        1.0
    );
    assert!(after.sum("spate_received_bytes_total", &native) > payload as f64 * 0.9);
    assert!(after.sum("spate_sent_bytes_total", &native) > 0.0);
    // The records, and the group's commit in its offsets log.
    let appended = after.sum("spate_appended_bytes_total", &[]);
    assert!(
        appended > payload as f64 && appended < payload as f64 + 1024.0,
        "{appended} bytes appended for {payload} produced"
    );
    assert_eq!(after.sum("spate_appended_batches_total", &[]), 12.0);
    // flush.ms=0: every append was made durable before its answer.
    assert!(after.sum("spate_sync_latency_seconds_count", &[]) >= 1.0);
    assert!(after.sum("spate_sync_round_segments_sum", &[]) >= 1.0);
    assert!(after.sum("spate_append_latency_seconds_count", &[]) >= 11.0);
    assert!(after.sum("spate_tail_cache_hits_total", &[]) >= 1.0);
    assert_eq!(
        after.sum(
            "spate_errors_total",
            &[("code", "unknown_topic_or_partition")]
        ),
        2.0
    );
    assert_eq!(
        after.sum("spate_errors_total", &[("code", "topic_already_exists")]),
        2.0
    );
    assert_eq!(after.sum("spate_malformed_frames_total", &native), 1.0);
    assert!(after.sum("spate_connections_accepted_total", &[("protocol", "kafka")]) >= 1.0);
    assert_eq!(
        after.value(r#"spate_partition_log_end_offset{topic="metered",partition="0"}"#),
        60.0
    );
    assert_eq!(
        after.value(r#"spate_partition_high_watermark{topic="metered",partition="0"}"#),
        60.0
    );
    assert!(after.value(r#"spate_partition_size_bytes{topic="metered",partition="0"}"#) > 0.0);
    assert_eq!(
        after.value(r#"spate_consumer_group_committed_offset{group="billing",topic="metered",partition="0"}"#),
        40.0
    );
    assert!(after.sum("spate_memory_used_bytes", &[("pool", "tail_cache")]) >= payload as f64);
    assert_eq!(after.sum("spate_partitions", &[]), 2.0);
    assert!(after.sum("spate_reactor_lag_seconds_count", &[]) > 0.0);
}

#[test]
fn per_partition_series_are_capped() {
    let metrics = metrics_address();
    let broker = Broker::start_flagged(
        1,
        &[
            "--metrics-listen",
            &metrics,
            "--metrics-partition-series-max",
            "3",
        ],
    );
    let mut client = broker.connect();
    assert!(client.create_topic("many", 5, &[]).unwrap().status.is_ok());
    let scrape = scrape_until(&metrics, |scrape| {
        scrape.value("spate_partition_series_omitted") == 2.0
    });
    assert_eq!(scrape.sum("spate_partition_log_end_offset", &[]), 0.0);
    let shown = scrape
        .samples
        .keys()
        .filter(|series| series.starts_with("spate_partition_log_end_offset{"))
        .count();
    assert_eq!(shown, 3);
}

#[test]
fn a_taken_metrics_port_stops_the_start_with_one_clear_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let port = free_ports(1);
    let output = crate::server::spate(&[
        "serve",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--shards",
        "1",
        "--kafka-listen",
        "none",
        "--metrics-listen",
        &address,
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot serve metrics on {address}"))
            && stderr.contains("--metrics-listen none"),
        "{stderr}"
    );
    // One of the shard ports.
    let clash = crate::server::spate(&[
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--shards",
        "1",
        "--metrics-listen",
        &format!("127.0.0.1:{}", port + 1),
    ]);
    assert!(!clash.status.success());
    assert!(
        String::from_utf8_lossy(&clash.stderr)
            .contains("is one of the --listen or --kafka-listen ports"),
        "{}",
        String::from_utf8_lossy(&clash.stderr)
    );
    let bad = crate::server::spate(&["serve", "--metrics-listen", "everywhere"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid metrics listen address"));
}

/// The dashboard in docs/ parses, and every expression in it names metrics a real broker
/// exposes (after traffic, so that every family has samples); docs/OPERATIONS.md names
/// every metric family the broker exposes.
#[test]
fn the_grafana_dashboard_and_the_operations_guide_match_the_real_metrics() {
    let (broker, metrics) = broker_with_metrics(1);
    let mut client: Connection = broker.connect();
    assert!(client.create_topic("shown", 1, &[]).unwrap().status.is_ok());
    client
        .produce("shown", 0, batch("x", 5, 10, 1_000), Acks::All)
        .unwrap();
    // An error and a group's commit, so that those families have series too.
    assert!(!client.fetch("shown", 3, 0, 1024, 0).unwrap().status.is_ok());
    client
        .commit_offsets(commit("watchers", "shown", 2))
        .unwrap();
    let scrape = scrape_until(&metrics, |scrape| {
        scrape.value(r#"spate_partition_log_end_offset{topic="shown",partition="0"}"#) == 5.0
            && scrape
                .value(r#"spate_consumer_group_lag{group="watchers",topic="shown",partition="0"}"#)
                == 3.0
    });
    let names = scrape.names();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("docs/grafana/spate-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard parses");
    let mut expressions = Vec::new();
    collect_expressions(&dashboard, &mut expressions);
    assert!(expressions.len() >= 10, "{} expressions", expressions.len());
    for expression in &expressions {
        let named = metric_names(expression);
        assert!(!named.is_empty(), "{expression:?} names no spate metric");
        for name in named {
            assert!(
                names.contains(&name),
                "{expression:?} names {name}, which the broker does not expose"
            );
        }
    }
    let guide = std::fs::read_to_string(root.join("docs/OPERATIONS.md")).unwrap();
    for family in scrape.families.keys() {
        assert!(
            guide.contains(&format!("`{family}")),
            "docs/OPERATIONS.md does not document {family}"
        );
    }
}

/// A commit of `offset` for partition 0 of `topic`, from outside the group's membership.
fn commit(group: &str, topic: &str, offset: i64) -> OffsetCommitRequest {
    OffsetCommitRequest {
        group_id: group.to_string(),
        generation: -1,
        member_id: String::new(),
        topics: vec![OffsetCommitTopic {
            name: topic.to_string(),
            partitions: vec![OffsetCommitPartition {
                partition: 0,
                offset,
                metadata: String::new(),
            }],
        }],
    }
}

/// Every `expr` string anywhere in the dashboard.
fn collect_expressions(value: &serde_json::Value, into: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expression)) => {
                        into.push(expression.clone())
                    }
                    _ => collect_expressions(value, into),
                }
            }
        }
        serde_json::Value::Array(values) => {
            for value in values {
                collect_expressions(value, into);
            }
        }
        _ => {}
    }
}

/// The `spate_...` identifiers in a PromQL expression.
fn metric_names(expression: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expression;
    while let Some(at) = rest.find("spate_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}
