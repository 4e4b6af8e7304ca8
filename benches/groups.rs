//! Consumer groups against a `spate serve` broker this bench starts itself: how long a
//! rebalance takes, and what a group consumes next to a single consumer. Not a test: it
//! measures and prints (a markdown section on stdout, progress on stderr). It checks only
//! that what it measured is valid: a rebalance that hands out a partition twice, or none
//! at all, stops the bench.
//!
//! ```text
//! cargo bench --bench groups                       # full run
//! cargo bench --bench groups -- --quick            # smaller (smoke check)
//! cargo bench --bench groups -- --help             # the flags
//! SPATE_BENCH_BROKER_LOG=1 cargo bench ...         # the broker's log on stderr
//! ```
//!
//! 1. Rebalance, protocol level (the figure the target of under 100 ms applies to): a
//!    group of 9 bare members (join, sync, held heartbeats) on a 100-partition topic is
//!    stable; a 10th starts. Measured: from its start to the last of the ten holding its
//!    assignment of the new generation (its sync answered).
//! 2. Rebalance, `GroupConsumer` level: the same with consumers polling an empty topic.
//!    A consumer notices a rebalance between fetch long polls, so this includes up to one
//!    fetch wait (`--poll-ms`) per consumer.
//! 3. Consume throughput: a single consumer and a 4-member group each read a topic of 8
//!    partitions from the start, alternately.
//! 4. Reference: loopback TCP throughput by iperf3 (when installed), the broker's core
//!    sending, as a consume moves data.
//!
//! The broker runs one shard pinned to `--broker-cpu`; every thread of the bench (and the
//! consumers' heartbeat threads, which inherit it) is pinned to `--client-cpu`.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use spate::client::{
    ClientError, Connection, GroupConsumer, GroupConsumerConfig, OffsetReset, RebalanceListener,
};
use spate::protocol::{Acks, ErrorCode, JoinGroupRequest, OFFSET_LATEST, TopicPartitions};
use spate::record::BatchBuilder;

const MEMBERS: usize = 10;
const ASSIGN_TOPIC: &str = "assign";
const ASSIGN_PARTITIONS: u32 = 100;
const CONSUME_TOPIC: &str = "consume";
const CONSUME_PARTITIONS: u32 = 8;
const GROUP_MEMBERS: usize = 4;
const RECORD_BYTES: usize = 1024;
const BATCH_BYTES: usize = 1 << 20;
const FILL_THREADS: u64 = 2;
const SESSION: Duration = Duration::from_secs(10);
const REBALANCE: Duration = Duration::from_secs(10);
/// How long the broker may hold a bare member's heartbeat.
const HEARTBEAT_WAIT_MS: u32 = 1000;
/// The default `poll` timeout of the consumers in the rebalance trials.
const POLL_WAIT_MS: u64 = 50;
/// The `poll` timeout of the consumers in the throughput runs.
const CONSUME_POLL: Duration = Duration::from_millis(100);
/// Every wait for the broker or the members gives up (and panics) after this long.
const DEADLINE: Duration = Duration::from_secs(60);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
const TARGET_MS: f64 = 100.0;
const MB: f64 = 1e6;

const USAGE: &str = "\
cargo bench --bench groups -- [flags]

  --quick              smaller run: --trials 5 --consumer-trials 3 --fill-mib 64 --runs 1
  --trials N           protocol-level rebalance trials [15]
  --consumer-trials N  GroupConsumer-level rebalance trials [7]
  --poll-ms N          poll timeout of the consumers in those trials [50]
  --fill-mib N         MiB of records in the consume topic [512]
  --runs N             consume runs of each kind, alternating [3]
  --broker-cpu N       core of the broker's one shard [0]
  --client-cpu N       core of the bench's threads [1; 0 on a one-core machine]

A count of 0 skips that part.";

struct Options {
    trials: usize,
    consumer_trials: usize,
    poll_wait: Duration,
    fill_mib: u64,
    runs: usize,
    broker_cpu: usize,
    client_cpu: usize,
    cores: usize,
    /// The flags as given, for the report.
    flags: Vec<String>,
}

fn usage_error(message: &str) -> ! {
    eprintln!("groups bench: {message}\n\n{USAGE}");
    std::process::exit(2);
}

fn parse_options() -> Options {
    // `cargo bench` adds `--bench` to a harness-less bench's arguments.
    let flags: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| arg != "--bench")
        .collect();
    let quick = flags.iter().any(|arg| arg == "--quick");
    let cores = std::thread::available_parallelism().map_or(1, |count| count.get());
    let mut options = Options {
        trials: if quick { 5 } else { 15 },
        consumer_trials: if quick { 3 } else { 7 },
        poll_wait: Duration::from_millis(POLL_WAIT_MS),
        fill_mib: if quick { 64 } else { 512 },
        runs: if quick { 1 } else { 3 },
        broker_cpu: 0,
        client_cpu: if cores > 1 { 1 } else { 0 },
        cores,
        flags: flags.clone(),
    };
    let mut iter = flags.iter();
    while let Some(flag) = iter.next() {
        let mut number = || -> usize {
            iter.next()
                .and_then(|value| value.parse().ok())
                .unwrap_or_else(|| usage_error(&format!("{flag} takes a number")))
        };
        match flag.as_str() {
            "--quick" => {}
            "--trials" => options.trials = number(),
            "--consumer-trials" => options.consumer_trials = number(),
            "--poll-ms" => options.poll_wait = Duration::from_millis(number() as u64),
            "--fill-mib" => options.fill_mib = number() as u64,
            "--runs" => options.runs = number(),
            "--broker-cpu" => options.broker_cpu = number(),
            "--client-cpu" => options.client_cpu = number(),
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => usage_error(&format!("unknown flag {other}")),
        }
    }
    for cpu in [options.broker_cpu, options.client_cpu] {
        if cpu >= cores {
            usage_error(&format!(
                "CPU {cpu} does not exist: this machine has CPUs 0 to {}",
                cores - 1
            ));
        }
    }
    if options.runs > 0 && options.fill_mib == 0 {
        usage_error("--fill-mib must be at least 1 for the consume runs");
    }
    options
}

fn main() {
    let options = parse_options();
    // The broker first, so that it does not inherit this thread's pinning.
    let mut broker = Broker::start(options.broker_cpu);
    pin(options.client_cpu);
    let address = broker.address.clone();
    let cpu = options.client_cpu;
    let poll_wait = options.poll_wait;
    if options.trials + options.consumer_trials > 0 {
        let mut admin = Connection::connect_with_timeout(&address, "bench-admin", ANSWER_TIMEOUT)
            .expect("connect to the broker");
        let created = admin
            .create_topic(ASSIGN_TOPIC, ASSIGN_PARTITIONS, &[])
            .expect("create the assign topic");
        assert!(created.status.is_ok(), "create topic: {}", created.status);
    }

    let protocol: Vec<Trial> = (0..options.trials)
        .map(|trial| {
            let group = format!("bench-protocol-{trial}");
            let spawn = |member: usize, board: Arc<Board>| {
                let (address, group) = (address.clone(), group.clone());
                spawn_pinned(format!("member-{member}"), cpu, move || {
                    protocol_member(&address, &group, member, &board)
                })
            };
            let result = rebalance_trial(&address, &group, &spawn);
            eprintln!(
                "protocol trial {}/{}: {:.2} ms",
                trial + 1,
                options.trials,
                ms(result.to_held)
            );
            result
        })
        .collect();

    let consumers: Vec<Trial> = (0..options.consumer_trials)
        .map(|trial| {
            let group = format!("bench-consumer-{trial}");
            let spawn = |member: usize, board: Arc<Board>| {
                let (address, group) = (address.clone(), group.clone());
                spawn_pinned(format!("consumer-{member}"), cpu, move || {
                    consumer_member(&address, &group, member, &board, poll_wait)
                })
            };
            let result = rebalance_trial(&address, &group, &spawn);
            eprintln!(
                "GroupConsumer trial {}/{}: {:.2} ms to the last poll return",
                trial + 1,
                options.consumer_trials,
                ms(result.to_held)
            );
            result
        })
        .collect();

    let mut single = Vec::new();
    let mut group = Vec::new();
    let filled = (options.runs > 0).then(|| fill(&address, options.fill_mib, cpu));
    if let Some(filled) = &filled {
        for run in 0..options.runs {
            for (members, results) in [(1, &mut single), (GROUP_MEMBERS, &mut group)] {
                let name = format!("bench-consume-{members}-{run}");
                let result = consume_run(&address, &name, members, cpu, filled);
                eprintln!(
                    "consume run {}/{} with {members} member(s): {:.0} MB/s",
                    run + 1,
                    options.runs,
                    filled.batch_bytes as f64 / MB / result.elapsed.as_secs_f64()
                );
                results.push(result);
            }
        }
    }

    match broker.stop() {
        Some(status) if status.success() => {}
        status => eprintln!("warning: the broker did not stop cleanly: {status:?}"),
    }
    let reference = iperf3_reference(&options);

    report(
        &options,
        &protocol,
        &consumers,
        filled.as_ref(),
        &single,
        &group,
        reference,
    );
}

// ---- broker and helpers -------------------------------------------------------------------

struct Broker {
    child: Option<Child>,
    address: String,
    data_dir: PathBuf,
}

impl Broker {
    fn start(cpu: usize) -> Broker {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-groups");
        let data_dir = root.join(format!("data-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&root).expect("create target/bench-groups");
        let address = format!("127.0.0.1:{}", free_port_pair());
        let log = std::env::var_os("SPATE_BENCH_BROKER_LOG").is_some();
        let child = Command::new(env!("CARGO_BIN_EXE_spate"))
            .arg("serve")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen", &address, "--cpus", &cpu.to_string()])
            .args(["--kafka-listen", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if log { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .expect("start spate serve");
        let mut broker = Broker {
            child: Some(child),
            address,
            data_dir,
        };
        let deadline = Instant::now() + DEADLINE;
        while Connection::connect(&broker.address, "bench-probe").is_err() {
            let child = broker.child.as_mut().expect("started");
            if let Some(status) = child.try_wait().expect("query the broker process") {
                panic!("the broker exited at start ({status}); SPATE_BENCH_BROKER_LOG=1 shows why");
            }
            assert!(
                Instant::now() < deadline,
                "the broker did not accept connections on {} within {DEADLINE:?}",
                broker.address
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        broker
    }

    /// SIGTERM, then wait (a kill after 30 s); removes the data directory.
    fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on the pid of a child this process started and has not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    eprintln!("warning: the broker ignored SIGTERM for 30 s; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let _ = std::fs::remove_dir_all(&self.data_dir);
        status
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port P with P+1 free too (the broker's one shard listens on P+1).
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let probe = TcpListener::bind("127.0.0.1:0").expect("bind a probe socket");
        let port = probe.local_addr().expect("probe address").port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("found no two consecutive free ports on 127.0.0.1");
}

fn pin(cpu: usize) {
    assert!(
        core_affinity::set_for_current(core_affinity::CoreId { id: cpu }),
        "cannot pin a thread to CPU {cpu}"
    );
}

fn spawn_pinned<T: Send + 'static>(
    name: String,
    cpu: usize,
    body: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            pin(cpu);
            body()
        })
        .expect("spawn a thread")
}

type Worker<T> = JoinHandle<Result<T, ClientError>>;

/// Polls `check` until it answers `Ok`, and panics after `limit` with its last `Err` (a
/// description of what it saw), or at once if one of `threads` fails.
fn wait_for<T, R>(
    what: &str,
    limit: Duration,
    threads: &mut Vec<Worker<R>>,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let seen = match check() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        if let Some(index) = threads.iter().position(|thread| thread.is_finished()) {
            if let Ok(value) = check() {
                return value;
            }
            match threads.swap_remove(index).join() {
                Ok(Ok(_)) => panic!("a thread ended while waiting for {what} ({seen})"),
                Ok(Err(error)) => panic!("a thread failed while waiting for {what}: {error}"),
                Err(_) => panic!("a thread panicked while waiting for {what}"),
            }
        }
        assert!(
            Instant::now() < deadline,
            "waited {limit:?} for {what}; last seen: {seen}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits (at most `limit`) for every thread to end, and returns what each returned.
fn join_all<R>(what: &str, limit: Duration, threads: Vec<Worker<R>>) -> Vec<R> {
    let deadline = Instant::now() + limit;
    while threads.iter().any(|thread| !thread.is_finished()) {
        assert!(
            Instant::now() < deadline,
            "{what}: threads still running after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    threads
        .into_iter()
        .map(|thread| match thread.join() {
            Ok(Ok(value)) => value,
            Ok(Err(error)) => panic!("{what}: a thread failed: {error}"),
            Err(_) => panic!("{what}: a thread panicked"),
        })
        .collect()
}

fn code(error: &ClientError) -> Option<ErrorCode> {
    match error {
        ClientError::Broker(status) => Some(status.code),
        _ => None,
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

/// Nearest rank.
fn percentile(values: &[f64], fraction: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ---- rebalance trials ---------------------------------------------------------------------

/// One member's assignment for one generation, as the member reported it.
#[derive(Clone)]
struct Report {
    member: usize,
    generation: i32,
    /// When the member held its assignment: its sync answered (bare members), or its
    /// `poll` returned in the generation (consumers).
    at: Instant,
    /// Consumers only: when `on_assigned` ran for the generation.
    assigned_at: Option<Instant>,
    partitions: Vec<u32>,
}

#[derive(Default)]
struct Board {
    reports: Mutex<Vec<Report>>,
    stop: AtomicBool,
}

impl Board {
    fn report(&self, report: Report) {
        self.reports.lock().expect("not poisoned").push(report);
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

struct Trial {
    /// From the 10th member's start to the last member holding its assignment.
    to_held: Duration,
    /// Consumers only: to the last `on_assigned`.
    to_assigned: Option<Duration>,
}

/// Reports of `generation`, the latest of each member.
fn of_generation(reports: &[Report], generation: i32) -> BTreeMap<usize, &Report> {
    reports
        .iter()
        .filter(|report| report.generation == generation)
        .map(|report| (report.member, report))
        .collect()
}

fn describe_reports(reports: &[Report]) -> String {
    let latest: BTreeMap<usize, i32> = reports
        .iter()
        .map(|report| (report.member, report.generation))
        .collect();
    format!("latest generation by member: {latest:?}")
}

/// 9 members form a stable group, then a 10th starts; returns the time from its start
/// to the last of the ten holding its assignment of the generation it joined.
fn rebalance_trial(
    address: &str,
    group: &str,
    spawn: &dyn Fn(usize, Arc<Board>) -> Worker<()>,
) -> Trial {
    let board = Arc::new(Board::default());
    let mut threads: Vec<Worker<()>> = (0..MEMBERS - 1)
        .map(|member| spawn(member, board.clone()))
        .collect();
    let mut admin = Connection::connect_with_timeout(address, "bench-admin", ANSWER_TIMEOUT)
        .expect("connect to the broker");
    wait_for(
        &format!("{} members to form a stable group {group}", MEMBERS - 1),
        DEADLINE,
        &mut threads,
        || {
            let described = admin
                .describe_group(group)
                .map_err(|error| format!("describe: {error}"))?;
            let reports = board.reports.lock().expect("not poisoned");
            let synced = of_generation(&reports, described.generation).len();
            if described.state == "Stable"
                && described.members.len() == MEMBERS - 1
                && synced == MEMBERS - 1
            {
                Ok(())
            } else {
                Err(format!(
                    "state {}, generation {}, {} members, {synced} reported it; {}",
                    described.state,
                    described.generation,
                    described.members.len(),
                    describe_reports(&reports)
                ))
            }
        },
    );

    let started = Instant::now();
    threads.push(spawn(MEMBERS - 1, board.clone()));
    let (generation, reports) = wait_for(
        &format!("all {MEMBERS} members of {group} to hold their assignment"),
        DEADLINE,
        &mut threads,
        || {
            let reports = board.reports.lock().expect("not poisoned");
            let Some(generation) = reports
                .iter()
                .find(|report| report.member == MEMBERS - 1)
                .map(|report| report.generation)
            else {
                return Err(format!(
                    "the new member has no assignment yet; {}",
                    describe_reports(&reports)
                ));
            };
            if let Some(later) = reports.iter().find(|report| report.generation > generation) {
                panic!(
                    "group {group}: member {} reached generation {} after the new member joined \
                     generation {generation}: another rebalance followed",
                    later.member, later.generation
                );
            }
            let members = of_generation(&reports, generation);
            if members.len() == MEMBERS {
                Ok((
                    generation,
                    members.into_values().cloned().collect::<Vec<Report>>(),
                ))
            } else {
                Err(format!(
                    "generation {generation}: {} of {MEMBERS} members hold it; {}",
                    members.len(),
                    describe_reports(&reports)
                ))
            }
        },
    );
    check_assignment(group, generation, &reports);
    let held = reports.iter().map(|report| report.at).max().expect("ten");
    let assigned = reports
        .iter()
        .map(|report| report.assigned_at)
        .collect::<Option<Vec<Instant>>>()
        .and_then(|instants| instants.into_iter().max());

    board.stop.store(true, Ordering::SeqCst);
    join_all(
        &format!("stopping the members of {group}"),
        DEADLINE,
        threads,
    );
    Trial {
        to_held: held - started,
        to_assigned: assigned.map(|assigned| assigned - started),
    }
}

/// The assignments of one generation are disjoint and cover every partition.
fn check_assignment(group: &str, generation: i32, reports: &[Report]) {
    let mut owners: BTreeMap<u32, usize> = BTreeMap::new();
    for report in reports {
        for &partition in &report.partitions {
            if let Some(other) = owners.insert(partition, report.member) {
                panic!(
                    "group {group}, generation {generation}: partition {partition} is assigned \
                     to member {other} and to member {}",
                    report.member
                );
            }
        }
    }
    let missing: Vec<u32> = (0..ASSIGN_PARTITIONS)
        .filter(|partition| !owners.contains_key(partition))
        .collect();
    let extra: Vec<u32> = owners
        .keys()
        .copied()
        .filter(|&partition| partition >= ASSIGN_PARTITIONS)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "group {group}, generation {generation}: partitions {missing:?} are assigned to no \
         member, and {extra:?} do not exist"
    );
}

fn assigned_partitions(assignment: &[TopicPartitions]) -> Vec<u32> {
    let mut partitions = Vec::new();
    for topic in assignment {
        assert_eq!(
            topic.name, ASSIGN_TOPIC,
            "an assignment names a topic the member did not subscribe to"
        );
        partitions.extend(&topic.partitions);
    }
    partitions
}

/// A bare member: join, sync, report, then heartbeats the broker holds until it says the
/// generation is over (join again) or the trial stops (leave).
fn protocol_member(
    address: &str,
    group: &str,
    member: usize,
    board: &Board,
) -> Result<(), ClientError> {
    let mut connection = Connection::connect_with_timeout(address, "bench-member", ANSWER_TIMEOUT)?;
    let mut member_id = String::new();
    'join: while !board.stopping() {
        let request = JoinGroupRequest {
            group_id: group.to_string(),
            member_id: member_id.clone(),
            client_id: "bench-member".to_string(),
            session_timeout_ms: SESSION.as_millis() as u32,
            rebalance_timeout_ms: REBALANCE.as_millis() as u32,
            topics: vec![ASSIGN_TOPIC.to_string()],
            assignors: vec!["sticky".into(), "range".into(), "roundrobin".into()],
        };
        let joined = match connection.join_group(request) {
            Ok(joined) => joined,
            Err(error) => match code(&error) {
                Some(ErrorCode::UnknownMemberId) => {
                    member_id.clear();
                    continue;
                }
                Some(ErrorCode::RebalanceInProgress) => continue,
                _ => return Err(error),
            },
        };
        member_id = joined.member_id;
        let assignment = match connection.sync_group(group, joined.generation, &member_id) {
            Ok(assignment) => assignment,
            Err(error) => match code(&error) {
                Some(ErrorCode::UnknownMemberId) => {
                    member_id.clear();
                    continue;
                }
                Some(ErrorCode::RebalanceInProgress | ErrorCode::IllegalGeneration) => continue,
                _ => return Err(error),
            },
        };
        board.report(Report {
            member,
            generation: joined.generation,
            at: Instant::now(),
            assigned_at: None,
            partitions: assigned_partitions(&assignment),
        });
        while !board.stopping() {
            let beat =
                connection.heartbeat(group, joined.generation, &member_id, HEARTBEAT_WAIT_MS);
            if let Err(error) = beat {
                match code(&error) {
                    Some(ErrorCode::UnknownMemberId) => {
                        member_id.clear();
                        continue 'join;
                    }
                    Some(ErrorCode::RebalanceInProgress | ErrorCode::IllegalGeneration) => {
                        continue 'join;
                    }
                    _ => return Err(error),
                }
            }
        }
    }
    if member_id.is_empty() {
        return Ok(());
    }
    match connection.leave_group(group, &member_id) {
        Err(error) if code(&error) != Some(ErrorCode::UnknownMemberId) => Err(error),
        _ => Ok(()),
    }
}

/// Logs each `on_assigned`: when, and how many partitions.
struct AssignedLog(Arc<Mutex<Vec<(Instant, usize)>>>);

impl RebalanceListener for AssignedLog {
    fn on_assigned(&mut self, partitions: &[(String, u32)]) {
        self.0
            .lock()
            .expect("not poisoned")
            .push((Instant::now(), partitions.len()));
    }
}

/// A `GroupConsumer` polling the empty topic; reports each new generation when `poll`
/// first returns in it.
fn consumer_member(
    address: &str,
    group: &str,
    member: usize,
    board: &Board,
    poll_wait: Duration,
) -> Result<(), ClientError> {
    let mut config = GroupConsumerConfig::new(group, &[ASSIGN_TOPIC]);
    config.client_id = "bench-consumer".to_string();
    config.session_timeout = SESSION;
    config.rebalance_timeout = REBALANCE;
    config.heartbeat_interval = Duration::from_secs(1);
    config.auto_offset_reset = OffsetReset::Latest;
    config.auto_commit_interval = None;
    let assigned = Arc::new(Mutex::new(Vec::new()));
    let mut consumer = GroupConsumer::new(address, config)?;
    consumer.set_listener(Box::new(AssignedLog(assigned.clone())));
    let mut generation = None;
    while !board.stopping() {
        consumer.poll(poll_wait)?;
        let now = consumer.generation();
        if generation != Some(now) {
            let at = Instant::now();
            generation = Some(now);
            let assigned_at = assigned
                .lock()
                .expect("not poisoned")
                .last()
                .map(|(at, _)| *at);
            board.report(Report {
                member,
                generation: now,
                at,
                assigned_at,
                partitions: consumer
                    .assignment()
                    .into_iter()
                    .map(|(_, partition)| partition)
                    .collect(),
            });
        }
    }
    consumer.close()
}

// ---- consume throughput -------------------------------------------------------------------

struct Filled {
    batch_bytes: u64,
    records: u64,
    end_offsets: Vec<i64>,
    record_batch_bytes: usize,
    records_per_batch: usize,
}

/// A batch of 1 KiB records (8-byte keys) of at most `BATCH_BYTES`.
fn template_batch() -> (Bytes, usize) {
    let mut builder = BatchBuilder::new();
    let value = vec![b'v'; RECORD_BYTES];
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |now| now.as_millis() as i64);
    loop {
        let key = format!("key-{:04}", builder.records_count() % 10_000);
        let next = builder.record_bytes(timestamp, Some(key.as_bytes()), Some(&value), &[]);
        if !builder.is_empty() && builder.encoded_bytes() + next > BATCH_BYTES {
            break;
        }
        builder.push(timestamp, Some(key.as_bytes()), Some(&value), &[]);
    }
    let records = builder.records_count();
    (builder.build(0), records)
}

/// Creates the consume topic and appends about `fill_mib` MiB to it, round-robin over
/// its partitions (not measured).
fn fill(address: &str, fill_mib: u64, cpu: usize) -> Filled {
    let mut admin = Connection::connect_with_timeout(address, "bench-admin", ANSWER_TIMEOUT)
        .expect("connect to the broker");
    let created = admin
        .create_topic(CONSUME_TOPIC, CONSUME_PARTITIONS, &[])
        .expect("create the consume topic");
    assert!(created.status.is_ok(), "create topic: {}", created.status);
    let (template, records_per_batch) = template_batch();
    let batches = (fill_mib << 20).div_ceil(template.len() as u64).max(1);
    eprintln!(
        "filling {CONSUME_TOPIC}: {batches} batches of {} bytes ({records_per_batch} records)",
        template.len()
    );
    let started = Instant::now();
    let threads: Vec<Worker<()>> = (0..FILL_THREADS)
        .map(|thread| {
            let (address, template) = (address.to_string(), template.clone());
            spawn_pinned(format!("fill-{thread}"), cpu, move || {
                let mut connection =
                    Connection::connect_with_timeout(&address, "bench-fill", ANSWER_TIMEOUT)?;
                for batch in (thread..batches).step_by(FILL_THREADS as usize) {
                    let partition = (batch % u64::from(CONSUME_PARTITIONS)) as u32;
                    let answer = connection
                        .produce(CONSUME_TOPIC, partition, template.clone(), Acks::All)?
                        .ok_or(ClientError::Unexpected)?;
                    if !answer.status.is_ok() {
                        return Err(ClientError::Broker(answer.status));
                    }
                }
                Ok(())
            })
        })
        .collect();
    join_all(
        "the fill",
        DEADLINE + Duration::from_secs(fill_mib / 10),
        threads,
    );
    let end_offsets: Vec<i64> = (0..CONSUME_PARTITIONS)
        .map(|partition| {
            admin
                .list_offset(CONSUME_TOPIC, partition, OFFSET_LATEST)
                .expect("list the end offset")
        })
        .collect();
    let records = batches * records_per_batch as u64;
    assert_eq!(
        end_offsets.iter().sum::<i64>() as u64,
        records,
        "the consume topic holds every record produced"
    );
    let filled = Filled {
        batch_bytes: batches * template.len() as u64,
        records,
        end_offsets,
        record_batch_bytes: template.len(),
        records_per_batch,
    };
    eprintln!(
        "filled {:.0} MB in {:.1} s",
        filled.batch_bytes as f64 / MB,
        started.elapsed().as_secs_f64()
    );
    filled
}

/// How far the members of a run have read, together.
struct Progress {
    /// Per partition: one past the highest offset any member has read.
    read: Vec<AtomicI64>,
    end: Vec<i64>,
    done: AtomicBool,
    finished: Mutex<Option<Instant>>,
}

impl Progress {
    fn complete(&self) -> bool {
        self.read
            .iter()
            .zip(&self.end)
            .all(|(read, &end)| read.load(Ordering::SeqCst) >= end)
    }

    fn describe(&self) -> String {
        let read: Vec<i64> = self
            .read
            .iter()
            .map(|read| read.load(Ordering::SeqCst))
            .collect();
        format!("read up to {read:?} of {:?}", self.end)
    }
}

struct MemberLog {
    /// Each `poll` that returned records: when, and how many.
    polls: Vec<(Instant, u64)>,
    /// Each `on_assigned`: when, and how many partitions.
    assigned: Vec<(Instant, usize)>,
}

struct ConsumeRun {
    /// From the first consumer's creation to the last record read.
    elapsed: Duration,
    /// Records returned by `poll` (more than the topic holds when a partition moved and
    /// its new owner read it again from the start: there are no commits).
    delivered: u64,
    /// From the moment the last member got its final (non-empty) assignment to the last
    /// record, and the records returned in that time; `None` when that moment came after
    /// the last record.
    after_assigned: Option<(Duration, u64)>,
}

fn consume_run(
    address: &str,
    group: &str,
    members: usize,
    cpu: usize,
    filled: &Filled,
) -> ConsumeRun {
    let progress = Arc::new(Progress {
        read: filled
            .end_offsets
            .iter()
            .map(|_| AtomicI64::new(0))
            .collect(),
        end: filled.end_offsets.clone(),
        done: AtomicBool::new(false),
        finished: Mutex::new(None),
    });
    let started = Instant::now();
    let mut threads: Vec<Worker<MemberLog>> = (0..members)
        .map(|member| {
            let (address, group, progress) =
                (address.to_string(), group.to_string(), progress.clone());
            spawn_pinned(format!("consume-{member}"), cpu, move || {
                consume_member(&address, &group, &progress)
            })
        })
        .collect();
    let limit = DEADLINE + Duration::from_secs(filled.batch_bytes / (10 << 20));
    wait_for(
        &format!("group {group} to read every record"),
        limit,
        &mut threads,
        || {
            if progress.done.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(progress.describe())
            }
        },
    );
    let finished = progress
        .finished
        .lock()
        .expect("not poisoned")
        .expect("set with done");
    let logs = join_all(
        &format!("closing the members of {group}"),
        DEADLINE,
        threads,
    );
    let delivered = logs
        .iter()
        .flat_map(|log| &log.polls)
        .map(|(_, count)| count)
        .sum();
    // Each member's last assignment before the end; all must hold partitions.
    let last_assigned: Option<Vec<Instant>> = logs
        .iter()
        .map(|log| {
            log.assigned
                .iter()
                .rev()
                .find(|(at, _)| *at <= finished)
                .filter(|(_, partitions)| *partitions > 0)
                .map(|(at, _)| *at)
        })
        .collect();
    let after_assigned = last_assigned
        .and_then(|instants| instants.into_iter().max())
        .filter(|&assigned| assigned < finished)
        .map(|assigned| {
            let records = logs
                .iter()
                .flat_map(|log| &log.polls)
                .filter(|(at, _)| *at > assigned)
                .map(|(_, count)| count)
                .sum();
            (finished - assigned, records)
        });
    ConsumeRun {
        elapsed: finished - started,
        delivered,
        after_assigned,
    }
}

fn consume_member(
    address: &str,
    group: &str,
    progress: &Progress,
) -> Result<MemberLog, ClientError> {
    let mut config = GroupConsumerConfig::new(group, &[CONSUME_TOPIC]);
    config.client_id = "bench-consume".to_string();
    config.auto_offset_reset = OffsetReset::Earliest;
    config.auto_commit_interval = None;
    let assigned = Arc::new(Mutex::new(Vec::new()));
    let mut consumer = GroupConsumer::new(address, config)?;
    consumer.set_listener(Box::new(AssignedLog(assigned.clone())));
    let mut polls = Vec::new();
    let mut read = vec![0i64; progress.end.len()];
    while !progress.done.load(Ordering::SeqCst) {
        let records = consumer.poll(CONSUME_POLL)?;
        if records.is_empty() {
            continue;
        }
        let at = Instant::now();
        for record in &records {
            let slot = read
                .get_mut(record.partition as usize)
                .expect("a partition of the consume topic");
            *slot = (*slot).max(record.record.offset + 1);
        }
        polls.push((at, records.len() as u64));
        for (shared, &mine) in progress.read.iter().zip(&read) {
            shared.fetch_max(mine, Ordering::SeqCst);
        }
        if progress.complete() && !progress.done.swap(true, Ordering::SeqCst) {
            *progress.finished.lock().expect("not poisoned") = Some(at);
        }
    }
    consumer.close()?;
    let assigned = std::mem::take(&mut *assigned.lock().expect("not poisoned"));
    Ok(MemberLog { polls, assigned })
}

// ---- reference ----------------------------------------------------------------------------

/// Median of 3 iperf3 runs of 3 s (MB/s), the server on the broker's core sending to
/// the client on the client's; `None` when iperf3 is not installed.
fn iperf3_reference(options: &Options) -> Option<f64> {
    if Command::new("iperf3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        return None;
    }
    let runs: Vec<f64> = (0..3)
        .map(|_| iperf3_run(options.client_cpu, options.broker_cpu, 3))
        .collect();
    eprintln!("iperf3 (reverse, MB/s): {runs:?}");
    Some(median(&runs))
}

fn iperf3_run(client_cpu: usize, server_cpu: usize, seconds: u32) -> f64 {
    let port = free_port_pair().to_string();
    let mut server = Command::new("iperf3")
        .args(["--server", "--one-off", "--port", &port])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the iperf3 server");
    let mut last = String::new();
    let mut rate = None;
    for _ in 0..50 {
        let client = Command::new("iperf3")
            .args(["--client", "127.0.0.1", "--port", &port, "--json"])
            .args(["--time", &seconds.to_string()])
            .args(["--affinity", &format!("{client_cpu},{server_cpu}")])
            .arg("--reverse")
            .stdin(Stdio::null())
            .output()
            .expect("run the iperf3 client");
        let stdout = String::from_utf8_lossy(&client.stdout);
        if client.status.success()
            && let Some(bits) = received_bits_per_second(&stdout)
        {
            rate = Some(bits);
            break;
        }
        // The server is not listening yet (iperf3 3.12 may then exit 0, with an "error"
        // in its JSON and no sum_received).
        last = format!("{stdout}{}", String::from_utf8_lossy(&client.stderr));
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.try_wait().ok().flatten().is_none() {
        if Instant::now() >= deadline {
            let _ = server.kill();
            let _ = server.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let bits = rate.unwrap_or_else(|| panic!("iperf3 failed: {last}"));
    bits / 8.0 / MB
}

/// `end.sum_received.bits_per_second` from iperf3's JSON, without a JSON parser: the
/// first `bits_per_second` after the last `"sum_received"` key.
fn received_bits_per_second(json: &str) -> Option<f64> {
    let section = json.rfind("\"sum_received\"")?;
    let rest = &json[section..];
    let key = rest.find("\"bits_per_second\"")? + "\"bits_per_second\"".len();
    let rest = rest[key..].trim_start().strip_prefix(':')?.trim_start();
    let number: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        .collect();
    number.parse().ok()
}

// ---- report -------------------------------------------------------------------------------

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string())
}

fn vs(value: f64, reference: Option<f64>) -> String {
    reference.map_or("n/a".to_string(), |reference| {
        format!("{:.2}", value / reference)
    })
}

fn rebalance_row(name: &str, values: &[Duration]) {
    let values: Vec<f64> = values.iter().map(|&value| ms(value)).collect();
    let (median, p90, max) = (
        median(&values),
        percentile(&values, 0.9),
        values.iter().cloned().fold(f64::MIN, f64::max),
    );
    let target = if max < TARGET_MS {
        "every trial"
    } else if p90 < TARGET_MS {
        "at p90, not max"
    } else if median < TARGET_MS {
        "at the median only"
    } else {
        "no"
    };
    println!(
        "| {name} | {} | {median:.2} | {p90:.2} | {max:.2} | {target} |",
        values.len()
    );
}

fn trial_list(values: &[Duration]) -> String {
    values
        .iter()
        .map(|&value| format!("{:.2}", ms(value)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn report(
    options: &Options,
    protocol: &[Trial],
    consumers: &[Trial],
    filled: Option<&Filled>,
    single: &[ConsumeRun],
    group: &[ConsumeRun],
    reference: Option<f64>,
) {
    println!("## Consumer groups");
    println!();
    println!(
        "- machine: {} cores ({}); broker: 1 shard pinned to CPU {}; bench threads \
         (members, consumers and their heartbeat threads) pinned to CPU {}",
        options.cores,
        cpu_model(),
        options.broker_cpu,
        options.client_cpu
    );
    println!(
        "- command: `cargo bench --bench groups{}{}`",
        if options.flags.is_empty() { "" } else { " -- " },
        options.flags.join(" ")
    );
    println!();
    if !protocol.is_empty() || !consumers.is_empty() {
        println!(
            "### Rebalance: {} members on {ASSIGN_PARTITIONS} partitions",
            MEMBERS
        );
        println!();
        println!(
            "From the start of the {MEMBERS}th member (its connection included) to the last \
             of the {MEMBERS} holding its assignment of the new generation, {} members being \
             stable; eager rebalance, assignors sticky > range > roundrobin. Target: under \
             {TARGET_MS:.0} ms.",
            MEMBERS - 1
        );
        println!();
        println!("| level | trials | median ms | p90 ms | max ms | under target |");
        println!("|---|---|---|---|---|---|");
        let held: Vec<Duration> = protocol.iter().map(|trial| trial.to_held).collect();
        if !held.is_empty() {
            rebalance_row("protocol: join, sync (held heartbeats)", &held);
        }
        let assigned: Vec<Duration> = consumers
            .iter()
            .filter_map(|trial| trial.to_assigned)
            .collect();
        let returned: Vec<Duration> = consumers.iter().map(|trial| trial.to_held).collect();
        if !assigned.is_empty() {
            rebalance_row("GroupConsumer: to the last `on_assigned`", &assigned);
        }
        if !returned.is_empty() {
            rebalance_row("GroupConsumer: to the last `poll` return", &returned);
        }
        println!();
        if !held.is_empty() {
            println!("- protocol trials (ms): {}", trial_list(&held));
        }
        if !returned.is_empty() {
            println!(
                "- GroupConsumer trials (ms, to `poll` return): {}",
                trial_list(&returned)
            );
            println!(
                "- The GroupConsumer figures are not the protocol's. Each consumer polls \
                 the empty topic with `poll({} ms)`. Its heartbeat thread learns of the \
                 rebalance at once, but the consumer acts on it only when its current fetch \
                 long poll ends (after the poll's remaining time, capped by the client's \
                 `fetch_max_wait`, 25 ms), so the join waits for the slowest member's fetch; each member then \
                 looks up its start offsets (one list-offsets request per partition) before \
                 `on_assigned`. The `poll` return row cannot be below the poll timeout: on an \
                 empty topic the new member's first `poll` returns only at its deadline.",
                options.poll_wait.as_millis()
            );
        }
        println!();
    }
    if let Some(filled) = filled {
        println!(
            "### Consume throughput: {CONSUME_PARTITIONS} partitions, {:.0} MB",
            filled.batch_bytes as f64 / MB
        );
        println!();
        println!(
            "{} records of {RECORD_BYTES} B (8 B keys) in batches of {} records ({} B); \
             each run reads the topic from the start (auto.offset.reset earliest, no \
             commits, fetch.max.bytes 1 MiB per partition) until every record has been \
             read; MB/s = batch bytes in the topic / elapsed. Medians of {} runs; 1 MB = \
             10^6 B.",
            filled.records,
            filled.records_per_batch,
            filled.record_batch_bytes,
            single.len()
        );
        println!();
        match reference {
            Some(rate) => println!(
                "Reference: iperf3 over loopback, server on CPU {} sending to the client on \
                 CPU {}: {rate:.0} MB/s (median of 3 runs of 3 s).",
                options.broker_cpu, options.client_cpu
            ),
            None => println!("iperf3 not installed: no reference."),
        }
        println!();
        println!(
            "| consumers | MB/s, from the first consumer's creation | vs single | vs iperf3 \
             | MB/s, from the last member's final assignment | vs iperf3 | records delivered \
             / in topic |"
        );
        println!("|---|---|---|---|---|---|---|");
        let bytes_per_record = filled.batch_bytes as f64 / filled.records as f64;
        let rate = |runs: &[ConsumeRun]| {
            let rates: Vec<f64> = runs
                .iter()
                .map(|run| filled.batch_bytes as f64 / MB / run.elapsed.as_secs_f64())
                .collect();
            median(&rates)
        };
        let after = |runs: &[ConsumeRun]| {
            let rates: Vec<f64> = runs
                .iter()
                .filter_map(|run| run.after_assigned)
                .map(|(elapsed, records)| {
                    records as f64 * bytes_per_record / MB / elapsed.as_secs_f64()
                })
                .collect();
            (!rates.is_empty()).then(|| median(&rates))
        };
        let single_rate = rate(single);
        for (name, runs) in [
            ("1".to_string(), single),
            (format!("{GROUP_MEMBERS} (one group)"), group),
        ] {
            let from_start = rate(runs);
            let from_assigned = after(runs);
            let delivered = median(
                &runs
                    .iter()
                    .map(|run| run.delivered as f64)
                    .collect::<Vec<_>>(),
            );
            println!(
                "| {name} | {from_start:.0} | {:.2} | {} | {} | {} | {:.3} |",
                from_start / single_rate,
                vs(from_start, reference),
                from_assigned.map_or("n/a".to_string(), |rate| format!("{rate:.0}")),
                from_assigned.map_or("n/a".to_string(), |rate| vs(rate, reference)),
                delivered / filled.records as f64
            );
        }
        println!();
        println!(
            "- The second rate counts only the records returned after the last member of \
             the run received its final assignment (`on_assigned`), at the topic's average \
             batch bytes per record; it leaves out joining, the rebalances while the \
             members join one by one, and the first offset look-ups. n/a: the topic was \
             read before that moment."
        );
        println!(
            "- Records delivered above 1: partitions moved while members joined, and with \
             no commits their new owner read them again from the start."
        );
        println!();
    } else if let Some(rate) = reference {
        println!("Reference: iperf3 over loopback: {rate:.0} MB/s.");
    } else {
        println!("iperf3 not installed: no reference.");
    }
}
