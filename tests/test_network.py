"""Master, workers and client on hosts of their own (network namespaces), with real faults.

Every host has its own address on a bridge; the cluster runs with a shared
secret, bound to those addresses as a user would run it across machines.
Faults are made where they happen: a link unplugged at the switch, packets
dropped by nftables, a host's processes all killed. Heartbeat timings are
the spec's (2 s, dead after 5 missed). Each job is checked against the
sequential pipeline.
"""
import os
import time

import pytest

from conftest import WORD_COUNT, assert_matches_sequential, partition_files, wait_until
from support import netns
from support.localcluster import write_secret
from support.programs import WORD_COUNT_MAP, script, stop

pytestmark = pytest.mark.timeout(240)

SECRET = "a1b2c3d4e5f60718" * 4
FILES = {f"part-{n}": b"the quick brown fox %d jumps over the lazy dog\n" % n * (n + 1)
         for n in range(6)}
MAPPERS, REDUCERS = 6, 2
DEATH_SECONDS = 5 * 2.0  # the spec's: 5 missed heartbeats, 2 s apart
JOB_SECONDS = 180
LOSS_PERCENT = 20
FLAP_SECONDS = 3.0


@pytest.fixture
def cluster(tmp_path):
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    secret = write_secret(tmp_path / "secret", SECRET)
    network = netns.Network()
    cluster = netns.NetCluster(network, tmp_path / "cluster", secret)
    try:
        cluster.start_master()
        yield cluster
    finally:
        cluster.stop()
        network.close()
    assert not any(os.path.exists(f"/run/netns/{h.namespace}") for h in network.hosts)


def inputs(tmp_path):
    directory = tmp_path / "in"
    directory.mkdir()
    for name, data in FILES.items():
        (directory / name).write_bytes(data)
    return directory


def tracing_mapper(tmp_path, seconds):
    """The word-count map, after noting the host it runs on and sleeping."""
    ran_on = tmp_path / "ran-on"
    ran_on.touch()
    return script(tmp_path / "traced-map.sh",
                  f"readlink /proc/self/ns/net >> {ran_on}\n"
                  f"sleep {seconds}\nexec {WORD_COUNT_MAP}\n"), ran_on


def identity(host):
    return f"net:[{os.stat(f'/run/netns/{host.namespace}').st_ino}]"


def ran_on(trace, host):
    return identity(host) in trace.read_text().split()


def run_job(cluster, tmp_path, mapper, name="out", timeout=JOB_SECONDS):
    """Submit from the client host with --wait; check the output; return the job's status."""
    output = tmp_path / name
    result = cluster.send_job("--input", inputs_of(tmp_path), "--output", output,
                              "--mapper", mapper, "--mappers", MAPPERS,
                              "--reducers", REDUCERS, "--wait", timeout=timeout)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert_matches_sequential(partition_files(output), inputs_of(tmp_path), *WORD_COUNT,
                              REDUCERS)


def submit(cluster, tmp_path, mapper):
    """The word count with `mapper`, submitted from the client host with --wait; its client."""
    return cluster.send_job_async("--input", inputs_of(tmp_path), "--output", tmp_path / "out",
                                  "--mapper", mapper, "--mappers", MAPPERS,
                                  "--reducers", REDUCERS, "--wait")


def inputs_of(tmp_path):
    directory = tmp_path / "in"
    return directory if directory.exists() else inputs(tmp_path)


def deaths(cluster, job_id):
    return [e for e in cluster.job(job_id).get("events", []) if " dead " in f" {e} "]


def test_a_job_across_three_hosts_and_only_secret_holders_get_in(cluster, tmp_path):
    hosts = [cluster.add_worker(f"w{n}") for n in range(3)]
    mapper, trace = tracing_mapper(tmp_path, 0)
    run_job(cluster, tmp_path, mapper)
    assert all(ran_on(trace, host) for host in hosts)
    outsider = {k: v for k, v in cluster.env.items() if k != "MAPREDUCE_SECRET_FILE"}
    refused = cluster.send_job("--input", inputs_of(tmp_path), "--output", tmp_path / "o2",
                               env=outsider)
    assert refused.returncode == 1 and b"secret" in refused.stderr, refused.stderr
    cluster.send_job("--shutdown", env=outsider)
    intruder = cluster.network.add_host("intruder")
    process = cluster.spawn(intruder, [netns.REPO / "worker.py", cluster.address,
                                       netns.WORKER_PORT, "--host", intruder.address,
                                       "--insecure"],
                            "worker-intruder.log", env=outsider)
    wait_until(lambda: "not authenticated" in cluster.log("master.log"),
               what="the master to drop the intruder's register")
    assert process.poll() is None or process.returncode != 0
    assert cluster.state(intruder) is None
    assert cluster.master.poll() is None and len(cluster.workers_listed()) == 3


def test_a_cut_link_mid_map_moves_its_tasks_and_the_worker_rejoins(cluster, tmp_path):
    first, second = cluster.add_worker("w1"), cluster.add_worker("w2")
    mapper, trace = tracing_mapper(tmp_path, 1)
    client = submit(cluster, tmp_path, mapper)
    try:
        wait_until(lambda: ran_on(trace, first), what="a map task on w1")
        first.cut()
        cut_at = time.monotonic()
        wait_until(lambda: cluster.job(0).get("state") == "succeeded"
                   or client.poll() is not None, JOB_SECONDS, what="the job to end")
        assert client.wait(JOB_SECONDS) == 0, client.communicate()
    finally:
        stop(client)
    assert time.monotonic() - cut_at > DEATH_SECONDS
    assert_matches_sequential(partition_files(tmp_path / "out"), inputs_of(tmp_path),
                              *WORD_COUNT, REDUCERS)
    assert deaths(cluster, 0), cluster.job(0)
    first.heal()
    wait_until(lambda: cluster.state(first) == "ready", 3 * DEATH_SECONDS,
               what="w1 to rejoin")
    trace.write_text("")
    run_job(cluster, tmp_path, mapper, name="out2")
    assert ran_on(trace, first), "the rejoined worker gets work in the next job"


def test_a_lossy_network_slows_the_job_and_kills_no_worker(cluster, tmp_path):
    if netns.nft_unavailable():
        pytest.skip(netns.nft_unavailable())
    workers = [cluster.add_worker("w1"), cluster.add_worker("w2")]
    for host in [cluster.master_host, *workers]:  # the client's own link stays clean
        host.lose(LOSS_PERCENT)
    mapper, _ = tracing_mapper(tmp_path, 0)
    run_job(cluster, tmp_path, mapper)
    assert not deaths(cluster, 0), cluster.job(0)
    assert all(cluster.state(host) == "ready" for host in workers)


def test_a_flapping_link_through_a_whole_job(cluster, tmp_path):
    flaky, steady = cluster.add_worker("w1"), cluster.add_worker("w2")
    mapper, _ = tracing_mapper(tmp_path, 1)
    client = submit(cluster, tmp_path, mapper)
    try:
        while client.poll() is None:
            flaky.cut()
            time.sleep(FLAP_SECONDS)  # what is tested: a link down this long, then up
            flaky.heal()
            time.sleep(FLAP_SECONDS)
        stdout, stderr = client.communicate()
        assert client.returncode == 0, stdout.decode() + stderr.decode()
    finally:
        flaky.heal()
        stop(client)
    assert_matches_sequential(partition_files(tmp_path / "out"), inputs_of(tmp_path),
                              *WORD_COUNT, REDUCERS)


def test_a_rebooted_worker_host_comes_back_with_a_new_worker(cluster, tmp_path):
    """All its processes killed, a worker started again at once: with pid namespaces it has
    the same pid (1) at the same address and port, and is still told from its old self."""
    rebooted, other = cluster.add_worker("w1"), cluster.add_worker("w2")
    mapper, trace = tracing_mapper(tmp_path, 1)
    client = submit(cluster, tmp_path, mapper)
    try:
        wait_until(lambda: ran_on(trace, rebooted), what="a map task on w1")
        cluster.reboot(rebooted)  # back within a second: before the master misses it
        stdout, stderr = client.communicate(timeout=JOB_SECONDS)
        assert client.returncode == 0, stdout.decode() + stderr.decode()
    finally:
        stop(client)
    assert_matches_sequential(partition_files(tmp_path / "out"), inputs_of(tmp_path),
                              *WORD_COUNT, REDUCERS)
    trace.write_text("")
    run_job(cluster, tmp_path, mapper, name="out2")
    assert ran_on(trace, rebooted)


def test_a_partitioned_master_heals_and_the_job_finishes(cluster, tmp_path):
    workers = [cluster.add_worker("w1"), cluster.add_worker("w2")]
    mapper, trace = tracing_mapper(tmp_path, 1)
    client = submit(cluster, tmp_path, mapper)
    try:
        wait_until(lambda: trace.read_text(), what="the first map task")
        cluster.master_host.cut()
        time.sleep(DEATH_SECONDS + 2)  # what is tested: a partition past the death timeout
        cluster.master_host.heal()
        stdout, stderr = client.communicate(timeout=JOB_SECONDS)
        assert client.returncode == 0, stdout.decode() + stderr.decode()
    finally:
        cluster.master_host.heal()
        stop(client)
    assert_matches_sequential(partition_files(tmp_path / "out"), inputs_of(tmp_path),
                              *WORD_COUNT, REDUCERS)
    assert deaths(cluster, 0), "the partition outlasted the death timeout"
    # Each worker rejoins when the master answers its heartbeat: the job may end first.
    wait_until(lambda: all(cluster.state(host) == "ready" for host in workers),
               3 * DEATH_SECONDS, what="both workers to rejoin")
