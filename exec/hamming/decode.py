#!/usr/bin/env python3
"""Hamming decode: SECDED code bytes in, the original bytes out.

Every pair of code bytes gives one byte; a single flipped bit in a code byte
is corrected, a double one is detected and its data bits are used as read.
An odd input length is not an encoding: the program says so on stderr and
exits 1.  As a map-only job the splits must hold whole pairs (record_size 2).
The numbers of corrected and detected code bytes are reported as counters.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hamming  # noqa: E402


def main():
    out = sys.stdout.buffer
    corrected = detected = length = 0
    pending = b""  # an odd byte left over from the previous block
    for block in hamming.blocks():
        length += len(block)
        block = pending + block if pending else block
        pending = b""
        if len(block) % 2:
            pending, block = block[-1:], block[:-1]
        fixed, doubled = hamming.count_errors(block)
        corrected, detected = corrected + fixed, detected + doubled
        out.write(hamming.decode(block))
    hamming.report_counter("corrected", corrected)
    hamming.report_counter("detected", detected)
    if pending:
        sys.stderr.write(f"decode.py: the input has an odd length ({length} bytes); an "
                         "encoding has two code bytes per original byte\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
