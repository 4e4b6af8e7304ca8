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

use bytes::Bytes;
use openraft::error::{
    ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Config, Raft, RaftMetrics};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use super::state::BrokerInfo;
use super::store::{LogStore, MetadataMachine};
use super::{ClusterState, Command, CommandReply, NodeId, TypeConfig};
use crate::protocol;

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
    /// Where this node listens for the others' messages itself; `None` when the broker's
    /// native listener hands them in (`ClusterHandle::rpc`).
    pub listen: Option<SocketAddr>,
    /// What this node's heartbeats tell the controller.
    pub broker: BrokerInfo,
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
    /// A message from another node, as it came (`Rpc` in JSON), and where its answer goes.
    Rpc(Bytes, oneshot::Sender<Bytes>),
}

/// What the rest of the broker holds of its node: cheap to clone, usable from any thread
/// and any executor (the shards await its answers on their own reactors).
#[derive(Clone)]
pub struct ClusterHandle {
    pub id: NodeId,
    /// This process's incarnation, as its heartbeats give it.
    pub incarnation: u64,
    calls: mpsc::UnboundedSender<Call>,
    metrics: watch::Receiver<RaftMetrics<NodeId, BasicNode>>,
    machine: MetadataMachine,
}

impl ClusterHandle {
    /// The controller (the Raft leader) this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.metrics.borrow().current_leader
    }

    /// The term this node is in.
    pub fn term(&self) -> u64 {
        self.metrics.borrow().current_term
    }

    /// The cluster as this node has applied it.
    pub fn state(&self) -> ClusterState {
        self.machine.state()
    }

    /// Proposes `command` through the controller, wherever it is (this node forwards it
    /// there), waiting out an election; answered once it is committed and applied on the
    /// controller.
    pub async fn write(&self, command: Command) -> Result<CommandReply, String> {
        let (reply, answer) = oneshot::channel();
        self.calls
            .send(Call::Write(command, reply))
            .map_err(|_| "the cluster node has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the cluster node stopped before answering".to_string())?
    }

    /// Answers a message from another node (a Raft RPC, a heartbeat, a forwarded write).
    pub async fn rpc(&self, message: Bytes) -> Result<Bytes, String> {
        let (reply, answer) = oneshot::channel();
        self.calls
            .send(Call::Rpc(message, reply))
            .map_err(|_| "the cluster node has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the cluster node stopped before answering".to_string())
    }

    /// Resolves when this node's Raft state next changes (an entry applied, a new term or
    /// leader); `false` once the node has stopped.
    pub async fn changed(&mut self) -> bool {
        self.metrics.changed().await.is_ok()
    }
}

/// A running node; dropping it stops the node.
pub struct ClusterNode {
    handle: ClusterHandle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::ops::Deref for ClusterNode {
    type Target = ClusterHandle;

    fn deref(&self) -> &ClusterHandle {
        &self.handle
    }
}

impl ClusterNode {
    /// Opens the node's store, starts its thread, listens on its cluster address (when
    /// given one) and, when the cluster has never formed, proposes the voters as its first
    /// membership (every node does; they all propose the same one).
    pub fn start(config: NodeConfig) -> io::Result<ClusterNode> {
        if !config.voters.contains_key(&config.id) {
            return Err(io::Error::other(format!(
                "node {} is not a voter",
                config.id
            )));
        }
        let log = LogStore::open(&config.dir)?;
        let machine = MetadataMachine::open(&config.dir)?;
        let raft_config = Arc::new(raft_config(config.id)?);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = match config.listen {
            Some(address) => Some(runtime.block_on(TcpListener::bind(address))?),
            None => None,
        };
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
        let broker = config.broker.clone();
        let thread = std::thread::Builder::new()
            .name(format!("raft-{id}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let sessions = Sessions::default();
                    let node = Answerer {
                        raft: raft.clone(),
                        sessions: sessions.clone(),
                    };
                    if let Some(listener) = listener {
                        tokio::spawn(serve(listener, node.clone()));
                    }
                    tokio::spawn(send_heartbeats(
                        id,
                        broker,
                        voters.clone(),
                        sessions.clone(),
                    ));
                    tokio::spawn(control(
                        id,
                        raft.clone(),
                        controlled,
                        voters.clone(),
                        sessions,
                    ));
                    if !raft.is_initialized().await.unwrap_or(true) {
                        // Refused when another node's proposal got here first: fine.
                        let _ = raft.initialize(members).await;
                    }
                    let calls = async {
                        while let Some(call) = incoming.recv().await {
                            match call {
                                Call::Write(command, reply) => {
                                    let (raft, voters) = (raft.clone(), voters.clone());
                                    tokio::spawn(async move {
                                        let _ = reply.send(write(&raft, &voters, command).await);
                                    });
                                }
                                Call::Rpc(message, reply) => {
                                    let node = node.clone();
                                    tokio::spawn(async move {
                                        let _ = reply.send(node.answer(&message).await);
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
            handle: ClusterHandle {
                id,
                incarnation: config.broker.incarnation,
                calls,
                metrics,
                machine,
            },
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// What the rest of the broker keeps of this node.
    pub fn handle(&self) -> ClusterHandle {
        self.handle.clone()
    }

    /// `ClusterHandle::write` for a thread outside any executor (tests, tools).
    pub fn write_blocking(&self, command: Command) -> Result<CommandReply, String> {
        futures_lite::future::block_on(self.handle.write(command))
    }
}

/// How long a write waits for a controller (an election) before it gives up.
const WRITE_WAIT: Duration = Duration::from_secs(10);

/// Proposes `command` here if this node leads, else forwards it to the leader; while
/// there is none, or the one known stops leading, tries again until `WRITE_WAIT`.
async fn write(
    raft: &Raft<TypeConfig>,
    voters: &BTreeMap<NodeId, SocketAddr>,
    command: Command,
) -> Result<CommandReply, String> {
    let deadline = tokio::time::Instant::now() + WRITE_WAIT;
    let mut last_error;
    loop {
        match raft.client_write(command.clone()).await {
            Ok(response) => return Ok(response.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                last_error = "no controller elected".to_string();
                if let Some(address) = forward.leader_id.and_then(|leader| voters.get(&leader)) {
                    let mut peer = Peer {
                        target: forward.leader_id.expect("known"),
                        address: Some(*address),
                        stream: None,
                    };
                    match peer
                        .exchange(&Rpc::Write(command.clone()), WRITE_WAIT)
                        .await
                    {
                        Ok(Ok(reply)) => return Ok(reply),
                        // It stopped leading on the way: ask again.
                        Ok(Err(error)) => last_error = error,
                        Err(error) => last_error = error.to_string(),
                    }
                }
            }
            Err(error) => return Err(error.to_string()),
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "the cluster controller did not take the change: {last_error}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
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

/// The messages nodes send each other, as JSON inside a native `ClusterRpc` request.
#[derive(serde::Serialize, serde::Deserialize)]
enum Rpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A broker's heartbeat (to every node: whichever is the controller acts on it).
    Heartbeat(NodeId, BrokerInfo),
    /// A change proposed on a node that does not lead, for the leader (the controller).
    Write(Command),
}

/// Answers the messages of other nodes, whichever way they came in.
#[derive(Clone)]
struct Answerer {
    raft: Raft<TypeConfig>,
    sessions: Sessions,
}

impl Answerer {
    /// The JSON answer to one message (an undecodable one gets a JSON error string).
    async fn answer(&self, message: &[u8]) -> Bytes {
        let json = |value: &dyn erased::Json| Bytes::from(value.to_json());
        let rpc: Rpc = match serde_json::from_slice(message) {
            Ok(rpc) => rpc,
            Err(error) => return json(&format!("malformed cluster message: {error}")),
        };
        match rpc {
            Rpc::Append(rpc) => json(&self.raft.append_entries(rpc).await),
            Rpc::Vote(rpc) => json(&self.raft.vote(rpc).await),
            Rpc::Snapshot(rpc) => json(&self.raft.install_snapshot(rpc).await),
            Rpc::Heartbeat(broker, info) => {
                self.sessions.seen(broker, Some(info));
                json(&true)
            }
            Rpc::Write(command) => {
                let written: Result<CommandReply, String> = self
                    .raft
                    .client_write(command)
                    .await
                    .map(|response| response.data)
                    .map_err(|error| error.to_string());
                json(&written)
            }
        }
    }
}

/// Serialising answers of different types through one function.
mod erased {
    pub trait Json {
        fn to_json(&self) -> Vec<u8>;
    }

    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Vec<u8> {
            serde_json::to_vec(self).expect("answers serialise")
        }
    }
}

/// Reads one native frame (its length, then the frame without it).
async fn read_native_frame(stream: &mut TcpStream) -> io::Result<Bytes> {
    let length = stream.read_u32().await? as usize;
    if length > RPC_FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a cluster frame of {length} bytes"),
        ));
    }
    let mut bytes = vec![0; length];
    stream.read_exact(&mut bytes).await?;
    Ok(Bytes::from(bytes))
}

/// Answers other nodes on a listener of this node's own (a node started without a
/// broker around it, as in tests); the frames are the native protocol's `ClusterRpc`
/// requests and answers, as the broker's listener serves them.
async fn serve(listener: TcpListener, node: Answerer) {
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of descriptors, say: try again shortly rather than spin.
                tracing::warn!(%error, "accepting a cluster connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        tokio::spawn(async move {
            while let Ok(frame) = read_native_frame(&mut stream).await {
                let Ok((header, body)) = protocol::decode_request_header(frame) else {
                    break;
                };
                let response = match protocol::Request::decode(&header, body) {
                    Ok(protocol::Request::ClusterRpc(message)) => {
                        protocol::Response::ClusterRpc(node.answer(&message).await)
                    }
                    _ => protocol::Response::Failed(protocol::Status::error(
                        protocol::ErrorCode::InvalidRequest,
                        "this listener serves cluster messages only",
                    )),
                };
                if stream
                    .write_all(&response.encode(header.correlation_id))
                    .await
                    .is_err()
                {
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
    /// Sends `rpc` as a native `ClusterRpc` request and reads the answer, within `ttl`; a
    /// failure drops the connection.
    async fn exchange<T: DeserializeOwned>(&mut self, rpc: &Rpc, ttl: Duration) -> io::Result<T> {
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
            let message = serde_json::to_vec(rpc).map_err(io::Error::other)?;
            let request = protocol::Request::ClusterRpc(Bytes::from(message));
            stream.write_all(&request.encode(0)).await?;
            let frame = read_native_frame(stream).await?;
            if frame.len() < protocol::RESPONSE_HEADER_BYTES {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "a short answer"));
            }
            let body = frame.slice(protocol::RESPONSE_HEADER_BYTES..);
            match protocol::Response::decode(protocol::ApiKey::ClusterRpc, body) {
                Ok(protocol::Response::ClusterRpc(answer)) => serde_json::from_slice(&answer)
                    .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error)),
                Ok(protocol::Response::Failed(status)) => Err(io::Error::other(format!(
                    "node {} refused a cluster message: {status}",
                    self.target
                ))),
                Ok(_) => Err(io::Error::new(io::ErrorKind::InvalidData, "a wrong answer")),
                Err(error) => Err(io::Error::new(io::ErrorKind::InvalidData, error)),
            }
        };
        match tokio::time::timeout(ttl, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => {
                self.stream = None;
                Err(error)
            }
            Err(_) => {
                self.stream = None;
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("node {} did not answer in {ttl:?}", self.target),
                ))
            }
        }
    }

    /// One Raft RPC and its answer within `ttl`.
    async fn call<T: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &mut self,
        rpc: Rpc,
        ttl: Duration,
    ) -> Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
        match self
            .exchange::<Result<T, RaftError<NodeId, E>>>(&rpc, ttl)
            .await
        {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(self.target, remote))),
            Err(error) if error.kind() == io::ErrorKind::TimedOut => {
                Err(RPCError::Network(NetworkError::new(&error)))
            }
            Err(error) => Err(RPCError::Unreachable(Unreachable::new(&error))),
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

/// When each broker was last heard from, and what it said of itself, as this node saw it
/// (not replicated: only the controller acts on it, and a new controller starts every
/// session afresh).
#[derive(Clone, Default)]
struct Sessions(Arc<std::sync::Mutex<BTreeMap<NodeId, Session>>>);

/// When a broker was last heard from, and what it last said of itself.
type Session = (tokio::time::Instant, Option<BrokerInfo>);

impl Sessions {
    fn seen(&self, broker: NodeId, info: Option<BrokerInfo>) {
        let now = tokio::time::Instant::now();
        let mut sessions = self.0.lock().expect("not poisoned");
        let entry = sessions.entry(broker).or_insert((now, None));
        entry.0 = now;
        if info.is_some() {
            entry.1 = info;
        }
    }

    /// A broker whose address refused a connection: its session ends now.
    fn refused(&self, broker: NodeId) {
        let now = tokio::time::Instant::now();
        let mut sessions = self.0.lock().expect("not poisoned");
        if let Some(session) = sessions.get_mut(&broker)
            && let Some(expired) = now.checked_sub(BROKER_SESSION)
        {
            session.0 = session.0.min(expired);
        }
    }

    fn last_seen(&self, broker: NodeId) -> Option<Session> {
        self.0.lock().expect("not poisoned").get(&broker).cloned()
    }

    /// What a new controller (node `id`) starts from. Every node hears every broker's
    /// heartbeats all along, so when this one has been hearing others, it trusts what it
    /// heard: a broker that died with the old controller is fenced a session after it
    /// went quiet, not a session after the election. When it has heard from no other
    /// broker for a session, it was itself cut off, and gives everyone a full session
    /// rather than fence them all on taking over. A broker never heard from gets a full
    /// session.
    fn restart(&self, id: NodeId, brokers: impl Iterator<Item = NodeId>) {
        let now = tokio::time::Instant::now();
        let mut sessions = self.0.lock().expect("not poisoned");
        let hearing = sessions
            .iter()
            .any(|(broker, (seen, _))| *broker != id && now.duration_since(*seen) < BROKER_SESSION);
        for broker in brokers {
            let session = sessions.entry(broker).or_insert((now, None));
            if !hearing {
                session.0 = now;
            }
        }
    }
}

/// Tells every node, every `HEARTBEAT_INTERVAL`, that this broker is alive and what it is.
async fn send_heartbeats(
    id: NodeId,
    info: BrokerInfo,
    voters: BTreeMap<NodeId, SocketAddr>,
    sessions: Sessions,
) {
    // One task per peer, so that a peer that does not answer delays no other.
    for (&target, &address) in voters.iter().filter(|(peer, _)| **peer != id) {
        let (info, sessions) = (info.clone(), sessions.clone());
        tokio::spawn(async move {
            let mut peer = Peer {
                target,
                address: Some(address),
                stream: None,
            };
            let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
            loop {
                ticks.tick().await;
                let sent = peer
                    .exchange::<bool>(&Rpc::Heartbeat(id, info.clone()), HEARTBEAT_INTERVAL)
                    .await;
                // Nothing listens at its address: its process is gone (a paused or cut-off
                // one still accepts, or times out). No need to wait out its session.
                if sent.is_err_and(|error| error.kind() == io::ErrorKind::ConnectionRefused) {
                    sessions.refused(target);
                }
            }
        });
    }
    let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
    loop {
        ticks.tick().await;
        sessions.seen(id, Some(info.clone()));
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
            sessions.restart(id, voters.keys().copied());
        }
        // The leader's applied state: current enough, as a command that no longer fits is
        // refused when applied.
        let state = machine.state();
        let now = tokio::time::Instant::now();
        for &broker in voters.keys() {
            let (alive, info) = match sessions.last_seen(broker) {
                Some((seen, info)) => (now.duration_since(seen) < BROKER_SESSION, info),
                None => (false, None),
            };
            let known = state.brokers.get(&broker);
            let command = match (alive, known, info) {
                // Registered once it has said what it is; again when it comes back or
                // has changed (restarted with other ports or shards).
                (true, known, Some(info))
                    if known.is_none_or(|known| known.fenced || known.info != info) =>
                {
                    Some(Command::RegisterBroker { id: broker, info })
                }
                (false, Some(known), _) if !known.fenced => {
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
