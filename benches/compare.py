#!/usr/bin/env python3
"""Compares two builds of Spate on the suite's target workloads, alternating them.

A machine this noisy moves whole runs by 15-30%, and a different host of the same kind
by much more, so "did this change regress produce or fetch?" is answered by running
the old and the new build in turns, in the same hour, and comparing medians:

    git worktree add ../spate-before <commit> && (cd ../spate-before && cargo build --release)
    cargo build --release
    python3 benches/compare.py --before ../spate-before --after . --rounds 3

Each run is `spate-loadgen <workload> --spawn-broker` from that build (a fresh broker and
data directory, broker on --broker-cpu, load generator on --loadgen-cpu), with the
suite's arguments. Python standard library only; it asserts nothing.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

TAIL_CACHE = 4 << 30


def workloads(duration, records):
    common = ["--message-size", "1024", "--batch-bytes", "65536"]
    produce = ["produce", "--acks", "all", "--max-in-flight", "64", "--duration", duration]
    consume = ["consume", "--records", str(records)]
    e2e = ["e2e", "--acks", "all", "--linger-ms", "0", "--rate", "50MB", "--duration", duration]
    return [
        ("produce flush.ms=100, MB/s", produce + ["--topic-config", "flush.ms=100"] + common,
         "throughput"),
        ("produce flush.ms=0, MB/s", produce + ["--topic-config", "flush.ms=0"] + common,
         "throughput"),
        ("consume from disk, MB/s", consume + ["--topic-config", "tail.cache.bytes=0"] + common,
         "throughput"),
        ("consume from the tail cache, MB/s",
         consume + ["--topic-config", f"tail.cache.bytes={TAIL_CACHE}"] + common, "throughput"),
        ("e2e 50 MB/s flush.ms=100, p99 us", e2e + ["--topic-config", "flush.ms=100"] + common,
         "p99"),
    ]


def limits_tail_cache(build):
    """Whether this build's broker caps tail.cache.bytes (and so needs it raised)."""
    help_text = subprocess.run([str(build / "target/release/spate"), "serve", "--help"],
                               capture_output=True, text=True).stdout
    return "--tail-cache-bytes-max" in help_text


def run(build, args, measure, cpus):
    extra = []
    if f"tail.cache.bytes={TAIL_CACHE}" in args and limits_tail_cache(build):
        extra = ["--broker-setting", f"tail-cache-bytes-max={TAIL_CACHE}"]
    with tempfile.TemporaryDirectory() as work:
        report = Path(work) / "run.json"
        command = [str(build / "target/release/spate-loadgen"), *args, "--spawn-broker",
                   "--broker-cpus", str(cpus[0]), "--cpus", str(cpus[1]), *extra,
                   "--json", str(report)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"benches/compare.py: {' '.join(command)} failed:\n{result.stderr[-2000:]}")
        figures = json.loads(report.read_text())
    return figures["latency_us"]["p99"] if measure == "p99" else figures["throughput_mb_s"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the old build's checkout")
    parser.add_argument("--after", type=Path, required=True, help="the new build's checkout")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", default="8s")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--broker-cpu", type=int, default=0)
    parser.add_argument("--loadgen-cpu", type=int, default=1)
    args = parser.parse_args()
    builds = {"before": args.before.resolve(), "after": args.after.resolve()}
    for name, build in builds.items():
        if not (build / "target/release/spate-loadgen").exists():
            sys.exit(f"benches/compare.py: no release build in {build} (--{name})")
    cpus = (args.broker_cpu, args.loadgen_cpu)
    figures = {}
    for round_number in range(args.rounds):
        for name, workload, measure in workloads(args.duration, args.records):
            for build_name, build in builds.items():
                value = run(build, workload, measure, cpus)
                figures.setdefault((name, build_name), []).append(value)
                print(f"round {round_number + 1}: {name}: {build_name} {value:.0f}", flush=True)
    print()
    print("| workload | before: median (runs) | after: median (runs) |")
    print("|---|---|---|")
    for name, _, _ in workloads(args.duration, args.records):
        cells = []
        for build_name in builds:
            values = figures[(name, build_name)]
            runs = ", ".join(f"{value:.0f}" for value in values)
            cells.append(f"{statistics.median(values):.0f} ({runs})")
        print(f"| {name} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
