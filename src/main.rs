//! `spate`: the broker (`spate serve`) and, next, its command-line client.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};
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
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
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
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, shutdown.clone())
            .map_err(|error| format!("cannot handle signal {signal}: {error}"))?;
    }
    let result = spate::server::serve(config, shutdown.clone());
    shutdown.store(true, Ordering::SeqCst);
    result
}
