#!/usr/bin/env python3
"""Hamming error injection: code bytes in, the same bytes with bits flipped out, reproducibly.

Each byte independently gets a single-bit flip with probability
HAMMING_ERROR_RATE (default 0.001), else a double-bit flip with probability
HAMMING_DOUBLE_RATE (default 0), else nothing.  The choices depend only on
HAMMING_SEED (default 0) and the byte's offset in the whole file, which is
this split's offset `mapreduce_map_input_start` (default 0) plus its offset in
stdin: the file's offsets are cut into aligned blocks of 4096, and each block's
flips come from random.Random(f"{seed}:{block}"), so any split of the file
gets the same flips.  The numbers of flips are reported as counters.
"""
import math
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hamming  # noqa: E402

FLIP_BLOCK = 4096           # offsets that share one random generator
CHUNK = 256 * FLIP_BLOCK    # bytes read at a time, aligned on file offsets


class Settings:
    """The job's settings, read from the environment and checked."""

    def __init__(self, environ):
        self.single = rate(environ, "HAMMING_ERROR_RATE", 0.001)
        self.double = rate(environ, "HAMMING_DOUBLE_RATE", 0.0)
        if self.single + self.double > 1:
            fail("HAMMING_ERROR_RATE + HAMMING_DOUBLE_RATE must be at most 1")
        self.seed = environ.get("HAMMING_SEED", "0")
        self.start = offset(environ, "mapreduce_map_input_start")


def rate(environ, name, default):
    text = environ.get(name, "")
    try:
        value = float(text) if text.strip() else default
    except ValueError:
        fail(f"{name} must be a probability, got {text!r}")
    if not 0 <= value <= 1:
        fail(f"{name} must be between 0 and 1, got {text!r}")
    return value


def offset(environ, name):
    text = environ.get(name, "")
    if not text.strip():
        return 0
    if not text.strip().isdigit():
        fail(f"{name} must be a byte offset (a whole number >= 0), got {text!r}")
    return int(text)


def fail(message):
    sys.stderr.write(f"error.py: {message}\n")
    sys.exit(1)


def block_flips(settings, block):
    """[(offset in block, XOR mask)] of one aligned block, from its own generator."""
    chance = settings.single + settings.double
    if chance <= 0:
        return []
    rng = random.Random(f"{settings.seed}:{block}")
    flips = []
    for position in hits(rng, chance):
        if settings.double and rng.random() * chance < settings.double:
            first, second = rng.sample(range(8), 2)
            flips.append((position, 1 << first | 1 << second))
        else:
            flips.append((position, 1 << rng.randrange(8)))
    return flips


def hits(rng, chance):
    """The offsets 0..FLIP_BLOCK-1 hit, each with probability `chance` (geometric gaps)."""
    if chance >= 1:
        yield from range(FLIP_BLOCK)
        return
    log_miss = math.log1p(-chance)
    position = -1
    while True:
        gap = math.log(1.0 - rng.random()) / log_miss  # misses before the next hit
        if gap >= FLIP_BLOCK:
            return
        position += int(gap) + 1
        if position >= FLIP_BLOCK:
            return
        yield position


def chunks(start):
    """(file offset, bytes) of stdin, cut so chunks after the first start on CHUNK boundaries."""
    stream = sys.stdin.buffer
    size = CHUNK - start % CHUNK
    while True:
        data = stream.read(size)
        if not data:
            return
        yield start, data
        start += len(data)
        size = CHUNK - start % CHUNK


def main():
    settings = Settings(os.environ)
    out = sys.stdout.buffer
    injected = {1: 0, 2: 0}  # by number of bits flipped
    for start, data in chunks(settings.start):
        data = bytearray(data)
        end = start + len(data)
        for block in range(start // FLIP_BLOCK, (end - 1) // FLIP_BLOCK + 1):
            base = block * FLIP_BLOCK
            for position, mask in block_flips(settings, block):
                if start <= base + position < end:
                    data[base + position - start] ^= mask
                    injected[bin(mask).count("1")] += 1
        out.write(data)
    hamming.report_counter("injected_single", injected[1])
    hamming.report_counter("injected_double", injected[2])


if __name__ == "__main__":
    main()
