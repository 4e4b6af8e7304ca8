use spate::protocol::Status;

use super::{connect, describe};

fn check(status: Status, what: &str) -> Result<(), String> {
    if status.is_ok() {
        Ok(())
    } else {
        Err(format!("{what}: {status}"))
    }
}

pub fn create(
    broker: &str,
    name: &str,
    partitions: u32,
    replication_factor: u16,
    configs: &[String],
) -> Result<(), String> {
    let mut pairs = Vec::new();
    for config in configs {
        let (key, value) = config
            .split_once('=')
            .ok_or_else(|| format!("invalid --config {config:?}: expected key=value"))?;
        pairs.push((key.to_string(), value.to_string()));
    }
    let mut connection = connect(broker)?;
    let created = connection
        .create_replicated_topic(name, partitions, replication_factor, &pairs)
        .map_err(describe)?;
    check(created.status, &format!("cannot create topic {name}"))?;
    if replication_factor > 1 {
        println!(
            "Created topic {name} with {partitions} partitions, {replication_factor} replicas each."
        );
    } else {
        println!("Created topic {name} with {partitions} partitions.");
    }
    Ok(())
}

pub fn list(broker: &str) -> Result<(), String> {
    let mut connection = connect(broker)?;
    let mut topics = connection.describe_topics(&[]).map_err(describe)?;
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    for topic in topics {
        println!("{}", topic.name);
    }
    Ok(())
}

pub fn describe_topic(broker: &str, name: &str) -> Result<(), String> {
    let mut connection = connect(broker)?;
    let topic = connection
        .describe_topics(&[name])
        .map_err(describe)?
        .pop()
        .ok_or("empty answer")?;
    check(topic.status, &format!("cannot describe topic {name}"))?;
    let metadata = connection.metadata(&[name]).map_err(describe)?;
    let cluster = connection.describe_cluster(&[name]).map_err(describe)?;
    let replicas = cluster.topics.into_iter().next().ok_or("empty answer")?;
    check(replicas.status, &format!("cannot describe topic {name}"))?;
    let configs: Vec<String> = topic
        .configs
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    println!(
        "Topic: {}\tPartitionCount: {}\tReplicationFactor: {}\tConfigs: {}",
        topic.name,
        topic.partitions,
        replicas
            .partitions
            .first()
            .map_or(1, |partition| partition.replicas.len()),
        configs.join(",")
    );
    // Offsets come from each partition's leader shard, wherever it is.
    let addresses: std::collections::HashMap<u16, String> = metadata
        .shards
        .iter()
        .map(|shard| (shard.shard_id, format!("{}:{}", shard.host, shard.port)))
        .collect();
    let mut leaders: std::collections::HashMap<u16, spate::client::Connection> =
        std::collections::HashMap::new();
    let ids = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    for (partition, placed) in metadata.topics[0]
        .partitions
        .iter()
        .zip(&replicas.partitions)
    {
        let offsets = match addresses.get(&partition.shard_id) {
            Some(address) => {
                let leader = match leaders.entry(partition.shard_id) {
                    std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                    std::collections::hash_map::Entry::Vacant(entry) => {
                        entry.insert(connect(address)?)
                    }
                };
                let start = leader
                    .list_offset(name, partition.partition, spate::protocol::OFFSET_EARLIEST)
                    .map_err(describe)?;
                let end = leader
                    .list_offset(name, partition.partition, spate::protocol::OFFSET_LATEST)
                    .map_err(describe)?;
                format!("LogStartOffset: {start}\tLogEndOffset: {end}")
            }
            None => "LogStartOffset: -\tLogEndOffset: -".to_string(),
        };
        let leader = if placed.leader < 0 {
            "none".to_string()
        } else {
            placed.leader.to_string()
        };
        println!(
            "\tTopic: {name}\tPartition: {}\tLeader: {leader}\tReplicas: {}\tIsr: {}\tLeaderEpoch: {}\tShard: {}\t{offsets}",
            partition.partition,
            ids(&placed.replicas),
            ids(&placed.isr),
            placed.leader_epoch,
            partition.shard_id % spate::broker::view::SHARDS_PER_NODE_MAX as u16,
        );
    }
    Ok(())
}

pub fn alter(broker: &str, name: &str, partitions: u32) -> Result<(), String> {
    let mut connection = connect(broker)?;
    let grown = connection
        .create_partitions(name, partitions)
        .map_err(describe)?;
    check(
        grown.status,
        &format!("cannot add partitions to topic {name}"),
    )?;
    println!("Topic {name} now has {partitions} partitions.");
    Ok(())
}

pub fn delete(broker: &str, name: &str) -> Result<(), String> {
    let mut connection = connect(broker)?;
    let deleted = connection.delete_topic(name).map_err(describe)?;
    check(deleted.status, &format!("cannot delete topic {name}"))?;
    println!("Deleted topic {name}.");
    Ok(())
}
