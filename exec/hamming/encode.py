#!/usr/bin/env python3
"""Hamming encode: raw bytes in, SECDED code bytes out (two per input byte).

Each input byte becomes code(high nibble), code(low nibble); see hamming.py
and exec/README.md for the bit layout.  Any input length works, so as a
map-only job it takes any split (record_size 1); the outputs of the splits,
concatenated in split order, are the encoding of the whole file.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hamming  # noqa: E402


def main():
    out = sys.stdout.buffer
    for block in hamming.blocks():
        out.write(hamming.encode(block))


if __name__ == "__main__":
    main()
