"""Shutdown: every process of a cluster exits promptly, even mid-task.

Through the `shutdown` message (send_job.py --shutdown) on a cluster started
by the test harness, and through `sh start.sh N PORT` / `sh start.sh stop
PORT` run from a copy of the repository.
"""
import os
import shutil
import signal
import subprocess
import time

from conftest import (PYTHON, REPO, assert_matches_sequential, free_port, partition_files,
                      pid_alive, session_members, tcp_free, udp_free, wait_until, write_files)

WORKERS = 3
# Everything must be gone this long after the shutdown message.
EXIT_DEADLINE = 5.0
LONG_TASK_SECONDS = 60
START_DEADLINE = 60.0
# From running `start.sh stop` until every process of the copy is gone.
STOP_DEADLINE = 8.0
JOB_DEADLINE = 120.0
PORT_SEARCH_ATTEMPTS = 200
# What start.sh needs beside itself (it cds to its own directory).
REPO_FILES = ["master.py", "worker.py", "helper.py", "send_job.py", "start.sh"]
REPO_DIRECTORIES = ["mrlib", "exec", "input"]
START_WORKERS = 2
SAMPLE_REDUCERS = 2  # send_job.py's default


def long_mapper(tmp_path, pid_file):
    """A mapper that records its pid, then sleeps far longer than any test."""
    path = tmp_path / "sleepy-map.sh"
    path.write_text(f'#!/bin/sh\necho $$ > "{pid_file}"\nsleep {LONG_TASK_SECONDS}\n')
    path.chmod(0o755)
    return path


def test_shutdown_stops_everything_mid_task(cluster, tmp_path):
    """`send_job --shutdown` during a long task ends master, workers, programs and reapers within seconds, master exit code 0."""
    workers = cluster.start_workers(WORKERS)
    inputs = write_files(tmp_path / "in", {"only": b"one file, one long map task\n"})
    pid_file = tmp_path / "mapper.pid"
    submitted = cluster.send_job("--input", inputs, "--output", tmp_path / "out",
                                 "--mapper", long_mapper(tmp_path, pid_file),
                                 "--mappers", 1, "--reducers", 1)
    assert submitted.returncode == 0, submitted.stderr.decode()
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(),
               what="the long task to start")
    program = int(pid_file.read_text())
    assert pid_alive(program)
    assert program in cluster.alive()

    result = cluster.send_job("--shutdown")
    assert result.returncode == 0, result.stderr.decode()
    wait_until(lambda: not cluster.alive(), EXIT_DEADLINE,
               what=f"every process to exit (left: {cluster.alive()})")
    assert not pid_alive(program)
    assert cluster.master.wait(EXIT_DEADLINE) == 0, cluster.master_log()[-2000:]
    for worker in workers:
        assert worker.wait(EXIT_DEADLINE) == 0, cluster.log(f"worker-{worker.worker_port}.log")


# --- start.sh -----------------------------------------------------------------

def free_port_block(workers):
    """A master port whose UDP PORT-1 and TCP PORT..PORT+workers are all free."""
    for _ in range(PORT_SEARCH_ATTEMPTS):
        port = free_port()
        if port - 1 <= 1024 or port + workers > 65535:
            continue
        if udp_free(port - 1) and all(tcp_free(p) for p in range(port, port + workers + 1)):
            return port
    raise AssertionError(f"no free block of {workers + 2} ports found")


def copy_repository(destination):
    destination.mkdir()
    for name in REPO_FILES:
        shutil.copy2(REPO / name, destination / name)
    for name in REPO_DIRECTORIES:
        shutil.copytree(REPO / name, destination / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return destination


def processes_of(directory, names=("master.py", "worker.py")):
    """Pids of live processes running one of `names` from `directory`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        arguments = [os.fsdecode(part) for part in cmdline]
        from_copy = cwd == str(directory) or any(str(directory) in a for a in arguments)
        if from_copy and any(os.path.basename(a) in names for a in arguments) \
                and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def run_script(copy, *arguments, cwd, env, new_session=False):
    """Run `sh start.sh ARGS` from another directory; return (CompletedProcess, pid)."""
    process = subprocess.Popen(["sh", str(copy / "start.sh"), *map(str, arguments)], cwd=cwd,
                               env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=new_session)
    try:
        stdout, stderr = process.communicate(timeout=START_DEADLINE)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), \
        process.pid


def send_job_copy(copy, env, *arguments, timeout=JOB_DEADLINE):
    return subprocess.run([PYTHON, "send_job.py", *map(str, arguments)], cwd=copy, env=env,
                          capture_output=True, timeout=timeout)


def ready_workers(copy, env, port):
    listing = send_job_copy(copy, env, port, "--workers", timeout=30).stdout.decode()
    return [line for line in listing.splitlines() if " ready " in line]


def kill_pids(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def test_start_script_starts_and_stops_a_cluster(tmp_path):
    """`sh start.sh N PORT` starts a working cluster that says how to stop it, and `sh start.sh stop PORT` leaves no process behind."""
    copy = copy_repository(tmp_path / "repo")
    port = free_port_block(START_WORKERS)
    env = dict(os.environ, PYTHON=PYTHON)
    env.pop("PYTHONUNBUFFERED", None)
    session = None
    try:
        started, session = run_script(copy, START_WORKERS, port, cwd=tmp_path, env=env,
                                      new_session=True)
        text = started.stdout.decode()
        assert started.returncode == 0, text + started.stderr.decode()
        assert f"sh start.sh stop {port}" in text, text
        assert f"send_job.py {port}" in text, text
        wait_until(lambda: len(ready_workers(copy, env, port)) == START_WORKERS,
                   what=f"{START_WORKERS} ready workers")
        assert len(processes_of(copy)) == 1 + START_WORKERS, processes_of(copy)

        job = send_job_copy(copy, env, port, "--wait")
        assert job.returncode == 0, job.stdout.decode() + job.stderr.decode()
        assert_matches_sequential(partition_files(copy / "output"), copy / "input" / "sample1",
                                  copy / "exec" / "word_count" / "map.py",
                                  copy / "exec" / "word_count" / "reduce.py", SAMPLE_REDUCERS)
        assert (copy / "var" / "job-0").is_dir()

        begun = time.monotonic()
        stopped, _ = run_script(copy, "stop", port, cwd=tmp_path, env=env)
        assert stopped.returncode == 0, stopped.stderr.decode()
        assert f"cluster on port {port} stopped" in stopped.stdout.decode()
        assert "did not exit" not in stopped.stderr.decode(), stopped.stderr.decode()
        wait_until(lambda: not processes_of(copy) and not session_members(session),
                   EXIT_DEADLINE, what="the cluster's processes to exit")
        assert time.monotonic() - begun < STOP_DEADLINE
        assert not list((copy / "log").glob("*.pid"))
    finally:
        kill_pids(processes_of(copy))
        if session is not None:
            kill_pids(session_members(session))
