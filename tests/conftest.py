"""Shared test machinery: real master and worker processes on free loopback ports.

Every process is started in a session of its own, so at teardown everything
it started (programs, sort, the reaper) can be found in /proc and killed:
no test leaves a process behind, whatever it did.
"""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from support.localcluster import (PYTHON, REPO, START_TIMEOUT, LocalCluster,  # noqa: E402,F401
                                  free_master_port, free_port, kill_session, listening,
                                  pid_alive, session_members, tcp_free, udp_free, wait_until)

EXEC = REPO / "exec"
WORD_COUNT = (EXEC / "word_count" / "map.py", EXEC / "word_count" / "reduce.py")
WORD_COUNT_SH = (EXEC / "word_count" / "map.sh", EXEC / "word_count" / "reduce.sh")
GREP = (EXEC / "grep" / "map.py", EXEC / "grep" / "reduce.py")
JOB_TIMEOUT = 120.0


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


class Cluster(LocalCluster):
    """A master and workers run as the user would, in a scratch directory."""

    def __init__(self, workdir, env=None):
        super().__init__(workdir, env)
        self.env.pop("PYTHONUNBUFFERED", None)

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
        assert result.returncode == 0, (result.stdout.decode(errors="replace")
                                        + result.stderr.decode(errors="replace")
                                        + self.master_log()[-3000:])
        return partition_files(output_dir)

    def send_raw(self, data, port=None):
        """Send raw bytes on one connection, as a misbehaving client would."""
        with socket.create_connection(("localhost", port or self.port), timeout=5) as sock:
            sock.sendall(data)

    def master_log(self):
        return self.log("master.log")

    def wait_for_log(self, text, timeout=START_TIMEOUT, name="master.log"):
        return wait_until(lambda: text in self.log(name), timeout, what=f"{text!r} in {name}")


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


@pytest.fixture
def dashboard(make_cluster):
    """A master serving its dashboard (--http-port) on cluster.http_port."""
    cluster = make_cluster(start=False)
    cluster.http_port = free_port()
    cluster.start_master(extra=("--http-port", cluster.http_port))
    return cluster
