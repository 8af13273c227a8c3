"""The master's decisions, with no threads, sockets or clock: events in, commands out.

`Coordinator.handle(event, now)` runs `on_<Event>` and returns the commands
(mrlib/events.py) for the shell (master.py) to carry out. It owns every job,
worker and attempt; nothing else reads or writes them. Clients read jobs
through `snapshots()`, derived from the jobs that changed during an event.
"""
import collections
import logging
import os

import helper
from mrlib import pipeline
from mrlib.attempts import FAILED as ATTEMPT_FAILED
from mrlib.attempts import SUCCEEDED as ATTEMPT_SUCCEEDED
from mrlib.attempts import Attempts
from mrlib.events import (Acknowledge, Answer, Datagram, Deliver, RemoveFiles, Revoke,
                          RunInBackground, Stop)
from mrlib.job import (CANCELLED, FAILED, MAP, PUBLISH, SORT, SUCCEEDED, Job, task_key)
from mrlib.jobspec import DEFAULT_TASK_TIMEOUT, JobRejected, JobSpec
from mrlib.workers import Workers

LOG = logging.getLogger("master")

JOB_ROOT = "var"
# Failed jobs whose files stay in var/ for inspection; older ones are removed.
DEFAULT_KEEP_FAILED = 5
# Our worker kills a program at the job's task_timeout; the master's own
# check waits this much longer, for workers that do not enforce it.
TIMEOUT_GRACE = 10.0
# Backup tasks (speculative jobs only): a task running this many times the
# phase's median task time, and at least this long, gets a copy on an idle worker.
SPECULATIVE_SLOWDOWN = 1.5
SPECULATIVE_MIN_SECONDS = 1.0
# A worker the master does not know is asked to register again at most this
# often (in heartbeat intervals): our worker registers within one, and an
# answer to a heartbeat sent before it registered must not reach it after.
REGISTER_ASK_INTERVALS = 3


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
        self.asked_to_register = {}  # (pid, ip) -> when it was last asked
        self.changed = set()  # jobs whose snapshot may have changed
        self.commands = []
        self.redispatch = False  # a worker died: its tasks go out once the event is handled
        self.now = 0.0
        self.client_handlers = {"new_master_job": self.new_job,
                                "cluster_status": self.cluster_status,
                                "cancel_job": self.cancel_job}

    def handle(self, event, now):
        """Run one event; return the commands it produced."""
        self.now = now
        self.commands = []
        getattr(self, f"on_{type(event).__name__}")(*event)
        if self.redispatch:  # after the whole event: e.g. every overdue worker declared dead
            self.redispatch = False
            self.dispatch()
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
        known = self.workers.exactly(pid, peer)
        if known is not None and known.live and (known.host, known.port) != (host, port):
            # An impostor on the live worker's host: the live worker stays.
            # Ours registers again until acknowledged, so the other gets in
            # once this one is gone.
            LOG.warning("register from %s:%s ignored: pid %s is %s, which is alive",
                        host, port, pid, known)
            return
        for old in self.workers.at_address(host, port):
            if old is not known:  # nothing else can listen there: it was restarted
                self.declare_dead(old, f"replaced by worker {pid} on the same port")
        if known is not None and known.live:
            self.acknowledge(known)  # a repeated register: acknowledge again, keep its tasks
            return
        if known is not None:
            self.declare_dead(known, "registered again")
        self.acknowledge(self.workers.add(pid, peer, host, port, self.now))

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
        self.dispatch()

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
            self.dispatch()

    def ask_to_register(self, pid, sender):
        """A worker of the master before a restart: ours registers again when asked."""
        if sender is None:
            return
        every = REGISTER_ASK_INTERVALS * helper.HEARTBEAT_INTERVAL
        asked, who = self.asked_to_register, (pid, sender[0])
        if self.now - asked.get(who, float("-inf")) < every:
            return
        if who not in asked:
            LOG.warning("heartbeat from unregistered pid %s dropped; asking it to register", pid)
        for old in [w for w, when in asked.items() if self.now - when >= every]:
            del asked[old]  # bounded by the workers heard from in one interval
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
        self.check_timeouts()
        timeout = max(DEFAULT_TASK_TIMEOUT, self.current.spec.task_timeout if self.current else 0)
        self.attempts.forget_leftovers(self.now - timeout - TIMEOUT_GRACE, self.now)
        self.stop_leftovers()
        if self.current is not None:
            self.speculate(self.current)

    def stop_leftovers(self):
        """Ask our workers to stop the attempts that no longer count, until they report them.

        Over UDP, to the worker's heartbeat socket, which only our worker
        reads: another implementation's worker finishes them and is ignored.
        Sent again every tick, as a datagram may be lost.
        """
        for worker in self.workers.all():
            if worker.heartbeat_address is None:
                continue
            for attempt in self.attempts.leftovers(worker):
                self.emit(Datagram(worker.heartbeat_address,
                                   helper.cancel_task(worker.pid, helper.task_id(attempt.task.key))))

    def declare_dead(self, worker, reason):
        """Mark a worker dead; its attempts stop counting, so their tasks go elsewhere."""
        if worker.dead:
            return
        worker.dead = True
        self.redispatch = True
        LOG.warning("%s is dead: %s", worker, reason)
        self.note(f"worker {worker.pid} dead ({reason})")
        for attempt in self.attempts.on(worker):
            # If it was wrongly declared dead, it still runs them: leftovers.
            self.set_aside(attempt)
            task, job = attempt.task, self.current
            if job is not None and attempt.job_id == job.id and not task.done \
                    and not self.attempts.counting(task):
                LOG.info("job %d: %s will be reassigned", job.id, task.name)
                self.note(f"{task.name} reassigned from dead worker {worker.pid}")

    def set_aside(self, attempt):
        if self.attempts.set_aside(attempt, self.now):
            self.emit(Revoke(attempt.id))

    def set_unfit(self, worker, reason):
        """The failure was the worker's, not the task's: set it aside, count no attempt."""
        LOG.error("%s set aside: %s", worker, reason)
        worker.unfit = True
        self.declare_dead(worker, f"unfit: {reason}")

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
        workers = [{"pid": w.pid, "host": w.host, "port": w.port,
                    "state": w.state(self.attempts.load(w) > 0),
                    "tasks": self.attempts.load(w),
                    "since_heartbeat": round(self.now - w.last_seen, 3)}
                   for w in self.workers.all() if w.acked]
        return {"message_type": "cluster_status_reply", "workers": workers,
                "current_job": self.current.id if self.current else None,
                "queued_jobs": [job.id for job in self.waiting],
                "var_directory": self.var_path}

    def new_job(self, message):
        try:
            spec = JobSpec.from_message(message, self.var_path)
            self.check_output_free(spec)
        except JobRejected as rejection:
            LOG.error("rejected a job: %s", rejection)
            return {"message_type": "job_rejected", "error": str(rejection)}
        job = Job(self.next_job_id, spec, self.job_root, self.changed)
        try:
            job.make_directories()
        except OSError as error:
            LOG.error("rejected a job: cannot create %s: %s", job.directory, error)
            return {"message_type": "job_rejected", "error": f"cannot create directories: {error}"}
        self.next_job_id += 1
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
        for job in ([self.current] if self.current else []) + list(self.waiting):
            if os.path.realpath(job.spec.output_directory) == mine:
                raise JobRejected(f"output_directory {spec.output_directory} is job {job.id}'s, "
                                  f"which is {job.state}: wait for it, or choose another")

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
                self.dispatch()
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
        from mrlib import vardir  # the removal runs in the shell's background thread
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
        for attempt in self.attempts.of_job(job.id):
            self.set_aside(attempt)
        self.attempts.prune(job.id)
        self.start_next_job()

    # --- tasks -------------------------------------------------------------------

    def pending(self, job):
        return [t for t in job.unfinished() if not self.attempts.counting(t)]

    def choose(self, avoid=()):
        """The least loaded live worker, preferring ones not in `avoid`."""
        candidates = sorted(self.workers.live(), key=lambda w: (self.attempts.load(w), w.order))
        preferred = [w for w in candidates if w not in avoid]
        return (preferred or candidates or [None])[0]

    def dispatch(self):
        """Send every pending task of the current phase to a live worker."""
        job = self.current
        if job is None or not job.tasks:
            return
        for task in self.pending(job):
            worker = self.choose(avoid=task.failed_on)
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
        if not job.spec.speculative or job.typical_duration() is None or self.pending(job):
            return
        threshold = max(SPECULATIVE_MIN_SECONDS, SPECULATIVE_SLOWDOWN * job.typical_duration())
        for worker in [w for w in self.workers.live() if not self.attempts.load(w)]:
            candidates = [attempts[0] for attempts in map(self.attempts.counting, job.unfinished())
                          if len(attempts) == 1 and attempts[0].worker is not worker
                          and worker not in attempts[0].task.failed_on
                          and self.now - attempts[0].started >= threshold]
            if not candidates:
                return
            task = min(candidates, key=lambda a: a.started).task
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
        attempt = self.attempts.start(job.id, task, worker, self.now, backup)
        message = task.message(worker.pid, self.task_extensions(job, task))
        self.emit(Deliver(attempt.id, worker.host, worker.port, message))
        LOG.debug("job %d: %s sent to %s", job.id, task.name, worker)

    def on_Status(self, message, peer):
        pid = message["worker_pid"]
        worker = self.workers.find(pid, peer)
        if worker is None:
            LOG.warning("status from unknown pid %s dropped", pid)
            return
        outputs = message.get("output_files") or [message.get("output_file", "")]
        key = task_key(outputs)
        self.attempts.reported(worker, key, self.now)
        job = self.current
        task = job.tasks.get(key) if job is not None else None
        if task is None:
            LOG.info("status from %s matches no current task (stale?): %s", worker,
                     ", ".join(outputs[:3]))
            return
        if message["status"] == helper.FINISHED:
            self.task_finished(job, task, worker, message)
        elif message["status"] == helper.FAILED:
            self.task_failed(job, task, worker, message)
        else:
            LOG.warning("status %r from %s dropped: expected finished or failed",
                        message["status"], worker)

    def task_failed(self, job, task, worker, message):
        attempt = self.attempts.held_by(task, worker)
        if task.done or attempt is None:
            LOG.info("ignored a stale failure of %s from %s", task.name, worker)
        elif message.get("unfit") is True:
            self.set_unfit(worker, message.get("error") or "unfit")
        else:
            self.attempt_failed(job, attempt, _failure_text(message))

    def task_finished(self, job, task, worker, message):
        if task.done:
            LOG.info("job %d: duplicate finish of %s from %s ignored", job.id, task.name, worker)
            return
        attempt = self.attempts.held_by(task, worker)
        missing = [path for path in task.outputs if not os.path.isfile(path)]
        if missing:
            if attempt is not None:
                self.attempt_failed(job, attempt, f"reported finished but {missing[0]} is missing")
            else:
                LOG.warning("ignored a finish of %s from %s: %s is missing",
                            task.name, worker, missing[0])
            return
        self.accept_result(job, task, worker, attempt)
        if task.kind in (MAP, SORT):
            job.record_sorted(task.outputs, message.get("sorted") is True)
        if isinstance(message.get("counters"), dict):
            job.add_counters(message["counters"])
        if message.get("task_status"):
            LOG.info("job %d: %s says: %s", job.id, task.name, message["task_status"])
        if job.phase_complete():
            self.advance(job)
        else:
            self.speculate(job)

    def accept_result(self, job, task, worker, winner):
        """The task is done: `winner` succeeded, any other copy becomes a leftover."""
        others = [a for a in self.attempts.counting(task) if a is not winner]
        if others:
            self.note(f"{task.name}: the {'backup' if winner and winner.backup else 'original'}"
                      f" finished first")
        for attempt in others:
            self.set_aside(attempt)
        duration = None
        if winner is not None:
            duration = self.now - winner.started
            self.attempts.end(winner, ATTEMPT_SUCCEEDED, self.now)
        if worker.dead:
            LOG.info("job %d: accepted a late result of %s from dead %s", job.id, task.name, worker)
            self.note(f"{task.name}: late result from dead worker {worker.pid} accepted")
        job.finish_task(task, duration)

    def attempt_failed(self, job, attempt, reason):
        """The attempt failed (or was set aside as failed: a leftover stays one)."""
        task = attempt.task
        if attempt.counts:
            self.attempts.end(attempt, ATTEMPT_FAILED, self.now, reason)
        attempt.outcome = reason
        task.failures += 1
        task.failed_on.add(attempt.worker)
        text = (f"{task.name} (input {task.describe_inputs()}) failed on worker "
                f"{attempt.worker.pid}, attempt {task.failures} of {job.spec.max_attempts}: {reason}")
        LOG.error("job %d: %s", job.id, text)
        job.note(text)
        if task.failures >= job.spec.max_attempts:
            self.fail_job(job, text)
            return
        self.dispatch()

    def check_timeouts(self):
        job = self.current
        if job is None:
            return
        limit = job.spec.task_timeout + TIMEOUT_GRACE
        for attempt in self.attempts.all_counting():
            if attempt.job_id != job.id or self.now - attempt.started <= limit \
                    or not attempt.counts:
                continue
            if attempt.delivered_at is None:
                self.not_accepted(job, attempt, limit)
            else:  # a worker that ignores `timeout` may still run it: a leftover
                self.set_aside(attempt)
                self.attempt_failed(job, attempt, f"no result after {job.spec.task_timeout:g} s")
            if job is not self.current:
                return

    def not_accepted(self, job, attempt, limit):
        """A live worker took no connection for a task's whole time limit:
        the task goes to another worker. Not a failed attempt, as it never
        ran, unless no other worker could take it (else it would go round
        for ever)."""
        task, holder = attempt.task, attempt.worker
        if not any(w is not holder for w in self.workers.live()):
            self.set_aside(attempt)
            self.attempt_failed(job, attempt, f"worker accepted no connection in {limit:g} s")
            return
        self.set_aside(attempt)  # revokes the undelivered message
        task.failed_on.add(holder)  # avoided when it is sent again
        text = f"{task.name}: worker {holder.pid} accepted no connection in {limit:g} s; reassigned"
        LOG.warning("job %d: %s", job.id, text)
        job.note(text)
        self.dispatch()


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
