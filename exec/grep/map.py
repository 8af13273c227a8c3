#!/usr/bin/env python3
"""Grep map: print the lines that match the regular expression GREP_PATTERN.

The pattern is a Python bytes regex read from the environment (a job's
`env`, e.g. `send_job.py --env GREP_PATTERN=error`); default: "MapReduce".
"""
import os
import re
import sys

DEFAULT_PATTERN = "MapReduce"


def main():
    pattern = re.compile(os.fsencode(os.environ.get("GREP_PATTERN", DEFAULT_PATTERN)))
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        if pattern.search(line):
            out.write(line if line.endswith(b"\n") else line + b"\n")


if __name__ == "__main__":
    main()
