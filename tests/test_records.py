"""Binary fixed-size records end to end: --record-size, --output-record-size, --key-size.

Records hold every byte value, newlines and tabs too. Jobs run through
send_job.py against master.py and worker.py processes (and --sequential);
outputs are joined with collect.py and compared with Python's own sort of
the records, or with totals computed here.
"""
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PYTHON, REPO, write_files
from mrlib import grouping, records
from support.programs import write_script
from support.summary import FRAMEWORK, all_counters

SEND_JOB = REPO / "send_job.py"
COLLECT = REPO / "collect.py"
ASK = REPO / "tests" / "support" / "ask.py"
CAT = "#!/bin/sh\nexec cat\n"
WORKERS = 3
RUN_TIMEOUT = 120
# TeraSort's shape: 100-byte records with a 10-byte key.
RECORD, KEY = 100, 10
# Counting records: a 4-byte key and an 8-byte big-endian count.
COUNT_RECORD, COUNT_KEY = 12, 4

# Sums the counts of each run of one key: a reducer, and a combiner too.
SUM_COUNTS = f"""#!{sys.executable}
import sys
SIZE, KEY = {COUNT_RECORD}, {COUNT_KEY}
data = sys.stdin.buffer.read()
out, key, total = [], None, 0
for start in range(0, len(data), SIZE):
    record = data[start:start + SIZE]
    if record[:KEY] != key:
        if key is not None:
            out.append(key + total.to_bytes(8, "big"))
        key, total = record[:KEY], 0
    total += int.from_bytes(record[KEY:], "big")
if key is not None:
    out.append(key + total.to_bytes(8, "big"))
sys.stdout.buffer.write(b"".join(out))
"""
# Writes one byte too many: its output is not whole records.
RAGGED = "#!/bin/sh\ncat\nprintf x\n"


@pytest.fixture
def workers(cluster):
    cluster.start_workers(WORKERS)
    return cluster


def send_job(cluster, *args, sequential=False):
    target = ["--sequential"] if sequential else [str(cluster.port), "--wait"]
    return subprocess.run([PYTHON, str(SEND_JOB), *target, *[str(a) for a in args]],
                          cwd=cluster.workdir, env=cluster.env, capture_output=True,
                          timeout=RUN_TIMEOUT)


def run(cluster, *args, sequential=False):
    """Run a job to its end; assert it succeeded."""
    result = send_job(cluster, *args, sequential=sequential)
    assert result.returncode == 0, (result.stdout.decode() + result.stderr.decode()
                                    + cluster.master_log()[-3000:])
    return result.stdout.decode()


def collect(source, destination, *extra):
    result = subprocess.run([PYTHON, str(COLLECT), str(source), str(destination),
                             *[str(a) for a in extra]], capture_output=True,
                            timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stderr.decode()
    return Path(destination).read_bytes()


def outputs(directory):
    return sorted(p.name for p in Path(directory).iterdir())


def random_records(rng, count, size=RECORD, keys=None):
    """Records of random bytes, at least a tenth of them holding a newline and a tab;
    with `keys`, their keys drawn from that many values (so keys repeat)."""
    made = []
    for number in range(count):
        record = bytearray(rng.randbytes(size))
        if number % 10 == 0:
            record[rng.randrange(size)] = ord("\n")
            record[rng.randrange(size)] = ord("\t")
        if keys:
            record[:KEY] = b"%010d" % rng.randrange(keys)
        made.append(bytes(record))
    return made


def write_inputs(directory, chunks):
    """Input files holding `chunks` (lists of records), one file each."""
    return write_files(directory, {f"part{n}": b"".join(c) for n, c in enumerate(chunks)})


def count_records(rng, count, keys):
    pairs = [(b"k%03d" % rng.randrange(keys), rng.randrange(1, 1000)) for _ in range(count)]
    return [key + n.to_bytes(8, "big") for key, n in pairs]


def totals(made):
    expected = {}
    for record in made:
        key = record[:COUNT_KEY]
        expected[key] = expected.get(key, 0) + int.from_bytes(record[COUNT_KEY:], "big")
    return expected


def as_totals(data):
    found = {}
    for record in records.split(data, COUNT_RECORD):
        key = record[:COUNT_KEY]
        assert key not in found, f"key {key!r} reached two reducers or came in two runs"
        found[key] = int.from_bytes(record[COUNT_KEY:], "big")
    return found


# --- sorting ---------------------------------------------------------------------

def test_binary_records_sort_exactly_on_the_cluster_and_sequentially(workers, tmp_path):
    """Records with newline and tab bytes, 3 range partitions: collect gives Python's sorted()
    of the records, byte for byte, and --sequential writes the same files."""
    rng = random.Random(11)
    made = random_records(rng, 6000)
    inputs = write_inputs(tmp_path / "in", [made[:2500], made[2500:5999], made[5999:]])
    cat = write_script(tmp_path / "cat.sh", CAT)
    job = ("--input", inputs, "--mapper", cat, "--reducer", cat, "--reducers", 3,
           "--record-size", RECORD, "--key-size", KEY, "--split-size", 33_333)
    run(workers, *job, "--output", tmp_path / "out")
    run(workers, *job, "--output", tmp_path / "seq", sequential=True)
    expected = b"".join(sorted(made))
    assert collect(tmp_path / "out", tmp_path / "all") == expected
    assert outputs(tmp_path / "out") == ["input_0", "input_1", "input_2"]
    for name in outputs(tmp_path / "out"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "seq" / name).read_bytes()
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_hash_partitioned_records_keep_each_key_in_one_partition(workers, tmp_path):
    """--partitioner hash --key-size 10 with repeated keys: every key in one partition, each
    partition sorted, and collect --merge --record-size gives the sorted records."""
    rng = random.Random(12)
    made = random_records(rng, 4000, keys=50)
    inputs = write_inputs(tmp_path / "in", [made[:1000], made[1000:]])
    cat = write_script(tmp_path / "cat.sh", CAT)
    run(workers, "--input", inputs, "--output", tmp_path / "out", "--mapper", cat,
        "--reducer", cat, "--reducers", 4, "--partitioner", "hash", "--record-size", RECORD,
        "--key-size", KEY, "--split-size", 40_000)
    owner = {}
    for name in outputs(tmp_path / "out"):
        part = records.split((tmp_path / "out" / name).read_bytes(), RECORD)
        assert part == sorted(part), f"{name} is not sorted"
        for record in part:
            assert owner.setdefault(record[:KEY], name) == name, "a key in two partitions"
    assert len(set(owner.values())) > 1
    merged = collect(tmp_path / "out", tmp_path / "all", "--merge", "--record-size", RECORD)
    assert merged == b"".join(sorted(made))
    # Merged as lines (--record-size forgotten), they came out 3 bytes longer, mangled.
    as_lines = subprocess.run([PYTHON, str(COLLECT), str(tmp_path / "out"),
                               str(tmp_path / "lines"), "--merge"], capture_output=True,
                              timeout=RUN_TIMEOUT)
    assert as_lines.returncode == 2
    assert "--record-size" in as_lines.stderr.decode()
    assert not (tmp_path / "lines").exists()


@pytest.mark.parametrize("combine", [False, True], ids=["plain", "combiner"])
def test_reducers_see_each_key_once_as_a_run_of_records(workers, tmp_path, combine):
    """12-byte count records, a 4-byte key: summed per key by a reducer (and as a combiner),
    each key reaching one reducer in one run; the totals are Python's, and the built-in
    counters count records of 12 bytes, on the cluster as in --sequential."""
    rng = random.Random(13)
    made = count_records(rng, 5000, keys=37)
    inputs = write_inputs(tmp_path / "in", [made[:3000], made[3000:]])
    cat = write_script(tmp_path / "cat.sh", CAT)
    adder = write_script(tmp_path / "sum.py", SUM_COUNTS)
    job = ("--input", inputs, "--mapper", cat, "--reducer", adder, "--reducers", 3,
           "--record-size", COUNT_RECORD, "--key-size", COUNT_KEY, "--split-size", 6000,
           *(["--combiner", adder] if combine else []))
    stdout = run(workers, *job, "--output", tmp_path / "out")
    joined = collect(tmp_path / "out", tmp_path / "all")
    assert as_totals(joined) == totals(made)
    assert records.split(joined, COUNT_RECORD) == sorted(records.split(joined, COUNT_RECORD))
    counted = all_counters(stdout)[FRAMEWORK]
    assert counted["Map input records"] == counted["Map output records"] == len(made)
    assert counted["Map input bytes"] == len(made) * COUNT_RECORD
    assert counted["Reduce output records"] == len(totals(made))
    spilled = counted["Spilled bytes"] // COUNT_RECORD
    assert counted["Reduce input records"] == spilled
    assert "Reduce input groups" not in counted  # runs of a key in records are not counted
    if combine:  # each of the 10 map tasks wrote at most one record a key
        assert counted["Combine input records"] == len(made)
        assert counted["Combine output records"] == spilled <= 10 * 37
    else:
        assert spilled == len(made)
    sequential = run(workers, *job, "--output", tmp_path / "seq", sequential=True)
    assert all_counters(sequential)[FRAMEWORK] == counted


def test_map_output_records_may_differ_in_size_from_the_input(workers, tmp_path):
    """--record-size 100 in, --output-record-size 12 out (a key and a count per record)."""
    rng = random.Random(14)
    made = random_records(rng, 900, keys=9)
    inputs = write_inputs(tmp_path / "in", [made])
    to_counts = write_script(tmp_path / "to_counts.py", f"""#!{sys.executable}
import sys
data = sys.stdin.buffer.read()
for start in range(0, len(data), {RECORD}):
    sys.stdout.buffer.write(data[start + 6:start + {KEY}] + (1).to_bytes(8, "big"))
""")
    adder = write_script(tmp_path / "sum.py", SUM_COUNTS)
    run(workers, "--input", inputs, "--output", tmp_path / "out", "--mapper", to_counts,
        "--reducer", adder, "--reducers", 2, "--record-size", RECORD, "--split-size", 10_000,
        "--output-record-size", COUNT_RECORD, "--key-size", COUNT_KEY)
    expected = {}
    for record in made:
        expected[record[6:KEY]] = expected.get(record[6:KEY], 0) + 1
    assert as_totals(collect(tmp_path / "out", tmp_path / "all")) == expected


def test_records_sorted_in_runs_and_merged_match_sorted(tmp_path, monkeypatch):
    """records.sort spills runs and merges them block by block into sorted() order, for
    sizes from 1 byte, and names data that is not whole records with its length."""
    rng = random.Random(15)
    for size in (1, 3, 100):
        data = rng.randbytes(size * 3000)
        expected = b"".join(sorted(records.split(data, size)))
        monkeypatch.setattr(records, "RUN_BYTES", size * 70)
        monkeypatch.setattr(records, "BLOCK_BYTES", size * 9)
        sink = (tmp_path / f"sorted-{size}").open("wb")
        records.sort([(open_bytes(tmp_path, data), "input")], sink, size, str(tmp_path))
        sink.close()
        assert (tmp_path / f"sorted-{size}").read_bytes() == expected
    with pytest.raises(records.RecordError, match=r"the output of x is 1,001 bytes.*100-byte"):
        records.sort([(open_bytes(tmp_path, b"y" * 1001), "the output of x")],
                     (tmp_path / "sink").open("wb"), 100, str(tmp_path))


def open_bytes(directory, data):
    path = directory / f"data-{len(data)}"
    path.write_bytes(data)
    return path.open("rb")


def test_record_boundaries_cut_every_file_at_the_same_key(tmp_path):
    """Range boundaries over records are keys; every record of a key falls on one side."""
    rng = random.Random(16)
    made = random_records(rng, 3000, keys=40)
    paths = []
    for number in range(3):
        path = tmp_path / f"sorted{number}"
        path.write_bytes(b"".join(sorted(made[number::3])))
        paths.append(str(path))
    framing = grouping.framing_of(records.Layout(RECORD, KEY))
    bounds = grouping.choose_boundaries(paths, 4, framing)
    assert all(len(bound) == KEY for bound in bounds) and bounds == sorted(set(bounds))
    sides = {}
    for path in paths:
        cuts = grouping.cut_offsets(path, bounds, framing)
        assert all(cut % RECORD == 0 for cut in cuts)
        data = Path(path).read_bytes()
        for part, (start, end) in enumerate(zip(cuts, cuts[1:])):
            for record in records.split(data[start:end], RECORD):
                assert sides.setdefault(record[:KEY], part) == part


# --- what is not whole records ------------------------------------------------------

def test_input_that_is_not_whole_records_is_refused_naming_file_and_length(workers, tmp_path):
    """send_job (cluster and --sequential) exits 2 naming the file and its length; a job sent
    past it fails at the master with the same words, and runs nothing."""
    inputs = write_files(tmp_path / "in", {"good": b"r" * 200, "ragged": b"r" * 250})
    cat = write_script(tmp_path / "cat.sh", CAT)
    job = ("--input", inputs, "--mapper", cat, "--reducer", cat, "--record-size", RECORD)
    for sequential in (False, True):
        result = send_job(workers, *job, "--output", tmp_path / f"out{sequential}",
                          sequential=sequential)
        assert result.returncode == 2
        error = result.stderr.decode()
        assert f"{inputs / 'ragged'} is 250 bytes" in error and "100-byte" in error
        assert not (tmp_path / f"out{sequential}").exists() or \
            not list((tmp_path / f"out{sequential}").iterdir())
    message = {"message_type": "new_master_job", "input_directory": str(inputs),
               "output_directory": str(tmp_path / "raw"), "mapper_executable": str(cat),
               "reducer_executable": str(cat), "num_mappers": 2, "num_reducers": 1,
               "record_size": RECORD}
    reply = ask(workers, message)
    status = wait_for_end(workers, reply["job_id"])
    assert status["state"] == "failed"
    assert f"{inputs / 'ragged'} is 250 bytes" in json.dumps(status)
    assert not (tmp_path / "raw").exists() or not list((tmp_path / "raw").iterdir())


def ask(cluster, message):
    result = subprocess.run([PYTHON, str(ASK), f"localhost:{cluster.port}",
                             json.dumps(message)], capture_output=True, timeout=RUN_TIMEOUT,
                            env=cluster.env)
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


def wait_for_end(cluster, job_id):
    while True:  # job_status with `wait` blocks on the master until the job changes
        status = ask(cluster, {"message_type": "job_status", "job_id": job_id, "wait": 5})
        if status.get("state") in ("succeeded", "failed", "cancelled"):
            return status


@pytest.mark.parametrize("sequential", [False, True], ids=["cluster", "sequential"])
def test_map_output_that_is_not_whole_records_fails_the_job_with_its_length(
        workers, tmp_path, sequential):
    """A map program writing a byte too many fails the job; the cause names its output's
    length and the option, not a crash of the sort."""
    inputs = write_files(tmp_path / "in", {"data": b"r" * 300})
    ragged = write_script(tmp_path / "ragged.sh", RAGGED)
    cat = write_script(tmp_path / "cat.sh", CAT)
    result = send_job(workers, "--input", inputs, "--output", tmp_path / "out", "--mapper",
                      ragged, "--reducer", cat, "--record-size", RECORD, "--max-attempts", 1,
                      sequential=sequential)
    assert result.returncode == 1
    error = result.stdout.decode() + result.stderr.decode()
    assert f"the output of {ragged} is 301 bytes" in error
    assert "--record-size 100" in error  # the option the job was given
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("unit", ["records", "lines"])
def test_a_combiner_that_stops_reading_is_named(workers, tmp_path, unit):
    """A combiner that exits 0 before reading its input fails the job, and the cause names
    that combiner: not the sort before it (killed by SIGPIPE, or a Python traceback of a
    broken pipe in the records sort)."""
    inputs = write_files(tmp_path / "in", {"data": (b"r" * 99 + b"\n") * 5000})
    quitter = write_script(tmp_path / "quitter.sh", "#!/bin/sh\nexit 0\n")
    cat = write_script(tmp_path / "cat.sh", CAT)
    layout = ["--record-size", RECORD] if unit == "records" else []
    for sequential in (False, True):
        result = send_job(workers, "--input", inputs, "--output", tmp_path / f"out{sequential}",
                          "--mapper", cat, "--reducer", cat, "--combiner", quitter, *layout,
                          "--max-attempts", 1, sequential=sequential)
        assert result.returncode == 1
        error = result.stdout.decode() + result.stderr.decode()
        assert f"{quitter} exited before reading all of its input" in error, error
        assert "Traceback" not in error


def test_the_jobs_output_is_checked_when_its_record_size_is_given(workers, tmp_path):
    """--output-record-size on a map-only job checks what it writes; without it, a map-only
    job's output is the program's business (the Hamming decoder halves its records)."""
    inputs = write_files(tmp_path / "in", {"data": b"r" * 300})
    ragged = write_script(tmp_path / "ragged.sh", RAGGED)
    job = ("--input", inputs, "--mapper", ragged, "--reducers", 0, "--record-size", RECORD)
    run(workers, *job, "--output", tmp_path / "free")
    assert collect(tmp_path / "free", tmp_path / "free.bin") == b"r" * 300 + b"x"
    result = send_job(workers, *job, "--output", tmp_path / "checked", "--max-attempts", 1,
                      "--output-record-size", RECORD)
    assert result.returncode == 1
    assert f"the output of {ragged} is 301 bytes" in result.stdout.decode()


def test_lines_from_records_go_through_the_line_shuffle(workers, tmp_path):
    """--output-record-size lines: records in, text lines out of the map, grouped as lines."""
    made = [b"%03d" % (n % 7) + b"\n\t" * 48 + b"z" for n in range(70)]
    inputs = write_inputs(tmp_path / "in", [made])
    first3 = write_script(tmp_path / "first3.py", f"""#!{sys.executable}
import sys
data = sys.stdin.buffer.read()
for start in range(0, len(data), {RECORD}):
    sys.stdout.buffer.write(data[start:start + 3] + b"\\t1\\n")
""")
    counter = write_script(tmp_path / "count.sh", "#!/bin/sh\nexec uniq -c\n")
    run(workers, "--input", inputs, "--output", tmp_path / "out", "--mapper", first3,
        "--reducer", counter, "--reducers", 2, "--record-size", RECORD,
        "--output-record-size", "lines")
    lines = collect(tmp_path / "out", tmp_path / "all").split(b"\n")[:-1]
    assert [line.split() for line in lines] == [[b"10", b"%03d" % n, b"1"] for n in range(7)]


@pytest.mark.parametrize("options, words", [
    (["--key-size", "4"], "key_size 4 is for records"),
    (["--record-size", "10", "--key-size", "11"], "between 1 and the 10-byte record"),
    (["--record-size", "10", "--key-size", "0"], "between 1 and the 10-byte record"),
    (["--output-record-size", "-3"], "--output-record-size: give a number of bytes (1 or more)"),
    (["--output-record-size", "0"], "--output-record-size: give a number of bytes (1 or more)"),
    (["--record-size", "4", "--output-record-size", "lines", "--key-size", "2"],
     "the map output is lines"),
    (["--record-size", str(records.MAX_RECORD_BYTES + 1)], "--record-size must be between 1"),
    (["--output-record-size", "words"], "not 'words'"),
])
def test_record_options_that_make_no_sense_are_refused(workers, tmp_path, options, words):
    """Each bad combination is refused before anything runs, naming what was typed."""
    inputs = write_files(tmp_path / "in", {"data": b"r" * 100})
    cat = write_script(tmp_path / "cat.sh", CAT)
    result = send_job(workers, "--input", inputs, "--output", tmp_path / "out", "--mapper",
                      cat, "--reducer", cat, *options)
    assert result.returncode == 2
    error = result.stderr.decode().replace("key_size", "--key-size")
    assert words.replace("key_size", "--key-size") in error, error
