"""A MapReduce worker: registers with the master, heartbeats, runs tasks.

    python3 worker.py MASTER_PORT WORKER_PORT
    python3 worker.py MASTER_HOST:MASTER_PORT WORKER_PORT --host 0.0.0.0 --advertise HOST

Threads: the TCP server only validates and queues; `slots` executor threads
run queued tasks in arrival order; a heartbeat thread starts after
`register_ack` and also reads what our master sends back to its socket
(cancel a task, register again); the main thread registers again when told.
Mutable state: the task queue (a queue.Queue), the events, and the running
and cancelled tasks, under `Worker.lock`.
"""
import argparse
import collections
from contextlib import closing
import ipaddress
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time

import helper
from mrlib import auth, records, runner
from mrlib.attemptlog import AttemptLog

LOG = logging.getLogger("worker")

# How long to keep trying to reach the master at start-up: long enough for a
# master that is still starting, short enough that a typo'd port fails fast.
REGISTER_DEADLINE = 30.0
# A status not delivered for this long is logged (and then sent on trying,
# STATUS_RETRY_PAUSE apart, while the master is the same one).
STATUS_DEADLINE = 10.0
STATUS_RETRY_PAUSE = 1.0
# Not acknowledged this many heartbeat intervals after a register (a lost
# ack, a live worker elsewhere with our pid), or told by the master that it
# does not know us (it restarted): register again.
REGISTER_RETRY_INTERVALS = 3
# Once registered, how long a later register may keep being refused.
REREGISTER_DEADLINE = 5.0
INSTANCE_BYTES = 8
# How long a register waits for a refusal (our master with another secret
# says so; any master closes the connection at once otherwise).
REFUSAL_WAIT = 1.0
# The master refusing our messages is logged at most this often.
REFUSED_LOG_INTERVAL = 30.0
# Cancels remembered that matched no queued or running task: for one that
# ended, or one whose message is not queued yet (the master only cancels
# tasks it delivered).
CANCELS_REMEMBERED = 1024


def same_attempt(one, other):
    """Two attempt ids of a task: the same attempt, or one not known (another master's)."""
    return one is None or other is None or one == other


class Task:
    """One map/reduce (`new_worker_job`) or sort (`new_sort_job`) message."""

    def __init__(self, message):
        self.message = message
        self.kind = message["message_type"]
        self.id = helper.task_id(self.outputs())
        self.attempt_id = message.get("attempt_id")  # our master's; None from another
        self.cancelled = False  # while queued

    def outputs(self):
        if self.kind == "new_sort_job":
            return [helper.normalize_path(self.message["output_file"])]
        return [helper.output_path(self.message["output_directory"], path)
                for path in self.message["input_files"]]

    def describe(self):
        if self.message.get("task_label"):  # our master's: job, task and attempt
            return self.message["task_label"]
        if self.kind == "new_sort_job":
            return f"sort -> {self.message['output_file']}"
        files = self.message["input_files"]
        return f"{os.path.basename(self.message['executable'])} over {len(files)} file(s)"


class Worker:
    """Registers with the master, heartbeats, and runs the tasks it is sent."""

    def __init__(self, master_host, master_port, port, host="localhost",
                 advertise=None, slots=1):
        self.master = (master_host, master_port)
        self.pid = os.getpid()
        self.stopping = threading.Event()
        self.tasks = queue.Queue()
        self.guard = runner.ProgramGuard(adopt_orphans=True)
        self.server = helper.MessageServer(host, port, self.handle, "worker")
        self.host = advertise or host
        # What we send leaves from the address we listen on, when that is one
        # address: the master knows a worker by that address and its pid.
        self.source = source_address(host)
        self.port = self.server.port
        self.heartbeat_thread = None
        self.registered = threading.Event()  # cleared when the master does not know us
        self.acked_at = None  # time.monotonic() of the last register_ack
        self.refused_said_at = None  # when we last logged that the master refuses us
        self.instance = os.urandom(INSTANCE_BYTES).hex()  # this process, among same-pid ones
        # Task -> TaskGuard of each running attempt (with --slots, two attempts of a
        # task may run here at once); the tasks queued; (task id, attempt id) of
        # cancels that matched neither (ended, or not here yet).
        self.running = {}
        self.queued = {}  # task id -> the Tasks of that id queued
        self.cancelled = collections.deque(maxlen=CANCELS_REMEMBERED)
        # Bumped when the master turns out to have restarted: the tasks of its
        # earlier life are stopped, and no status of theirs is sent to the new
        # one (its job ids, and so its task paths, start again from 0).
        self.epoch = 0
        self.lock = threading.Lock()
        self.wake = threading.Event()  # keep_registered has something to look at
        self.executors = [threading.Thread(target=self.execute_loop, name=f"executor-{n}",
                                           daemon=True) for n in range(slots)]
        self.handlers = {
            "register_ack": self.on_register_ack,
            "new_worker_job": self.on_task,
            "new_sort_job": self.on_task,
            "shutdown": self.on_shutdown,
        }

    # --- lifecycle ---------------------------------------------------------

    def run(self):
        """Listen first, then register; return once shut down."""
        LOG.info("listening on %s:%s, registering with %s:%s",
                 self.host, self.port, *self.master)  # before any thread can log
        self.server.start()
        for thread in self.executors:
            thread.start()
        if not self.register(REGISTER_DEADLINE):
            stopped = self.stopping.is_set()  # SIGTERM or Ctrl-C while registering
            if not stopped:
                LOG.error("could not reach the master at %s:%s", *self.master)
            self.stop()
            self.close()
            return 0 if stopped else 1
        self.keep_registered()
        self.close()
        return 0

    def register(self, deadline):
        try:
            return helper.send_with_retry(*self.master,
                                          helper.register(self.host, self.port, self.pid,
                                                          self.instance),
                                          deadline, pause=0.2, source=self.source,
                                          refusal_wait=REFUSAL_WAIT, stop=self.stopping)
        except helper.NotAuthenticated as error:
            self.refused(str(error))
            return False

    def refused(self, reason):
        """The master refuses our messages for their signature: say so, now and then."""
        now = time.monotonic()
        if self.refused_said_at is not None and now - self.refused_said_at < REFUSED_LOG_INTERVAL:
            return
        self.refused_said_at = now
        LOG.error("the master at %s:%s refuses this worker's messages: %s. Give the master and "
                  "every worker the same secret (--secret-file), and keep their clocks within "
                  "a minute", *self.master, reason)

    def keep_registered(self):
        """Until shut down: register again whenever the master does not know us."""
        retry = REGISTER_RETRY_INTERVALS * helper.HEARTBEAT_INTERVAL
        while True:
            self.wake.wait(retry)
            self.wake.clear()
            if self.stopping.is_set():
                return
            if not self.registered.is_set():
                LOG.info("not registered with the master: registering again")
                self.register(REREGISTER_DEADLINE)

    def stop(self):
        self.stopping.set()
        self.wake.set()

    def close(self):
        """Kill running programs, then stop every thread."""
        self.guard.close()
        self.server.stop()
        for _ in self.executors:
            self.tasks.put(None)
        for thread in self.executors:
            thread.join(1.0)
        if self.heartbeat_thread is not None:
            self.heartbeat_thread.join(1.0)

    # --- messages ----------------------------------------------------------

    def handle(self, message):
        handler = self.handlers.get(message["message_type"])
        if handler is None:
            LOG.warning("ignored a %s message: workers do not take it", message["message_type"])
            return None
        if "worker_pid" in message and message["worker_pid"] != self.pid:
            LOG.warning("ignored a %s for pid %s (this worker is %s)",
                        message["message_type"], message["worker_pid"], self.pid)
            return None
        handler(message)
        return None

    def on_register_ack(self, message):
        self.acked_at = time.monotonic()
        self.registered.set()
        if self.heartbeat_thread is not None:
            return
        LOG.info("registered with the master")
        self.heartbeat_thread = threading.Thread(target=self.heartbeat_loop,
                                                 name="heartbeat", daemon=True)
        self.heartbeat_thread.start()

    def on_task(self, message):
        task = Task(message)
        with self.lock:
            task.epoch = self.epoch
            self.queued.setdefault(task.id, set()).add(task)
        LOG.info("queued %s", task.describe())
        self.tasks.put(task)

    def on_shutdown(self, message):
        LOG.info("shutting down")
        self.guard.kill_all()
        self.stop()

    # --- threads -----------------------------------------------------------

    def heartbeat_loop(self):
        master_host, master_port = self.master
        family = socket.AF_INET6 if ":" in (self.source or "") else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            if self.source is not None:
                try:
                    sock.bind((self.source, 0))
                except OSError as error:
                    LOG.warning("heartbeats not sent from %s: %s", self.source, error)
            # Connected, so the kernel drops datagrams from anyone but the
            # master: a cancel_task from elsewhere never reaches us.
            while not self.stopping.is_set():
                try:
                    sock.connect((master_host, helper.heartbeat_port(master_port)))
                    break
                except OSError as error:
                    LOG.warning("cannot address heartbeats to %s:%s: %s", master_host,
                                helper.heartbeat_port(master_port), error)
                    self.stopping.wait(helper.HEARTBEAT_INTERVAL)
            sock.setblocking(False)
            failing = False
            while not self.stopping.is_set():
                try:
                    sock.send(helper.encode(helper.heartbeat(self.pid)))
                    failing = False
                except OSError as error:  # e.g. refused while the master restarts
                    if not failing:
                        LOG.warning("heartbeat not sent: %s", error)
                    failing = True
                self.stopping.wait(helper.HEARTBEAT_INTERVAL)
                self.read_master_datagrams(sock)

    def read_master_datagrams(self, sock):
        """What our master sends back to the heartbeat socket: stop a task, or register again."""
        for message in helper.receive_datagrams(sock):
            if message["message_type"] == helper.REFUSAL_TYPE:
                self.refused(message["error"])
                continue
            if message["message_type"] == "cancel_task" and message["worker_pid"] == self.pid:
                self.cancel(message["task_id"], message.get("attempt_id"))
            if message["message_type"] == "unknown_worker" and message["worker_pid"] == self.pid \
                    and self.registered.is_set() and not self.just_acked():
                LOG.warning("the master does not know this worker (restarted?): stopping its "
                            "earlier tasks and registering again")
                self.forget_earlier_master()
                self.registered.clear()
                self.wake.set()

    def just_acked(self):
        """An answer to a heartbeat sent before our last register may still arrive: not news."""
        return time.monotonic() - self.acked_at < 2 * helper.HEARTBEAT_INTERVAL

    def forget_earlier_master(self):
        """Stop every task of the master's earlier life; send none of their statuses."""
        with self.lock:
            self.epoch += 1
            self.cancelled.clear()
            self.queued.clear()  # dropped as they come out of the queue
            guards = list(self.running.values())
        for guard in guards:
            guard.cancel()

    def current(self, task):
        with self.lock:
            return task.epoch == self.epoch

    def cancel(self, task_id, attempt_id=None):
        """Stop a task the master no longer counts: kill it if it runs, skip it if queued.
        With an attempt_id, only that attempt of the task (the master repeats a cancel
        until it hears the attempt ended: it may come after, and a later attempt of the
        same task may be sent here)."""
        with self.lock:
            guards = [guard for task, guard in self.running.items()
                      if task.id == task_id and same_attempt(task.attempt_id, attempt_id)]
            queued = [task for task in self.queued.get(task_id, ())
                      if same_attempt(task.attempt_id, attempt_id)]
            for task in queued:
                task.cancelled = True
            if not guards and not queued and (task_id, attempt_id) not in self.cancelled:
                self.cancelled.append((task_id, attempt_id))
        for guard in guards:
            if not guard.cancelled:
                LOG.info("task %s cancelled by the master: stopping it", task_id)
            guard.cancel()

    def unqueue(self, task):
        """(Under self.lock) the task is out of the queue."""
        tasks = self.queued.get(task.id, set())
        tasks.discard(task)
        if not tasks:
            self.queued.pop(task.id, None)

    def start(self, task):
        """The task's own guard, or None if it was cancelled before it started."""
        with self.lock:
            self.unqueue(task)
            if task.cancelled:
                return None
            for cancel in self.cancelled:
                if cancel[0] == task.id and same_attempt(cancel[1], task.attempt_id):
                    self.cancelled.remove(cancel)
                    return None
            guard = self.running[task] = runner.TaskGuard(self.guard)
            return guard

    def execute_loop(self):
        while not self.stopping.is_set():
            task = self.tasks.get()
            if task is None or self.stopping.is_set():
                return
            if not self.current(task):
                LOG.info("dropped %s: a task of the master before its restart", task.describe())
                with self.lock:
                    self.unqueue(task)
                continue
            status = self.execute(task)
            if task.attempt_id is not None:  # our master's: which attempt this was
                status["attempt_id"] = task.attempt_id
            if self.stopping.is_set():
                return
            if not self.current(task):  # the master restarted while it ran
                continue
            self.deliver_status(task, status)

    def deliver_status(self, task, status):
        """Send a task's status until it is delivered, the master restarts or we stop.

        A lost status would leave the task waiting at the master for its whole
        time limit, so a link that is down (or dropping packets) for a while
        only delays it.
        """
        said = False
        while not self.stopping.is_set() and self.current(task):
            if helper.send_with_retry(*self.master, status, STATUS_DEADLINE, pause=0.2,
                                      source=self.source):
                if said:
                    LOG.info("status for %s delivered at last", task.describe())
                return
            if not said:
                LOG.error("status for %s not delivered in %g s; still trying",
                          task.describe(), STATUS_DEADLINE)
                said = True
            self.stopping.wait(STATUS_RETRY_PAUSE)

    def execute(self, task):
        """Run a task; return the status message to send. Never raises."""
        guard = self.start(task)
        if guard is None:
            return self.failed_status(task, error="cancelled by the master before it started")
        try:
            reason = self.unfit_for(task)
            if reason is not None:
                LOG.error("cannot run %s: %s", task.describe(), reason)
                return self.failed_status(task, error=reason, unfit=True)
            began = time.monotonic()
            if task.kind == "new_sort_job":
                status = self.execute_sort(task.message, guard)
            else:
                status = self.execute_programs(task.message, guard)
            if guard.cancelled:
                return self.failed_status(task, error="cancelled by the master")
            if "task_label" in task.message:  # our master's: it draws the time it ran
                status["run_seconds"] = round(time.monotonic() - began, 3)
            return status
        except Exception as error:  # a bug or an odd input must not end this thread
            LOG.exception("task %s failed unexpectedly", task.describe())
            failure = runner.TaskFailed(f"worker error: {error!r}")
            return self.failed_status(task, **_failure_fields(failure))
        finally:
            with self.lock:
                self.running.pop(task, None)
            guard.close()  # what the attempt started and left running (setsid) dies now

    def failed_status(self, task, **fields):
        if task.kind == "new_sort_job":
            return helper.status_file(task.message["output_file"], self.pid, helper.FAILED,
                                      **fields)
        return helper.status_files(task.outputs(), self.pid, helper.FAILED, **fields)

    @staticmethod
    def unfit_for(task):
        """Why this worker cannot run the task at all (its fault, not the task's), or None.

        The master makes a job's directories before it sends a task, so a
        worker that cannot see them runs in the wrong directory, or on a host
        without the shared filesystem.
        """
        message = task.message
        if task.kind == "new_sort_job":
            directory = os.path.dirname(helper.normalize_path(message["output_file"])) or "."
        else:
            directory = message["output_directory"]
        if not os.path.isdir(directory):
            return (f"this worker cannot see {directory} from {os.getcwd()}: start it in the "
                    f"master's working directory, or give it --workdir")
        # A missing program is not looked at here: it would be missing on
        # every worker alike (say, removed after submission), and setting
        # them all aside would stall every later job. It fails the task.
        return None

    def execute_sort(self, message, guard):
        output = helper.normalize_path(message["output_file"])
        try:
            with closing(self.attempt_log(message, guard)) as log:
                runner.sort_files(message["input_files"], output,
                                  merge=message.get("presorted") is True,
                                  timeout=message.get("timeout"), guard=guard, log=log,
                                  layout=records.Layout.from_field(message.get("records")))
        except runner.TaskFailed as failure:
            LOG.error("sort into %s failed: %s", output, failure)
            return helper.status_file(output, self.pid, helper.FAILED, **_failure_fields(failure))
        LOG.info("sorted %d file(s) into %s", len(message["input_files"]), output)
        # `sorted` only for a master that speaks our extensions (it sent
        # `presorted`): a spec master gets the spec's status.
        return helper.status_file(output, self.pid,
                                  sorted=True if "presorted" in message else None)

    def execute_programs(self, message, guard):
        with closing(self.attempt_log(message, guard)) as log:
            return self.run_inputs(message, guard, log)

    @staticmethod
    def attempt_log(message, guard):
        """Where this attempt's stderr goes: nowhere once the master cancelled it."""
        return AttemptLog(message.get("log_file"), still_wanted=lambda: not guard.cancelled)

    def run_inputs(self, message, guard, log):
        """Each input file through the task's programs; the status to send."""
        outputs = [helper.output_path(message["output_directory"], path)
                   for path in message["input_files"]]
        context = runner.TaskContext(message.get("context"))
        sort_output = message.get("sort_output") is True
        counting = runner.Counting.from_message(message.get("builtin_counters"),
                                                message.get("record_units"))
        layout = records.Layout.from_field(message.get("records"))
        record_size = message.get("check_record_size")
        report = runner.Report()
        for input_file, output in zip(message["input_files"], outputs):
            if len(outputs) > 1:
                log.section(input_file)
            try:
                report.merge(runner.run_task_program(
                    message["executable"], input_file, output,
                    combiner=message.get("combiner_executable"), sort_output=sort_output,
                    env=context.environment(input_file), timeout=message.get("timeout"),
                    guard=guard, log=log, counting=counting, spills=sort_output,
                    layout=layout, output_records=records.Layout(record_size)
                    if isinstance(record_size, int) and record_size > 0 else None))
            except runner.TaskFailed as failure:
                LOG.error("task failed: %s: %s", Task(message).describe(), failure)
                return helper.status_files(outputs, self.pid, helper.FAILED,
                                           **_failure_fields(failure))
        LOG.info("finished %s", Task(message).describe())
        return helper.status_files(outputs, self.pid, counters=report.counters or None,
                                   task_status=report.status, sorted=sort_output or None)


def source_address(host):
    """The address to send from: `host` if it is one IP address, else None (any).

    A wildcard (0.0.0.0, ::) or a host name leaves the choice to the kernel,
    as before.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return None if address.is_unspecified else host


def _failure_fields(failure):
    return {"exit_code": failure.exit_code, "error": failure.reason,
            "stderr_tail": failure.stderr_tail or None, "input_file": failure.input_file}


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Run a MapReduce worker.")
    parser.add_argument("master", help="the master's TCP port, or HOST:PORT")
    parser.add_argument("port", type=helper.port_number,
                        help="the TCP port this worker listens on")
    parser.add_argument("--host", default="localhost",
                        help="address to bind (default: localhost; 0.0.0.0 for all); "
                             "an IP address is also the one messages to the master leave from")
    parser.add_argument("--advertise", default=None,
                        help="host name the master should use to reach this worker "
                             "(default: the --host value)")
    parser.add_argument("--slots", type=int, default=1,
                        help="tasks run at the same time (default: 1)")
    auth.add_arguments(parser, listens=True)
    parser.add_argument("--workdir", default=None,
                        help="directory to resolve the master's relative paths from")
    args = parser.parse_args(argv)
    try:
        args.master_host, args.master_port = helper.parse_address(args.master)
    except ValueError as error:
        parser.error(f"bad master address {args.master!r}: {error}")
    if args.slots < 1:
        parser.error("--slots must be at least 1")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    helper.configure_logging("worker")
    if not helper.setup_secret(args, args.host):
        return 2
    if args.workdir:
        try:
            os.chdir(args.workdir)
        except OSError as error:
            LOG.error("cannot use --workdir %s: %s", args.workdir, error.strerror)
            return 2
    try:
        worker = Worker(args.master_host, args.master_port, args.port, args.host,
                        args.advertise, args.slots)
    except OSError as error:
        LOG.error("cannot listen on %s:%s: %s", args.host, args.port, error)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
