//! Consumer groups end to end: the real broker, group members in threads (and one in a
//! `spate consume --group` process that is killed), the `spate group` commands.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use spate::client::{
    ClientError, Connection, GroupConsumer, GroupConsumerConfig, OffsetReset, RebalanceListener,
};
use spate::protocol::{
    Acks, ErrorCode, GENERATION_NONE, JoinGroupRequest, OffsetCommitPartition, OffsetCommitRequest,
    OffsetCommitTopic, TopicPartitions,
};

use crate::server::{Broker, spate};
use crate::support::batch;

const SESSION: Duration = Duration::from_millis(2000);

/// Appends `count` records to every partition of `topic`; values are `p{partition}-{i}`.
fn produce(connection: &mut Connection, topic: &str, partitions: u32, count: usize) {
    for partition in 0..partitions {
        let answer = connection
            .produce(
                topic,
                partition,
                batch(&format!("p{partition}"), count, 8, 1_000),
                Acks::All,
            )
            .unwrap()
            .unwrap();
        assert!(answer.status.is_ok(), "{}", answer.status);
    }
}

fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ready()
}

fn config(group: &str, topics: &[&str]) -> GroupConsumerConfig {
    let mut config = GroupConsumerConfig::new(group, topics);
    config.session_timeout = SESSION;
    config.heartbeat_interval = Duration::from_millis(500);
    config.rebalance_timeout = Duration::from_secs(10);
    config.auto_offset_reset = OffsetReset::Earliest;
    config.auto_commit_interval = Some(Duration::from_millis(200));
    config
}

/// What a member thread has seen.
#[derive(Default)]
struct Seen {
    generation: i32,
    assignment: Vec<(String, u32)>,
    /// (partition, offset) of every record returned by `poll`.
    records: Vec<(u32, i64)>,
    revoked: usize,
    assigned: usize,
}

/// A group member polling on its own thread until closed.
struct Member {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<JoinHandle<Result<(), ClientError>>>,
}

struct Callbacks(Arc<Mutex<Seen>>);

impl RebalanceListener for Callbacks {
    fn on_revoked(&mut self, _partitions: &[(String, u32)]) {
        self.0.lock().unwrap().revoked += 1;
    }
    fn on_assigned(&mut self, _partitions: &[(String, u32)]) {
        self.0.lock().unwrap().assigned += 1;
    }
}

impl Member {
    fn start(address: &str, config: GroupConsumerConfig) -> Member {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let thread = {
            let (stop, seen, address) = (stop.clone(), seen.clone(), address.to_string());
            std::thread::spawn(move || {
                let mut consumer = GroupConsumer::new(&address, config)?;
                consumer.set_listener(Box::new(Callbacks(seen.clone())));
                while !stop.load(Ordering::SeqCst) {
                    let records = consumer.poll(Duration::from_millis(100))?;
                    let mut seen = seen.lock().unwrap();
                    seen.generation = consumer.generation();
                    seen.assignment = consumer.assignment();
                    seen.records.extend(
                        records
                            .iter()
                            .map(|record| (record.partition, record.record.offset)),
                    );
                }
                consumer.close()
            })
        };
        Member {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn assignment(&self) -> (i32, Vec<(String, u32)>) {
        let seen = self.seen.lock().unwrap();
        (seen.generation, seen.assignment.clone())
    }

    fn records(&self) -> Vec<(u32, i64)> {
        self.seen.lock().unwrap().records.clone()
    }

    /// Stops polling, commits and leaves; returns every record it read.
    fn close(mut self) -> Vec<(u32, i64)> {
        self.stop.store(true, Ordering::SeqCst);
        let outcome = self.thread.take().unwrap().join().unwrap();
        outcome.expect("the member ran and closed cleanly");
        self.records()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Whether `members` hold disjoint partitions of one generation that cover `0..count`.
fn covers(members: &[&Member], count: u32) -> bool {
    let assignments: Vec<(i32, Vec<(String, u32)>)> =
        members.iter().map(|member| member.assignment()).collect();
    let generation = assignments[0].0;
    let mut all = Vec::new();
    for (member_generation, assignment) in &assignments {
        if *member_generation != generation || assignment.is_empty() {
            return false;
        }
        all.extend(assignment.iter().map(|(_, partition)| *partition));
    }
    all.sort_unstable();
    all == (0..count).collect::<Vec<_>>()
}

fn all_records(partitions: u32, count: usize) -> BTreeSet<(u32, i64)> {
    (0..partitions)
        .flat_map(|partition| (0..count as i64).map(move |offset| (partition, offset)))
        .collect()
}

/// Partitions added to a subscribed topic are shared out at the group's next topic check:
/// two members of a 2-partition topic grown to 4 hold two each, and read the new ones.
#[test]
fn partitions_added_to_a_subscribed_topic_are_shared_out() {
    let broker = Broker::start(2);
    let mut connection = broker.connect();
    connection.create_topic("widening", 2, &[]).unwrap();
    let members: Vec<Member> = (0..2)
        .map(|_| Member::start(&broker.address(), config("w", &["widening"])))
        .collect();
    let refs: Vec<&Member> = members.iter().collect();
    assert!(
        wait_until(Duration::from_secs(20), || covers(&refs, 2)),
        "{:?}",
        refs.iter().map(|m| m.assignment()).collect::<Vec<_>>()
    );
    let status = connection.create_partitions("widening", 4).unwrap().status;
    assert!(status.is_ok(), "{status}");
    assert!(
        wait_until(Duration::from_secs(20), || covers(&refs, 4)),
        "the two members cover all four partitions: {:?}",
        refs.iter().map(|m| m.assignment()).collect::<Vec<_>>()
    );
    produce(&mut connection, "widening", 4, 5);
    assert!(
        wait_until(Duration::from_secs(20), || {
            let mut read: Vec<(u32, i64)> =
                refs.iter().flat_map(|member| member.records()).collect();
            read.sort_unstable();
            read.dedup();
            read.len() == 20
        }),
        "every record of the four partitions is read"
    );
}

#[test]
fn three_members_share_six_partitions_and_the_others_take_over_when_one_leaves() {
    let broker = Broker::start(2);
    let mut connection = broker.connect();
    connection.create_topic("shared", 6, &[]).unwrap();
    produce(&mut connection, "shared", 6, 50);

    let members: Vec<Member> = (0..3)
        .map(|_| Member::start(&broker.address(), config("g", &["shared"])))
        .collect();
    let refs: Vec<&Member> = members.iter().collect();
    assert!(
        wait_until(Duration::from_secs(20), || covers(&refs, 6)),
        "three members hold disjoint partitions covering all six: {:?}",
        refs.iter().map(|m| m.assignment()).collect::<Vec<_>>()
    );
    for member in &members {
        assert_eq!(member.assignment().1.len(), 2, "two partitions each");
    }

    // More records while one member leaves: the other two take its partitions over.
    produce(&mut connection, "shared", 6, 50);
    let mut members = members;
    let leaver = members.pop().unwrap();
    let leaver_records = leaver.close();
    let refs: Vec<&Member> = members.iter().collect();
    assert!(
        wait_until(SESSION, || covers(&refs, 6)),
        "the remaining two cover all six within the session timeout: {:?}",
        refs.iter().map(|m| m.assignment()).collect::<Vec<_>>()
    );
    produce(&mut connection, "shared", 6, 50);
    let expected = all_records(6, 150);
    let complete = wait_until(Duration::from_secs(20), || {
        let mut seen: BTreeSet<(u32, i64)> = leaver_records.iter().copied().collect();
        for member in &members {
            seen.extend(member.records());
        }
        seen == expected
    });
    assert!(complete, "every record was read at least once");
    for member in &members {
        let seen = member.seen.lock().unwrap();
        assert!(seen.assigned >= 2 && seen.revoked >= 1, "callbacks ran");
    }
    for member in members {
        member.close();
    }
}

#[test]
fn a_killed_member_is_expired_and_its_partitions_taken_over_without_skipping_records() {
    let broker = Broker::start(2);
    let mut connection = broker.connect();
    connection.create_topic("crash", 6, &[]).unwrap();
    produce(&mut connection, "crash", 6, 40);

    // One member is a CLI process, killed below.
    let mut child = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args([
            "consume",
            "crash",
            "--group",
            "k",
            "--from-beginning",
            "--session-timeout-ms",
            "2000",
            "--format",
            "%p %o\\n",
            "--broker",
            &broker.address(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let members: Vec<Member> = (0..2)
        .map(|_| Member::start(&broker.address(), config("k", &["crash"])))
        .collect();
    let mut admin = broker.connect();
    let three = wait_until(Duration::from_secs(20), || {
        admin
            .describe_group("k")
            .map(|group| {
                group.state == "Stable"
                    && group.members.len() == 3
                    && group
                        .members
                        .iter()
                        .all(|member| !member.assignment.is_empty())
            })
            .unwrap_or(false)
    });
    assert!(three, "the CLI member and two threads form the group");
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap(); // SIGKILL: no leave, no commit
    let killed_at = Instant::now();
    child.wait().unwrap();
    let mut printed = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut printed)
        .unwrap();
    let mut seen: BTreeSet<(u32, i64)> = printed
        .lines()
        .filter_map(|line| {
            let (partition, offset) = line.split_once(' ')?;
            Some((partition.parse().ok()?, offset.parse().ok()?))
        })
        .collect();

    let refs: Vec<&Member> = members.iter().collect();
    let session = SESSION;
    assert!(
        wait_until(session + Duration::from_secs(3), || covers(&refs, 6)),
        "the survivors take over every partition"
    );
    let took = killed_at.elapsed();
    assert!(
        took >= session - Duration::from_millis(200),
        "the dead member was only expired by its session timeout, after {took:?}"
    );
    produce(&mut connection, "crash", 6, 10);
    let expected = all_records(6, 50);
    let complete = wait_until(Duration::from_secs(20), || {
        let mut all = seen.clone();
        for member in &members {
            all.extend(member.records());
        }
        all == expected
    });
    for member in &members {
        seen.extend(member.records());
    }
    let missing: Vec<_> = expected.difference(&seen).take(10).collect();
    assert!(
        complete,
        "no record skipped; missing (first 10): {missing:?}"
    );
    for member in members {
        member.close();
    }
}

#[test]
fn two_groups_each_receive_every_record() {
    let broker = Broker::start(2);
    let mut connection = broker.connect();
    connection.create_topic("fan", 4, &[]).unwrap();
    produce(&mut connection, "fan", 4, 30);
    let alone = Member::start(&broker.address(), config("one", &["fan"]));
    let pair: Vec<Member> = (0..2)
        .map(|_| Member::start(&broker.address(), config("two", &["fan"])))
        .collect();
    let expected = all_records(4, 30);
    let each = wait_until(Duration::from_secs(20), || {
        let first: BTreeSet<_> = alone.records().into_iter().collect();
        let second: BTreeSet<_> = pair.iter().flat_map(|member| member.records()).collect();
        first == expected && second == expected
    });
    assert!(each, "each group read all 120 records");
    alone.close();
    for member in pair {
        member.close();
    }
    let listed = spate(&["group", "list", "--broker", &broker.address()]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("one") && listed.contains("two"), "{listed}");
}

fn commit(connection: &mut Connection, group: &str, topic: &str, offsets: &[(u32, i64)]) {
    let answer = connection
        .commit_offsets(OffsetCommitRequest {
            group_id: group.to_string(),
            generation: GENERATION_NONE,
            member_id: String::new(),
            topics: vec![OffsetCommitTopic {
                name: topic.to_string(),
                partitions: offsets
                    .iter()
                    .map(|&(partition, offset)| OffsetCommitPartition {
                        partition,
                        offset,
                        metadata: format!("at {offset}"),
                    })
                    .collect(),
            }],
        })
        .unwrap();
    for topic in answer {
        for partition in topic.partitions {
            assert!(partition.status.is_ok(), "{}", partition.status);
        }
    }
}

fn committed(connection: &mut Connection, group: &str) -> BTreeMap<(String, u32), i64> {
    connection
        .fetch_offsets(group, Vec::new())
        .unwrap()
        .into_iter()
        .flat_map(|topic| {
            let name = topic.name;
            topic
                .partitions
                .into_iter()
                .map(move |partition| ((name.clone(), partition.partition), partition.offset))
        })
        .collect()
}

#[test]
fn committed_offsets_survive_a_restart_and_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut broker = Broker::start_in(&data, 2, &[]);
    let mut connection = broker.connect();
    connection.create_topic("durable", 3, &[]).unwrap();
    produce(&mut connection, "durable", 3, 20);
    // A member reads everything and commits on close.
    let member = Member::start(&broker.address(), config("keep", &["durable"]));
    assert!(wait_until(Duration::from_secs(20), || member
        .records()
        .len()
        == 60));
    member.close();
    let mut expected = BTreeMap::new();
    for partition in 0..3 {
        expected.insert(("durable".to_string(), partition), 20);
    }
    assert_eq!(committed(&mut connection, "keep"), expected);
    commit(&mut connection, "other", "durable", &[(1, 7)]);

    broker.stop();
    let broker = Broker::start_in(&data, 2, &[]);
    let mut connection = broker.connect();
    assert_eq!(
        committed(&mut connection, "keep"),
        expected,
        "after a graceful restart"
    );
    assert_eq!(committed(&mut connection, "other").len(), 1);

    // Acknowledged commits survive kill -9.
    commit(&mut connection, "keep", "durable", &[(0, 5), (2, 11)]);
    expected.insert(("durable".to_string(), 0), 5);
    expected.insert(("durable".to_string(), 2), 11);
    drop(connection);
    drop(broker); // SIGKILL
    let mut broker = Broker::start_in(&data, 1, &[]);
    let mut connection = broker.connect();
    assert_eq!(
        committed(&mut connection, "keep"),
        expected,
        "after kill -9, and on another shard count"
    );

    // A new member starts from the committed offsets.
    let member = Member::start(&broker.address(), config("keep", &["durable"]));
    assert!(wait_until(Duration::from_secs(20), || member
        .records()
        .len()
        == 15 + 9));
    let records: BTreeSet<_> = member.records().into_iter().collect();
    assert!(records.contains(&(0, 5)) && !records.contains(&(0, 4)));
    assert!(records.contains(&(2, 11)) && !records.contains(&(2, 10)));
    assert!(!records.iter().any(|&(partition, _)| partition == 1));
    member.close();
    broker.stop();
}

#[test]
fn describe_reports_lag_and_the_admin_commands_work() {
    let broker = Broker::start(2);
    let address = broker.address();
    let mut connection = broker.connect();
    connection.create_topic("lagging", 2, &[]).unwrap();
    produce(&mut connection, "lagging", 2, 10);
    commit(&mut connection, "watch", "lagging", &[(0, 3), (1, 10)]);

    let described = spate(&["group", "describe", "watch", "--broker", &address]);
    assert!(described.status.success(), "{described:?}");
    let text = String::from_utf8_lossy(&described.stdout).into_owned();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .filter(|line| line.starts_with("lagging"))
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert_eq!(&rows[0][..5], &["lagging", "0", "3", "10", "7"], "{text}");
    assert_eq!(&rows[1][..5], &["lagging", "1", "10", "10", "0"], "{text}");

    let reset = spate(&[
        "group",
        "reset-offsets",
        "watch",
        "--topic",
        "lagging",
        "--to-earliest",
        "--broker",
        &address,
    ]);
    assert!(reset.status.success(), "{reset:?}");
    let after: Vec<i64> = committed(&mut connection, "watch").into_values().collect();
    assert_eq!(after, vec![0, 0]);
    let reset = spate(&[
        "group",
        "reset-offsets",
        "watch",
        "--topic",
        "lagging",
        "--to-offset",
        "4",
        "--broker",
        &address,
    ]);
    assert!(reset.status.success(), "{reset:?}");
    let after: Vec<i64> = committed(&mut connection, "watch").into_values().collect();
    assert_eq!(after, vec![4, 4]);

    // A group with a member: reset and delete are refused, and change nothing.
    let member = Member::start(&address, config("busy", &["lagging"]));
    assert!(wait_until(Duration::from_secs(20), || !member
        .assignment()
        .1
        .is_empty()));
    let refused = spate(&[
        "group",
        "reset-offsets",
        "busy",
        "--topic",
        "lagging",
        "--to-latest",
        "--broker",
        &address,
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("active members"));
    let refused = spate(&["group", "delete", "busy", "--broker", &address]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("active members"));
    member.close();

    let deleted = spate(&["group", "delete", "watch", "--broker", &address]);
    assert!(deleted.status.success(), "{deleted:?}");
    assert!(committed(&mut connection, "watch").is_empty());
    let gone = spate(&["group", "describe", "watch", "--broker", &address]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("unknown group"));
    let listed = spate(&["group", "list", "--broker", &address]);
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("watch"));
}

fn code(result: Result<impl std::fmt::Debug, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Broker(status)) => status.code,
        other => panic!("expected a broker error, got {other:?}"),
    }
}

fn join(group: &str, member_id: &str, topics: &[&str], session_ms: u32) -> JoinGroupRequest {
    JoinGroupRequest {
        group_id: group.to_string(),
        member_id: member_id.to_string(),
        client_id: "raw".to_string(),
        session_timeout_ms: session_ms,
        rebalance_timeout_ms: 5_000,
        topics: topics.iter().map(|topic| topic.to_string()).collect(),
        assignors: vec!["range".to_string()],
    }
}

#[test]
fn bad_group_requests_get_error_codes_and_change_nothing() {
    let broker = Broker::start(2);
    let mut connection = broker.connect();
    connection.create_topic("mine", 2, &[]).unwrap();
    connection.create_topic("theirs", 1, &[]).unwrap();

    assert_eq!(
        code(connection.join_group(join("bad", "", &["mine"], 10))),
        ErrorCode::InvalidRequest,
        "a session timeout below the broker's minimum"
    );
    assert_eq!(
        code(connection.join_group(join(&"g".repeat(300), "", &["mine"], 5_000))),
        ErrorCode::InvalidRequest
    );
    let mut no_assignor = join("bad", "", &["mine"], 5_000);
    no_assignor.assignors = vec!["best".to_string()];
    assert_eq!(
        code(connection.join_group(no_assignor)),
        ErrorCode::InconsistentGroupProtocol
    );
    assert_eq!(
        code(connection.join_group(join("bad", "ghost", &["mine"], 5_000))),
        ErrorCode::UnknownMemberId
    );

    let joined = connection
        .join_group(join("bad", "", &["mine"], 30_000))
        .unwrap();
    let member = joined.member_id.clone();
    let generation = joined.generation;
    let assignment = connection.sync_group("bad", generation, &member).unwrap();
    assert_eq!(
        assignment,
        vec![TopicPartitions {
            name: "mine".into(),
            partitions: vec![0, 1]
        }]
    );
    let commit_request =
        |member: &str, generation: i32, topic: &str, offset: i64, metadata: usize| {
            OffsetCommitRequest {
                group_id: "bad".into(),
                generation,
                member_id: member.into(),
                topics: vec![OffsetCommitTopic {
                    name: topic.into(),
                    partitions: vec![OffsetCommitPartition {
                        partition: 0,
                        offset,
                        metadata: "m".repeat(metadata),
                    }],
                }],
            }
        };
    let first = connection
        .commit_offsets(commit_request(&member, generation, "mine", 5, 0))
        .unwrap();
    assert!(first[0].partitions[0].status.is_ok());
    let before = (
        connection.describe_group("bad").unwrap(),
        committed(&mut connection, "bad"),
    );

    let partition_code = |connection: &mut Connection, request| {
        connection.commit_offsets(request).unwrap()[0].partitions[0]
            .status
            .code
    };
    assert_eq!(
        code(connection.heartbeat("bad", generation, "ghost", 0)),
        ErrorCode::UnknownMemberId
    );
    assert_eq!(
        code(connection.heartbeat("bad", generation - 1, &member, 0)),
        ErrorCode::IllegalGeneration
    );
    assert_eq!(
        code(connection.sync_group("bad", generation + 1, &member)),
        ErrorCode::IllegalGeneration
    );
    assert_eq!(
        code(connection.commit_offsets(commit_request("ghost", generation, "mine", 9, 0))),
        ErrorCode::UnknownMemberId
    );
    assert_eq!(
        code(connection.commit_offsets(commit_request(&member, generation - 1, "mine", 9, 0))),
        ErrorCode::IllegalGeneration
    );
    assert_eq!(
        partition_code(
            &mut connection,
            commit_request(&member, generation, "theirs", 9, 0)
        ),
        ErrorCode::NotAssigned
    );
    assert_eq!(
        partition_code(
            &mut connection,
            commit_request(&member, generation, "mine", 9, 5_000)
        ),
        ErrorCode::OffsetMetadataTooLarge
    );
    assert_eq!(
        partition_code(
            &mut connection,
            commit_request(&member, generation, "nowhere", 9, 0)
        ),
        ErrorCode::UnknownTopicOrPartition
    );
    assert_eq!(
        code(connection.commit_offsets(commit_request("", GENERATION_NONE, "mine", 9, 0))),
        ErrorCode::GroupNotEmpty
    );
    assert_eq!(
        code(connection.delete_group("bad")),
        ErrorCode::GroupNotEmpty
    );
    assert_eq!(
        code(connection.describe_group("never")),
        ErrorCode::UnknownGroup
    );
    assert_eq!(
        code(connection.delete_group("never")),
        ErrorCode::UnknownGroup
    );
    assert_eq!(
        code(connection.leave_group("bad", "ghost")),
        ErrorCode::UnknownMemberId
    );

    let after = (
        connection.describe_group("bad").unwrap(),
        committed(&mut connection, "bad"),
    );
    assert_eq!(after, before, "the group and its offsets are unchanged");
    assert_eq!(after.1[&("mine".to_string(), 0)], 5);
    connection.heartbeat("bad", generation, &member, 0).unwrap();
    connection.leave_group("bad", &member).unwrap();
}

#[test]
fn creating_a_subscribed_topic_rebalances_the_group() {
    let broker = Broker::start(1);
    let mut connection = broker.connect();
    connection.create_topic("first", 2, &[]).unwrap();
    let member = Member::start(&broker.address(), config("watcher", &["first", "later"]));
    assert!(wait_until(Duration::from_secs(20), || member
        .assignment()
        .1
        .len()
        == 2));
    connection.create_topic("later", 3, &[]).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || member.assignment().1.len() == 5),
        "the new topic's partitions are assigned: {:?}",
        member.assignment()
    );
    member.close();
}

#[test]
fn the_offsets_log_is_compacted_and_replays_to_the_same_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let flags = ["--offsets-compact-bytes", "65536"];
    let mut broker = Broker::start_in(&data, 1, &flags);
    let mut connection = broker.connect();
    connection.create_topic("busy", 4, &[]).unwrap();
    produce(&mut connection, "busy", 4, 1);
    let mut offsets = Vec::new();
    for round in 0..800i64 {
        offsets = (0..4)
            .map(|partition| (partition, round * 10 + partition as i64))
            .collect();
        commit(&mut connection, "compact", "busy", &offsets);
    }
    let partition = spate::group::offsets_partition("compact");
    let dir = spate::group::offsets::offsets_dir(&data, partition);
    let logs = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".log"))
            .collect();
        names.sort();
        names
    };
    assert!(
        wait_until(Duration::from_secs(10), || !logs()[0]
            .starts_with("00000000000000000000")),
        "the first segment was deleted by compaction: {:?}",
        logs()
    );
    let expected: BTreeMap<(String, u32), i64> = offsets
        .iter()
        .map(|&(partition, offset)| (("busy".to_string(), partition), offset))
        .collect();
    assert_eq!(committed(&mut connection, "compact"), expected);
    broker.stop();
    let broker = Broker::start_in(&data, 1, &flags);
    let mut connection = broker.connect();
    assert_eq!(
        committed(&mut connection, "compact"),
        expected,
        "after replay"
    );
}

#[test]
fn group_commands_refuse_bad_input_with_one_clear_line() {
    let broker = Broker::start(1);
    let address = broker.address();
    let unknown = spate(&["consume", "nope", "--group", "g", "--broker", &address]);
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("cannot consume nope") && stderr.contains("unknown topic"),
        "{stderr}"
    );
    let conflicting = spate(&["consume", "t", "--group", "g", "--partition", "0"]);
    assert!(!conflicting.status.success());
    assert!(String::from_utf8_lossy(&conflicting.stderr).contains("--partition"));
    let no_target = spate(&[
        "group",
        "reset-offsets",
        "g",
        "--topic",
        "t",
        "--broker",
        &address,
    ]);
    assert!(!no_target.status.success());
    assert!(String::from_utf8_lossy(&no_target.stderr).contains("--to-earliest"));
    let two_targets = spate(&[
        "group",
        "reset-offsets",
        "g",
        "--topic",
        "t",
        "--to-earliest",
        "--to-latest",
    ]);
    assert!(!two_targets.status.success());
    let too_long = spate(&["group", "describe", &"g".repeat(300), "--broker", &address]);
    assert!(!too_long.status.success());
    assert!(String::from_utf8_lossy(&too_long.stderr).contains("limit is 255"));
}

#[test]
fn a_deleted_topics_offsets_do_not_apply_to_a_new_topic_of_that_name() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut broker = Broker::start_in(&data, 2, &[]);
    let mut connection = broker.connect();
    connection.create_topic("reborn", 2, &[]).unwrap();
    connection.create_topic("kept", 1, &[]).unwrap();
    produce(&mut connection, "reborn", 2, 50);
    commit(&mut connection, "g", "reborn", &[(0, 50), (1, 20)]);
    commit(&mut connection, "g", "kept", &[(0, 0)]);
    assert!(connection.delete_topic("reborn").unwrap().status.is_ok());
    connection.create_topic("reborn", 2, &[]).unwrap();
    let only_kept: BTreeMap<(String, u32), i64> = [(("kept".to_string(), 0), 0)].into();
    assert_eq!(committed(&mut connection, "g"), only_kept);
    broker.stop();
    let broker = Broker::start_in(&data, 2, &[]);
    let mut connection = broker.connect();
    assert_eq!(committed(&mut connection, "g"), only_kept, "durably");
}

#[test]
fn a_member_whose_connections_were_closed_while_idle_reconnects_and_rejoins() {
    let broker = Broker::start_flagged(2, &["--connections-max-idle-ms", "1000"]);
    let mut connection = broker.connect();
    connection.create_topic("quiet", 4, &[]).unwrap();
    let first = Member::start(&broker.address(), config("idle", &["quiet"]));
    assert!(wait_until(Duration::from_secs(20), || covers(&[&first], 4)));
    // Long enough for the broker to close every connection the member does not use.
    std::thread::sleep(Duration::from_millis(2500));
    let second = Member::start(&broker.address(), config("idle", &["quiet"]));
    assert!(
        wait_until(Duration::from_secs(20), || covers(&[&first, &second], 4)),
        "{:?} {:?}",
        first.assignment(),
        second.assignment()
    );
    drop(connection);
    let mut connection = broker.connect();
    produce(&mut connection, "quiet", 4, 5);
    let expected = all_records(4, 5);
    assert!(wait_until(Duration::from_secs(20), || {
        let seen: BTreeSet<_> = first
            .records()
            .into_iter()
            .chain(second.records())
            .collect();
        seen == expected
    }));
    first.close();
    second.close();
}

#[test]
fn a_member_busy_past_its_session_but_within_the_rebalance_timeout_keeps_its_place() {
    let broker = Broker::start(1);
    let mut connection = broker.connect();
    connection.create_topic("slow", 2, &[]).unwrap();
    let mut busy = GroupConsumer::new(&broker.address(), config("patient", &["slow"])).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while busy.assignment().len() != 2 {
        busy.poll(Duration::from_millis(50)).unwrap();
        assert!(Instant::now() < deadline);
    }
    let member_id = busy.member_id();
    let other = Member::start(&broker.address(), config("patient", &["slow"]));
    // Not polling for twice the session timeout (the rebalance timeout is 10 s).
    std::thread::sleep(SESSION * 2);
    let deadline = Instant::now() + Duration::from_secs(20);
    while busy.assignment().len() != 1 {
        busy.poll(Duration::from_millis(50)).unwrap();
        assert!(Instant::now() < deadline, "{:?}", busy.assignment());
    }
    assert_eq!(
        busy.member_id(),
        member_id,
        "it was not expired and rejoined as itself"
    );
    assert_eq!(other.assignment().1.len(), 1);
    busy.close().unwrap();
    other.close();
}

#[test]
fn a_commit_on_a_full_disk_fails_with_disk_full_and_the_committed_offsets_stay() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = crate::support::LoopMount::new(dir.path(), 64) else {
        return;
    };
    let data = mount.mount_point.join("data");
    let mut broker = Broker::start_in(&data, 1, &[]);
    let mut connection = broker.connect();
    connection.create_topic("t", 1, &[]).unwrap();
    commit(&mut connection, "g", "t", &[(0, 1)]);
    let filler = mount.mount_point.join("filler");
    crate::support::fill(&filler);
    // Each commit carries 4000 bytes of metadata, so it soon needs a block the disk lacks.
    let attempt = |connection: &mut Connection, offset: i64| {
        let answer = connection
            .commit_offsets(OffsetCommitRequest {
                group_id: "g".into(),
                generation: GENERATION_NONE,
                member_id: String::new(),
                topics: vec![OffsetCommitTopic {
                    name: "t".into(),
                    partitions: vec![OffsetCommitPartition {
                        partition: 0,
                        offset,
                        metadata: "m".repeat(4000),
                    }],
                }],
            })
            .unwrap();
        answer[0].partitions[0].status.clone()
    };
    let mut acknowledged = 1;
    let refused = (2..400).find_map(|offset| {
        let status = attempt(&mut connection, offset);
        if status.is_ok() {
            acknowledged = offset;
            None
        } else {
            Some(status)
        }
    });
    let refused = refused.expect("a commit fails once the disk is full");
    assert_eq!(refused.code, ErrorCode::DiskFull, "{refused}");
    let expected: BTreeMap<(String, u32), i64> = [(("t".to_string(), 0), acknowledged)].into();
    assert_eq!(
        committed(&mut connection, "g"),
        expected,
        "the refused commit changed nothing"
    );
    // The broker keeps serving, and commits work again once there is room.
    std::fs::remove_file(&filler).unwrap();
    assert!(attempt(&mut connection, 1000).is_ok());
    broker.stop();
    let broker = Broker::start_in(&data, 1, &[]);
    let mut connection = broker.connect();
    let expected: BTreeMap<(String, u32), i64> = [(("t".to_string(), 0), 1000)].into();
    assert_eq!(committed(&mut connection, "g"), expected);
    drop(connection);
    drop(broker);
    drop(mount);
}
