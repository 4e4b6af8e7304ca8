//! The crash soak: cycles of start, load, `kill -9` at a random moment, restart, check.
//!
//! Each cycle starts the broker on the same data directory, runs several acks=all
//! producers over many partitions (64 KiB segments, so segments roll all the time), a
//! producer to a topic whose retention deletes segments every 50 ms, a thread creating and
//! deleting topics, and a group committing what was acknowledged (its offsets log compacted
//! past 4 KiB, so compactions run all the time), then kills the broker with SIGKILL after a
//! random 0.2 to 1.5 s. After the restart: every acknowledged record is present, in order,
//! at its acknowledged offset; every committed group offset is at least what was last
//! acknowledged for it; a topic whose creation (deletion) was acknowledged last exists (does
//! not).
//!
//! `cargo test` runs 5 cycles. The full run (docs/OPERATIONS.md has its result):
//! `SPATE_SOAK_CYCLES=100 cargo test --release --test it crash_soak -- --nocapture`
//! (`SPATE_SOAK_SEED` replays a run's random choices, as it prints them).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spate::client::Connection;
use spate::protocol::{
    Acks, OffsetCommitPartition, OffsetCommitRequest, OffsetCommitTopic, TopicPartitions,
};

use crate::server::{Broker, read_partition};
use crate::support::{Random, batch, env_number};

const PARTITIONS: u32 = 16;
const PRODUCERS: usize = 3;
const GROUP: &str = "soakers";

/// What the broker acknowledged, across every cycle.
#[derive(Default)]
struct Acknowledged {
    /// partition -> offset -> value.
    records: BTreeMap<u32, BTreeMap<i64, String>>,
    /// partition -> the last committed offset acknowledged.
    committed: HashMap<u32, i64>,
    /// topic -> whether its last operation, acknowledged, created it (else deleted it);
    /// `None` while an operation's outcome is unknown (sent, not answered before the kill).
    topics: BTreeMap<String, Option<bool>>,
}

fn broker_args() -> Vec<&'static str> {
    vec![
        "--retention-check-interval-ms",
        "50",
        "--offsets-compact-bytes",
        "4096",
        "--memory-max",
        "512MiB",
    ]
}

fn start(data_dir: &std::path::Path) -> Broker {
    Broker::start_in(data_dir, 2, &broker_args())
}

#[test]
fn acknowledged_records_and_committed_offsets_survive_kill_9_at_random_moments() {
    let cycles: u32 = env_number("SPATE_SOAK_CYCLES", 5);
    let mut random = Random::seeded_from("SPATE_SOAK_SEED");
    eprintln!("crash soak: {cycles} cycles, SPATE_SOAK_SEED={}", random.0);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let acknowledged = Arc::new(Mutex::new(Acknowledged::default()));
    {
        let broker = start(&data_dir);
        let mut client = broker.connect();
        let soak = [("segment.bytes".to_string(), (64 << 10).to_string())];
        assert!(
            client
                .create_topic("soak", PARTITIONS, &soak)
                .unwrap()
                .status
                .is_ok()
        );
        let churn = [
            ("segment.bytes".to_string(), (64 << 10).to_string()),
            ("retention.bytes".to_string(), (128 << 10).to_string()),
        ];
        assert!(
            client
                .create_topic("churn", 4, &churn)
                .unwrap()
                .status
                .is_ok()
        );
    }
    let started = Instant::now();
    let mut totals = (0usize, 0usize);
    for cycle in 0..cycles {
        let broker = start(&data_dir);
        check(&broker, &acknowledged.lock().unwrap(), cycle);
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for producer in 0..PRODUCERS {
            let seed = random.next() | 1;
            workers.push(spawn_producer(
                &broker,
                cycle,
                producer,
                seed,
                &acknowledged,
                &stop,
            ));
        }
        workers.push(spawn_churn(&broker, &stop));
        workers.push(spawn_admin(&broker, cycle, &acknowledged, &stop));
        workers.push(spawn_committer(&broker, &acknowledged, &stop));
        let run_for = Duration::from_millis(200 + random.below(1300));
        std::thread::sleep(run_for);
        drop(broker); // SIGKILL, mid-load
        stop.store(true, Ordering::SeqCst);
        for worker in workers {
            worker.join().unwrap();
        }
        let acknowledged = acknowledged.lock().unwrap();
        let records: usize = acknowledged.records.values().map(BTreeMap::len).sum();
        totals = (records, acknowledged.topics.len());
        eprintln!(
            "cycle {cycle}: killed after {} ms; {records} records, {} commits' partitions and {} topics acknowledged so far",
            run_for.as_millis(),
            acknowledged.committed.len(),
            acknowledged.topics.len()
        );
    }
    // The last kill's aftermath.
    let broker = start(&data_dir);
    check(&broker, &acknowledged.lock().unwrap(), cycles);
    eprintln!(
        "crash soak passed: {cycles} cycles, {} records acknowledged and {} topics created or deleted, all found as acknowledged, in {:.0} s",
        totals.0,
        totals.1,
        started.elapsed().as_secs_f64()
    );
    assert!(totals.0 > 0, "the producers acknowledged nothing");
}

/// Everything acknowledged is where it was acknowledged.
fn check(broker: &Broker, acknowledged: &Acknowledged, cycle: u32) {
    let mut client = broker.connect();
    for (partition, records) in &acknowledged.records {
        let found: BTreeMap<i64, String> = read_partition(&mut client, "soak", *partition, 0)
            .into_iter()
            .collect();
        for (offset, value) in records {
            assert_eq!(
                found.get(offset),
                Some(value),
                "before cycle {cycle}: acknowledged soak-{partition} offset {offset} ({value}) is missing or different"
            );
        }
        // In order, with no gaps: offsets count up from 0 one by one.
        for (index, offset) in found.keys().enumerate() {
            assert_eq!(
                *offset, index as i64,
                "soak-{partition} has a gap or a jump"
            );
        }
    }
    let committed = client
        .fetch_offsets(
            GROUP,
            vec![TopicPartitions {
                name: "soak".to_string(),
                partitions: (0..PARTITIONS).collect(),
            }],
        )
        .unwrap();
    let answered: Vec<u32> = committed
        .iter()
        .flat_map(|topic| &topic.partitions)
        .map(|partition| partition.partition)
        .collect();
    for partition in acknowledged.committed.keys() {
        assert!(
            answered.contains(partition),
            "before cycle {cycle}: no committed offset answered for soak-{partition}"
        );
    }
    for partition in committed.iter().flat_map(|topic| &topic.partitions) {
        if let Some(expected) = acknowledged.committed.get(&partition.partition) {
            assert!(
                partition.offset >= *expected,
                "before cycle {cycle}: soak-{} committed offset {} is behind the acknowledged {expected}",
                partition.partition,
                partition.offset
            );
        }
    }
    let described = client.describe_topics(&[]).unwrap();
    for (topic, exists) in &acknowledged.topics {
        let Some(exists) = exists else { continue };
        let found = described
            .iter()
            .any(|described| &described.name == topic && described.status.is_ok());
        assert_eq!(
            found,
            *exists,
            "before cycle {cycle}: topic {topic} should {}exist",
            if *exists { "" } else { "not " }
        );
    }
}

/// Produces batches of 5 records to random partitions until the broker dies.
fn spawn_producer(
    broker: &Broker,
    cycle: u32,
    producer: usize,
    seed: u64,
    acknowledged: &Arc<Mutex<Acknowledged>>,
    stop: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let mut client = broker.connect();
    let acknowledged = acknowledged.clone();
    let stop = stop.clone();
    std::thread::spawn(move || {
        let mut random = Random(seed);
        for sequence in 0.. {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let partition = random.below(u64::from(PARTITIONS)) as u32;
            let tag = format!("c{cycle}p{producer}s{sequence}");
            let Ok(Some(answer)) =
                client.produce("soak", partition, batch(&tag, 5, 0, now_ms()), Acks::All)
            else {
                return;
            };
            if !answer.status.is_ok() {
                continue;
            }
            let mut acknowledged = acknowledged.lock().unwrap();
            let records = acknowledged.records.entry(partition).or_default();
            for index in 0..5 {
                records.insert(answer.base_offset + index, format!("{tag}-{index}"));
            }
        }
    })
}

/// Record timestamps: now (older ones would be past the 7-day retention).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Keeps retention busy: a topic whose segments are deleted as fast as they fill.
fn spawn_churn(broker: &Broker, stop: &Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let mut client = broker.connect();
    let stop = stop.clone();
    std::thread::spawn(move || {
        for sequence in 0u64.. {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let records = batch(&format!("churn{sequence}"), 20, 200, now_ms());
            if client
                .produce("churn", (sequence % 4) as u32, records, Acks::Leader)
                .is_err()
            {
                return;
            }
        }
    })
}

/// Creates and deletes topics, noting what was acknowledged.
fn spawn_admin(
    broker: &Broker,
    cycle: u32,
    acknowledged: &Arc<Mutex<Acknowledged>>,
    stop: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let mut client = broker.connect();
    let acknowledged = acknowledged.clone();
    let stop = stop.clone();
    std::thread::spawn(move || {
        for sequence in 0.. {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let name = format!("tmp-{cycle}-{sequence}");
            let Ok(created) = client.create_topic(&name, 2, &[]) else {
                return;
            };
            if created.status.is_ok() {
                acknowledged
                    .lock()
                    .unwrap()
                    .topics
                    .insert(name.clone(), Some(true));
            }
            if sequence % 2 == 0 {
                continue; // every other topic stays
            }
            // Until the deletion is answered, the topic may or may not be there.
            acknowledged
                .lock()
                .unwrap()
                .topics
                .insert(name.clone(), None);
            let Ok(deleted) = client.delete_topic(&name) else {
                return;
            };
            if deleted.status.is_ok() {
                acknowledged
                    .lock()
                    .unwrap()
                    .topics
                    .insert(name, Some(false));
            }
        }
    })
}

/// Commits, for every partition, the end of what the producers had acknowledged.
fn spawn_committer(
    broker: &Broker,
    acknowledged: &Arc<Mutex<Acknowledged>>,
    stop: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let mut client: Connection = broker.connect();
    let acknowledged = acknowledged.clone();
    let stop = stop.clone();
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let ends: Vec<(u32, i64)> = acknowledged
                .lock()
                .unwrap()
                .records
                .iter()
                .filter_map(|(partition, records)| {
                    records
                        .keys()
                        .next_back()
                        .map(|last| (*partition, last + 1))
                })
                .collect();
            let request = OffsetCommitRequest {
                group_id: GROUP.to_string(),
                generation: -1,
                member_id: String::new(),
                topics: vec![OffsetCommitTopic {
                    name: "soak".to_string(),
                    partitions: ends
                        .iter()
                        .map(|(partition, offset)| OffsetCommitPartition {
                            partition: *partition,
                            offset: *offset,
                            metadata: String::new(),
                        })
                        .collect(),
                }],
            };
            let Ok(answers) = client.commit_offsets(request) else {
                return;
            };
            let mut acknowledged = acknowledged.lock().unwrap();
            for answer in answers.iter().flat_map(|topic| &topic.partitions) {
                if answer.status.is_ok()
                    && let Some((_, offset)) = ends.iter().find(|(p, _)| *p == answer.partition)
                {
                    acknowledged.committed.insert(answer.partition, *offset);
                }
            }
            drop(acknowledged);
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}
