"""Which worker runs which task, and what a task's result means: the coordinator's placement half.

It reads and writes the attempts table and the workers' liveness, and emits
task messages, revocations and cancel_task datagrams through the
coordinator. A job that must fail is signalled with JobFailed; the
coordinator ends it. `job` is always the current job (or None).
"""
import logging
import os

import helper
from mrlib.attempts import FAILED as ATTEMPT_FAILED
from mrlib.attempts import SUCCEEDED as ATTEMPT_SUCCEEDED
from mrlib.events import Datagram, Deliver, Revoke
from mrlib.job import MAP, REDUCE, SORT
from mrlib.jobspec import DEFAULT_TASK_TIMEOUT
from mrlib.pyjob import CODE_BROKEN_EXIT

LOG = logging.getLogger("master")

# Our worker kills a program at the job's task_timeout; the master's own
# check waits this much longer, for workers that do not enforce it.
TIMEOUT_GRACE = 10.0
# Backup tasks (speculative jobs only): a task running this many times the
# phase's median task time, and at least this long, gets a copy on an idle worker.
SPECULATIVE_SLOWDOWN = 1.5
SPECULATIVE_MIN_SECONDS = 1.0


class JobFailed(Exception):
    """A task used up its attempts: the job fails with this reason."""


class Scheduler:
    """Places tasks on workers and judges what the workers report."""

    def __init__(self, workers, attempts, emit, clock):
        self.workers = workers
        self.attempts = attempts
        self.emit = emit
        self.clock = clock  # the current event's time
        self.redispatch = False  # a worker died: its tasks go out once the event is handled

    # --- workers coming and going ---------------------------------------------------

    def declare_dead(self, worker, reason, job):
        """Mark a worker dead; its attempts stop counting, so their tasks go elsewhere."""
        if worker.dead:
            return
        worker.dead = True
        self.redispatch = True
        LOG.warning("%s is dead: %s", worker, reason)
        _note(job, f"worker {worker.pid} dead ({reason})")
        for attempt in self.attempts.on(worker):
            # If it was wrongly declared dead, it still runs them: leftovers.
            self.set_aside(attempt)
            task = attempt.task
            if job is not None and attempt.job_id == job.id and not task.done \
                    and not self.attempts.counting(task):
                LOG.info("job %d: %s will be reassigned", job.id, task.name)
                job.note(f"{task.name} reassigned from dead worker {worker.pid}")

    def set_unfit(self, worker, reason, job):
        """The failure was the worker's, not the task's: set it aside, count no attempt."""
        LOG.error("%s set aside: %s", worker, reason)
        worker.unfit = True
        self.declare_dead(worker, f"unfit: {reason}", job)

    def set_aside(self, attempt):
        if self.attempts.set_aside(attempt, self.clock()):
            self.emit(Revoke(attempt.id))

    def release(self, job):
        """The job ended: whatever a worker still runs of it is a leftover."""
        for attempt in self.attempts.of_job(job.id):
            self.set_aside(attempt)
        self.attempts.prune(job.id)

    def stop_leftovers(self, job):
        """Ask our workers to stop the attempts that no longer count, until they report them.

        Over UDP, to the worker's heartbeat socket, which only our worker
        reads: another implementation's worker finishes them and is ignored.
        Sent again every tick, as a datagram may be lost. Leftovers never
        reported are forgotten after the longest time limit.
        """
        timeout = max(DEFAULT_TASK_TIMEOUT, job.spec.task_timeout if job else 0)
        self.attempts.forget_leftovers(self.clock() - timeout - TIMEOUT_GRACE, self.clock())
        for worker in self.workers.all():
            if worker.heartbeat_address is None or worker.dead:
                continue
            for attempt in self.attempts.leftovers(worker):
                self.emit(Datagram(worker.heartbeat_address,
                                   helper.cancel_task(worker.pid, helper.task_id(attempt.task.key),
                                                      attempt.id)))

    # --- placing tasks -------------------------------------------------------------

    def pending(self, job):
        return [t for t in job.unfinished() if not self.attempts.counting(t)]

    def choose(self, avoid=()):
        """The least loaded live worker, preferring ones not in `avoid`."""
        candidates = sorted(self.workers.live(), key=lambda w: (self.attempts.load(w), w.order))
        preferred = [w for w in candidates if w not in avoid]
        return (preferred or candidates or [None])[0]

    def dispatch(self, job):
        """Send every pending task of the job's phase to a live worker."""
        self.redispatch = False
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
        if job is None or not job.spec.speculative or job.typical_duration() is None:
            return
        idle = [w for w in self.workers.live() if not self.attempts.load(w)]
        if not idle or self.pending(job):
            return
        threshold = max(SPECULATIVE_MIN_SECONDS, SPECULATIVE_SLOWDOWN * job.typical_duration())
        for worker in idle:
            candidates = [attempts[0] for attempts in map(self.attempts.counting, job.unfinished())
                          if len(attempts) == 1 and worker not in attempts[0].task.failed_on
                          and self.clock() - attempts[0].started >= threshold]
            if not candidates:
                return
            task = min(candidates, key=lambda a: a.started).task
            self.send_task(job, task, worker, backup=True)
            LOG.info("job %d: backup of %s on %s", job.id, task.name, worker)
            job.note(f"backup of {task.name} started on worker {worker.pid}")

    def send_task(self, job, task, worker, backup=False):
        attempt = self.attempts.start(job.id, task, worker, self.clock(), backup)
        task.attempts_started += 1
        attempt.number = task.attempts_started
        attempt.log_file = job.attempt_log(task, attempt.number)
        message = task.message(worker.pid, task_extensions(job, task, attempt))
        self.emit(Deliver(attempt.id, worker.host, worker.port, message))
        LOG.debug("job %d: %s sent to %s", job.id, task.name, worker)

    # --- results ---------------------------------------------------------------------

    def failed(self, job, task, worker, message):
        attempt = self.attempts.held_by(task, worker, message.get("attempt_id"))
        if attempt is not None:
            attempt.run_seconds = message.get("run_seconds")
        if task.done or attempt is None:
            LOG.info("ignored a stale failure of %s from %s", task.name, worker)
        elif message.get("unfit") is True:  # it ran nothing: no leftover to stop
            self.attempts.end(attempt, ATTEMPT_FAILED, self.clock(), "unfit")
            self.set_unfit(worker, message.get("error") or "unfit", job)
        else:
            self.attempt_failed(job, attempt, _failure_text(message), message)

    def finished(self, job, task, worker, message):
        """A finish is believed if the outputs are there. True if the task is now done."""
        if task.done:
            LOG.info("job %d: duplicate finish of %s from %s ignored", job.id, task.name, worker)
            return False
        attempt = self.attempts.held_by(task, worker, message.get("attempt_id"))
        if attempt is not None:
            attempt.run_seconds = message.get("run_seconds")
        missing = [path for path in task.outputs if not os.path.isfile(path)]
        if missing:
            if attempt is not None:
                self.attempt_failed(job, attempt, f"reported finished but {missing[0]} is missing")
            else:
                LOG.warning("ignored a finish of %s from %s: %s is missing",
                            task.name, worker, missing[0])
            return False
        self.accept_result(job, task, worker, attempt)
        return True

    def accept_result(self, job, task, worker, winner):
        """The task is done: `winner` succeeded, any other copy becomes a leftover."""
        others = [a for a in self.attempts.counting(task) if a is not winner]
        if others:
            job.note(f"{task.name}: the {'backup' if winner and winner.backup else 'original'}"
                     f" finished first")
        for attempt in others:
            self.set_aside(attempt)
        duration = None
        if winner is not None:
            duration = self.clock() - winner.started
            self.attempts.end(winner, ATTEMPT_SUCCEEDED, self.clock())
        if worker.dead:
            LOG.info("job %d: accepted a late result of %s from dead %s", job.id, task.name, worker)
            job.note(f"{task.name}: late result from dead worker {worker.pid} accepted")
        job.finish_task(task, duration)

    def attempt_failed(self, job, attempt, reason, status=None):
        """The attempt failed (or was set aside as failed: a leftover stays one).

        `status` is the worker's failed status, if it sent one."""
        task = attempt.task
        if attempt.counts:
            self.attempts.end(attempt, ATTEMPT_FAILED, self.clock(), reason)
        attempt.outcome = reason
        task.failures += 1
        task.failed_on.add(attempt.worker)
        text = (f"{task.name} (input {task.describe_inputs()}) failed on worker "
                f"{attempt.worker.pid}, attempt {task.failures} of {job.spec.max_attempts}: {reason}")
        if attempt.log_file and os.path.isfile(attempt.log_file):
            text += f"; its stderr: {os.path.abspath(attempt.log_file)}"
        LOG.error("job %d: %s", job.id, text)
        job.note(text)
        broken = code_broken(job, status)
        if broken:
            text += "; the job's code cannot run at all, so it is not tried again"
        if task.failures >= job.spec.max_attempts or broken:
            job.failure = failure_details(job, attempt, reason, status)  # what ended the job
            job.failure["code_broken"] = broken
            raise JobFailed(text)
        self.dispatch(job)

    # --- time limits -------------------------------------------------------------------

    def check_timeouts(self, job):
        if job is None:
            return
        limit = job.spec.task_timeout + TIMEOUT_GRACE
        for attempt in self.attempts.all_counting():
            if attempt.job_id != job.id or not attempt.counts:
                continue
            if attempt.delivered_at is None:
                if self.clock() - attempt.started > limit:
                    self.not_accepted(job, attempt, limit)
            elif self.clock() - attempt.worker.running_since(attempt) > limit:
                # a worker that ignores `timeout` may still run it: a leftover
                self.set_aside(attempt)
                self.attempt_failed(job, attempt, f"no result after {job.spec.task_timeout:g} s")

    def not_accepted(self, job, attempt, limit):
        """A live worker took no connection for a task's whole time limit:
        the task goes to another worker. Not a failed attempt, as it never
        ran, unless no other worker could take it (else it would go round
        for ever)."""
        task, holder = attempt.task, attempt.worker
        self.set_aside(attempt)  # revokes the undelivered message
        if not any(w is not holder for w in self.workers.live()):
            self.attempt_failed(job, attempt, f"worker accepted no connection in {limit:g} s")
            return
        task.failed_on.add(holder)  # avoided when it is sent again
        text = f"{task.name}: worker {holder.pid} accepted no connection in {limit:g} s; reassigned"
        LOG.warning("job %d: %s", job.id, text)
        job.note(text)
        self.dispatch(job)


def code_broken(job, status):
    """A Python job's program said its code cannot run (it does not load, or an
    *_init raised): every attempt anywhere would fail the same way."""
    return (job.spec.python_job is not None and status is not None
            and status.get("exit_code") == CODE_BROKEN_EXIT)


def task_extensions(job, task, attempt):
    """Optional fields for task messages: only what differs from the spec's job."""
    timeout = job.spec.task_timeout
    extensions = {"timeout": timeout if timeout != DEFAULT_TASK_TIMEOUT else None,
                  "log_file": attempt.log_file,
                  "task_label": f"job {job.id} {task.name} attempt {task.attempts_started}",
                  "attempt_id": attempt.id}
    spec = job.spec
    shuffled = spec.num_reducers > 0
    layout = spec.shuffle_layout() if shuffled else None
    if task.kind in (MAP, REDUCE):  # Hadoop's framework counters, counted by the worker
        extensions["builtin_counters"] = task.kind
        extensions["record_units"] = spec.record_units(task.kind) if spec.record_size \
            or spec.output_record_size else None  # all lines: the field is left out
    if task.kind == MAP:
        extensions["combiner_executable"] = spec.combiner_executable
        # Ask for map-side sorting: the group phase then only merges.
        extensions["sort_output"] = True if shuffled else None
    elif task.kind == SORT:
        # Only where our workers said they sorted: another worker ignores sort_output.
        extensions["presorted"] = True if job.all_sorted(task.inputs) else None
    if task.kind == MAP and layout is not None:  # a record job has no sort tasks
        extensions["records"] = layout.field()  # sorted as records, not lines
    if task.kind == REDUCE or (task.kind == MAP and not shuffled):
        extensions["check_record_size"] = spec.final_record_size()  # the job's output
    return extensions


def failure_details(job, attempt, reason, status=None):
    """What a user needs to find the cause of a failed attempt: the job's "failure"."""
    task, status = attempt.task, status or {}
    details = {"task": task.name, "attempt": attempt.number, "failures": task.failures,
               "max_attempts": job.spec.max_attempts, "worker": attempt.worker.pid,
               "reason": reason, "error": status.get("error"),
               "exit_code": status.get("exit_code"), "stderr_tail": status.get("stderr_tail"),
               "time_limit": job.spec.task_timeout}
    input_file = status.get("input_file") or (task.inputs[0] if len(task.inputs) == 1 else None)
    split = ((task.context or {}).get("files") or {}).get(input_file)
    if split:  # a split of a larger file: name the file and the bytes
        details["input"] = split.get("mapreduce_map_input_file")
        details["input_start"] = int(split.get("mapreduce_map_input_start", 0))
        details["input_length"] = int(split.get("mapreduce_map_input_length", 0))
    else:
        details["input"] = os.path.abspath(input_file) if input_file else task.describe_inputs()
    if attempt.log_file and os.path.isfile(attempt.log_file):
        details["log_file"] = os.path.abspath(attempt.log_file)
    return details


def _note(job, text):
    if job is not None:
        job.note(text)


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
