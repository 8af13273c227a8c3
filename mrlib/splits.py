"""Cut a job's input files into splits of about `split_size` bytes.

Line-oriented data is cut just after a newline, so a split holds whole lines
(a line longer than the split size stays whole, in a split of its own). With
a `record_size`, the data is fixed-size binary records and every cut falls on
a record boundary. A split covering a whole file is a symbolic link to it;
others are copied in the kernel (copy_file_range), so splitting costs no
Python work per byte.
"""
import dataclasses
import os

from mrlib import grouping, names

# A job whose splits would outnumber this is refused: one task per split, and
# millions of tasks means the split size is a mistake (e.g. bytes for MB).
MAX_SPLITS = 100_000
SCAN_CHUNK = 1 << 16


class TooManySplits(Exception):
    """The split size would make an unreasonable number of tasks."""


@dataclasses.dataclass
class Split:
    source: str   # the input file it comes from
    index: int    # its place among all the job's splits
    start: int    # byte offset in `source`
    length: int
    path: str = None  # the file a task reads

    @property
    def name(self):
        return names.positional(self.index, self.source)

    def environment(self, task_number):
        """The Hadoop Streaming variables that tell a program what it reads."""
        return {"mapreduce_map_input_file": self.source,
                "mapreduce_map_input_start": str(self.start),
                "mapreduce_map_input_length": str(self.length),
                "mapreduce_task_partition": str(task_number),
                "mr_split_index": str(self.index)}


def next_line_end(handle, position, size):
    """Offset just past the first newline at or after `position` (or `size`)."""
    handle.seek(position)
    while position < size:
        chunk = handle.read(SCAN_CHUNK)
        newline = chunk.find(b"\n")
        if newline >= 0:
            return position + newline + 1
        position += len(chunk)
    return size


def line_ranges(path, split_size):
    """(start, end) ranges of about split_size bytes, each ending a line."""
    size = os.path.getsize(path)
    ranges, start = [], 0
    with open(path, "rb") as handle:
        while start < size:
            target = start + split_size
            end = size if target >= size else next_line_end(handle, target - 1, size)
            ranges.append((start, end))
            start = end
            _check_count(len(ranges))
    return ranges


def record_ranges(path, split_size, record_size):
    """(start, end) ranges of whole records, about split_size bytes each."""
    size = os.path.getsize(path)
    step = max(record_size, split_size // record_size * record_size)
    _check_count(-(-size // step))
    return [(start, min(start + step, size)) for start in range(0, size, step)]


def _check_count(count):
    if count > MAX_SPLITS:
        raise TooManySplits(f"the split size makes more than {MAX_SPLITS} splits")


def plan(files, split_size, record_size=None):
    """The splits of `files`, in order, without touching the data."""
    splits = []
    for source in files:
        if record_size:
            ranges = record_ranges(source, split_size, record_size)
        else:
            ranges = line_ranges(source, split_size)
        for start, end in ranges or [(0, 0)]:
            splits.append(Split(source, len(splits), start, end - start))
            _check_count(len(splits))
    return splits


def materialize(splits, directory):
    """Create each split's file in `directory`; set and return their paths."""
    os.makedirs(directory, exist_ok=True)
    sizes = {}
    for split in splits:
        split.path = os.path.join(directory, split.name)
        size = sizes.setdefault(split.source, os.path.getsize(split.source))
        if split.start == 0 and split.length == size:
            os.symlink(os.path.abspath(split.source), split.path)
            continue
        with open(split.source, "rb") as source, open(split.path, "wb") as destination:
            grouping.copy_range(source, destination, split.start, split.start + split.length)
    return splits
