//! Topic metadata: names, partition counts and configs, stored durably and copied to
//! every shard, and the partition-to-shard table derived from it.
//!
//! File `<data dir>/metadata.bin`: magic `SPATEMTA`, `u32` format version, `u32` CRC-32C
//! of the payload, `u64` payload length (all little-endian), then the payload: the rkyv
//! archive of [`ClusterMetadata`], validated when read. It is replaced atomically
//! (temporary file, fsync, rename, directory fsync), so a crash leaves the old or the new
//! metadata, never a mix.

use std::path::{Path, PathBuf};

use rkyv::rancor;

use crate::protocol::{ErrorCode, NewTopic, Status};
use crate::storage::LogConfig;

const MAGIC: &[u8; 8] = b"SPATEMTA";
const FORMAT_VERSION: u32 = 1;
const HEADER_BYTES: usize = 24;

/// Most partitions one topic may have.
pub const TOPIC_PARTITIONS_MAX: u32 = 10_000;
/// Longest topic name (Kafka's limit).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

#[derive(
    Debug, Clone, PartialEq, Eq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct ClusterMetadata {
    /// Bumped by every change, so shards can tell which copy is newer.
    pub generation: u64,
    /// Sorted by name (`create_topic` keeps it so, `load` restores it), so a name is
    /// found by binary search: requests look names up once per entry.
    pub topics: Vec<TopicRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TopicRecord {
    pub name: String,
    pub partitions: u32,
    /// Only the configs set at creation; the rest take the defaults.
    pub configs: Vec<(String, String)>,
}

impl TopicRecord {
    /// The topic's log config: its own settings over the defaults.
    pub fn log_config(&self) -> LogConfig {
        LogConfig::from_pairs(
            self.configs
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_str())),
        )
        .expect("configs were validated when the topic was created")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata file {}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("metadata file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ClusterMetadata {
    /// The names asked for, each once, in the order first asked (a name repeated a
    /// million times must not make a million answers); or every topic's name when none
    /// was (as Kafka's metadata and describe requests treat an empty list).
    pub fn names_or_all(&self, requested: Vec<String>) -> Vec<String> {
        if requested.is_empty() {
            return self.topics.iter().map(|topic| topic.name.clone()).collect();
        }
        let mut seen = std::collections::HashSet::with_capacity(requested.len());
        requested
            .into_iter()
            .filter(|name| seen.insert(name.clone()))
            .collect()
    }

    pub fn topic(&self, name: &str) -> Option<&TopicRecord> {
        let position = self.position(name).ok()?;
        Some(&self.topics[position])
    }

    /// Where `name` is in `topics`, or where it would go.
    fn position(&self, name: &str) -> Result<usize, usize> {
        self.topics
            .binary_search_by(|topic| topic.name.as_str().cmp(name))
    }

    /// Adds a topic after checking its name, partition count and configs.
    pub fn create_topic(&mut self, topic: &NewTopic) -> Result<(), Status> {
        let record = self.check_new_topic(topic)?;
        self.add_topics(vec![record]);
        Ok(())
    }

    /// The record of a topic that could be added: its name is valid and free, its
    /// partition count in range, its configs known, in range and each given once.
    pub fn check_new_topic(&self, topic: &NewTopic) -> Result<TopicRecord, Status> {
        validate_topic_name(&topic.name)?;
        if self.topic(&topic.name).is_some() {
            return Err(Status::error(
                ErrorCode::TopicAlreadyExists,
                format!("topic {} already exists", topic.name),
            ));
        }
        if topic.partitions == 0 || topic.partitions > TOPIC_PARTITIONS_MAX {
            return Err(Status::error(
                ErrorCode::InvalidPartitions,
                format!(
                    "partition count must be between 1 and {TOPIC_PARTITIONS_MAX}, not {}",
                    topic.partitions
                ),
            ));
        }
        let mut keys = std::collections::HashSet::new();
        if let Some((key, _)) = topic.configs.iter().find(|(key, _)| !keys.insert(key)) {
            return Err(Status::error(
                ErrorCode::InvalidConfig,
                format!(
                    "config {} is given more than once",
                    crate::protocol::quoted(key)
                ),
            ));
        }
        LogConfig::from_pairs(
            topic
                .configs
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_str())),
        )
        .map_err(|error| Status::error(ErrorCode::InvalidConfig, error.to_string()))?;
        Ok(TopicRecord {
            name: topic.name.clone(),
            partitions: topic.partitions,
            configs: topic.configs.clone(),
        })
    }

    /// The record of `name` grown to `count` partitions in all, if it could be: the topic
    /// exists, and `count` is more than it has and in range. (As in Kafka, partitions are
    /// only ever added; keys then map to partitions differently.)
    pub fn check_new_partitions(&self, name: &str, count: u32) -> Result<TopicRecord, Status> {
        let Some(topic) = self.topic(name) else {
            return Err(Status::error(
                ErrorCode::UnknownTopicOrPartition,
                format!("topic {} does not exist", crate::protocol::quoted(name)),
            ));
        };
        if count <= topic.partitions {
            return Err(Status::error(
                ErrorCode::InvalidPartitions,
                format!(
                    "topic {} has {} partitions: partitions can only be added, so ask for more than that, not {count}",
                    topic.name, topic.partitions
                ),
            ));
        }
        if count > TOPIC_PARTITIONS_MAX {
            return Err(Status::error(
                ErrorCode::InvalidPartitions,
                format!("a topic may have at most {TOPIC_PARTITIONS_MAX} partitions, not {count}"),
            ));
        }
        Ok(TopicRecord {
            partitions: count,
            ..topic.clone()
        })
    }

    /// Replaces the records of existing topics with grown ones (`check_new_partitions`).
    pub fn grow_topics(&mut self, grown: &[TopicRecord]) {
        for record in grown {
            let position = self.position(&record.name).expect("a grown topic exists");
            self.topics[position] = record.clone();
        }
        self.generation += 1;
    }

    /// Adds checked topics (`check_new_topic`) whose names are distinct, in one step:
    /// sorted in once, not inserted one at a time.
    pub fn add_topics(&mut self, records: Vec<TopicRecord>) {
        self.topics.extend(records);
        self.topics.sort_by(|a, b| a.name.cmp(&b.name));
        assert!(
            self.topics
                .windows(2)
                .all(|pair| pair[0].name < pair[1].name),
            "topic names are distinct"
        );
        self.generation += 1;
    }

    pub fn delete_topic(&mut self, name: &str) -> Result<TopicRecord, Status> {
        let position = self.position(name).map_err(|_| {
            Status::error(
                ErrorCode::UnknownTopicOrPartition,
                format!("topic {} does not exist", crate::protocol::quoted(name)),
            )
        })?;
        self.generation += 1;
        Ok(self.topics.remove(position))
    }

    /// Removes the topics named in `names` in one pass; returns their records.
    pub fn remove_topics(&mut self, names: &std::collections::HashSet<&str>) -> Vec<TopicRecord> {
        let (removed, kept) = std::mem::take(&mut self.topics)
            .into_iter()
            .partition(|topic| names.contains(topic.name.as_str()));
        self.topics = kept;
        self.generation += 1;
        removed
    }

    /// Reads the metadata in `data_dir`; a missing file is an empty cluster, a damaged one
    /// an error that names it.
    pub fn load(data_dir: &Path) -> Result<ClusterMetadata, MetadataError> {
        let path = metadata_path(data_dir);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ClusterMetadata::default());
            }
            Err(source) => return Err(MetadataError::Io { path, source }),
        };
        decode(&bytes).map_err(|reason| MetadataError::Corrupt { path, reason })
    }

    /// Replaces the metadata in `data_dir` atomically and durably.
    pub fn save(&self, data_dir: &Path) -> Result<(), MetadataError> {
        let path = metadata_path(data_dir);
        let temporary = data_dir.join("metadata.bin.tmp");
        let io_error = |source| MetadataError::Io {
            path: path.clone(),
            source,
        };
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(&encode(self))?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            std::fs::File::open(data_dir)?.sync_all()
        };
        write().map_err(io_error)
    }
}

pub fn metadata_path(data_dir: &Path) -> PathBuf {
    data_dir.join("metadata.bin")
}

pub(crate) fn encode(metadata: &ClusterMetadata) -> Vec<u8> {
    let payload = rkyv::to_bytes::<rancor::Error>(metadata).expect("metadata serializes");
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

pub(crate) fn decode(bytes: &[u8]) -> Result<ClusterMetadata, String> {
    if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
        return Err("not a Spate metadata file (bad magic or too short)".into());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(format!("unknown format version {version}"));
    }
    let crc = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    let length = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    let payload = &bytes[HEADER_BYTES..];
    if payload.len() as u64 != length {
        return Err(format!(
            "payload is {} bytes, header says {length}",
            payload.len()
        ));
    }
    if crc32c::crc32c(payload) != crc {
        return Err("CRC mismatch".into());
    }
    // rkyv reads from aligned memory; validation (bytecheck) runs before any field is used.
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    let mut metadata = rkyv::from_bytes::<ClusterMetadata, rancor::Error>(&aligned)
        .map_err(|error| format!("invalid archive: {error}"))?;
    // Files written before topics were kept sorted hold them in creation order.
    metadata.topics.sort_by(|a, b| a.name.cmp(&b.name));
    if metadata
        .topics
        .windows(2)
        .any(|pair| pair[0].name == pair[1].name)
    {
        return Err("a topic name appears twice".into());
    }
    // What the broker relies on of every topic, as `check_new_topic` checked it at
    // creation: a file that says otherwise (damaged behind a valid CRC, or written by a
    // version with other configs) is refused here, saying why, not found out later (a
    // config that does not parse would panic a shard).
    for topic in &metadata.topics {
        check_stored_topic(topic).map_err(|reason| {
            format!("topic {}: {reason}", crate::protocol::quoted(&topic.name))
        })?;
    }
    Ok(metadata)
}

fn check_stored_topic(topic: &TopicRecord) -> Result<(), String> {
    validate_topic_name(&topic.name).map_err(|status| status.message)?;
    if topic.partitions == 0 || topic.partitions > TOPIC_PARTITIONS_MAX {
        return Err(format!(
            "{} partitions, not between 1 and {TOPIC_PARTITIONS_MAX}",
            topic.partitions
        ));
    }
    LogConfig::from_pairs(
        topic
            .configs
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str())),
    )
    .map(drop)
    .map_err(|error| error.to_string())
}

/// Kafka's rule: 1 to 249 of `[a-zA-Z0-9._-]`, and not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), Status> {
    let valid_chars = name
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'));
    if name.is_empty()
        || name.len() > TOPIC_NAME_BYTES_MAX
        || !valid_chars
        || name == "."
        || name == ".."
    {
        return Err(Status::error(
            ErrorCode::InvalidRequest,
            format!(
                "invalid topic name {:?}: use 1 to {TOPIC_NAME_BYTES_MAX} of letters, digits, '.', '_' and '-'",
                crate::protocol::quoted(name)
            ),
        ));
    }
    Ok(())
}

/// The shard that owns `partition` of `topic`: a stable hash of the name spreads topics,
/// consecutive partitions go to consecutive shards. Every shard computes the same table.
pub fn shard_for(topic: &str, partition: u32, shard_count: usize) -> usize {
    assert!(shard_count > 0, "at least one shard");
    let spread = crc32c::crc32c(topic.as_bytes()) as usize;
    (spread + partition as usize) % shard_count
}

/// How many partitions each of `shard_count` shards owns. Partition `p` of a topic lands
/// `p` shards after its partition 0 (see `shard_for`), so each topic is counted in
/// `shard_count` steps, whatever its partition count.
pub fn partitions_per_shard(topics: &[TopicRecord], shard_count: usize) -> Vec<u32> {
    let mut counts = vec![0u32; shard_count];
    let shards = shard_count as u32;
    for topic in topics {
        let first = shard_for(&topic.name, 0, shard_count);
        let (each, rest) = (topic.partitions / shards, topic.partitions % shards);
        for step in 0..shard_count {
            counts[(first + step) % shard_count] += each + u32::from((step as u32) < rest);
        }
    }
    counts
}

/// Entries under `<data dir>/topics` that are no partition of `metadata`: left by a crash
/// between a topic's directories and its metadata (a create that did not finish, a delete
/// that did not finish removing).
pub fn stray_partition_dirs(
    data_dir: &Path,
    metadata: &ClusterMetadata,
) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(data_dir.join("topics")) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut strays = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let known = name.rsplit_once('-').is_some_and(|(topic, partition)| {
            let partition: Option<u32> = partition.parse().ok();
            matches!((metadata.topic(topic), partition), (Some(record), Some(partition)) if partition < record.partitions
                && entry.path() == partition_dir(data_dir, topic, partition))
        });
        if !known {
            strays.push(entry.path());
        }
    }
    strays.sort();
    Ok(strays)
}

/// Where a partition's log lives: `<data dir>/topics/<topic>-<partition>`, as Kafka names it.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: u32) -> PathBuf {
    data_dir.join("topics").join(format!("{topic}-{partition}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_topic(name: &str, partitions: u32, configs: &[(&str, &str)]) -> NewTopic {
        NewTopic {
            name: name.into(),
            partitions,
            configs: configs
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            replication_factor: 1,
        }
    }

    #[test]
    fn stray_directories_are_those_of_no_partition() {
        let dir = tempfile::tempdir().unwrap();
        let mut metadata = ClusterMetadata::default();
        metadata.create_topic(&new_topic("a-b", 2, &[])).unwrap();
        for name in ["a-b-0", "a-b-1", "a-b-2", "a-0", "gone-0", "a-b-x"] {
            std::fs::create_dir_all(dir.path().join("topics").join(name)).unwrap();
        }
        let strays: Vec<String> = stray_partition_dirs(dir.path(), &metadata)
            .unwrap()
            .iter()
            .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(strays, ["a-0", "a-b-2", "a-b-x", "gone-0"]);
        assert_eq!(
            partitions_per_shard(&metadata.topics, 2)
                .iter()
                .sum::<u32>(),
            2
        );
    }

    #[test]
    fn topics_are_checked_saved_and_loaded() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            ClusterMetadata::load(dir.path()).unwrap(),
            ClusterMetadata::default()
        );
        let mut metadata = ClusterMetadata::default();
        metadata
            .create_topic(&new_topic("orders", 6, &[("flush.ms", "100")]))
            .unwrap();
        metadata
            .create_topic(&new_topic("clicks.v2", 1, &[]))
            .unwrap();
        assert_eq!(metadata.generation, 2);
        let code = |result: Result<(), Status>| result.unwrap_err().code;
        assert_eq!(
            code(metadata.create_topic(&new_topic("orders", 1, &[]))),
            ErrorCode::TopicAlreadyExists
        );
        assert_eq!(
            code(metadata.create_topic(&new_topic("bad/name", 1, &[]))),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(metadata.create_topic(&new_topic("..", 1, &[]))),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(metadata.create_topic(&new_topic("zero", 0, &[]))),
            ErrorCode::InvalidPartitions
        );
        assert_eq!(
            code(metadata.create_topic(&new_topic("cfg", 1, &[("flush.ms", "x")]))),
            ErrorCode::InvalidConfig
        );
        assert_eq!(metadata.topic("orders").unwrap().log_config().flush_ms, 100);

        metadata.save(dir.path()).unwrap();
        let loaded = ClusterMetadata::load(dir.path()).unwrap();
        assert_eq!(loaded, metadata);
        let mut changed = loaded.clone();
        changed.delete_topic("orders").unwrap();
        assert!(changed.delete_topic("orders").is_err());
        changed.save(dir.path()).unwrap();
        assert_eq!(ClusterMetadata::load(dir.path()).unwrap().topics.len(), 1);
        assert!(!dir.path().join("metadata.bin.tmp").exists());
    }

    #[test]
    fn damage_is_detected_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut metadata = ClusterMetadata::default();
        metadata.create_topic(&new_topic("orders", 3, &[])).unwrap();
        metadata.save(dir.path()).unwrap();
        let path = dir.path().join("metadata.bin");
        let good = std::fs::read(&path).unwrap();
        for position in 0..good.len() {
            let mut damaged = good.clone();
            damaged[position] ^= 0x20;
            std::fs::write(&path, &damaged).unwrap();
            let error = ClusterMetadata::load(dir.path()).expect_err("damage detected");
            assert!(error.to_string().contains("metadata.bin"), "{error}");
        }
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(ClusterMetadata::load(dir.path()).is_err());
    }

    /// Found by the metadata_archive fuzz target: a topic whose config does not parse
    /// loaded, and `log_config` then panicked ("configs were validated").
    #[test]
    fn a_stored_topic_the_broker_could_not_use_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let topic = |name: &str, partitions, configs: &[(&str, &str)]| TopicRecord {
            name: name.into(),
            partitions,
            configs: configs
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
        };
        for (bad, reason) in [
            (
                topic("orders", 1, &[("segment.bytes", "8~")]),
                "segment.bytes",
            ),
            (topic("orders", 1, &[("newer.config", "1")]), "newer.config"),
            (topic("orders", 0, &[]), "0 partitions"),
            (topic("orders", TOPIC_PARTITIONS_MAX + 1, &[]), "partitions"),
            (topic("../orders", 1, &[]), "invalid topic name"),
        ] {
            let metadata = ClusterMetadata {
                generation: 1,
                topics: vec![topic("clicks", 2, &[("flush.ms", "10")]), bad],
            };
            metadata.save(dir.path()).unwrap();
            let error = ClusterMetadata::load(dir.path())
                .expect_err("refused")
                .to_string();
            assert!(
                error.contains("metadata.bin") && error.contains("topic") && error.contains(reason),
                "{error}"
            );
        }
    }

    #[test]
    fn partition_counts_per_shard_agree_with_the_shard_table() {
        for shards in [1, 2, 3, 7, 16] {
            for partitions in [1, 2, 5, 16, 17, 1000] {
                let topic = TopicRecord {
                    name: format!("t{partitions}"),
                    partitions,
                    configs: Vec::new(),
                };
                let mut expected = vec![0u32; shards];
                for partition in 0..partitions {
                    expected[shard_for(&topic.name, partition, shards)] += 1;
                }
                assert_eq!(partitions_per_shard(&[topic], shards), expected);
            }
        }
    }

    #[test]
    fn topics_stay_sorted_and_are_found_by_name() {
        let mut metadata = ClusterMetadata::default();
        for name in ["m", "b", "z", "a", "q"] {
            metadata.create_topic(&new_topic(name, 1, &[])).unwrap();
        }
        let names: Vec<&str> = metadata.topics.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "m", "q", "z"]);
        assert!(metadata.topic("q").is_some() && metadata.topic("c").is_none());
        metadata.delete_topic("m").unwrap();
        assert!(metadata.topic("m").is_none() && metadata.topic("z").is_some());
    }

    #[test]
    fn the_shard_table_is_stable_and_spreads_partitions() {
        let shards: Vec<usize> = (0..8)
            .map(|partition| shard_for("orders", partition, 4))
            .collect();
        assert_eq!(
            shards,
            (0..8)
                .map(|partition| shard_for("orders", partition, 4))
                .collect::<Vec<_>>()
        );
        for shard in 0..4 {
            assert_eq!(shards.iter().filter(|&&owner| owner == shard).count(), 2);
        }
        assert!((0..100).all(|partition| shard_for("x", partition, 1) == 0));
        assert_eq!(
            partition_dir(Path::new("/d"), "orders", 3),
            Path::new("/d/topics/orders-3")
        );
    }
}
