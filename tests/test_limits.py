"""Bounded connections: a flood of connections cannot exhaust the master or a worker.

Each test floods a real process through its real port, the way a broken or
hostile client would: a thousand connections that send nothing, a hundred
and twenty that each send 15 MiB and never finish, or a hundred and fifty
clients long-polling at once. It measures the process in /proc (resident
memory, threads, open files), and has the same process do its real work
while the flood is still held open: a word count equal to the sequential
pipeline, or a client's request answered.
"""
import contextlib
import json
import os
import resource
import select
import socket
import threading
import time

import pytest

import helper
from conftest import WORD_COUNT, assert_matches_sequential, wait_until, write_files
from support.localcluster import memory_bytes, thread_count

MiB = 1024 * 1024
# The numbers: 1,000 idle connections gave the master 1,006 threads
# and open files; 120 connections each sending 15 MiB (under the 16 MiB
# per-message cap, so only a limit across connections can stop them) took it
# from 36 MiB to 1.8 GiB.
IDLE_CONNECTIONS = 1000
FLOOD_CONNECTIONS = 120
FLOOD_BYTES = 15 * MiB
# What the master and a worker must stay under through either flood.
MEMORY_LIMIT = 200 * MiB
# Open files and threads must not grow with the connections: a process holds
# a few hundred connections at most, and runs a bounded number of threads.
FD_LIMIT = 300
THREAD_LIMIT = 100
# Log lines a flood of connections may cost: a summary, not one per connection.
FLOOD_LOG_LINES = 5
# Clients long-polling at once: well past THREAD_LIMIT, so a thread for each
# would show, yet few enough to connect at once to a server answering some
# of them while the others wait in its listen backlog (128).
LONG_POLLS = 150
# How long each long poll waits (job_status `wait`): long enough for all of
# them to be in at once, short enough that they end soon, a few at a time.
LONG_POLL_WAIT = 2.0
# A job id no job has, so that each long poll waits its full time.
NO_SUCH_JOB = 999_999
# A message of empty lists as large as the size cap lets it be: 5.6 million
# items, which parsed took a process from 35 to 470 MB. Refused unparsed, it
# costs about its bytes.
NESTED_SENDS = 6
EMPTY_LIST = b"[],"
PARSED_LIMIT = 150 * MiB  # far below what parsing one would take
# Sent in large pieces, so that 1.8 GB over loopback takes seconds, not minutes.
FLOOD_PIECE = memoryview(b"x" * MiB)
# How long one flooding send may block before the test calls the server hung.
SEND_TIMEOUT = 60.0
# Open files the test process needs: the idle connections plus its own.
OPEN_FILES_NEEDED = IDLE_CONNECTIONS + 512
# What a flooding sender may see when the server closes its connection.
CLOSED_BY_SERVER = (ConnectionResetError, BrokenPipeError)
SMALL_INPUT = {
    "part-a": b"the quick brown fox\njumps over the lazy dog\n",
    "part-b": b"the dog barks\nthe fox runs\n",
    "part-c": b"lazy lazy dog\n",
}


@pytest.fixture(autouse=True)
def open_file_limit():
    """Let this process (and the processes it starts) hold 1,000+ sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < OPEN_FILES_NEEDED:
        if hard != resource.RLIM_INFINITY and hard < OPEN_FILES_NEEDED:
            pytest.skip(f"the open-file limit {hard} is below the {OPEN_FILES_NEEDED} needed")
        resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES_NEEDED, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --- measuring a process -------------------------------------------------------

def open_files(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def peak_memory(pid):
    """The process's peak resident memory (VmHWM) so far, in bytes."""
    return memory_bytes(pid)[1]


def assert_bounded(pid, what):
    """Threads, open files and peak memory of `pid` are within the limits."""
    threads, files, peak = thread_count(pid), open_files(pid), peak_memory(pid)
    print(f"{what}: {threads} threads, {files} open files, peak {peak / MiB:.1f} MiB")
    assert threads < THREAD_LIMIT, f"{what}: {threads} threads"
    assert files < FD_LIMIT, f"{what}: {files} open files"
    assert peak < MEMORY_LIMIT, f"{what}: peak resident memory {peak / MiB:.0f} MiB"


def assert_memory_bounded(pid, what):
    peak = peak_memory(pid)
    print(f"{what}: peak {peak / MiB:.1f} MiB")
    assert peak < MEMORY_LIMIT, f"{what}: peak resident memory {peak / MiB:.0f} MiB"


# --- floods ------------------------------------------------------------------------

@contextlib.contextmanager
def idle_connections(port, count=IDLE_CONNECTIONS):
    """Open `count` connections that send nothing; hold them until the block ends."""
    held = []
    try:
        for _ in range(count):
            held.append(connect(port))
        yield held
    finally:
        for sock in held:
            sock.close()


def connect(port):
    return socket.create_connection(("localhost", port), timeout=helper.CONNECT_TIMEOUT)


def send_without_end(sock, outcomes):
    """Send FLOOD_BYTES and never half-close; note whether the server let it all in."""
    try:
        for _ in range(FLOOD_BYTES // len(FLOOD_PIECE)):
            sock.sendall(FLOOD_PIECE)
        outcomes.append("sent")
    except CLOSED_BY_SERVER:
        outcomes.append("closed by the server")
    except OSError as error:
        outcomes.append(f"{type(error).__name__}: {error}")


@contextlib.contextmanager
def endless_messages(port, count=FLOOD_CONNECTIONS):
    """Send FLOOD_BYTES on each of `count` connections without ever finishing a message.

    Returns once every send has ended, sent or cut off by the server, with the
    connections still open; they close when the block ends.
    """
    held, outcomes, senders = [], [], []
    try:
        for _ in range(count):
            sock = connect(port)
            sock.settimeout(SEND_TIMEOUT)
            held.append(sock)
        for sock in held:
            sender = threading.Thread(target=send_without_end, args=(sock, outcomes), daemon=True)
            senders.append(sender)
            sender.start()
        for sender in senders:
            sender.join(SEND_TIMEOUT)
        assert all(not sender.is_alive() for sender in senders), "a send never ended"
        unexpected = [o for o in outcomes if o not in ("sent", "closed by the server")]
        assert unexpected == [], unexpected[:5]
        yield outcomes
    finally:
        for sock in held:
            sock.close()


# --- helpers -------------------------------------------------------------------------

def long_poll(port):
    """Send a job_status that waits LONG_POLL_WAIT s, half-close, and return the socket."""
    sock = connect(port)
    sock.sendall(helper.encode(helper.job_status(NO_SUCH_JOB, after_version=-1,
                                                 wait=LONG_POLL_WAIT)))
    sock.shutdown(socket.SHUT_WR)
    return sock


def reply_type(sock):
    """The message_type of the reply on a connection, or None if it closed without one."""
    sock.settimeout(helper.READ_TIMEOUT)
    data = helper.read_until_eof(sock)
    return json.loads(data).get("message_type") if data else None


def run_word_count(cluster, tmp_path, name="job"):
    """Run a word count on the cluster and check it against the sequential pipeline."""
    inputs = write_files(tmp_path / f"{name}-in", SMALL_INPUT)
    outputs = cluster.run_job(*WORD_COUNT, inputs, tmp_path / f"{name}-out", 4, 2)
    assert_matches_sequential(outputs, inputs, *WORD_COUNT, 2)


def log_lines(cluster, name="master.log"):
    return cluster.log(name).splitlines()


def nested_lists(message):
    """`message`'s JSON with an extra field of empty lists, just within MAX_MESSAGE_BYTES."""
    head = json.dumps(message)[:-1].encode() + b', "x": ['
    count = (helper.MAX_MESSAGE_BYTES - len(head) - 4) // len(EMPTY_LIST)
    return head + EMPTY_LIST * count + b"[]]}"


def send_each(port, data, count):
    """Send `data` `count` times, each once the server is done with the one before."""
    for _ in range(count):
        with connect(port) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(MiB):  # to EOF: the server has parsed or refused it
                pass


# --- tests ----------------------------------------------------------------------------

def test_idle_connections_leave_the_master_bounded_and_working(cluster, tmp_path):
    """1,000 idle connections cost the master bounded threads, files and memory; a job runs."""
    with idle_connections(cluster.port):
        cluster.cluster_status()  # answered in turn: every idle connection was accepted
        assert_bounded(cluster.master.pid, "master holding 1,000 idle connections")
        cluster.start_workers(2)
        run_word_count(cluster, tmp_path)
        assert_bounded(cluster.master.pid, "master after the job")


def test_requests_are_answered_while_idle_connections_are_held(cluster):
    """With 1,000 idle connections held, `send_job.py --workers` and cluster_status get replies."""
    (worker,) = cluster.start_workers(1)
    with idle_connections(cluster.port):
        listed = cluster.send_job("--workers", timeout=helper.READ_TIMEOUT)
        assert listed.returncode == 0, listed.stderr.decode()
        assert f"worker {worker.pid} " in listed.stdout.decode()
        reply = helper.request("localhost", cluster.port, helper.cluster_status())
        assert [w["pid"] for w in reply["workers"]] == [worker.pid]


def test_a_flood_of_connections_is_logged_in_a_few_lines(cluster):
    """Connections closed for the limits are logged as a summary, not one line per connection."""
    cluster.wait_for_log("listening on")
    before = len(log_lines(cluster))
    with idle_connections(cluster.port):
        cluster.cluster_status()
        new = log_lines(cluster)[before:]
    assert any("dropped" in line and "connection" in line for line in new), new
    assert len(new) <= FLOOD_LOG_LINES, new[:FLOOD_LOG_LINES + 5]


def test_long_polls_past_the_handler_limit_are_all_answered(cluster):
    """150 clients long-polling at once hold bounded master threads, and each gets its reply."""
    polls, replies, busiest = [], [], 0

    def all_answered():  # and the master's threads counted all along
        nonlocal busiest
        busiest = max(busiest, thread_count(cluster.master.pid))
        for sock in select.select(polls, [], [], 0)[0]:
            replies.append(reply_type(sock))
            polls.remove(sock)
            sock.close()
        return not polls

    try:
        for _ in range(LONG_POLLS):
            polls.append(long_poll(cluster.port))
            busiest = max(busiest, thread_count(cluster.master.pid))
        wait_until(all_answered, helper.READ_TIMEOUT, what="a reply to every long poll")
    finally:
        for sock in polls:
            sock.close()
    print(f"master with {LONG_POLLS} long polls: at most {busiest} threads")
    assert busiest < THREAD_LIMIT, f"{busiest} threads"
    assert replies == ["job_status_reply"] * LONG_POLLS, replies


def test_endless_messages_leave_the_master_bounded_and_working(cluster, tmp_path):
    """120 connections sending 15 MiB each without end keep the master under 200 MiB; a job runs."""
    cluster.start_workers(2)
    began = time.monotonic()
    with endless_messages(cluster.port) as outcomes:
        print(f"flood of {FLOOD_CONNECTIONS} x {FLOOD_BYTES // MiB} MiB: "
              f"{outcomes.count('sent')} sent in full, "
              f"{outcomes.count('closed by the server')} closed by the server, "
              f"{time.monotonic() - began:.1f} s")
        cluster.cluster_status()
        assert_memory_bounded(cluster.master.pid, "master after the flood")
        run_word_count(cluster, tmp_path)
        assert_bounded(cluster.master.pid, "master after the job")


def test_endless_messages_leave_a_worker_bounded_and_working(cluster, tmp_path):
    """A worker flooded by 120 endless 15 MiB messages stays under 200 MiB and runs its tasks."""
    flooded, _ = cluster.start_workers(2)
    log_name = f"worker-{flooded.worker_port}.log"
    with endless_messages(flooded.worker_port):
        assert_memory_bounded(flooded.pid, "worker after the flood")
        since = len(cluster.log(log_name))
        run_word_count(cluster, tmp_path)
        wait_until(lambda: "finished" in cluster.log(log_name)[since:],
                   what="the flooded worker to finish a task")
        assert flooded.poll() is None
        assert_bounded(flooded.pid, "worker after the job")


def test_messages_of_millions_of_items_are_refused_unparsed(cluster, tmp_path):
    """16 MiB job_status messages of empty lists to the master, and such a heartbeat to a
    worker, are dropped without parsing, with a line saying why: both stay far under what
    parsing takes, and a job runs."""
    cluster.start_workers(2)
    flooded = cluster.workers[0]
    send_each(cluster.port, nested_lists(helper.job_status(0)), NESTED_SENDS)
    send_each(flooded.worker_port, nested_lists(helper.heartbeat(flooded.pid)), 1)
    for pid, log_name, count in ((cluster.master.pid, "master.log", NESTED_SENDS),
                                 (flooded.pid, f"worker-{flooded.worker_port}.log", 1)):
        peak = peak_memory(pid)
        print(f"{log_name}: peak {peak / MiB:.1f} MiB")
        assert peak < PARSED_LIMIT, f"{log_name}: peak resident memory {peak / MiB:.0f} MiB"
        refusals = cluster.log(log_name).count("items (brackets, braces and commas)")
        assert refusals == count, cluster.log(log_name)[-2000:]
    run_word_count(cluster, tmp_path)
