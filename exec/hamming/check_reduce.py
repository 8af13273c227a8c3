#!/usr/bin/env python3
"""Hamming check reduce: sum the counts of each run of equal keys (sorted input).

Reads check.py's `key<TAB>n` lines sorted by key and writes one `key<TAB>total`
line per key, in input order: `bytes`, `corrected`, `detected` after a
bytewise sort.  Reports no counters (the map already did).
"""
import itertools
import sys


def key_and_count(line):
    key, _, count = line.rstrip(b"\n").partition(b"\t")
    return key, int(count or 0)


def main():
    out = sys.stdout.buffer
    pairs = map(key_and_count, sys.stdin.buffer)
    for key, group in itertools.groupby(pairs, key=lambda pair: pair[0]):
        out.write(b"%s\t%d\n" % (key, sum(count for _, count in group)))


if __name__ == "__main__":
    main()
