use spate::protocol::Status;

use super::{connect, describe};

fn check(status: Status, what: &str) -> Result<(), String> {
    if status.is_ok() {
        Ok(())
    } else {
        Err(format!("{what}: {status}"))
    }
}

pub fn create(broker: &str, name: &str, partitions: u32, configs: &[String]) -> Result<(), String> {
    let mut pairs = Vec::new();
    for config in configs {
        let (key, value) = config
            .split_once('=')
            .ok_or_else(|| format!("invalid --config {config:?}: expected key=value"))?;
        pairs.push((key.to_string(), value.to_string()));
    }
    let mut connection = connect(broker)?;
    let created = connection
        .create_topic(name, partitions, &pairs)
        .map_err(describe)?;
    check(created.status, &format!("cannot create topic {name}"))?;
    println!("Created topic {name} with {partitions} partitions.");
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
    let configs: Vec<String> = topic
        .configs
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    println!(
        "Topic: {}\tPartitionCount: {}\tConfigs: {}",
        topic.name,
        topic.partitions,
        configs.join(",")
    );
    for partition in &metadata.topics[0].partitions {
        let start = connection
            .list_offset(name, partition.partition, spate::protocol::OFFSET_EARLIEST)
            .map_err(describe)?;
        let end = connection
            .list_offset(name, partition.partition, spate::protocol::OFFSET_LATEST)
            .map_err(describe)?;
        println!(
            "\tTopic: {name}\tPartition: {}\tShard: {}\tLogStartOffset: {start}\tLogEndOffset: {end}",
            partition.partition, partition.shard_id
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
