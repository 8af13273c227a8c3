"""A job's life as its user sees it from the client: following it, and letting go of it."""
import os
import signal
import socket
import subprocess
import time

import pytest

import helper

from conftest import (JOB_TIMEOUT, PYTHON, REPO, WORD_COUNT, assert_matches_sequential,
                      kill_session, partition_files, pid_alive, wait_until, write_files)
from mrlib.reaper import ATTEMPT_VARIABLE
from support.peers import FakeWorkerPool
from support.programs import WORD_COUNT_MAP, script, sleepy_mapper, stop

INTERRUPTED = 130
SMALL_INPUT = {"part-a": b"the quick brown fox\n", "part-b": b"the lazy dog\n"}
# More notable events than a job_status_reply holds (mrlib/job.py EVENT_HISTORY).
MANY_EVENTS = 65
EVENT_BATCH = 13



def test_ctrl_c_in_wait_detaches_and_the_job_goes_on(cluster, tmp_path):
    """Ctrl-C in send_job.py --wait stops following with one line saying how to look again, no traceback, and the job still completes."""
    cluster.start_worker()
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    output = tmp_path / "out"
    client = cluster.send_job_async("--input", inputs, "--output", output, "--mappers", 2,
                                    "--mapper", sleepy_mapper(tmp_path, 1), "--wait")
    try:
        first = client.stdout.readline().decode()
        assert first.startswith("job 0 submitted"), first
        client.send_signal(signal.SIGINT)
        stdout, stderr = client.communicate(timeout=JOB_TIMEOUT)
    finally:
        stop(client)
    text = stderr.decode()
    assert client.returncode == INTERRUPTED, text
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and "--status 0" in lines[0], text
    wait_until(lambda: b"succeeded" in cluster.send_job("--status", 0).stdout, JOB_TIMEOUT,
               what="the job to finish without its client")
    assert_matches_sequential(partition_files(output), inputs, *WORD_COUNT, 2)


def test_ctrl_c_in_a_sequential_run_is_one_line_and_leaves_nothing(tmp_path):
    """Ctrl-C in send_job.py --sequential ends it with one line, no traceback, and removes its scratch directory."""
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    started = tmp_path / "mapper-started"
    # Interrupted once its program runs: a signal that lands in the middle of
    # a fork() is lost to Python (an exception in an at-fork hook is ignored).
    mapper = script(tmp_path / "marking-map.sh", f'touch "{started}"\nexec sleep 30\n')
    client = subprocess.Popen([PYTHON, str(REPO / "send_job.py"), "--sequential", "--input",
                               str(inputs), "--output", str(tmp_path / "out"),
                               "--mapper", str(mapper)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True)
    try:
        wait_until(started.exists, what="the run's first program to start")
        client.send_signal(signal.SIGINT)
        _, stderr = client.communicate(timeout=JOB_TIMEOUT)
    finally:
        kill_session(client.pid)
        client.communicate()
    text = stderr.decode()
    assert client.returncode == INTERRUPTED, text
    assert [line for line in text.splitlines() if line.strip()] == ["send_job: interrupted"], text
    assert not list(tmp_path.glob(".mapreduce-sequential-*"))


# --- cancelling a job: send_job.py --kill N --------------------------------------

def job_state(cluster, job_id):
    return cluster.send_job("--status", job_id).stdout.decode()


def test_kill_a_running_job_then_the_next_job_runs(cluster, tmp_path):
    """--kill of a running job ends it as cancelled (its follower exits 1, its files kept) and the next job runs correctly."""
    cluster.start_workers(2)
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    follower = cluster.send_job_async("--input", inputs, "--output", tmp_path / "out0",
                                      "--mappers", 2, "--mapper", sleepy_mapper(tmp_path, 3),
                                      "--wait")
    try:
        wait_until(lambda: "map phase" in job_state(cluster, 0), what="job 0 to map")
        killed = cluster.send_job("--kill", 0)
        assert killed.returncode == 0, killed.stderr.decode()
        assert "job 0 cancelled" in killed.stdout.decode()
        stdout, stderr = follower.communicate(timeout=JOB_TIMEOUT)
    finally:
        stop(follower)
    assert follower.returncode == 1, stdout.decode() + stderr.decode()
    assert "cancelled" in stderr.decode()
    assert "cancelled" in job_state(cluster, 0)
    outputs = cluster.run_job(*WORD_COUNT, inputs, tmp_path / "out1", 2, 2)
    assert_matches_sequential(outputs, inputs, *WORD_COUNT, 2)
    assert not (tmp_path / "out0").exists()
    assert (cluster.workdir / "var" / "job-0" / "mapper-output").is_dir()


def test_kill_a_queued_job(cluster, tmp_path):
    """--kill of a queued job removes it from the queue; the job ahead of it completes and it never runs."""
    cluster.start_worker()
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    first = cluster.send_job("--input", inputs, "--output", tmp_path / "out0", "--mappers", 2,
                             "--mapper", sleepy_mapper(tmp_path, 2))
    second = cluster.send_job("--input", inputs, "--output", tmp_path / "out1")
    assert first.returncode == 0 and second.returncode == 0
    killed = cluster.send_job("--kill", 1)
    assert killed.returncode == 0, killed.stderr.decode()
    wait_until(lambda: "succeeded" in job_state(cluster, 0), JOB_TIMEOUT, what="job 0")
    assert "cancelled" in job_state(cluster, 1)
    assert_matches_sequential(partition_files(tmp_path / "out0"), inputs, *WORD_COUNT, 2)
    assert not (tmp_path / "out1").exists()


def test_kill_of_an_unknown_or_ended_job_says_so(cluster, tmp_path):
    """--kill of a job id the master never gave, or of a job that succeeded, exits 1 with one line."""
    cluster.start_worker()
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    cluster.run_job(*WORD_COUNT, inputs, tmp_path / "out", 2, 2)
    for job_id, words in ((7, "no job 7"), (0, "already ended: succeeded")):
        result = cluster.send_job("--kill", job_id)
        assert result.returncode == 1
        lines = [line for line in result.stderr.decode().splitlines() if line.strip()]
        assert len(lines) == 1 and words in lines[0], lines
    assert "succeeded" in job_state(cluster, 0)


# --- workers: identity and rejoining -------------------------------------------------

FAST_HEARTBEATS = {"MAPREDUCE_HEARTBEAT_INTERVAL": "0.2"}
# Long enough that no worker is declared dead by silence during a test.
SLOW_HEARTBEATS = {"MAPREDUCE_HEARTBEAT_INTERVAL": "30"}


def worker_states(cluster):
    return {w["pid"]: (w["state"], w["port"]) for w in cluster.cluster_status()["workers"]}


def test_workers_rejoin_a_restarted_master(make_cluster, tmp_path):
    """After the master is SIGKILLed and started again in place, the same workers register by themselves and run the next job."""
    cluster = make_cluster(env=FAST_HEARTBEATS)
    workers = cluster.start_workers(2)
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    cluster.run_job(*WORD_COUNT, inputs, tmp_path / "out0", 2, 2)
    cluster.master.send_signal(signal.SIGKILL)
    cluster.master.wait(JOB_TIMEOUT)
    cluster.start_master()
    wait_until(lambda: all(worker_states(cluster).get(w.pid, ("",))[0] == "ready"
                           for w in workers), what="both workers to register again")
    outputs = cluster.run_job(*WORD_COUNT, inputs, tmp_path / "out1", 2, 2)
    assert_matches_sequential(outputs, inputs, *WORD_COUNT, 2)
    assert all(w.poll() is None for w in workers), "a worker was restarted"


def test_a_register_reusing_a_live_workers_pid_does_not_hide_it(cluster, tmp_path):
    """A register from another address with a live worker's pid leaves that worker listed and working."""
    real = cluster.start_worker()
    with socket.create_server(("localhost", 0)) as impostor:
        impostor.settimeout(0.1)
        helper.send_message("localhost", cluster.port,
                            helper.register("localhost", impostor.getsockname()[1], real.pid))
        inputs = write_files(tmp_path / "in", SMALL_INPUT)
        outputs = cluster.run_job(*WORD_COUNT, inputs, tmp_path / "out", 2, 2)
        assert worker_states(cluster) == {real.pid: ("ready", real.worker_port)}
    assert_matches_sequential(outputs, inputs, *WORD_COUNT, 2)


def test_a_worker_restarted_on_its_port_replaces_the_old_one_at_once(make_cluster, tmp_path):
    """A worker started on the port of one that was killed takes its place at once, long before heartbeats would tell."""
    cluster = make_cluster(env=SLOW_HEARTBEATS)
    old = cluster.start_worker()
    old.send_signal(signal.SIGKILL)
    old.wait(JOB_TIMEOUT)
    new = cluster.start_worker(port=old.worker_port)
    assert worker_states(cluster)[old.pid][0] == "dead"
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    outputs = cluster.run_job(*WORD_COUNT, inputs, tmp_path / "out", 2, 2)
    assert_matches_sequential(outputs, inputs, *WORD_COUNT, 2)
    assert worker_states(cluster)[new.pid][0] == "ready"


def test_a_worker_in_the_wrong_directory_is_set_aside(make_cluster, tmp_path):
    """A worker that cannot see the job's files (no --workdir) is set aside without using up attempts, stays aside while it heartbeats, and the job completes on the other."""
    cluster = make_cluster(env=FAST_HEARTBEATS)
    good = cluster.start_worker()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lost = cluster.start_worker(cwd=elsewhere)
    inputs = write_files(tmp_path / "in", {f"part-{n}": b"the quick brown fox %d\n" % n
                                           for n in range(6)})
    outputs = cluster.run_job(*WORD_COUNT, inputs, tmp_path / "out", 6, 2, "--max-attempts", 1)
    assert_matches_sequential(outputs, inputs, *WORD_COUNT, 2)
    ended = time.monotonic()

    def heartbeat_since_the_job():
        for worker in cluster.cluster_status()["workers"]:
            if worker["pid"] == lost.pid:
                return worker["since_heartbeat"] < time.monotonic() - ended
        return False
    wait_until(heartbeat_since_the_job, what="a heartbeat from the set-aside worker")
    states = worker_states(cluster)
    assert states[lost.pid][0] == "unfit" and states[good.pid][0] == "ready", states
    assert lost.poll() is None


# --- attempts that no longer count are stopped on our workers ----------------------------

def recording_mapper(tmp_path):
    """A map that fails at once on input containing 'fail', else records its pid and sleeps."""
    return script(tmp_path / "recording-map.sh",
                  f'if grep -q fail; then exit 3; fi\n'
                  f'echo $$ >> "{tmp_path / "pids"}"\nexec sleep 60\n')


def pids_in(path):
    """The pids a test program wrote to `path`, one a line; [] before it wrote any."""
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def recorded_pids(tmp_path):
    return pids_in(tmp_path / "pids")


def test_a_cancelled_jobs_running_programs_are_stopped(cluster, tmp_path):
    """--kill of a running job stops the programs its attempts run on our workers."""
    cluster.start_workers(2)
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    submitted = cluster.send_job("--input", inputs, "--output", tmp_path / "out", "--mappers", 2,
                                 "--mapper", recording_mapper(tmp_path))
    assert submitted.returncode == 0, submitted.stderr.decode()
    pids = wait_until(lambda: len(recorded_pids(tmp_path)) == 2 and recorded_pids(tmp_path),
                      what="both map programs to start")
    assert cluster.send_job("--kill", 0).returncode == 0
    wait_until(lambda: not any(pid_alive(pid) for pid in pids), what=f"programs {pids} to stop")
    outputs = cluster.run_job(*WORD_COUNT, inputs, tmp_path / "out1", 2, 2)
    assert_matches_sequential(outputs, inputs, *WORD_COUNT, 2)


def test_a_failed_jobs_other_attempts_are_stopped(cluster, tmp_path):
    """When a job fails, the programs its other attempts still run on our workers are stopped."""
    cluster.start_workers(2)
    inputs = write_files(tmp_path / "in", {"a-slow": b"sleep here\n", "b-fail": b"fail\n"})
    failed = cluster.send_job("--input", inputs, "--output", tmp_path / "out", "--mappers", 2,
                              "--mapper", recording_mapper(tmp_path), "--max-attempts", 1,
                              "--wait")
    assert failed.returncode == 1, failed.stdout.decode()
    pids = wait_until(lambda: recorded_pids(tmp_path), what="the slow program to start")
    wait_until(lambda: not any(pid_alive(pid) for pid in pids), what=f"programs {pids} to stop")


def escaping_mapper(tmp_path, then="exec " + str(WORD_COUNT[0]), untagged=False):
    """A map that leaves a `setsid` grandchild behind (a daemonising script), recording its
    pid; `untagged`: the grandchild drops the attempt's tag from its environment too."""
    pids = tmp_path / "escaped"
    unset = f"env -u {ATTEMPT_VARIABLE} " if untagged else ""
    return script(tmp_path / "escaping-map.sh",
                  f"{unset}setsid sh -c 'echo $$ >> \"{pids}\"; exec sleep 60' </dev/null "
                  f">/dev/null 2>&1 &\n"
                  f'while [ ! -s "{pids}" ]; do sleep 0.01; done\n{then}\n')


def escaped_pids(tmp_path):
    return pids_in(tmp_path / "escaped")


@pytest.fixture
def escapes(tmp_path):
    """Kill, after the test, any recorded grandchild still running (a test that failed)."""
    yield
    for pid in escaped_pids(tmp_path):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                ours = handle.read().split(b"\0")[:2] == [b"sleep", b"60"]
        except OSError:
            continue
        if ours:
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("untagged", [False, True], ids=["tagged", "untagged"])
def test_a_setsid_grandchild_dies_with_its_task(cluster, tmp_path, escapes, untagged):
    """A program's child that calls setsid is gone once its task has ended; also one that
    drops the attempt's tag from its environment (found as an orphan the worker adopted:
    as a non-root worker finds one whose environment it may not read)."""
    cluster.start_worker()
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    outputs = cluster.run_job(escaping_mapper(tmp_path, untagged=untagged), WORD_COUNT[1],
                              inputs, tmp_path / "out", 1, 2)
    assert_matches_sequential(outputs, inputs, *WORD_COUNT, 2)
    escaped = escaped_pids(tmp_path)
    assert escaped
    wait_until(lambda: not any(pid_alive(pid) for pid in escaped),
               what=f"the escaped grandchildren {escaped} to die")


def test_a_setsid_grandchild_dies_with_a_killed_worker(cluster, tmp_path, escapes):
    """A setsid grandchild of a running task dies when its worker is SIGKILLed."""
    worker = cluster.start_worker()
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    mapper = escaping_mapper(tmp_path, then="exec sleep 60")
    submitted = cluster.send_job("--input", inputs, "--output", tmp_path / "out", "--mappers", "1",
                                 "--mapper", mapper)
    assert submitted.returncode == 0, submitted.stderr.decode()
    escaped = wait_until(lambda: escaped_pids(tmp_path), what="the grandchild to start")
    worker.send_signal(signal.SIGKILL)
    wait_until(lambda: not any(pid_alive(pid) for pid in escaped),
               what=f"the escaped grandchild {escaped} to die")


def test_tasks_of_a_master_before_its_restart_never_count_for_the_new_one(make_cluster, tmp_path):
    """A rejoining worker drops what the master gave it before it restarted: the new master's job, whose task paths are the same, gets only its own results."""
    cluster = make_cluster(env=FAST_HEARTBEATS)
    worker = cluster.start_worker()
    old = write_files(tmp_path / "old", {"a": b"old a\n", "b": b"old b\n", "c": b"old c\n"})
    started = tmp_path / "old-started"
    slow_cat = script(tmp_path / "slow-cat.sh", f'touch "{started}"\nsleep 3\nexec cat\n')
    cat = script(tmp_path / "cat.sh", "exec cat\n")
    first = cluster.send_job("--input", old, "--output", tmp_path / "out-old", "--mappers", 3,
                             "--reducers", 1, "--mapper", slow_cat, "--reducer", cat)
    assert first.returncode == 0, first.stderr.decode()
    wait_until(started.exists, what="the first job's maps to start")
    cluster.master.send_signal(signal.SIGKILL)
    cluster.master.wait(JOB_TIMEOUT)
    cluster.start_master()
    wait_until(lambda: worker_states(cluster).get(worker.pid, ("",))[0] == "ready",
               what="the worker to register again")
    # The same name as the task that was running: its result, or its failure,
    # would be taken for the new task's.
    new = write_files(tmp_path / "new", {"a": b"new a\n"})
    outputs = cluster.run_job(cat, cat, new, tmp_path / "out-new", 1, 1, "--max-attempts", 1)
    assert [p.read_bytes() for p in outputs] == [b"new a\n"]


def test_a_program_removed_after_submission_fails_its_job_only(cluster, tmp_path):
    """A job whose program is gone by the time it runs fails; no worker is set aside, and the next job runs."""
    workers = cluster.start_workers(2)
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    ahead = cluster.send_job("--input", inputs, "--output", tmp_path / "out0", "--mappers", 2,
                             "--mapper", sleepy_mapper(tmp_path, 1))
    doomed = script(tmp_path / "doomed-map.sh", f"exec {WORD_COUNT[0]}\n")
    queued = cluster.send_job("--input", inputs, "--output", tmp_path / "out1", "--mapper", doomed)
    assert ahead.returncode == 0 and queued.returncode == 0
    doomed.unlink()
    wait_until(lambda: "failed" in job_state(cluster, 1), JOB_TIMEOUT, what="job 1 to fail")
    assert {state for state, _ in worker_states(cluster).values()} <= {"ready", "busy"}
    outputs = cluster.run_job(*WORD_COUNT, inputs, tmp_path / "out2", 2, 2)
    assert_matches_sequential(outputs, inputs, *WORD_COUNT, 2)
    assert all(w.poll() is None for w in workers)


def udp_ports(pid):
    """The local ports of a process's UDP sockets, from /proc."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    with open("/proc/net/udp") as table:
        for row in list(table)[1:]:
            fields = row.split()
            if fields[9] in inodes:
                ports.append(int(fields[1].split(":")[1], 16))
    return ports


def test_a_cancel_from_anyone_but_the_master_is_ignored(make_cluster, tmp_path):
    """A cancel_task datagram sent to a worker's heartbeat socket from another address is not obeyed."""
    cluster = make_cluster(env=FAST_HEARTBEATS)
    worker = cluster.start_worker()
    go = tmp_path / "go"
    started = tmp_path / "started"
    mapper = script(tmp_path / "waiting-map.sh",
                    f'touch "{started}"\nwhile [ ! -e "{go}" ]; do sleep 0.05; done\n'
                    f"exec {WORD_COUNT[0]}\n")
    inputs = write_files(tmp_path / "in", {"only": b"one two two\n"})
    client = cluster.send_job_async("--input", inputs, "--output", tmp_path / "out", "--mappers", "1",
                                    "--mapper", mapper, "--max-attempts", 1, "--wait")
    try:
        wait_until(started.exists, what="the map program to start")
        task = helper.task_id([str(cluster.workdir / "var" / "job-0" / "mapper-output" / "only")])
        spoof = helper.encode(helper.cancel_task(worker.pid, task))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for port in udp_ports(worker.pid):
                sock.sendto(spoof, ("127.0.0.1", port))
        sent = time.monotonic()
        for _ in range(2):  # two heartbeats later, the worker has read its socket since
            wait_until(lambda: next(w["since_heartbeat"] for w in cluster.cluster_status()["workers"])
                       < time.monotonic() - sent, what="a heartbeat after the spoofed cancel")
            sent = time.monotonic()
        go.touch()
        stdout, stderr = client.communicate(timeout=JOB_TIMEOUT)
    finally:
        stop(client)
    assert client.returncode == 0, stdout.decode() + stderr.decode()


def test_wait_prints_every_event_past_the_masters_history(cluster, tmp_path):
    """--wait goes on printing events after the master's history of the latest 50 is full."""
    cluster.start_worker()
    gate = tmp_path / "gate"
    mapper = script(tmp_path / "gated-map.sh",
                    f"while [ ! -e {gate} ]; do sleep 0.05; done\nexec {WORD_COUNT_MAP}\n")
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    printed = tmp_path / "client.out"
    with open(printed, "wb") as out:
        client = subprocess.Popen(
            [PYTHON, str(REPO / "send_job.py"), str(cluster.port), "--input", str(inputs),
             "--output", str(tmp_path / "out"), "--mapper", str(mapper), "--mappers", "1",
             "--reducers", "0", "--wait"], cwd=cluster.workdir, env=cluster.env, stdout=out)
    pool = FakeWorkerPool(cluster.port)
    try:
        wait_until(lambda: cluster.cluster_status()["current_job"] == 0, what="the job to start")
        for _ in range(MANY_EVENTS // EVENT_BATCH):  # notes "worker N registered"
            batch = [pool.join() for _ in range(EVENT_BATCH)]
            wait_until(lambda: f"worker {batch[-1].pid} registered" in printed.read_text(),
                       what=f"--wait to print worker {batch[-1].pid}'s registration")
        gate.touch()
        assert client.wait(JOB_TIMEOUT) == 0
    finally:
        gate.touch()
        stop(client)
        pool.close()
    text = printed.read_text()
    assert all(f"worker {fake.pid} registered" in text for fake in pool.workers), text


def test_the_workers_inherited_children_are_not_taken_for_orphans(tmp_path):
    """A child the worker had before its guard (a launcher's `tee` for its log, inherited
    through exec) survives the end of an attempt; it was killed as an orphan."""
    probe = f"""
import subprocess, sys
sys.path.insert(0, {str(REPO)!r})
from mrlib import runner
child = subprocess.Popen(["sleep", "60"])
guard = runner.ProgramGuard(use_reaper=False, adopt_orphans=True)
assert guard.adopts
runner.TaskGuard(guard).close()  # no attempt runs now: orphans are killed
alive = child.poll() is None
child.kill()
child.wait()
print(alive)
"""
    result = subprocess.run([PYTHON, "-c", probe], capture_output=True, timeout=JOB_TIMEOUT)
    assert result.stdout.strip() == b"True", result.stderr.decode()
