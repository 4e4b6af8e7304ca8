//! spate-loadgen: drives a Spate broker with produce, consume or end-to-end workloads and
//! reports throughput and latency (see README and docs/BENCHMARKS.md).

mod broker_metrics;
mod consumer;
mod door;
mod options;
mod producer;
mod report;
mod run;
mod stats;

use std::path::PathBuf;

use clap::Parser;

use options::{Options, Plan};

#[derive(Parser)]
#[command(
    name = "spate-loadgen",
    version,
    about = "Load generator for the Spate broker"
)]
struct Cli {
    /// Take the options from a workload file (TOML: the flags' names, and `kind`); flags
    /// given as well win.
    #[arg(long = "workload")]
    workload_file: Option<PathBuf>,
    #[command(flatten)]
    options: Options,
}

fn main() {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::exit(2);
        }
    }
}

/// Ok(false): the run ended early or saw errors (its figures are still printed).
fn real_main(cli: Cli) -> anyhow::Result<bool> {
    let options = match &cli.workload_file {
        Some(path) => cli.options.over(Options::read(path)?),
        None => cli.options,
    };
    let mut plan = Plan::from(options)?;
    let broker = if plan.spawn_broker {
        Some(run::spawn_broker(&mut plan)?)
    } else {
        None
    };
    let metrics = plan.broker_metrics.clone();
    let scrape = || metrics.as_deref().map(broker_metrics::scrape);
    let before = scrape();
    let outcome = run::run(&mut plan)?;
    let peak = broker
        .as_ref()
        .and_then(run::SpawnedBroker::peak_resident_bytes);
    let figures = match (before, scrape()) {
        (Some(Ok(before)), Some(Ok(after))) => Some(broker_metrics::figures(&before, &after)),
        (Some(Err(error)), _) | (_, Some(Err(error))) => {
            eprintln!("warning: no broker-side figures: {error:#}");
            None
        }
        _ => None,
    };
    let summary = report::summary(&plan, &outcome, peak, figures);
    print!("{}", report::table(&summary));
    if let Some(path) = &plan.json {
        report::write_json(path, &summary)?;
    }
    if let Some(path) = &plan.report {
        report::write_html(path, &summary, &outcome.tally.latency)?;
    }
    if let Some(error) = &outcome.failure {
        eprintln!("error: the run stopped early: {error}");
    }
    Ok(outcome.complete)
}
