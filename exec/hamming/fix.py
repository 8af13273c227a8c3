#!/usr/bin/env python3
"""Hamming fix: SECDED code bytes in, the same bytes with single-bit errors corrected out.

Each code byte stands alone, so any split works (record_size 1 or 2) and the
output has the input's length.  Code bytes with a double-bit error cannot be
corrected: they are left as they are and counted.  The numbers of corrected
and detected code bytes are reported as counters.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hamming  # noqa: E402


def main():
    out = sys.stdout.buffer
    corrected = detected = 0
    for block in hamming.blocks():
        fixed, doubled = hamming.count_errors(block)
        corrected, detected = corrected + fixed, detected + doubled
        out.write(hamming.fix(block))
    hamming.report_counter("corrected", corrected)
    hamming.report_counter("detected", detected)


if __name__ == "__main__":
    main()
