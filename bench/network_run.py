#!/usr/bin/env python3
"""The cluster across hosts (network namespaces, as in tests/test_network.py), with faults.

    sudo python3 bench/network_run.py [--data bench/data] [--mib 100] [--losses 5,20]

Measures, on a master host and two worker hosts sharing a secret:
- the time from unplugging a busy worker's link to the master declaring it
  dead and handing its tasks to the other worker (the spec's timings: 2 s
  heartbeats, dead after 5 missed);
- a word count of the --mib corpus on a clean network, then with each
  --losses percentage of packets dropped by every cluster host (nftables),
  and the ratio of each to the clean run.
Prints one JSON object. Needs root, iproute2 and nftables.
"""
import argparse
import datetime
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH))
sys.path.insert(0, os.path.join(os.path.dirname(BENCH), "tests"))

from support import localcluster, netns  # noqa: E402
from support.localcluster import wait_until  # noqa: E402

import run as bench_run  # noqa: E402

DEATH_LINE = re.compile(r"^(\S+ \S+) master\[\d+\] WARNING worker \d+ .* is dead", re.M)
LOG_TIME_FORMAT = "%Y-%m-%d %H:%M:%S,%f"
JOB_TIMEOUT = 1800
MAPPER = os.path.join(os.path.dirname(BENCH), "exec", "word_count", "map.py")
REDUCER = os.path.join(os.path.dirname(BENCH), "exec", "word_count", "reduce.py")
SLEEPY_TASKS = 8
SLEEPY_SECONDS = 3


def new_cluster(scratch, name):
    secret = os.path.join(scratch, "secret")
    localcluster.write_secret(secret, os.urandom(32).hex())
    network = netns.Network()
    cluster = netns.NetCluster(network, Path(scratch, name), secret)
    cluster.start_master()
    workers = [cluster.add_worker("w1"), cluster.add_worker("w2")]
    return network, cluster, workers


def close(network, cluster):
    cluster.stop()
    network.close()


def word_count(cluster, corpus, output):
    began = time.monotonic()
    result = cluster.send_job("--input", corpus, "--output", output, "--mappers", 8,
                              "--reducers", 2, "--wait", "--quiet", timeout=JOB_TIMEOUT)
    if result.returncode != 0:
        raise SystemExit(f"word count failed: {result.stderr.decode()}")
    return time.monotonic() - began


def cut_to_death(scratch):
    """Seconds from a busy worker's link going down to the master's 'is dead' line."""
    network, cluster, (first, _) = new_cluster(scratch, "cut")
    try:
        inputs = Path(scratch, "sleepy-in")
        inputs.mkdir()
        for number in range(SLEEPY_TASKS):
            (inputs / f"part-{number}").write_bytes(b"a b c\n")
        mapper = Path(scratch, "sleepy-map.sh")
        mapper.write_text(f"#!/bin/sh\nsleep {SLEEPY_SECONDS}\nexec {MAPPER}\n")
        mapper.chmod(0o755)
        client = cluster.send_job_async("--input", inputs, "--output", Path(scratch, "o"),
                                        "--mapper", mapper, "--mappers", SLEEPY_TASKS,
                                        "--reducers", 1, "--wait")
        wait_until(lambda: cluster.state(first) == "busy", what="w1 busy")
        time.sleep(1)  # a task under way
        cut_at = datetime.datetime.now()
        first.cut()
        wait_until(lambda: DEATH_LINE.search(cluster.log("master.log")), 60,
                   what="the death")
        died_at = datetime.datetime.strptime(
            DEATH_LINE.search(cluster.log("master.log")).group(1), LOG_TIME_FORMAT)
        client.communicate(timeout=JOB_TIMEOUT)
        if client.returncode != 0:
            raise SystemExit("the job with a cut link failed")
        return (died_at - cut_at).total_seconds()
    finally:
        close(network, cluster)


def lossy_runs(scratch, corpus, losses):
    times = {}
    for loss in [0, *losses]:
        network, cluster, workers = new_cluster(scratch, f"loss{loss}")
        try:
            if loss:
                for host in [cluster.master_host, *workers]:
                    host.lose(loss)
            times[loss] = word_count(cluster, corpus, Path(scratch, f"out-{loss}"))
            print(f"  {loss} % loss: {times[loss]:.2f} s", file=sys.stderr)
        finally:
            close(network, cluster)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(BENCH, "data"))
    parser.add_argument("--mib", type=float, default=100)
    parser.add_argument("--losses", default="5,20")
    args = parser.parse_args()
    reason = netns.unavailable() or netns.nft_unavailable()
    if reason:
        raise SystemExit(f"network_run: {reason}")
    corpus = bench_run.corpus(args.data, "words", args.mib)
    losses = [float(x) if "." in x else int(x) for x in args.losses.split(",") if x]
    with tempfile.TemporaryDirectory(dir=args.data) as scratch:
        death = cut_to_death(scratch)
        print(f"  cut to reassignment: {death:.2f} s", file=sys.stderr)
        times = lossy_runs(scratch, corpus, losses)
    clean = times[0]
    print(json.dumps({"cut_to_reassignment_s": round(death, 2),
                      "word_count_mib": args.mib,
                      "seconds": {f"{k}%": round(v, 2) for k, v in times.items()},
                      "ratio_to_clean": {f"{k}%": round(v / clean, 2)
                                         for k, v in times.items()}}, indent=2))


if __name__ == "__main__":
    main()
