//! Replicated partitions across three `spate serve` processes on loopback (127.0.0.1,
//! .2 and .3, one port for all): leaders fail over when killed (-9) or paused (SIGSTOP),
//! and a checker reads every partition back and finds each acknowledged record at the
//! offset it was acknowledged with, in each producer's order.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use spate::client::{Connection, Producer, ProducerConfig, ShardRouter};

use crate::support::wait_for;
use spate::group::offsets::{OFFSETS_TOPIC, offsets_partition};
use spate::protocol::{Acks, ClusterDescription, OFFSET_EARLIEST, OFFSET_LATEST};

const SHARDS: usize = 2;

/// Three nodes, each its own process, directory and loopback address.
pub struct Nodes {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub port: u16,
    children: BTreeMap<u64, Child>,
    /// routes[(from, to)]: where node `from` reaches node `to` (its --cluster entry).
    routes: BTreeMap<(u64, u64), String>,
    /// Each node's metrics address at its last start.
    metrics: BTreeMap<u64, String>,
}

impl Nodes {
    /// Starts nodes 1 to 3 and waits until the controller has registered all three.
    pub fn start() -> Nodes {
        Nodes::start_routed(|_, _, address| address)
    }

    /// As `start`, with node `from` reaching node `to` at `route(from, to, to's address)`
    /// (a fault proxy, say) for the cluster's messages and replication.
    pub fn start_routed(mut route: impl FnMut(u64, u64, String) -> String) -> Nodes {
        // A port found free may be taken by another test before a node binds it: then the
        // node exits at once, and the cluster starts again on another port.
        for _ in 0..5 {
            if let Some(nodes) = Nodes::try_start(&mut route) {
                return nodes;
            }
        }
        panic!("the three nodes never got free ports");
    }

    fn try_start(route: &mut impl FnMut(u64, u64, String) -> String) -> Option<Nodes> {
        let mut nodes = Nodes::unstarted(route);
        for id in 1..=3 {
            nodes.spawn(id);
        }
        let formed = wait_for(Duration::from_secs(30), || {
            if nodes.port_taken() {
                return Some(false);
            }
            let cluster = nodes.describe(1, &[]).ok()?;
            (cluster.controller > 0
                && cluster.nodes.len() == 3
                && cluster.nodes.iter().all(|node| !node.fenced))
            .then_some(true)
        });
        match formed {
            Some(true) => Some(nodes),
            Some(false) => None,
            None => panic!("the three nodes form a cluster"),
        }
    }

    /// Three nodes' directory, ports and routes, none of them started (`spawn` starts one).
    pub fn unstarted(route: &mut impl FnMut(u64, u64, String) -> String) -> Nodes {
        let dir = tempfile::tempdir().unwrap();
        // The native port, a port per shard, then the Kafka port and one per shard, free
        // on every node's address.
        let port = free_on_every_node(2 * (SHARDS + 1));
        let mut routes = BTreeMap::new();
        for from in 1..=3 {
            for to in 1..=3 {
                let address = format!("127.0.0.{to}:{port}");
                let routed = if from == to {
                    address
                } else {
                    route(from, to, address)
                };
                routes.insert((from, to), routed);
            }
        }
        Nodes {
            root: dir.path().to_path_buf(),
            _dir: dir,
            port,
            children: BTreeMap::new(),
            routes,
            metrics: BTreeMap::new(),
        }
    }

    /// Node `id`'s metrics address (HOST:PORT) at its last start.
    pub fn metrics(&self, id: u64) -> &str {
        &self.metrics[&id]
    }

    /// Whether a node exited because its port was taken meanwhile.
    fn port_taken(&mut self) -> bool {
        let exited: Vec<u64> = self
            .children
            .iter_mut()
            .filter_map(|(id, child)| child.try_wait().ok().flatten().map(|_| *id))
            .collect();
        exited
            .iter()
            .any(|id| self.log(*id).contains("Address already in use"))
    }

    pub fn address(&self, id: u64) -> String {
        format!("127.0.0.{id}:{}", self.port)
    }

    /// (Re)starts node `id` on its directory.
    pub fn spawn(&mut self, id: u64) {
        let voters: Vec<String> = (1..=3)
            .map(|node| format!("{node}@{}", self.routes[&(id, node)]))
            .collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join(format!("node{id}.log")))
            .unwrap();
        let metrics = crate::metrics::metrics_address_on(&format!("127.0.0.{id}"));
        let child = Command::new(env!("CARGO_BIN_EXE_spate"))
            .args([
                "serve",
                "--node-id",
                &id.to_string(),
                "--cluster",
                &voters.join(","),
                "--shards",
                &SHARDS.to_string(),
                "--kafka-listen",
                &format!("127.0.0.{id}:{}", self.port + SHARDS as u16 + 1),
                "--metrics-listen",
                &metrics,
                "--replica-lag-time-max-ms",
                "2000",
                "--memory-max",
                "256MiB",
                "--retention-check-interval-ms",
                "300",
            ])
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .env("RUST_LOG", "info,openraft=error")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.insert(id, child);
        self.metrics.insert(id, metrics);
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.root.join(format!("node{id}"))
    }

    /// kill -9.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.children.remove(&id) {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn signal(&self, id: u64, signal: i32) {
        let pid = self.children[&id].id() as i32;
        // SAFETY: sends a signal to a child process this test started.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    pub fn connect(&self, id: u64) -> Result<Connection, spate::client::ClientError> {
        Connection::connect(&self.address(id), "replication-test")
    }

    pub fn describe(
        &self,
        id: u64,
        topics: &[&str],
    ) -> Result<ClusterDescription, spate::client::ClientError> {
        self.connect(id)?.describe_cluster(topics)
    }

    /// What node `id` says of `topic`'s partitions: (leader, epoch, ISR) each.
    pub fn partitions(&self, id: u64, topic: &str) -> Option<Vec<(i64, u32, Vec<u64>)>> {
        let cluster = self.describe(id, &[topic]).ok()?;
        let topic = cluster.topics.into_iter().next()?;
        topic.status.is_ok().then(|| {
            topic
                .partitions
                .into_iter()
                .map(|partition| (partition.leader, partition.leader_epoch, partition.isr))
                .collect()
        })
    }

    /// Creates `topic` through node `via` (min.insync.replicas=2) and waits until the
    /// three nodes agree on its partitions, each led with its whole ISR: (leader, epoch,
    /// ISR) per partition.
    pub fn create_topic(
        &self,
        via: u64,
        topic: &str,
        partitions: u32,
        replication_factor: u16,
    ) -> Vec<(i64, u32, Vec<u64>)> {
        let created = self
            .connect(via)
            .unwrap()
            .create_replicated_topic(
                topic,
                partitions,
                replication_factor,
                &[("min.insync.replicas".into(), "2".into())],
            )
            .unwrap();
        assert!(created.status.is_ok(), "{}", created.status);
        wait_for(Duration::from_secs(10), || {
            let seen: Vec<_> = (1..=3)
                .map(|id| self.partitions(id, topic))
                .collect::<Option<_>>()?;
            let agreed = seen[0].clone();
            (seen.iter().all(|view| *view == agreed)
                && agreed.iter().all(|(leader, _, isr)| {
                    *leader > 0 && isr.len() == usize::from(replication_factor)
                }))
            .then_some(agreed)
        })
        .expect("every node knows the topic")
    }

    /// Asks node 1 for `group`'s committed offsets (none yet), which has the cluster create
    /// `__consumer_offsets`, and waits until node 1 sees each of its partitions led with
    /// its whole ISR: (leader, epoch, ISR) per partition.
    pub fn offsets_topic(&self, group: &str) -> Vec<(i64, u32, Vec<u64>)> {
        let none = self
            .connect(1)
            .unwrap()
            .fetch_offsets(group, Vec::new())
            .unwrap();
        assert!(none.is_empty(), "{none:?}");
        wait_for(Duration::from_secs(10), || {
            let offsets = self.partitions(1, OFFSETS_TOPIC)?;
            offsets
                .iter()
                .all(|(leader, _, isr)| *leader > 0 && isr.len() == 3)
                .then_some(offsets)
        })
        .expect("the offsets topic is led with its whole ISR")
    }

    /// The node's log file, for when a test needs explaining.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.root.join(format!("node{id}.log"))).unwrap_or_default()
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for id in 1..=3 {
                let log = self.log(id);
                let tail: Vec<&str> = log
                    .lines()
                    .filter(|line| !line.contains(" INFO "))
                    .rev()
                    .take(20)
                    .collect();
                eprintln!("node {id}'s last warnings:");
                for line in tail.into_iter().rev() {
                    eprintln!("  {line}");
                }
            }
        }
        for (_, mut child) in std::mem::take(&mut self.children) {
            // SAFETY: resumes a child this test may have paused, so the kill lands.
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A port free on 127.0.0.1, .2 and .3, with `count` free ports after it.
fn free_on_every_node(count: usize) -> u16 {
    for _ in 0..100 {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        if usize::from(port) + count >= usize::from(u16::MAX) {
            continue;
        }
        drop(probe);
        let free = (1..=3).all(|node| {
            (0..=count as u16).all(|offset| {
                std::net::TcpListener::bind((format!("127.0.0.{node}").as_str(), port + offset))
                    .is_ok()
            })
        });
        if free {
            return port;
        }
    }
    panic!("no free ports on 127.0.0.1-3");
}

/// One acknowledged record: who sent it, its number in that producer's sequence, and
/// where the broker said it landed.
#[derive(Debug, Clone)]
struct Acked {
    producer: usize,
    sequence: u64,
    partition: u32,
    offset: i64,
}

/// Producers that send numbered records with acks=all until told to stop, keeping what
/// was acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<Acked>>>,
}

impl Load {
    fn start(nodes: &Nodes, topic: &str, producers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..producers)
            .map(|producer| {
                let (stop, topic) = (stop.clone(), topic.to_string());
                // Each producer bootstraps from a different node.
                let address = nodes.address(1 + producer as u64 % 3);
                std::thread::spawn(move || {
                    let config = ProducerConfig {
                        batch_bytes: 512,
                        linger: Duration::from_millis(1),
                        acks: Acks::All,
                        delivery_timeout: Duration::from_secs(30),
                    };
                    // Its bootstrap node may be down for a moment (a test killing nodes).
                    let mut producer_client = wait_for(Duration::from_secs(20), || {
                        let connection = Connection::connect(&address, "load").ok()?;
                        Producer::new(connection, &topic, config.clone()).ok()
                    })
                    .expect("the producer starts");
                    let mut acked = Vec::new();
                    let mut sequence = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let value = format!("p{producer}-{sequence}");
                        let key = format!("k{}", sequence % 7);
                        let sent =
                            producer_client.send(None, Some(key.as_bytes()), value.as_bytes());
                        sequence += 1;
                        match sent {
                            Ok(deliveries) => acked.extend(deliveries),
                            Err(error) => panic!("producer {producer}: {error}"),
                        }
                    }
                    acked.extend(producer_client.flush().expect("the last batches"));
                    acked
                        .into_iter()
                        .map(|delivery| Acked {
                            producer,
                            sequence: delivery.sequence,
                            partition: delivery.partition,
                            offset: delivery.offset,
                        })
                        .collect()
                })
            })
            .collect();
        Load { stop, threads }
    }

    fn finish(self) -> Vec<Acked> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|thread| thread.join().unwrap())
            .collect()
    }
}

/// Every record of every partition of `topic`, read from its leader through node
/// `via`, once every acknowledged record is below its high watermark (a leader that
/// took over learns the high watermark from its followers' next fetches): partition ->
/// offset -> value.
fn read_all(
    nodes: &Nodes,
    via: u64,
    topic: &str,
    partitions: u32,
    acked: &[Acked],
) -> BTreeMap<u32, BTreeMap<i64, String>> {
    let mut readable: BTreeMap<u32, i64> = BTreeMap::new();
    for record in acked {
        let end = readable.entry(record.partition).or_insert(0);
        *end = (*end).max(record.offset + 1);
    }
    let visible = wait_for(Duration::from_secs(15), || {
        let mut router = ShardRouter::new(nodes.connect(via).ok()?, topic, "checker").ok()?;
        for (partition, needed) in &readable {
            let connection = router.connection_for(*partition).ok()?;
            let end = connection
                .list_offset(topic, *partition, OFFSET_LATEST)
                .ok()?;
            if end < *needed {
                eprintln!(
                    "partition {partition}: high watermark {end}, acknowledged up to {needed}: {:?}",
                    nodes.partitions(via, topic)
                );
                return None;
            }
        }
        Some(())
    });
    assert!(
        visible.is_some(),
        "acknowledged records stay below the high watermark: {:?}",
        nodes.partitions(via, topic)
    );
    let mut router = ShardRouter::new(nodes.connect(via).unwrap(), topic, "checker").unwrap();
    let mut all = BTreeMap::new();
    for partition in 0..partitions {
        let connection = router.connection_for(partition).unwrap();
        let start = connection
            .list_offset(topic, partition, OFFSET_EARLIEST)
            .unwrap();
        let end = connection
            .list_offset(topic, partition, OFFSET_LATEST)
            .unwrap();
        let mut records = BTreeMap::new();
        let mut offset = start;
        while offset < end {
            let answer = connection
                .fetch(topic, partition, offset, 1 << 20, 0)
                .unwrap();
            assert!(answer.status.is_ok(), "{}", answer.status);
            for batch in spate::record::split_batches(&answer.records) {
                let (_, range) = batch.unwrap();
                let batch = answer.records.slice(range);
                for record in spate::record::decode_records(&batch).unwrap() {
                    if record.offset >= offset {
                        let value = String::from_utf8(record.value.unwrap().to_vec()).unwrap();
                        records.insert(record.offset, value);
                    }
                }
            }
            offset = records.keys().next_back().map_or(end, |last| last + 1);
        }
        all.insert(partition, records);
    }
    all
}

/// Each acknowledged record is where it was acknowledged, and each producer's records
/// of one partition are in its order.
fn check(acked: &[Acked], stored: &BTreeMap<u32, BTreeMap<i64, String>>) {
    assert!(!acked.is_empty(), "the load produced something");
    for record in acked {
        let expected = format!("p{}-{}", record.producer, record.sequence);
        let found = stored
            .get(&record.partition)
            .and_then(|partition| partition.get(&record.offset));
        assert_eq!(
            found,
            Some(&expected),
            "acknowledged {expected} at {}-{} is not there (the partition holds {} records, offsets {:?} to {:?})",
            record.partition,
            record.offset,
            stored.get(&record.partition).map_or(0, BTreeMap::len),
            stored
                .get(&record.partition)
                .and_then(|records| records.keys().next()),
            stored
                .get(&record.partition)
                .and_then(|records| records.keys().next_back()),
        );
    }
    // Per producer and partition, acknowledged records sit in the order they were sent.
    let mut by_stream: BTreeMap<(usize, u32), Vec<(u64, i64)>> = BTreeMap::new();
    for record in acked {
        by_stream
            .entry((record.producer, record.partition))
            .or_default()
            .push((record.sequence, record.offset));
    }
    for ((producer, partition), mut records) in by_stream {
        records.sort_unstable();
        for pair in records.windows(2) {
            assert!(
                pair[0].1 < pair[1].1,
                "producer {producer}'s records {pair:?} out of order in partition {partition}"
            );
        }
    }
}

#[test]
fn killed_leaders_fail_over_and_nothing_acknowledged_is_lost() {
    let mut nodes = Nodes::start();
    let placed = nodes.create_topic(1, "orders", 3, 3);
    let leaders: std::collections::BTreeSet<i64> =
        placed.iter().map(|(leader, ..)| *leader).collect();
    assert_eq!(
        leaders.len(),
        3,
        "one partition led by each node: {placed:?}"
    );

    let load = Load::start(&nodes, "orders", 3);
    std::thread::sleep(Duration::from_millis(1500));
    let victim = placed[0].0 as u64;
    let killed_at = Instant::now();
    nodes.kill(victim);
    let survivor = (1..=3).find(|id| *id != victim).unwrap();
    let moved = wait_for(Duration::from_secs(15), || {
        let partitions = nodes.partitions(survivor, "orders")?;
        partitions
            .iter()
            .all(|(leader, _, isr)| {
                *leader > 0 && *leader as u64 != victim && !isr.contains(&victim)
            })
            .then_some(partitions)
    });
    let moved =
        moved.unwrap_or_else(|| panic!("leaders move off node {victim}: {}", nodes.log(survivor)));
    eprintln!(
        "node {victim} killed: its partitions led elsewhere after {} ms: {moved:?}",
        killed_at.elapsed().as_millis()
    );
    assert!(moved[0].1 >= 1, "a new leader, a new epoch");
    // The CLI shows it: the node fenced, the partitions' new leaders and ISRs.
    let address = nodes.address(survivor);
    let cluster = crate::server::spate(&["cluster", "describe", "--broker", &address]);
    let shown = String::from_utf8_lossy(&cluster.stdout);
    assert!(cluster.status.success(), "{shown}");
    assert!(
        shown
            .lines()
            .any(|line| line.starts_with(&format!("{victim} ")) && line.contains("fenced")),
        "{shown}"
    );
    assert!(shown.contains("controller"), "{shown}");
    let topic = crate::server::spate(&["topic", "describe", "orders", "--broker", &address]);
    let shown = String::from_utf8_lossy(&topic.stdout);
    assert!(
        topic.status.success(),
        "{shown}{}",
        String::from_utf8_lossy(&topic.stderr)
    );
    assert!(shown.contains("ReplicationFactor: 3"), "{shown}");
    let first = shown
        .lines()
        .find(|line| line.contains("Partition: 0\t"))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(
        first.contains("Leader: ")
            && !first.contains(&format!("Leader: {victim}\t"))
            && !first.contains("LeaderEpoch: 0"),
        "{first}"
    );
    std::thread::sleep(Duration::from_millis(1500));

    // The killed node comes back, catches up and rejoins every ISR.
    nodes.spawn(victim);
    let rejoined = wait_for(Duration::from_secs(20), || {
        let partitions = nodes.partitions(survivor, "orders")?;
        partitions
            .iter()
            .all(|(_, _, isr)| isr.len() == 3)
            .then_some(())
    });
    assert!(
        rejoined.is_some(),
        "node {victim} rejoins the ISRs: {:?}",
        nodes.partitions(survivor, "orders")
    );
    let acked = load.finish();
    let stored = read_all(&nodes, survivor, "orders", 3, &acked);
    check(&acked, &stored);

    // Now the restarted node's copies must be whole: the other two go down one after the
    // other, leaving it to lead everything with what it fetched.
    let others: Vec<u64> = (1..=3).filter(|id| *id != victim).collect();
    nodes.kill(others[0]);
    let led = wait_for(Duration::from_secs(15), || {
        nodes
            .partitions(victim, "orders")?
            .iter()
            .all(|(leader, _, _)| *leader > 0 && *leader as u64 != others[0])
            .then_some(())
    });
    assert!(led.is_some(), "{:?}", nodes.partitions(victim, "orders"));
    let stored_after = read_all(&nodes, victim, "orders", 3, &acked);
    check(&acked, &stored_after);
    eprintln!(
        "{} acknowledged records checked twice ({} stored)",
        acked.len(),
        stored_after.values().map(BTreeMap::len).sum::<usize>()
    );
}

/// Every record of a partition as node `id` stored it, read from its directory once the
/// node has stopped: (offset, value).
/// Produces the values `{prefix}{n}` for each `n` of `numbers` to `topic` through node
/// `via` (keyless, acks=all), and waits until every one is acknowledged.
fn produce_numbered(
    nodes: &Nodes,
    via: u64,
    topic: &str,
    prefix: &str,
    numbers: std::ops::Range<usize>,
) {
    let mut producer = Producer::new(
        nodes.connect(via).unwrap(),
        topic,
        ProducerConfig::default(),
    )
    .unwrap();
    let mut delivered = 0;
    for number in numbers.clone() {
        delivered += producer
            .send(None, None, format!("{prefix}{number}").as_bytes())
            .unwrap()
            .len();
    }
    delivered += producer.flush().unwrap().len();
    assert_eq!(delivered, numbers.len());
}

/// A group member of `topic` that reads from the start, commits every 200 ms and
/// heartbeats every 300 ms, so a failover shows in its next steps.
fn lively_member(group: &str, topic: &str) -> spate::client::GroupConsumerConfig {
    let mut config = spate::client::GroupConsumerConfig::new(group, &[topic]);
    config.auto_offset_reset = spate::client::OffsetReset::Earliest;
    config.auto_commit_interval = Some(Duration::from_millis(200));
    config.heartbeat_interval = Duration::from_millis(300);
    config
}

fn stored_on(nodes: &Nodes, id: u64, topic: &str, partition: u32) -> Vec<(i64, String)> {
    let dir = nodes
        .data_dir(id)
        .join("topics")
        .join(format!("{topic}-{partition}"));
    crate::support::run(move || async move {
        let log = spate::storage::Log::open(dir, spate::storage::LogConfig::default())
            .await
            .unwrap();
        let records = crate::support::read_all(&log, log.log_start_offset()).await;
        log.close().await.unwrap();
        records
            .into_iter()
            .map(|(offset, value)| (offset, String::from_utf8(value).unwrap()))
            .collect()
    })
}

/// A leader paused with SIGSTOP is fenced and replaced; resumed, it takes no acks=all
/// write as leader, what it appended alone (acks=1) is cut from its log, and it catches
/// up as a follower: its log ends up the new leader's, record for record.
#[test]
fn a_paused_leader_is_fenced_and_its_stale_appends_are_cut() {
    let mut nodes = Nodes::start();
    let known = nodes.create_topic(1, "paused", 1, 3)[0].clone();
    let paused = known.0 as u64;
    let load = Load::start(&nodes, "paused", 2);
    std::thread::sleep(Duration::from_millis(1000));

    nodes.signal(paused, libc::SIGSTOP);
    let other = (1..=3).find(|id| *id != paused).unwrap();
    let replaced = wait_for(Duration::from_secs(15), || {
        let (leader, epoch, isr) = nodes.partitions(other, "paused")?[0].clone();
        (leader > 0 && leader as u64 != paused && !isr.contains(&paused)).then_some((leader, epoch))
    })
    .expect("another node leads while the leader is paused");
    assert!(replaced.1 > known.1, "a new epoch: {replaced:?}");
    std::thread::sleep(Duration::from_millis(500));

    // Resumed, it still believes it leads until it hears otherwise: whatever it takes
    // now, with acks=1, is its alone; with acks=all it can acknowledge nothing.
    nodes.signal(paused, libc::SIGCONT);
    let shard_port =
        nodes.port + 1 + spate::broker::metadata::shard_for("paused", 0, SHARDS) as u16;
    let stale_address = format!("127.0.0.{paused}:{shard_port}");
    if let Ok(mut stale) = Connection::connect(&stale_address, "stale") {
        let mut builder = spate::record::BatchBuilder::new();
        builder.push(0, None, Some(b"stale-1"), &[]);
        let outcome = stale.produce("paused", 0, builder.build(0), Acks::Leader);
        eprintln!("an acks=1 append to the resumed leader: {outcome:?}");
        let mut builder = spate::record::BatchBuilder::new();
        builder.push(0, None, Some(b"stale-all"), &[]);
        let answer = stale.produce("paused", 0, builder.build(0), Acks::All);
        if let Ok(Some(answer)) = answer {
            assert!(
                !answer.status.is_ok(),
                "a deposed leader acknowledged an acks=all write at {}",
                answer.base_offset
            );
        }
    }
    let rejoined = wait_for(Duration::from_secs(20), || {
        let (_, _, isr) = nodes.partitions(other, "paused")?[0].clone();
        (isr.len() == 3).then_some(())
    });
    assert!(
        rejoined.is_some(),
        "the resumed node catches up: {:?}",
        nodes.partitions(other, "paused")
    );
    let truncated = nodes.log(paused).contains("truncated a diverged replica");
    eprintln!("the resumed node truncated its log: {truncated}");
    let acked = load.finish();
    let leader = replaced.0 as u64;
    let stored = read_all(&nodes, leader, "paused", 1, &acked);
    check(&acked, &stored);
    assert!(
        stored[&0].values().all(|value| !value.starts_with("stale")),
        "the deposed leader's appends never reach the leader"
    );
    // Let the followers fetch the last of it, then compare the logs on disk.
    let end = *stored[&0].keys().next_back().unwrap();
    let caught_up = wait_for(Duration::from_secs(10), || {
        let (_, _, isr) = nodes.partitions(leader, "paused")?[0].clone();
        (isr.len() == 3).then_some(())
    });
    assert!(caught_up.is_some());
    std::thread::sleep(Duration::from_millis(1000));
    for id in 1..=3 {
        nodes.kill(id);
    }
    let expected: Vec<(i64, String)> = stored[&0]
        .iter()
        .map(|(offset, value)| (*offset, value.clone()))
        .collect();
    for id in 1..=3 {
        let copy = stored_on(&nodes, id, "paused", 0);
        assert!(
            copy.len() >= expected.len() && copy[..expected.len()] == expected[..],
            "node {id}'s copy differs from the leader's below offset {end}"
        );
        assert!(
            copy.iter().all(|(_, value)| !value.starts_with("stale")),
            "node {id} kept a deposed leader's append"
        );
    }
}

/// librdkafka (confluent-kafka, idempotent, acks=all) bootstraps from all three nodes'
/// Kafka ports and produces through the kill -9 of the partition's leader: it follows the
/// metadata to the new leader, every record is delivered with no error, each is read back
/// at the offset its delivery report gave and none twice, and a consumer group member
/// (talking to a node that stays up, its group coordinated by the node killed) reads
/// every record along the way.
#[test]
fn a_kafka_client_follows_a_failover_and_loses_nothing() {
    let mut nodes = Nodes::start();
    let known = nodes.create_topic(1, "kafka-failover", 1, 3)[0].clone();
    let leader = known.0 as u64;
    // The consumer group's coordinator is the node about to be killed too: a group whose
    // __consumer_offsets partition that node leads (the first group request creates it).
    let offsets = nodes.offsets_topic("probe");
    let group = (0..)
        .map(|index| format!("failover-{index}"))
        .find(|group| offsets[offsets_partition(group) as usize].0 as u64 == leader)
        .unwrap();
    let kafka_port = nodes.port + SHARDS as u16 + 1;
    let bootstrap: Vec<String> = (1..=3)
        .map(|id| format!("127.0.0.{id}:{kafka_port}"))
        .collect();
    let signal = nodes.root.join("signal");
    let go = nodes.root.join("go");
    let script = std::process::Command::new(crate::kafka_tools::python())
        .arg("-u")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka/clients.py"))
        .args([
            "confluent-failover",
            "--bootstrap",
            &bootstrap.join(","),
            "--topic",
            "kafka-failover",
            "--partitions",
            "1",
            "--count",
            "600",
            "--group",
            &group,
        ])
        .arg("--signal-file")
        .arg(&signal)
        .arg("--go-file")
        .arg(&go)
        .arg("--group-bootstrap")
        .arg(format!(
            "127.0.0.{}:{kafka_port}",
            (1..=3).find(|id| *id != leader).unwrap()
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ready = wait_for(Duration::from_secs(60), || signal.exists().then_some(()));
    assert!(ready.is_some(), "the client produced the first half");
    nodes.kill(leader);
    std::fs::write(&go, "go").unwrap();
    let output = script.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|error| {
            panic!(
                "no result ({error}): {stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    assert_eq!(result["errors"], serde_json::json!([]), "{result}");
    let delivered = result["delivered"].as_array().unwrap();
    assert_eq!(delivered.len(), 600, "every record delivered");
    let read: std::collections::BTreeMap<i64, String> = result["read"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| {
            (
                record[1].as_i64().unwrap(),
                record[2].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for record in delivered {
        let (offset, value) = (record[1].as_i64().unwrap(), record[2].as_str().unwrap());
        assert_eq!(
            read.get(&offset).map(String::as_str),
            Some(value),
            "{record}"
        );
    }
    let moved = nodes.partitions((1..=3).find(|id| *id != leader).unwrap(), "kafka-failover");
    eprintln!("librdkafka produced 600 records through the failover of node {leader}: {moved:?}");
}

/// A follower whose links to the leader are blackholed (both ways, through the fault
/// proxies every node reaches the others by) leaves the ISR while acks=all load goes on
/// with the two others; healed, it catches up, rejoins the ISR, and its copy ends up the
/// leader's, record for record.
#[test]
fn a_cut_off_follower_catches_up_and_rejoins_the_isr() {
    use crate::fault_proxy::{Fault, FaultProxy};
    let mut links: BTreeMap<(u64, u64), FaultProxy> = BTreeMap::new();
    let mut nodes = Nodes::start_routed(|from, to, address| {
        let link = FaultProxy::start(address.parse().unwrap());
        let routed = link.address.to_string();
        links.insert((from, to), link);
        routed
    });
    let known = nodes.create_topic(1, "cut", 1, 3)[0].clone();
    let leader = known.0 as u64;
    // A follower that is not the controller: a leader cut off from the controller cannot
    // change the ISR at all (as in Kafka, whose AlterPartition also goes to the
    // controller); the controller fences it instead (a_paused_leader_is_fenced...).
    let controller = nodes.describe(1, &[]).unwrap().controller as u64;
    let follower = (1..=3)
        .find(|id| *id != leader && *id != controller)
        .unwrap();
    let load = Load::start(&nodes, "cut", 2);
    std::thread::sleep(Duration::from_millis(800));

    for ((from, to), link) in &links {
        if (*from, *to) == (leader, follower) || (*from, *to) == (follower, leader) {
            link.set(Fault::Blackhole);
        }
    }
    let left = wait_for(Duration::from_secs(20), || {
        let (_, _, isr) = nodes.partitions(leader, "cut")?[0].clone();
        (!isr.contains(&follower)).then_some(isr)
    });
    assert!(
        left.is_some(),
        "the cut-off follower leaves the ISR: {:?}",
        nodes.partitions(leader, "cut")
    );
    std::thread::sleep(Duration::from_millis(1000));
    for link in links.values() {
        link.set(Fault::None);
    }
    let rejoined = wait_for(Duration::from_secs(30), || {
        let (_, _, isr) = nodes.partitions(leader, "cut")?[0].clone();
        (isr.len() == 3).then_some(())
    });
    assert!(
        rejoined.is_some(),
        "healed, it rejoins: {:?}",
        nodes.partitions(leader, "cut")
    );
    let acked = load.finish();
    let current = nodes.partitions(leader, "cut").unwrap()[0].0 as u64;
    let stored = read_all(&nodes, current, "cut", 1, &acked);
    check(&acked, &stored);
    // Its copy is the leader's once it has fetched the last of it.
    std::thread::sleep(Duration::from_millis(1500));
    for id in 1..=3 {
        nodes.kill(id);
    }
    let expected: Vec<(i64, String)> = stored[&0]
        .iter()
        .map(|(offset, value)| (*offset, value.clone()))
        .collect();
    let copy = stored_on(&nodes, follower, "cut", 0);
    assert!(
        copy.len() >= expected.len() && copy[..expected.len()] == expected[..],
        "the follower's copy is the leader's ({} records against {})",
        copy.len(),
        expected.len()
    );
}

/// The controller's node is killed: another is elected, the dead one is fenced, and topic
/// creation goes on. Then, with a follower of a two-replica topic killed, its leader alone
/// in sync refuses acks=all produces (min.insync.replicas=2) and stores nothing for them.
#[test]
fn a_lost_controller_is_replaced_and_too_few_in_sync_refuse_acks_all() {
    let mut nodes = Nodes::start();
    let controller = nodes.describe(1, &[]).unwrap().controller as u64;
    nodes.kill(controller);
    let survivor = (1..=3).find(|id| *id != controller).unwrap();
    let replaced = wait_for(Duration::from_secs(15), || {
        let cluster = nodes.describe(survivor, &[]).ok()?;
        let fenced = cluster
            .nodes
            .iter()
            .any(|node| node.id == controller && node.fenced);
        (cluster.controller > 0 && cluster.controller as u64 != controller && fenced)
            .then_some(cluster.controller as u64)
    });
    assert!(replaced.is_some(), "another node takes over as controller");
    let created = nodes
        .connect(survivor)
        .unwrap()
        .create_replicated_topic("after", 2, 2, &[])
        .unwrap();
    assert!(created.status.is_ok(), "{}", created.status);
    let mut producer = Producer::new(
        nodes.connect(survivor).unwrap(),
        "after",
        ProducerConfig::default(),
    )
    .unwrap();
    producer
        .send(Some(1), None, b"after the controller")
        .unwrap();
    let delivered = producer.flush().unwrap();
    assert_eq!(delivered.len(), 1);

    nodes.spawn(controller);
    let back = wait_for(Duration::from_secs(15), || {
        let cluster = nodes.describe(survivor, &[]).ok()?;
        (cluster.nodes.len() == 3 && cluster.nodes.iter().all(|node| !node.fenced)).then_some(())
    });
    assert!(back.is_some(), "the old controller's node registers again");
    let (leader, _, isr) = nodes.create_topic(survivor, "few", 1, 2)[0].clone();
    let leader = leader as u64;
    let follower = *isr.iter().find(|id| **id != leader).unwrap();
    let mut router = ShardRouter::new(nodes.connect(leader).unwrap(), "few", "test").unwrap();
    let one = |value: &[u8]| {
        let mut builder = spate::record::BatchBuilder::new();
        builder.push(0, None, Some(value), &[]);
        builder.build(0)
    };
    let answer = router
        .connection_for(0)
        .unwrap()
        .produce("few", 0, one(b"in sync"), Acks::All)
        .unwrap()
        .unwrap();
    assert!(answer.status.is_ok(), "{}", answer.status);

    nodes.kill(follower);
    let alone = wait_for(Duration::from_secs(15), || {
        let (_, _, isr) = nodes.partitions(leader, "few")?[0].clone();
        (isr == [leader]).then_some(())
    });
    assert!(alone.is_some(), "{:?}", nodes.partitions(leader, "few"));
    let connection = router.connection_for(0).unwrap();
    let end = connection.list_offset("few", 0, OFFSET_LATEST).unwrap();
    let refused = connection
        .produce("few", 0, one(b"too few"), Acks::All)
        .unwrap()
        .unwrap();
    assert_eq!(
        refused.status.code,
        spate::protocol::ErrorCode::NotEnoughReplicas,
        "{}",
        refused.status
    );
    assert_eq!(
        connection.list_offset("few", 0, OFFSET_LATEST).unwrap(),
        end,
        "nothing stored"
    );
    // acks=1 asks for the leader alone, as in Kafka.
    let leader_only = connection
        .produce("few", 0, one(b"leader only"), Acks::Leader)
        .unwrap()
        .unwrap();
    assert!(leader_only.status.is_ok(), "{}", leader_only.status);
}

/// Twenty rounds of kill -9 and restart of a random node (seeded; the seed is printed)
/// under acks=all load from three producers over three partitions: after each restart the
/// node catches up before the next round (a second node down would take the metadata
/// group's quorum). Every acknowledged record is then where it was acknowledged, in each
/// producer's order.
#[test]
fn random_kill_and_restart_cycles_lose_nothing_acknowledged() {
    let cycles: usize = crate::support::env_number("SPATE_CHAOS_CYCLES", 20);
    let mut generator = crate::support::Random::seeded_from("SPATE_CHAOS_SEED");
    let seed = generator.0;
    eprintln!("chaos seed {seed} (SPATE_CHAOS_SEED={seed} runs these rounds again)");
    let mut random = move |below: u64| generator.below(below);
    let mut nodes = Nodes::start();
    let created = nodes
        .connect(1)
        .unwrap()
        .create_replicated_topic("chaos", 3, 3, &[("min.insync.replicas".into(), "2".into())])
        .unwrap();
    assert!(created.status.is_ok(), "{}", created.status);
    let all_in_sync = |nodes: &Nodes, via: u64| {
        let partitions = nodes.partitions(via, "chaos")?;
        (partitions.len() == 3
            && partitions
                .iter()
                .all(|(leader, _, isr)| *leader > 0 && isr.len() == 3))
        .then_some(())
    };
    assert!(
        wait_for(Duration::from_secs(10), || {
            (1..=3).try_for_each(|id| all_in_sync(&nodes, id))
        })
        .is_some()
    );
    let load = Load::start(&nodes, "chaos", 3);
    let started = Instant::now();
    for cycle in 0..cycles {
        let victim = 1 + random(3);
        nodes.kill(victim);
        std::thread::sleep(Duration::from_millis(200 + random(1300)));
        nodes.spawn(victim);
        let other = (1..=3).find(|id| *id != victim).unwrap();
        let healed = wait_for(Duration::from_secs(30), || {
            let cluster = nodes.describe(other, &[]).ok()?;
            (cluster.nodes.iter().all(|node| !node.fenced) && cluster.controller > 0)
                .then_some(())?;
            all_in_sync(&nodes, other)
        });
        assert!(
            healed.is_some(),
            "round {cycle} (seed {seed}): node {victim} back in every ISR: {:?}",
            nodes.partitions(other, "chaos")
        );
    }
    let acked = load.finish();
    let stored = read_all(&nodes, 1, "chaos", 3, &acked);
    check(&acked, &stored);
    eprintln!(
        "{cycles} kill -9 rounds in {} s: {} acknowledged records all in place",
        started.elapsed().as_secs(),
        acked.len()
    );
}

/// Consumer groups in a cluster: committed offsets live in the replicated
/// `__consumer_offsets` topic, and a group is coordinated by the leader of its partition
/// there. Spate's group consumer, talking to one node, reads and commits; the
/// coordinator's node is killed -9; a new member (again through a node that stays up,
/// which forwards its group requests to the new coordinator) resumes from the committed
/// offsets, reading only what came after them; the old coordinator comes back as a
/// follower and rejoins the ISR of the group's offsets partition.
#[test]
fn group_offsets_move_with_their_coordinator() {
    use spate::client::{GroupConsumer, GroupConsumerConfig, OffsetReset};
    let mut nodes = Nodes::start();
    nodes.create_topic(1, "grouped", 2, 3);
    let port = nodes.port;
    let consume_all = |via: u64, expected: usize| -> Vec<String> {
        let mut config = GroupConsumerConfig::new("resumers", &["grouped"]);
        config.auto_offset_reset = OffsetReset::Earliest;
        config.auto_commit_interval = None;
        let mut consumer = GroupConsumer::new(&format!("127.0.0.{via}:{port}"), config).unwrap();
        let mut values = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while values.len() < expected && Instant::now() < deadline {
            for record in consumer.poll(Duration::from_millis(200)).unwrap() {
                values.push(String::from_utf8(record.record.value.unwrap().to_vec()).unwrap());
            }
        }
        // Nothing more than expected arrives.
        for record in consumer.poll(Duration::from_millis(500)).unwrap() {
            values.push(String::from_utf8(record.record.value.unwrap().to_vec()).unwrap());
        }
        consumer.commit().unwrap();
        consumer.close().unwrap();
        values.sort();
        values
    };
    // The first group request creates the offsets topic. The coordinator: the leader of
    // the group's offsets partition.
    let offsets = nodes.offsets_topic("resumers");
    assert_eq!(offsets.len(), 16);
    let (coordinator, _, isr) = offsets[offsets_partition("resumers") as usize].clone();
    assert_eq!(isr.len(), 3, "every node holds the group's offsets");
    let coordinator = coordinator as u64;
    // The internal topic is the coordinators' alone: no client produce, no new
    // partitions, no deletion, no second creation.
    let mut admin = nodes.connect(coordinator).unwrap();
    let mut builder = spate::record::BatchBuilder::new();
    builder.push(0, Some(b"forged"), Some(b"offset"), &[]);
    let forged = admin
        .produce(
            OFFSETS_TOPIC,
            offsets_partition("resumers"),
            builder.build(0),
            Acks::All,
        )
        .unwrap()
        .unwrap();
    assert_eq!(
        forged.status.code,
        spate::protocol::ErrorCode::InvalidRequest,
        "{}",
        forged.status
    );
    for refused in [
        admin.create_partitions(OFFSETS_TOPIC, 20).unwrap(),
        admin.delete_topic(OFFSETS_TOPIC).unwrap(),
        admin
            .create_replicated_topic(OFFSETS_TOPIC, 16, 3, &[])
            .unwrap(),
    ] {
        assert_eq!(
            refused.status.code,
            spate::protocol::ErrorCode::InvalidRequest,
            "{}",
            refused.status
        );
    }
    // Consumers talk to another node, which forwards their group requests.
    let survivor = (1..=3).find(|id| *id != coordinator).unwrap();
    produce_numbered(&nodes, survivor, "grouped", "record ", 0..100);
    let first = consume_all(survivor, 100);
    assert_eq!(first.len(), 100, "{first:?}");

    eprintln!(
        "group coordinated by node {coordinator}; killed; consumers go through node {survivor}"
    );
    nodes.kill(coordinator);
    produce_numbered(&nodes, survivor, "grouped", "record ", 100..150);
    let second = consume_all(survivor, 50);
    let mut expected: Vec<String> = (100..150).map(|index| format!("record {index}")).collect();
    expected.sort();
    assert_eq!(
        second,
        expected,
        "the new coordinator resumes the group from its committed offsets\n{}",
        nodes.log(survivor)
    );
    let committed = nodes
        .connect(survivor)
        .unwrap()
        .fetch_offsets("resumers", Vec::new())
        .unwrap();
    let total: i64 = committed
        .iter()
        .flat_map(|topic| topic.partitions.iter().map(|partition| partition.offset))
        .sum();
    assert_eq!(total, 150, "{committed:?}");
    // `spate group describe` through a node that leads only some partitions asks each
    // partition's end of its leader: every row has its lag.
    let described = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args([
            "group",
            "describe",
            "resumers",
            "--broker",
            &nodes.address(survivor),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&described.stdout);
    assert!(
        described.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&described.stderr)
    );
    let rows: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with("grouped"))
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    for row in rows {
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(columns[2], columns[3], "committed at the end: {row}");
        assert_eq!(columns[4], "0", "no lag: {row}");
    }
    // `spate group list` asks every live node (each lists the groups it coordinates).
    for via in (1..=3).filter(|id| *id != coordinator) {
        let listed = Command::new(env!("CARGO_BIN_EXE_spate"))
            .args(["group", "list", "--broker", &nodes.address(via)])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&listed.stdout);
        assert!(
            text.lines().any(|line| line.starts_with("resumers ")),
            "listed through node {via}: {text}{}",
            String::from_utf8_lossy(&listed.stderr)
        );
    }

    // The old coordinator returns, catches up, and holds the same commits.
    nodes.spawn(coordinator);
    let caught_up = wait_for(Duration::from_secs(30), || {
        let offsets = nodes.partitions(survivor, OFFSETS_TOPIC)?;
        offsets[offsets_partition("resumers") as usize]
            .2
            .contains(&coordinator)
            .then_some(())
    });
    assert!(caught_up.is_some(), "the old coordinator rejoins the ISR");
}

/// A follower away while its leader's retention deletes what it had not copied yet: back,
/// it finds the leader's log starting past its own end, starts over empty at the leader's
/// log start, catches up and rejoins the ISR; its copy then holds exactly the leader's
/// records from there (and the leader deleted nothing at or above the high watermark).
#[test]
fn a_follower_behind_the_leaders_log_start_starts_over_there() {
    let mut nodes = Nodes::start();
    let created = nodes
        .connect(1)
        .unwrap()
        .create_replicated_topic(
            "short",
            1,
            3,
            &[
                ("segment.bytes".into(), "1048576".into()),
                ("retention.bytes".into(), "2097152".into()),
            ],
        )
        .unwrap();
    assert!(created.status.is_ok(), "{}", created.status);
    let (leader, _, _) = wait_for(Duration::from_secs(10), || {
        let seen = nodes.partitions(1, "short")?;
        let (leader, epoch, isr) = seen[0].clone();
        (leader > 0 && isr.len() == 3).then_some((leader as u64, epoch, isr))
    })
    .expect("the topic is led with its whole ISR");
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let mut producer = Producer::new(
        nodes.connect(leader).unwrap(),
        "short",
        ProducerConfig::default(),
    )
    .unwrap();
    producer.send(Some(0), None, b"0").unwrap();
    producer.flush().unwrap();
    nodes.kill(follower);
    // 8 MiB through 1 MiB segments, 2 MiB kept: the leader's log start moves far past
    // the one record the follower holds.
    let total = 8 * 1024;
    let padding = "x".repeat(1000);
    let mut delivered = 0;
    for index in 1..total {
        delivered += producer
            .send(Some(0), None, format!("{index} {padding}").as_bytes())
            .unwrap()
            .len();
    }
    delivered += producer.flush().unwrap().len();
    assert_eq!(delivered, total - 1);
    let leader_dir = nodes.data_dir(leader).join("topics").join("short-0");
    let first_segment = |dir: &std::path::Path| -> Option<i64> {
        std::fs::read_dir(dir)
            .ok()?
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                name.strip_suffix(".log")?.parse().ok()
            })
            .min()
    };
    let moved = wait_for(Duration::from_secs(20), || {
        first_segment(&leader_dir).filter(|start| *start > 1)
    });
    let leader_start = moved.expect("the leader's retention deletes its oldest segments");

    nodes.spawn(follower);
    let rejoined = wait_for(Duration::from_secs(30), || {
        let (_, _, isr) = nodes.partitions(leader, "short")?[0].clone();
        isr.contains(&follower).then_some(())
    });
    assert!(
        rejoined.is_some(),
        "the follower starts over and rejoins the ISR\n{}",
        nodes.log(follower)
    );
    assert!(
        nodes.log(follower).contains("starting over there"),
        "the follower started over at the leader's log start"
    );
    nodes.kill(follower);
    let copy = stored_on(&nodes, follower, "short", 0);
    let first = copy.first().expect("the copy holds records").0;
    assert!(
        first >= leader_start,
        "the copy starts at the leader's log start {leader_start} or later, not {first}"
    );
    assert_eq!(
        copy.last().unwrap().0,
        total as i64 - 1,
        "the copy is whole to the end"
    );
    for (position, (offset, value)) in copy.iter().enumerate() {
        assert_eq!(*offset, first + position as i64, "no gap in the copy");
        assert!(
            value.starts_with(&format!("{offset} ")),
            "offset {offset} holds {value:.20}"
        );
    }
}

/// A leader answers a replica fetch only from a replica and only in its current epoch:
/// another epoch is FencedLeaderEpoch, a node without a replica is refused, and a fetch
/// whose last epoch the leader never had, or past its log end, is told where its log
/// diverged (KIP-320). A proper fetch gets the records and the high watermark.
#[test]
fn a_leader_refuses_fetches_from_other_epochs_and_non_replicas() {
    use spate::protocol::{
        ErrorCode, ReplicaFetchPartition, ReplicaFetchPartitionResponse, ReplicaFetchRequest,
        Request, Response,
    };
    let nodes = Nodes::start();
    let (leader, epoch, isr) = nodes.create_topic(1, "fenced", 1, 2)[0].clone();
    let leader = leader as u64;
    let follower = *isr.iter().find(|id| **id != leader).unwrap();
    let outsider = (1..=3).find(|id| !isr.contains(id)).unwrap();
    let mut producer = Producer::new(
        nodes.connect(leader).unwrap(),
        "fenced",
        ProducerConfig::default(),
    )
    .unwrap();
    for value in ["a", "b", "c"] {
        producer.send(Some(0), None, value.as_bytes()).unwrap();
    }
    producer.flush().unwrap();
    let fetch = |replica: u64, leader_epoch: u32, fetch_offset: i64, last_fetched_epoch: i32| {
        let request = Request::ReplicaFetch(ReplicaFetchRequest {
            replica,
            max_wait_ms: 0,
            max_bytes: 1 << 20,
            partitions: vec![ReplicaFetchPartition {
                topic: "fenced".into(),
                partition: 0,
                leader_epoch,
                fetch_offset,
                last_fetched_epoch,
            }],
        });
        match nodes.connect(leader).unwrap().call(&request).unwrap() {
            Response::ReplicaFetch(mut partitions) => {
                assert_eq!(partitions.len(), 1);
                partitions.remove(0)
            }
            other => panic!("{other:?}"),
        }
    };
    let refused = |answer: &ReplicaFetchPartitionResponse, code: ErrorCode| {
        assert_eq!(answer.status.code, code, "{}", answer.status);
        assert!(answer.records.is_empty());
    };
    refused(
        &fetch(follower, epoch + 1, 0, -1),
        ErrorCode::FencedLeaderEpoch,
    );
    if epoch > 0 {
        refused(
            &fetch(follower, epoch - 1, 0, -1),
            ErrorCode::FencedLeaderEpoch,
        );
    }
    let outside = fetch(outsider, epoch, 0, -1);
    refused(&outside, ErrorCode::InvalidRequest);
    assert!(
        outside.status.message.contains("holds no replica"),
        "{}",
        outside.status
    );

    // A last epoch the leader never had: its log diverged where the leader's epoch ends.
    let diverged = fetch(follower, epoch, 3, epoch as i32 + 5);
    assert!(diverged.status.is_ok(), "{}", diverged.status);
    assert_eq!(
        (diverged.diverging_epoch, diverged.diverging_end_offset),
        (epoch as i32, 3)
    );
    assert!(diverged.records.is_empty());
    // Past the leader's log end: cut back to it.
    let ahead = fetch(follower, epoch, 100, epoch as i32);
    assert_eq!(ahead.diverging_end_offset, 3, "{ahead:?}");

    let proper = fetch(follower, epoch, 0, -1);
    assert!(proper.status.is_ok(), "{}", proper.status);
    assert_eq!(proper.high_watermark, 3);
    let batches = spate::record::split_batches(&proper.records).count();
    assert!(batches >= 1, "the records come back as stored batches");
}

/// acks=all with min.insync.replicas=2 on two replicas: the follower is paused (SIGSTOP)
/// just before a produce. The batch is appended, the high watermark waits for the
/// follower, the controller fences it and shrinks the ISR to the leader, the high
/// watermark passes the batch, and the answer is NotEnoughReplicasAfterAppend: fewer
/// copies hold it than asked. The next produce is refused before it is appended
/// (NotEnoughReplicas). Resumed, the follower rejoins and acks=all works again.
#[test]
fn an_isr_that_shrinks_under_a_waiting_produce_answers_not_enough_after_append() {
    use spate::protocol::ErrorCode;
    let nodes = Nodes::start();
    let (leader, _, isr) = nodes.create_topic(1, "shrinking", 1, 2)[0].clone();
    let leader = leader as u64;
    let follower = *isr.iter().find(|id| **id != leader).unwrap();
    let mut router = ShardRouter::new(nodes.connect(leader).unwrap(), "shrinking", "test").unwrap();
    let one = |value: &[u8]| {
        let mut builder = spate::record::BatchBuilder::new();
        builder.push(0, None, Some(value), &[]);
        builder.build(0)
    };
    let connection = router.connection_for(0).unwrap();
    let first = connection
        .produce("shrinking", 0, one(b"both"), Acks::All)
        .unwrap()
        .unwrap();
    assert!(first.status.is_ok(), "{}", first.status);

    nodes.signal(follower, libc::SIGSTOP);
    let waited = connection
        .produce("shrinking", 0, one(b"waits"), Acks::All)
        .unwrap()
        .unwrap();
    assert_eq!(
        waited.status.code,
        ErrorCode::NotEnoughReplicasAfterAppend,
        "{}",
        waited.status
    );
    let refused = connection
        .produce("shrinking", 0, one(b"refused"), Acks::All)
        .unwrap()
        .unwrap();
    assert_eq!(
        refused.status.code,
        ErrorCode::NotEnoughReplicas,
        "{}",
        refused.status
    );
    assert_eq!(
        connection
            .list_offset("shrinking", 0, OFFSET_LATEST)
            .unwrap(),
        2,
        "the waiting batch is stored, the refused one is not"
    );

    nodes.signal(follower, libc::SIGCONT);
    let rejoined = wait_for(Duration::from_secs(30), || {
        let (_, _, isr) = nodes.partitions(leader, "shrinking")?[0].clone();
        (isr.len() == 2).then_some(())
    });
    assert!(rejoined.is_some(), "the resumed follower rejoins the ISR");
    let again = router
        .connection_for(0)
        .unwrap()
        .produce("shrinking", 0, one(b"again"), Acks::All)
        .unwrap()
        .unwrap();
    assert!(again.status.is_ok(), "{}", again.status);
}

/// A topic is deleted right after a follower of a group's offsets partition is killed -9
/// (still in the ISR as the coordinator sees it). The coordinator's node writes the
/// deleted topic's offset tombstones through that partition, whose acks=all append waits
/// for the ISR to shrink; the node must go on applying cluster changes meanwhile (the ISR
/// change among them), so the tombstones are written, the group's offsets for the topic
/// are gone, and a topic created next through that node is answered.
#[test]
fn a_deletion_under_a_lost_offsets_follower_does_not_stall_the_coordinators_node() {
    use spate::protocol::{OffsetCommitPartition, OffsetCommitRequest, OffsetCommitTopic};
    let mut nodes = Nodes::start();
    nodes.create_topic(1, "doomed", 1, 3);
    let offsets = nodes.offsets_topic("keeper");
    let (coordinator, _, isr) = offsets[offsets_partition("keeper") as usize].clone();
    let coordinator = coordinator as u64;
    let committed = nodes
        .connect(coordinator)
        .unwrap()
        .commit_offsets(OffsetCommitRequest {
            group_id: "keeper".into(),
            generation: -1,
            member_id: String::new(),
            topics: vec![OffsetCommitTopic {
                name: "doomed".into(),
                partitions: vec![OffsetCommitPartition {
                    partition: 0,
                    offset: 7,
                    metadata: String::new(),
                }],
            }],
        })
        .unwrap();
    assert!(committed[0].partitions[0].status.is_ok(), "{committed:?}");
    let follower = *isr.iter().find(|id| **id != coordinator).unwrap();
    nodes.kill(follower);
    let deleted = nodes
        .connect(coordinator)
        .unwrap()
        .delete_topic("doomed")
        .unwrap();
    assert!(deleted.status.is_ok(), "{}", deleted.status);
    let created = nodes
        .connect(coordinator)
        .unwrap()
        .create_replicated_topic("after-deletion", 1, 2, &[])
        .unwrap();
    assert!(
        created.status.is_ok(),
        "the coordinator's node still applies cluster changes: {}\n{}",
        created.status,
        nodes.log(coordinator)
    );
    let gone = wait_for(Duration::from_secs(15), || {
        let left = nodes
            .connect(coordinator)
            .ok()?
            .fetch_offsets("keeper", Vec::new())
            .ok()?;
        left.iter()
            .all(|topic| topic.name != "doomed")
            .then_some(())
    });
    assert!(gone.is_some(), "the deleted topic's offsets are dropped");
}

/// A Spate group member keeps consuming while its group's coordinator dies: it talks to a
/// node that stays up, whose forwarded heartbeats and commits find the new coordinator
/// (the member joins again there), and every record produced before and after the kill
/// is read; with commits every 200 ms, what is read twice is at most what came after
/// the last commit before the kill.
#[test]
fn an_active_group_member_rides_through_its_coordinators_death() {
    use spate::client::GroupConsumer;
    let mut nodes = Nodes::start();
    nodes.create_topic(1, "riding", 2, 3);
    let offsets = nodes.offsets_topic("riders");
    let coordinator = offsets[offsets_partition("riders") as usize].0 as u64;
    let via = (1..=3).find(|id| *id != coordinator).unwrap();
    let config = lively_member("riders", "riding");
    let mut consumer = GroupConsumer::new(&nodes.address(via), config).unwrap();
    let mut seen: Vec<String> = Vec::new();
    let read_until = |consumer: &mut GroupConsumer, seen: &mut Vec<String>, want: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            for record in consumer.poll(Duration::from_millis(100)).unwrap() {
                seen.push(String::from_utf8(record.record.value.unwrap().to_vec()).unwrap());
            }
            let distinct: std::collections::BTreeSet<&String> = seen.iter().collect();
            if distinct.len() >= want {
                return;
            }
        }
        panic!("read {} distinct records of {want}", seen.len());
    };
    produce_numbered(&nodes, via, "riding", "r", 0..200);
    read_until(&mut consumer, &mut seen, 200);
    // Let a commit of everything read land.
    for _ in 0..5 {
        consumer.poll(Duration::from_millis(100)).unwrap();
    }
    nodes.kill(coordinator);
    produce_numbered(&nodes, via, "riding", "r", 200..400);
    read_until(&mut consumer, &mut seen, 400);
    // The new coordinator may not know the member yet (it learns to join again from its
    // next heartbeat): then the closing commit is refused as from an old generation, as
    // Kafka's would be, and the next member reads those records again.
    match consumer.close() {
        Ok(()) => {}
        Err(spate::client::ClientError::Broker(status))
            if matches!(
                status.code,
                spate::protocol::ErrorCode::UnknownMemberId
                    | spate::protocol::ErrorCode::IllegalGeneration
                    | spate::protocol::ErrorCode::RebalanceInProgress
            ) => {}
        Err(error) => panic!("closing the member: {error}"),
    }
    let distinct: std::collections::BTreeSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), 400, "every record read");
    let again = seen.len() - distinct.len();
    assert!(
        again <= 200,
        "only records after the last commit are read twice ({again})"
    );
    eprintln!(
        "coordinator node {coordinator} killed under an active member: {again} records read twice"
    );
}

/// A Spate group member whose bootstrap node dies goes on through the other nodes it
/// learnt from metadata: group requests go to any of them (each forwards to the
/// coordinator) and fetches to the partitions' new leaders.
#[test]
fn a_group_member_outlives_its_bootstrap_node() {
    use spate::client::GroupConsumer;
    let mut nodes = Nodes::start();
    nodes.create_topic(1, "outliving", 2, 3);
    let offsets = nodes.offsets_topic("outlivers");
    let coordinator = offsets[offsets_partition("outlivers") as usize].0 as u64;
    let bootstrap = (1..=3).find(|id| *id != coordinator).unwrap();
    let producing = (1..=3).find(|id| *id != bootstrap).unwrap();
    let config = lively_member("outlivers", "outliving");
    let mut consumer = GroupConsumer::new(&nodes.address(bootstrap), config).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let mut read_until = |consumer: &mut GroupConsumer, want: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.len() < want {
            assert!(Instant::now() < deadline, "read {} of {want}", seen.len());
            for record in consumer.poll(Duration::from_millis(100)).unwrap() {
                seen.insert(String::from_utf8(record.record.value.unwrap().to_vec()).unwrap());
            }
        }
    };
    produce_numbered(&nodes, producing, "outliving", "o", 0..100);
    read_until(&mut consumer, 100);
    nodes.kill(bootstrap);
    produce_numbered(&nodes, producing, "outliving", "o", 100..200);
    read_until(&mut consumer, 200);
    drop(consumer);
}
