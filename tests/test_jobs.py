"""Whole jobs through the real entry points: splits, records, inputs, programs, options.

Every job is submitted with send_job.py (or run with send_job.py --sequential)
and its output joined with collect.py, both as subprocesses, against master.py
and worker.py processes started by the conftest fixtures. Outputs are compared
with the sequential pipeline (conftest.sequential) or an equivalent oracle.
"""
import os
import random
import re
import resource
import signal
import subprocess
from pathlib import Path

import pytest

import helper
from conftest import (EXEC, GREP, PYTHON, REPO, WORD_COUNT, WORD_COUNT_SH, concatenate, key_of,
                      sequential, wait_until, write_files)
from mrlib.splits import MAX_SPLITS
from support.programs import write_script
from support.summary import counters

SEND_JOB = REPO / "send_job.py"
COLLECT = REPO / "collect.py"
SAMPLE = REPO / "input" / "sample1"
HAMMING = EXEC / "hamming"
SORT = (EXEC / "sort" / "map.py", EXEC / "sort" / "reduce.py")
CAT = "#!/bin/sh\nexec cat\n"
WORKERS = 3
RUN_TIMEOUT = 120
# A soft limit on open files below the number of hash partitions a test asks for.
LOW_OPEN_FILES = 64
# Fast failure detection: a worker is dead after 5 x 0.2 s of silence.
FAST = {"MAPREDUCE_HEARTBEAT_INTERVAL": "0.2"}

# 1 and 7 bytes are smaller than most lines; 10**6 is larger than any file.
SPLIT_SIZES = (1, 7, 64, 1000, 10**6)
RECORD_SIZE, RECORD_SPLIT_SIZE = 100, 250
# The Hamming chain: a several-MB random file, cut at sizes that line up with nothing.
RAW_SIZE = 3_000_000
ENCODE_SPLIT = 1_000_003
ENCODED_SPLIT = 777_778
ERROR_SETTINGS = {"HAMMING_SEED": "7", "HAMMING_ERROR_RATE": "0.0005"}
ERROR_ENV = tuple(arg for name, value in ERROR_SETTINGS.items()
                  for arg in ("--env", f"{name}={value}"))


# --- helpers -----------------------------------------------------------------

def send_job(cluster, *args, sequential_mode=False):
    """Run send_job.py (on the cluster, or --sequential) in its directory; the CompletedProcess."""
    target = ["--sequential"] if sequential_mode else [str(cluster.port)]
    return subprocess.run([PYTHON, str(SEND_JOB), *target, *[str(a) for a in args]],
                          cwd=cluster.workdir, env=cluster.env, capture_output=True,
                          timeout=RUN_TIMEOUT)


def run(cluster, *args, sequential_mode=False):
    """Run a job to its end (--wait on the cluster); assert it succeeded; return stdout."""
    wait = () if sequential_mode else ("--wait",)
    result = send_job(cluster, *args, *wait, sequential_mode=sequential_mode)
    assert result.returncode == 0, (result.stdout.decode() + result.stderr.decode()
                                    + cluster.master_log()[-3000:])
    return result.stdout.decode()


def run_sequential(cluster, *args):
    """The same job run by send_job.py --sequential (no master, no port); return stdout."""
    return run(cluster, *args, sequential_mode=True)


def job_id(stdout):
    """The job number from send_job.py's "job N submitted" line."""
    return int(re.search(r"^job (\d+) submitted", stdout, re.M).group(1))


def collect(cluster, source, destination=None, merge=False):
    """Join a job's outputs with collect.py; return the joined bytes."""
    destination = Path(destination or cluster.workdir / "collected" / Path(source).name)
    destination.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([PYTHON, str(COLLECT), str(source), str(destination),
                             *(["--merge"] if merge else [])], cwd=cluster.workdir,
                            capture_output=True, timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    return destination.read_bytes()


def job_directory(cluster, stdout):
    """var/job-N of the job whose send_job.py output this is."""
    return cluster.workdir / "var" / f"job-{job_id(stdout)}"


def tree_size(directory):
    """Total bytes of the regular files under a directory."""
    return sum(p.stat().st_size for p in Path(directory).rglob("*")
               if p.is_file() and not p.is_symlink())


def visible_files(directory):
    """A job's output files, sorted: what `DIR/*` names."""
    return sorted(p for p in Path(directory).iterdir() if not p.name.startswith("."))


def splits_by_source(directory):
    """{input file name: [split paths in split order]} of a job's splits/ directory."""
    groups = {}
    for path in sorted(Path(directory).iterdir()):  # names start with a zero-padded index
        _, _, source = path.name.partition("_")
        groups.setdefault(source, []).append(path)
    return groups


def lines_of(data):
    """The lines of `data`, each with its newline (the last may lack one); [b""] if empty."""
    pieces = data.split(b"\n")
    lines = [piece + b"\n" for piece in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])
    return lines or [b""]


def program_output(program, data, env=None):
    """stdout of a program run directly on `data`."""
    return subprocess.run([str(program)], input=data, stdout=subprocess.PIPE, check=True,
                          env=dict(os.environ, **(env or {})), timeout=RUN_TIMEOUT).stdout


def c_sorted(data):
    """`LC_ALL=C sort` of some lines."""
    return subprocess.run(["sort"], input=data, stdout=subprocess.PIPE, check=True,
                          env=dict(os.environ, LC_ALL="C"), timeout=RUN_TIMEOUT).stdout


def output_files(directory):
    """{name: bytes} of a job's output directory."""
    return {p.name: p.read_bytes() for p in Path(directory).iterdir() if not p.name.startswith(".")}


def text_inputs(directory):
    """The sample files plus awkward ones: no final newline, CRLF, blank lines, non-UTF-8."""
    contents = {p.name: p.read_bytes() for p in SAMPLE.iterdir()}
    contents.update({
        "file06_empty": b"",
        "file07_no_newline": b"alpha beta\ngamma alpha",
        "file08_crlf": b"alpha\r\nbeta gamma\r\n\r\ndelta\r\n",
        "file09_latin1": "caf\xe9 na\xefve caf\xe9\n".encode("latin-1") + b"\xff\xfe raw \x80\n",
        "file10_blank": b"\n\n\n",
        "file11_long_line": b" ".join(b"w%d" % (i % 97) for i in range(5000)) + b"\n",
    })
    return write_files(directory, contents)


def repetitive_inputs(directory, files=4, words=3000, vocabulary=25):
    """Files of many repeated words: what a combiner shrinks."""
    rng = random.Random(11)
    contents = {}
    for number in range(files):
        lines = [b" ".join(b"word%d" % rng.randrange(vocabulary) for _ in range(10))
                 for _ in range(words // 10)]
        contents[f"part{number}"] = b"\n".join(lines) + b"\n"
    return write_files(directory, contents)


def word_count_args(inputs, output, *extra, programs=WORD_COUNT):
    mapper, reducer = programs
    return ("--input", inputs, "--output", output, "--mapper", mapper, "--reducer", reducer,
            *extra)


@pytest.fixture
def workers(cluster):
    """The cluster with WORKERS workers registered."""
    cluster.start_workers(WORKERS)
    return cluster


# --- 1. splits of any size ---------------------------------------------------

def test_split_sizes_give_identical_word_count(workers, tmp_path):
    """Split sizes from 1 byte to larger than any file all give the sequential word count."""
    inputs = text_inputs(tmp_path / "in")
    expected = sequential(sorted(inputs.iterdir()), *WORD_COUNT)
    for size in SPLIT_SIZES:
        output = tmp_path / f"out-{size}"
        stdout = run(workers, *word_count_args(inputs, output, "--reducers", 3,
                                               "--split-size", size, "--keep-intermediate"))
        assert collect(workers, output) == expected, f"split size {size}"
        groups = splits_by_source(job_directory(workers, stdout) / "splits")
        assert sorted(groups) == sorted(p.name for p in inputs.iterdir())
        for source, parts in groups.items():
            data = (inputs / source).read_bytes()
            assert b"".join(p.read_bytes() for p in parts) == data, f"{source} at {size}"
            for part in parts[:-1]:
                assert part.is_symlink() or part.read_bytes().endswith(b"\n"), \
                    f"{part.name} (split size {size}) cuts a line"
            if size == 1:
                assert [p.read_bytes() for p in parts] == lines_of(data), \
                    f"split size 1 should give one split per line of {source}"
            if size >= len(data):
                assert len(parts) == 1 and parts[0].is_symlink(), \
                    f"{source} fits one split: expected a symlink"


# --- 2. fixed-size records ---------------------------------------------------

def test_fixed_size_records_are_never_cut(workers, tmp_path):
    """--record-size 100 --split-size 250: every split holds whole records; cat gives the input."""
    rng = random.Random(2)
    contents = {"a_long": rng.randbytes(1000), "b_exact": rng.randbytes(200),
                "c_one": rng.randbytes(100), "d_empty": b"",
                "e_lines": b"\n".join(b"%099d" % n for n in range(12)) + b"\n"}
    inputs = write_files(tmp_path / "in", contents)
    cat = write_script(tmp_path / "cat.sh", CAT)
    output = tmp_path / "out"
    stdout = run(workers, "--input", inputs, "--output", output, "--mapper", cat,
                 "--reducers", 0, "--record-size", RECORD_SIZE, "--split-size", RECORD_SPLIT_SIZE,
                 "--keep-intermediate")
    groups = splits_by_source(job_directory(workers, stdout) / "splits")
    assert sorted(groups) == sorted(contents)
    for source, parts in groups.items():
        sizes = [p.stat().st_size for p in parts]
        assert all(size % RECORD_SIZE == 0 for size in sizes), f"{source}: {sizes}"
        assert b"".join(p.read_bytes() for p in parts) == contents[source]
    assert len(groups["a_long"]) > 1
    assert collect(workers, output) == b"".join(contents[name] for name in sorted(contents))


# --- 3. base-name and single-file inputs ---------------------------------------

def test_base_name_input_in_natural_order(workers, tmp_path):
    """--input-base books/book_ reads book_0 … book_10 (book_2 before book_10), nothing else."""
    books = {f"book_{n}": b"book %d line 1\nbook %d line 2\n" % (n, n) for n in range(11)}
    decoys = {"bookshelf": b"not a book\n", "other_1": b"not a book either\n"}
    directory = write_files(tmp_path / "books", {**books, **decoys})
    (directory / "book_99").mkdir()  # a directory with the prefix: not an input
    cat = write_script(tmp_path / "cat.sh", CAT)
    output = tmp_path / "out"
    run(workers, "--input-base", directory / "book_", "--output", output, "--mapper", cat,
        "--reducers", 0, "--mappers", 4)
    collected = collect(workers, output)
    assert collected == b"".join(books[f"book_{n}"] for n in range(11))
    assert collected.index(b"book 2 ") < collected.index(b"book 10 ")


def test_single_file_input(workers, tmp_path):
    """--input-file reads that file only, not its neighbours, and matches the sequential count."""
    inputs = text_inputs(tmp_path / "in")
    chosen = inputs / "file01"
    output = tmp_path / "out"
    run(workers, "--input-file", chosen, "--output", output, "--mapper", WORD_COUNT[0],
        "--reducer", WORD_COUNT[1], "--reducers", 2)
    assert collect(workers, output) == sequential([chosen], *WORD_COUNT)


# --- 4. the Hamming chain ------------------------------------------------------

def hamming_job(cluster, program, source, output, *extra, split=ENCODED_SPLIT, record=2,
                sequential_mode=False):
    """A map-only Hamming job over one file; return send_job.py's stdout."""
    return run(cluster, "--input-file", source, "--output", output,
               "--mapper", HAMMING / f"{program}.py", "--reducers", 0,
               "--split-size", split, "--record-size", record, *extra,
               sequential_mode=sequential_mode)


def test_hamming_chain_restores_the_original(workers, tmp_path):
    """encode, error, check, fix, decode over odd-sized splits give back a 3 MB file exactly."""
    raw = random.Random(1).randbytes(RAW_SIZE)
    original = write_files(tmp_path / "raw", {"data.bin": raw}) / "data.bin"
    stage = tmp_path / "stages"

    hamming_job(workers, "encode", original, tmp_path / "enc", split=ENCODE_SPLIT, record=1)
    assert len(visible_files(tmp_path / "enc")) == 3  # 1_000_003 + 1_000_003 + 999_994
    encoded = collect(workers, tmp_path / "enc", stage / "enc.bin")
    assert len(encoded) == 2 * RAW_SIZE

    stdout = hamming_job(workers, "decode", stage / "enc.bin", tmp_path / "plain")
    assert collect(workers, tmp_path / "plain", stage / "plain.bin") == raw
    assert counters(stdout) == {"hamming.corrected": 0, "hamming.detected": 0}

    stdout = hamming_job(workers, "error", stage / "enc.bin", tmp_path / "noisy", *ERROR_ENV)
    noisy = collect(workers, tmp_path / "noisy", stage / "noisy.bin")
    injected = counters(stdout)
    single = injected["hamming.injected_single"]
    assert injected["hamming.injected_double"] == 0
    expected_flips = float(ERROR_SETTINGS["HAMMING_ERROR_RATE"]) * len(encoded)
    assert 0.8 < single / expected_flips < 1.2, injected
    assert len(noisy) == len(encoded)
    assert sum(a != b for a, b in zip(noisy, encoded)) == single

    reference = hamming_job(workers, "error", stage / "enc.bin", tmp_path / "noisy-seq",
                            *ERROR_ENV, sequential_mode=True)
    assert collect(workers, tmp_path / "noisy-seq", stage / "noisy-seq.bin") == noisy, \
        "error.py over the cluster's splits differs from the sequential run"
    assert counters(reference) == injected
    whole = program_output(HAMMING / "error.py", encoded, ERROR_SETTINGS)
    assert whole == noisy, "error.py over splits differs from error.py over the whole file"

    stdout = run(workers, "--input-file", stage / "noisy.bin", "--output", tmp_path / "check",
                 "--mapper", HAMMING / "check.py", "--reducer", HAMMING / "check_reduce.py",
                 "--reducers", 1, "--split-size", ENCODED_SPLIT, "--record-size", 2,
                 "--output-record-size", "lines")
    report = (tmp_path / "check" / "input_0").read_bytes()
    assert report == b"bytes\t%d\ncorrected\t%d\ndetected\t0\n" % (len(encoded), single)
    assert counters(stdout) == {"hamming.corrected": single, "hamming.detected": 0}

    stdout = hamming_job(workers, "fix", stage / "noisy.bin", tmp_path / "fixed")
    assert collect(workers, tmp_path / "fixed", stage / "fixed.bin") == encoded
    assert counters(stdout) == {"hamming.corrected": single, "hamming.detected": 0}

    hamming_job(workers, "decode", stage / "fixed.bin", tmp_path / "decoded")
    assert collect(workers, tmp_path / "decoded", stage / "decoded.bin") == raw


# --- 5. sort -------------------------------------------------------------------

def test_sort_matches_c_sort(workers, tmp_path):
    """sort/map.py and reduce.py, 3 reducers: `LC_ALL=C sort` of the lines, duplicates kept."""
    rng = random.Random(5)
    lines = [rng.randbytes(rng.randrange(12)).replace(b"\n", b"") for _ in range(3000)]
    lines += [b"caf\xe9", b"\xff\xfe\x80", b"a\tb", b"a", b"a\x01", b"", b"\xc3("] * 3
    lines += rng.sample(lines, 300)  # duplicates
    rng.shuffle(lines)
    contents = {"lines0": b"\n".join(lines[:1200]) + b"\n",
                "lines1": b"\n".join(lines[1200:2500]) + b"\n",
                "lines2": b"\n".join(lines[2500:])}  # no final newline
    inputs = write_files(tmp_path / "in", contents)
    output = tmp_path / "out"
    run(workers, "--input", inputs, "--output", output, "--mapper", SORT[0],
        "--reducer", SORT[1], "--mappers", 4, "--reducers", 3, "--partitioner", "range")
    assert len(visible_files(output)) == 3
    expected = c_sorted(concatenate(sorted(inputs.iterdir())))
    assert expected.count(b"\n") == len(lines)
    assert collect(workers, output) == expected


# --- 6. map-only, combiner, hash partitioning -----------------------------------

def test_map_only_output_is_map_outputs_in_input_order(workers, tmp_path):
    """A map-only word count's collected output is each file's map output, in input order."""
    inputs = text_inputs(tmp_path / "in")
    output = tmp_path / "out"
    run(workers, *word_count_args(inputs, output, "--reducers", 0, "--mappers", 3))
    expected = b"".join(program_output(WORD_COUNT[0], p.read_bytes())
                        for p in sorted(inputs.iterdir()))
    assert collect(workers, output) == expected


@pytest.mark.parametrize("prefix", ["part", "input_"])
def test_map_only_order_with_numbered_file_names(workers, tmp_path, prefix):
    """Files 1, 2, 10 of a directory: collect.py joins them in the job's `cat dir/*` order."""
    inputs = write_files(tmp_path / "in", {f"{prefix}{n}": b"line of file %d\n" % n
                                           for n in (1, 2, 10)})
    cat = write_script(tmp_path / "cat.sh", CAT)
    output = tmp_path / "out"
    run(workers, "--input", inputs, "--output", output, "--mapper", cat, "--reducers", 0)
    assert collect(workers, output) == concatenate(sorted(inputs.iterdir()))


def test_combiner_same_output_less_intermediate_data(workers, tmp_path):
    """word count with reduce.py as combiner: same output as without, less map output on disk."""
    inputs = repetitive_inputs(tmp_path / "in")
    expected = sequential(sorted(inputs.iterdir()), *WORD_COUNT)
    plain = run(workers, *word_count_args(inputs, tmp_path / "plain", "--reducers", 2,
                                          "--keep-intermediate"))
    combined = run(workers, *word_count_args(inputs, tmp_path / "combined", "--reducers", 2,
                                             "--combiner", WORD_COUNT[1], "--keep-intermediate"))
    assert collect(workers, tmp_path / "plain") == expected
    assert collect(workers, tmp_path / "combined") == expected
    without = tree_size(job_directory(workers, plain) / "mapper-output")
    with_combiner = tree_size(job_directory(workers, combined) / "mapper-output")
    print(f"\nmapper-output bytes: {without} without the combiner, {with_combiner} with it")
    assert 0 < with_combiner < without, \
        f"mapper-output: {with_combiner} bytes with the combiner, {without} without"


def test_hash_partitions_past_the_soft_open_file_limit(cluster, tmp_path):
    """More hash partitions than the soft limit on open files: the limit is lifted."""
    inputs = text_inputs(tmp_path / "in")
    output = tmp_path / "out"

    def low_soft_limit():
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (LOW_OPEN_FILES, hard))

    args = word_count_args(inputs, output, "--reducers", 2 * LOW_OPEN_FILES,
                           "--partitioner", "hash")
    result = subprocess.run([PYTHON, str(SEND_JOB), "--sequential", *[str(a) for a in args]],
                            cwd=cluster.workdir, env=cluster.env, capture_output=True,
                            timeout=RUN_TIMEOUT, preexec_fn=low_soft_limit)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert len(visible_files(output)) == 2 * LOW_OPEN_FILES
    assert collect(cluster, output, merge=True) == sequential(sorted(inputs.iterdir()),
                                                              *WORD_COUNT)


def test_hash_partitioning(workers, tmp_path):
    """--partitioner hash, 3 reducers: each key in one file, files sorted, merge = sequential."""
    inputs = text_inputs(tmp_path / "in")
    output = tmp_path / "out"
    run(workers, *word_count_args(inputs, output, "--reducers", 3, "--partitioner", "hash"))
    files = visible_files(output)
    assert [p.name for p in files] == ["input_0", "input_1", "input_2"]
    owner = {}
    for path in files:
        lines = path.read_bytes().splitlines()
        assert lines, f"{path.name} is empty"
        assert lines == sorted(lines), f"{path.name} is not sorted"
        for line in lines:
            assert owner.setdefault(key_of(line), path.name) == path.name, \
                f"key {key_of(line)!r} in {owner[key_of(line)]} and {path.name}"
    assert collect(workers, output, merge=True) == sequential(sorted(inputs.iterdir()),
                                                              *WORD_COUNT)


# --- 7. counters survive a retried task -----------------------------------------

COUNTING_MAPPER = """#!{python}
# Count input lines as a counter, say so as a status, wait, then run word count's map.
import subprocess, sys, time
data = sys.stdin.buffer.read()
sys.stderr.write("reporter:counter:test,lines,%d\\n" % data.count(b"\\n"))
sys.stderr.write("reporter:status:counted the lines\\n")
sys.stderr.flush()
time.sleep(1)
sys.stdout.buffer.write(subprocess.run([{mapper!r}], input=data, stdout=subprocess.PIPE,
                                       check=True).stdout)
"""


def busy_worker_in_map(cluster, processes):
    """A live worker process that holds a task while job 0 is mapping, or None."""
    status = helper.request("localhost", cluster.port, helper.job_status(0))
    if status.get("phase") != "map":
        return None
    busy = {w["pid"] for w in cluster.cluster_status()["workers"] if w["tasks"]}
    return next((p for p in processes if p.pid in busy and p.poll() is None), None)


def test_counters_exact_after_a_killed_worker(make_cluster, tmp_path):
    """A worker SIGKILLed mid-map: its task is redone and test.lines counts each line once."""
    cluster = make_cluster(FAST)
    processes = cluster.start_workers(WORKERS)
    inputs = repetitive_inputs(tmp_path / "in", files=6, words=400)
    total_lines = sum(p.read_bytes().count(b"\n") for p in inputs.iterdir())
    mapper = write_script(tmp_path / "counting_map.py",
                          COUNTING_MAPPER.format(python=PYTHON, mapper=str(WORD_COUNT[0])))
    output = tmp_path / "out"
    client = cluster.send_job_async(*word_count_args(inputs, output, "--mappers", 6,
                                                     "--reducers", 2, "--wait",
                                                     programs=(mapper, WORD_COUNT[1])))
    victim = wait_until(lambda: busy_worker_in_map(cluster, processes), timeout=60,
                        interval=0.02, what="a busy worker in the map phase")
    victim.send_signal(signal.SIGKILL)
    victim.wait(5)
    stdout, stderr = client.communicate(timeout=RUN_TIMEOUT)
    text = stdout.decode()
    assert client.returncode == 0, text + stderr.decode() + cluster.master_log()[-3000:]
    assert re.search(rf"map task \d+ reassigned from dead worker {victim.pid}", text), text
    assert counters(text) == {"test.lines": total_lines}
    assert collect(cluster, output) == sequential(sorted(inputs.iterdir()), *WORD_COUNT)


# --- 8. sequential mode is byte-identical to the cluster --------------------------

def hamming_file(directory, encoded):
    """A 200 kB random file, raw or already encoded; return its path."""
    raw = random.Random(4).randbytes(200_000)
    data = program_output(HAMMING / "encode.py", raw) if encoded else raw
    return write_files(directory, {"data.bin": data}) / "data.bin"


PROGRAMS = {
    "word_count_py": lambda d: ("--input", text_inputs(d), "--mapper", WORD_COUNT[0],
                                "--reducer", WORD_COUNT[1], "--reducers", 3,
                                "--split-size", 100),
    "word_count_sh": lambda d: ("--input", text_inputs(d), "--mapper", WORD_COUNT_SH[0],
                                "--reducer", WORD_COUNT_SH[1], "--reducers", 3,
                                "--split-size", 100),
    "grep": lambda d: ("--input", text_inputs(d), "--mapper", GREP[0], "--reducer", GREP[1],
                       "--reducers", 2, "--env", "GREP_PATTERN=the"),
    "sort": lambda d: ("--input", text_inputs(d), "--mapper", SORT[0], "--reducer", SORT[1],
                       "--reducers", 3, "--split-size", 300),
    "hamming_encode": lambda d: ("--input-file", hamming_file(d, encoded=False),
                                 "--mapper", HAMMING / "encode.py", "--reducers", 0,
                                 "--record-size", 1, "--split-size", 65_537),
    "hamming_decode": lambda d: ("--input-file", hamming_file(d, encoded=True),
                                 "--mapper", HAMMING / "decode.py", "--reducers", 0,
                                 "--record-size", 2, "--split-size", 50_001),
}


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_sequential_mode_matches_the_cluster(workers, tmp_path, program):
    """send_job.py --sequential and the cluster give byte-identical output files."""
    options = PROGRAMS[program](tmp_path / "in")
    run(workers, *options, "--output", tmp_path / "cluster")
    run_sequential(workers, *options, "--output", tmp_path / "sequential")
    on_cluster = collect(workers, tmp_path / "cluster")
    assert on_cluster
    assert collect(workers, tmp_path / "sequential") == on_cluster
    names = sorted(output_files(tmp_path / "cluster"))
    assert sorted(output_files(tmp_path / "sequential")) == names
    for name in names:
        assert (tmp_path / "sequential" / name).read_bytes() == \
            (tmp_path / "cluster" / name).read_bytes(), name


# --- 9. too many splits ------------------------------------------------------------

@pytest.mark.parametrize("record_size", [None, 1], ids=["lines", "records"])
def test_too_many_splits_fails_clearly(cluster, tmp_path, record_size):
    """A split size making over MAX_SPLITS splits fails the job, named; the next job runs."""
    cluster.start_worker()
    inputs = write_files(tmp_path / "in", {"many": b"x\n" * (MAX_SPLITS + 1)})
    options = ["--input", inputs, "--split-size", 1]
    if record_size:
        options += ["--record-size", record_size]
    failed = send_job(cluster, *options, "--output", tmp_path / "bad", "--wait")
    text = failed.stdout.decode() + failed.stderr.decode()
    assert failed.returncode == 1, text
    assert f"more than {MAX_SPLITS} splits" in text, text
    assert not (tmp_path / "bad").exists()
    splits_dir = cluster.workdir / "var" / f"job-{job_id(text)}" / "splits"
    assert not splits_dir.exists() or not any(splits_dir.iterdir())

    sequential_run = send_job(cluster, *options, "--output", tmp_path / "bad-seq",
                              sequential_mode=True)
    assert sequential_run.returncode == 1
    assert f"more than {MAX_SPLITS} splits" in sequential_run.stderr.decode()

    output = tmp_path / "good"
    run(cluster, *word_count_args(SAMPLE, output))
    assert collect(cluster, output) == sequential(sorted(SAMPLE.iterdir()), *WORD_COUNT)
