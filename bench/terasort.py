#!/usr/bin/env python3
"""TeraSort: binary 100-byte records with a 10-byte key, sorted by the cluster.

    python3 bench/terasort.py                      # 100 MiB and 1 GiB, 3 runs each
    python3 bench/terasort.py --sizes 100 --runs 1

The records are random bytes, so about one in three holds a newline and most
hold a tab. The cluster (master and 2 workers, bench/cluster_run.py) sorts
them with `--record-size 100 --key-size 10`, cat as map and reduce, and
collect.py joins the partitions. The reference is `LC_ALL=C sort
--parallel=2` over the same number of 100-byte records written as text lines
(99 printable bytes and a newline), the work sort would do if the records
were lines. Runs alternate between the cases, and the ratio is the median
of the ratios of runs taken in the same round.

Every cluster output is checked: as many records as the input, each at or
after the one before, and the same multiset (a sum of the records' hashes).
"""
import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
MIB = 1 << 20
RECORD, KEY = 100, 10
FILES = 8
REDUCERS = 2
SPLIT_BYTES = 64 * MIB // RECORD * RECORD
CHECK_CHUNK = 4 * MIB // RECORD * RECORD
HASH_MODULUS = 1 << 64


def records_per_file(mib):
    return int(mib * MIB) // RECORD // FILES


def generate(directory, mib, text):
    """FILES files of random records (binary, or as 100-byte text lines); made once."""
    marker = os.path.join(directory, ".complete")
    if os.path.exists(marker):
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    table = bytes(32 + n % 95 for n in range(256))  # any byte to a printable one
    for number in range(FILES):
        rng = random.Random(f"terasort:{number}")
        with open(os.path.join(directory, f"part-{number}"), "wb") as out:
            left = records_per_file(mib)
            while left:
                count = min(left, CHECK_CHUNK // RECORD)
                data = rng.randbytes(count * RECORD)
                if text:
                    data = b"".join(data[start:start + RECORD - 1].translate(table) + b"\n"
                                    for start in range(0, len(data), RECORD))
                out.write(data)
                left -= count
    open(marker, "w").close()
    return directory


def fingerprint(paths):
    """(records, sum of their hashes mod 2**64, sorted?) of files read in order."""
    count, total, previous, ordered = 0, 0, b"", True
    for path in paths:
        with open(path, "rb") as handle:
            while data := handle.read(CHECK_CHUNK):
                for start in range(0, len(data), RECORD):
                    record = data[start:start + RECORD]
                    ordered = ordered and record >= previous
                    previous = record
                    total += int.from_bytes(hashlib.blake2b(record, digest_size=8).digest(),
                                            "big")
                count += len(data) // RECORD
    return count, total % HASH_MODULUS, ordered


def timed(command):
    started = time.perf_counter()
    result = subprocess.run(command, shell=True, executable="/bin/bash",
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if result.returncode:
        raise RuntimeError(f"{command} failed: {result.stderr.decode()[-800:]}")
    return time.perf_counter() - started


def run_sort(text_dir, scratch):
    out = os.path.join(scratch, "sorted.txt")
    seconds = timed(f"LC_ALL=C sort --parallel=2 -T {scratch} {text_dir}/* > {out}")
    os.unlink(out)
    return seconds


def run_cluster(binary_dir, scratch, expected):
    """Sort on a fresh cluster; the job's and collect's seconds (as bench/run.py counts)."""
    report, collected = os.path.join(scratch, "report.json"), os.path.join(scratch, "all.bin")
    timed(f"{sys.executable} {BENCH}/cluster_run.py --report {report} --collect {collected} "
          f"-- --input {binary_dir} --output {scratch}/out --overwrite --mappers {FILES} "
          f"--reducers {REDUCERS} --record-size {RECORD} --key-size {KEY} "
          f"--split-size {SPLIT_BYTES} --mapper /bin/cat --reducer /bin/cat")
    with open(report) as handle:
        measured = json.load(handle)
    found = fingerprint([collected])
    if found != expected:
        raise RuntimeError(f"the cluster's output is wrong: {found} != {expected}")
    shutil.rmtree(os.path.join(scratch, "out"))
    os.unlink(collected)
    return measured["job_seconds"] + measured["collect_seconds"], measured


def measure(args, mib):
    data = os.path.join(args.data, "terasort")
    binary = generate(os.path.join(data, f"binary-{mib:g}MiB"), mib, text=False)
    text = generate(os.path.join(data, f"text-{mib:g}MiB"), mib, text=True)
    files = sorted(os.path.join(binary, n) for n in os.listdir(binary) if not n.startswith("."))
    count, total, _ = fingerprint(files)
    expected = (count, total, True)
    scratch = os.path.join(data, "scratch")
    rows = {"sort": [], "cluster": [], "phases": []}
    for number in range(args.runs):
        for name in ("sort", "cluster"):
            shutil.rmtree(scratch, ignore_errors=True)
            os.makedirs(scratch)
            if name == "sort":
                rows["sort"].append(run_sort(text, scratch))
            else:
                seconds, report = run_cluster(binary, scratch, expected)
                rows["cluster"].append(seconds)
                rows["phases"].append(report.get("phases"))
            print(f"  {mib:g} MiB {name} run {number + 1}: {rows[name][-1]:.2f} s",
                  file=sys.stderr, flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    ratios = [c / s for c, s in zip(rows["cluster"], rows["sort"])]
    return {"size_mib": mib, "records": count, "sort_seconds": rows["sort"],
            "cluster_seconds": rows["cluster"], "cluster_phases": rows["phases"],
            "sort_median": round(statistics.median(rows["sort"]), 2),
            "cluster_median": round(statistics.median(rows["cluster"]), 2),
            "ratio": round(statistics.median(ratios), 2)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[100, 1024])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data", default=os.path.join(BENCH, "data"))
    parser.add_argument("--results", default=os.path.join(BENCH, "terasort.json"))
    args = parser.parse_args(argv)
    results = [measure(args, mib) for mib in args.sizes]
    with open(args.results, "w") as handle:
        json.dump(results, handle, indent=1)
        handle.write("\n")
    print("| records | LC_ALL=C sort --parallel=2 (text lines) | cluster, 2 workers | ratio |")
    print("|---|---|---|---|")
    for row in results:
        print(f"| {row['size_mib']:g} MiB ({row['records']:,}) | {row['sort_median']} s "
              f"| {row['cluster_median']} s | {row['ratio']}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
