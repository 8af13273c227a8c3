"""A master and workers run as real processes on free loopback ports.

The tests (tests/conftest.py) and the benchmarks (bench/cluster_run.py)
start clusters the way a user does: `python3 master.py PORT` and
`python3 worker.py PORT WORKER_PORT`, each in a session of its own, so that
everything a process starts (programs, sort, the reaper) can be found in
/proc, measured, and killed at the end.

It imports helper.py, so the repository's root must be on sys.path: the tests'
conftest.py and bench/cluster_run.py put it there.
"""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import helper

REPO = Path(__file__).resolve().parent.parent.parent
PYTHON = sys.executable
START_TIMEOUT = 15.0
POLL_INTERVAL = 0.05
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def wait_until(predicate, timeout=START_TIMEOUT, interval=POLL_INTERVAL, what="condition"):
    """Poll `predicate` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# --- ports -----------------------------------------------------------------

def tcp_free(port):
    with socket.socket() as sock:
        try:
            sock.bind(("localhost", port))
            return True
        except OSError:
            return False


def udp_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("localhost", port))
            return True
        except OSError:
            return False


def free_port():
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def free_master_port():
    """A TCP port whose PORT-1 is free for UDP too (the master needs both)."""
    while True:
        port = free_port()
        if port > 1025 and udp_free(helper.heartbeat_port(port)) and tcp_free(port):
            return port


def listening(port):
    try:
        socket.create_connection(("localhost", port), timeout=1).close()
        return True
    except OSError:
        return False


# --- files ---------------------------------------------------------------------

SECRET_MODE = 0o600  # what the programs accept: the owner's only, as ssh wants of a key


def write_secret(path, text):
    """Write a secret file the way a user must: readable by its owner only."""
    path = Path(path)
    path.write_text(text)
    path.chmod(SECRET_MODE)
    return path


# --- processes, read from /proc ----------------------------------------------

def _stat_fields(pid):
    """The fields of /proc/PID/stat after the command name, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2:].split()


def pid_alive(pid):
    """True if the process exists and is not a zombie."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != b"Z"


def sessions_members(sids):
    """Pids of live processes in any of the sessions `sids` (one pass over /proc)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(entry)
        if fields is not None and int(fields[3]) in sids and fields[0] != b"Z":
            members.append(int(entry))
    return members


def session_members(sid):
    """Pids of live processes in session `sid`."""
    return sessions_members({sid})


def kill_session(sid):
    for pid in session_members(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def cpu_seconds(pid):
    """(own, reaped children's) CPU seconds of a live process, or None."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime) / CLOCK_TICKS, (cutime + cstime) / CLOCK_TICKS


def memory_bytes(pid):
    """(resident, peak resident) bytes of a live process, or None."""
    values = {}
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                name, _, rest = line.partition(b":")
                if name in (b"VmRSS", b"VmHWM"):
                    values[name] = int(rest.split()[0]) * 1024
    except OSError:
        return None
    return values.get(b"VmRSS", 0), values.get(b"VmHWM", 0)


def thread_count(pid):
    """How many threads a live process runs."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


def command_name(pid):
    try:
        with open(f"/proc/{pid}/comm", "rb") as handle:
            return handle.read().strip().decode("utf-8", "replace")
    except OSError:
        return "?"


# --- a cluster ---------------------------------------------------------------

class LocalCluster:
    """A master and workers of this repository, started in `workdir`."""

    def __init__(self, workdir, env=None):
        self.workdir = Path(workdir)
        self.port = free_master_port()
        self.env = dict(os.environ, **(env or {}))
        self.master = None
        self.workers = []
        self.sessions = []
        self.logs = self.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def spawn(self, argv, log_name, preexec_fn=None, env=None, cwd=None):
        with open(self.logs / log_name, "ab") as log:
            process = subprocess.Popen([PYTHON] + [str(a) for a in argv],
                                       cwd=cwd or self.workdir,
                                       stdout=log, stderr=subprocess.STDOUT,
                                       env=env or self.env, start_new_session=True,
                                       preexec_fn=preexec_fn)
        self.sessions.append(process.pid)
        return process

    def start_master(self, preexec_fn=None, extra=()):
        self.master = self.spawn([REPO / "master.py", self.port, *extra], "master.log",
                                 preexec_fn)
        wait_until(lambda: listening(self.port) or self.master.poll() is not None,
                   what="the master to listen")
        assert self.master.poll() is None, self.log("master.log")
        return self.master

    def start_worker(self, port=None, wait=True, extra=(), preexec_fn=None, env=None, cwd=None):
        port = port or free_port()
        process = self.spawn([REPO / "worker.py", self.port, port, *extra],
                             f"worker-{port}.log", preexec_fn, env, cwd)
        process.worker_port = port
        self.workers.append(process)
        if wait:
            wait_until(lambda: self.worker_state(process.pid) == "ready"
                       or process.poll() is not None, what=f"worker {process.pid} to register")
            assert process.poll() is None, self.log(f"worker-{port}.log")
        return process

    def start_workers(self, count):
        return [self.start_worker() for _ in range(count)]

    def cluster_status(self):
        return helper.request("localhost", self.port, helper.cluster_status())

    def worker_state(self, pid):
        for worker in self.cluster_status()["workers"]:
            if worker["pid"] == pid:
                return worker["state"]
        return None

    def log(self, name):
        path = self.logs / name
        return path.read_text(errors="replace") if path.exists() else ""

    def shutdown(self):
        helper.send_message("localhost", self.port, helper.shutdown())

    def alive(self):
        """Pids still running in any session this cluster started."""
        return sessions_members(set(self.sessions))

    def stop(self):
        """Shut down cleanly if possible, then kill whatever is left."""
        if self.master is not None and self.master.poll() is None:
            try:
                self.shutdown()
                self.master.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        for sid in self.sessions:
            kill_session(sid)
        for process in [self.master, *self.workers]:
            if process is not None:
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    pass
