"""Join a job's output files into one file, in order.

    python3 collect.py output/count count_all     # count_00, count_01 ... -> count_all
    python3 collect.py output all.txt             # output/input_0, input_1 ... -> all.txt
    python3 collect.py output all.txt --merge     # hash-partitioned output: merge by key
    python3 collect.py output all.bin --merge --record-size 100   # ... of binary records

With the default range partitioning the partitions hold consecutive key
ranges, so joining them in partition order gives key order; a map-only job's
files join in split order. Hash-partitioned partitions are each sorted but
interleave, so --merge merges them (LC_ALL=C sort -m) instead; with
--record-size, as fixed-size records (mrlib/records.py).
"""
import argparse
import os
import re
import stat
import subprocess
import sys

from mrlib import grouping, names, records, runner
from mrlib.jobspec import base_name_files, natural_key

PARTITION_NAME = re.compile(names.PARTITION_PATTERN, re.DOTALL)
MAP_ONLY_NAME = re.compile(names.POSITIONAL_PATTERN, re.DOTALL)


def partition_files(source):
    """The files to join: BASE_NN files for a base name, else a directory's outputs."""
    if os.path.isdir(source):
        listed = os.listdir(source)
        numbered = [n for n in listed if PARTITION_NAME.fullmatch(n)]
        if numbered:
            numbered.sort(key=lambda n: int(PARTITION_NAME.fullmatch(n).group(1)))
            return [os.path.join(source, n) for n in numbered]
        map_only = sorted(n for n in listed if MAP_ONLY_NAME.fullmatch(n))
        if map_only:
            return [os.path.join(source, n) for n in map_only]
        listed = sorted((n for n in listed if not n.startswith(".")), key=natural_key)
        return [os.path.join(source, n) for n in listed if os.path.isfile(os.path.join(source, n))]
    return base_name_files(source + "_")


def _same_file(path, other):
    try:
        return os.path.samefile(path, other)
    except OSError:
        return False


def _is_output_name(name):
    return bool(PARTITION_NAME.fullmatch(name) or MAP_ONLY_NAME.fullmatch(name)
                or re.fullmatch(r".+_\d+", name, re.DOTALL))


# What a destination that exists may not be: collect writes a new regular file in its place.
NOT_REPLACED = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def why_not_written(destination):
    """Why `destination` cannot be written (None if it can): the result replaces it, so
    only a regular file (or nothing) may be there, and its directory must exist."""
    try:
        mode = os.lstat(destination).st_mode
    except FileNotFoundError:
        directory = os.path.dirname(destination) or "."
        if not os.path.isdir(directory):
            return f"its directory {directory} does not exist"
        return None
    except OSError as error:
        return error.strerror
    for test, kind in NOT_REPLACED:
        if test(mode):
            return f"it is {kind}, which the result would replace: name a regular file"
    return None


def concatenate(paths, destination):
    tmp = runner.temp_path(destination)
    try:
        with open(tmp, "wb") as out:
            for path in paths:
                with open(path, "rb") as source:
                    grouping.copy_range(source, out, 0, os.fstat(source.fileno()).st_size)
        os.replace(tmp, destination)
    finally:
        runner.discard(tmp)


def sorted_lines(path):
    """True if the file's lines are in bytewise order of their keys (what precedes the
    first tab; LC_ALL=C sort -C): a partition of a line job's output is, whatever order
    the reducer gave one key's lines; one of fixed-size records almost never."""
    return subprocess.run(["sort", "-C", "-s", "-t", "\t", "-k1,1", "--", path],
                          env=dict(os.environ, **runner.SORT_ENV),
                          stdin=subprocess.DEVNULL).returncode == 0


def main(argv=None):
    parser = argparse.ArgumentParser(description="Join a job's outputs into one ordered file.")
    parser.add_argument("source", help="an output directory, or a base name (output/count)")
    parser.add_argument("destination", help="the file to write")
    parser.add_argument("--merge", action="store_true",
                        help="merge sorted partitions by key (for hash partitioning)")
    parser.add_argument("--record-size", type=int, metavar="N",
                        help="with --merge: the outputs are N-byte records, not lines")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.record_size is not None and not args.merge:
        parser.error("--record-size tells --merge how to read the outputs: give --merge too")
    if args.record_size is not None and not 1 <= args.record_size <= records.MAX_RECORD_BYTES:
        parser.error(f"--record-size must be between 1 and {records.MAX_RECORD_BYTES} bytes, "
                     f"got {args.record_size}")
    layout = records.Layout(args.record_size, option=records.INPUT_OPTION) \
        if args.record_size else None
    why_not = why_not_written(args.destination)
    if why_not is not None:
        print(f"collect: cannot write {args.destination}: {why_not}", file=sys.stderr)
        return 2
    paths = partition_files(args.source)
    if any(_same_file(p, args.destination) for p in paths):
        if len(paths) > 1 and _is_output_name(os.path.basename(args.destination)):
            print(f"collect: {args.destination} is one of the job's output files; "
                  f"write the result elsewhere", file=sys.stderr)
            return 2
        # An earlier collect's result: never joined into the new one.
        paths = [p for p in paths if not _same_file(p, args.destination)]
    if not paths:
        print(f"collect: no output files found for {args.source}", file=sys.stderr)
        return 2
    unsorted = next((p for p in paths if args.merge and layout is None and not sorted_lines(p)),
                    None)
    if unsorted is not None:
        print(f"collect: {unsorted} is not sorted by key as lines (LC_ALL=C), so --merge cannot "
              f"merge it; if the job's outputs are fixed-size records, give --record-size",
              file=sys.stderr)
        return 2
    try:
        if args.merge:
            runner.sort_files(paths, os.path.abspath(args.destination), merge=True,
                              layout=layout)
        else:
            concatenate(paths, args.destination)
    except OSError as error:  # the temporary file's name is collect's business
        print(f"collect: cannot write {args.destination}: {error.strerror}", file=sys.stderr)
        return 1
    except runner.TaskFailed as error:
        print(f"collect: {error}", file=sys.stderr)
        return 1
    print(f"collected {len(paths)} file(s) into {args.destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
