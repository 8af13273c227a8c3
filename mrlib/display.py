"""What `send_job.py --wait` shows while a job runs.

On a terminal: one live progress bar per phase that has tasks (rich), with
tasks done, percentage, elapsed time and time left, and the job's events
printed above the bars. Elsewhere (a pipe, a log, CI): plain lines, one each
time the progress changes, with the same numbers; never the same line twice.
Phases the master runs itself (merge, publish) have no tasks and no bar.
"""
import sys
import time

from mrlib.runner import FRAMEWORK_COUNTERS


def counter_groups(counters):
    """[(group, [(name, amount), ...]), ...]: groups by name, the built-in
    counters in the order the data passes them, the others by name."""
    def shown_order(counter):
        name = counter[0]
        known = FRAMEWORK_COUNTERS.index(name) if name in FRAMEWORK_COUNTERS else None
        return (0, known, "") if known is not None else (1, 0, name)
    return [(group, sorted(named.items(), key=shown_order))
            for group, named in sorted((counters or {}).items())]


def describe(status):
    """One line for a job's state: its phase, and its tasks if the phase has any."""
    line = f"job {status['job_id']}: {status.get('state')}"
    if status.get("state") == "running":
        line += f", {status.get('phase')} phase"
        if status.get("tasks_total"):  # the master's own steps (merge, publish) have none
            line += f", {status.get('tasks_done')}/{status['tasks_total']} tasks done"
    return line


class PhaseClock:
    """When each phase was first seen, for elapsed time and a remaining-time estimate."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.phase = None
        self.started = None

    def see(self, phase):
        if phase != self.phase:
            self.phase, self.started = phase, self.clock()

    def elapsed(self):
        return self.clock() - self.started

    def remaining(self, done, total):
        """Seconds left at the phase's pace so far, or None before the first task is done."""
        if not done or done >= total:
            return None
        return self.elapsed() / done * (total - done)


class PlainLines:
    """Change-only progress lines, for output that is not a terminal."""

    def __init__(self, job_id, out=None, clock=time.monotonic):
        self.job_id = job_id
        self.out = out or sys.stdout
        self.phases = PhaseClock(clock)
        self.last = None

    def event(self, text):
        self._print(f"job {self.job_id}: {text}")

    def update(self, status):
        line = describe(status)
        if line == self.last:
            return
        self.last = line
        done, total = status.get("tasks_done") or 0, status.get("tasks_total") or 0
        if status.get("state") == "running":
            self.phases.see(status.get("phase"))
            if total:
                line += f" ({100 * done // total}%), {self.phases.elapsed():.1f} s in the phase"
                left = self.phases.remaining(done, total)
                if left is not None:
                    line += f", about {left:.0f} s left"
        self._print(line)

    def close(self):
        pass

    def _print(self, line):
        print(line, file=self.out, flush=True)


class LiveBars:
    """A rich progress bar per phase, on a terminal."""

    def __init__(self, job_id):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn,
                                   TextColumn, TimeElapsedColumn, TimeRemainingColumn)
        self.job_id = job_id
        self.progress = Progress(TextColumn("job {task.fields[job]} {task.description:>7}"),
                                 BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn())
        self.bars = {}  # phase -> rich task id
        self.current = None
        self.closed = False
        self.progress.start()

    def event(self, text):
        self.progress.console.print(f"job {self.job_id}: {text}")

    def update(self, status):
        phase, total = status.get("phase"), status.get("tasks_total") or 0
        if phase != self.current:
            self._finish_current()
            self.current = phase
        if status.get("state") != "running" or not total:
            return
        if phase not in self.bars:
            self.bars[phase] = self.progress.add_task(phase, total=total, job=self.job_id)
        self.progress.update(self.bars[phase], completed=status.get("tasks_done") or 0,
                             total=total)

    def _finish_current(self):
        bar = self.bars.get(self.current)
        if bar is not None:
            task = self.progress.tasks[bar]
            self.progress.update(bar, completed=task.total)
            self.progress.stop_task(bar)

    def close(self):
        if not self.closed:
            self.closed = True
            self._finish_current()
            self.progress.stop()


def for_output(job_id, out=None):
    """Live bars on a terminal, plain lines elsewhere."""
    out = out or sys.stdout
    if out.isatty():
        try:
            return LiveBars(job_id)
        except ImportError:  # rich is a dependency, but a bare checkout may lack it
            pass
    return PlainLines(job_id, out)
