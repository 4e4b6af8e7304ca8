//! The command-line client against a real broker: commands as documented, exit codes, and
//! keyed records landing where Kafka's partitioner puts them, in order.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use spate::client::partitioner::partition_for_key;

use crate::server::Broker;

fn spate(broker: &Broker, args: &[&str], stdin: &str) -> Output {
    spate_at(&broker.address(), args, stdin, |_| {})
}

/// Runs `spate ARGS --broker ADDRESS` with `stdin` as its input, after `configure` has
/// adjusted the command (its working directory, say).
fn spate_at(
    address: &str,
    args: &[&str],
    stdin: &str,
    configure: impl FnOnce(&mut Command),
) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_spate"));
    configure(&mut command);
    let mut child = command
        .args(args)
        .args(["--broker", address])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that fails before reading its input closes stdin early: ignore EPIPE.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn failed(output: &Output, needle: &str) {
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(needle),
        "stderr {stderr:?} lacks {needle:?}"
    );
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one clear line: {stderr:?}"
    );
}

#[test]
fn topic_commands_work_and_fail_clearly() {
    let broker = Broker::start(2);
    ok(&spate(
        &broker,
        &[
            "topic",
            "create",
            "orders",
            "--partitions",
            "3",
            "--config",
            "flush.ms=100",
        ],
        "",
    ));
    ok(&spate(&broker, &["topic", "create", "clicks"], ""));
    assert_eq!(
        ok(&spate(&broker, &["topic", "list"], "")),
        "clicks\norders\n"
    );
    let described = ok(&spate(&broker, &["topic", "describe", "orders"], ""));
    assert!(
        described.contains("PartitionCount: 3") && described.contains("flush.ms=100"),
        "{described}"
    );
    assert_eq!(described.matches("Partition: ").count(), 3);
    failed(
        &spate(&broker, &["topic", "create", "orders"], ""),
        "already exists",
    );
    failed(
        &spate(
            &broker,
            &["topic", "create", "x", "--config", "nonsense"],
            "",
        ),
        "key=value",
    );
    failed(
        &spate(&broker, &["topic", "describe", "nope"], ""),
        "does not exist",
    );
    assert_eq!(
        ok(&spate(
            &broker,
            &["topic", "alter", "orders", "--partitions", "5"],
            ""
        )),
        "Topic orders now has 5 partitions.\n"
    );
    let described = ok(&spate(&broker, &["topic", "describe", "orders"], ""));
    assert_eq!(described.matches("Partition: ").count(), 5, "{described}");
    failed(
        &spate(
            &broker,
            &["topic", "alter", "orders", "--partitions", "4"],
            "",
        ),
        "can only be added",
    );
    ok(&spate(&broker, &["topic", "delete", "clicks"], ""));
    failed(
        &spate(&broker, &["topic", "delete", "clicks"], ""),
        "does not exist",
    );
    assert_eq!(ok(&spate(&broker, &["topic", "list"], "")), "orders\n");
}

#[test]
fn produce_prints_offsets_and_consume_formats_records() {
    let broker = Broker::start(2);
    ok(&spate(
        &broker,
        &["topic", "create", "t", "--partitions", "2"],
        "",
    ));
    let lines: String = (0..10).map(|index| format!("value-{index}\n")).collect();
    let offsets = ok(&spate(
        &broker,
        &["produce", "t", "--partition", "1", "--print-offsets"],
        &lines,
    ));
    let expected: String = (0..10).map(|index| format!("1 {index}\n")).collect();
    assert_eq!(offsets, expected);

    let consumed = ok(&spate(
        &broker,
        &[
            "consume",
            "t",
            "--partition",
            "1",
            "--from-beginning",
            "--max-messages",
            "10",
            "--format",
            "%p:%o:%v\\n",
        ],
        "",
    ));
    let expected: String = (0..10)
        .map(|index| format!("1:{index}:value-{index}\n"))
        .collect();
    assert_eq!(consumed, expected);

    let from_offset = ok(&spate(
        &broker,
        &[
            "consume",
            "t",
            "--partition",
            "1",
            "--offset",
            "7",
            "--max-messages",
            "2",
        ],
        "",
    ));
    assert_eq!(from_offset, "value-7\nvalue-8\n");
    // With nothing new, --timeout-ms ends the consumer.
    let idle = ok(&spate(
        &broker,
        &["consume", "t", "--timeout-ms", "300"],
        "",
    ));
    assert_eq!(idle, "");
    failed(
        &spate(&broker, &["consume", "missing", "--timeout-ms", "100"], ""),
        "does not exist",
    );
    failed(
        &spate(&broker, &["produce", "t", "--partition", "9"], "x\n"),
        "partitions 0 to 1",
    );
    failed(
        &spate(
            &broker,
            &["produce", "t", "--acks", "0", "--print-offsets"],
            "x\n",
        ),
        "acks",
    );
    let bad_acks = spate(&broker, &["produce", "t", "--acks", "2"], "");
    assert_eq!(
        bad_acks.status.code(),
        Some(2),
        "clap's exit code for a bad flag"
    );
}

#[test]
fn keyed_records_keep_per_key_order_in_kafkas_partition() {
    let broker = Broker::start(2);
    ok(&spate(
        &broker,
        &["topic", "create", "keyed", "--partitions", "4"],
        "",
    ));
    let keys = ["alpha", "beta", "gamma", "delta", "epsilon"];
    let lines: String = (0..50)
        .map(|index| format!("{}:{index}\n", keys[index % keys.len()]))
        .collect();
    let offsets = ok(&spate(
        &broker,
        &[
            "produce",
            "keyed",
            "--key-separator",
            ":",
            "--print-offsets",
        ],
        &lines,
    ));
    let partitions: Vec<u32> = offsets
        .lines()
        .map(|line| line.split(' ').next().unwrap().parse().unwrap())
        .collect();
    for (index, partition) in partitions.iter().enumerate() {
        let key = keys[index % keys.len()];
        assert_eq!(
            *partition,
            partition_for_key(key.as_bytes(), 4),
            "key {key} lands where Kafka would put it"
        );
    }
    let consumed = ok(&spate(
        &broker,
        &[
            "consume",
            "keyed",
            "--from-beginning",
            "--max-messages",
            "50",
            "--format",
            "%k %v\\n",
        ],
        "",
    ));
    for key in keys {
        let values: Vec<u32> = consumed
            .lines()
            .filter(|line| line.starts_with(&format!("{key} ")))
            .map(|line| line.split(' ').nth(1).unwrap().parse().unwrap())
            .collect();
        assert_eq!(values.len(), 10);
        assert!(
            values.windows(2).all(|pair| pair[0] < pair[1]),
            "{key}: {values:?} in order"
        );
    }
}

#[test]
fn an_unreachable_broker_is_one_clear_line_and_exit_1() {
    // Nothing listens on port 1 (and no test broker can take it).
    let address = "127.0.0.1:1";
    let output = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["topic", "list", "--broker", address])
        .output()
        .unwrap();
    failed(&output, "cannot reach the broker");
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let broker = Broker::start(1);
    ok(&spate(&broker, &["topic", "create", "many"], ""));
    let lines: String = (0..2000).map(|index| format!("line-{index}\n")).collect();
    ok(&spate(&broker, &["produce", "many"], &lines));
    let mut child = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args([
            "consume",
            "many",
            "--from-beginning",
            "--max-messages",
            "2000",
            "--broker",
            &broker.address(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away, like `| head -0`
    let output = child.wait_with_output().unwrap();
    assert!(
        !String::from_utf8_lossy(&output.stderr).contains("panicked"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn an_interactive_producer_sends_each_line_without_waiting_for_eof() {
    let broker = Broker::start(1);
    ok(&spate(&broker, &["topic", "create", "live"], ""));
    let mut child = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["produce", "live", "--broker", &broker.address()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"typed\n").unwrap();
    stdin.flush().unwrap();
    // stdin stays open: the line must still reach the broker (linger, not EOF, sends it).
    let mut client = broker.connect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while client
        .list_offset("live", 0, spate::protocol::OFFSET_LATEST)
        .unwrap()
        != 1
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the typed line was held back"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

#[test]
fn broker_describe_shows_each_shard() {
    let broker = Broker::start(2);
    ok(&spate(
        &broker,
        &["topic", "create", "shown", "--partitions", "6"],
        "",
    ));
    let out = ok(&spate(&broker, &["broker", "describe"], ""));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("Shards: 2"), "{out}");
    assert!(lines[1].starts_with("SHARD"), "{out}");
    let partitions: Vec<u32> = lines[2..]
        .iter()
        .map(|line| line.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(partitions, [3, 3], "{out}");
    let unreachable = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["broker", "describe", "--broker", "127.0.0.1:1"])
        .output()
        .unwrap();
    failed(&unreachable, "127.0.0.1:1");
}

/// The README's walk-through as a newcomer runs it: `spate serve` with its defaults
/// (shards, and the relative `./spate-data`) in an empty working directory, only the
/// port chosen by the test, then the documented commands.
#[test]
fn the_readme_walkthrough_works_on_the_defaults_in_an_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let shards = std::thread::available_parallelism().map_or(1, |count| count.get());
    let port = crate::server::free_ports(shards + 1);
    let address = format!("127.0.0.1:{port}");
    let kafka_address = format!("127.0.0.1:{}", crate::server::free_ports(shards + 1));
    let _serving = crate::server::Serving(
        Command::new(env!("CARGO_BIN_EXE_spate"))
            .args([
                "serve",
                "--listen",
                &address,
                "--kafka-listen",
                &kafka_address,
                "--metrics-listen",
                &crate::metrics::metrics_address(),
            ])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while spate::client::Connection::connect(&address, "probe").is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the broker did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let run = |args: &[&str], stdin: &str| {
        ok(&spate_at(&address, args, stdin, |command| {
            command.current_dir(dir.path());
        }))
    };
    run(
        &[
            "topic",
            "create",
            "orders",
            "--partitions",
            "6",
            "--config",
            "flush.ms=100",
        ],
        "",
    );
    assert_eq!(run(&["topic", "list"], ""), "orders\n");
    assert!(run(&["topic", "describe", "orders"], "").contains("PartitionCount: 6"));
    let offsets = run(
        &[
            "produce",
            "orders",
            "--key-separator",
            ":",
            "--print-offsets",
        ],
        "alice:login\nbob:login\nalice:logout\n",
    );
    assert_eq!(offsets.lines().count(), 3, "{offsets}");
    let consumed = run(
        &[
            "consume",
            "orders",
            "--from-beginning",
            "--max-messages",
            "3",
            "--format",
            "%k=%v\n",
        ],
        "",
    );
    let mut records: Vec<&str> = consumed.lines().collect();
    records.sort_unstable();
    assert_eq!(records, ["alice=login", "alice=logout", "bob=login"]);
    // The README's fixed-partition read: alice's records are on partition 3 of 6.
    let second = run(
        &[
            "consume",
            "orders",
            "--partition",
            "3",
            "--offset",
            "1",
            "--timeout-ms",
            "1000",
        ],
        "",
    );
    assert_eq!(second, "logout\n");
    assert!(run(&["topic", "alter", "orders", "--partitions", "8"], "").contains("now has 8"));
    run(
        &[
            "consume",
            "orders",
            "--group",
            "billing",
            "--from-beginning",
            "--max-messages",
            "3",
        ],
        "",
    );
    assert!(run(&["group", "list"], "").contains("billing"));
    assert!(run(&["group", "describe", "billing"], "").contains("orders"));
    run(&["group", "delete", "billing"], "");
    assert!(run(&["broker", "describe"], "").contains(&format!("Shards: {shards}")));
    run(&["topic", "delete", "orders"], "");
    assert!(dir.path().join("spate-data").join("metadata.bin").exists());
}

/// The README's `cargo run --release -- serve` starts the broker: at the top of the
/// workspace (which also builds spate-loadgen) `cargo run` must pick `spate`. Checked
/// with the dev profile, which the test build has already compiled.
#[test]
fn cargo_run_at_the_top_of_the_workspace_runs_the_broker() {
    let output = Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--", "--version"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("spate "));
}
