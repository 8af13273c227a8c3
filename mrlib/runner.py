"""Run user programs and coreutils sort over files, bytes in and bytes out.

Used by the worker for every task and by the sequential mode, so both run a
program exactly the same way: stdin from a file, stdout to a temporary file
renamed into place only on success, stderr kept aside so its tail can name
the cause of a failure and its `reporter:` lines become counters.
"""
import collections
import ctypes
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import threading

import sh

# How much of a failed program's stderr travels in its status message.
STDERR_TAIL_BYTES = 2048
COUNTER_PREFIX = b"reporter:counter:"
STATUS_PREFIX = b"reporter:status:"
# Hadoop Streaming's convention: a program sets a task status or bumps a
# counter by writing these lines to stderr; they are not errors.
PR_SET_PDEATHSIG = 1
# Past this many inputs, sort reads its file list from a file instead of argv.
MAX_SORT_ARGS = 256
SORT_ENV = {"LC_ALL": "C"}

_LIBC = ctypes.CDLL(None, use_errno=True)
_TEMP_COUNTER = itertools.count()


class TaskFailed(Exception):
    """A program (or sort) failed: names the input, exit code and stderr tail."""

    def __init__(self, reason, input_file=None, exit_code=None, stderr_tail=""):
        super().__init__(reason)
        self.reason = reason
        self.input_file = input_file
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail

    def __str__(self):
        parts = [self.reason]
        if self.input_file is not None:
            parts.append(f"input {self.input_file}")
        if self.exit_code is not None:
            parts.append(f"exit code {self.exit_code}")
        text = "; ".join(parts)
        if self.stderr_tail:
            text += f"; stderr tail: {self.stderr_tail.strip()[-300:]!r}"
        return text


class Report:
    """What a program said about itself on stderr: counters and status."""

    def __init__(self):
        self.counters = {}
        self.status = None
        self.stderr_tail = ""

    def add_counter(self, group, name, amount):
        counters = self.counters.setdefault(group, {})
        counters[name] = counters.get(name, 0) + amount

    def merge(self, other):
        for group, counters in other.counters.items():
            for name, amount in counters.items():
                self.add_counter(group, name, amount)
        self.status = other.status or self.status
        self.stderr_tail = other.stderr_tail or self.stderr_tail


def parse_stderr(stream):
    """Split a program's stderr into a Report: counters, status, plain tail."""
    report = Report()
    tail = collections.deque()
    tail_size = 0
    for line in stream:
        if line.startswith(COUNTER_PREFIX):
            _parse_counter(report, line[len(COUNTER_PREFIX):])
            continue
        if line.startswith(STATUS_PREFIX):
            report.status = line[len(STATUS_PREFIX):].strip().decode("utf-8", "replace")
            continue
        tail.append(line)
        tail_size += len(line)
        while tail_size > STDERR_TAIL_BYTES and len(tail) > 1:
            tail_size -= len(tail.popleft())
    report.stderr_tail = b"".join(tail)[-STDERR_TAIL_BYTES:].decode("utf-8", "replace")
    return report


def _parse_counter(report, body):
    fields = body.strip().split(b",")
    if len(fields) != 3:
        return
    try:
        amount = int(fields[2])
    except ValueError:
        return
    group, name = (f.decode("utf-8", "replace") for f in fields[:2])
    report.add_counter(group, name, amount)


def _die_with_parent():
    """In the child: new process group, and SIGKILL if the worker thread dies."""
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class ProgramGuard:
    """Tracks the process groups of running programs so they can be killed.

    A reaper process (mrlib/reaper.py) mirrors the set; if this process is
    SIGKILLed, the reaper sees its stdin close and kills what is left.
    """

    def __init__(self, use_reaper=True):
        self.lock = threading.Lock()
        self.groups = set()
        self.reaper = None
        if use_reaper:
            reaper_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reaper.py")
            self.reaper = subprocess.Popen([sys.executable, "-S", reaper_path],
                                           stdin=subprocess.PIPE, close_fds=True)

    def _tell_reaper(self, line):
        if self.reaper is None:
            return
        try:
            self.reaper.stdin.write(line.encode())
            self.reaper.stdin.flush()
        except (OSError, ValueError):
            pass

    def started(self, group):
        with self.lock:
            self.groups.add(group)
            self._tell_reaper(f"+{group}\n")

    def finished(self, group):
        with self.lock:
            self.groups.discard(group)
            self._tell_reaper(f"-{group}\n")

    def kill_all(self):
        with self.lock:
            groups = list(self.groups)
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except OSError:
                pass

    def close(self):
        self.kill_all()
        if self.reaper is not None:
            try:
                self.reaper.stdin.close()
            except OSError:
                pass
            self.reaper.wait()


def temp_path(final_path):
    """A hidden temporary name beside `final_path`, unique in this process."""
    directory, name = os.path.split(final_path)
    return os.path.join(directory, f".{name}.tmp-{os.getpid()}-{next(_TEMP_COUNTER)}")


def _discard(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class _Deadline:
    """Kill a process group if it runs past `timeout` seconds."""

    def __init__(self, group, timeout):
        self.expired = False
        self.timer = None
        if timeout:
            self.timer = threading.Timer(timeout, self._expire, args=(group,))
            self.timer.daemon = True
            self.timer.start()

    def _expire(self, group):
        self.expired = True
        try:
            os.killpg(group, signal.SIGKILL)
        except OSError:
            pass

    def cancel(self):
        if self.timer is not None:
            self.timer.cancel()


def _execute(command, argv, stdin, stdout, stderr, env, timeout, guard, input_label):
    """Run one command to completion; raise TaskFailed unless it exits 0."""
    try:
        process = command(*argv, _in=stdin, _out=stdout, _err=stderr, _env=env, _bg=True,
                          _new_group=True, _preexec_fn=_die_with_parent,
                          _bg_exc=False, _ok_code=list(range(256)))
    except (OSError, sh.CommandNotFound) as error:
        raise TaskFailed(f"cannot start {command}: {error}", input_label) from None
    group = process.pid
    if guard is not None:
        guard.started(group)
    deadline = _Deadline(group, timeout)
    try:
        exit_code = _wait(process)
    finally:
        deadline.cancel()
        if guard is not None:
            guard.finished(group)
        _kill_stragglers(group)
    if deadline.expired:
        raise TaskFailed(f"timed out after {timeout:g} s", input_label, exit_code)
    return exit_code


def _wait(process):
    try:
        process.wait()
        return process.exit_code
    except sh.ErrorReturnCode as error:
        return error.exit_code


def _kill_stragglers(group):
    """Background children a program left in its group must not outlive the task."""
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass


def program_command(executable):
    """An sh command for a user program, or TaskFailed if it cannot run."""
    path = os.path.abspath(executable)
    if not os.path.isfile(path):
        raise TaskFailed(f"executable {executable} does not exist")
    if not os.access(path, os.X_OK):
        raise TaskFailed(f"executable {executable} is not executable")
    return sh.Command(path)


def run_program(executable, input_path, output_path, env=None, timeout=None, guard=None):
    """Run `executable` < input_path > output_path; return its stderr Report.

    The output appears at `output_path` only if the program exits 0; a
    failure raises TaskFailed and leaves no partial file behind.
    """
    command = program_command(executable)
    tmp = temp_path(output_path)
    try:
        with open(input_path, "rb") as stdin, open(tmp, "wb") as stdout, \
                tempfile.TemporaryFile() as stderr:
            exit_code = _execute(command, (), stdin, stdout, stderr, env, timeout,
                                 guard, input_path)
            stderr.seek(0)
            report = parse_stderr(stderr)
        if exit_code != 0:
            raise TaskFailed(f"{executable} exited with code {exit_code}", input_path,
                             exit_code, report.stderr_tail)
        os.replace(tmp, output_path)
        return report
    except OSError as error:
        raise TaskFailed(f"cannot run {executable}: {error}", input_path) from None
    finally:
        _discard(tmp)


def run_map_with_combiner(executable, combiner, input_path, output_path, env=None,
                          timeout=None, guard=None):
    """Map, sort the map's output, and run the combiner over it into output_path."""
    mapped, ordered = temp_path(output_path), temp_path(output_path)
    try:
        report = run_program(executable, input_path, mapped, env, timeout, guard)
        sort_files([mapped], ordered, timeout=timeout, guard=guard, env=env)
        report.merge(run_program(combiner, ordered, output_path, env, timeout, guard))
        return report
    finally:
        _discard(mapped)
        _discard(ordered)


def run_task_program(executable, input_path, output_path, combiner=None, **options):
    """Run one input of a map or reduce task, through the combiner if there is one."""
    if combiner:
        return run_map_with_combiner(executable, combiner, input_path, output_path, **options)
    return run_program(executable, input_path, output_path, **options)


def sort_files(input_paths, output_path, merge=False, timeout=None, guard=None, env=None):
    """Sort (or merge already sorted) files bytewise into output_path.

    coreutils sort with LC_ALL=C: external merge sort with bounded memory,
    the same order as the sequential pipeline's `LC_ALL=C sort`.
    """
    tmp = temp_path(output_path)
    directory = os.path.dirname(output_path) or "."
    argv = ["-T", directory, "-o", tmp] + (["-m"] if merge else [])
    list_file = None
    try:
        if len(input_paths) > MAX_SORT_ARGS:
            list_file = _write_files0(directory, input_paths)
            argv.append(f"--files0-from={list_file}")
        else:
            argv.extend(["--"] + list(input_paths or [os.devnull]))
        sort_env = dict(env if env is not None else os.environ, **SORT_ENV)
        with open(os.devnull, "rb") as stdin, open(os.devnull, "wb") as stdout, \
                tempfile.TemporaryFile() as stderr:
            exit_code = _execute(sh.Command("sort"), argv, stdin, stdout, stderr,
                                 sort_env, timeout, guard, None)
            stderr.seek(0)
            tail = parse_stderr(stderr).stderr_tail
        if exit_code != 0:
            raise TaskFailed(f"sort exited with code {exit_code}", None, exit_code, tail)
        os.replace(tmp, output_path)
    except OSError as error:
        raise TaskFailed(f"cannot sort into {output_path}: {error}") from None
    finally:
        _discard(tmp)
        if list_file:
            _discard(list_file)


def _write_files0(directory, paths):
    fd, name = tempfile.mkstemp(prefix=".sort-inputs-", dir=directory)
    with os.fdopen(fd, "wb") as handle:
        for path in paths:
            handle.write(os.fsencode(path) + b"\0")
    return name


class TaskContext:
    """The environment a program runs in: ours, plus what the task is about.

    `context` (our extension of new_worker_job) may carry `env`, variables
    for every file, and `files`, variables per input file. Without it, the
    program still learns its input file, as the whole file.
    """

    def __init__(self, context):
        context = context if isinstance(context, dict) else {}
        self.common = _string_dict(context.get("env"))
        files = context.get("files")
        self.per_file = files if isinstance(files, dict) else {}

    def environment(self, input_file):
        env = dict(os.environ)
        env.update(self.common)
        described = _string_dict(self.per_file.get(input_file))
        if not described:
            described = {"mapreduce_map_input_file": input_file,
                         "mapreduce_map_input_start": "0"}
        env.update(described)
        return env


def _string_dict(value):
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}
