"""The same jobs on Apache Spark (`send_job.py --runner spark`, local mode) as on our cluster.

Each job runs on our cluster (master.py and worker.py processes) and then
on Spark from send_job.py, and the outputs are compared byte for byte after
collect.py, or file by file where the partitioning is the same (hash, map
only). Spark runs in a session of its own, which must be empty once
send_job.py has exited: no JVM or Python worker left behind.

PySpark and Java are optional dependencies: without them these tests skip,
except where MAPREDUCE_REQUIRE_SPARK=1 (CI installs both and sets it).
Also here: what --runner spark says without PySpark or Java, and the
Hadoop Streaming command of --runner hadoop --print-command.
"""
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import (EXEC, GREP, PYTHON, REPO, WORD_COUNT, session_members, wait_until,
                      write_files)
from support.programs import write_script
from support.summary import FRAMEWORK, all_counters, counters

SEND_JOB = REPO / "send_job.py"
# send_job.py with --wait's progress polling Spark every 10 ms instead of every 0.5 s.
POLLING_OFTEN = (f"import runpy, sys; sys.path.insert(0, {str(REPO)!r}); "
                 f"from mrlib import sparkrun; sparkrun.PROGRESS_SECONDS = 0.01; "
                 f"sys.argv[0] = {str(SEND_JOB)!r}; runpy.run_path(sys.argv[0], run_name='__main__')")
COLLECT = REPO / "collect.py"
SAMPLE = REPO / "input" / "sample1"
SPARK_TIMEOUT = 300
HAVE_SPARK = importlib.util.find_spec("pyspark") is not None and shutil.which("java")
needs_spark = pytest.mark.skipif(
    not HAVE_SPARK and os.environ.get("MAPREDUCE_REQUIRE_SPARK") != "1",
    reason="PySpark or Java is not installed (pip install '.[spark]')")
AWK_MAP = "#!/usr/bin/awk -f\n{ for (i = 1; i <= NF; i++) print $i \"\\t1\" }\n"
AWK_REDUCE = ("#!/usr/bin/awk -f\nBEGIN { FS = \"\\t\" }\n"
              "$1 != key { if (NR > 1) print key \"\\t\" n; key = $1; n = 0 }\n"
              "{ n += $2 }\nEND { if (NR > 0) print key \"\\t\" n }\n")


def spark_job(workdir, *args, env=None):
    """send_job.py --runner spark in a session of its own; the CompletedProcess, once
    nothing of the session is left."""
    process = subprocess.Popen(
        [PYTHON, str(SEND_JOB), "--runner", "spark", "--wait", *[str(a) for a in args]],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=SPARK_TIMEOUT)
    finally:
        process.kill()
    wait_until(lambda: not session_members(process.pid), timeout=30,
               what="Spark's processes to exit with send_job.py")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run_both(cluster, tmp_path, *job):
    """The job on our cluster and on Spark: (cluster output dir, Spark output dir, stdout)."""
    ours, theirs = tmp_path / "cluster-out", tmp_path / "spark-out"
    tmp_path.mkdir(parents=True, exist_ok=True)
    result = cluster.send_job(*job, "--output", ours, "--wait")
    assert result.returncode == 0, result.stderr.decode() + cluster.master_log()[-2000:]
    result = spark_job(tmp_path, *job, "--output", theirs)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    return ours, theirs, result.stdout.decode()


def collected(directory, *extra):
    destination = Path(str(directory) + ".all")
    subprocess.run([PYTHON, str(COLLECT), str(directory), str(destination), *extra],
                   check=True, capture_output=True, timeout=60)
    return destination.read_bytes()


def files_of(directory):
    return {p.name: p.read_bytes() for p in sorted(Path(directory).iterdir())}


@pytest.fixture
def workers(cluster):
    cluster.start_workers(2)
    return cluster


@needs_spark
def test_sample_word_count_on_spark_equals_the_cluster(workers, tmp_path):
    """The sample job, range-partitioned over 2 reducers: the same bytes after collect,
    the same output names, and the same built-in counters."""
    ours, theirs, stdout = run_both(workers, tmp_path, "--input", SAMPLE, "--mapper",
                                    WORD_COUNT[0], "--reducer", WORD_COUNT[1])
    assert collected(theirs) == collected(ours)
    assert sorted(files_of(theirs)) == ["input_0", "input_1"]
    status = workers.send_job("--status", 0)
    assert all_counters(stdout)[FRAMEWORK] == all_counters(status.stdout.decode())[FRAMEWORK]
    assert "reduce phase" in stdout  # --wait's progress, from Spark's status tracker


@needs_spark
def test_hash_partitioned_job_with_combiner_gives_the_same_files(workers, tmp_path):
    """--partitioner hash --reducers 3 --combiner, with splits: every file is the cluster's."""
    ours, theirs, _ = run_both(workers, tmp_path, "--input", SAMPLE, "--mapper", WORD_COUNT[0],
                               "--reducer", WORD_COUNT[1], "--combiner", WORD_COUNT[1],
                               "--reducers", 3, "--partitioner", "hash", "--split-size", 100)
    assert files_of(theirs) == files_of(ours)


@needs_spark
def test_map_only_and_awk_jobs_on_spark(workers, tmp_path):
    """A map-only grep with --env and --output-base, and an awk word count with counters
    from reporter lines: the same output files as the cluster's."""
    ours, theirs, _ = run_both(workers, tmp_path / "grep", "--input", SAMPLE, "--mapper",
                               GREP[0], "--reducers", 0, "--env", "GREP_PATTERN=the",
                               "--output-base", "found")
    assert files_of(theirs) == files_of(ours) and files_of(ours)
    awk_map = write_script(tmp_path / "map.awk", AWK_MAP)
    awk_reduce = write_script(tmp_path / "reduce.awk", AWK_REDUCE.replace(
        "END {", "END { print \"reporter:counter:awk,keys,\" NR > \"/dev/stderr\"; "))
    ours, theirs, stdout = run_both(workers, tmp_path / "awk", "--input", SAMPLE,
                                    "--mapper", awk_map, "--reducer", awk_reduce)
    assert collected(theirs) == collected(ours)
    assert counters(stdout)["awk.keys"] == all_counters(stdout)[FRAMEWORK]["Reduce input records"]


@needs_spark
def test_binary_records_and_a_python_job_on_spark(workers, tmp_path):
    """Records with newline and tab bytes sorted by --key-size, and a Python job, as the
    cluster runs them."""
    import random
    rng = random.Random(3)
    made = [rng.randbytes(20) + b"\n\t" for _ in range(3000)]
    inputs = write_files(tmp_path / "in", {"a": b"".join(made[:1000]), "b": b"".join(made[1000:])})
    ours, theirs, _ = run_both(workers, tmp_path / "records", "--input", inputs, "--mapper",
                               "/bin/cat", "--reducer", "/bin/cat", "--record-size", 22,
                               "--key-size", 4, "--reducers", 3, "--split-size", 2200)
    assert collected(theirs) == collected(ours) == b"".join(sorted(made))
    ours, theirs, _ = run_both(workers, tmp_path / "python", "--input", SAMPLE, "--job",
                               REPO / "bench" / "programs" / "wc_job.py:WordCount")
    assert collected(theirs) == collected(ours)


@needs_spark
def test_a_failing_program_fails_the_spark_job_with_its_probable_cause(tmp_path):
    """The map program's exit code and stderr reach the user as our cluster shows them."""
    failing = write_script(tmp_path / "fail.sh", "#!/bin/sh\necho 'no such word list' >&2\n"
                                                 "exit 3\n")
    result = spark_job(tmp_path, "--input", SAMPLE, "--output", tmp_path / "out",
                       "--mapper", failing, "--max-attempts", 1)
    assert result.returncode == 1
    error = result.stderr.decode()
    assert "exit code: 3" in error and "no such word list" in error
    assert "map task" in error
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_without_pyspark_or_java_spark_runner_says_so_in_one_line(tmp_path):
    """No PySpark: one line naming the extra, exit 2; no java on the PATH: one line too."""
    fake = tmp_path / "fake"
    write_script(fake / "pyspark" / "__init__.py", "raise ImportError('no pyspark here')\n")
    env = dict(os.environ, PYTHONPATH=str(fake))
    result = subprocess.run([PYTHON, str(SEND_JOB), "--runner", "spark", "--input", SAMPLE,
                             "--output", tmp_path / "out"], env=env, capture_output=True,
                            timeout=60)
    if shutil.which("java"):
        assert result.returncode == 2
        assert result.stderr.decode().strip().splitlines() == [
            "send_job: --runner spark needs PySpark, which is not installed: "
            "pip install 'mapreduce-server[spark]' (or pip install pyspark)"]
    bare = write_files(tmp_path / "bin", {})
    for tool in ("sort", "cut", "uniq", "wc"):
        os.symlink(shutil.which(tool), bare / tool)
    env = {key: value for key, value in os.environ.items() if key != "JAVA_HOME"}
    env["PATH"] = str(bare)
    result = subprocess.run([PYTHON, str(SEND_JOB), "--runner", "spark", "--input", SAMPLE,
                             "--output", tmp_path / "out2"], env=env, capture_output=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.decode().strip().splitlines() == [
        "send_job: --runner spark needs Java 17 or later on the PATH (or JAVA_HOME): none found"]


def test_hadoop_streaming_command(tmp_path):
    """--runner hadoop --print-command: the programs shipped with -files and named by base
    name, every setting as Hadoop's option, parseable by a shell."""
    result = subprocess.run([PYTHON, str(SEND_JOB), "--runner", "hadoop", "--print-command",
                             "--input", SAMPLE, "--output", tmp_path / "out", "--mapper",
                             WORD_COUNT[0], "--reducer", WORD_COUNT[1], "--combiner",
                             WORD_COUNT[1], "--reducers", "3", "--env", "LANG=C", "--split-size",
                             "4096", "--timeout", "30", "--max-attempts", "2"],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    text = result.stdout.decode()
    command = [line for line in text.splitlines() if not line.startswith("#")]
    words = shlex.split("\n".join(command).replace("\\\n", " "))
    assert words[:2] == ["hadoop", "jar"]
    options = list(zip(words[3::2], words[4::2]))
    assert ("-files", f"{WORD_COUNT[0]},{WORD_COUNT[1]}") in options
    expected = [("-input", str(SAMPLE)), ("-output", str(tmp_path / "out")),
                ("-mapper", "map.py"), ("-reducer", "reduce.py"), ("-combiner", "reduce.py"),
                ("-numReduceTasks", "3"), ("-cmdenv", "LANG=C"),
                ("-D", "mapreduce.input.fileinputformat.split.maxsize=4096"),
                ("-D", "mapreduce.task.timeout=30000"), ("-D", "mapreduce.map.maxattempts=2")]
    for pair in expected:
        assert pair in options, (pair, text)
    last_generic = max(i for i, (option, _) in enumerate(options) if option in ("-D", "-files"))
    first_streaming = min(i for i, (option, _) in enumerate(options) if option == "-input")
    assert last_generic < first_streaming  # Hadoop reads generic options first
    result = subprocess.run([PYTHON, str(SEND_JOB), "--runner", "hadoop", "--print-command",
                             "--input", SAMPLE, "--output", tmp_path / "out", "--mapper",
                             "/bin/cat", "--reducers", "0"], capture_output=True, timeout=60)
    assert "-reducer NONE" in result.stdout.decode()  # map only


@pytest.mark.parametrize("job_class, options, phase", [
    ("Counted", [], "map-only"), ("CountedReduced", ["--reducers", "0"], "map-only"),
    ("CountedReduced", [], "map")])
def test_hadoop_command_of_a_python_job(tmp_path, job_class, options, phase):
    """A Python job's map program under Hadoop: without reducers it combines nothing."""
    job = tmp_path / "job.py"
    job.write_text(textwrap.dedent("""
        from mrlib import Job


        class Counted(Job):
            def mapper(self, key, line):
                yield line, 1

            def combiner(self, key, counts):
                yield key, sum(counts)


        class CountedReduced(Counted):
            def reducer(self, key, counts):
                yield key, sum(counts)
        """))
    result = subprocess.run([PYTHON, str(SEND_JOB), "--runner", "hadoop", "--print-command",
                             "--input", SAMPLE, "--output", tmp_path / "out", "--job",
                             f"{job}:{job_class}", *options], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    words = shlex.split(result.stdout.decode().replace("\\\n", " "), comments=True)
    mapper = words[words.index("-mapper") + 1]
    assert mapper == f"python3 -m mrlib.pyjobrun {phase} job.py {job_class}"


@pytest.mark.parametrize("options, words", [
    (["--runner", "hadoop"], "--print-command prints the command"),
    (["--print-command"], "give --runner hadoop"),
    (["--spark-master", "local[2]"], "give --runner spark"),
    (["--runner", "spark", "6000"], "runs without our master: drop 6000"),
    (["--runner", "spark", "--sequential"], "cannot go together"),
])
def test_runner_options_that_do_not_go_together(tmp_path, options, words):
    result = subprocess.run([PYTHON, str(SEND_JOB), "--input", SAMPLE, "--output",
                             tmp_path / "out", *options], capture_output=True, timeout=60)
    assert result.returncode == 2
    assert words in result.stderr.decode()


@needs_spark
def test_keys_with_bytes_below_tab_keep_range_order_on_spark(tmp_path):
    """Keys a\\x01\\x01, a\\x01, a and b over 2 range partitions: Spark never cuts at a key
    holding a byte at or below the tab, so collect gives --sequential's order."""
    words = [b"a\x01 ", b"a ", b"a\x01\x01 ", b"b "]
    inputs = write_files(tmp_path / "in", {"f": b"".join(w * 50 for w in words) + b"\n",
                                          "g": b"".join(w * 7 for w in reversed(words)) + b"\n"})
    job = ("--input", inputs, "--mapper", WORD_COUNT[0], "--reducer", WORD_COUNT[1])
    result = spark_job(tmp_path, *job, "--output", tmp_path / "spark")
    assert result.returncode == 0, result.stderr.decode()
    subprocess.run([PYTHON, str(SEND_JOB), "--sequential", *map(str, job), "--output",
                    str(tmp_path / "seq")], check=True, capture_output=True, timeout=120)
    assert collected(tmp_path / "spark") == collected(tmp_path / "seq")


@needs_spark
def test_a_terminated_spark_job_leaves_no_program_or_scratch_behind(tmp_path):
    """SIGTERM mid-map: send_job stops Spark; the programs (and what they started) die,
    the scratch directory beside the output goes, no output appears, and nothing prints
    a traceback (--wait's progress polls Spark often here, so a poll meets the JVM's end)."""
    naps = f"1000.{os.getpid()}"  # this test's sleeps, and no other's
    hang = write_script(tmp_path / "hang.sh", f"#!/bin/sh\nsleep {naps} &\nexec sleep {naps}\n")
    process = subprocess.Popen(
        [PYTHON, "-c", POLLING_OFTEN, "--runner", "spark", "--input", str(SAMPLE), "--output",
         str(tmp_path / "out"), "--mapper", str(hang), "--wait"], cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_until(lambda: any(sleeper(pid, naps) for pid in all_pids()), timeout=120,
                   what="the map program to start")
        process.terminate()
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 128 + 15
        assert b"Traceback" not in stderr  # py4j's complaints about the lost gateway
    finally:
        process.kill()
    wait_until(lambda: not any(sleeper(pid, naps) for pid in all_pids()), timeout=30,
               what="the programs to die")
    assert not list(tmp_path.glob(".mapreduce-sequential-*"))
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def all_pids():
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def command_line(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def sleeper(pid, naps):
    """A `sleep NAPS` that this test's program started."""
    return command_line(pid) == f"sleep\0{naps}\0".encode()
