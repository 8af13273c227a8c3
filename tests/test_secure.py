"""A cluster with a shared secret, through the real entry points: what gets in and what not."""
import json
import os
import socket
import time
import subprocess

import pytest

import helper
from conftest import (JOB_TIMEOUT, PYTHON, REPO, WORD_COUNT, assert_matches_sequential,
                      free_master_port, partition_files, tcp_free, wait_until, write_files)
from mrlib import auth
from support.localcluster import write_secret

pytestmark = pytest.mark.timeout(120)

SECRET = "0123456789abcdef" * 4
OTHER_SECRET = "fedcba9876543210" * 4
SMALL_INPUT = {"part-a": b"the quick brown fox\n", "part-b": b"the lazy dog\n"}
BAD_CONFIG = 2  # the exit code of a program refusing its secret settings
FLOOD_DATAGRAMS = 500
QUIET_WINDOW = 1.0


@pytest.fixture
def secret_file(tmp_path):
    return write_secret(tmp_path / "secret", SECRET + "\n")


@pytest.fixture
def secure(make_cluster, secret_file):
    """A master and two workers sharing a secret; this test process signs with it too."""
    helper.use_secret(SECRET.encode())
    cluster = make_cluster(env={auth.SECRET_FILE_VARIABLE: str(secret_file)})
    cluster.start_workers(2)
    yield cluster
    cluster.stop()
    helper.use_secret(None)


def send_job(cluster, *args, secret_file=None):
    """send_job.py as a user without the cluster's environment: only `secret_file`."""
    env = {k: v for k, v in cluster.env.items() if k != auth.SECRET_FILE_VARIABLE}
    extra = ("--secret-file", secret_file) if secret_file else ()
    return subprocess.run([str(a) for a in (PYTHON, REPO / "send_job.py", cluster.port,
                                            *extra, *args)],
                          cwd=cluster.workdir, env=env, capture_output=True,
                          timeout=JOB_TIMEOUT)


def send_unsigned(cluster, message):
    with socket.create_connection(("localhost", cluster.port), timeout=5) as sock:
        sock.sendall(json.dumps(message).encode())


def drops_seen(cluster):
    return cluster.master_log().count("not authenticated")


def test_a_job_runs_signed_and_the_wire_carries_the_signature(secure, secret_file, tmp_path):
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    result = send_job(secure, "--input", inputs, "--output", tmp_path / "out", "--wait",
                      secret_file=secret_file)
    assert result.returncode == 0, result.stderr.decode()
    assert_matches_sequential(partition_files(tmp_path / "out"), inputs, *WORD_COUNT, 2)
    assert drops_seen(secure) == 0


def test_without_the_secret_nothing_gets_in(secure, tmp_path, secret_file):
    """Unsigned or wrongly signed: no job, no status, no shutdown, no worker."""
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    other = write_secret(tmp_path / "other-secret", OTHER_SECRET)
    for secret in (None, other):
        refused = send_job(secure, "--input", inputs, "--output", tmp_path / "out",
                           secret_file=secret)
        assert refused.returncode == 1 and b"secret" in refused.stderr, refused.stderr
        assert send_job(secure, "--workers", secret_file=secret).returncode == 1
        assert send_job(secure, "--shutdown", secret_file=secret).returncode == 1
    before = drops_seen(secure)
    send_unsigned(secure, helper.register("localhost", secure.port + 1000, 4242))
    send_unsigned(secure, helper.shutdown())
    wait_until(lambda: drops_seen(secure) >= before + 2, what="the master to drop both")
    status = secure.cluster_status()
    assert sorted(w["pid"] for w in status["workers"]) == sorted(w.pid for w in secure.workers)
    assert status["current_job"] is None and status["queued_jobs"] == []
    assert secure.master.poll() is None, "an unsigned shutdown must not stop the master"
    assert send_job(secure, "--workers", secret_file=secret_file).returncode == 0


def test_a_worker_without_the_secret_cannot_register(secure):
    env = {k: v for k, v in secure.env.items() if k != auth.SECRET_FILE_VARIABLE}
    before = drops_seen(secure)
    intruder = secure.start_worker(wait=False, env=env)
    wait_until(lambda: drops_seen(secure) > before, what="the master to drop its register")
    assert intruder.pid not in [w["pid"] for w in secure.cluster_status()["workers"]]


def test_a_replayed_job_is_dropped(make_cluster, secret_file, tmp_path):
    """The same signed bytes twice: the second copy is a replay and does nothing."""
    helper.use_secret(SECRET.encode())
    try:
        cluster = make_cluster(env={auth.SECRET_FILE_VARIABLE: str(secret_file)})
        inputs = write_files(tmp_path / "in", SMALL_INPUT)
        signed = helper.encode(helper.new_master_job(
            str(inputs), str(tmp_path / "out"), str(WORD_COUNT[0]), str(WORD_COUNT[1]), 2, 1))
        cluster.send_raw(signed)
        wait_until(lambda: helper.request("localhost", cluster.port,
                                          helper.job_status(0))["state"] == "queued",
                   what="the job to be queued")
        helper.request("localhost", cluster.port, helper.cancel_job(0))  # its output is free
        before = drops_seen(cluster)
        cluster.send_raw(signed)
        wait_until(lambda: drops_seen(cluster) > before, what="the replay to be dropped")
        assert helper.request("localhost", cluster.port,
                              helper.job_status(1))["state"] == "unknown"
    finally:
        cluster.stop()
        helper.use_secret(None)


@pytest.mark.parametrize("program", ["master", "worker"])
@pytest.mark.parametrize("case", ["missing", "empty", "fifo", "0.0.0.0 without a secret",
                                  "mode 666", "mode 640", "mode 604"])
def test_unusable_secret_settings_stop_the_start(tmp_path, program, case):
    """A clear line naming the problem, exit 2, nothing listening."""
    empty = write_secret(tmp_path / "empty", "\n")
    os.mkfifo(tmp_path / "fifo")  # reading it would wait for a writer for ever
    port = free_master_port()
    arguments = {"missing": ["--secret-file", tmp_path / "nope"],
                 "empty": ["--secret-file", empty],
                 "fifo": ["--secret-file", tmp_path / "fifo"],
                 "0.0.0.0 without a secret": ["--host", "0.0.0.0"]}.get(case)
    expected = {"missing": "nope", "empty": "is empty", "fifo": "not a regular file",
                "0.0.0.0 without a secret": "--insecure"}.get(case)
    if case.startswith("mode "):
        shared = shared_secret(tmp_path, case.split()[1])
        arguments, expected = ["--secret-file", shared], f"chmod 600 {shared}"
    argv = [REPO / "master.py", port] if program == "master" else \
        [REPO / "worker.py", port, port + 1]
    result = subprocess.run([str(a) for a in (PYTHON, *argv, *arguments)], cwd=tmp_path,
                            capture_output=True,
                            timeout=30, env={"PATH": "/usr/bin:/bin"})
    text = result.stderr.decode()
    assert result.returncode == BAD_CONFIG, text
    assert "Traceback" not in text
    assert expected in text
    assert not (tmp_path / "var").exists()
    assert tcp_free(port), "nothing may listen"


def shared_secret(tmp_path, mode):
    """A good secret in a file its group or others may reach: `mode` is octal, e.g. 644."""
    path = write_secret(tmp_path / f"secret-{mode}", SECRET)
    path.chmod(int(mode, 8))
    return path


@pytest.mark.parametrize("mode", ["666", "644", "660"])
def test_send_job_refuses_a_secret_file_others_can_reach(secure, tmp_path, mode):
    """send_job.py names the file, its mode and the chmod that fixes it, and sends nothing."""
    shared = shared_secret(tmp_path, mode)
    result = send_job(secure, "--workers", secret_file=shared)
    text = result.stderr.decode()
    assert result.returncode == BAD_CONFIG, text
    assert str(shared) in text and f"mode 0{mode}" in text and f"chmod 600 {shared}" in text
    assert "Traceback" not in text and result.stdout == b""


def test_insecure_listens_anywhere_with_a_warning(make_cluster):
    cluster = make_cluster(start=False)
    cluster.start_master(extra=("--host", "0.0.0.0", "--insecure"))
    assert "--insecure" in cluster.master_log()
    cluster.start_worker()


def test_a_worker_with_another_secret_says_so_and_stops(secure, tmp_path):
    other = write_secret(tmp_path / "other-secret", OTHER_SECRET)
    worker = secure.start_worker(wait=False, env=dict(secure.env, MAPREDUCE_SECRET_FILE=str(other)))
    assert worker.wait(30) == 1
    log = secure.log(f"worker-{worker.worker_port}.log")
    assert "refuses this worker's messages" in log and "secret" in log, log


def test_workers_of_a_master_restarted_with_another_secret_say_so(make_cluster, secret_file,
                                                                    tmp_path):
    """The master comes back with another secret: its workers' heartbeats are refused, and
    each worker's log says why, instead of the worker believing it is registered."""
    other = write_secret(tmp_path / "other-secret", OTHER_SECRET)
    helper.use_secret(SECRET.encode())
    try:
        cluster = make_cluster(env={auth.SECRET_FILE_VARIABLE: str(secret_file)})
        worker = cluster.start_worker()
        cluster.master.kill()
        cluster.master.wait()
        cluster.start_master(extra=("--secret-file", other))
        wait_until(lambda: "refuses this worker's messages"
                   in cluster.log(f"worker-{worker.worker_port}.log"),
                   what="the worker to say the master refuses it")
    finally:
        helper.use_secret(None)


def test_a_flood_of_unsigned_datagrams_logs_a_few_lines(secure):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for _ in range(FLOOD_DATAGRAMS):
            udp.sendto(b"x", ("localhost", helper.heartbeat_port(secure.port)))
    wait_until(lambda: dropped_datagram_lines(secure) >= helper.LOG_BURST,
               what="the first lines about the flood")
    time.sleep(QUIET_WINDOW)  # what is measured: no more lines come
    assert dropped_datagram_lines(secure) <= helper.LOG_BURST


def dropped_datagram_lines(cluster):
    return cluster.master_log().count("dropped a datagram")
