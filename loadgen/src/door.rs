//! The two front doors a run can load: Spate's own protocol (`--protocol native`) and
//! Kafka's (`--protocol kafka`, which also drives any Kafka-compatible broker). Everything
//! that differs between them lives here; the producer, consumer and run are written once
//! over these types.
//!
//! Both doors make the same requests: one produce per batch, pipelined per owner, and
//! long-polling fetches per owner, so that a comparison measures the broker's two code
//! paths and not two different clients.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use spate::client::{Answer, Connection, Native, Pipeline, ShardRouter, Wire};
use spate::kafka::client::{KafkaClient, KafkaWire, PRODUCE_VERSION, produce_request};
use spate::kafka::{self, FetchPartition, FetchRequest, FetchTopic, ProduceResponse};
use spate::protocol::{
    Acks, ErrorCode, ProducePartition, ProduceRequest, ProduceTopic, Request, Response,
};

use crate::options::Plan;

const CLIENT_ID: &str = "spate-loadgen";

/// Bytes asked of each partition per fetch.
const PARTITION_FETCH_BYTES: u32 = 4 << 20;
/// Bytes asked of a whole fetch.
const FETCH_BYTES: u32 = 64 << 20;
/// How long a fetch waits at the broker for data.
const FETCH_WAIT_MS: u32 = 100;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Spate's own binary protocol.
    Native,
    /// Kafka's wire protocol.
    Kafka,
}

impl Protocol {
    /// Where a broker listens for this protocol by default.
    pub fn default_address(self) -> &'static str {
        match self {
            Protocol::Native => "127.0.0.1:7070",
            Protocol::Kafka => "127.0.0.1:9092",
        }
    }
}

/// Where each partition lives: its owner (a shard, or a Kafka broker's node id), and each
/// owner's address.
#[derive(Debug, Clone)]
pub struct Layout {
    pub owners: Vec<i32>,
    pub addresses: HashMap<i32, String>,
}

impl Layout {
    pub fn address(&self, owner: i32) -> &str {
        &self.addresses[&owner]
    }

    /// Where the topic's partitions are now, learnt through `address`; an error while
    /// some partition has no leader with an address (a failover under way).
    pub fn learn(protocol: Protocol, address: &str, topic: &str) -> anyhow::Result<Layout> {
        match protocol {
            Protocol::Native => {
                let bootstrap = Connection::connect(address, CLIENT_ID)?;
                let router = ShardRouter::new(bootstrap, topic, CLIENT_ID)
                    .with_context(|| format!("topic {topic}"))?;
                let mut owners = Vec::new();
                let mut addresses = HashMap::new();
                for partition in 0..router.partitions() {
                    let owner = router.owner(partition).expect("a partition of the topic");
                    let Some(address) = router.shard_address(owner) else {
                        bail!("partition {partition} of {topic} has no leader now");
                    };
                    addresses.insert(i32::from(owner), address.to_string());
                    owners.push(i32::from(owner));
                }
                Ok(Layout { owners, addresses })
            }
            Protocol::Kafka => {
                let mut client = KafkaClient::connect(address, CLIENT_ID)?;
                kafka_layout(&mut client, topic, Duration::ZERO)
            }
        }
    }

    /// The layout again after a leader moved, learnt through the run's bootstrap address
    /// or any address this layout knows (the bootstrap node may be the one that died).
    /// `Err((reached, error))`: `reached` when some broker answered (the cluster is there,
    /// its leaders are moving), else none did (the broker is gone).
    pub fn relearn(&self, plan: &Plan) -> Result<Layout, (bool, anyhow::Error)> {
        let mut candidates = vec![plan.broker.clone()];
        let mut known: Vec<&String> = self.addresses.values().collect();
        known.sort();
        known.dedup();
        candidates.extend(known.into_iter().cloned());
        let mut reached = false;
        let mut last = anyhow::anyhow!("no address to ask");
        for address in candidates {
            match Layout::learn(plan.protocol, &address, &plan.topic) {
                Ok(layout) => return Ok(layout),
                Err(error) => {
                    // A connection refused or reset says nothing answered there.
                    let unreachable = error.chain().any(|cause| {
                        cause.downcast_ref::<std::io::Error>().is_some()
                            || matches!(
                                cause.downcast_ref::<spate::client::ClientError>(),
                                Some(
                                    spate::client::ClientError::Io(_)
                                        | spate::client::ClientError::Unreachable { .. }
                                        | spate::client::ClientError::TimedOut
                                )
                            )
                    });
                    reached |= !unreachable;
                    last = error;
                }
            }
        }
        Err((reached, last))
    }
}

/// Why a produce was not acknowledged, and whether sending it again (to the partition's
/// leader as metadata then says) may succeed: a leader moved, too few replicas in sync
/// for a moment, a connection lost.
#[derive(Debug)]
pub struct Refusal {
    pub message: String,
    pub retriable: bool,
}

impl Refusal {
    fn fatal(message: String) -> Refusal {
        Refusal {
            message,
            retriable: false,
        }
    }
}

/// Offsets asked of `Admin::offsets`.
#[derive(Debug, Clone, Copy)]
pub enum Position {
    Earliest,
    Latest,
}

/// The run's admin connection: creates the topic, learns the layout, lists offsets.
pub enum Admin {
    Native(Connection),
    Kafka(KafkaClient),
}

impl Admin {
    pub fn connect(plan: &Plan) -> anyhow::Result<Admin> {
        let reach = || format!("cannot reach the broker at {}", plan.broker);
        Ok(match plan.protocol {
            Protocol::Native => {
                Admin::Native(Connection::connect(&plan.broker, CLIENT_ID).with_context(reach)?)
            }
            Protocol::Kafka => {
                Admin::Kafka(KafkaClient::connect(&plan.broker, CLIENT_ID).with_context(reach)?)
            }
        })
    }

    /// Creates the topic if missing (an existing topic keeps its configs).
    pub fn create_topic(&mut self, plan: &Plan) -> anyhow::Result<()> {
        let exists_note = || {
            if !plan.topic_config.is_empty() {
                eprintln!(
                    "note: topic {} exists; its configs are kept and --topic-config is not applied",
                    plan.topic
                );
            }
        };
        match self {
            Admin::Native(connection) => {
                let created = connection.create_replicated_topic(
                    &plan.topic,
                    plan.partitions,
                    plan.replication_factor,
                    &plan.topic_config,
                )?;
                match created.status.code {
                    ErrorCode::None => {}
                    ErrorCode::TopicAlreadyExists => exists_note(),
                    _ => bail!("cannot create topic {}: {}", plan.topic, created.status),
                }
            }
            Admin::Kafka(client) => {
                let created = client.create_topic(
                    &plan.topic,
                    plan.partitions,
                    plan.replication_factor as i16,
                    &plan.topic_config,
                )?;
                let result = created
                    .topics
                    .first()
                    .context("CreateTopics answered no topic")?;
                match result.error_code {
                    kafka::error::NONE => {}
                    kafka::error::TOPIC_ALREADY_EXISTS => exists_note(),
                    code => bail!(
                        "cannot create topic {}: Kafka error {code}{}",
                        plan.topic,
                        result
                            .error_message
                            .as_deref()
                            .map(|message| format!(" ({message})"))
                            .unwrap_or_default()
                    ),
                }
            }
        }
        Ok(())
    }

    /// Where the topic's partitions live (an existing topic keeps its partition count,
    /// which goes into `plan`).
    pub fn layout(&mut self, plan: &mut Plan) -> anyhow::Result<Layout> {
        let layout = match self {
            Admin::Native(_) => {
                // Just created, a topic's partitions may take a moment to have leaders.
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    match Layout::learn(plan.protocol, &plan.broker, &plan.topic) {
                        Err(_) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(100))
                        }
                        learnt => break learnt?,
                    }
                }
            }
            Admin::Kafka(client) => kafka_layout(client, &plan.topic, Duration::from_secs(10))?,
        };
        plan.partitions = layout.owners.len() as u32;
        Ok(layout)
    }

    /// Every partition's earliest or latest offset.
    pub fn offsets(
        &mut self,
        plan: &Plan,
        layout: &Layout,
        at: Position,
    ) -> anyhow::Result<Vec<i64>> {
        match self {
            Admin::Native(_) => {
                let at = match at {
                    Position::Earliest => spate::protocol::OFFSET_EARLIEST,
                    Position::Latest => spate::protocol::OFFSET_LATEST,
                };
                // Asked of each partition's leader (in a cluster, the bootstrap node leads
                // some partitions only).
                let mut offsets = vec![-1i64; layout.owners.len()];
                for (owner, partitions) in by_owner(layout, 0..plan.partitions) {
                    let mut leader = Connection::connect(layout.address(owner), CLIENT_ID)?;
                    for partition in partitions {
                        // A topic just created may not be known to every node yet.
                        let deadline = Instant::now() + Duration::from_secs(10);
                        offsets[partition as usize] = loop {
                            match leader.list_offset(&plan.topic, partition, at) {
                                Err(spate::client::ClientError::Broker(status))
                                    if (status.code.is_retriable()
                                        || status.code == ErrorCode::UnknownTopicOrPartition)
                                        && Instant::now() < deadline =>
                                {
                                    std::thread::sleep(Duration::from_millis(20));
                                }
                                answer => break answer?,
                            }
                        };
                    }
                }
                Ok(offsets)
            }
            Admin::Kafka(_) => {
                let timestamp = match at {
                    Position::Earliest => -2,
                    Position::Latest => -1,
                };
                // ListOffsets goes to each partition's leader.
                let mut offsets = vec![-1i64; layout.owners.len()];
                for (owner, partitions) in by_owner(layout, 0..plan.partitions) {
                    let mut leader = KafkaClient::connect(layout.address(owner), CLIENT_ID)?;
                    let partitions: Vec<i32> = partitions.iter().map(|&p| p as i32).collect();
                    let answer = leader.list_offsets(&plan.topic, &partitions, timestamp)?;
                    for partition in answer.topics.into_iter().flat_map(|(_, p)| p) {
                        if partition.error_code != kafka::error::NONE {
                            bail!(
                                "ListOffsets of partition {}: Kafka error {}",
                                partition.partition_index,
                                partition.error_code
                            );
                        }
                        *offsets
                            .get_mut(partition.partition_index as usize)
                            .context("ListOffsets answered an unasked partition")? =
                            partition.offset;
                    }
                }
                Ok(offsets)
            }
        }
    }
}

/// `partitions` grouped by owner.
pub fn by_owner(
    layout: &Layout,
    partitions: impl IntoIterator<Item = u32>,
) -> HashMap<i32, Vec<u32>> {
    let mut grouped: HashMap<i32, Vec<u32>> = HashMap::new();
    for partition in partitions {
        grouped
            .entry(layout.owners[partition as usize])
            .or_default()
            .push(partition);
    }
    grouped
}

/// The topic's leaders from Kafka metadata; waits (up to `wait`) for every partition to
/// have one, as a Kafka cluster takes a moment after creating a topic.
fn kafka_layout(client: &mut KafkaClient, topic: &str, wait: Duration) -> anyhow::Result<Layout> {
    let deadline = Instant::now() + wait;
    loop {
        let metadata = client.metadata(Some(vec![topic.to_string()]))?;
        let found = metadata
            .topics
            .iter()
            .find(|found| found.name == topic)
            .with_context(|| format!("metadata does not list topic {topic}"))?;
        let mut partitions = found.partitions.clone();
        partitions.sort_by_key(|partition| partition.partition_index);
        let ready = found.error_code == kafka::error::NONE
            && !partitions.is_empty()
            && partitions.iter().enumerate().all(|(index, partition)| {
                partition.partition_index == index as i32
                    && partition.error_code == kafka::error::NONE
                    && partition.leader_id >= 0
            });
        if ready {
            let addresses = metadata
                .brokers
                .iter()
                .map(|broker| (broker.node_id, format!("{}:{}", broker.host, broker.port)))
                .collect::<HashMap<_, _>>();
            let owners: Vec<i32> = partitions.iter().map(|p| p.leader_id).collect();
            if let Some(missing) = owners.iter().find(|owner| !addresses.contains_key(owner)) {
                bail!("metadata names leader {missing} but no broker with that id");
            }
            return Ok(Layout { owners, addresses });
        }
        if Instant::now() >= deadline {
            bail!(
                "topic {topic} has no leader for every partition after {} s (topic error {})",
                wait.as_secs(),
                found.error_code
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a producer needs of a protocol: a pipeline to an owner, a produce request for one
/// partition's batch, and the verdict on its answer.
pub trait ProduceWire: Wire + Sized {
    fn open<T: Send + 'static>(
        address: &str,
        max_in_flight: usize,
        answers: mpsc::Sender<Answer<T, Self::Response>>,
    ) -> anyhow::Result<Pipeline<T, Self>>;

    fn produce(plan: &Plan, partition: u32, records: Bytes) -> Self::Request;

    /// Ok when every partition of the answer was appended; else the first refusal.
    fn verdict(response: Self::Response) -> Result<(), Refusal>;
}

impl ProduceWire for Native {
    fn open<T: Send + 'static>(
        address: &str,
        max_in_flight: usize,
        answers: mpsc::Sender<Answer<T>>,
    ) -> anyhow::Result<Pipeline<T>> {
        let connection = Connection::connect(address, CLIENT_ID)?;
        Ok(Pipeline::new(connection, max_in_flight, answers)?)
    }

    fn produce(plan: &Plan, partition: u32, records: Bytes) -> Request {
        Request::Produce(ProduceRequest {
            acks: plan.acks,
            timeout_ms: 30_000,
            topics: vec![ProduceTopic {
                name: plan.topic.clone(),
                partitions: vec![ProducePartition { partition, records }],
            }],
        })
    }

    fn verdict(response: Response) -> Result<(), Refusal> {
        let refused = |status: spate::protocol::Status| Refusal {
            retriable: status.code.is_retriable(),
            message: status.to_string(),
        };
        match response {
            Response::Produce(response) => response
                .topics
                .into_iter()
                .flat_map(|topic| topic.partitions)
                .find(|partition| !partition.status.is_ok())
                .map_or(Ok(()), |partition| Err(refused(partition.status))),
            Response::Failed(status) => Err(refused(status)),
            _ => Err(Refusal::fatal("an answer of the wrong kind".to_string())),
        }
    }
}

impl ProduceWire for KafkaWire {
    fn open<T: Send + 'static>(
        address: &str,
        max_in_flight: usize,
        answers: mpsc::Sender<Answer<T, Bytes>>,
    ) -> anyhow::Result<Pipeline<T, KafkaWire>> {
        let client = KafkaClient::connect(address, CLIENT_ID)?;
        Ok(client.into_pipeline(max_in_flight, answers)?)
    }

    fn produce(plan: &Plan, partition: u32, records: Bytes) -> (kafka::KafkaRequest, i16) {
        let acks = match plan.acks {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        };
        (
            produce_request(&plan.topic, partition as i32, records, acks),
            PRODUCE_VERSION,
        )
    }

    fn verdict(body: Bytes) -> Result<(), Refusal> {
        let response = ProduceResponse::decode(body, PRODUCE_VERSION)
            .map_err(|error| Refusal::fatal(format!("an undecodable produce answer: {error}")))?;
        match response
            .topics
            .into_iter()
            .flat_map(|(_, partitions)| partitions)
            .find(|partition| partition.error_code != kafka::error::NONE)
        {
            None => Ok(()),
            Some(partition) => Err(Refusal {
                retriable: matches!(
                    partition.error_code,
                    kafka::error::LEADER_NOT_AVAILABLE
                        | kafka::error::NOT_LEADER_OR_FOLLOWER
                        | kafka::error::REQUEST_TIMED_OUT
                        | kafka::error::NOT_ENOUGH_REPLICAS
                        | kafka::error::NOT_ENOUGH_REPLICAS_AFTER_APPEND
                ),
                message: format!(
                    "Kafka error {}{}",
                    partition.error_code,
                    partition
                        .error_message
                        .map(|message| format!(": {message}"))
                        .unwrap_or_default()
                ),
            }),
        }
    }
}

/// A consumer's connection to one owner: a long-polling fetch of some partitions.
pub trait Fetcher: Send {
    /// Each asked partition's stored batches from its offset (possibly ending in a partial
    /// batch, which the caller skips and asks for again).
    fn fetch(
        &mut self,
        topic: &str,
        partitions: &[(u32, i64)],
    ) -> anyhow::Result<Vec<(u32, Bytes)>>;
}

pub fn fetcher(protocol: Protocol, address: &str) -> anyhow::Result<Box<dyn Fetcher>> {
    Ok(match protocol {
        Protocol::Native => Box::new(Connection::connect(address, CLIENT_ID)?),
        Protocol::Kafka => Box::new(KafkaClient::connect(address, CLIENT_ID)?),
    })
}

impl Fetcher for Connection {
    fn fetch(
        &mut self,
        topic: &str,
        partitions: &[(u32, i64)],
    ) -> anyhow::Result<Vec<(u32, Bytes)>> {
        let request = Request::Fetch(spate::protocol::FetchRequest {
            max_wait_ms: FETCH_WAIT_MS,
            min_bytes: 1,
            max_bytes: FETCH_BYTES,
            topics: vec![spate::protocol::FetchTopic {
                name: topic.to_string(),
                partitions: partitions
                    .iter()
                    .map(|&(partition, offset)| spate::protocol::FetchPartition {
                        partition,
                        offset,
                        max_bytes: PARTITION_FETCH_BYTES,
                    })
                    .collect(),
            }],
        });
        let Response::Fetch(response) = self.call(&request)? else {
            bail!("a fetch answered with another kind");
        };
        response
            .topics
            .into_iter()
            .flat_map(|topic| topic.partitions)
            .map(|partition| {
                if !partition.status.is_ok() {
                    bail!("partition {}: {}", partition.partition, partition.status);
                }
                Ok((partition.partition, partition.records))
            })
            .collect()
    }
}

impl Fetcher for KafkaClient {
    fn fetch(
        &mut self,
        topic: &str,
        partitions: &[(u32, i64)],
    ) -> anyhow::Result<Vec<(u32, Bytes)>> {
        let request = FetchRequest {
            max_wait_ms: FETCH_WAIT_MS as i32,
            min_bytes: 1,
            max_bytes: FETCH_BYTES as i32,
            isolation_level: 0,
            // No fetch session: every fetch names its partitions in full.
            session_id: 0,
            session_epoch: -1,
            topics: vec![FetchTopic {
                topic: topic.to_string(),
                partitions: partitions
                    .iter()
                    .map(|&(partition, offset)| FetchPartition {
                        partition: partition as i32,
                        fetch_offset: offset,
                        partition_max_bytes: PARTITION_FETCH_BYTES as i32,
                    })
                    .collect(),
            }],
        };
        let response = KafkaClient::fetch(self, request)?;
        if response.error_code != kafka::error::NONE {
            bail!("fetch: Kafka error {}", response.error_code);
        }
        response
            .topics
            .into_iter()
            .flat_map(|(_, partitions)| partitions)
            .map(|partition| {
                if partition.error_code != kafka::error::NONE {
                    bail!(
                        "partition {}: Kafka error {}",
                        partition.partition_index,
                        partition.error_code
                    );
                }
                Ok((partition.partition_index as u32, partition.records))
            })
            .collect()
    }
}
