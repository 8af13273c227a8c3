"""Grouping: cut sorted map output into the reducers' inputs.

Order is bytewise (`LC_ALL=C sort` of whole lines), so the concatenation of
the range partitions is exactly the sequential pipeline's sorted stream. A
key is the bytes before the first tab (the whole line if it has none).

Range partitions are separated by boundary keys: partition x holds the lines
that sort before boundary x and at or after boundary x-1. A boundary is the
key of some line, chosen so the partitions are balanced by size. Every line
of a key lands in one partition provided the boundary has no byte at or below
the tab: then a line with key K sorts before boundary B exactly when K < B,
whatever the rest of the line, in every sorted file. So each sorted input is
cut at the same boundaries by binary search, and the R partitions are merged
from their pieces in parallel.

The same holds of fixed-size records (mrlib/records.py), framed by RecordFraming
instead of LineFraming: a record's key is its first key_size bytes, any key
can be a boundary, and a record sorts before a key-size boundary exactly when
its key does.
"""
import concurrent.futures
import hashlib
import heapq
import itertools
import os
import re
import resource

from mrlib import names, runner

COPY_CHUNK = 64 * 1024 * 1024
SCAN_CHUNK = 64 * 1024
# The most of a line the master holds to compare it: a longer line is
# compared by its head and skipped, so a huge line never fills memory. Any
# head works as a boundary (see above), so this costs only balance.
COMPARE_BYTES = 64 * 1024
# Lines to look past a sample point for a key usable as a boundary.
MAX_SCAN_LINES = 64
# Bytes that sort at or below the tab: "a", "a\x01", "a\tx" sort in that
# order although the first and last share key "a", so a key holding one is
# never a boundary.
_LOW_BYTES = re.compile(rb"[\x00-\x09]")


def key_of(line):
    """The key of a line: bytes before the first tab, or the whole line."""
    line = line.rstrip(b"\n")
    tab = line.find(b"\t")
    return line if tab < 0 else line[:tab]


def boundary_key(line):
    """The line's key if it can separate partitions, else None."""
    key = key_of(line)
    if not key or _LOW_BYTES.search(key):
        return None
    return key


def next_line_start(handle, position, size):
    """Offset of the first line that starts at or after `position`."""
    if position <= 0:
        return 0
    handle.seek(position - 1)
    while position < size:
        chunk = handle.read(SCAN_CHUNK)
        if not chunk:
            break
        newline = chunk.find(b"\n")
        if newline >= 0:
            return position + newline
        position += len(chunk)
    return size


def content(line):
    """A line as sort compares it: without its newline."""
    return line[:-1] if line.endswith(b"\n") else line


def read_head(handle):
    """(head, length) of the line at the handle's position: at most
    COMPARE_BYTES of it without its newline, and its whole length in bytes."""
    head = handle.readline(COMPARE_BYTES)
    length = len(head)
    if head and not head.endswith(b"\n"):
        while piece := handle.readline(SCAN_CHUNK):  # skip the rest of a long line
            length += len(piece)
            if piece.endswith(b"\n"):
                break
    return content(head), length


class LineFraming:
    """Lines: a key is what comes before the first tab."""
    layout = None

    start_at = staticmethod(next_line_start)
    read_head = staticmethod(read_head)
    boundary_key = staticmethod(boundary_key)

    @staticmethod
    def pieces(source):
        """(piece, its key or None if it continues a line) of a sorted file."""
        for piece, starts in runner.bounded_lines(source, COMPARE_BYTES):
            # a key longer than a piece is taken by its head
            yield piece, key_of(piece) if starts else None


class RecordFraming:
    """Fixed-size records of a records.Layout."""

    def __init__(self, layout):
        self.layout = layout

    def start_at(self, handle, position, size):
        return min(size, -(-position // self.layout.size) * self.layout.size)

    def read_head(self, handle):
        record = handle.read(self.layout.size)
        return record, len(record)

    def boundary_key(self, record):
        return self.layout.key_of(record) or None

    def pieces(self, source):
        size, key_size = self.layout.size, self.layout.key_size
        while chunk := source.read(max(size, SCAN_CHUNK // size * size)):
            for start in range(0, len(chunk), size):
                yield chunk[start:start + size], chunk[start:start + key_size]


LINES = LineFraming()


def framing_of(layout):
    """The framing of data laid out as `layout` (a records.Layout), or lines (None)."""
    return LINES if layout is None else RecordFraming(layout)


def first_line_where(handle, size, predicate, framing=LINES):
    """Offset of the first line of a sorted file for which a monotone predicate holds."""
    low, high = 0, size  # lines starting before `low` fail; the line at `high` holds (or EOF)
    while low < high:
        middle = framing.start_at(handle, (low + high) // 2, size)
        if middle >= high:
            break
        handle.seek(middle)
        head, length = framing.read_head(handle)
        if predicate(head):
            high = middle
        else:
            low = middle + length
    position = low
    while position < high:
        handle.seek(position)  # the predicate may move this handle (SortedFiles does)
        head, length = framing.read_head(handle)
        if predicate(head):
            return position
        position += length
    return high


def first_line_at_least(handle, size, bound, framing=LINES):
    """Offset of the first line that sorts at or after `bound`."""
    return first_line_where(handle, size, lambda line: line >= bound, framing)


class SortedFiles:
    """Several sorted files seen as their merge, without merging them."""

    def __init__(self, paths, framing=LINES):
        self.framing = framing
        self.handles = [open(path, "rb") for path in paths]
        self.sizes = [os.path.getsize(path) for path in paths]
        self.total = sum(self.sizes)

    def close(self):
        for handle in self.handles:
            handle.close()

    def bytes_before(self, bound):
        """Bytes of all lines sorting before `bound`: where it starts in the merge."""
        return sum(first_line_at_least(h, size, bound, self.framing)
                   for h, size in zip(self.handles, self.sizes))

    def line_from(self, target):
        """The first line of the merge starting at or after byte `target`, or None."""
        found = []
        for handle, size in zip(self.handles, self.sizes):
            offset = first_line_where(handle, size,
                                      lambda line: self.bytes_before(line) >= target,
                                      self.framing)
            if offset < size:
                handle.seek(offset)
                found.append(self.framing.read_head(handle)[0])
        return min(found, default=None)

    def lines_from(self, bound, count):
        """Up to `count` lines of the merge from the first one >= bound."""
        streams = []
        for handle, size in zip(self.handles, self.sizes):
            handle.seek(first_line_at_least(handle, size, bound, self.framing))
            lines = []
            for _ in range(count):
                head, length = self.framing.read_head(handle)
                if not length:
                    break
                lines.append(head)
            streams.append(lines)
        return list(itertools.islice(heapq.merge(*streams), count))


def key_near(files, target):
    """The first boundary-worthy key at or after byte `target` of the merge."""
    line = files.line_from(target)
    if line is None:
        return None
    for candidate in files.lines_from(line, MAX_SCAN_LINES):
        key = files.framing.boundary_key(candidate)
        if key is not None:
            return key
    return None


def choose_boundaries(paths, parts, framing=LINES):
    """parts-1 boundary keys at the exact size quantiles of the files' merge.

    The same keys whatever way the sorted data is spread over files, so a
    cluster and a sequential run cut the same partitions.
    """
    files = SortedFiles(paths, framing)
    try:
        if parts <= 1:
            return []
        if files.total == 0:
            return [None] * (parts - 1)  # every partition empty
        return _non_decreasing([key_near(files, files.total * n // parts)
                                for n in range(1, parts)])
    finally:
        files.close()


def _non_decreasing(keys):
    """Replace missing keys (no usable key past that point) by the previous one."""
    result, previous = [], None
    for key in keys:
        previous = key if key is not None and (previous is None or key > previous) else previous
        result.append(previous)
    return result


def cut_offsets(path, boundaries, framing=LINES):
    """[0, c1, …, size]: where each boundary falls in one sorted file."""
    size = os.path.getsize(path)
    offsets = [0]
    with open(path, "rb") as handle:
        for bound in boundaries:
            cut = size if bound is None else first_line_at_least(handle, size, bound, framing)
            offsets.append(max(cut, offsets[-1]))
    offsets.append(size)
    return offsets


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


def copy_piece(path, start, end, destination):
    with open(path, "rb") as source, open(destination, "wb") as out:
        copy_range(source, out, start, end)


def build_partition(pieces, output, guard=None, layout=None):
    """Write one partition: its pieces merged (or the single piece copied)."""
    if len(pieces) <= 1:
        tmp = runner.temp_path(output)
        try:
            if pieces:
                copy_piece(*pieces[0], tmp)
            else:
                open(tmp, "wb").close()
            os.replace(tmp, output)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    piece_paths, scratch = [], []
    try:
        for path, start, end in pieces:
            if start == 0 and end == os.path.getsize(path):
                piece_paths.append(path)
                continue
            scratch.append(runner.temp_path(output))
            copy_piece(path, start, end, scratch[-1])
            piece_paths.append(scratch[-1])
        runner.sort_files(piece_paths, output, merge=True, guard=guard, layout=layout)
    finally:
        for piece in scratch:
            os.unlink(piece)


def write_range_partitions(sorted_paths, output_paths, guard=None, framing=LINES):
    """Cut sorted files at shared key boundaries; merge each partition, in parallel."""
    boundaries = choose_boundaries(sorted_paths, len(output_paths), framing)
    offsets = {path: cut_offsets(path, boundaries, framing) for path in sorted_paths}
    jobs = []
    for number, output in enumerate(output_paths):
        pieces = [(path, cuts[number], cuts[number + 1]) for path, cuts in offsets.items()
                  if cuts[number + 1] > cuts[number]]
        jobs.append((pieces, output))
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(build_partition, p, o, guard, framing.layout)
                       for p, o in jobs]:
            future.result()


# When the hard limit on open files is unlimited, lift the soft one this far.
OPEN_FILES_WANTED = 65536


def raise_open_file_limit():
    """Lift the soft limit on open files to the hard one, for processes that
    partition: hash partitioning keeps one file per reducer open at once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # keep the soft limit; a job past it fails naming "Too many open files"


def hash_partition(key, parts):
    """A stable partition for a key: md5, never Python's salted hash()."""
    return int.from_bytes(hashlib.md5(key).digest()[:8], "big") % parts


def write_hash_partitions(merged_path, output_paths, framing=LINES):
    """Deal a sorted file's lines to files by hash of key, keeping sorted order."""
    tmps = [runner.temp_path(path) for path in output_paths]
    handles = [open(tmp, "wb") for tmp in tmps]
    try:
        with open(merged_path, "rb") as source:
            parts = len(handles)
            target = None
            last = None
            for piece, key in framing.pieces(source):
                if key is not None and key != last:  # sorted: a key's records are together
                    target, last = handles[hash_partition(key, parts)], key
                target.write(piece)
    finally:
        for handle in handles:
            handle.close()
    for tmp, path in zip(tmps, output_paths):
        os.replace(tmp, path)


def merge_and_partition(sorted_paths, directory, parts, partitioner="range", guard=None,
                        layout=None):
    """Write `parts` reducer inputs into `directory` from sorted files (of
    lines, or of records laid out as `layout`)."""
    outputs = names.partition_paths(directory, parts)
    framing = framing_of(layout)
    if partitioner != "hash":
        write_range_partitions(sorted_paths, outputs, guard, framing)
        return outputs
    if len(sorted_paths) == 1:
        merged, scratch = sorted_paths[0], None  # already one sorted stream
    else:
        merged = scratch = os.path.join(directory, "merged")
        runner.sort_files(sorted_paths, merged, merge=True, guard=guard, layout=layout)
    try:
        write_hash_partitions(merged, outputs, framing)
    finally:
        if scratch:
            os.unlink(scratch)
    return outputs
