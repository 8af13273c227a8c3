"""Jobs through the real entry points, compared with the sequential pipeline."""
import os
import random

import pytest

from conftest import (GREP, REPO, WORD_COUNT, WORD_COUNT_SH, assert_matches_sequential,
                      partition_files, wait_until, write_files)

SAMPLE = REPO / "input" / "sample1"
PROGRAMS = {"word_count_py": WORD_COUNT, "word_count_sh": WORD_COUNT_SH, "grep": GREP}
COUNTS = [(1, 1), (4, 2), (3, 5), (8, 3)]


def awkward_inputs():
    """Inputs users really have: bytes, not tidy text."""
    return {
        "a_empty": b"",
        "b_no_trailing_newline": b"alpha beta\ngamma alpha",
        "c_crlf": b"alpha\r\nbeta gamma\r\n\r\ndelta\r\n",
        "d_latin1": "caf\xe9 na\xefve caf\xe9\n".encode("latin-1") + b"\xff\xfe raw \x80\n",
        "e_tabs": b"key\tvalue with\ttabs\nkey\tother\n\tleading tab\n",
        "f_blank_lines": b"\n\n\n",
        "g_long_line": b" ".join(b"w%d" % (i % 97) for i in range(20000)),
    }


@pytest.fixture
def two_workers(cluster):
    cluster.start_workers(2)
    return cluster


@pytest.mark.parametrize("program", sorted(PROGRAMS))
@pytest.mark.parametrize("mappers,reducers", COUNTS)
def test_programs_match_sequential(two_workers, tmp_path, program, mappers, reducers):
    """Every sample program gives the sequential output in exactly R files, keys not split."""
    mapper, reducer = PROGRAMS[program]
    output = tmp_path / "out"
    outputs = two_workers.run_job(mapper, reducer, SAMPLE, output, mappers, reducers,
                                  "--env", "GREP_PATTERN=the")
    assert_matches_sequential(outputs, SAMPLE, mapper, reducer, reducers,
                              env={"GREP_PATTERN": "the"})
    # Our workers say their map and sort outputs are bytewise sorted: no pass re-sorts them.
    assert "bytewise first" not in two_workers.master_log()


@pytest.mark.parametrize("program", ["word_count_py", "word_count_sh"])
def test_awkward_inputs(two_workers, tmp_path, program):
    """Empty files, no final newline, CRLF, non-UTF-8, tabs and long lines survive."""
    inputs = write_files(tmp_path / "in", awkward_inputs())
    mapper, reducer = PROGRAMS[program]
    outputs = two_workers.run_job(mapper, reducer, inputs, tmp_path / "out", 3, 4)
    assert_matches_sequential(outputs, inputs, mapper, reducer, 4)


def test_tabs_in_values_keep_key_groups(two_workers, tmp_path):
    """Lines whose values hold tabs are grouped by the bytes before the first tab."""
    lines = [b"k%d\tv\t%d\tx" % (i % 7, i) for i in range(500)] + [b"notab%d" % i for i in range(50)]
    random.Random(3).shuffle(lines)
    inputs = write_files(tmp_path / "in", {"data": b"\n".join(lines) + b"\n"})
    outputs = two_workers.run_job(*GREP, inputs, tmp_path / "out", 2, 3,
                                  "--env", "GREP_PATTERN=.")
    assert_matches_sequential(outputs, inputs, *GREP, 3, env={"GREP_PATTERN": "."})


def test_many_small_files(two_workers, tmp_path):
    """200 small files spread over a few map tasks."""
    rng = random.Random(5)
    words = [b"w%d" % n for n in range(300)]
    files = {f"part-{n:03d}": b" ".join(rng.choice(words) for _ in range(rng.randint(0, 40)))
             + b"\n" for n in range(200)}
    inputs = write_files(tmp_path / "in", files)
    outputs = two_workers.run_job(*WORD_COUNT, inputs, tmp_path / "out", 7, 3)
    assert_matches_sequential(outputs, inputs, *WORD_COUNT, 3)


def test_more_mappers_than_files(two_workers, tmp_path):
    """Asking for more map tasks than files runs one task per file, none empty."""
    inputs = write_files(tmp_path / "in", {"one": b"a b c\n", "two": b"b c d\n"})
    outputs = two_workers.run_job(*WORD_COUNT, inputs, tmp_path / "out", 10, 2)
    assert_matches_sequential(outputs, inputs, *WORD_COUNT, 2)
    log = two_workers.master_log()
    assert "map phase, 2 task(s)" in log


def test_empty_input_directory(two_workers, tmp_path):
    """A directory with no files gives R empty outputs."""
    inputs = tmp_path / "empty"
    inputs.mkdir()
    outputs = two_workers.run_job(*WORD_COUNT, inputs, tmp_path / "out", 2, 3)
    assert [p.read_bytes() for p in outputs] == [b"", b"", b""]


@pytest.mark.parametrize("mapper", [WORD_COUNT[0], "/bin/true"])
def test_empty_map_output(two_workers, tmp_path, mapper):
    """Empty input files, or a map that writes nothing, give R empty outputs."""
    inputs = write_files(tmp_path / "in", {"a": b"", "b": b"" if mapper != "/bin/true" else b"x\n"})
    outputs = two_workers.run_job(mapper, WORD_COUNT[1], inputs, tmp_path / "out", 2, 3)
    assert [p.read_bytes() for p in outputs] == [b"", b"", b""]


def test_file_names_that_are_not_utf8(two_workers, tmp_path):
    """Input names are bytes too: a name that is not UTF-8 is read, sorted and reduced."""
    inputs = write_files(tmp_path / "in", {os.fsdecode(b"caf\xe9 \xff.txt"): b"b a\nc b\n",
                                           "plain.txt": b"a c\n"})
    outputs = two_workers.run_job(*WORD_COUNT, inputs, tmp_path / "out", 2, 2)
    assert_matches_sequential(outputs, inputs, *WORD_COUNT, 2)


def test_rerun_with_overwrite_leaves_only_its_partitions(two_workers, tmp_path):
    """Rerunning with --overwrite and fewer outputs than the last job leaves exactly this job's files."""
    inputs = write_files(tmp_path / "in", {"f": b"a b c d e f g h\n", "g": b"a a b\n"})
    output = tmp_path / "out"
    two_workers.run_job(*WORD_COUNT, inputs, output, 2, 5)
    outputs = two_workers.run_job(*WORD_COUNT, inputs, output, 2, 2, "--overwrite")
    assert sorted(os.listdir(output)) == ["input_0", "input_1"]
    assert_matches_sequential(outputs, inputs, *WORD_COUNT, 2)
    two_workers.run_job(WORD_COUNT[0], WORD_COUNT[1], inputs, output, 2, 0, "--overwrite")
    assert sorted(os.listdir(output)) == ["000000_f", "000001_g"]


def test_more_reducers_than_keys(two_workers, tmp_path):
    """More reducers than keys still writes every input_x; the extra ones are empty."""
    inputs = write_files(tmp_path / "in", {"f": b"same same same\n"})
    outputs = two_workers.run_job(*WORD_COUNT, inputs, tmp_path / "out", 1, 4)
    assert_matches_sequential(outputs, inputs, *WORD_COUNT, 4)
    assert sum(1 for p in outputs if p.read_bytes()) == 1


def test_outputs_stay_under_var(two_workers, tmp_path):
    """Outputs are in output_directory and still readable, sharing their data, under var/job-N/reducer-output."""
    outputs = two_workers.run_job(*WORD_COUNT, SAMPLE, tmp_path / "out", 4, 2)
    kept = partition_files(two_workers.workdir / "var" / "job-0" / "reducer-output")
    assert [p.read_bytes() for p in kept] == [p.read_bytes() for p in outputs]
    assert all(a.samefile(b) for a, b in zip(kept, outputs)), "not hard links: space used twice"


@pytest.mark.parametrize("jobs", [2, 5])
def test_queued_jobs_all_run(two_workers, tmp_path, jobs):
    """Jobs submitted at once are queued and each completes correctly, in order."""
    inputs = write_files(tmp_path / "in", {f"f{n}": b"x y z %d\n" % n for n in range(6)})
    clients = [two_workers.send_job_async("--input", inputs, "--output", tmp_path / f"out{n}",
                                          "--reducers", 1 + n % 3, "--wait")
               for n in range(jobs)]
    for client in clients:
        stdout, stderr = client.communicate(timeout=120)
        assert client.returncode == 0, stdout.decode() + stderr.decode()
    for n in range(jobs):
        outputs = partition_files(tmp_path / f"out{n}")
        assert_matches_sequential(outputs, inputs, *WORD_COUNT, 1 + n % 3)
    log = two_workers.master_log()
    starts = [log.index(f"job {n} started") for n in range(jobs)]
    assert starts == sorted(starts)


def test_job_before_any_worker(cluster, tmp_path):
    """A job that arrives before any worker waits for the first registration."""
    client = cluster.send_job_async("--input", SAMPLE, "--output", tmp_path / "out", "--wait")
    cluster.wait_for_log("job 0 accepted")
    assert client.poll() is None
    cluster.start_worker()
    stdout, stderr = client.communicate(timeout=60)
    assert client.returncode == 0, stderr.decode()
    assert_matches_sequential(partition_files(tmp_path / "out"), SAMPLE, *WORD_COUNT, 2)


def test_status_query_reports_progress(two_workers, tmp_path):
    """send_job --wait prints phases, task counts and where the output is."""
    result = two_workers.send_job("--input", SAMPLE, "--output", tmp_path / "out", "--wait")
    text = result.stdout.decode()
    assert result.returncode == 0
    for phase in ("map phase", "group phase", "reduce phase"):
        assert phase in text
    assert f"2 file(s) in {tmp_path / 'out'}" in text
    assert wait_until(lambda: "succeeded" in two_workers.send_job("--status", 0).stdout.decode())
