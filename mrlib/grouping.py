"""Grouping: merge sorted map output and cut it into the reducers' inputs.

Order is bytewise (`LC_ALL=C sort` of whole lines), so the concatenation of
the range partitions is exactly the sequential pipeline's sorted stream. A
key is the bytes before the first tab (the whole line if it has none).

Range partitions are contiguous byte ranges of the merged file, balanced by
size, cut only where no key can appear on both sides of the cut, so every
line of a key lands in exactly one file.
"""
import hashlib
import os
import re

from mrlib import runner

BACKWARD_CHUNK = 64 * 1024
COPY_CHUNK = 64 * 1024 * 1024
TAB = 0x09
# Bytes that sort at or below the tab. Whole-line order and key order agree
# except around them: "a", "a\x01", "a\tx" sort in that order, although the
# first and last share key "a". A cut is never placed where they could matter.
_LOW_BYTES = re.compile(rb"[\x00-\x09]")


def key_of(line):
    """The key of a line: bytes before the first tab, or the whole line."""
    line = line.rstrip(b"\n")
    tab = line.find(b"\t")
    return line if tab < 0 else line[:tab]


def is_safe_cut(previous, following):
    """True if no key can have lines both at or before `previous` and at or after `following`.

    Both are consecutive lines of a bytewise-sorted stream. Conservative: it
    may refuse a cut that would have been safe, never the reverse.
    """
    previous, following = previous.rstrip(b"\n"), following.rstrip(b"\n")
    if previous >= following:
        return False
    common = len(os.path.commonprefix([previous, following]))
    if _LOW_BYTES.search(following, 0, common):
        return False
    return common < len(following) and following[common] > TAB


def line_start(handle, position):
    """Offset of the first byte of the line that contains byte `position`."""
    end = position
    while end > 0:
        start = max(0, end - BACKWARD_CHUNK)
        handle.seek(start)
        chunk = handle.read(end - start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


def next_safe_cut(handle, target, size):
    """The first safe cut offset at or after `target` in a sorted file."""
    if target <= 0:
        return 0
    if target >= size:
        return size
    handle.seek(line_start(handle, target - 1))
    previous = handle.readline()
    position = handle.tell()
    while position < size:
        following = handle.readline()
        if position >= target and is_safe_cut(previous, following):
            return position
        previous = following
        position += len(following)
    return size


def find_cuts(path, parts):
    """Offsets [0, c1, …, size] splitting a sorted file into `parts` key ranges."""
    size = os.path.getsize(path)
    cuts = [0]
    with open(path, "rb") as handle:
        for number in range(1, parts):
            target = max(size * number // parts, cuts[-1])
            cuts.append(next_safe_cut(handle, target, size))
    cuts.append(size)
    return cuts


def copy_range(source, destination, start, end):
    """Copy bytes [start, end) of an open file into another, in the kernel."""
    offset = start
    while offset < end:
        count = min(COPY_CHUNK, end - offset)
        try:
            copied = os.copy_file_range(source.fileno(), destination.fileno(), count, offset)
        except OSError:
            copied = os.sendfile(destination.fileno(), source.fileno(), offset, count)
        if copied == 0:
            raise OSError(f"unexpected end of file at byte {offset}")
        offset += copied


def write_range_partitions(merged_path, output_paths):
    """Cut a sorted file into len(output_paths) contiguous key ranges."""
    cuts = find_cuts(merged_path, len(output_paths))
    with open(merged_path, "rb") as source:
        for number, path in enumerate(output_paths):
            tmp = runner.temp_path(path)
            with open(tmp, "wb") as destination:
                copy_range(source, destination, cuts[number], cuts[number + 1])
            os.replace(tmp, path)


def hash_partition(key, parts):
    """A stable partition for a key: md5, never Python's salted hash()."""
    return int.from_bytes(hashlib.md5(key).digest()[:8], "big") % parts


def write_hash_partitions(merged_path, output_paths):
    """Deal a sorted file's lines to files by hash of key, keeping sorted order."""
    tmps = [runner.temp_path(path) for path in output_paths]
    handles = [open(tmp, "wb") for tmp in tmps]
    try:
        with open(merged_path, "rb") as source:
            parts = len(handles)
            for line in source:
                handles[hash_partition(key_of(line), parts)].write(line)
    finally:
        for handle in handles:
            handle.close()
    for tmp, path in zip(tmps, output_paths):
        os.replace(tmp, path)


def partition_paths(directory, parts):
    """The spec's reducer inputs: directory/input_0 … input_{parts-1}."""
    return [os.path.join(directory, f"input_{number}") for number in range(parts)]


def merge_and_partition(sorted_paths, directory, parts, partitioner="range", guard=None):
    """Merge sorted files and write `parts` reducer inputs into `directory`."""
    outputs = partition_paths(directory, parts)
    if len(sorted_paths) == 1:
        merged, scratch = sorted_paths[0], None  # already one sorted stream
    else:
        merged = scratch = os.path.join(directory, "merged")
        runner.sort_files(sorted_paths, merged, merge=True, guard=guard)
    try:
        if partitioner == "hash":
            write_hash_partitions(merged, outputs)
        else:
            write_range_partitions(merged, outputs)
    finally:
        if scratch:
            os.unlink(scratch)
    return outputs
