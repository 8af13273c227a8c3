"""`start.sh`: one cluster per port, and nothing else.

Every test runs `sh start.sh ...` from a copy of the repository in tmp_path,
as a user would, on free loopback ports. Each run of the script gets a
session of its own, so whatever it started, the test finds and kills at the
end: the `checkout` fixture leaves no process behind, even when a test fails.
It kills only processes of those sessions, or processes running the copy's
master.py or worker.py: never anything else.
"""
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import (PYTHON, REPO, assert_matches_sequential, free_port, partition_files,
                      pid_alive, session_members, tcp_free, udp_free, wait_until)
from support.localcluster import write_secret

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="start.sh and these tests read /proc")

# What start.sh needs beside itself: the scripts it starts and send_job.py,
# which it uses to ask the master which workers registered and to shut it down.
REPO_FILES = ["master.py", "worker.py", "helper.py", "send_job.py", "start.sh"]
REPO_DIRECTORIES = ["mrlib", "exec", "input"]
WORKERS = 2
SAMPLE_REDUCERS = 2  # send_job.py's default
# start.sh gives up on a start after 10 + 15 s; a run longer than this is a hang.
SCRIPT_DEADLINE = 60.0
JOB_DEADLINE = 120.0
# From running `start.sh stop` until every process of the cluster is gone.
STOP_DEADLINE = 8.0
EXIT_DEADLINE = 5.0
PORT_SEARCH_ATTEMPTS = 200
# Far longer than any test: a process that must outlive `stop`.
BYSTANDER_SECONDS = 600
# Arguments start.sh must refuse, and how its error quotes what was typed.
JUNK_ARGUMENTS = [
    (["abc"], "'abc'"), (["2", "abc"], "'abc'"), (["-3"], "'-3'"), (["0"], "'0'"),
    (["2", "6000", "extra"], "'2 6000 extra'"), (["--bogus"], "'--bogus'"), ([""], "''"),
    (["stop", "abc"], "'abc'"), (["stop", "6000", "extra"], "'stop 6000 extra'"),
    (["--help", "extra"], "'--help extra'"),
    # More than start.sh's cap of 64 workers (a port that would fit with 65 workers is
    # refused on the count, not on the port).
    (["65", "65000"], "'65'"),
]
# Concurrent starts on one port in the race test: one wins, the others touch nothing.
RACING_STARTS = 3


# --- helpers -------------------------------------------------------------------------

def free_port_block(workers, avoid=()):
    """A master port whose UDP PORT-1 and TCP PORT..PORT+workers are free and not in `avoid`."""
    for _ in range(PORT_SEARCH_ATTEMPTS):
        port = free_port()
        block = range(port - 1, port + workers + 1)
        if port - 1 <= 1024 or port + workers > 65535 or set(block) & set(avoid):
            continue
        if udp_free(port - 1) and all(tcp_free(p) for p in range(port, port + workers + 1)):
            return port
    raise AssertionError(f"no free block of {workers + 2} ports found")


def port_block(port, workers):
    """Every port a cluster on `port` with `workers` workers uses."""
    return list(range(port - 1, port + workers + 1))


def copy_repository(destination):
    destination.mkdir()
    for name in REPO_FILES:
        shutil.copy2(REPO / name, destination / name)
    for name in REPO_DIRECTORIES:
        shutil.copytree(REPO / name, destination / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return destination


def process_info(pid):
    """(arguments, working directory) of a live process, or None."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read().split(b"\0")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None
    return [os.fsdecode(part) for part in cmdline], cwd


def processes_of(directory, names=("master.py", "worker.py")):
    """Pids of live processes running one of `names` from `directory`."""
    found = []
    for entry in os.listdir("/proc"):
        info = process_info(entry) if entry.isdigit() else None
        if info is None:
            continue
        arguments, cwd = info
        inside = cwd == str(directory) or cwd.startswith(f"{directory}/")
        from_copy = inside or any(a.startswith(f"{directory}/") for a in arguments)
        if from_copy and any(os.path.basename(a) in names for a in arguments) \
                and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def kill_pids(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def bystander(arguments=(), cwd=None):
    """A process that has nothing to do with start.sh: it sleeps, whatever its arguments say."""
    return subprocess.Popen([PYTHON, "-c", f"import time; time.sleep({BYSTANDER_SECONDS})",
                             *map(str, arguments)], cwd=cwd, start_new_session=True,
                            stdin=subprocess.DEVNULL)


class Checkout:
    """A copy of the repository, and the runs of its start.sh."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.root = copy_repository(tmp_path / "repo")
        self.top = self.root.resolve()  # as start.sh names it in its hints
        self.env = dict(os.environ, PYTHON=PYTHON)
        self.env.pop("PYTHONUNBUFFERED", None)
        self.sessions = []

    def launch(self, *arguments, script=None, env=None):
        """Begin `sh start.sh ARGS` (or `sh SCRIPT ARGS`) from outside the copy, in a session of its own."""
        script = self.root / "start.sh" if script is None else script
        process = subprocess.Popen(["sh", str(script), *map(str, arguments)],
                                   cwd=self.tmp_path, env=env or self.env,
                                   stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True)
        self.sessions.append(process.pid)
        return process

    def run(self, *arguments, script=None, env=None):
        """Run `sh start.sh ARGS` (or `sh SCRIPT ARGS`) from outside the copy, to its end."""
        return self.finish(self.launch(*arguments, script=script, env=env))

    @staticmethod
    def finish(process):
        try:
            stdout, stderr = process.communicate(timeout=SCRIPT_DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        return subprocess.CompletedProcess(process.args, process.returncode,
                                           stdout.decode(errors="replace"),
                                           stderr.decode(errors="replace"))

    def start(self, port, workers=WORKERS):
        """Start a cluster; assert it started; return the script's output."""
        started = self.run(workers, port)
        assert started.returncode == 0, started.stdout + started.stderr
        return started

    def stop(self, port):
        stopped = self.run("stop", port)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert f"cluster on port {port} stopped" in stopped.stdout, stopped.stdout
        assert "did not exit" not in stopped.stderr, stopped.stderr
        return stopped

    def cluster_dir(self, port):
        return self.root / "clusters" / str(port)

    def pid_files(self):
        return sorted((self.root / "clusters").glob("*/*.pid"))

    def processes(self, port=None):
        """Pids of the copy's masters and workers (of the cluster on `port`, if given)."""
        where = self.root if port is None else self.cluster_dir(port)
        return sorted(processes_of(where))

    def send_job(self, port, *arguments, timeout=JOB_DEADLINE):
        return subprocess.run([PYTHON, "send_job.py", str(port), *map(str, arguments)],
                              cwd=self.root, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def ready_workers(self, port):
        listing = self.send_job(port, "--workers", timeout=30).stdout
        return [line for line in listing.splitlines() if " ready " in line]

    def assert_word_count(self, port, output):
        """Run the sample job on the cluster on `port` into `output`; assert it is right."""
        job = self.send_job(port, "--output", output, "--wait")
        assert job.returncode == 0, job.stdout + job.stderr
        assert_matches_sequential(partition_files(output), self.root / "input" / "sample1",
                                  self.root / "exec" / "word_count" / "map.py",
                                  self.root / "exec" / "word_count" / "reduce.py",
                                  SAMPLE_REDUCERS)

    def assert_nothing_started_but_pid_files(self):
        assert not self.processes(), self.processes()
        assert not any(session_members(s) for s in self.sessions)

    def assert_nothing_started(self):
        self.assert_nothing_started_but_pid_files()
        assert not self.pid_files(), self.pid_files()

    def kill_everything(self):
        kill_pids(self.processes())
        for session in self.sessions:
            kill_pids(session_members(session))


@pytest.fixture
def checkout(tmp_path):
    """A copy of the repository; at teardown, nothing it started is left running."""
    instance = Checkout(tmp_path)
    try:
        yield instance
    finally:
        instance.kill_everything()


# --- tests ---------------------------------------------------------------------------

def test_start_script_starts_and_stops_a_cluster(checkout):
    """`sh start.sh N PORT` starts a working cluster in clusters/PORT/ that says how to stop it, and `sh start.sh stop PORT` leaves no process and no pid file behind."""
    port = free_port_block(WORKERS)
    started = checkout.start(port)
    # Absolute paths, which work from any directory: the script ran from outside the copy.
    assert f"sh {checkout.top}/start.sh stop {port}" in started.stdout, started.stdout
    assert f"python3 {checkout.top}/send_job.py {port}" in started.stdout, started.stdout
    assert f"logs: {checkout.top}/clusters/{port}/" in started.stdout, started.stdout
    # Ready when the script returns: the master lists every worker as registered.
    assert len(checkout.ready_workers(port)) == WORKERS
    processes = checkout.processes()
    assert len(processes) == 1 + WORKERS, processes
    for pid in processes:
        assert process_info(pid)[1] == str(checkout.cluster_dir(port).resolve())

    checkout.assert_word_count(port, checkout.root / "output")
    assert (checkout.cluster_dir(port) / "var" / "job-0").is_dir()

    begun = time.monotonic()
    checkout.stop(port)
    wait_until(lambda: not checkout.processes()
               and not any(session_members(s) for s in checkout.sessions),
               EXIT_DEADLINE, what="the cluster's processes to exit")
    assert time.monotonic() - begun < STOP_DEADLINE
    assert not checkout.pid_files(), checkout.pid_files()


def test_start_refuses_a_port_whose_cluster_runs(checkout):
    """A second `start.sh` on a running cluster's port exits 1, says how to stop it, and leaves that cluster alone."""
    port = free_port_block(WORKERS)
    checkout.start(port)
    running = checkout.processes()

    again = checkout.run(WORKERS, port)
    assert again.returncode == 1, again.stdout + again.stderr
    assert "already running" in again.stderr and f"start.sh stop {port}" in again.stderr, \
        again.stderr
    assert checkout.processes() == running
    assert len(checkout.ready_workers(port)) == WORKERS
    checkout.stop(port)


def test_stop_never_kills_a_process_it_did_not_start(checkout):
    """`stop` removes pid files naming processes start.sh did not start there (another program, another directory's worker, another port's worker) and signals none of them."""
    port = free_port_block(WORKERS)
    directory = checkout.cluster_dir(port)
    directory.mkdir(parents=True)
    worker_script = checkout.root / "worker.py"
    bystanders = {}
    try:
        bystanders["master.pid"] = subprocess.Popen(["sleep", str(BYSTANDER_SECONDS)],
                                                    start_new_session=True)
        # The right command line, but not running in this cluster's directory.
        bystanders[f"worker-{port + 1}.pid"] = bystander([worker_script, port, port + 1],
                                                         checkout.tmp_path)
        # In this cluster's directory, but another worker port on its command line.
        bystanders[f"worker-{port + 2}.pid"] = bystander([worker_script, port, port + 7],
                                                         directory)
        for name, process in bystanders.items():
            (directory / name).write_text(f"{process.pid}\n")

        stopped = checkout.run("stop", port)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert f"no cluster running on port {port}" in stopped.stdout, stopped.stdout
        for name, process in bystanders.items():
            assert f"removed stale pid file clusters/{port}/{name}" in stopped.stderr, \
                stopped.stderr
            assert process.poll() is None and pid_alive(process.pid), f"{name}: killed"
        assert not checkout.pid_files(), checkout.pid_files()
    finally:
        for process in bystanders.values():
            process.kill()
            process.wait()


def test_start_replaces_stale_pid_files_without_signalling(checkout):
    """`start` over pid files naming an unrelated process removes them, starts the cluster, and leaves that process alone, through the stop too."""
    port = free_port_block(WORKERS)
    directory = checkout.cluster_dir(port)
    directory.mkdir(parents=True)
    unrelated = subprocess.Popen(["sleep", str(BYSTANDER_SECONDS)], start_new_session=True)
    try:
        for name in ["master.pid"] + [f"worker-{port + n}.pid" for n in range(1, WORKERS + 1)]:
            (directory / name).write_text(f"{unrelated.pid}\n")
        started = checkout.start(port)
        assert f"removed stale pid file clusters/{port}/master.pid" in started.stderr, \
            started.stderr
        assert unrelated.pid not in checkout.processes()
        assert len(checkout.ready_workers(port)) == WORKERS
        checkout.stop(port)
        assert unrelated.poll() is None and pid_alive(unrelated.pid)
    finally:
        unrelated.kill()
        unrelated.wait()


def test_stop_with_nothing_running_says_so(checkout):
    """`stop PORT` with no cluster on PORT, never started or stopped before, says so and exits 0."""
    port = free_port_block(WORKERS)
    for earlier in ("never started", "stopped before"):
        if earlier == "stopped before":  # what a stopped cluster leaves: logs and var/
            (checkout.cluster_dir(port) / "var").mkdir(parents=True)
            (checkout.cluster_dir(port) / "master.log").write_text("an earlier run's log\n")
        stopped = checkout.run("stop", port)
        assert stopped.returncode == 0, (earlier, stopped.stdout + stopped.stderr)
        assert stopped.stdout.strip() == f"start.sh: no cluster running on port {port}", \
            (earlier, stopped.stdout)
        assert stopped.stderr == "", (earlier, stopped.stderr)
    checkout.assert_nothing_started()


def test_two_clusters_on_two_ports_coexist(checkout):
    """Two clusters started from one checkout on two ports each run jobs, and stopping one leaves the other running and working."""
    first = free_port_block(WORKERS)
    second = free_port_block(WORKERS, avoid=port_block(first, WORKERS))
    checkout.start(first)
    checkout.start(second)
    first_processes, second_processes = checkout.processes(first), checkout.processes(second)
    assert len(first_processes) == len(second_processes) == 1 + WORKERS
    checkout.assert_word_count(first, checkout.root / "out-first")
    checkout.assert_word_count(second, checkout.root / "out-second")
    assert (checkout.cluster_dir(first) / "var" / "job-0").is_dir()
    assert (checkout.cluster_dir(second) / "var" / "job-0").is_dir()

    checkout.stop(first)
    wait_until(lambda: not checkout.processes(first), EXIT_DEADLINE,
               what="the first cluster to exit")
    assert all(pid_alive(pid) for pid in second_processes)
    assert checkout.processes() == second_processes
    assert len(checkout.ready_workers(second)) == WORKERS
    checkout.assert_word_count(second, checkout.root / "out-second-again")

    checkout.stop(second)
    wait_until(lambda: not checkout.processes(), EXIT_DEADLINE,
               what="the second cluster to exit")
    assert not checkout.pid_files(), checkout.pid_files()


def test_help_prints_usage_and_starts_nothing(checkout):
    """`--help`, `-h` and `help` print the usage on stdout, exit 0 and start nothing."""
    for option in ("--help", "-h", "help"):
        shown = checkout.run(option)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert shown.stdout.startswith("usage: sh start.sh [SECRET] [WORKERS [PORT]]"), \
            shown.stdout
        assert "sh start.sh [SECRET] stop [PORT]" in shown.stdout
        assert shown.stderr == ""
    checkout.assert_nothing_started()
    assert not (checkout.root / "clusters").exists()


@pytest.mark.parametrize("arguments, quoted", JUNK_ARGUMENTS,
                         ids=[repr(" ".join(a)) for a, _ in JUNK_ARGUMENTS])
def test_junk_arguments_exit_2_and_start_nothing(checkout, arguments, quoted):
    """A bad argument exits 2 with a one-line error naming what was typed and the usage on stderr, and starts nothing."""
    refused = checkout.run(*arguments)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stdout == ""
    error, *rest = refused.stderr.splitlines()
    assert error.startswith("start.sh: ") and quoted in error, error
    assert rest and rest[0].startswith("usage: sh start.sh"), refused.stderr
    checkout.assert_nothing_started()
    assert not (checkout.root / "clusters").exists()


@pytest.mark.parametrize("held", ["heartbeat", "worker"])
def test_busy_port_is_named_and_nothing_starts(checkout, held):
    """With UDP PORT-1 or a worker's TCP port taken, start.sh exits 1 naming that port, before starting any process."""
    port = free_port_block(WORKERS)
    if held == "heartbeat":
        holder, named = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), f"UDP {port - 1}"
        holder.bind(("localhost", port - 1))
    else:
        holder, named = socket.socket(), f"TCP {port + WORKERS}"
        holder.bind(("localhost", port + WORKERS))
        holder.listen()
    with holder:
        refused = checkout.run(WORKERS, port)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert named in refused.stderr, refused.stderr
    checkout.assert_nothing_started()
    # The run made clusters/PORT/ and wrote nothing in it: it removed it again.
    assert not checkout.cluster_dir(port).exists(), list(checkout.cluster_dir(port).iterdir())


def test_failed_worker_stops_what_was_started(checkout):
    """A worker that exits at start makes start.sh exit 1 naming it and showing its log, and stop the master it started."""
    (checkout.root / "worker.py").write_text(
        "import sys\nprint('worker: simulated failure to start', file=sys.stderr)\nsys.exit(3)\n")
    port = free_port_block(WORKERS)
    failed = checkout.run(WORKERS, port)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    workers = "|".join(str(port + n) for n in range(1, WORKERS + 1))
    assert re.search(rf"worker-({workers}) failed: exited with status 3", failed.stderr), \
        failed.stderr
    assert "worker: simulated failure to start" in failed.stderr, failed.stderr
    assert re.search(r"master \(pid \d+\) .*SIGTERM", failed.stderr), failed.stderr
    # start.sh waited for the master to exit before it returned.
    checkout.assert_nothing_started()
    assert (checkout.cluster_dir(port) / "master.log").exists()


def test_concurrent_starts_on_one_port_leave_one_cluster(checkout):
    """Starts run at once on one port: one starts the cluster, the others exit 1 touching nothing, and `stop` then leaves no process and no pid file."""
    port = free_port_block(WORKERS)
    runs = [checkout.launch(WORKERS, port) for _ in range(RACING_STARTS)]
    results = [checkout.finish(run) for run in runs]
    everything = "\n".join(r.stdout + r.stderr for r in results)
    assert sorted(r.returncode for r in results) == [0] + [1] * (RACING_STARTS - 1), everything
    for result in results:
        if result.returncode == 1:  # refused while the winner worked, or after it finished
            assert f"another start.sh is working on port {port}" in result.stderr \
                or "already running" in result.stderr, result.stderr
            assert "failed" not in result.stderr and "SIG" not in result.stderr, result.stderr
    processes = checkout.processes(port)
    assert len(processes) == 1 + WORKERS, processes
    pid_files = checkout.pid_files()
    assert len(pid_files) == 1 + WORKERS, pid_files
    assert sorted(int(path.read_text()) for path in pid_files) == processes
    assert len(checkout.ready_workers(port)) == WORKERS
    # Only the winner's master wrote its log.
    assert (checkout.cluster_dir(port) / "master.log").read_text().count(" listening on ") == 1

    checkout.stop(port)
    wait_until(lambda: not checkout.processes(), EXIT_DEADLINE, what="the cluster to exit")
    assert not checkout.pid_files(), checkout.pid_files()


def test_start_and_stop_wait_for_no_one_holding_the_port_lock(checkout):
    """While another start.sh holds clusters/PORT/'s lock, a start and a stop on PORT exit 1 saying so, and touch nothing."""
    port = free_port_block(WORKERS)
    directory = checkout.cluster_dir(port)
    directory.mkdir(parents=True)
    (directory / "master.pid").write_text("123456789\n")  # stale: only a stop that ran removes it
    holder = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for arguments in ([WORKERS, port], ["stop", port]):
            refused = checkout.run(*arguments)
            assert refused.returncode == 1, (arguments, refused.stdout + refused.stderr)
            assert refused.stderr == \
                f"start.sh: another start.sh is working on port {port}; nothing done\n", \
                refused.stderr
            assert sorted(p.name for p in directory.iterdir()) == ["master.pid"]
        checkout.assert_nothing_started_but_pid_files()
    finally:
        os.close(holder)
    # The lock ends with its holder: the stop now runs.
    stopped = checkout.run("stop", port)
    assert stopped.returncode == 0 and "no cluster running" in stopped.stdout, \
        stopped.stdout + stopped.stderr


@pytest.mark.parametrize("which", ["master", "worker"])
def test_a_pid_that_cannot_be_recorded_stops_its_process(checkout, which):
    """When a pid file cannot be written (a directory is in its place), start.sh stops the process it just started and everything else it started, names the file, and exits 1."""
    port = free_port_block(WORKERS)
    name = "master.pid" if which == "master" else f"worker-{port + 1}.pid"
    (checkout.cluster_dir(port) / name).mkdir(parents=True)
    failed = checkout.run(WORKERS, port)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert f"could not write its pid to clusters/{port}/{name}" in failed.stderr, failed.stderr
    assert f"nothing left running on port {port}" in failed.stderr, failed.stderr
    checkout.assert_nothing_started_but_pid_files()
    assert [p for p in checkout.pid_files() if not p.is_dir()] == []
    assert (checkout.cluster_dir(port) / name).is_dir()  # the user's directory is left alone


def test_a_port_alone_is_not_taken_for_thousands_of_workers(checkout):
    """`start.sh PORT`, a port where WORKERS goes, exits 2 saying how to start workers on that port, and starts nothing."""
    refused = checkout.run(60000)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stdout == ""
    error, *rest = refused.stderr.splitlines()
    assert error == (f"start.sh: 60000 workers is more than 64; to start 2 workers on port"
                     f" 60000: sh {checkout.top}/start.sh 2 60000"), error
    assert rest and rest[0].startswith("usage: sh start.sh"), refused.stderr
    checkout.assert_nothing_started()
    assert not (checkout.root / "clusters").exists()


def test_stale_pid_file_of_an_exited_process_is_called_gone(checkout):
    """A pid file whose process has exited is removed as stale, saying that its process is gone."""
    port = free_port_block(WORKERS)
    exited = subprocess.Popen(["true"])
    exited.wait()
    assert not os.path.exists(f"/proc/{exited.pid}")
    directory = checkout.cluster_dir(port)
    directory.mkdir(parents=True)
    (directory / "master.pid").write_text(f"{exited.pid}\n")
    stopped = checkout.run("stop", port)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert f"no cluster running on port {port}" in stopped.stdout, stopped.stdout
    assert stopped.stderr == (f"start.sh: removed stale pid file clusters/{port}/master.pid"
                              f" (its process, pid {exited.pid}, is gone)\n"), stopped.stderr
    assert not checkout.pid_files(), checkout.pid_files()


def test_start_script_run_through_a_symlink(checkout):
    """`sh LINK` to start.sh, from another directory, starts and stops the checkout's cluster in its clusters/PORT/."""
    link = checkout.tmp_path / "bin" / "start.sh"
    link.parent.mkdir()
    link.symlink_to(checkout.root / "start.sh")
    port = free_port_block(WORKERS)
    started = checkout.run(WORKERS, port, script=link)
    assert started.returncode == 0, started.stdout + started.stderr
    assert f"sh {checkout.top}/start.sh stop {port}" in started.stdout, started.stdout
    processes = checkout.processes(port)
    assert len(processes) == 1 + WORKERS, processes
    assert not (link.parent / "clusters").exists()
    stopped = checkout.run("stop", port, script=link)
    assert stopped.returncode == 0 and f"cluster on port {port} stopped" in stopped.stdout, \
        stopped.stdout + stopped.stderr
    wait_until(lambda: not checkout.processes(), EXIT_DEADLINE, what="the cluster to exit")
    assert not checkout.pid_files(), checkout.pid_files()


def test_a_cluster_with_a_new_secret_runs_jobs_for_its_holders_only(checkout):
    """`--new-secret` makes clusters/PORT/secret; send_job needs it; `stop` finds it."""
    port = free_port_block(WORKERS)
    started = checkout.run("--new-secret", WORKERS, port)
    assert started.returncode == 0, started.stdout + started.stderr
    secret = checkout.cluster_dir(port) / "secret"
    assert secret.stat().st_mode & 0o077 == 0, "the secret is readable by its owner only"
    assert f"MAPREDUCE_SECRET_FILE='{secret.resolve()}'" in started.stdout, started.stdout
    outsider = checkout.send_job(port, "--workers", timeout=30)
    assert outsider.returncode == 1 and "secret" in outsider.stderr, outsider.stderr
    holder = dict(checkout.env, MAPREDUCE_SECRET_FILE=str(secret))
    job = subprocess.run([PYTHON, "send_job.py", str(port), "--output", checkout.root / "out",
                          "--wait"], cwd=checkout.root, env=holder, capture_output=True,
                         text=True, timeout=JOB_DEADLINE)
    assert job.returncode == 0, job.stdout + job.stderr
    # stop finds the recorded secret even with another one in the environment
    other = write_secret(checkout.root / "other-secret", "f" * 64)
    stopped = checkout.run("stop", port, env=dict(checkout.env, MAPREDUCE_SECRET_FILE=str(other)))
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "did not exit" not in stopped.stderr, "the signed shutdown message stops it"
    assert not checkout.processes()
