#!/usr/bin/env python3
"""How close a Python job's map can come to a hand-written combining map.

    python3 bench/pyjob_floor.py [--mib 64] [--rounds 5] [--data FILE]

Times, in this process and on the same lines of the words corpus (by default
the first 64 MiB of bench/data/words-1024MiB/part-000, or of a file made for
it by bench/gen_corpus.py when that is missing), the CPU each of these
takes over the whole input, each round running them all in turn, and prints
each one's best time and its ratio to the first:

- *in-mapper executable*: what bench/programs/wc_map_combining.py does, a
  Counter updated with each line's words (bytes, nothing decoded);
- *generator only*: the input decoded in mrlib.pyjob's batches and word
  count's `mapper` run over it, its pairs thrown away: what any Python job
  pays before it does anything with a pair;
- *floor*: the same, the pairs' keys counted by C code (a Counter fed through
  `map`), nothing checked, nothing written: no runner that calls the mapper
  per line and looks at its pairs can be faster;
- *Python job map*: mrlib.pyjob.run_map of the WordCount job with its
  combiner, output to /dev/null: what a task runs.
"""
import argparse
import collections
import contextlib
import io
import itertools
import operator
import os
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(BENCH), os.path.join(BENCH, "programs")]
from mrlib import pyjob  # noqa: E402
import wc_job  # noqa: E402

CORPUS = os.path.join(BENCH, "data", "words-1024MiB", "part-000")


def words_file(mib):
    """A file of the words corpus of about `mib` MiB (bench/gen_corpus.py), made once."""
    directory = os.path.join(BENCH, "data", f"words-floor-{mib:g}MiB")
    if not os.path.exists(os.path.join(directory, "part-000")):
        subprocess.run([sys.executable, os.path.join(BENCH, "gen_corpus.py"), "words",
                        str(mib), directory, "--files", "1"], check=True)
    return os.path.join(directory, "part-000")


def in_mapper_executable(data):
    counts = collections.Counter()
    for line in io.BytesIO(data):
        counts.update(line.split())


def mapped(data):
    """The mapper's pairs, batch by batch, as the map program makes them."""
    job = wc_job.WordCount()
    for lines in pyjob.line_batches(io.BufferedReader(io.BytesIO(data))):
        yield itertools.chain.from_iterable(map(job.mapper, itertools.repeat(None), lines))


def generator_only(data):
    for pairs in mapped(data):
        collections.deque(pairs, 0)


def floor(data):
    counts = collections.Counter()
    for pairs in mapped(data):
        counts.update(map(operator.itemgetter(0), pairs))


def python_job_map(data):
    with open(os.devnull, "wb") as out, contextlib.redirect_stderr(io.StringIO()):  # counters
        pyjob.run_map(wc_job.WordCount(), io.BufferedReader(io.BytesIO(data)), out)


CASES = {"in-mapper executable": in_mapper_executable, "generator only": generator_only,
         "floor: keys counted in C, nothing checked": floor,
         "Python job map (combiner)": python_job_map}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data", help="a file of words (default: the first file of "
                        "bench/data/words-1024MiB, else one made for the run)")
    args = parser.parse_args()
    if args.data is None:
        args.data = CORPUS if os.path.exists(CORPUS) else words_file(args.mib)
    with open(args.data, "rb") as handle:
        data = handle.read(int(args.mib * 1024 * 1024))
    data = data[:data.rfind(b"\n") + 1]
    pyjob.collect_cycles_seldom()  # as the map program does
    times = collections.defaultdict(list)
    for _ in range(args.rounds):
        for name, case in CASES.items():
            started = time.process_time()
            case(data)
            times[name].append(time.process_time() - started)
    first = min(times[next(iter(CASES))])
    print(f"{len(data) / 2 ** 20:.0f} MiB, best of {args.rounds} rounds (CPU seconds)")
    for name in CASES:
        best = min(times[name])
        print(f"| {name} | {best:.2f} | {best / first:.2f}× |")


if __name__ == "__main__":
    main()
