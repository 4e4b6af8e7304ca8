//! The broker end to end: the real `spate` binary on loopback, driven by the Rust client
//! and by raw bytes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use spate::client::{ClientError, Connection};
use spate::protocol::{Acks, ErrorCode, OFFSET_EARLIEST, OFFSET_LATEST};

use crate::support::{batch, records};

/// A broker process on loopback with its own data directory; stopped (SIGTERM) on drop.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    /// The Kafka listener's port (shard i's own is `kafka_port + 1 + i`).
    pub kafka_port: u16,
    pub data_dir: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

/// A port P such that P and the shard ports after it are free right now.
pub fn free_ports(count: usize) -> u16 {
    for _ in 0..100 {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        if usize::from(port) + count >= usize::from(u16::MAX) {
            continue;
        }
        let free = (1..=count as u16)
            .all(|offset| std::net::TcpListener::bind(("127.0.0.1", port + offset)).is_ok());
        if free {
            return port;
        }
    }
    panic!("no free ports");
}

impl Broker {
    pub fn start(shards: usize) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let mut broker = Broker::start_in(&data_dir, shards, &[]);
        broker._dir = Some(dir);
        broker
    }

    /// A broker on a temporary data directory of its own, with extra `serve` flags.
    pub fn start_flagged(shards: usize, extra: &[&str]) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let mut broker = Broker::start_in(&dir.path().join("data"), shards, extra);
        broker._dir = Some(dir);
        broker
    }

    pub fn start_in(data_dir: &Path, shards: usize, extra: &[&str]) -> Broker {
        Broker::start_retrying(data_dir, shards, None, extra, &|_| {})
    }

    pub fn start_at(data_dir: &Path, shards: usize, port: u16, extra: &[&str]) -> Broker {
        Broker::start_retrying(data_dir, shards, Some(port), extra, &|_| {})
    }

    /// Starts a broker whose command `configure` may adjust first (limits, environment).
    pub fn start_with(
        data_dir: &Path,
        shards: usize,
        port: u16,
        extra: &[&str],
        configure: impl Fn(&mut Command),
    ) -> Broker {
        Broker::start_retrying(data_dir, shards, Some(port), extra, &configure)
    }

    /// A port found free may be taken by another test (a client's connection, another
    /// broker) before the broker binds it: then the broker exits at once, and it is
    /// started again on ports chosen afresh (the native port too, unless the test chose
    /// it).
    fn start_retrying(
        data_dir: &Path,
        shards: usize,
        port: Option<u16>,
        extra: &[&str],
        configure: &dyn Fn(&mut Command),
    ) -> Broker {
        let mut exits = Vec::new();
        for _ in 0..4 {
            let port = port.unwrap_or_else(|| free_ports(shards + 1));
            match Broker::try_start(data_dir, shards, port, extra, configure) {
                Ok(broker) => return broker,
                Err(status) => exits.push(status),
            }
        }
        panic!(
            "the broker did not start: it exited at once {} times ({exits:?}); \
             SPATE_TEST_BROKER_LOG=1 shows why",
            exits.len()
        );
    }

    /// The broker once it accepts connections, or how it exited before that.
    fn try_start(
        data_dir: &Path,
        shards: usize,
        port: u16,
        extra: &[&str],
        configure: &dyn Fn(&mut Command),
    ) -> Result<Broker, std::process::ExitStatus> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_spate"));
        configure(&mut command);
        // Every broker gets Kafka ports of its own (the default, 9092, would be shared),
        // unless the test chooses.
        let kafka_port = if extra.contains(&"--kafka-listen") {
            0
        } else {
            free_ports(shards + 1)
        };
        let kafka_listen = format!("127.0.0.1:{kafka_port}");
        let kafka_args: &[&str] = if kafka_port == 0 {
            &[]
        } else {
            &["--kafka-listen", &kafka_listen]
        };
        // Metrics on a port of their own (the default, 9644, would be shared), unless the
        // test chooses.
        let metrics_address = crate::metrics::metrics_address();
        let metrics_args: &[&str] = if extra.contains(&"--metrics-listen") {
            &[]
        } else {
            &["--metrics-listen", &metrics_address]
        };
        let child = command
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--shards",
                &shards.to_string(),
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .args(kafka_args)
            .args(metrics_args)
            .stdout(Stdio::null())
            // SPATE_TEST_BROKER_LOG=1 shows the brokers' logs when a test needs explaining.
            .stderr(if std::env::var_os("SPATE_TEST_BROKER_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap();
        let mut broker = Broker {
            child: Some(child),
            port,
            kafka_port,
            data_dir: data_dir.to_path_buf(),
            _dir: None,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Connection::connect(&broker.address(), "probe").is_err() {
            let child = broker.child.as_mut().expect("started");
            if let Some(status) = child.try_wait().unwrap() {
                broker.child = None;
                return Err(status);
            }
            assert!(Instant::now() < deadline, "the broker did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(broker)
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn shard_address(&self, shard: usize) -> String {
        format!("127.0.0.1:{}", self.port + 1 + shard as u16)
    }

    /// The broker's resident memory, from /proc.
    pub fn resident_bytes(&self) -> u64 {
        self.memory_bytes("VmRSS:")
    }

    /// The most memory the broker has held resident since it started (VmHWM).
    pub fn peak_resident_bytes(&self) -> u64 {
        self.memory_bytes("VmHWM:")
    }

    fn memory_bytes(&self, field: &str) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status
            .lines()
            .find(|line| line.starts_with(field))
            .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends `signal` to the broker process.
    pub fn signal(&self, signal: i32) {
        let pid = self.pid();
        // SAFETY: a plain kill(2) to a child this test started and has not reaped.
        unsafe { libc::kill(pid as i32, signal) };
    }

    /// Whether the broker process is still running.
    pub fn is_running(&mut self) -> bool {
        let child = self.child.as_mut().expect("started");
        child.try_wait().unwrap().is_none()
    }

    pub fn connect(&self) -> Connection {
        Connection::connect(&self.address(), "test").unwrap()
    }

    /// SIGTERM and wait: a graceful stop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let status = child.wait().unwrap();
            assert!(status.success(), "graceful stop exits 0, got {status}");
        }
    }
}

/// A `spate serve` started by hand (not through `Broker`), killed when dropped.
pub struct Serving(pub Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn values(bytes: &[u8]) -> Vec<(i64, String)> {
    records(bytes)
        .into_iter()
        .map(|(offset, value)| (offset, String::from_utf8_lossy(&value).into_owned()))
        .collect()
}

/// Reads a partition from `offset` to its end.
pub fn read_partition(
    connection: &mut Connection,
    topic: &str,
    partition: u32,
    mut offset: i64,
) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    loop {
        let answer = connection
            .fetch(topic, partition, offset, 1 << 20, 0)
            .unwrap();
        assert!(answer.status.is_ok(), "{}", answer.status);
        let got: Vec<_> = values(&answer.records)
            .into_iter()
            .filter(|(at, _)| *at >= offset)
            .collect();
        match got.last() {
            Some((last, _)) => offset = last + 1,
            None => return out,
        }
        out.extend(got);
    }
}

#[test]
fn produce_and_consume_with_one_and_two_shards() {
    for shards in [1, 2] {
        let broker = Broker::start(shards);
        let mut client = broker.connect();
        assert_eq!(client.versions.shard_count as usize, shards);
        assert!(
            client
                .create_topic("orders", 4, &[])
                .unwrap()
                .status
                .is_ok()
        );
        for partition in 0..4 {
            for round in 0..3 {
                let answer = client
                    .produce(
                        "orders",
                        partition,
                        batch(&format!("p{partition}r{round}"), 5, 100, 1_000),
                        Acks::All,
                    )
                    .unwrap()
                    .unwrap();
                assert!(answer.status.is_ok(), "{}", answer.status);
                assert_eq!(answer.base_offset, round * 5);
            }
        }
        for partition in 0..4 {
            let got = read_partition(&mut client, "orders", partition, 0);
            assert_eq!(got.len(), 15);
            for (index, (offset, value)) in got.iter().enumerate() {
                assert_eq!(*offset, index as i64);
                assert!(
                    value.starts_with(&format!("p{partition}r{}-{}", index / 5, index % 5)),
                    "{value}"
                );
            }
            assert_eq!(
                client
                    .list_offset("orders", partition, OFFSET_LATEST)
                    .unwrap(),
                15
            );
            assert_eq!(
                client
                    .list_offset("orders", partition, OFFSET_EARLIEST)
                    .unwrap(),
                0
            );
        }
    }
}

#[test]
fn a_request_on_a_shard_that_does_not_own_the_partition_is_answered() {
    let broker = Broker::start(2);
    let mut client = broker.connect();
    client.create_topic("routed", 4, &[]).unwrap();
    let metadata = client.metadata(&["routed"]).unwrap();
    assert_eq!(metadata.shards.len(), 2);
    for partition in &metadata.topics[0].partitions {
        let other = 1 - partition.shard_id as usize;
        let mut elsewhere = Connection::connect(&broker.shard_address(other), "test").unwrap();
        assert_eq!(elsewhere.versions.shard_id as usize, other);
        let answer = elsewhere
            .produce(
                "routed",
                partition.partition,
                batch("fwd", 3, 10, 0),
                Acks::All,
            )
            .unwrap()
            .unwrap();
        assert!(answer.status.is_ok(), "{}", answer.status);
        let got = read_partition(&mut elsewhere, "routed", partition.partition, 0);
        assert_eq!(got.len(), 3);
        let mut owner =
            Connection::connect(&broker.shard_address(partition.shard_id as usize), "test")
                .unwrap();
        assert_eq!(
            read_partition(&mut owner, "routed", partition.partition, 0),
            got
        );
    }
}

#[test]
fn long_polling_wakes_on_new_data() {
    let broker = Broker::start(2);
    let mut client = broker.connect();
    client.create_topic("poll", 1, &[]).unwrap();
    let address = broker.address();
    let waiter = std::thread::spawn(move || {
        let mut consumer = Connection::connect(&address, "consumer").unwrap();
        let started = Instant::now();
        let answer = consumer.fetch("poll", 0, 0, 1 << 20, 20_000).unwrap();
        (values(&answer.records), started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    client
        .produce("poll", 0, batch("wake", 1, 10, 0), Acks::All)
        .unwrap();
    let (got, waited) = waiter.join().unwrap();
    assert_eq!(
        got.len(),
        1,
        "the fetch returned the new record, not a timeout ({waited:?})"
    );
    // A fetch with nothing to return waits its full time and comes back empty.
    let answer = client.fetch("poll", 0, 1, 1 << 20, 200).unwrap();
    assert!(answer.status.is_ok() && answer.records.is_empty());
}

/// The long-poll waits under way on each shard, once they have settled at `expected`
/// (or what they are after 3 s).
fn long_poll_waits(client: &mut Connection, expected: &[u32]) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let waits: Vec<u32> = client
            .describe_broker()
            .unwrap()
            .shards
            .iter()
            .map(|shard| shard.long_poll_waits)
            .collect();
        if waits == expected || Instant::now() > deadline {
            return waits;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_long_poll_leaves_no_waits_behind_on_other_shards() {
    let broker = Broker::start(2);
    let mut client = broker.connect();
    client.create_topic("trickle", 8, &[]).unwrap();
    let owners = client.metadata(&["trickle"]).unwrap().topics[0]
        .partitions
        .clone();
    let on_shard_1 = owners.iter().filter(|p| p.shard_id == 1).count() as u32;
    let on_shard_0 = 8 - on_shard_1;
    let local = owners.iter().find(|p| p.shard_id == 0).unwrap().partition;
    // A fetch on shard 0 of all 8 partitions with a min_bytes a trickle never reaches:
    // it waits on every partition, on both shards.
    let mut stream = TcpStream::connect(broker.shard_address(0)).unwrap();
    let fetch = spate::protocol::Request::Fetch(spate::protocol::FetchRequest {
        max_wait_ms: 30_000,
        min_bytes: 10 << 20,
        max_bytes: 64 << 20,
        topics: vec![spate::protocol::FetchTopic {
            name: "trickle".into(),
            partitions: (0..8)
                .map(|partition| spate::protocol::FetchPartition {
                    partition,
                    offset: 0,
                    max_bytes: 1 << 20,
                })
                .collect(),
        }],
    });
    stream.write_all(&fetch.encode(1)).unwrap();
    assert_eq!(
        long_poll_waits(&mut client, &[on_shard_0, on_shard_1]),
        [on_shard_0, on_shard_1]
    );
    // Each record wakes the fetch, which reads and waits again on every partition. The
    // waits it gave up on, on shard 1, must end with it, not linger for their 30 s.
    for round in 0..5 {
        let record = batch(&format!("drop{round}"), 1, 10, 0);
        client.produce("trickle", local, record, Acks::All).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        long_poll_waits(&mut client, &[on_shard_0, on_shard_1]),
        [on_shard_0, on_shard_1],
        "one wait per partition, after five wake-ups"
    );
    // A connection that closes ends its long poll and every wait of it.
    drop(stream);
    assert_eq!(long_poll_waits(&mut client, &[0, 0]), [0, 0]);
    let described = client.describe_broker().unwrap();
    assert_eq!(
        described
            .shards
            .iter()
            .map(|shard| shard.partitions)
            .sum::<u32>(),
        8
    );
    assert!(
        described.shards[0].forwarded_requests > 0,
        "waits forwarded to shard 1"
    );
    assert!(described.open_files > 0);
}

#[test]
fn a_restart_keeps_topics_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut broker = Broker::start_in(&data_dir, 2, &[]);
    let mut client = broker.connect();
    client
        .create_topic("kept", 2, &[("flush.ms".into(), "0".into())])
        .unwrap();
    client
        .produce("kept", 1, batch("before", 4, 10, 0), Acks::All)
        .unwrap();
    drop(client);
    broker.stop();
    let broker = Broker::start_in(&data_dir, 2, &[]);
    let mut client = broker.connect();
    let topics = client.describe_topics(&[]).unwrap();
    assert_eq!(topics.len(), 1);
    assert_eq!(topics[0].partitions, 2);
    assert!(
        topics[0]
            .configs
            .contains(&("flush.ms".to_string(), "0".to_string()))
    );
    let got = read_partition(&mut client, "kept", 1, 0);
    assert_eq!(got.len(), 4);
    let next = client
        .produce("kept", 1, batch("after", 1, 10, 0), Acks::All)
        .unwrap()
        .unwrap();
    assert_eq!(next.base_offset, 4);
}

#[test]
fn errors_come_back_with_codes_and_messages() {
    let broker = Broker::start_flagged(1, &["--auto-create-topics", "false"]);
    let mut client = broker.connect();
    let unknown = client
        .produce("missing", 0, batch("x", 1, 1, 0), Acks::All)
        .unwrap()
        .unwrap();
    assert_eq!(unknown.status.code, ErrorCode::UnknownTopicOrPartition);
    assert!(unknown.status.message.contains("missing"));
    client.create_topic("t", 1, &[]).unwrap();
    assert_eq!(
        client.create_topic("t", 1, &[]).unwrap().status.code,
        ErrorCode::TopicAlreadyExists
    );
    let bad_config = client
        .create_topic("u", 1, &[("flush.ms".into(), "soon".into())])
        .unwrap();
    assert_eq!(bad_config.status.code, ErrorCode::InvalidConfig);
    let no_partition = client
        .produce("t", 7, batch("x", 1, 1, 0), Acks::All)
        .unwrap()
        .unwrap();
    assert_eq!(no_partition.status.code, ErrorCode::UnknownTopicOrPartition);
    let mut corrupt = batch("x", 1, 1, 0).to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    let answer = client
        .produce("t", 0, Bytes::from(corrupt), Acks::All)
        .unwrap()
        .unwrap();
    assert_eq!(answer.status.code, ErrorCode::CorruptBatch);
    let out_of_range = client.fetch("t", 0, 99, 1 << 20, 0).unwrap();
    assert_eq!(out_of_range.status.code, ErrorCode::OffsetOutOfRange);
    assert!(client.delete_topic("t").unwrap().status.is_ok());
    assert_eq!(
        client.delete_topic("t").unwrap().status.code,
        ErrorCode::UnknownTopicOrPartition
    );
    assert!(
        !broker.data_dir.join("topics/t-0").exists(),
        "a deleted topic's data is removed"
    );
}

/// Sends raw bytes on a fresh connection and returns whatever comes back before the
/// broker closes it (or a short timeout).
fn raw_exchange(address: &str, bytes: &[u8], close_write: bool) -> Vec<u8> {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    if close_write {
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

#[test]
fn garbage_truncated_and_oversized_frames_leave_the_broker_serving() {
    let broker = Broker::start(2);
    let address = broker.address();
    // Oversized: a length far over the 8 MiB limit closes the connection at once.
    assert!(raw_exchange(&address, &u32::MAX.to_be_bytes(), false).is_empty());
    // Garbage: random bytes that frame as an unknown request kind get an error answer.
    let garbage = [0, 0, 0, 9, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5];
    let answer = raw_exchange(&address, &garbage, true);
    assert!(answer.len() > 8, "an error response");
    assert_eq!(
        u16::from_be_bytes([answer[8], answer[9]]),
        ErrorCode::UnknownRequestKind as u16
    );
    // A known kind with a malformed body: InvalidRequest.
    let mut malformed = vec![0, 0, 0, 12, 0, 1, 0, 1, 0, 0, 0, 7];
    malformed.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
    let answer = raw_exchange(&address, &malformed, true);
    assert_eq!(
        u16::from_be_bytes([answer[8], answer[9]]),
        ErrorCode::InvalidRequest as u16
    );
    // Truncated: a frame that never completes, then the client goes away.
    assert!(raw_exchange(&address, &[0, 0, 1, 0, 0, 5], true).is_empty());
    // A header shorter than a request header closes the connection.
    assert!(raw_exchange(&address, &[0, 0, 0, 2, 0, 1], true).is_empty());
    // The next client is served normally.
    let mut client = broker.connect();
    client.create_topic("after", 1, &[]).unwrap();
    assert!(
        client
            .produce("after", 0, batch("ok", 1, 1, 0), Acks::All)
            .unwrap()
            .unwrap()
            .status
            .is_ok()
    );
}

pub fn spate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn bad_flags_an_unusable_data_directory_and_a_busy_port_fail_with_one_clear_line() {
    let bad_flag = spate(&["serve", "--shards", "many"]);
    assert!(!bad_flag.status.success());
    assert!(String::from_utf8_lossy(&bad_flag.stderr).contains("--shards"));

    let bad_cpus = spate(&["serve", "--cpus", "0-"]);
    assert!(!bad_cpus.status.success());
    assert!(String::from_utf8_lossy(&bad_cpus.stderr).contains("core list"));

    let bad_size = spate(&["serve", "--memory-max", "lots"]);
    assert!(!bad_size.status.success());
    let message = String::from_utf8_lossy(&bad_size.stderr);
    assert!(
        message.contains("--memory-max") && message.contains("512MiB"),
        "{message}"
    );

    let starved = spate(&["serve", "--memory-max", "8MiB", "--shards", "1"]);
    assert_eq!(starved.status.code(), Some(1));
    let message = String::from_utf8_lossy(&starved.stderr);
    assert!(
        message.contains("--memory-max") && message.contains("16 MiB"),
        "{message}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let unusable = spate(&[
        "serve",
        "--data-dir",
        file.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "1",
    ]);
    assert_eq!(unusable.status.code(), Some(1));
    let message = String::from_utf8_lossy(&unusable.stderr);
    assert!(message.contains("data directory"), "{message}");

    let broker = Broker::start(1);
    let busy = spate(&[
        "serve",
        "--data-dir",
        dir.path().join("other").to_str().unwrap(),
        "--listen",
        &broker.address(),
        "--shards",
        "1",
    ]);
    assert_eq!(busy.status.code(), Some(1));
    let message = String::from_utf8_lossy(&busy.stderr);
    assert!(
        message.contains(&broker.address()) && message.contains("listen"),
        "{message}"
    );

    // The Kafka port busy (the native one free): one line naming it, exit 1.
    let kafka_address = format!("127.0.0.1:{}", broker.kafka_port);
    let busy_kafka = spate(&[
        "serve",
        "--data-dir",
        dir.path().join("third").to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--kafka-listen",
        &kafka_address,
        "--shards",
        "1",
    ]);
    assert_eq!(busy_kafka.status.code(), Some(1));
    let message = String::from_utf8_lossy(&busy_kafka.stderr);
    assert!(message.contains(&kafka_address), "{message}");
    assert_eq!(message.trim().lines().count(), 1, "{message}");

    let same_dir = spate(&[
        "serve",
        "--data-dir",
        broker.data_dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(same_dir.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&same_dir.stderr).contains("in use"));
}

#[test]
fn an_unreachable_broker_is_a_clear_client_error() {
    let port = free_ports(0);
    let error = Connection::connect(&format!("127.0.0.1:{port}"), "test")
        .err()
        .expect("unreachable");
    assert!(matches!(error, ClientError::Unreachable { .. }));
    assert!(error.to_string().contains(&port.to_string()));
}

#[test]
fn a_pipeline_fails_its_requests_once_the_oldest_outlives_the_answer_timeout() {
    use spate::client::Pipeline;
    let broker = Broker::start(1);
    let mut client = broker.connect();
    client.create_topic("slow", 1, &[]).unwrap();
    // A pipeline whose connection waits at most 300 ms for an answer.
    let impatient = || {
        let connection =
            Connection::connect_with_timeout(&broker.address(), "t", Duration::from_millis(300))
                .unwrap();
        let (answers, received) = std::sync::mpsc::channel();
        (Pipeline::new(connection, 4, answers).unwrap(), received)
    };
    let (mut pipeline, received) = impatient();
    // A 30 s long poll on an empty partition: the broker rightly stays silent that long,
    // longer than this client is willing to wait.
    pipeline
        .send(&fetch_request("slow", &[(0, 0)], 1 << 20, 1, 30_000), 1u32)
        .unwrap();
    let started = Instant::now();
    pipeline.drain();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "drain ends with the answer timeout, not the poll"
    );
    let answer = received.recv_timeout(Duration::from_secs(1)).unwrap();
    assert_eq!(answer.token, 1);
    let error = answer.response.expect_err("no answer in time");
    assert!(
        error.to_string().contains("did not answer in time"),
        "{error}"
    );
    assert!(
        pipeline
            .send(&fetch_request("slow", &[(0, 0)], 1, 1, 0), 2)
            .is_err()
    );
    // Answers to other requests flowing meanwhile do not hide the one that never comes.
    let (mut pipeline, received) = impatient();
    pipeline
        .send(&fetch_request("slow", &[(0, 0)], 1 << 20, 1, 30_000), 10u32)
        .unwrap();
    let started = Instant::now();
    let mut failed = false;
    for index in 11..200 {
        if pipeline
            .send(&fetch_request("slow", &[(0, 0)], 1, 1, 0), index)
            .is_err()
        {
            failed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        failed,
        "the pipeline failed while other answers kept coming"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let tokens: Vec<u32> = received.try_iter().map(|answer| answer.token).collect();
    assert!(tokens.contains(&10), "the poll's token came back");
    let mut unique = tokens.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), tokens.len(), "each token comes back once");
    // An idle pipeline with nothing in flight is not timed out.
    let (mut pipeline, received) = impatient();
    std::thread::sleep(Duration::from_millis(800));
    pipeline
        .send(&fetch_request("slow", &[(0, 0)], 1 << 20, 1, 0), 3u32)
        .unwrap();
    pipeline.drain();
    let answer = received.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(answer.response.is_ok());
}

/// A batch kept in the tail cache holds its own bytes, not the whole request frame it
/// arrived in: a tiny batch produced beside a 1 MB one must not keep that megabyte alive.
#[test]
fn a_small_batch_in_the_tail_cache_does_not_pin_its_request_frame() {
    use spate::protocol::{ProducePartition, ProduceRequest, ProduceTopic, Request, Response};
    let broker = Broker::start(1);
    let mut client = broker.connect();
    client.create_topic("pair", 2, &[]).unwrap();
    let before = broker.resident_bytes();
    for index in 0..150 {
        let request = Request::Produce(ProduceRequest {
            acks: Acks::All,
            timeout_ms: 30_000,
            topics: vec![ProduceTopic {
                name: "pair".into(),
                partitions: vec![
                    ProducePartition {
                        partition: 0,
                        records: batch(&format!("big{index}"), 1, 1_000_000, 0),
                    },
                    ProducePartition {
                        partition: 1,
                        records: batch(&format!("tiny{index}"), 1, 10, 0),
                    },
                ],
            }],
        });
        let Response::Produce(answer) = client.call(&request).unwrap() else {
            panic!("a produce answer")
        };
        for partition in &answer.topics[0].partitions {
            assert!(partition.status.is_ok(), "{}", partition.status);
        }
    }
    let grown = broker.resident_bytes().saturating_sub(before);
    // Partition 0's tail cache holds at most 8 MiB; partition 1's 150 tiny batches next
    // to nothing. Pinned frames would be 150 MB.
    assert!(grown < 80 << 20, "resident memory grew by {grown} bytes");
}

/// A frame announced but barely sent commits memory for what arrived, not for what was
/// announced: 40 connections each announcing 8 MB and sending 1 KB stay small.
#[test]
fn announced_but_unsent_frames_commit_no_memory_for_the_missing_bytes() {
    use std::io::Write;
    let broker = Broker::start(1);
    let before = broker.resident_bytes();
    let streams: Vec<std::net::TcpStream> = (0..40)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(broker.address()).unwrap();
            let mut start = ((8 << 20) - 64u32).to_be_bytes().to_vec();
            start.resize(4 + 1024, 7);
            stream.write_all(&start).unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let grown = broker.resident_bytes().saturating_sub(before);
    assert!(grown < 100 << 20, "resident memory grew by {grown} bytes");
    drop(streams);
    assert!(broker.connect().metadata(&[]).is_ok());
}

#[test]
fn a_broker_that_never_answers_is_a_timeout_not_a_hang() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = silent.local_addr().unwrap().to_string();
    let started = Instant::now();
    let error = Connection::connect_with_timeout(&address, "t", Duration::from_millis(300))
        .err()
        .expect("no answer to the handshake");
    assert!(matches!(error, ClientError::TimedOut), "{error}");
    assert!(error.to_string().contains("did not answer in time"));
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(silent);
}

#[test]
fn the_broker_applies_retention_on_its_own() {
    let broker = Broker::start_flagged(2, &["--retention-check-interval-ms", "100"]);
    let mut client = broker.connect();
    client
        .create_topic("old", 1, &[("retention.ms".into(), "60000".into())])
        .unwrap();
    // Record timestamps from 1970: long past a minute of retention.
    for _ in 0..3 {
        client
            .produce("old", 0, batch("ancient", 5, 100, 1_000), Acks::All)
            .unwrap();
    }
    assert_eq!(client.list_offset("old", 0, OFFSET_EARLIEST).unwrap(), 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.list_offset("old", 0, OFFSET_EARLIEST).unwrap() != 15 {
        assert!(Instant::now() < deadline, "retention never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    let below = client.fetch("old", 0, 0, 1 << 20, 0).unwrap();
    assert_eq!(below.status.code, ErrorCode::OffsetOutOfRange);
    assert_eq!(below.log_start_offset, 15);
}

#[test]
fn auto_creation_and_acks_zero() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let broker = Broker::start_in(
        &data_dir,
        2,
        &["--auto-create-topics", "--default-partitions", "3"],
    );
    let mut client = broker.connect();
    let answer = client
        .produce("fresh", 2, batch("auto", 2, 10, 0), Acks::All)
        .unwrap()
        .unwrap();
    assert!(answer.status.is_ok(), "{}", answer.status);
    assert_eq!(
        client.metadata(&["fresh"]).unwrap().topics[0]
            .partitions
            .len(),
        3
    );
    // acks=0: no answer comes; a later request on the same connection sees the records.
    assert!(
        client
            .produce("fresh", 2, batch("fire", 3, 10, 0), Acks::None)
            .unwrap()
            .is_none()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.list_offset("fresh", 2, OFFSET_LATEST).unwrap() != 5 {
        assert!(
            Instant::now() < deadline,
            "the acks=0 records never arrived"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(broker);
    // Turned off, producing to an unknown topic is an error.
    let broker = Broker::start_in(
        &dir.path().join("other"),
        1,
        &["--auto-create-topics", "false"],
    );
    let mut client = broker.connect();
    let answer = client
        .produce("fresh", 0, batch("no", 1, 1, 0), Acks::All)
        .unwrap()
        .unwrap();
    assert_eq!(answer.status.code, ErrorCode::UnknownTopicOrPartition);
}

#[test]
fn limits_from_a_config_file_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("spate.toml");
    std::fs::write(
        &config,
        "frame-bytes-max = 4096\nconnections-max-per-shard = 2\n",
    )
    .unwrap();
    let broker = Broker::start_in(
        &dir.path().join("data"),
        1,
        &["--config", config.to_str().unwrap()],
    );
    let mut client = broker.connect();
    client.create_topic("small", 1, &[]).unwrap();
    assert!(
        client
            .produce("small", 0, batch("fits", 2, 100, 0), Acks::All)
            .unwrap()
            .unwrap()
            .status
            .is_ok()
    );
    let too_big = client.produce("small", 0, batch("big", 10, 1000, 0), Acks::All);
    assert!(
        too_big.is_err(),
        "a frame over frame-bytes-max closes the connection"
    );
    // The connection limit: with two connections open (the one above was closed by the
    // oversized frame), a third is turned away, and a slot frees when one closes.
    let connect_retrying = || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Connection::connect(&broker.address(), "limit") {
                Ok(connection) => return connection,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(error) => panic!("no free connection slot: {error}"),
            }
        }
    };
    let first = connect_retrying();
    let second = connect_retrying();
    assert!(
        Connection::connect(&broker.address(), "third").is_err(),
        "a connection over the limit is refused"
    );
    drop(first);
    let _again = connect_retrying();
    drop(second);
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "shard = 3\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["serve", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid config file"));
}

#[test]
fn a_connection_s_byte_budget_bounds_its_fetch_answers() {
    let broker = Broker::start_flagged(
        1,
        &[
            "--frame-bytes-max",
            "65536",
            "--buffered-bytes-max-per-connection",
            "1048576",
        ],
    );
    let mut client = broker.connect();
    client.create_topic("b", 1, &[]).unwrap();
    for index in 0..40 {
        let records = batch(&format!("b{index}"), 1, 50_000, 0);
        let answer = client.produce("b", 0, records, Acks::All).unwrap().unwrap();
        assert!(answer.status.is_ok(), "{}", answer.status);
    }
    // 2 MB are there and the fetch asks for 16 MiB, but one connection may hold only
    // 1 MiB: the answer is cut to fit.
    let answer = client.fetch("b", 0, 0, 16 << 20, 0).unwrap();
    assert!(answer.status.is_ok(), "{}", answer.status);
    assert!(
        (512 << 10..1 << 20).contains(&answer.records.len()),
        "{} bytes",
        answer.records.len()
    );

    let output = spate(&["serve", "--buffered-bytes-max-per-connection", "1000"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("must be at least frame-bytes-max"));
}

#[test]
fn a_pipeline_keeps_many_requests_in_flight_and_matches_every_answer() {
    use spate::client::Pipeline;
    use spate::protocol::{ProducePartition, ProduceRequest, ProduceTopic, Request, Response};
    let broker = Broker::start(2);
    let mut client = broker.connect();
    client.create_topic("pipe", 2, &[]).unwrap();
    let (answers, received) = std::sync::mpsc::channel();
    let mut pipeline = Pipeline::new(broker.connect(), 8, answers).unwrap();
    for index in 0..500u32 {
        let request = Request::Produce(ProduceRequest {
            acks: Acks::All,
            timeout_ms: 30_000,
            topics: vec![ProduceTopic {
                name: "pipe".into(),
                partitions: vec![ProducePartition {
                    partition: index % 2,
                    records: batch(&format!("p{index}"), 1, 1, 0),
                }],
            }],
        });
        pipeline.send(&request, index).unwrap();
        assert!(pipeline.in_flight() <= 8);
    }
    pipeline.drain();
    drop(pipeline);
    let mut offsets: Vec<Vec<i64>> = vec![Vec::new(), Vec::new()];
    for answer in received {
        let Ok(Response::Produce(response)) = answer.response else {
            panic!("a produce answer")
        };
        let partition = &response.topics[0].partitions[0];
        assert!(partition.status.is_ok());
        assert_eq!(
            partition.partition,
            answer.token % 2,
            "the answer carries its token"
        );
        offsets[partition.partition as usize].push(partition.base_offset);
    }
    for mut partition in offsets {
        partition.sort();
        assert_eq!(partition, (0..250).collect::<Vec<i64>>());
    }
}

#[test]
fn the_router_talks_to_the_owning_shard_directly() {
    let broker = Broker::start(2);
    let mut client = broker.connect();
    client.create_topic("direct", 6, &[]).unwrap();
    let metadata = client.metadata(&["direct"]).unwrap();
    let mut router = spate::client::ShardRouter::new(broker.connect(), "direct", "test").unwrap();
    assert_eq!(router.partitions(), 6);
    for partition in &metadata.topics[0].partitions {
        assert_eq!(router.owner(partition.partition), Some(partition.shard_id));
        let connection = router.connection_for(partition.partition).unwrap();
        assert_eq!(
            connection.versions.shard_id, partition.shard_id,
            "connected to the owner itself"
        );
        let answer = connection
            .produce(
                "direct",
                partition.partition,
                batch("d", 2, 10, 0),
                Acks::All,
            )
            .unwrap()
            .unwrap();
        assert!(answer.status.is_ok());
    }
    let error = spate::client::ShardRouter::new(broker.connect(), "absent", "test")
        .err()
        .expect("unknown topic");
    assert!(error.to_string().contains("absent"), "{error}");
}

pub fn fetch_request(
    topic: &str,
    entries: &[(u32, i64)],
    max_bytes: u32,
    min_bytes: u32,
    max_wait_ms: u32,
) -> spate::protocol::Request {
    use spate::protocol::{FetchPartition, FetchRequest, FetchTopic, Request};
    Request::Fetch(FetchRequest {
        max_wait_ms,
        min_bytes,
        max_bytes,
        topics: vec![FetchTopic {
            name: topic.into(),
            partitions: entries
                .iter()
                .map(|&(partition, offset)| FetchPartition {
                    partition,
                    offset,
                    max_bytes: 16 << 20,
                })
                .collect(),
        }],
    })
}

#[test]
fn hostile_fetches_are_refused_and_responses_stay_within_max_bytes() {
    use spate::protocol::Response;
    let broker = Broker::start(2);
    let mut client = broker.connect();
    client.create_topic("f", 3, &[]).unwrap();
    for partition in 0..3 {
        client
            .produce("f", partition, batch("big", 50, 1000, 0), Acks::All)
            .unwrap();
    }
    let refused = |client: &mut Connection, request| match client.call(&request) {
        Err(ClientError::Broker(status)) => {
            assert_eq!(status.code, ErrorCode::InvalidRequest, "{status}")
        }
        other => panic!("expected InvalidRequest, got {other:?}"),
    };
    refused(
        &mut client,
        fetch_request("f", &[(0, 0), (0, 0)], 1 << 20, 1, 0),
    );
    let many: Vec<(u32, i64)> = (0..1001).map(|index| (index, 0)).collect();
    refused(&mut client, fetch_request("f", &many, 1 << 20, 1, 0));
    // max_bytes 1: the first partition returns its one batch, the others only offsets.
    let Response::Fetch(response) = client
        .call(&fetch_request("f", &[(0, 0), (1, 0), (2, 0)], 1, 1, 0))
        .unwrap()
    else {
        panic!("a fetch response")
    };
    let partitions = &response.topics[0].partitions;
    assert_eq!(values(&partitions[0].records).len(), 50);
    for partition in &partitions[1..] {
        assert!(partition.status.is_ok() && partition.records.is_empty());
        assert_eq!(partition.high_watermark, 50);
    }
    // The broker is still whole.
    assert!(
        client
            .produce("f", 0, batch("after", 1, 1, 0), Acks::All)
            .unwrap()
            .unwrap()
            .status
            .is_ok()
    );
}

#[test]
fn a_fetch_waits_for_min_bytes_not_just_the_first_record() {
    use spate::protocol::Response;
    let broker = Broker::start(2);
    let mut client = broker.connect();
    client.create_topic("f", 1, &[]).unwrap();
    let one_batch = batch("m", 10, 100, 0).len() as u32;
    let address = broker.address();
    let fetcher = std::thread::spawn(move || {
        let mut consumer = Connection::connect(&address, "consumer").unwrap();
        let request = fetch_request("f", &[(0, 0)], 1 << 20, 3 * one_batch, 20_000);
        match consumer.call(&request).unwrap() {
            Response::Fetch(response) => response.topics[0].partitions[0].records.len() as u32,
            other => panic!("{other:?}"),
        }
    });
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(100));
        client
            .produce("f", 0, batch("m", 10, 100, 0), Acks::All)
            .unwrap();
    }
    assert!(
        fetcher.join().unwrap() >= 3 * one_batch,
        "the fetch returned before min_bytes arrived"
    );
}

#[test]
fn a_broker_restarts_on_its_port_right_after_a_stop_with_clients_connected() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // Other tests take ports from the kernel's ephemeral range (free_ports) and could grab
    // this one between the stop and the restart; take it from below that range instead.
    let port = (20_000..30_000u16)
        .step_by(7)
        .find(|&port| {
            (0..3).all(|offset| std::net::TcpListener::bind(("127.0.0.1", port + offset)).is_ok())
        })
        .expect("a free port below the ephemeral range");
    let mut broker = Broker::start_at(&data_dir, 2, port, &[]);
    let mut client = broker.connect();
    client.create_topic("r", 2, &[]).unwrap();
    client
        .produce("r", 0, batch("x", 1, 1, 0), Acks::All)
        .unwrap();
    broker.stop(); // the client is still connected: the broker's side ends in TIME_WAIT
    drop(client);
    let broker = Broker::start_at(&data_dir, 2, port, &[]);
    let mut client = broker.connect();
    assert_eq!(client.list_offset("r", 0, OFFSET_LATEST).unwrap(), 1);
}

#[test]
fn a_topic_s_tail_cache_is_held_to_the_broker_s_limit() {
    let describe_cache = |client: &mut Connection, topic: &str| -> String {
        let topic = client.describe_topics(&[topic]).unwrap().pop().unwrap();
        assert!(topic.status.is_ok(), "{}", topic.status);
        let (_, value) = topic
            .configs
            .iter()
            .find(|(key, _)| key == "tail.cache.bytes")
            .unwrap()
            .clone();
        value
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let broker = Broker::start_in(&data, 1, &[]);
        let mut client = broker.connect();
        let refused = client
            .create_topic(
                "greedy",
                1,
                &[("tail.cache.bytes".into(), (1u64 << 30).to_string())],
            )
            .unwrap();
        assert_eq!(refused.status.code, ErrorCode::InvalidConfig);
        assert!(
            refused.status.message.contains("--tail-cache-bytes-max"),
            "{}",
            refused.status
        );
        assert!(
            client.metadata(&["greedy"]).unwrap().topics[0]
                .partitions
                .is_empty()
        );
        let at_limit = (64u64 << 20).to_string();
        let created = client
            .create_topic(
                "modest",
                1,
                &[("tail.cache.bytes".into(), at_limit.clone())],
            )
            .unwrap();
        assert!(created.status.is_ok(), "{}", created.status);
        assert_eq!(describe_cache(&mut client, "modest"), at_limit);
    }
    // An operator may allow more; a topic created so keeps its size only while allowed.
    let big = (1u64 << 30).to_string();
    {
        let broker = Broker::start_in(&data, 1, &["--tail-cache-bytes-max", &big]);
        let mut client = broker.connect();
        let created = client
            .create_topic("greedy", 1, &[("tail.cache.bytes".into(), big.clone())])
            .unwrap();
        assert!(created.status.is_ok(), "{}", created.status);
        assert_eq!(describe_cache(&mut client, "greedy"), big);
    }
    let broker = Broker::start_in(&data, 1, &[]);
    let mut client = broker.connect();
    assert_eq!(
        describe_cache(&mut client, "greedy"),
        (64u64 << 20).to_string(),
        "held to the limit the broker runs with now"
    );
}
