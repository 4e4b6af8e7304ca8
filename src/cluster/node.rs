//! One node of the metadata Raft group: openraft on a thread of its own (a tokio
//! current-thread runtime, outside the data shards), its store (`store.rs`) and its
//! network: Raft RPCs as length-prefixed JSON frames over TCP between the nodes'
//! cluster addresses.
//!
//! Timing (openraft 0.9 draws each node's election timeout once, at start, so two
//! survivors with overlapping windows could split their votes for ever): heartbeats every
//! 100 ms, and node `n`'s election window `[300 + 150 (n-1), +50)` ms, so no two nodes
//! campaign at the same moment.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Config, Raft, RaftMetrics};
use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use super::store::{LogStore, MetadataMachine};
use super::{ClusterState, Command, CommandReply, NodeId, TypeConfig};

/// How often a broker tells every node it is alive.
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(200);
/// A broker not heard from for this long is fenced by the controller (its partitions get
/// new leaders from their ISRs); one heard from again is registered again.
pub const BROKER_SESSION: Duration = Duration::from_millis(1000);
/// How often the controller looks at the brokers' sessions.
const CONTROL_INTERVAL: Duration = Duration::from_millis(100);

/// Largest Raft RPC frame accepted (a snapshot of the metadata travels in one).
const RPC_FRAME_BYTES_MAX: usize = 64 << 20;

/// Where a node keeps its Raft files, and the cluster it belongs to.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    pub dir: PathBuf,
    /// Every voter and the address this node reaches it at (its own entry is what the
    /// others are told, in the first membership it proposes).
    pub voters: BTreeMap<NodeId, SocketAddr>,
    /// Where this node listens for the others' Raft RPCs.
    pub listen: SocketAddr,
}

/// openraft's settings for node `id`: see the module's notes on timing.
pub fn raft_config(id: NodeId) -> io::Result<Config> {
    let min = 300 + 150 * id.saturating_sub(1).min(20);
    Config {
        cluster_name: "spate".into(),
        heartbeat_interval: 100,
        election_timeout_min: min,
        election_timeout_max: min + 50,
        install_snapshot_timeout: 3000,
        ..Default::default()
    }
    .validate()
    .map_err(io::Error::other)
}

enum Call {
    Write(Command, oneshot::Sender<Result<CommandReply, String>>),
}

/// A running node; dropping it stops the node.
pub struct ClusterNode {
    pub id: NodeId,
    calls: mpsc::UnboundedSender<Call>,
    metrics: watch::Receiver<RaftMetrics<NodeId, BasicNode>>,
    machine: MetadataMachine,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ClusterNode {
    /// Opens the node's store, starts its thread, listens on its cluster address and,
    /// when the cluster has never formed, proposes the voters as its first membership
    /// (every node does; they all propose the same one).
    pub fn start(config: NodeConfig) -> io::Result<ClusterNode> {
        if !config.voters.contains_key(&config.id) {
            return Err(io::Error::other(format!(
                "node {} is not a voter",
                config.id
            )));
        }
        let address = config.listen;
        let log = LogStore::open(&config.dir)?;
        let machine = MetadataMachine::open(&config.dir)?;
        let raft_config = Arc::new(raft_config(config.id)?);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = runtime.block_on(TcpListener::bind(address))?;
        let network = Network {
            voters: config.voters.clone(),
        };
        let raft = runtime
            .block_on(Raft::new(
                config.id,
                raft_config,
                network,
                log,
                machine.clone(),
            ))
            .map_err(io::Error::other)?;
        let metrics = raft.metrics();
        let (calls, mut incoming) = mpsc::unbounded_channel::<Call>();
        let (stop, stopped) = oneshot::channel::<()>();
        let members: BTreeMap<NodeId, BasicNode> = config
            .voters
            .iter()
            .map(|(id, address)| (*id, BasicNode::new(address.to_string())))
            .collect();
        let id = config.id;
        let voters = config.voters.clone();
        let controlled = machine.clone();
        let thread = std::thread::Builder::new()
            .name(format!("raft-{id}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let sessions = Sessions::default();
                    tokio::spawn(serve(listener, raft.clone(), sessions.clone()));
                    tokio::spawn(send_heartbeats(id, voters.clone(), sessions.clone()));
                    tokio::spawn(control(id, raft.clone(), controlled, voters, sessions));
                    if !raft.is_initialized().await.unwrap_or(true) {
                        // Refused when another node's proposal got here first: fine.
                        let _ = raft.initialize(members).await;
                    }
                    let calls = async {
                        while let Some(call) = incoming.recv().await {
                            match call {
                                Call::Write(command, reply) => {
                                    let raft = raft.clone();
                                    tokio::spawn(async move {
                                        let written = raft
                                            .client_write(command)
                                            .await
                                            .map(|response| response.data)
                                            .map_err(|error| error.to_string());
                                        let _ = reply.send(written);
                                    });
                                }
                            }
                        }
                    };
                    tokio::select! {
                        _ = calls => {}
                        _ = stopped => {}
                    }
                    let _ = raft.shutdown().await;
                });
            })?;
        Ok(ClusterNode {
            id,
            calls,
            metrics,
            machine,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.metrics.borrow().current_leader
    }

    /// The term this node is in.
    pub fn term(&self) -> u64 {
        self.metrics.borrow().current_term
    }

    /// Proposes `command`; answered once it is committed and applied here (this node must
    /// be the leader: otherwise the error names the leader).
    pub fn write(&self, command: Command) -> Result<CommandReply, String> {
        let (reply, answer) = oneshot::channel();
        self.calls
            .send(Call::Write(command, reply))
            .map_err(|_| "the node has stopped".to_string())?;
        answer
            .blocking_recv()
            .map_err(|_| "the node stopped before answering".to_string())?
    }

    /// The cluster as this node has applied it.
    pub fn state(&self) -> ClusterState {
        self.machine.state()
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The kinds of Raft RPC, as they travel.
#[derive(serde::Serialize, serde::Deserialize)]
enum Rpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A broker's heartbeat (to every node: whichever is the controller acts on it).
    Heartbeat(NodeId),
}

async fn write_frame(stream: &mut TcpStream, value: &impl Serialize) -> io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    stream.write_u32(bytes.len() as u32).await?;
    stream.write_all(&bytes).await
}

async fn read_frame<T: DeserializeOwned>(stream: &mut TcpStream) -> io::Result<T> {
    let length = stream.read_u32().await? as usize;
    if length > RPC_FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a Raft frame of {length} bytes"),
        ));
    }
    let mut bytes = vec![0; length];
    stream.read_exact(&mut bytes).await?;
    serde_json::from_slice(&bytes)
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))
}

/// Answers the Raft RPCs of the other nodes.
async fn serve(listener: TcpListener, raft: Raft<TypeConfig>, sessions: Sessions) {
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of descriptors, say: try again shortly rather than spin.
                tracing::warn!(%error, "accepting a Raft connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let raft = raft.clone();
        let sessions = sessions.clone();
        tokio::spawn(async move {
            while let Ok(rpc) = read_frame::<Rpc>(&mut stream).await {
                let written = match rpc {
                    Rpc::Append(rpc) => {
                        write_frame(&mut stream, &raft.append_entries(rpc).await).await
                    }
                    Rpc::Vote(rpc) => write_frame(&mut stream, &raft.vote(rpc).await).await,
                    Rpc::Snapshot(rpc) => {
                        write_frame(&mut stream, &raft.install_snapshot(rpc).await).await
                    }
                    Rpc::Heartbeat(broker) => {
                        sessions.seen(broker);
                        write_frame(&mut stream, &true).await
                    }
                };
                if written.is_err() {
                    break;
                }
            }
        });
    }
}

struct Network {
    voters: BTreeMap<NodeId, SocketAddr>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        let address = self
            .voters
            .get(&target)
            .copied()
            .or_else(|| node.addr.parse().ok());
        Peer {
            target,
            address,
            stream: None,
        }
    }
}

/// A connection to one other node, made on first use and again after a failure.
struct Peer {
    target: NodeId,
    address: Option<SocketAddr>,
    stream: Option<TcpStream>,
}

impl Peer {
    /// One RPC and its answer within `ttl`; a failure drops the connection.
    async fn call<T: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &mut self,
        rpc: Rpc,
        ttl: Duration,
    ) -> Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
        let exchange = async {
            if self.stream.is_none() {
                let address = self.address.ok_or_else(|| {
                    io::Error::other(format!("node {} has no address", self.target))
                })?;
                let stream = TcpStream::connect(address).await?;
                stream.set_nodelay(true)?;
                self.stream = Some(stream);
            }
            let stream = self.stream.as_mut().expect("connected");
            write_frame(stream, &rpc).await?;
            read_frame::<Result<T, RaftError<NodeId, E>>>(stream).await
        };
        match tokio::time::timeout(ttl, exchange).await {
            Ok(Ok(Ok(answer))) => Ok(answer),
            Ok(Ok(Err(remote))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, remote)))
            }
            Ok(Err(error)) => {
                self.stream = None;
                Err(RPCError::Unreachable(Unreachable::new(&error)))
            }
            Err(elapsed) => {
                self.stream = None;
                Err(RPCError::Network(NetworkError::new(&elapsed)))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Append(rpc), option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::Snapshot(rpc), option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote(rpc), option.hard_ttl()).await
    }
}

/// When each broker was last heard from, as this node saw it (not replicated: only the
/// controller acts on it, and a new controller starts every session afresh).
#[derive(Clone, Default)]
struct Sessions(Arc<std::sync::Mutex<BTreeMap<NodeId, tokio::time::Instant>>>);

impl Sessions {
    fn seen(&self, broker: NodeId) {
        let now = tokio::time::Instant::now();
        self.0.lock().expect("not poisoned").insert(broker, now);
    }

    fn last_seen(&self, broker: NodeId) -> Option<tokio::time::Instant> {
        self.0.lock().expect("not poisoned").get(&broker).copied()
    }

    /// Every broker counts as just seen (a new controller gives each a full session).
    fn restart(&self, brokers: impl Iterator<Item = NodeId>) {
        let now = tokio::time::Instant::now();
        let mut sessions = self.0.lock().expect("not poisoned");
        for broker in brokers {
            sessions.insert(broker, now);
        }
    }
}

/// Tells every node, every `HEARTBEAT_INTERVAL`, that this broker is alive.
async fn send_heartbeats(id: NodeId, voters: BTreeMap<NodeId, SocketAddr>, sessions: Sessions) {
    let mut streams: BTreeMap<NodeId, TcpStream> = BTreeMap::new();
    let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
    loop {
        ticks.tick().await;
        sessions.seen(id);
        for (&peer, &address) in voters.iter().filter(|(peer, _)| **peer != id) {
            let beat = async {
                let stream = match streams.entry(peer) {
                    std::collections::btree_map::Entry::Occupied(stream) => stream.into_mut(),
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        let stream = TcpStream::connect(address).await?;
                        stream.set_nodelay(true)?;
                        slot.insert(stream)
                    }
                };
                write_frame(stream, &Rpc::Heartbeat(id)).await?;
                read_frame::<bool>(stream).await
            };
            if !matches!(
                tokio::time::timeout(HEARTBEAT_INTERVAL, beat).await,
                Ok(Ok(_))
            ) {
                streams.remove(&peer);
            }
        }
    }
}

/// While this node is the Raft leader (the controller): fences the brokers whose session
/// expired and registers those heard from that are unknown or fenced, each one command.
async fn control(
    id: NodeId,
    raft: Raft<TypeConfig>,
    machine: MetadataMachine,
    voters: BTreeMap<NodeId, SocketAddr>,
    sessions: Sessions,
) {
    let mut metrics = raft.metrics();
    let mut led_term = None;
    let mut ticks = tokio::time::interval(CONTROL_INTERVAL);
    loop {
        ticks.tick().await;
        let (leader, term) = {
            let current = metrics.borrow_and_update();
            (current.current_leader, current.current_term)
        };
        if leader != Some(id) {
            led_term = None;
            continue;
        }
        if led_term != Some(term) {
            led_term = Some(term);
            sessions.restart(voters.keys().copied());
        }
        // The leader's applied state: current enough, as a command that no longer fits is
        // refused when applied.
        let state = machine.state();
        let now = tokio::time::Instant::now();
        for (&broker, address) in &voters {
            let alive = sessions
                .last_seen(broker)
                .is_some_and(|seen| now.duration_since(seen) < BROKER_SESSION);
            let known = state.brokers.get(&broker);
            let command = match (alive, known) {
                (true, None) => Some(Command::RegisterBroker {
                    id: broker,
                    address: address.to_string(),
                }),
                (true, Some(known)) if known.fenced => Some(Command::RegisterBroker {
                    id: broker,
                    address: address.to_string(),
                }),
                (false, Some(known)) if !known.fenced => {
                    tracing::warn!(broker, "broker session expired: fencing it");
                    Some(Command::FenceBroker { id: broker })
                }
                _ => None,
            };
            if let Some(command) = command {
                let _ = raft.client_write(command).await;
            }
        }
    }
}
