"""Fixed-size binary records: sorted and merged without looking for newlines.

With --record-size, a job's data is records of a fixed number of bytes that
may hold any byte, newlines and tabs included, so coreutils sort (which cuts
at newlines) cannot order them. Here a record is a `size`-byte slice; its key
is its first `key_size` bytes. Records are ordered as whole byte strings, so
records of one key are together, ordered by their key first, and every run
(a cluster's or a sequential one) orders equal keys the same way.

Memory is bounded as sort's is: input is sorted in runs of RUN_BYTES, spilled
to temporary files when there is more than one, and merged block by block:
whatever every input has passed is sorted together by Python's sort, whose
merge of sorted runs is linear, so no record goes through Python code alone.

Run as a program (a stage of a task's pipeline), with only the standard
library, so it starts fast:

    records.py sort SIZE TEMP_DIR OPTION WHAT < data > sorted
    records.py merge SIZE TEMP_DIR OPTION < NUL-separated paths > merged
    records.py sort-files SIZE TEMP_DIR OPTION < NUL-separated paths > sorted

OPTION is the job option that set SIZE, WHAT whose output the data is: both
for the error that data which is not whole records gets.
"""
import bisect
import os
import signal
import sys

# A sorted run held in memory: at most this many bytes, and at most this many
# records (a small record costs some 40 bytes as a Python object).
RUN_BYTES = 64 * 1024 * 1024
RUN_RECORDS = 1 << 20
# What a merge reads of an input at a time: at most this many bytes and records,
# and at most MERGE_RECORDS over all its inputs together.
BLOCK_BYTES = 4 * 1024 * 1024
BLOCK_RECORDS = 1 << 16
MERGE_RECORDS = 1 << 20
MERGE_BYTES = 32 * 1024 * 1024
# Inputs merged at once; more are merged in rounds through temporary files,
# so a merge never holds more than about this many files open.
FAN_IN = 64
# The largest record: a record is read whole, and a run holds at least one.
MAX_RECORD_BYTES = 64 * 1024 * 1024
# Exit code of a stage that was given data that is not whole records (sysexits' EX_DATAERR).
NOT_RECORDS_EXIT = 65
WRITE_CHUNK = 1024 * 1024
# The options that set a job's record sizes, named when data does not fit them.
INPUT_OPTION, OUTPUT_OPTION = "--record-size", "--output-record-size"


class RecordError(ValueError):
    """Data that is not a whole number of records, named with its length."""


class Layout:
    """Records of `size` bytes whose first `key_size` bytes are the key; `option`
    is the job option that set the size, for errors."""
    __slots__ = ("size", "key_size", "option")

    def __init__(self, size, key_size=None, option=OUTPUT_OPTION):
        self.size, self.key_size, self.option = size, key_size or size, option

    def __eq__(self, other):
        return isinstance(other, Layout) and self.field() == other.field()

    def __repr__(self):
        return f"Layout({self.size}, {self.key_size}, {self.option!r})"

    @classmethod
    def from_field(cls, value):
        """A Layout from a task message's `records` field, or None (lines)."""
        if not isinstance(value, dict):
            return None
        size, key_size = value.get("size"), value.get("key_size", value.get("size"))
        if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                   for n in (size, key_size)) or key_size > size:
            return None
        option = value.get("option")
        return cls(size, key_size, option if option in (INPUT_OPTION, OUTPUT_OPTION)
                   else OUTPUT_OPTION)

    def field(self):
        return {"size": self.size, "key_size": self.key_size, "option": self.option}

    def key_of(self, record):
        return record[:self.key_size]


def not_records(what, length, size, option=INPUT_OPTION):
    """The error for `length` bytes that are not whole `size`-byte records."""
    return RecordError(f"{what} is {length:,} bytes, not a whole number of {size}-byte "
                       f"records ({option} {size}): {length % size} byte(s) left over")


def check_file(path, size, option=INPUT_OPTION):
    """Raise RecordError unless the file at `path` holds whole records."""
    length = os.path.getsize(path)
    if length % size:
        raise not_records(path, length, size, option)


def split(data, size):
    """The records of `data` (a whole number of them), as bytes."""
    return [data[start:start + size] for start in range(0, len(data), size)]


def read_exactly(source, count):
    """Up to `count` bytes: fewer only at the end of the stream."""
    pieces, wanted = [], count
    while wanted:
        piece = source.read(wanted)
        if not piece:
            break
        pieces.append(piece)
        wanted -= len(piece)
    return b"".join(pieces)


def write_records(sink, records):
    """Write records in pieces, so a large run is never joined whole."""
    step = max(1, WRITE_CHUNK // max(1, len(records[0]))) if records else 1
    for start in range(0, len(records), step):
        sink.write(b"".join(records[start:start + step]))


class _Input:
    """A sorted stream of records read a block at a time: `records` holds the
    block's records not yet merged; `live` while the stream has more."""

    def __init__(self, source, size, name, option, block):
        self.source, self.size, self.name, self.option = source, size, name, option
        self.block = block
        self.records, self.live, self.length = [], True, 0

    def refill(self):
        if self.records or not self.live:
            return
        data = read_exactly(self.source, self.block)
        self.length += len(data)
        if len(data) % self.size:
            raise not_records(self.name, self.length + _rest(self.source), self.size,
                              self.option)
        self.records = split(data, self.size)
        self.live = len(data) == self.block


def _rest(source):
    """Bytes left in a stream (read to its end): for an error's length."""
    return sum(len(piece) for piece in iter(lambda: source.read(WRITE_CHUNK), b""))


def block_bytes(size, inputs):
    """What a merge of `inputs` streams reads of each at a time."""
    inputs = max(1, inputs)
    records = min(BLOCK_BYTES // size, BLOCK_RECORDS, MERGE_RECORDS // inputs,
                  MERGE_BYTES // (size * inputs))
    return size * max(1, records)


def merge(inputs, sink):
    """Merge sorted _Inputs into `sink`, a block at a time.

    Every record an input has not yet read sorts at or after the last one of
    its current block, so all records up to the least such last record can
    be written now; the input holding it is used up each round (wholly, even
    if unsorted input put records after it that sort higher: whatever it is
    given, a merge ends).
    """
    while True:
        for each in inputs:
            each.refill()
        inputs = [each for each in inputs if each.records or each.live]
        if not inputs:
            return
        live = [each for each in inputs if each.live]
        least = min(live, key=lambda each: each.records[-1]) if live else None
        bound = least.records[-1] if least else None
        taken = []
        for each in inputs:
            whole = least is None or each is least
            cut = len(each.records) if whole else bisect.bisect_right(each.records, bound)
            taken.extend(each.records[:cut])
            del each.records[:cut]
        taken.sort()  # sorted runs, merged in linear time
        write_records(sink, taken)


def merge_all(sources, sink, size, temp_dir, option=OUTPUT_OPTION):
    """Merge sorted sources, (name, path or open file) pairs, into `sink`: FAN_IN
    at a time, in rounds through temporary files if there are more. Open files
    given are closed once merged."""
    while len(sources) > FAN_IN:
        merged = []
        for start in range(0, len(sources), FAN_IN):
            run = _temporary(temp_dir)
            _merge_group(sources[start:start + FAN_IN], run, size, option)
            run.seek(0)
            merged.append(("a merged run", run))
        sources = merged
    _merge_group(sources, sink, size, option)


def _merge_group(sources, sink, size, option):
    block = block_bytes(size, len(sources))
    handles = []
    try:
        for name, source in sources:
            handles.append(open(source, "rb") if isinstance(source, str) else source)
        merge([_Input(handle, size, name, option, block)
               for handle, (name, _) in zip(handles, sources)], sink)
    finally:
        for handle in handles:
            handle.close()


class _Runs:
    """Sorted runs spilled to temporary files. FAN_IN runs of one level are
    merged into one of the next as they pile up, so however long the input,
    few files are open and each record is rewritten only a few times."""

    def __init__(self, size, temp_dir, option):
        self.size, self.temp_dir, self.option = size, temp_dir, option
        self.levels = []

    def add(self, records):
        records.sort()
        run = _temporary(self.temp_dir)
        write_records(run, records)
        self._push(run, 0)

    def _push(self, run, level):
        run.seek(0)
        if level == len(self.levels):
            self.levels.append([])
        self.levels[level].append(("a sorted run", run))
        if len(self.levels[level]) == FAN_IN:
            merged = _temporary(self.temp_dir)
            runs, self.levels[level] = self.levels[level], []
            _merge_group(runs, merged, self.size, self.option)
            self._push(merged, level + 1)

    def all(self):
        return [run for level in self.levels for run in level]

    def close(self):
        for _, run in self.all():
            run.close()  # a TemporaryFile: gone when closed


def sort(sources, sink, size, temp_dir, option=OUTPUT_OPTION):
    """Sort the records of (source, name) pairs into `sink`, in runs of at most
    RUN_BYTES and RUN_RECORDS."""
    run_bytes = size * max(1, min(RUN_BYTES // size, RUN_RECORDS))
    runs = _Runs(size, temp_dir, option)
    try:
        pending = []
        for source, name in sources:
            length = 0
            while data := read_exactly(source, run_bytes):
                length += len(data)
                if len(data) % size:
                    raise not_records(name, length + _rest(source), size, option)
                pending.extend(split(data, size))
                if len(pending) * size >= run_bytes:
                    runs.add(pending)
                    pending = []
        if not runs.levels:
            pending.sort()
            write_records(sink, pending)
            return
        if pending:
            runs.add(pending)
        sources, runs.levels = runs.all(), []  # merge_all closes them
        merge_all(sources, sink, size, temp_dir, option)
    finally:
        runs.close()


def _temporary(directory):
    """An unnamed file in `directory`: gone when closed, or when this process dies."""
    import tempfile  # here: most sorts fit one run, and start faster without it
    return tempfile.TemporaryFile(dir=directory)


def read_paths(stream):
    """File names given NUL-separated (as bytes: any name works)."""
    return [os.fsdecode(name) for name in stream.read().split(b"\0") if name]


def main(argv):
    command, size, temp_dir, option = argv[0], int(argv[1]), argv[2], argv[3]
    sink = sys.stdout.buffer
    if command == "sort":
        sort([(sys.stdin.buffer, argv[4])], sink, size, temp_dir, option)
        return 0
    paths = read_paths(sys.stdin.buffer)
    if command == "merge":
        merge_all([(path, path) for path in paths], sink, size, temp_dir, option)
        return 0
    sort(_opened(paths), sink, size, temp_dir, option)
    return 0


def _opened(paths):
    """(open file, path) of each path in turn, each closed before the next opens."""
    for path in paths:
        with open(path, "rb") as handle:
            yield handle, path


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except RecordError as error:
        print(error, file=sys.stderr)
        sys.exit(NOT_RECORDS_EXIT)
    except BrokenPipeError:  # the program after it stopped reading: exit as sort would
        os._exit(128 + signal.SIGPIPE)
