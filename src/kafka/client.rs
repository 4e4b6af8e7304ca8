//! A small blocking Kafka client on the codec of this module: what the load generator's
//! `--protocol kafka` and the tests use to speak Kafka's protocol to any Kafka-compatible
//! broker (one request at a time per connection; pipelining is the caller's, with
//! `send` and `receive`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::{
    FetchRequest, FetchResponse, InitProducerIdRequest, InitProducerIdResponse, KafkaError,
    KafkaRequest, MetadataRequest, MetadataResponse, ProducePartition, ProduceRequest,
    ProduceResponse, ProduceTopic, encode_request,
};

/// Versions the client speaks (all within what Spate serves, and what Kafka 2.1+ serves).
pub const PRODUCE_VERSION: i16 = 7;
pub const FETCH_VERSION: i16 = 10;
pub const METADATA_VERSION: i16 = 7;
pub const INIT_PRODUCER_ID_VERSION: i16 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("undecodable answer: {0}")]
    Decode(#[from] KafkaError),
    #[error("answer {found} where {expected} was expected")]
    Correlation { expected: i32, found: i32 },
    #[error("answer frame of {0} bytes")]
    BadLength(i32),
}

pub struct KafkaClient {
    stream: TcpStream,
    client_id: String,
    next_correlation: i32,
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
        let mut length = [0u8; 4];
        self.stream.read_exact(&mut length)?;
        let length = i32::from_be_bytes(length);
        if !(4..=256 << 20).contains(&length) {
            return Err(ClientError::BadLength(length));
        }
        let mut frame = BytesMut::zeroed(length as usize);
        self.stream.read_exact(&mut frame)?;
        let found = i32::from_be_bytes(frame[..4].try_into().expect("4 bytes"));
        if found != correlation_id {
            return Err(ClientError::Correlation {
                expected: correlation_id,
                found,
            });
        }
        Ok(frame.freeze().slice(4..))
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

    pub fn init_producer_id(&mut self) -> Result<InitProducerIdResponse, ClientError> {
        let request = KafkaRequest::InitProducerId(InitProducerIdRequest {
            transactional_id: None,
            transaction_timeout_ms: 60_000,
        });
        let body = self.call(&request, INIT_PRODUCER_ID_VERSION)?;
        Ok(InitProducerIdResponse::decode(body)?)
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
