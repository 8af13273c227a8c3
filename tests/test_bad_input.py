"""Bad input never takes a process down.

Every malformed, mistyped, oversized or misaddressed message is logged with
its reason and dropped; every impossible job is rejected with one clear line;
a failing program fails its job visibly. Afterwards the same master (and
worker) still runs a real job whose output equals the sequential pipeline.
"""
import re
import resource
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

import helper
from conftest import (JOB_TIMEOUT, WORD_COUNT, assert_matches_sequential, partition_files,
                      wait_until, write_files)
from support.localcluster import thread_count
from support.programs import script

# No real process has these pids (Linux pid_max is at most 2**22).
UNKNOWN_PID = 999_999_901
FOREIGN_PID = 999_999_902
LOG_TIMEOUT = 10.0
HEARTBEAT_WAIT = 3 * helper.HEARTBEAT_INTERVAL
JAMMED_REGISTERS = 3
# An open-file limit the master can start under, with little room to spare.
FEW_FILES = 48
# How long a starved master is watched for log noise.
QUIET_WINDOW = 1.0
ACCEPT_FAILED = "accept failed"
ACCEPTING_AGAIN = "accepting connections again"
STALLED_STATUS_WAIT = 30.0  # the longest a status query may wait (master.py)
CLIENT_TIMEOUT = 60.0
SEND_JOB_INVALID = 2
FAILING_EXIT_CODE = 3
FAILING_STDERR = "failing.sh: cannot parse record 7"
DEFAULT_MAX_ATTEMPTS = 4
SMALL_INPUT = {
    "part-a": b"the quick brown fox\njumps over the lazy dog\n",
    "part-b": b"the dog barks\nthe fox runs\n",
    "part-c": b"lazy lazy dog\n",
}


# --- helpers ----------------------------------------------------------------

def log_size(cluster, name="master.log"):
    return len(cluster.log(name))


def new_lines(cluster, since, name="master.log"):
    return cluster.log(name)[since:].splitlines()


def wait_for_new_line(cluster, since, parts, name="master.log", what=""):
    """Wait for a line written after offset `since` that contains every part."""
    def find():
        for line in new_lines(cluster, since, name):
            if all(part in line for part in parts):
                return line
        return None
    return wait_until(find, LOG_TIMEOUT, what=f"{what or parts} in {name}: "
                                                 f"{cluster.log(name)[since:][-2000:]!r}")


def send_udp(port, data):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(data, ("localhost", port))


def good_job(tmp_path, **changes):
    """A valid new_master_job over a small input, with fields replaced."""
    inputs = write_files(tmp_path / "good-in", SMALL_INPUT)
    message = helper.new_master_job(str(inputs), str(tmp_path / "good-out"),
                                    str(WORD_COUNT[0]), str(WORD_COUNT[1]), 2, 2)
    message.update(changes)
    return message


def without(message, field):
    return {k: v for k, v in message.items() if k != field}


def run_good_job(cluster, tmp_path, name="final"):
    """Run a word count on the same cluster and check it against the oracle."""
    inputs = write_files(tmp_path / f"{name}-in", SMALL_INPUT)
    outputs = cluster.run_job(*WORD_COUNT, inputs, tmp_path / f"{name}-out", 3, 2)
    assert_matches_sequential(outputs, inputs, *WORD_COUNT, 2)


def finish(client, timeout=CLIENT_TIMEOUT):
    """Wait for a send_job client; kill it if it overruns. Returns (rc, text)."""
    try:
        stdout, stderr = client.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        client.kill()
        stdout, stderr = client.communicate()
    return client.returncode, stdout.decode() + stderr.decode()


def assert_alive(cluster, *processes):
    for process in (cluster.master, *processes):
        assert process.poll() is None, f"pid {process.pid} exited with {process.returncode}"


def heard_from(cluster, pid):
    """Seconds since the master last heard a heartbeat from worker `pid`."""
    return next(w["since_heartbeat"] for w in cluster.cluster_status()["workers"]
                if w["pid"] == pid)


def registered_pids(cluster):
    return sorted(w["pid"] for w in cluster.cluster_status()["workers"])


# --- bad messages to the master --------------------------------------------

def oversized():
    return b"x" * (helper.MAX_MESSAGE_BYTES + 1)


def exactly_at_cap():
    """A well-formed (but unknown-type) message padded to exactly the cap."""
    body = helper.encode({"message_type": "padded"})
    return body + b" " * (helper.MAX_MESSAGE_BYTES - len(body))


# (case, bytes builder taking tmp_path, substrings the master's log line must hold)
MASTER_TCP_CASES = [
    ("malformed JSON", lambda t: b'{"message_type": "register", ',
     ("dropped a message", "malformed JSON")),
    ("JSON list", lambda t: b"[1, 2, 3]",
     ("dropped a message", "expected a JSON object, got list")),
    ("JSON number", lambda t: b"42",
     ("dropped a message", "expected a JSON object, got int")),
    ("unknown message_type", lambda t: helper.encode({"message_type": "bogus"}),
     ("dropped a message", "unknown message_type 'bogus'")),
    ("missing message_type", lambda t: helper.encode({"worker_pid": 1}),
     ("dropped a message", "'message_type'")),
    ("missing field", lambda t: helper.encode(without(good_job(t), "num_reducers")),
     ("dropped a message", "missing field 'num_reducers'")),
    ("port as a string", lambda t: helper.encode(dict(helper.register("localhost", 1, 1),
                                                      worker_port="6001")),
     ("dropped a message", "field 'worker_port' should be a")),
    ("count as a bool", lambda t: helper.encode(good_job(t, num_mappers=True)),
     ("dropped a message", "field 'num_mappers' should be a")),
    ("deeply nested JSON", lambda t: b"[" * 200_000,
     ("dropped a message", "nested too deeply")),
    ("over 16 MiB", lambda t: oversized(),
     ("dropped a message", "exceeds")),
    ("exactly 16 MiB", lambda t: exactly_at_cap(),
     ("dropped a message", "unknown message_type 'padded'")),
    ("non-UTF-8", lambda t: b'{"message_type": "\xff\xfe\x80"}',
     ("dropped a message", "malformed JSON")),
    ("message the master does not take", lambda t: helper.encode(helper.heartbeat(UNKNOWN_PID)),
     ("dropped a heartbeat message",)),
    ("status from an unknown pid",
     lambda t: helper.encode(helper.status_files([str(t / "x")], UNKNOWN_PID)),
     (f"status from unknown pid {UNKNOWN_PID}",)),
]

MASTER_UDP_CASES = [
    ("garbage datagram", b"\x00\x01garbage{", ("dropped a datagram", "malformed JSON")),
    ("deeply nested datagram", b"[" * 60_000, ("dropped a datagram", "nested too deeply")),
    ("heartbeat from an unregistered pid", helper.encode(helper.heartbeat(UNKNOWN_PID)),
     (f"unregistered pid {UNKNOWN_PID}",)),
    ("register on the heartbeat port", helper.encode(helper.register("localhost", 1, 1)),
     ("dropped a register on the heartbeat port",)),
]


def test_master_survives_bad_messages(cluster, tmp_path):
    """Each bad TCP message or datagram is logged with its reason, and the same master then runs a correct job."""
    worker = cluster.start_worker()
    pids = registered_pids(cluster)
    for case, build, parts in MASTER_TCP_CASES:
        since = log_size(cluster)
        cluster.send_raw(build(tmp_path))
        wait_for_new_line(cluster, since, parts, what=case)
        assert_alive(cluster, worker)
    for case, data, parts in MASTER_UDP_CASES:
        since = log_size(cluster)
        send_udp(cluster.port - 1, data)
        wait_for_new_line(cluster, since, parts, what=case)
        assert_alive(cluster, worker)
    sent = time.monotonic()  # and heartbeats still count after them
    wait_until(lambda: heard_from(cluster, worker.pid) < time.monotonic() - sent,
               HEARTBEAT_WAIT, what="a heartbeat after the bad datagrams")
    assert registered_pids(cluster) == pids, "a bad register must not add a worker"
    assert cluster.cluster_status()["queued_jobs"] == []
    run_good_job(cluster, tmp_path)
    assert "job 0 succeeded" in cluster.master_log(), "a bad job must not take a job id"
    assert_alive(cluster, worker)


def test_registers_naming_a_jammed_port_do_not_stall_the_master(cluster, tmp_path):
    """Acks to a port that accepts nothing wait on their own threads: the master goes on."""
    worker = cluster.start_worker()
    with socket.create_server(("localhost", 0), backlog=0) as jammed:
        port = jammed.getsockname()[1]
        fillers = [socket.socket() for _ in range(2)]  # fill its accept queue
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(("localhost", port))
        try:
            for pid in range(JAMMED_REGISTERS):
                cluster.send_raw(helper.encode(helper.register("localhost", port, UNKNOWN_PID + pid)))
            began = time.monotonic()
            assert cluster.cluster_status()["workers"], "the master must answer"
            assert time.monotonic() - began < helper.CONNECT_TIMEOUT, "the master stalled"
            run_good_job(cluster, tmp_path)
        finally:
            for filler in fillers:
                filler.close()
    assert f"worker {worker.pid}" not in "".join(
        line for line in cluster.master_log().splitlines() if "is dead" in line)


def test_clients_waiting_on_status_do_not_stall_the_master(cluster, tmp_path):
    """As many long-polling status queries as the master has handler threads: it still
    answers cluster_status at once and runs the next job."""
    cluster.start_worker()
    run_good_job(cluster, tmp_path, name="first")
    version = helper.request("localhost", cluster.port, helper.job_status(0))["version"]
    pollers = []
    try:
        for _ in range(helper.MAX_HANDLERS):  # job 0 has ended: nothing wakes them
            poller = socket.create_connection(("localhost", cluster.port), timeout=5)
            poller.sendall(helper.encode(helper.job_status(0, version, STALLED_STATUS_WAIT)))
            poller.shutdown(socket.SHUT_WR)
            pollers.append(poller)
        began = time.monotonic()
        assert cluster.cluster_status()["workers"], "the master must answer"
        assert time.monotonic() - began < helper.CONNECT_TIMEOUT, "the master stalled"
        run_good_job(cluster, tmp_path)
        cluster.shutdown()  # and waiting queries do not hold up shutdown
        cluster.master.wait(STALLED_STATUS_WAIT / 2)
    finally:
        for poller in pollers:
            poller.close()


def test_master_out_of_file_descriptors_recovers_quietly(make_cluster, tmp_path):
    """Idle connections past the open-file limit: the master says so once, then serves again."""
    def few_files():
        resource.setrlimit(resource.RLIMIT_NOFILE, (FEW_FILES, FEW_FILES))

    cluster = make_cluster(start=False)
    cluster.start_master(preexec_fn=few_files)
    hogs = []
    try:
        for _ in range(2 * FEW_FILES):
            hogs.append(socket.create_connection(("localhost", cluster.port), timeout=5))
        cluster.wait_for_log(ACCEPT_FAILED)
        size = log_size(cluster)
        time.sleep(QUIET_WINDOW)  # what is measured: the log must not grow while starved
        assert log_size(cluster) == size, new_lines(cluster, size)[:5]
    finally:
        for hog in hogs:
            hog.close()
    cluster.start_worker()
    run_good_job(cluster, tmp_path)
    assert_one_line_per_starvation(cluster.master_log())
    assert_alive(cluster)


def assert_one_line_per_starvation(log):
    """Each failure is followed by recovery before it is logged again.

    While the hogs close one by one the master may accept a still-open one and starve again: that
    is a new episode and may say so; a second line within one episode may not.
    """
    events = [phrase for line in log.splitlines()
              for phrase in (ACCEPT_FAILED, ACCEPTING_AGAIN) if phrase in line]
    assert events[:1] == [ACCEPT_FAILED], events
    assert all(a != b for a, b in zip(events, events[1:])), events


@pytest.mark.parametrize("payload", [b"", b"  \n\t "], ids=["empty", "whitespace"])
def test_empty_connection_is_silent(cluster, tmp_path, payload):
    """A connection that carries nothing is ignored without a warning."""
    marker = "after-the-empty-connection"
    cluster.wait_for_log("listening on")  # the start-up line may trail the bound socket
    since = log_size(cluster)
    cluster.send_raw(payload)
    cluster.cluster_status()  # a full round trip through the master after it
    cluster.send_raw(helper.encode({"message_type": marker}))
    wait_for_new_line(cluster, since, (marker,))
    noise = [line for line in new_lines(cluster, since) if marker not in line]
    assert noise == [], "an empty connection must leave no trace in the log"
    assert_alive(cluster)
    cluster.start_worker()
    run_good_job(cluster, tmp_path)


# --- bad messages to a worker -----------------------------------------------

def test_worker_survives_bad_messages(cluster, tmp_path):
    """A worker logs and drops garbage, unknown types and tasks for another pid, then still works."""
    worker = cluster.start_worker()
    log_name = f"worker-{worker.worker_port}.log"
    touched = tmp_path / "foreign-task-ran"
    toucher = script(tmp_path / "toucher.sh", f'cat >/dev/null; touch "{touched}"\n')
    sorted_out = tmp_path / "foreign-sort-output"
    an_input = write_files(tmp_path / "foreign-in", {"f": b"a b\n"}) / "f"
    cases = [
        ("garbage", b"\x80not json at all", ("dropped a message", "malformed JSON")),
        ("unknown type", helper.encode({"message_type": "bogus"}),
         ("dropped a message", "unknown message_type 'bogus'")),
        ("task missing a field", helper.encode(without(
            helper.new_worker_job([str(an_input)], str(toucher), str(tmp_path), worker.pid),
            "executable")), ("dropped a message", "missing field 'executable'")),
        ("message workers do not take", helper.encode(helper.heartbeat(worker.pid)),
         ("heartbeat", "workers do not take it")),
        ("map task for another pid", helper.encode(helper.new_worker_job(
            [str(an_input)], str(toucher), str(tmp_path), FOREIGN_PID)),
         (f"ignored a new_worker_job for pid {FOREIGN_PID}",)),
        ("sort task for another pid", helper.encode(helper.new_sort_job(
            [str(an_input)], str(sorted_out), FOREIGN_PID)),
         (f"ignored a new_sort_job for pid {FOREIGN_PID}",)),
    ]
    for case, data, parts in cases:
        since = log_size(cluster, log_name)
        cluster.send_raw(data, port=worker.worker_port)
        wait_for_new_line(cluster, since, parts, name=log_name, what=case)
        assert_alive(cluster, worker)
    run_good_job(cluster, tmp_path)
    assert not touched.exists(), "a task for another pid must not run"
    assert not sorted_out.exists(), "a sort for another pid must not run"
    assert_alive(cluster, worker)


# --- jobs that cannot run -----------------------------------------------------

def not_executable_copy(tmp_path):
    copy = tmp_path / "map-not-executable.py"
    copy.write_bytes(WORD_COUNT[0].read_bytes())
    copy.chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)  # 644
    return copy


def rejected_jobs(tmp_path):
    """(case, job message, substring of the reason) for jobs that cannot run."""
    missing_dir = tmp_path / "no-such-input"
    missing_mapper = tmp_path / "no-such-mapper.py"
    not_executable = not_executable_copy(tmp_path)
    return [
        ("input directory missing", good_job(tmp_path, input_directory=str(missing_dir)),
         f"input_directory {missing_dir} is not a directory"),
        ("mapper missing", good_job(tmp_path, mapper_executable=str(missing_mapper)),
         f"mapper_executable {missing_mapper} does not exist"),
        ("mapper not executable", good_job(tmp_path, mapper_executable=str(not_executable)),
         f"mapper_executable {not_executable} is not executable"),
        ("num_mappers 0", good_job(tmp_path, num_mappers=0), "num_mappers must be at least 1"),
        ("num_reducers -1", good_job(tmp_path, num_reducers=-1), "num_reducers must be"),
        ("a combiner without reducers",
         good_job(tmp_path, num_reducers=0, combiner_executable=str(WORD_COUNT[1])),
         f"combiner_executable {WORD_COUNT[1]} with num_reducers 0"),
        ("output base name with a slash", good_job(tmp_path, output_base_name="sub/count"),
         "output_base_name must be a plain file name"),
        ("'=' in an env name", good_job(tmp_path, env={"A=B": "x"}),
         "env name 'A=B' is not a variable name"),
        ("NUL in an env value", good_job(tmp_path, env={"A": "x\0y"}),
         "env A's value contains a NUL byte"),
    ]


def test_rejected_jobs_leave_the_queue_alone(cluster, tmp_path):
    """Impossible jobs are rejected with a reason, take no job id and do not disturb queued jobs."""
    inputs = write_files(tmp_path / "queued-in", SMALL_INPUT)
    first = cluster.send_job_async("--input", inputs, "--output", tmp_path / "out0",
                                   "--reducers", 2, "--wait")
    second = None
    try:
        cluster.wait_for_log("job 0 accepted")
        for case, message, reason in rejected_jobs(tmp_path):
            since = log_size(cluster)
            reply = helper.request("localhost", cluster.port, message)
            assert reply.get("message_type") == "job_rejected", (case, reply)
            assert reason in reply.get("error", ""), (case, reply)
            wait_for_new_line(cluster, since, ("rejected a job:", reason), what=case)
            assert_alive(cluster)
        assert cluster.cluster_status()["queued_jobs"] == [0]
        second = cluster.send_job_async("--input", inputs, "--output", tmp_path / "out1",
                                        "--reducers", 3, "--wait")
        cluster.wait_for_log("job 1 accepted")
        assert cluster.cluster_status()["queued_jobs"] == [0, 1]
        cluster.start_worker()
        for client, reducers, output in ((first, 2, "out0"), (second, 3, "out1")):
            code, text = finish(client)
            assert code == 0, text
            assert_matches_sequential(partition_files(tmp_path / output), inputs,
                                      *WORD_COUNT, reducers)
    finally:
        for client in (first, second):
            if client is not None and client.poll() is None:
                client.kill()
                client.communicate()




@pytest.mark.parametrize("case", [
    "input directory missing", "mapper not executable",
    "timeout nan", "output base with a slash", "env name with a space",
    "a combiner without reducers",
])
def test_send_job_refuses_invalid_jobs(cluster, tmp_path, case):
    """send_job.py exits 2 with one clear line, and nothing reaches the master's queue."""
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    arguments = {
        "input directory missing": ("--input", tmp_path / "no-such-input"),
        "mapper not executable": ("--input", inputs,
                                  "--mapper", not_executable_copy(tmp_path)),
        "timeout nan": ("--input", inputs, "--timeout", "nan"),
        "output base with a slash": ("--input", inputs, "--output-base", "no-dir/count"),
        "env name with a space": ("--input", inputs, "--env", "MY VAR=1"),
        "a combiner without reducers": ("--input", inputs, "--reducers", 0,
                                        "--combiner", WORD_COUNT[1]),
    }[case]
    result = cluster.send_job(*arguments, "--output", tmp_path / "out")
    stderr = result.stderr.decode()
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert result.returncode == SEND_JOB_INVALID, stderr
    assert len(lines) == 1 and "invalid job" in lines[0], stderr
    assert str(arguments[-1]) in lines[0], stderr
    assert result.stdout == b""
    assert "accepted" not in cluster.master_log()
    assert_alive(cluster)


def test_unwritable_output_fails_the_job_and_leaves_no_scratch(cluster, tmp_path):
    """An output name taken by a directory fails the job clearly, with no temp file left."""
    cluster.start_worker()
    output = tmp_path / "out"
    (output / "input_0").mkdir(parents=True)
    # Straight to the master: send_job.py would refuse the used directory itself.
    message = helper.new_master_job(str(write_files(tmp_path / "in", SMALL_INPUT)), str(output),
                                    str(WORD_COUNT[0]), str(WORD_COUNT[1]), 2, 2)
    job_id = helper.request("localhost", cluster.port, message)["job_id"]
    wait_until(lambda: "failed" in cluster.send_job("--status", job_id).stdout.decode(),
               JOB_TIMEOUT, what="the job to fail")
    assert f"cannot write the output to {output}" in cluster.master_log()
    assert sorted(p.name for p in output.iterdir()) == ["input_0"]
    run_good_job(cluster, tmp_path)


# --- programs that fail -------------------------------------------------------

def failing_mapper(tmp_path):
    return script(tmp_path / "failing.sh",
                  f'cat >/dev/null\necho "{FAILING_STDERR}" >&2\nexit {FAILING_EXIT_CODE}\n')


def assert_names_the_failure(text, input_file):
    for part in ("map task 0", str(input_file), f"exit code {FAILING_EXIT_CODE}",
                 FAILING_STDERR):
        assert part in text, f"{part!r} not in:\n{text}"


def test_failing_program_fails_the_job_visibly(cluster, tmp_path):
    """A program exiting non-zero fails the job, naming task, input, exit code and stderr; the next job succeeds."""
    cluster.start_worker()
    inputs = write_files(tmp_path / "in", {"only-file": b"some words here\n"})
    result = cluster.send_job("--input", inputs, "--output", tmp_path / "out",
                              "--mapper", failing_mapper(tmp_path), "--reducer", WORD_COUNT[1],
                              "--mappers", 1, "--reducers", 1, "--max-attempts", 1, "--wait",
                              timeout=JOB_TIMEOUT)
    text = result.stdout.decode() + result.stderr.decode()
    assert result.returncode != 0, text
    assert "job 0 failed" in result.stderr.decode(), text
    assert_names_the_failure(text, inputs / "only-file")
    failure = wait_for_new_line(cluster, 0, ("job 0 failed",))
    assert_names_the_failure(failure, inputs / "only-file")
    assert "attempt 1 of 1" in failure
    assert_alive(cluster)
    run_good_job(cluster, tmp_path)


def test_failing_task_is_retried_by_default(cluster, tmp_path):
    """Without --max-attempts a failing task is tried 4 times before its job fails."""
    cluster.start_workers(2)
    inputs = write_files(tmp_path / "in", {"only-file": b"some words\n"})
    result = cluster.send_job("--input", inputs, "--output", tmp_path / "out",
                              "--mapper", failing_mapper(tmp_path), "--reducer", WORD_COUNT[1],
                              "--mappers", 1, "--reducers", 1, "--wait", timeout=JOB_TIMEOUT)
    assert result.returncode != 0
    log = cluster.master_log()
    for attempt in range(1, DEFAULT_MAX_ATTEMPTS + 1):
        assert f"attempt {attempt} of {DEFAULT_MAX_ATTEMPTS}" in log
    assert "job 0 failed" in log
    run_good_job(cluster, tmp_path)


def test_job_queued_behind_a_failing_job_runs(cluster, tmp_path):
    """A job waiting behind one that fails still runs and gives the sequential output."""
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    failing = cluster.send_job_async("--input", inputs, "--output", tmp_path / "out-failing",
                                     "--mapper", failing_mapper(tmp_path),
                                     "--max-attempts", 1, "--wait")
    queued = None
    try:
        cluster.wait_for_log("job 0 accepted")
        queued = cluster.send_job_async("--input", inputs, "--output", tmp_path / "out",
                                        "--reducers", 2, "--wait")
        cluster.wait_for_log("job 1 accepted")
        cluster.start_worker()
        failing_code, failing_text = finish(failing)
        assert failing_code != 0, failing_text
        queued_code, queued_text = finish(queued)
        assert queued_code == 0, queued_text
        assert_matches_sequential(partition_files(tmp_path / "out"), inputs, *WORD_COUNT, 2)
        log = cluster.master_log()
        assert log.index("job 0 failed") < log.index("job 1 succeeded")
    finally:
        for client in (failing, queued):
            if client is not None and client.poll() is None:
                client.kill()
                client.communicate()


# --- known bugs: kept failing until fixed ---------------------------------------

NUL_OUTPUT_BUG = (
    "mrlib/job.py Job.publish_outputs raises ValueError for an output_directory with a NUL "
    "byte; master.py Master.finish_job catches only OSError, so the job never ends, "
    "self.current is never cleared and every later job waits forever. JobSpec.check "
    "should reject the path (or finish_job should fail the job).")
END_STATES = ("succeeded", "failed")


def job_state(cluster, job_id):
    return helper.request("localhost", cluster.port, helper.job_status(job_id))


def wait_for_end_or_traceback(cluster, job_id, log_name):
    """Wait until the job ends or a traceback shows in `log_name`; return the job's status."""
    wait_until(lambda: job_state(cluster, job_id).get("state") in END_STATES
               or "Traceback" in cluster.log(log_name), LOG_TIMEOUT, what=f"job {job_id} to end")
    return job_state(cluster, job_id)


def crlf_mapper(tmp_path):
    path = tmp_path / "crlf-map.sh"
    path.write_bytes(b"#!/bin/sh\r\ncat\r\n")  # saved by a Windows editor
    path.chmod(0o755)
    return path


def missing_interpreter_mapper(tmp_path):
    path = tmp_path / "old-map"
    path.write_text("#!/usr/bin/no-such-python2\nprint 'x'\n")
    path.chmod(0o755)
    return path


UNSTARTABLE_JOBS = {
    "CRLF shebang": lambda t: {"mapper_executable": str(crlf_mapper(t))},
    "missing interpreter": lambda t: {"mapper_executable": str(missing_interpreter_mapper(t))},
}


@pytest.mark.parametrize("case", sorted(UNSTARTABLE_JOBS))
def test_unstartable_program_fails_the_job_visibly(cluster, tmp_path, case):
    """A program that cannot even be started is refused at submission; one that became so
    after (edited before its task ran) fails its job with a reason, and the worker goes on
    working."""
    fields = UNSTARTABLE_JOBS[case](tmp_path)
    reply = helper.request("localhost", cluster.port, good_job(tmp_path, **fields))
    assert reply.get("message_type") == "job_rejected", reply
    assert "cannot start" in reply["error"]
    unstartable = Path(fields["mapper_executable"]).read_bytes()
    Path(fields["mapper_executable"]).write_bytes(b"#!/bin/sh\ncat\n")
    reply = helper.request("localhost", cluster.port, good_job(tmp_path, max_attempts=1, **fields))
    job_id = reply.get("job_id")
    assert job_id is not None, reply
    Path(fields["mapper_executable"]).write_bytes(unstartable)  # before any worker runs it
    worker = cluster.start_worker()
    log_name = f"worker-{worker.worker_port}.log"
    status = wait_for_end_or_traceback(cluster, job_id, log_name)
    assert "Traceback" not in cluster.log(log_name), cluster.log(log_name)[-3000:]
    assert status["state"] == "failed" and "map task" in status["error"], status
    assert_alive(cluster, worker)
    run_good_job(cluster, tmp_path)


def test_worker_survives_a_task_with_a_nul_path(cluster, tmp_path):
    """A task naming a path with a NUL byte is reported failed and the worker goes on working."""
    worker = cluster.start_worker()
    log_name = f"worker-{worker.worker_port}.log"
    since = log_size(cluster, log_name)
    task = helper.new_worker_job([str(tmp_path / "in\x00put")], str(WORD_COUNT[0]),
                                 str(tmp_path), worker.pid)
    cluster.send_raw(helper.encode(task), port=worker.worker_port)
    wait_until(lambda: any("task failed" in line or "Traceback" in line
                           for line in new_lines(cluster, since, log_name)),
               LOG_TIMEOUT, what="the task to fail")
    assert "Traceback" not in cluster.log(log_name), cluster.log(log_name)[-3000:]
    assert_alive(cluster, worker)
    run_good_job(cluster, tmp_path)


def test_nul_in_output_directory_does_not_wedge_the_master(cluster, tmp_path):
    """A job whose output directory holds a NUL byte is rejected or fails, and the queue goes on."""
    cluster.start_worker()
    message = good_job(tmp_path, output_directory=str(tmp_path / "out\x00put"))
    reply = helper.request("localhost", cluster.port, message)
    if reply.get("message_type") != "job_rejected":
        status = wait_for_end_or_traceback(cluster, reply["job_id"], "master.log")
        assert "Traceback" not in cluster.master_log(), cluster.master_log()[-3000:]
        assert status["state"] == "failed", status
    assert_alive(cluster)
    run_good_job(cluster, tmp_path)


@pytest.mark.parametrize("timeout", ["NaN", "Infinity"])
def test_non_finite_task_timeout_is_dropped(cluster, tmp_path, timeout):
    """A job whose task_timeout is NaN or Infinity is dropped as malformed, naming the number."""
    since = log_size(cluster)
    cluster.send_raw(with_number(good_job(tmp_path), "task_timeout", timeout))
    wait_for_new_line(cluster, since, ("dropped a message", f"non-finite number {timeout}"))
    assert job_state(cluster, 0)["state"] == "unknown"
    assert_alive(cluster)


def test_a_huge_task_timeout_is_rejected(cluster, tmp_path):
    """A job whose task_timeout is finite but past the limit is rejected, naming task_timeout."""
    reply = helper.request("localhost", cluster.port, good_job(tmp_path, task_timeout=1e308))
    assert reply.get("message_type") == "job_rejected", reply
    assert "task_timeout" in reply.get("error", ""), reply
    assert_alive(cluster)


def with_number(message, field, literal):
    """A message's JSON bytes with `field` set to a number spelled `literal` (NaN, 1e308 ...)."""
    return helper.encode(dict(message, **{field: 0}))[:-1] + f',"{field}":{literal}}}'.encode()


NAN_WAITS = 20  # past the master's MAX_STATUS_WAITERS (16)
NO_NEWS_VERSION = 999_999_999


def test_nan_status_waits_hold_no_thread_or_slot(cluster, tmp_path):
    """job_status messages whose wait is NaN are dropped at once: no handler thread waits
    for ever, and a job still runs."""
    cluster.wait_for_log("listening on")
    threads = thread_count(cluster.master.pid)
    nan_wait = with_number(helper.job_status(0, NO_NEWS_VERSION), "wait", "NaN")
    polls = [socket.create_connection(("localhost", cluster.port), timeout=LOG_TIMEOUT)
             for _ in range(NAN_WAITS)]
    try:
        for poll in polls:
            poll.sendall(nan_wait)
            poll.shutdown(socket.SHUT_WR)
        for poll in polls:  # closed unanswered: a timeout here is a request still waiting
            assert poll.recv(1) == b"", "a NaN wait must not be answered as a job_status"
    finally:
        for poll in polls:
            poll.close()
    assert "non-finite number NaN" in cluster.master_log()
    wait_until(lambda: thread_count(cluster.master.pid) <= threads, LOG_TIMEOUT,
               what=f"the master back to {threads} threads")
    cluster.start_worker()
    run_good_job(cluster, tmp_path)


@pytest.mark.parametrize("timeout", ["1e308", "NaN", "Infinity"])
def test_worker_refuses_a_task_timeout_it_cannot_keep(cluster, tmp_path, timeout):
    """A task whose timeout is NaN, Infinity or past any timer's range is dropped with a line
    naming it: no traceback, no task run without a limit, and the worker goes on working."""
    worker = cluster.start_worker()
    log_name = f"worker-{worker.worker_port}.log"
    inputs = write_files(tmp_path / "task-in", {"f": b"a b\n"})
    task = helper.new_worker_job([str(inputs / "f")], str(WORD_COUNT[0]),
                                 str(tmp_path), worker.pid)
    since = log_size(cluster, log_name)
    cluster.send_raw(with_number(task, "timeout", timeout), port=worker.worker_port)
    wait_for_new_line(cluster, since, ("dropped a message", "timeout" if timeout == "1e308"
                                       else f"non-finite number {timeout}"), name=log_name)
    assert not (tmp_path / "f").exists(), "the task must not run"
    assert "Traceback" not in cluster.log(log_name), cluster.log(log_name)[-3000:]
    assert_alive(cluster, worker)
    run_good_job(cluster, tmp_path)


@pytest.mark.parametrize("port", [70_000, 10**30], ids=["70000", "10**30"])
def test_register_with_out_of_range_port_is_dropped(cluster, tmp_path, port):
    """A register whose worker_port is outside 1..65535 is dropped as invalid, naming the field."""
    since = log_size(cluster)
    cluster.send_raw(helper.encode(helper.register("localhost", port, UNKNOWN_PID)))
    line = wait_until(lambda: next((line for line in new_lines(cluster, since)
                                    if "worker_port" in line or str(UNKNOWN_PID) in line
                                    or "on_register" in line), None),
                      LOG_TIMEOUT, what="the register to be handled")
    assert "dropped a message" in line and "worker_port" in line, cluster.master_log()[since:]
    assert_alive(cluster)


# --- control characters in what users send ----------------------------------------

# The review's output directory: a terminal title, a bell, a screen clear, a
# carriage return and a newline that would forge a log line of its own.
TERMINAL_TRICKS = "x\x1b]0;pwned\x07\x1b[2J\rX\nforged"
RAW_CONTROLS = ("\x1b", "\x07", "\r")
LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (master|worker)\[\d+\] [A-Z]+ ")


def run_tricky_job(cluster, tmp_path):
    """Submit a job whose output directory holds TERMINAL_TRICKS; wait for it to end."""
    cluster.start_worker()
    message = good_job(tmp_path, output_directory=str(tmp_path / TERMINAL_TRICKS))
    reply = helper.request("localhost", cluster.port, message)
    if reply.get("message_type") != "job_rejected":
        wait_until(lambda: job_state(cluster, reply["job_id"])["state"] in END_STATES,
                   JOB_TIMEOUT, what="the job to end")
    return reply.get("job_id")


def test_control_characters_in_a_job_do_not_reach_the_log(cluster, tmp_path):
    """A path full of escape sequences and a newline leaves one log line per record, with
    every control character escaped."""
    run_tricky_job(cluster, tmp_path)
    for name in ("master.log", f"worker-{cluster.workers[0].worker_port}.log"):
        text = cluster.log(name)
        assert not any(c in text for c in RAW_CONTROLS), f"{name}: {text[-2000:]!r}"
        for line in text.splitlines():
            assert LOG_RECORD.match(line) or line.startswith(helper.TRACEBACK_INDENT), \
                f"{name}: a line that is no record: {line!r}"
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\rX\\nforged" in cluster.master_log()


def test_send_job_status_escapes_control_characters(cluster, tmp_path):
    """send_job.py --status shows such a job's paths with its control characters escaped."""
    job_id = run_tricky_job(cluster, tmp_path)
    result = cluster.send_job("--status", job_id)
    text = result.stdout.decode() + result.stderr.decode()
    assert not any(c in text for c in RAW_CONTROLS), repr(text)
    assert "\\x1b]0;pwned" in text and "forged" in text, repr(text)
    assert not any(line.startswith("forged") for line in text.splitlines()), repr(text)
