#!/usr/bin/env python3
"""Run one job on a fresh local cluster and report what it cost.

    python3 bench/cluster_run.py [--workers 2] [--worker-memory-mib M]
        [--slow-workers K] [--report FILE] -- SEND_JOB_OPTIONS...

Starts a master and N workers of this repository on free loopback ports in a
scratch directory, submits one job with `send_job.py PORT --wait`, shuts the
cluster down, and prints one JSON object: wall times (the whole run, the
start-up, the job from submit to end), the master's phase timings, the peak
resident memory of the master, of each worker and of the largest program or
sort they ran, and the CPU seconds of each. It exits with send_job.py's code.

--worker-memory-mib caps the address space of each worker and everything it
runs (RLIMIT_AS, as `ulimit -v`). --slow-workers K starts the last K workers
with MR_BENCH_SLOW=1 in their environment, which bench/programs/slow_map.sh
turns into a straggler.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import helper  # noqa: E402
from mrlib import localcluster  # noqa: E402

SAMPLE_INTERVAL = 0.05
MIB = 1 << 20
SLOW_ENV = {"MR_BENCH_SLOW": "1"}


class MemorySampler:
    """Polls the cluster's sessions for each process's peak resident memory."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.peaks = {}   # pid -> (command name, peak bytes)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def run(self):
        while not self.stopping.wait(SAMPLE_INTERVAL):
            self.sample()

    def sample(self):
        for pid in self.cluster.alive():
            memory = localcluster.memory_bytes(pid)
            if memory is None:
                continue
            name, peak = self.peaks.get(pid, (None, 0))
            self.peaks[pid] = (name or localcluster.command_name(pid), max(peak, memory[1]))

    def stop(self):
        self.sample()
        self.stopping.set()
        self.thread.join()

    def largest_other(self, excluded):
        """(name, peak bytes) of the largest process not in `excluded`."""
        others = [value for pid, value in self.peaks.items() if pid not in excluded]
        return max(others, key=lambda value: value[1], default=(None, 0))


def limit_address_space(mib):
    """A preexec_fn: cap the child's address space, as `ulimit -v`."""
    limit = mib * MIB

    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


def process_report(process):
    """Peak memory and CPU seconds of a live process."""
    memory = localcluster.memory_bytes(process.pid) or (0, 0)
    own, children = localcluster.cpu_seconds(process.pid) or (0.0, 0.0)
    return {"pid": process.pid, "peak_rss_mib": round(memory[1] / MIB, 1),
            "cpu_seconds": round(own, 2), "children_cpu_seconds": round(children, 2)}


def start_cluster(cluster, args):
    cluster.start_master()
    for number in range(args.workers):
        slow = number >= args.workers - args.slow_workers
        env = dict(cluster.env, **SLOW_ENV) if slow else None
        preexec = limit_address_space(args.worker_memory_mib) if args.worker_memory_mib else None
        cluster.start_worker(preexec_fn=preexec, env=env)


def run_job(cluster, job_args):
    """Submit with --wait; return (exit code, seconds, the job's final status)."""
    started = time.perf_counter()
    result = subprocess.run([localcluster.PYTHON, str(localcluster.REPO / "send_job.py"),
                             str(cluster.port), "--wait", "--quiet", *job_args],
                            env=cluster.env, stdout=sys.stderr)
    seconds = time.perf_counter() - started
    status = helper.request("localhost", cluster.port, helper.job_status(0))
    return result.returncode, seconds, status


def run(args):
    started = time.perf_counter()
    cluster = localcluster.LocalCluster(args.workdir)
    cluster.env.pop("PYTHONUNBUFFERED", None)
    sampler = MemorySampler(cluster)
    try:
        start_cluster(cluster, args)
        sampler.start()
        ready = time.perf_counter()
        code, job_seconds, status = run_job(cluster, args.job)
        sampler.stop()
        master = process_report(cluster.master)
        workers = [process_report(worker) for worker in cluster.workers]
    finally:
        sampler.stopping.set()
        cluster.stop()
    excluded = {cluster.master.pid, *(w.pid for w in cluster.workers)}
    program, program_peak = sampler.largest_other(excluded)
    return code, {
        "exit_code": code, "state": status.get("state"), "error": status.get("error"),
        "total_seconds": round(time.perf_counter() - started, 3),
        "startup_seconds": round(ready - started, 3),
        "job_seconds": round(job_seconds, 3),
        "phases": status.get("timings", {}), "counters": status.get("counters", {}),
        "events": status.get("events", []),
        "master": master, "workers": workers,
        "largest_program": {"name": program, "peak_rss_mib": round(program_peak / MIB, 1)},
    }


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-memory-mib", type=int, default=None,
                        help="address-space limit of each worker and its programs")
    parser.add_argument("--slow-workers", type=int, default=0,
                        help="start the last K workers with MR_BENCH_SLOW=1")
    parser.add_argument("--report", help="also write the JSON report to this file")
    parser.add_argument("--scratch", default=None,
                        help="directory for the cluster's var/ and logs (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("job", nargs=argparse.REMAINDER, help="-- then send_job.py options")
    args = parser.parse_args(argv)
    if args.job[:1] == ["--"]:
        args.job = args.job[1:]
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.workdir = tempfile.mkdtemp(prefix="mr-bench-", dir=args.scratch)
    try:
        code, report = run(args)
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    text = json.dumps(report)
    print(text, flush=True)
    if args.report:
        with open(args.report, "w") as handle:
            handle.write(text + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
