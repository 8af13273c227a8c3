"""Run a job in this process, with no master or workers: the reference run.

It goes through the same pipeline as the cluster (mrlib/pipeline.py): the
same splits, the same program runner (and combiner), one sort of all map
output, the same key-range (or hash) partitioning, one reduce per
partition, and the same output names. Partition boundaries are the exact size quantiles of the
sorted data, however it is spread over files, so its output files are
byte-identical to a cluster run's, and its wall time is the baseline every
benchmark compares against.
"""
import contextlib
import fcntl
import glob
import os
import shutil
import tempfile

from mrlib import pipeline, runner
from mrlib.job import MAP, SORT, SUCCEEDED, Job

SCRATCH_PREFIX = ".mapreduce-sequential-"
# One sort of all map output, as one worker would: then the merge only partitions.
ONE_WORKER = 1
# Inside a scratch directory, locked while its run lives: a scratch directory
# whose lock can be taken belongs to a run that was killed.
SCRATCH_LOCK = "running.lock"


class SequentialRun:
    """One job, run step by step in a scratch directory beside its output."""

    def __init__(self, spec):
        self.spec = spec
        self.parent = os.path.dirname(os.path.abspath(spec.output_directory))
        self.counters = runner.Report()
        self.job = None
        self.guard = None

    def run(self):
        """Run every phase; return the ended job (outputs, counters, timings)."""
        os.makedirs(self.parent, exist_ok=True)
        remove_abandoned_scratch(self.parent)
        # Programs die with this process, even on SIGKILL (a reaper watches it).
        self.guard = runner.ProgramGuard()
        try:
            with scratch_directory(self.parent) as scratch:
                self.job = Job(0, self.spec, scratch)
                self.run_phases()
        finally:
            self.guard.close()
        self.job.counters = self.counters.counters
        self.job.end(SUCCEEDED)
        return self.job

    def run_phases(self):
        """The pipeline's steps in turn: work here, and tasks one after another."""
        self.job.make_directories()
        while (step := pipeline.next_step(self.job, ONE_WORKER)) is not None:
            if isinstance(step, pipeline.Work):
                self.job.begin_phase(step.phase, [])
                step.done(step.run(self.guard))
                continue
            self.job.begin_phase(step.phase, step.tasks)
            for task in step.tasks:
                self.run_task(task)

    def run_task(self, task):
        spec = self.spec
        layout = spec.shuffle_layout() if spec.num_reducers > 0 else None
        if task.kind == SORT:
            runner.sort_files(task.inputs, task.outputs[0], guard=self.guard, layout=layout)
            self.job.record_sorted(task.outputs, True)
            return
        combiner = spec.combiner_executable if task.kind == MAP else None
        context = runner.TaskContext(task.context)
        spills = task.kind == MAP and spec.num_reducers > 0
        # What the cluster checks as it sorts a map's records is checked here as it is written.
        output_records = layout if spills and layout else spec.final_layout()
        for path, output in zip(task.inputs, task.outputs):
            self.counters.merge(runner.run_task_program(
                task.executable, path, output, combiner=combiner,
                env=context.environment(path), timeout=spec.task_timeout,
                guard=self.guard, spills=spills, layout=layout, output_records=output_records,
                counting=runner.Counting.from_message(task.kind,
                                                      spec.record_units(task.kind))))


@contextlib.contextmanager
def scratch_directory(parent):
    """A locked scratch directory beside the output (so the final hard links
    need no copy), removed however the block ends but SIGKILL."""
    scratch = tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=parent)
    lock = None
    try:
        # Locked before it gets the name other runs look for.
        lock_path = os.path.join(scratch, SCRATCH_LOCK)
        lock = _lock(lock_path + ".new", blocking=True)
        os.rename(lock_path + ".new", lock_path)
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if lock is not None:
            os.close(lock)


def remove_abandoned_scratch(parent):
    """Remove scratch directories of killed runs here; never one whose run still lives."""
    for scratch in glob.glob(os.path.join(glob.escape(parent), SCRATCH_PREFIX + "*")):
        lock_path = os.path.join(scratch, SCRATCH_LOCK)
        if os.path.islink(scratch) or not os.path.isfile(lock_path):
            continue  # not a directory this code made
        try:
            lock = _lock(lock_path, blocking=False)
        except OSError:
            continue  # locked: a run in progress
        try:
            shutil.rmtree(scratch, ignore_errors=True)
        finally:
            os.close(lock)


def _lock(path, blocking):
    """An fd holding an exclusive flock on `path` (created if needed); OSError if taken."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError:
        os.close(fd)
        raise
    return fd
