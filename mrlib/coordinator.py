"""The master's decisions, with no threads, sockets or clock: events in, commands out.

`Coordinator.handle(event, now)` runs `on_<Event>` and returns the commands
(mrlib/events.py) for the shell (master.py) to carry out. It owns every job,
worker and attempt (with its Scheduler, which places tasks and judges
results); nothing else reads or writes them. Clients read jobs through
`snapshots()`, derived from the jobs that changed during an event.
"""
import collections
import logging
import os

import helper
from mrlib import pipeline, vardir
from mrlib.attempts import Attempts
from mrlib.events import Acknowledge, Answer, Datagram, RemoveFiles, RunInBackground, Stop
from mrlib.job import CANCELLED, FAILED, MAP, PUBLISH, SORT, SUCCEEDED, Job, task_key
from mrlib.jobspec import JobRejected, JobSpec
from mrlib.scheduler import JobFailed, Scheduler
from mrlib.workers import Workers

LOG = logging.getLogger("master")

JOB_ROOT = "var"
# Failed jobs whose files stay in var/ for inspection; older ones are removed.
DEFAULT_KEEP_FAILED = 5
# A worker the master does not know is asked to register again at most this
# often (in heartbeat intervals): our worker registers within one, and an
# answer to a heartbeat sent before it registered must not reach it after.
REGISTER_ASK_INTERVALS = 3
# At most this many unknown workers are asked per such period: a flood of
# heartbeats with made-up pids gets no more answers (or log lines) than that.
MAX_REGISTER_ASKS = 1024
# A dead worker silent this long, holding nothing, is dropped from the
# master's records (and from cluster_status): restarted workers come back
# with new pids, so the old records would pile up for good.
FORGET_DEAD_AFTER = 600.0


class Coordinator:
    """Accepts jobs, tracks workers, and drives each job through its phases."""

    def __init__(self, var_path, job_root=JOB_ROOT, keep_intermediate=False,
                 keep_failed=DEFAULT_KEEP_FAILED):
        self.var_path = var_path
        self.job_root = job_root
        self.keep_intermediate = keep_intermediate
        self.keep_failed = keep_failed
        self.workers = Workers()
        self.attempts = Attempts()
        self.jobs = {}
        self.waiting = collections.deque()
        self.current = None
        self.next_job_id = 0
        self.failed_jobs = collections.deque()  # failed jobs whose files are kept
        self.work = {}  # token -> (job, step) of background work under way
        self.tokens = 0
        self.asked_to_register = collections.OrderedDict()  # (pid, ip) -> when asked, oldest first
        self.changed = set()  # jobs whose snapshot may have changed
        self.commands = []
        self.now = 0.0
        self.scheduler = Scheduler(self.workers, self.attempts, self.emit, lambda: self.now)
        self.client_handlers = {"new_master_job": self.new_job,
                                "cluster_status": self.cluster_status,
                                "cancel_job": self.cancel_job,
                                "job_timeline": self.job_timeline}

    def handle(self, event, now):
        """Run one event; return the commands it produced."""
        self.now = now
        self.commands = []
        try:
            getattr(self, f"on_{type(event).__name__}")(*event)
            if self.scheduler.redispatch:  # after the whole event: every overdue worker dead
                self.scheduler.dispatch(self.current)
        except JobFailed as failure:  # always the current job's
            self.fail_job(self.current, str(failure))
        return self.commands

    def snapshots(self):
        """What clients see of each job changed since the last call."""
        snapshots = [job.snapshot() for job in self.changed]
        self.changed.clear()  # in place: every job holds this set
        return snapshots

    def emit(self, command):
        self.commands.append(command)

    # --- workers -----------------------------------------------------------

    def on_Register(self, message, peer):
        pid, host, port = message["worker_pid"], message["worker_host"], message["worker_port"]
        instance = message.get("worker_instance")
        known = self.workers.exactly(pid, peer)
        if known is not None and known.live and (known.host, known.port) != (host, port):
            # An impostor on the live worker's host: the live worker stays.
            # Ours registers again until acknowledged, so the other gets in
            # once this one is gone.
            LOG.warning("register from %s:%s ignored: pid %s is %s, which is alive",
                        host, port, pid, known)
            return
        for old in self.workers.at_address(host, port):
            # Nothing else can listen there: it was restarted. Only from its
            # own host, so that no one else can make a live worker "replaced".
            if old is not known and old.peer == peer:
                self.declare_dead(old, f"replaced by worker {pid} on the same port")
        if known is not None and known.live and instance != known.instance:
            # Same pid, address and port, another process: it restarted (pid 1
            # of a container does every time), and runs nothing of the old one.
            self.declare_dead(known, "restarted: a new process registered")
        elif known is not None and known.live:
            self.acknowledge(known)  # a repeated register: acknowledge again, keep its tasks
            return
        elif known is not None:
            self.declare_dead(known, "registered again")
        self.acknowledge(self.workers.add(pid, peer, host, port, self.now, instance))

    def acknowledge(self, worker):
        self.emit(Acknowledge(worker, worker.host, worker.port,
                              helper.register_ack(worker.host, worker.port, worker.pid)))

    def on_AckResult(self, worker, delivered):
        if not delivered:
            LOG.error("%s never accepted register_ack; not registered", worker)
            if worker.acked:  # a repeated register: what it held goes elsewhere
                self.declare_dead(worker, "did not accept register_ack")
            worker.dead = True
            return
        first = not worker.acked
        worker.acked = True
        worker.last_seen = self.now
        if first:
            LOG.info("registered %s", worker)
            self.note(f"worker {worker.pid} registered")
        self.start_next_job()
        self.scheduler.dispatch(self.current)

    def on_Heartbeat(self, pid, sender):
        worker = self.workers.find(pid, sender[0] if sender else None)
        if worker is None:
            self.ask_to_register(pid, sender)
            return
        worker.last_seen = self.now
        worker.heartbeat_address = sender
        if worker.dead and worker.acked and not worker.unfit:
            worker.dead = False
            LOG.info("%s is heartbeating again: taken back as ready", worker)
            self.note(f"worker {pid} heartbeating again, taken back")
            self.start_next_job()
            self.scheduler.dispatch(self.current)

    def ask_to_register(self, pid, sender):
        """A worker of the master before a restart: ours registers again when asked."""
        if sender is None:
            return
        every = REGISTER_ASK_INTERVALS * helper.HEARTBEAT_INTERVAL
        asked, who = self.asked_to_register, (pid, sender[0])
        while asked and self.now - next(iter(asked.values())) >= every:
            asked.popitem(last=False)  # oldest first: each entry is dropped once
        if who in asked or len(asked) >= MAX_REGISTER_ASKS:
            return
        LOG.warning("heartbeat from unregistered pid %s dropped; asking it to register", pid)
        asked[who] = self.now
        self.emit(Datagram(sender, helper.unknown_worker(pid)))

    def on_Delivered(self, attempt_id, at):
        """The task reached the worker: its time limit runs from then."""
        attempt = self.attempts.get(attempt_id)
        if attempt is not None:
            self.attempts.delivered(attempt, at)

    def on_Unreachable(self, attempt_id, error):
        attempt = self.attempts.get(attempt_id)
        if attempt is not None and attempt.counts:  # not dead (and maybe back) since
            self.declare_dead(attempt.worker, f"unreachable: {error}")

    def on_Tick(self):
        limit = helper.MISSED_HEARTBEATS_LIMIT * helper.HEARTBEAT_INTERVAL
        for worker in self.workers.overdue(self.now, limit):
            self.declare_dead(worker, f"no heartbeat for {self.now - worker.last_seen:.1f} s")
        self.scheduler.check_timeouts(self.current)
        self.scheduler.stop_leftovers(self.current)
        self.scheduler.speculate(self.current)
        for worker in self.workers.forget(self.now - FORGET_DEAD_AFTER, self.attempts.load):
            self.attempts.forget_worker(worker)
            LOG.info("%s forgotten: dead and silent for %.0f s", worker,
                     self.now - worker.last_seen)

    def declare_dead(self, worker, reason):
        self.scheduler.declare_dead(worker, reason, self.current)

    def note(self, text):
        if self.current is not None:
            self.current.note(text)

    # --- clients -------------------------------------------------------------

    def on_ClientRequest(self, message, reply):
        self.emit(Answer(reply, self.client_handlers[message["message_type"]](message)))

    def on_Shutdown(self):
        workers = self.workers.all()
        LOG.info("shutting down: telling %d worker(s)", len(workers))
        self.emit(Stop([(w.host, w.port) for w in workers]))

    def cluster_status(self, message):
        workers = [self.worker_status(w) for w in self.workers.all() if w.acked]
        return {"message_type": "cluster_status_reply", "workers": workers,
                "current_job": self.current.id if self.current else None,
                "queued_jobs": [job.id for job in self.waiting],
                "var_directory": self.var_path,
                "active_jobs": [self.paths_of(job) for job in self.active_jobs()]}

    def active_jobs(self):
        return ([self.current] if self.current else []) + list(self.waiting)

    @staticmethod
    def paths_of(job):
        """Where a queued or running job reads and writes: a client's --overwrite must
        not remove what such a job has still to read."""
        spec = job.spec
        return {"job_id": job.id, "state": job.state, "output_directory": spec.output_directory,
                "input_directory": spec.input_directory, "input_file": spec.input_file,
                "input_base_name": spec.input_base_name}

    def worker_status(self, worker):
        load, set_aside = self.attempts.load(worker), len(self.attempts.leftovers(worker))
        return {"pid": worker.pid, "host": worker.host, "port": worker.port,
                "state": worker.state(load > 0), "tasks": load - set_aside,
                # an extension: attempts that no longer count, kept in case their
                # worker was wrongly declared dead (all of a dead worker's)
                "set_aside": set_aside,
                "since_heartbeat": round(self.now - worker.last_seen, 3)}

    def new_job(self, message):
        try:
            spec = JobSpec.from_message(message, self.var_path)
            self.check_output_free(spec)
        except (JobRejected, ValueError) as rejection:  # e.g. an unencodable path
            LOG.error("rejected a job: %s", rejection)
            return {"message_type": "job_rejected", "error": str(rejection)}
        job = Job(self.next_job_id, spec, self.job_root, self.changed)
        # Its number is used up even if it is refused now: whatever was made of its
        # directory (a part of its code) never becomes another job's.
        self.next_job_id += 1
        try:
            job.make_directories()
        except OSError as error:
            LOG.error("rejected a job: cannot create %s: %s", job.directory, error)
            return {"message_type": "job_rejected", "error": f"cannot create directories: {error}"}
        self.jobs[job.id] = job
        self.waiting.append(job)
        job.touch()
        LOG.info("job %d accepted: %s -> %s (%d queued)", job.id, spec.input_directory,
                 spec.output_directory, len(self.waiting))
        self.start_next_job()
        return {"message_type": "job_accepted", "job_id": job.id}

    def check_output_free(self, spec):
        """Two jobs writing one output directory would leave a mix of both outputs."""
        mine = os.path.realpath(spec.output_directory)
        for job in self.active_jobs():
            if os.path.realpath(job.spec.output_directory) == mine:
                raise JobRejected(f"output_directory {spec.output_directory} is job {job.id}'s, "
                                  f"which is {job.state}: wait for it, or choose another")

    def job_timeline(self, message):
        """Every attempt of a job, for the dashboard (asked in-process, never on the wire)."""
        return {"job_id": message["job_id"], "now": self.now,
                "attempts": self.attempts.timeline(message["job_id"])}

    def cancel_job(self, message):
        """Cancel a queued or running job: it ends, its files kept as a failed job's."""
        job = self.jobs.get(message["job_id"])
        if job is None:
            return {"message_type": "job_status_reply", "job_id": message["job_id"],
                    "state": "unknown", "error": f"no job {message['job_id']}"}
        if job is not self.current and job not in self.waiting:
            return job.snapshot()  # ended already
        if job.phase == PUBLISH:
            return dict(job.snapshot(), error=f"job {job.id} is publishing its outputs "
                                              f"and can no longer be cancelled")
        LOG.info("job %d cancelled by a client", job.id)
        if job in self.waiting:
            self.waiting.remove(job)
        job.end(CANCELLED, "cancelled by a client")
        self.keep_failed_job(job)
        if job is self.current:
            self.end_job(job)
        return job.snapshot()

    # --- jobs and phases -------------------------------------------------------

    def start_next_job(self):
        if self.current is not None or not self.waiting or not self.workers.live():
            return
        job = self.current = self.waiting.popleft()
        LOG.info("job %d started", job.id)
        self.advance(job)

    def advance(self, job):
        """Start the job's next step that has something to do, or end the job."""
        while True:
            try:
                step = pipeline.next_step(job, len(self.workers.live()))
            except OSError as error:
                self.fail_job(job, f"cannot list the input: {error}")
                return
            if step is None:
                self.job_succeeded(job)
                return
            if isinstance(step, pipeline.Work):
                self.start_work(job, step)
                return
            job.begin_phase(step.phase, step.tasks)
            if step.tasks:
                LOG.info("job %d: %s phase, %d task(s)", job.id, step.phase, len(step.tasks))
                self.scheduler.dispatch(job)
                return

    def start_work(self, job, step):
        job.begin_phase(step.phase, [])
        LOG.info("job %d: %s phase", job.id, step.phase)
        if getattr(step, "unsure", None):
            LOG.info("job %d: sorting %d of them bytewise first: their workers did not "
                     "say they sort bytewise", job.id, len(step.unsure))
        if step.phase == PUBLISH and not (self.keep_intermediate or job.spec.keep_intermediate):
            step = self.cleaning_after(job, step)
        self.tokens += 1
        self.work[self.tokens] = (job, step)
        self.emit(RunInBackground(self.tokens, f"{step.name}-{job.id}", step.run))

    def cleaning_after(self, job, step):
        """Publishing, then removing what a successful job no longer needs."""
        publish = step.run

        def run(guard):
            outputs = publish(guard)
            for path in job.intermediate_paths():
                try:
                    vardir.remove_path(path)
                except OSError as error:
                    LOG.warning("could not remove %s: %s", path, error)
            return outputs
        return pipeline.Work(step.phase, run, step.done)

    def on_WorkDone(self, token, result, error):
        job, step = self.work.pop(token, (None, None))
        if job is None or job is not self.current:
            return  # the job ended (cancelled) meanwhile
        if error:
            self.fail_job(job, f"{step.name} failed: {error}")
            return
        step.done(result)
        self.advance(job)

    def job_succeeded(self, job):
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
            old.files_removed()
            self.emit(RemoveFiles(old.directory))

    def end_job(self, job):
        """The job ended: whatever a worker still runs of it is a leftover; the next one starts."""
        if job is self.current:
            self.current = None
        self.scheduler.release(job)
        self.start_next_job()

    # --- task results -----------------------------------------------------------

    def on_Status(self, message, peer):
        pid = message["worker_pid"]
        worker = self.workers.find(pid, peer)
        if worker is None:
            LOG.warning("status from unknown pid %s dropped", pid)
            return
        worker.last_result_at = self.now
        outputs = message.get("output_files") or [message.get("output_file", "")]
        key = task_key(outputs)
        stopped_leftover = self.attempts.reported(worker, key, self.now,
                                                  message.get("attempt_id"))
        job = self.current
        task = job.tasks.get(key) if job is not None else None
        if task is None:
            LOG.info("status from %s matches no current task (stale?): %s", worker,
                     ", ".join(outputs[:3]))
        elif message["status"] == helper.FAILED and stopped_leftover:
            LOG.info("%s stopped its leftover %s", worker, task.name)  # not the new attempt's
        elif message["status"] == helper.FAILED:
            self.scheduler.failed(job, task, worker, message)
        elif message["status"] != helper.FINISHED:
            LOG.warning("status %r from %s dropped: expected finished or failed",
                        message["status"], worker)
        elif self.scheduler.finished(job, task, worker, message):
            self.absorb(job, task, message, worker)

    def absorb(self, job, task, message, worker):
        """What a finished task tells: sortedness, counters, status; the next phase if done."""
        if task.kind in (MAP, SORT):
            job.record_sorted(task.outputs, message.get("sorted") is True)
        counters = message.get("counters")
        job.add_task_counters(task, counters if isinstance(counters, dict) else {}, worker)
        if message.get("task_status"):
            LOG.info("job %d: %s says: %s", job.id, task.name, message["task_status"])
        if job.phase_complete():
            self.advance(job)
        else:
            self.scheduler.speculate(job)
