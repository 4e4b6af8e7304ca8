//! What a run does: flags, a workload file, or both (flags win). One struct serves both, as
//! the broker's `Settings` does, so a flag and its file key cannot drift apart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use spate::protocol::Acks;

use crate::door::Protocol;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Producers only; latency is send (or scheduled send) to acknowledgement.
    Produce,
    /// Consumers read the topic from its start (filled first, unmeasured, if short).
    Consume,
    /// Producers and consumers together; latency is send to receipt.
    E2e,
}

/// Every option, each optional; `Plan::from` fills in the defaults.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Options {
    /// What to run: produce, consume or e2e [default: produce].
    #[arg(value_enum)]
    pub kind: Option<Workload>,
    /// The protocol to load the broker through: Spate's own (native) or Kafka's wire
    /// protocol (kafka; also drives any Kafka-compatible broker) [default: native].
    #[arg(long, value_enum)]
    pub protocol: Option<Protocol>,
    /// Broker to load, HOST:PORT [default: 127.0.0.1:7070, or 127.0.0.1:9092 with
    /// --protocol kafka].
    #[arg(long)]
    pub broker: Option<String>,
    /// Start a broker on a temporary data directory for the run, and remove it after.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub spawn_broker: Option<bool>,
    /// The spawned broker's cores, e.g. 0 or 0-1 [default: 0].
    #[arg(long)]
    pub broker_cpus: Option<String>,
    /// The broker's metrics address (HOST:PORT of `spate serve --metrics-listen`), read
    /// before and after the run for the broker's own figures (fsync latency, group-commit
    /// size) [default: the spawned broker's; none for another broker].
    #[arg(long)]
    pub broker_metrics: Option<String>,
    /// The spawned broker's binary [default: `spate` next to this program].
    #[arg(long)]
    pub broker_bin: Option<PathBuf>,
    /// A setting of the spawned broker, key=value (repeatable), passed as
    /// `spate serve --key value`, e.g. tail-cache-bytes-max=4294967296.
    #[arg(long = "broker-setting")]
    #[serde(default)]
    pub broker_setting: Vec<String>,
    /// Topic to use; created if missing [default: loadgen].
    #[arg(long)]
    pub topic: Option<String>,
    /// Partitions of a created topic [default: 1].
    #[arg(long)]
    pub partitions: Option<u32>,
    /// Copies of each partition of a created topic, on as many nodes of a cluster
    /// [default: 1].
    #[arg(long)]
    pub replication_factor: Option<u16>,
    /// A config of a created topic, key=value (repeatable), e.g. flush.ms=100.
    #[arg(long = "topic-config")]
    #[serde(default)]
    pub topic_config: Vec<String>,
    /// Producer threads [default: 1].
    #[arg(long)]
    pub producers: Option<usize>,
    /// Consumer threads (consume and e2e) [default: 1].
    #[arg(long)]
    pub consumers: Option<usize>,
    /// Record value size in bytes, fixed (1024) or a range (100-1000) [default: 1024].
    #[arg(long)]
    pub message_size: Option<String>,
    /// Bytes at which a producer sends a partition's batch [default: 65536].
    #[arg(long)]
    pub batch_bytes: Option<usize>,
    /// Records at which a producer sends a partition's batch [default: no limit].
    #[arg(long)]
    pub batch_records: Option<usize>,
    /// Longest a record waits for its batch to fill, ms [default: 1].
    #[arg(long)]
    pub linger_ms: Option<u64>,
    /// Keys drawn at random from this many (0: no keys, batches go round the partitions)
    /// [default: 0].
    #[arg(long)]
    pub keys: Option<u64>,
    /// 0, 1 or all [default: all].
    #[arg(long)]
    pub acks: Option<String>,
    /// Records to send (produce, e2e) or read (consume).
    #[arg(long)]
    pub records: Option<u64>,
    /// How long to run, e.g. 30s, 2m, 500ms [default: 10s unless --records is given].
    #[arg(long)]
    pub duration: Option<String>,
    /// Target rate over all producers: records/s (20000) or bytes/s (50MB, 1GB, 512KB).
    /// With a rate the run is open-loop: latency counts from each record's scheduled time.
    #[arg(long)]
    pub rate: Option<String>,
    /// Requests each producer connection keeps in flight [default: 16].
    #[arg(long)]
    pub max_in_flight: Option<usize>,
    /// Cores for the load generator's threads, e.g. 1 or 2-5 [default: unpinned, or the
    /// cores not given to a spawned broker].
    #[arg(long)]
    pub cpus: Option<String>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a self-contained HTML report to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

impl Options {
    pub fn read(path: &Path) -> anyhow::Result<Options> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read workload file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid workload file {}", path.display()))
    }

    /// These options over `base` (each one given here wins).
    pub fn over(self, base: Options) -> Options {
        macro_rules! pick {
            ($($field:ident),*) => {
                Options {
                    $($field: self.$field.or(base.$field),)*
                    topic_config: if self.topic_config.is_empty() { base.topic_config } else { self.topic_config },
                    broker_setting: if self.broker_setting.is_empty() { base.broker_setting } else { self.broker_setting },
                }
            };
        }
        pick!(
            kind,
            protocol,
            broker,
            spawn_broker,
            broker_cpus,
            broker_metrics,
            broker_bin,
            topic,
            partitions,
            replication_factor,
            producers,
            consumers,
            message_size,
            batch_bytes,
            batch_records,
            linger_ms,
            keys,
            acks,
            records,
            duration,
            rate,
            max_in_flight,
            cpus,
            json,
            report
        )
    }
}

/// `key=value` pairs, trimmed; `flag` names them in the error.
fn key_values(pairs: &[String], flag: &str) -> anyhow::Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(key, value)| (key.trim().to_string(), value.trim().to_string()))
                .with_context(|| format!("invalid {flag} {pair:?}: expected key=value"))
        })
        .collect()
}

/// A target rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    RecordsPerSecond(f64),
    BytesPerSecond(f64),
}

/// The run, checked and with defaults filled in.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub workload: Workload,
    pub protocol: Protocol,
    pub broker: String,
    pub spawn_broker: bool,
    pub broker_cpus: Vec<usize>,
    /// Where the broker's metrics are read (set for a spawned broker when it starts).
    pub broker_metrics: Option<String>,
    #[serde(skip)]
    pub broker_bin: Option<PathBuf>,
    /// Settings of the spawned broker (`spate serve --key value`).
    pub broker_settings: Vec<(String, String)>,
    pub topic: String,
    pub partitions: u32,
    pub replication_factor: u16,
    pub topic_config: Vec<(String, String)>,
    pub producers: usize,
    pub consumers: usize,
    pub message_size: (usize, usize),
    pub batch_bytes: usize,
    pub batch_records: Option<usize>,
    pub linger_ms: u64,
    pub keys: u64,
    #[serde(serialize_with = "acks_text")]
    pub acks: Acks,
    pub records: Option<u64>,
    #[serde(serialize_with = "seconds")]
    pub duration: Option<Duration>,
    /// Records per second over all producers, when open-loop.
    pub rate_records_per_s: Option<f64>,
    pub max_in_flight: usize,
    pub cpus: Option<Vec<usize>>,
    #[serde(skip)]
    pub json: Option<PathBuf>,
    #[serde(skip)]
    pub report: Option<PathBuf>,
}

fn acks_text<S: serde::Serializer>(acks: &Acks, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(match acks {
        Acks::None => "0",
        Acks::Leader => "1",
        Acks::All => "all",
    })
}

fn seconds<S: serde::Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match duration {
        Some(duration) => serializer.serialize_f64(duration.as_secs_f64()),
        None => serializer.serialize_none(),
    }
}

impl Plan {
    pub fn from(options: Options) -> anyhow::Result<Plan> {
        let workload = options.kind.unwrap_or(Workload::Produce);
        let spawn_broker = options.spawn_broker.unwrap_or(false);
        let broker_cpus = parse_cpus(options.broker_cpus.as_deref().unwrap_or("0"))
            .context("invalid --broker-cpus")?;
        let cpus = match &options.cpus {
            Some(text) => Some(parse_cpus(text).context("invalid --cpus")?),
            // Beside a spawned broker, keep off its cores.
            None if spawn_broker => {
                let cores = std::thread::available_parallelism().map_or(1, |count| count.get());
                let free: Vec<usize> = (0..cores)
                    .filter(|core| !broker_cpus.contains(core))
                    .collect();
                (!free.is_empty()).then_some(free)
            }
            None => None,
        };
        let message_size = parse_size_range(options.message_size.as_deref().unwrap_or("1024"))?;
        if workload == Workload::E2e && message_size.0 < 8 {
            bail!("e2e needs --message-size of at least 8 bytes: each value carries its send time");
        }
        let acks = match options.acks.as_deref().unwrap_or("all") {
            "0" => Acks::None,
            "1" => Acks::Leader,
            "all" | "-1" => Acks::All,
            other => bail!("invalid --acks {other:?}: expected 0, 1 or all"),
        };
        let duration = options
            .duration
            .as_deref()
            .map(parse_duration)
            .transpose()?;
        let duration = match (options.records, duration) {
            (None, None) => Some(Duration::from_secs(10)),
            (_, duration) => duration,
        };
        let average_size = (message_size.0 + message_size.1) as f64 / 2.0;
        let rate_records_per_s = match options.rate.as_deref().map(parse_rate).transpose()? {
            None => None,
            Some(Rate::RecordsPerSecond(rate)) => Some(rate),
            Some(Rate::BytesPerSecond(rate)) => Some(rate / average_size),
        };
        let topic_config = key_values(&options.topic_config, "--topic-config")?;
        let broker_settings = key_values(&options.broker_setting, "--broker-setting")?;
        if !broker_settings.is_empty() && !spawn_broker {
            bail!("--broker-setting applies to a spawned broker: add --spawn-broker");
        }
        let protocol = options.protocol.unwrap_or(Protocol::Native);
        let plan = Plan {
            workload,
            protocol,
            broker: options
                .broker
                .unwrap_or_else(|| protocol.default_address().into()),
            spawn_broker,
            broker_cpus,
            broker_metrics: options.broker_metrics,
            broker_bin: options.broker_bin,
            broker_settings,
            topic: options.topic.unwrap_or_else(|| "loadgen".into()),
            partitions: options.partitions.unwrap_or(1),
            replication_factor: options.replication_factor.unwrap_or(1),
            topic_config,
            producers: options.producers.unwrap_or(1),
            consumers: options.consumers.unwrap_or(1),
            message_size,
            batch_bytes: options.batch_bytes.unwrap_or(64 * 1024),
            batch_records: options.batch_records,
            linger_ms: options.linger_ms.unwrap_or(1),
            keys: options.keys.unwrap_or(0),
            acks,
            records: options.records,
            duration,
            rate_records_per_s,
            max_in_flight: options.max_in_flight.unwrap_or(16),
            cpus,
            json: options.json,
            report: options.report,
        };
        plan.check()?;
        Ok(plan)
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.partitions == 0 {
            bail!("--partitions must be at least 1");
        }
        if self.producers == 0 && self.workload != Workload::Consume {
            bail!("--producers must be at least 1");
        }
        if self.consumers == 0 && self.workload != Workload::Produce {
            bail!("--consumers must be at least 1");
        }
        if self.batch_bytes == 0 || self.batch_records == Some(0) {
            bail!("--batch-bytes and --batch-records must be at least 1");
        }
        if self.max_in_flight == 0 {
            bail!("--max-in-flight must be at least 1");
        }
        if self.records == Some(0) {
            bail!("--records must be at least 1");
        }
        if self.message_size.1 > spate::limits::BATCH_BYTES_MAX / 2 {
            bail!(
                "--message-size may be at most {} bytes",
                spate::limits::BATCH_BYTES_MAX / 2
            );
        }
        if self.workload == Workload::E2e && self.acks == Acks::None {
            // Allowed, but latency then includes no acknowledgement: say so in the output.
        }
        Ok(())
    }
}

/// `1024`, `100-1000`.
pub fn parse_size_range(text: &str) -> anyhow::Result<(usize, usize)> {
    let parse = |part: &str| {
        part.trim()
            .parse::<usize>()
            .with_context(|| format!("invalid --message-size {text:?}: expected 1024 or 100-1000"))
    };
    let (low, high) = match text.split_once('-') {
        Some((low, high)) => (parse(low)?, parse(high)?),
        None => (parse(text)?, parse(text)?),
    };
    if low == 0 || low > high {
        bail!("invalid --message-size {text:?}: sizes start at 1 and a range goes up");
    }
    Ok((low, high))
}

/// `50MB` as (50.0, "MB"); `None` when it does not start with a number.
fn number_and_unit(text: &str) -> Option<(f64, &str)> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    Some((number.parse().ok()?, unit))
}

/// `30s`, `2m`, `500ms`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let invalid = || anyhow::anyhow!("invalid --duration {text:?}: expected e.g. 30s, 2m or 500ms");
    let (number, unit) = number_and_unit(text).ok_or_else(invalid)?;
    let seconds = match unit {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(invalid()),
    };
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err(invalid());
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// `20000` records/s; `50MB`, `1GB`, `512KB`, `2MiB` bytes/s.
pub fn parse_rate(text: &str) -> anyhow::Result<Rate> {
    let invalid =
        || anyhow::anyhow!("invalid --rate {text:?}: expected records/s (20000) or bytes/s (50MB)");
    let (number, unit) = number_and_unit(text).ok_or_else(invalid)?;
    let rate = match unit.to_ascii_lowercase().as_str() {
        "" => Rate::RecordsPerSecond(number),
        "kb" => Rate::BytesPerSecond(number * 1e3),
        "mb" => Rate::BytesPerSecond(number * 1e6),
        "gb" => Rate::BytesPerSecond(number * 1e9),
        "kib" => Rate::BytesPerSecond(number * 1024.0),
        "mib" => Rate::BytesPerSecond(number * 1024.0 * 1024.0),
        "gib" => Rate::BytesPerSecond(number * 1024.0 * 1024.0 * 1024.0),
        _ => return Err(invalid()),
    };
    match rate {
        Rate::RecordsPerSecond(value) | Rate::BytesPerSecond(value)
            if value > 0.0 && value.is_finite() =>
        {
            Ok(rate)
        }
        _ => Err(invalid()),
    }
}

/// `0,2,4-6`.
pub fn parse_cpus(text: &str) -> anyhow::Result<Vec<usize>> {
    spate::server::parse_cpus(text).map_err(|error| anyhow::anyhow!(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_flags_win_over_the_file() {
        assert_eq!(parse_size_range("100-1000").unwrap(), (100, 1000));
        assert!(parse_size_range("10-5").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
        assert_eq!(
            parse_rate("20000").unwrap(),
            Rate::RecordsPerSecond(20000.0)
        );
        assert_eq!(parse_rate("50MB").unwrap(), Rate::BytesPerSecond(50e6));
        assert!(parse_rate("-3").is_err());

        let file: Options = toml::from_str(
            "kind = \"e2e\"\npartitions = 16\ntopic-config = [\"flush.ms=100\"]\nrate = \"50MB\"",
        )
        .unwrap();
        let flags = Options {
            partitions: Some(4),
            ..Options::default()
        };
        let plan = Plan::from(flags.over(file)).unwrap();
        assert_eq!(plan.workload, Workload::E2e);
        assert_eq!(plan.partitions, 4);
        assert_eq!(
            plan.topic_config,
            [("flush.ms".to_string(), "100".to_string())]
        );
        assert_eq!(plan.rate_records_per_s, Some(50e6 / 1024.0));
        assert!(toml::from_str::<Options>("partition = 3").is_err());
        let bad = Options {
            acks: Some("2".into()),
            ..Options::default()
        };
        assert!(Plan::from(bad).unwrap_err().to_string().contains("--acks"));
    }
}
