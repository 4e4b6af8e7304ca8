//! The broker's memory budget (`spate serve --memory-max`): a shard's tail caches together
//! stay within their share, whatever the number of busy partitions, and records dropped
//! from the caches are read from disk unchanged.

use spate::protocol::Acks;

use crate::server::{Broker, read_partition};
use crate::support::batch;

const PARTITIONS: u32 = 300;
/// Each partition receives this many batches of 64 KiB (115 MiB in all), far more than the
/// budget and less than each partition's own bound (8 MiB).
const BATCHES: usize = 6;

#[test]
fn hundreds_of_busy_partitions_stay_within_the_memory_budget_and_read_back_from_disk() {
    // One shard: its tail caches may hold half of 64 MiB.
    let broker = Broker::start_flagged(1, &["--memory-max", "64MiB"]);
    let mut client = broker.connect();
    let created = client
        .create_topic("busy", PARTITIONS, &[("flush.ms".into(), "100".into())])
        .unwrap();
    assert!(created.status.is_ok(), "{}", created.status);
    let before = broker.peak_resident_bytes();
    for round in 0..BATCHES {
        for partition in 0..PARTITIONS {
            let records = batch(&format!("b{partition}-{round}"), 64, 1000, 1_000);
            let answer = client
                .produce("busy", partition, records, Acks::All)
                .unwrap()
                .unwrap();
            assert!(answer.status.is_ok(), "{}", answer.status);
        }
    }
    let described = client.describe_broker().unwrap();
    let shard = &described.shards[0];
    assert_eq!(shard.memory_budget_bytes, 64 << 20);
    assert_eq!(shard.tail_cache_budget_bytes, 32 << 20);
    assert!(
        shard.tail_cache_bytes <= shard.tail_cache_budget_bytes,
        "{shard:?}"
    );
    assert!(shard.tail_cache_evicted_batches > 0, "{shard:?}");
    let grown = broker.peak_resident_bytes().saturating_sub(before);
    // Without the budget the caches alone would have grown by the 115 MiB written; with it
    // the broker stays within its --memory-max.
    assert!(
        grown < 64 << 20,
        "peak resident memory grew by {} MiB",
        grown >> 20
    );

    // Every record, cached or dropped from the cache, reads back as written.
    for partition in 0..PARTITIONS {
        let values = read_partition(&mut client, "busy", partition, 0);
        assert_eq!(values.len(), 64 * BATCHES, "partition {partition}");
        for (round, chunk) in values.chunks(64).enumerate() {
            for (index, (offset, value)) in chunk.iter().enumerate() {
                assert_eq!(*offset as usize, round * 64 + index);
                assert!(
                    value.starts_with(&format!("b{partition}-{round}-{index}")),
                    "partition {partition} offset {offset}"
                );
            }
        }
    }
}
