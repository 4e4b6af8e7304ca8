//! Per-partition log configuration, with Kafka's topic config names.

use super::StorageError;
use crate::limits::{SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN};

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// How a partition's log rolls, retains and flushes. Every field has Kafka's meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `segment.bytes`: roll to a new segment when the active one would grow past this.
    pub segment_bytes: u64,
    /// `segment.ms`: roll when the incoming batch's timestamp is this much newer than the
    /// active segment's first batch.
    pub segment_ms: u64,
    /// `retention.ms`: delete sealed segments whose newest record is older than this.
    /// `None` (-1 in config) keeps data forever.
    pub retention_ms: Option<u64>,
    /// `retention.bytes`: delete the oldest sealed segments while the partition is larger.
    /// `None` (-1, the default) means no size limit.
    pub retention_bytes: Option<u64>,
    /// `flush.ms`: 0 means fdatasync before acknowledging (group commit); above 0, appends
    /// are acknowledged once written and fdatasync runs at most this many ms later.
    pub flush_ms: u64,
    /// `flush.bytes`: with `flush.ms` above 0, also fdatasync once this many bytes are
    /// unsynced. `None` (-1, the default) means only the timer flushes.
    pub flush_bytes: Option<u64>,
    /// `index.interval.bytes`: bytes between entries of the sparse offset index.
    pub index_interval_bytes: u64,
    /// `tail.cache.bytes` (Spate): recently appended batches kept in memory per partition,
    /// so readers at the tail are served with no disk I/O.
    pub tail_cache_bytes: u64,
    /// `message.timestamp.after.max.ms`: how far ahead of the broker's clock a record's
    /// timestamp may be. Record timestamps drive retention and lookups by time, so one far
    /// in the future would keep a segment past `retention.ms`. Kafka 4.0's default: 1 hour.
    pub message_timestamp_after_max_ms: u64,
    /// `message.timestamp.before.max.ms`: how far behind the broker's clock a record's
    /// timestamp may be. The default, `i64::MAX`, is Kafka's: no limit.
    pub message_timestamp_before_max_ms: u64,
    /// `min.insync.replicas`: in a cluster, an acks=all produce needs at least this many
    /// in-sync replicas (the leader counted) holding it; with fewer in sync it is refused.
    pub min_insync_replicas: u16,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * DAY_MS,
            retention_ms: Some(7 * DAY_MS),
            retention_bytes: None,
            flush_ms: 0,
            flush_bytes: None,
            index_interval_bytes: 4096,
            tail_cache_bytes: 8 << 20,
            message_timestamp_after_max_ms: 60 * 60 * 1000,
            message_timestamp_before_max_ms: i64::MAX as u64,
            min_insync_replicas: 1,
        }
    }
}

/// The config keys `LogConfig::set` understands.
pub const LOG_CONFIG_KEYS: [&str; 11] = [
    "segment.bytes",
    "segment.ms",
    "retention.ms",
    "retention.bytes",
    "flush.ms",
    "flush.bytes",
    "index.interval.bytes",
    "tail.cache.bytes",
    "message.timestamp.after.max.ms",
    "message.timestamp.before.max.ms",
    "min.insync.replicas",
];

impl LogConfig {
    /// Builds a config from `key=value` pairs over the defaults.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<LogConfig, StorageError> {
        let mut config = LogConfig::default();
        for (key, value) in pairs {
            config.set(key, value)?;
        }
        Ok(config)
    }

    /// Sets one key from its string form, checking its range.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), StorageError> {
        let invalid = |reason: String| StorageError::InvalidConfig {
            key: key.to_string(),
            value: value.to_string(),
            reason,
        };
        let number: i64 = value
            .trim()
            .parse()
            .map_err(|_| invalid("expected an integer".to_string()))?;
        let non_negative = || -> Result<u64, StorageError> {
            u64::try_from(number).map_err(|_| invalid("must not be negative".to_string()))
        };
        // -1 means "no limit" for the keys that allow it, as in Kafka.
        let optional = || -> Result<Option<u64>, StorageError> {
            match number {
                -1 => Ok(None),
                n if n >= 0 => Ok(Some(n as u64)),
                _ => Err(invalid(
                    "must be -1 (no limit) or a non-negative integer".to_string(),
                )),
            }
        };
        match key {
            "segment.bytes" => {
                let bytes = non_negative()?;
                if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&bytes) {
                    return Err(invalid(format!(
                        "must be between {SEGMENT_BYTES_MIN} and {SEGMENT_BYTES_MAX}"
                    )));
                }
                self.segment_bytes = bytes;
            }
            "segment.ms" => {
                let ms = non_negative()?;
                if ms == 0 {
                    return Err(invalid("must be at least 1".to_string()));
                }
                self.segment_ms = ms;
            }
            "retention.ms" => self.retention_ms = optional()?,
            "retention.bytes" => self.retention_bytes = optional()?,
            "flush.ms" => self.flush_ms = non_negative()?,
            "flush.bytes" => self.flush_bytes = optional()?,
            "index.interval.bytes" => {
                let bytes = non_negative()?;
                if bytes == 0 {
                    return Err(invalid("must be at least 1".to_string()));
                }
                self.index_interval_bytes = bytes;
            }
            "tail.cache.bytes" => self.tail_cache_bytes = non_negative()?,
            // Any non-negative i64, as in Kafka: the parse above bounds it by i64::MAX.
            "message.timestamp.after.max.ms" => {
                self.message_timestamp_after_max_ms = non_negative()?
            }
            "message.timestamp.before.max.ms" => {
                self.message_timestamp_before_max_ms = non_negative()?
            }
            "min.insync.replicas" => {
                self.min_insync_replicas = u16::try_from(number)
                    .ok()
                    .filter(|count| *count >= 1)
                    .ok_or_else(|| invalid("must be between 1 and 65535".to_string()))?
            }
            _ => {
                return Err(StorageError::InvalidConfig {
                    key: key.to_string(),
                    value: value.to_string(),
                    reason: format!("unknown key; known keys: {}", LOG_CONFIG_KEYS.join(", ")),
                });
            }
        }
        Ok(())
    }

    /// Whether `message.timestamp.before.max.ms` limits anything (its default does not), so
    /// that appends need to walk the records to check it.
    pub fn limits_old_timestamps(&self) -> bool {
        self.message_timestamp_before_max_ms < i64::MAX as u64
    }

    /// Whether appends wait for fdatasync before they are acknowledged.
    pub fn syncs_before_ack(&self) -> bool {
        self.flush_ms == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_kafkas() {
        let config = LogConfig::default();
        assert_eq!(config.segment_bytes, 1 << 30);
        assert_eq!(config.retention_ms, Some(604_800_000));
        assert_eq!(config.retention_bytes, None);
        assert_eq!(config.flush_ms, 0);
        assert!(config.syncs_before_ack());
        assert_eq!(config.message_timestamp_after_max_ms, 3_600_000);
        assert_eq!(
            config.message_timestamp_before_max_ms,
            9_223_372_036_854_775_807
        );
        assert!(!config.limits_old_timestamps());
    }

    #[test]
    fn parses_and_rejects() {
        let config = LogConfig::from_pairs([
            ("flush.ms", "100"),
            ("retention.ms", "-1"),
            ("retention.bytes", "1000000"),
            ("segment.bytes", "1048576"),
            ("message.timestamp.after.max.ms", "0"),
            ("message.timestamp.before.max.ms", "86400000"),
        ])
        .unwrap();
        assert_eq!(config.message_timestamp_after_max_ms, 0);
        assert_eq!(config.message_timestamp_before_max_ms, 86_400_000);
        assert!(config.limits_old_timestamps());
        assert_eq!(config.flush_ms, 100);
        assert_eq!(config.retention_ms, None);
        assert_eq!(config.retention_bytes, Some(1_000_000));
        assert_eq!(config.segment_bytes, 1 << 20);

        for (key, value) in [
            ("flush.ms", "-5"),
            ("flush.ms", "soon"),
            ("segment.bytes", "10"),
            ("retention.ms", "-2"),
            ("message.timestamp.after.max.ms", "-1"),
            ("message.timestamp.before.max.ms", "9223372036854775808"),
            ("compression.type", "zstd"),
        ] {
            let error = LogConfig::from_pairs([(key, value)]).unwrap_err();
            assert!(error.to_string().contains(key), "{error}");
        }
    }
}
