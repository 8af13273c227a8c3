#!/usr/bin/env python3
"""Word count reduce: sum the counts of each run of equal keys (sorted input)."""
import itertools
import sys


def key_and_count(line):
    key, _, count = line.rstrip(b"\n").partition(b"\t")
    return key, int(count or 1)


def main():
    out = sys.stdout.buffer
    pairs = map(key_and_count, sys.stdin.buffer)
    for key, group in itertools.groupby(pairs, key=lambda pair: pair[0]):
        out.write(b"%s\t%d\n" % (key, sum(count for _, count in group)))


if __name__ == "__main__":
    main()
