//! One run: reach (or spawn) the broker, make sure the topic exists, start the workers on
//! their cores, print a progress line a second, and gather the results.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use spate::client::Native;
use spate::kafka::client::KafkaWire;

use crate::door::{Admin, Layout, Position, Protocol};
use crate::options::{Plan, Workload};
use crate::stats::{Recorder, Tally};

/// State every worker sees.
pub struct Shared {
    /// Send and receive times are nanoseconds since this instant.
    pub epoch: Instant,
    epoch_wall_ms: i64,
    /// Set when the run must end (time is up, or a worker failed).
    pub stop: AtomicBool,
    pub failed: AtomicBool,
    pub acknowledged: AtomicU64,
    pub consumed: AtomicU64,
    /// Batches refused for a reason that passes (a leader moved) and sent again.
    pub resent: AtomicU64,
    /// Times a consumer found its partitions' leaders again.
    pub consumer_failovers: AtomicU64,
}

impl Shared {
    fn new() -> Shared {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Shared {
            epoch: Instant::now(),
            epoch_wall_ms: wall.as_millis() as i64,
            stop: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            acknowledged: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            consumer_failovers: AtomicU64::new(0),
        }
    }

    /// Wall-clock milliseconds at `instant` (record timestamps).
    pub fn wall_ms_at(&self, instant: Instant) -> i64 {
        self.epoch_wall_ms + instant.saturating_duration_since(self.epoch).as_millis() as i64
    }

    /// A worker failed: end the run, and report it incomplete.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// What a run measured.
pub struct Outcome {
    pub tally: Tally,
    /// The producers' send-to-acknowledgement latency, in e2e runs.
    pub produce_tally: Option<Tally>,
    pub duration: Duration,
    pub complete: bool,
    pub failure: Option<String>,
    pub resent_batches: u64,
    pub consumer_failovers: u64,
}

/// A broker this run started; stopped and its data removed on drop.
pub struct SpawnedBroker {
    child: Child,
    _data: tempfile::TempDir,
}

impl SpawnedBroker {
    /// The most memory the broker has held resident since it started (VmHWM).
    pub fn peak_resident_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
}

impl Drop for SpawnedBroker {
    fn drop(&mut self) {
        // SAFETY: signals our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn broker_binary(plan: &Plan) -> anyhow::Result<PathBuf> {
    if let Some(path) = &plan.broker_bin {
        return Ok(path.clone());
    }
    let beside = std::env::current_exe()?.with_file_name("spate");
    if beside.exists() {
        return Ok(beside);
    }
    Ok(PathBuf::from("spate"))
}

/// Starts `spate serve` on a fresh temporary directory and a free port, pinned to the
/// plan's broker cores, and waits until it answers.
pub fn spawn_broker(plan: &mut Plan) -> anyhow::Result<SpawnedBroker> {
    let data = tempfile::Builder::new()
        .prefix("spate-loadgen-")
        .tempdir()?;
    let shards = plan.broker_cpus.len();
    // Native: the bootstrap port and one per shard; Kafka's the same, just above; then
    // the metrics port.
    let port = spate::server::free_port_range([127, 0, 0, 1].into(), 2 * shards + 2)
        .map_err(|error| anyhow::anyhow!(error))?;
    let kafka_port = port + shards as u16 + 1;
    let metrics = format!("127.0.0.1:{}", port + 2 * shards as u16 + 2);
    if plan.broker_metrics.is_none() {
        plan.broker_metrics = Some(metrics.clone());
    }
    let cpus = plan
        .broker_cpus
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let binary = broker_binary(plan)?;
    let mut child = Command::new(&binary)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--cpus",
            &cpus,
            "--kafka-listen",
            &format!("127.0.0.1:{kafka_port}"),
            "--metrics-listen",
            &metrics,
        ])
        .arg("--data-dir")
        .arg(data.path().join("data"))
        .args(
            plan.broker_settings
                .iter()
                .flat_map(|(key, value)| [format!("--{key}"), value.clone()]),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start the broker {}", binary.display()))?;
    plan.broker = match plan.protocol {
        Protocol::Native => format!("127.0.0.1:{port}"),
        Protocol::Kafka => format!("127.0.0.1:{kafka_port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Admin::connect(plan).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("the spawned broker exited at start ({status}); run it by hand to see why");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the spawned broker did not start listening within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(SpawnedBroker { child, _data: data })
}

/// Creates the topic if missing and learns where its partitions live.
fn prepare_topic(plan: &mut Plan) -> anyhow::Result<(Admin, Layout)> {
    let mut admin = Admin::connect(plan)?;
    admin.create_topic(plan)?;
    let layout = admin.layout(plan)?;
    Ok((admin, layout))
}

/// One producer's whole run, over the plan's protocol.
fn produce(
    index: usize,
    plan: &Plan,
    layout: &Layout,
    shared: &Arc<Shared>,
    records: Option<u64>,
    recorder: &Arc<Recorder>,
) -> anyhow::Result<()> {
    match plan.protocol {
        Protocol::Native => {
            crate::producer::run::<Native>(index, plan, layout, shared, records, recorder)
        }
        Protocol::Kafka => {
            crate::producer::run::<KafkaWire>(index, plan, layout, shared, records, recorder)
        }
    }
}

/// Pins the current thread to the `index`th of the plan's cores (round robin).
fn pin(plan: &Plan, index: usize) {
    if let Some(cpus) = &plan.cpus {
        let core = cpus[index % cpus.len()];
        if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
            eprintln!("warning: cannot pin a thread to core {core}");
        }
    }
}

pub fn run(plan: &mut Plan) -> anyhow::Result<Outcome> {
    let (mut admin, layout) = prepare_topic(plan)?;
    let layout = Arc::new(layout);
    pin(plan, 0);
    if plan.workload == Workload::Consume {
        fill(plan, &layout, &mut admin)?;
    }
    let start_offsets = match plan.workload {
        Workload::Consume => admin.offsets(plan, &layout, Position::Earliest)?,
        _ => admin.offsets(plan, &layout, Position::Latest)?,
    };
    let shared = Arc::new(Shared::new());
    let recorder = Arc::new(Recorder::default());
    let produce_recorder = Arc::new(Recorder::default());
    let plan_shared = Arc::new(plan.clone());
    let mut workers = Vec::new();
    let producing = plan.workload != Workload::Consume;
    if producing {
        let per = plan.records.map(|records| split(records, plan.producers));
        for index in 0..plan.producers {
            let (plan, layout, shared) = (plan_shared.clone(), layout.clone(), shared.clone());
            // In e2e the measured latency is the consumers'; producers' goes aside.
            let recorder = if plan.workload == Workload::E2e {
                produce_recorder.clone()
            } else {
                recorder.clone()
            };
            let records = per.as_ref().map(|per| per[index]);
            workers.push(
                std::thread::Builder::new()
                    .name(format!("producer-{index}"))
                    .spawn(move || {
                        pin(&plan, index);
                        produce(index, &plan, &layout, &shared, records, &recorder)
                    })?,
            );
        }
    }
    let produced_target = plan.records;
    if plan.workload != Workload::Produce {
        for index in 0..plan.consumers {
            let (plan, layout, shared) = (plan_shared.clone(), layout.clone(), shared.clone());
            let recorder = recorder.clone();
            let start = start_offsets.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("consumer-{index}"))
                    .spawn(move || {
                        pin(&plan, plan.producers + index);
                        let target = produced_target;
                        let done = || {
                            target.is_some_and(|target| {
                                shared.consumed.load(Ordering::Relaxed) >= target
                            })
                        };
                        crate::consumer::run(
                            index, &plan, &layout, &shared, &start, &recorder, done,
                        )
                    })?,
            );
        }
    }

    // The clock: a progress line a second, until the workers finish or time is up.
    let terminal = std::io::stderr().is_terminal();
    let mut tally = Tally::default();
    let mut produce_tally = Tally::default();
    let deadline = plan.duration.map(|duration| shared.epoch + duration);
    let mut next_tick = shared.epoch + Duration::from_secs(1);
    let mut producers_done_at: Option<Instant> = None;
    loop {
        let finished = workers.iter().all(|worker| worker.is_finished());
        let now = Instant::now();
        if deadline.is_some_and(|deadline| now >= deadline) {
            shared.stop.store(true, Ordering::SeqCst);
        }
        // e2e: once every producer is done, consumers get a grace period to catch up.
        if plan.workload == Workload::E2e {
            let producers_done = workers[..plan.producers]
                .iter()
                .all(|worker| worker.is_finished());
            if producers_done {
                let since = *producers_done_at.get_or_insert(now);
                let caught_up = shared.consumed.load(Ordering::Relaxed)
                    >= shared.acknowledged.load(Ordering::Relaxed);
                if caught_up || now.duration_since(since) > Duration::from_secs(10) {
                    shared.stop.store(true, Ordering::SeqCst);
                }
            }
        }
        if finished {
            break;
        }
        if now >= next_tick {
            let t = now.duration_since(shared.epoch).as_secs_f64();
            let interval = tally.collect(&recorder, t).clone();
            produce_tally.collect(&produce_recorder, t);
            if terminal {
                eprintln!(
                    "{:>6.1}s {:>9.1} MB/s {:>10.0} rec/s  p50 {:>7} us  p99 {:>7} us  max {:>8} us",
                    t,
                    interval.throughput_mb_s,
                    interval.records_per_s,
                    interval.latency_us.p50,
                    interval.latency_us.p99,
                    interval.latency_us.max
                );
            }
            next_tick += Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut failure = None;
    for worker in workers {
        match worker.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                failure.get_or_insert(format!("{error:#}"));
            }
            Err(_) => {
                failure.get_or_insert("a worker thread panicked".to_string());
            }
        }
    }
    let duration = shared.epoch.elapsed();
    tally.collect(&recorder, duration.as_secs_f64());
    produce_tally.collect(&produce_recorder, duration.as_secs_f64());
    if failure.is_none() {
        failure = tally
            .first_error
            .clone()
            .or(produce_tally.first_error.clone());
    }
    let complete = failure.is_none()
        && !shared.failed.load(Ordering::SeqCst)
        && match (plan.workload, plan.records) {
            (Workload::Produce, Some(target)) => tally.records >= target,
            (_, Some(target)) => tally.records >= target,
            (_, None) => true,
        };
    Ok(Outcome {
        tally,
        produce_tally: (plan.workload == Workload::E2e).then_some(produce_tally),
        duration,
        complete,
        failure,
        resent_batches: shared.resent.load(Ordering::Relaxed),
        consumer_failovers: shared.consumer_failovers.load(Ordering::Relaxed),
    })
}

/// `total` split over `parts`, the remainder to the first ones.
fn split(total: u64, parts: usize) -> Vec<u64> {
    let parts = parts as u64;
    (0..parts)
        .map(|index| total / parts + u64::from(index < total % parts))
        .collect()
}

/// For a consume run: produces (unmeasured) what the topic lacks of `--records` (or, with
/// only a duration, of 1 GB of records).
fn fill(plan: &Plan, layout: &Arc<Layout>, admin: &mut Admin) -> anyhow::Result<()> {
    let start = admin.offsets(plan, layout, Position::Earliest)?;
    let end = admin.offsets(plan, layout, Position::Latest)?;
    let held: i64 = end.iter().zip(&start).map(|(end, start)| end - start).sum();
    let average = (plan.message_size.0 + plan.message_size.1) as u64 / 2;
    let wanted = plan.records.unwrap_or(1_000_000_000 / average.max(1));
    let missing = wanted.saturating_sub(held.max(0) as u64);
    if missing == 0 {
        return Ok(());
    }
    eprintln!(
        "filling topic {} with {missing} records first (not measured)",
        plan.topic
    );
    let mut filler = plan.clone();
    filler.rate_records_per_s = None;
    filler.producers = 1;
    let shared = Arc::new(Shared::new());
    let recorder = Arc::new(Recorder::default());
    produce(0, &filler, layout, &shared, Some(missing), &recorder)?;
    let mut tally = Tally::default();
    tally.collect(&recorder, 1.0);
    if let Some(error) = tally.first_error {
        bail!("filling the topic failed: {error}");
    }
    Ok(())
}
