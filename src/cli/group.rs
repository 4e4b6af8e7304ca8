//! `spate group list|describe|reset-offsets|delete`, after Kafka's
//! `kafka-consumer-groups.sh`.

use std::collections::{BTreeMap, BTreeSet};

use spate::client::{ClientError, Connection, ShardRouter};
use spate::protocol::{
    ErrorCode, GENERATION_NONE, OFFSET_EARLIEST, OFFSET_LATEST, OffsetCommitPartition,
    OffsetCommitRequest, OffsetCommitTopic,
};

use super::{connect, describe};

/// Where `reset-offsets` moves a group's offsets.
#[derive(Debug, Clone, Copy)]
pub enum ResetTo {
    Earliest,
    Latest,
    Offset(i64),
}

fn group_error(group: &str, error: ClientError) -> String {
    match error {
        ClientError::Broker(status) => format!("group {group}: {status}"),
        other => describe(other),
    }
}

/// Every group: on a broker on its own, its shards' groups; in a cluster, each node lists
/// the groups it coordinates, so every live node is asked (as Kafka's admin client asks
/// every broker).
pub fn list(broker: &str) -> Result<(), String> {
    let mut connection = connect(broker)?;
    let mut groups = connection.list_groups().map_err(describe)?;
    let cluster = connection.describe_cluster(&[]).map_err(describe)?;
    if cluster.clustered {
        for node in cluster
            .nodes
            .iter()
            .filter(|node| node.id != cluster.node_id && !node.fenced)
        {
            let listed =
                connect(&node.address).and_then(|mut other| other.list_groups().map_err(describe));
            match listed {
                Ok(listed) => groups.extend(listed),
                Err(error) => eprintln!("node {} ({}): {error}", node.id, node.address),
            }
        }
        groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        groups.dedup_by(|a, b| a.group_id == b.group_id);
    }
    println!("{:<32} {:<20} MEMBERS", "GROUP", "STATE");
    for group in groups {
        println!(
            "{:<32} {:<20} {}",
            group.group_id, group.state, group.members
        );
    }
    Ok(())
}

/// Partitions' offsets, each asked of the shard that leads the partition (in a cluster,
/// only its leader node answers), one router per topic.
struct Leaders<'a> {
    broker: &'a str,
    routers: BTreeMap<String, ShardRouter>,
}

impl Leaders<'_> {
    fn new(broker: &str) -> Leaders<'_> {
        Leaders {
            broker,
            routers: BTreeMap::new(),
        }
    }

    fn offset(&mut self, topic: &str, partition: u32, at: i64) -> Result<i64, String> {
        if !self.routers.contains_key(topic) {
            let router =
                ShardRouter::new(connect(self.broker)?, topic, "spate-cli").map_err(describe)?;
            self.routers.insert(topic.to_string(), router);
        }
        let router = self.routers.get_mut(topic).expect("inserted");
        router
            .connection_for(partition)
            .and_then(|leader| leader.list_offset(topic, partition, at))
            .map_err(describe)
    }
}

/// Partitions of `topic`, or an error naming it.
fn partition_count(connection: &mut Connection, topic: &str) -> Result<u32, String> {
    let described = connection
        .describe_topics(&[topic])
        .map_err(describe)?
        .pop()
        .ok_or("empty answer")?;
    if !described.status.is_ok() {
        return Err(format!("topic {topic}: {}", described.status));
    }
    Ok(described.partitions)
}

pub fn describe_group(broker: &str, group: &str) -> Result<(), String> {
    let mut connection = connect(broker)?;
    let description = connection
        .describe_group(group)
        .map_err(|error| group_error(group, error))?;
    let committed = connection
        .fetch_offsets(group, Vec::new())
        .map_err(|error| group_error(group, error))?;
    println!(
        "Group: {}\tState: {}\tGeneration: {}\tAssignor: {}\tMembers: {}",
        description.group_id,
        description.state,
        description.generation,
        if description.assignor.is_empty() {
            "-"
        } else {
            &description.assignor
        },
        description.members.len()
    );
    let mut owners: BTreeMap<(String, u32), (&str, &str)> = BTreeMap::new();
    let mut topics: BTreeSet<String> = BTreeSet::new();
    for member in &description.members {
        topics.extend(member.topics.iter().cloned());
        for topic in &member.assignment {
            for &partition in &topic.partitions {
                owners.insert(
                    (topic.name.clone(), partition),
                    (&member.member_id, &member.client_id),
                );
            }
        }
    }
    let mut offsets: BTreeMap<(String, u32), i64> = BTreeMap::new();
    for topic in committed {
        topics.insert(topic.name.clone());
        for partition in topic.partitions {
            offsets.insert((topic.name.clone(), partition.partition), partition.offset);
        }
    }
    println!(
        "{:<24} {:>9} {:>14} {:>14} {:>8}  {:<40} CLIENT-ID",
        "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG", "CONSUMER-ID"
    );
    let mut leaders = Leaders::new(broker);
    for topic in topics {
        let count = match partition_count(&mut connection, &topic) {
            Ok(count) => count,
            Err(_) => {
                println!("{topic:<24} (topic no longer exists)");
                continue;
            }
        };
        for partition in 0..count {
            let key = (topic.clone(), partition);
            // A partition without a leader now (a failover under way) shows no end.
            let end = leaders.offset(&topic, partition, OFFSET_LATEST).ok();
            let current = offsets.get(&key).copied().filter(|&offset| offset >= 0);
            let (member, client) = owners.get(&key).copied().unwrap_or(("-", "-"));
            let (current_text, lag_text) = match (current, end) {
                (Some(offset), Some(end)) => {
                    (offset.to_string(), (end - offset).max(0).to_string())
                }
                (Some(offset), None) => (offset.to_string(), "-".to_string()),
                (None, _) => ("-".to_string(), "-".to_string()),
            };
            let end = end.map_or("-".to_string(), |end| end.to_string());
            println!(
                "{topic:<24} {partition:>9} {current_text:>14} {end:>14} {lag_text:>8}  {member:<40} {client}"
            );
        }
    }
    Ok(())
}

pub fn reset_offsets(
    broker: &str,
    group: &str,
    topic: &str,
    to: ResetTo,
    dry_run: bool,
) -> Result<(), String> {
    let mut connection = connect(broker)?;
    let count = partition_count(&mut connection, topic)?;
    let mut partitions = Vec::new();
    let mut leaders = Leaders::new(broker);
    for partition in 0..count {
        let start = leaders.offset(topic, partition, OFFSET_EARLIEST)?;
        let end = leaders.offset(topic, partition, OFFSET_LATEST)?;
        let offset = match to {
            ResetTo::Earliest => start,
            ResetTo::Latest => end,
            ResetTo::Offset(offset) if offset < start => {
                eprintln!(
                    "{topic}-{partition}: offset {offset} is below the log start; using {start}"
                );
                start
            }
            ResetTo::Offset(offset) if offset > end => {
                eprintln!("{topic}-{partition}: offset {offset} is past the log end; using {end}");
                end
            }
            ResetTo::Offset(offset) => offset,
        };
        partitions.push(OffsetCommitPartition {
            partition,
            offset,
            metadata: String::new(),
        });
    }
    if !dry_run {
        let answer = connection
            .commit_offsets(OffsetCommitRequest {
                group_id: group.to_string(),
                generation: GENERATION_NONE,
                member_id: String::new(),
                topics: vec![OffsetCommitTopic {
                    name: topic.to_string(),
                    partitions: partitions.clone(),
                }],
            })
            .map_err(|error| match error {
                ClientError::Broker(status) if status.code == ErrorCode::GroupNotEmpty => format!(
                    "cannot reset the offsets of group {group}: {status} (reset-offsets needs a group with no active members)"
                ),
                other => group_error(group, other),
            })?;
        for topic in answer {
            for partition in topic.partitions {
                if !partition.status.is_ok() {
                    return Err(format!(
                        "cannot reset {}-{}: {}",
                        topic.name, partition.partition, partition.status
                    ));
                }
            }
        }
    }
    println!("{:<24} {:>9} NEW-OFFSET", "TOPIC", "PARTITION");
    for partition in partitions {
        println!(
            "{topic:<24} {:>9} {}",
            partition.partition, partition.offset
        );
    }
    if dry_run {
        println!("(dry run: nothing was committed)");
    }
    Ok(())
}

pub fn delete(broker: &str, group: &str) -> Result<(), String> {
    let mut connection = connect(broker)?;
    connection
        .delete_group(group)
        .map_err(|error| match error {
            ClientError::Broker(status) if status.code == ErrorCode::GroupNotEmpty => {
                format!("cannot delete group {group}: {status}")
            }
            other => group_error(group, other),
        })?;
    println!("Deleted group {group}.");
    Ok(())
}
