//! A small blocking Kafka client on the codec of this module: what the load generator's
//! `--protocol kafka` and the tests use to speak Kafka's protocol to any Kafka-compatible
//! broker. `KafkaClient` sends one request at a time (or pipelines by hand, with `send`
//! and `receive`); `KafkaWire` lets `client::Pipeline` keep many in flight.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::client::read_more;
use crate::protocol::split_frame;

use super::{
    CreatableTopic, CreateTopicsRequest, CreateTopicsResponse, DescribeClusterRequest,
    DescribeClusterResponse, FetchRequest, FetchResponse, InitProducerIdRequest,
    InitProducerIdResponse, KafkaError, KafkaRequest, ListOffsetsPartition, ListOffsetsRequest,
    ListOffsetsResponse, ListOffsetsTopic, MetadataRequest, MetadataResponse, ProducePartition,
    ProduceRequest, ProduceResponse, ProduceTopic, encode_request,
};

/// Versions the client speaks (all within what Spate serves, and what Kafka 2.1+ serves).
pub const PRODUCE_VERSION: i16 = 7;
pub const FETCH_VERSION: i16 = 10;
pub const METADATA_VERSION: i16 = 7;
pub const INIT_PRODUCER_ID_VERSION: i16 = 1;
pub const CREATE_TOPICS_VERSION: i16 = 2;
pub const LIST_OFFSETS_VERSION: i16 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("undecodable answer: {0}")]
    Decode(#[from] KafkaError),
    #[error("answer {found} where {expected} was expected")]
    Correlation { expected: i32, found: i32 },
    #[error("unusable answer frame: {0}")]
    Frame(#[from] crate::protocol::ProtocolError),
}

/// Kafka's protocol for `client::Pipeline`: a request goes with the version to encode it
/// at, and each answer is the body after its (v0, non-flexible) response header, for the
/// caller to decode with the matching `decode`. Use non-flexible versions (such as the
/// constants above).
pub struct KafkaWire {
    pub client_id: String,
}

impl crate::client::Wire for KafkaWire {
    type Request = (KafkaRequest, i16);
    type Response = Bytes;
    type Expect = ();

    fn encode(
        &self,
        (request, version): &(KafkaRequest, i16),
        correlation_id: u32,
    ) -> (BytesMut, ()) {
        (
            encode_request(request, *version, correlation_id as i32, &self.client_id),
            (),
        )
    }

    fn decode((): (), body: Bytes) -> Result<Bytes, crate::client::ClientError> {
        Ok(body)
    }
}

/// The largest answer the client takes.
const ANSWER_BYTES_MAX: usize = 256 << 20;

pub struct KafkaClient {
    stream: TcpStream,
    client_id: String,
    next_correlation: i32,
    /// Bytes read and not yet handed out.
    buffer: BytesMut,
}

impl KafkaClient {
    pub fn connect(address: &str, client_id: &str) -> Result<KafkaClient, ClientError> {
        let stream = TcpStream::connect(address)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(KafkaClient {
            stream,
            client_id: client_id.to_string(),
            next_correlation: 1,
            buffer: BytesMut::new(),
        })
    }

    /// Sends a request without waiting; returns its correlation id.
    pub fn send(&mut self, request: &KafkaRequest, version: i16) -> Result<i32, ClientError> {
        let correlation_id = self.next_correlation;
        self.next_correlation = self.next_correlation.wrapping_add(1);
        let frame = encode_request(request, version, correlation_id, &self.client_id);
        self.stream.write_all(&frame)?;
        Ok(correlation_id)
    }

    /// Reads the next answer (its body, after the response header v0), which must be
    /// `correlation_id`'s: Kafka answers a connection's requests in order.
    pub fn receive(&mut self, correlation_id: i32) -> Result<Bytes, ClientError> {
        loop {
            if let Some(frame) = split_frame(&mut self.buffer, ANSWER_BYTES_MAX)? {
                if frame.len() < 4 {
                    return Err(ClientError::Decode(KafkaError::Truncated(
                        "response header",
                    )));
                }
                let found = i32::from_be_bytes(frame[..4].try_into().expect("4 bytes"));
                if found != correlation_id {
                    return Err(ClientError::Correlation {
                        expected: correlation_id,
                        found,
                    });
                }
                return Ok(frame.slice(4..));
            }
            read_more(&mut self.stream, &mut self.buffer).map_err(|error| match error {
                crate::client::ClientError::Io(error) => ClientError::Io(error),
                other => ClientError::Io(std::io::Error::other(other.to_string())),
            })?;
        }
    }

    pub fn call(&mut self, request: &KafkaRequest, version: i16) -> Result<Bytes, ClientError> {
        let correlation_id = self.send(request, version)?;
        self.receive(correlation_id)
    }

    pub fn metadata(
        &mut self,
        topics: Option<Vec<String>>,
    ) -> Result<MetadataResponse, ClientError> {
        let request = KafkaRequest::Metadata(MetadataRequest {
            topics,
            allow_auto_topic_creation: false,
        });
        let body = self.call(&request, METADATA_VERSION)?;
        Ok(MetadataResponse::decode(body, METADATA_VERSION)?)
    }

    /// Produces `records` (whole batches) to one partition.
    pub fn produce(
        &mut self,
        topic: &str,
        partition: i32,
        records: Bytes,
        acks: i16,
    ) -> Result<ProduceResponse, ClientError> {
        let body = self.call(
            &produce_request(topic, partition, records, acks),
            PRODUCE_VERSION,
        )?;
        Ok(ProduceResponse::decode(body, PRODUCE_VERSION)?)
    }

    pub fn fetch(&mut self, request: FetchRequest) -> Result<FetchResponse<Bytes>, ClientError> {
        let body = self.call(&KafkaRequest::Fetch(request), FETCH_VERSION)?;
        Ok(FetchResponse::decode(body, FETCH_VERSION)?)
    }

    pub fn describe_cluster(&mut self) -> Result<DescribeClusterResponse, ClientError> {
        let request = KafkaRequest::DescribeCluster(DescribeClusterRequest {
            include_cluster_authorized_operations: false,
        });
        let body = self.call(&request, 0)?;
        Ok(DescribeClusterResponse::decode(body)?)
    }

    pub fn init_producer_id(&mut self) -> Result<InitProducerIdResponse, ClientError> {
        let request = KafkaRequest::InitProducerId(InitProducerIdRequest {
            transactional_id: None,
            transaction_timeout_ms: 60_000,
        });
        let body = self.call(&request, INIT_PRODUCER_ID_VERSION)?;
        Ok(InitProducerIdResponse::decode(body)?)
    }

    /// Creates `topic` (replication factor 1, as a single broker has it).
    pub fn create_topic(
        &mut self,
        topic: &str,
        partitions: u32,
        replication_factor: i16,
        configs: &[(String, String)],
    ) -> Result<CreateTopicsResponse, ClientError> {
        let request = KafkaRequest::CreateTopics(CreateTopicsRequest {
            topics: vec![CreatableTopic {
                name: topic.to_string(),
                num_partitions: partitions as i32,
                replication_factor,
                assignments: 0,
                configs: configs
                    .iter()
                    .map(|(key, value)| (key.clone(), Some(value.clone())))
                    .collect(),
            }],
            timeout_ms: 30_000,
            validate_only: false,
        });
        let body = self.call(&request, CREATE_TOPICS_VERSION)?;
        Ok(CreateTopicsResponse::decode(body, CREATE_TOPICS_VERSION)?)
    }

    /// Each partition's offset at `timestamp` (-2 earliest, -1 latest), asked of this
    /// broker (which must lead them).
    pub fn list_offsets(
        &mut self,
        topic: &str,
        partitions: &[i32],
        timestamp: i64,
    ) -> Result<ListOffsetsResponse, ClientError> {
        let request = KafkaRequest::ListOffsets(ListOffsetsRequest {
            isolation_level: 0,
            topics: vec![ListOffsetsTopic {
                name: topic.to_string(),
                partitions: partitions
                    .iter()
                    .map(|&partition_index| ListOffsetsPartition {
                        partition_index,
                        timestamp,
                    })
                    .collect(),
            }],
        });
        let body = self.call(&request, LIST_OFFSETS_VERSION)?;
        Ok(ListOffsetsResponse::decode(body, LIST_OFFSETS_VERSION)?)
    }

    /// Hands the connection to a `client::Pipeline` speaking `KafkaWire`.
    pub fn into_pipeline<T: Send + 'static>(
        self,
        max_in_flight: usize,
        answers: std::sync::mpsc::Sender<crate::client::Answer<T, Bytes>>,
    ) -> Result<crate::client::Pipeline<T, KafkaWire>, crate::client::ClientError> {
        crate::client::Pipeline::start(
            KafkaWire {
                client_id: self.client_id,
            },
            self.stream,
            self.buffer,
            self.next_correlation as u32,
            max_in_flight,
            answers,
        )
    }
}

/// A produce request for one partition's batches.
pub fn produce_request(topic: &str, partition: i32, records: Bytes, acks: i16) -> KafkaRequest {
    KafkaRequest::Produce(ProduceRequest {
        transactional_id: None,
        acks,
        timeout_ms: 30_000,
        topics: vec![ProduceTopic {
            name: topic.to_string(),
            partitions: vec![ProducePartition {
                index: partition,
                records: Some(records),
            }],
        }],
    })
}
