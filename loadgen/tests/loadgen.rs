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
    // The listener and the shard's own port after it, both free.
    let port = spate::server::free_port_range("127.0.0.1".parse().unwrap(), 1).unwrap();
    let mut broker = Command::new(spate)
        .args([
            "serve",
            "--shards",
            "1",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--kafka-listen",
            "none",
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
    let mut run = Command::new(env!("CARGO_BIN_EXE_spate-loadgen"))
        .args([
            "produce",
            "--broker",
            &address,
            "--duration",
            "30s",
            "--json",
        ])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
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
    // Native: the listener and two shard ports; Kafka's three just above.
    let port = spate::server::free_port_range("127.0.0.1".parse().unwrap(), 5).unwrap();
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
