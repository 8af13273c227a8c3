"""The names of a job's files, in one place: what the master writes and what clients look for.

input_N    a reduce partition, and the reducer output made from it (the spec's names)
sorted_N   the group phase's N-th sorted run
NNNNNN_X   a split or a map-only output, by its position among the job's inputs
BASE_NN    an output under --output-base
"""
import os
import re

# How a set of names is recognised again (mrlib/outputdir.py, collect.py);
# group 1 is the index.
PARTITION_PATTERN = r"input_(\d+)"
POSITIONAL_PATTERN = r"(\d{6})_.+"
POSITION_DIGITS = 6
BASE_MIN_DIGITS = 2


def partition(number):
    return f"input_{number}"


def partition_paths(directory, parts):
    """The spec's reducer inputs: directory/input_0 … input_{parts-1}."""
    return [os.path.join(directory, partition(number)) for number in range(parts)]


def sorted_run(number):
    return f"sorted_{number}"


def positional(index, source):
    """A split's or a map-only output's name: every sort of the names gives the job's order."""
    return f"{index:0{POSITION_DIGITS}d}_{os.path.basename(source)}"


def based(base, count):
    """--output-base names for `count` outputs: BASE_00, BASE_01, …"""
    width = max(BASE_MIN_DIGITS, len(str(count - 1)))
    return [f"{base}_{number:0{width}d}" for number in range(count)]


def based_pattern(base):
    return re.escape(base) + r"_(\d+)"
