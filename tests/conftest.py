"""Shared test machinery: real master and worker processes on free loopback ports.

Every process is started in a session of its own, so at teardown everything
it started (programs, sort, the reaper) can be found in /proc and killed:
no test leaves a process behind, whatever it did.
"""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import helper  # noqa: E402

PYTHON = sys.executable
EXEC = REPO / "exec"
WORD_COUNT = (EXEC / "word_count" / "map.py", EXEC / "word_count" / "reduce.py")
WORD_COUNT_SH = (EXEC / "word_count" / "map.sh", EXEC / "word_count" / "reduce.sh")
GREP = (EXEC / "grep" / "map.py", EXEC / "grep" / "reduce.py")
START_TIMEOUT = 15.0
JOB_TIMEOUT = 120.0


def wait_until(predicate, timeout=START_TIMEOUT, interval=0.05, what="condition"):
    """Poll `predicate` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def _tcp_free(port):
    with socket.socket() as sock:
        try:
            sock.bind(("localhost", port))
            return True
        except OSError:
            return False


def _udp_free(port):
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
        if port > 1025 and _udp_free(port - 1) and _tcp_free(port):
            return port


def listening(port):
    try:
        socket.create_connection(("localhost", port), timeout=1).close()
        return True
    except OSError:
        return False


def session_members(sid):
    """Pids of live processes in session `sid` (read from /proc)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        state, session = fields[0], int(fields[3])
        if session == sid and state != b"Z":
            members.append(int(entry))
    return members


def kill_session(sid):
    for pid in session_members(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def concatenate(files):
    """`cat files`, except that a file boundary always ends a line.

    Plain cat would glue an unterminated last line to the next file's first
    line; a MapReduce job maps each file on its own, so a file's end is the
    end of its last record, as in Hadoop.
    """
    parts = []
    for path in files:
        data = Path(path).read_bytes()
        parts.append(data + b"\n" if data and not data.endswith(b"\n") else data)
    return b"".join(parts)


def sequential(files, mapper, reducer, env=None):
    """The oracle: cat files | map | LC_ALL=C sort | reduce, as bytes."""
    data = concatenate(files)
    run_env = dict(os.environ, **(env or {}))
    mapped = subprocess.run([str(mapper)], input=data, stdout=subprocess.PIPE,
                            env=run_env, check=True).stdout
    ordered = subprocess.run(["sort"], input=mapped, stdout=subprocess.PIPE,
                             env=dict(run_env, LC_ALL="C"), check=True).stdout
    return subprocess.run([str(reducer)], input=ordered, stdout=subprocess.PIPE,
                          env=run_env, check=True).stdout


def partition_files(directory):
    """input_0 … input_N of a directory, in partition order."""
    files = [p for p in Path(directory).iterdir() if p.name.startswith("input_")]
    return sorted(files, key=lambda p: int(p.name.split("_")[1]))


def key_of(line):
    return line.split(b"\t", 1)[0]


class Cluster:
    """A master and workers run as the user would, in a scratch directory."""

    def __init__(self, workdir, env=None):
        self.workdir = Path(workdir)
        self.port = free_master_port()
        self.env = dict(os.environ, **(env or {}))
        self.env.pop("PYTHONUNBUFFERED", None)
        self.master = None
        self.workers = []
        self.sessions = []
        self.logs = self.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def spawn(self, argv, log_name):
        log = open(self.logs / log_name, "ab")
        process = subprocess.Popen([PYTHON] + [str(a) for a in argv], cwd=self.workdir,
                                   stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                   start_new_session=True)
        log.close()
        self.sessions.append(process.pid)
        return process

    def start_master(self):
        self.master = self.spawn([REPO / "master.py", self.port], "master.log")
        wait_until(lambda: listening(self.port) or self.master.poll() is not None,
                   what="the master to listen")
        assert self.master.poll() is None, self.master_log()
        return self.master

    def start_worker(self, port=None, wait=True, extra=()):
        port = port or free_port()
        process = self.spawn([REPO / "worker.py", self.port, port, *extra],
                             f"worker-{port}.log")
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

    def send_job(self, *args, timeout=JOB_TIMEOUT):
        """Run send_job.py as a user would; return the CompletedProcess."""
        return subprocess.run([PYTHON, str(REPO / "send_job.py"), str(self.port),
                               *[str(a) for a in args]], cwd=self.workdir, env=self.env,
                              capture_output=True, timeout=timeout)

    def send_job_async(self, *args):
        return subprocess.Popen([PYTHON, str(REPO / "send_job.py"), str(self.port),
                                 *[str(a) for a in args]], cwd=self.workdir, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def run_job(self, mapper, reducer, input_dir, output_dir, mappers=4, reducers=2, *extra):
        """Submit a job with --wait; assert it succeeded; return the output files."""
        result = self.send_job("--input", input_dir, "--output", output_dir,
                               "--mapper", mapper, "--reducer", reducer,
                               "--mappers", mappers, "--reducers", reducers, "--wait", *extra)
        assert result.returncode == 0, (result.stdout.decode() + result.stderr.decode()
                                        + self.master_log()[-3000:])
        return partition_files(output_dir)

    def send_raw(self, data, port=None):
        """Send raw bytes on one connection, as a misbehaving client would."""
        with socket.create_connection(("localhost", port or self.port), timeout=5) as sock:
            sock.sendall(data)

    def log(self, name):
        path = self.logs / name
        return path.read_text(errors="replace") if path.exists() else ""

    def master_log(self):
        return self.log("master.log")

    def wait_for_log(self, text, timeout=START_TIMEOUT, name="master.log"):
        return wait_until(lambda: text in self.log(name), timeout, what=f"{text!r} in {name}")

    def shutdown(self):
        helper.send_message("localhost", self.port, helper.shutdown())

    def alive(self):
        """Pids still running in any session this cluster started."""
        return [pid for sid in self.sessions for pid in session_members(sid)]

    def stop(self):
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


@pytest.fixture
def cluster(tmp_path):
    """A running master (no workers yet) in a scratch directory."""
    instance = Cluster(tmp_path)
    instance.start_master()
    yield instance
    instance.stop()


@pytest.fixture
def make_cluster(tmp_path):
    """A factory for clusters with settings (e.g. a short heartbeat interval)."""
    made = []

    def make(env=None, start=True):
        instance = Cluster(tmp_path / f"cluster{len(made)}", env)
        made.append(instance)
        if start:
            instance.start_master()
        return instance

    yield make
    for instance in made:
        instance.stop()


def write_files(directory, contents):
    """Create files from a {name: bytes} dict; return the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        (directory / name).write_bytes(data)
    return directory


def input_files(directory):
    """The files a job reads from a directory, in the order `cat dir/*` does."""
    return sorted(p for p in Path(directory).iterdir() if not p.name.startswith("."))


def assert_matches_sequential(outputs, input_dir, mapper, reducer, reducers, env=None):
    """Output equals the sequential pipeline, in R files, each key in one file."""
    assert len(outputs) == reducers
    assert [p.name for p in outputs] == [f"input_{n}" for n in range(reducers)]
    produced = b"".join(p.read_bytes() for p in outputs)
    expected = sequential(input_files(input_dir), mapper, reducer, env)
    assert produced == expected
    owner = {}
    for number, path in enumerate(outputs):
        for line in path.read_bytes().splitlines():
            assert owner.setdefault(key_of(line), number) == number, \
                f"key {key_of(line)!r} in input_{owner[key_of(line)]} and input_{number}"
