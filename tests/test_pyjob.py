"""Python jobs (mrlib.Job) through send_job --job, the Python API and --sequential,
with their code shipped: each output compared with the job computed here in plain
Python, as JSON lines in bytewise key order."""
import collections
import io
import itertools
import json
import random
import signal
import subprocess
import sys
import textwrap

import pytest

import helper
from conftest import JOB_TIMEOUT, PYTHON, REPO, write_files
from mrlib import pyjob
from support.localcluster import wait_until
from support.summary import all_counters

pytestmark = pytest.mark.timeout(180)

TEXT = {"a": "the cat sat on the mat\nthe end".encode(),
        "b": "café crème, déjà vu\n\n  spaced   out  \n".encode(),
        "c": b"bytes \xff\xfe not utf-8 \x80\n" + b"one two three\n" * 40}
WORD_COUNT = """
from mrlib import Job


class WordCount(Job):
    def mapper(self, key, line):
        for word in line.split():
            yield word, 1

    def combiner(self, word, counts):
        yield word, sum(counts)

    def reducer(self, word, counts):
        yield word, sum(counts)
"""


PEAK_KIB = """
from mrlib import Job


def peak_kib():  # this program's peak memory, not its parent's before the exec
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
"""


def write_job(directory, source, name="job.py"):
    """The job file: `source` dedented (or PEAK_KIB and a dedented source)."""
    path = directory / name
    head, peak, body = source.rpartition(PEAK_KIB)
    path.write_text(head + peak + textwrap.dedent(body))
    return path


def lines_of(pairs):
    """A job's whole output for these pairs: JSON lines sorted by key bytes."""
    lines = [f"{pyjob.encode_key(k)}\t{json.dumps(v)}\n".encode() for k, v in pairs]
    return b"".join(sorted(lines))


def words(data):
    return data.decode("utf-8", "surrogateescape").split()


def output_of(directory):
    return b"".join(p.read_bytes() for p in sorted(directory.iterdir(),
                                                   key=lambda p: int(p.name.split("_")[1])))


def submit(cluster, *args, **kwargs):
    result = cluster.send_job(*args, **kwargs)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    return result


def sequential(tmp_path, *args):
    result = subprocess.run([PYTHON, REPO / "send_job.py", "--sequential", *map(str, args)],
                            cwd=tmp_path, capture_output=True, timeout=JOB_TIMEOUT)
    assert result.returncode == 0, result.stderr.decode()
    return result


def test_word_count_with_a_combiner_matches_plain_python(cluster, tmp_path):
    cluster.start_workers(2)
    inputs = write_files(tmp_path / "in", TEXT)
    job = write_job(tmp_path, WORD_COUNT)
    counts = collections.Counter(w for data in TEXT.values() for w in words(data))
    want = lines_of(counts.items())
    result = submit(cluster, "--job", job, "--input", inputs, "--output", tmp_path / "out",
                    "--split-size", 100, "--reducers", 3, "--wait")
    assert output_of(tmp_path / "out") == want
    framework = all_counters(result.stdout.decode())["Map-Reduce Framework"]
    assert framework["Combine input records"] == sum(counts.values())
    assert framework["Reduce output records"] == len(counts)
    sequential(tmp_path, "--job", f"{job}:WordCount", "--input", inputs, "--output",
               tmp_path / "alone", "--reducers", 3)
    assert output_of(tmp_path / "alone") == want


def test_init_final_counters_and_status(cluster, tmp_path):
    cluster.start_worker()
    inputs = write_files(tmp_path / "in", TEXT)
    job = write_job(tmp_path, """
        from mrlib import Job


        class Lengths(Job):
            def mapper_init(self):
                self.longest = 0
                yield "__tasks__", 1

            def mapper(self, key, line):
                print("debugging:", line)  # goes to the attempt's log, not the output
                self.increment_counter("lines", "seen")
                self.longest = max(self.longest, len(line))
                yield len(line), [line[:3]]

            def mapper_final(self):
                self.set_status("done mapping")
                yield "__longest__", self.longest

            def reducer_init(self):
                self.groups = 0

            def reducer(self, length, values):
                self.groups += 1
                yield length, sorted(values) if length not in ("__tasks__", "__longest__") \\
                    else max(values) if length == "__longest__" else sum(values)

            def reducer_final(self):
                self.increment_counter("groups", "reduced", self.groups)
        """)
    result = submit(cluster, "--job", job, "--input", inputs, "--output", tmp_path / "out",
                    "--mappers", 3, "--reducers", 2, "--wait")
    lines = [line.decode("utf-8", "surrogateescape") for data in TEXT.values()
             for line in data.split(b"\n")[:len(data.split(b"\n")) - (data.endswith(b"\n"))]]
    by_length = collections.defaultdict(list)
    for line in lines:
        by_length[len(line)].append([line[:3]])
    want = [(n, sorted(v)) for n, v in by_length.items()]
    want += [("__tasks__", len(TEXT)), ("__longest__", max(map(len, lines)))]
    assert output_of(tmp_path / "out") == lines_of(want)
    shown = all_counters(result.stdout.decode())
    assert shown["lines"] == {"seen": len(lines)}
    assert shown["groups"] == {"reduced": len(want)}


def test_a_job_without_a_reducer_is_map_only(cluster, tmp_path):
    cluster.start_worker()
    inputs = write_files(tmp_path / "in", TEXT)
    job = write_job(tmp_path, """
        from mrlib import Job


        class Upper(Job):
            def mapper(self, key, line):
                yield key, line.upper()
        """)
    submit(cluster, "--job", job, "--input", inputs, "--output", tmp_path / "out", "--wait")
    produced = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(produced) == len(TEXT)  # one output per input, no reduce phase
    for name, data in TEXT.items():
        [path] = [tmp_path / "out" / p for p in produced if p.endswith(name)]
        expected = [(None, line.upper()) for line in
                    data.decode("utf-8", "surrogateescape").split("\n")]
        if data.endswith(b"\n"):
            expected.pop()
        got = [pyjob.decode_pair(line) for line in path.read_bytes().splitlines(True)]
        assert got == [tuple(pair) for pair in expected]


@pytest.mark.parametrize("job_class, options", [("Counted", []),
                                                ("CountedReduced", ["--reducers", 0])])
def test_a_map_only_job_does_not_combine(tmp_path, job_class, options):
    """Without reducers the map output is the job's output: a combiner is not run on it
    (as in Hadoop), so each input's output is its mapper's pairs, in input order."""
    inputs = write_files(tmp_path / "in", TEXT)
    job = write_job(tmp_path, """
        from mrlib import Job


        class Counted(Job):
            def mapper(self, key, line):
                for word in line.split():
                    yield word, 1

            def combiner(self, word, counts):
                yield word, sum(counts)


        class CountedReduced(Counted):
            def reducer(self, word, counts):
                yield word, sum(counts)
        """)
    sequential(tmp_path, "--job", f"{job}:{job_class}", "--input", inputs, "--output",
               tmp_path / "out", *options)
    assert output_of_any(tmp_path / "out") == b"".join(
        f"{pyjob.encode_key(word)}\t1\n".encode()
        for name in sorted(TEXT) for word in words(TEXT[name]))


def test_a_combined_key_is_written_as_the_mapper_gave_it(tmp_path):
    """A key JSON decodes to one that encodes otherwise (a dict's int keys come back as
    str, and sort otherwise): given back by the combiner, it is written as the mapper's
    was, so the job's groups are those it has without a combiner."""
    inputs = write_files(tmp_path / "in", {"a": b"int\nstr\nint\n", "b": b"str\nint\n"})
    job = write_job(tmp_path, """
        from mrlib import Job


        class Keyed(Job):
            def mapper(self, key, line):
                yield ({9: "x", 10: [1]} if line == "int" else {"9": "x", "10": [1]}), 1
                yield ({2: 1} if line == "int" else (2, 1)), 1  # a tuple is a list in JSON

            def reducer(self, key, counts):
                yield key, sum(counts)


        class KeyedCombined(Keyed):
            def combiner(self, key, counts):
                yield key, sum(counts)
        """)
    for name in ["Keyed", "KeyedCombined"]:
        sequential(tmp_path, "--job", f"{job}:{name}", "--input", inputs, "--output",
                   tmp_path / name, "--reducers", 2)
    assert output_of(tmp_path / "KeyedCombined") == output_of(tmp_path / "Keyed")
    assert len(output_of(tmp_path / "Keyed").splitlines()) == 4


def test_the_job_runs_the_code_submitted_not_the_file_later(cluster, tmp_path):
    """No worker yet: the job waits in the queue while its file (and a shipped module
    it imports) change; it runs what was submitted."""
    inputs = write_files(tmp_path / "in", {"x": b"a b a\n"})
    code = tmp_path / "code"
    code.mkdir()
    write_job(code, "WEIGHT = 1\n", name="weights.py")
    job = write_job(code, """
        from mrlib import Job
        from weights import WEIGHT


        class Weighted(Job):
            def mapper(self, key, line):
                for word in line.split():
                    yield word, WEIGHT

            def reducer(self, word, weights):
                yield word, sum(weights)
        """)
    submit(cluster, "--job", job, "--ship", code / "weights.py", "--input", inputs,
           "--output", tmp_path / "out")
    write_job(code, "WEIGHT = 100\n", name="weights.py")
    job.write_text("raise SystemExit('the edited file ran')\n")
    cluster.start_worker()
    wait_until(lambda: helper.request("localhost", cluster.port, helper.job_status(0))
               ["state"] not in ("queued", "running"), JOB_TIMEOUT, what="the job to end")
    assert output_of(tmp_path / "out") == lines_of([("a", 2), ("b", 1)])


def test_a_broken_job_fails_once_with_its_traceback(cluster, tmp_path):
    cluster.start_workers(2)
    inputs = write_files(tmp_path / "in", TEXT)
    job = write_job(tmp_path, """
        from mrlib import Job


        class Broken(Job):
            def mapper_init(self):
                raise ValueError("no model file here")

            def mapper(self, key, line):
                yield line, 1
        """)
    result = cluster.send_job("--job", job, "--input", inputs, "--output", tmp_path / "out",
                              "--wait")
    assert result.returncode == 1
    shown = result.stderr.decode()
    assert "ValueError: no model file here" in shown and "Traceback" in shown, shown
    assert "attempt 1 on worker" in shown and "not tried again" in shown, shown


def test_a_job_file_that_does_not_load_is_refused_at_submission(cluster, tmp_path):
    job = write_job(tmp_path, "from mrlib import Job\nclass Bad(Job):\n    def mapper(self\n")
    result = cluster.send_job("--job", job, "--input", tmp_path, "--output", tmp_path / "o")
    assert result.returncode == 2
    assert "SyntaxError" in result.stderr.decode(), result.stderr.decode()
    none = write_job(tmp_path, "X = 1\n", name="none.py")
    result = cluster.send_job("--job", none, "--input", tmp_path, "--output", tmp_path / "o")
    assert result.returncode == 2 and "defines 0 Job subclasses" in result.stderr.decode()


def test_the_python_api_runs_on_the_cluster_and_here(cluster, tmp_path):
    cluster.start_workers(2)
    inputs = write_files(tmp_path / "in", TEXT)
    script = write_job(tmp_path, WORD_COUNT + """

if __name__ == "__main__":
    import json, sys
    on_cluster = list(WordCount().run(input=sys.argv[1], master=sys.argv[2], reducers=3))
    here = list(WordCount().run(input=sys.argv[1], sequential=True))
    print(json.dumps([on_cluster, here]))
""", name="wc.py")
    result = subprocess.run([PYTHON, script, inputs, f"localhost:{cluster.port}"],
                            capture_output=True, timeout=JOB_TIMEOUT, cwd=tmp_path,
                            env=dict(cluster.env, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr.decode()
    on_cluster, here = json.loads(result.stdout)
    counts = collections.Counter(w for data in TEXT.values() for w in words(data))
    want = sorted(([k, v] for k, v in counts.items()), key=lambda p: pyjob.encode_key(p[0]))
    assert sorted(on_cluster, key=lambda p: pyjob.encode_key(p[0])) == want
    assert here == on_cluster  # both in partition order: the same bytes


def test_an_interrupted_run_cancels_its_job_and_leaves_no_files(cluster, tmp_path):
    """Ctrl-C (SIGINT) in run() cancels the job it submitted: nobody else would read its
    output (it ran on, and the master wrote it into the removed temporary directory)."""
    cluster.start_worker()
    inputs = write_files(tmp_path / "in", {"a": b"one two\n" * 5, "b": b"three\n"})
    script = write_job(tmp_path, """
        import sys, time
        from mrlib import Job


        class Slow(Job):
            def mapper(self, key, line):
                time.sleep(0.5)
                yield line, 1


        if __name__ == "__main__":
            list(Slow().run(input=sys.argv[1], master=sys.argv[2]))
        """, name="slow.py")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    run = subprocess.Popen([PYTHON, script, inputs, f"localhost:{cluster.port}"],
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=dict(cluster.env, PYTHONPATH=str(REPO), TMPDIR=str(scratch)))
    try:
        wait_until(lambda: b"running" in cluster.send_job("--status", 0).stdout, JOB_TIMEOUT,
                   what="the job to run")
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=JOB_TIMEOUT)
        assert run.returncode != 0
        assert b"KeyboardInterrupt" in stderr
        assert b"cancelled" in cluster.send_job("--status", 0).stdout
        assert list(scratch.iterdir()) == []
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()


def test_a_shipped_program_runs_from_the_snapshot(cluster, tmp_path):
    inputs = write_files(tmp_path / "in", {"x": b"hello\n"})
    mapper = tmp_path / "map.sh"
    mapper.write_text("#!/bin/sh\nsed 's/^/v1 /'\n")
    mapper.chmod(0o755)
    submit(cluster, "--mapper", mapper, "--ship", mapper, "--reducers", 0, "--input", inputs,
           "--output", tmp_path / "out")
    mapper.write_text("#!/bin/sh\nsed 's/^/v2 /'\n")
    cluster.start_worker()
    wait_until(lambda: helper.request("localhost", cluster.port, helper.job_status(0))
               ["state"] == "succeeded", JOB_TIMEOUT, what="the job to succeed")
    assert output_of_any(tmp_path / "out") == b"v1 hello\n"


def output_of_any(directory):
    return b"".join(p.read_bytes() for p in sorted(directory.iterdir()))


def test_combining_in_a_small_memory_flushes_and_stays_right(tmp_path):
    """A dict too small for all that a map gives: combined, written, held again."""
    class Sum(pyjob.Job):
        def combiner(self, key, values):
            yield key, sum(values)

    out = io.BytesIO()
    combining = pyjob.Combining(Sum().combiner, pyjob.Output(out), 20_000)
    for number in range(5000):
        combining.write(f"k{number % 397}", 1)
        combining.write([number % 3], 2)
    combining.flush()
    written = [pyjob.decode_pair(line) for line in out.getvalue().splitlines()]
    totals = collections.Counter()
    for key, value in written:
        totals[json.dumps(key)] += value
    assert totals == {**{json.dumps(f"k{n}"): len(range(n, 5000, 397)) for n in range(397)},
                      **{json.dumps([n]): 2 * len(range(n, 5000, 3)) for n in range(3)}}
    assert 400 < len(written) < 10_000, "combined, and written in several flushes"
    assert combining.taken == 10000 and combining.given == len(written)


def test_one_hot_key_is_combined_in_memory_not_written():
    class Sum(pyjob.Job):
        def combiner(self, key, values):
            yield key, sum(values)

    limit = 64 * 1024  # about 1,000 values
    combining = pyjob.Combining(Sum().combiner, None, limit)  # writes nothing: no output
    for _ in range(100_000):
        combining.write("the", 1)
    assert len(combining.held["the"]) <= limit // pyjob.VALUE_COST_BYTES
    assert sum(combining.held["the"]) == 100_000


@pytest.mark.parametrize("combined", [False, True], ids=["plain", "combined"])
def test_the_mapper_sees_each_line_as_hadoops_line_reader_gives_it(combined):
    """Lines are read, decoded and mapped a batch at a time: still each line once, in
    order, without its newline or the \\r before it, undecodable bytes kept, across batch
    boundaries and with no newline at the end."""
    class Lines(pyjob.Job):
        def mapper(self, key, line):
            yield len(self.seen), line
            self.seen.append(line)

    class CombinedLines(Lines):
        def combiner(self, key, values):
            yield from ((key, value) for value in values)

    pieces = [b"plain", b"dos\r\n", b"cr\rinside", b"two\r\r\n", b"", b"\xff\xfe\x80",
              b"cut \xe2\x82", b"euro \xe2\x82\xac", b"tab\tand \x00"]
    lines = [pieces[n * 7 % len(pieces)] + b"%d" % n for n in range(30_000)]
    data = b"\n".join(lines) + b"\r"  # about 5 read batches; the last line has no newline
    assert len(data) > 4 * pyjob.READ_BATCH_BYTES
    job = (CombinedLines if combined else Lines)()
    job.seen = []
    out = io.BytesIO()
    pyjob.run_map(job, io.BufferedReader(io.BytesIO(data)), out)
    split = data.split(b"\n")
    expected = [line[:-1] if line.endswith(b"\r") and number < len(split) - 1 else line
                for number, line in enumerate(split)]
    assert job.seen == [line.decode("utf-8", "surrogateescape") for line in expected]
    pairs = sorted(pyjob.decode_pair(line) for line in out.getvalue().splitlines())
    assert pairs == list(enumerate(job.seen))


def test_a_module_the_job_imports_but_does_not_ship_is_missed_at_submission(cluster, tmp_path):
    inputs = write_files(tmp_path / "in", {"x": b"a\n"})
    write_job(tmp_path, "WEIGHT = 1\n", name="weights.py")
    job = write_job(tmp_path, """
        from mrlib import Job
        from weights import WEIGHT


        class Weighted(Job):
            def mapper(self, key, line):
                yield line, WEIGHT
        """)
    result = cluster.send_job("--job", job, "--input", inputs, "--output", tmp_path / "out")
    assert result.returncode == 2 and "No module named 'weights'" in result.stderr.decode()
    submit(cluster, "--job", job, "--ship", tmp_path / "weights.py", "--ship", job,
           "--input", inputs, "--output", tmp_path / "out")  # the job file twice: once


@pytest.mark.parametrize("source, says", [
    ("class NoMapper(Job):\n    pass\n", "NoMapper defines no mapper"),
    ("class Calls(Job):\n    def mapper(self, key, line):\n        yield line, 1\n\n"
     "Calls().run(input='.', sequential=True)\n", "guard the call with"),
])
def test_a_job_that_cannot_run_is_refused_at_submission(cluster, tmp_path, source, says):
    job = write_job(tmp_path, "from mrlib import Job\n\n\n" + source)
    result = cluster.send_job("--job", job, "--input", tmp_path, "--output", tmp_path / "o")
    assert result.returncode == 2 and says in result.stderr.decode(), result.stderr.decode()
    assert not list(cluster.workdir.glob("var/job-*")), "nothing was submitted"


def test_what_a_task_prints_never_lands_among_its_pairs(cluster, tmp_path):
    """print() and the programs the job runs write to the attempt's log; CRLF lines
    reach the mapper without their \\r, as from Hadoop's line reader."""
    cluster.start_worker()
    inputs = write_files(tmp_path / "in", {"x": b"one\r\ntwo\n"})
    job = write_job(tmp_path, """
        import subprocess
        from mrlib import Job


        class Noisy(Job):
            def mapper(self, key, line):
                print("looking at", line)
                subprocess.run(["echo", "a program of the job speaking"])
                yield line, len(line)
        """)
    submit(cluster, "--job", job, "--input", inputs, "--output", tmp_path / "out",
           "--keep-intermediate", "--wait")
    [output] = (tmp_path / "out").iterdir()
    got = [pyjob.decode_pair(line) for line in output.read_bytes().splitlines(True)]
    assert got == [("one", 3), ("two", 3)]
    [log] = (cluster.workdir / "var" / "job-0" / "logs").iterdir()
    assert b"a program of the job speaking" in log.read_bytes()


def test_a_job_whose_code_cannot_be_installed_leaves_nothing_for_the_next(cluster, tmp_path):
    """Job 0's number is used up when its code cannot be written: job 1 starts clean."""
    (cluster.workdir / "var" / "job-0").mkdir()
    (cluster.workdir / "var" / "job-0" / "code").write_text("not a directory")
    inputs = write_files(tmp_path / "in", {"x": b"a b\n"})
    job = write_job(tmp_path, WORD_COUNT)
    refused = cluster.send_job("--job", job, "--input", inputs, "--output", tmp_path / "o0")
    assert refused.returncode == 2 and "cannot create" in refused.stderr.decode()
    cluster.start_worker()
    result = submit(cluster, "--job", job, "--input", inputs, "--output", tmp_path / "o1",
                    "--wait")
    assert "job 1 submitted" in result.stdout.decode()
    assert output_of(tmp_path / "o1") == lines_of([("a", 1), ("b", 1)])


def test_installed_code_is_not_kept_in_the_masters_memory(tmp_path):
    from mrlib.jobspec import JobSpec
    from mrlib import shipping
    job = write_job(tmp_path, WORD_COUNT)
    spec = JobSpec(str(tmp_path), str(tmp_path / "out"), str(job), str(job), 1, 1,
                   shipped_files=shipping.pack([job]), python_job="job.py:WordCount")
    spec.install_code(str(tmp_path / "job-0"))
    assert (tmp_path / "job-0" / "code" / "job.py").read_text() == job.read_text()
    assert spec.shipped_files == {"job.py": None}


@pytest.mark.parametrize("value", [1, -3, 0, 10 ** 30, 1.5, -2e-7, 1e20, float("-inf"), "s",
                                   "1", "", [1, "a"], None, True, False, {"b": 1, "a": [2]}])
def test_a_value_reaches_the_reducer_as_it_was_given(value):
    assert pyjob.decode_value((pyjob.encode_value(value) + "\n").encode()) == value


def random_pairs(chance):
    """A list of pairs of the kinds a job gives, many alike or all different."""
    shared = chance.choice([1, True, 1.0, "x", None, [1], {"a": 1}, 0.0, -0.0, 2 ** 70])
    values = [shared, 1, True, False, 1.0, -0.0, 0, 7, -3, 2 ** 70, 1.5, "1", "s\t\n\u20ac",
              "\udcff", None, [1, True], {"b": 1, "a": 2}, float("inf")]
    keys = ["w", "", "caf\u00e9", "\udcfe", "a\tb", 1, True, 0.5, None, [2, "x"], {"k": [1]}]
    alike = chance.choice([[1, True, 1.0], [0, False, 0.0, -0.0]])  # equal, not the same JSON
    kind = chance.choice(["word count", "str keys", "ints", "alike", "any"])
    pairs = []
    for _ in range(chance.choice([0, 1, 15, 16, 17, 200])):
        key = chance.choice(keys[:5] if kind != "any" else keys)
        value = (shared if kind == "word count" else chance.randrange(-9, 300)
                 if kind == "ints" else chance.choice(alike if kind == "alike" else values))
        pairs.append([key, value] if chance.random() < 0.02 else (key, value))
    return pairs


def output_lines(results):
    out = io.BytesIO()
    output = pyjob.Output(out)
    output.absorb_calls(results)
    output.flush()
    return out.getvalue().decode("ascii")


def test_pairs_written_together_are_the_lines_of_each_pair_alone():
    """Pairs are encoded with str keys and int values taken the fast way: the lines must
    be what encoding each pair alone gives."""
    chance = random.Random(14)
    for _ in range(3000):
        pairs = random_pairs(chance)
        assert output_lines([pairs]) == "".join(pyjob.encode_pair(k, v) for k, v in pairs)


@pytest.mark.parametrize("bad", [("k", 1, 2), ("k", object()), (object(), 1), ("k", {1, 2}),
                                 (object(), object())])
def test_a_batch_with_a_bad_pair_fails_as_the_pair_alone_would(bad):
    pairs = [("w", 1)] * 20 + [bad] + [("w", 1)] * 20
    with pytest.raises(Exception) as alone:
        "".join(pyjob.encode_pair(k, v) for k, v in pairs)
    with pytest.raises(alone.type) as together:
        output_lines([pairs])
    assert str(together.value) == str(alone.value)


def test_a_pair_is_written_as_it_was_when_given():
    """A method that gives the same object again, changed (Hadoop's habit of reusing a
    record), gets each pair written as it was when given, not as it ended."""
    def running_totals():
        row = {"total": 0}
        for number in range(10_000):
            row["total"] += number
            yield "sum", row

    totals = itertools.accumulate(range(10_000))
    assert output_lines([running_totals()]) == "".join(
        f'"sum"\t{{"total": {total}}}\n' for total in totals)


@pytest.mark.parametrize("name, field", [("Reused", 0), ("ReusedDict", "n"),
                                         ("ReusedNested", "n")])
def test_a_combined_pair_is_held_as_it_was_when_given(tmp_path, name, field):
    """With a combiner, pairs are held in memory, not written at once: a mapper or
    combiner that gives the same object again, changed (a list, a dict, a dict holding
    a list), still has each pair combined as it was when given (as the reducer would
    get it without a combiner)."""
    job = write_job(tmp_path, """
        from mrlib import Job


        class Reused(Job):
            combine_memory_mib = 0.05  # 50 kB: combined in place often
            FIELD = 0

            def new(self):
                return [0]

            def mapper_init(self):
                self.row, self.total = self.new(), self.new()

            def mapper(self, key, line):
                for word in line.split():
                    self.row[self.FIELD] += 1
                    yield word, self.row  # the same object each time, changed after

            def combiner(self, word, rows):  # held under "+word": another key, then its own
                self.total[self.FIELD] = sum(row[self.FIELD] for row in rows)
                yield "+" + word.lstrip("+"), self.total


        class ReusedDict(Reused):
            FIELD = "n"

            def new(self):
                return {"n": 0}


        class ReusedNested(ReusedDict):
            def new(self):
                return {"n": 0, "more": [1]}


        class ReusedPlain(Reused):
            combiner = None


        class ReusedDictPlain(ReusedDict):
            combiner = None


        class ReusedNestedPlain(ReusedNested):
            combiner = None
        """)
    data = b"".join(b"w%d w%d x\n" % (n % 37, n % 11) for n in range(20_000))
    totals = {}
    for job_class in [name, name + "Plain"]:
        pairs = run_program(job, "map", job_class, data)
        totals[job_class] = collections.Counter()
        for word, row in pairs:
            totals[job_class][word.lstrip("+")] += row[field]
        assert len(pairs) < len(data.split()) or job_class.endswith("Plain"), "combined"
    assert totals[name] == totals[name + "Plain"]


def test_a_reducers_lines_are_decoded_as_each_alone_and_lazily():
    """Values are decoded a batch at a time, ints in C: the same values (and types) as
    decoding each line alone, across batches of ints and not, each with its key; and no
    more than about a batch read ahead."""
    raws = [b"1", b"-0", b"10000000000000000000000", b"7", b"1.5", b"true", b'"s"', b"[1, 2]",
            b"-2e-07", b"null"]
    keys = [pyjob.encode_key(key).encode() for key in
            ["w", "", "caf\u00e9", "\udcfe", 'a"b', "a\\b", "\u20ac", 1, True, None, [2, "x"]]]
    chance = random.Random(3)
    for _ in range(20):
        lines = [chance.choice(keys) + b"\t" + chance.choice(raws[:4] if chance.random() < 0.5
                                                              else raws)
                 for _ in range(chance.choice([1, 1023, 1024, 1025, 3000]))]
        data = b"\n".join(lines) + chance.choice([b"", b"\n"])
        decoded = list(pyjob.keyed_values(io.BytesIO(data)))
        alone = [(key, pyjob.decode_value(value))
                 for key, _, value in (line.partition(b"\t") for line in lines)]
        assert [(k, type(v), v) for k, v in decoded] == [(k, type(v), v) for k, v in alone]
    read = itertools.count()
    endless = io.BufferedReader(Endless(lambda: b'"k"\t%d\n' % next(read)))
    assert [value for _, value in itertools.islice(pyjob.keyed_values(endless), 3)] == [0, 1, 2]
    assert next(read) * len(b'"k"\t1000\n') < 2 * pyjob.READ_BATCH_BYTES + io.DEFAULT_BUFFER_SIZE


class Endless(io.RawIOBase):
    """A stream of the lines `line()` makes, for ever."""

    def __init__(self, line):
        self.line, self.pending = line, b""

    def readable(self):
        return True

    def readinto(self, buffer):
        while len(self.pending) < len(buffer):
            self.pending += self.line()
        buffer[:], self.pending = self.pending[:len(buffer)], self.pending[len(buffer):]
        return len(buffer)


@pytest.mark.parametrize("key", ["w", "", "caf\u00e9", "\udcfe", 'a"b', "a\\b", "\x01", "\u20ac",
                                 "\t", 1, 1.0, True, None, [2, "x"], {"k": [1]}, ["a"]])
def test_a_key_is_decoded_as_json_would(key):
    encoded = pyjob.encode_key(key).encode()
    decoded = pyjob.decode_key(encoded)
    assert (type(decoded), decoded) == (type(key), key) == (type(json.loads(encoded)), key)


@pytest.mark.parametrize("encoded", [b'"a\x01b"', b'"\x00"', b'"a\rb"', b'"\x1f"', b'"a"b"',
                                     b'"', b'"a', b'a"', b'"caf\xc3\xa9"', b'"\xff"', b'"\x7f~ "',
                                     b' "a"', b'"a\\u0041"', b'"a\\"', b"", b"1e2", b"nul"])
def test_a_key_from_elsewhere_is_decoded_as_json_would(encoded):
    """Keys another program wrote: what json decodes is decoded alike, what it refuses
    (control characters, stray quotes) is refused."""
    try:
        expected = json.loads(encoded)
    except ValueError as error:
        with pytest.raises(type(error)):
            pyjob.decode_key(encoded)
    else:
        decoded = pyjob.decode_key(encoded)
        assert (type(decoded), decoded) == (type(expected), expected)


def test_ints_of_any_size_go_through_the_programs(tmp_path):
    """Python refuses to convert ints of more than 4,300 digits to text by default; JSON
    has no such limit, and neither has a job's map or reduce."""
    job = write_job(tmp_path, """
        from mrlib import Job


        class Big(Job):
            def mapper(self, key, line):
                yield line, 10 ** int(line)

            def reducer(self, key, values):
                yield key, sum(values) + 1
        """)
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # for this test's own encoding and decoding
    try:
        assert run_program(job, "map", "Big", b"5000\n") == [("5000", 10 ** 5000)]
        line = pyjob.encode_pair("5000", 10 ** 5000).encode()
        assert run_program(job, "reduce", "Big", line * 2) == [("5000", 2 * 10 ** 5000 + 1)]
    finally:
        sys.set_int_max_str_digits(limit)


@pytest.mark.parametrize("line", [b'"w"\t1\n', b'"caf\xc3\xa9"\t"\xe2\x82\xac"', b'1\t-0\n',
                                  b'[1, "a"]\t{"b": [1.5, null, true]}\n', b'"\\u00e9\\n"\t-2e-07\n',
                                  b'"\\ud83d\\ude00"\tNaN\n', b' "s" \t 7 \n', b'"a"\t1e400'])
def test_a_line_of_output_is_read_as_json_would(line):
    key, _, value = line.rstrip(b"\n").partition(b"\t")
    decoded = pyjob.decode_pair(line)
    expected = (json.loads(key), json.loads(value))
    assert repr(decoded) == repr(expected) and list(map(type, decoded)) == list(map(type, expected))


def test_run_gives_ints_of_any_size(tmp_path):
    """A job's output is read back by run() in the user's process, where Python's limit
    on converting ints stays as it was."""
    inputs = write_files(tmp_path / "in", {"x": b"5000\n"})
    script = write_job(tmp_path, f"""
        import sys
        from mrlib import Job


        class Big(Job):
            def mapper(self, key, line):
                yield line, 10 ** int(line)


        if __name__ == "__main__":
            pairs = list(Big().run(input={str(inputs)!r}, sequential=True))
            assert pairs == [("5000", 10 ** 5000)], len(pairs)
            assert sys.get_int_max_str_digits() == 4300
            print("ok")
        """, name="big.py")
    result = subprocess.run([PYTHON, script], capture_output=True, timeout=JOB_TIMEOUT,
                            cwd=tmp_path, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.stdout == b"ok\n", result.stderr.decode()


def test_a_method_may_return_a_list_or_nothing_but_not_one_pair(tmp_path):
    """A mapper or combiner that is not a generator: its list is its pairs and None is none; a pair
    returned alone (a tuple) fails the task with what to do instead."""
    job = write_job(tmp_path, """
        from mrlib import Job


        class Returning(Job):
            def mapper(self, key, line):
                if line == "pair":
                    return line, 1
                return [(word, 1) for word in line.split()] or None


        class ReturningCombined(Returning):
            def combiner(self, key, values):
                total = sum(values)
                return (key, total) if key == "c" else [(key, total)]
        """)
    def run_map(data, name="Returning"):
        return subprocess.run([PYTHON, "-m", "mrlib.pyjobrun", "map", job, name],
                              input=data, capture_output=True, cwd=REPO, timeout=JOB_TIMEOUT)

    done = run_map(b"a b\n\nc\n" * 3000)
    assert done.returncode == 0, done.stderr.decode()
    assert sorted(map(pyjob.decode_pair, done.stdout.splitlines())) == sorted(
        [("a", 1), ("b", 1), ("c", 1)] * 3000)
    failed = run_map(b"a b\n" * 3000 + b"pair\n")
    assert failed.returncode != 0
    assert b"mapper returned tuple ('pair', 1): yield each (key, value) pair" in failed.stderr
    combined = run_map(b"a b\n" * 3000, "ReturningCombined")
    assert combined.returncode == 0, combined.stderr.decode()
    assert sorted(map(pyjob.decode_pair, combined.stdout.splitlines())) == [("a", 3000),
                                                                          ("b", 3000)]
    failed = run_map(b"a b\n" * 3000 + b"c\n", "ReturningCombined")
    assert b"combiner returned tuple ('c', 1): yield each (key, value) pair" in failed.stderr


@pytest.mark.parametrize("phase, name, data", [
    ("map", "FirstWord", b"a\n\nb\nc\n"), ("map", "PairsCombined", b"a\nb b\nc\n"),
    ("reduce", "Pairs", b'"a"\t1\n"b"\t1\n"b"\t2\n"c"\t1\n'),
    ("map", "StopAtIter", b"a\nstop\nb\n")])
def test_a_plain_method_that_raises_stop_iteration_fails_the_task(tmp_path, phase, name, data):
    """A method that returns a list and calls next() on an exhausted iterator raises
    StopIteration (or returns something whose __iter__ does); called by map() that would
    end the task's pairs quietly, and the task would succeed with the keys after it lost."""
    job = write_job(tmp_path, """
        from mrlib import Job


        def first_two(values):
            return next(values) + next(values)


        class FirstWord(Job):
            def mapper(self, key, line):
                return [(line, next(iter(line.split())))]


        class Pairs(Job):
            def mapper(self, key, line):
                return [(word, 1) for word in line.split()]

            def reducer(self, key, values):
                return [(key, first_two(values))]


        class PairsCombined(Pairs):
            def combiner(self, key, values):
                return [(key, first_two(values))]


        class NoPairs:
            def __iter__(self):
                raise StopIteration


        class StopAtIter(Job):
            def mapper(self, key, line):
                return NoPairs() if line == "stop" else [(line, 1)]
        """)
    result = subprocess.run([PYTHON, "-m", "mrlib.pyjobrun", phase, job, name], input=data,
                            capture_output=True, cwd=REPO, timeout=JOB_TIMEOUT)
    assert result.returncode != 0, result.stdout
    assert b"StopIteration" in result.stderr


@pytest.mark.parametrize("name", ["Exploding", "ExplodingPassedOn"])
def test_a_method_that_gives_millions_of_pairs_is_written_as_it_gives_them(tmp_path, name):
    """One call's pairs are encoded and written a few thousand at a time, not all held:
    a mapper's without a combiner, and a combiner's that gives back what it is given."""
    job = write_job(tmp_path, PEAK_KIB + """


        class Exploding(Job):
            def mapper(self, key, line):
                for number in range(2_000_000):
                    yield "k", number

            def mapper_final(self):
                yield "peak KiB", peak_kib()


        class ExplodingPassedOn(Exploding):
            combine_memory_mib = 1000  # all held until the end, then passed on

            def combiner(self, key, values):
                if key == "k":
                    yield from ((key, value) for value in values)
                    self.peak = peak_kib()
                else:
                    yield "peak KiB", self.peak
        """)
    pairs = run_program(job, "map", name, b"x\n")
    assert len(pairs) == 2_000_001
    peak = dict(pairs[-1:] + pairs[:1])["peak KiB"]
    assert peak < 200 * 1024  # the pairs held at once: about 300 MB


def test_one_call_that_gives_millions_of_pairs_is_combined_within_the_limit(tmp_path):
    """The combiner's memory limit holds within a call: what one mapper call gives is
    measured and combined every few thousand pairs, not once the call is done, and
    written when too many keys are held; nothing is lost."""
    job = write_job(tmp_path, PEAK_KIB + """


        class Many(Job):
            combine_memory_mib = 16

            def mapper(self, key, line):
                for number in range(3_000_000):
                    yield number % 200_000, number

            def combiner(self, key, values):
                yield key, sum(values)

            def mapper_final(self):
                yield "peak KiB", peak_kib()
        """)
    totals = collections.Counter()
    for key, value in run_program(job, "map", "Many", b"x\n"):
        totals[key] += value
    peak = totals.pop("peak KiB")
    assert totals == {key: sum(range(key, 3_000_000, 200_000)) for key in range(200_000)}
    assert peak < 64 * 1024  # all held at once: about 300 MB


def test_a_reporter_line_starts_a_line_after_a_print_that_did_not_end_one(tmp_path):
    """What the job prints goes to the same stream as its counters and status: a print
    with end=" " must not make the next counter part of its line (and lost)."""
    job = write_job(tmp_path, """
        import sys

        from mrlib import Job


        class Chatty(Job):
            def mapper(self, key, line):
                print("at", line, end=" ")
                self.increment_counter("g", "lines")
                sys.stderr.write("and ")
                self.set_status(f"line {line}")
                yield line, 1
        """)
    result = subprocess.run([PYTHON, "-m", "mrlib.pyjobrun", "map", job, "Chatty"],
                            input=b"a\nb\nc\n", capture_output=True, cwd=REPO,
                            timeout=JOB_TIMEOUT)
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stderr.decode().splitlines()
    assert lines.count("reporter:counter:g,lines,1") == 3
    assert [line for line in lines if line.startswith("reporter:status:")] == [
        f"reporter:status:line {line}" for line in "abc"]


@pytest.mark.parametrize("phase, name, data, exit_code", [
    ("map", "ExitInMapper", b"a\nb\nSTOP\nc\n", 1),
    ("map", "ExitInMapperCombined", b"a\nb\nSTOP\nc\n", 1),
    ("reduce", "ExitInReducer", b'"a"\t1\n"b"\t1\n"c"\t1\n', 1),
    ("map", "ExitInInit", b"a\n", pyjob.CODE_BROKEN_EXIT),
    ("map", "ExitInCombinerOfInit", b"a\n", 1)])
def test_sys_exit_in_a_method_fails_the_task(tmp_path, phase, name, data, exit_code):
    """sys.exit(0) from the job's code ends the program before its input does, with
    pairs held or not made: the task fails, saying why (in *_init: the code is broken;
    in the combiner taking *_init's pairs: the task fails)."""
    job = write_job(tmp_path, """
        import sys

        from mrlib import Job


        class ExitInMapper(Job):
            def mapper(self, key, line):
                if line == "STOP":
                    sys.exit(0)
                yield line, 1


        class ExitInMapperCombined(ExitInMapper):
            def combiner(self, key, counts):
                yield key, sum(counts)


        class ExitInReducer(ExitInMapper):
            def reducer(self, key, counts):
                if key == "b":
                    sys.exit()
                yield key, sum(counts)


        class ExitInInit(ExitInMapper):
            def mapper_init(self):
                sys.exit(0)


        class ExitInCombinerOfInit(ExitInMapperCombined):  # the combiner's, not the init's
            combine_memory_mib = 0.0001

            def mapper_init(self):
                yield from ((number, 1) for number in range(50))

            def combiner(self, key, counts):
                sys.exit(0)
        """)
    result = subprocess.run([PYTHON, "-m", "mrlib.pyjobrun", phase, job, name], input=data,
                            capture_output=True, cwd=REPO, timeout=JOB_TIMEOUT)
    assert result.returncode == exit_code, result.stderr.decode()
    assert b"sys.exit" in result.stderr


@pytest.mark.parametrize("name, exit_code", [("BadInitPair", pyjob.CODE_BROKEN_EXIT),
                                              ("BadCombinerPair", 1)])
def test_an_init_fails_the_job_but_what_takes_its_pairs_fails_the_task(tmp_path, name,
                                                                       exit_code):
    """mapper_init giving a pair JSON cannot encode is broken code (the job fails at
    once); the combiner giving one while it combines mapper_init's pairs is the task's
    failure, as it would be with the mapper's pairs."""
    job = write_job(tmp_path, """
        from mrlib import Job


        class BadCombinerPair(Job):
            combine_memory_mib = 0.0001  # combined while mapper_init's pairs are taken

            def mapper_init(self):
                yield from ((number, 1) for number in range(50))

            def mapper(self, key, line):
                yield line, 1

            def combiner(self, key, counts):
                yield key, {sum(counts)}  # a set


        class BadInitPair(BadCombinerPair):
            def mapper_init(self):
                yield "k", {1}
        """)
    result = subprocess.run([PYTHON, "-m", "mrlib.pyjobrun", "map", job, name], input=b"a\n",
                            capture_output=True, cwd=REPO, timeout=JOB_TIMEOUT)
    assert result.returncode == exit_code, result.stderr.decode()
    assert b"is not JSON" in result.stderr


@pytest.mark.parametrize("name", ["Held", "HeldLast", "HeldDeep", "HeldInDict",
                                  "HeldBigFirst"])
def test_what_a_held_value_holds_counts_against_the_limit(tmp_path, name):
    """A held value's memory is judged with all it holds, at any depth: 60,000 lists
    holding a 1 kB str (60 MB) are not taken for small lists under a 4 MiB limit, nor
    are the first pairs held unmeasured (1,500 dicts of 90 kB)."""
    job = write_job(tmp_path, PEAK_KIB + """


        class Held(Job):
            combine_memory_mib = 4
            PAIRS = 60_000

            def value(self, number):
                return [f"{number:01000d}"]

            def mapper(self, key, line):
                for number in range(self.PAIRS):
                    yield number % 7, self.value(number)

            def combiner(self, key, values):  # frees nothing: held values are written
                yield from ((key, value) for value in values)

            def mapper_final(self):
                yield "peak KiB", [peak_kib()]


        class HeldLast(Held):
            def value(self, number):
                return [1, 2, 3, 4, 5, 6, 7, 8, f"{number:01000d}"]


        class HeldDeep(Held):
            def value(self, number):
                return [[[[f"{number:01000d}"]]]]


        class HeldInDict(Held):
            def value(self, number):
                return {"a": 1, "b": 2, "c": 3, "d": 4, "text": f"{number:01000d}"}


        class HeldBigFirst(Held):
            PAIRS = 1500

            def value(self, number):
                return {f"{number}-{item}": item for item in range(1000)}
        """)
    pairs = run_program(job, "map", name, b"x\n")
    [[peak]] = [value for key, value in pairs if key == "peak KiB"]
    assert len(pairs) == (1500 if name == "HeldBigFirst" else 60_000) + 1
    assert peak < 48 * 1024  # all held at once: 90 MB or more


def run_program(job, phase, name, data):
    result = subprocess.run([PYTHON, "-m", "mrlib.pyjobrun", phase, job, name], input=data,
                            capture_output=True, cwd=REPO, timeout=JOB_TIMEOUT)
    assert result.returncode == 0, result.stderr.decode()
    return [pyjob.decode_pair(line) for line in result.stdout.splitlines()]


def test_each_call_is_made_when_the_one_before_is_done(tmp_path):
    """A mapper or combiner that keeps state and returns a generator reading it later
    sees its own line or key, though lines and keys are taken in batches."""
    job = write_job(tmp_path, """
        from mrlib import Job


        class Stateful(Job):
            def mapper(self, key, line):
                self.words = line.split()
                return self.pairs()

            def pairs(self):
                for word in self.words:
                    yield word, 1


        class StatefulCombined(Stateful):
            def combiner(self, key, values):
                self.key, self.values = key, list(values)
                return self.combined()

            def combined(self):
                yield self.key, sum(self.values)
        """)
    lines = [f"w{n % 7} w{n % 5}" for n in range(5000)]
    counts = collections.Counter(word for line in lines for word in line.split())
    data = "\n".join(lines).encode()
    assert collections.Counter(k for k, _ in run_program(job, "map", "Stateful", data)) == counts
    assert dict(run_program(job, "map", "StatefulCombined", data)) == counts


def test_a_reducer_that_reads_one_big_value_does_not_read_them_all(tmp_path):
    """Values are read and decoded ahead a few at a time, and big ones one at a time."""
    job = write_job(tmp_path, PEAK_KIB + """


        class First(Job):
            def mapper(self, key, line):
                yield key, line

            def reducer(self, key, values):
                yield key, len(next(values)) if key == "first" else sum(map(len, values))

            def reducer_final(self):
                yield "peak KiB", peak_kib()
        """)
    big = b'"' + b"x" * 200_000 + b'"'
    data = b'"all"\t%s\n' % big * 300 + b'"first"\t%s\n' % big * 100
    pairs = dict(run_program(job, "reduce", "First", data))
    assert pairs == {"all": 300 * 200_000, "first": 200_000, "peak KiB": pairs["peak KiB"]}
    assert pairs["peak KiB"] < 50 * 1024  # values read ahead: 256 of them, about 100 MB


def test_what_a_job_leaves_in_cycles_as_it_loads_is_collected(tmp_path):
    job = write_job(tmp_path, """
        from mrlib import Job


        class Loaded(Job):
            def __init__(self):
                model = [bytearray(200 * 1024 * 1024)]
                model.append(model)  # a cycle, left behind

            def mapper(self, key, line):
                yield line, 1

            def mapper_final(self):
                with open("/proc/self/statm") as statm:
                    yield "resident KiB", int(statm.read().split()[1]) * 4
        """)
    pairs = dict(run_program(job, "map", "Loaded", b"x\n"))
    assert pairs["resident KiB"] < 100 * 1024


def test_a_mappers_reference_cycles_are_still_collected(tmp_path):
    """The map program looks for reference cycles less often, but still: 100,000 lines
    that each leave 10 kB in a cycle must not all be held."""
    job = write_job(tmp_path, PEAK_KIB + """


        class Cycles(Job):
            def mapper(self, key, line):
                cycle = [bytearray(10_000)]
                cycle.append(cycle)
                yield line, 1

            def mapper_final(self):
                yield "peak KiB", peak_kib()
        """)
    pairs = dict(run_program(job, "map", "Cycles", b"x\n" * 100_000))
    assert pairs["x"] == 1 and pairs["peak KiB"] < 400 * 1024  # all held: 1 GB


def test_an_unguarded_run_in_a_script_fails_once_and_says_why(tmp_path):
    """The script's run() loads the file again to ship it: the second run() must refuse,
    not submit a job from inside the loading (which would go on without end)."""
    inputs = write_files(tmp_path / "in", {"x": b"a\n"})
    script = write_job(tmp_path, WORD_COUNT + f"\n\nprint(list(WordCount().run("
                                              f"input={str(inputs)!r}, sequential=True)))\n",
                       name="unguarded.py")
    result = subprocess.run([PYTHON, script], capture_output=True, timeout=JOB_TIMEOUT,
                            cwd=tmp_path, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    assert "guard the call with" in result.stderr.decode(), result.stderr.decode()
