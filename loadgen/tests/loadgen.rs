//! Short workloads against a broker the load generator spawns (the `spate` binary built
//! beside it), checking the counts and the JSON report's documented keys.

use std::path::Path;
use std::process::{Command, Output};

fn loadgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spate-loadgen"))
        .args(args)
        .output()
        .expect("the load generator runs")
}

/// Starts the load generator with `args`, its JSON report to `json`, its output piped.
fn spawn_loadgen(args: &[&str], json: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_spate-loadgen"))
        .args(args)
        .arg("--json")
        .arg(json)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("valid JSON")
}

/// Runs the load generator, expects success, and returns its JSON report (written to
/// `json`, which `args` must name).
fn run_ok(args: &[&str], json_path: &Path) -> serde_json::Value {
    let output = loadgen(args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = json(json_path);
    check_schema(&report);
    report
}

fn check_schema(report: &serde_json::Value) {
    for key in [
        "throughput_mb_s",
        "records_per_s",
        "records",
        "bytes",
        "duration_s",
    ] {
        assert!(report[key].is_number(), "{key} in {report}");
    }
    for key in ["p50", "p90", "p99", "p999", "p9999", "max"] {
        assert!(
            report["latency_us"][key].is_u64(),
            "latency_us.{key} in {report}"
        );
    }
}

#[test]
fn produce_and_e2e_count_every_record_and_report_the_documented_keys() {
    let dir = tempfile::tempdir().unwrap();
    let produce = dir.path().join("produce.json");
    let page = dir.path().join("produce.html");
    let report = run_ok(
        &[
            "produce",
            "--spawn-broker",
            "--partitions",
            "3",
            "--producers",
            "2",
            "--records",
            "20001",
            "--message-size",
            "100-300",
            "--keys",
            "50",
            "--topic-config",
            "flush.ms=100",
            "--json",
            produce.to_str().unwrap(),
            "--report",
            page.to_str().unwrap(),
        ],
        &produce,
    );
    assert_eq!(report["records"], 20001);
    assert_eq!(report["complete"], true);
    assert!(
        report["broker_peak_resident_bytes"].as_u64().unwrap() > 1 << 20,
        "the spawned broker's peak memory is reported"
    );
    // The broker's own figures, from its metrics (the run may end before flush.ms=100
    // has synced anything; the writes are counted).
    let broker = &report["broker"];
    assert!(broker["append_p99_us"].as_u64().unwrap() > 0, "{broker}");
    assert!(broker["sync_rounds"].is_u64(), "{broker}");
    assert!(broker["segments_per_round"].is_f64(), "{broker}");
    assert_eq!(broker["errors"], 0);
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("<svg") && html.contains("Latency distribution"));

    let e2e = dir.path().join("e2e.json");
    let report = run_ok(
        &[
            "e2e",
            "--spawn-broker",
            "--partitions",
            "2",
            "--records",
            "5000",
            "--rate",
            "20000",
            "--json",
            e2e.to_str().unwrap(),
        ],
        &e2e,
    );
    assert_eq!(
        report["records"], 5000,
        "every record produced is consumed once"
    );
    assert!(report["latency_us"]["p50"].as_u64().unwrap() > 0);
}

#[test]
fn consume_reads_the_records_it_filled_the_topic_with() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("consume.json");
    let report = run_ok(
        &[
            "consume",
            "--spawn-broker",
            "--partitions",
            "4",
            "--consumers",
            "2",
            "--records",
            "30000",
            "--message-size",
            "200",
            // A tail cache over the broker's default limit, allowed by a broker setting.
            "--topic-config",
            "tail.cache.bytes=134217728",
            "--broker-setting",
            "tail-cache-bytes-max=134217728",
            "--json",
            path.to_str().unwrap(),
        ],
        &path,
    );
    assert_eq!(report["records"], 30000);
}

#[test]
fn a_workload_file_supplies_the_options() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.json");
    let workload =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/1-topic-16-partitions-1kb.toml");
    let report = run_ok(
        &[
            "--workload",
            workload.to_str().unwrap(),
            "--spawn-broker",
            "--duration",
            "1s",
            "--json",
            path.to_str().unwrap(),
        ],
        &path,
    );
    assert_eq!(report["plan"]["partitions"], 16);
    assert!(report["records"].as_u64().unwrap() > 0);
}

#[test]
fn bad_input_is_a_clear_error_and_a_non_zero_exit() {
    let unreachable = loadgen(&["produce", "--broker", "127.0.0.1:1", "--records", "10"]);
    assert!(!unreachable.status.success());
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert!(
        stderr.contains("cannot reach the broker at 127.0.0.1:1"),
        "{stderr}"
    );

    for (args, expected) in [
        (&["--acks", "2"][..], "--acks"),
        (&["--message-size", "10-5"][..], "--message-size"),
        (&["--rate", "fast"][..], "--rate"),
        (&["--duration", "soon"][..], "--duration"),
        (&["e2e", "--message-size", "4"][..], "at least 8"),
        (
            &["--broker-setting", "tail-cache-bytes-max=1"][..],
            "--spawn-broker",
        ),
        (
            &["--spawn-broker", "--broker-setting", "no-equals"][..],
            "--broker-setting",
        ),
    ] {
        let output = loadgen(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn a_broker_that_dies_mid_run_ends_it_with_the_figures_so_far() {
    let dir = tempfile::tempdir().unwrap();
    let spate = Path::new(env!("CARGO_BIN_EXE_spate-loadgen")).with_file_name("spate");
    // The listener, the shard's own port after it and the metrics port, all free.
    let port = spate::server::free_port_range("127.0.0.1".parse().unwrap(), 2).unwrap();
    let metrics = format!("127.0.0.1:{}", port + 2);
    let mut broker = Command::new(spate)
        .args([
            "serve",
            "--shards",
            "1",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--kafka-listen",
            "none",
            "--metrics-listen",
            &metrics,
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stderr(std::fs::File::create(dir.path().join("broker.log")).unwrap())
        .spawn()
        .expect("the spate binary, built beside the load generator");
    let address = format!("127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(&address).is_err() {
        if let Some(status) = broker.try_wait().unwrap() {
            let log = std::fs::read_to_string(dir.path().join("broker.log")).unwrap_or_default();
            panic!("the broker exited ({status}) before serving: {log}");
        }
        assert!(std::time::Instant::now() < deadline, "the broker starts");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let path = dir.path().join("died.json");
    let mut run = spawn_loadgen(
        &["produce", "--broker", &address, "--duration", "30s"],
        &path,
    );
    // Kill only once the run is producing (set-up on a loaded machine can take seconds):
    // the partition holds acknowledged records.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let end =
            spate::client::Connection::connect(&address, "test").and_then(|mut connection| {
                connection.list_offset("loadgen", 0, spate::protocol::OFFSET_LATEST)
            });
        if matches!(end, Ok(end) if end > 0) {
            break;
        }
        // Anything that ends the wait early says why, with both programs' output.
        let broker_exit = broker.try_wait().unwrap();
        let run_exit = run.try_wait().unwrap();
        if broker_exit.is_some() || run_exit.is_some() || std::time::Instant::now() > deadline {
            let _ = run.kill();
            let _ = broker.kill();
            let output = run.wait_with_output().unwrap();
            let log = std::fs::read_to_string(dir.path().join("broker.log")).unwrap_or_default();
            panic!(
                "the run produces nothing (broker {broker_exit:?}, run {run_exit:?}, last \
                 answer {end:?})\nload generator: {}{}\nbroker: {log}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    broker.kill().unwrap(); // SIGKILL
    broker.wait().unwrap();
    let output = run.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("stopped early"));
    let report = json(&path);
    check_schema(&report);
    assert_eq!(report["complete"], false);
    assert!(
        report["records"].as_u64().unwrap() > 0,
        "what was acknowledged before is reported"
    );
    assert!(
        report["duration_s"].as_f64().unwrap() < 20.0,
        "the run ends when the broker dies"
    );
}

/// `--protocol kafka` drives the broker's Kafka door: keyed records over two shards reach
/// each partition's owner directly (nothing forwarded), and what it produced is read back
/// in full through the native door, and the other way round.
#[test]
fn the_kafka_protocol_produces_and_consumes_the_same_log_as_the_native_one() {
    let dir = tempfile::tempdir().unwrap();
    let spate = Path::new(env!("CARGO_BIN_EXE_spate-loadgen")).with_file_name("spate");
    // Native: the listener and two shard ports; Kafka's three just above; then metrics.
    let port = spate::server::free_port_range("127.0.0.1".parse().unwrap(), 6).unwrap();
    let metrics = format!("127.0.0.1:{}", port + 6);
    let (native, kafka) = (
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:{}", port + 3),
    );
    let mut broker = Command::new(spate)
        .args([
            "serve",
            "--shards",
            "2",
            "--listen",
            &native,
            "--kafka-listen",
            &kafka,
            "--metrics-listen",
            &metrics,
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stderr(std::fs::File::create(dir.path().join("broker.log")).unwrap())
        .spawn()
        .expect("the spate binary, built beside the load generator");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(&kafka).is_err() {
        if let Some(status) = broker.try_wait().unwrap() {
            let log = std::fs::read_to_string(dir.path().join("broker.log")).unwrap_or_default();
            panic!("the broker exited ({status}) before serving: {log}");
        }
        assert!(std::time::Instant::now() < deadline, "the broker starts");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let report_path = dir.path().join("run.json");
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--topic", "both", "--json", report_path.to_str().unwrap()]);
        run_ok(&all, &report_path)
    };
    let produced = run(&[
        "produce",
        "--protocol",
        "kafka",
        "--broker",
        &kafka,
        "--partitions",
        "4",
        "--keys",
        "20",
        "--records",
        "6000",
        "--message-size",
        "50-500",
    ]);
    assert_eq!(produced["records"], 6000);
    assert_eq!(produced["plan"]["protocol"], "kafka", "{produced}");
    let described = spate::client::Connection::connect(&native, "test")
        .unwrap()
        .describe_broker()
        .unwrap();
    let forwarded: u64 = described
        .shards
        .iter()
        .map(|shard| shard.forwarded_requests)
        .sum();
    assert_eq!(forwarded, 0, "every Kafka produce went to its owner shard");

    // The native door reads all 6000 from the start (nothing is missing, so no fill).
    let consumed = run(&["consume", "--broker", &native, "--records", "6000"]);
    assert_eq!(consumed["records"], 6000);
    // More through the native door; the Kafka door reads all 9000.
    run(&["produce", "--broker", &native, "--records", "3000"]);
    let consumed = run(&[
        "consume",
        "--protocol",
        "kafka",
        "--broker",
        &kafka,
        "--records",
        "9000",
        "--consumers",
        "2",
    ]);
    assert_eq!(consumed["records"], 9000);
    broker.kill().unwrap();
    broker.wait().unwrap();
}

/// Three `spate serve` nodes on 127.0.0.1-3 (one port for all), each its own process.
struct Cluster {
    _dir: tempfile::TempDir,
    port: u16,
    nodes: Vec<Option<std::process::Child>>,
}

impl Cluster {
    /// Starts again on other ports when a node found its port taken (by a test running
    /// alongside) and exited.
    fn start() -> Cluster {
        (0..5)
            .find_map(|_| Cluster::try_start())
            .expect("the three nodes get free ports")
    }

    fn try_start() -> Option<Cluster> {
        let dir = tempfile::tempdir().unwrap();
        let spate = Path::new(env!("CARGO_BIN_EXE_spate-loadgen")).with_file_name("spate");
        // The listener, the shard's port after it and the metrics port, free on all three addresses.
        let port = (0..50)
            .find_map(|_| {
                let port = spate::server::free_port_range("127.0.0.1".parse().unwrap(), 2).ok()?;
                (2..=3)
                    .all(|node| {
                        (0..3).all(|offset| {
                            std::net::TcpListener::bind(format!("127.0.0.{node}:{}", port + offset))
                                .is_ok()
                        })
                    })
                    .then_some(port)
            })
            .expect("a port free on every address");
        let voters: Vec<String> = (1..=3)
            .map(|id| format!("{id}@127.0.0.{id}:{port}"))
            .collect();
        let nodes = (1..=3)
            .map(|id| {
                Some(
                    Command::new(&spate)
                        .args([
                            "serve",
                            "--node-id",
                            &id.to_string(),
                            "--cluster",
                            &voters.join(","),
                            "--shards",
                            "1",
                            "--kafka-listen",
                            "none",
                            "--metrics-listen",
                            &format!("127.0.0.{id}:{}", port + 2),
                            "--memory-max",
                            "256MiB",
                        ])
                        .arg("--data-dir")
                        .arg(dir.path().join(format!("node{id}")))
                        .stderr(
                            std::fs::File::create(dir.path().join(format!("node{id}.log")))
                                .unwrap(),
                        )
                        .spawn()
                        .expect("the spate binary, built beside the load generator"),
                )
            })
            .collect();
        let mut cluster = Cluster {
            _dir: dir,
            port,
            nodes,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let exited = cluster
                .nodes
                .iter_mut()
                .flatten()
                .any(|node| node.try_wait().ok().flatten().is_some());
            if exited {
                return None;
            }
            let formed = spate::client::Connection::connect(&cluster.address(1), "test")
                .and_then(|mut connection| connection.describe_cluster(&[]))
                .is_ok_and(|described| {
                    described.controller > 0
                        && described.nodes.len() == 3
                        && described.nodes.iter().all(|node| !node.fenced)
                });
            if formed {
                return Some(cluster);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the nodes form a cluster"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    fn address(&self, id: u64) -> String {
        format!("127.0.0.{id}:{}", self.port)
    }

    /// The leader of each partition of `topic`, as node 1 sees it (0 for none).
    fn leaders(&self, topic: &str) -> Vec<u64> {
        spate::client::Connection::connect(&self.address(1), "test")
            .and_then(|mut connection| connection.describe_cluster(&[topic]))
            .ok()
            .and_then(|described| described.topics.into_iter().next())
            .map(|topic| {
                topic
                    .partitions
                    .iter()
                    .map(|partition| partition.leader.max(0) as u64)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn kill(&mut self, id: u64) {
        if let Some(mut node) = self.nodes[id as usize - 1].take() {
            node.kill().unwrap();
            node.wait().unwrap();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.iter_mut().flatten() {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

/// An e2e run against three nodes (replication factor 3, acks=all) whose bootstrap node
/// leads a partition and is killed -9 mid-run: the producers send the refused batches
/// again to the new leaders, the consumers find them too, and the run completes with
/// every record acknowledged and consumed.
#[test]
fn a_run_follows_the_leaders_through_a_failover() {
    let mut cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("failover.json");
    let run = spawn_loadgen(
        &[
            "e2e",
            "--broker",
            &cluster.address(1),
            "--replication-factor",
            "3",
            "--partitions",
            "3",
            "--records",
            "40000",
            "--rate",
            "8000",
            "--message-size",
            "200",
        ],
        &path,
    );
    // Once the run is under way, kill a node that leads some partition (node 1, the one
    // the run bootstrapped from, if it leads one).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let victim = loop {
        let leaders = cluster.leaders("loadgen");
        if leaders.len() != 3 || leaders.contains(&0) {
            assert!(std::time::Instant::now() < deadline, "the topic is created");
            std::thread::sleep(std::time::Duration::from_millis(100));
            continue;
        }
        // Records acknowledged so far, over the partitions, each asked of its leader.
        let end: Result<i64, spate::client::ClientError> = leaders
            .iter()
            .enumerate()
            .map(|(partition, leader)| {
                spate::client::Connection::connect(&cluster.address(*leader), "test").and_then(
                    |mut connection| {
                        connection.list_offset(
                            "loadgen",
                            partition as u32,
                            spate::protocol::OFFSET_LATEST,
                        )
                    },
                )
            })
            .sum();
        let producing = matches!(end, Ok(end) if end > 8000);
        if producing {
            break if leaders.contains(&1) { 1 } else { leaders[0] };
        }
        if std::time::Instant::now() > deadline {
            let mut run = run;
            let _ = run.kill();
            let output = run.wait_with_output().unwrap();
            panic!(
                "the run does not get under way (leaders {leaders:?}, {end:?} records \
                 acknowledged): {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    cluster.kill(victim);
    let output = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "node {victim} killed: {stderr}");
    let report = json(&path);
    check_schema(&report);
    assert_eq!(report["complete"], true, "{report}");
    assert!(
        report["records"].as_u64().unwrap() >= 40000,
        "every record consumed: {report}"
    );
    assert!(
        report["consumer_failovers"].as_u64().unwrap() > 0,
        "the consumers found the new leaders: {report}"
    );
    eprintln!(
        "node {victim} killed: {} batches sent again, {} consumer failovers",
        report["resent_batches"], report["consumer_failovers"]
    );
}
