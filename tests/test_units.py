"""Unit tests for the pure logic: protocol validation and key-range cuts."""
import argparse
import concurrent.futures
import io
import os
import signal
import stat
import subprocess
import threading
import time
import types
import random

import pytest

import helper
import send_job
from mrlib import display
from mrlib import grouping, outputdir, reaper, runner
from mrlib.attemptlog import MAX_LOG_BYTES, AttemptLog
from mrlib.jobspec import base_name_files
from support.localcluster import wait_until
from support.programs import script


def sorted_lines(rng, count, alphabet=b"ab\t\x01\x09 z", max_len=6):
    lines = []
    for _ in range(count):
        length = rng.randint(0, max_len)
        lines.append(bytes(rng.choice(alphabet) for _ in range(length)))
    return c_sorted(line.replace(b"\n", b"") + b"\n" for line in lines)


def c_sorted(lines):
    """Lines in `LC_ALL=C sort` order: compared without their newline."""
    return sorted(lines, key=lambda line: line[:-1])


def partition(tmp_path, files, parts):
    """Cut sorted files into `parts` range partitions; return their contents."""
    tmp_path.mkdir(exist_ok=True)
    paths = []
    for number, lines in enumerate(files):
        path = tmp_path / f"sorted_{number}"
        path.write_bytes(b"".join(lines))
        paths.append(str(path))
    outputs = [str(tmp_path / f"input_{n}") for n in range(parts)]
    grouping.write_range_partitions(paths, outputs)
    return [open(p, "rb").read() for p in outputs]


def assert_keys_in_one_partition(contents):
    owner = {}
    for number, data in enumerate(contents):
        for line in data.splitlines(keepends=True):
            assert owner.setdefault(grouping.key_of(line), number) == number, line


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_range_partitions_keep_every_key_in_one_file(tmp_path, seed, parts):
    """Cuts never split a key, even with tabs, control bytes and tab-less lines."""
    rng = random.Random(seed)
    lines = sorted_lines(rng, rng.randint(0, 300))
    contents = partition(tmp_path, [lines], parts)
    assert b"".join(contents) == b"".join(lines)
    assert_keys_in_one_partition(contents)


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("files", [2, 3])
def test_partitions_of_several_sorted_files_merge_in_order(tmp_path, seed, files):
    """Several sorted files cut at shared boundaries give the sorted whole, keys unsplit."""
    rng = random.Random(seed)
    groups = [sorted_lines(rng, rng.randint(0, 200)) for _ in range(files)]
    contents = partition(tmp_path, groups, rng.randint(1, 6))
    assert b"".join(contents) == b"".join(c_sorted(line for group in groups for line in group))
    assert_keys_in_one_partition(contents)


@pytest.mark.parametrize("files", [1, 3])
def test_empty_sorted_files_give_empty_partitions(tmp_path, files):
    """No map output at all still gives every partition, empty."""
    assert partition(tmp_path, [[] for _ in range(files)], 4) == [b""] * 4


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("partitioner", ["range", "hash"])
def test_lines_longer_than_the_compare_limit(tmp_path, monkeypatch, seed, partitioner):
    """Lines past COMPARE_BYTES (heads compared, rest skipped) still keep keys whole and order."""
    monkeypatch.setattr(grouping, "COMPARE_BYTES", 3)
    monkeypatch.setattr(grouping, "SCAN_CHUNK", 2)
    rng = random.Random(seed)
    groups = [sorted_lines(rng, rng.randint(0, 60), max_len=12) for _ in range(2)]
    parts = rng.randint(2, 5)
    contents = []
    if partitioner == "range":
        contents = partition(tmp_path, groups, parts)
        expected = b"".join(c_sorted(line for group in groups for line in group))
        assert b"".join(contents) == expected
    else:
        merged = tmp_path / "merged"
        merged.write_bytes(b"".join(c_sorted(line for group in groups for line in group)))
        outputs = [str(tmp_path / f"input_{n}") for n in range(parts)]
        grouping.write_hash_partitions(str(merged), outputs)
        contents = [open(p, "rb").read() for p in outputs]
        assert sorted(b"".join(contents).splitlines()) == sorted(merged.read_bytes().splitlines())
        for data in contents:
            lines = data.splitlines(keepends=True)
            assert lines == c_sorted(lines)
    assert_keys_in_one_partition(contents)


def test_range_partitions_are_balanced(tmp_path):
    """With many distinct keys, partitions are close to equal in size."""
    lines = sorted(b"key%06d\t1\n" % n for n in range(20000))
    sizes = [len(data) for data in partition(tmp_path, [lines], 4)]
    assert max(sizes) - min(sizes) <= 2 * len(lines[0])


@pytest.mark.parametrize("seed", range(10))
def test_partitions_do_not_depend_on_how_data_is_spread_over_files(tmp_path, seed):
    """One sorted file or the same lines over several files: the same partitions."""
    rng = random.Random(seed)
    lines = sorted_lines(rng, rng.randint(0, 400), alphabet=b"abcz\t \x01", max_len=8)
    parts = rng.randint(1, 6)
    spread = [c_sorted(lines[n::3]) for n in range(3)]
    assert partition(tmp_path / "one", [lines], parts) == partition(tmp_path / "three", spread, parts)


def test_several_files_are_balanced(tmp_path):
    """Boundaries from the exact quantiles of several files balance partitions."""
    rng = random.Random(9)
    groups = [c_sorted(b"k%08d\t1\n" % rng.randrange(10**8) for _ in range(5000)) for _ in range(2)]
    sizes = [len(data) for data in partition(tmp_path, groups, 4)]
    assert max(sizes) - min(sizes) <= 2 * len(groups[0][0])


def test_one_huge_key_leaves_other_partitions_empty(tmp_path):
    """A single key holds together even when it is larger than a partition."""
    sizes = [len(data) for data in partition(tmp_path, [[b"same\t1\n"] * 1000], 3)]
    assert sorted(sizes) == [0, 0, 7000]


@pytest.mark.parametrize("line,key", [
    (b"apple\t1\n", b"apple"),
    (b"apple\n", b"apple"),
    (b"\tvalue\n", None),       # empty key
    (b"a\x01b\t1\n", None),    # a byte below the tab
    (b"caf\xe9 x\t1\n", b"caf\xe9 x"),
])
def test_boundary_keys(line, key):
    """Only keys with no byte at or below the tab can separate partitions."""
    assert grouping.boundary_key(line) == key


def test_hash_partition_is_stable():
    """Hash partitioning uses md5, the same in every process and run."""
    assert grouping.hash_partition(b"hello", 7) == int("5d41402abc4b2a76", 16) % 7


@pytest.mark.parametrize("data,reason", [
    (b"{not json", "malformed JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'{"message_type": "nope"}', "unknown message_type"),
    (b'{"worker_pid": 1}', "missing or non-string 'message_type'"),
    (b'{"message_type": "heartbeat"}', "missing field 'worker_pid'"),
    (b'{"message_type": "heartbeat", "worker_pid": "1"}', "should be a int"),
    (b'{"message_type": "heartbeat", "worker_pid": true}', "should be a int"),
    (b'{"message_type": "status", "status": "finished", "worker_pid": 1}', "needs 'output_files'"),
    (b'{"message_type": "new_sort_job", "input_files": [1], "output_file": "x", "worker_pid": 1}',
     "should be a list of strings"),
    (b"\xff\xfe", "malformed JSON"),
])
def test_decode_rejects_bad_messages(data, reason):
    """Each kind of bad message is refused with a reason naming the problem."""
    with pytest.raises(helper.ProtocolError, match=reason.replace("(", r"\(").replace("[", r"\[")):
        helper.decode(data)


def test_decode_accepts_spec_messages():
    """Messages built by the constructors round-trip through the codec."""
    for message in (helper.register("localhost", 6001, 42), helper.heartbeat(42),
                    helper.new_worker_job(["a"], "/bin/cat", "var/job-0/mapper-output", 42),
                    helper.new_sort_job(["a"], "out", 42), helper.status_file("out", 42),
                    helper.status_files(["x"], 42), helper.shutdown()):
        assert helper.decode(helper.encode(message)) == message
        assert b"\n" not in helper.encode(message)


def test_null_optional_fields_count_as_absent():
    """Another implementation's `"field": null` for one of our optional fields drops nothing."""
    status = helper.decode(b'{"message_type": "status", "output_files": ["var/x"], '
                           b'"output_file": null, "error": null, "status": "finished", '
                           b'"worker_pid": 7}')
    assert status == {"message_type": "status", "output_files": ["var/x"],
                      "status": "finished", "worker_pid": 7}
    job = helper.decode(b'{"message_type": "new_worker_job", "input_files": ["a"], '
                        b'"executable": "m", "output_directory": "o", "worker_pid": 7, '
                        b'"timeout": null}')
    assert "timeout" not in job
    with pytest.raises(helper.ProtocolError, match="'timeout' should be a number"):
        helper.decode(b'{"message_type": "new_worker_job", "input_files": ["a"], '
                      b'"executable": "m", "output_directory": "o", "worker_pid": 7, '
                      b'"timeout": "soon"}')


def test_oversized_message_is_refused():
    """A message past the size cap is refused before parsing."""
    with pytest.raises(helper.MessageTooLarge):
        helper.decode(b" " * (helper.MAX_MESSAGE_BYTES + 1))


@pytest.mark.parametrize("directory,name,expected", [
    ("var/job-0/mapper-output", "in/file_001.txt", "var/job-0/mapper-output/file_001.txt"),
    ("var/job-0/mapper-output/", "in/f", "var/job-0/mapper-output/f"),
    ("./var//job-0/mapper-output", "/abs/in/f", "var/job-0/mapper-output/f"),
])
def test_output_path_has_the_spec_form(directory, name, expected):
    """Output names keep the input's basename and have no ./ or //."""
    assert helper.output_path(directory, name) == expected


def test_base_name_files_in_natural_order(tmp_path):
    """book_ takes book_0, book_1 … book_10 in numeric order, and nothing else."""
    for name in ["book_10", "book_2", "book_0", "book_1", "other", "book"]:
        (tmp_path / name).write_bytes(b"")
    found = [p.rsplit("/", 1)[1] for p in base_name_files(str(tmp_path / "book_"))]
    assert found == ["book_0", "book_1", "book_2", "book_10"]


def test_stderr_is_read_in_bounded_pieces():
    """A huge stderr line with no newline is read piecewise; reporter lines still count."""
    limit = runner.MAX_STDERR_PIECE
    junk = b"x" * (10 * limit) + b"reporter:counter:not,a-line-start,5"
    stderr = junk + b"\nreporter:counter:records,read,3\nreporter:status:half way\nbye\n"
    pieces = list(runner.bounded_lines(io.BytesIO(stderr)))
    assert max(len(piece) for piece, _ in pieces) <= limit
    assert b"".join(piece for piece, _ in pieces) == stderr
    report = runner.parse_stderr(io.BytesIO(stderr))
    assert report.counters == {"records": {"read": 3}}
    assert report.status == "half way"
    assert report.stderr_tail.endswith("a-line-start,5\nbye\n")
    assert len(report.stderr_tail) <= runner.STDERR_TAIL_BYTES


@pytest.mark.parametrize("line", [b"reporter:counter:bad", b"reporter:counter:g,n,many",
                                  b"reporter:counter:a,b,c,1"])
def test_a_malformed_counter_line_is_kept_as_said(line):
    """A reporter:counter: line that is not group,name,amount counts nothing and stays in
    the program's stderr for the user to see (it vanished)."""
    kept = io.BytesIO()
    report = runner.parse_stderr(io.BytesIO(line + b"\nreporter:counter:g,n,2\n"), kept)
    assert report.counters == {"g": {"n": 2}}
    assert kept.getvalue() == line + b"\n"
    assert report.stderr_tail == line.decode() + "\n"


def test_stderr_is_read_while_the_program_runs_and_never_held_whole(tmp_path):
    """30 MB of stderr: no file of this process ever holds it; the log keeps its
    first MAX_LOG_BYTES and says how much more there was; the reporter line counts."""
    said = 30_000_000
    marker = tmp_path / "written"
    program = script(tmp_path / "noisy.sh",
                     f"head -c {said} /dev/zero | tr '\\0' e >&2\n"
                     "echo >&2\necho 'reporter:counter:app,done,1' >&2\n"
                     f"touch {marker}\nsleep 2\ncat\n")
    source = tmp_path / "in"
    source.write_bytes(b"x\n")
    log = AttemptLog(str(tmp_path / "attempt.log"))
    ran = concurrent.futures.ThreadPoolExecutor(1).submit(
        runner.run_stages, [runner.program_stage(str(program))], str(source),
        str(tmp_path / "out"), log=log)
    wait_until(marker.exists, what="the program to have written its stderr")
    held = [fd for fd in map(int, os.listdir("/proc/self/fd")) if regular_size(fd) > said // 2]
    assert not held, "a file holds the program's stderr"
    assert ran.result(timeout=60).counters == {"app": {"done": 1}}
    log.close()
    kept = (tmp_path / "attempt.log").read_bytes()
    assert kept.startswith(b"e" * MAX_LOG_BYTES + b"\n[... ")
    assert f"{said + 1 - MAX_LOG_BYTES} more bytes".encode() in kept  # and its newline


@pytest.mark.parametrize("escapee", [
    "setsid sleep 30 >/dev/null &",  # holds stderr
    "setsid sleep 30 2>/dev/null &",  # holds stdout: the map's output, relayed to sort
])
def test_a_descendant_that_escapes_keeps_no_task_waiting(tmp_path, escapee):
    """The map leaves a detached child holding one of its pipes: the task ends when
    the map does, and no thread or descriptor of the worker waits for that child."""
    source = tmp_path / "in"
    source.write_bytes(b"b\na\n")
    mapper = script(tmp_path / "map.sh", f"cat\n{escapee}\n")
    guard = runner.TaskGuard(runner.ProgramGuard(use_reaper=False))
    threads, fds = threading.active_count(), len(os.listdir("/proc/self/fd"))
    began = time.monotonic()
    try:
        report = runner.run_task_program(str(mapper), str(source), str(tmp_path / "out"),
                                          sort_output=True, counting=runner.Counting(runner.MAP_COUNTING),
                                          guard=guard)
        assert time.monotonic() - began < 3
        assert (tmp_path / "out").read_bytes() == b"a\nb\n"
        assert report.counters["Map-Reduce Framework"]["Map output records"] == 2
        wait_until(lambda: threading.active_count() <= threads, 5, what="no thread left")
        assert len(os.listdir("/proc/self/fd")) <= fds
    finally:
        guard.close()  # the escapee carries the attempt's tag: it dies here


def regular_size(fd):
    try:
        info = os.fstat(fd)
    except OSError:
        return 0
    return info.st_size if stat.S_ISREG(info.st_mode) else 0


@pytest.mark.parametrize("names,ours", [
    (["input_0", "input_1", "input_2"], {"input_0", "input_1", "input_2"}),
    (["000000_a", "000001_b"], {"000000_a", "000001_b"}),
    (["count_00", "count_01"], {"count_00", "count_01"}),
    (["input_0", ".input_1.tmp-4242"], {"input_0", ".input_1.tmp-4242"}),
    (["000000_a\nb"], {"000000_a\nb"}),
    (["input_0", "input_2"], set()), (["202401_budget.csv"], set()), (["count_2023"], set()),
    (["input_1.txt", "notes.txt", ".hidden", "input_"], set()),
])
def test_overwrite_recognises_only_whole_sets_of_job_outputs(names, ours):
    """--overwrite takes names for an earlier job's output only as one whole 0..K set of one kind."""
    assert outputdir.earlier_outputs(names, "count") == ours


@pytest.mark.parametrize("status, expected", [
    ({"job_id": 3, "state": "running", "phase": "map", "tasks_done": 1, "tasks_total": 4},
     "job 3: running, map phase, 1/4 tasks done"),
    ({"job_id": 3, "state": "running", "phase": "merge", "tasks_done": 0, "tasks_total": 0},
     "job 3: running, merge phase"),
    ({"job_id": 3, "state": "queued", "phase": None, "tasks_done": 0, "tasks_total": 0},
     "job 3: queued"),
])
def test_progress_lines_name_tasks_only_for_phases_that_have_them(status, expected):
    assert send_job.describe(status) == expected


def test_following_a_job_rides_out_a_master_out_of_reach(monkeypatch, capsys):
    """--wait's queries: failures within LOST_CONTACT_LIMIT are retried, said once; longer ones raise."""
    replies = [ConnectionRefusedError("refused"), OSError("unreachable"), {"state": "running"}]
    clock = [100.0]

    def request(*args, **kwargs):
        reply = replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply
    monkeypatch.setattr(send_job.helper, "request", request)
    monkeypatch.setattr(send_job.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(send_job.time, "sleep", lambda seconds: None)
    contact = send_job.Contact(argparse.Namespace(host="h", port=1))
    assert contact.ask({}, 1) is None
    assert contact.ask({}, 1) is None
    assert contact.ask({}, 1) == {"state": "running"}
    said = capsys.readouterr().err
    assert said.count("lost contact") == 1 and "in contact with the master again" in said
    replies.extend([OSError("down"), OSError("still down")])
    assert contact.ask({}, 1) is None
    clock[0] += send_job.LOST_CONTACT_LIMIT + 1
    with pytest.raises(OSError, match="still down"):
        contact.ask({}, 1)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def running(done, total=4, phase="map"):
    return {"job_id": 3, "state": "running", "phase": phase, "tasks_done": done,
            "tasks_total": total}


def test_plain_progress_lines_change_only_and_tell_the_time_left():
    out, clock = io.StringIO(), FakeClock()
    lines = display.PlainLines(3, out, clock)
    lines.update(running(0))
    clock.now = 2.0
    lines.update(running(0))  # nothing new: no line
    lines.update(running(1))
    lines.update(running(0, total=0, phase="merge"))
    lines.update({"job_id": 3, "state": "succeeded", "phase": "done"})
    assert out.getvalue().splitlines() == [
        "job 3: running, map phase, 0/4 tasks done (0%), 0.0 s in the phase",
        "job 3: running, map phase, 1/4 tasks done (25%), 2.0 s in the phase, about 6 s left",
        "job 3: running, merge phase",
        "job 3: succeeded"]


def test_a_sweep_kills_what_a_tagged_program_forks_while_it_is_being_killed(tmp_path):
    """A tagged shell forking as fast as it can: children forked after a pass has listed
    /proc are tagged too, and the sweep goes on until a pass finds none."""
    prefix = f"sweep-test-{os.getpid()}-{random.getrandbits(32):x}-"
    naps = f"1000.{os.getpid()}"
    forker = subprocess.Popen(["sh", "-c", f"while :; do sleep {naps} & done"],
                              env=dict(os.environ, **{reaper.ATTEMPT_VARIABLE: prefix + "0"}),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        wait_until(lambda: len(tagged(prefix)) > 20, what="the shell to fork")
        reaper.kill_tagged(prefix, whole=False)
        forker.wait(5)
        assert not tagged(prefix)
    finally:
        for pid in tagged(prefix):
            os.kill(pid, signal.SIGKILL)
        forker.kill()
        forker.wait()


def tagged(prefix):
    """Live processes whose environment carries an attempt tag starting with `prefix`."""
    needle = f"\0{reaper.ATTEMPT_VARIABLE}={prefix}".encode()
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if entry.isdigit() and needle in b"\0" + handle.read():
                    found.append(int(entry))
        except OSError:
            pass
    return found


def test_background_work_reports_even_when_describing_its_failure_fails():
    """A bug in the master's handling of a failed merge must fail the job, not leave it
    waiting forever for work that never reports."""
    import master
    posted = []
    shell = types.SimpleNamespace(guard=None, post=posted.append)

    class Undescribable(OSError):
        def __str__(self):
            raise RuntimeError("a bug while describing the failure")

    def run(guard):
        raise Undescribable()
    with pytest.raises(RuntimeError):
        master.Master.run_in_background(shell, "token-1", "merge", run)
    [done] = posted
    assert done.token == "token-1" and done.result is None and "merge" in done.error
