//! Every shard's metrics in Prometheus' text exposition (OpenMetrics 1.0), written with
//! the `prometheus-client` crate: names, units, `_total` suffixes, label escaping and
//! histogram buckets as Prometheus expects them. Runs on the metrics thread, from the
//! shards' atomics and their last snapshots.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::{Counter, Histogram, Protocol, ShardMetrics, Snapshot};

type Labels = Vec<(&'static str, String)>;

/// The `/metrics` page of one broker.
pub struct Exposition {
    registry: Registry,
}

#[derive(Debug)]
struct Broker {
    shards: Vec<Arc<ShardMetrics>>,
    data_dir: PathBuf,
    /// Partitions (and group offsets) shown one series each, at most; the rest are
    /// counted in `partition_series_omitted`.
    partition_series_max: usize,
}

impl Exposition {
    pub fn new(
        shards: Vec<Arc<ShardMetrics>>,
        data_dir: PathBuf,
        partition_series_max: usize,
    ) -> Exposition {
        let mut registry = Registry::with_prefix("spate");
        registry.register_collector(Box::new(Broker {
            shards,
            data_dir,
            partition_series_max,
        }));
        Exposition { registry }
    }

    /// The page, in the OpenMetrics text format (`CONTENT_TYPE`).
    pub fn render(&self) -> String {
        let mut page = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut page, &self.registry);
        page
    }
}

/// What `render` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Collector for Broker {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshots: Vec<Arc<Snapshot>> = self
            .shards
            .iter()
            .map(|shard| {
                shard
                    .snapshot
                    .lock()
                    .map(|snapshot| snapshot.clone())
                    .unwrap_or_default()
            })
            .collect();
        self.encode_info(&mut encoder)?;
        self.encode_requests(&mut encoder)?;
        self.encode_traffic(&mut encoder)?;
        self.encode_storage(&mut encoder, &snapshots)?;
        self.encode_shard_gauges(&mut encoder, &snapshots)?;
        self.encode_partitions(&mut encoder, &snapshots)?;
        encode_filesystem(&mut encoder, &self.data_dir)
    }
}

fn shard_label(metrics: &ShardMetrics) -> Labels {
    vec![("shard", metrics.shard.to_string())]
}

fn with(mut labels: Labels, name: &'static str, value: impl ToString) -> Labels {
    labels.push((name, value.to_string()));
    labels
}

/// One counter family.
fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, value) in samples {
        family
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
    }
    Ok(())
}

/// One gauge family.
fn gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl IntoIterator<Item = (Labels, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, value) in samples {
        family.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

/// One histogram family.
fn histograms<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl IntoIterator<Item = (Labels, &'a Histogram)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Histogram)?;
    for (labels, histogram) in samples {
        let (sum, count, buckets) = histogram.read();
        family
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }
    Ok(())
}

fn per_protocol<'a, T: 'a>(
    shards: &'a [Arc<ShardMetrics>],
    pick: impl Fn(&'a ShardMetrics) -> &'a [T; 2] + 'a,
) -> impl Iterator<Item = (Labels, &'a T)> + 'a {
    shards.iter().flat_map(move |shard| {
        let values = pick(shard);
        Protocol::ALL.into_iter().map(move |protocol| {
            (
                with(shard_label(shard), "protocol", protocol.label()),
                &values[protocol as usize],
            )
        })
    })
}

fn per_shard<'a, T: 'a>(
    shards: &'a [Arc<ShardMetrics>],
    pick: impl Fn(&'a ShardMetrics) -> &'a T + 'a,
) -> impl Iterator<Item = (Labels, &'a T)> + 'a {
    shards
        .iter()
        .map(move |shard| (shard_label(shard), pick(shard)))
}

fn counted<'a>(
    samples: impl Iterator<Item = (Labels, &'a Counter)>,
) -> impl Iterator<Item = (Labels, u64)> {
    samples.map(|(labels, counter)| (labels, counter.get()))
}

impl Broker {
    fn encode_info(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let labels: Labels = vec![
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("shards", self.shards.len().to_string()),
        ];
        encoder
            .encode_descriptor(
                "build",
                "Spate's version and shard count",
                None,
                MetricType::Info,
            )?
            .encode_info(&labels)
    }

    fn encode_requests(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let shards = &self.shards;
        counters(
            encoder,
            "requests",
            "Requests decoded, by protocol and kind (API)",
            None,
            shards.iter().flat_map(|shard| {
                shard.requests().into_iter().map(|(protocol, kind, count)| {
                    let labels = with(shard_label(shard), "protocol", protocol.label());
                    (with(labels, "kind", kind), count)
                })
            }),
        )?;
        counters(
            encoder,
            "errors",
            "Failed answers (a whole request, or one partition of it), by Spate error code",
            None,
            shards.iter().flat_map(|shard| {
                shard
                    .errors()
                    .into_iter()
                    .map(|(code, count)| (with(shard_label(shard), "code", code), count))
            }),
        )?;
        counters(
            encoder,
            "malformed_frames",
            "Frames that could not be decoded; each closed its connection",
            None,
            counted(per_protocol(shards, |s| &s.malformed_frames)),
        )?;
        histograms(
            encoder,
            "produce_latency",
            "Produce requests from decoded to answered (durable under the topic's flush policy, replicated for acks=all)",
            Some(&Unit::Seconds),
            per_protocol(shards, |s| &s.produce_latency),
        )?;
        histograms(
            encoder,
            "fetch_latency",
            "Fetch requests from decoded to answered, long-poll waits included",
            Some(&Unit::Seconds),
            per_protocol(shards, |s| &s.fetch_latency),
        )?;
        counters(
            encoder,
            "forwarded_requests",
            "Partition requests sent over the shard mesh to the shard owning the partition",
            None,
            counted(per_shard(shards, |s| &s.forwarded_requests)),
        )
    }

    fn encode_traffic(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let shards = &self.shards;
        counters(
            encoder,
            "received",
            "Request bytes read from client connections",
            Some(&Unit::Bytes),
            counted(per_protocol(shards, |s| &s.received_bytes)),
        )?;
        counters(
            encoder,
            "sent",
            "Answer bytes written to client connections",
            Some(&Unit::Bytes),
            counted(per_protocol(shards, |s| &s.sent_bytes)),
        )?;
        gauges(
            encoder,
            "connections",
            "Client connections open",
            None,
            per_protocol(shards, |s| &s.connections).map(|(labels, gauge)| (labels, gauge.get())),
        )?;
        counters(
            encoder,
            "connections_accepted",
            "Client connections accepted",
            None,
            counted(per_protocol(shards, |s| &s.connections_accepted)),
        )
    }

    fn encode_storage(
        &self,
        encoder: &mut DescriptorEncoder,
        snapshots: &[Arc<Snapshot>],
    ) -> Result<(), std::fmt::Error> {
        let shards = &self.shards;
        histograms(
            encoder,
            "append_latency",
            "A partition's group write (its appends gathered into one aligned write), submitted to completed",
            Some(&Unit::Seconds),
            per_shard(shards, |s| &s.append_latency),
        )?;
        histograms(
            encoder,
            "sync_latency",
            "A durability round: one fdatasync, or one syncfs covering several segments",
            Some(&Unit::Seconds),
            per_shard(shards, |s| &s.sync_latency),
        )?;
        histograms(
            encoder,
            "sync_round_segments",
            "Segments made durable together per durability round (the shard's group commit)",
            None,
            per_shard(shards, |s| &s.sync_round_segments),
        )?;
        counters(
            encoder,
            "appended",
            "Record-batch bytes appended to this shard's logs",
            Some(&Unit::Bytes),
            counted(per_shard(shards, |s| &s.appended_bytes)),
        )?;
        counters(
            encoder,
            "appended_batches",
            "Record batches appended to this shard's logs",
            None,
            counted(per_shard(shards, |s| &s.appended_batches)),
        )?;
        counters(
            encoder,
            "tail_cache_hits",
            "Reads served from a partition's tail cache",
            None,
            counted(per_shard(shards, |s| &s.tail_cache_hits)),
        )?;
        counters(
            encoder,
            "tail_cache_misses",
            "Reads that went to disk (older than the tail cache holds)",
            None,
            counted(per_shard(shards, |s| &s.tail_cache_misses)),
        )?;
        let pools = |used: bool| {
            shards
                .iter()
                .zip(snapshots)
                .flat_map(move |(shard, snapshot)| {
                    snapshot.memory.iter().map(move |(pool, in_use, budget)| {
                        let value = if used { *in_use } else { *budget };
                        (with(shard_label(shard), "pool", pool), value as i64)
                    })
                })
        };
        gauges(
            encoder,
            "memory_used",
            "Memory in use per pool (tail cache, read-ahead, requests in flight)",
            Some(&Unit::Bytes),
            pools(true),
        )?;
        gauges(
            encoder,
            "memory_budget",
            "Each pool's share of the shard's --memory-max",
            Some(&Unit::Bytes),
            pools(false),
        )?;
        let files = |pick: fn(&Snapshot) -> u64| {
            shards
                .iter()
                .zip(snapshots)
                .map(move |(shard, snapshot)| (shard_label(shard), pick(snapshot) as i64))
        };
        gauges(
            encoder,
            "segment_files_open",
            "Segment files the shard holds open",
            None,
            files(|s| s.segment_files_open),
        )?;
        gauges(
            encoder,
            "segment_files_open_max",
            "The most segment files the shard keeps open (least recently used closed first)",
            None,
            files(|s| s.segment_files_max),
        )
    }

    fn encode_shard_gauges(
        &self,
        encoder: &mut DescriptorEncoder,
        snapshots: &[Arc<Snapshot>],
    ) -> Result<(), std::fmt::Error> {
        let shards = &self.shards;
        gauges(
            encoder,
            "partitions",
            "Partition replicas the shard holds",
            None,
            shards
                .iter()
                .zip(snapshots)
                .map(|(shard, snapshot)| (shard_label(shard), snapshot.partitions.len() as i64)),
        )?;
        gauges(
            encoder,
            "long_poll_waits",
            "Fetches waiting for new data on the shard's partitions",
            None,
            shards
                .iter()
                .zip(snapshots)
                .map(|(shard, snapshot)| (shard_label(shard), snapshot.long_poll_waits as i64)),
        )?;
        counters(
            encoder,
            "reactor_stalls",
            "Times the shard's reactor woke more than 25 ms late for a 100 ms timer (a task held the core, or the thread was descheduled)",
            None,
            counted(per_shard(shards, |s| &s.reactor_stalls)),
        )?;
        histograms(
            encoder,
            "reactor_lag",
            "How late the shard's reactor woke for a timer, sampled every 100 ms",
            Some(&Unit::Seconds),
            per_shard(shards, |s| &s.reactor_lag),
        )
    }

    fn encode_partitions(
        &self,
        encoder: &mut DescriptorEncoder,
        snapshots: &[Arc<Snapshot>],
    ) -> Result<(), std::fmt::Error> {
        let mut partitions: Vec<_> = snapshots.iter().flat_map(|s| &s.partitions).collect();
        partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        let ends: HashMap<(&str, u32), i64> = partitions
            .iter()
            .map(|p| ((p.topic.as_str(), p.partition), p.high_watermark))
            .collect();
        let omitted = partitions.len().saturating_sub(self.partition_series_max);
        partitions.truncate(self.partition_series_max);
        let labels = |topic: &str, partition: u32| -> Labels {
            vec![
                ("topic", topic.to_string()),
                ("partition", partition.to_string()),
            ]
        };
        let each = |pick: fn(&super::PartitionSample) -> i64| {
            partitions
                .iter()
                .map(move |p| (labels(&p.topic, p.partition), pick(p)))
        };
        gauges(
            encoder,
            "partition_log_start_offset",
            "A partition's first offset still held (retention moves it)",
            None,
            each(|p| p.log_start_offset),
        )?;
        gauges(
            encoder,
            "partition_log_end_offset",
            "One past a partition's last appended offset; rate() of it is the partition's append rate in records per second",
            None,
            each(|p| p.log_end_offset),
        )?;
        gauges(
            encoder,
            "partition_high_watermark",
            "One past a partition's last offset consumers may read (replicated to the in-sync replicas)",
            None,
            each(|p| p.high_watermark),
        )?;
        gauges(
            encoder,
            "partition_size",
            "A partition's segments' size on disk",
            Some(&Unit::Bytes),
            each(|p| p.size_bytes as i64),
        )?;
        gauges(
            encoder,
            "partition_replicas",
            "The partition's replicas, as the cluster's metadata has them (1 on a broker on its own)",
            None,
            each(|p| i64::from(p.replicas)),
        )?;
        gauges(
            encoder,
            "partition_in_sync_replicas",
            "The partition's replicas in sync with its leader; fewer than spate_partition_replicas: under-replicated",
            None,
            each(|p| i64::from(p.in_sync_replicas)),
        )?;
        gauges(
            encoder,
            "partition_leader",
            "1 where this node leads the partition, 0 where it holds a follower replica",
            None,
            each(|p| i64::from(p.leader)),
        )?;
        let mut groups: Vec<_> = snapshots.iter().flat_map(|s| &s.groups).collect();
        groups.sort_by(|a, b| {
            (&a.group, &a.topic, a.partition).cmp(&(&b.group, &b.topic, b.partition))
        });
        let groups_omitted = groups.len().saturating_sub(self.partition_series_max);
        groups.truncate(self.partition_series_max);
        let group_labels = |g: &super::GroupSample| -> Labels {
            vec![
                ("group", g.group.clone()),
                ("topic", g.topic.clone()),
                ("partition", g.partition.to_string()),
            ]
        };
        gauges(
            encoder,
            "consumer_group_committed_offset",
            "A consumer group's committed offset of a partition",
            None,
            groups.iter().map(|g| (group_labels(g), g.committed_offset)),
        )?;
        gauges(
            encoder,
            "consumer_group_lag",
            "Records a group has yet to commit: the partition's high watermark minus the committed offset (where this node holds the partition)",
            None,
            groups.iter().filter_map(|g| {
                let end = ends.get(&(g.topic.as_str(), g.partition))?;
                Some((group_labels(g), (end - g.committed_offset).max(0)))
            }),
        )?;
        gauges(
            encoder,
            "partition_series_omitted",
            "Partitions and group offsets left out of the per-partition series (--metrics-partition-series-max)",
            None,
            [(Labels::new(), (omitted + groups_omitted) as i64)],
        )
    }
}

/// Free and total space of the data directory's filesystem.
fn encode_filesystem(
    encoder: &mut DescriptorEncoder,
    data_dir: &std::path::Path,
) -> Result<(), std::fmt::Error> {
    let Some((free, total)) = filesystem_space(data_dir) else {
        return Ok(());
    };
    let labels = || vec![("path", data_dir.display().to_string())];
    gauges(
        encoder,
        "storage_free",
        "Space left for Spate (unprivileged) on the data directory's filesystem",
        Some(&Unit::Bytes),
        [(labels(), free as i64)],
    )?;
    gauges(
        encoder,
        "storage_capacity",
        "Size of the data directory's filesystem",
        Some(&Unit::Bytes),
        [(labels(), total as i64)],
    )
}

/// (free to unprivileged users, total) bytes of the filesystem holding `path`.
pub fn filesystem_space(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let mut name = path.as_os_str().as_bytes().to_vec();
    name.push(0);
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `name` is NUL-terminated and `stat` is written by the call before it is read.
    let stat = unsafe {
        if libc::statvfs(name.as_ptr().cast(), stat.as_mut_ptr()) != 0 {
            return None;
        }
        stat.assume_init()
    };
    let block = stat.f_frsize;
    Some((stat.f_bavail * block, stat.f_blocks * block))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{GroupSample, PartitionSample};

    #[test]
    fn renders_counters_histograms_partitions_and_lag() {
        let shard = Arc::new(ShardMetrics::new(0));
        shard.request(Protocol::Kafka, 0);
        shard.produce_latency[1].observe(0.002);
        shard.sent_bytes[0].add(10);
        {
            let mut snapshot = Snapshot::default();
            snapshot.partitions.push(PartitionSample {
                topic: "t\"x".into(),
                partition: 0,
                log_start_offset: 0,
                log_end_offset: 50,
                high_watermark: 40,
                size_bytes: 4096,
                leader: true,
                replicas: 1,
                in_sync_replicas: 1,
            });
            snapshot.groups.push(GroupSample {
                group: "g".into(),
                topic: "t\"x".into(),
                partition: 0,
                committed_offset: 30,
            });
            *shard.snapshot.lock().unwrap() = Arc::new(snapshot);
        }
        let page = Exposition::new(vec![shard], std::env::temp_dir(), 10).render();
        let has = |line: &str| {
            assert!(
                page.lines().any(|l| l == line),
                "no line {line:?} in\n{page}"
            );
        };
        has(r#"spate_requests_total{shard="0",protocol="kafka",kind="produce"} 1"#);
        has(r#"spate_sent_bytes_total{shard="0",protocol="native"} 10"#);
        has(r#"spate_produce_latency_seconds_bucket{le="0.0025",shard="0",protocol="kafka"} 1"#);
        has(r#"spate_produce_latency_seconds_count{shard="0",protocol="kafka"} 1"#);
        has(r#"spate_partition_high_watermark{topic="t\"x",partition="0"} 40"#);
        has(r#"spate_consumer_group_lag{group="g",topic="t\"x",partition="0"} 10"#);
        has("spate_partition_series_omitted 0");
        assert!(page.contains("spate_storage_free_bytes{path="));
        assert!(page.ends_with("# EOF\n"));
    }
}
