//! Shard-aware routing: one connection per shard of the broker, so that each partition's
//! requests go straight to the shard that owns it and cross no core inside the broker.

use std::collections::HashMap;

use super::{ClientError, Connection};

pub struct ShardRouter {
    client_id: String,
    /// Where the first metadata came from: asked again, with every shard metadata named,
    /// when the partitions' leaders move.
    bootstrap: String,
    /// `host:port` of each shard, from metadata.
    addresses: HashMap<u16, String>,
    /// Owner of each partition of `topic`.
    owners: Vec<u16>,
    connections: HashMap<u16, Connection>,
    topic: String,
}

impl ShardRouter {
    /// Learns the topic's partitions and the shards' addresses through `bootstrap`.
    pub fn new(
        mut bootstrap: Connection,
        topic: &str,
        client_id: &str,
    ) -> Result<ShardRouter, ClientError> {
        let (owners, addresses) = Self::learn(&mut bootstrap, topic)?;
        let mut connections = HashMap::new();
        let bootstrap_address = bootstrap.peer_address();
        connections.insert(bootstrap.versions.shard_id, bootstrap);
        Ok(ShardRouter {
            client_id: client_id.to_string(),
            bootstrap: bootstrap_address,
            addresses,
            owners,
            connections,
            topic: topic.to_string(),
        })
    }

    /// Asks for the topic's metadata again (a leader moved, or a node went away): through
    /// the bootstrap address, else through any shard the last metadata named. The
    /// connections to shards are kept, but those to shards no longer named are closed.
    pub fn refresh(&mut self) -> Result<(), ClientError> {
        let mut candidates = vec![self.bootstrap.clone()];
        candidates.extend(self.addresses.values().cloned());
        let mut last_error = ClientError::Unexpected;
        for address in candidates {
            let learnt = Connection::connect(&address, &self.client_id)
                .and_then(|mut connection| Self::learn(&mut connection, &self.topic));
            match learnt {
                Ok((owners, addresses)) => {
                    self.connections
                        .retain(|shard, _| addresses.contains_key(shard));
                    self.owners = owners;
                    self.addresses = addresses;
                    return Ok(());
                }
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }

    /// Closes the connection to `shard` (it failed); the next use opens a new one.
    pub fn forget(&mut self, shard: u16) {
        self.connections.remove(&shard);
    }

    /// The topic's partition owners and every shard's address, from `connection`.
    #[allow(clippy::type_complexity)]
    fn learn(
        connection: &mut Connection,
        topic: &str,
    ) -> Result<(Vec<u16>, HashMap<u16, String>), ClientError> {
        let metadata = connection.metadata(&[topic])?;
        let topic_metadata = metadata
            .topics
            .into_iter()
            .next()
            .ok_or(ClientError::Unexpected)?;
        if !topic_metadata.status.is_ok() {
            return Err(ClientError::Broker(topic_metadata.status));
        }
        let mut owners = vec![0u16; topic_metadata.partitions.len()];
        for partition in &topic_metadata.partitions {
            *owners
                .get_mut(partition.partition as usize)
                .ok_or(ClientError::Unexpected)? = partition.shard_id;
        }
        let addresses = metadata
            .shards
            .into_iter()
            .map(|shard| (shard.shard_id, format!("{}:{}", shard.host, shard.port)))
            .collect();
        Ok((owners, addresses))
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn partitions(&self) -> u32 {
        self.owners.len() as u32
    }

    /// `host:port` of shard `shard`'s own listener, as metadata advertised it.
    pub fn shard_address(&self, shard: u16) -> Option<&str> {
        self.addresses.get(&shard).map(String::as_str)
    }

    /// Every shard's address that metadata named (in a cluster, every live node's).
    pub fn shard_addresses(&self) -> Vec<String> {
        let mut addresses: Vec<String> = self.addresses.values().cloned().collect();
        addresses.sort();
        addresses
    }

    /// The shard that owns `partition`.
    pub fn owner(&self, partition: u32) -> Option<u16> {
        self.owners.get(partition as usize).copied()
    }

    /// A connection to the shard that owns `partition` (opened on first use). Unknown
    /// partitions get the bootstrap connection, whose broker answers with the error.
    pub fn connection_for(&mut self, partition: u32) -> Result<&mut Connection, ClientError> {
        let shard = match self.owner(partition) {
            Some(shard) if self.addresses.contains_key(&shard) => shard,
            _ => match self.connections.keys().next() {
                Some(shard) => *shard,
                // Every connection failed since: the bootstrap address answers.
                None => {
                    let connection = Connection::connect(&self.bootstrap, &self.client_id)?;
                    let shard = connection.versions.shard_id;
                    self.connections.insert(shard, connection);
                    shard
                }
            },
        };
        if !self.connections.contains_key(&shard) {
            let connection = Connection::connect(&self.addresses[&shard], &self.client_id)?;
            self.connections.insert(shard, connection);
        }
        Ok(self.connections.get_mut(&shard).expect("inserted above"))
    }
}
