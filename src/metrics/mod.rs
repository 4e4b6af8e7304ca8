//! What the broker counts about itself, for Prometheus (`/metrics`, served by
//! `server::admin` on a thread of its own).
//!
//! Thread-per-core, as the rest: each shard owns one `ShardMetrics` and is its only
//! writer, so counting is a relaxed load and store of an atomic (no locked
//! read-modify-write, no cache line shared with another core while nobody scrapes); the
//! metrics thread reads them with relaxed loads. Values that live in the shard's own
//! structures (partitions' offsets, groups' committed offsets, memory in use) are copied
//! by the shard into its `Snapshot` once a second (`SNAPSHOT_INTERVAL`), so a scrape never
//! waits on a shard and a shard never waits on a scrape.
//!
//! Code outside the server (storage's durability rounds, the tail cache) counts through
//! `with`, into the metrics installed on its thread; on a thread with none installed
//! (unit tests, tools) the counts go to a private set nobody reads.

mod exposition;

use std::cell::RefCell;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use exposition::{CONTENT_TYPE, Exposition, filesystem_space};

use crate::protocol::{ApiKey, ErrorCode};

/// How often a shard copies its gauges into its `Snapshot`.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);

/// Upper bounds (seconds) of the latency histograms' buckets: 50 us to 30 s.
pub const LATENCY_BOUNDS: [f64; 18] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

/// Upper bounds of the histogram of partitions per durability round.
pub const ROUND_SIZE_BOUNDS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// A counter with one writer (its shard's thread): `add` is a plain load and store.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, amount: u64) {
        self.0
            .store(self.0.load(Relaxed).wrapping_add(amount), Relaxed);
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A gauge with one writer.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn add(&self, amount: i64) {
        self.0.store(self.0.load(Relaxed) + amount, Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// A histogram with fixed buckets and one writer.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, then one for larger values (+Inf); not cumulative.
    buckets: Box<[Counter]>,
    /// The sum of the observed values, as f64 bits.
    sum: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| Counter::default()).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    pub fn observe(&self, value: f64) {
        // The first bucket whose upper bound holds the value (Prometheus' `le`).
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        self.buckets[bucket].inc();
        let sum = f64::from_bits(self.sum.load(Relaxed)) + value;
        self.sum.store(sum.to_bits(), Relaxed);
    }

    pub fn observe_duration(&self, elapsed: Duration) {
        self.observe(elapsed.as_secs_f64());
    }

    /// Sum, count and each bucket's upper bound with its (non-cumulative) count, the
    /// last +Inf: what the exposition encoder takes.
    pub fn read(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.buckets.iter().map(Counter::get))
            .collect();
        // The count is the buckets' total as read, never more than the +Inf bucket (an
        // observation landing between the reads would otherwise make it so).
        let count = buckets.iter().map(|(_, count)| count).sum();
        (f64::from_bits(self.sum.load(Relaxed)), count, buckets)
    }
}

/// The two front doors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Native = 0,
    Kafka = 1,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Native, Protocol::Kafka];

    pub fn label(self) -> &'static str {
        match self {
            Protocol::Native => "native",
            Protocol::Kafka => "kafka",
        }
    }
}

/// Request kinds counted per protocol: native API keys and Kafka API keys below this.
const KINDS_MAX: usize = 64;

/// What one shard counts. Written by its shard only (see the module's comment).
#[derive(Debug)]
pub struct ShardMetrics {
    pub shard: usize,
    /// Requests by protocol and API key (native `ApiKey`, Kafka API key).
    requests: [Box<[Counter]>; 2],
    /// Failed answers (whole requests or single partitions) by native `ErrorCode`.
    errors: Box<[Counter]>,
    /// Frames that could not be decoded at all, which close their connection.
    pub malformed_frames: [Counter; 2],
    pub received_bytes: [Counter; 2],
    pub sent_bytes: [Counter; 2],
    pub connections: [Gauge; 2],
    pub connections_accepted: [Counter; 2],
    /// Partition requests sent on to the shard owning the partition.
    pub forwarded_requests: Counter,
    /// Produce requests, from decoded to answered (durable under the topic's policy).
    pub produce_latency: [Histogram; 2],
    /// Fetch requests, from decoded to answered (long-poll waits included).
    pub fetch_latency: [Histogram; 2],
    /// A log's group write, submitted to completed.
    pub append_latency: Histogram,
    /// A durability round (one fdatasync, or one syncfs for several segments).
    pub sync_latency: Histogram,
    /// Segments made durable per durability round (the group commit's size).
    pub sync_round_segments: Histogram,
    pub appended_bytes: Counter,
    pub appended_batches: Counter,
    pub tail_cache_hits: Counter,
    pub tail_cache_misses: Counter,
    /// Wake-ups of the shard's reactor probe that came late by more than
    /// `STALL_THRESHOLD` (a task held the core, or the thread was descheduled).
    pub reactor_stalls: Counter,
    /// How late the reactor probe woke, each `PROBE_INTERVAL`.
    pub reactor_lag: Histogram,
    /// Gauges, copied once a second by the shard (the lock is held only to swap or
    /// clone the pointer, so neither side waits on the other's work).
    pub snapshot: Mutex<Arc<Snapshot>>,
}

/// How often the reactor probe wakes, and how late counts as a stall.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);
pub const STALL_THRESHOLD: Duration = Duration::from_millis(25);

impl ShardMetrics {
    pub fn new(shard: usize) -> ShardMetrics {
        let counters = |count: usize| (0..count).map(|_| Counter::default()).collect();
        let latency = || Histogram::new(&LATENCY_BOUNDS);
        ShardMetrics {
            shard,
            requests: [counters(KINDS_MAX), counters(KINDS_MAX)],
            errors: counters(KINDS_MAX),
            malformed_frames: Default::default(),
            received_bytes: Default::default(),
            sent_bytes: Default::default(),
            connections: Default::default(),
            connections_accepted: Default::default(),
            forwarded_requests: Counter::default(),
            produce_latency: [latency(), latency()],
            fetch_latency: [latency(), latency()],
            append_latency: latency(),
            sync_latency: latency(),
            sync_round_segments: Histogram::new(&ROUND_SIZE_BOUNDS),
            appended_bytes: Counter::default(),
            appended_batches: Counter::default(),
            tail_cache_hits: Counter::default(),
            tail_cache_misses: Counter::default(),
            reactor_stalls: Counter::default(),
            reactor_lag: latency(),
            snapshot: Mutex::new(Arc::new(Snapshot::default())),
        }
    }

    /// Counts a request of API key `key` (of `protocol`'s numbering).
    pub fn request(&self, protocol: Protocol, key: usize) {
        if let Some(counter) = self.requests[protocol as usize].get(key) {
            counter.inc();
        }
    }

    /// Counts a failed answer (a request's or one partition's).
    pub fn error(&self, code: ErrorCode) {
        if code != ErrorCode::None
            && let Some(counter) = self.errors.get(code as usize)
        {
            counter.inc();
        }
    }

    /// Every request kind counted so far: (protocol, kind label, count).
    pub fn requests(&self) -> Vec<(Protocol, &'static str, u64)> {
        let mut counted = Vec::new();
        for protocol in Protocol::ALL {
            for (key, counter) in self.requests[protocol as usize].iter().enumerate() {
                let count = counter.get();
                if count == 0 {
                    continue;
                }
                let kind = match protocol {
                    Protocol::Native => ApiKey::from_u16(key as u16).map_or("unknown", native_kind),
                    Protocol::Kafka => crate::kafka::api::name(key as i16),
                };
                counted.push((protocol, kind, count));
            }
        }
        counted
    }

    /// Every error code counted so far, by name.
    pub fn errors(&self) -> Vec<(String, u64)> {
        self.errors
            .iter()
            .enumerate()
            .filter(|(_, counter)| counter.get() > 0)
            .map(|(code, counter)| {
                let name = ErrorCode::from_u16(code as u16).map_or_else(
                    |_| code.to_string(),
                    |code| snake_case(&format!("{code:?}")),
                );
                (name, counter.get())
            })
            .collect()
    }
}

/// A native request kind's label: its API key's name in snake case, the names Kafka's
/// kinds use where they mean the same.
fn native_kind(key: ApiKey) -> &'static str {
    match key {
        ApiKey::ApiVersions => "api_versions",
        ApiKey::Metadata => "metadata",
        ApiKey::CreateTopics => "create_topics",
        ApiKey::DeleteTopics => "delete_topics",
        ApiKey::DescribeTopics => "describe_topics",
        ApiKey::Produce => "produce",
        ApiKey::Fetch => "fetch",
        ApiKey::ListOffsets => "list_offsets",
        ApiKey::JoinGroup => "join_group",
        ApiKey::SyncGroup => "sync_group",
        ApiKey::Heartbeat => "heartbeat",
        ApiKey::LeaveGroup => "leave_group",
        ApiKey::OffsetCommit => "offset_commit",
        ApiKey::OffsetFetch => "offset_fetch",
        ApiKey::ListGroups => "list_groups",
        ApiKey::DescribeGroup => "describe_groups",
        ApiKey::DeleteGroup => "delete_groups",
        ApiKey::DescribeBroker => "describe_broker",
        ApiKey::CreatePartitions => "create_partitions",
        ApiKey::ClusterRpc => "cluster_rpc",
        ApiKey::DescribeCluster => "describe_cluster",
        ApiKey::ReplicaFetch => "replica_fetch",
    }
}

/// `NotEnoughReplicas` -> `not_enough_replicas`.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (index, character) in name.chars().enumerate() {
        if character.is_ascii_uppercase() {
            if index > 0 {
                out.push('_');
            }
            out.push(character.to_ascii_lowercase());
        } else {
            out.push(character);
        }
    }
    out
}

/// A shard's gauges as of its last copy.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub partitions: Vec<PartitionSample>,
    pub groups: Vec<GroupSample>,
    /// Memory pools: (name, bytes in use, budget).
    pub memory: Vec<(&'static str, u64, u64)>,
    pub segment_files_open: u64,
    pub segment_files_max: u64,
    pub long_poll_waits: u64,
}

/// One partition replica this shard holds.
#[derive(Debug, Clone)]
pub struct PartitionSample {
    pub topic: String,
    pub partition: u32,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    pub high_watermark: i64,
    pub size_bytes: u64,
    /// Whether this node leads it (always, for a broker on its own).
    pub leader: bool,
    /// Its replicas and those in sync, as the cluster's metadata has them (1 and 1 for a
    /// broker on its own).
    pub replicas: u32,
    pub in_sync_replicas: u32,
}

/// One committed offset of a group this shard coordinates.
#[derive(Debug, Clone)]
pub struct GroupSample {
    pub group: String,
    pub topic: String,
    pub partition: u32,
    pub committed_offset: i64,
}

thread_local! {
    static LOCAL: RefCell<Arc<ShardMetrics>> = RefCell::new(Arc::new(ShardMetrics::new(0)));
}

/// Makes `metrics` the ones this thread counts into (a shard, when it starts).
pub fn install(metrics: Arc<ShardMetrics>) {
    LOCAL.with(|local| *local.borrow_mut() = metrics);
}

/// This thread's metrics.
pub fn current() -> Arc<ShardMetrics> {
    LOCAL.with(|local| local.borrow().clone())
}

/// Counts into this thread's metrics.
pub fn with<R>(count: impl FnOnce(&ShardMetrics) -> R) -> R {
    LOCAL.with(|local| count(&local.borrow()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_hold_values_up_to_their_bound() {
        let histogram = Histogram::new(&ROUND_SIZE_BOUNDS);
        for value in [1.0, 1.0, 2.0, 3.0, 5000.0] {
            histogram.observe(value);
        }
        let (sum, count, buckets) = histogram.read();
        assert_eq!(sum, 5007.0);
        assert_eq!(count, 5);
        assert_eq!(buckets[0], (1.0, 2));
        assert_eq!(buckets[1], (2.0, 1));
        assert_eq!(buckets[2], (4.0, 1));
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 1)));
        assert_eq!(buckets.len(), ROUND_SIZE_BOUNDS.len() + 1);
    }

    #[test]
    fn counts_requests_and_errors_by_name() {
        let metrics = ShardMetrics::new(3);
        metrics.request(Protocol::Native, ApiKey::Produce as usize);
        metrics.request(Protocol::Native, ApiKey::Produce as usize);
        metrics.request(Protocol::Kafka, 1);
        metrics.error(ErrorCode::NotEnoughReplicas);
        metrics.error(ErrorCode::None);
        assert_eq!(
            metrics.requests(),
            vec![
                (Protocol::Native, "produce", 2),
                (Protocol::Kafka, "fetch", 1)
            ]
        );
        assert_eq!(
            metrics.errors(),
            vec![("not_enough_replicas".to_string(), 1)]
        );
    }
}
