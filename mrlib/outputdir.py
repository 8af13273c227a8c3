"""The client's side of an output directory: refuse a used one, or clear an earlier job's files.

The master writes the job's outputs into the output directory and never
deletes anything there. Whether an earlier job's files may go is the user's
call, made in the client, as in Hadoop and Spark: a non-empty directory is
refused unless `--overwrite`, which removes only files named as our jobs
name their outputs, and refuses if anything else is there.
"""
import errno
import os
import re

from mrlib import names

# The names a job writes, each with its index: input_N (reduce partitions),
# NNNNNN_<input> (a map-only job's outputs, by position), BASE_NN
# (--output-base). One job writes indices 0, 1, ... K of one of these, so a
# set of names is taken as an earlier job's output only if it is exactly
# that: a lone `202401_budget.csv` or `report_2023` is a user's file.
# A publishing master that was killed may leave its temporary link behind.
TEMPORARY = re.compile(r"\.(.+)\.tmp-\d+", re.DOTALL)
SHOWN_NAMES = 5
# Our proof that a file is a job's output: an extended attribute every output is
# published with (not a file: the output directory holds exactly the outputs). Where
# the filesystem keeps no extended attributes, the names alone decide.
OWNER_ATTRIBUTE = "user.mapreduce.output"
OWNER_VALUE = b"1"
NO_ATTRIBUTES = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS)


class OutputDirectoryInUse(Exception):
    """The output directory holds files; the message says which and the ways out."""


def output_patterns(output_base=None):
    patterns = [names.PARTITION_PATTERN, names.POSITIONAL_PATTERN]
    if output_base:
        patterns.append(names.based_pattern(output_base))
    return [re.compile(pattern, re.DOTALL) for pattern in patterns]


def earlier_outputs(names, output_base=None):
    """The names among `names` that one earlier job wrote: a whole 0..K set of one kind."""
    ours = set()
    for pattern in output_patterns(output_base):
        indices = {}
        for name in names:
            match = pattern.fullmatch(name)
            if match:
                indices[name] = int(match.group(1))
        if sorted(indices.values()) == list(range(len(indices))):
            ours.update(indices)
    for name in names:
        match = TEMPORARY.fullmatch(name)
        if match and any(p.fullmatch(match.group(1)) for p in output_patterns(output_base)):
            ours.add(name)
    return ours


def mark(path):
    """Mark a file as a job's output (see OWNER_ATTRIBUTE); a filesystem that keeps no
    extended attributes is let be."""
    try:
        os.setxattr(path, OWNER_ATTRIBUTE, OWNER_VALUE, follow_symlinks=False)
    except OSError as error:
        if error.errno not in NO_ATTRIBUTES + (errno.EPERM, errno.EACCES):
            raise


def unmarked(directory, names):
    """The names among `names` whose files lack our mark where their filesystem keeps
    extended attributes: written by a user, or another implementation, not by our jobs."""
    found = []
    for name in names:
        try:
            os.getxattr(os.path.join(directory, name), OWNER_ATTRIBUTE, follow_symlinks=False)
        except OSError as error:
            if error.errno not in NO_ATTRIBUTES:
                found.append(name)  # ENODATA: no mark
    return found


def check(directory, overwrite=False, output_base=None, inputs=list):
    """The names --overwrite would remove from `directory` (none if it is empty or new).

    Raises OutputDirectoryInUse if the directory is in use and overwrite is
    off, or holds anything that is not an earlier job's output, or an input
    of this job (a link from the input directory to an old output, say);
    `inputs()` lists those, called only when there is something to remove.
    """
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []  # the job's own checks say what is wrong with a non-directory
    if not names:
        return []
    if not overwrite:
        raise OutputDirectoryInUse(
            f"output directory {directory} is not empty ({show(names)}); add --overwrite to "
            f"replace an earlier job's output files, or choose another --output")
    ours = earlier_outputs(names, output_base)
    ours -= set(unmarked(directory, sorted(ours)))
    others = [n for n in names if n not in ours or not _is_plain_file(directory, n)]
    if others:
        raise OutputDirectoryInUse(
            f"output directory {directory} holds files not known as a job's outputs "
            f"({show(others)}); "
            f"--overwrite removes only earlier job outputs (named as ours are, and marked "
            f"as ours by the master that wrote them): move those away, or choose "
            f"another --output")
    listed = inputs()
    used = [n for n in names if any(same_file(os.path.join(directory, n), p) for p in listed)]
    if used:
        raise OutputDirectoryInUse(
            f"output directory {directory} holds this job's input ({show(used)}); "
            f"choose another --output")
    return names


def remove(directory, names):
    """Remove the names check() returned."""
    for name in names:
        try:
            os.unlink(os.path.join(directory, name))
        except FileNotFoundError:
            pass


def same_file(path, other):
    try:
        return os.path.samefile(path, other)
    except OSError:
        return False


def same_directory(path, other):
    """True if both name one directory (links resolved)."""
    return bool(path and other) and os.path.realpath(path) == os.path.realpath(other)


def _is_plain_file(directory, name):
    path = os.path.join(directory, name)
    return os.path.isfile(path) and not os.path.islink(path)


def within(path, directory):
    """True if `path` is `directory` or below it, links resolved."""
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def show(names):
    """Names for a one-line message: the first few, odd characters escaped."""
    names = [n if n.isprintable() else repr(n) for n in names]
    shown = ", ".join(names[:SHOWN_NAMES])
    return shown + (f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else "")
