use std::io::Write;
use std::time::{Duration, Instant};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use spate::client::{
    ClientError, GroupConsumer, GroupConsumerConfig, OffsetReset, PartitionConsumer, ShardRouter,
    StartAt,
};
use spate::record::Record;

use super::{connect, describe};

pub struct ConsumeOptions<'a> {
    pub broker: &'a str,
    pub topic: &'a str,
    pub partition: Option<u32>,
    pub start: StartAt,
    pub max_messages: Option<u64>,
    pub timeout: Option<Duration>,
    pub format: &'a str,
    /// Consume as a member of this group (partitions assigned by the group, offsets
    /// committed to it).
    pub group: Option<&'a str>,
    pub session_timeout: Duration,
}

/// Prints records until `max_messages` have been printed or `timeout` passes with no new
/// record (without either, until interrupted).
/// How long a partition may be unreadable (its leader moving or down) before the command
/// gives up.
const LEADER_WAIT: Duration = Duration::from_secs(30);

pub fn run(options: ConsumeOptions<'_>) -> Result<(), String> {
    let format = Format::parse(options.format)?;
    if let Some(group) = options.group {
        return run_group(&options, group, &format);
    }
    let connection = connect(options.broker)?;
    // Each partition is read from the shard that owns it.
    let mut router =
        ShardRouter::new(connection, options.topic, "spate-cli").map_err(|error| match error {
            ClientError::Broker(status) => format!("cannot consume {}: {status}", options.topic),
            other => describe(other),
        })?;
    let partitions: Vec<u32> = match options.partition {
        Some(partition) if partition >= router.partitions() => {
            return Err(format!(
                "topic {} has partitions 0 to {}, not {partition}",
                options.topic,
                router.partitions() - 1
            ));
        }
        Some(partition) => vec![partition],
        None => (0..router.partitions()).collect(),
    };
    let mut consumers = Vec::new();
    for partition in partitions {
        consumers.push(
            PartitionConsumer::new(
                router.connection_for(partition).map_err(describe)?,
                options.topic,
                partition,
                options.start,
            )
            .map_err(describe)?,
        );
    }
    // One partition: long-poll it; several: poll each briefly in turn.
    let wait = if consumers.len() == 1 {
        Duration::from_millis(500)
    } else {
        Duration::from_millis(20)
    };
    let mut printed = 0u64;
    let mut last_record = Instant::now();
    let mut failing_since: Option<Instant> = None;
    let mut out = std::io::stdout().lock();
    loop {
        for consumer in consumers.iter_mut() {
            let polled = router
                .connection_for(consumer.partition())
                .and_then(|connection| consumer.poll(connection, wait));
            let records = match polled {
                Ok(records) => {
                    failing_since = None;
                    records
                }
                // A leader that moved or went down: ask the metadata again and go on from
                // the same position, for up to LEADER_WAIT.
                Err(error) if error.is_retriable() => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > LEADER_WAIT {
                        return Err(describe(error));
                    }
                    if let Some(shard) = router.owner(consumer.partition()) {
                        router.forget(shard);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    let _ = router.refresh();
                    continue;
                }
                Err(error) => return Err(describe(error)),
            };
            if !records.is_empty() {
                last_record = Instant::now();
            }
            for record in records {
                if options.max_messages.is_some_and(|max| printed >= max) {
                    break;
                }
                format
                    .write(&mut out, options.topic, consumer.partition(), &record)
                    .map_err(|error| error.to_string())?;
                printed += 1;
            }
            out.flush().map_err(|error| error.to_string())?;
            if options.max_messages.is_some_and(|max| printed >= max) {
                return Ok(());
            }
        }
        if options
            .timeout
            .is_some_and(|timeout| last_record.elapsed() >= timeout)
        {
            return Ok(());
        }
    }
}

/// Consumes as a member of `group`: the group assigns the partitions and remembers the
/// position. Records are committed as printed, so a later member starts after the last
/// record this one printed. SIGINT and SIGTERM end it cleanly (commit, then leave).
fn run_group(options: &ConsumeOptions<'_>, group: &str, format: &Format) -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|error| format!("cannot handle signal {signal}: {error}"))?;
    }
    let mut config = GroupConsumerConfig::new(group, &[options.topic]);
    config.client_id = "spate-cli".to_string();
    config.session_timeout = options.session_timeout;
    config.heartbeat_interval = options.session_timeout / 4;
    config.auto_offset_reset = match options.start {
        StartAt::Earliest => OffsetReset::Earliest,
        _ => OffsetReset::Latest,
    };
    let group_error = |error: ClientError| match error {
        ClientError::Broker(status) => format!("group {group}: {status}"),
        other => describe(other),
    };
    // A group may subscribe to a topic that does not exist yet (it rebalances when the
    // topic appears), but at the command line that is almost always a typo.
    let mut connection = connect(options.broker)?;
    let topic = connection
        .describe_topics(&[options.topic])
        .map_err(describe)?
        .pop()
        .ok_or("empty answer")?;
    if !topic.status.is_ok() {
        return Err(format!(
            "cannot consume {}: {}",
            options.topic, topic.status
        ));
    }
    drop(connection);
    let mut consumer = GroupConsumer::new(options.broker, config).map_err(describe)?;
    let mut printed = 0u64;
    let mut last_record = Instant::now();
    let mut out = std::io::stdout().lock();
    let outcome = loop {
        if stop.load(Ordering::SeqCst) {
            break Ok(());
        }
        let records = match consumer.poll(Duration::from_millis(200)) {
            Ok(records) => records,
            Err(error) => break Err(group_error(error)),
        };
        if !records.is_empty() {
            last_record = Instant::now();
        }
        let mut failed = None;
        let mut unprinted: Vec<(String, u32, i64)> = Vec::new();
        for record in records {
            let full = options.max_messages.is_some_and(|max| printed >= max);
            if full || failed.is_some() {
                // Not printed: the group must not count it as read.
                if !unprinted.iter().any(|(topic, partition, _)| {
                    *topic == record.topic && *partition == record.partition
                }) {
                    unprinted.push((record.topic.clone(), record.partition, record.record.offset));
                }
                continue;
            }
            if let Err(error) =
                format.write(&mut out, &record.topic, record.partition, &record.record)
            {
                failed = Some(error.to_string());
                unprinted.push((record.topic.clone(), record.partition, record.record.offset));
                continue;
            }
            printed += 1;
        }
        for (topic, partition, offset) in unprinted {
            let _ = consumer.seek(&topic, partition, offset);
        }
        if let Err(error) = out.flush() {
            failed.get_or_insert(error.to_string());
        }
        if let Some(error) = failed {
            break Err(error);
        }
        if options.max_messages.is_some_and(|max| printed >= max) {
            break Ok(());
        }
        if options
            .timeout
            .is_some_and(|timeout| last_record.elapsed() >= timeout)
        {
            break Ok(());
        }
    };
    let closed = consumer.close().map_err(group_error);
    outcome.and(closed)
}

/// kcat's format tokens: %t topic, %p partition, %o offset, %k key, %v value, %T timestamp,
/// %% a percent sign; \n and \t escapes.
enum Token {
    Text(Vec<u8>),
    Topic,
    Partition,
    Offset,
    Key,
    Value,
    Timestamp,
}

struct Format(Vec<Token>);

impl Format {
    fn parse(format: &str) -> Result<Format, String> {
        let mut tokens = Vec::new();
        let mut text = Vec::new();
        let mut chars = format.chars();
        while let Some(c) = chars.next() {
            let token = match c {
                '%' => match chars.next() {
                    Some('t') => Token::Topic,
                    Some('p') => Token::Partition,
                    Some('o') => Token::Offset,
                    Some('k') => Token::Key,
                    Some('v') => Token::Value,
                    Some('T') => Token::Timestamp,
                    Some('%') => {
                        text.push(b'%');
                        continue;
                    }
                    other => {
                        return Err(format!(
                            "unknown format token %{} in {format:?}",
                            other.map(String::from).unwrap_or_default()
                        ));
                    }
                },
                '\\' => {
                    match chars.next() {
                        Some('n') => text.push(b'\n'),
                        Some('t') => text.push(b'\t'),
                        Some('\\') => text.push(b'\\'),
                        other => {
                            return Err(format!(
                                "unknown escape \\{} in {format:?}",
                                other.map(String::from).unwrap_or_default()
                            ));
                        }
                    }
                    continue;
                }
                c => {
                    let mut buffer = [0u8; 4];
                    text.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
                    continue;
                }
            };
            if !text.is_empty() {
                tokens.push(Token::Text(std::mem::take(&mut text)));
            }
            tokens.push(token);
        }
        if !text.is_empty() {
            tokens.push(Token::Text(text));
        }
        Ok(Format(tokens))
    }

    fn write(
        &self,
        out: &mut impl Write,
        topic: &str,
        partition: u32,
        record: &Record,
    ) -> std::io::Result<()> {
        for token in &self.0 {
            match token {
                Token::Text(text) => out.write_all(text)?,
                Token::Topic => out.write_all(topic.as_bytes())?,
                Token::Partition => write!(out, "{partition}")?,
                Token::Offset => write!(out, "{}", record.offset)?,
                Token::Key => out.write_all(record.key.as_deref().unwrap_or_default())?,
                Token::Value => out.write_all(record.value.as_deref().unwrap_or_default())?,
                Token::Timestamp => write!(out, "{}", record.timestamp)?,
            }
        }
        Ok(())
    }
}
