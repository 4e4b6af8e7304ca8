//! Server configuration: embedded defaults, an optional TOML file, and flags over both.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::protocol::FRAME_BYTES_MAX_DEFAULT;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// The address every shard accepts on (SO_REUSEPORT spreads connections); shard `i`
    /// also accepts on port `listen.port() + 1 + i`, which metadata advertises.
    pub listen: SocketAddr,
    pub shards: usize,
    /// Cores to pin shards to, one per shard; `None` spreads them over all cores.
    pub cpus: Option<Vec<usize>>,
    /// Create a topic on its first produce (off by default, as in Kafka's recommendation).
    pub auto_create_topics: bool,
    /// Partitions of an auto-created topic.
    pub default_partitions: u32,
    /// Largest request frame accepted.
    pub frame_bytes_max: usize,
    /// Connections one shard serves at once; more are refused.
    pub connections_max_per_shard: usize,
    /// Requests of one connection being worked on at once; reading stops beyond it.
    pub in_flight_max_per_connection: usize,
    /// How often each shard applies retention to its partitions (Kafka's
    /// `log.retention.check.interval.ms`, default 5 minutes).
    pub retention_check_interval_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("./spate-data"),
            listen: "127.0.0.1:7070".parse().expect("a valid address"),
            shards: std::thread::available_parallelism().map_or(1, |count| count.get()),
            cpus: None,
            auto_create_topics: false,
            default_partitions: 1,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            connections_max_per_shard: 1024,
            in_flight_max_per_connection: 64,
            retention_check_interval_ms: 300_000,
        }
    }
}

/// The TOML file's keys: each optional, each the same as a flag.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub shards: Option<usize>,
    pub cpus: Option<String>,
    pub auto_create_topics: Option<bool>,
    pub default_partitions: Option<u32>,
    pub frame_bytes_max: Option<usize>,
    pub connections_max_per_shard: Option<usize>,
    pub in_flight_max_per_connection: Option<usize>,
    pub retention_check_interval_ms: Option<u64>,
}

impl FileConfig {
    pub fn read(path: &Path) -> Result<FileConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read config file {}: {error}", path.display()))?;
        toml::from_str(&text)
            .map_err(|error| format!("invalid config file {}: {error}", path.display()))
    }

    /// Applies the file's settings over `config`.
    pub fn apply(self, config: &mut ServerConfig) -> Result<(), String> {
        if let Some(value) = self.data_dir {
            config.data_dir = value;
        }
        if let Some(value) = self.listen {
            config.listen = parse_listen(&value)?;
        }
        if let Some(value) = self.shards {
            config.shards = value;
        }
        if let Some(value) = self.cpus {
            config.cpus = Some(parse_cpus(&value)?);
        }
        if let Some(value) = self.auto_create_topics {
            config.auto_create_topics = value;
        }
        if let Some(value) = self.default_partitions {
            config.default_partitions = value;
        }
        if let Some(value) = self.frame_bytes_max {
            config.frame_bytes_max = value;
        }
        if let Some(value) = self.connections_max_per_shard {
            config.connections_max_per_shard = value;
        }
        if let Some(value) = self.in_flight_max_per_connection {
            config.in_flight_max_per_connection = value;
        }
        if let Some(value) = self.retention_check_interval_ms {
            config.retention_check_interval_ms = value;
        }
        Ok(())
    }
}

impl ServerConfig {
    /// Checks the settings against each other and the machine.
    pub fn validate(&self) -> Result<(), String> {
        if self.shards == 0 || self.shards > 1024 {
            return Err(format!(
                "--shards must be between 1 and 1024, not {}",
                self.shards
            ));
        }
        if let Some(cpus) = &self.cpus {
            if cpus.len() != self.shards {
                return Err(format!(
                    "--cpus lists {} cores for {} shards: give one core per shard",
                    cpus.len(),
                    self.shards
                ));
            }
            let available = core_count();
            if let Some(cpu) = cpus.iter().find(|&&cpu| cpu >= available) {
                return Err(format!(
                    "--cpus names core {cpu}, but this machine has cores 0 to {}",
                    available - 1
                ));
            }
        }
        if self.listen.port() != 0
            && usize::from(self.listen.port()) + self.shards > usize::from(u16::MAX)
        {
            return Err(format!(
                "--listen port {} leaves no room for {} shard ports after it",
                self.listen.port(),
                self.shards
            ));
        }
        if self.frame_bytes_max < 1024 {
            return Err("frame-bytes-max must be at least 1024".to_string());
        }
        if self.default_partitions == 0 {
            return Err("default-partitions must be at least 1".to_string());
        }
        if self.retention_check_interval_ms == 0 {
            return Err("retention-check-interval-ms must be at least 1".to_string());
        }
        if self.connections_max_per_shard == 0 || self.in_flight_max_per_connection == 0 {
            return Err("connection and in-flight limits must be at least 1".to_string());
        }
        Ok(())
    }

    /// Port of shard `shard`'s own listener.
    pub fn shard_port(&self, shard: usize) -> u16 {
        self.listen.port() + 1 + shard as u16
    }
}

fn core_count() -> usize {
    std::thread::available_parallelism().map_or(1, |count| count.get())
}

pub fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|_| {
        format!("invalid listen address {value:?}: expected HOST:PORT, e.g. 127.0.0.1:7070")
    })
}

/// `0,2,4-6` style core lists.
pub fn parse_cpus(value: &str) -> Result<Vec<usize>, String> {
    let invalid = || format!("invalid core list {value:?}: expected e.g. 0,2,4-6");
    let mut cpus = Vec::new();
    for part in value.split(',').map(str::trim) {
        match part.split_once('-') {
            Some((first, last)) => {
                let first: usize = first.trim().parse().map_err(|_| invalid())?;
                let last: usize = last.trim().parse().map_err(|_| invalid())?;
                if first > last {
                    return Err(invalid());
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(part.parse().map_err(|_| invalid())?),
        }
    }
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_flags_and_checks() {
        assert_eq!(parse_cpus("0,2,4-6").unwrap(), vec![0, 2, 4, 5, 6]);
        assert!(parse_cpus("1-").is_err());
        assert!(parse_listen("localhost").is_err());

        let file: FileConfig =
            toml::from_str("shards = 1\nlisten = \"127.0.0.1:9000\"\nauto-create-topics = true")
                .unwrap();
        let mut config = ServerConfig::default();
        file.apply(&mut config).unwrap();
        assert_eq!(config.shards, 1);
        assert_eq!(config.shard_port(0), 9001);
        assert!(config.auto_create_topics);
        config.validate().unwrap();
        assert!(
            toml::from_str::<FileConfig>("shard = 1").is_err(),
            "unknown keys are refused"
        );

        let bad = ServerConfig {
            shards: 2,
            cpus: Some(vec![0]),
            ..ServerConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("one core per shard"));
        let bad = ServerConfig {
            shards: 0,
            ..ServerConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
