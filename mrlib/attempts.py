"""The one table of task attempts: which worker runs what, since when, and how it ended.

An attempt is one task sent to one worker. Worker load, the holders of a
task, backups, time limits, revocation and the leftovers a worker still runs
although they no longer count are all queries on this table (as Spark's
TaskSetManager and Hadoop's TaskAttemptImpl keep one record per attempt).
Only the coordinator reads or writes it.
"""
import itertools

# Live states. A SENT attempt's message is on its way (the courier may still
# drop it: revoked); a RUNNING one reached the worker. Both count for their
# task. A LEFTOVER no longer counts (a backup won, the job ended, the worker
# was declared dead) but the worker may still run it, so it keeps the worker
# busy until the worker reports it, or until it is forgotten.
SENT, RUNNING, LEFTOVER = "sent", "running", "leftover"
# Ended states.
SUCCEEDED, FAILED, REVOKED, REPORTED, FORGOTTEN = (
    "succeeded", "failed", "revoked", "reported", "forgotten")
COUNTING = (SENT, RUNNING)
LIVE = (SENT, RUNNING, LEFTOVER)
# The timelines of this many jobs are kept (the dashboard shows them).
TIMELINES_KEPT = 20


class Attempt:
    """One task on one worker."""

    def __init__(self, number, job_id, task, worker, now, backup):
        self.id = number
        self.job_id = job_id
        self.task = task
        self.worker = worker
        self.backup = backup
        self.state = SENT
        self.sent_at = now
        self.delivered_at = None
        self.set_aside_at = None
        self.ended_at = None
        self.outcome = None
        self.log_file = None  # where the worker keeps its stderr (our worker only)
        self.number = None  # this copy's number among its task's (1 = the first sent)
        self.run_seconds = None  # how long it ran at the worker, by its status (ours only)

    @property
    def counts(self):
        return self.state in COUNTING

    @property
    def started(self):
        """When its time runs from: delivery, or sending until it is delivered."""
        return self.delivered_at if self.delivered_at is not None else self.sent_at

    def __repr__(self):
        return f"<attempt {self.id}: {self.task.name} on {self.worker} {self.state}>"


class Attempts:
    """Every live attempt, indexed by task and by worker; ended ones until their job is pruned."""

    def __init__(self):
        self.numbers = itertools.count()
        self.by_id = {}
        self.live_by_worker = {}  # worker -> {attempt id: attempt} in a LIVE state
        self.counting_by_task = {}  # task key -> {attempt id: attempt} in a COUNTING state
        self.leftovers_by_worker = {}  # worker -> {attempt id: attempt} LEFTOVER
        self.pruned = set()  # jobs whose attempts are dropped as they end
        self.ended = {}  # job id -> records of its ended attempts, the newest jobs only

    def start(self, job_id, task, worker, now, backup=False):
        attempt = Attempt(next(self.numbers), job_id, task, worker, now, backup)
        self.by_id[attempt.id] = attempt
        self.live_by_worker.setdefault(worker, {})[attempt.id] = attempt
        self.counting_by_task.setdefault(task.key, {})[attempt.id] = attempt
        return attempt

    def get(self, attempt_id):
        return self.by_id.get(attempt_id)

    # --- queries -------------------------------------------------------------

    def counting(self, task):
        """The attempts that count for `task`, oldest first."""
        return list(self.counting_by_task.get(task.key, {}).values())

    def held_by(self, task, worker, attempt_id=None):
        """The attempt of `task` that counts on `worker` (the one with `attempt_id`, if
        the worker named it in its status), or None."""
        return next((a for a in self.counting(task) if a.worker is worker
                     and attempt_id in (None, a.id)), None)

    def on(self, worker):
        """Everything `worker` runs or may still run."""
        return list(self.live_by_worker.get(worker, {}).values())

    def load(self, worker):
        return len(self.live_by_worker.get(worker, ()))

    def leftovers(self, worker):
        return list(self.leftovers_by_worker.get(worker, {}).values())

    def all_counting(self):
        return [a for attempts in self.counting_by_task.values() for a in attempts.values()]

    def of_job(self, job_id):
        return [a for a in self.by_id.values() if a.job_id == job_id]

    # --- changes ---------------------------------------------------------------

    def delivered(self, attempt, now):
        if attempt.state == SENT:
            attempt.state = RUNNING
            attempt.delivered_at = now
        elif attempt.state == REVOKED:  # revoked too late: the worker has it
            attempt.state, attempt.delivered_at, attempt.set_aside_at = LEFTOVER, now, now
            self.live_by_worker.setdefault(attempt.worker, {})[attempt.id] = attempt
            self.leftovers_by_worker.setdefault(attempt.worker, {})[attempt.id] = attempt

    def set_aside(self, attempt, now):
        """It stops counting. Returns True if its message must be revoked (never delivered)."""
        if not attempt.counts:
            return False
        self._uncount(attempt)
        if attempt.state == SENT:
            self.end(attempt, REVOKED, now)
            return True
        attempt.state = LEFTOVER
        attempt.set_aside_at = now
        self.leftovers_by_worker.setdefault(attempt.worker, {})[attempt.id] = attempt
        return False

    def end(self, attempt, state, now, outcome=None):
        if attempt.state not in LIVE:
            return
        self._uncount(attempt)
        self.live_by_worker.get(attempt.worker, {}).pop(attempt.id, None)
        self.leftovers_by_worker.get(attempt.worker, {}).pop(attempt.id, None)
        if attempt.job_id in self.pruned:
            self.by_id.pop(attempt.id, None)
        attempt.state = state
        attempt.ended_at = now
        attempt.outcome = outcome
        self.ended.setdefault(attempt.job_id, []).append(record(attempt))
        while len(self.ended) > TIMELINES_KEPT:
            del self.ended[next(iter(self.ended))]

    def reported(self, worker, key, now, attempt_id=None):
        """`worker` reported the task with `key` (its attempt `attempt_id`, if the worker
        named it): it no longer runs that leftover of it.

        True if that status was a leftover's."""
        found = False
        for attempt in self.leftovers(worker):
            if attempt.task.key == key and attempt_id in (None, attempt.id):
                self.end(attempt, REPORTED, now)
                found = True
        return found

    def forget_leftovers(self, before, now):
        """Leftovers set aside before `before` whose status never came: lost."""
        for worker in list(self.leftovers_by_worker):
            for attempt in self.leftovers(worker):
                if attempt.set_aside_at < before:
                    self.end(attempt, FORGOTTEN, now)

    def timeline(self, job_id):
        """Every attempt of a job the table still knows: ended ones, then live ones."""
        live = [record(a) for a in self.by_id.values()
                if a.job_id == job_id and a.state in LIVE]
        return list(self.ended.get(job_id, [])) + live

    def forget_worker(self, worker):
        """`worker` is gone for good and holds nothing: drop its (empty) indexes."""
        self.live_by_worker.pop(worker, None)
        self.leftovers_by_worker.pop(worker, None)

    def prune(self, job_id):
        """Drop the ended attempts of a job that ended, and the rest as they end."""
        self.pruned.add(job_id)
        for attempt in self.of_job(job_id):
            if attempt.state not in LIVE:
                del self.by_id[attempt.id]

    def _uncount(self, attempt):
        counting = self.counting_by_task.get(attempt.task.key)
        if counting is not None:
            counting.pop(attempt.id, None)
            if not counting:
                del self.counting_by_task[attempt.task.key]


def record(attempt):
    """What a timeline shows of an attempt (times are the coordinator's clock)."""
    worker = attempt.worker
    return {"attempt": attempt.id, "task": attempt.task.name, "kind": attempt.task.kind,
            "worker": worker.pid, "worker_address": f"{worker.host}:{worker.port}",
            "backup": attempt.backup, "state": attempt.state, "outcome": attempt.outcome,
            "sent": attempt.sent_at, "started": attempt.started, "ended": attempt.ended_at,
            "ran": attempt.run_seconds, "log_file": attempt.log_file}
