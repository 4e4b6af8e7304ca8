//! The results: the final table, the JSON file (a stable schema, documented in
//! docs/BENCHMARKS.md) and a self-contained HTML page with inline SVG plots.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::options::Plan;
use crate::run::Outcome;
use crate::stats::{Interval, Percentiles, Tally};

/// The JSON report. Fields are added, never renamed or removed (`schema` counts breaks).
#[derive(Serialize)]
pub struct Summary<'a> {
    pub schema: u32,
    pub workload: crate::options::Workload,
    /// Whether the run did all it was asked without an error.
    pub complete: bool,
    pub error: Option<&'a str>,
    pub records: u64,
    /// Record-batch bytes, as they travel on the wire and sit on disk.
    pub bytes: u64,
    pub duration_s: f64,
    pub throughput_mb_s: f64,
    pub records_per_s: f64,
    /// produce: send (or scheduled send) to acknowledgement; consume: none measured
    /// beyond fetch pacing; e2e: send (or scheduled send) to receipt by a consumer.
    pub latency_us: Percentiles,
    /// e2e only: the producers' send-to-acknowledgement latency.
    pub produce_latency_us: Option<Percentiles>,
    pub errors: u64,
    /// Batches refused for a reason that passes (a leader moved in a cluster) and sent
    /// again to the new leader; their records count once, when acknowledged.
    pub resent_batches: u64,
    /// Times a consumer lost its partitions' leader and found the new one.
    pub consumer_failovers: u64,
    /// With --spawn-broker: the most memory the broker held resident (VmHWM), read at the
    /// end of the run.
    pub broker_peak_resident_bytes: Option<u64>,
    /// The broker's own figures over the run, from its metrics (--broker-metrics, or a
    /// spawned broker's); null without them.
    pub broker: Option<crate::broker_metrics::BrokerFigures>,
    pub plan: &'a Plan,
    pub series: &'a [Interval],
}

pub fn summary<'a>(
    plan: &'a Plan,
    outcome: &'a Outcome,
    broker_peak_resident_bytes: Option<u64>,
    broker: Option<crate::broker_metrics::BrokerFigures>,
) -> Summary<'a> {
    let tally = &outcome.tally;
    let seconds = outcome.duration.as_secs_f64().max(1e-9);
    Summary {
        schema: 1,
        workload: plan.workload,
        complete: outcome.complete,
        error: outcome.failure.as_deref(),
        records: tally.records,
        bytes: tally.bytes,
        duration_s: seconds,
        throughput_mb_s: tally.bytes as f64 / seconds / 1e6,
        records_per_s: tally.records as f64 / seconds,
        latency_us: tally.percentiles(),
        produce_latency_us: outcome.produce_tally.as_ref().map(Tally::percentiles),
        errors: tally.errors
            + outcome
                .produce_tally
                .as_ref()
                .map_or(0, |tally| tally.errors),
        resent_batches: outcome.resent_batches,
        consumer_failovers: outcome.consumer_failovers,
        broker_peak_resident_bytes,
        broker,
        plan,
        series: &tally.series,
    }
}

pub fn table(summary: &Summary) -> String {
    let latency = &summary.latency_us;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:?} ({:?} protocol): {} records, {:.1} MB in {:.2} s{}",
        summary.workload,
        summary.plan.protocol,
        summary.records,
        summary.bytes as f64 / 1e6,
        summary.duration_s,
        if summary.complete {
            ""
        } else {
            " (INCOMPLETE)"
        }
    );
    let _ = writeln!(
        out,
        "throughput  {:>10.1} MB/s  {:>12.0} records/s",
        summary.throughput_mb_s, summary.records_per_s
    );
    let _ = writeln!(
        out,
        "latency us  p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}",
        latency.p50, latency.p90, latency.p99, latency.p999, latency.p9999, latency.max
    );
    if let Some(produce) = &summary.produce_latency_us {
        let _ = writeln!(
            out,
            "produce ack us  p50 {}  p99 {}  max {}",
            produce.p50, produce.p99, produce.max
        );
    }
    if let Some(peak) = summary.broker_peak_resident_bytes {
        let _ = writeln!(
            out,
            "broker peak resident memory  {:.1} MiB",
            peak as f64 / (1 << 20) as f64
        );
    }
    if let Some(broker) = &summary.broker {
        let _ = writeln!(
            out,
            "broker      {} durability rounds, {:.1} segments each, sync p50 {} us p99 {} us; append write p99 {} us; {} errors",
            broker.sync_rounds,
            broker.segments_per_round,
            broker.sync_p50_us,
            broker.sync_p99_us,
            broker.append_p99_us,
            broker.errors
        );
    }
    if summary.errors > 0 {
        let _ = writeln!(out, "errors      {}", summary.errors);
    }
    if summary.resent_batches > 0 || summary.consumer_failovers > 0 {
        let _ = writeln!(
            out,
            "failovers   {} batches sent again to a new leader, {} consumer reconnections",
            summary.resent_batches, summary.consumer_failovers
        );
    }
    out
}

pub fn write_json(path: &Path, summary: &Summary) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(summary)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

pub fn write_html(
    path: &Path,
    summary: &Summary,
    latency: &hdrhistogram::Histogram<u64>,
) -> anyhow::Result<()> {
    let series = summary.series;
    let throughput = [Line {
        name: "MB/s",
        color: "#1f77b4",
        points: series.iter().map(|i| (i.t, i.throughput_mb_s)).collect(),
    }];
    let percentiles = [
        ("p50", "#2ca02c", 0usize),
        ("p99", "#ff7f0e", 1),
        ("p99.9", "#d62728", 2),
        ("max", "#7f7f7f", 3),
    ]
    .map(|(name, color, which)| Line {
        name,
        color,
        points: series
            .iter()
            .map(|i| {
                let value = match which {
                    0 => i.latency_us.p50,
                    1 => i.latency_us.p99,
                    2 => i.latency_us.p999,
                    _ => i.latency_us.max,
                };
                (i.t, value as f64)
            })
            .collect(),
    });
    // The percentile spectrum, x = log10(1 / (1 - q)): 0 is p0, 1 is p90, 2 is p99...
    let spectrum = [Line {
        name: "latency",
        color: "#9467bd",
        points: latency
            .iter_quantiles(4)
            .filter(|step| step.quantile_iterated_to() < 1.0)
            .map(|step| {
                let q = step.quantile_iterated_to();
                ((1.0 / (1.0 - q)).log10(), step.value_iterated_to() as f64)
            })
            .collect(),
    }];
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>spate-loadgen {:?}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}pre{{background:#f4f4f4;padding:1em}}</style></head><body>\
         <h1>spate-loadgen: {:?}</h1><pre>{}</pre>",
        summary.workload,
        summary.workload,
        escape(&table(summary))
    );
    page += &chart(
        "Throughput over time",
        "seconds",
        "MB/s",
        &throughput,
        |x| format!("{x:.0}"),
    );
    page += &chart(
        "Latency percentiles over time",
        "seconds",
        "microseconds",
        &percentiles,
        |x| format!("{x:.0}"),
    );
    page += &chart(
        "Latency distribution",
        "percentile",
        "microseconds",
        &spectrum,
        |x| {
            let percentile = 100.0 * (1.0 - 10f64.powf(-x));
            format!("{percentile:.4}%").replace(".0000%", "%")
        },
    );
    let _ = writeln!(
        page,
        "<h2>Plan</h2><pre>{}</pre></body></html>",
        escape(&serde_json::to_string_pretty(summary.plan)?)
    );
    std::fs::write(path, page).with_context(|| format!("cannot write {}", path.display()))
}

struct Line {
    name: &'static str,
    color: &'static str,
    points: Vec<(f64, f64)>,
}

/// An SVG line chart with axes, five ticks a side and a legend.
fn chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    lines: &[Line],
    x_tick: impl Fn(f64) -> String,
) -> String {
    let (width, height, left, bottom, top, right) = (720.0, 320.0, 70.0, 40.0, 20.0, 120.0);
    let points = lines.iter().flat_map(|line| &line.points);
    let (mut x_max, mut y_max) = (1e-9f64, 1e-9f64);
    let mut x_min = f64::MAX;
    for &(x, y) in points {
        x_max = x_max.max(x);
        x_min = x_min.min(x);
        y_max = y_max.max(y);
    }
    if x_min == f64::MAX || x_min >= x_max {
        x_min = 0.0;
    }
    let y_max = y_max * 1.05;
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let sx = |x: f64| left + (x - x_min) / (x_max - x_min).max(1e-9) * plot_w;
    let sy = |y: f64| top + plot_h - y / y_max * plot_h;
    let mut svg = format!(
        "<h2>{}</h2><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-size=\"11\">",
        escape(title)
    );
    let _ = write!(
        svg,
        "<rect x=\"{left}\" y=\"{top}\" width=\"{plot_w}\" height=\"{plot_h}\" fill=\"none\" stroke=\"#999\"/>"
    );
    for tick in 0..=4 {
        let fraction = f64::from(tick) / 4.0;
        let x = x_min + fraction * (x_max - x_min);
        let y = fraction * y_max;
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}</text>\
             <line x1=\"{left}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/>",
            sx(x),
            height - bottom + 15.0,
            escape(&x_tick(x)),
            left - 5.0,
            sy(y) + 4.0,
            y,
            left + plot_w,
            sy(y),
            sy(y)
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
         <text x=\"12\" y=\"{:.1}\" transform=\"rotate(-90 12 {:.1})\" text-anchor=\"middle\">{}</text>",
        left + plot_w / 2.0,
        height - 5.0,
        escape(x_label),
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        escape(y_label)
    );
    for (index, line) in lines.iter().enumerate() {
        let path: Vec<String> = line
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>\
             <rect x=\"{:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            line.color,
            path.join(" "),
            width - right + 10.0,
            top + 16.0 * index as f64,
            line.color,
            width - right + 25.0,
            top + 9.0 + 16.0 * index as f64,
            escape(line.name)
        );
    }
    svg + "</svg>"
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
