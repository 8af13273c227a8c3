#!/usr/bin/env python3
"""What the built-in counters cost: the same jobs on this tree and on a tree without them.

    python3 bench/counters_cost.py [--baseline COMMIT] [--rounds N] [--sizes 100,1024]

Checks COMMIT (by default the last commit before the counters) out into a
scratch git worktree, then runs each job with bench/cluster_run.py from both
trees, alternating which goes first each round, on the corpus of
bench/data/words-<SIZE>MiB (bench/run.py makes it). Prints one line per job
with the median job time of each tree and their ratio (this tree / baseline),
and the counters this tree reported. The worktree is removed at the end.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
BASELINE = "5a8764d"  # the last commit before the built-in counters
WORD_COUNT = ["--mapper", "exec/word_count/map.py", "--reducer", "exec/word_count/reduce.py"]
JOBS = {
    "word count": WORD_COUNT + ["--mappers", "8", "--reducers", "2"],
    "word count, --combiner": WORD_COUNT + ["--combiner", "exec/word_count/reduce.py",
                                            "--mappers", "8", "--reducers", "2"],
}


def run_job(tree, job, size, scratch):
    """One job on a fresh cluster of `tree`; (job seconds, counters)."""
    corpus = os.path.join(BENCH, "data", f"words-{size}MiB")
    programs = [os.path.join(tree, a) if a.startswith("exec/") else a for a in job]
    output = tempfile.mkdtemp(dir=scratch)
    os.rmdir(output)
    result = subprocess.run(
        [sys.executable, os.path.join(tree, "bench", "cluster_run.py"), "--scratch", scratch,
         "--", "--input", corpus, "--output", output, *programs],
        cwd=tree, capture_output=True, check=True)
    subprocess.run(["rm", "-rf", output], check=True)
    report = json.loads(result.stdout.decode().strip().splitlines()[-1])
    return report["job_seconds"], report["counters"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="100")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.path.join(BENCH, "data")) as scratch:
        baseline = os.path.join(scratch, "baseline")
        subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", "-q", baseline,
                        args.baseline], check=True)
        try:
            for size in map(int, args.sizes.split(",")):
                for name, job in JOBS.items():
                    times = {"counted": [], "baseline": []}
                    counters = None
                    for number in range(args.rounds):
                        order = ("counted", "baseline") if number % 2 else ("baseline", "counted")
                        for tree in order:
                            seconds, reported = run_job(REPO if tree == "counted" else baseline,
                                                        job, size, scratch)
                            times[tree].append(seconds)
                            counters = reported if tree == "counted" else counters
                    counted, base = (statistics.median(times[t]) for t in ("counted", "baseline"))
                    print(json.dumps({"job": name, "size_mib": size, "counted_s": counted,
                                      "baseline_s": base, "ratio": round(counted / base, 3),
                                      "times": times, "counters": counters}), flush=True)
        finally:
            subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", baseline])


if __name__ == "__main__":
    main()
