#!/usr/bin/env python3
"""Write a deterministic benchmark corpus.

    python3 bench/gen_corpus.py words SIZE_MIB OUT_DIR [--files N] [--jobs J]
    python3 bench/gen_corpus.py records SIZE_MIB OUT_DIR [--files N] [--jobs J]

words: Zipf-distributed words (s = 1.1 over a 100,000-word vocabulary),
lines of about 10 words. records: 100-byte sort records (10-byte random
printable key, a space, an 88-byte payload, a newline), as in TeraSort.
The same arguments always give the same bytes, whatever --jobs (files are
written by J processes in parallel, each file from its own seeded generator).
"""
import argparse
import functools
import itertools
import multiprocessing
import os
import random

VOCABULARY = 100_000
ZIPF_S = 1.1
WORDS_PER_LINE = 10
RECORD_KEY = 10
RECORD_SIZE = 100
PRINTABLE = bytes(range(33, 127))
MIB = 1 << 20


def vocabulary(rng):
    words = set()
    while len(words) < VOCABULARY:
        length = rng.randint(2, 12)
        words.add(bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(length)))
    return sorted(words)


def word_lines(rng, size):
    # One vocabulary and one Zipf ranking for the whole corpus, whatever the file.
    words = vocabulary(random.Random("words:vocabulary"))
    random.Random("words:ranking").shuffle(words)
    weights = list(itertools.accumulate(1 / (rank ** ZIPF_S) for rank in range(1, VOCABULARY + 1)))
    written = 0
    while written < size:
        picks = rng.choices(words, cum_weights=weights, k=WORDS_PER_LINE * 100)
        block = b"\n".join(b" ".join(picks[i:i + WORDS_PER_LINE])
                           for i in range(0, len(picks), WORDS_PER_LINE)) + b"\n"
        written += len(block)
        yield block


def record_lines(rng, size):
    written = 0
    while written < size:
        block = bytearray()
        for _ in range(1000):
            key = bytes(rng.choice(PRINTABLE) for _ in range(RECORD_KEY))
            block += key + b" " + rng.randbytes(44).hex().encode() + b"\n"
        written += len(block)
        yield bytes(block)


def write_file(kind, per_file, out_dir, number):
    """Write file `number` of the corpus: its bytes depend only on kind, size and number."""
    rng = random.Random(f"{kind}:{number}")
    generate = word_lines if kind == "words" else record_lines
    with open(os.path.join(out_dir, f"part-{number:03d}"), "wb") as out:
        for block in generate(rng, per_file):
            out.write(block)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("words", "records"))
    parser.add_argument("size_mib", type=float)
    parser.add_argument("out_dir")
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="files written in parallel (default: one per core)")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    per_file = int(args.size_mib * MIB) // args.files
    write = functools.partial(write_file, args.kind, per_file, args.out_dir)
    with multiprocessing.Pool(max(1, args.jobs)) as pool:
        pool.map(write, range(args.files), chunksize=1)


if __name__ == "__main__":
    main()
