"""The client's side of an output directory: refuse a used one, or clear an earlier job's files.

The master writes the job's outputs into the output directory and never
deletes anything there. Whether an earlier job's files may go is the user's
call, made in the client, as in Hadoop and Spark: a non-empty directory is
refused unless `--overwrite`, which removes only files named as our jobs
name their outputs, and refuses if anything else is there.
"""
import os
import re

# The names a job writes: input_N (reduce partitions), NNNNNN_<input> (a
# map-only job's outputs, by position), BASE_NN (--output-base).
REDUCE_OUTPUT = r"input_\d+"
MAP_ONLY_OUTPUT = r"\d{6}_.+"
# A publishing master that was killed may leave its temporary link behind.
TEMPORARY = r"\.({names})\.tmp-\d+"
SHOWN_NAMES = 5


class OutputDirectoryInUse(Exception):
    """The output directory holds files; the message says which and the ways out."""


def output_name_pattern(output_base=None):
    names = [REDUCE_OUTPUT, MAP_ONLY_OUTPUT]
    if output_base:
        names.append(re.escape(output_base) + r"_\d+")
    either = "|".join(names)
    return re.compile(rf"(?:{either})|" + TEMPORARY.format(names=either))


def prepare(directory, overwrite=False, output_base=None):
    """Make sure a job may write into `directory`; with overwrite, clear its earlier outputs.

    Returns the names removed. Raises OutputDirectoryInUse (and removes
    nothing) if the directory holds anything it may not remove.
    """
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []  # the job's own checks say what is wrong with a non-directory
    if not names:
        return []
    if not overwrite:
        raise OutputDirectoryInUse(
            f"output directory {directory} is not empty ({_show(names)}); add --overwrite to "
            f"replace an earlier job's output files, or choose another --output")
    pattern = output_name_pattern(output_base)
    ours = [n for n in names if pattern.fullmatch(n) and _is_plain_file(directory, n)]
    others = [n for n in names if n not in ours]
    if others:
        raise OutputDirectoryInUse(
            f"output directory {directory} holds files no job wrote ({_show(others)}); "
            f"--overwrite removes only earlier job outputs: move those away, or choose "
            f"another --output")
    for name in ours:
        try:
            os.unlink(os.path.join(directory, name))
        except FileNotFoundError:
            pass
    return ours


def _is_plain_file(directory, name):
    path = os.path.join(directory, name)
    return os.path.isfile(path) and not os.path.islink(path)


def _show(names):
    shown = ", ".join(names[:SHOWN_NAMES])
    return shown + (f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else "")
