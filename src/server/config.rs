//! Server configuration: embedded defaults, an optional TOML file, and flags over both.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::protocol::FRAME_BYTES_MAX_DEFAULT;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// The address every shard accepts on (SO_REUSEPORT spreads connections); shard `i`
    /// also accepts on port `listen.port() + 1 + i`, which metadata advertises.
    pub listen: SocketAddr,
    /// Where Kafka clients connect (every shard accepts there); shard `i` also accepts
    /// Kafka connections on `port + 1 + i`, which Kafka metadata advertises as broker `i`.
    /// `None`: no Kafka listener.
    pub kafka_listen: Option<SocketAddr>,
    /// The host Kafka metadata tells clients to connect to; `None`: the Kafka listener's
    /// address, or this machine's host name when that address is unspecified (0.0.0.0).
    pub kafka_advertised_host: Option<String>,
    /// Where Prometheus scrapes `/metrics` and probes `/healthz` and `/readyz`; `None`:
    /// no metrics listener.
    pub metrics_listen: Option<SocketAddr>,
    /// Partitions (and group offsets) given series of their own in `/metrics`, at most;
    /// the rest are left out and counted (`spate_partition_series_omitted`).
    pub metrics_partition_series_max: usize,
    pub shards: usize,
    /// Cores to pin shards to, one per shard; `None` spreads them over all cores.
    pub cpus: Option<Vec<usize>>,
    /// Create a topic on its first use: a produce, or a Kafka metadata request that asks
    /// for it (on by default, as Kafka's `auto.create.topics.enable`).
    pub auto_create_topics: bool,
    /// Partitions of an auto-created topic.
    pub default_partitions: u32,
    /// Largest request frame accepted.
    pub frame_bytes_max: usize,
    /// Connections one shard serves at once; more are refused.
    pub connections_max_per_shard: usize,
    /// Requests of one connection being worked on at once; reading stops beyond it.
    pub in_flight_max_per_connection: usize,
    /// Bytes one connection may hold in requests being worked on and answers not yet
    /// written (a fetch counts the records it may return); reading stops beyond it.
    pub buffered_bytes_max_per_connection: usize,
    /// A connection with no request for this long is closed (Kafka's
    /// `connections.max.idle.ms`, default 10 minutes).
    pub connections_max_idle_ms: u64,
    /// Partitions one shard may own. Each open partition holds file descriptors and
    /// buffers, so a create that would pass this is refused before anything is written.
    pub partitions_max_per_shard: u32,
    /// How often each shard applies retention to its partitions (Kafka's
    /// `log.retention.check.interval.ms`, default 5 minutes).
    pub retention_check_interval_ms: u64,
    /// Session timeouts a group member may ask for (Kafka's
    /// `group.min.session.timeout.ms` and `group.max.session.timeout.ms`).
    pub group_min_session_timeout_ms: u32,
    pub group_max_session_timeout_ms: u32,
    /// An offsets log is compacted once it is larger than this.
    pub offsets_compact_bytes: u64,
    /// The most a topic's `tail.cache.bytes` may be: any client that may create a topic
    /// chooses it, and each of the topic's partitions keeps that much in memory.
    pub tail_cache_bytes_max: u64,
    /// Memory the broker may use, split evenly between its shards. Each shard's tail
    /// caches together take at most half of its share (`TAIL_CACHE_SHARE`), its oldest
    /// cached batches dropped first; its partitions' read-ahead an eighth
    /// (`READ_AHEAD_SHARE`; past it, disk reads are not read ahead); the requests in
    /// flight on all its connections the rest (new requests wait).
    pub memory_max: u64,
    /// Copies of each partition of an auto-created topic, or of one created without a
    /// replication factor by a Kafka client (Kafka's `default.replication.factor`).
    pub default_replication_factor: u16,
    /// A follower that has not caught up with its leader for this long leaves the
    /// partition's in-sync replicas (Kafka's `replica.lag.time.max.ms`).
    pub replica_lag_time_max_ms: u64,
    /// This broker's place in a cluster (`--node-id`, `--cluster`); `None`: a broker on
    /// its own.
    pub cluster: Option<ClusterConfig>,
}

/// A node of a cluster: its id, and every voter of the metadata Raft group with its
/// native bootstrap address (this node's own included; it is where the node listens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub node_id: u64,
    pub voters: std::collections::BTreeMap<u64, SocketAddr>,
}

/// Parses `--cluster`: `ID@HOST:PORT` entries separated by commas, e.g.
/// `1@127.0.0.1:7070,2@127.0.0.2:7070,3@127.0.0.3:7070`.
pub fn parse_voters(text: &str) -> Result<std::collections::BTreeMap<u64, SocketAddr>, String> {
    let mut voters = std::collections::BTreeMap::new();
    for entry in text
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
    {
        let (id, address) = entry
            .split_once('@')
            .ok_or_else(|| format!("--cluster entry {entry:?} is not ID@HOST:PORT"))?;
        let id: u64 = id
            .parse()
            .ok()
            .filter(|id| (1..=255).contains(id))
            .ok_or_else(|| format!("--cluster entry {entry:?}: a node id is 1 to 255"))?;
        let address =
            parse_listen(address).map_err(|error| format!("--cluster entry {entry:?}: {error}"))?;
        if address.port() == 0 {
            return Err(format!("--cluster entry {entry:?} needs a port"));
        }
        if voters.insert(id, address).is_some() {
            return Err(format!("--cluster names node {id} twice"));
        }
    }
    if voters.is_empty() {
        return Err("--cluster names no node".to_string());
    }
    Ok(voters)
}

/// The part of a shard's memory share its tail caches may hold together.
pub const TAIL_CACHE_SHARE: f64 = 0.5;

/// The part of a shard's memory share its partitions may hold read ahead together.
pub const READ_AHEAD_SHARE: f64 = 0.125;

/// `--memory-max`'s default: half of the machine's memory (the other half for the
/// operating system, other programs and Spate's own fixed costs), or 2 GiB where the
/// machine's memory cannot be read.
pub fn default_memory_max() -> u64 {
    machine_memory().map_or(2 << 30, |bytes| bytes / 2)
}

/// The machine's memory (MemTotal), where /proc/meminfo can be read.
pub fn machine_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl ServerConfig {
    /// One shard's share of `memory_max`.
    pub fn memory_per_shard(&self) -> u64 {
        self.memory_max / self.shards.max(1) as u64
    }

    /// The bytes of requests in flight one shard's connections may hold together: the
    /// part of its share that the tail caches and the read-ahead do not take.
    pub fn request_budget_per_shard(&self) -> u64 {
        self.memory_per_shard()
            - self.tail_cache_budget_per_shard()
            - self.read_ahead_budget_per_shard()
    }

    /// The bytes one shard's partitions may hold read ahead together.
    pub fn read_ahead_budget_per_shard(&self) -> u64 {
        (self.memory_per_shard() as f64 * READ_AHEAD_SHARE) as u64
    }

    /// The bytes one shard's tail caches may hold together.
    pub fn tail_cache_budget_per_shard(&self) -> u64 {
        (self.memory_per_shard() as f64 * TAIL_CACHE_SHARE) as u64
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("./spate-data"),
            listen: "127.0.0.1:7070".parse().expect("a valid address"),
            kafka_listen: Some("127.0.0.1:9092".parse().expect("a valid address")),
            kafka_advertised_host: None,
            metrics_listen: Some("127.0.0.1:9644".parse().expect("a valid address")),
            metrics_partition_series_max: 1000,
            shards: std::thread::available_parallelism().map_or(1, |count| count.get()),
            cpus: None,
            auto_create_topics: true,
            default_partitions: 1,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            connections_max_per_shard: 1024,
            in_flight_max_per_connection: 64,
            buffered_bytes_max_per_connection: 64 << 20,
            connections_max_idle_ms: 600_000,
            partitions_max_per_shard: 10_000,
            retention_check_interval_ms: 300_000,
            group_min_session_timeout_ms: 1_000,
            group_max_session_timeout_ms: 300_000,
            offsets_compact_bytes: 16 << 20,
            tail_cache_bytes_max: 64 << 20,
            memory_max: default_memory_max(),
            default_replication_factor: 1,
            replica_lag_time_max_ms: 10_000,
            cluster: None,
        }
    }
}

/// The settings a user may give, each optional: the same struct is read from the TOML file
/// (kebab-case keys) and from `spate serve`'s flags, so the two cannot drift apart. Flags
/// are applied after the file, so they win.
#[derive(Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// Where topics and their partitions are stored [default: ./spate-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address of the shared listener; shard i also listens on port+1+i
    /// [default: 127.0.0.1:7070].
    #[arg(long, value_parser = parse_listen)]
    #[serde(default, deserialize_with = "listen_from_text")]
    pub listen: Option<SocketAddr>,
    /// Address Kafka clients connect to, or `none`; shard i also listens on port+1+i
    /// [default: 127.0.0.1:9092].
    #[arg(long, value_parser = parse_kafka_listen)]
    #[serde(default, deserialize_with = "kafka_listen_from_text")]
    pub kafka_listen: Option<KafkaListen>,
    /// Host name Kafka clients are told to connect to [default: the Kafka listener's
    /// address, or the host name if that is 0.0.0.0].
    #[arg(long)]
    pub kafka_advertised_host: Option<String>,
    /// Address serving Prometheus metrics (/metrics) and health checks (/healthz,
    /// /readyz), or `none` [default: 127.0.0.1:9644].
    #[arg(long, value_parser = parse_metrics_listen)]
    #[serde(default, deserialize_with = "metrics_listen_from_text")]
    pub metrics_listen: Option<MetricsListen>,
    /// Partitions (and group offsets) shown with series of their own in /metrics, at
    /// most [default: 1000].
    #[arg(long)]
    pub metrics_partition_series_max: Option<usize>,
    /// Number of shards, one pinned core each [default: one per core].
    #[arg(long)]
    pub shards: Option<usize>,
    /// Cores to pin the shards to, e.g. 0,2,4-6 (one per shard; sets --shards to match).
    #[arg(long, value_parser = parse_core_list)]
    #[serde(default, deserialize_with = "cpus_from_text")]
    pub cpus: Option<CoreList>,
    /// Create a topic on its first produce or Kafka metadata request [default: true].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub auto_create_topics: Option<bool>,
    /// Partitions of an auto-created topic [default: 1].
    #[arg(long)]
    pub default_partitions: Option<u32>,
    /// Largest request frame accepted, in bytes [default: 8 MiB].
    #[arg(long)]
    pub frame_bytes_max: Option<usize>,
    /// Connections one shard serves at once; more are refused [default: 1024].
    #[arg(long)]
    pub connections_max_per_shard: Option<usize>,
    /// Requests of one connection worked on at once [default: 64].
    #[arg(long)]
    pub in_flight_max_per_connection: Option<usize>,
    /// Bytes of requests and unwritten answers one connection may hold [default: 64 MiB].
    #[arg(long)]
    pub buffered_bytes_max_per_connection: Option<usize>,
    /// A connection that sends nothing for this long is closed [default: 600000].
    #[arg(long)]
    pub connections_max_idle_ms: Option<u64>,
    /// Partitions one shard may own; creating more is refused [default: 10000].
    #[arg(long)]
    pub partitions_max_per_shard: Option<u32>,
    /// How often retention runs, in ms [default: 300000].
    #[arg(long)]
    pub retention_check_interval_ms: Option<u64>,
    /// Shortest session timeout a group member may ask for, in ms [default: 1000].
    #[arg(long)]
    pub group_min_session_timeout_ms: Option<u32>,
    /// Longest session timeout a group member may ask for, in ms [default: 300000].
    #[arg(long)]
    pub group_max_session_timeout_ms: Option<u32>,
    /// Compact an offsets log once it is larger than this, in bytes [default: 16 MiB].
    #[arg(long)]
    pub offsets_compact_bytes: Option<u64>,
    /// The most a topic's tail.cache.bytes may be, in bytes; creating a topic with more is
    /// refused [default: 64 MiB].
    #[arg(long)]
    pub tail_cache_bytes_max: Option<u64>,
    /// Memory the broker may use, e.g. 512MiB or 4GiB, split evenly between shards; each
    /// shard's tail caches hold at most half of its share, its requests in flight the
    /// other half [default: half of the machine's memory].
    #[arg(long, value_parser = parse_size)]
    #[serde(default, deserialize_with = "size_from_text")]
    pub memory_max: Option<u64>,
    /// Copies of each partition of an auto-created topic [default: 1].
    #[arg(long)]
    pub default_replication_factor: Option<u16>,
    /// A follower not caught up for this long leaves the in-sync replicas, in ms
    /// [default: 10000].
    #[arg(long)]
    pub replica_lag_time_max_ms: Option<u64>,
    /// This node's id in --cluster (1 to 255).
    #[arg(long, requires = "cluster")]
    pub node_id: Option<u64>,
    /// The cluster's voters, each node's id and native address, e.g.
    /// 1@127.0.0.1:7070,2@127.0.0.2:7070,3@127.0.0.3:7070. This node listens at its own
    /// (--listen defaults to it); without --cluster the broker runs on its own.
    #[arg(long, requires = "node_id", value_parser = parse_voter_list)]
    #[serde(default, deserialize_with = "voters_from_text")]
    pub cluster: Option<VoterList>,
}

/// A size in bytes: a plain number, or with a unit: KiB, MiB, GiB, TiB (powers of 1024),
/// KB, MB, GB, TB (powers of 1000); K, M, G, T are taken as the binary units.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let invalid = || format!("invalid size {text:?}: expected e.g. 512MiB, 4GiB or 1073741824");
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number.parse().map_err(|_| invalid())?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(invalid()),
    };
    let bytes = number * scale as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(invalid());
    }
    Ok(bytes as u64)
}

fn size_from_text<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(deserializer)? {
        Size::Bytes(bytes) => Ok(Some(bytes)),
        Size::Text(text) => parse_size(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// A parsed `--cluster` list (a newtype, so clap takes it as one value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoterList(pub std::collections::BTreeMap<u64, SocketAddr>);

fn parse_voter_list(value: &str) -> Result<VoterList, String> {
    parse_voters(value).map(VoterList)
}

fn voters_from_text<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<VoterList>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_voter_list(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A parsed `--cpus` list (a newtype, so clap takes it as one value, not many).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreList(pub Vec<usize>);

fn parse_core_list(value: &str) -> Result<CoreList, String> {
    parse_cpus(value).map(CoreList)
}

fn listen_from_text<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_listen(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn cpus_from_text<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<CoreList>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_core_list(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

impl Settings {
    pub fn read(path: &Path) -> Result<Settings, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read config file {}: {error}", path.display()))?;
        toml::from_str(&text)
            .map_err(|error| format!("invalid config file {}: {error}", path.display()))
    }

    /// Applies the settings given over `config`.
    pub fn apply(self, config: &mut ServerConfig) {
        fn set<T>(target: &mut T, value: Option<T>) {
            if let Some(value) = value {
                *target = value;
            }
        }
        set(&mut config.data_dir, self.data_dir);
        set(&mut config.listen, self.listen);
        if let Some(KafkaListen(address)) = self.kafka_listen {
            config.kafka_listen = address;
        }
        if let Some(host) = self.kafka_advertised_host {
            config.kafka_advertised_host = Some(host);
        }
        if let Some(MetricsListen(address)) = self.metrics_listen {
            config.metrics_listen = address;
        }
        set(
            &mut config.metrics_partition_series_max,
            self.metrics_partition_series_max,
        );
        set(&mut config.shards, self.shards);
        if let Some(CoreList(cpus)) = self.cpus {
            config.shards = self.shards.unwrap_or(cpus.len());
            config.cpus = Some(cpus);
        }
        set(&mut config.auto_create_topics, self.auto_create_topics);
        set(&mut config.default_partitions, self.default_partitions);
        set(&mut config.frame_bytes_max, self.frame_bytes_max);
        set(
            &mut config.connections_max_per_shard,
            self.connections_max_per_shard,
        );
        set(
            &mut config.in_flight_max_per_connection,
            self.in_flight_max_per_connection,
        );
        set(
            &mut config.buffered_bytes_max_per_connection,
            self.buffered_bytes_max_per_connection,
        );
        set(
            &mut config.connections_max_idle_ms,
            self.connections_max_idle_ms,
        );
        set(
            &mut config.partitions_max_per_shard,
            self.partitions_max_per_shard,
        );
        set(
            &mut config.retention_check_interval_ms,
            self.retention_check_interval_ms,
        );
        set(
            &mut config.group_min_session_timeout_ms,
            self.group_min_session_timeout_ms,
        );
        set(
            &mut config.group_max_session_timeout_ms,
            self.group_max_session_timeout_ms,
        );
        set(
            &mut config.offsets_compact_bytes,
            self.offsets_compact_bytes,
        );
        set(&mut config.tail_cache_bytes_max, self.tail_cache_bytes_max);
        set(&mut config.memory_max, self.memory_max);
        set(
            &mut config.default_replication_factor,
            self.default_replication_factor,
        );
        set(
            &mut config.replica_lag_time_max_ms,
            self.replica_lag_time_max_ms,
        );
        if let (Some(node_id), Some(VoterList(voters))) = (self.node_id, self.cluster) {
            if let Some(own) = voters.get(&node_id) {
                // A node listens at its own address unless told otherwise, and Kafka
                // clients reach it on the same host.
                if self.listen.is_none() {
                    config.listen = *own;
                }
                if self.kafka_listen.is_none()
                    && let Some(kafka) = &mut config.kafka_listen
                {
                    kafka.set_ip(own.ip());
                }
                if self.metrics_listen.is_none()
                    && let Some(metrics) = &mut config.metrics_listen
                {
                    metrics.set_ip(own.ip());
                }
            }
            config.cluster = Some(ClusterConfig { node_id, voters });
        }
    }
}

impl ServerConfig {
    /// Checks the settings against each other and the machine.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(cluster) = &self.cluster {
            let Some(own) = cluster.voters.get(&cluster.node_id) else {
                return Err(format!(
                    "--node-id {} is not in --cluster (give every voter as ID@HOST:PORT, this node among them)",
                    cluster.node_id
                ));
            };
            if *own != self.listen {
                return Err(format!(
                    "--listen {} differs from node {}'s address {own} in --cluster: the other nodes reach it there",
                    self.listen, cluster.node_id
                ));
            }
        }
        if self.default_replication_factor == 0 {
            return Err("default-replication-factor must be at least 1".to_string());
        }
        if self.shards == 0 || self.shards > 1024 {
            return Err(format!(
                "--shards must be between 1 and 1024, not {}",
                self.shards
            ));
        }
        // Below this a shard cannot cache a handful of full batches.
        const MEMORY_PER_SHARD_MIN: u64 = 16 << 20;
        if self.memory_per_shard() < MEMORY_PER_SHARD_MIN {
            return Err(format!(
                "--memory-max {} bytes leaves each of the {} shards less than 16 MiB: give at least {} bytes, or fewer shards",
                self.memory_max,
                self.shards,
                MEMORY_PER_SHARD_MIN * self.shards as u64
            ));
        }
        if let Some(cpus) = &self.cpus {
            if cpus.len() != self.shards {
                return Err(format!(
                    "--cpus lists {} cores for {} shards: give one core per shard",
                    cpus.len(),
                    self.shards
                ));
            }
            let available = core_count();
            if let Some(cpu) = cpus.iter().find(|&&cpu| cpu >= available) {
                return Err(format!(
                    "--cpus names core {cpu}, but this machine has cores 0 to {}",
                    available - 1
                ));
            }
        }
        if self.listen.port() != 0
            && usize::from(self.listen.port()) + self.shards > usize::from(u16::MAX)
        {
            return Err(format!(
                "--listen port {} leaves no room for {} shard ports after it",
                self.listen.port(),
                self.shards
            ));
        }
        if let Some(kafka) = self.kafka_listen {
            if kafka.port() != 0 && usize::from(kafka.port()) + self.shards > usize::from(u16::MAX)
            {
                return Err(format!(
                    "--kafka-listen port {} leaves no room for {} shard ports after it",
                    kafka.port(),
                    self.shards
                ));
            }
            let ports = |base: u16| base..=base.saturating_add(self.shards as u16);
            let (native, kafka_ports) = (ports(self.listen.port()), ports(kafka.port()));
            if self.listen.port() != 0
                && kafka.port() != 0
                && native.start() <= kafka_ports.end()
                && kafka_ports.start() <= native.end()
            {
                return Err(format!(
                    "--listen ports {}-{} and --kafka-listen ports {}-{} overlap: each needs one port and one per shard after it",
                    native.start(),
                    native.end(),
                    kafka_ports.start(),
                    kafka_ports.end()
                ));
            }
        }
        if let Some(metrics) = self.metrics_listen
            && metrics.port() != 0
        {
            let taken = |base: u16| {
                base != 0
                    && (base..=base.saturating_add(self.shards as u16)).contains(&metrics.port())
            };
            if taken(self.listen.port())
                || self.kafka_listen.is_some_and(|kafka| taken(kafka.port()))
            {
                return Err(format!(
                    "--metrics-listen port {} is one of the --listen or --kafka-listen ports (each takes one port and one per shard after it)",
                    metrics.port()
                ));
            }
        }
        if let Some(host) = &self.kafka_advertised_host
            && (host.is_empty() || host.len() > 255 || host.contains(char::is_whitespace))
        {
            return Err(format!(
                "--kafka-advertised-host {host:?} is not a host name or address"
            ));
        }
        if self.frame_bytes_max < 1024 {
            return Err("frame-bytes-max must be at least 1024".to_string());
        }
        if self.default_partitions == 0 {
            return Err("default-partitions must be at least 1".to_string());
        }
        if self.retention_check_interval_ms == 0 {
            return Err("retention-check-interval-ms must be at least 1".to_string());
        }
        if self.connections_max_per_shard == 0 || self.in_flight_max_per_connection == 0 {
            return Err("connection and in-flight limits must be at least 1".to_string());
        }
        if self.buffered_bytes_max_per_connection < self.frame_bytes_max {
            return Err(format!(
                "buffered-bytes-max-per-connection ({}) must be at least frame-bytes-max ({}): one request must fit",
                self.buffered_bytes_max_per_connection, self.frame_bytes_max
            ));
        }
        if self.connections_max_idle_ms == 0 {
            return Err("connections-max-idle-ms must be at least 1".to_string());
        }
        if self.group_min_session_timeout_ms == 0
            || self.group_min_session_timeout_ms > self.group_max_session_timeout_ms
        {
            return Err(format!(
                "group-min-session-timeout-ms ({}) must be at least 1 and at most group-max-session-timeout-ms ({})",
                self.group_min_session_timeout_ms, self.group_max_session_timeout_ms
            ));
        }
        if self.partitions_max_per_shard == 0 {
            return Err("partitions-max-per-shard must be at least 1".to_string());
        }
        Ok(())
    }

    /// Port of shard `shard`'s own listener.
    pub fn shard_port(&self, shard: usize) -> u16 {
        self.listen.port() + 1 + shard as u16
    }

    /// Port of shard `shard`'s own Kafka listener (advertised as Kafka broker `shard`).
    pub fn kafka_shard_port(&self, shard: usize) -> Option<u16> {
        self.kafka_listen
            .map(|address| address.port() + 1 + shard as u16)
    }

    /// The host Kafka metadata advertises.
    pub fn kafka_host(&self) -> String {
        if let Some(host) = &self.kafka_advertised_host {
            return host.clone();
        }
        match self.kafka_listen {
            Some(address) if !address.ip().is_unspecified() => address.ip().to_string(),
            _ => host_name().unwrap_or_else(|| "localhost".to_string()),
        }
    }
}

/// This machine's host name.
fn host_name() -> Option<String> {
    let mut buffer = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer we own.
    let done = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } == 0;
    let end = buffer.iter().position(|&byte| byte == 0)?;
    done.then(|| String::from_utf8_lossy(&buffer[..end]).into_owned())
        .filter(|name| !name.is_empty())
}

/// `--kafka-listen`: an address, or `none` (no Kafka listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KafkaListen(pub Option<SocketAddr>);

/// `--metrics-listen`: an address, or `none` (no metrics listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

/// An address, or `none`.
fn parse_optional_listen(
    value: &str,
    what: &str,
    example: &str,
) -> Result<Option<SocketAddr>, String> {
    if value.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| {
        format!(
            "invalid {what} listen address {value:?}: expected HOST:PORT (e.g. {example}) or none"
        )
    })
}

pub fn parse_kafka_listen(value: &str) -> Result<KafkaListen, String> {
    parse_optional_listen(value, "Kafka", "127.0.0.1:9092").map(KafkaListen)
}

pub fn parse_metrics_listen(value: &str) -> Result<MetricsListen, String> {
    parse_optional_listen(value, "metrics", "127.0.0.1:9644").map(MetricsListen)
}

fn kafka_listen_from_text<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<KafkaListen>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_kafka_listen(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn metrics_listen_from_text<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<MetricsListen>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_metrics_listen(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn core_count() -> usize {
    std::thread::available_parallelism().map_or(1, |count| count.get())
}

pub fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|_| {
        format!("invalid listen address {value:?}: expected HOST:PORT, e.g. 127.0.0.1:7070")
    })
}

/// `0,2,4-6` style core lists.
pub fn parse_cpus(value: &str) -> Result<Vec<usize>, String> {
    let invalid = || format!("invalid core list {value:?}: expected e.g. 0,2,4-6");
    let mut cpus = Vec::new();
    for part in value.split(',').map(str::trim) {
        match part.split_once('-') {
            Some((first, last)) => {
                let first: usize = first.trim().parse().map_err(|_| invalid())?;
                let last: usize = last.trim().parse().map_err(|_| invalid())?;
                if first > last {
                    return Err(invalid());
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(part.parse().map_err(|_| invalid())?),
        }
    }
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_flags_and_checks() {
        assert_eq!(parse_cpus("0,2,4-6").unwrap(), vec![0, 2, 4, 5, 6]);
        assert!(parse_cpus("1-").is_err());
        assert!(parse_listen("localhost").is_err());

        let file: Settings =
            toml::from_str("shards = 1\nlisten = \"127.0.0.1:9000\"\nauto-create-topics = true")
                .unwrap();
        let mut config = ServerConfig::default();
        file.apply(&mut config);
        assert_eq!(config.shards, 1);
        assert_eq!(config.shard_port(0), 9001);
        assert!(config.auto_create_topics);
        config.validate().unwrap();
        assert!(
            toml::from_str::<Settings>("shard = 1").is_err(),
            "unknown keys are refused"
        );
        let error = toml::from_str::<Settings>("listen = \"nowhere\"").unwrap_err();
        assert!(error.to_string().contains("expected HOST:PORT"), "{error}");
        let file: Settings = toml::from_str("cpus = \"0-1\"").unwrap();
        let mut config = ServerConfig::default();
        file.apply(&mut config);
        assert_eq!((config.shards, config.cpus), (2, Some(vec![0, 1])));

        let bad = ServerConfig {
            shards: 2,
            cpus: Some(vec![0]),
            ..ServerConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("one core per shard"));
        let bad = ServerConfig {
            shards: 0,
            ..ServerConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("4g").unwrap(), 4 << 30);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        for bad in ["", "lots", "-1GiB", "0", "12 parsecs", "1e3"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        let config = ServerConfig {
            memory_max: 4 << 30,
            shards: 2,
            ..ServerConfig::default()
        };
        assert_eq!(config.memory_per_shard(), 2 << 30);
        assert_eq!(config.tail_cache_budget_per_shard(), 1 << 30);
        let starved = ServerConfig {
            memory_max: 8 << 20,
            ..ServerConfig::default()
        };
        assert!(starved.validate().unwrap_err().contains("--memory-max"));
    }
}
