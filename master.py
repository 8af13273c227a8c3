"""The MapReduce master.

    python3 master.py PORT [--host ADDR]

One owner for mutable state: the master thread. The TCP listener (a short
thread per message), the UDP heartbeat listener, the ticker, the couriers
(one per worker, delivering its tasks) and background grouping threads
never change workers, jobs or tasks: they post events on `Master.events`,
which the master thread runs one at a time, in order.
Client status queries are answered by the JobBoard, which holds copies under
its own lock.
"""
import argparse
import collections
import logging
import os
import queue
import signal
import sys
import threading
import time

import helper
from mrlib import grouping, runner, splits, vardir
from mrlib.job import (CANCELLED, FAILED, GROUP, MAP, MERGE, PUBLISH, REDUCE, SORT, SPLIT,
                       SUCCEEDED, Job, task_key)
from mrlib.jobspec import DEFAULT_TASK_TIMEOUT, JobRejected, JobSpec

LOG = logging.getLogger("master")

VAR_DIRECTORY = "var"
# Failed jobs whose files stay in var/ for inspection; older ones are removed.
DEFAULT_KEEP_FAILED = 5
# How often to look for dead workers and overrunning tasks. Detection takes
# MISSED_HEARTBEATS_LIMIT heartbeat intervals anyway; this only adds jitter.
TICK_INTERVAL = 0.5
# A worker binds before registering, but a slow one gets this long to accept
# its register_ack.
ACK_RETRY_SECONDS = 3.0
# Our worker kills a program at the job's task_timeout; the master's own
# check waits this much longer, for workers that do not enforce it.
TIMEOUT_GRACE = 10.0
# How long a client waits for the master to accept or reject its job.
SUBMIT_REPLY_TIMEOUT = 10.0
# The longest a status query may hold its connection waiting for news.
MAX_STATUS_WAIT = 30.0
SHUTDOWN_SEND_TIMEOUT = 1.0
# A task message that could not be sent for a reason other than a connect
# timeout (which waited already) is tried again after this long.
DELIVERY_RETRY_PAUSE = 0.5
# Backup tasks (speculative jobs only): a task running this many times the
# phase's median task time, and at least this long, gets a copy on an idle worker.
SPECULATIVE_SLOWDOWN = 1.5
SPECULATIVE_MIN_SECONDS = 1.0
# A worker the master does not know is asked to register again at most this
# often (in heartbeat intervals): our worker registers within one, and an
# answer to a heartbeat sent before it registered must not reach it after.
REGISTER_ASK_INTERVALS = 3


class WorkerRecord:
    """What the master knows of one worker. Never removed, only marked dead."""

    def __init__(self, pid, host, port, order):
        self.pid = pid
        self.host = host
        self.port = port
        self.order = order
        self.acked = False
        self.dead = False
        # It cannot run this master's tasks (it does not see their files):
        # set aside like a dead worker, and not taken back by its heartbeats.
        self.unfit = False
        self.last_seen = time.monotonic()
        self.heartbeat_address = None  # where its heartbeats come from (UDP)
        self.tasks = set()  # keys of tasks of the current job assigned to it
        # Keys of tasks it is still running although they no longer count
        # (a backup won, its job ended, it was wrongly declared dead), with
        # when they stopped counting: they keep it busy until it reports them.
        self.leftovers = {}
        self.deliveries = {}  # task key -> Delivery of the task's message to it
        # Bumped when it is declared dead: messages queued for an earlier
        # life are not delivered (their tasks went to other workers).
        self.epoch = 0
        self.courier = None  # started with its first task, closed when it dies

    @property
    def state(self):
        if self.dead:
            return "unfit" if self.unfit else "dead"
        return "ready" if self.idle else "busy"

    @property
    def idle(self):
        return not self.tasks and not self.leftovers

    @property
    def load(self):
        return len(self.tasks) + len(self.leftovers)

    def assign(self, key, delivery):
        """Count a task as this worker's; `delivery` carries its message."""
        previous = self.deliveries.get(key)
        if previous is not None and not previous.delivered:
            previous.revoked = True
        self.tasks.add(key)
        self.deliveries[key] = delivery

    def unassign(self, key):
        """It reported the task: it is no longer this worker's."""
        self.tasks.discard(key)
        self.deliveries.pop(key, None)

    def undelivered(self, key):
        delivery = self.deliveries.get(key)
        return delivery is not None and not delivery.delivered

    def delivered_at(self, key):
        """When the task's message reached it; 0 if it has not (yet)."""
        delivery = self.deliveries.get(key)
        return delivery.delivered_at if delivery is not None and delivery.delivered else 0

    def set_aside(self, key):
        """Stop counting a task as this worker's. If its message never reached
        the worker, it never will; else the worker still runs it, and it stays
        a leftover until the worker reports it."""
        self.tasks.discard(key)
        delivery = self.deliveries.pop(key, None)
        if delivery is not None and not delivery.delivered:
            delivery.revoked = True
            return
        self.leftovers[key] = time.monotonic()

    def heard_from(self, key):
        """It reported a task: if that was a leftover, it no longer runs it."""
        self.leftovers.pop(key, None)

    def forget_leftovers(self, before):
        """Drop leftovers set aside before `before`: their status was lost."""
        for key in [k for k, since in self.leftovers.items() if since < before]:
            del self.leftovers[key]

    def __str__(self):
        return f"worker {self.pid} ({self.host}:{self.port})"


class Delivery:
    """One task message on its way to a worker.

    Shared by the master thread, which revokes it if the task stops being
    that worker's before it was sent, and the worker's courier, which marks
    it delivered; each writes only its own flag. The courier looks again once
    connected, so a message revoked while its connect waited is not sent; one
    revoked in the instant before it is sent still arrives, which is harmless:
    the first result wins, and outputs are renamed into place.
    """

    def __init__(self, key, message):
        self.key = key
        self.message = message
        self.revoked = False
        self.delivered_at = None  # monotonic, set by the courier once sent

    @property
    def delivered(self):
        return self.delivered_at is not None


class Courier:
    """Delivers one worker's task messages, in order, off the master thread.

    A refused connection means nothing listens there any more: the worker is
    reported unreachable (and declared dead). Any other failure, above all a
    connection that times out because the worker is alive but its accept
    queue is full (a spec worker that handles one message at a time relies on
    its listen backlog, as the spec suggests), is retried while the message
    still counts: no task goes to a second worker meanwhile, and a task not
    accepted within its time limit is reassigned (Master.check_timeouts).
    """

    def __init__(self, worker, report_delivered, report_unreachable, stopping):
        self.worker = worker
        self.report_delivered = report_delivered
        self.report_unreachable = report_unreachable
        self.stopping = stopping
        self.outbox = queue.Queue()
        self.thread = threading.Thread(target=self.run, name=f"courier-{worker.pid}",
                                       daemon=True)
        self.thread.start()

    def send(self, delivery):
        self.outbox.put((delivery, self.worker.epoch))

    def close(self):
        self.outbox.put(None)

    def run(self):
        while (item := self.outbox.get()) is not None:
            self.deliver(*item)

    def counts(self, delivery, epoch):
        return (self.worker.epoch == epoch and not delivery.revoked
                and not self.stopping.is_set())

    def deliver(self, delivery, epoch):
        worker, tries = self.worker, 0
        while self.counts(delivery, epoch):
            try:
                sent = helper.send_message(worker.host, worker.port, delivery.message,
                                           still_wanted=lambda: self.counts(delivery, epoch))
            except ConnectionRefusedError as error:
                self.report_unreachable(worker, epoch, error)
                return
            except OSError as error:
                if not tries:
                    LOG.warning("%s: cannot deliver a task yet (%s); trying again", worker, error)
                tries += 1
                if not isinstance(error, TimeoutError):  # the connect did not wait already
                    self.stopping.wait(DELIVERY_RETRY_PAUSE)
                continue
            if sent:
                delivery.delivered_at = time.monotonic()
                self.report_delivered(worker, delivery)
            return


class WorkerRegistry:
    """All workers ever registered, by pid."""

    def __init__(self):
        self.by_pid = {}
        self.registrations = 0
        self.unknown_warned = set()
        self.asked_to_register = {}  # pid -> when it was last asked (monotonic)

    def add(self, pid, host, port):
        self.registrations += 1
        record = WorkerRecord(pid, host, port, self.registrations)
        replaced = self.by_pid.get(pid)
        if replaced is not None and replaced.courier is not None:
            replaced.courier.close()
        self.by_pid[pid] = record
        return record

    def close(self):
        for worker in self.by_pid.values():
            if worker.courier is not None:
                worker.courier.close()

    def get(self, pid):
        return self.by_pid.get(pid)

    def live(self):
        return [w for w in self.by_pid.values() if w.acked and not w.dead]

    def at_address(self, host, port):
        return [w for w in self.live() if (w.host, w.port) == (host, port)]

    def choose(self, avoid=()):
        """The least loaded live worker, preferring ones not in `avoid`."""
        candidates = sorted(self.live(), key=lambda w: (w.load, w.order))
        preferred = [w for w in candidates if w.pid not in avoid]
        return (preferred or candidates or [None])[0]

    def overdue(self, now, limit):
        return [w for w in self.live() if now - w.last_seen > limit]

    def release_all(self):
        """The job ended: whatever a worker still runs of it is a leftover."""
        for worker in self.by_pid.values():
            for key in list(worker.tasks):
                worker.set_aside(key)


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

    def publish(self, job):
        snapshot = job.snapshot()
        with self.changed:
            self.version += 1
            snapshot["version"] = self.version
            self.snapshots[job.id] = snapshot
            self.changed.notify_all()

    def query(self, message):
        """Answer job_status, waiting up to `wait` s for a version > after_version."""
        job_id = message["job_id"]
        after = message.get("after_version", -1)
        wait = min(max(message.get("wait", 0), 0), MAX_STATUS_WAIT)
        with self.changed:
            self.changed.wait_for(
                lambda: self.snapshots.get(job_id, {}).get("version", -1) > after, timeout=wait)
            snapshot = self.snapshots.get(job_id)
        if snapshot is None:
            return {"message_type": "job_status_reply", "job_id": job_id, "state": "unknown",
                    "error": f"no job {job_id}"}
        return dict(snapshot)


class Master:
    """Accepts jobs, tracks workers, and drives each job through its phases."""

    def __init__(self, port, host="localhost", keep_intermediate=False,
                 keep_failed=DEFAULT_KEEP_FAILED):
        self.events = queue.Queue()
        self.stopping = threading.Event()
        self.workers = WorkerRegistry()
        self.waiting = collections.deque()
        self.current = None
        self.next_job_id = 0
        self.board = JobBoard()
        self.guard = runner.ProgramGuard()
        # Bind first: a master that cannot have its ports never touches var/.
        try:
            self.server = helper.MessageServer(host, port, self.receive, "master")
        except OSError as error:
            raise OSError(f"cannot listen on TCP {host}:{port}: {error.strerror}") from None
        try:
            self.heartbeats = helper.HeartbeatListener(host, port - 1, self.receive_heartbeat,
                                                       "master")
        except OSError as error:
            raise OSError(f"cannot listen for heartbeats on UDP {host}:{port - 1} (PORT-1): "
                          f"{error.strerror}") from None
        self.var = vardir.VarDirectory(VAR_DIRECTORY, port).claim()
        self.keep_intermediate = keep_intermediate
        self.keep_failed = keep_failed
        self.failed_jobs = collections.deque()  # failed jobs whose files are kept
        self.janitor = vardir.Janitor()
        self.ticker = threading.Thread(target=self.tick_loop, name="ticker", daemon=True)
        self.handlers = {
            "register": self.on_register,
            "new_master_job": self.on_new_job,
            "status": self.on_status,
            "shutdown": self.on_shutdown,
        }
        # Client requests answered from the master thread (see Reply).
        self.client_handlers = {
            "new_master_job": self.on_new_job,
            "cluster_status": self.on_cluster_status,
            "cancel_job": self.on_cancel,
        }

    # --- other threads: only post events ----------------------------------

    def post(self, function, *args):
        self.events.put((function, args))

    def receive(self, message):
        """Called on a connection thread for every valid message."""
        kind = message["message_type"]
        if kind == "job_status":
            return self.board.query(message)
        if kind in self.client_handlers:
            reply = Reply()
            self.post(self.client_handlers[kind], message, reply)
            return reply.wait(SUBMIT_REPLY_TIMEOUT)
        if kind not in self.handlers:
            LOG.warning("dropped a %s message: the master does not take it", kind)
            return None
        self.post(self.handlers[kind], message)
        return None

    def receive_heartbeat(self, pid, sender):
        self.post(self.on_heartbeat, pid, sender)

    def tick_loop(self):
        while not self.stopping.wait(TICK_INTERVAL):
            self.post(self.on_tick)

    # --- the master thread -------------------------------------------------

    def run(self):
        self.server.start()
        self.heartbeats.start()
        self.ticker.start()
        LOG.info("listening on TCP %s and UDP %s", self.server.port, self.server.port - 1)
        while not self.stopping.is_set():
            function, args = self.events.get()
            try:
                function(*args)
            except Exception:  # a bug in one handler must not stop the master
                LOG.exception("error in %s", getattr(function, "__name__", function))
        self.close()

    def close(self):
        self.server.stop()
        self.heartbeats.stop()
        self.workers.close()
        self.guard.close()
        self.ticker.join(1.0)
        self.janitor.close()
        self.var.close()

    def on_cluster_status(self, message, reply):
        now = time.monotonic()
        workers = [{"pid": w.pid, "host": w.host, "port": w.port, "state": w.state,
                    "tasks": w.load, "since_heartbeat": round(now - w.last_seen, 3)}
                   for w in sorted(self.workers.by_pid.values(), key=lambda w: w.order) if w.acked]
        reply.set({"message_type": "cluster_status_reply", "workers": workers,
                   "current_job": self.current.id if self.current else None,
                   "queued_jobs": [job.id for job in self.waiting],
                   "var_directory": self.var.path})

    def on_shutdown(self, message=None):
        LOG.info("shutting down: telling %d worker(s)", len(self.workers.by_pid))
        senders = [threading.Thread(target=_send_quietly, args=(w.host, w.port, helper.shutdown()),
                                    daemon=True) for w in self.workers.by_pid.values()]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join(SHUTDOWN_SEND_TIMEOUT + 0.5)
        self.stopping.set()

    # --- workers -----------------------------------------------------------

    def on_register(self, message):
        pid, host, port = message["worker_pid"], message["worker_host"], message["worker_port"]
        known = self.workers.get(pid)
        live = known is not None and known.acked and not known.dead
        if live and (known.host, known.port) != (host, port):
            # An impostor, or another host's worker that happens to have the
            # same pid: either way the live worker stays. Ours registers again
            # until acknowledged, so the other gets in once this one is gone.
            LOG.warning("register from %s:%s ignored: pid %s is %s, which is alive",
                        host, port, pid, known)
            return
        for old in self.workers.at_address(host, port):
            if old.pid != pid:  # nothing else can listen there: it was restarted
                self.declare_dead(old, f"replaced by worker {pid} on the same port")
        if live:
            self.send_ack(known)  # a repeated register: acknowledge again, keep its tasks
            return
        if known is not None:
            self.declare_dead(known, "registered again")
        self.send_ack(self.workers.add(pid, host, port))

    def courier_for(self, worker):
        if worker.courier is None:
            worker.courier = Courier(worker, self.report_delivered, self.report_unreachable,
                                     self.stopping)
        return worker.courier

    def report_delivered(self, worker, delivery):
        """Called on a courier's thread."""
        self.post(self.on_delivered, worker, delivery)

    def report_unreachable(self, worker, epoch, error):
        """Called on a courier's thread."""
        self.post(self.on_unreachable, worker, epoch, error)

    def on_delivered(self, worker, delivery):
        """The task reached the worker: its time limit runs from now."""
        job = self.current
        task = job.tasks.get(delivery.key) if job is not None else None
        if task is None or task.done or worker.deliveries.get(delivery.key) is not delivery:
            return
        if task.worker == worker.pid:
            task.started = delivery.delivered_at
        elif worker.pid in task.backups:
            task.backups[worker.pid] = delivery.delivered_at

    def on_unreachable(self, worker, epoch, error):
        if worker.epoch == epoch:  # not already dead (and maybe back) since
            self.declare_dead(worker, f"unreachable: {error}")

    def send_ack(self, record):
        """Acknowledge from a thread of its own: a slow worker never holds up the master."""
        ack = helper.register_ack(record.host, record.port, record.pid)
        threading.Thread(target=self.deliver_ack, args=(record, ack), name=f"ack-{record.pid}",
                         daemon=True).start()

    def deliver_ack(self, record, ack):
        try:
            delivered = helper.send_with_retry(record.host, record.port, ack, ACK_RETRY_SECONDS)
        except ValueError as error:  # e.g. a host name no resolver accepts
            LOG.error("cannot acknowledge %s: %s", record, error)
            delivered = False
        self.post(self.on_ack_result, record, delivered)

    def on_ack_result(self, record, delivered):
        if not delivered:
            LOG.error("%s never accepted register_ack; not registered", record)
            if record.acked:  # a repeated register: what it held goes elsewhere
                self.declare_dead(record, "did not accept register_ack")
            record.dead = True
            return
        first = not record.acked
        record.acked = True
        record.last_seen = time.monotonic()
        if first:
            LOG.info("registered %s", record)
            if self.current is not None:
                self.current.note(f"worker {record.pid} registered")
        self.start_next_job()
        self.dispatch()

    def on_heartbeat(self, pid, sender=None):
        worker = self.workers.get(pid)
        if worker is None:
            if pid not in self.workers.unknown_warned:
                self.workers.unknown_warned.add(pid)
                LOG.warning("heartbeat from unregistered pid %s dropped; asking it to "
                            "register", pid)
            if sender is not None:  # a worker of the master before a restart: ours rejoins
                self.ask_to_register(pid, sender)
            return
        worker.last_seen = time.monotonic()
        worker.heartbeat_address = sender
        if worker.dead and worker.acked and not worker.unfit:
            worker.dead = False
            LOG.info("%s is heartbeating again: taken back as ready", worker)
            self.note(f"worker {pid} heartbeating again, taken back")
            self.start_next_job()
            self.dispatch()

    def ask_to_register(self, pid, sender):
        now = time.monotonic()
        every = REGISTER_ASK_INTERVALS * helper.HEARTBEAT_INTERVAL
        asked = self.workers.asked_to_register
        if now - asked.get(pid, float("-inf")) < every:
            return
        for old in [p for p, when in asked.items() if now - when >= every]:
            del asked[old]  # bounded by the pids heard from in one interval
        asked[pid] = now
        self.heartbeats.reply(sender, helper.unknown_worker(pid))

    def on_tick(self):
        now = time.monotonic()
        limit = helper.MISSED_HEARTBEATS_LIMIT * helper.HEARTBEAT_INTERVAL
        lost = self.workers.overdue(now, limit)
        for worker in lost:
            self.declare_dead(worker, f"no heartbeat for {now - worker.last_seen:.1f} s")
        self.check_timeouts(now)
        self.forget_lost_leftovers(now)
        self.stop_leftovers()
        if self.current is not None:  # the dead workers' tasks: declare_dead posted a dispatch
            self.speculate(self.current)

    def stop_leftovers(self):
        """Ask our workers to stop the attempts that no longer count, until they report them.

        Over UDP, to the worker's heartbeat socket, which only our worker
        reads: another implementation's worker finishes them and is ignored.
        Sent again every tick, as a datagram may be lost.
        """
        for worker in self.workers.by_pid.values():
            if worker.heartbeat_address is None:
                continue
            for key in worker.leftovers:
                self.heartbeats.reply(worker.heartbeat_address,
                                      helper.cancel_task(worker.pid, helper.task_id(key)))

    def forget_lost_leftovers(self, now):
        timeout = max(DEFAULT_TASK_TIMEOUT,
                      self.current.spec.task_timeout if self.current else 0)
        for worker in self.workers.by_pid.values():
            worker.forget_leftovers(now - timeout - TIMEOUT_GRACE)

    def declare_dead(self, worker, reason):
        """Mark a worker dead and put its unfinished tasks back to pending."""
        if worker.dead:
            return
        worker.dead = True
        worker.epoch += 1
        LOG.warning("%s is dead: %s", worker, reason)
        self.note(f"worker {worker.pid} dead ({reason})")
        job = self.current
        for key in sorted(worker.tasks):
            task = job.tasks.get(key) if job else None
            if task is None or task.done or worker.pid not in task.holders():
                continue
            task.drop_holder(worker.pid)
            if task.worker is None:
                LOG.info("job %d: %s will be reassigned", job.id, task.name)
                self.note(f"{task.name} reassigned from dead worker {worker.pid}")
        for key in list(worker.tasks):  # if it was wrongly declared dead, it still runs them
            worker.set_aside(key)
        if worker.courier is not None:  # what it still had to deliver is dropped (epoch)
            worker.courier.close()
            worker.courier = None
        if job is not None:
            self.board.publish(job)
            # Wherever the death was found (a heartbeat tick, a refused send in
            # the middle of a dispatch or of speculation), its tasks go out next.
            self.post(self.dispatch)

    def note(self, text):
        if self.current is not None:
            self.current.note(text)

    # --- jobs --------------------------------------------------------------

    def on_new_job(self, message, reply=None):
        reply = reply or Reply()
        try:
            spec = JobSpec.from_message(message, self.var.path)
            self.check_output_free(spec)
        except JobRejected as rejection:
            LOG.error("rejected a job: %s", rejection)
            reply.set({"message_type": "job_rejected", "error": str(rejection)})
            return
        job = Job(self.next_job_id, spec, VAR_DIRECTORY)
        try:
            job.make_directories()
        except OSError as error:
            LOG.error("rejected a job: cannot create %s: %s", job.directory, error)
            reply.set({"message_type": "job_rejected", "error": f"cannot create directories: {error}"})
            return
        self.next_job_id += 1
        self.waiting.append(job)
        self.board.publish(job)
        LOG.info("job %d accepted: %s -> %s (%d queued)", job.id, spec.input_directory,
                 spec.output_directory, len(self.waiting))
        reply.set({"message_type": "job_accepted", "job_id": job.id})
        self.start_next_job()

    def on_cancel(self, message, reply):
        """Cancel a queued or running job: it ends, its files kept as a failed job's."""
        job_id = message["job_id"]
        job = self.current if self.current is not None and self.current.id == job_id else None
        queued = [j for j in self.waiting if j.id == job_id]
        if queued:
            job = queued[0]
            self.waiting.remove(job)
        if job is None:
            reply.set(self.board.query({"job_id": job_id}))  # unknown, or ended already
            return
        if job.phase == PUBLISH:
            reply.set(dict(job.snapshot(), error=f"job {job_id} is publishing its outputs "
                                                  f"and can no longer be cancelled"))
            return
        LOG.info("job %d cancelled by a client", job_id)
        job.end(CANCELLED, "cancelled by a client")
        self.keep_failed_job(job)
        if job is self.current:
            self.end_job(job)
        else:
            self.board.publish(job)
        reply.set(job.snapshot())

    def check_output_free(self, spec):
        """Two jobs writing one output directory would leave a mix of both outputs."""
        for job in ([self.current] if self.current else []) + list(self.waiting):
            if os.path.realpath(job.spec.output_directory) == \
                    os.path.realpath(spec.output_directory):
                raise JobRejected(f"output_directory {spec.output_directory} is job {job.id}'s, "
                                  f"which is {job.state}: wait for it, or choose another")

    def start_next_job(self):
        if self.current is not None or not self.waiting or not self.workers.live():
            return
        job = self.current = self.waiting.popleft()
        LOG.info("job %d started", job.id)
        if job.spec.split_size:
            job.begin_phase(SPLIT, [])
            self.board.publish(job)
            self.in_background(job, self.make_splits, self.start_map)
            return
        self.start_map(job, None)

    def make_splits(self, job):
        """On a background thread: cut the input into split files."""
        spec = job.spec
        planned = splits.plan(spec.input_files(), spec.split_size, spec.record_size)
        return splits.materialize(planned, job.splits_dir)

    def start_map(self, job, made_splits):
        try:
            tasks = job.map_tasks(made_splits)
        except OSError as error:
            self.fail_job(job, f"cannot list the input: {error}")
            return
        if not tasks:
            self.start_group(job)
            return
        self.begin_phase(job, MAP, tasks)

    def in_background(self, job, work, then):
        """Run work(job) off the master thread; then(job, result) back on it.

        If work raises, or the job stopped being current meanwhile, the job
        fails (or the result is dropped) instead.
        """
        what = work.__name__.replace("_", " ")

        def run():
            try:
                result, error = work(job), None
            except (OSError, runner.TaskFailed, splits.TooManySplits) as failure:
                result, error = None, f"{what} failed: {failure}"
            except Exception as failure:  # a bug or MemoryError: fail the job, never wedge it
                LOG.exception("job %d: %s failed", job.id, what)
                result, error = None, f"{what} failed: {type(failure).__name__}: {failure}"
            self.post(self.after_background, job, then, result, error)

        threading.Thread(target=run, name=f"{work.__name__}-{job.id}", daemon=True).start()

    def after_background(self, job, then, result, error):
        if job is not self.current:
            return
        if error:
            self.fail_job(job, error)
            return
        then(job, result)

    def begin_phase(self, job, phase, tasks):
        job.begin_phase(phase, tasks)
        LOG.info("job %d: %s phase, %d task(s)", job.id, phase, len(tasks))
        self.board.publish(job)
        self.dispatch()

    def start_group(self, job):
        if job.spec.num_reducers == 0:
            self.finish_job(job)
            return
        if not job.map_outputs:
            self.start_merge(job)
            return
        self.begin_phase(job, GROUP, job.sort_tasks(len(self.workers.live())))

    def start_merge(self, job):
        sorted_paths = job.sorted_outputs() if job.phase == GROUP else []
        # Another worker may sort in its own locale's order: only our
        # worker's `sorted: true` promises bytewise order.
        unsure = [path for path in sorted_paths if not job.all_sorted([path])]
        job.begin_phase(MERGE, [])
        LOG.info("job %d: merging %d sorted file(s) into %d partition(s)",
                 job.id, len(sorted_paths), job.spec.num_reducers)
        if unsure:
            LOG.info("job %d: sorting %d of them bytewise first: their workers did not "
                     "say they sort bytewise", job.id, len(unsure))
        self.board.publish(job)
        def merge(job):
            self.merge(job, sorted_paths, unsure)
        self.in_background(job, merge, self.start_reduce)

    def merge(self, job, sorted_paths, unsure):
        """On a background thread: build grouper-output/input_*."""
        for path in unsure:
            runner.sort_files([path], path, guard=self.guard)
        grouping.merge_and_partition(sorted_paths, job.grouper_dir, job.spec.num_reducers,
                                     job.spec.partitioner, self.guard)

    def start_reduce(self, job, _):
        self.begin_phase(job, REDUCE, job.reduce_tasks())

    def advance(self, job):
        """Called when every task of the current phase is done."""
        if job.phase == MAP:
            self.start_group(job)
        elif job.phase == GROUP:
            self.start_merge(job)
        elif job.phase == REDUCE:
            self.finish_job(job)

    def finish_job(self, job):
        job.begin_phase(PUBLISH, [])
        self.board.publish(job)
        self.in_background(job, self.publish, self.job_succeeded)

    def publish(self, job):
        """On a background thread: the outputs into place, then the intermediates away."""
        try:
            job.publish_outputs()
        except (OSError, ValueError) as error:
            raise OSError(f"cannot write the output to {job.spec.output_directory}: "
                          f"{error}") from None
        if not (self.keep_intermediate or job.spec.keep_intermediate):
            for path in job.intermediate_paths():
                self.janitor.remove_now(path)

    def job_succeeded(self, job, _):
        job.end(SUCCEEDED)
        LOG.info("job %d succeeded: %d file(s) in %s (%.2f s)", job.id, len(job.outputs),
                 job.spec.output_directory, job.timings["total"])
        if job.counters:
            LOG.info("job %d counters: %s", job.id, job.counters)
        self.end_job(job)

    def fail_job(self, job, reason):
        job.end(FAILED, reason)
        LOG.error("job %d failed: %s (intermediate files kept in %s)", job.id, reason,
                  job.directory)
        self.keep_failed_job(job)
        self.end_job(job)

    def keep_failed_job(self, job):
        """Keep a failed job's files; past keep_failed of them, remove the oldest."""
        self.failed_jobs.append(job)
        while len(self.failed_jobs) > self.keep_failed and not self.keep_intermediate:
            old = self.failed_jobs.popleft()
            LOG.info("job %d: removing %s (only the last %d failed jobs are kept)",
                     old.id, old.directory, self.keep_failed)
            old.files_kept = False
            self.janitor.remove(old.directory)
            if old is not job:
                self.board.publish(old)

    def end_job(self, job):
        self.board.publish(job)
        self.current = None
        self.workers.release_all()
        self.start_next_job()

    # --- tasks -------------------------------------------------------------

    def dispatch(self):
        """Send every pending task of the current phase to a live worker."""
        job = self.current
        if job is None:
            return
        for task in job.pending_tasks():
            worker = self.workers.choose(avoid=task.failed_on)
            if worker is None:
                return
            self.send_task(job, task, worker)
        self.speculate(job)

    def speculate(self, job):
        """Near a phase's end, give idle workers copies of the slowest tasks.

        Off unless the job asks (the spec forbids duplicate work): a task
        qualifies once it has run SPECULATIVE_SLOWDOWN times the phase's
        median task time (and at least SPECULATIVE_MIN_SECONDS); the first
        copy to finish wins, as in the MapReduce paper's backup tasks.
        """
        typical = job.typical_duration()
        if not job.spec.speculative or typical is None or job.pending_tasks():
            return
        threshold = max(SPECULATIVE_MIN_SECONDS, SPECULATIVE_SLOWDOWN * typical)
        now = time.monotonic()
        for worker in [w for w in self.workers.live() if w.idle]:
            candidates = [t for t in job.running_tasks()
                          if not t.backups and worker.pid not in t.holders()
                          and worker.pid not in t.failed_on and now - t.started >= threshold]
            if not candidates:
                return
            task = min(candidates, key=lambda t: t.started)
            self.send_task(job, task, worker, backup=True)
            LOG.info("job %d: backup of %s on %s", job.id, task.name, worker)
            job.note(f"backup of {task.name} started on worker {worker.pid}")

    def task_extensions(self, job, task):
        """Optional fields for task messages: only what differs from the spec's job."""
        timeout = job.spec.task_timeout
        extensions = {"timeout": timeout if timeout != DEFAULT_TASK_TIMEOUT else None}
        if task.kind == MAP:
            extensions["combiner_executable"] = job.spec.combiner_executable
            # Ask for map-side sorting: the group phase then only merges.
            extensions["sort_output"] = True if job.spec.num_reducers > 0 else None
        elif task.kind == SORT:
            # Only where our workers said they sorted: another worker ignores sort_output.
            extensions["presorted"] = True if job.all_sorted(task.inputs) else None
        return extensions

    def send_task(self, job, task, worker, backup=False):
        """Hand a task to a worker's courier; a refused delivery declares it dead."""
        delivery = Delivery(task.key, task.message(worker.pid, self.task_extensions(job, task)))
        courier = self.courier_for(worker)
        worker.assign(task.key, delivery)
        courier.send(delivery)
        if backup:
            task.backups[worker.pid] = time.monotonic()
        else:
            task.worker, task.started = worker.pid, time.monotonic()
        LOG.debug("job %d: %s sent to %s", job.id, task.name, worker)

    def on_status(self, message):
        pid = message["worker_pid"]
        worker = self.workers.get(pid)
        if worker is None:
            LOG.warning("status from unknown pid %s dropped", pid)
            return
        outputs = message.get("output_files") or [message.get("output_file", "")]
        key = task_key(outputs)
        worker.heard_from(key)
        job = self.current
        task = job.tasks.get(key) if job is not None else None
        if task is None:
            LOG.info("status from %s matches no current task (stale?): %s", worker,
                     ", ".join(outputs[:3]))
            return
        if message["status"] == helper.FINISHED:
            self.task_finished(job, task, worker, message)
        elif message["status"] == helper.FAILED:
            if task.done or pid not in task.holders():
                LOG.info("ignored a stale failure of %s from %s", task.name, worker)
                return
            if message.get("unfit") is True:
                self.set_unfit(worker, message.get("error") or "unfit")
                return
            self.attempt_failed(job, task, pid, _failure_text(message))
        else:
            LOG.warning("status %r from %s dropped: expected finished or failed",
                        message["status"], worker)

    def set_unfit(self, worker, reason):
        """The failure was the worker's, not the task's: set the worker aside, count no attempt."""
        LOG.error("%s set aside: %s", worker, reason)
        worker.unfit = True
        self.declare_dead(worker, f"unfit: {reason}")

    def task_finished(self, job, task, worker, message):
        if task.done:
            LOG.info("job %d: duplicate finish of %s from %s ignored", job.id, task.name, worker)
            return
        missing = [path for path in task.outputs if not os.path.isfile(path)]
        if missing:
            if worker.pid in task.holders():
                self.attempt_failed(job, task, worker.pid,
                                    f"reported finished but {missing[0]} is missing")
            else:
                LOG.warning("ignored a finish of %s from %s: %s is missing",
                            task.name, worker, missing[0])
            return
        task.done = True
        task.finished_by = worker.pid
        started = task.started_by(worker.pid)
        task.duration = time.monotonic() - started if started is not None else None
        if task.backups:
            winner = "backup" if worker.pid in task.backups else "original"
            self.note(f"{task.name}: the {winner} finished first")
        self.release(task, worker.pid)
        worker.unassign(task.key)
        if worker.dead:
            LOG.info("job %d: accepted a late result of %s from dead %s", job.id, task.name, worker)
            self.note(f"{task.name}: late result from dead worker {worker.pid} accepted")
        if task.kind in (MAP, SORT):
            job.record_sorted(task.outputs, message.get("sorted") is True)
        if isinstance(message.get("counters"), dict):
            job.add_counters(message["counters"])
        if message.get("task_status"):
            LOG.info("job %d: %s says: %s", job.id, task.name, message["task_status"])
        self.board.publish(job)
        if job.phase_complete():
            self.advance(job)
        else:
            self.speculate(job)

    def release(self, task, winner):
        """The task is done: the other holders' copies become leftovers."""
        for pid in task.holders():
            holder = self.workers.get(pid)
            if holder is not None and pid != winner:
                holder.set_aside(task.key)
        task.worker, task.backups = None, {}

    def attempt_failed(self, job, task, failed_pid, reason):
        holder = self.workers.get(failed_pid)
        if holder is not None:
            holder.unassign(task.key)
        task.drop_holder(failed_pid)
        task.failures += 1
        task.failed_on.add(failed_pid)
        text = (f"{task.name} (input {task.describe_inputs()}) failed on worker {failed_pid}, "
                f"attempt {task.failures} of {job.spec.max_attempts}: {reason}")
        LOG.error("job %d: %s", job.id, text)
        job.note(text)
        if task.failures >= job.spec.max_attempts:
            self.fail_job(job, text)
            return
        self.board.publish(job)
        self.dispatch()

    def check_timeouts(self, now):
        job = self.current
        if job is None:
            return
        limit = job.spec.task_timeout + TIMEOUT_GRACE
        for task in job.running_tasks():
            holder = self.workers.get(task.worker)
            # From delivery (which on_delivered may not have recorded yet).
            if now - max(task.started, holder.delivered_at(task.key) if holder else 0) <= limit:
                continue
            if holder is not None and holder.undelivered(task.key):
                self.not_accepted(job, task, holder, limit)
            else:
                if holder is not None:  # a worker that ignores `timeout` may still run it
                    holder.set_aside(task.key)
                self.attempt_failed(job, task, task.worker,
                                    f"no result after {job.spec.task_timeout:g} s")
            if job is not self.current:
                return

    def not_accepted(self, job, task, holder, limit):
        """A live worker took no connection for a task's whole time limit:
        the task goes to another worker. Not a failed attempt, as it never
        ran, unless no other worker could take it (else it would go round
        for ever)."""
        holder.set_aside(task.key)  # revokes the undelivered message
        if not any(w is not holder for w in self.workers.live()):
            self.attempt_failed(job, task, holder.pid,
                                f"worker accepted no connection in {limit:g} s")
            return
        task.drop_holder(holder.pid)
        task.failed_on.add(holder.pid)  # avoided when it is sent again
        text = f"{task.name}: worker {holder.pid} accepted no connection in {limit:g} s; reassigned"
        LOG.warning("job %d: %s", job.id, text)
        job.note(text)
        self.board.publish(job)
        self.post(self.dispatch)


def _failure_text(message):
    parts = [message.get("error") or "failed"]
    if message.get("input_file"):
        parts.append(f"input {message['input_file']}")
    if message.get("exit_code") is not None:
        parts.append(f"exit code {message['exit_code']}")
    text = "; ".join(parts)
    if message.get("stderr_tail"):
        text += f"; stderr tail: {message['stderr_tail'].strip()[-500:]!r}"
    return text


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
    parser.add_argument("--keep-failed", type=int, default=DEFAULT_KEEP_FAILED, metavar="N",
                        help="keep the files of the last N failed jobs for inspection "
                             f"(default {DEFAULT_KEEP_FAILED}); older ones are removed")
    args = parser.parse_args(argv)
    if not 1 < args.port < 65536:
        parser.error(f"port {args.port} out of range")
    if args.keep_failed < 0:
        parser.error(f"--keep-failed must be 0 or more, got {args.keep_failed}")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    helper.configure_logging("master")
    grouping.raise_open_file_limit()
    try:
        master = Master(args.port, args.host, args.keep_intermediate, args.keep_failed)
    except (OSError, vardir.VarUnavailable) as error:
        LOG.error("cannot start: %s", error)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: master.post(master.on_shutdown))
    signal.signal(signal.SIGINT, lambda *_: master.post(master.on_shutdown))
    master.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
