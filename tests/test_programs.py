"""The sample programs alone (no cluster): sort's identity and the Hamming family."""
import os
import random
import subprocess

import pytest

from conftest import EXEC

HAMMING = EXEC / "hamming"
SORT = (EXEC / "sort" / "map.py", EXEC / "sort" / "reduce.py")
RAW_SIZE = 3 * 1024 * 1024 + 7   # odd, so blocks and pairs never line up by luck
CUTS = (2 * 12345, 2 * 777777)   # even offsets, not multiples of 4096


def run(program, data, env=None, check=True):
    """Run a program on `data` (stdin) with extra environment; return the CompletedProcess."""
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith("HAMMING_") and k != "mapreduce_map_input_start"}
    full_env.update(env or {})
    return subprocess.run([str(program)], input=data, capture_output=True, env=full_env,
                          check=check, timeout=60)


def hamming(name, data, env=None):
    """stdout of exec/hamming/<name>.py on `data`."""
    return run(HAMMING / f"{name}.py", data, env).stdout


def counters(result):
    """The hamming counters a program reported on stderr, as {name: n}."""
    found = {}
    for line in result.stderr.splitlines():
        if line.startswith(b"reporter:counter:hamming,"):
            _, name, amount = line.decode().split(",")
            found[name] = found.get(name, 0) + int(amount)
    return found


def check_summary(code):
    """check.py then sort then check_reduce.py, as {key: n}, in output order."""
    mapped = hamming("check", code)
    ordered = subprocess.run(["sort"], input=mapped, capture_output=True, check=True,
                             env=dict(os.environ, LC_ALL="C")).stdout
    reduced = run(HAMMING / "check_reduce.py", ordered).stdout
    return dict((key.decode(), int(n)) for key, n in
                (line.split(b"\t") for line in reduced.splitlines()))


def pieces(data, cuts=CUTS):
    """(offset, piece) of data cut at the given offsets."""
    bounds = (0, *cuts, len(data))
    return [(start, data[start:end]) for start, end in zip(bounds, bounds[1:])]


@pytest.fixture(scope="module")
def raw():
    return random.Random(1).randbytes(RAW_SIZE)


@pytest.fixture(scope="module")
def encoded(raw):
    return hamming("encode", raw)


def test_encode_layout_matches_readme():
    """'K' (0x4B) encodes as 0x55 0xAA, and the 16 code bytes are pairwise 4 bits apart."""
    assert hamming("encode", b"K") == b"\x55\xaa"
    codes = hamming("encode", bytes(range(0, 256, 17)))[1::2]
    assert len(set(codes)) == 16
    assert min(bin(a ^ b).count("1") for a in codes for b in codes if a != b) == 4


def test_encode_then_decode_is_identity(raw, encoded):
    """A several-MB random file comes back unchanged from encode then decode."""
    assert len(encoded) == 2 * len(raw)
    result = run(HAMMING / "decode.py", encoded)
    assert result.stdout == raw
    assert counters(result) == {"corrected": 0, "detected": 0}


def test_encode_is_split_independent(raw, encoded):
    """Encoding pieces of a file and concatenating gives the file's encoding."""
    assert b"".join(hamming("encode", piece) for _, piece in pieces(raw, (12345, 777777))) \
        == encoded


def test_single_errors_are_counted_fixed_and_decoded(raw, encoded):
    """encode, error (seed 7, rate 0.001), check counts every flip, fix then decode restores it."""
    result = run(HAMMING / "error.py", encoded,
                 {"HAMMING_SEED": "7", "HAMMING_ERROR_RATE": "0.001"})
    damaged, injected = result.stdout, counters(result)
    assert injected["injected_double"] == 0
    assert 0.8 < injected["injected_single"] / (0.001 * len(encoded)) < 1.2
    assert sum(a != b for a, b in zip(damaged, encoded)) == injected["injected_single"]
    assert check_summary(damaged) == {"bytes": len(encoded), "corrected":
                                      injected["injected_single"], "detected": 0}
    fixed = run(HAMMING / "fix.py", damaged)
    assert counters(fixed)["corrected"] == injected["injected_single"]
    assert fixed.stdout == encoded
    assert hamming("decode", fixed.stdout) == raw
    assert hamming("decode", damaged) == raw


def test_double_errors_are_detected_and_left_alone(encoded):
    """With HAMMING_DOUBLE_RATE set, check detects exactly the double flips and fix keeps them."""
    result = run(HAMMING / "error.py", encoded, {"HAMMING_SEED": "7",
                                                 "HAMMING_ERROR_RATE": "0.001",
                                                 "HAMMING_DOUBLE_RATE": "0.0005"})
    damaged, injected = result.stdout, counters(result)
    assert injected["injected_double"] > 0
    assert check_summary(damaged) == {"bytes": len(encoded),
                                      "corrected": injected["injected_single"],
                                      "detected": injected["injected_double"]}
    fixed = hamming("fix", damaged)
    assert check_summary(fixed) == {"bytes": len(encoded), "corrected": 0,
                                    "detected": injected["injected_double"]}
    assert sum(a != b for a, b in zip(fixed, encoded)) == injected["injected_double"]


def test_error_is_split_independent(encoded):
    """error over three pieces at their mapreduce_map_input_start equals error over the whole."""
    env = {"HAMMING_SEED": "7", "HAMMING_ERROR_RATE": "0.001", "HAMMING_DOUBLE_RATE": "0.0005"}
    whole = run(HAMMING / "error.py", encoded, env)
    parts = [run(HAMMING / "error.py", piece, dict(env, mapreduce_map_input_start=str(start)))
             for start, piece in pieces(encoded)]
    assert b"".join(part.stdout for part in parts) == whole.stdout
    for name in ("injected_single", "injected_double"):
        assert sum(counters(part)[name] for part in parts) == counters(whole)[name]


def test_error_depends_on_seed_and_rate(encoded):
    """The same seed gives the same flips, another seed others, and rate 0 none."""
    sample = encoded[:200000]
    first = hamming("error", sample, {"HAMMING_SEED": "1", "HAMMING_ERROR_RATE": "0.01"})
    again = hamming("error", sample, {"HAMMING_SEED": "1", "HAMMING_ERROR_RATE": "0.01"})
    other = hamming("error", sample, {"HAMMING_SEED": "2", "HAMMING_ERROR_RATE": "0.01"})
    assert first == again != other != sample
    assert hamming("error", sample, {"HAMMING_ERROR_RATE": "0"}) == sample


def test_error_rejects_bad_settings():
    """A rate that is not a probability is an error named on stderr, with exit code 1."""
    result = run(HAMMING / "error.py", b"\x00\x0f", {"HAMMING_ERROR_RATE": "2"}, check=False)
    assert result.returncode == 1 and b"HAMMING_ERROR_RATE" in result.stderr


def test_check_reduce_sums_the_splits(encoded):
    """check on pieces, sorted and reduced, gives the totals of check on the whole."""
    damaged = hamming("error", encoded, {"HAMMING_SEED": "3", "HAMMING_DOUBLE_RATE": "0.001"})
    mapped = b"".join(hamming("check", piece) for _, piece in pieces(damaged))
    assert mapped.count(b"\n") == 9
    ordered = subprocess.run(["sort"], input=mapped, capture_output=True, check=True,
                             env=dict(os.environ, LC_ALL="C")).stdout
    reduced = run(HAMMING / "check_reduce.py", ordered).stdout
    whole = check_summary(damaged)
    assert reduced == b"".join(b"%s\t%d\n" % (key.encode(), n) for key, n in whole.items())
    assert list(whole) == ["bytes", "corrected", "detected"]


def test_decode_rejects_odd_length(encoded):
    """An odd-length input is not an encoding: a message on stderr and exit code 1."""
    result = run(HAMMING / "decode.py", encoded[:3], check=False)
    assert result.returncode == 1
    assert b"odd length" in result.stderr


def test_sort_programs_are_line_identities():
    """map and reduce copy bytes as they are, ending a last line without newline."""
    data = b"b\xff\xfe\nA\x00z\n\xc3(\nb\xff\xfe"
    for program in SORT:
        assert run(program, data).stdout == data + b"\n"
        assert run(program, data + b"\n").stdout == data + b"\n"
        assert run(program, b"").stdout == b""


def test_sort_pipeline_orders_lines_bytewise():
    """map on two splits, LC_ALL=C sort, reduce: the lines in bytewise order, duplicates kept."""
    rng = random.Random(5)
    lines = [rng.randbytes(rng.randrange(8)).replace(b"\n", b"") for _ in range(3000)]
    lines += lines[:100]
    splits = b"\n".join(lines[:1700]), b"\n".join(lines[1700:])  # no final newlines
    mapped = b"".join(run(SORT[0], split).stdout for split in splits)
    ordered = subprocess.run(["sort"], input=mapped, capture_output=True, check=True,
                             env=dict(os.environ, LC_ALL="C")).stdout
    assert run(SORT[1], ordered).stdout == b"".join(line + b"\n" for line in sorted(lines))
