use super::{connect, describe};

/// `spate cluster describe`: the nodes, their state, and the controller.
pub fn describe_cluster(broker: &str) -> Result<(), String> {
    let mut connection = connect(broker)?;
    let cluster = connection.describe_cluster(&[]).map_err(describe)?;
    if !cluster.clustered {
        println!("Cluster: none (a broker on its own, answering at {broker})");
    }
    let controller = if cluster.controller < 0 {
        "none".to_string()
    } else {
        cluster.controller.to_string()
    };
    println!(
        "Controller: {controller}\tAnsweredBy: {}\tNodes: {}",
        cluster.node_id,
        cluster.nodes.len()
    );
    println!(
        "{:<5} {:<10} {:<22} {:<22} {:>6}",
        "NODE", "STATE", "ADDRESS", "KAFKA-ADDRESS", "SHARDS"
    );
    for node in &cluster.nodes {
        let state = if node.fenced {
            "fenced"
        } else if node.id as i64 == cluster.controller {
            "controller"
        } else {
            "live"
        };
        let kafka = if node.kafka_address.is_empty() {
            "-"
        } else {
            &node.kafka_address
        };
        println!(
            "{:<5} {:<10} {:<22} {:<22} {:>6}",
            node.id, state, node.address, kafka, node.shards
        );
    }
    Ok(())
}
