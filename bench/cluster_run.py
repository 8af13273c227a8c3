#!/usr/bin/env python3
"""Run one job on a fresh local cluster and report what it cost.

    python3 bench/cluster_run.py [--workers 2] [--worker-memory-mib M]
        [--slow-workers K] [--collect FILE] [--report FILE] -- SEND_JOB_OPTIONS...

Starts a master and N workers of this repository on free loopback ports in a
scratch directory, submits one job with `send_job.py PORT --wait`, joins its
output into one file with collect.py if asked, shuts the cluster down, and
prints one JSON object: wall times (the whole run, the start-up, the job
from submit to end as send_job.py's process sees it, the collect), the
master's phase timings, the peak resident memory of the master, of each
worker and of the largest program or sort they ran, and the CPU seconds of
each. It exits with send_job.py's code (or collect.py's, if that failed).

--worker-memory-mib caps the address space of each worker and everything it
runs (RLIMIT_AS, as `ulimit -v`). --slow-workers K starts the last K workers
with MR_BENCH_SLOW=1 in their environment, which bench/programs/slow_map.sh
turns into a straggler. --kill-worker-after S SIGKILLs the first worker S
seconds after the job is submitted and reports how long the master took to
declare it dead (and so to hand its tasks to the other workers).
"""
import argparse
import datetime
import json
import os
import re
import resource
import signal
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import helper  # noqa: E402
from tests.support import localcluster  # noqa: E402  (tests/ is a namespace package)

# Peaks are the kernel's high-water marks (VmHWM), so sampling only has to
# see each process once; a process living less than this may be missed.
SAMPLE_INTERVAL = 0.2
MIB = 1 << 20
SLOW_ENV = {"MR_BENCH_SLOW": "1"}
# The master's log line declaring a worker dead, and its timestamp format.
DEATH_LINE = re.compile(r"^(\S+ \S+) master\[\d+\] WARNING worker (\d+) .* is dead", re.M)
LOG_TIME_FORMAT = "%Y-%m-%d %H:%M:%S,%f"


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


def timed(argv, env):
    """Run a command with its output on our stderr; (exit code, seconds)."""
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, stdout=sys.stderr)
    return result.returncode, time.perf_counter() - started


def run_job(cluster, job_args, kill_after=None):
    """Submit with --wait; return (exit code, seconds, the job's final status, kill time)."""
    killer = None
    if kill_after is not None:
        killer = threading.Timer(kill_after, kill_first_worker, args=(cluster,))
        killer.start()
    code, seconds = timed([localcluster.PYTHON, str(localcluster.REPO / "send_job.py"),
                           str(cluster.port), "--wait", "--quiet", *job_args], cluster.env)
    if killer is not None:
        killer.cancel()
    status = helper.request("localhost", cluster.port, helper.job_status(0))
    return code, seconds, status, getattr(cluster, "killed_at", None)


def kill_first_worker(cluster):
    """SIGKILL the first worker; remember when, by the wall clock the log uses."""
    cluster.killed_at = time.time()
    os.kill(cluster.workers[0].pid, signal.SIGKILL)


def detection_seconds(cluster, killed_at):
    """Seconds from the kill to the master's log line declaring that worker dead."""
    victim = str(cluster.workers[0].pid)
    for stamp, pid in DEATH_LINE.findall(cluster.log("master.log")):
        if pid == victim:
            declared = datetime.datetime.strptime(stamp, LOG_TIME_FORMAT).timestamp()
            return round(declared - killed_at, 3)
    return None


def disk_kib(path):
    """What `du -sk PATH` says: KiB of disk used, each hard-linked file counted once."""
    result = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True)
    return int(result.stdout.split()[0]) if result.returncode == 0 else None


def collect(output_directory, destination, env):
    """Join the job's outputs with collect.py; (exit code, seconds)."""
    return timed([localcluster.PYTHON, str(localcluster.REPO / "collect.py"),
                  output_directory, destination], env)


def run(args):
    started = time.perf_counter()
    cluster = localcluster.LocalCluster(args.workdir)
    cluster.env.pop("PYTHONUNBUFFERED", None)
    sampler = MemorySampler(cluster)
    try:
        start_cluster(cluster, args)
        sampler.start()
        ready = time.perf_counter()
        code, job_seconds, status, killed_at = run_job(cluster, args.job,
                                                       args.kill_worker_after)
        # After the job, as a long-lived master keeps it: var/ should hold no
        # more than the output (its reducer-output shares the output's blocks).
        disk = {"var_kib": disk_kib(cluster.workdir / "var"),
                "output_kib": disk_kib(status["output_directory"])}
        collect_seconds = None
        if code == 0 and args.collect:
            code, collect_seconds = collect(status["output_directory"], args.collect,
                                            cluster.env)
        sampler.stop()
        detected = detection_seconds(cluster, killed_at) if killed_at else None
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
        "collect_seconds": round(collect_seconds, 3) if collect_seconds is not None else None,
        "phases": status.get("timings", {}), "counters": status.get("counters", {}),
        "killed_worker_declared_dead_after_seconds": detected,
        "disk": disk,
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
    parser.add_argument("--kill-worker-after", type=float, metavar="SECONDS",
                        help="SIGKILL the first worker this long after submitting")
    parser.add_argument("--collect", metavar="FILE",
                        help="join the job's outputs into FILE with collect.py")
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
