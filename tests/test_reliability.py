"""Workers die at any moment, in any phase; every job still ends correctly."""
import os
import re
import signal
import threading
import time

import pytest

import helper
from conftest import (PYTHON, REPO, WORD_COUNT, assert_matches_sequential, partition_files,
                      wait_until, write_files)
from support.peers import ScriptedWorker
from support.programs import write_script

# Fast failure detection for most tests: death after 5 x 0.2 s of silence.
FAST = {"MAPREDUCE_HEARTBEAT_INTERVAL": "0.2"}
# Less than the 1 s of silence that is death, more than the master's 0.5 s
# tick minus a heartbeat interval: one worker falls silent this long after
# another, so the master's tick finds the first dead and the second alive.
HEARTBEAT_LAG = 0.6
MAPPER, REDUCER = WORD_COUNT


def slow(path, real, seconds):
    """A program that waits, then runs `real` (so a task is caught mid-run)."""
    return write_script(path, f"#!/bin/sh\nsleep {seconds}\nexec {real}\n")


def slow_sort_path(directory, seconds):
    """A PATH whose `sort` waits first: makes the group phase slow on a worker."""
    directory.mkdir(exist_ok=True)
    slow(directory / "sort", '/usr/bin/sort "$@"', seconds)
    return f"{directory}:{os.environ['PATH']}"


def corpus(directory, files=6, words=400):
    contents = {f"part{n}": b" ".join(b"w%d" % ((n * 7 + i) % 53) for i in range(words)) + b"\n"
                for n in range(files)}
    return write_files(directory, contents)


def job_status(cluster, job_id=0):
    return helper.request("localhost", cluster.port, helper.job_status(job_id))


def in_phase(cluster, phase, job_id=0):
    return job_status(cluster, job_id).get("phase") == phase


def busy_worker(cluster, processes):
    """A started worker process that the master says holds a task, or None."""
    busy = {w["pid"] for w in cluster.cluster_status()["workers"] if w["tasks"]}
    return next((p for p in processes if p.pid in busy and p.poll() is None), None)


def kill_busy_worker_in(cluster, processes, phase):
    """Wait for `phase`, then SIGKILL a worker that is running a task in it."""
    victim = wait_until(lambda: in_phase(cluster, phase) and busy_worker(cluster, processes),
                        timeout=60, interval=0.02, what=f"a busy worker in the {phase} phase")
    victim.send_signal(signal.SIGKILL)
    victim.wait(5)
    return victim


def finish(cluster, client, output, inputs, reducers=2):
    stdout, stderr = client.communicate(timeout=120)
    assert client.returncode == 0, stdout.decode() + stderr.decode() + cluster.master_log()[-3000:]
    assert_matches_sequential(partition_files(output), inputs, MAPPER, REDUCER, reducers)
    return stdout.decode()


@pytest.fixture
def fast_cluster(make_cluster):
    return make_cluster(FAST)


@pytest.mark.parametrize("phase", ["map", "group", "reduce"])
def test_worker_killed_in_each_phase(fast_cluster, tmp_path, phase):
    """A worker SIGKILLed mid-map, mid-sort or mid-reduce: its task is redone elsewhere."""
    inputs = corpus(tmp_path / "in")
    mapper = slow(tmp_path / "map.sh", MAPPER, 1) if phase == "map" else MAPPER
    reducer = slow(tmp_path / "reduce.sh", REDUCER, 1) if phase == "reduce" else REDUCER
    if phase == "group":
        fast_cluster.env["PATH"] = slow_sort_path(tmp_path / "bin", 1)
    workers = fast_cluster.start_workers(3)
    output = tmp_path / "out"
    client = fast_cluster.send_job_async("--input", inputs, "--output", output, "--mapper", mapper,
                                         "--reducer", reducer, "--wait")
    victim = kill_busy_worker_in(fast_cluster, workers, phase)
    text = finish(fast_cluster, client, output, inputs)
    assert f"worker {victim.pid} dead" in text
    assert re.search(rf"(map|sort|reduce) task \d+ reassigned from dead worker {victim.pid}", text)


def test_all_but_one_worker_killed(fast_cluster, tmp_path):
    """With every worker but one killed mid-map, the last one finishes the job."""
    inputs = corpus(tmp_path / "in", files=8)
    mapper = slow(tmp_path / "map.sh", MAPPER, 0.5)
    workers = fast_cluster.start_workers(3)
    output = tmp_path / "out"
    client = fast_cluster.send_job_async("--input", inputs, "--output", output, "--mapper", mapper,
                                         "--mappers", 8, "--wait")
    wait_until(lambda: in_phase(fast_cluster, "map"), what="the map phase")
    for victim in workers[:2]:
        victim.send_signal(signal.SIGKILL)
    finish(fast_cluster, client, output, inputs)


def test_every_worker_killed_then_a_fresh_one(fast_cluster, tmp_path):
    """With no worker left the job waits; a newly registered worker picks it up."""
    inputs = corpus(tmp_path / "in")
    mapper = slow(tmp_path / "map.sh", MAPPER, 1)
    workers = fast_cluster.start_workers(2)
    output = tmp_path / "out"
    client = fast_cluster.send_job_async("--input", inputs, "--output", output, "--mapper", mapper,
                                         "--wait")
    wait_until(lambda: busy_worker(fast_cluster, workers), what="a busy worker")
    for victim in workers:
        victim.send_signal(signal.SIGKILL)
    wait_until(lambda: all(w["state"] == "dead" for w in fast_cluster.cluster_status()["workers"]),
               what="every worker to be declared dead")
    assert client.poll() is None
    dead = fast_cluster.cluster_status()["workers"]
    assert all(w["tasks"] == 0 for w in dead) and sum(w["set_aside"] for w in dead) > 0
    listing = fast_cluster.send_job("--workers").stdout.decode()
    assert re.search(r"dead \(0 task\(s\), [1-9]\d* set aside", listing), listing
    fast_cluster.start_worker()
    finish(fast_cluster, client, output, inputs)


def test_worker_restarted_on_the_same_port(fast_cluster, tmp_path):
    """A worker killed and restarted on its port replaces the dead one at once."""
    inputs = corpus(tmp_path / "in")
    mapper = slow(tmp_path / "map.sh", MAPPER, 1)
    workers = fast_cluster.start_workers(2)
    output = tmp_path / "out"
    client = fast_cluster.send_job_async("--input", inputs, "--output", output, "--mapper", mapper,
                                         "--wait")
    victim = kill_busy_worker_in(fast_cluster, workers, "map")
    fast_cluster.start_worker(port=victim.worker_port)
    finish(fast_cluster, client, output, inputs)


CRASHING_PROGRAM = """#!{python}
# Kill this program's own worker at random, then wait to be reaped with it.
import os, random, signal, sys, time
if random.random() < {probability}:
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(30)
os.execv({real!r}, [{real!r}])
"""


class Supervisor:
    """Keeps `count` workers running: restarts each one that dies."""

    def __init__(self, cluster, count):
        self.cluster = cluster
        self.workers = cluster.start_workers(count)
        self.restarts = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while not self.stopping.wait(0.1):
            for index, process in enumerate(self.workers):
                if process.poll() is not None:
                    self.workers[index] = self.cluster.start_worker(wait=False)
                    self.restarts += 1

    def stop(self):
        self.stopping.set()
        self.thread.join(5)


def test_crash_programs_kill_their_workers(fast_cluster, tmp_path):
    """In the spirit of 6.824's crash test: programs kill their own workers at random."""
    inputs = corpus(tmp_path / "in", files=10)
    crash_map = write_script(tmp_path / "crash_map.py", CRASHING_PROGRAM.format(
        python=PYTHON, probability=0.3, real=str(MAPPER)))
    crash_reduce = write_script(tmp_path / "crash_reduce.py", CRASHING_PROGRAM.format(
        python=PYTHON, probability=0.3, real=str(REDUCER)))
    supervisor = Supervisor(fast_cluster, 3)
    try:
        for number in range(3):
            output = tmp_path / f"out{number}"
            result = fast_cluster.send_job("--input", inputs, "--output", output,
                                           "--mapper", crash_map, "--reducer", crash_reduce,
                                           "--mappers", 6, "--reducers", 3, "--wait")
            assert result.returncode == 0, result.stderr.decode() + fast_cluster.master_log()[-3000:]
            outputs = partition_files(output)
            assert_matches_sequential(outputs, inputs, MAPPER, REDUCER, 3)
    finally:
        supervisor.stop()
    assert supervisor.restarts > 0


def test_stale_finished_from_a_dead_worker(make_cluster, tmp_path):
    """A finished from a worker declared dead, after reassignment, does not corrupt the job."""
    fast_cluster = make_cluster(dict(FAST, MAPREDUCE_LOG_LEVEL="DEBUG"))  # logs each send
    inputs = corpus(tmp_path / "in", files=2)
    fake = ScriptedWorker(fast_cluster)
    fake.register()
    try:
        output = tmp_path / "out"
        client = fast_cluster.send_job_async("--input", inputs, "--output", output,
                                             "--mappers", 2, "--wait")
        tasks = [fake.receive(), fake.receive()]
        assert all(t["message_type"] == "new_worker_job" for t in tasks)
        fake.beating.clear()  # falls silent: the master must declare it dead
        wait_until(lambda: fast_cluster.worker_state(fake.pid) == "dead", what="the fake's death")
        stale = fake.run_task(tasks[0])
        helper.send_message("localhost", fast_cluster.port, helper.status_files(stale, fake.pid))
        fast_cluster.wait_for_log(f"accepted a late result of map task 0 from dead worker {fake.pid}")
        helper.send_message("localhost", fast_cluster.port, helper.status_files(stale, fake.pid))
        fast_cluster.wait_for_log("duplicate finish of map task 0")
        fast_cluster.start_worker()
        finish(fast_cluster, client, output, inputs)
        assert fast_cluster.master_log().count("map task 0 sent to") == 1, \
            "its late result was taken: the task must not run again"
    finally:
        fake.close()


def test_worker_found_unreachable_while_reassigning(fast_cluster, tmp_path):
    """A worker found dead by a refused send while reassigning a peer's tasks loses its own too."""
    inputs = corpus(tmp_path / "in", files=9)
    fakes = [ScriptedWorker(fast_cluster) for _ in range(3)]
    try:
        for fake in fakes:
            fake.register()
        unreachable, silent, healthy = fakes
        fast_cluster.send_job_async("--input", inputs, "--output", tmp_path / "out",
                                    "--mappers", 9)
        held = {fake.pid: [fake.receive() for _ in range(3)] for fake in fakes}
        # `unreachable` finishes two tasks, so it is the least loaded worker...
        for task in held[unreachable.pid][:2]:
            helper.send_message("localhost", fast_cluster.port,
                                helper.status_files(unreachable.run_task(task), unreachable.pid))
        wait_until(lambda: next(w["tasks"] for w in fast_cluster.cluster_status()["workers"]
                                if w["pid"] == unreachable.pid) == 1, what="two finishes")
        # ... and it dies just after `silent`: the tick that finds `silent`
        # dead finds it alive, so reassigning `silent`'s tasks tries it first
        # and finds it dead by a refused connection instead.
        unreachable.sock.close()
        silent.beating.clear()
        time.sleep(HEARTBEAT_LAG)
        unreachable.beating.clear()
        # `silent`'s three tasks, then `unreachable`'s last one, must all reach `healthy`.
        reassigned = {tuple(healthy.receive()["input_files"]) for _ in range(4)}
        expected = {tuple(t["input_files"]) for t in held[silent.pid] + held[unreachable.pid][2:]}
        assert reassigned == expected
    finally:
        for fake in fakes:
            fake.close()


def test_wrongly_declared_dead_worker_is_taken_back(fast_cluster, tmp_path):
    """A worker paused past the limit is declared dead, then taken back when it beats again."""
    worker = fast_cluster.start_worker()
    worker.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: fast_cluster.worker_state(worker.pid) == "dead", what="death")
    finally:
        worker.send_signal(signal.SIGCONT)
    wait_until(lambda: fast_cluster.worker_state(worker.pid) == "ready", what="revival")
    inputs = corpus(tmp_path / "in")
    output = tmp_path / "out"
    finish(fast_cluster, fast_cluster.send_job_async("--input", inputs, "--output", output,
                                                     "--wait"), output, inputs)


def test_failing_program_fails_the_job_after_four_attempts(fast_cluster, tmp_path):
    """A program that always exits non-zero fails its job, named; the next job runs."""
    inputs = corpus(tmp_path / "in", files=2)
    broken = write_script(tmp_path / "broken.sh", "#!/bin/sh\necho 'cannot parse record 17' >&2\nexit 3\n")
    fast_cluster.start_workers(2)
    failing = fast_cluster.send_job_async("--input", inputs, "--output", tmp_path / "bad",
                                          "--mapper", broken, "--mappers", 1, "--wait")
    fast_cluster.wait_for_log("job 0 accepted")
    good = fast_cluster.send_job_async("--input", inputs, "--output", tmp_path / "good", "--wait")
    stdout, stderr = failing.communicate(timeout=60)
    text = stdout.decode() + stderr.decode()
    assert failing.returncode == 1
    assert "attempt 4 of 4" in text and "attempt 5" not in text
    for detail in ("map task 0", "part0", "exit code 3", "cannot parse record 17"):
        assert detail in text
    assert (fast_cluster.workdir / "var" / "job-0").is_dir()
    finish(fast_cluster, good, tmp_path / "good", inputs)


def test_hanging_program_is_ended_by_the_time_limit(fast_cluster, tmp_path):
    """A program that never ends is killed at the job's time limit and counts as failed."""
    inputs = corpus(tmp_path / "in", files=1)
    hang = write_script(tmp_path / "hang.sh", "#!/bin/sh\nsleep 1000\n")
    fast_cluster.start_workers(2)
    result = fast_cluster.send_job("--input", inputs, "--output", tmp_path / "out",
                                   "--mapper", hang, "--timeout", 0.5, "--max-attempts", 2,
                                   "--wait")
    text = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 1
    assert "timed out after 0.5 s" in text and "attempt 2 of 2" in text


def processes_running(marker):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if marker in handle.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


@pytest.mark.parametrize("whole_group", [False, True], ids=["worker", "worker's group"])
def test_programs_die_with_their_worker(fast_cluster, tmp_path, whole_group):
    """SIGKILL a worker, or its whole process group (`kill -9 -PGID`, or PySpark's daemon
    hanging up its group): its program and the program's own children stop too."""
    marker = b"1000.%d" % os.getpid()
    stuck = write_script(tmp_path / "stuck.sh", f"#!/bin/sh\nsleep {marker.decode()} &\nsleep {marker.decode()}\n")
    inputs = corpus(tmp_path / "in", files=1)
    worker = fast_cluster.start_worker()
    client = fast_cluster.send_job_async("--input", inputs, "--output", tmp_path / "out",
                                         "--mapper", stuck, "--wait")
    wait_until(lambda: len(processes_running(marker)) == 2, what="the program to start")
    if whole_group:
        os.killpg(os.getpgid(worker.pid), signal.SIGKILL)
    else:
        worker.send_signal(signal.SIGKILL)
    wait_until(lambda: not processes_running(marker), timeout=5, what="the programs to die")
    client.kill()
    client.wait()


def test_a_nested_jobs_programs_die_with_the_worker_that_ran_it(fast_cluster, tmp_path):
    """A map program that runs a job of its own (send_job --sequential), whose program
    leaves its session: SIGKILL the worker, and the inner job's reaper, which the outer
    attempt's sweep must leave alone, kills that program too."""
    marker = b"1000.%d" % os.getpid()
    inner = write_script(tmp_path / "inner.sh",
                         f"#!/bin/sh\nsetsid sleep {marker.decode()} &\nexec sleep {marker.decode()}\n")
    outer = write_script(tmp_path / "outer.sh",
                         f"#!/bin/sh\nexec {PYTHON} {REPO / 'send_job.py'} --sequential --input "
                         f"{tmp_path / 'in'} --output {tmp_path / 'inner-out'} --mapper {inner}\n")
    inputs = corpus(tmp_path / "in", files=1)
    worker = fast_cluster.start_worker()
    client = fast_cluster.send_job_async("--input", inputs, "--output", tmp_path / "out",
                                         "--mapper", outer, "--wait")
    try:
        wait_until(lambda: len(processes_running(marker)) == 2, what="the inner program to start")
        worker.send_signal(signal.SIGKILL)
        wait_until(lambda: not processes_running(marker), timeout=5, what="the programs to die")
    finally:
        for pid in processes_running(marker):
            os.kill(pid, signal.SIGKILL)
        client.kill()
        client.wait()


def test_recovery_with_the_spec_timings(make_cluster, tmp_path):
    """With the spec's 2 s heartbeats, a killed worker's task is reassigned after ~10 s."""
    cluster = make_cluster({"MAPREDUCE_HEARTBEAT_INTERVAL": "2"})
    inputs = corpus(tmp_path / "in")
    mapper = slow(tmp_path / "map.sh", MAPPER, 1)
    workers = cluster.start_workers(2)
    output = tmp_path / "out"
    client = cluster.send_job_async("--input", inputs, "--output", output, "--mapper", mapper,
                                    "--wait")
    victim = kill_busy_worker_in(cluster, workers, "map")
    killed = time.monotonic()
    cluster.wait_for_log(f"worker {victim.pid} (localhost:{victim.worker_port}) is dead",
                         timeout=20)
    detected = time.monotonic() - killed
    finish(cluster, client, output, inputs)
    limit = helper.MISSED_HEARTBEATS_LIMIT * 2
    assert limit - 2 <= detected <= limit + 3
