"""Built-in counters (Hadoop's framework counters): each one checked against the
stage of the sequential pipeline it counts, through send_job --wait, job_status
and --sequential alike."""
import subprocess

import pytest

import helper
from conftest import JOB_TIMEOUT, PYTHON, REPO, WORD_COUNT, write_files
from mrlib import runner
from support.programs import script
from support.summary import FRAMEWORK, all_counters

pytestmark = pytest.mark.timeout(120)

# Bytes, not text: no final newline, a carriage return, bytes that are not UTF-8.
INPUTS = {"a": b"the cat\nthe hat\r\nand the bat", "b": b"\xff\xfe dog \x00x\n\n",
          "c": b"one\n" * 50}
# The word count map, its last record without a newline: a count taken after
# the map-side sort (which ends every line) would be one byte over per file.
UNTERMINATED_MAP = "LC_ALL=C awk '{for (i = 1; i <= NF; i++) print $i \"\\t1\"}' | head -c -1\n"


def records(data):
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def run(program, data):
    return subprocess.run([str(program)], input=data, stdout=subprocess.PIPE, check=True,
                          env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"}).stdout


def expected(mapper, combiner):
    """Every built-in counter of a job whose map tasks each take one whole input
    file, from the sequential pipeline's stages run file by file."""
    mapped = [run(mapper, data) for data in INPUTS.values()]
    combined = [run(combiner, run("sort", m)) for m in mapped]
    keys = {line.split(b"\t")[0] for m in mapped for line in m.split(b"\n") if line}
    ended = [c + b"\n" if c and not c.endswith(b"\n") else c for c in combined]
    reduced = run(WORD_COUNT[1], run("sort", b"".join(ended)))
    return {"Map input records": sum(map(records, INPUTS.values())),
            "Map input bytes": sum(map(len, INPUTS.values())),
            "Map output records": sum(map(records, mapped)),
            "Map output bytes": sum(map(len, mapped)),
            "Combine input records": sum(map(records, mapped)),
            "Combine output records": sum(map(records, combined)),
            "Spilled bytes": sum(len(c) + (not c.endswith(b"\n")) for c in combined),
            "Reduce input groups": len(keys),
            "Reduce input records": sum(map(records, combined)),
            "Reduce output records": records(reduced)}


def test_each_builtin_counter_counts_its_stage(cluster, tmp_path):
    cluster.start_workers(2)
    mapper = script(tmp_path / "map.sh", UNTERMINATED_MAP)
    inputs = write_files(tmp_path / "in", INPUTS)
    job = ["--input", inputs, "--mapper", mapper, "--reducer", WORD_COUNT[1],
           "--combiner", WORD_COUNT[1], "--mappers", str(len(INPUTS)), "--reducers", "2"]
    result = cluster.send_job(*job, "--output", tmp_path / "out", "--wait")
    assert result.returncode == 0, result.stderr.decode()
    want = expected(mapper, WORD_COUNT[1])
    assert all_counters(result.stdout.decode())[FRAMEWORK] == want
    status = helper.request("localhost", cluster.port, helper.job_status(0))
    assert status["counters"][FRAMEWORK] == want
    shown = cluster.send_job("--status", 0)
    assert shown.returncode == 0 and all_counters(shown.stdout.decode())[FRAMEWORK] == want
    alone = subprocess.run([PYTHON, REPO / "send_job.py", *job, "--output", tmp_path / "alone",
                            "--sequential"], capture_output=True, timeout=JOB_TIMEOUT)
    assert alone.returncode == 0, alone.stderr.decode()
    assert all_counters(alone.stdout.decode())[FRAMEWORK] == want


def test_a_map_only_job_counts_what_its_map_wrote(cluster, tmp_path):
    cluster.start_worker()
    mapper = script(tmp_path / "map.sh", UNTERMINATED_MAP)
    inputs = write_files(tmp_path / "in", INPUTS)
    result = cluster.send_job("--input", inputs, "--output", tmp_path / "out", "--mapper",
                              mapper, "--mappers", 2, "--reducers", 0, "--wait")
    assert result.returncode == 0, result.stderr.decode()
    mapped = [run(mapper, data) for data in INPUTS.values()]
    assert all_counters(result.stdout.decode())[FRAMEWORK] == {
        "Map input records": sum(map(records, INPUTS.values())),
        "Map input bytes": sum(map(len, INPUTS.values())),
        "Map output records": sum(map(records, mapped)),
        "Map output bytes": sum(map(len, mapped))}


def test_groups_are_the_runs_of_one_key_a_reducer_sees(tmp_path):
    """"a" and "a\tx" share key a, but "a\x01" sorts between them: a reducer sees a twice."""
    sorted_input = tmp_path / "in"
    sorted_input.write_bytes(b"a\na\x01\na\tx\nb\tz\nb\ty")
    report = runner.run_task_program("/bin/cat", str(sorted_input), str(tmp_path / "out"),
                                     counting=runner.Counting(runner.REDUCE_COUNTING))
    assert report.counters[FRAMEWORK] == {"Reduce input groups": 4, "Reduce input records": 5,
                                          "Reduce output records": 5}


def test_a_relayed_stream_whose_reader_dies_fails_the_task_and_ends(tmp_path):
    """The map's output is relayed to the sort by the worker: a combiner that quits
    at once must fail the task, not leave the relay (or the task) hanging."""
    source = tmp_path / "in"
    source.write_bytes(b"x\n" * 100_000)
    quitter = script(tmp_path / "quit.sh", "exit 4\n")
    mapper = script(tmp_path / "map.sh", "exec cat\n")
    with pytest.raises(runner.TaskFailed) as failure:
        runner.run_task_program(str(mapper), str(source), str(tmp_path / "out"),
                                combiner=str(quitter), counting=runner.Counting(runner.MAP_COUNTING), timeout=60)
    assert failure.value.exit_code == 4


def test_a_tally_counts_bytes_and_records_however_they_end(tmp_path):
    for data, want in [(b"", (0, 0)), (b"x", (1, 1)), (b"x\n", (1, 2)), (b"\n\n", (2, 2)),
                       (b"a\nb" * 700_000, (700_001, 2_100_000))]:
        path = tmp_path / "f"
        path.write_bytes(data)
        tally = runner.Tally.of_file(path)
        assert (tally.records, tally.bytes) == want, data[:10]


def test_a_program_cannot_change_the_builtin_counters(tmp_path):
    source = tmp_path / "in"
    source.write_bytes(b"a\nb\n")
    forger = script(tmp_path / "map.sh", "echo 'reporter:counter:Map-Reduce Framework,"
                                         "Map input records,-1000' >&2\nexec cat\n")
    report = runner.run_task_program(str(forger), str(source), str(tmp_path / "out"),
                                     counting=runner.Counting(runner.MAP_COUNTING))
    assert report.counters[FRAMEWORK]["Map input records"] == 2
    assert report.counters[runner.FROM_PROGRAMS] == {"Map input records": -1000}


def test_binary_records_are_counted_as_records_of_their_size(cluster, tmp_path):
    """With --record-size the data is not lines: records are counted by size (4 bytes in,
    2 out with --output-record-size 2), and output that is not whole records not at all."""
    cluster.start_worker()
    data = bytes(range(256)) * 40  # newlines and tabs inside 4-byte records
    inputs = write_files(tmp_path / "in", {"r": data})
    halve = script(tmp_path / "halve.sh", "exec head -c 5121\n")
    job = ("--input", inputs, "--reducers", 0, "--record-size", 4, "--wait")
    result = cluster.send_job(*job, "--output", tmp_path / "out", "--mapper", "/bin/cat",
                              "--output-record-size", 2)
    assert result.returncode == 0, result.stderr.decode()
    assert all_counters(result.stdout.decode())[FRAMEWORK] == {
        "Map input records": len(data) // 4, "Map input bytes": len(data),
        "Map output records": len(data) // 2, "Map output bytes": len(data)}
    result = cluster.send_job(*job, "--output", tmp_path / "odd", "--mapper", halve)
    assert result.returncode == 0, result.stderr.decode()
    assert all_counters(result.stdout.decode())[FRAMEWORK] == {
        "Map input records": len(data) // 4, "Map input bytes": len(data),
        "Map output bytes": 5121}
