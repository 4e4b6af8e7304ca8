#!/usr/bin/env python3
"""Spate's cluster benchmark (issue 14): three nodes on 127.0.0.1, .2 and .3 against one
node alone, in the same run, with loopback TCP (iperf3) measured alongside.

    python3 benches/cluster.py            # about 5 minutes on a 2-core host
    python3 benches/cluster.py --quick    # one short run of each, to try the script

Figures (medians of --runs runs; failover over --trials trials):
- produce, 3 partitions, 1 KiB records, 64 KiB batches, acks=all, flush.ms=100: one node
  alone (replication factor 1), then three nodes with replication factor 3 and
  min.insync.replicas=2, as a ratio (target >= 0.5x);
- e2e latency at 50 MB/s on the three nodes (replication factor 3, acks=all, a consumer
  thread per partition, as the load generator polls one leader at a time): consumers
  read below the high watermark, so this is produce, replication and fetch together;
- failover: the leader of a one-partition, replication-factor-3 topic is killed (-9)
  while `spate produce --acks all` feeds it a record every 2 ms; the time from the kill
  to the first acknowledgement that comes after it (acknowledgements the dead leader had
  already sent arrive within a few ms; the first one 50 ms or more after the kill counts,
  so the figure is never below 50 ms); the node is restarted and caught up between
  trials (target < 2 s, aim < 500 ms).

Placement: every broker process on --broker-cpu (one shard each), the load generator on
--loadgen-cpu. On a 2-core host the three nodes share the one core the single node has,
so the ratio is also what replication costs in CPU. The figures are printed (and the raw
ones written to target/bench-cluster/results.json); docs/BENCHMARKS.md quotes them.
"""

import argparse
import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPATE = ROOT / "target" / "release" / "spate"
LOADGEN = ROOT / "target" / "release" / "spate-loadgen"

sys.path.insert(0, str(ROOT / "benches"))
import suite  # noqa: E402  (iperf3, build, ensure_tools, describe_machine, git_commit)


def main():
    args = parse_args()
    suite.ensure_tools(["iperf3"])
    suite.build()
    work = ROOT / "target" / "bench-cluster"
    report = measure(args, work)
    report["iperf3_mb_s"] = suite.median_of(
        report["runs"], lambda: suite.iperf3(args, 3 if args.quick else 5))
    suite.log(f"iperf3: {report['iperf3_mb_s']:.0f} MB/s")
    (work / "results.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def measure(args, work):
    """The three-node figures: produce one node against three (ratio), e2e on three,
    failover times. `args` needs runs, trials, duration, broker_cpu, loadgen_cpu, quick
    (benches/suite.py passes its own)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # One node alone writes up to about 2 GB/s, three nodes three copies of less.
    need = 2 * 10**9 * (3 if args.quick else suite.seconds(args.duration))
    free = shutil.disk_usage(work).free
    if free < need * 1.5:
        sys.exit(f"benches/cluster.py: {free / 1e9:.0f} GB free under {work}; a run may write "
                 f"{need / 1e9:.0f} GB: free some space or pass a shorter --duration")
    runs = 1 if args.quick else args.runs
    duration = "3s" if args.quick else args.duration
    trials = 3 if args.quick else args.trials
    report = {"machine": suite.describe_machine(), "commit": suite.git_commit(),
              "runs": runs, "duration": duration}
    produce = ["produce", "--message-size", "1024", "--batch-bytes", "65536", "--acks", "all",
               "--max-in-flight", "64", "--partitions", "3", "--duration", duration,
               "--topic-config", "flush.ms=100"]
    single, replicated = [], []
    for run in range(runs):
        # Interleaved, so the machine's drift weighs on both alike.
        with Nodes(work / f"single-{run}", args, count=1) as nodes:
            single.append(loadgen(args, work, nodes.bootstrap(), produce + ["--topic", "single"]))
        with Nodes(work / f"cluster-{run}", args, count=3) as nodes:
            replicated.append(loadgen(args, work, nodes.bootstrap(), produce + [
                "--topic", "replicated", "--replication-factor", "3",
                "--topic-config", "min.insync.replicas=2"]))
        suite.log(f"run {run + 1}: one node {single[-1]['throughput_mb_s']:.0f} MB/s, "
                  f"three nodes {replicated[-1]['throughput_mb_s']:.0f} MB/s")
    report["single_mb_s"] = statistics.median(r["throughput_mb_s"] for r in single)
    report["replicated_mb_s"] = statistics.median(r["throughput_mb_s"] for r in replicated)
    report["replicated_over_single"] = report["replicated_mb_s"] / report["single_mb_s"]

    e2e = ["e2e", "--message-size", "1024", "--batch-bytes", "65536", "--linger-ms", "0",
           "--acks", "all", "--rate", "50MB", "--duration", duration, "--partitions", "3",
           "--consumers", "3",
           "--topic-config", "flush.ms=100", "--replication-factor", "3",
           "--topic-config", "min.insync.replicas=2"]
    latencies = []
    for run in range(runs):
        with Nodes(work / f"e2e-{run}", args, count=3) as nodes:
            latencies.append(loadgen(args, work, nodes.bootstrap(), e2e + ["--topic", "e2e"]))
    report["e2e_p50_us"] = statistics.median(r["p50_us"] for r in latencies)
    report["e2e_p99_us"] = statistics.median(r["p99_us"] for r in latencies)

    with Nodes(work / "failover", args, count=3) as nodes:
        report["failover_ms"] = failovers(nodes, trials)
    report["failover_median_ms"] = statistics.median(report["failover_ms"])

    return report


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--trials", type=int, default=10, help="failover trials")
    parser.add_argument("--duration", default="10s")
    parser.add_argument("--broker-cpu", type=int, default=0)
    parser.add_argument("--loadgen-cpu", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    return parser.parse_args()


def free_port():
    """A port free on 127.0.0.1-3 with the 3 after it (a shard port, Kafka's two)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        held = []
        try:
            for node in (1, 2, 3):
                for offset in range(4):
                    held.append(socket.socket())
                    held[-1].bind((f"127.0.0.{node}", port + offset))
            return port
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    sys.exit("benches/cluster.py: no free ports")


class Nodes:
    """`count` spate processes, one shard each on the broker core, forming a cluster
    (count 3) or alone (count 1)."""

    def __init__(self, directory, args, count):
        self.directory, self.args, self.count = Path(directory), args, count
        self.port = free_port()
        self.children = {}

    def address(self, node):
        return f"127.0.0.{node}:{self.port}"

    def bootstrap(self):
        return self.address(1)

    def start(self, node):
        command = [str(SPATE), "serve", "--shards", "1", "--cpus", str(self.args.broker_cpu),
                   "--data-dir", str(self.directory / f"node{node}"),
                   "--kafka-listen", "none"]
        if self.count > 1:
            voters = ",".join(f"{n}@{self.address(n)}" for n in range(1, self.count + 1))
            command += ["--node-id", str(node), "--cluster", voters]
        else:
            command += ["--listen", self.address(node)]
        log = open(self.directory / f"node{node}.log", "ab")
        self.children[node] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)

    def kill(self, node):
        child = self.children.pop(node)
        child.send_signal(signal.SIGKILL)
        child.wait()

    def describe(self, topic):
        out = subprocess.run([str(SPATE), "topic", "describe", topic, "--broker",
                              self.bootstrap_alive()], capture_output=True, text=True)
        return out.stdout if out.returncode == 0 else ""

    def bootstrap_alive(self):
        return self.address(min(self.children))

    def __enter__(self):
        self.directory.mkdir(parents=True, exist_ok=True)
        for node in range(1, self.count + 1):
            self.start(node)
        deadline = time.time() + 30
        while time.time() < deadline:
            out = subprocess.run([str(SPATE), "cluster", "describe", "--broker",
                                  self.bootstrap()], capture_output=True, text=True)
            live = [line for line in out.stdout.splitlines()[2:] if "fenced" not in line]
            if out.returncode == 0 and len(live) >= self.count:
                return self
            time.sleep(0.2)
        sys.exit("benches/cluster.py: the nodes did not start")

    def __exit__(self, *_):
        for node in list(self.children):
            self.kill(node)
        # A produce run writes tens of GB: each run's data goes once it is measured.
        shutil.rmtree(self.directory, ignore_errors=True)


def loadgen(args, work, broker, arguments):
    out = work / "run.json"
    out.unlink(missing_ok=True)
    command = [str(LOADGEN), *arguments, "--broker", broker, "--cpus", str(args.loadgen_cpu),
               "--json", str(out)]
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode != 0 or not out.exists():
        sys.exit(f"benches/cluster.py: {' '.join(command)} failed:\n{finished.stderr[-2000:]}")
    summary = json.loads(out.read_text())
    return {"throughput_mb_s": summary["throughput_mb_s"],
            "p50_us": summary["latency_us"]["p50"], "p99_us": summary["latency_us"]["p99"]}


def leader_of(nodes, topic):
    for line in nodes.describe(topic).splitlines():
        if "Partition: 0\t" in line:
            leader = line.split("Leader: ")[1].split("\t")[0]
            isr = line.split("Isr: ")[1].split("\t")[0]
            return (int(leader) if leader.isdigit() else None), isr.count(",") + 1
    return None, 0


def failovers(nodes, trials):
    subprocess.run([str(SPATE), "topic", "create", "failover", "--replication-factor", "3",
                    "--config", "min.insync.replicas=2", "--config", "flush.ms=100",
                    "--broker", nodes.bootstrap()], check=True, capture_output=True)
    producer = subprocess.Popen(
        [str(SPATE), "produce", "failover", "--print-offsets", "--acks", "all", "--broker",
         nodes.bootstrap()],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    acks = []
    stop = threading.Event()

    def feed():
        i = 0
        while not stop.is_set():
            producer.stdin.write(f"r{i}\n")
            producer.stdin.flush()
            i += 1
            time.sleep(0.002)

    def read():
        for _ in producer.stdout:
            acks.append(time.monotonic())

    threads = [threading.Thread(target=feed, daemon=True), threading.Thread(target=read, daemon=True)]
    for thread in threads:
        thread.start()
    times = []
    try:
        for trial in range(trials):
            deadline = time.time() + 30
            while time.time() < deadline:
                leader, in_sync = leader_of(nodes, "failover")
                if leader in nodes.children and in_sync == 3:
                    break
                time.sleep(0.2)
            else:
                sys.exit("benches/cluster.py: the partition did not get three in-sync replicas")
            time.sleep(0.5)
            killed = time.monotonic()
            nodes.kill(leader)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                after = [t for t in acks if t >= killed + 0.05]
                if after:
                    break
                time.sleep(0.005)
            else:
                sys.exit("benches/cluster.py: no acknowledgement within 30 s of the kill")
            times.append((after[0] - killed) * 1000)
            suite.log(f"failover {trial + 1}: node {leader} killed, produce acknowledged again after {times[-1]:.0f} ms")
            nodes.start(leader)
    finally:
        stop.set()
        producer.kill()
    return times


if __name__ == "__main__":
    main()
