//! `spate`: the broker (`spate serve`) and its command-line client (`spate topic`,
//! `spate produce`, `spate consume`, `spate group`, `spate broker`).

mod cli;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Parser, Subcommand};
use spate::client::StartAt;
use spate::protocol::Acks;
use spate::server::{ServerConfig, Settings};

#[derive(Parser)]
#[command(
    name = "spate",
    version,
    about = "A thread-per-core event-streaming broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (defaults: ./spate-data, 127.0.0.1:7070, one shard per core).
    Serve(Box<ServeArgs>),
    /// Show what each shard of a running broker holds and is doing.
    Broker {
        #[command(subcommand)]
        command: BrokerCommand,
        #[arg(long, global = true, default_value = cli::DEFAULT_BROKER)]
        broker: String,
    },
    /// List, describe, reset the offsets of and delete consumer groups.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
        #[arg(long, global = true, default_value = cli::DEFAULT_BROKER)]
        broker: String,
    },
    /// Show the cluster's nodes, their state and the controller.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
        #[arg(long, global = true, default_value = cli::DEFAULT_BROKER)]
        broker: String,
    },
    /// Create, list, describe and delete topics.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
        #[arg(long, global = true, default_value = cli::DEFAULT_BROKER)]
        broker: String,
    },
    /// Produce one record per line of stdin.
    Produce {
        topic: String,
        /// Partition to write to (default: by key hash, else sticky per batch).
        #[arg(long)]
        partition: Option<u32>,
        /// Split each line at the first SEP: the text before it is the key.
        #[arg(long)]
        key_separator: Option<String>,
        /// Acknowledgements to wait for: 0, 1 or all.
        #[arg(long, default_value = "all", value_parser = parse_acks)]
        acks: Acks,
        /// Print "PARTITION OFFSET" for each acknowledged record, in input order.
        #[arg(long)]
        print_offsets: bool,
        #[arg(long, default_value = cli::DEFAULT_BROKER)]
        broker: String,
    },
    /// Print records (from the end unless told otherwise).
    Consume {
        topic: String,
        /// Only this partition (default: all).
        #[arg(long, conflicts_with = "group")]
        partition: Option<u32>,
        /// Consume as a member of this consumer group: partitions are shared with the
        /// group's other members and the position is committed to the group (it starts
        /// from the group's committed offsets; --from-beginning applies where it has none).
        #[arg(long)]
        group: Option<String>,
        /// With --group: the member is removed if the broker hears nothing from it for
        /// this long.
        #[arg(long, requires = "group", default_value_t = 10_000)]
        session_timeout_ms: u32,
        /// Start at the earliest offset.
        #[arg(long, conflicts_with = "offset")]
        from_beginning: bool,
        /// Start at this offset (with --partition).
        #[arg(long, requires = "partition")]
        offset: Option<i64>,
        /// Exit after this many records.
        #[arg(long)]
        max_messages: Option<u64>,
        /// Exit after this many ms without a new record.
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// kcat format: %t topic, %p partition, %o offset, %k key, %v value, %T timestamp.
        #[arg(long, default_value = "%v\\n")]
        format: String,
        #[arg(long, default_value = cli::DEFAULT_BROKER)]
        broker: String,
    },
}

#[derive(Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Copies of each partition, on as many brokers of the cluster.
        #[arg(long, default_value_t = 1)]
        replication_factor: u16,
        /// A topic config as key=value (repeatable), e.g. flush.ms=100.
        #[arg(long = "config")]
        configs: Vec<String>,
    },
    /// List topic names.
    List,
    /// Show a topic's partitions (leader, replicas, in-sync replicas, offsets) and configs.
    Describe { name: String },
    /// Add partitions to a topic (as in Kafka, they can only be added; keys then map to
    /// partitions differently).
    Alter {
        name: String,
        /// The topic's partition count in all, more than it has.
        #[arg(long)]
        partitions: u32,
    },
    /// Delete a topic and its data.
    Delete { name: String },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// The nodes (address, shards, fenced or not) and the controller.
    Describe,
}

#[derive(Subcommand)]
enum BrokerCommand {
    /// Each shard's partitions, connections, long-poll waits and forwarded requests, and
    /// the broker's open files.
    Describe,
}

#[derive(Subcommand)]
enum GroupCommand {
    /// List groups with their state and member count.
    List,
    /// Show a group's members, their partitions, and the committed offset, log end offset
    /// and lag of each partition.
    Describe { group: String },
    /// Move a group's committed offsets for a topic (the group must have no active
    /// members).
    ResetOffsets {
        group: String,
        #[arg(long)]
        topic: String,
        /// To each partition's earliest offset.
        #[arg(long, group = "target")]
        to_earliest: bool,
        /// To each partition's log end.
        #[arg(long, group = "target")]
        to_latest: bool,
        /// To this offset in every partition (clamped to each partition's range).
        #[arg(long, group = "target")]
        to_offset: Option<i64>,
        /// Print the new offsets without committing them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete a group with no active members, and its committed offsets.
    Delete { group: String },
}

fn parse_acks(value: &str) -> Result<Acks, String> {
    match value {
        "0" => Ok(Acks::None),
        "1" => Ok(Acks::Leader),
        "all" | "-1" => Ok(Acks::All),
        other => Err(format!("invalid acks {other:?}: expected 0, 1 or all")),
    }
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML file with any of the settings below, in kebab-case (flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            // openraft narrates every election at info and warn: its errors are enough.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        // A client command writing into a closed pipe (`spate consume ... | head`) ends
        // quietly, as Unix tools do. The broker keeps SIGPIPE ignored: its sockets need it.
        // SAFETY: restores the default disposition before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Topic { command, broker } => match command {
            TopicCommand::Create {
                name,
                partitions,
                replication_factor,
                configs,
            } => cli::topic::create(&broker, &name, partitions, replication_factor, &configs),
            TopicCommand::List => cli::topic::list(&broker),
            TopicCommand::Describe { name } => cli::topic::describe_topic(&broker, &name),
            TopicCommand::Alter { name, partitions } => {
                cli::topic::alter(&broker, &name, partitions)
            }
            TopicCommand::Delete { name } => cli::topic::delete(&broker, &name),
        },
        Command::Cluster { command, broker } => match command {
            ClusterCommand::Describe => cli::cluster::describe_cluster(&broker),
        },
        Command::Broker { command, broker } => match command {
            BrokerCommand::Describe => cli::broker::describe_broker(&broker),
        },
        Command::Group { command, broker } => match command {
            GroupCommand::List => cli::group::list(&broker),
            GroupCommand::Describe { group } => cli::group::describe_group(&broker, &group),
            GroupCommand::ResetOffsets {
                group,
                topic,
                to_earliest,
                to_latest,
                to_offset,
                dry_run,
            } => {
                let to = match (to_earliest, to_latest, to_offset) {
                    (true, _, _) => Ok(cli::group::ResetTo::Earliest),
                    (_, true, _) => Ok(cli::group::ResetTo::Latest),
                    (_, _, Some(offset)) => Ok(cli::group::ResetTo::Offset(offset)),
                    _ => Err(
                        "reset-offsets needs one of --to-earliest, --to-latest or --to-offset N"
                            .to_string(),
                    ),
                };
                to.and_then(|to| cli::group::reset_offsets(&broker, &group, &topic, to, dry_run))
            }
            GroupCommand::Delete { group } => cli::group::delete(&broker, &group),
        },
        Command::Produce {
            topic,
            partition,
            key_separator,
            acks,
            print_offsets,
            broker,
        } => cli::produce::run(cli::produce::ProduceOptions {
            broker: &broker,
            topic: &topic,
            partition,
            key_separator: key_separator.as_deref(),
            acks,
            print_offsets,
        }),
        Command::Consume {
            topic,
            partition,
            group,
            session_timeout_ms,
            from_beginning,
            offset,
            max_messages,
            timeout_ms,
            format,
            broker,
        } => {
            let start = match (from_beginning, offset) {
                (_, Some(offset)) => StartAt::Offset(offset),
                (true, None) => StartAt::Earliest,
                (false, None) => StartAt::Latest,
            };
            cli::consume::run(cli::consume::ConsumeOptions {
                broker: &broker,
                topic: &topic,
                partition,
                start,
                max_messages,
                timeout: timeout_ms.map(Duration::from_millis),
                format: &format,
                group: group.as_deref(),
                session_timeout: Duration::from_millis(session_timeout_ms.into()),
            })
        }
    };
    if let Err(error) = result {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let mut config = ServerConfig::default();
    if let Some(path) = &args.config {
        Settings::read(path)?.apply(&mut config);
    }
    args.settings.apply(&mut config);
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, shutdown.clone())
            .map_err(|error| format!("cannot handle signal {signal}: {error}"))?;
    }
    let result = spate::server::serve(config, shutdown.clone());
    shutdown.store(true, Ordering::SeqCst);
    result
}
