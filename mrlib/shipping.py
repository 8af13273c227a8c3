"""Code shipped with a job, snapshotted into var/job-N/code/ when it is accepted.

send_job.py reads each file (a Python job's file, `--ship FILE`s) into the
new_master_job message's `shipped_files`: {name: {"data": base64, "executable":
bool}}. The master writes them into the job's `code/` directory before any
task runs, so every task runs that snapshot: editing or deleting the
originals mid-job changes nothing, and a worker on another host needs only
the shared var/. A program named `shipped:NAME` (as --mapper, --reducer or
--combiner) is the snapshot of NAME; a Python job (`python_job` "NAME:CLASS")
gets its map and reduce programs written beside it, in `programs/`.
"""
import base64
import binascii
import os
import re
import shlex

from mrlib import pyjob

SHIPPED_PREFIX = "shipped:"
MAX_SHIPPED_BYTES = 8 * 1024 * 1024  # all files of a job together, before base64
MAX_SHIPPED_FILES = 256  # the master writes them while it runs its events
MAX_NAME_BYTES = 255  # a file name on Linux
CODE, PROGRAMS = "code", "programs"
PLAIN_NAME = re.compile(r"[^/\0]+")
# What the worker tells a Python job's programs: its interpreter and library.
PYTHON_VARIABLE, LIBRARY_VARIABLE = "MAPREDUCE_PYTHON", "MAPREDUCE_LIBRARY"


class ShippingError(ValueError):
    """Files that cannot be shipped, or a message's that cannot be installed."""


def pack(paths):
    """{name: entry} for the files at `paths`; ShippingError naming the path if one cannot go."""
    shipped, total, seen = {}, 0, set()
    for path in paths:
        if os.path.realpath(path) in seen:
            continue  # named twice (the job file as --ship too): shipped once
        seen.add(os.path.realpath(path))
        name = os.path.basename(os.path.abspath(path))
        if name in shipped:
            raise ShippingError(f"--ship {path}: another shipped file is also named {name}")
        if not os.path.isfile(path):
            raise ShippingError(f"--ship {path}: not a file")
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_SHIPPED_BYTES + 1)
        except OSError as error:
            raise ShippingError(f"--ship {path}: {error.strerror}") from None
        total += len(data)
        if total > MAX_SHIPPED_BYTES:
            raise ShippingError(f"--ship {path}: the shipped files are over "
                                f"{MAX_SHIPPED_BYTES // (1024 * 1024)} MiB in all; put large "
                                f"data where the workers can read it")
        shipped[name] = {"data": base64.b64encode(data).decode("ascii"),
                         "executable": os.access(path, os.X_OK)}
    return shipped


def decoded(shipped):
    """{name: (bytes, executable)} of a message's shipped_files; ShippingError if malformed."""
    files, total = {}, 0
    if len(shipped) > MAX_SHIPPED_FILES:
        raise ShippingError(f"{len(shipped)} shipped files: at most {MAX_SHIPPED_FILES}")
    for name, entry in shipped.items():
        if not PLAIN_NAME.fullmatch(name) or name in (".", ".."):
            raise ShippingError(f"shipped file name {name!r} is not a plain file name")
        if len(os.fsencode(name)) > MAX_NAME_BYTES:
            raise ShippingError(f"shipped file name {name[:40]!r}... is over "
                                f"{MAX_NAME_BYTES} bytes")
        if not (isinstance(entry, dict) and isinstance(entry.get("data"), str)):
            raise ShippingError(f"shipped file {name} has no base64 data")
        try:
            data = base64.b64decode(entry["data"], validate=True)
        except (binascii.Error, ValueError):
            raise ShippingError(f"shipped file {name} is not valid base64") from None
        total += len(data)
        if total > MAX_SHIPPED_BYTES:
            raise ShippingError(f"shipped files are over {MAX_SHIPPED_BYTES} bytes in all")
        files[name] = (data, entry.get("executable") is True)
    return files


def split_reference(reference):
    """(file name, class name) of a python_job "NAME:CLASS"."""
    name, colon, class_name = reference.rpartition(":")
    if not colon or not name or not class_name.isidentifier():
        raise ShippingError(f"python_job {reference!r} is not FILE:CLASS (a class at the top "
                            f"of FILE)")
    return name, class_name


def check(shipped, python_job, programs):
    """ShippingError if the job's shipped files do not hold what it names.

    `programs`: {field: value} of its executables; a `shipped:NAME` must be a
    shipped executable file."""
    files = decoded(shipped or {})
    if python_job is not None:
        name, _ = split_reference(python_job)
        if name not in files:
            raise ShippingError(f"python_job {python_job}: {name} is not among the shipped files")
    for field, value in programs.items():
        if value and value.startswith(SHIPPED_PREFIX):
            name = value[len(SHIPPED_PREFIX):]
            if name not in files:
                raise ShippingError(f"{field} {value}: {name} is not among the shipped files")
            if not files[name][1]:
                raise ShippingError(f"{field} {value}: the shipped {name} is not executable")


def install(shipped, python_job, job_directory, reducer):
    """Write the snapshot into job_directory/code (and a Python job's programs);
    return {"map": path, "reduce": path, "shipped:NAME": path, ...} for the programs."""
    code = os.path.join(job_directory, CODE)
    os.makedirs(code, exist_ok=True)
    programs = {}
    for name, (data, executable) in decoded(shipped or {}).items():
        path = os.path.join(code, name)
        with open(path, "wb") as handle:
            handle.write(data)
        os.chmod(path, 0o755 if executable else 0o644)
        programs[SHIPPED_PREFIX + name] = path
    if python_job is not None:
        name, class_name = split_reference(python_job)
        programs.update(write_python_programs(job_directory, name, class_name, reducer))
    return programs


def write_python_programs(job_directory, job_file, class_name, reducer):
    """A Python job's map (and reduce) program: a script that runs mrlib.pyjob on
    the snapshot beside it, in the interpreter and library the worker names."""
    directory = os.path.join(job_directory, PROGRAMS)
    os.makedirs(directory, exist_ok=True)
    library = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = {}
    for phase in (pyjob.MAP, pyjob.REDUCE) if reducer else (pyjob.MAP,):
        path = os.path.join(directory, phase)
        runs = phase if reducer else pyjob.MAP_ONLY  # map-only: nothing combined
        with open(path, "w") as handle:
            handle.write(
                "#!/bin/sh\n"
                f"# The {phase} program of the Python job {job_file}:{class_name}, written "
                f"by the master.\n"
                f"library={shlex.quote(library)}\n"
                'code="$(dirname -- "$0")/../code"\n'
                f'PYTHONPATH="${{{LIBRARY_VARIABLE}:-$library}}${{PYTHONPATH:+:$PYTHONPATH}}"\n'
                "export PYTHONPATH\n"
                f'exec "${{{PYTHON_VARIABLE}:-python3}}" -m mrlib.pyjobrun {runs} '
                f'"$code/"{shlex.quote(job_file)} {shlex.quote(class_name)}\n')
        os.chmod(path, 0o755)
        paths[phase] = path
    return paths
