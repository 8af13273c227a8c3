"""A coordinator driven in-process: a clock, fake workers and the shell's duties, no sockets.

`Sim` feeds the coordinator events and keeps the commands it returns: task
messages waiting to be "run", background work waiting to be done, answers,
datagrams and revocations. Fake workers finish a task by writing its output
files and sending the status a real worker would.
"""
import os

import helper
from mrlib import events
from mrlib.coordinator import Coordinator
from mrlib.job import FAILED, SUCCEEDED

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAPPER = os.path.join(ROOT, "exec", "word_count", "map.py")
REDUCER = os.path.join(ROOT, "exec", "word_count", "reduce.py")
HEARTBEAT_LIMIT = helper.MISSED_HEARTBEATS_LIMIT * helper.HEARTBEAT_INTERVAL
ENDED = (SUCCEEDED, FAILED, "cancelled")


class Task:
    """A task message a fake worker received, and the attempt it belongs to."""

    def __init__(self, command):
        self.attempt = command.attempt
        self.message = command.message
        self.port = command.port
        self.kind = {"new_worker_job": "map_or_reduce",
                     "new_sort_job": "sort"}[command.message["message_type"]]

    @property
    def outputs(self):
        if self.kind == "sort":
            return [self.message["output_file"]]
        return [helper.output_path(self.message["output_directory"], path)
                for path in self.message["input_files"]]

    @property
    def is_map(self):
        return self.kind != "sort" and "mapper-output" in self.message["output_directory"]

    @property
    def is_reduce(self):
        return self.kind != "sort" and "reducer-output" in self.message["output_directory"]

    def status(self, pid, state=helper.FINISHED, **extensions):
        if self.kind == "sort":
            return helper.status_file(self.outputs[0], pid, state, **extensions)
        return helper.status_files(self.outputs, pid, state, **extensions)

    def __repr__(self):
        return f"<task to port {self.port}: {self.outputs}>"


class Sim:
    def __init__(self, tmp_path, **options):
        self.tmp_path = tmp_path
        self.var = str(tmp_path / "var")
        os.makedirs(self.var, exist_ok=True)
        self.now = 1000.0
        self.coordinator = Coordinator(self.var, self.var, **options)
        self.tasks = []  # delivered task messages not yet reported
        self.background = []
        self.answers = []
        self.datagrams = []
        self.revoked = set()
        self.acks = []
        self.stopped = None
        self.ports = 7000
        self.undeliverable = set()  # ports of workers that accept no connection

    # --- the shell's part --------------------------------------------------------

    def handle(self, event):
        commands = self.coordinator.handle(event, self.now)
        for command in commands:
            getattr(self, f"do_{type(command).__name__}")(*command)
        return commands

    def do_Deliver(self, attempt, host, port, message):
        self.tasks.append(Task(events.Deliver(attempt, host, port, message)))
        if port not in self.undeliverable:
            self.handle(events.Delivered(attempt, self.now))

    def do_Revoke(self, attempt):
        self.revoked.add(attempt)
        self.tasks = [t for t in self.tasks if t.attempt != attempt]

    def do_Acknowledge(self, worker, host, port, message):
        self.acks.append((worker, message))

    def do_Datagram(self, address, message):
        self.datagrams.append((address, message))

    def do_RunInBackground(self, token, name, run):
        self.background.append((token, run))

    def do_Answer(self, reply, message):
        self.answers.append(message)

    def do_RemoveFiles(self, path):
        pass

    def do_Stop(self, workers):
        self.stopped = workers

    # --- what tests do -------------------------------------------------------------

    def advance_clock(self, seconds):
        self.now += seconds
        self.handle(events.Tick())

    def pass_time(self, seconds, silent=()):
        """Let time go by in ticks, every live worker but `silent` ones heartbeating."""
        end = self.now + seconds
        while self.now < end:
            self.heartbeat_all(but=silent)
            self.advance_clock(min(helper.HEARTBEAT_INTERVAL, end - self.now))

    def register(self, pid, peer="127.0.0.1", port=None, host="localhost", instance=None):
        """Register a worker and acknowledge it; return its record."""
        if port is None:
            self.ports += 1
            port = self.ports
        self.acks.clear()
        self.handle(events.Register(helper.register(host, port, pid, instance), peer))
        if not self.acks:
            return None
        worker = self.acks[-1][0]
        self.handle(events.AckResult(worker, True))
        self.heartbeat(worker)
        return worker

    def heartbeat(self, worker):
        self.handle(events.Heartbeat(worker.pid, (worker.peer, 40000 + worker.port)))

    def heartbeat_all(self, but=()):
        for worker in self.coordinator.workers.live():
            if worker not in but:
                self.heartbeat(worker)

    def request(self, message):
        self.answers.clear()
        self.handle(events.ClientRequest(message, None))
        return self.answers[-1]

    def submit(self, mappers=4, reducers=2, files=8, **extensions):
        """Submit a word count over `files` small files; return its job id."""
        number = len(os.listdir(self.tmp_path))
        inputs = self.tmp_path / f"in{number}"
        inputs.mkdir()
        for index in range(files):
            (inputs / f"part{index}").write_bytes(b"a b c\n" * (index + 1))
        reply = self.request(helper.new_master_job(
            str(inputs), str(self.tmp_path / f"out{number}"), MAPPER, REDUCER,
            mappers, reducers, **extensions))
        assert reply["message_type"] == "job_accepted", reply
        return reply["job_id"]

    def job(self, job_id):
        return self.coordinator.jobs[job_id]

    def held_by(self, worker):
        return [t for t in self.tasks if t.port == worker.port]

    def finish(self, task, worker, peer=None):
        for path in task.outputs:
            with open(path, "wb"):
                pass
        self.report(task, worker, peer=peer)

    def report(self, task, worker, state=helper.FINISHED, peer=None, **extensions):
        if task in self.tasks:
            self.tasks.remove(task)
        self.handle(events.Status(task.status(worker.pid, state, **extensions),
                                  peer or worker.peer))

    def worker_at(self, port):
        return next(w for w in self.coordinator.workers.all() if w.port == port)

    def run_background(self):
        while self.background:
            token, run = self.background.pop(0)
            try:
                result, error = run(None), None
            except OSError as failure:
                result, error = None, str(failure)
            self.handle(events.WorkDone(token, result, error))

    def step(self):
        """Let every worker finish what it holds, and the master its background work."""
        for task in list(self.tasks):
            self.finish(task, self.worker_at(task.port))
        self.run_background()

    def run_until(self, condition, steps=20):
        for _ in range(steps):
            if condition():
                return
            self.step()
        raise AssertionError("the condition never held")

    def run_to_end(self, job_id):
        self.run_until(lambda: self.job(job_id).state in ENDED)
        return self.job(job_id)

    def phase(self, job_id):
        return self.job(job_id).phase
