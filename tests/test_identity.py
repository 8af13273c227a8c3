"""A worker is its address and its pid together.

Two real workers share a pid: each runs as pid 1 of a pid namespace of its
own (`unshare --pid --fork --mount-proc`), one bound to 127.0.0.2 and the
other to 127.0.0.3, as two machines' workers would. The master tells them
apart by the address their messages come from, so both are listed, both run
tasks, and the death of one takes nothing from the other.
"""
import os
import shutil
import signal
import subprocess

import pytest

from conftest import (JOB_TIMEOUT, PYTHON, REPO, WORD_COUNT, assert_matches_sequential,
                      free_port, partition_files, session_members, wait_until, write_files)
from support.programs import script, stop

ADDRESSES = ("127.0.0.2", "127.0.0.3")
SHARED_PID = 1  # each worker is the first process of its namespace
# Death after 5 x 0.2 s of silence.
FAST_HEARTBEATS = {"MAPREDUCE_HEARTBEAT_INTERVAL": "0.2"}
UNSHARE = shutil.which("unshare")


def _why_no_pid_namespaces():
    """Why two processes cannot be given one pid here, or None if they can."""
    if UNSHARE is None:
        return "unshare (util-linux) is not installed"
    if os.geteuid() != 0:
        return "pid namespaces (unshare --pid) need root"
    try:
        probe = subprocess.run([UNSHARE, "--pid", "--fork", "--mount-proc", "--kill-child",
                                PYTHON, "-c", "import os; print(os.getpid())"],
                               capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unshare --pid failed: {error}"
    if probe.returncode != 0 or probe.stdout.strip() != b"1":
        said = probe.stderr.decode(errors="replace").strip()[:200]
        return f"unshare --pid failed (exit {probe.returncode}): {said}"
    return None


@pytest.fixture(scope="module")
def pid_namespaces():
    reason = _why_no_pid_namespaces()
    if reason is not None:
        pytest.skip(reason)


def children_of(pid):
    """Pids of the live processes whose parent is `pid` (one pass over /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        if int(fields[1]) == pid and fields[0] != b"Z":
            found.append(int(entry))
    return found


class NamespacedWorker:
    """`unshare … python3 worker.py PORT WPORT --host ADDRESS`: a worker that is pid 1."""

    def __init__(self, cluster, address):
        self.address = address
        self.log_name = f"worker-{address}.log"
        with open(cluster.logs / self.log_name, "ab") as log:
            # A session of its own, as every process the cluster starts: the
            # cluster's teardown kills what is left in it. --kill-child: the
            # worker dies with unshare, whichever is killed first.
            self.unshare = subprocess.Popen(
                [UNSHARE, "--pid", "--fork", "--mount-proc", "--kill-child", PYTHON,
                 str(REPO / "worker.py"), str(cluster.port), str(free_port()),
                 "--host", address],
                cwd=cluster.workdir, stdout=log, stderr=subprocess.STDOUT, env=cluster.env,
                start_new_session=True)
        cluster.sessions.append(self.unshare.pid)
        cluster.workers.append(self.unshare)
        # The worker as the rest of the machine sees it: unshare's only child.
        children = wait_until(lambda: children_of(self.unshare.pid)
                              or self.unshare.poll() is not None,
                              what=f"the worker at {address} to start")
        assert self.unshare.poll() is None, cluster.log(self.log_name)
        (self.pid,) = children
        # What a program the worker runs reads in /proc/self/ns/pid.
        self.namespace = os.readlink(f"/proc/{self.pid}/ns/pid")

    def kill(self):
        """SIGKILL the worker, so its whole namespace, then reap unshare (which reaps it)."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.unshare.wait(10)
        wait_until(lambda: not session_members(self.unshare.pid),
                   what=f"everything the worker at {self.address} started to end")


@pytest.fixture
def same_pid_workers(pid_namespaces, make_cluster):
    """A cluster with two registered workers, both pid 1, at 127.0.0.2 and 127.0.0.3."""
    started = []

    def start(env=None):
        cluster = make_cluster(env=env)
        for address in ADDRESSES:
            started.append(NamespacedWorker(cluster, address))
        wait_until(lambda: all(listed(cluster).get(a, {}).get("state") == "ready"
                               for a in ADDRESSES)
                   or any(w.unshare.poll() is not None for w in started),
                   what="both workers with pid 1 to register")
        for worker in started:
            assert worker.unshare.poll() is None, cluster.log(worker.log_name)
        return cluster, started

    yield start
    # Before the cluster's own teardown: every worker and all it started is
    # killed and reaped here, whatever the test did.
    for worker in started:
        worker.kill()


def listed(cluster):
    """The master's workers with the shared pid, by host."""
    return {w["host"]: w for w in cluster.cluster_status()["workers"] if w["pid"] == SHARED_PID}


def identities(cluster):
    return sorted((w["pid"], w["host"]) for w in cluster.cluster_status()["workers"])


def recording_mapper(directory, seconds):
    """The word-count map, after sleeping, that first records which worker runs it.

    Each worker has a pid namespace of its own, so the namespace a map task
    runs in names the worker that ran it.
    """
    record = directory / "ran-in"
    mapper = script(directory / "recording-map.sh",
                    f'readlink /proc/self/ns/pid >> "{record}"\n'
                    f"sleep {seconds}\nexec {WORD_COUNT[0]}\n")
    return mapper, record


def ran_in(record):
    return record.read_text().split() if record.exists() else []


def corpus(directory, files=8, words=300):
    contents = {f"part{n}": b" ".join(b"w%d" % ((n * 7 + i) % 41) for i in range(words)) + b"\n"
                for n in range(files)}
    return write_files(directory, contents)


def test_two_workers_with_one_pid_on_two_addresses_both_work(same_pid_workers, tmp_path):
    """Two workers with one pid at 127.0.0.2 and 127.0.0.3: both listed, both run tasks, output right."""
    cluster, workers = same_pid_workers()
    assert identities(cluster) == [(SHARED_PID, a) for a in ADDRESSES]
    inputs = corpus(tmp_path / "in")
    mapper, record = recording_mapper(tmp_path, 0.3)
    outputs = cluster.run_job(mapper, WORD_COUNT[1], inputs, tmp_path / "out", 8, 2)
    assert_matches_sequential(outputs, inputs, *WORD_COUNT, 2)
    ran = ran_in(record)
    assert len(ran) >= 8, ran
    for worker in workers:
        assert worker.namespace in ran, (worker.address, ran, cluster.master_log()[-3000:])
    assert identities(cluster) == [(SHARED_PID, a) for a in ADDRESSES]
    assert all(w["state"] == "ready" for w in listed(cluster).values()), listed(cluster)


def test_one_of_two_same_pid_workers_killed_mid_job(same_pid_workers, tmp_path):
    """Of two workers sharing a pid, the one SIGKILLed mid-map dies alone; the other finishes the job."""
    cluster, (victim, survivor) = same_pid_workers(FAST_HEARTBEATS)
    inputs = corpus(tmp_path / "in")
    mapper, record = recording_mapper(tmp_path, 1)
    output = tmp_path / "out"
    client = cluster.send_job_async("--input", inputs, "--output", output, "--mapper", mapper,
                                    "--reducer", WORD_COUNT[1], "--mappers", 8,
                                    "--reducers", 2, "--wait")
    try:
        wait_until(lambda: victim.namespace in ran_in(record)
                   and listed(cluster).get(victim.address, {}).get("tasks"),
                   timeout=60, interval=0.02, what="the worker at 127.0.0.2 to run a map task")
        victim.kill()
        stdout, stderr = client.communicate(timeout=JOB_TIMEOUT)
    finally:
        stop(client)
    assert client.returncode == 0, (stdout.decode() + stderr.decode()
                                    + cluster.master_log()[-3000:])
    assert_matches_sequential(partition_files(output), inputs, *WORD_COUNT, 2)
    assert survivor.namespace in ran_in(record)
    states = {host: w["state"] for host, w in listed(cluster).items()}
    assert states == {victim.address: "dead", survivor.address: "ready"}, states
    assert survivor.unshare.poll() is None, cluster.log(survivor.log_name)
