//! Counting what a run did: every worker records into a shared `Recorder`; once a second
//! the main thread takes the window (for the progress line and the time series) and
//! folds it into the totals.

use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are kept in microseconds, from 1 µs to 1 hour at 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

struct Window {
    records: u64,
    bytes: u64,
    latency: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Window {
    fn new() -> Window {
        Window {
            records: 0,
            bytes: 0,
            latency: histogram(),
            errors: 0,
            first_error: None,
        }
    }
}

pub struct Recorder {
    window: Mutex<Window>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            window: Mutex::new(Window::new()),
        }
    }
}

impl Recorder {
    /// `records` records of `bytes` bytes done, with these latencies.
    pub fn record(&self, records: u64, bytes: u64, latencies: impl Iterator<Item = Duration>) {
        let mut window = self.window.lock().expect("not poisoned");
        window.records += records;
        window.bytes += bytes;
        for latency in latencies {
            window
                .latency
                .saturating_record((latency.as_micros() as u64).max(1));
        }
    }

    pub fn error(&self, message: String) {
        let mut window = self.window.lock().expect("not poisoned");
        window.errors += 1;
        window.first_error.get_or_insert(message);
    }

    fn take(&self) -> Window {
        std::mem::replace(
            &mut *self.window.lock().expect("not poisoned"),
            Window::new(),
        )
    }
}

/// Latency percentiles in microseconds, as the JSON schema names them.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
}

impl Percentiles {
    fn of(latency: &Histogram<u64>) -> Percentiles {
        Percentiles {
            p50: latency.value_at_quantile(0.50),
            p90: latency.value_at_quantile(0.90),
            p99: latency.value_at_quantile(0.99),
            p999: latency.value_at_quantile(0.999),
            p9999: latency.value_at_quantile(0.9999),
            max: latency.max(),
        }
    }
}

/// One second (or the last part of one) of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Interval {
    /// Seconds since the measured run began, at the end of this interval.
    pub t: f64,
    pub throughput_mb_s: f64,
    pub records_per_s: f64,
    pub latency_us: Percentiles,
}

/// Totals over the run, and the per-second series.
pub struct Tally {
    pub records: u64,
    pub bytes: u64,
    pub latency: Histogram<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub series: Vec<Interval>,
    last_t: f64,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            records: 0,
            bytes: 0,
            latency: histogram(),
            errors: 0,
            first_error: None,
            series: Vec::new(),
            last_t: 0.0,
        }
    }
}

impl Tally {
    /// Folds in what `recorder` gathered since the last call; `t` is seconds since start.
    pub fn collect(&mut self, recorder: &Recorder, t: f64) -> &Interval {
        let window = recorder.take();
        let span = (t - self.last_t).max(1e-9);
        self.last_t = t;
        self.records += window.records;
        self.bytes += window.bytes;
        self.errors += window.errors;
        if self.first_error.is_none() {
            self.first_error = window.first_error;
        }
        self.latency.add(&window.latency).expect("same bounds");
        self.series.push(Interval {
            t,
            throughput_mb_s: window.bytes as f64 / span / 1e6,
            records_per_s: window.records as f64 / span,
            latency_us: Percentiles::of(&window.latency),
        });
        self.series.last().expect("just pushed")
    }

    pub fn percentiles(&self) -> Percentiles {
        Percentiles::of(&self.latency)
    }
}
