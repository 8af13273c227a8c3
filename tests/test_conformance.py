"""Wire conformance: our master with a foreign worker, our worker with a foreign master.

The fakes (tests/support/peers.py) speak the 2017 spec over raw loopback
sockets and share no protocol code with helper.py: every expected message is
spelled out field by field, so a change to the protocol code that strays from
the spec fails here. They send JSON the way another implementation typically
would (json.dumps with its default separators, one object per connection),
and require from our processes what the issue asks: compact single-line JSON,
one object per connection, read to EOF.
"""
import os
import queue
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import helper
from conftest import (REPO, WORD_COUNT, assert_matches_sequential, free_port, partition_files,
                      session_members, wait_until, write_files)
from support.localcluster import pid_alive
from support.peers import (MESSAGE_TIMEOUT, FakeMaster, FakeWorkerPool, Receiver, TcpReceiver,
                           assert_same_message, parse_wire, poll, send_json)
from support.programs import write_script
from worker import CANCELS_REMEMBERED

SAMPLE = REPO / "input" / "sample1"
MAPPER, REDUCER = WORD_COUNT
SAMPLE_MAPPERS, SAMPLE_REDUCERS = 4, 2

MAP_DIR = "var/job-0/mapper-output"
GROUP_DIR = "var/job-0/grouper-output"
REDUCE_DIR = "var/job-0/reducer-output"

WORKER_JOB_FIELDS = {"message_type", "input_files", "executable", "output_directory",
                     "worker_pid"}
SORT_JOB_FIELDS = {"message_type", "input_files", "output_file", "worker_pid"}
TASK_STATUS_FIELDS = {"message_type", "output_files", "status", "worker_pid"}

# A master that took a status sends the next task within milliseconds: a
# status it ignored shows within this.
NEXT_TASK_TIMEOUT = 5.0
SHUTDOWN_TIMEOUT = 5.0

# How another worker might spell the output path it was told to write.
PATH_SPELLINGS = {
    "dot": lambda path, workdir: "./" + path,
    "double slash": lambda path, workdir: path.replace("/", "//"),
    "absolute": lambda path, workdir: str(workdir / path),
}

SPEC_HEARTBEAT_INTERVAL = 2.0
# "Right after register_ack": well under one interval.
FIRST_HEARTBEAT_LIMIT = SPEC_HEARTBEAT_INTERVAL / 2
# How long to listen to show something is NOT sent: a process that sends it
# (a heartbeat before the ack, a register without a port) does so at once.
QUIET_WINDOW = 0.5
FAST_HEARTBEAT_INTERVAL = 0.3
# A connect that waited in SYN retries gets through within this of the port freeing.
QUIET_AFTER_BUSY = 4.0
HEARTBEAT_SAMPLES = 6
# A busy foreign worker accepts no connection for longer than the master's
# connect timeout.
BUSY_SECONDS = helper.CONNECT_TIMEOUT + 2
# A job's --timeout, and the master's grace past it before it gives up on a task.
SHORT_TASK_TIMEOUT = 1
MASTER_TIMEOUT_GRACE = 10


# --- checking messages ---------------------------------------------------------

# Fields every job's tasks may carry (documented in the README): a worker that
# does not know them ignores them and stays correct. `presorted` is only ever
# sent when our own workers reported sorted map output, never to a foreign one's.
PERFORMANCE_HINTS = {"new_worker_job": {"sort_output", "log_file", "task_label", "builtin_counters",
                                        "attempt_id"},
                     "new_sort_job": {"log_file", "task_label", "attempt_id"}}


def assert_fields(message, spec_fields, extensions):
    """The spec's fields; extra ones only documented ones, and only hints without extensions."""
    assert spec_fields <= set(message), f"missing {spec_fields - set(message)} in {message}"
    kind = message["message_type"]
    allowed = (set(helper.OPTIONAL_FIELDS.get(kind, {})) if extensions
               else PERFORMANCE_HINTS.get(kind, set()))
    extra = set(message) - spec_fields
    assert extra <= allowed, f"fields {extra - allowed} not allowed in {message}"
    assert "presorted" not in message, "map outputs of a foreign worker are not sorted"


def is_int(value):
    return type(value) is int


def is_path_list(value):
    return isinstance(value, list) and value and all(isinstance(v, str) for v in value)


# --- foreign workers slow to take, or deaf to, connections ------------------------

class BusyTcpReceiver(TcpReceiver):
    """A worker that handles one message at a time and relies on its listen
    backlog, as the spec suggests: busy with its first task, it accepts no
    connection for BUSY_SECONDS, and its accept queue holds just one."""
    busy_seconds = BUSY_SECONDS

    def __init__(self, port, deliver):
        self.busy_ahead, self.busy_now = True, False
        Receiver.__init__(self, socket.create_server(("localhost", port), backlog=0), deliver)

    def receive(self):
        if self.busy_now:  # the first task was passed on; now it works on it
            self.busy_now = False
            self.stopping.wait(self.busy_seconds)
        raw = super().receive()
        if self.busy_ahead and b"new_worker_job" in raw:
            self.busy_ahead, self.busy_now = False, True
        return raw


class DeafTcpReceiver(TcpReceiver):
    """Takes its register_ack, then never accepts another connection."""

    def __init__(self, port, deliver):
        self.heard = False
        Receiver.__init__(self, socket.create_server(("localhost", port), backlog=0), deliver)

    def receive(self):
        if self.heard:
            self.stopping.wait()
            raise socket.timeout
        raw = super().receive()
        self.heard = True
        return raw


class LongBusyTcpReceiver(BusyTcpReceiver):
    """Busy past a task's whole time limit."""
    busy_seconds = SHORT_TASK_TIMEOUT + MASTER_TIMEOUT_GRACE + 3


# --- a foreign worker against our master --------------------------------------------

@pytest.fixture
def fakes(cluster):
    pool = FakeWorkerPool(cluster.port)
    yield pool
    pool.close()


def check_worker_job(message, fake, extensions):
    assert_fields(message, WORKER_JOB_FIELDS, extensions)
    assert is_path_list(message["input_files"]), message
    assert isinstance(message["executable"], str), message
    assert message["output_directory"] in (MAP_DIR, REDUCE_DIR), message
    assert is_int(message["worker_pid"]) and message["worker_pid"] == fake.pid, message


def check_sort_job(message, fake, extensions):
    assert_fields(message, SORT_JOB_FIELDS, extensions)
    assert is_path_list(message["input_files"]), message
    assert isinstance(message["output_file"], str), message
    assert message["output_file"].startswith(GROUP_DIR + "/"), message
    assert is_int(message["worker_pid"]) and message["worker_pid"] == fake.pid, message


def run_programs(message, workdir):
    """Do a new_worker_job as the spec says; return the output paths, as on the wire."""
    outputs = []
    for input_file in message["input_files"]:
        output = message["output_directory"] + "/" + os.path.basename(input_file)
        with open(workdir / input_file, "rb") as stdin, open(workdir / output, "wb") as stdout:
            subprocess.run([str(workdir / message["executable"])], stdin=stdin, stdout=stdout,
                           cwd=workdir, check=True, timeout=MESSAGE_TIMEOUT)
        outputs.append(output)
    return outputs


def run_sort(message, workdir):
    with open(workdir / message["output_file"], "wb") as stdout:
        subprocess.run(["sort", "--", *message["input_files"]], stdout=stdout, cwd=workdir,
                       env=dict(os.environ, LC_ALL="C"), check=True, timeout=MESSAGE_TIMEOUT)


def run_sort_ignoring_case(message, workdir):
    """A sort job done in another order: case-insensitive, as some locales sort."""
    lines = []
    for path in message["input_files"]:
        lines.extend((workdir / path).read_bytes().splitlines(keepends=True))
    lines.sort(key=lambda line: (line.lower(), line))
    (workdir / message["output_file"]).write_bytes(b"".join(lines))


def finished_status(fake, outputs, field):
    """The spec's status: a list in `output_files`, or one path in `output_file`."""
    paths = outputs if field == "output_files" else outputs[0]
    return {"message_type": "status", field: paths, "status": "finished",
            "worker_pid": fake.pid}


def as_sent(path):
    return path


def serve_job(pool, workdir, reduce_field="output_files", extensions=False, spell=as_sent,
              message_timeout=MESSAGE_TIMEOUT, sorter=run_sort):
    """Play the fake workers' part of one job to its last reduce; return (fake, task) pairs.

    Statuses name each output as `spell` writes it (as sent, by default).
    """
    tasks = []
    reduces_done = 0
    while reduces_done < SAMPLE_REDUCERS:
        fake, message = pool.next_message(message_timeout)
        kind = message.get("message_type")
        if kind == "new_worker_job":
            check_worker_job(message, fake, extensions)
            outputs = [spell(path) for path in run_programs(message, workdir)]
            is_reduce = message["output_directory"] == REDUCE_DIR
            reduces_done += is_reduce
            status = finished_status(fake, outputs,
                                     reduce_field if is_reduce else "output_files")
        elif kind == "new_sort_job":
            check_sort_job(message, fake, extensions)
            sorter(message, workdir)
            status = finished_status(fake, [spell(message["output_file"])], "output_file")
        else:
            raise AssertionError(f"unexpected message during a job: {message}")
        tasks.append((fake, message))
        fake.send(status)
    return tasks


def submit_sample_job(cluster, output, *extra):
    result = cluster.send_job("--input", SAMPLE, "--output", output, "--mapper", MAPPER,
                              "--reducer", REDUCER, "--mappers", SAMPLE_MAPPERS,
                              "--reducers", SAMPLE_REDUCERS, *extra)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def wait_for_output(output):
    wait_until(lambda: output.is_dir() and len(partition_files(output)) == SAMPLE_REDUCERS,
               timeout=MESSAGE_TIMEOUT, what=f"{SAMPLE_REDUCERS} output files in {output}")
    return partition_files(output)


def map_tasks(tasks):
    return [(fake, message) for fake, message in tasks
            if message["message_type"] == "new_worker_job"
            and message["output_directory"] == MAP_DIR]


def test_master_acks_registration_with_spec_fields(fakes):
    """register_ack has exactly the spec's fields and echoes the worker's host, port and pid."""
    fake = fakes.add()
    fake.register()
    sender, ack = fakes.next_message()
    assert sender is fake
    assert_same_message(ack, {"message_type": "register_ack", "worker_host": "localhost",
                              "worker_port": fake.port, "worker_pid": fake.pid})


@pytest.mark.parametrize("reduce_field", ["output_files", "output_file"])
def test_master_runs_a_job_on_a_foreign_worker(cluster, fakes, tmp_path, reduce_field):
    """A spec-only worker gets spec-exact tasks on wire paths and the job's output is right."""
    fake = fakes.join()
    output = tmp_path / "out"
    submit_sample_job(cluster, output)
    tasks = serve_job(fakes, cluster.workdir, reduce_field)

    maps = [message for _, message in map_tasks(tasks)]
    assert len(maps) == SAMPLE_MAPPERS
    assert sorted(len(m["input_files"]) for m in maps) == [1, 1, 1, 2]
    sample_names = sorted(p.name for p in SAMPLE.iterdir())
    assert sorted(os.path.basename(f) for m in maps for f in m["input_files"]) == sample_names
    assert all(Path(m["executable"]).resolve() == MAPPER.resolve() for m in maps)

    sorts = [m for _, m in tasks if m["message_type"] == "new_sort_job"]
    assert sorted(f for m in sorts for f in m["input_files"]) == \
        [f"{MAP_DIR}/{name}" for name in sample_names]

    reduces = [m for _, m in tasks if m["message_type"] == "new_worker_job"
               and m["output_directory"] == REDUCE_DIR]
    assert sorted(m["input_files"] for m in reduces) == \
        [[f"{GROUP_DIR}/input_0"], [f"{GROUP_DIR}/input_1"]]
    assert all(Path(m["executable"]).resolve() == REDUCER.resolve() for m in reduces)
    assert {sender for sender, _ in tasks} == {fake}

    assert_matches_sequential(wait_for_output(output), SAMPLE, MAPPER, REDUCER, SAMPLE_REDUCERS)


def test_master_splits_map_tasks_evenly(cluster, fakes, tmp_path):
    """With two workers registered, four map tasks go two to each."""
    first, second = fakes.join(), fakes.join()
    output = tmp_path / "out"
    submit_sample_job(cluster, output)
    tasks = serve_job(fakes, cluster.workdir)
    assert Counter(fake.pid for fake, _ in map_tasks(tasks)) == {first.pid: 2, second.pid: 2}
    assert_matches_sequential(wait_for_output(output), SAMPLE, MAPPER, REDUCER, SAMPLE_REDUCERS)


def test_master_sends_only_documented_extensions(cluster, fakes, tmp_path):
    """A job using extensions adds only fields documented in helper.OPTIONAL_FIELDS to tasks."""
    fakes.join()
    output = tmp_path / "out"
    submit_sample_job(cluster, output, "--timeout", "60", "--env", "CONFORMANCE=1")
    tasks = serve_job(fakes, cluster.workdir, extensions=True)
    assert any(set(m) - WORKER_JOB_FIELDS for _, m in map_tasks(tasks)), \
        "a job with extensions should carry them"
    assert_matches_sequential(wait_for_output(output), SAMPLE, MAPPER, REDUCER, SAMPLE_REDUCERS)


@pytest.mark.parametrize("spelling", ["dot", "double slash", "absolute"])
def test_master_accepts_output_paths_however_spelled(cluster, fakes, tmp_path, spelling):
    """A status naming the task's own files as ./path, with doubled slashes or absolute counts."""
    fakes.join()
    output = tmp_path / "out"
    submit_sample_job(cluster, output)
    respell = PATH_SPELLINGS[spelling]
    serve_job(fakes, cluster.workdir, spell=lambda path: respell(path, cluster.workdir),
              message_timeout=NEXT_TASK_TIMEOUT)
    assert_matches_sequential(wait_for_output(output), SAMPLE, MAPPER, REDUCER, SAMPLE_REDUCERS)


def test_master_waits_for_a_busy_worker_to_accept(cluster, fakes, tmp_path):
    """A live worker whose accept queue is full gets its tasks late, but once and only it."""
    fake = fakes.join(BusyTcpReceiver)
    output = tmp_path / "out"
    submit_sample_job(cluster, output)
    tasks = serve_job(fakes, cluster.workdir, message_timeout=MESSAGE_TIMEOUT + BUSY_SECONDS)
    maps = [message for _, message in map_tasks(tasks)]
    assert sorted(f for m in maps for f in m["input_files"]) == \
        sorted(str(p) for p in SAMPLE.iterdir()), "each map task once"
    assert_matches_sequential(wait_for_output(output), SAMPLE, MAPPER, REDUCER, SAMPLE_REDUCERS)
    assert f"worker {fake.pid} (localhost:{fake.port}) is dead" not in cluster.master_log()


def test_master_reassigns_tasks_a_busy_worker_never_took(cluster, fakes, tmp_path):
    """Tasks a live worker took no connection for within their time limit go to other
    workers without counting as attempts, and never reach it afterwards."""
    fakes.join(LongBusyTcpReceiver)
    output = tmp_path / "out"
    submit_sample_job(cluster, output, "--timeout", SHORT_TASK_TIMEOUT)
    _, first = fakes.next_message()
    assert first["message_type"] == "new_worker_job"
    # It is busy now: one more task fits its accept queue; two wait at its door.
    cluster.start_workers(2)
    wait_until(lambda: output.is_dir() and len(partition_files(output)) == SAMPLE_REDUCERS,
               timeout=LongBusyTcpReceiver.busy_seconds + MESSAGE_TIMEOUT, what="the output")
    assert_matches_sequential(partition_files(output), SAMPLE, MAPPER, REDUCER, SAMPLE_REDUCERS)
    log = cluster.master_log()
    assert log.count("accepted no connection") == 2, log
    assert log.count("attempt 1 of 4") == 2 and "attempt 2 of" not in log, log
    _, queued = fakes.next_message(LongBusyTcpReceiver.busy_seconds + MESSAGE_TIMEOUT)
    assert queued["message_type"] == "new_worker_job"  # the one its accept queue held
    # What is checked: the two it never took are not delivered once it is free
    # (a connect that was waiting may arrive, and closes empty: ignored).
    deadline = time.monotonic() + QUIET_AFTER_BUSY
    while (left := deadline - time.monotonic()) > 0:
        late = poll(fakes.inbox, left)
        assert late is None or not late[1].strip(), f"a reassigned task reached it: {late}"


def test_tasks_a_sole_worker_never_takes_fail_the_job(cluster, fakes, tmp_path):
    """With no other worker to take them, tasks a worker never accepts are failed attempts:
    the job ends visibly instead of going round for ever."""
    fake = fakes.join(DeafTcpReceiver)
    with socket.create_connection(("localhost", fake.port)):  # fills its accept queue
        result = cluster.send_job("--input", SAMPLE, "--output", tmp_path / "out", "--wait",
                                  "--timeout", SHORT_TASK_TIMEOUT, "--max-attempts", 1,
                                  timeout=SHORT_TASK_TIMEOUT + MASTER_TIMEOUT_GRACE
                                  + MESSAGE_TIMEOUT)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "attempt 1 of 1: worker accepted no connection" in result.stderr.decode()


def test_master_sorts_a_foreign_sort_bytewise(cluster, fakes, tmp_path):
    """A foreign worker's sort job output in another order is sorted bytewise before partitioning."""
    fakes.join()
    inputs = write_files(tmp_path / "in", {
        "a.txt": b"Zebra apple Apple zebra banana\nBanana apple ZEBRA mango Mango\n",
        "b.txt": b"mango APPLE zebra Zebra banana kiwi Kiwi KIWI\n",
        "c.txt": b"kiwi apple Banana zebra\n"})
    output = tmp_path / "out"
    result = cluster.send_job("--input", inputs, "--output", output, "--mapper", MAPPER,
                              "--reducer", REDUCER, "--mappers", 3,
                              "--reducers", SAMPLE_REDUCERS)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    serve_job(fakes, cluster.workdir, sorter=run_sort_ignoring_case)
    assert_matches_sequential(wait_for_output(output), inputs, MAPPER, REDUCER, SAMPLE_REDUCERS)


@pytest.mark.parametrize("wait", [False, True])
def test_client_submits_a_spec_job_to_a_foreign_master(tmp_path, wait):
    """send_job.py sends the spec's job to a master that answers nothing, and says so."""
    inbox = queue.Queue()
    master = TcpReceiver(0, inbox.put)
    try:
        result = subprocess.run([sys.executable, str(REPO / "send_job.py"), str(master.port),
                                 "--output", str(tmp_path / "out")] + (["--wait"] * wait),
                                cwd=REPO, capture_output=True, timeout=MESSAGE_TIMEOUT)
        job = parse_wire(poll(inbox, MESSAGE_TIMEOUT))
    finally:
        master.close()
    assert_same_message(job, {
        "message_type": "new_master_job", "input_directory": job["input_directory"],
        "output_directory": str(tmp_path / "out"), "mapper_executable": job["mapper_executable"],
        "reducer_executable": job["reducer_executable"], "num_mappers": SAMPLE_MAPPERS,
        "num_reducers": SAMPLE_REDUCERS})
    assert Path(REPO, job["input_directory"]).resolve() == SAMPLE.resolve()
    assert Path(REPO, job["mapper_executable"]).resolve() == MAPPER.resolve()
    assert Path(REPO, job["reducer_executable"]).resolve() == REDUCER.resolve()
    assert b"submitted" in result.stdout, result.stdout + result.stderr
    if wait:
        assert result.returncode == 1 and b"does not answer job_status" in result.stderr
    else:
        assert result.returncode == 0, result.stdout + result.stderr


def test_master_forwards_shutdown(cluster, fakes):
    """On shutdown the master sends each worker exactly {"message_type": "shutdown"} and exits."""
    fake = fakes.join()
    send_json(cluster.port, {"message_type": "shutdown"})
    sender, message = fakes.next_message()
    assert sender is fake
    assert_same_message(message, {"message_type": "shutdown"})
    assert cluster.master.wait(SHUTDOWN_TIMEOUT) == 0


# --- our worker against a foreign master -------------------------------------------

@pytest.fixture
def foreign_master(make_cluster):
    """A factory: a FakeMaster and our worker.py started against it, in a scratch directory."""
    made = []

    def start(heartbeat_interval=SPEC_HEARTBEAT_INTERVAL, worker_port=None, extra=()):
        cluster = make_cluster(env={"MAPREDUCE_HEARTBEAT_INTERVAL": str(heartbeat_interval)},
                               start=False)
        master = FakeMaster(cluster.port, worker_port or free_port())
        made.append(master)
        master.workdir = cluster.workdir
        master.worker = cluster.start_worker(port=master.worker_port, wait=False, extra=extra)
        return master

    yield start
    for master in made:
        master.close()


@pytest.fixture
def registered(foreign_master):
    """A FakeMaster whose worker has registered and been acknowledged."""
    master = foreign_master()
    master.ack(master.next_message())
    return master


def worker_job(master, input_files, output_directory, executable=MAPPER):
    return {"message_type": "new_worker_job", "input_files": input_files,
            "executable": str(executable), "output_directory": output_directory,
            "worker_pid": master.worker.pid}


def test_worker_registers_after_binding(foreign_master):
    """register has the spec's fields, and only documented optional ones beside them (a
    string worker_instance), and arrives when the worker already listens."""
    master = foreign_master()
    register = master.next_message()
    optional = {k: v for k, v in register.items() if k in helper.OPTIONAL_FIELDS["register"]}
    assert list(optional) == ["worker_instance"] and isinstance(optional["worker_instance"], str)
    assert_same_message({k: v for k, v in register.items() if k not in optional},
                        {"message_type": "register", "worker_host": "localhost",
                         "worker_port": master.worker_port, "worker_pid": master.worker.pid})
    assert master.worker_listening_at_register


def test_worker_without_its_port_does_not_register(foreign_master):
    """A worker whose port is taken exits without sending register: it binds first."""
    with socket.create_server(("localhost", 0)) as taken:
        master = foreign_master(worker_port=taken.getsockname()[1])
        assert master.worker.wait(MESSAGE_TIMEOUT) != 0
    assert poll(master.messages, QUIET_WINDOW) is None, "registered without listening"


def test_worker_heartbeats_from_ack(foreign_master):
    """No heartbeat before register_ack; a spec heartbeat on UDP PORT-1 right after it."""
    master = foreign_master()
    register = master.next_message()
    assert poll(master.heartbeats, QUIET_WINDOW) is None, "heartbeat before register_ack"
    acked_at = time.monotonic()
    master.ack(register)
    arrived, heartbeat = master.next_heartbeat()
    assert arrived - acked_at < FIRST_HEARTBEAT_LIMIT
    assert_same_message(heartbeat, {"message_type": "heartbeat",
                                    "worker_pid": master.worker.pid})


def test_worker_heartbeat_cadence(foreign_master):
    """Heartbeats keep coming about every MAPREDUCE_HEARTBEAT_INTERVAL seconds."""
    master = foreign_master(FAST_HEARTBEAT_INTERVAL)
    master.ack(master.next_message())
    received = [master.next_heartbeat() for _ in range(HEARTBEAT_SAMPLES)]
    for _, heartbeat in received:
        assert_same_message(heartbeat, {"message_type": "heartbeat",
                                        "worker_pid": master.worker.pid})
    gaps = [later - earlier for (earlier, _), (later, _) in zip(received, received[1:])]
    mean = sum(gaps) / len(gaps)
    assert FAST_HEARTBEAT_INTERVAL / 2 < mean < FAST_HEARTBEAT_INTERVAL * 2.5, gaps
    assert min(gaps) > FAST_HEARTBEAT_INTERVAL / 4, gaps


def test_worker_runs_back_to_back_tasks(registered):
    """Tasks sent back to back all run, each answered once by a spec status naming dir/basename."""
    master = registered
    contents = {"a.txt": b"one two\n", "b.txt": b"two three three\n", "c.txt": b"four\n",
                "d.txt": b"five five\n"}
    write_files(master.workdir / "input", contents)
    (master.workdir / MAP_DIR).mkdir(parents=True)
    tasks = [(["input/a.txt", "input/b.txt"], MAP_DIR + "/"), (["input/c.txt"], MAP_DIR),
             (["input/d.txt"], MAP_DIR + "/")]
    for input_files, output_directory in tasks:
        master.send(worker_job(master, input_files, output_directory))
    statuses = {}
    for _ in tasks:
        status = master.next_message()
        statuses[tuple(status.get("output_files", ()))] = status
    expected = [[f"{MAP_DIR}/{os.path.basename(f)}" for f in input_files]
                for input_files, _ in tasks]
    assert sorted(statuses) == sorted(tuple(outputs) for outputs in expected)
    for outputs in expected:
        assert_same_message(statuses[tuple(outputs)],
                            {"message_type": "status", "output_files": outputs,
                             "status": "finished", "worker_pid": master.worker.pid})
    for name, data in contents.items():
        mapped = subprocess.run([str(MAPPER)], input=data, stdout=subprocess.PIPE,
                                check=True).stdout
        assert (master.workdir / MAP_DIR / name).read_bytes() == mapped


def test_a_repeated_cancel_of_an_ended_attempt_spares_the_next_attempt(registered):
    """Our master sends cancel_task again until it hears the attempt ended, so one may
    come after it did: the next attempt of the same task sent here still runs (the
    cancel names its attempt_id), and a cancel of that attempt still stops it."""
    master = registered
    write_files(master.workdir / "input", {"a.txt": b"one two\n"})
    (master.workdir / MAP_DIR).mkdir(parents=True)
    job = worker_job(master, ["input/a.txt"], MAP_DIR)
    task = helper.task_id([master.workdir / MAP_DIR / "a.txt"])
    master.send(dict(job, attempt_id=1))
    status = master.next_message()
    assert (status["status"], status.get("attempt_id")) == ("finished", 1)  # names its attempt
    for attempt_id, cancelled, outcome in [(2, 1, "finished"), (3, 3, "failed")]:
        sent = time.monotonic()
        master.send_cancel(task, cancelled)
        master.heartbeats_after(sent, 2)  # the worker reads datagrams between heartbeats
        master.send(dict(job, attempt_id=attempt_id))
        assert master.next_message()["status"] == outcome, attempt_id
    started, go = master.workdir / "started", master.workdir / "go"  # attempt 4 runs till go
    waiting = write_script(master.workdir / "wait.sh", f"#!/bin/sh\ntouch {started}\n"
                           f"while [ ! -e {go} ]; do sleep 0.05; done\nexec cat\n")
    master.send(dict(worker_job(master, ["input/a.txt"], MAP_DIR, waiting), attempt_id=4))
    wait_until(started.exists, what="attempt 4 to run")
    sent = time.monotonic()
    master.send_cancel(task, 3)
    master.heartbeats_after(sent, 2)
    go.touch()
    assert master.next_message()["status"] == "finished"


def test_a_cancel_stops_its_attempt_while_another_of_the_task_runs(foreign_master):
    """With --slots 2 two attempts of one task can run on a worker at once (one sent
    again after the worker was taken back): a cancel of one stops that one only."""
    master = foreign_master(extra=("--slots", "2"))
    master.ack(master.next_message())
    write_files(master.workdir / "input", {"a.txt": b"one two\n"})
    (master.workdir / MAP_DIR).mkdir(parents=True)
    go = master.workdir / "go"  # each attempt writes its pid to go.ATTEMPT, then waits for go
    waiting = write_script(master.workdir / "wait.sh", f"#!/bin/sh\necho $$ > {go}.$ATTEMPT\n"
                           f"while [ ! -e {go} ]; do sleep 0.05; done\nexec cat\n")
    job = worker_job(master, ["input/a.txt"], MAP_DIR, waiting)
    for attempt_id in (5, 6):
        master.send(dict(job, attempt_id=attempt_id,
                         context={"env": {"ATTEMPT": str(attempt_id)}}))

    def attempt_pids():
        said = [path.read_text().strip() if path.exists() else ""
                for path in (master.workdir / "go.5", master.workdir / "go.6")]
        return [int(pid) for pid in said] if all(said) else None

    pids = wait_until(attempt_pids, what="both attempts to run")
    sent = time.monotonic()
    master.send_cancel(helper.task_id([master.workdir / MAP_DIR / "a.txt"]), 5)
    master.heartbeats_after(sent, 2)  # read by now
    assert master.next_message()["status"] == "failed"
    assert not pid_alive(pids[0]) and pid_alive(pids[1]), "attempt 5 stopped, 6 not"
    go.touch()
    assert master.next_message()["status"] == "finished"


def test_every_queued_task_cancelled_is_skipped_however_many(foreign_master):
    """More tasks queued on a worker than it remembers cancels for (a big job killed):
    each one cancelled is skipped when it comes out of the queue, none runs."""
    master = foreign_master(heartbeat_interval=0.2)
    master.ack(master.next_message())
    (master.workdir / MAP_DIR).mkdir(parents=True)
    go = master.workdir / "go"
    blocker = write_script(master.workdir / "block.sh",
                           f"#!/bin/sh\nwhile [ ! -e {go} ]; do sleep 0.05; done\nexec cat\n")
    write_files(master.workdir / "input", {"block.txt": b"x\n"})
    master.send(dict(worker_job(master, ["input/block.txt"], MAP_DIR, blocker), attempt_id=0))
    queued = range(1, CANCELS_REMEMBERED + 101)
    for number in queued:  # their inputs do not exist: any that ran would fail otherwise
        master.send(dict(worker_job(master, [f"input/q{number}.txt"], MAP_DIR),
                         attempt_id=number))
    master.heartbeats_after(time.monotonic(), 2)
    for first in range(0, len(queued), 100):  # a batch a read, none lost to a full buffer
        for number in queued[first:first + 100]:
            master.send_cancel(helper.task_id([master.workdir / MAP_DIR / f"q{number}.txt"]),
                               number)
        master.heartbeats_after(time.monotonic(), 2)
    go.touch()
    statuses = [master.next_message() for _ in range(len(queued) + 1)]
    errors = Counter(status.get("error") for status in statuses)
    assert errors == {None: 1, "cancelled by the master before it started": len(queued)}


def test_worker_sorts_bytewise(registered):
    """new_sort_job gets a spec status naming output_file, which holds the LC_ALL=C sort."""
    master = registered
    write_files(master.workdir / MAP_DIR, {
        "x": b"banana\t1\nApple\t1\n\xc3\xa9clair\t1\napple\t1\n",
        "y": b"apple x\t1\n_under\t1\nZebra\t1\napple\t1\n"})
    (master.workdir / GROUP_DIR).mkdir(parents=True)
    output_file = f"{GROUP_DIR}/sorted_0"
    input_files = [f"{MAP_DIR}/x", f"{MAP_DIR}/y"]
    master.send({"message_type": "new_sort_job", "input_files": input_files,
                 "output_file": output_file, "worker_pid": master.worker.pid})
    assert_same_message(master.next_message(),
                        {"message_type": "status", "output_file": output_file,
                         "status": "finished", "worker_pid": master.worker.pid})
    expected = subprocess.run(["sort", "--", *input_files], cwd=master.workdir,
                              env=dict(os.environ, LC_ALL="C"), stdout=subprocess.PIPE,
                              check=True).stdout
    assert (master.workdir / output_file).read_bytes() == expected


def test_worker_says_it_merged_bytewise_to_our_master(registered):
    """A sort job carrying our `presorted` gets `sorted: true` back: the order is bytewise."""
    master = registered
    write_files(master.workdir / MAP_DIR, {"x": b"B\t1\nb\t1\n", "y": b"A\t1\na\t1\n"})
    (master.workdir / GROUP_DIR).mkdir(parents=True)
    output_file = f"{GROUP_DIR}/sorted_0"
    master.send({"message_type": "new_sort_job", "input_files": [f"{MAP_DIR}/x", f"{MAP_DIR}/y"],
                 "output_file": output_file, "worker_pid": master.worker.pid,
                 "presorted": True})
    assert_same_message(master.next_message(),
                        {"message_type": "status", "output_file": output_file,
                         "status": "finished", "worker_pid": master.worker.pid, "sorted": True})
    assert (master.workdir / output_file).read_bytes() == b"A\t1\nB\t1\na\t1\nb\t1\n"


def test_worker_reports_failed_program(registered):
    """A program exiting non-zero gives status "failed" naming its exit code, never "finished"."""
    master = registered
    exit_code = 3
    write_script(master.workdir / "exec" / "fail.sh",
                 f"#!/bin/sh\ncat > /dev/null\necho 'no luck' >&2\nexit {exit_code}\n")
    write_files(master.workdir / "input", {"a.txt": b"some input\n"})
    (master.workdir / MAP_DIR).mkdir(parents=True)
    master.send(worker_job(master, ["input/a.txt"], MAP_DIR, executable="exec/fail.sh"))
    status = master.next_message()
    assert_fields(status, TASK_STATUS_FIELDS, extensions=True)
    assert status["status"] == "failed"
    assert is_int(status["exit_code"]) and status["exit_code"] == exit_code
    assert status["output_files"] == [f"{MAP_DIR}/a.txt"]
    assert status["worker_pid"] == master.worker.pid


def test_worker_exits_on_shutdown(registered):
    """shutdown ends the worker at once, even mid-task, leaving nothing in its session."""
    master = registered
    started = master.workdir / "started"
    write_script(master.workdir / "exec" / "hang.sh",
                 f"#!/bin/sh\ntouch {started}\nexec sleep {MESSAGE_TIMEOUT * 4:g}\n")
    write_files(master.workdir / "input", {"a.txt": b"x\n"})
    (master.workdir / MAP_DIR).mkdir(parents=True)
    master.send(worker_job(master, ["input/a.txt"], MAP_DIR, executable="exec/hang.sh"))
    wait_until(started.exists, what="the task's program to start")
    master.send({"message_type": "shutdown"})
    master.worker.wait(SHUTDOWN_TIMEOUT)
    wait_until(lambda: not session_members(master.worker.pid), timeout=SHUTDOWN_TIMEOUT,
               what="the worker's session to empty")


def test_a_foreign_workers_tasks_leave_the_builtin_counters_out(cluster, fakes, tmp_path):
    """Its tasks come back without them: totals of the rest would be short, so none are shown."""
    fakes.join()
    submit_sample_job(cluster, tmp_path / "out")
    serve_job(fakes, cluster.workdir, "output_files")
    wait_for_output(tmp_path / "out")
    status = wait_until(lambda: (lambda s: s if s.get("state") == "succeeded" else None)(
        helper.request("localhost", cluster.port, helper.job_status(0))), what="the job's end")
    assert "Map-Reduce Framework" not in (status.get("counters") or {})
    assert any("built-in counters left out" in event for event in status["events"]), status
