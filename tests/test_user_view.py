"""What a user sees of a job: each attempt's stderr kept in var/job-N/logs/, the probable
cause of a failure, the queue, and options that cannot go together."""
import os
import pty
import shutil
import subprocess

import pytest

import helper
from conftest import JOB_TIMEOUT, PYTHON, REPO, WORD_COUNT, write_files
import send_job
from mrlib.attemptlog import PROGRAM, AttemptLog
from mrlib.jobspec import OPTION_OF_FIELD, in_option_terms
from support.programs import script, write_script

pytestmark = pytest.mark.timeout(120)

SMALL_INPUT = {"part-a": b"the quick brown fox\n", "part-b": b"the lazy dog\n"}
NOISY = "echo 'reading my input' >&2\necho 'reporter:counter:app,lines,1' >&2\n"


def job_status(cluster, job_id):
    return helper.request("localhost", cluster.port, helper.job_status(job_id))


def test_a_tasks_stderr_is_kept_without_reporter_lines(cluster, tmp_path):
    cluster.start_worker()
    mapper = script(tmp_path / "noisy-map.sh", f"{NOISY}exec {WORD_COUNT[0]}\n")
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    result = cluster.send_job("--input", inputs, "--output", tmp_path / "out", "--mapper",
                              mapper, "--mappers", 2, "--keep-intermediate", "--wait")
    assert result.returncode == 0, result.stderr.decode()
    logs = sorted((cluster.workdir / "var" / "job-0" / "logs").iterdir())
    assert [p.name for p in logs] == ["map-00000.attempt-1.log", "map-00001.attempt-1.log"]
    for log in logs:
        assert log.read_bytes() == b"reading my input\n"


def test_a_failed_task_names_its_log_which_holds_its_stderr(cluster, tmp_path):
    cluster.start_worker()
    mapper = script(tmp_path / "failing-map.sh",
                    "cat >/dev/null\necho 'bad record 7' >&2\nexit 3\n")
    inputs = write_files(tmp_path / "in", {"only": b"x\n"})
    result = cluster.send_job("--input", inputs, "--output", tmp_path / "out", "--mapper",
                              mapper, "--mappers", 1, "--max-attempts", 2, "--wait")
    assert result.returncode == 1
    error = job_status(cluster, 0)["error"]
    log = cluster.workdir / "var" / "job-0" / "logs" / "map-00000.attempt-2.log"
    assert f"its stderr: {log}" in error, error
    assert log.read_bytes() == b"bad record 7\n"
    assert (log.parent / "map-00000.attempt-1.log").read_bytes() == b"bad record 7\n"


def test_a_timed_out_task_keeps_what_it_said(cluster, tmp_path):
    cluster.start_worker()
    mapper = script(tmp_path / "hung-map.sh", "echo 'starting up' >&2\nexec sleep 60\n")
    inputs = write_files(tmp_path / "in", {"only": b"x\n"})
    result = cluster.send_job("--input", inputs, "--output", tmp_path / "out", "--mapper",
                              mapper, "--mappers", 1, "--max-attempts", 1, "--timeout", 1,
                              "--wait", timeout=JOB_TIMEOUT)
    assert result.returncode == 1
    error = job_status(cluster, 0)["error"]
    assert "timed out" in error and "starting up" in error, error
    log = cluster.workdir / "var" / "job-0" / "logs" / "map-00000.attempt-1.log"
    assert log.read_bytes() == b"starting up\n"


def test_an_attempt_log_is_bounded_and_says_what_it_left_out(tmp_path):
    log = AttemptLog(str(tmp_path / "logs" / "a.log"), limit=10)
    log.section("first")
    log.write(b"")  # an empty part gets no header
    log.section("second")
    log.write(b"0123456789abcdef")
    log.close()
    text = (tmp_path / "logs" / "a.log").read_bytes()
    assert text.startswith(b"==> second <==\n0123456789\n[... 6 more bytes of stderr not kept")
    assert b"==> first" not in text


def test_no_log_file_without_stderr(tmp_path):
    log = AttemptLog(str(tmp_path / "logs" / "quiet.log"))
    log.section("only")
    log.close()
    assert not (tmp_path / "logs").exists()


def test_wait_and_status_show_the_probable_cause_of_a_failure(cluster, tmp_path):
    """Task, input file and byte range, exit code, stderr lines and log, on --wait and --status."""
    cluster.start_worker()
    mapper = script(tmp_path / "failing-map.sh",
                    "cat >/dev/null\necho 'line one' >&2\necho 'bad record 7' >&2\nexit 3\n")
    inputs = write_files(tmp_path / "in", {"big": b"x\n" * 1000})
    result = cluster.send_job("--input", inputs, "--output", tmp_path / "out", "--mapper",
                              mapper, "--split-size", 1000, "--max-attempts", 1, "--wait")
    assert result.returncode == 1
    shown = result.stderr.decode()
    assert "Probable cause of failure:" in shown, shown
    assert f"input:     {inputs / 'big'}, bytes " in shown, shown
    assert "exit code: 3" in shown
    assert "    line one\n    bad record 7\n" in shown, shown
    assert "log:       " in shown and ".attempt-1.log" in shown
    status = cluster.send_job("--status", 0)
    assert status.returncode == 1
    assert "Probable cause of failure:" in status.stdout.decode()


def test_a_timeout_is_shown_as_the_time_limit(cluster, tmp_path):
    cluster.start_worker()
    mapper = script(tmp_path / "hung-map.sh", "exec sleep 60\n")
    inputs = write_files(tmp_path / "in", {"only": b"x\n"})
    result = cluster.send_job("--input", inputs, "--output", tmp_path / "out", "--mapper",
                              mapper, "--mappers", 1, "--max-attempts", 1, "--timeout", 1,
                              "--wait", timeout=JOB_TIMEOUT)
    assert "killed:    after the 1 s time limit (--timeout)" in result.stderr.decode()


@pytest.mark.parametrize("arguments, says", [
    (("--timeout", "0"), "--timeout must be between 0 and"),
    (("--mappers", "0"), "--mappers must be at least 1"),
    (("--reducer", "/nonexistent/reduce"), "--reducer /nonexistent/reduce"),
    # Hadoop Streaming's way of naming a program: a command on PATH, a command line
    (("--mapper", "cat"), f"did you mean --mapper {shutil.which('cat')}?"),
    (("--combiner", "python3 map.py"), "put the command line in a script"),
    (("--output", ""), "--output '' is not a usable path"),  # it meant the current directory
])
def test_a_rejection_names_the_option_typed(cluster, tmp_path, arguments, says):
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    result = cluster.send_job("--input", inputs, "--output", tmp_path / "out", *arguments)
    shown = result.stderr.decode()
    assert result.returncode == 2 and says in shown, shown
    assert not any(field in shown for field in OPTION_OF_FIELD), shown


def test_the_masters_rejection_is_shown_in_option_terms():
    said = "task_timeout must be between 0 and 604800 seconds, got 0; input_file x is not a file"
    assert in_option_terms(said) == ("--timeout must be between 0 and 604800 seconds, got 0; "
                                     "--input-file x is not a file")
    # Never inside a path or an option: only the field's name as a word of its own.
    for untouched in ["mapper_executable /x/env/bin/map.sh is not executable",
                      "input_directory /x/input_directory is not a directory",
                      "--env wants NAME=VALUE", "input_file env.py is not a file"]:
        field = untouched.split()[0]
        assert in_option_terms(untouched) == untouched.replace(
            field, OPTION_OF_FIELD.get(field, field), 1)


def test_an_input_directory_of_directories_is_refused_by_name(cluster, tmp_path):
    (tmp_path / "in" / "part-a").mkdir(parents=True)
    result = cluster.send_job("--input", tmp_path / "in", "--output", tmp_path / "out")
    shown = result.stderr.decode()
    assert result.returncode == 2 and f"--input {tmp_path / 'in'} holds no input files" in shown
    assert "it has the directories part-a" in shown, shown


@pytest.mark.parametrize("first_line, says", [
    ("#!/nonexistent/python3", "its interpreter /nonexistent/python3 (on its #! line) does not "
                               "exist"),
    ("#!/bin/sh\r", "its #! line ends in a carriage return"),
    ("#!/usr/bin/env python3\r", "its #! line ends in a carriage return"),
    ("\ufeff#!/bin/sh", "it starts with a UTF-8 byte-order mark before its #! line"),
    ("#!/bin/sh\u00a0-e", r"its interpreter '/bin/sh\xa0-e' (on its #! line) does not exist"),
    ("echo no interpreter line", "it is neither a program nor a script starting with a #! line"),
])
def test_a_program_that_cannot_start_says_why(cluster, tmp_path, first_line, says):
    """A #! line that cannot work is refused at submission, once (it was retried on every
    task); a file the kernel cannot run at all fails its task saying why."""
    cluster.start_worker()
    mapper = write_script(tmp_path / "map.py", f"{first_line}\nprint('x')\n")
    inputs = write_files(tmp_path / "in", {"only": b"x\n"})
    result = cluster.send_job("--input", inputs, "--output", tmp_path / "out", "--mapper",
                              mapper, "--max-attempts", 1, "--wait")
    if first_line.lstrip("\ufeff").startswith("#!"):
        assert result.returncode == 2
        assert f"--mapper {mapper} cannot start: {says}" in result.stderr.decode()
        return
    assert result.returncode == 1
    assert f"error:     cannot start {mapper}: {says}" in result.stderr.decode(), result.stderr


@pytest.mark.parametrize("arguments, named", [
    (("--input", "a", "--input-file", "b"), "--input and --input-file"),
    (("--input-file", "a", "--input-base", "b"), "--input-file and --input-base"),
    (("--status", "1", "--wait"), "--wait"),
    (("--kill", "1", "--workers"), "--kill and --workers"),
    (("--shutdown", "--sequential"), "--shutdown and --sequential"),
])
def test_conflicting_options_are_refused(cluster, arguments, named):
    result = cluster.send_job(*arguments)
    assert result.returncode == 2 and named in result.stderr.decode(), result.stderr
    assert cluster.master.poll() is None, "nothing was sent: --shutdown did not run"


def test_workers_lists_the_queue(cluster, tmp_path):
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    for number in range(2):  # no worker: both wait
        assert cluster.send_job("--input", inputs, "--output", tmp_path / f"o{number}",
                                ).returncode == 0
    listing = cluster.send_job("--workers").stdout.decode()
    assert "running job: none; queued jobs: 0, 1" in listing, listing


def test_wait_on_a_terminal_draws_progress_bars(cluster, tmp_path):
    """On a terminal, --wait shows a bar per phase with tasks (rich), ending at 100 %."""
    cluster.start_worker()
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    mapper = script(tmp_path / "slow-map.sh", f"sleep 1\nexec {WORD_COUNT[0]}\n")  # seen running
    leader, follower = pty.openpty()
    env = dict(cluster.env, COLUMNS="100", TERM="xterm")
    client = subprocess.Popen([PYTHON, str(REPO / "send_job.py"), str(cluster.port), "--input",
                               str(inputs), "--output", str(tmp_path / "out"), "--mapper",
                               str(mapper), "--wait"],
                              cwd=cluster.workdir, env=env, stdin=follower, stdout=follower,
                              stderr=follower)
    os.close(follower)
    shown = b""
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: the client exited
                break
            if not chunk:
                break
            shown += chunk
        assert client.wait(JOB_TIMEOUT) == 0, shown.decode(errors="replace")
    finally:
        os.close(leader)
        if client.poll() is None:
            client.kill()
            client.wait()
    text = shown.decode(errors="replace")
    assert "━" in text and "100%" in text, text
    assert "map" in text and "merge" not in text.split("succeeded")[0]


def test_an_attempt_log_keeps_input_and_program_headers_in_order(tmp_path):
    log = AttemptLog(str(tmp_path / "logs" / "a.log"))
    log.section("in/a")
    log.section("map.py", PROGRAM)
    log.write(b"from map\n")
    log.section("combine.py", PROGRAM)
    log.write(b"from combine\n")
    log.section("in/b")
    log.section("map.py", PROGRAM)
    log.close()
    assert (tmp_path / "logs" / "a.log").read_bytes() == (
        b"==> in/a <==\n==> map.py <==\nfrom map\n==> combine.py <==\nfrom combine\n")


def test_no_log_for_a_cancelled_attempt_or_a_removed_job(tmp_path):
    cancelled = AttemptLog(str(tmp_path / "logs" / "c.log"), still_wanted=lambda: False)
    cancelled.write(b"late words\n")
    cancelled.close()
    gone = AttemptLog(str(tmp_path / "job-9" / "logs" / "g.log"))  # job-9 was removed
    gone.write(b"late words\n")
    gone.close()
    assert not (tmp_path / "logs").exists() and not (tmp_path / "job-9").exists()


def test_the_cause_shows_control_characters_escaped():
    lines = send_job.probable_cause({"task": "map task 0", "attempt": 1, "failures": 1,
                                     "max_attempts": 1, "worker": 7, "input": "/in/x",
                                     "exit_code": 3, "stderr_tail": "bad\x1b[2J\x00byte\n"})
    shown = "\n".join(lines)
    assert "\x1b" not in shown and "\x00" not in shown and "bad\\x1b[2J\\x00byte" in shown


def test_output_piped_into_head_is_not_blamed_on_the_master(cluster, tmp_path):
    """`send_job.py --wait | head -1`: once the reader is gone, send_job stops quietly, as a
    program killed by SIGPIPE (exit 141); it said it could not talk to the master."""
    cluster.start_worker()
    inputs = write_files(tmp_path / "in", {"part": b"one two three\n" * 100})
    client = subprocess.Popen([PYTHON, str(REPO / "send_job.py"), str(cluster.port),
                               "--input", str(inputs), "--output", str(tmp_path / "out"),
                               "--mapper", str(script(tmp_path / "slow.sh", "sleep 1\ncat\n")),
                               "--reducer", "/bin/cat", "--wait"],
                              cwd=cluster.workdir, env=cluster.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        assert client.stdout.readline().startswith(b"job ")
        client.stdout.close()  # as head does after its line
        assert client.wait(timeout=JOB_TIMEOUT) == 141
        assert client.stderr.read() == b""
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        client.stderr.close()


def test_a_master_address_that_is_not_one_is_named():
    """A mistyped master address is named, not an int() error."""
    result = subprocess.run([PYTHON, str(REPO / "send_job.py"), "6000x", "--workers"],
                            capture_output=True, timeout=JOB_TIMEOUT)
    assert result.returncode == 2
    assert "'6000x' is not a port number" in result.stderr.decode()
