"""Backup tasks: near a phase's end, idle workers re-run the slowest tasks."""
import time

from conftest import WORD_COUNT, assert_matches_sequential, partition_files, pid_alive, wait_until
from mrlib.scheduler import SPECULATIVE_MIN_SECONDS
from support.programs import write_script
from test_reliability import FAST, corpus, job_status

MAPPER, REDUCER = WORD_COUNT
# Programs inherit their worker's environment: this makes one worker slow.
SLOW_MAPPER = f"""#!/bin/sh
if [ -n "$MR_TEST_SLOW_WORKER" ]; then sleep 30; fi
exec {MAPPER}
"""


def run_with_slow_worker(make_cluster, tmp_path, *options, env=None):
    cluster = make_cluster(dict(FAST, **(env or {})))
    cluster.start_worker()
    cluster.env["MR_TEST_SLOW_WORKER"] = "1"
    slow = cluster.start_worker()
    inputs = corpus(tmp_path / "in", files=4)
    mapper = write_script(tmp_path / "map.sh", SLOW_MAPPER)
    output = tmp_path / "out"
    client = cluster.send_job_async("--input", inputs, "--output", output, "--mapper", mapper,
                                    "--mappers", 4, "--wait", *options)
    return cluster, slow, client, inputs, output


def test_backups_finish_what_a_slow_worker_holds(make_cluster, tmp_path):
    """With --speculative, the slow worker's tasks are backed up and the backups win."""
    cluster, slow, client, inputs, output = run_with_slow_worker(make_cluster, tmp_path,
                                                                 "--speculative")
    stdout, stderr = client.communicate(timeout=25)  # the slow worker alone needs 60 s
    assert client.returncode == 0, stdout.decode() + stderr.decode()
    text = stdout.decode()
    assert "backup of map task" in text
    assert "the backup finished first" in text
    assert_matches_sequential(partition_files(output), inputs, MAPPER, REDUCER, 2)


def test_losing_copies_keep_their_worker_busy(make_cluster, tmp_path):
    """After the backups win, no sort or reduce task waits behind the slow worker's losing copies."""
    cluster, slow, client, inputs, output = run_with_slow_worker(
        make_cluster, tmp_path, "--speculative", env={"MAPREDUCE_LOG_LEVEL": "DEBUG"})
    stdout, stderr = client.communicate(timeout=25)
    assert client.returncode == 0, stdout.decode() + stderr.decode()
    sent_to_slow = [line for line in cluster.master_log().splitlines()
                    if f"sent to worker {slow.pid} " in line]
    assert sent_to_slow and all("map task" in line for line in sent_to_slow), sent_to_slow
    assert_matches_sequential(partition_files(output), inputs, MAPPER, REDUCER, 2)


def test_no_backups_unless_asked(make_cluster, tmp_path):
    """Without --speculative no task is ever sent twice (the spec's rule)."""
    cluster, slow, client, inputs, output = run_with_slow_worker(make_cluster, tmp_path)
    try:
        wait_until(lambda: job_status(cluster).get("tasks_done") == 2 and
                   job_status(cluster).get("phase") == "map", what="the fast worker's share done")
        fast = next(w for w in cluster.cluster_status()["workers"] if w["pid"] != slow.pid)
        # Past the backup threshold with the fast worker idle: a speculative
        # master would have sent it a copy by now. This one must not.
        window_end = time.monotonic() + 3 * SPECULATIVE_MIN_SECONDS
        while time.monotonic() < window_end:
            assert cluster.worker_state(fast["pid"]) == "ready"
            time.sleep(0.1)
        assert "backup of" not in cluster.master_log()
    finally:
        client.kill()
        client.wait()


def test_losing_copies_are_stopped(make_cluster, tmp_path):
    """The slow worker's losing copies are stopped once the backups win: their programs end long before they would have."""
    pids = tmp_path / "slow-pids"
    slow_mapper = f"""#!/bin/sh
if [ -n "$MR_TEST_SLOW_WORKER" ]; then echo $$ >> "{pids}"; sleep 30; fi
exec {MAPPER}
"""
    cluster = make_cluster(FAST)
    cluster.start_worker()
    cluster.env["MR_TEST_SLOW_WORKER"] = "1"
    cluster.start_worker()
    inputs = corpus(tmp_path / "in", files=4)
    result = cluster.send_job("--input", inputs, "--output", tmp_path / "out", "--mapper",
                              write_script(tmp_path / "map.sh", slow_mapper), "--mappers", 4,
                              "--speculative", "--wait", timeout=25)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    started = [int(pid) for pid in pids.read_text().split()]
    assert started
    wait_until(lambda: not any(pid_alive(pid) for pid in started),
               what=f"the losing copies {started} to stop")
    assert_matches_sequential(partition_files(tmp_path / "out"), inputs, MAPPER, REDUCER, 2)
