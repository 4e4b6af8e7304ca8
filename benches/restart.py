#!/usr/bin/env python3
"""How long a broker with many partitions takes to start again.

    python3 benches/restart.py                      # 20 000 partitions, 2 shards
    python3 benches/restart.py --partitions 10000 --shards 1

Creates --partitions partitions (flush.ms=100; topics of at most 10 000 partitions), writes
--records records of 200 bytes over them with spate-loadgen, then: stops the broker cleanly
(SIGTERM) and starts it again, --runs times; kills it (SIGKILL) and starts it again, --runs
times (its partitions idle since their open); and writes one record to every partition,
kills it and starts it again, --runs times (every active segment to scan). Each start is
timed from the process's spawn to its "spate is serving" line; the clean stop too. Prints
the medians, and checks at the end that spate-loadgen reads every record back.

The broker runs on --broker-cpu (default 0), the load generator on --loadgen-cpu (1).
Only the standard library is used; the release binaries are built with cargo.
"""

import argparse
import atexit
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPATE = ROOT / "target" / "release" / "spate"
LOADGEN = ROOT / "target" / "release" / "spate-loadgen"
TOPIC_PARTITIONS_MAX = 10_000


def main():
    args = parse_args()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--workspace"], cwd=ROOT,
                       check=True)
    work = ROOT / "target" / "bench-restart"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data = work / "data"
    port = free_port()
    broker_args = ["serve", "--shards", str(args.shards), "--data-dir", str(data),
                   "--listen", f"127.0.0.1:{port}", "--kafka-listen", "none",
                   "--memory-max", args.memory_max]
    address = f"127.0.0.1:{port}"

    broker, _ = start(args, broker_args, work)
    # A topic has at most 10 000 partitions: more are spread over several topics.
    topics = []
    for index, first in enumerate(range(0, args.partitions, TOPIC_PARTITIONS_MAX)):
        partitions = min(TOPIC_PARTITIONS_MAX, args.partitions - first)
        topics.append((f"wide-{index}", partitions))
    records = args.records // len(topics)
    for topic, partitions in topics:
        run([str(SPATE), "topic", "create", topic, "--partitions", str(partitions),
             "--config", "flush.ms=100", "--broker", address])
        run(["taskset", "-c", str(args.loadgen_cpu), str(LOADGEN), "produce", "--broker",
             address, "--topic", topic, "--records", str(records), "--message-size", "200",
             "--batch-records", "100"])
    clean, killed, killed_idle, stops = [], [], [], []
    for _ in range(args.runs):
        stops.append(stop(broker, signal.SIGTERM))
        broker, seconds = start(args, broker_args, work)
        clean.append(seconds)
    for _ in range(args.runs):
        stop(broker, signal.SIGKILL)
        broker, seconds = start(args, broker_args, work)
        killed_idle.append(seconds)
    for _ in range(args.runs):
        # One more batch to every partition: each has changed since its open, so the
        # start after the crash scans every active segment.
        for topic, partitions in topics:
            run(["taskset", "-c", str(args.loadgen_cpu), str(LOADGEN), "produce", "--broker",
                 address, "--topic", topic, "--records", str(partitions), "--message-size",
                 "200", "--batch-records", "1"])
        stop(broker, signal.SIGKILL)
        broker, seconds = start(args, broker_args, work)
        killed.append(seconds)
    total = 0
    for topic, partitions in topics:
        written = records + args.runs * partitions
        total += written
        read = subprocess.run(
            ["taskset", "-c", str(args.loadgen_cpu), str(LOADGEN), "consume", "--broker",
             address, "--topic", topic, "--records", str(written)],
            capture_output=True, text=True)
        if read.returncode != 0:
            stop(broker, signal.SIGTERM)
            sys.exit(f"reading the records of {topic} back failed:\n{read.stderr}")
    stop(broker, signal.SIGTERM)
    print(f"{args.partitions} partitions on {args.shards} shard(s), {args.records} records:")
    print(f"  clean stop:          median {statistics.median(stops):.2f} s  runs {fmt(stops)}")
    print(f"  start after a stop:  median {statistics.median(clean):.2f} s  runs {fmt(clean)}")
    print(f"  start after kill -9, partitions idle since their open: "
          f"median {statistics.median(killed_idle):.2f} s  runs {fmt(killed_idle)}")
    print(f"  start after kill -9, every partition written since its open: "
          f"median {statistics.median(killed):.2f} s  runs {fmt(killed)}")
    print(f"  {total} records read back")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partitions", type=int, default=20000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory-max", default="4GiB")
    parser.add_argument("--broker-cpu", default="0",
                        help="CPUs for the broker (taskset list; several for several shards)")
    parser.add_argument("--loadgen-cpu", type=int, default=1)
    parser.add_argument("--no-build", action="store_true")
    return parser.parse_args()


def fmt(values):
    return ", ".join(f"{value:.2f}" for value in values)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(args, broker_args, work):
    """Spawns the broker and waits for its "spate is serving" line."""
    log = open(work / "broker.log", "ab")
    began = time.monotonic()
    broker = subprocess.Popen(["taskset", "-c", args.broker_cpu, str(SPATE), *broker_args],
                              stdout=log, stderr=subprocess.PIPE, preexec_fn=more_descriptors)
    # However the script ends (a failed step, Ctrl-C), no broker is left running.
    atexit.register(lambda: broker.poll() is None and broker.kill())
    for line in broker.stderr:
        log.write(line)
        if b"spate is serving" in line:
            seconds = time.monotonic() - began
            # Keep draining its output so that it never blocks on a full pipe.
            drain = subprocess.Popen(["cat"], stdin=broker.stderr, stdout=log)
            broker.drain = drain
            return broker, seconds
    sys.exit(f"the broker exited ({broker.wait()}) before serving; see {work / 'broker.log'}")


def more_descriptors():
    """A partition holds a descriptor: 20 000 need a limit above the usual 20 000. Raising
    the hard limit needs root (or CAP_SYS_RESOURCE); otherwise the limit stays."""
    want = 65536
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    except (ValueError, OSError):
        pass


def stop(broker, how):
    began = time.monotonic()
    broker.send_signal(how)
    broker.wait()
    broker.drain.wait()
    return time.monotonic() - began


def run(command):
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
