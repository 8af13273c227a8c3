"""Safe to operate: a user's data is never destroyed, and jobs leave exactly their outputs.

The master touches only a `var/` it made (or an empty one), after binding its
ports, and one master at a time per directory; output directories hold the
job's outputs and nothing else; a successful job's intermediates are removed,
failed jobs' kept up to a bound; the client refuses to mix a new job's outputs
with old files unless told to overwrite them, and never removes anything else.
"""
import contextlib
import os
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest

import helper
from conftest import (JOB_TIMEOUT, PYTHON, REPO, WORD_COUNT, Cluster, assert_matches_sequential,
                      free_master_port, kill_session, partition_files, pid_alive, sequential,
                      wait_until, write_files)
from mrlib import vardir
from support.programs import failing_mapper, script, sleepy_mapper, stop

SMALL_INPUT = {
    "part-a": b"the quick brown fox\njumps over the lazy dog\n",
    "part-b": b"the dog barks\nthe fox runs\n",
    "part-c": b"lazy lazy dog\n",
}
PRECIOUS = b"a user's file that must survive\n"
REFUSAL_TIMEOUT = 15.0
SEND_JOB_INVALID = 2
KEEP_FAILED = 2


def run_master(workdir, port, *extra):
    """Run master.py in `workdir` until it exits (it is expected to refuse)."""
    return subprocess.run([PYTHON, str(REPO / "master.py"), str(port), *extra], cwd=workdir,
                          capture_output=True, timeout=REFUSAL_TIMEOUT)


def foreign_var(workdir):
    """A var/ with a user's file in it, as on any machine with a /var."""
    precious = Path(workdir) / "var" / "lib" / "important.txt"
    precious.parent.mkdir(parents=True)
    precious.write_bytes(PRECIOUS)
    return precious


def one_line(text):
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]




def job_id(stdout):
    return int(stdout.decode().split()[1])


# --- the master's var/ --------------------------------------------------------

def test_foreign_var_survives_a_start_on_a_busy_port(tmp_path):
    """A master whose port is taken exits without touching a var/ it did not make."""
    precious = foreign_var(tmp_path)
    port = free_master_port()
    with socket.create_server(("localhost", port)):
        result = run_master(tmp_path, port)
    assert result.returncode != 0
    assert precious.read_bytes() == PRECIOUS
    assert sorted(os.listdir(tmp_path / "var")) == ["lib"]


def test_foreign_var_survives_a_start_on_a_free_port(tmp_path):
    """A master refuses to start in a directory whose var/ it did not make, naming it, and leaves it whole."""
    precious = foreign_var(tmp_path)
    result = run_master(tmp_path, free_master_port())
    assert result.returncode != 0
    line = one_line(result.stderr.decode())
    assert str(tmp_path / "var") in line
    assert precious.read_bytes() == PRECIOUS
    assert sorted(os.listdir(tmp_path / "var")) == ["lib"]


def test_a_marker_the_master_did_not_write_is_not_trusted(tmp_path):
    """A var/ holding a file named like the master's marker, but not written by a master, is left whole."""
    precious = foreign_var(tmp_path)
    (tmp_path / "var" / vardir.MARKER).write_bytes(b"someone else's file\n")
    result = run_master(tmp_path, free_master_port())
    assert result.returncode != 0
    assert str(tmp_path / "var") in one_line(result.stderr.decode())
    assert precious.read_bytes() == PRECIOUS
    assert (tmp_path / "var" / vardir.MARKER).read_bytes() == b"someone else's file\n"


@contextlib.contextmanager
def small_tmpfs(tmp_path, size):
    """A tmpfs of `size` (mount's size=) of our own at tmp_path/small (the test is
    skipped where one cannot be mounted), unmounted after."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs of our own."""
    with small_tmpfs(tmp_path, "1m") as mount_point:
        yield mount_point


def fill(directory):
    """Fill the filesystem of `directory` with one file; return it."""
    filler = directory / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return filler


def test_a_master_started_on_a_full_disk_does_not_block_the_next_start(small_disk):
    """A master that cannot write its var/ marker (a full disk) says which file, and leaves
    none behind: an empty marker was taken for someone else's, refusing every later start."""
    workdir = small_disk / "wd"
    workdir.mkdir()
    filler = fill(small_disk)
    refused = run_master(workdir, free_master_port())
    assert refused.returncode != 0
    assert str(workdir / "var" / vardir.MARKER) in one_line(refused.stderr.decode())
    assert list((workdir / "var").iterdir()) == []
    filler.unlink()
    cluster = Cluster(workdir)
    try:
        cluster.start_master()
    finally:
        cluster.stop()


@pytest.mark.parametrize("kind", ["file", "symlink to an empty directory"])
def test_var_that_is_not_a_directory_is_left_alone(tmp_path, kind):
    """A var that is a file, or a link to some other (even empty) directory, is refused and left as it was."""
    target = tmp_path / "elsewhere"
    target.mkdir()
    if kind == "file":
        (tmp_path / "var").write_bytes(PRECIOUS)
    else:
        (tmp_path / "var").symlink_to(target)
    result = run_master(tmp_path, free_master_port())
    assert result.returncode != 0
    assert str(tmp_path / "var") in one_line(result.stderr.decode())
    assert os.listdir(target) == []
    if kind == "file":
        assert (tmp_path / "var").read_bytes() == PRECIOUS


def test_an_empty_var_is_taken_and_a_job_runs(tmp_path):
    """An empty var/ the master did not make is used, as the spec's fresh var/."""
    (tmp_path / "var").mkdir()
    cluster = Cluster(tmp_path)
    try:
        cluster.start_master()
        cluster.start_worker()
        inputs = write_files(tmp_path / "in", SMALL_INPUT)
        outputs = cluster.run_job(*WORD_COUNT, inputs, tmp_path / "out", 2, 2)
        assert_matches_sequential(outputs, inputs, *WORD_COUNT, 2)
    finally:
        cluster.stop()


def test_second_master_in_the_same_directory_refuses_and_the_first_job_finishes(cluster, tmp_path):
    """A second master in a running master's directory refuses without touching its files; the first one's job completes."""
    cluster.start_worker()
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    output = tmp_path / "out"
    client = cluster.send_job_async("--input", inputs, "--output", output,
                                    "--mapper", sleepy_mapper(tmp_path, 1),
                                    "--mappers", 3, "--reducers", 2, "--wait")
    try:
        wait_until(lambda: (cluster.workdir / "var" / "job-0" / "mapper-output").is_dir(),
                   what="the first job to start")
        before = sorted(os.listdir(cluster.workdir / "var" / "job-0"))
        second = run_master(cluster.workdir, free_master_port())
        assert second.returncode != 0
        line = one_line(second.stderr.decode())
        assert "in use by another master" in line and f"port {cluster.port}" in line, line
        assert sorted(os.listdir(cluster.workdir / "var" / "job-0")) == before
        stdout, stderr = client.communicate(timeout=JOB_TIMEOUT)
    finally:
        stop(client)
    assert client.returncode == 0, stdout.decode() + stderr.decode() + cluster.master_log()
    expected = sequential(sorted(inputs.iterdir()), *WORD_COUNT)
    assert b"".join(p.read_bytes() for p in partition_files(output)) == expected


@pytest.mark.parametrize("how", ["shutdown", "SIGKILL"])
def test_a_restarted_master_gets_a_fresh_var(tmp_path, how):
    """A master restarted in the same directory, after a clean stop or a SIGKILL, starts from an empty var/."""
    first = Cluster(tmp_path)
    try:
        first.start_master()
        first.start_worker()
        inputs = write_files(tmp_path / "in", SMALL_INPUT)
        first.run_job(*WORD_COUNT, inputs, tmp_path / "out", 2, 2)
        assert (tmp_path / "var" / "job-0").is_dir()
        if how == "shutdown":
            first.shutdown()
            first.master.wait(REFUSAL_TIMEOUT)
        else:
            first.master.send_signal(signal.SIGKILL)
            first.master.wait(REFUSAL_TIMEOUT)
    finally:
        first.stop()
    second = Cluster(tmp_path)
    try:
        second.start_master()
        wait_until(lambda: os.listdir(tmp_path / "var") == [vardir.MARKER],
                   what=f"a fresh var/: {os.listdir(tmp_path / 'var')}")
        second.start_worker()
        outputs = second.run_job(*WORD_COUNT, inputs, tmp_path / "out2", 2, 2)
        assert_matches_sequential(outputs, inputs, *WORD_COUNT, 2)
    finally:
        second.stop()


# --- output directories hold exactly the outputs --------------------------------

@pytest.mark.parametrize("options,names", [
    ((), ["input_0", "input_1", "input_2"]),
    (("--output-base", "count"), ["count_00", "count_01", "count_02"]),
    (("--reducers", 0), ["000000_part-a", "000001_part-b", "000002_part-c"]),
    (("--split-size", 20), ["input_0", "input_1", "input_2"]),
])
def test_output_directory_lists_exactly_the_outputs(cluster, tmp_path, options, names):
    """After a job, listing the output directory (hidden files too) gives exactly its R outputs, and var/job-N only reducer-output."""
    cluster.start_workers(2)
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    output = tmp_path / "out"
    result = cluster.send_job("--input", inputs, "--output", output, "--mappers", 3,
                              "--reducers", 3, *options, "--wait")
    assert result.returncode == 0, result.stderr.decode() + cluster.master_log()[-2000:]
    assert sorted(os.listdir(output)) == names
    job_dir = cluster.workdir / "var" / f"job-{job_id(result.stdout)}"
    assert os.listdir(job_dir) == ["reducer-output"]
    assert sorted(os.listdir(job_dir / "reducer-output")) == \
        (names if "--reducers" in options else ["input_0", "input_1", "input_2"])


def test_keep_intermediate_keeps_every_file(cluster, tmp_path):
    """--keep-intermediate keeps the job's splits, map and group files in var/job-N."""
    cluster.start_worker()
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    result = cluster.send_job("--input", inputs, "--output", tmp_path / "out", "--split-size", 20,
                              "--keep-intermediate", "--wait")
    assert result.returncode == 0, result.stderr.decode()
    job_dir = cluster.workdir / "var" / f"job-{job_id(result.stdout)}"
    assert sorted(os.listdir(job_dir)) == ["grouper-output", "mapper-output", "reducer-output",
                                           "splits"]
    assert os.listdir(job_dir / "mapper-output")


def test_master_keep_intermediate_flag(tmp_path):
    """master.py --keep-intermediate keeps every job's intermediates."""
    cluster = Cluster(tmp_path)
    try:
        cluster.start_master(extra=("--keep-intermediate",))
        cluster.start_worker()
        inputs = write_files(tmp_path / "in", SMALL_INPUT)
        cluster.run_job(*WORD_COUNT, inputs, tmp_path / "out", 2, 2)
        assert sorted(os.listdir(tmp_path / "var" / "job-0")) == \
            ["grouper-output", "mapper-output", "reducer-output"]
    finally:
        cluster.stop()


def test_only_the_last_failed_jobs_keep_their_files(tmp_path):
    """Failed jobs keep their files for inspection, but only the last --keep-failed of them."""
    cluster = Cluster(tmp_path)
    try:
        cluster.start_master(extra=("--keep-failed", KEEP_FAILED))
        cluster.start_worker()
        inputs = write_files(tmp_path / "in", SMALL_INPUT)
        failing = failing_mapper(tmp_path)
        for number in range(KEEP_FAILED + 2):
            result = cluster.send_job("--input", inputs, "--output", tmp_path / f"out{number}",
                                      "--mapper", failing, "--max-attempts", 1, "--wait")
            assert result.returncode == 1, result.stdout.decode() + result.stderr.decode()
        kept = [f"job-{n}" for n in range(2, KEEP_FAILED + 2)]
        wait_until(lambda: sorted(os.listdir(tmp_path / "var")) ==
                   sorted([vardir.MARKER] + kept),
                   what=f"only {kept} in var/: {sorted(os.listdir(tmp_path / 'var'))}")
        assert os.listdir(tmp_path / "var" / kept[-1] / "mapper-output") is not None
    finally:
        cluster.stop()


# --- output directories the master refuses -----------------------------------------

def rejected(cluster, tmp_path, output, **changes):
    """Submit a job straight to the master (no client checks); return its rejection."""
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    message = helper.new_master_job(str(inputs), str(output), str(WORD_COUNT[0]),
                                    str(WORD_COUNT[1]), 2, 2)
    message.update(changes)
    reply = helper.request("localhost", cluster.port, message)
    assert reply["message_type"] == "job_rejected", reply
    return reply["error"]


@pytest.mark.parametrize("case", ["the input directory", "inside the input directory",
                                  "the root", "inside var", "under a file"])
def test_master_rejects_a_bad_output_directory_at_submission(cluster, tmp_path, case):
    """An output directory that is the input (or in it), /, inside var/ or impossible is rejected at once, naming the field."""
    inputs = tmp_path / "in"
    (tmp_path / "a-file").write_bytes(b"x")
    output = {"the input directory": inputs, "inside the input directory": inputs / "out",
              "the root": Path("/"), "inside var": cluster.workdir / "var" / "out",
              "under a file": tmp_path / "a-file" / "out"}[case]
    error = rejected(cluster, tmp_path, output)
    assert "output_directory" in error and str(output) in error, error
    assert not (tmp_path / "in" / "out").exists()
    assert sorted(os.listdir(tmp_path / "in")) == sorted(SMALL_INPUT)
    cluster.start_worker()
    outputs = cluster.run_job(*WORD_COUNT, inputs, tmp_path / "good", 2, 2)
    assert_matches_sequential(outputs, inputs, *WORD_COUNT, 2)


def test_read_only_output_directory_is_rejected(cluster, tmp_path):
    """An output directory on a read-only filesystem is rejected at submission, not after the job ran."""
    mount_point = tmp_path / "read-only"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs",
                              str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        error = rejected(cluster, tmp_path, mount_point / "out")
        assert "output_directory" in error and "cannot be created" in error, error
        error = rejected(cluster, tmp_path, mount_point)
        assert "output_directory" in error and "not writable" in error, error
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_send_job_refuses_the_input_directory_as_output(cluster, tmp_path):
    """send_job.py refuses an output directory equal to the input, before sending, with one line."""
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    result = cluster.send_job("--input", inputs, "--output", inputs)
    assert result.returncode == SEND_JOB_INVALID
    line = one_line(result.stderr.decode())
    assert "--output" in line and str(inputs) in line, line
    assert sorted(os.listdir(inputs)) == sorted(SMALL_INPUT)
    assert "accepted" not in cluster.master_log()


# --- the client: non-empty output directories and --overwrite ------------------------

def test_non_empty_output_is_refused_without_overwrite(cluster, tmp_path):
    """A second job into a used output directory is refused, naming the files and both ways out; nothing is touched."""
    cluster.start_worker()
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    output = tmp_path / "out"
    first = cluster.run_job(*WORD_COUNT, inputs, output, 2, 2)
    before = {p.name: (p.stat().st_ino, p.read_bytes()) for p in first}
    result = cluster.send_job("--input", inputs, "--output", output)
    assert result.returncode == SEND_JOB_INVALID
    line = one_line(result.stderr.decode())
    for part in ("input_0", "--overwrite", "--output", str(output.name)):
        assert part in line, line
    assert {p.name: (p.stat().st_ino, p.read_bytes()) for p in output.iterdir()} == before
    assert "job 1" not in cluster.master_log()


def test_overwrite_replaces_an_earlier_jobs_outputs_only(cluster, tmp_path):
    """--overwrite removes an earlier job's outputs (more partitions than now) and the directory then holds exactly the new ones."""
    cluster.start_worker()
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    output = tmp_path / "out"
    cluster.run_job(*WORD_COUNT, inputs, output, 2, 4)
    result = cluster.send_job("--input", inputs, "--output", output, "--reducers", 2,
                              "--overwrite", "--wait")
    assert result.returncode == 0, result.stderr.decode()
    assert sorted(os.listdir(output)) == ["input_0", "input_1"]
    assert_matches_sequential(partition_files(output), inputs, *WORD_COUNT, 2)


def test_overwrite_never_removes_a_users_file(cluster, tmp_path):
    """--overwrite into a directory that also holds a user's files refuses, naming them, and removes nothing."""
    cluster.start_worker()
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    output = tmp_path / "out"
    cluster.run_job(*WORD_COUNT, inputs, output, 2, 2)
    (output / "notes.txt").write_bytes(PRECIOUS)
    (output / ".hidden").write_bytes(PRECIOUS)
    (output / "input_7").mkdir()
    result = cluster.send_job("--input", inputs, "--output", output, "--overwrite")
    assert result.returncode == SEND_JOB_INVALID
    line = one_line(result.stderr.decode())
    for name in ("notes.txt", ".hidden", "input_7"):
        assert name in line, line
    assert sorted(os.listdir(output)) == [".hidden", "input_0", "input_1", "input_7",
                                          "notes.txt"]


def test_the_same_overwrite_command_twice_works(cluster, tmp_path):
    """The README's quick-start submission, run twice, succeeds both times with the right output."""
    cluster.start_workers(2)
    for _ in range(2):
        result = cluster.send_job("--wait", "--overwrite")
        assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    output = cluster.workdir / "output"
    assert sorted(os.listdir(output)) == ["input_0", "input_1"]
    assert_matches_sequential(partition_files(output), REPO / "input" / "sample1",
                              *WORD_COUNT, 2)


def test_sequential_mode_refuses_a_used_output_too(tmp_path):
    """send_job.py --sequential refuses a non-empty output directory unless --overwrite."""
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    output = tmp_path / "out"
    arguments = [PYTHON, str(REPO / "send_job.py"), "--sequential", "--input", str(inputs),
                 "--output", str(output)]
    earlier = subprocess.run(arguments + ["--reducers", "3"], capture_output=True,
                             timeout=JOB_TIMEOUT)
    assert earlier.returncode == 0, earlier.stderr.decode()
    older = (output / "input_2").read_bytes()
    refused = subprocess.run(arguments, capture_output=True, timeout=JOB_TIMEOUT)
    assert refused.returncode == SEND_JOB_INVALID
    assert (output / "input_2").read_bytes() == older
    done = subprocess.run(arguments + ["--overwrite"], capture_output=True, timeout=JOB_TIMEOUT)
    assert done.returncode == 0, done.stderr.decode()
    assert sorted(os.listdir(output)) == ["input_0", "input_1"]
    assert b"".join(p.read_bytes() for p in partition_files(output)) == \
        sequential(sorted(inputs.iterdir()), *WORD_COUNT)


# --- collect.py and sequential runs -------------------------------------------------------

def test_collect_twice_into_the_output_directory_does_not_double(cluster, tmp_path):
    """collect.py never reads its own destination, so collecting twice gives the same file."""
    cluster.start_worker()
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    output = tmp_path / "out"
    cluster.run_job(*WORD_COUNT, inputs, output, 2, 2, "--output-base", "wc")
    destination = output / "all"
    for _ in range(2):
        subprocess.run([PYTHON, str(REPO / "collect.py"), str(output), str(destination)],
                       check=True, capture_output=True, timeout=JOB_TIMEOUT)
    assert destination.read_bytes() == sequential(sorted(inputs.iterdir()), *WORD_COUNT)


def scratch_directories(parent):
    """The scratch directories of sequential runs that have started (their lock is in place)."""
    return sorted(p for p in Path(parent).iterdir()
                  if p.name.startswith(".mapreduce-sequential-") and (p / "running.lock").exists())


def sequential_run(tmp_path, output, mapper):
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    return subprocess.Popen([PYTHON, str(REPO / "send_job.py"), "--sequential", "--input",
                             str(inputs), "--output", str(output), "--mapper", str(mapper)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def kill_group(process):
    """Kill the run and whatever programs it left (all in the session it leads)."""
    kill_session(process.pid)
    process.communicate()


def test_killed_sequential_run_leaves_nothing_after_the_next_run(tmp_path):
    """A SIGKILLed --sequential run's scratch directory is removed by the next run, but a live run's never is."""
    output = tmp_path / "out"
    killed = sequential_run(tmp_path, output, sleepy_mapper(tmp_path, 30))
    try:
        wait_until(lambda: scratch_directories(tmp_path), what="the scratch directory")
        abandoned = scratch_directories(tmp_path)
        kill_group(killed)
        live = sequential_run(tmp_path, tmp_path / "out-live", sleepy_mapper(tmp_path, 30))
        try:
            wait_until(lambda: len(scratch_directories(tmp_path)) == 1 and
                       not any(p in abandoned for p in scratch_directories(tmp_path)),
                       what="the live run to start and remove the abandoned scratch")
            live_scratch = scratch_directories(tmp_path)
            done = subprocess.run([PYTHON, str(REPO / "send_job.py"), "--sequential", "--input",
                                   str(tmp_path / "in"), "--output", str(output)],
                                  capture_output=True, timeout=JOB_TIMEOUT)
            assert done.returncode == 0, done.stderr.decode()
            assert scratch_directories(tmp_path) == live_scratch, "a live run's scratch was removed"
        finally:
            kill_group(live)
    finally:
        kill_group(killed)


def test_terminated_sequential_run_removes_its_scratch(tmp_path):
    """A --sequential run stopped with SIGTERM removes its scratch directory before exiting."""
    started = tmp_path / "mapper-started"
    mapper = script(tmp_path / "marking-map.sh", f'touch "{started}"\nexec sleep 30\n')
    run = sequential_run(tmp_path, tmp_path / "out", mapper)
    try:
        # Once its program runs: a signal landing in the middle of a fork()
        # is lost to Python (an exception in an at-fork hook is ignored).
        wait_until(started.exists, what="the run's first program to start")
        run.send_signal(signal.SIGTERM)
        run.communicate(timeout=JOB_TIMEOUT)
        assert run.returncode != 0
        assert scratch_directories(tmp_path) == []
    finally:
        kill_group(run)


def test_overwrite_removes_nothing_when_the_master_cannot_be_reached(cluster, tmp_path):
    """--overwrite to a master that is not there exits 1 and leaves the earlier outputs in place."""
    cluster.start_worker()
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    output = tmp_path / "out"
    cluster.run_job(*WORD_COUNT, inputs, output, 2, 2)
    result = subprocess.run([PYTHON, str(REPO / "send_job.py"), str(free_master_port()),
                             "--input", str(inputs), "--output", str(output), "--overwrite"],
                            capture_output=True, timeout=JOB_TIMEOUT)
    assert result.returncode == 1, result.stderr.decode()
    assert sorted(os.listdir(output)) == ["input_0", "input_1"]


def test_overwrite_never_clears_the_masters_var(cluster, tmp_path):
    """--overwrite naming a directory inside the master's var/ is refused before anything is removed."""
    cluster.start_worker()
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    cluster.run_job(*WORD_COUNT, inputs, tmp_path / "out", 2, 2)
    kept = cluster.workdir / "var" / "job-0" / "reducer-output"
    result = cluster.send_job("--input", inputs, "--output", kept, "--overwrite")
    assert result.returncode == SEND_JOB_INVALID
    assert "var" in one_line(result.stderr.decode())
    assert sorted(os.listdir(kept)) == ["input_0", "input_1"]


@pytest.mark.parametrize("name,options", [("202401_budget.csv", ()),
                                          ("report_2023", ("--output-base", "report"))])
def test_overwrite_keeps_a_user_file_named_like_an_output(cluster, tmp_path, name, options):
    """A lone user file that merely looks like an output name (a date, a year) is not taken for an earlier job's."""
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    output = write_files(tmp_path / "out", {name: PRECIOUS})
    result = cluster.send_job("--input", inputs, "--output", output, "--overwrite", *options)
    assert result.returncode == SEND_JOB_INVALID
    assert name in one_line(result.stderr.decode())
    assert (output / name).read_bytes() == PRECIOUS


@pytest.mark.parametrize("names", [("000000_wedding.jpg", "000001_honeymoon.jpg"),
                                   ("input_0", "input_1")])
def test_overwrite_keeps_a_users_whole_set_of_files_named_like_outputs(cluster, tmp_path,
                                                                        names):
    """A user's files that form a whole set of output names (numbered photos; files a
    user made) are not taken for a job's: only files our master published carry its mark."""
    if not xattrs_kept(tmp_path):
        pytest.skip("this filesystem keeps no extended attributes: names alone decide")
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    output = write_files(tmp_path / "photos", {name: PRECIOUS for name in names})
    result = cluster.send_job("--input", inputs, "--output", output, "--overwrite")
    assert result.returncode == SEND_JOB_INVALID
    assert names[0] in one_line(result.stderr.decode())
    assert all((output / name).read_bytes() == PRECIOUS for name in names)


def xattrs_kept(directory):
    probe = directory / ".probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


def test_overwrite_never_removes_an_input(cluster, tmp_path):
    """An input that is a link to an old output is not removed by --overwrite."""
    cluster.start_worker()
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    output = tmp_path / "out"
    cluster.run_job(*WORD_COUNT, inputs, output, 2, 2)
    linked = tmp_path / "linked-in"
    linked.mkdir()
    (linked / "data").symlink_to(output / "input_0")
    before = (output / "input_0").read_bytes()
    result = cluster.send_job("--input-file", linked / "data", "--output", output, "--overwrite")
    assert result.returncode == SEND_JOB_INVALID
    assert "input" in one_line(result.stderr.decode())
    assert (output / "input_0").read_bytes() == before


def test_two_jobs_into_one_output_directory_are_not_mixed(cluster, tmp_path):
    """A job into the output directory of a queued or running job is rejected, so no directory mixes two jobs' outputs."""
    cluster.start_worker()
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    output = tmp_path / "out"
    first = cluster.send_job("--input", inputs, "--output", output, "--reducers", 4,
                             "--mapper", sleepy_mapper(tmp_path, 1))
    assert first.returncode == 0, first.stderr.decode()
    second = cluster.send_job("--input", inputs, "--output", output, "--reducers", 2)
    assert second.returncode == SEND_JOB_INVALID
    assert "job 0" in one_line(second.stderr.decode())
    wait_until(lambda: b"succeeded" in cluster.send_job("--status", 0).stdout, JOB_TIMEOUT,
               what="job 0")
    assert sorted(os.listdir(output)) == [f"input_{n}" for n in range(4)]


def test_overwrite_never_takes_what_a_queued_or_running_job_uses(cluster, tmp_path):
    """--overwrite is refused, before anything is removed, when the files it would remove
    are the input of a queued job (which then "succeeded" with no input); the queued job
    then reads the files it was given."""
    cluster.start_worker()
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    earlier = tmp_path / "earlier"
    cluster.run_job(*WORD_COUNT, inputs, earlier, 2, 2)
    kept = {name: (earlier / name).read_bytes() for name in os.listdir(earlier)}
    slow = cluster.send_job("--input", inputs, "--output", tmp_path / "slow", "--mappers", 1,
                            "--mapper", sleepy_mapper(tmp_path, 2))
    assert slow.returncode == 0, slow.stderr.decode()
    chained = cluster.send_job("--input", earlier, "--output", tmp_path / "chained",
                               "--mapper", "/bin/cat", "--reducer", "/bin/cat")
    assert chained.returncode == 0, chained.stderr.decode()
    refused = cluster.send_job("--input", inputs, "--output", earlier, "--overwrite")
    assert refused.returncode == SEND_JOB_INVALID, refused.stdout.decode()
    assert "job 2" in one_line(refused.stderr.decode())
    assert {name: (earlier / name).read_bytes() for name in os.listdir(earlier)} == kept
    wait_until(lambda: b"succeeded" in cluster.send_job("--status", 2).stdout, JOB_TIMEOUT,
               what="the chained job")
    chained_out = b"".join(p.read_bytes() for p in partition_files(tmp_path / "chained"))
    assert sorted(chained_out.splitlines()) == sorted(b"".join(kept.values()).splitlines())


def test_publishing_is_all_or_nothing(cluster, tmp_path):
    """A job whose outputs do not all fit on the output's filesystem fails and leaves no partial output there."""
    with small_tmpfs(tmp_path, "2m") as mount_point:  # one output fits, not both
        cluster.start_worker()
        words = b" ".join(b"w%07d" % n for n in range(300_000))  # ~3.3 MB of output
        inputs = write_files(tmp_path / "in", {"words": words + b"\n"})
        output = mount_point / "out"
        result = cluster.send_job("--input", inputs, "--output", output, "--mappers", 1,
                                  "--reducers", 2, "--wait")
        assert result.returncode == 1, result.stdout.decode()
        assert "No space left" in result.stderr.decode(), result.stderr.decode()
        assert os.listdir(output) == []


def test_collect_never_overwrites_an_output_and_joins_only_outputs(cluster, tmp_path):
    """collect.py refuses to write over one of the job's outputs, and for map-only output joins only the outputs."""
    cluster.start_worker()
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    output = tmp_path / "out"
    cluster.run_job(*WORD_COUNT, inputs, output, 2, 3)
    before = (output / "input_2").read_bytes()
    refused = subprocess.run([PYTHON, str(REPO / "collect.py"), str(output), str(output / "input_2")],
                             capture_output=True, timeout=JOB_TIMEOUT)
    assert refused.returncode == 2
    assert (output / "input_2").read_bytes() == before
    map_only = tmp_path / "map-only"
    result = cluster.send_job("--input", inputs, "--output", map_only, "--reducers", 0, "--wait")
    assert result.returncode == 0, result.stderr.decode()
    (map_only / "notes.txt").write_bytes(PRECIOUS)
    for destination in ("all", "all2"):
        subprocess.run([PYTHON, str(REPO / "collect.py"), str(map_only), str(map_only / destination)],
                       check=True, capture_output=True, timeout=JOB_TIMEOUT)
    assert (map_only / "all2").read_bytes() == (map_only / "all").read_bytes()
    mapped = b"".join(subprocess.run([str(WORD_COUNT[0])], input=(inputs / name).read_bytes(),
                                     capture_output=True, check=True).stdout
                      for name in sorted(SMALL_INPUT))
    assert (map_only / "all").read_bytes() == mapped


def test_collect_replaces_only_a_regular_file_and_leaves_nothing_behind(cluster, tmp_path):
    """collect.py writes its result in place of DEST: a symlink, FIFO, device or directory
    there is refused and left as it was (as root, `collect.py out /dev/null` replaced the
    system's /dev/null with a file); a DEST in a missing directory is named as the user
    typed it; a failed collect leaves no temporary file."""
    cluster.start_worker()
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    output = tmp_path / "out"
    cluster.run_job(*WORD_COUNT, inputs, output, 2, 2)
    places = tmp_path / "places"
    places.mkdir()
    (places / "kept").write_bytes(PRECIOUS)
    os.symlink(places / "kept", places / "link")
    os.mkfifo(places / "fifo")
    made = ["link", "fifo", "kept"]
    if os.geteuid() == 0:  # a null device of our own, as /dev/null is
        os.mknod(places / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        made.append("null")

    def collect(destination):
        return subprocess.run([PYTHON, str(REPO / "collect.py"), str(output), str(destination)],
                              capture_output=True, timeout=JOB_TIMEOUT)

    for name in ("link", "fifo", "null")[:len(made) - 1]:
        before = os.lstat(places / name)
        refused = collect(places / name)
        assert refused.returncode == 2, refused.stdout.decode()
        assert str(places / name) in refused.stderr.decode()
        after = os.lstat(places / name)
        assert (after.st_mode, after.st_ino, after.st_rdev) == \
            (before.st_mode, before.st_ino, before.st_rdev)
    assert (places / "kept").read_bytes() == PRECIOUS
    for destination in (output, places / "missing" / "all"):
        refused = collect(destination)
        assert refused.returncode == 2
        assert str(destination) in refused.stderr.decode()
        assert ".tmp-" not in refused.stderr.decode()
    assert sorted(os.listdir(places)) == sorted(made)
    assert sorted(os.listdir(output)) == ["input_0", "input_1"]
    broken = write_files(tmp_path / "broken", {"input_0": b"a\n"})
    (broken / "input_1").mkdir()  # unreadable as a file: collect fails midway
    failed = subprocess.run([PYTHON, str(REPO / "collect.py"), str(broken), str(places / "all")],
                            capture_output=True, timeout=JOB_TIMEOUT)
    assert failed.returncode == 1
    assert sorted(os.listdir(places)) == sorted(made)
    assert collect(places / "kept").returncode == 0  # a regular file is replaced
    assert (places / "kept").read_bytes() == sequential(sorted(inputs.iterdir()), *WORD_COUNT)


def test_a_killed_sequential_run_takes_its_programs_with_it(tmp_path):
    """SIGKILL of a --sequential run ends the program it was running and the program's children."""
    pid_file = tmp_path / "mapper.pid"
    mapper = script(tmp_path / "pid-map.sh", f'sleep 60 &\necho $! > "{pid_file}"\nwait\n')
    run = sequential_run(tmp_path, tmp_path / "out", mapper)
    try:
        wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(),
                   what="the mapper to start")
        program = int(pid_file.read_text())
        os.kill(run.pid, signal.SIGKILL)
        run.communicate()
        wait_until(lambda: not pid_alive(program), what=f"the mapper's child {program} to die")
    finally:
        kill_group(run)


def test_master_keep_intermediate_keeps_failed_jobs_too(tmp_path):
    """master.py --keep-intermediate keeps every failed job's files, whatever --keep-failed says."""
    cluster = Cluster(tmp_path)
    try:
        cluster.start_master(extra=("--keep-intermediate", "--keep-failed", 0))
        cluster.start_worker()
        inputs = write_files(tmp_path / "in", SMALL_INPUT)
        for number in range(2):
            result = cluster.send_job("--input", inputs, "--output", tmp_path / f"out{number}",
                                      "--mapper", failing_mapper(tmp_path), "--max-attempts", 1,
                                      "--wait")
            assert result.returncode == 1
            assert str(tmp_path / "var" / f"job-{number}") in result.stderr.decode()
        assert sorted(os.listdir(tmp_path / "var")) == [vardir.MARKER, "job-0", "job-1"]
    finally:
        cluster.stop()


def test_a_var_holding_only_a_half_written_marker_is_taken(tmp_path):
    """A master killed while writing its marker leaves only the marker's temporary copy:
    the next master takes var/ (every later start was refused)."""
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / f"{vardir.MARKER}.tmp-12345").write_bytes(b"")
    cluster = Cluster(tmp_path)
    try:
        cluster.start_master()
    finally:
        cluster.stop()
    assert not (tmp_path / "var" / f"{vardir.MARKER}.tmp-12345").exists()


def test_collect_merges_partitions_sorted_by_key_whatever_each_keys_line_order(tmp_path):
    """A hash-partitioned top-N job writes each key's lines best first: keys in order, the
    lines not; --merge takes them (only the keys' order matters to it)."""
    out = write_files(tmp_path / "out", {"input_0": b"a\t9\na\t10\nc\t1\n",
                                         "input_1": b"b\t5\nb\t50\n"})
    result = subprocess.run([PYTHON, str(REPO / "collect.py"), str(out), str(tmp_path / "all"),
                             "--merge"], capture_output=True, timeout=JOB_TIMEOUT)
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "all").read_bytes() == b"a\t9\na\t10\nb\t5\nb\t50\nc\t1\n"
