use super::{connect, describe};

/// `spate broker describe`: one line per shard, as a table.
pub fn describe_broker(broker: &str) -> Result<(), String> {
    let mut connection = connect(broker)?;
    let described = connection.describe_broker().map_err(describe)?;
    println!(
        "Broker: {broker}\tVersion: {}\tShards: {}\tOpenFiles: {}",
        described.broker_version,
        described.shards.len(),
        described.open_files
    );
    println!(
        "{:<6} {:>11} {:>12} {:>15} {:>18} {:>14} {:>21} {:>18} {:>21} {:>21} {:>17}",
        "SHARD",
        "PARTITIONS",
        "CONNECTIONS",
        "LONG-POLL-WAITS",
        "FORWARDED-REQUESTS",
        "MEMORY-BUDGET",
        "TAIL-CACHE/BUDGET",
        "CACHE-EVICTIONS",
        "REQUESTS/BUDGET",
        "READ-AHEAD/BUDGET",
        "SEGMENT-FILES/MAX"
    );
    for shard in &described.shards {
        println!(
            "{:<6} {:>11} {:>12} {:>15} {:>18} {:>14} {:>21} {:>18} {:>21} {:>21} {:>17}",
            shard.shard_id,
            shard.partitions,
            shard.connections,
            shard.long_poll_waits,
            shard.forwarded_requests,
            mebibytes(shard.memory_budget_bytes),
            format!(
                "{}/{}",
                mebibytes(shard.tail_cache_bytes),
                mebibytes(shard.tail_cache_budget_bytes)
            ),
            shard.tail_cache_evicted_batches,
            format!(
                "{}/{}",
                mebibytes(shard.request_bytes),
                mebibytes(shard.request_budget_bytes)
            ),
            format!(
                "{}/{}",
                mebibytes(shard.read_ahead_bytes),
                mebibytes(shard.read_ahead_budget_bytes)
            ),
            format!("{}/{}", shard.segment_files_open, shard.segment_files_max)
        );
    }
    Ok(())
}

fn mebibytes(bytes: u64) -> String {
    format!("{:.1}MiB", bytes as f64 / (1 << 20) as f64)
}
