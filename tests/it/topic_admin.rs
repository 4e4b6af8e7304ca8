//! Topic creation within the broker's budgets, rollback of a creation that fails part way,
//! and the start-up quarantine of directories no topic claims.

use std::os::unix::process::CommandExt;
use std::path::Path;

use spate::protocol::{Acks, ErrorCode};

use crate::server::{Broker, free_ports, spate};
use crate::support::batch;

/// Names of the entries under `<data dir>/topics`, sorted.
fn partition_dirs(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir.join("topics"))
        .map(|entries| {
            entries
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A broker that may open at most `descriptors` files.
fn start_limited(data_dir: &Path, descriptors: u64) -> Broker {
    Broker::start_with(data_dir, 1, free_ports(2), &[], move |command| {
        // SAFETY: setrlimit is async-signal-safe, as pre_exec requires.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: descriptors,
                    rlim_max: descriptors,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
}

#[test]
fn creation_stays_within_the_partition_limit() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let broker = Broker::start_in(&data_dir, 2, &["--partitions-max-per-shard", "8"]);
    let mut client = broker.connect();
    let status = client.create_topic("big", 20, &[]).unwrap().status;
    assert_eq!(status.code, ErrorCode::ResourceLimit, "{status}");
    assert!(
        status.message.contains("partitions-max-per-shard"),
        "{status}"
    );
    assert!(client.create_topic("fits", 16, &[]).unwrap().status.is_ok());
    let status = client.create_topic("one-more", 1, &[]).unwrap().status;
    assert_eq!(
        status.code,
        ErrorCode::ResourceLimit,
        "every shard is full: {status}"
    );
    assert!(
        partition_dirs(&data_dir)
            .iter()
            .all(|name| name.starts_with("fits-"))
    );
    client.delete_topic("fits").unwrap();
    assert!(
        client
            .create_topic("one-more", 1, &[])
            .unwrap()
            .status
            .is_ok()
    );
}

#[test]
fn more_partitions_than_file_descriptors_are_written_restarted_and_read() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut broker = start_limited(&data_dir, 256);
    let mut client = broker.connect();
    // 400 partitions under a limit of 256 descriptors: a shard keeps at most its cap of
    // segment files open, least recently used closed first.
    let status = client.create_topic("many", 400, &[]).unwrap().status;
    assert!(status.is_ok(), "{status}");
    for round in 0..2 {
        for partition in 0..400 {
            let records = batch(&format!("m{partition}-{round}"), 2, 10, 0);
            let answer = client
                .produce("many", partition, records, Acks::All)
                .unwrap()
                .unwrap();
            assert!(answer.status.is_ok(), "{}", answer.status);
        }
    }
    let shard = client.describe_broker().unwrap().shards.remove(0);
    assert!(
        shard.segment_files_open <= shard.segment_files_max && shard.segment_files_max < 256,
        "{shard:?}"
    );
    drop(client);
    broker.stop();

    let broker = start_limited(&data_dir, 256);
    let mut client = broker.connect();
    for partition in 0..400 {
        let values = crate::server::read_partition(&mut client, "many", partition, 0);
        assert_eq!(values.len(), 4, "partition {partition}");
        assert!(values[2].1.starts_with(&format!("m{partition}-1")));
    }
}

#[test]
fn a_creation_that_fails_on_one_shard_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let broker = Broker::start_in(&data_dir, 2, &[]);
    let mut client = broker.connect();
    // A file where partition t-3's directory must go: that partition cannot open.
    std::fs::create_dir_all(data_dir.join("topics")).unwrap();
    std::fs::write(data_dir.join("topics/t-3"), b"in the way").unwrap();
    let status = client.create_topic("t", 6, &[]).unwrap().status;
    assert_eq!(status.code, ErrorCode::StorageError, "{status}");
    assert!(status.message.contains("t-3"), "{status}");
    assert_eq!(
        partition_dirs(&data_dir),
        ["t-3"],
        "the other partitions are rolled back"
    );
    assert!(
        client.metadata(&[]).unwrap().topics.is_empty(),
        "t was not created"
    );
    // Every shard still serves, and t can be created once the way is clear.
    std::fs::remove_file(data_dir.join("topics/t-3")).unwrap();
    assert!(client.create_topic("t", 6, &[]).unwrap().status.is_ok());
    for partition in 0..6 {
        let answer = client
            .produce("t", partition, batch("x", 1, 1, 0), Acks::All)
            .unwrap()
            .unwrap();
        assert!(answer.status.is_ok(), "{}", answer.status);
    }
}

#[test]
fn start_up_sets_aside_directories_no_topic_claims_but_not_without_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut broker = Broker::start_in(&data_dir, 1, &[]);
    broker.connect().create_topic("real", 1, &[]).unwrap();
    broker.stop();
    // As a crash in the middle of a creation or deletion would leave them.
    std::fs::create_dir_all(data_dir.join("topics/ghost-0")).unwrap();
    std::fs::write(
        data_dir.join("topics/ghost-0/00000000000000000000.log"),
        b"",
    )
    .unwrap();
    std::fs::create_dir_all(data_dir.join("topics/real-1")).unwrap();
    // A start that fails (its port is taken) changes nothing on disk.
    let port = free_ports(2);
    let taken = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let output = spate(&[
        "serve",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--shards",
        "1",
        "--kafka-listen",
        "none",
    ]);
    assert!(!output.status.success());
    drop(taken);
    assert_eq!(partition_dirs(&data_dir), ["ghost-0", "real-0", "real-1"]);
    let mut broker = Broker::start_in(&data_dir, 1, &[]);
    assert_eq!(partition_dirs(&data_dir), ["real-0"]);
    // Set aside, not deleted: a hand-restored older metadata.bin loses nothing.
    let quarantined: Vec<_> = std::fs::read_dir(data_dir.join("quarantine"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(quarantined.len(), 1, "one quarantine folder per start");
    let mut moved: Vec<String> = std::fs::read_dir(&quarantined[0])
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    moved.sort();
    assert_eq!(moved, ["ghost-0", "real-1"]);
    assert!(
        quarantined[0]
            .join("ghost-0/00000000000000000000.log")
            .exists()
    );
    broker.stop();
    // A clean start sets nothing more aside.
    let mut broker = Broker::start_in(&data_dir, 1, &[]);
    assert_eq!(
        std::fs::read_dir(data_dir.join("quarantine"))
            .unwrap()
            .count(),
        1
    );
    broker.stop();

    // With the metadata file gone every partition would look stray: refuse to start.
    std::fs::remove_file(data_dir.join("metadata.bin")).unwrap();
    let output = spate(&[
        "serve",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{}", free_ports(2)),
        "--shards",
        "1",
        "--kafka-listen",
        "none",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no ") && stderr.contains("metadata.bin"),
        "{stderr}"
    );
    assert_eq!(partition_dirs(&data_dir), ["real-0"], "nothing was removed");
}

/// Topics created while the broker stops: every creation answered OK survives the restart
/// with all its partitions usable, none answered with an error appears, and nothing is
/// left for start-up to set aside.
#[test]
fn a_stop_during_topic_creation_keeps_every_answered_topic_whole() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let port = free_ports(3);
    let mut broker = Broker::start_at(&data_dir, 2, port, &[]);
    let created = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(Mutex::new(Vec::new()));
    let started = Arc::new(AtomicBool::new(false));
    // One creator on each shard's port: shard 1's creations are forwarded to shard 0.
    let creators: Vec<_> = (0..2)
        .map(|shard| {
            let address = broker.shard_address(shard);
            let (created, refused, started) = (created.clone(), refused.clone(), started.clone());
            std::thread::spawn(move || {
                let Ok(mut client) = spate::client::Connection::connect(&address, "test") else {
                    return;
                };
                for index in 0.. {
                    let name = format!("s{shard}t{index}");
                    match client.create_topic(&name, 4, &[]) {
                        Ok(answer) if answer.status.is_ok() => created.lock().unwrap().push(name),
                        Ok(_) => refused.lock().unwrap().push(name),
                        Err(_) => return,
                    }
                    started.store(true, Ordering::SeqCst);
                }
            })
        })
        .collect();
    while !started.load(Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    broker.stop();
    for creator in creators {
        creator.join().unwrap();
    }
    let created = created.lock().unwrap().clone();
    let refused = refused.lock().unwrap().clone();
    assert!(!created.is_empty());

    let broker = Broker::start_at(&data_dir, 2, port, &[]);
    assert!(
        !data_dir.join("quarantine").exists(),
        "no partition directory was left unclaimed"
    );
    let mut client = broker.connect();
    let listed: Vec<String> = client
        .metadata(&[])
        .unwrap()
        .topics
        .into_iter()
        .map(|topic| topic.name)
        .collect();
    for name in &created {
        assert!(listed.contains(name), "{name} was acknowledged");
        for partition in 0..4 {
            let answer = client
                .produce(name, partition, batch("x", 1, 1, 0), Acks::All)
                .unwrap()
                .unwrap();
            assert!(
                answer.status.is_ok(),
                "{name}-{partition}: {}",
                answer.status
            );
        }
    }
    for name in &refused {
        assert!(!listed.contains(name), "{name} was refused but exists");
    }
}

/// 10 000 partitions on one shard (the default `--partitions-max-per-shard`): created,
/// written, restarted and read back, whatever the file-descriptor limit.
#[test]
fn ten_thousand_partitions_on_one_shard_are_created_written_restarted_and_read() {
    const PARTITIONS: u32 = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut broker = Broker::start_in(&data, 1, &[]);
    let mut client = broker.connect();
    let created = client
        .create_topic("wide", PARTITIONS, &[("flush.ms".into(), "100".into())])
        .unwrap();
    assert!(created.status.is_ok(), "{}", created.status);
    for partition in 0..PARTITIONS {
        let answer = client
            .produce(
                "wide",
                partition,
                batch(&format!("w{partition}"), 2, 20, 1_000),
                Acks::All,
            )
            .unwrap()
            .unwrap();
        assert!(answer.status.is_ok(), "{}", answer.status);
    }
    broker.stop();
    let broker = Broker::start_in(&data, 1, &[]);
    let mut client = broker.connect();
    let described = client.describe_broker().unwrap();
    assert_eq!(described.shards[0].partitions, PARTITIONS);
    for partition in 0..PARTITIONS {
        let values = crate::server::read_partition(&mut client, "wide", partition, 0);
        assert_eq!(values.len(), 2, "partition {partition}");
        assert!(values[0].1.starts_with(&format!("w{partition}-0")));
    }
}

/// Partitions added to a topic: opened on their owner shards, served at once, kept across
/// a restart, with the old partitions' records where they were; a count that does not
/// grow, an unknown topic and a count past the shard limit are refused and change nothing;
/// an addition that fails on one shard is rolled back everywhere.
#[test]
fn partitions_are_added_to_a_topic_and_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let flags = ["--partitions-max-per-shard", "5"];
    let mut broker = Broker::start_in(&data_dir, 2, &flags);
    let mut client = broker.connect();
    assert!(client.create_topic("grow", 2, &[]).unwrap().status.is_ok());
    let produce = |client: &mut spate::client::Connection, partition: u32, tag: &str| {
        let answer = client
            .produce("grow", partition, batch(tag, 2, 10, 0), Acks::All)
            .unwrap()
            .unwrap();
        assert!(answer.status.is_ok(), "{}", answer.status);
    };
    produce(&mut client, 0, "old0");
    produce(&mut client, 1, "old1");

    let status = client.create_partitions("grow", 6).unwrap().status;
    assert!(status.is_ok(), "{status}");
    let metadata = client.metadata(&["grow"]).unwrap();
    let owners: Vec<u16> = metadata.topics[0]
        .partitions
        .iter()
        .map(|partition| partition.shard_id)
        .collect();
    assert_eq!(owners.len(), 6);
    assert!(owners.contains(&0) && owners.contains(&1), "{owners:?}");
    for partition in 2..6 {
        produce(&mut client, partition, &format!("new{partition}"));
    }

    for (count, code) in [
        (6, ErrorCode::InvalidPartitions),
        (3, ErrorCode::InvalidPartitions),
        // 11 partitions would give a shard 6: over the limit of 5.
        (11, ErrorCode::ResourceLimit),
    ] {
        let status = client.create_partitions("grow", count).unwrap().status;
        assert_eq!(status.code, code, "{count}: {status}");
    }
    let status = client.create_partitions("absent", 3).unwrap().status;
    assert_eq!(status.code, ErrorCode::UnknownTopicOrPartition, "{status}");

    // A partition directory that cannot be made fails the addition on its shard; the
    // partitions made on the other shard are removed again.
    std::fs::write(data_dir.join("topics/grow-7"), b"in the way").unwrap();
    let status = client.create_partitions("grow", 8).unwrap().status;
    assert_eq!(status.code, ErrorCode::StorageError, "{status}");
    assert!(!data_dir.join("topics/grow-6").exists());
    std::fs::remove_file(data_dir.join("topics/grow-7")).unwrap();
    let described = client.describe_topics(&["grow"]).unwrap().remove(0);
    assert_eq!(described.partitions, 6);

    drop(client);
    broker.stop();
    let broker = Broker::start_in(&data_dir, 2, &flags);
    let mut client = broker.connect();
    assert_eq!(
        client.metadata(&["grow"]).unwrap().topics[0]
            .partitions
            .len(),
        6
    );
    for partition in 0..6 {
        let values = crate::server::read_partition(&mut client, "grow", partition, 0);
        let tag = if partition < 2 { "old" } else { "new" };
        assert_eq!(values.len(), 2, "partition {partition}");
        assert!(
            values[0].1.starts_with(&format!("{tag}{partition}")),
            "{values:?}"
        );
    }
    // Still room for one more on each shard.
    assert!(client.create_partitions("grow", 8).unwrap().status.is_ok());
}

/// A broker on its own keeps one copy of each partition: a replication factor over 1 is
/// refused with a clear reason and creates nothing; and `--cluster` flags that do not
/// describe this node fail `spate serve` with one clear line.
#[test]
fn replication_needs_a_cluster_and_cluster_flags_are_checked() {
    let broker = Broker::start(1);
    let mut client = broker.connect();
    let refused = client.create_replicated_topic("copies", 1, 2, &[]).unwrap();
    assert_eq!(refused.status.code, ErrorCode::InvalidReplicationFactor);
    assert!(
        refused.status.message.contains("--cluster"),
        "{}",
        refused.status
    );
    assert!(
        client.describe_topics(&["copies"]).unwrap()[0].status.code
            == ErrorCode::UnknownTopicOrPartition
    );

    for (args, expected) in [
        (
            &["serve", "--node-id", "4", "--cluster", "1@127.0.0.1:7070"][..],
            "--node-id 4 is not in --cluster",
        ),
        (
            &["serve", "--node-id", "1", "--cluster", "1-127.0.0.1:7070"][..],
            "ID@HOST:PORT",
        ),
        (
            &[
                "serve",
                "--node-id",
                "1",
                "--cluster",
                "1@127.0.0.1:1,1@127.0.0.2:2",
            ][..],
            "twice",
        ),
        (&["serve", "--cluster", "1@127.0.0.1:7070"][..], "--node-id"),
    ] {
        let output = spate(args);
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
