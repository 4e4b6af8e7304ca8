//! How connections and the broker end: a graceful stop under load, idle connections,
//! produce timeouts on a stalled disk, and failed acks=0 produces.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use spate::protocol::{
    Acks, ApiKey, ErrorCode, ProducePartition, ProduceRequest, ProduceTopic, Request, Response,
    split_frame,
};

use crate::server::{Broker, read_partition};
use crate::support::{LoopMount, batch, budget_overrunning_appends};

fn produce_request(
    topic: &str,
    partition: u32,
    value: &str,
    acks: Acks,
    timeout_ms: u32,
) -> Request {
    Request::Produce(ProduceRequest {
        acks,
        timeout_ms,
        topics: vec![ProduceTopic {
            name: topic.to_string(),
            partitions: vec![ProducePartition {
                partition,
                records: batch(value, 1, 0, 0),
            }],
        }],
    })
}

/// Reads response frames until the broker closes the connection (or `limit` passes);
/// returns each response with its correlation id.
fn read_responses(
    stream: &mut TcpStream,
    api_key: ApiKey,
    limit: Duration,
) -> Vec<(u32, Response)> {
    read_until(stream, api_key, usize::MAX, limit)
}

/// The record value a test produced for request `index` of connection `connection`; the
/// batch helper turns a tag into values `<tag>-<record index>`.
fn tag(connection: usize, index: usize) -> String {
    format!("c{connection}r{index}")
}

#[test]
fn a_graceful_stop_answers_every_append_it_made_and_makes_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut broker = Broker::start_in(&data_dir, 2, &[]);
    let mut admin = broker.connect();
    admin.create_topic("g", 2, &[]).unwrap();

    // Four connections pipeline single-record produces as fast as the broker takes them;
    // each request's record is unique, so every acknowledgement names one record.
    const CONNECTIONS: usize = 4;
    const REQUESTS: usize = 20_000;
    let answered = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|connection| {
            let address = broker.address();
            let answered = answered.clone();
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(address).unwrap();
                let mut writer = stream.try_clone().unwrap();
                let sender = std::thread::spawn(move || {
                    for index in 0..REQUESTS {
                        let request = produce_request(
                            "g",
                            (index % 2) as u32,
                            &tag(connection, index),
                            Acks::All,
                            30_000,
                        );
                        if writer.write_all(&request.encode(index as u32)).is_err() {
                            return;
                        }
                    }
                });
                let mut acked = BTreeMap::new();
                let mut refused = 0;
                stream
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                let mut buffer = BytesMut::new();
                loop {
                    while let Some(frame) = split_frame(&mut buffer, 1 << 30).unwrap() {
                        let index = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
                        // A request the stopping broker did not take is refused whole.
                        let response = Response::decode(ApiKey::Produce, frame.slice(4..)).unwrap();
                        let (status, at) = match response {
                            Response::Produce(response) => {
                                let partition = &response.topics[0].partitions[0];
                                (
                                    partition.status.clone(),
                                    (partition.partition, partition.base_offset),
                                )
                            }
                            Response::Failed(status) => (status, (0, -1)),
                            other => panic!("not a produce answer: {other:?}"),
                        };
                        if status.is_ok() {
                            acked.insert(tag(connection, index), at);
                        } else {
                            assert_eq!(status.code, ErrorCode::ShuttingDown, "{status}");
                            refused += 1;
                        }
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                    let mut chunk = [0u8; 64 * 1024];
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(read) => buffer.extend_from_slice(&chunk[..read]),
                    }
                }
                sender.join().unwrap();
                (acked, refused)
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while answered.load(Ordering::SeqCst) < 2_000 {
        assert!(Instant::now() < deadline, "the broker answers produces");
        std::thread::sleep(Duration::from_millis(5));
    }
    broker.stop(); // SIGTERM while requests are in flight on every connection
    let mut acked = BTreeMap::new();
    for client in clients {
        let (from_client, _refused) = client.join().unwrap();
        acked.extend(from_client);
    }
    assert!(acked.len() >= 2_000);

    // After a restart the log holds exactly the acknowledged records, where their
    // acknowledgements said: none lost, and no append made without its answer reaching
    // the client (which would become a duplicate when the client retries).
    let broker = Broker::start_in(&data_dir, 2, &[]);
    let mut client = broker.connect();
    let mut stored = BTreeMap::new();
    for partition in 0..2 {
        for (offset, value) in read_partition(&mut client, "g", partition, 0) {
            let value = value
                .strip_suffix("-0")
                .expect("one record per batch")
                .to_string();
            assert!(
                stored.insert(value, (partition, offset)).is_none(),
                "no record twice"
            );
        }
    }
    let unacknowledged: Vec<_> = stored
        .keys()
        .filter(|value| !acked.contains_key(*value))
        .take(5)
        .collect();
    assert!(
        unacknowledged.is_empty(),
        "appended but never acknowledged: {unacknowledged:?}"
    );
    assert_eq!(stored, acked);
}

#[test]
fn a_stop_ends_long_polls_with_an_answer() {
    let mut broker = Broker::start(2);
    let mut admin = broker.connect();
    admin.create_topic("p", 2, &[]).unwrap();
    let mut polls: Vec<TcpStream> = (0..2)
        .map(|partition| {
            let mut stream = TcpStream::connect(broker.address()).unwrap();
            // The second connection has two polls in flight, one asking for the whole
            // byte budget: the stop must reach both.
            let max_bytes = if partition == 0 { 1 << 20 } else { 64 << 20 };
            let request =
                crate::server::fetch_request("p", &[(partition, 0)], max_bytes, 1, 30_000);
            stream.write_all(&request.encode(7)).unwrap();
            if partition == 1 {
                stream.write_all(&request.encode(8)).unwrap();
            }
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300)); // both polls are waiting
    let started = Instant::now();
    broker.stop();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "a stop waits out neither 30 s long polls nor the 10 s drain limit"
    );
    for (index, stream) in polls.iter_mut().enumerate() {
        let responses = read_responses(stream, ApiKey::Fetch, Duration::from_secs(5));
        let mut ids: Vec<u32> = responses.iter().map(|(id, _)| *id).collect();
        ids.sort();
        let expected: &[u32] = if index == 0 { &[7] } else { &[7, 8] };
        assert_eq!(
            ids, expected,
            "every poll is answered before the connection closes"
        );
        for (_, response) in &responses {
            let Response::Fetch(fetch) = response else {
                panic!("a fetch answer")
            };
            assert!(fetch.topics[0].partitions[0].status.is_ok());
        }
    }
}

#[test]
fn idle_connections_are_closed_but_a_long_poll_is_not_idle() {
    let broker = Broker::start_flagged(1, &["--connections-max-idle-ms", "300"]);
    let mut admin = broker.connect();
    admin.create_topic("i", 1, &[]).unwrap();
    drop(admin);

    let mut idle = TcpStream::connect(broker.address()).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        idle.read(&mut byte).unwrap(),
        0,
        "the broker closes an idle connection"
    );

    let mut polling = TcpStream::connect(broker.address()).unwrap();
    let request = crate::server::fetch_request("i", &[(0, 0)], 1 << 20, 1, 1_500);
    polling.write_all(&request.encode(1)).unwrap();
    let responses = read_responses(&mut polling, ApiKey::Fetch, Duration::from_secs(5));
    assert_eq!(
        responses.len(),
        1,
        "a 1.5 s poll outlives a 300 ms idle limit"
    );
}

#[test]
fn a_failed_acks_zero_produce_closes_the_connection() {
    let broker = Broker::start(1);
    let mut stream = TcpStream::connect(broker.address()).unwrap();
    let request = produce_request("absent", 0, "x", Acks::None, 30_000);
    stream.write_all(&request.encode(1)).unwrap();
    let responses = read_responses(&mut stream, ApiKey::Produce, Duration::from_secs(5));
    assert!(
        responses.is_empty(),
        "no answer for acks=0, and the connection is closed"
    );
    // An acks=0 produce has nothing to time out: a zero timeout_ms still appends and
    // keeps the connection.
    let mut admin = broker.connect();
    admin.create_topic("quick", 1, &[]).unwrap();
    let mut stream = TcpStream::connect(broker.address()).unwrap();
    stream
        .write_all(&produce_request("quick", 0, "x", Acks::None, 0).encode(1))
        .unwrap();
    let metadata = Request::Metadata(spate::protocol::MetadataRequest { topics: vec![] });
    stream.write_all(&metadata.encode(2)).unwrap();
    let mut header = [0u8; 8];
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.read_exact(&mut header).unwrap();
    // The append runs beside the metadata request; it lands shortly.
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin
        .list_offset("quick", 0, spate::protocol::OFFSET_LATEST)
        .unwrap()
        < 1
    {
        assert!(Instant::now() < deadline, "the acks=0 append lands");
        std::thread::sleep(Duration::from_millis(10));
    }
    // A successful acks=0 produce keeps the connection.
    admin.create_topic("present", 1, &[]).unwrap();
    let mut stream = TcpStream::connect(broker.address()).unwrap();
    stream
        .write_all(&produce_request("present", 0, "x", Acks::None, 30_000).encode(1))
        .unwrap();
    let metadata = Request::Metadata(spate::protocol::MetadataRequest { topics: vec![] });
    stream.write_all(&metadata.encode(2)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).unwrap();
    assert_eq!(
        u32::from_be_bytes(header[4..].try_into().unwrap()),
        2,
        "only the metadata answer"
    );
}

#[test]
fn a_connection_whose_answers_cannot_go_out_still_ends_and_frees_its_slot() {
    let broker = Broker::start_flagged(
        1,
        &[
            "--in-flight-max-per-connection",
            "2",
            "--connections-max-per-shard",
            "2",
        ],
    );
    let mut admin = broker.connect();
    admin.create_topic("wide", 1, &[]).unwrap();
    for index in 0..8 {
        let records = batch(&format!("w{index}"), 1, 500_000, 0);
        admin.produce("wide", 0, records, Acks::All).unwrap();
    }
    drop(admin);
    // Two clients that ask for megabytes of answers, read none, and reset: each writer
    // fails with its queue of answers full and more requests waiting behind it. Those
    // must not hold the connection open forever.
    let request = crate::server::fetch_request("wide", &[(0, 0)], 4 << 20, 1, 0);
    let requests: Vec<u8> = (0..12).flat_map(|id| request.encode(id).to_vec()).collect();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(broker.address()).unwrap();
        socket2::SockRef::from(&stream)
            .set_recv_buffer_size(4096)
            .unwrap();
        stream.write_all(&requests).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(stream); // a reset, with answers unread
    }
    // Both slots come back: the broker serves two new connections at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    let open = loop {
        let pair = (
            spate::client::Connection::connect(&broker.address(), "a"),
            spate::client::Connection::connect(&broker.address(), "b"),
        );
        if let (Ok(first), Ok(second)) = pair {
            break (first, second);
        }
        assert!(
            Instant::now() < deadline,
            "the stuck connection never ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(open);
}

/// Unfreezes a frozen filesystem on drop, so a failing test cannot leave it frozen.
struct Frozen<'a>(&'a std::path::Path);

impl Frozen<'_> {
    /// Freezes the filesystem mounted at `path` (`fsfreeze`): writes to it stall.
    fn freeze(path: &std::path::Path) -> Frozen<'_> {
        let frozen = std::process::Command::new("fsfreeze")
            .arg("-f")
            .arg(path)
            .status()
            .unwrap();
        assert!(frozen.success());
        Frozen(path)
    }
}

/// A one-shard broker (with `flags`) on a small ext4 loop mount that tests can freeze,
/// with topic `s` holding one record; `None` where loop mounts are not available.
fn on_a_loop_mount(
    dir: &std::path::Path,
    flags: &[&str],
) -> Option<(LoopMount, Broker, spate::client::Connection)> {
    let mount = LoopMount::new(dir, 64)?;
    let broker = Broker::start_in(&mount.mount_point.join("data"), 1, flags);
    let mut admin = broker.connect();
    admin.create_topic("s", 1, &[]).unwrap();
    admin
        .produce("s", 0, batch("before", 1, 1, 0), Acks::All)
        .unwrap();
    Some((mount, broker, admin))
}

/// Waits (at most 10 s) until partition `s`-0's log end reaches `at_least`.
fn wait_for_log_end(admin: &mut spate::client::Connection, at_least: i64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin
        .list_offset("s", 0, spate::protocol::OFFSET_LATEST)
        .unwrap()
        < at_least
    {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("fsfreeze")
            .arg("-u")
            .arg(self.0)
            .status();
    }
}

#[test]
fn a_produce_on_a_stalled_disk_times_out_and_the_broker_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let Some((mount, mut broker, mut admin)) = on_a_loop_mount(dir.path(), &[]) else {
        return;
    };

    let guard = Frozen::freeze(&mount.mount_point);
    let mut stream = TcpStream::connect(broker.address()).unwrap();
    stream
        .write_all(&produce_request("s", 0, "stalled", Acks::All, 300).encode(1))
        .unwrap();
    let mut buffer = BytesMut::new();
    let response = next_response(&mut stream, &mut buffer, Duration::from_secs(10));
    assert_eq!(produce_code(response), ErrorCode::Timeout);
    // Requests that need no disk are still served while it is stalled.
    assert_eq!(admin.metadata(&["s"]).unwrap().topics.len(), 1);

    drop(guard);
    // The timed-out append was not abandoned: it lands once the disk moves again.
    wait_for_log_end(&mut admin, 2, "the stalled append completes");
    broker.stop();
    drop(mount);
}

/// The next produce answer on `stream`, or `None` if none comes within `limit`.
fn next_response(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    limit: Duration,
) -> Option<Response> {
    next_answer(stream, buffer, ApiKey::Produce, limit)
}

/// The next answer on `stream` to a request of kind `api_key`, or `None` if none comes
/// within `limit`.
fn next_answer(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    api_key: ApiKey,
    limit: Duration,
) -> Option<Response> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(frame) = split_frame(buffer, 1 << 30).unwrap() {
            return Some(Response::decode(api_key, frame.slice(4..)).unwrap());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => panic!("an answer, not a closed connection"),
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return None,
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => return None,
            Err(error) => panic!("reading an answer: {error}"),
        }
    }
}

/// The status code of a single-partition produce answer.
fn produce_code(response: Option<Response>) -> ErrorCode {
    let Some(Response::Produce(response)) = response else {
        panic!("a produce answer, got {response:?}")
    };
    let status = &response.topics[0].partitions[0].status;
    status.code
}

/// An append answered `Timeout` is still running and still holds its batch, so it keeps
/// counting against the connection's byte budget: a client retrying with short timeouts
/// against a stalled disk is stopped by the budget instead of filling the broker's memory.
#[test]
fn timed_out_appends_keep_their_bytes_counted_against_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 2 << 20;
    let flags = [
        "--frame-bytes-max",
        &(1 << 20).to_string(),
        "--buffered-bytes-max-per-connection",
        &budget.to_string(),
    ];
    let Some((mount, mut broker, mut admin)) = on_a_loop_mount(dir.path(), &flags) else {
        return;
    };

    let guard = Frozen::freeze(&mount.mount_point);
    // Each request is 400 KB and weighs twice that (its frame, and the aligned copy its
    // append makes): two fit in the 2 MiB budget, a third does not.
    let big = |index: u32| {
        Request::Produce(ProduceRequest {
            acks: Acks::All,
            timeout_ms: 100,
            topics: vec![ProduceTopic {
                name: "s".to_string(),
                partitions: vec![ProducePartition {
                    partition: 0,
                    records: batch(&format!("retry{index}"), 1, 400_000, 0),
                }],
            }],
        })
        .encode(index)
    };
    let mut stream = TcpStream::connect(broker.address()).unwrap();
    let mut buffer = BytesMut::new();
    for index in 0..2 {
        stream.write_all(&big(index)).unwrap();
        let answer = next_response(&mut stream, &mut buffer, Duration::from_secs(10));
        assert_eq!(produce_code(answer), ErrorCode::Timeout, "request {index}");
    }
    stream.write_all(&big(2)).unwrap();
    assert!(
        next_response(&mut stream, &mut buffer, Duration::from_millis(1500)).is_none(),
        "a third request waits for the budget the stalled appends still hold"
    );
    // Requests of other connections are unaffected.
    assert_eq!(admin.metadata(&["s"]).unwrap().topics.len(), 1);

    drop(guard);
    let answer = next_response(&mut stream, &mut buffer, Duration::from_secs(10));
    let code = produce_code(answer);
    assert!(
        matches!(code, ErrorCode::None | ErrorCode::Timeout),
        "{code:?}"
    );
    wait_for_log_end(&mut admin, 4, "every stalled append completes");
    broker.stop();
    drop(mount);
}

/// A long poll holds only its frame while it waits: requests behind it on the same
/// connection are read and answered at once, even when the poll asked for the connection's
/// whole byte budget.
#[test]
fn a_waiting_long_poll_does_not_hold_up_the_requests_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 1 << 20;
    let broker = Broker::start_in(
        &dir.path().join("data"),
        1,
        &[
            "--frame-bytes-max",
            &(512 << 10).to_string(),
            "--buffered-bytes-max-per-connection",
            &budget.to_string(),
        ],
    );
    let mut admin = broker.connect();
    admin.create_topic("quiet", 1, &[]).unwrap();
    admin.create_topic("busy", 1, &[]).unwrap();
    let mut stream = TcpStream::connect(broker.address()).unwrap();
    let poll = crate::server::fetch_request("quiet", &[(0, 0)], 16 << 20, 1, 5_000);
    stream.write_all(&poll.encode(1)).unwrap();
    std::thread::sleep(Duration::from_millis(100)); // the poll is waiting
    let produce = Request::Produce(ProduceRequest {
        acks: Acks::All,
        timeout_ms: 10_000,
        topics: vec![ProduceTopic {
            name: "busy".to_string(),
            partitions: vec![ProducePartition {
                partition: 0,
                records: batch("behind", 1, 400_000, 0),
            }],
        }],
    });
    stream.write_all(&produce.encode(2)).unwrap();
    let mut buffer = BytesMut::new();
    // Well before the poll's 5 s wait ends.
    let answer = next_response(&mut stream, &mut buffer, Duration::from_secs(3));
    assert_eq!(produce_code(answer), ErrorCode::None);
    // The poll still answers, with the data once it comes.
    admin
        .produce("quiet", 0, batch("late", 1, 1, 0), Acks::All)
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    loop {
        if let Some(frame) = split_frame(&mut buffer, 1 << 30).unwrap() {
            assert_eq!(u32::from_be_bytes(frame[..4].try_into().unwrap()), 1);
            let Response::Fetch(fetch) = Response::decode(ApiKey::Fetch, frame.slice(4..)).unwrap()
            else {
                panic!("a fetch answer")
            };
            assert!(!fetch.topics[0].partitions[0].records.is_empty());
            break;
        }
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).unwrap();
        assert!(read > 0);
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// Long polls whose frames together hold more of the byte budget than leaves room for a
/// read must still answer by their deadline, and free their connection, rather than wait
/// on each other forever.
#[test]
fn long_polls_that_fill_the_byte_budget_still_answer_by_their_deadline() {
    use spate::protocol::{FetchPartition, FetchRequest, FetchTopic};
    let broker = Broker::start_flagged(
        1,
        &[
            "--frame-bytes-max",
            "65536",
            "--buffered-bytes-max-per-connection",
            "80000",
        ],
    );
    let mut admin = broker.connect();
    // About 7 KB per frame: each of 30 partitions of a topic with a long name, named in
    // an entry of its own. All exist and are empty, so each poll waits.
    let name = "w".repeat(230);
    admin.create_topic(&name, 30, &[]).unwrap();
    let poll = Request::Fetch(FetchRequest {
        max_wait_ms: 500,
        min_bytes: 1,
        max_bytes: 16 << 20,
        topics: (0..30)
            .map(|partition| FetchTopic {
                name: name.clone(),
                partitions: vec![FetchPartition {
                    partition,
                    offset: 0,
                    max_bytes: 1 << 20,
                }],
            })
            .collect(),
    });
    let mut stream = TcpStream::connect(broker.address()).unwrap();
    for id in 1..=3 {
        stream.write_all(&poll.encode(id)).unwrap();
    }
    let responses = read_until(&mut stream, ApiKey::Fetch, 3, Duration::from_secs(10));
    let mut ids: Vec<u32> = responses.iter().map(|(id, _)| *id).collect();
    ids.sort();
    assert_eq!(ids, [1, 2, 3], "every poll answers");
    drop(stream);
    assert_eq!(admin.metadata(&[&name]).unwrap().topics.len(), 1);
}

/// Reads `count` response frames (or until `limit` passes or the connection closes).
fn read_until(
    stream: &mut TcpStream,
    api_key: ApiKey,
    count: usize,
    limit: Duration,
) -> Vec<(u32, Response)> {
    let deadline = Instant::now() + limit;
    let mut buffer = BytesMut::new();
    let mut responses = Vec::new();
    while responses.len() < count {
        while let Some(frame) = split_frame(&mut buffer, 1 << 30).unwrap() {
            let correlation_id = u32::from_be_bytes(frame[..4].try_into().unwrap());
            responses.push((
                correlation_id,
                Response::decode(api_key, frame.slice(4..)).unwrap(),
            ));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if responses.len() >= count || left.is_zero() {
            break;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 64 * 1024];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
        }
    }
    responses
}

/// A long poll on nothing but partitions that cannot be read (an unknown topic) has
/// nothing to wait for: it answers at once instead of spinning until its deadline.
#[test]
fn a_long_poll_with_nothing_to_wait_on_answers_at_once() {
    let broker = Broker::start(1);
    let mut stream = TcpStream::connect(broker.address()).unwrap();
    let poll = crate::server::fetch_request("absent", &[(0, 0)], 1 << 20, 1, 20_000);
    stream.write_all(&poll.encode(1)).unwrap();
    let responses = read_until(&mut stream, ApiKey::Fetch, 1, Duration::from_secs(5));
    let Some((1, Response::Fetch(fetch))) = responses.first() else {
        panic!("an answer well before the 20 s wait, got {responses:?}")
    };
    let status = &fetch.topics[0].partitions[0].status;
    assert_eq!(status.code, ErrorCode::UnknownTopicOrPartition, "{status}");
}

/// Deleting a topic saves the metadata and removes directories with blocking file calls;
/// they run on the shard's blocking-thread pool, so a stalled disk stalls the deletion,
/// not the shard: requests that need no disk are still answered meanwhile.
#[test]
fn a_topic_deletion_on_a_stalled_disk_does_not_stall_its_shard() {
    let dir = tempfile::tempdir().unwrap();
    let Some((mount, mut broker, mut admin)) = on_a_loop_mount(dir.path(), &[]) else {
        return;
    };
    assert!(admin.create_topic("doomed", 1, &[]).unwrap().status.is_ok());
    let doomed_dir = broker.data_dir.join("topics").join("doomed-0");
    assert!(doomed_dir.exists());

    let guard = Frozen::freeze(&mount.mount_point);
    let mut deleting = TcpStream::connect(broker.address()).unwrap();
    let delete = Request::DeleteTopics(spate::protocol::DeleteTopicsRequest {
        names: vec!["doomed".into()],
    });
    deleting.write_all(&delete.encode(1)).unwrap();
    let mut deleting_buffer = BytesMut::new();
    assert!(
        next_answer(
            &mut deleting,
            &mut deleting_buffer,
            ApiKey::DeleteTopics,
            Duration::from_millis(300)
        )
        .is_none(),
        "the deletion waits for the disk"
    );
    // The one shard answers what needs no disk: metadata, and a read of the tail cache.
    let mut other = TcpStream::connect(broker.address()).unwrap();
    let mut other_buffer = BytesMut::new();
    let metadata = Request::Metadata(spate::protocol::MetadataRequest {
        topics: vec!["s".into()],
    });
    other.write_all(&metadata.encode(2)).unwrap();
    let answer = next_answer(
        &mut other,
        &mut other_buffer,
        ApiKey::Metadata,
        Duration::from_secs(5),
    );
    assert!(
        matches!(answer, Some(Response::Metadata(_))),
        "the shard stalled with the disk: {answer:?}"
    );
    let fetch = Request::Fetch(spate::protocol::FetchRequest {
        max_wait_ms: 0,
        min_bytes: 0,
        max_bytes: 1 << 20,
        topics: vec![spate::protocol::FetchTopic {
            name: "s".into(),
            partitions: vec![spate::protocol::FetchPartition {
                partition: 0,
                offset: 0,
                max_bytes: 1 << 20,
            }],
        }],
    });
    other.write_all(&fetch.encode(3)).unwrap();
    let answer = next_answer(
        &mut other,
        &mut other_buffer,
        ApiKey::Fetch,
        Duration::from_secs(5),
    );
    let Some(Response::Fetch(fetched)) = answer else {
        panic!("the shard stalled with the disk: {answer:?}")
    };
    assert!(!fetched.topics[0].partitions[0].records.is_empty());

    drop(guard);
    let answer = next_answer(
        &mut deleting,
        &mut deleting_buffer,
        ApiKey::DeleteTopics,
        Duration::from_secs(10),
    );
    let Some(Response::DeleteTopics(statuses)) = answer else {
        panic!("the deletion completes once the disk moves: {answer:?}")
    };
    assert!(statuses[0].status.is_ok(), "{}", statuses[0].status);
    assert!(!doomed_dir.exists(), "its directory is removed");
    assert!(
        admin.metadata(&["doomed"]).unwrap().topics[0]
            .partitions
            .is_empty()
    );
    broker.stop();
    drop(mount);
}

/// Pipelined produces to one partition reach the log in the order they were sent, also
/// when the disk stalls and later, smaller batches would fit in the log's pending budget
/// while an earlier, larger one waits for room.
#[test]
fn pipelined_produces_keep_their_order_on_a_stalled_disk() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = LoopMount::new(dir.path(), 256) else {
        return;
    };
    // One connection may hold more than the log's 64 MiB pending-append budget.
    let flags = [
        "--buffered-bytes-max-per-connection",
        &(256 << 20).to_string(),
    ];
    let mut broker = Broker::start_in(&mount.mount_point.join("data"), 1, &flags);
    let mut admin = broker.connect();
    admin.create_topic("s", 1, &[]).unwrap();
    // The 1 MiB append would fit in what the 7 MiB one before it waits for.
    let mut sizes = budget_overrunning_appends();
    sizes.push(("last".into(), 100));

    let guard = Frozen::freeze(&mount.mount_point);
    let mut stream = TcpStream::connect(broker.address()).unwrap();
    for (index, (tag, bytes)) in sizes.iter().enumerate() {
        let request = Request::Produce(ProduceRequest {
            acks: Acks::All,
            timeout_ms: 120_000,
            topics: vec![ProduceTopic {
                name: "s".into(),
                partitions: vec![ProducePartition {
                    partition: 0,
                    records: batch(tag, 1, *bytes, 0),
                }],
            }],
        });
        stream.write_all(&request.encode(index as u32)).unwrap();
    }
    // Let every request reach its append before the disk moves again.
    std::thread::sleep(Duration::from_millis(500));
    drop(guard);
    let mut buffer = BytesMut::new();
    for _ in &sizes {
        let answer = next_response(&mut stream, &mut buffer, Duration::from_secs(60));
        assert_eq!(produce_code(answer), ErrorCode::None);
    }
    let tags: Vec<String> = read_partition(&mut admin, "s", 0, 0)
        .into_iter()
        .map(|(_, value)| value.split('-').next().unwrap().to_string())
        .collect();
    let sent: Vec<String> = sizes.into_iter().map(|(tag, _)| tag).collect();
    assert_eq!(tags, sent);
    broker.stop();
    drop(mount);
}
