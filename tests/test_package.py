"""`pip install .` gives the commands mapreduce-master, -worker, -submit and -collect, which run
a job end to end from any directory."""
import shutil
import subprocess
import sys

import pytest

import helper
from conftest import (REPO, WORD_COUNT, assert_matches_sequential, free_master_port, free_port,
                      kill_session, partition_files, wait_until, write_files)

pytestmark = pytest.mark.timeout(300)

PACKAGE_FILES = ["master.py", "worker.py", "helper.py", "send_job.py", "collect.py",
                 "pyproject.toml", "README.md"]
COMMANDS = ["mapreduce-master", "mapreduce-worker", "mapreduce-submit", "mapreduce-collect"]
INSTALL_TIMEOUT = 240
SMALL_INPUT = {"part-a": b"the quick brown fox\n", "part-b": b"the lazy dog\nthe end"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A virtual environment with the package installed from a copy of the checkout."""
    root = tmp_path_factory.mktemp("package")
    source = root / "source"
    source.mkdir()
    for name in PACKAGE_FILES:
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "mrlib", source / "mrlib",
                    ignore=shutil.ignore_patterns("__pycache__"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, timeout=INSTALL_TIMEOUT)
    # sh comes from the system's packages (no download); the build needs setuptools.
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                             "--disable-pip-version-check", "--no-deps", "--force-reinstall",
                             str(source)], capture_output=True, timeout=INSTALL_TIMEOUT)
    assert result.returncode == 0, result.stderr.decode()
    return venv / "bin"


def test_the_installed_commands_run_a_job_from_anywhere(installed, tmp_path):
    for command in COMMANDS:
        assert (installed / command).exists(), command
    scratch = tmp_path / "elsewhere"
    scratch.mkdir()
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    port, worker_port = free_master_port(), free_port()
    sessions = []

    def start(*argv):
        process = subprocess.Popen([str(installed / argv[0]), *map(str, argv[1:])],
                                   cwd=scratch, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        sessions.append(process.pid)
        return process

    try:
        master = start("mapreduce-master", port)
        start("mapreduce-worker", port, worker_port)
        wait_until(lambda: master.poll() is not None or registered(port),
                   what="the installed worker to register")
        assert master.poll() is None
        assert str(installed.parent) in open(f"/proc/{master.pid}/cmdline").read()
        job = subprocess.run([str(installed / "mapreduce-submit"), str(port), "--input", inputs,
                              "--output", tmp_path / "out", "--mapper", WORD_COUNT[0],
                              "--reducer", WORD_COUNT[1], "--reducers", "2", "--wait"],
                             cwd=scratch, capture_output=True, timeout=120)
        assert job.returncode == 0, job.stdout.decode() + job.stderr.decode()
        assert_matches_sequential(partition_files(tmp_path / "out"), inputs, *WORD_COUNT, 2)
        collected = subprocess.run([str(installed / "mapreduce-collect"), tmp_path / "out",
                                    tmp_path / "all.txt"], cwd=scratch, capture_output=True,
                                   timeout=60)
        assert collected.returncode == 0, collected.stderr.decode()
        assert (tmp_path / "all.txt").read_bytes() == b"".join(
            p.read_bytes() for p in partition_files(tmp_path / "out"))
        sample = subprocess.run([str(installed / "mapreduce-submit"), str(port)], cwd=scratch,
                                capture_output=True, timeout=60)
        assert sample.returncode == 2 and b"ships only with a checkout" in sample.stderr, \
            sample.stderr
        subprocess.run([str(installed / "mapreduce-submit"), str(port), "--shutdown"],
                       cwd=scratch, timeout=60)
        assert master.wait(30) == 0
    finally:
        for session in sessions:
            kill_session(session)


def registered(port):
    try:
        reply = helper.request("localhost", port, helper.cluster_status())
    except OSError:
        return False
    return any(w["state"] == "ready" for w in reply.get("workers", []))
