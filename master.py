"""The MapReduce master.

    python3 master.py PORT [--host ADDR]

A thin shell around the coordinator (mrlib/coordinator.py), which decides
everything and owns every job, worker and attempt. The shell owns the
sockets, the threads and the clock: the TCP listener (a short thread per
message), the UDP heartbeat listener, the ticker, the couriers (one per
worker address, delivering its tasks), acknowledgements and background
work all turn what happens into events on `Master.events`. The master
thread hands them to the coordinator one at a time, in order, carries out
the commands it returns, and publishes the job snapshots it derives to the
JobBoard, which answers clients' status queries under its own lock.
"""
import argparse
import logging
import queue
import signal
import sys
import threading
import time

import helper
from mrlib import auth, dashboard, grouping, records, runner, splits, vardir
from mrlib.dashboard import Dashboard
from mrlib.coordinator import DEFAULT_KEEP_FAILED, JOB_ROOT, Coordinator
from mrlib.events import (AckResult, ClientRequest, Delivered, Heartbeat, Register, Shutdown,
                          Status, Tick, Unreachable, WorkDone)

LOG = logging.getLogger("master")

VAR_DIRECTORY = JOB_ROOT
# How often to look for dead workers and overrunning tasks. Detection takes
# MISSED_HEARTBEATS_LIMIT heartbeat intervals anyway; this only adds jitter.
TICK_INTERVAL = 0.5
# A worker binds before registering, but a slow one gets this long to accept
# its register_ack.
ACK_RETRY_SECONDS = 3.0
# How long a client waits for the master to accept or reject its job.
SUBMIT_REPLY_TIMEOUT = 10.0
# The longest a status query may hold its connection waiting for news.
MAX_STATUS_WAIT = 30.0
# At most this many status queries wait at once, each holding one of the
# TCP server's handler slots; more are answered at once, so registers,
# statuses and submissions always find a slot.
MAX_STATUS_WAITERS = helper.MAX_HANDLERS // 4
SHUTDOWN_SEND_TIMEOUT = 1.0
# A task message that could not be sent for a reason other than a connect
# timeout (which waited already) is tried again after this long.
DELIVERY_RETRY_PAUSE = 0.5
# How long shutdown waits for the helper threads (acks, background work) to end.
JOIN_TIMEOUT = 5.0
# A courier with nothing to deliver for this long ends its thread; the next
# task for that address starts a new one. Dead and departed workers leave no
# thread behind.
COURIER_IDLE_SECONDS = 30.0
# How long shutdown waits for all couriers together.
COURIER_JOIN_TIMEOUT = 1.0


class Courier:
    """Delivers one worker address's task messages, in order, off the master thread.

    A refused connection means nothing listens there any more: the attempt
    is reported unreachable (and its worker declared dead). Any other
    failure, above all a connection that times out because the worker is
    alive but its accept queue is full (a spec worker that handles one
    message at a time relies on its listen backlog, as the spec suggests),
    is retried while the attempt still counts: no task goes to a second
    worker meanwhile, and a task not accepted within its time limit is
    reassigned by the coordinator, which then revokes it here.
    """

    def __init__(self, host, port, revoked, post, stopping, idle=COURIER_IDLE_SECONDS):
        self.host, self.port = host, port
        self.idle = idle
        self.revoked = revoked  # attempt ids not to send (shared; set operations are atomic)
        self.post = post
        self.stopping = stopping
        self.outbox = queue.Queue()
        self.lock = threading.Lock()
        self.retired = False  # idle too long: it takes nothing more and its thread ends
        self.thread = threading.Thread(target=self.run, name=f"courier-{port}", daemon=True)
        self.thread.start()

    def send(self, attempt, message):
        """Queue a task message; False if this courier has retired (start another)."""
        with self.lock:
            if self.retired:
                return False
            self.outbox.put((attempt, message))
            return True

    def close(self):
        self.outbox.put(None)

    def run(self):
        while (item := self.next_item()) is not None:
            attempt, message = item
            self.deliver(attempt, message)
            self.revoked.discard(attempt)

    def next_item(self):
        """The next message, or None to end: closed, or idle for `self.idle` seconds."""
        while True:
            try:
                return self.outbox.get(timeout=self.idle)
            except queue.Empty:
                with self.lock:
                    if self.outbox.empty():
                        self.retired = True
                        return None

    def wanted(self, attempt):
        return attempt not in self.revoked and not self.stopping.is_set()

    def deliver(self, attempt, message):
        tries = 0
        while self.wanted(attempt):
            try:
                sent = helper.send_message(self.host, self.port, message,
                                           still_wanted=lambda: self.wanted(attempt))
            except ConnectionRefusedError as error:
                self.post(Unreachable(attempt, str(error)))
                return
            except OSError as error:
                if not tries:
                    LOG.warning("%s:%s: cannot deliver a task yet (%s); trying again",
                                self.host, self.port, error)
                tries += 1
                if not isinstance(error, TimeoutError):  # the connect did not wait already
                    self.stopping.wait(DELIVERY_RETRY_PAUSE)
                continue
            if sent:
                self.post(Delivered(attempt, time.monotonic()))
            return


class Couriers:
    """One live courier per worker address, started on demand; retired ones are dropped."""

    def __init__(self, revoked, post, stopping, idle=COURIER_IDLE_SECONDS):
        self.revoked, self.post, self.stopping, self.idle = revoked, post, stopping, idle
        self.by_address = {}  # (host, port) -> Courier; only the master thread changes it

    def send(self, host, port, attempt, message):
        courier = self.by_address.get((host, port))
        if courier is None or not courier.send(attempt, message):
            self.by_address = {address: c for address, c in self.by_address.items()
                               if not c.retired}
            courier = self.by_address[(host, port)] = Courier(
                host, port, self.revoked, self.post, self.stopping, self.idle)
            courier.send(attempt, message)

    def threads(self):
        return [c.thread for c in self.by_address.values() if c.thread.is_alive()]

    def close(self):
        for courier in self.by_address.values():
            courier.close()

    def join(self, timeout):
        deadline = time.monotonic() + timeout
        for courier in self.by_address.values():
            courier.thread.join(max(0.0, deadline - time.monotonic()))


class Reply:
    """A one-shot slot a connection thread waits on for the master's answer."""

    def __init__(self):
        self.ready = threading.Event()
        self.value = None

    def set(self, value):
        self.value = value
        self.ready.set()

    def wait(self, timeout):
        self.ready.wait(timeout)
        return self.value


class JobBoard:
    """Snapshots of every job for client queries; its own lock, no master state."""

    def __init__(self):
        self.changed = threading.Condition()
        self.snapshots = {}
        self.version = 0
        self.waiters = 0  # status queries waiting now
        self.closed = False  # shutting down: no query waits any more

    def all(self):
        with self.changed:
            return [dict(s) for s in self.snapshots.values()]

    def get(self, job_id):
        with self.changed:
            snapshot = self.snapshots.get(job_id)
            return dict(snapshot) if snapshot is not None else None

    def publish(self, snapshots):
        with self.changed:
            for snapshot in snapshots:
                self.version += 1
                snapshot["version"] = self.version
                self.snapshots[snapshot["job_id"]] = snapshot
            self.changed.notify_all()

    def close(self):
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    def query(self, message):
        """Answer job_status, waiting up to `wait` s for a version > after_version."""
        job_id = message["job_id"]
        after = message.get("after_version", -1)
        wait = min(max(message.get("wait", 0), 0), MAX_STATUS_WAIT)
        with self.changed:
            if self.waiters < MAX_STATUS_WAITERS:
                self.waiters += 1
                try:
                    self.changed.wait_for(
                        lambda: self.closed
                        or self.snapshots.get(job_id, {}).get("version", -1) > after,
                        timeout=wait)
                finally:
                    self.waiters -= 1
            snapshot = self.snapshots.get(job_id)
        if snapshot is None:
            return {"message_type": "job_status_reply", "job_id": job_id, "state": "unknown",
                    "error": f"no job {job_id}"}
        return dict(snapshot)


class Helpers:
    """Short threads the shell starts (acknowledgements, background work), joined on shutdown."""

    def __init__(self):
        self.threads = set()
        self.lock = threading.Lock()

    def start(self, name, target, *args):
        def run():
            try:
                target(*args)
            finally:
                with self.lock:
                    self.threads.discard(threading.current_thread())
        thread = threading.Thread(target=run, name=name, daemon=True)
        with self.lock:
            self.threads.add(thread)
        thread.start()

    def join(self, timeout):
        deadline = time.monotonic() + timeout
        with self.lock:
            threads = list(self.threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class Master:
    """The shell: binds, turns I/O into events for the coordinator, carries out its commands."""

    def __init__(self, port, host="localhost", keep_intermediate=False,
                 keep_failed=DEFAULT_KEEP_FAILED, http=None):
        self.events = queue.Queue()
        self.stopping = threading.Event()
        self.board = JobBoard()
        self.guard = runner.ProgramGuard()
        self.revoked = set()
        self.couriers = Couriers(self.revoked, self.post, self.stopping)
        self.dashboard = None
        self.helpers = Helpers()
        # Bind first: a master that cannot have its ports never touches var/.
        try:
            self.server = helper.MessageServer(host, port, self.receive, "master", with_peer=True)
        except OSError as error:
            raise OSError(f"cannot listen on TCP {host}:{port}: {error.strerror}") from None
        try:
            self.heartbeats = helper.HeartbeatListener(host, helper.heartbeat_port(port),
                                                       self.receive_heartbeat, "master")
        except OSError as error:
            self.server.close()
            raise OSError(f"cannot listen for heartbeats on UDP {host}:{helper.heartbeat_port(port)} "
                          f"(PORT-1): "
                          f"{error.strerror}") from None
        if http is not None:
            self.dashboard = self.bind_dashboard(*http)
        self.var = vardir.VarDirectory(VAR_DIRECTORY, port).claim()
        self.coordinator = Coordinator(self.var.path, VAR_DIRECTORY, keep_intermediate,
                                       keep_failed)
        self.janitor = vardir.Janitor()
        self.ticker = threading.Thread(target=self.tick_loop, name="ticker", daemon=True)

    def bind_dashboard(self, host, port):
        try:
            return Dashboard(host, port, self.board, self.ask, VAR_DIRECTORY,
                             dashboard.token_for(helper.current_secret()))
        except OSError as error:
            self.release_ports()
            raise OSError(f"cannot serve the dashboard on {host}:{port}: "
                          f"{error.strerror}") from None

    def release_ports(self):
        self.server.close()
        self.server.sock.close()
        self.heartbeats.sock.close()

    # --- other threads: only post events ----------------------------------

    def ask(self, message):
        """The coordinator's answer to a client message, from another thread (the dashboard)."""
        reply = Reply()
        self.post(ClientRequest(message, reply))
        return reply.wait(SUBMIT_REPLY_TIMEOUT)

    def post(self, event):
        self.events.put(event)

    def receive(self, message, peer):
        """Called on a connection thread for every valid message."""
        kind = message["message_type"]
        if kind == "job_status":
            return self.board.query(message)
        if kind in ("new_master_job", "cluster_status", "cancel_job"):
            reply = Reply()
            self.post(ClientRequest(message, reply))
            return reply.wait(SUBMIT_REPLY_TIMEOUT)
        if kind == "register":
            self.post(Register(message, peer))
        elif kind == "status":
            self.post(Status(message, peer))
        elif kind == "shutdown":
            self.post(Shutdown())
        else:
            LOG.warning("dropped a %s message: the master does not take it", kind)
        return None

    def receive_heartbeat(self, pid, sender):
        self.post(Heartbeat(pid, sender))

    def tick_loop(self):
        while not self.stopping.wait(TICK_INTERVAL):
            self.post(Tick())

    # --- the master thread -------------------------------------------------

    def run(self):
        LOG.info("listening on TCP %s and UDP %s", self.server.port,
                 helper.heartbeat_port(self.server.port))  # before any thread can log
        if self.dashboard is not None:
            host, port = self.dashboard.server.server_address[:2]
            token = f"?token={self.dashboard.token}" if self.dashboard.token else ""
            LOG.info("dashboard on http://%s:%s/%s", host, port, token)
            self.dashboard.start()
        self.server.start()
        self.heartbeats.start()
        self.ticker.start()
        while not self.stopping.is_set():
            self.handle(self.events.get())
        self.close()

    def handle(self, event):
        if isinstance(event, Delivered):  # a revoke that came too late is not kept
            self.revoked.discard(event.attempt)
        try:
            commands = self.coordinator.handle(event, time.monotonic())
        except Exception:  # a bug in one handler must not stop the master
            LOG.exception("error handling %s", type(event).__name__)
            commands = self.coordinator.commands
        self.board.publish(self.coordinator.snapshots())
        for command in commands:
            try:
                getattr(self, f"do_{type(command).__name__}")(*command)
            except Exception:
                LOG.exception("error carrying out %s", type(command).__name__)

    def close(self):
        if self.dashboard is not None:
            self.dashboard.stop()
        self.board.close()  # status queries answer now, so their threads end
        self.server.stop()
        self.heartbeats.stop()
        self.couriers.close()
        self.guard.close()  # background sorts and merges end here
        self.ticker.join(1.0)
        self.helpers.join(JOIN_TIMEOUT)
        self.couriers.join(COURIER_JOIN_TIMEOUT)
        self.janitor.close()
        self.var.close()

    # --- commands ------------------------------------------------------------

    def do_Deliver(self, attempt, host, port, message):
        self.couriers.send(host, port, attempt, message)

    def do_Revoke(self, attempt):
        self.revoked.add(attempt)

    def do_Acknowledge(self, worker, host, port, message):
        """From a thread of its own: a slow worker never holds up the master."""
        self.helpers.start(f"ack-{port}", self.deliver_ack, worker, host, port, message)

    def deliver_ack(self, worker, host, port, message):
        try:
            delivered = helper.send_with_retry(host, port, message, ACK_RETRY_SECONDS)
        except ValueError as error:  # e.g. a host name no resolver accepts
            LOG.error("cannot acknowledge %s: %s", worker, error)
            delivered = False
        self.post(AckResult(worker, delivered))

    def do_Datagram(self, address, message):
        self.heartbeats.reply(address, message)

    def do_RunInBackground(self, token, name, run):
        self.helpers.start(name, self.run_in_background, token, name, run)

    def run_in_background(self, token, name, run):
        # Whatever happens, even a bug in an except clause, the coordinator hears of it:
        # a job waiting for work that never reports would wait forever.
        result, error = None, f"{name} ended without a result (a bug: see the master's log)"
        try:
            result, error = run(self.guard), None
        except (OSError, runner.TaskFailed, splits.TooManySplits, records.RecordError) as failure:
            error = str(failure)
        except Exception as failure:  # a bug or MemoryError: fail the job, never wedge it
            LOG.exception("%s failed", name)
            error = f"{type(failure).__name__}: {failure}"
        finally:
            self.post(WorkDone(token, result, error))

    def do_Answer(self, reply, message):
        reply.set(message)

    def do_RemoveFiles(self, path):
        self.janitor.remove(path)

    def do_Stop(self, workers):
        senders = [threading.Thread(target=_send_quietly, args=(host, port, helper.shutdown()),
                                    daemon=True) for host, port in workers]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join(SHUTDOWN_SEND_TIMEOUT + 0.5)
        self.stopping.set()


def _send_quietly(host, port, message):
    try:
        helper.send_message(host, port, message, timeout=SHUTDOWN_SEND_TIMEOUT)
    except OSError:
        pass


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Run the MapReduce master.")
    parser.add_argument("port", type=int, help="TCP port for messages; heartbeats use PORT-1")
    parser.add_argument("--host", default="localhost",
                        help="address to bind (default: localhost; 0.0.0.0 for all)")
    parser.add_argument("--keep-intermediate", action="store_true",
                        help="keep every job's intermediate files in var/ (default: a "
                             "successful job keeps only var/job-N/reducer-output)")
    auth.add_arguments(parser, listens=True)
    parser.add_argument("--keep-failed", type=int, default=DEFAULT_KEEP_FAILED, metavar="N",
                        help="keep the files of the last N failed jobs for inspection "
                             f"(default {DEFAULT_KEEP_FAILED}); older ones are removed")
    parser.add_argument("--http-port", type=int, metavar="PORT",
                        help="serve the web dashboard on this port (see README, 'Dashboard')")
    parser.add_argument("--http-host", default="localhost",
                        help="address the dashboard binds (default: localhost)")
    args = parser.parse_args(argv)
    if args.http_port is not None and not 0 <= args.http_port < 65536:
        parser.error(f"--http-port {args.http_port} out of range")
    if not 1 < args.port < 65536:
        parser.error(f"port {args.port} out of range")
    if args.keep_failed < 0:
        parser.error(f"--keep-failed must be 0 or more, got {args.keep_failed}")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    helper.configure_logging("master")
    if not helper.setup_secret(args, args.host):
        return 2
    http = None
    if args.http_port is not None:
        if not helper.setup_secret(args, args.http_host):  # the same rule for the dashboard
            return 2
        http = (args.http_host, args.http_port)
    grouping.raise_open_file_limit()
    try:
        master = Master(args.port, args.host, args.keep_intermediate, args.keep_failed, http)
    except (OSError, vardir.VarUnavailable) as error:
        LOG.error("cannot start: %s", error)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: master.post(Shutdown()))
    signal.signal(signal.SIGINT, lambda *_: master.post(Shutdown()))
    master.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
