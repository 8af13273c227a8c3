#!/usr/bin/env python3
"""Word count map with an in-mapper combiner: `word<TAB>count` per distinct word.

Counts the whitespace-separated words of stdin in a dict and prints them
all at the end, unsorted: pipe it through `LC_ALL=C sort | reduce.py`.
Bytes in, bytes out, like exec/word_count/map.py.
"""
import collections
import sys


def main():
    counts = collections.Counter()
    for line in sys.stdin.buffer:
        counts.update(line.split())
    out = sys.stdout.buffer
    for word, count in counts.items():
        out.write(b"%s\t%d\n" % (word, count))


if __name__ == "__main__":
    main()
