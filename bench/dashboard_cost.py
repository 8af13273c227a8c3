#!/usr/bin/env python3
"""What watching the dashboard costs a job: the same jobs with and without a browser polling it.

    python3 bench/dashboard_cost.py [--rounds 10] [--data bench/data] [--no-browser]

One cluster (a master with --http-port and 2 workers). In interleaved rounds,
the sample job (submit to finished, send_job --wait as a whole process) runs
alone and with a poller loading /, /api/jobs and the job's page every second;
then the 2,000-map-task job once each way, with the master's CPU seconds. The
poller is headless Chromium through selenium when both are installed (the
pages and their SVG rendered for real), else (or with --no-browser: the
master's own cost, without a browser's on the same cores) plain HTTP. Prints
one JSON object.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

from support.localcluster import LocalCluster, cpu_seconds, free_port  # noqa: E402

import run as bench_run  # noqa: E402

POLL_SECONDS = 1.0
SAMPLE = os.path.join(REPO, "input", "sample1")
CAT = shutil.which("cat")


class Poller:
    """Loads the dashboard's pages every POLL_SECONDS until stopped."""

    def __init__(self, port, driver):
        self.base = f"http://localhost:{port}"
        self.stopping = threading.Event()
        self.loads = 0
        self.browser = driver  # started once, before any timing: a user's is open already
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stopping.wait(POLL_SECONDS):
            jobs = json.load(urllib.request.urlopen(f"{self.base}/api/jobs", timeout=10))["jobs"]
            paths = ["/"] + [f"/jobs/{max(j['job_id'] for j in jobs)}"] if jobs else ["/"]
            for path in paths:
                if self.browser is not None:
                    self.browser.get(self.base + path)
                else:
                    urllib.request.urlopen(self.base + path, timeout=10).read()
                self.loads += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.thread.join()


def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        return None
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='dashboard-bench-')}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def timed(cluster, *args):
    began = time.monotonic()
    subprocess.run([sys.executable, os.path.join(REPO, "send_job.py"), str(cluster.port),
                    *map(str, args), "--wait", "--quiet"], cwd=cluster.workdir, check=True,
                   stdout=subprocess.DEVNULL)
    return time.monotonic() - began


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--data", default=os.path.join(BENCH, "data"))
    parser.add_argument("--no-browser", action="store_true",
                        help="poll over plain HTTP even if Chromium is installed")
    args = parser.parse_args()
    os.makedirs(args.data, exist_ok=True)
    scale_input = os.path.join(args.data, f"tiny-{bench_run.SCALE_TASKS}")
    with tempfile.TemporaryDirectory(dir=args.data) as scratch:
        if not os.path.isdir(scale_input):
            os.makedirs(scale_input)
            for number in range(bench_run.SCALE_TASKS):
                with open(os.path.join(scale_input, f"f{number:05d}"), "wb") as handle:
                    handle.write(b"line %d\n" % number)
        cluster = LocalCluster(scratch)
        http_port = free_port()
        cluster.start_master(extra=("--http-port", http_port))
        cluster.start_workers(2)
        out = iter(range(10 ** 6))
        driver = None if args.no_browser else browser()
        if driver is not None:
            driver.get(f"http://localhost:{http_port}/")  # warm: its start is not measured
        try:
            sample = {"alone": [], "watched": []}
            for number in range(args.rounds):
                for mode in (("alone", "watched") if number % 2 else ("watched", "alone")):
                    output = os.path.join(scratch, f"o{next(out)}")
                    if mode == "alone":
                        sample[mode].append(timed(cluster, "--output", output))
                    else:
                        with Poller(http_port, driver):
                            sample[mode].append(timed(cluster, "--output", output))
            scale = {}
            for mode in ("alone", "watched"):
                before = cpu_seconds(cluster.master.pid)[0]
                options = ["--input", scale_input, "--mappers", bench_run.SCALE_TASKS,
                           "--mapper", CAT, "--reducer", CAT, "--output",
                           os.path.join(scratch, f"o{next(out)}")]
                if mode == "alone":
                    seconds = timed(cluster, *options)
                else:
                    with Poller(http_port, driver) as poller:
                        seconds = timed(cluster, *options)
                    scale["page loads while watched"] = poller.loads
                scale[mode] = {"seconds": round(seconds, 2),
                               "tasks_per_second": round(bench_run.SCALE_TASKS / seconds, 1),
                               "master_cpu_seconds":
                                   round(cpu_seconds(cluster.master.pid)[0] - before, 2)}
        finally:
            if driver is not None:
                driver.quit()
            cluster.stop()
    print(json.dumps({
        "poller": "headless Chromium" if driver is not None else "HTTP",
        "sample_job_seconds": {mode: {"median": round(statistics.median(v), 3),
                                      "runs": [round(x, 3) for x in v]}
                               for mode, v in sample.items()},
        "scale_2000_tasks": scale}, indent=2))


if __name__ == "__main__":
    main()
