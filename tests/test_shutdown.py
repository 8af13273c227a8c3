"""Shutdown: every process of a cluster exits promptly, even mid-task.

Through the `shutdown` message (send_job.py --shutdown) on a cluster started
by the test harness; `sh start.sh stop` is tested in test_start_script.py.
"""
import signal
import subprocess

import pytest

from conftest import PYTHON, REPO, pid_alive, wait_until, write_files
from support.localcluster import free_master_port, free_port
from support.programs import script

WORKERS = 3
# Everything must be gone this long after the shutdown message.
EXIT_DEADLINE = 5.0
LONG_TASK_SECONDS = 60


def long_mapper(tmp_path, pid_file):
    """A mapper that records its pid, then sleeps far longer than any test."""
    return script(tmp_path / "sleepy-map.sh",
                  f'echo $$ > "{pid_file}"\nsleep {LONG_TASK_SECONDS}\n')


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
    said = result.stdout.decode()  # what stops, before it stops
    assert f"and its {len(workers)} worker(s); job 0 stops unfinished" in said, said
    wait_until(lambda: not cluster.alive(), EXIT_DEADLINE,
               what=f"every process to exit (left: {cluster.alive()})")
    assert not pid_alive(program)
    assert cluster.master.wait(EXIT_DEADLINE) == 0, cluster.master_log()[-2000:]
    for worker in workers:
        assert worker.wait(EXIT_DEADLINE) == 0, cluster.log(f"worker-{worker.worker_port}.log")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_worker_registering_stops_at_once_when_asked(tmp_path, sig):
    """SIGTERM or Ctrl-C stops a worker still trying to reach its master (it went on for
    the 30 s it gives registering); it exits 0, as a worker shut down does."""
    worker = subprocess.Popen([PYTHON, str(REPO / "worker.py"), str(free_master_port()),
                               str(free_port())], cwd=tmp_path, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: b"registering" in worker.stderr.peek(), what="the worker to start")
        worker.send_signal(sig)
        assert worker.wait(timeout=EXIT_DEADLINE) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.communicate()


@pytest.mark.parametrize("arguments", [["-1"], ["70000"], ["PORT", "--workdir", "missing"],
                                       ["PORT", "--workdir", "file"]])
def test_a_worker_with_a_bad_port_or_workdir_says_which(tmp_path, arguments):
    """A bad port or --workdir is one line naming it, exit 2: no traceback."""
    (tmp_path / "file").write_text("not a directory\n")
    arguments = [str(free_port()) if a == "PORT" else a for a in arguments]
    result = subprocess.run([PYTHON, str(REPO / "worker.py"), str(free_master_port()),
                             *arguments], cwd=tmp_path, capture_output=True, timeout=EXIT_DEADLINE * 4)
    assert result.returncode == 2
    error = result.stderr.decode()
    assert "Traceback" not in error
    assert (arguments[-1] if "--workdir" in arguments else f"'{arguments[0]}'") in error
