//! The network server: one glommio executor pinned per shard. Each shard owns its
//! partitions, accepts connections on the shared port (SO_REUSEPORT) and on its own port,
//! and reaches other shards only through a mesh of glommio channels.

mod admin;
mod cluster;
mod config;
mod connection;
mod handlers;
mod kafka;
mod peer;
mod probe;
mod replication;
mod shard;

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};

pub use config::{CoreList, ServerConfig, Settings, parse_cpus, parse_listen};
use connection::Door;
use shard::{Shard, ShardMessage};

use crate::broker::metadata::ClusterMetadata;
use crate::cluster::node::{ClusterHandle, ClusterNode, NodeConfig};
use crate::cluster::state::BrokerInfo;

/// Messages a shard may queue for another before the sender waits.
const MESH_CHANNEL_CAPACITY: usize = 1024;

/// How long a stopping broker waits for its connections to finish the requests they had
/// started before it closes the logs anyway.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

/// Runs the broker until `shutdown` is set, then lets every log finish its queued appends
/// and sync, and returns (the shard threads are left to the process's exit). Fails with one clear message when the data
/// directory or a port cannot be used.
pub fn serve(mut config: ServerConfig, shutdown: Arc<AtomicBool>) -> Result<(), String> {
    config.validate()?;
    if config.listen.port() == 0 {
        config
            .listen
            .set_port(free_port_range(config.listen.ip(), config.shards)?);
    }
    if let Some(kafka) = &mut config.kafka_listen
        && kafka.port() == 0
    {
        kafka.set_port(free_port_range(kafka.ip(), config.shards)?);
    }
    // Every shard works from the absolute path: glommio's directory opens on a shard
    // thread failed with EBADF for a relative one (`./spate-data`, the default).
    let given = config.data_dir.clone();
    let unusable =
        |error: std::io::Error| format!("cannot use data directory {}: {error}", given.display());
    config.data_dir = std::path::absolute(&config.data_dir).map_err(unusable)?;
    let data_dir = &config.data_dir;
    prepare_data_dir(data_dir).map_err(unusable)?;
    let _lock =
        crate::storage::DirectoryLock::acquire(data_dir).map_err(|error| error.to_string())?;
    let metadata = ClusterMetadata::load(data_dir).map_err(|error| error.to_string())?;
    let producer_ids_start = crate::broker::producer_ids::load(data_dir)?;
    raise_descriptor_limit();
    // Probe every port first: the listeners set SO_REUSEPORT, which would let a second
    // broker share a port silently.
    for address in listen_addresses(&config) {
        port_is_free(address)?;
    }
    // The metrics port is taken now, so that a port in use stops the start before
    // anything on disk changes or a cluster node starts.
    let metrics_listener = config.metrics_listen.map(admin::bind).transpose()?;
    quarantine_stray_partitions(data_dir, &metadata)?;
    let segment_files_max = segment_files_max_per_shard(config.shards);
    // A cluster node's metadata Raft group runs on a thread of its own; it reaches the
    // other nodes at their native addresses, and they reach it through this broker's.
    let node = match &config.cluster {
        Some(cluster) => Some(start_cluster_node(&config, cluster)?),
        None => None,
    };
    let handle = node.as_ref().map(ClusterNode::handle);
    // Every shard's metrics, and the listener serving them (bound now, so that a port in
    // use stops the broker before its shards start).
    let metrics: Vec<Arc<crate::metrics::ShardMetrics>> = (0..config.shards)
        .map(|shard| Arc::new(crate::metrics::ShardMetrics::new(shard)))
        .collect();
    let serving = Arc::new(AtomicUsize::new(0));
    let admin = match metrics_listener {
        Some(listener) => Some(admin::start(
            listener,
            crate::metrics::Exposition::new(
                metrics.clone(),
                config.data_dir.clone(),
                config.metrics_partition_series_max,
            ),
            admin::Readiness {
                shards: config.shards,
                serving: serving.clone(),
                shutdown: shutdown.clone(),
                cluster: handle.clone(),
            },
        )?),
        None => None,
    };

    let placement = placement(&config)?;
    let mesh = MeshBuilder::<ShardMessage, _>::full(config.shards, MESH_CHANNEL_CAPACITY);
    let config = Arc::new(config);
    let (ready_sender, ready) = std::sync::mpsc::channel::<Result<(), String>>();
    let (stopped_sender, stopped) = std::sync::mpsc::channel::<()>();
    let lifecycle = Lifecycle {
        shutdown: shutdown.clone(),
        drained: Arc::new(AtomicUsize::new(0)),
        ready: ready_sender,
        stopped: stopped_sender,
        metrics: metrics.clone(),
    };
    let handles = LocalExecutorPoolBuilder::new(placement)
        .name("spate-shard")
        // Each shard's thread for blocking work (metadata saves, directory removal) runs
        // wherever the kernel finds room; glommio's default pins every shard's to the
        // first core of the pool.
        .blocking_thread_pool_placement(PoolPlacement::Unbound(1))
        .on_all_shards({
            let config = config.clone();
            move || {
                run_shard(
                    config,
                    mesh,
                    metadata,
                    producer_ids_start,
                    segment_files_max,
                    lifecycle,
                    handle,
                )
            }
        })
        .map_err(|error| format!("cannot start the shards: {error}"))?;

    let mut failure = None;
    let mut started = 0;
    for _ in 0..config.shards {
        match ready.recv() {
            Ok(Ok(())) => {
                started += 1;
                serving.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Err(error)) => failure = failure.or(Some(error)),
            Err(_) => failure = failure.or(Some("a shard stopped while starting".to_string())),
        }
    }
    if failure.is_some() {
        shutdown.store(true, Ordering::SeqCst);
    } else {
        tracing::info!(
            listen = %config.listen,
            kafka_listen = config
                .kafka_listen
                .map_or_else(|| "none".to_string(), |address| address.to_string()),
            shards = config.shards,
            shard_ports = format!("{}-{}", config.shard_port(0), config.shard_port(config.shards - 1)),
            metrics = admin
                .as_ref()
                .map_or_else(|| "none".to_string(), |admin| format!("http://{}/metrics", admin.address)),
            data_dir = %config.data_dir.display(),
            memory_max = config.memory_max,
            "spate is serving"
        );
        if let Some(machine) = config::machine_memory()
            && config.memory_max > machine
        {
            tracing::warn!(
                memory_max = config.memory_max,
                machine_memory = machine,
                "--memory-max is more than this machine's memory: the budget will not keep the broker from running out"
            );
        }
    }
    // Each started shard reports once its logs are closed and synced. Its thread may still
    // be parked in a connection's read; the process exits after this returns, so the
    // threads are not joined.
    for _ in 0..started {
        if stopped.recv().is_err() {
            failure = failure.or(Some("a shard failed while stopping".to_string()));
            break;
        }
    }
    drop(handles);
    drop(node);
    match failure {
        Some(error) => Err(error),
        None => {
            tracing::info!("spate stopped");
            Ok(())
        }
    }
}

/// Starts this broker's node of the cluster's metadata Raft group (files in
/// `<data dir>/cluster`).
fn start_cluster_node(
    config: &ServerConfig,
    cluster: &config::ClusterConfig,
) -> Result<ClusterNode, String> {
    let broker = BrokerInfo {
        address: config.listen.to_string(),
        kafka_address: config
            .kafka_listen
            .map(|kafka| {
                let host = config.kafka_host();
                format!("{host}:{}", kafka.port())
            })
            .unwrap_or_default(),
        shards: config.shards as u16,
        // Nanoseconds since the epoch at start: a process started again gets another.
        incarnation: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64),
    };
    ClusterNode::start(NodeConfig {
        id: cluster.node_id,
        dir: config.data_dir.join("cluster"),
        voters: cluster.voters.clone(),
        listen: None,
        broker,
    })
    .map_err(|error| format!("cannot start cluster node {}: {error}", cluster.node_id))
}

/// Every address the broker listens on: the native shared port and each shard's own,
/// then the same for Kafka.
fn listen_addresses(config: &ServerConfig) -> Vec<std::net::SocketAddr> {
    let mut addresses = Vec::new();
    let ports = |base: std::net::SocketAddr| {
        (0..=config.shards)
            .map(move |index| std::net::SocketAddr::new(base.ip(), base.port() + index as u16))
    };
    addresses.extend(ports(config.listen));
    if let Some(kafka) = config.kafka_listen {
        addresses.extend(ports(kafka));
    }
    addresses
}

/// Creates the data directory and the two directories the shards create logs in
/// (`topics/`, `groups/`), each entry made durable in its parent, before any shard starts:
/// shards that found one of them already there (made by another shard a moment before)
/// would otherwise not know whether its entry was synced yet.
fn prepare_data_dir(data_dir: &std::path::Path) -> std::io::Result<()> {
    let existed = data_dir.exists();
    std::fs::create_dir_all(data_dir)?;
    if !existed && let Some(parent) = data_dir.parent() {
        let parent = if parent.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            parent
        };
        std::fs::File::open(parent)?.sync_all()?;
    }
    for name in ["topics", "groups"] {
        std::fs::create_dir_all(data_dir.join(name))?;
    }
    std::fs::File::open(data_dir)?.sync_all()
}

/// File descriptors this process may still open before it nears its limit: the limit,
/// less those open now, less a reserve (a quarter of the limit, at most 4096) kept for
/// connections, segment rolls and files opened while others close. `None` where the
/// numbers cannot be read.
pub(crate) fn descriptors_free() -> Option<u64> {
    let open = open_descriptors()?;
    let limit = descriptor_limit()?;
    Some(
        limit
            .saturating_sub(open)
            .saturating_sub(descriptor_reserve(limit)),
    )
}

/// The descriptors kept back from segment files: a quarter of the limit, at most 4096.
fn descriptor_reserve(limit: u64) -> u64 {
    (limit / 4).min(4096)
}

/// Segment files each shard keeps open at most (`storage::set_segment_files_max`): the
/// descriptors `descriptors_free` leaves (the limit, less those open, less the reserve for
/// connections), split between the shards; at least 16.
pub(crate) fn segment_files_max_per_shard(shards: usize) -> usize {
    let free = descriptors_free().unwrap_or(1024);
    (free as usize / shards.max(1)).max(16)
}

/// Partitions each shard opens at once: an open holds up to four descriptors for a
/// moment (directories synced, the segment, a snapshot), taken from the reserve that
/// `descriptors_free` keeps, an eighth of each shard's share of it; between 1 and 64.
pub(crate) fn partitions_opening_max_per_shard(shards: usize) -> usize {
    let reserve = descriptor_limit().map_or(1024, descriptor_reserve);
    (reserve as usize / shards.max(1) / 8).clamp(1, 64)
}

/// File descriptors this process has open (`None` where /proc cannot be read).
pub(crate) fn open_descriptors() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

fn descriptor_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit.rlim_cur)
}

/// Raises the soft file-descriptor limit to the hard one, as brokers need many (the
/// segment files each shard keeps open, one per connection).
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Moves partition directories that no topic claims (left by a crash in the middle of a
/// topic's creation or deletion) to `<data dir>/quarantine/<start time in ms>/`, so a topic
/// created later under that name starts empty. They are moved, not deleted: if an older
/// `metadata.bin` was restored by hand, the newer topics' data is still there to recover.
/// Nothing removes quarantined data: the operator does, once it is known to be garbage.
fn quarantine_stray_partitions(
    data_dir: &std::path::Path,
    metadata: &ClusterMetadata,
) -> Result<(), String> {
    use crate::broker::metadata::{metadata_path, stray_partition_dirs};
    let strays = stray_partition_dirs(data_dir, metadata)
        .map_err(|error| format!("cannot list {}/topics: {error}", data_dir.display()))?;
    if strays.is_empty() {
        return Ok(());
    }
    // Without its metadata file every partition looks stray: refuse to start instead.
    if !metadata_path(data_dir).exists() {
        return Err(format!(
            "{} holds partition directories but no {}: restore that file or move the directories away",
            data_dir.display(),
            metadata_path(data_dir).display()
        ));
    }
    let quarantine = new_quarantine_dir(data_dir)?;
    for dir in strays {
        let target = quarantine.join(dir.file_name().expect("a directory entry has a name"));
        tracing::warn!(
            dir = %dir.display(),
            to = %target.display(),
            "setting aside a partition directory no topic claims"
        );
        std::fs::rename(&dir, &target).map_err(|error| {
            format!(
                "cannot move stray {} to {}: {error}",
                dir.display(),
                target.display()
            )
        })?;
    }
    // Make the moves durable: the new entries first, then the old ones' removal.
    sync_dir(&quarantine)?;
    sync_dir(&data_dir.join("topics"))
}

/// Creates `<data dir>/quarantine/<now in ms>` (with a `-N` suffix if the clock has
/// stepped back onto an existing one), durably.
fn new_quarantine_dir(data_dir: &std::path::Path) -> Result<std::path::PathBuf, String> {
    let parent = data_dir.join("quarantine");
    std::fs::create_dir_all(&parent)
        .map_err(|error| format!("cannot create {}: {error}", parent.display()))?;
    sync_dir(data_dir)?;
    let stamp = crate::clock::now_ms();
    for attempt in 0u32.. {
        let name = match attempt {
            0 => stamp.to_string(),
            n => format!("{stamp}-{n}"),
        };
        let dir = parent.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                sync_dir(&parent)?;
                return Ok(dir);
            }
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(format!("cannot create {}: {error}", dir.display())),
        }
    }
    unreachable!("some suffix is free")
}

/// Makes a directory's entries durable.
fn sync_dir(dir: &std::path::Path) -> Result<(), String> {
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| format!("cannot sync {}: {error}", dir.display()))
}

/// Whether nothing else serves `address`. A plain bind also fails on the TIME_WAIT sockets a
/// just-stopped broker leaves, and that broker's listeners linger for a moment after its
/// exit (io_uring tears down in-flight accepts asynchronously); so a failed bind counts only
/// if something still accepts connections there for the next few seconds.
fn port_is_free(address: std::net::SocketAddr) -> Result<(), String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let error = match std::net::TcpListener::bind(address) {
            Ok(_) => return Ok(()),
            Err(error) if error.kind() != std::io::ErrorKind::AddrInUse => {
                return Err(format!("cannot listen on {address}: {error}"));
            }
            Err(error) => error,
        };
        if std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "cannot listen on {address}: {error} (something is listening there)"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A listener with SO_REUSEPORT (every shard accepts on the shared port) and SO_REUSEADDR
/// (a restarted broker binds over the TIME_WAIT sockets its predecessor left; glommio's own
/// `bind` sets only the former).
fn bind_listener(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    use std::os::fd::{FromRawFd, IntoRawFd};
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    // SAFETY: the fd is a bound, listening TCP socket that we own and hand over.
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

/// Port 0 means "any": a port P with P+1..=P+shards free too, for the shard listeners.
pub fn free_port_range(ip: std::net::IpAddr, shards: usize) -> Result<u16, String> {
    for _ in 0..50 {
        let probe = std::net::TcpListener::bind((ip, 0))
            .map_err(|error| format!("cannot listen on {ip}: {error}"))?;
        let port = probe
            .local_addr()
            .map_err(|error| error.to_string())?
            .port();
        if usize::from(port) + shards < usize::from(u16::MAX)
            && (1..=shards as u16)
                .all(|offset| std::net::TcpListener::bind((ip, port + offset)).is_ok())
        {
            return Ok(port);
        }
    }
    Err(format!(
        "cannot find {} free consecutive ports on {ip}",
        shards + 1
    ))
}

/// One core per shard: the listed cores, or spread over the machine. More shards than
/// cores run unpinned (useful for tests, not for speed).
fn placement(config: &ServerConfig) -> Result<PoolPlacement, String> {
    let cores = std::thread::available_parallelism().map_or(1, |count| count.get());
    Ok(match &config.cpus {
        Some(cpus) => {
            let online =
                glommio::CpuSet::online().map_err(|error| format!("cannot list cores: {error}"))?;
            PoolPlacement::Custom(
                cpus.iter()
                    .map(|&cpu| online.clone().filter(|location| location.cpu == cpu))
                    .collect(),
            )
        }
        None if config.shards <= cores => PoolPlacement::MaxSpread(config.shards, None),
        None => {
            tracing::warn!(
                shards = config.shards,
                cores,
                "more shards than cores: shards are not pinned"
            );
            PoolPlacement::Unbound(config.shards)
        }
    })
}

/// How the shards and `serve` tell each other where they are: the stop flag (set by a
/// signal or a failed start), how many shards have drained, and one report from each
/// shard when it is ready and when it has stopped; and every shard's metrics.
#[derive(Clone)]
struct Lifecycle {
    shutdown: Arc<AtomicBool>,
    drained: Arc<AtomicUsize>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
    stopped: std::sync::mpsc::Sender<()>,
    /// Every shard's metrics (each shard counts into its own, by its id).
    metrics: Vec<Arc<crate::metrics::ShardMetrics>>,
}

async fn run_shard(
    config: Arc<ServerConfig>,
    mesh: MeshBuilder<ShardMessage, glommio::channels::channel_mesh::Full>,
    metadata: ClusterMetadata,
    producer_ids_start: i64,
    segment_files_max: usize,
    lifecycle: Lifecycle,
    cluster: Option<ClusterHandle>,
) {
    let Lifecycle {
        shutdown,
        drained,
        ready,
        stopped,
        metrics,
    } = lifecycle;
    let arrival = Arrival(drained.clone());
    let (senders, mut receivers) = match mesh.join().await {
        Ok(channels) => channels,
        Err(error) => {
            let _ = ready.send(Err(format!("cannot connect the shards: {error}")));
            return;
        }
    };
    let id = senders.peer_id();
    // Before anything counts: the shard and its storage count into these.
    crate::metrics::install(metrics[id].clone());
    let config = Rc::new((*config).clone());
    // Before any partition opens: its tail cache draws from this shard's budget.
    crate::storage::set_shard_budget(Some(config.tail_cache_budget_per_shard()));
    crate::storage::set_read_ahead_budget(Some(config.read_ahead_budget_per_shard()));
    crate::storage::set_segment_files_max(segment_files_max);
    let opening_max = partitions_opening_max_per_shard(config.shards);
    let opened = Shard::open(
        id,
        config.clone(),
        metadata,
        producer_ids_start,
        senders,
        opening_max,
        cluster,
    );
    let shard = match opened.await {
        Ok(shard) => shard,
        Err(error) => {
            let _ = ready.send(Err(error));
            return;
        }
    };
    let mut listeners = vec![
        (config.listen, Door::Native),
        (
            std::net::SocketAddr::new(config.listen.ip(), config.shard_port(id)),
            Door::Native,
        ),
    ];
    if let Some(kafka) = config.kafka_listen {
        let own = config.kafka_shard_port(id).expect("a Kafka listener");
        listeners.push((kafka, Door::Kafka));
        listeners.push((std::net::SocketAddr::new(kafka.ip(), own), Door::Kafka));
    }
    let mut bound = Vec::new();
    for (address, door) in listeners {
        match bind_listener(address) {
            Ok(listener) => bound.push((listener, door)),
            Err(error) => {
                let _ = ready.send(Err(format!("cannot listen on {address}: {error}")));
                shard.close().await;
                return;
            }
        }
    }
    for (peer, receiver) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(message) = receiver.recv().await {
                glommio::spawn_local(shard.clone().handle_message(message)).detach();
            }
            tracing::debug!(shard = shard.id, peer, "mesh channel closed");
        })
        .detach();
    }
    let accepting: Vec<glommio::Task<()>> = bound
        .into_iter()
        .map(|(listener, door)| glommio::spawn_local(accept_loop(listener, door, shard.clone())))
        .collect();
    if shard.cluster.is_some() {
        shard.follow_view().await;
        glommio::spawn_local(shard.clone().check_isr()).detach();
        if shard.id == 0 {
            glommio::spawn_local(shard.clone().follow_cluster()).detach();
        }
    }
    {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while !shard.stopping.is_set() {
                glommio::timer::sleep(crate::group::coordinator::TICK).await;
                shard.groups.tick();
            }
        })
        .detach();
    }
    {
        let shard = shard.clone();
        let interval = Duration::from_millis(config.retention_check_interval_ms);
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(interval).await;
                if shard.stopping.is_set() {
                    return;
                }
                shard.enforce_retention().await;
            }
        })
        .detach();
    }
    glommio::spawn_local(observe(shard.clone())).detach();
    let _ = ready.send(Ok(()));
    while !shutdown.load(Ordering::SeqCst) {
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }

    // Stopping: refuse new requests and stop accepting (dropping an accept loop closes its
    // listener); each connection stops reading, finishes the requests it had started,
    // sends their answers and closes.
    shard.stopping.set();
    drop(accepting);
    let deadline = Instant::now() + SHUTDOWN_DRAIN;
    let connections = &shard.connections;
    futures_lite::future::or(
        connections
            .changed
            .wait_until(|| connections.open.get() == 0),
        glommio::timer::sleep(SHUTDOWN_DRAIN),
    )
    .await;
    if connections.open.get() > 0 {
        tracing::warn!(
            shard = shard.id,
            connections = connections.open.get(),
            "connections still busy after the shutdown grace period; closing the logs under them"
        );
    }
    // A request admitted on one shard may still be appending on another, so no shard
    // closes its logs before every shard has drained its connections.
    drop(arrival);
    while drained.load(Ordering::SeqCst) < config.shards && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    shard.close().await;
    let _ = stopped.send(());
}

/// Counts a shard as drained when dropped: on the normal path once its connections have
/// closed, and on every early return (a shard that failed to start has nothing to drain).
struct Arrival(Arc<AtomicUsize>);

impl Drop for Arrival {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Copies the shard's gauges for the metrics thread every `SNAPSHOT_INTERVAL`, and
/// meanwhile measures how late the reactor wakes for a timer (`PROBE_INTERVAL`): a wake-up
/// later than `STALL_THRESHOLD` is a stall (a task held the core, or the kernel ran
/// something else on it).
async fn observe(shard: Rc<Shard>) {
    use crate::metrics::{PROBE_INTERVAL, SNAPSHOT_INTERVAL, STALL_THRESHOLD};
    shard.snapshot_metrics();
    let mut last_snapshot = Instant::now();
    while !shard.stopping.is_set() {
        let asked = Instant::now();
        glommio::timer::sleep(PROBE_INTERVAL).await;
        let late = asked.elapsed().saturating_sub(PROBE_INTERVAL);
        shard.metrics.reactor_lag.observe_duration(late);
        if late > STALL_THRESHOLD {
            shard.metrics.reactor_stalls.inc();
        }
        if last_snapshot.elapsed() >= SNAPSHOT_INTERVAL {
            shard.snapshot_metrics();
            last_snapshot = Instant::now();
        }
    }
}

async fn accept_loop(listener: TcpListener, door: Door, shard: Rc<Shard>) {
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let connections = &shard.connections;
        if connections.open.get() >= shard.config.connections_max_per_shard {
            tracing::warn!(
                limit = shard.config.connections_max_per_shard,
                "refusing a connection: limit reached"
            );
            drop(stream);
            continue;
        }
        connections.open.set(connections.open.get() + 1);
        let protocol = door.protocol();
        shard.metrics.connections_accepted[protocol].inc();
        shard.metrics.connections[protocol].add(1);
        let shard = shard.clone();
        glommio::spawn_local(async move {
            connection::serve(shard.clone(), stream, door).await;
            shard.metrics.connections[protocol].add(-1);
            let connections = &shard.connections;
            connections.open.set(connections.open.get() - 1);
            connections.changed.notify_all();
        })
        .detach();
    }
}
