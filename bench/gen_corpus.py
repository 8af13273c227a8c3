#!/usr/bin/env python3
"""Write a deterministic benchmark corpus.

    python3 bench/gen_corpus.py words SIZE_MIB OUT_DIR [--files N]
    python3 bench/gen_corpus.py records SIZE_MIB OUT_DIR [--files N]

words: Zipf-distributed words (s = 1.1 over a 100,000-word vocabulary),
lines of about 10 words. records: 100-byte sort records (10-byte random
printable key, a space, an 88-byte payload, a newline), as in TeraSort.
The same arguments always give the same bytes.
"""
import argparse
import bisect
import itertools
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
    words = vocabulary(rng)
    rng.shuffle(words)
    weights = list(itertools.accumulate(1 / (rank ** ZIPF_S) for rank in range(1, VOCABULARY + 1)))
    total = weights[-1]
    written = 0
    while written < size:
        picks = [words[bisect.bisect(weights, rng.random() * total)] for _ in range(WORDS_PER_LINE * 100)]
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("words", "records"))
    parser.add_argument("size_mib", type=float)
    parser.add_argument("out_dir")
    parser.add_argument("--files", type=int, default=8)
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    per_file = int(args.size_mib * MIB) // args.files
    generate = word_lines if args.kind == "words" else record_lines
    for number in range(args.files):
        rng = random.Random(f"{args.kind}:{number}")
        with open(os.path.join(args.out_dir, f"part-{number:03d}"), "wb") as out:
            for block in generate(rng, per_file):
                out.write(block)


if __name__ == "__main__":
    main()
