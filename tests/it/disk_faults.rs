//! A real broker on a failing disk: a full filesystem and a frozen one (`fsfreeze`), both on
//! a small ext4 image mounted on a loop device (root, as CI and the development machines
//! have; elsewhere SPATE_SKIP_ROOT_TESTS=1 skips them). Produces get a clear error, reads
//! go on, nothing acknowledged is lost, and writes resume once the disk does. Also the
//! device flush that follows a durability round's `syncfs`, traced with strace.

use std::process::Command;
use std::time::{Duration, Instant};

use spate::client::Connection;
use spate::protocol::{
    Acks, ErrorCode, ProducePartition, ProducePartitionResponse, ProduceRequest, ProduceTopic,
    Request, Response,
};

use crate::metrics::{Scrape, http};
use crate::server::{Broker, read_partition};
use crate::support::{LoopMount, batch, fill, wait_for};

/// A broker on `mount`'s filesystem with metrics on a known port.
fn broker_on(mount: &LoopMount) -> (Broker, String) {
    let metrics = crate::metrics::metrics_address();
    let broker = Broker::start_in(
        &mount.mount_point.join("data"),
        1,
        &["--metrics-listen", &metrics, "--memory-max", "256MiB"],
    );
    (broker, metrics)
}

fn errors(metrics: &str, code: &str) -> f64 {
    let (status, page) = http(metrics, "GET", "/metrics");
    assert_eq!(status, 200);
    Scrape::parse(&page).sum("spate_errors_total", &[("code", code)])
}

/// One produce of `records` to partition 0 of `topic` with acks=all and `timeout_ms`.
fn produce(
    client: &mut Connection,
    topic: &str,
    records: bytes::Bytes,
    timeout_ms: u32,
) -> ProducePartitionResponse {
    let request = Request::Produce(ProduceRequest {
        acks: Acks::All,
        timeout_ms,
        topics: vec![ProduceTopic {
            name: topic.to_string(),
            partitions: vec![ProducePartition {
                partition: 0,
                records,
            }],
        }],
    });
    match client.call(&request).unwrap() {
        Response::Produce(mut response) => response.topics.remove(0).partitions.remove(0),
        other => panic!("{other:?}"),
    }
}

fn create(client: &mut Connection, topic: &str) {
    let configs = [
        ("segment.bytes".to_string(), (1 << 20).to_string()),
        ("flush.ms".to_string(), "0".to_string()),
    ];
    assert!(
        client
            .create_topic(topic, 1, &configs)
            .unwrap()
            .status
            .is_ok()
    );
}

#[test]
fn a_full_disk_fails_produces_clearly_keeps_reads_and_resumes_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = LoopMount::new(dir.path(), 48) else {
        return;
    };
    let (broker, metrics) = broker_on(&mount);
    let mut client = broker.connect();
    create(&mut client, "full");
    for index in 0..20 {
        let answer = produce(
            &mut client,
            "full",
            batch(&format!("before{index}"), 8, 1000, 0),
            30_000,
        );
        assert!(answer.status.is_ok(), "{}", answer.status);
    }
    let acknowledged = read_partition(&mut client, "full", 0, 0);
    assert_eq!(acknowledged.len(), 160);

    let filler = mount.mount_point.join("filler");
    fill(&filler);
    let mut refused = 0;
    let mut last_end = 0;
    for index in 0..40 {
        let answer = produce(
            &mut client,
            "full",
            batch(&format!("full{index}"), 8, 1000, 0),
            30_000,
        );
        if answer.status.is_ok() {
            // Blocks the filesystem frees late may still take a few.
            last_end = last_end.max(answer.base_offset + 8);
            continue;
        }
        assert_eq!(answer.status.code, ErrorCode::DiskFull, "{}", answer.status);
        assert!(
            answer.status.message.contains("disk full"),
            "an error the user can act on: {}",
            answer.status
        );
        refused += 1;
    }
    assert!(
        refused > 30,
        "produces on a full disk must fail: {refused} failed"
    );
    assert!(errors(&metrics, "disk_full") >= f64::from(refused));
    // The broker goes on serving: reads of everything acknowledged, metadata.
    let now = read_partition(&mut client, "full", 0, 0);
    assert_eq!(&now[..acknowledged.len()], &acknowledged[..]);
    assert!(client.metadata(&["full"]).is_ok());

    std::fs::remove_file(&filler).unwrap();
    let resumed = wait_for(Duration::from_secs(10), || {
        let answer = produce(&mut client, "full", batch("after", 8, 1000, 0), 30_000);
        answer.status.is_ok().then_some(answer)
    })
    .expect("produces succeed again once space returns");
    assert!(resumed.base_offset >= last_end.max(160));
    let everything = read_partition(&mut client, "full", 0, 0);
    assert_eq!(&everything[..acknowledged.len()], &acknowledged[..]);
    assert!(
        everything
            .iter()
            .any(|(_, value)| value.starts_with("after-0"))
    );

    // Everything acknowledged survives a kill -9 and restart.
    drop(client);
    drop(broker); // SIGKILL
    let broker = Broker::start_in(&mount.mount_point.join("data"), 1, &[]);
    let mut client = broker.connect();
    assert_eq!(read_partition(&mut client, "full", 0, 0), everything);
}

/// Thaws the filesystem when dropped, so that a failing test does not leave it frozen.
struct Frozen<'a>(&'a std::path::Path);

impl<'a> Frozen<'a> {
    fn freeze(path: &'a std::path::Path) -> Frozen<'a> {
        let status = Command::new("fsfreeze").arg("--freeze").arg(path).status();
        assert!(
            status.is_ok_and(|status| status.success()),
            "fsfreeze --freeze"
        );
        Frozen(path)
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze")
            .arg("--unfreeze")
            .arg(self.0)
            .status();
    }
}

#[test]
fn a_frozen_disk_times_produces_out_while_tail_reads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = LoopMount::new(dir.path(), 32) else {
        return;
    };
    let (broker, metrics) = broker_on(&mount);
    let mut client = broker.connect();
    create(&mut client, "stuck");
    for index in 0..5 {
        let answer = produce(
            &mut client,
            "stuck",
            batch(&format!("before{index}"), 4, 100, 0),
            30_000,
        );
        assert!(answer.status.is_ok(), "{}", answer.status);
    }
    let acknowledged = read_partition(&mut client, "stuck", 0, 0);

    let frozen = Frozen::freeze(&mount.mount_point);
    let started = Instant::now();
    let answer = produce(&mut client, "stuck", batch("frozen", 4, 100, 0), 1_500);
    assert_eq!(answer.status.code, ErrorCode::Timeout, "{}", answer.status);
    assert!(started.elapsed() < Duration::from_secs(10));
    // The tail cache answers reads with the disk stalled, on another connection too.
    let mut reader = broker.connect();
    let read_started = Instant::now();
    assert_eq!(read_partition(&mut reader, "stuck", 0, 0), acknowledged);
    assert!(read_started.elapsed() < Duration::from_secs(5));
    assert!(errors(&metrics, "timeout") >= 1.0);
    let (status, _) = http(&metrics, "GET", "/healthz");
    assert_eq!(status, 200);

    drop(frozen);
    let resumed = wait_for(Duration::from_secs(20), || {
        let answer = produce(&mut client, "stuck", batch("thawed", 4, 100, 0), 5_000);
        answer.status.is_ok().then_some(answer)
    })
    .expect("produces succeed again after the thaw");
    assert!(resumed.base_offset >= 20);
    let everything = read_partition(&mut client, "stuck", 0, 0);
    assert_eq!(&everything[..acknowledged.len()], &acknowledged[..]);
    assert!(
        everything
            .iter()
            .any(|(_, value)| value.starts_with("thawed-0"))
    );
}

/// A durability round of several segments is a `syncfs` and then an fdatasync of one of
/// its files on the same thread: `syncfs` flushes the device's cache before it writes the
/// inode and extent blocks of a filesystem without a journal, and the fdatasync flushes it
/// again (storage/rounds.rs). Traced with strace on a real broker.
#[test]
fn a_round_of_several_segments_flushes_again_after_its_syncfs() {
    if std::env::var_os("SPATE_SKIP_ROOT_TESTS").is_some() {
        eprintln!("skipped: SPATE_SKIP_ROOT_TESTS is set (this test attaches strace to a broker)");
        return;
    }
    if Command::new("strace").arg("-V").output().is_err() {
        panic!("strace is needed (apt-get install strace; .ci/run installs it)");
    }
    let broker = Broker::start(1);
    let mut client = broker.connect();
    let configs = [("flush.ms".to_string(), "0".to_string())];
    assert!(
        client
            .create_topic("rounds", 8, &configs)
            .unwrap()
            .status
            .is_ok()
    );
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let mut strace = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=syncfs,fdatasync", "-o"])
        .arg(&trace)
        .args(["-p", &broker.pid().to_string()])
        .spawn()
        .unwrap();
    // Attached within this (an attach refused by ptrace rules makes strace exit at once).
    std::thread::sleep(Duration::from_millis(700));
    if let Some(status) = strace.try_wait().unwrap() {
        panic!(
            "strace could not attach to the broker ({status}): ptrace needs root, or \
             kernel.yama.ptrace_scope 0; SPATE_SKIP_ROOT_TESTS=1 skips this test"
        );
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producers: Vec<_> = (0..8u32)
        .map(|partition| {
            let address = broker.address();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut client = Connection::connect(&address, "rounds").unwrap();
                let mut sent = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || sent < 20 {
                    let answer = client
                        .produce("rounds", partition, batch("r", 4, 100, 0), Acks::All)
                        .unwrap()
                        .unwrap();
                    assert!(answer.status.is_ok(), "{:?}", answer.status);
                    sent += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for producer in producers {
        producer.join().unwrap();
    }
    // SAFETY: a plain kill(2) to the strace this test started.
    unsafe { libc::kill(strace.id() as i32, libc::SIGINT) };
    strace.wait().unwrap();

    // Each thread's calls in order: (name, descriptor), from lines such as
    // `123 syncfs(7) = 0` or `123 syncfs(7 <unfinished ...>`.
    let text = std::fs::read_to_string(&trace).unwrap();
    let mut calls: std::collections::BTreeMap<&str, Vec<(&str, &str)>> = Default::default();
    for line in text.lines() {
        let Some((tid, call)) = line.split_once(' ') else {
            continue;
        };
        let call = call.trim_start();
        if call.starts_with("<...") {
            continue;
        }
        let Some((name, rest)) = call.split_once('(') else {
            continue;
        };
        let fd = rest.split([')', ' ']).next().unwrap_or_default();
        calls.entry(tid).or_default().push((name, fd));
    }
    let mut rounds = 0;
    for sequence in calls.values() {
        for (index, (name, fd)) in sequence.iter().enumerate() {
            // A syncfs under way when strace detached has no successor to check.
            if *name == "syncfs" && index + 1 < sequence.len() {
                rounds += 1;
                assert_eq!(
                    sequence.get(index + 1),
                    Some(&("fdatasync", *fd)),
                    "a syncfs not followed by an fdatasync of the same file:\n{text}"
                );
            }
        }
    }
    assert!(
        rounds > 0,
        "no round of several segments was traced:\n{text}"
    );
}
