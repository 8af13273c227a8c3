"""Run user programs and coreutils sort over files, bytes in and bytes out.

Used by the worker for every task and by the sequential mode, so both run a
program exactly the same way: stdin from a file, stdout to a temporary file
renamed into place only on success, stderr kept aside so its tail can name
the cause of a failure and its `reporter:` lines become counters.
"""
import collections
import ctypes
import dataclasses
import errno
import fcntl
import io
import itertools
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading

import sh

from mrlib import records
from mrlib.attemptlog import MAX_LOG_BYTES, PROGRAM
from mrlib.reaper import ATTEMPT_VARIABLE, children_of, kill_children, kill_tagged
from mrlib.pyjob import FRAMEWORK
from mrlib.shipping import LIBRARY_VARIABLE, PYTHON_VARIABLE

# How much of a failed program's stderr travels in its status message.
STDERR_TAIL_BYTES = 2048
# stderr is read in pieces of at most this much, however long its lines.
MAX_STDERR_PIECE = 64 * 1024
COUNTER_PREFIX = b"reporter:counter:"
STATUS_PREFIX = b"reporter:status:"
# Hadoop Streaming's convention: a program sets a task status or bumps a
# counter by writing these lines to stderr; they are not errors.
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36  # orphaned descendants are re-parented to this process
# Past this many inputs, sort reads its file list from a file instead of argv.
MAX_SORT_ARGS = 256
SORT_ENV = {"LC_ALL": "C"}

# Built-in counters, Hadoop's names in Hadoop's group (FRAMEWORK).
MAP_COUNTING, REDUCE_COUNTING = "map", "reduce"  # what a task counts
COUNTING_MODES = (MAP_COUNTING, REDUCE_COUNTING)
# The unit in which a task's data is counted: lines (0), or records of a size in bytes.
LINES = 0
FROM_PROGRAMS = FRAMEWORK + " (said by the programs)"
COMBINED_IN_MAP = ("Combine input records", "Combine output records")
# Their names, in the order a job's data passes them (the order they are shown).
FRAMEWORK_COUNTERS = (
    "Map input records", "Map input bytes", "Map output records", "Map output bytes",
    "Combine input records", "Combine output records", "Spilled bytes",
    "Reduce input groups", "Reduce input records", "Reduce output records")
# Pieces in which a stream is counted; a relay's pipes are widened to this.
TALLY_CHUNK = 1024 * 1024
F_SETPIPE_SZ = 1031
RELAY_JOIN_SECONDS = 5  # a safety net: a relay or reader ends once its program has
DRAIN_POLL_MS = 50  # how often a pipe's reader looks whether its writer has exited
MAX_SHEBANG = 4096  # what of a script is read to explain why it did not start
MAX_KERNEL_SHEBANG = 256  # Linux's BINPRM_BUF_SIZE: a #! line must fit in it
UTF8_BOM = b"\xef\xbb\xbf"
WINDOWS_LINES = "its #! line ends in a carriage return: the file has Windows line endings"

LIBRARY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # holds mrlib
# Sorts and merges fixed-size records: a program of the standard library only.
RECORDS_PROGRAM = os.path.join(LIBRARY, "mrlib", "records.py")

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

    def add_counters(self, group, amounts):
        """Add each named amount that is known (not None)."""
        for name, amount in amounts.items():
            if amount is not None:
                self.add_counter(group, name, amount)

    def merge(self, other):
        for group, counters in other.counters.items():
            for name, amount in counters.items():
                self.add_counter(group, name, amount)
        self.status = other.status or self.status
        self.stderr_tail = other.stderr_tail or self.stderr_tail


@dataclasses.dataclass(frozen=True)
class Counting:
    """What a task counts (MAP_COUNTING or REDUCE_COUNTING), and the units of its
    input and of its programs' output: LINES, a record size, or None (not counted)."""
    kind: str
    input_unit: int = LINES
    output_unit: int = LINES

    @classmethod
    def from_message(cls, kind, units):
        """From a task's `builtin_counters` and `record_units` fields; None if it counts
        nothing. Units left out are not counted; without the field, all is lines."""
        if kind not in COUNTING_MODES:
            return None
        if not isinstance(units, dict):
            return cls(kind)
        return cls(kind, _unit(units.get("input")), _unit(units.get("output")))


def _unit(value):
    valid = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if valid else None


class Tally:
    """Records and bytes of a stream: a record is a line, the last one
    counted even without its newline; or one of a fixed size."""

    def __init__(self):
        self.newlines = 0
        self.bytes = 0
        self.open_line = False  # the bytes so far end inside a line

    @property
    def records(self):
        return self.newlines + self.open_line

    def records_in(self, unit):
        """How many records of `unit` (LINES or a size); None if unknown or not whole."""
        if unit == LINES:
            return self.records
        if unit is None or self.bytes % unit:
            return None
        return self.bytes // unit

    def add(self, chunk, length=None):
        length = len(chunk) if length is None else length
        if length:
            self.newlines += chunk.count(b"\n", 0, length)
            self.bytes += length
            self.open_line = chunk[length - 1] != ord("\n")

    @classmethod
    def of_file(cls, path):
        tally, buffer = cls(), bytearray(TALLY_CHUNK)
        with open(path, "rb", buffering=0) as handle:
            while length := handle.readinto(buffer):
                tally.add(buffer, length)
        return tally


class _Drain(io.RawIOBase):
    """The read end of a pipe that a program writes: read to its end, or, once
    the program has exited (writer_exited), to the last byte there. A descendant
    that escaped the program's death with the write end open can then keep
    nobody waiting (and no thread or descriptor of ours alive)."""

    def __init__(self, fd):
        super().__init__()
        self.fd = fd
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN)
        self.exited = threading.Event()

    def writer_exited(self):
        self.exited.set()

    def readable(self):
        return True

    def readinto(self, buffer):
        while True:
            if self.poller.poll(DRAIN_POLL_MS):  # data, or the end of the pipe
                data = os.read(self.fd, len(buffer))
                buffer[:len(data)] = data
                return len(data)
            if self.exited.is_set():
                return 0  # nothing left of what the program wrote

    def close(self):
        if not self.closed:
            os.close(self.fd)
        super().close()


class _Relay(threading.Thread):
    """Copies one program's output into the next one's input, counting it:
    what passes between two programs is seen nowhere else."""

    def __init__(self, tally):
        super().__init__(daemon=True)
        self.tally = tally
        source, self.writer = os.pipe()  # the program writes here
        self.reader, sink = os.pipe()  # the next one reads here
        for fd in (source, sink):
            try:
                fcntl.fcntl(fd, F_SETPIPE_SZ, TALLY_CHUNK)
            except OSError:
                pass  # over the system's limit: the default size works too
        self.source, self.sink = _Drain(source), sink

    def ends(self):
        """(what the next program reads, what this program writes) as files."""
        return os.fdopen(self.reader, "rb"), os.fdopen(self.writer, "wb")

    def writer_exited(self):
        """The program exited: pass on what it wrote, then end the next one's input."""
        self.source.writer_exited()

    def run(self):
        buffer = bytearray(TALLY_CHUNK)
        try:
            while length := self.source.readinto(buffer):
                self.tally.add(buffer, length)
                view = memoryview(buffer)[:length]
                while view:
                    view = view[os.write(self.sink, view):]
        except OSError:
            pass  # the next program died (EPIPE): this one gets SIGPIPE, as with one pipe
        finally:
            self.source.close()
            os.close(self.sink)


def bounded_lines(stream, limit=MAX_STDERR_PIECE):
    """(piece, starts_a_line) for each line of a stream, a long one in pieces
    of at most `limit` bytes: stderr with no newline never fills memory."""
    starts = True
    while piece := stream.readline(limit):
        yield piece, starts
        starts = piece.endswith(b"\n")


def parse_stderr(stream, log=None, report=None):
    """Split a program's stderr into a Report (`report`, or a new one):
    counters, status, plain tail. The plain lines also go to `log` (anything
    with a write method), if given."""
    report = report if report is not None else Report()
    tail = collections.deque()
    tail_size = 0
    for line, starts in bounded_lines(stream):
        if starts and line.startswith(COUNTER_PREFIX) \
                and _parse_counter(report, line[len(COUNTER_PREFIX):]):
            continue  # a malformed one is kept as a plain line: the user sees it
        if starts and line.startswith(STATUS_PREFIX):
            report.status = line[len(STATUS_PREFIX):].strip().decode("utf-8", "replace")
            continue
        if log is not None:
            log.write(line)
        tail.append(line)
        tail_size += len(line)
        while tail_size > STDERR_TAIL_BYTES and len(tail) > 1:
            tail_size -= len(tail.popleft())
    report.stderr_tail = b"".join(tail)[-STDERR_TAIL_BYTES:].decode("utf-8", "replace")
    return report


class _StderrReader(threading.Thread):
    """One program's stderr, read while it runs through a pipe, so however
    much it writes nothing grows past a bound: `reporter:` lines become its
    Report, the first `limit` bytes of the rest are kept for the attempt's
    log (the rest only counted), and its last lines are its tail."""

    def __init__(self, limit=MAX_LOG_BYTES):
        super().__init__(daemon=True)
        read_fd, write_fd = os.pipe()
        self.drain = _Drain(read_fd)
        self.reader = io.BufferedReader(self.drain)
        self.writer = os.fdopen(write_fd, "wb")  # the program's; closed here once it has it
        self.limit = limit
        self.kept = bytearray()
        self.dropped = 0
        self.report = Report()
        self.start()

    def write(self, line):
        room = max(self.limit - len(self.kept), 0)
        self.kept += line[:room]
        self.dropped += max(len(line) - room, 0)

    def run(self):
        with self.reader:
            parse_stderr(self.reader, self, self.report)

    def writer_exited(self):
        self.drain.writer_exited()

    def finish(self):
        """Wait for the rest of its stderr (the program has exited)."""
        self.writer_exited()
        self.join(RELAY_JOIN_SECONDS)
        return self

    def said_something(self):
        return bool(self.kept or self.dropped)

    def copy_to(self, log):
        log.write(bytes(self.kept))
        log.skipped(self.dropped)


def _parse_counter(report, body):
    """Add a `group,name,amount` counter line to the report; False if it is not one."""
    fields = body.strip().split(b",")
    if len(fields) != 3:
        return False
    try:
        amount = int(fields[2])
    except ValueError:
        return False
    group, name = (f.decode("utf-8", "replace") for f in fields[:2])
    report.add_counter(group, name, amount)
    return True


def _die_with_parent():
    """In the child: new process group, and SIGKILL if the worker thread dies."""
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class ProgramGuard:
    """Tracks the process groups of running programs so they can be killed.

    A reaper process (mrlib/reaper.py) mirrors the set; if this process is
    SIGKILLed, the reaper sees its stdin close and kills what is left.
    """

    def __init__(self, use_reaper=True, adopt_orphans=False):
        self.lock = threading.Lock()
        self.groups = set()
        self.reaper = None
        # With adopt_orphans, this process is a subreaper: what a program leaves running
        # when its parent exits (a daemon, double-forked, setsid, even one whose tag is
        # gone or whose environment cannot be read) becomes this process's child, and is
        # killed once no attempt runs (kill_orphans).
        self.adopts = adopt_orphans and _LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1) == 0
        # Children this process had before (a launcher's `tee` for its log, inherited
        # when it exec'd us) are not orphans of ours.
        self.inherited = {pid for pid, _ in children_of(os.getpid())} if self.adopts else set()
        self.attempts_lock = threading.Lock()
        self.open_attempts = 0
        # Unique to this guard, even when the pid is reused: every attempt's
        # tag starts with it, so all that this process started can be found.
        self.prefix = f"{os.getpid()}-{os.urandom(4).hex()}-"
        self.tag = self.prefix + "shared"  # programs run on this guard directly
        self.attempts = itertools.count()
        if use_reaper:
            reaper_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reaper.py")
            # In a process group of its own: a signal to this process's group (PySpark's
            # daemon hangs up its group as it exits; an operator's `kill -9 -PGID`) must
            # not reach the reaper, even before it has started ignoring signals.
            # Untagged: a job run by a program (a nested job) has a reaper of its own,
            # which the sweep of the outer attempt's tag must leave to kill its programs.
            environment = {name: value for name, value in os.environ.items()
                           if name != ATTEMPT_VARIABLE}
            self.reaper = subprocess.Popen([sys.executable, "-S", reaper_path, self.prefix],
                                           stdin=subprocess.PIPE, close_fds=True,
                                           process_group=0, env=environment)

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
        kill_tagged(self.prefix, whole=False)

    def attempt_tag(self):
        return f"{self.prefix}{next(self.attempts)}"

    def attempt_opened(self):
        with self.attempts_lock:  # never while kill_orphans looks for strangers
            self.open_attempts += 1

    def attempt_closed(self):
        with self.attempts_lock:
            self.open_attempts -= 1
            if self.open_attempts == 0:
                self.kill_orphans()

    def kill_orphans(self):
        """Kill the orphans this process adopted. Only while no attempt is open (its lock
        held): then no program is being started, so every child of ours that is not a
        program's group leader or the reaper is an orphan."""
        if not self.adopts:
            return
        with self.lock:
            known = set(self.groups) | self.inherited
        if self.reaper is not None:
            known.add(self.reaper.pid)
        kill_children(known)

    def close(self):
        self.kill_all()
        with self.attempts_lock:
            self.kill_orphans()
        if self.reaper is not None:
            try:
                self.reaper.stdin.close()
            except OSError:
                pass
            self.reaper.wait()


class TaskGuard:
    """One task's share of a ProgramGuard: its programs can be killed alone.

    For an attempt that no longer counts (its job was cancelled or failed,
    or another copy won): cancel() kills the programs it runs, and any it
    would start after that is killed as it starts.
    """

    def __init__(self, guard):
        self.guard = guard
        self.tag = guard.attempt_tag()
        self.lock = threading.Lock()
        self.groups = set()
        self.cancelled = False
        self.closed = False
        guard.attempt_opened()

    def started(self, group):
        self.guard.started(group)
        with self.lock:
            self.groups.add(group)
            cancelled = self.cancelled
        if cancelled:
            _kill_group(group)

    def finished(self, group):
        with self.lock:
            self.groups.discard(group)
        self.guard.finished(group)

    def cancel(self):
        with self.lock:
            self.cancelled = True
            groups = list(self.groups)
        for group in groups:
            _kill_group(group)
        kill_tagged(self.tag)  # closed by its own thread, once it has stopped starting programs

    def close(self):
        """The attempt is over: kill whatever it started that still runs (setsid ones too),
        and, if no other attempt runs, every orphan the worker adopted."""
        kill_tagged(self.tag)
        with self.lock:
            closed, self.closed = self.closed, True
        if not closed:
            self.guard.attempt_closed()


def temp_path(final_path):
    """A hidden temporary name beside `final_path`, unique in this process."""
    directory, name = os.path.split(final_path)
    return os.path.join(directory, f".{name}.tmp-{os.getpid()}-{next(_TEMP_COUNTER)}")


def discard(path):
    """Remove a temporary file of ours if it is there."""
    try:
        os.unlink(path)
    except (FileNotFoundError, ValueError):  # ValueError: a NUL in the name, never created
        pass


class _Deadline:
    """Kill process groups if they run past `timeout` seconds."""

    def __init__(self, groups, timeout):
        self.expired = False
        self.timer = None
        if timeout:
            self.timer = threading.Timer(timeout, self._expire, args=(groups,))
            self.timer.daemon = True
            self.timer.start()

    def _expire(self, groups):
        self.expired = True
        for group in groups:
            _kill_group(group)

    def cancel(self):
        if self.timer is not None:
            self.timer.cancel()


def _kill_group(group):
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass


class Stage:
    """One program of a pipeline: a command, its arguments and extra environment."""

    def __init__(self, label, command, argv=(), env=None, reports=True, says_why=None):
        self.label = label
        self.command = command
        self.argv = list(argv)
        self.env = env or {}
        self.reports = reports  # its stderr may carry reporter: lines
        # An exit code with which it means: the reason is my last line of stderr.
        self.says_why = says_why


def program_stage(executable):
    """A user program as a stage, or TaskFailed if it cannot run."""
    if "\0" in executable:
        raise TaskFailed(f"executable {executable!r} has a NUL byte in its name")
    path = os.path.abspath(executable)
    if not os.path.isfile(path):
        raise TaskFailed(f"executable {executable} does not exist")
    if not os.access(path, os.X_OK):
        raise TaskFailed(f"executable {executable} is not executable")
    first = first_line(path)
    if first.startswith(b"#!") and first.endswith(b"\r\n"):
        # Found before it runs: through `#!/usr/bin/env python3\r`, env would only
        # say that "python3\r" does not exist.
        raise TaskFailed(f"cannot start {executable}: {WINDOWS_LINES}")
    return Stage(executable, sh.Command(path))


def first_line(path):
    """The first line of a file (at most MAX_SHEBANG bytes), or b"" if it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.readline(MAX_SHEBANG)
    except OSError:
        return b""


def sort_stage(argv=(), temp_dir=None):
    """coreutils sort in bytewise order: external merge sort, bounded memory.

    Its runs spill into `temp_dir` (beside the task's output), not /tmp,
    which may be small or held in memory.
    """
    argv = list(argv) + (["-T", temp_dir] if temp_dir else [])
    return Stage("sort", sh.Command("sort"), argv, SORT_ENV, reports=False)


class Pipeline:
    """stage1 < input | stage2 | ... > output, joined by kernel pipes.

    Every program runs in its own process group, registered with the guard
    (so it dies with this process), under one deadline for the whole run.
    """

    def __init__(self, stages, env=None, timeout=None, guard=None, log=None, tally=None):
        self.stages = stages
        self.env = env if env is not None else os.environ
        self.timeout = timeout
        self.guard = guard
        self.log = log  # an AttemptLog for the stages' stderr, or None
        self.tally = tally  # counts what the first stage writes, if given
        self.relay = None

    def run(self, stdin, stdout, input_label):
        """Run to completion; return a Report; raise TaskFailed on any failure."""
        started, errors = [], []
        try:
            self._start_all(stdin, stdout, input_label, started, errors)
            exit_codes, expired = self._wait_all(started, errors)
            return self._report(exit_codes, errors, input_label, expired)
        finally:
            for error in errors:
                error.writer.close()  # if a start failed before it was handed over
                error.writer_exited()  # every program has ended by now
            if self.relay is not None:
                self.relay.writer_exited()
                self.relay.join(RELAY_JOIN_SECONDS)

    def _start_all(self, stdin, stdout, input_label, started, errors):
        source = stdin
        try:
            for number, stage in enumerate(self.stages):
                last = number == len(self.stages) - 1
                if last:
                    reader, writer = None, stdout
                elif number == 0 and self.tally is not None:
                    self.relay = _Relay(self.tally)
                    reader, writer = self.relay.ends()
                    self.relay.start()
                else:
                    reader, writer = _pipe()
                errors.append(_StderrReader())
                try:
                    started.append(self._start(stage, source, writer, errors[-1].writer,
                                               input_label))
                finally:
                    errors[-1].writer.close()  # the program holds it now
                    if source is not stdin:
                        source.close()
                    if not last:
                        writer.close()
                source = reader
        except TaskFailed:
            for process in started:
                _kill_group(process.pid)
                _wait(process)
                self._forget(process.pid)
            raise

    def _start(self, stage, stdin, stdout, stderr, input_label):
        env = dict(self.env, **stage.env)
        if self.guard is not None:
            env[ATTEMPT_VARIABLE] = self.guard.tag
        try:
            process = stage.command(*stage.argv, _in=stdin, _out=stdout, _err=stderr, _env=env,
                                    _bg=True, _new_group=True, _preexec_fn=_die_with_parent,
                                    _bg_exc=False, _ok_code=list(range(256)))
        except Exception as error:  # sh.ForkException (bad #! line), ValueError (NUL) ...
            raise TaskFailed(f"cannot start {stage.label}: {why_not_started(stage, error)}",
                             input_label) from None
        if self.guard is not None:
            self.guard.started(process.pid)
        return process

    def _forget(self, group):
        if self.guard is not None:
            self.guard.finished(group)
        _kill_group(group)  # children it left behind must not outlive the task

    def _wait_all(self, started, errors):
        """The stages' exit codes, and whether the deadline killed them."""
        deadline = _Deadline([p.pid for p in started], self.timeout)
        try:
            exit_codes = []
            for number, process in enumerate(started):
                exit_codes.append(_wait(process))
                errors[number].writer_exited()
                if number == 0 and self.relay is not None:
                    self.relay.writer_exited()
        finally:
            deadline.cancel()
            for process in started:
                self._forget(process.pid)
        return exit_codes, deadline.expired

    def _report(self, exit_codes, errors, input_label, expired=False):
        """The stages' Report, their stderr kept in the log; TaskFailed if one failed."""
        report = Report()
        tails = []
        errors = [error.finish() for error in errors]
        # A header per program only where more than one said something.
        several = sum(1 for error in errors if error.said_something()) > 1
        for stage, error in zip(self.stages, errors):
            if self.log is not None:
                if several:
                    self.log.section(stage.label, PROGRAM)
                error.copy_to(self.log)
            tails.append(error.report.stderr_tail)
            if stage.reports:
                report.merge(error.report)
        if expired:
            raise TaskFailed(f"timed out after {self.timeout:g} s", input_label,
                             next((c for c in exit_codes if c), None),
                             next((t for t in tails if t.strip()), ""))
        failed = _culprit(exit_codes)
        if failed is not None:
            stage = self.stages[failed]
            if _died_of_sigpipe(exit_codes[failed]) and failed + 1 < len(self.stages):
                raise TaskFailed(f"{self.stages[failed + 1].label} exited before reading all "
                                 f"of its input", input_label)
            if exit_codes[failed] == stage.says_why and tails[failed].strip():
                raise TaskFailed(tails[failed].strip().splitlines()[-1], input_label)
            raise TaskFailed(f"{stage.label} exited with code {exit_codes[failed]}",
                             input_label, exit_codes[failed], tails[failed])
        return report


def why_not_started(stage, error):
    """Why exec failed, in a user's terms: for a script, mostly its #! line."""
    text = _last_line(error)
    code = re.search(r"\[Errno (\d+)\]", text)
    path = getattr(stage.command, "_path", b"")
    path = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    code = int(code.group(1)) if code else None
    first = first_line(path) if os.path.isfile(path) else b""
    if code == errno.ENOEXEC:
        return _shebang_layout_problem(first) or (
            "it is neither a program nor a script starting with a #! line "
            "(add one, e.g. #!/bin/sh)")
    if code not in (errno.ENOENT, errno.EACCES) or not first.startswith(b"#!"):
        return text
    return _interpreter_problem(first, missing=code == errno.ENOENT)


def shebang_problem(path):
    """What in a script's #! line keeps it from starting (None if nothing seen): checked
    before a job is sent, so it is refused once, not retried on every task."""
    first = first_line(path)
    problem = _shebang_layout_problem(first)
    if problem or not first.startswith(b"#!"):
        return problem
    words = first[2:].split()
    interpreter = os.fsdecode(words[0]) if words else ""
    if (first.rstrip(b"\n").endswith(b"\r") or not words
            or (os.path.isabs(interpreter) and not os.path.isfile(interpreter))):
        return _interpreter_problem(first, missing=True)
    if os.path.isabs(interpreter) and not os.access(interpreter, os.X_OK):
        return _interpreter_problem(first, missing=False)
    return None


def _shebang_layout_problem(first):
    """A #! line the kernel cannot read: behind a byte-order mark, or too long."""
    if first.startswith(UTF8_BOM + b"#!"):
        return "it starts with a UTF-8 byte-order mark before its #! line: save it without"
    length = len(first.rstrip(b"\n"))
    if first.startswith(b"#!") and length >= MAX_KERNEL_SHEBANG:
        return (f"its #! line is {length} bytes long: the kernel reads at most "
                f"{MAX_KERNEL_SHEBANG - 1}")
    return None


def _interpreter_problem(first, missing):
    """What is wrong with the interpreter a #! line names (missing, or not executable)."""
    if first.rstrip(b"\n").endswith(b"\r"):
        return WINDOWS_LINES
    words = first[2:].split()
    if not words:
        return "its #! line names no interpreter"
    interpreter = os.fsdecode(words[0])
    if not (interpreter.isascii() and interpreter.isprintable()):
        interpreter = ascii(interpreter)  # a non-breaking space or the like, made visible
    if missing:
        return f"its interpreter {interpreter} (on its #! line) does not exist"
    return f"its interpreter {interpreter} (on its #! line) is not an executable program"


def _last_line(error):
    """The gist of an exception: sh's ForkException carries the child's whole traceback."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _pipe():
    read_fd, write_fd = os.pipe()
    return os.fdopen(read_fd, "rb"), os.fdopen(write_fd, "wb")


def _culprit(exit_codes):
    """The stage to blame: the first that failed other than by a broken pipe.

    A program dies of SIGPIPE when the one after it failed first.
    """
    failures = [n for n, code in enumerate(exit_codes) if code]
    real = [n for n in failures if not _died_of_sigpipe(exit_codes[n])]
    return (real or failures or [None])[0]


def _died_of_sigpipe(exit_code):
    """Killed by SIGPIPE, or exited as a shell reports that (128 + the signal)."""
    return exit_code in (-signal.SIGPIPE, 128 + signal.SIGPIPE)


def _wait(process):
    try:
        process.wait()
        return process.exit_code
    except sh.ErrorReturnCode as error:
        return error.exit_code


def run_stages(stages, input_path, output_path, env=None, timeout=None, guard=None, log=None,
               tally=None, check=None):
    """Run a pipeline from a file into output_path, renamed into place on success.

    `tally`, if given, counts what the first stage writes (when another follows);
    `check`, if given, is called with the finished output's path before it is
    renamed, and may refuse it by raising TaskFailed."""
    tmp = temp_path(output_path)
    try:
        with open(input_path, "rb") as stdin, open(tmp, "wb") as stdout:
            pipeline = Pipeline(stages, env, timeout, guard, log, tally)
            report = pipeline.run(stdin, stdout, input_path)
        if check is not None:
            check(tmp)
        os.replace(tmp, output_path)
        return report
    except (OSError, ValueError) as error:
        raise TaskFailed(f"cannot run {stages[0].label}: {error}", input_path) from None
    finally:
        discard(tmp)


def run_program(executable, input_path, output_path, env=None, timeout=None, guard=None):
    """Run `executable` < input_path > output_path; return its stderr Report.

    The output appears at `output_path` only if the program exits 0; a
    failure raises TaskFailed and leaves no partial file behind.
    """
    return run_stages([program_stage(executable)], input_path, output_path, env, timeout, guard)


def run_task_program(executable, input_path, output_path, combiner=None, sort_output=False,
                     env=None, timeout=None, guard=None, log=None, counting=None, spills=False,
                     layout=None, output_records=None):
    """Run one input of a task: the program, then (map side) combine and/or sort.

    With a combiner: program | sort | combiner. With sort_output, the result
    is sorted bytewise too, so the group phase only has to merge. With
    `counting` (a Counting) the Report carries the
    built-in counters too; `spills`: the output is kept for a shuffle.
    `layout` (a records.Layout): what is sorted is fixed-size records, not
    lines. `output_records` (a records.Layout): the output must be whole records.
    """
    stages = [program_stage(executable)]
    scratch = os.path.dirname(output_path) or "."
    if combiner:
        stages += [sorter(layout, scratch, executable), program_stage(combiner)]
    if sort_output:
        # One thread: tasks on the other workers keep the other cores busy,
        # and a second sort thread there only contends (0.63 s vs 0.90 s a
        # 16 MB run on 2 cores).
        stages.append(sorter(layout, scratch, combiner or executable, ["--parallel=1"]))
    produced = Tally() if counting and len(stages) > 1 else None
    counts_groups = counting and counting.kind == REDUCE_COUNTING \
        and counting.input_unit == LINES  # runs of one key in records are not counted
    groups = GroupCount(input_path, guard) if counts_groups else None
    try:
        report = run_stages(stages, input_path, output_path, env, timeout, guard, log, produced,
                            whole_records(output_records, stages[-1].label, input_path))
    finally:
        group_count = groups.result() if groups is not None else None
    if counting:
        keep_claims_of_programs(report, bool(combiner))
        counters = builtin_counters(counting, input_path, output_path, produced, group_count,
                                    bool(combiner), spills)
        report.add_counters(FRAMEWORK, counters)
    return report


def sorter(layout, scratch, program, line_argv=()):
    """The stage that sorts what `program` wrote: lines, or records of a layout."""
    if layout is None:
        return sort_stage(line_argv, scratch)
    return records_stage("sort", layout, scratch, f"the output of {program}")


def records_stage(command, layout, scratch, *what):
    """mrlib/records.py as a stage: sort or merge records of `layout`'s size."""
    argv = ["-S", RECORDS_PROGRAM, command, str(layout.size), scratch, layout.option, *what]
    return Stage(f"record {command}", sh.Command(sys.executable), argv, reports=False,
                 says_why=records.NOT_RECORDS_EXIT)


def whole_records(layout, program, input_path):
    """A check for run_stages: the output is whole records of a layout (None: no check)."""
    if layout is None:
        return None

    def check(path):
        try:
            records.check_file(path, layout.size, layout.option)
        except records.RecordError as error:
            what = str(error).replace(path, f"the output of {program}", 1)
            raise TaskFailed(what, input_path) from None
    return check


def keep_claims_of_programs(report, combined):
    """The built-in counters are counted here: what a program says of them is moved to a
    group of its own, except the combine counts of a map that combines in memory (a
    Python job's), which nothing else can count."""
    claimed = report.counters.pop(FRAMEWORK, {})
    own = {name: n for name, n in claimed.items() if name in COMBINED_IN_MAP and not combined}
    report.add_counters(FRAMEWORK, own)
    report.add_counters(FROM_PROGRAMS, {n: v for n, v in claimed.items() if n not in own})


def builtin_counters(counting, input_path, output_path, produced, groups, combined, spills):
    """Hadoop's framework counters for one input of a task, by name (None: not known).

    `produced` tallied the program's own output when other stages followed
    it; otherwise the output file is that output."""
    taken, output = Tally.of_file(input_path), Tally.of_file(output_path)
    produced = produced or output
    read, wrote = counting.input_unit, counting.output_unit
    if counting.kind == REDUCE_COUNTING:
        return {"Reduce input groups": groups, "Reduce input records": taken.records_in(read),
                "Reduce output records": output.records_in(wrote)}
    counters = {"Map input records": taken.records_in(read), "Map input bytes": taken.bytes,
                "Map output records": produced.records_in(wrote),
                "Map output bytes": produced.bytes}
    if combined:
        counters.update({"Combine input records": produced.records_in(wrote),
                         "Combine output records": output.records_in(wrote)})
    if spills:  # lines each with its newline: what a map-side sort writes
        counters["Spilled bytes"] = output.bytes + (output.open_line and wrote == LINES)
    return counters


class GroupCount:
    """The groups a reducer sees in a sorted file (runs of lines with one key),
    counted beside it: `cut -f1 | uniq | wc -l` at C speed over the same file."""

    def __init__(self, path, guard=None):
        self.count = None
        self.thread = threading.Thread(target=self._count, args=(path, guard), daemon=True)
        self.thread.start()

    def _count(self, path, guard):
        stages = [Stage(name, sh.Command(name), argv, SORT_ENV, reports=False)
                  for name, argv in (("cut", ["-f1"]), ("uniq", []), ("wc", ["-l"]))]
        try:
            with open(path, "rb") as stdin, tempfile.TemporaryFile() as stdout:
                Pipeline(stages, guard=guard).run(stdin, stdout, path)
                stdout.seek(0)
                self.count = int(stdout.read().strip() or 0)
        except (OSError, ValueError, TaskFailed):
            self.count = None  # no count is better than a wrong one

    def result(self):
        self.thread.join()
        return self.count


def sort_files(input_paths, output_path, merge=False, timeout=None, guard=None, env=None,
               log=None, layout=None):
    """Sort (or merge already sorted) files bytewise into output_path.

    coreutils sort with LC_ALL=C: external merge sort with bounded memory,
    the same order as the sequential pipeline's `LC_ALL=C sort`. With a
    `layout`, the files hold fixed-size records instead (mrlib/records.py),
    and their names go to it on stdin.
    """
    tmp = temp_path(output_path)
    directory = os.path.dirname(output_path) or "."
    list_file, stdin_path = None, os.devnull
    try:
        if layout is not None:
            list_file = stdin_path = _write_files0(directory, input_paths)
            stage = records_stage("merge" if merge else "sort-files", layout, directory)
        else:
            list_file, stage = _line_sort(input_paths, tmp, merge, directory)
        with open(stdin_path, "rb") as stdin, open(tmp if layout else os.devnull, "wb") as stdout:
            Pipeline([stage], env, timeout, guard, log).run(stdin, stdout, None)
        os.replace(tmp, output_path)
    except (OSError, ValueError) as error:
        raise TaskFailed(f"cannot sort into {output_path}: {error}") from None
    finally:
        discard(tmp)
        if list_file:
            discard(list_file)


def _line_sort(input_paths, tmp, merge, directory):
    """(a list file to remove or None, the sort stage) to sort lines into `tmp`."""
    argv = ["-T", directory, "-o", tmp] + (["-m"] if merge else [])
    list_file = None
    # A file name that is not UTF-8 (held as surrogates) cannot go into
    # argv through `sh`; in a NUL-separated list it goes as its bytes.
    if len(input_paths) > MAX_SORT_ARGS or not all(map(_is_utf8, input_paths)):
        list_file = _write_files0(directory, input_paths)
        argv.append(f"--files0-from={list_file}")
    else:
        argv.extend(["--"] + list(input_paths or [os.devnull]))
    return list_file, sort_stage(argv)


def _is_utf8(path):
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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

    def environment(self, input_file, base=None):
        """The environment of a program reading `input_file`: `base` (by default
        ours) and what the task says."""
        env = dict(os.environ if base is None else base)
        # An unbuffered Python program writes one record per system call:
        # the word count map ran 2.2x slower into a file and 1.8x slower into
        # the map-side sort's pipe (bench/README.md). Output
        # goes to files, never to a terminal, so buffering loses nothing; a
        # job that wants it anyway sets it in its env.
        env.pop("PYTHONUNBUFFERED", None)
        # A Python job's programs run in this interpreter, with this library.
        env[PYTHON_VARIABLE] = sys.executable
        env[LIBRARY_VARIABLE] = LIBRARY
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
