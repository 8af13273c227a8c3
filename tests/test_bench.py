"""A small run of the benchmark runner: every case of ours runs, is checked and tabled."""
import json
import subprocess
import sys
from pathlib import Path

from conftest import PYTHON, REPO

SMOKE_TIMEOUT = 150


def test_bench_smoke_run(tmp_path):
    """bench/run.py --smoke times each of our cases, checks every output, and prints ratios."""
    results = tmp_path / "results.json"
    run = subprocess.run([PYTHON, str(REPO / "bench" / "run.py"), "--smoke",
                          "--data", str(tmp_path / "data"), "--results", str(results)],
                         capture_output=True, timeout=SMOKE_TIMEOUT)
    assert run.returncode == 0, run.stdout.decode() + run.stderr.decode()[-3000:]
    report = json.loads(results.read_text())
    timed = [row for row in report["cases"] if not row["skipped"]]
    assert {row["suite"] for row in timed} == {"wordcount", "sort"}
    assert all(len(row["seconds"]) == 1 and row["median"] > 0 for row in timed)
    clusters = [row for row in timed if row["case"].startswith("cluster")]
    assert clusters and all(row["report"]["state"] == "succeeded" for row in clusters)
    assert all(row["report"]["master"]["peak_rss_mib"] > 0 for row in clusters)
    tiny = report["extras"]["tiny"]["report"]
    assert tiny["output_matches_reference"] and tiny["phases"]["total"] > 0
    straggler = report["extras"]["straggler"]
    assert straggler["without backups"]["output_matches_reference"]
    assert straggler["with --speculative"]["output_matches_reference"]
    assert any("backup of" in event for event in straggler["with --speculative"]["events"])
    assert not any("backup of" in event for event in straggler["without backups"]["events"])
    table = run.stdout.decode()
    assert "| cluster, 2 workers |" in table and "speed-up vs sequential pipeline" in table


def test_the_python_job_floor_measures_each_case(tmp_path):
    """bench/pyjob_floor.py times the in-mapper executable, the mapper alone, the floor
    and the real map program on one file, and tables each against the first."""
    words = tmp_path / "words"
    words.write_bytes(b"the cat sat on the mat\n" * 20_000 + b"no newline at the end")
    run = subprocess.run([PYTHON, str(REPO / "bench" / "pyjob_floor.py"), "--mib", "1",
                          "--rounds", "1", "--data", str(words)],
                         capture_output=True, timeout=SMOKE_TIMEOUT)
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    rows = [line.split("|") for line in run.stdout.decode().splitlines()
            if line.startswith("|")]
    assert len(rows) == 4 and rows[0][3].strip() == "1.00×"
    assert all(float(row[2]) > 0 for row in rows)


def test_a_smoke_run_never_replaces_the_published_results(tmp_path):
    """--smoke without --results writes into its --data directory, not bench/results.json."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import run as bench_run
    finally:
        sys.path.remove(str(REPO / "bench"))
    smoke = bench_run.parse_args(["--smoke", "--data", str(tmp_path)])
    assert Path(smoke.results).parent == tmp_path
    assert bench_run.parse_args([]).results == str(REPO / "bench" / "results.json")
