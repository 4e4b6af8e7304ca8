//! The broker's own figures over a run, from its Prometheus metrics (`spate serve
//! --metrics-listen`): scraped before and after, the difference is the run's. Durability
//! rounds (fdatasync or syncfs) and their latency, segments per round (the group commit's
//! size), append write latency, errors.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;

/// Sample values summed over every label but `le`: (name, le) -> value.
pub type Samples = BTreeMap<(String, String), f64>;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BrokerFigures {
    pub sync_rounds: u64,
    /// Segments made durable per round, on average (1: no group commit happened).
    pub segments_per_round: f64,
    pub sync_p50_us: u64,
    pub sync_p99_us: u64,
    pub append_p99_us: u64,
    /// Failed answers (requests or partitions) the broker counted.
    pub errors: u64,
}

/// Reads `http://address/metrics`.
pub fn scrape(address: &str) -> anyhow::Result<Samples> {
    let mut stream = TcpStream::connect(address)
        .with_context(|| format!("cannot reach the broker's metrics at {address}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let Some((head, body)) = answer.split_once("\r\n\r\n") else {
        bail!("{address} answered no HTTP response");
    };
    if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1) != Some("200") {
        bail!(
            "{address}/metrics answered {}",
            head.lines().next().unwrap_or("")
        );
    }
    Ok(parse(body))
}

/// Sums each sample over its labels, keeping `le` apart.
pub fn parse(page: &str) -> Samples {
    let mut samples = Samples::new();
    for line in page.lines().filter(|line| !line.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let le = labels
            .split(',')
            .find_map(|label| label.strip_prefix("le=\""))
            .map(|le| le.trim_end_matches(['"', '}']).to_string())
            .unwrap_or_default();
        *samples.entry((name.to_string(), le)).or_default() += value;
    }
    samples
}

fn delta(before: &Samples, after: &Samples, name: &str) -> f64 {
    let key = (name.to_string(), String::new());
    after.get(&key).copied().unwrap_or(0.0) - before.get(&key).copied().unwrap_or(0.0)
}

/// A histogram's quantile over the run, interpolated within its bucket as Prometheus'
/// `histogram_quantile` does; in microseconds.
fn quantile_us(before: &Samples, after: &Samples, histogram: &str, quantile: f64) -> u64 {
    let name = format!("{histogram}_bucket");
    let mut buckets: Vec<(f64, f64)> = after
        .iter()
        .filter(|((series, _), _)| *series == name)
        .map(|((_, le), value)| {
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            let earlier = before
                .get(&(name.clone(), le.clone()))
                .copied()
                .unwrap_or(0.0);
            (bound, value - earlier)
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let Some(&(_, total)) = buckets.last() else {
        return 0;
    };
    if total <= 0.0 {
        return 0;
    }
    let rank = quantile * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (bound, cumulative) in &buckets {
        if *cumulative >= rank {
            if bound.is_infinite() {
                return (lower * 1e6) as u64;
            }
            let within = (rank - below) / (cumulative - below).max(f64::MIN_POSITIVE);
            return ((lower + (bound - lower) * within) * 1e6) as u64;
        }
        (lower, below) = (*bound, *cumulative);
    }
    (lower * 1e6) as u64
}

/// The run's figures: `after` less `before`.
pub fn figures(before: &Samples, after: &Samples) -> BrokerFigures {
    let rounds = delta(before, after, "spate_sync_round_segments_count");
    let segments = delta(before, after, "spate_sync_round_segments_sum");
    BrokerFigures {
        sync_rounds: rounds as u64,
        segments_per_round: if rounds > 0.0 { segments / rounds } else { 0.0 },
        sync_p50_us: quantile_us(before, after, "spate_sync_latency_seconds", 0.5),
        sync_p99_us: quantile_us(before, after, "spate_sync_latency_seconds", 0.99),
        append_p99_us: quantile_us(before, after, "spate_append_latency_seconds", 0.99),
        errors: delta(before, after, "spate_errors_total") as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "\
# TYPE spate_sync_latency_seconds histogram
spate_sync_latency_seconds_bucket{le=\"0.001\",shard=\"0\"} 1
spate_sync_latency_seconds_bucket{le=\"0.002\",shard=\"0\"} 1
spate_sync_latency_seconds_bucket{le=\"+Inf\",shard=\"0\"} 1
spate_sync_round_segments_sum{shard=\"0\"} 1
spate_sync_round_segments_count{shard=\"0\"} 1
# EOF
";

    const AFTER: &str = "\
spate_sync_latency_seconds_bucket{le=\"0.001\",shard=\"0\"} 51
spate_sync_latency_seconds_bucket{le=\"0.002\",shard=\"0\"} 101
spate_sync_latency_seconds_bucket{le=\"+Inf\",shard=\"0\"} 101
spate_sync_latency_seconds_bucket{le=\"0.001\",shard=\"1\"} 0
spate_sync_latency_seconds_bucket{le=\"0.002\",shard=\"1\"} 0
spate_sync_latency_seconds_bucket{le=\"+Inf\",shard=\"1\"} 0
spate_sync_round_segments_sum{shard=\"0\"} 401
spate_sync_round_segments_count{shard=\"0\"} 101
spate_errors_total{shard=\"0\",code=\"timeout\"} 2
# EOF
";

    #[test]
    fn the_run_s_figures_are_the_difference_of_two_scrapes() {
        let figures = figures(&parse(BEFORE), &parse(AFTER));
        assert_eq!(figures.sync_rounds, 100);
        assert_eq!(figures.segments_per_round, 4.0);
        // 50 rounds at most 1 ms, 50 between 1 and 2 ms: the median is 1 ms, p99 1.98 ms.
        assert_eq!(figures.sync_p50_us, 1000);
        assert_eq!(figures.sync_p99_us, 1980);
        assert_eq!(figures.append_p99_us, 0);
        assert_eq!(figures.errors, 2);
    }
}
