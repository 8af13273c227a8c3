"""The workers a master knows, and how a message is matched to one.

A worker is its pid and the address its messages come from, together: pids
are unique per machine only, so two workers on two hosts may share one, and
a register reusing a live worker's pid from another address is another
worker, never a replacement. Only the coordinator reads or writes these.
"""


class WorkerRecord:
    """What the master knows of one registered worker: marked dead, forgotten later."""

    def __init__(self, order, pid, peer, host, port, now, instance=None):
        self.order = order
        self.pid = pid
        self.instance = instance  # our worker's random id for its process, or None
        self.peer = peer  # the IP its register came from (None if unknown)
        self.host = host
        self.port = port
        self.acked = False
        self.dead = False
        # It cannot run this master's tasks (it does not see their files):
        # set aside like a dead worker, and not taken back by its heartbeats.
        self.unfit = False
        self.last_seen = now
        self.last_result_at = None  # when it last reported a task finished or failed
        self.heartbeat_address = None  # where its heartbeats come from (UDP)

    @property
    def identity(self):
        return (self.pid, self.peer)

    def running_since(self, attempt):
        """When a delivered attempt's time limit runs from on this worker.

        A worker may queue the tasks it gets (ours runs them in turn), so a
        task's clock starts at its delivery or at the worker's last result,
        whichever is later: a worker that keeps reporting results is working
        through its queue, and one that hangs stops reporting.
        """
        if self.last_result_at is None:
            return attempt.started
        return max(attempt.started, self.last_result_at)

    @property
    def live(self):
        return self.acked and not self.dead

    def state(self, busy):
        if self.dead:
            return "unfit" if self.unfit else "dead"
        return "busy" if busy else "ready"

    def __str__(self):
        return f"worker {self.pid} ({self.host}:{self.port})"

    def __repr__(self):
        return f"<{self} from {self.peer}>"


class Workers:
    """Every worker registered, the newest record per identity."""

    def __init__(self):
        self.by_identity = {}
        self.registrations = 0

    def add(self, pid, peer, host, port, now, instance=None):
        self.registrations += 1
        record = WorkerRecord(self.registrations, pid, peer, host, port, now, instance)
        self.by_identity[record.identity] = record
        return record

    def all(self):
        return sorted(self.by_identity.values(), key=lambda w: w.order)

    def exactly(self, pid, peer):
        return self.by_identity.get((pid, peer))

    def find(self, pid, peer):
        """The worker a message with `pid` from `peer` comes from, or None.

        Only the exact identity: a message with a worker's pid from another
        address is not that worker's (it could fail or keep alive its tasks).
        """
        return self.by_identity.get((pid, peer))

    def live(self):
        return [w for w in self.all() if w.live]

    def at_address(self, host, port):
        return [w for w in self.live() if (w.host, w.port) == (host, port)]

    def forget(self, before, busy):
        """Drop the dead workers last heard from before `before` that hold nothing.

        Returns them. One that comes back later is asked to register again.
        """
        gone = [w for w in self.by_identity.values()
                if w.dead and w.last_seen < before and not busy(w)]
        for worker in gone:
            del self.by_identity[worker.identity]
        return gone

    def overdue(self, now, limit):
        return [w for w in self.live() if now - w.last_seen > limit]
