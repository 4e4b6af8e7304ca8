#!/usr/bin/env python3
"""Spate's benchmark suite: the standard workloads against a spawned broker, with the
physical references measured in the same run, written to docs/BENCHMARKS.md.

    python3 benches/suite.py            # about 15 minutes on a 2-core host
    python3 benches/suite.py --quick    # one short run of each, to try the script

It also runs the three-node figures of benches/cluster.py (three nodes on 127.0.0.1-3
against one alone, e2e, failover times) unless --no-cluster is given.

Placement: the broker on --broker-cpu (default 0), the load generator on --loadgen-cpu
(default 1); iperf3 runs with the same placement (`iperf3 -A LOADGEN,BROKER`: client on
the load generator's core, server on the broker's) and fio on the broker's core, in the
same filesystem as the broker's data. Every figure is the median of --runs runs.

Needs fio and iperf3 (Debian packages; installed with apt-get when missing) and cargo.
Only the standard library is used, so nothing else needs installing.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- benches/suite.py: begin (generated; edit the script, not this section) -->"
END = "<!-- benches/suite.py: end -->"


def main():
    args = parse_args()
    ensure_tools(["fio", "iperf3"])
    build()
    work = ROOT / "target" / "bench-suite"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # A produce run writes up to about 2 GB/s for its whole duration.
    need = 2 * 10**9 * (3 if args.quick else seconds(args.duration))
    free = shutil.disk_usage(work).free
    if free < need * 1.2:
        sys.exit(f"benches/suite.py: {free / 1e9:.0f} GB free under {work}; a run may write "
                 f"{need / 1e9:.0f} GB: free some space or pass a shorter --duration")
    # The spawned broker's data directory lives under TMPDIR: keep it on the same
    # filesystem as fio's file.
    env = dict(os.environ, TMPDIR=str(work))
    runs = 1 if args.quick else args.runs
    duration = "3s" if args.quick else args.duration

    machine = describe_machine()
    log(f"machine: {machine['cpus']} CPUs ({machine['cpu_model']}), kernel {machine['kernel']}")
    references = {
        "iperf3_mb_s": median_of(runs, lambda: iperf3(args, 3 if args.quick else 5)),
        # The other direction, as a consume moves data: the broker's core sends.
        "iperf3_reverse_mb_s": median_of(
            runs, lambda: iperf3(args, 3 if args.quick else 5, reverse=True)),
        "fio_write_mb_s": median_of(runs, lambda: fio(args, work, "write")),
        "fio_read_mb_s": median_of(runs, lambda: fio(args, work, "read")),
    }
    log(f"references: {references}")

    # Runs go round the workloads (all of them once, then again), so that the machine's
    # drift over the suite weighs on every workload alike, and a Kafka row and its native
    # twin run minutes apart at most.
    listed = workloads(args, duration)
    figures = [[] for _ in listed]
    for run in range(runs):
        for index, workload in enumerate(listed):
            log(f"{workload['name']}: run {run + 1} of {runs}")
            figures[index].append(loadgen(args, env, work, workload))
    results = [{**workload, "runs": runs_of, "median": medians(runs_of)}
               for workload, runs_of in zip(listed, figures)]

    cluster = None
    if not args.no_cluster:
        # Issue 14's three-node figures, in the same run (benches/cluster.py).
        import cluster as cluster_bench
        log("three nodes (benches/cluster.py)")
        cluster = cluster_bench.measure(args, ROOT / "target" / "bench-cluster")

    report = {
        "cluster": cluster,
        "date": datetime.date.today().isoformat(),
        "commit": git_commit(),
        "machine": machine,
        "placement": {"broker_cpu": args.broker_cpu, "loadgen_cpu": args.loadgen_cpu},
        "runs": runs,
        "duration": duration,
        "references": references,
        "results": results,
    }
    (work / "results.json").write_text(json.dumps(report, indent=2))
    section = render(report)
    print(section)
    if args.quick or args.no_write:
        log("not writing docs/BENCHMARKS.md (--quick or --no-write)")
    else:
        write_section(ROOT / "docs" / "BENCHMARKS.md", section)
        log("wrote docs/BENCHMARKS.md")
    log(f"raw figures: {work / 'results.json'}")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--duration", default="10s", help="length of each timed run")
    parser.add_argument("--broker-cpu", type=int, default=0)
    parser.add_argument("--loadgen-cpu", type=int, default=1)
    parser.add_argument("--consume-records", type=int, default=2_000_000,
                        help="1 KiB records read by each consume run")
    parser.add_argument("--quick", action="store_true",
                        help="one short run of each workload; docs are not written")
    parser.add_argument("--no-cluster", action="store_true",
                        help="skip the three-node figures (benches/cluster.py)")
    parser.add_argument("--trials", type=int, default=10,
                        help="failover trials of the three-node figures")
    parser.add_argument("--no-write", action="store_true",
                        help="print the section instead of writing docs/BENCHMARKS.md")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.broker_cpu == args.loadgen_cpu:
        parser.error("--broker-cpu and --loadgen-cpu must differ")
    if max(args.broker_cpu, args.loadgen_cpu) >= os.cpu_count():
        parser.error(f"this machine has CPUs 0 to {os.cpu_count() - 1}")
    return args


def workloads(args, duration):
    """The issue's target workloads, then the OpenMessaging-style workload files."""
    # 64 requests in flight: the broker's per-connection limit, and enough to cover the
    # group write (and, with flush.ms=0, the fdatasync) behind each acknowledgement.
    produce = ["produce", "--message-size", "1024", "--batch-bytes", "65536",
               "--acks", "all", "--max-in-flight", "64", "--duration", duration]
    consume = ["consume", "--message-size", "1024", "--batch-bytes", "65536",
               "--records", str(args.consume_records)]
    e2e = ["e2e", "--message-size", "1024", "--batch-bytes", "65536", "--linger-ms", "0",
           "--acks", "all", "--rate", "50MB", "--duration", duration]
    listed = [
        target("produce, 1 KiB records, 64 KiB batches, acks=all, 64 in flight, flush.ms=100",
               produce + ["--topic-config", "flush.ms=100"], "throughput", 0.6),
        target("produce, as above, flush.ms=0 (fdatasync before each ack)",
               produce + ["--topic-config", "flush.ms=0"], "throughput", 0.4),
        target("consume from disk (tail.cache.bytes=0)",
               consume + ["--topic-config", "tail.cache.bytes=0"], "throughput", 0.8),
        target("consume from the tail cache (holds the whole topic)",
               consume + ["--topic-config", f"tail.cache.bytes={4 << 30}",
                          "--broker-setting", f"tail-cache-bytes-max={4 << 30}"],
               "throughput", 0.8),
        target("e2e at 50 MB/s, 1 KiB records, flush.ms=100",
               e2e + ["--topic-config", "flush.ms=100"], "p99", 1000),
        target("e2e at 50 MB/s, 1 KiB records, flush.ms=0",
               e2e + ["--topic-config", "flush.ms=0"], "p99", 10000),
    ]
    # The same workloads through the Kafka door (issue 12: >= 0.9x of the native path).
    listed += [kafka_twin(listed[index]) for index in (0, 1, 2, 3, 4)]
    # Many partitions on one shard (issue 13): fsync'd produce against one partition, in
    # the same run and with the same memory budget.
    many = produce + ["--topic-config", "flush.ms=0", "--broker-setting", "memory-max=1GiB"]
    for partitions, bound in ((1, None), (100, 0.8), (1000, 0.6)):
        listed.append({"name": f"fsync'd produce, {partitions} partitions, --memory-max 1GiB",
                       "args": many + ["--partitions", str(partitions)],
                       "goal": "partitions", "target": bound, "partitions": partitions})
    for path in sorted((ROOT / "loadgen" / "workloads").glob("*.toml")):
        relative = path.relative_to(ROOT)
        listed.append({
            "name": f"workload {path.stem}",
            "args": ["--workload", str(relative), "--duration", duration],
            "goal": None,
            "target": None,
        })
    return listed


def seconds(duration):
    """`10s`, `2m` or `500ms` in seconds."""
    for unit, scale in (("ms", 0.001), ("s", 1), ("m", 60)):
        if duration.endswith(unit) and duration[: -len(unit)].isdigit():
            return int(duration[: -len(unit)]) * scale
    sys.exit(f"benches/suite.py: --duration {duration!r}: use 10s, 2m or 500ms")


def target(name, args, goal, bound):
    return {"name": name, "args": args, "goal": goal, "target": bound}


def kafka_twin(native):
    """`native`'s workload over the Kafka protocol, compared with it in its own table."""
    return {"name": native["name"], "args": native["args"] + ["--protocol", "kafka"],
            "goal": "kafka", "target": KAFKA_TARGET, "twin_of": native["name"]}


# The Kafka path's throughput against the native path's, same workload and placement.
KAFKA_TARGET = 0.9


def loadgen(args, env, work, workload):
    out = work / "run.json"
    out.unlink(missing_ok=True)
    command = [str(ROOT / "target" / "release" / "spate-loadgen"), *workload["args"],
               "--spawn-broker", "--broker-cpus", str(args.broker_cpu),
               "--cpus", str(args.loadgen_cpu), "--topic", "suite", "--json", str(out)]
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if finished.returncode != 0 or not out.exists():
        sys.exit(f"benches/suite.py: {' '.join(command)} failed "
                 f"(exit {finished.returncode}):\n{finished.stderr[-2000:]}")
    summary = json.loads(out.read_text())
    return {
        "throughput_mb_s": summary["throughput_mb_s"],
        "records_per_s": summary["records_per_s"],
        "p50_us": summary["latency_us"]["p50"],
        "p99_us": summary["latency_us"]["p99"],
        "p999_us": summary["latency_us"]["p999"],
        "max_us": summary["latency_us"]["max"],
        "errors": summary["errors"],
        "broker_peak_mib": (summary.get("broker_peak_resident_bytes") or 0) / 2**20,
    }


def medians(figures):
    return {key: statistics.median(run[key] for run in figures) for key in figures[0]}


def median_of(runs, measure):
    return statistics.median(measure() for _ in range(runs))


def iperf3(args, seconds, reverse=False):
    """Loopback TCP throughput in MB/s, client on the load generator's core and server
    on the broker's; the client sends, or with `reverse` the server does."""
    server = subprocess.Popen(["iperf3", "--server", "--one-off", "--port", "5299"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for attempt in range(50):
            client = subprocess.run(
                ["iperf3", "--client", "127.0.0.1", "--port", "5299", "--json",
                 "--time", str(seconds),
                 "--affinity", f"{args.loadgen_cpu},{args.broker_cpu}",
                 *(["--reverse"] if reverse else [])],
                capture_output=True, text=True)
            if client.returncode == 0:
                received = json.loads(client.stdout).get("end", {}).get("sum_received")
                if received:
                    return received["bits_per_second"] / 8e6
            # The server is not listening yet, or the run did not complete (iperf3 can
            # exit 0 with a JSON error when it meets the server mid-start).
            time.sleep(0.1)
        sys.exit(f"benches/suite.py: iperf3 failed: {client.stdout[-1000:]}{client.stderr}")
    finally:
        server.wait(timeout=30)


def fio(args, work, mode):
    """O_DIRECT sequential write (64 KiB blocks, fresh file, ends with an fsync) or read
    (1 MiB blocks, of that file), queue depth 1, on the broker's core, in MB/s."""
    path = work / "fio.dat"
    if mode == "write":
        path.unlink(missing_ok=True)
        shape = ["--rw=write", "--bs=65536", "--end_fsync=1", "--fallocate=none"]
    else:
        if not path.exists():
            fio(args, work, "write")
        shape = ["--rw=read", "--bs=1048576"]
    finished = subprocess.run(
        ["fio", "--name=reference", f"--filename={path}", *shape, "--size=1073741824",
         "--runtime=4", "--direct=1", "--ioengine=io_uring", "--iodepth=1",
         f"--cpus_allowed={args.broker_cpu}", "--output-format=json"],
        capture_output=True, text=True)
    if finished.returncode != 0:
        sys.exit(f"benches/suite.py: fio failed: {finished.stderr}")
    job = json.loads(finished.stdout)["jobs"][0]
    side = job["write"] if mode == "write" else job["read"]
    return side["bw_bytes"] / 1e6


def ensure_tools(tools):
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if not missing:
        return
    log(f"installing {' '.join(missing)} (Debian packages)")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        if subprocess.run(sudo + step, env=env).returncode != 0:
            sys.exit(f"benches/suite.py: cannot install {' '.join(missing)}; install them and run again")


def build():
    log("building the broker and the load generator (release)")
    built = subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "spate",
                            "-p", "spate-loadgen"], cwd=ROOT)
    if built.returncode != 0:
        sys.exit("benches/suite.py: cargo build failed")


def describe_machine():
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release()}


def git_commit():
    found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                           capture_output=True, text=True)
    return found.stdout.strip() or "unknown"


def render(report):
    refs = report["references"]
    iperf = refs["iperf3_mb_s"]
    machine = report["machine"]
    place = report["placement"]
    lines = [
        BEGIN,
        "",
        f"Run {report['date']} at commit `{report['commit']}` with `python3 benches/suite.py`: "
        f"{machine['cpus']} CPUs ({machine['cpu_model']}), kernel {machine['kernel']}; "
        f"broker on CPU {place['broker_cpu']}, load generator on CPU {place['loadgen_cpu']}; "
        f"medians of {report['runs']} runs of {report['duration']} "
        f"(consume runs read a fixed count of records).",
        "",
        "| reference (same run) | MB/s |",
        "|---|---|",
        f"| iperf3 loopback TCP, `-A {place['loadgen_cpu']},{place['broker_cpu']}` | {iperf:.0f} |",
        f"| the same with `-R` (the broker's core sends, as in a consume) | "
        f"{refs['iperf3_reverse_mb_s']:.0f} |",
        f"| fio O_DIRECT sequential write, 64 KiB, QD1, fsync at end | {refs['fio_write_mb_s']:.0f} |",
        f"| fio O_DIRECT sequential read, 1 MiB, QD1 | {refs['fio_read_mb_s']:.0f} |",
        "",
        "### Targets",
        "",
        "Ratios are to the iperf3 row, as the targets are set; for a consume, the `-R`",
        "row (same direction of data) is the closer reference.",
        "",
        "| workload | MB/s | vs iperf3 | vs iperf3 -R | p50 us | p99 us | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in report["results"]:
        if result["goal"] in (None, "kafka", "partitions"):
            continue
        median = result["median"]
        ratio = median["throughput_mb_s"] / iperf
        if result["goal"] == "throughput":
            goal = f">= {result['target']}x iperf3"
            met = ratio >= result["target"]
        else:
            goal = f"p99 <= {result['target']} us"
            met = median["p99_us"] <= result["target"]
        # A fixed-rate run's throughput is its rate, and a consume run has no latency.
        shown_ratio = f"{ratio:.2f}x" if result["goal"] == "throughput" else "n/a"
        reverse = refs["iperf3_reverse_mb_s"]
        reverse_ratio = (f"{median['throughput_mb_s'] / reverse:.2f}x"
                         if result["args"][0] == "consume" else "n/a")
        lines.append(
            f"| {result['name']} | {median['throughput_mb_s']:.0f} | {shown_ratio} | "
            f"{reverse_ratio} | "
            f"{latency(result, 'p50_us')} | {latency(result, 'p99_us')} | {goal} | "
            f"{'yes' if met else '**no**'} |")
    lines += [
        "",
        "### Kafka's wire protocol against the native one",
        "",
        "The same workloads with `spate-loadgen --protocol kafka` (its own Kafka client on",
        "Spate's codec: Produce v7, Fetch v10, one produce per batch, pipelined per owner",
        "shard), against the native rows above, runs interleaved. Target: the Kafka path",
        f"at >= {KAFKA_TARGET}x the native path's throughput (e2e runs at a fixed rate:",
        "their latency is compared instead).",
        "",
        "| workload | native MB/s | Kafka MB/s | Kafka / native | native p99 us | Kafka p99 us | met |",
        "|---|---|---|---|---|---|---|",
    ]
    by_name = {result["name"]: result for result in report["results"]
               if result["goal"] not in (None, "kafka", "partitions")}
    for result in report["results"]:
        if result["goal"] != "kafka":
            continue
        native = by_name[result["twin_of"]]["median"]
        kafka = result["median"]
        ratio = kafka["throughput_mb_s"] / native["throughput_mb_s"]
        fixed_rate = result["args"][0] == "e2e"
        met = "n/a" if fixed_rate else ("yes" if ratio >= result["target"] else "**no**")
        lines.append(
            f"| {result['name']} | {native['throughput_mb_s']:.0f} | "
            f"{kafka['throughput_mb_s']:.0f} | {'n/a' if fixed_rate else f'{ratio:.2f}x'} | "
            f"{latency(by_name[result['twin_of']], 'p99_us')} | {latency(result, 'p99_us')} | "
            f"{met} |")
    many = [result for result in report["results"] if result["goal"] == "partitions"]
    if many:
        one = many[0]["median"]["throughput_mb_s"]
        lines += [
            "",
            "### Many partitions on one shard",
            "",
            "Produce with `flush.ms=0` (fdatasync before each acknowledgement), 1 KiB records,",
            "64 KiB batches, 64 in flight, the broker started with `--memory-max 1GiB`; ratios",
            "to the one-partition row of the same run. Targets: 100 partitions >= 0.8x,",
            "1000 partitions >= 0.6x; the broker's peak resident memory under 1.25 GiB.",
            "",
            "| partitions | MB/s | vs 1 partition | p99 us | broker peak MiB | target | met |",
            "|---|---|---|---|---|---|---|",
        ]
        for result in many:
            median = result["median"]
            ratio = median["throughput_mb_s"] / one
            peak = max(run["broker_peak_mib"] for run in result["runs"])
            if result["target"] is None:
                goal, met = "peak < 1280 MiB", peak < 1280
            else:
                goal = f">= {result['target']}x, peak < 1280 MiB"
                met = ratio >= result["target"] and peak < 1280
            lines.append(
                f"| {result['partitions']} | {median['throughput_mb_s']:.0f} | {ratio:.2f}x | "
                f"{median['p99_us']:.0f} | {peak:.0f} | {goal} | {'yes' if met else '**no**'} |")
    lines += [
        "",
        "### Standard workloads (loadgen/workloads/, OpenMessaging Benchmark style)",
        "",
        "Maximum rate unless the name gives one; the topic's default flush policy",
        "(`flush.ms=0`: fdatasync before each acknowledgement); produce latency is send to",
        "acknowledgement, e2e latency send to receipt.",
        "",
        "| workload | MB/s | vs iperf3 | records/s | p50 us | p99 us | p99.9 us |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in report["results"]:
        if result["goal"] is not None:
            continue
        median = result["median"]
        fixed_rate = "rate" in result["name"] or "mb-s" in result["name"]
        shown_ratio = "n/a" if fixed_rate else f"{median['throughput_mb_s'] / iperf:.2f}x"
        lines.append(
            f"| {result['name'].removeprefix('workload ')} | {median['throughput_mb_s']:.0f} | "
            f"{shown_ratio} | {median['records_per_s']:.0f} | "
            f"{median['p50_us']:.0f} | {median['p99_us']:.0f} | {median['p999_us']:.0f} |")
    cluster = report.get("cluster")
    if cluster:
        ratio = cluster["replicated_over_single"]
        lines += [
            "",
            "### Three nodes (benches/cluster.py)",
            "",
            "Three `spate serve` nodes on 127.0.0.1, .2 and .3, one shard each, every one on the",
            "broker's CPU (so on a host with few cores they share it, and the ratio is also what",
            "three copies cost in CPU); produce: 3 partitions, 1 KiB records, 64 KiB batches,",
            "acks=all, flush.ms=100, replication factor 3 with min.insync.replicas=2, against",
            "one node alone in the same run; failover: a leader killed -9 under",
            "`spate produce --acks all` to the next acknowledgement.",
            "",
            "| figure | value | target | met |",
            "|---|---|---|---|",
            f"| produce, one node alone | {cluster['single_mb_s']:.0f} MB/s | | |",
            f"| produce, three nodes, replication factor 3 | {cluster['replicated_mb_s']:.0f} MB/s "
            f"({ratio:.2f}x) | >= 0.5x one node | {'yes' if ratio >= 0.5 else '**no**'} |",
            f"| e2e at 50 MB/s on three nodes, p50 / p99 | {cluster['e2e_p50_us']:.0f} / "
            f"{cluster['e2e_p99_us']:.0f} us | | |",
            f"| failover, median of {len(cluster['failover_ms'])} (min-max) | "
            f"{cluster['failover_median_ms']:.0f} ms ({min(cluster['failover_ms']):.0f}-"
            f"{max(cluster['failover_ms']):.0f}) | < 2000 ms (aim 500) | "
            f"{'yes' if cluster['failover_median_ms'] < 2000 else '**no**'} |",
        ]
    errors = sum(run["errors"] for result in report["results"] for run in result["runs"])
    lines += ["", f"Errors reported by the load generator over all runs: {errors}.", "", END]
    return "\n".join(lines)


def latency(result, key):
    return "-" if result["args"][0] == "consume" else f"{result['median'][key]:.0f}"


def write_section(path, section):
    """Replaces the generated section of `path` (or appends one), keeping the prose."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        before = text[: text.index(BEGIN)]
        after = text[text.index(END) + len(END):]
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n## Broker (benches/suite.py)\n\n" + section + "\n"
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as temporary:
        temporary.write(text)
    os.replace(temporary.name, path)


def log(message):
    print(f"[suite] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
