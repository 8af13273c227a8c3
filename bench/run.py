#!/usr/bin/env python3
"""Benchmark the cluster against the sequential pipeline and the tools people pick instead.

    python3 bench/run.py                        # everything: 100 MiB and 1 GiB, 3 runs, extras
    python3 bench/run.py --sizes 100 --runs 1   # a quicker look
    python3 bench/run.py --smoke                # a tiny run of our own cases (run by the tests)

Every case is one shell command, timed as a whole process from start to
exit, and its output is compared byte for byte with the reference (the
sequential pipeline's word count, `LC_ALL=C sort` for sorting) before its
time counts. A cluster case is timed as its user sees it on a running
cluster: from `send_job.py --wait` starting to collect.py having written
the ordered output file; the cluster is started (about 0.4 s) before the
clock starts and stopped after it stops, and both are reported apart.
The table gives medians over --runs runs, side by side, with ratios to the
sequential pipeline and to the strongest 2-core baseline (each the median
of the ratios of runs taken in the same round).
Cluster cases also report the master's phase timings and the peak memory of
every process (bench/cluster_run.py). Peers (mrjob, Dask, Spark) run from
bench/.venv (bench/setup_peers.sh) and are skipped, with a note, without it.
The extras measure what a table of wall times cannot: a tiny job's latency,
2,000 tasks, a straggler with and without backup tasks, recovery from a
worker killed mid-map with the spec's heartbeat timings, and a job on input
larger than the workers' memory limit.

Programs run without PYTHONUNBUFFERED in every case, as the cluster runs
them: a Python program that writes one record per system call would make
every case slower but the same amount of work.
"""
import argparse
import dataclasses
import importlib.util
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
PEER_PYTHON = os.path.join(BENCH, ".venv", "bin", "python")
MIB = 1 << 20
CORPUS_FILES = 8
REDUCERS = 2
SMOKE_MIB = 1
SCALE_TASKS = 2000
SLOW_SECONDS = 4
KILL_AFTER_SECONDS = 1.5
OUT_OF_CORE_MIB = 4096
WORKER_MEMORY_MIB = 512
SPLIT_MIB = 64
PUBLISHED_RESULTS = os.path.join(BENCH, "results.json")
SMOKE_RESULTS = "smoke-results.json"

# The placeholders of a case's command: {python} this interpreter, {peer}
# bench/.venv's, {repo}, {input} the corpus directory, {files} its file
# count, {out} the file the result goes to, {scratch} a directory of its own,
# {report} where cluster_run.py writes its JSON.
CLUSTER = ("{python} {repo}/bench/cluster_run.py --report {report} --collect {out} -- "
           "--input {input} --output {scratch}/out --overwrite --mappers {files} --reducers 2 "
           "{options}")
WC_MAP, WC_REDUCE = "{repo}/exec/word_count/map.py", "{repo}/exec/word_count/reduce.py"
WC_COMBINING_MAP = "{repo}/bench/programs/wc_map_combining.py"
# send_job.py --runner spark on 2 cores: the same job options as CLUSTER.
SPARK = ("{python} {repo}/send_job.py --runner spark --spark-master 'local[2]' --input {input} "
         "--output {scratch}/out --overwrite --mappers {files} --reducers 2 {options} > /dev/null "
         "2> {scratch}/spark.log && {python} {repo}/collect.py {scratch}/out {out} > /dev/null")


@dataclasses.dataclass
class Timing:
    """The runs of one case: times, and cluster_run reports for cluster cases."""
    case: "Case"
    command: str
    times: list = dataclasses.field(default_factory=list)
    reports: list = dataclasses.field(default_factory=list)
    failed: bool = False

    def add(self, seconds, report):
        self.times.append(seconds)
        self.reports.append(report)

    def summary(self):
        """Times, their median, and the report of the median run."""
        if not self.times:
            return {"seconds": [], "median": None, "command": self.command, "report": None}
        middle = self.times.index(statistics.median_high(self.times))
        return {"seconds": [round(t, 3) for t in self.times],
                "median": round(statistics.median(self.times), 3),
                "command": self.command, "report": self.reports[middle]}


@dataclasses.dataclass
class Case:
    name: str
    command: str
    options: str = ""       # send_job.py options of a cluster case
    peer: bool = False      # needs bench/.venv
    spark: bool = False     # needs PySpark and Java here (pip install '.[spark]')
    max_mib: float = None   # skipped above this size
    note: str = ""

    @property
    def cluster(self):
        return "cluster_run.py" in self.command


WORD_COUNT = [
    Case("sequential pipeline",
         f"cat {{input}}/* | {WC_MAP} | LC_ALL=C sort -T {{scratch}} | {WC_REDUCE} > {{out}}",
         note="cat | map | LC_ALL=C sort | reduce: the reference"),
    Case("hand-built 2-way pipeline", "bash {repo}/bench/handbuilt2.sh {input} {out}",
         note="2 maps ∥, cut at one key, 2 merge+reduce ∥ (bench/handbuilt2.sh)"),
    Case("sequential, in-mapper combiner",
         f"cat {{input}}/* | {WC_COMBINING_MAP} | LC_ALL=C sort -T {{scratch}} | {WC_REDUCE}"
         " > {out}", note="map counts words in a dict (bench/programs/wc_map_combining.py)"),
    Case("ours, --sequential mode",
         "{python} {repo}/send_job.py --sequential --input {input} --output {scratch}/out --overwrite "
         f"--mapper {WC_MAP} --reducer {WC_REDUCE} --mappers {{files}} --reducers 2 > /dev/null"
         " && {python} {repo}/collect.py {scratch}/out {out} > /dev/null",
         note="one process, no master or workers"),
    Case("cluster, 2 workers", CLUSTER, f"--mapper {WC_MAP} --reducer {WC_REDUCE}",
         note="master + 2 workers, started, run and stopped; output collected"),
    Case("cluster, 2 workers, --combiner", CLUSTER,
         f"--mapper {WC_MAP} --reducer {WC_REDUCE} --combiner {WC_REDUCE}",
         note="Hadoop-style combiner: map | sort | reduce.py on each map task"),
    Case("cluster, 2 workers, in-mapper combiner", CLUSTER,
         f"--mapper {WC_COMBINING_MAP} --reducer {WC_REDUCE}",
         note="the combining map program"),
    Case("cluster, 2 workers, Python job", CLUSTER + " && {repo}/bench/programs/json_to_text.sh {out}",
         "--job {repo}/bench/programs/wc_job.py:WordCountPlain",
         note="mrlib.Job: mapper and reducer methods (bench/programs/wc_job.py)"),
    Case("cluster, 2 workers, Python job with combiner",
         CLUSTER + " && {repo}/bench/programs/json_to_text.sh {out}",
         "--job {repo}/bench/programs/wc_job.py:WordCount",
         note="the same with a combiner method: combined in a dict on the map side"),
    Case("our job on Spark, --runner spark", SPARK, f"--mapper {WC_MAP} --reducer {WC_REDUCE}",
         spark=True, note="send_job.py --runner spark, local[2]: our programs, Spark's shuffle"),
    Case("mrjob local, our executables",
         "{peer} {repo}/bench/peers/mrjob_wc.py {input} {out}", peer=True, max_mib=100,
         note="mapper_cmd / reducer_cmd, 2 cores"),
    Case("mrjob local, Python job",
         "{peer} {repo}/bench/peers/mrjob_wc.py --python {input} {out}", peer=True,
         max_mib=100, note="mapper / reducer methods, 2 cores"),
    Case("Spark local[2], rdd.pipe(map)",
         "{peer} {repo}/bench/peers/spark_wc.py --pipe {input} {out} 2> {scratch}/spark.log",
         peer=True, note="our map executable, then reduceByKey"),
    Case("Spark local[2], Python",
         "{peer} {repo}/bench/peers/spark_wc.py {input} {out} 2> {scratch}/spark.log",
         peer=True, note="flatMap / reduceByKey"),
    Case("Dask bag, 2 processes",
         "{peer} {repo}/bench/peers/dask_wc.py {input} {out}", peer=True,
         note="frequencies(): combines map-side"),
]

SORTING = [
    Case("LC_ALL=C sort --parallel=2",
         "LC_ALL=C sort --parallel=2 -T {scratch} {input}/* > {out}", note="the reference"),
    Case("cat → cat → sort → cat",
         "cat {input}/* | cat | LC_ALL=C sort -T {scratch} | cat > {out}",
         note="the identity job's work, sequentially"),
    Case("cluster, 2 workers, identity", CLUSTER, "--mapper {cat} --reducer {cat}",
         note="cat as map and reduce; output collected in key order"),
    Case("identity on Spark, --runner spark", SPARK, "--mapper {cat} --reducer {cat}",
         spark=True, note="send_job.py --runner spark, local[2]"),
]

SUITES = {"wordcount": ("words", WORD_COUNT), "sort": ("records", SORTING)}


# --- running ----------------------------------------------------------------------

def run_environment():
    env = dict(os.environ)
    env.pop("PYTHONUNBUFFERED", None)
    return env


def corpus(data, kind, mib, files=CORPUS_FILES):
    """The directory of a generated corpus, made if missing (same bytes every time)."""
    directory = os.path.join(data, f"{kind}-{mib:g}MiB")
    marker = os.path.join(directory, ".complete")
    if not os.path.exists(marker):
        shutil.rmtree(directory, ignore_errors=True)
        subprocess.run([sys.executable, os.path.join(BENCH, "gen_corpus.py"), kind, str(mib),
                        directory, "--files", str(files)], check=True)
        open(marker, "w").close()
    return directory


def fill(command, **values):
    return command.format(python=sys.executable, peer=PEER_PYTHON, repo=REPO,
                          cat=shutil.which("cat"), **values)


def run_once(command, scratch):
    """Run a command in a fresh scratch directory; (seconds, exit code, stderr tail)."""
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    started = time.perf_counter()
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], env=run_environment(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - started
    return seconds, result.returncode, result.stderr.decode("utf-8", "replace")[-800:]


def same_file(first, second):
    return subprocess.run(["cmp", "-s", first, second]).returncode == 0


class Runner:
    """Runs cases, checks their outputs, and keeps the results."""

    def __init__(self, args):
        self.args = args
        self.work = os.path.join(args.data, "runs")
        self.results = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                        "machine": machine(), "runs": args.runs, "cases": [], "extras": {}}
        if args.update and os.path.exists(args.results):
            self.results = kept_results(args)
        self.failures = []

    def say(self, text):
        print(text, file=sys.stderr, flush=True)

    def run_suite(self, suite, mib):
        """Run every case --runs times, round robin, so drifts in the machine's speed
        fall on every case alike."""
        kind, cases = SUITES[suite]
        directory = corpus(self.args.data, kind, mib)
        timings = {}
        for case in cases:
            skip = self.skip_reason(case, mib)
            if skip:
                self.say(f"  skip {case.name}: {skip}")
            else:
                timings[case.name] = Timing(case, self.command(case, directory))
        for number in range(self.args.runs):
            for timing in timings.values():
                if not timing.failed:
                    self.run_case(suite, mib, timing, directory, number)
        for case in cases:
            timing = timings.get(case.name)
            self.results["cases"].append({
                "suite": suite, "size_mib": mib, "case": case.name, "note": case.note,
                "skipped": self.skip_reason(case, mib),
                **(timing.summary() if timing else Timing(case, None).summary())})
        shutil.rmtree(os.path.join(self.work, "scratch"), ignore_errors=True)

    def command(self, case, directory):
        return fill(case.command, input=directory, files=CORPUS_FILES,
                    out=os.path.join(self.work, "result"),
                    scratch=os.path.join(self.work, "scratch"),
                    report=os.path.join(self.work, "report.json"), options=fill(case.options))

    def reference(self, suite, directory):
        """The reference output for a suite's corpus: its first case's, made once."""
        path = os.path.join(self.work, f"{suite}-{os.path.basename(directory)}.reference")
        if not os.path.exists(path):
            scratch = os.path.join(self.work, "scratch")
            command = fill(SUITES[suite][1][0].command, input=directory, out=path,
                           scratch=scratch)
            _, code, stderr = run_once(command, scratch)
            if code != 0:
                raise RuntimeError(f"the reference run failed: {stderr}")
        return path

    def skip_reason(self, case, mib):
        if (case.peer or case.spark) and self.args.no_peers:
            return "peers and Spark not run (--no-peers)"
        if case.peer and not os.path.exists(PEER_PYTHON):
            return "peers not installed (bash bench/setup_peers.sh)"
        if case.spark and (importlib.util.find_spec("pyspark") is None
                           or not shutil.which("java")):
            return "PySpark or Java not installed (pip install '.[spark]')"
        if case.max_mib is not None and mib > case.max_mib:
            return f"only run up to {case.max_mib:g} MiB (too slow to repeat above)"
        if self.args.only and not any(word in case.name for word in self.args.only):
            return "not selected (--only)"
        return None

    def run_case(self, suite, mib, timing, directory, number):
        """Run a case once, check its output, and add its time."""
        out = os.path.join(self.work, "result")
        seconds, code, stderr = run_once(timing.command, os.path.join(self.work, "scratch"))
        name = f"{suite} {mib:g} MiB: {timing.case.name}"
        if code != 0 or not os.path.exists(out):
            timing.failed = True
            self.fail(f"{name} exited {code}: {stderr}")
            return
        reference = os.path.join(self.work, f"{suite}-{os.path.basename(directory)}.reference")
        if not os.path.exists(reference):
            os.replace(out, reference)
        elif not same_file(out, reference):
            timing.failed = True
            self.fail(f"{name} gave output that differs from the reference")
            return
        report = None
        if timing.case.cluster:
            with open(os.path.join(self.work, "report.json")) as handle:
                report = json.load(handle)
            seconds = report["job_seconds"] + report["collect_seconds"]
        timing.add(seconds, report)
        self.say(f"  {timing.case.name}: run {number + 1}: {seconds:.2f} s")

    def fail(self, text):
        self.say("FAILED " + text)
        self.failures.append(text)

    def cluster(self, name, suite, directory, options, **cluster_flags):
        """Run one job on a fresh cluster, check its output; its cluster_run report."""
        report_path = os.path.join(self.work, f"{name}.json")
        output = os.path.join(self.work, f"{name}-out")
        flags = " ".join(f"--{flag.replace('_', '-')} {value}"
                         for flag, value in cluster_flags.items())
        collected = os.path.join(self.work, f"{name}-collected")
        command = fill("{python} {repo}/bench/cluster_run.py --report {report} "
                       "--collect {collected} {flags} -- --input {input} --output {output} --overwrite "
                       "{options}", report=report_path, collected=collected, flags=flags,
                       input=directory, output=output, options=fill(options))
        seconds, code, stderr = run_once(command, os.path.join(self.work, "scratch"))
        if not os.path.exists(report_path):
            self.fail(f"{name}: no report: {stderr}")
            return None
        with open(report_path) as handle:
            report = json.load(handle)
        report.update(wall_seconds=round(seconds, 3), command=command)
        if code != 0:
            self.fail(f"{name}: the job failed: {stderr}")
            return report
        report["output_matches_reference"] = same_file(collected, self.reference(suite, directory))
        if not report["output_matches_reference"]:
            self.fail(f"{name}: output differs from the reference")
        shutil.rmtree(output, ignore_errors=True)
        os.unlink(collected)
        return report

    def save(self):
        with open(self.args.results, "w") as handle:
            json.dump(self.results, handle, indent=1)
            handle.write("\n")


def kept_results(args):
    """The results file without what this run is about to measure again."""
    with open(args.results) as handle:
        results = json.load(handle)
    planned = {(suite, mib) for suite in args.suites for mib in args.sizes}
    results["cases"] = [row for row in results["cases"]
                        if (row["suite"], row["size_mib"]) not in planned]
    for name in args.extras:
        results["extras"].pop(name, None)
    results["updated"] = datetime.datetime.now().isoformat(timespec="seconds")
    return results


def machine():
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(),
            "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
                                / (1 << 30), 1)}


# --- extras ---------------------------------------------------------------------

def extra_tiny(runner):
    """The sample word count: submit to output, against the programs' own time."""
    sample = os.path.join(REPO, "input", "sample1")
    report = runner.cluster("tiny", "wordcount", sample,
                            f"--mapper {WC_MAP} --reducer {WC_REDUCE}")
    programs, _, _ = run_once(fill(f"cat {sample}/* | {WC_MAP} | LC_ALL=C sort | {WC_REDUCE}"
                                   " > /dev/null"), os.path.join(runner.work, "scratch"))
    return {"report": report, "sequential_pipeline_seconds": round(programs, 3)}


def extra_scale(runner):
    """2,000 map tasks of a trivial program: dispatch rate and the master's CPU."""
    directory = os.path.join(runner.args.data, f"tiny-{SCALE_TASKS}")
    if not os.path.isdir(directory):
        os.makedirs(directory)
        for number in range(SCALE_TASKS):
            with open(os.path.join(directory, f"f{number:05d}"), "wb") as handle:
                handle.write(b"line %d\n" % number)
    report = runner.cluster("scale", "sort", directory,
                            f"--mappers {SCALE_TASKS} --reducers 2 "
                            "--mapper {cat} --reducer {cat}")
    if report and report["phases"].get("map"):
        report["map_tasks_per_second"] = round(SCALE_TASKS / report["phases"]["map"], 1)
    return report


def extra_straggler(runner):
    """One worker whose map tasks each wait SLOW_SECONDS: with and without backup tasks."""
    directory = corpus(runner.args.data, "words", runner.args.straggler_mib)
    slow_map = os.path.join(BENCH, "programs", "slow_map.sh")
    options = f"--mappers {CORPUS_FILES} --reducers 2 --mapper {slow_map} --reducer {WC_REDUCE}"
    return {"slow_seconds_per_task": SLOW_SECONDS, "size_mib": runner.args.straggler_mib,
            "without backups": runner.cluster("straggler", "wordcount", directory, options,
                                              slow_workers=1),
            "with --speculative": runner.cluster("straggler-speculative", "wordcount", directory,
                                                 options + " --speculative", slow_workers=1)}


def extra_out_of_core(runner):
    """A job on input several times the workers' memory limit, and in-memory grouping's fate."""
    mib = runner.args.out_of_core_mib
    directory = corpus(runner.args.data, "words", mib)
    report = runner.cluster("out-of-core", "wordcount", directory,
                            f"--split-size {SPLIT_MIB * MIB} --reducers 4 --mapper {WC_MAP} "
                            f"--reducer {WC_REDUCE}", worker_memory_mib=WORKER_MEMORY_MIB)
    in_memory = fill(f"ulimit -v {WORKER_MEMORY_MIB * 1024}; cat {{input}}/* | {WC_MAP} | "
                     f"{{repo}}/bench/programs/sort_in_memory.py | {WC_REDUCE} > /dev/null",
                     input=directory)
    seconds, code, stderr = run_once(in_memory, os.path.join(runner.work, "scratch"))
    errors = [line for line in stderr.splitlines() if "MemoryError" in line]
    return {"input_mib": mib, "worker_memory_mib": WORKER_MEMORY_MIB, "cluster": report,
            "in_memory": {"command": in_memory, "exit_code": code, "seconds": round(seconds, 2),
                          "error": (errors or stderr.strip().splitlines() or [""])[-1]}}


def extra_recovery(runner):
    """A worker SIGKILLed mid-map with the spec's 2 s heartbeats: detection and cost."""
    directory = corpus(runner.args.data, "words", runner.args.straggler_mib)
    options = f"--mappers {CORPUS_FILES} --reducers 2 --mapper {WC_MAP} --reducer {WC_REDUCE}"
    return {"size_mib": runner.args.straggler_mib,
            "undisturbed": runner.cluster("recovery-baseline", "wordcount", directory, options),
            "worker killed": runner.cluster("recovery", "wordcount", directory, options,
                                            kill_worker_after=KILL_AFTER_SECONDS)}


EXTRAS = {"tiny": extra_tiny, "scale": extra_scale, "straggler": extra_straggler,
          "recovery": extra_recovery, "out-of-core": extra_out_of_core}


# --- the table --------------------------------------------------------------------

def baseline_of(suite):
    return "hand-built 2-way pipeline" if suite == "wordcount" else "LC_ALL=C sort --parallel=2"


def paired_ratio(row, baseline):
    """The median over rounds of this case's time over the baseline's in the same round.

    Runs go round robin, so round i of every case was taken within minutes:
    the ratio of a pair is steadier than the ratio of two medians when the
    machine's speed drifts.
    """
    pairs = [mine / theirs for mine, theirs in zip(row["seconds"], baseline["seconds"])]
    return statistics.median(pairs) if pairs else None


def table(results):
    """Markdown tables of the medians, with ratios, one per suite and size."""
    lines = []
    groups = {}
    for row in results["cases"]:
        groups.setdefault((row["suite"], row["size_mib"]), []).append(row)
    order = list(SUITES)
    for (suite, mib), rows in sorted(groups.items(),
                                     key=lambda item: (item[0][1], order.index(item[0][0]))):
        reference = rows[0]
        baseline = next((row for row in rows if row["case"] == baseline_of(suite)), None)
        runs = max(len(row["seconds"]) for row in rows)
        lines += [f"\n**{suite}, {mib:g} MiB** (median of {runs} runs)\n",
                  f"| case | seconds | speed-up vs {reference['case']} | "
                  f"time / {baseline_of(suite)} | cluster phases |",
                  "|---|---:|---:|---:|---|"]
        for row in rows:
            if row["median"] is None:
                lines.append(f"| {row['case']} | — | | | {row['skipped'] or 'failed'} |")
                continue
            speedup = paired_ratio(reference, row) if reference["median"] else None
            ratio = paired_ratio(row, baseline) if baseline and baseline["median"] else None
            lines.append(f"| {row['case']} | {row['median']:.2f} | "
                         f"{f'{speedup:.2f}×' if speedup else ''} | "
                         f"{f'{ratio:.2f}' if ratio else ''} | {phases(row['report'])} |")
    return "\n".join(lines)


def phases(report):
    if not report:
        return ""
    shown = ", ".join(f"{name} {seconds:.1f}" for name, seconds in report["phases"].items()
                      if name != "total")
    return (f"{shown}; start-up {report['startup_seconds']:.1f}; peak RSS master "
            f"{report['master']['peak_rss_mib']:.0f} MiB, workers "
            f"{max(w['peak_rss_mib'] for w in report['workers']):.0f} MiB, "
            f"largest program {report['largest_program']['peak_rss_mib']:.0f} MiB")


def extras_table(extras):
    """Markdown lines summing up the extras that were run."""
    lines = []
    tiny = extras.get("tiny")
    if tiny and tiny["report"]:
        report = tiny["report"]
        lines += ["\n**The sample job** (input/sample1, 4 map tasks, 2 reducers)\n",
                  f"- submit to finished job, `send_job.py --wait` as a whole process: "
                  f"{report['job_seconds']:.3f} s (the master's own count: "
                  f"{report['phases']['total']:.3f} s); then collect.py: "
                  f"{report['collect_seconds']:.3f} s",
                  f"- the programs' own time, `cat | map | sort | reduce` on the same files: "
                  f"{tiny['sequential_pipeline_seconds']:.3f} s",
                  f"- cluster start-up (master and 2 workers registered): "
                  f"{report['startup_seconds']:.2f} s"]
    scale = extras.get("scale")
    if scale:
        programs = sum(w["children_cpu_seconds"] for w in scale["workers"])
        workers = sum(w["cpu_seconds"] for w in scale["workers"])
        lines += [f"\n**{SCALE_TASKS} map tasks** of `cat` over one-line files, 2 workers\n",
                  f"- map phase {scale['phases']['map']:.2f} s: "
                  f"{scale['map_tasks_per_second']:.0f} tasks dispatched and done per second",
                  f"- CPU seconds: master {scale['master']['cpu_seconds']:.2f}, workers "
                  f"{workers:.2f}, the programs and sorts they ran {programs:.2f}",
                  f"- peak RSS: master {scale['master']['peak_rss_mib']:.0f} MiB, workers "
                  f"{max(w['peak_rss_mib'] for w in scale['workers']):.0f} MiB"]
    straggler = extras.get("straggler")
    if straggler:
        lines += [f"\n**A straggler**: word count over {straggler['size_mib']:g} MiB, 8 map "
                  f"tasks, 2 workers, one of which waits {straggler['slow_seconds_per_task']} s "
                  "before each map task (bench/programs/slow_map.sh)\n",
                  "| run | job seconds | map | reduce | backups started |",
                  "|---|---:|---:|---:|---:|"]
        for label in ("without backups", "with --speculative"):
            report = straggler[label]
            backups = sum(1 for event in report["events"] if event.startswith("backup of"))
            lines.append(f"| {label} | {report['job_seconds']:.2f} | "
                         f"{report['phases']['map']:.2f} | {report['phases']['reduce']:.2f} | "
                         f"{backups} |")
    recovery = extras.get("recovery")
    if recovery:
        calm, hit = recovery["undisturbed"], recovery["worker killed"]
        lines += [f"\n**Recovery with the spec's timings** (2 s heartbeats, dead after 5 "
                  f"missed): word count over {recovery['size_mib']:g} MiB, 2 workers, one "
                  f"SIGKILLed {KILL_AFTER_SECONDS} s after submitting\n",
                  f"- killed to declared dead, its tasks handed to the other worker: "
                  f"{hit['killed_worker_declared_dead_after_seconds']:.1f} s",
                  f"- job: {hit['job_seconds']:.2f} s, against {calm['job_seconds']:.2f} s "
                  f"undisturbed; output identical: {hit['output_matches_reference']}"]
    big = extras.get("out-of-core")
    if big and big["cluster"]:
        report, in_memory = big["cluster"], big["in_memory"]
        lines += [f"\n**Disk beats memory**: word count over {big['input_mib']:g} MiB with "
                  f"each worker and its programs under `ulimit -v` "
                  f"{big['worker_memory_mib']} MiB\n",
                  f"- the cluster: {report['state']} in {report['job_seconds']:.0f} s "
                  f"({phases(report)}); output identical to the sequential pipeline's: "
                  f"{report['output_matches_reference']}",
                  f"- grouping in memory (`sorted()` of all map output) under the same "
                  f"limit: exit code {in_memory['exit_code']} after "
                  f"{in_memory['seconds']:.1f} s, `{in_memory['error']}`"]
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1024",
                        help="corpus sizes in MiB (default 100,1024)")
    parser.add_argument("--runs", type=int, default=3, help="runs per case (median reported)")
    parser.add_argument("--suites", default="wordcount,sort")
    parser.add_argument("--extras", default=",".join(EXTRAS),
                        help=f"extra measurements ({', '.join(EXTRAS)}; '' for none)")
    parser.add_argument("--only", action="append", help="run only cases whose name has this")
    parser.add_argument("--no-peers", action="store_true", help="skip mrjob, Dask and Spark")
    parser.add_argument("--data", default=os.path.join(BENCH, "data"),
                        help="where corpora and scratch files go (default bench/data)")
    parser.add_argument("--results", default=None,
                        help="the results file (default bench/results.json, the published "
                             "one; with --smoke, smoke-results.json in --data)")
    parser.add_argument("--update", action="store_true",
                        help="keep the other results already in --results; replace only "
                             "the suites, sizes and extras of this run")
    parser.add_argument("--straggler-mib", type=float, default=100)
    parser.add_argument("--out-of-core-mib", type=float, default=OUT_OF_CORE_MIB)
    parser.add_argument("--show", action="store_true",
                        help="only print the tables of the --results file")
    parser.add_argument("--smoke", action="store_true",
                        help=f"{SMOKE_MIB} MiB, 1 run, no peers, tiny and straggler extras")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.runs, args.no_peers = str(SMOKE_MIB), 1, True
        args.extras, args.straggler_mib = "tiny,straggler", SMOKE_MIB
    if args.results is None:  # a smoke run never replaces the published results
        args.results = os.path.join(args.data, SMOKE_RESULTS) if args.smoke \
            else PUBLISHED_RESULTS
    args.sizes = [float(size) for size in args.sizes.split(",") if size]
    args.suites = [suite for suite in args.suites.split(",") if suite]
    args.extras = [extra for extra in args.extras.split(",") if extra]
    unknown = [name for name in args.suites if name not in SUITES] + \
              [name for name in args.extras if name not in EXTRAS]
    if unknown:
        parser.error(f"unknown suite or extra: {', '.join(unknown)}")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.show:
        with open(args.results) as handle:
            results = json.load(handle)
        print(table(results) + "\n" + extras_table(results["extras"]))
        return 0
    runner = Runner(args)
    if not args.update:  # --update keeps the reference outputs of earlier runs
        shutil.rmtree(runner.work, ignore_errors=True)
    os.makedirs(runner.work, exist_ok=True)
    for mib in args.sizes:
        for suite in args.suites:
            runner.say(f"{suite}, {mib:g} MiB")
            runner.run_suite(suite, mib)
            runner.save()
    for name in args.extras:
        runner.say(f"extra: {name}")
        runner.results["extras"][name] = EXTRAS[name](runner)
        runner.save()
    print(table(runner.results) + "\n" + extras_table(runner.results["extras"]))
    print(f"\nresults: {args.results}")
    for failure in runner.failures:
        print(f"FAILED: {failure}")
    return 1 if runner.failures else 0


if __name__ == "__main__":
    sys.exit(main())
