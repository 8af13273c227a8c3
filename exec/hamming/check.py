#!/usr/bin/env python3
"""Hamming check map: SECDED code bytes in, a count of their errors out.

Writes three lines, `corrected<TAB>n` (code bytes with one flipped bit),
`detected<TAB>n` (two flipped bits) and `bytes<TAB>n` (code bytes read),
always all three; check_reduce.py sums them over the splits.  The two error
counts are also reported as counters.  Any split works (record_size 1 or 2).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hamming  # noqa: E402


def main():
    corrected = detected = length = 0
    for block in hamming.blocks():
        fixed, doubled = hamming.count_errors(block)
        corrected, detected, length = corrected + fixed, detected + doubled, length + len(block)
    sys.stdout.buffer.write(b"corrected\t%d\ndetected\t%d\nbytes\t%d\n"
                            % (corrected, detected, length))
    hamming.report_counter("corrected", corrected)
    hamming.report_counter("detected", detected)


if __name__ == "__main__":
    main()
