//! Storage-engine throughput against the disk's own O_DIRECT bandwidth, measured in the
//! same run with fio. Not a test: it measures and prints, it asserts nothing.
//!
//! ```text
//! cargo bench --bench storage                     # full run, markdown table on stdout
//! cargo bench --bench storage -- --quick          # shorter runs (smoke check)
//! SPATE_BENCH_DIR=/path/on/disk cargo bench ...   # where the data goes (default target/bench-data)
//! SPATE_BENCH_CPU=1 ...                           # core the executor is pinned to
//! ```
//!
//! Every figure is the median of `--repeat` runs (default 3); each run is capped by bytes
//! and by time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use glommio::{LocalExecutorBuilder, Placement};
use spate::record::BatchBuilder;
use spate::storage::{Log, LogConfig};

const RECORD_BYTES: usize = 1024;
const MIB: f64 = 1024.0 * 1024.0;

struct Options {
    dir: PathBuf,
    cpu: usize,
    repeat: usize,
    run_bytes: u64,
    run_time: Duration,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|arg| arg == "--quick");
    let repeat = args
        .iter()
        .position(|arg| arg == "--repeat")
        .and_then(|index| args.get(index + 1))
        .and_then(|value| value.parse().ok())
        .unwrap_or(if quick { 1 } else { 3 });
    let dir = std::env::var_os("SPATE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data"));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = std::env::var("SPATE_BENCH_CPU")
        .ok()
        .and_then(|cpu| cpu.parse().ok())
        .unwrap_or(cpus - 1);
    let options = Options {
        dir,
        cpu,
        repeat,
        run_bytes: if quick { 64 << 20 } else { 512 << 20 },
        run_time: Duration::from_secs(if quick { 1 } else { 4 }),
    };
    let _ = std::fs::remove_dir_all(&options.dir);
    std::fs::create_dir_all(&options.dir).expect("create the bench directory");

    if profile_only(&options) {
        return;
    }
    println!("# Storage benchmark");
    println!();
    println!("- kernel: {}", command_output("uname", &["-r"]));
    println!("- CPUs: {cpus}; executor pinned to CPU {}", options.cpu);
    println!(
        "- data directory: {} ({})",
        options.dir.display(),
        filesystem(&options.dir)
    );
    println!(
        "- records: {RECORD_BYTES} B values; median of {} runs",
        options.repeat
    );
    println!();

    let batch_sizes = [
        ("16 KiB", 16 << 10),
        ("64 KiB", 64 << 10),
        ("1 MiB", 1 << 20),
    ];
    println!("## Appends");
    println!();
    println!(
        "| batch | fio write MB/s | glommio write_at MB/s | flush.ms=100 MB/s | vs fio | vs glommio | flush.ms=0 MB/s | vs fio |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, batch_bytes) in batch_sizes {
        let fio = fio(&options, "write", batch_bytes);
        let floor = median(&options, || raw_write_run(&options, batch_bytes));
        let interval = median(&options, || append_run(&options, batch_bytes, 1, 100));
        let sync = median(&options, || append_run(&options, batch_bytes, 1, 0));
        println!(
            "| {name} | {fio:.0} | {floor:.0} | {interval:.0} | {:.2} | {:.2} | {sync:.0} | {:.2} |",
            interval / fio,
            interval / floor,
            sync / fio
        );
    }
    println!();
    println!("## Group commit (flush.ms=0, fdatasync before every acknowledgement)");
    println!();
    println!("| appenders x batch | fio write MB/s | Spate MB/s | ratio |");
    println!("|---|---|---|---|");
    let fio16 = fio(&options, "write", 16 << 10);
    for appenders in [1usize, 8, 64] {
        let rate = median(&options, || append_run(&options, 16 << 10, appenders, 0));
        println!(
            "| {appenders} x 16 KiB | {fio16:.0} | {rate:.0} | {:.2} |",
            rate / fio16
        );
    }
    println!();
    println!("## Reads (1 MiB per read, whole batches)");
    println!();
    println!("| source | fio read MB/s (1 MiB) | Spate MB/s | ratio |");
    println!("|---|---|---|---|");
    let fio_read = fio(&options, "read", 1 << 20);
    let disk = median(&options, || read_run(&options, false));
    let cache = median(&options, || read_run(&options, true));
    println!(
        "| disk | {fio_read:.0} | {disk:.0} | {:.2} |",
        disk / fio_read
    );
    println!("| tail cache | n/a | {cache:.0} | n/a |");
    let _ = std::fs::remove_dir_all(&options.dir);
}

/// `SPATE_BENCH_PROFILE=<batch bytes>:<appenders>:<flush.ms>` runs that one append
/// scenario for a profiler (`perf record -g cargo bench ...`) and exits;
/// `SPATE_BENCH_PROFILE=raw:<block bytes>` runs glommio's bare write loop instead.
fn profile_only(options: &Options) -> bool {
    let Ok(spec) = std::env::var("SPATE_BENCH_PROFILE") else {
        return false;
    };
    if let Some(size) = spec.strip_prefix("raw:") {
        let rate = raw_write_run(options, size.parse().expect("a number"));
        println!("{spec}: {rate:.0} MB/s");
        return true;
    }
    let parts: Vec<u64> = spec
        .split(':')
        .map(|part| part.parse().expect("a number"))
        .collect();
    let rate = append_run(options, parts[0] as usize, parts[1] as usize, parts[2]);
    println!("{spec}: {rate:.0} MB/s");
    true
}

fn median(options: &Options, mut run: impl FnMut() -> f64) -> f64 {
    let mut values: Vec<f64> = (0..options.repeat).map(|_| run()).collect();
    values.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    values[values.len() / 2]
}

/// A batch of 1 KiB records no larger than `batch_bytes`.
fn template_batch(batch_bytes: usize) -> Bytes {
    let mut builder = BatchBuilder::new();
    let value = vec![b'v'; RECORD_BYTES];
    loop {
        let next = builder.record_bytes(0, None, Some(&value), &[]);
        if !builder.is_empty() && builder.encoded_bytes() + next > batch_bytes {
            break;
        }
        builder.push(1_700_000_000_000, None, Some(&value), &[]);
    }
    builder.build(0)
}

fn on_pinned_executor<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(
    options: &Options,
    make: impl FnOnce() -> F + Send + 'static,
) -> T {
    LocalExecutorBuilder::new(Placement::Fixed(options.cpu))
        .spawn(make)
        .expect("start executor")
        .join()
        .expect("executor thread")
}

/// MB/s of `appenders` tasks appending `batch_bytes` batches until the byte or time cap.
/// The clock stops after a final flush, so unsynced data does not count.
fn append_run(options: &Options, batch_bytes: usize, appenders: usize, flush_ms: u64) -> f64 {
    let dir = options
        .dir
        .join(format!("append-{batch_bytes}-{appenders}-{flush_ms}"));
    let _ = std::fs::remove_dir_all(&dir);
    let (run_bytes, run_time) = (options.run_bytes, options.run_time);
    let rate = on_pinned_executor(options, move || async move {
        let config = LogConfig {
            flush_ms,
            tail_cache_bytes: 0,
            ..LogConfig::default()
        };
        let log = Log::open(&dir, config).await.expect("open");
        let template = template_batch(batch_bytes);
        // Batches are built before the clock starts: a producer hands the log a batch it
        // already has in memory, so only the log's own work is timed.
        let per_appender = (run_bytes / appenders as u64 / template.len() as u64).max(1) as usize;
        let batches: Vec<Vec<BytesMut>> = (0..appenders)
            .map(|_| {
                (0..per_appender)
                    .map(|_| BytesMut::from(&template[..]))
                    .collect()
            })
            .collect();
        let started = Instant::now();
        let tasks: Vec<_> = batches
            .into_iter()
            .map(|batches| {
                let log = log.clone();
                glommio::spawn_local(async move {
                    let mut written = 0u64;
                    for batch in batches {
                        if started.elapsed() >= run_time {
                            break;
                        }
                        written += batch.len() as u64;
                        log.append(batch).await.expect("append");
                    }
                    written
                })
            })
            .collect();
        let mut total = 0u64;
        for task in tasks {
            total += task.await;
        }
        log.flush().await.expect("flush");
        let seconds = started.elapsed().as_secs_f64();
        log.close().await.expect("close");
        total as f64 / MIB / seconds
    });
    let _ = std::fs::remove_dir_all(
        options
            .dir
            .join(format!("append-{batch_bytes}-{appenders}-{flush_ms}")),
    );
    rate
}

/// MB/s of glommio alone: sequential `DmaFile::write_at` of `block_bytes` to a fresh file,
/// one at a time, then one fdatasync. The floor under Spate's appends on this runtime.
fn raw_write_run(options: &Options, block_bytes: usize) -> f64 {
    let path = options.dir.join("raw.dat");
    let _ = std::fs::remove_file(&path);
    let (run_bytes, run_time) = (options.run_bytes, options.run_time);
    on_pinned_executor(options, move || async move {
        // A non-empty file first, for glommio's IOPOLL probe (docs/GLOMMIO.md §1).
        std::fs::write(&path, vec![1u8; 4096]).expect("probe file");
        let file = glommio::io::OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(&path)
            .await
            .expect("open");
        let started = Instant::now();
        let mut position = 0u64;
        while position < run_bytes && started.elapsed() < run_time {
            let mut buffer = file.alloc_dma_buffer(block_bytes);
            buffer.as_bytes_mut().fill(b'v');
            file.write_at(buffer, position).await.expect("write");
            position += block_bytes as u64;
        }
        file.fdatasync().await.expect("fdatasync");
        let seconds = started.elapsed().as_secs_f64();
        file.close().await.expect("close");
        let _ = std::fs::remove_file(&path);
        position as f64 / MIB / seconds
    })
}

/// MB/s of sequential 1 MiB reads of a log of 64 KiB batches: from disk (log reopened, so
/// the tail cache is empty) or from a tail cache large enough to hold it all.
fn read_run(options: &Options, from_cache: bool) -> f64 {
    let dir = options.dir.join(format!("read-{from_cache}"));
    let _ = std::fs::remove_dir_all(&dir);
    let data_bytes = options.run_bytes.min(256 << 20);
    let rate = on_pinned_executor(options, move || async move {
        let cache = if from_cache {
            data_bytes + (64 << 20)
        } else {
            0
        };
        let config = LogConfig {
            flush_ms: 1000,
            tail_cache_bytes: cache,
            ..LogConfig::default()
        };
        let mut log = Log::open(&dir, config.clone()).await.expect("open");
        let template = template_batch(64 << 10);
        let mut written = 0u64;
        while written < data_bytes {
            log.append(BytesMut::from(&template[..]))
                .await
                .expect("append");
            written += template.len() as u64;
        }
        if !from_cache {
            log.close().await.expect("close");
            log = Log::open(&dir, config).await.expect("reopen");
        }
        let started = Instant::now();
        let mut offset = 0;
        let mut read_bytes = 0u64;
        while offset < log.log_end_offset() {
            let outcome = log.read(offset, 1 << 20).await.expect("read");
            read_bytes += outcome.bytes_len() as u64;
            offset = last_offset(&outcome.chunks) + 1;
        }
        let seconds = started.elapsed().as_secs_f64();
        log.close().await.expect("close");
        read_bytes as f64 / MIB / seconds
    });
    let _ = std::fs::remove_dir_all(options.dir.join(format!("read-{from_cache}")));
    rate
}

/// Last offset in a read, from the last batch header (the chunks hold whole batches).
fn last_offset(chunks: &[spate::storage::Chunk]) -> i64 {
    let mut last = -1;
    for chunk in chunks {
        let mut position = 0;
        while position < chunk.len() {
            let header = spate::record::BatchHeader::parse(&chunk[position..]).expect("batch");
            last = header.last_offset();
            position += header.total_bytes();
        }
    }
    last
}

/// fio's O_DIRECT sequential bandwidth (MB/s) at `block_bytes`, queue depth 1, io_uring,
/// on the bench directory's filesystem. A write run starts from a fresh file with no
/// preallocation and ends with an fsync: the same work as appending to a new segment
/// (overwriting an existing file is faster, and not what a log does). A read run reads
/// the file the last write run left.
fn fio(options: &Options, mode: &str, block_bytes: usize) -> f64 {
    let file = options.dir.join("fio.dat");
    let runtime = options.run_time.as_secs().max(1).to_string();
    let size = format!("{}", options.run_bytes);
    let args = [
        "--name=reference".to_string(),
        format!("--filename={}", file.display()),
        format!("--rw={mode}"),
        format!("--bs={block_bytes}"),
        format!("--size={size}"),
        format!("--runtime={runtime}"),
        "--direct=1".to_string(),
        "--ioengine=io_uring".to_string(),
        "--iodepth=1".to_string(),
        "--end_fsync=1".to_string(),
        "--fallocate=none".to_string(),
        format!("--cpus_allowed={}", options.cpu),
        "--output-format=json".to_string(),
    ];
    let values: Vec<f64> = (0..options.repeat)
        .map(|_| {
            if mode == "write" {
                let _ = std::fs::remove_file(&file);
            }
            let output = Command::new("fio")
                .args(&args)
                .output()
                .expect("fio is installed (apt-get install fio)");
            assert!(
                output.status.success(),
                "fio failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let json = String::from_utf8_lossy(&output.stdout);
            fio_bandwidth(&json, mode)
        })
        .collect();
    let mut sorted = values;
    sorted.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    sorted[sorted.len() / 2]
}

/// Pulls `jobs[0].<mode>.bw_bytes` out of fio's JSON without a JSON dependency.
fn fio_bandwidth(json: &str, mode: &str) -> f64 {
    let section = json
        .find(&format!("\"{mode}\" : {{"))
        .expect("fio JSON has the section");
    let rest = &json[section..];
    let key = rest.find("\"bw_bytes\" : ").expect("bw_bytes") + "\"bw_bytes\" : ".len();
    let number: String = rest[key..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    number.parse::<f64>().expect("a number") / MIB
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

fn filesystem(dir: &Path) -> String {
    command_output("stat", &["-f", "-c", "%T", &dir.display().to_string()])
}
