#!/usr/bin/env python3
"""Word count map: one `word<TAB>1` line per whitespace-separated word.

Bytes in, bytes out: any encoding passes through untouched.
"""
import sys


def main():
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        for word in line.split():
            out.write(word + b"\t1\n")


if __name__ == "__main__":
    main()
