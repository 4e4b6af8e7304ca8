//! `spate`: the broker (`spate serve`) and its command-line client (`spate topic`,
//! `spate produce`, `spate consume`).

mod cli;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Parser, Subcommand};
use spate::client::StartAt;
use spate::protocol::Acks;
use spate::server::{FileConfig, ServerConfig, parse_cpus, parse_listen};

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
    Serve(ServeArgs),
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
        #[arg(long)]
        partition: Option<u32>,
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
        /// A topic config as key=value (repeatable), e.g. flush.ms=100.
        #[arg(long = "config")]
        configs: Vec<String>,
    },
    /// List topic names.
    List,
    /// Show a topic's partitions, owners, offsets and configs.
    Describe { name: String },
    /// Delete a topic and its data.
    Delete { name: String },
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
    /// TOML file with any of the settings below (flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where topics and their partitions are stored.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address of the shared listener; shard i also listens on port+1+i.
    #[arg(long, value_parser = parse_listen)]
    listen: Option<std::net::SocketAddr>,
    /// Number of shards (one pinned core each).
    #[arg(long)]
    shards: Option<usize>,
    /// Cores to pin the shards to, e.g. 0,2,4-6 (one per shard).
    #[arg(long, value_parser = parse_cpus)]
    cpus: Option<Vec<usize>>,
    /// Create a topic on its first produce.
    #[arg(long)]
    auto_create_topics: bool,
    /// Partitions of an auto-created topic.
    #[arg(long)]
    default_partitions: Option<u32>,
    /// Largest request frame accepted, in bytes (default 8 MiB).
    #[arg(long)]
    frame_bytes_max: Option<usize>,
    /// Connections one shard serves at once (default 1024).
    #[arg(long)]
    connections_max_per_shard: Option<usize>,
    /// Requests of one connection worked on at once (default 64).
    #[arg(long)]
    in_flight_max_per_connection: Option<usize>,
    /// How often retention runs, in ms (default 300000).
    #[arg(long)]
    retention_check_interval_ms: Option<u64>,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
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
        Command::Serve(args) => serve(args),
        Command::Topic { command, broker } => match command {
            TopicCommand::Create {
                name,
                partitions,
                configs,
            } => cli::topic::create(&broker, &name, partitions, &configs),
            TopicCommand::List => cli::topic::list(&broker),
            TopicCommand::Describe { name } => cli::topic::describe_topic(&broker, &name),
            TopicCommand::Delete { name } => cli::topic::delete(&broker, &name),
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
        FileConfig::read(path)?.apply(&mut config)?;
    }
    if let Some(data_dir) = args.data_dir {
        config.data_dir = data_dir;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(shards) = args.shards {
        config.shards = shards;
    }
    if let Some(cpus) = args.cpus {
        config.shards = args.shards.unwrap_or(cpus.len());
        config.cpus = Some(cpus);
    }
    config.auto_create_topics |= args.auto_create_topics;
    config.default_partitions = args.default_partitions.unwrap_or(config.default_partitions);
    config.frame_bytes_max = args.frame_bytes_max.unwrap_or(config.frame_bytes_max);
    config.connections_max_per_shard = args
        .connections_max_per_shard
        .unwrap_or(config.connections_max_per_shard);
    config.in_flight_max_per_connection = args
        .in_flight_max_per_connection
        .unwrap_or(config.in_flight_max_per_connection);
    config.retention_check_interval_ms = args
        .retention_check_interval_ms
        .unwrap_or(config.retention_check_interval_ms);
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, shutdown.clone())
            .map_err(|error| format!("cannot handle signal {signal}: {error}"))?;
    }
    let result = spate::server::serve(config, shutdown.clone());
    shutdown.store(true, Ordering::SeqCst);
    result
}
