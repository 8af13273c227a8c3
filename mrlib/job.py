"""A job's tasks, phases and files, as the master tracks them.

Only the coordinator (or a sequential run) touches these objects. Inside, a
task is (kind, number), as mrjob's (task_type, task_num); on the wire it is
the set of paths it outputs, because that is all a status message from any
implementation's worker carries.
"""
import bisect
import collections
import copy
import os
import shutil
import time

import helper
from mrlib import names, outputdir
from mrlib.runner import FRAMEWORK, discard

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
CANCELLED = "cancelled"
SPLIT, MAP, GROUP, MERGE, REDUCE, DONE = "split", "map", "group", "merge", "reduce", "done"
PUBLISH = "publish"  # outputs into the output directory, intermediates removed
SORT = "sort"  # the kind of the group phase's tasks
EVENT_HISTORY = 50
REDUCER_OUTPUT = "reducer-output"
LOGS = "logs"  # each attempt's stderr; removed with the rest after success
# What of var/job-N a successful job keeps: the spec's own test reads it.
KEPT_AFTER_SUCCESS = (REDUCER_OUTPUT,)


def task_key(paths):
    """The identity of a task: the set of files it outputs, however spelled.

    Absolute, so `var/job-0/x`, `./var//job-0/x` and `/cwd/var/job-0/x` from
    any implementation's worker all name the same task.
    """
    return tuple(sorted(os.path.abspath(p) for p in paths))


class Task:
    """One unit of work: a map, sort or reduce over some input files."""

    def __init__(self, kind, number, inputs, outputs, executable=None,
                 output_directory=None, context=None):
        self.kind = kind
        self.number = number
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.executable = executable
        self.output_directory = output_directory
        self.context = context
        self.key = task_key(outputs)
        self.done = False
        self.failures = 0       # attempts that failed (worker deaths do not count)
        self.attempts_started = 0  # every copy sent, for naming each attempt's log
        self.failed_on = set()  # workers it failed on or that never took it: avoided

    @property
    def name(self):
        return f"{self.kind} task {self.number}"

    def describe_inputs(self):
        shown = ", ".join(self.inputs[:3])
        return shown + (f" (+{len(self.inputs) - 3} more)" if len(self.inputs) > 3 else "")

    def message(self, pid, extensions):
        """The wire message assigning this task to worker `pid`."""
        if self.kind == SORT:
            return helper.new_sort_job(self.inputs, self.outputs[0], pid, **extensions)
        return helper.new_worker_job(self.inputs, self.executable, self.output_directory, pid,
                                     context=self.context, **extensions)


class Job:
    """A submitted job: its directories, current phase and that phase's tasks."""

    def __init__(self, job_id, spec, root, changed=None):
        self.id = job_id
        # Jobs whose snapshot may have changed: every change below adds this job.
        self.changed = changed if changed is not None else set()
        self.spec = spec
        self.directory = os.path.join(root, f"job-{job_id}")
        self.mapper_dir = os.path.join(self.directory, "mapper-output")
        self.grouper_dir = os.path.join(self.directory, "grouper-output")
        self.splits_dir = os.path.join(self.directory, "splits")
        self.reducer_dir = os.path.join(self.directory, REDUCER_OUTPUT)
        self.state = QUEUED
        self.phase = QUEUED
        self.tasks = {}
        self.done_count = 0
        self.durations = []  # sorted seconds of this phase's finished tasks
        self.splits = None  # split files, if the job cuts its input
        self.sort_outputs = []  # the group phase's sorted files
        self.map_outputs = []
        self.map_only_names = []
        self.sorted_files = set()  # map outputs a worker reported as sorted
        self.outputs = []
        self.files_kept = True  # False once var/job-N is removed (old failed jobs)
        self.error = None
        self.failure = None  # the last failed attempt, for "probable cause" (a dict)
        self.events = collections.deque(maxlen=EVENT_HISTORY)  # the latest notes
        self.events_total = 0  # every note ever made: clients tell new ones by it
        self.counters = {}
        self.uncounted = False  # a task ran where the built-in counters are not counted
        self.timings = {}
        self.phase_started = None
        self.submitted = time.monotonic()

    def attempt_log(self, task, number):
        """Where attempt `number` of `task` keeps its stderr (made by the worker if any)."""
        return os.path.join(self.directory, LOGS, f"{task.kind}-{task.number:05d}"
                                                  f".attempt-{number}.log")

    def make_directories(self):
        """The job's directories, and the snapshot of the code it ships."""
        for directory in (self.mapper_dir, self.grouper_dir, self.reducer_dir):
            os.makedirs(directory, exist_ok=True)
        self.spec.install_code(self.directory)

    def touch(self):
        self.changed.add(self)

    def note(self, text):
        """Remember a notable event (death, reassignment, retry) for the client."""
        self.events.append(text)
        self.events_total += 1
        self.touch()

    def files_removed(self):
        self.files_kept = False
        self.touch()

    # --- phases ------------------------------------------------------------

    def begin_phase(self, phase, tasks):
        now = time.monotonic()
        if self.phase_started is not None and self.phase not in (QUEUED, DONE):
            self.timings[self.phase] = round(now - self.phase_started, 3)
        self.state = RUNNING
        self.phase = phase
        self.phase_started = now
        self.tasks = {task.key: task for task in tasks}
        self.done_count = 0
        self.durations = []
        self.touch()

    def end(self, state, error=None):
        self.begin_phase(DONE, [])
        self.timings["total"] = round(time.monotonic() - self.submitted, 3)
        self.state = state
        self.error = error
        # What only a running job needs: a master keeps ended jobs for clients.
        self.map_outputs, self.map_only_names, self.sort_outputs = [], [], []
        self.sorted_files, self.splits = set(), None
        self.touch()

    def map_tasks(self, splits=None):
        """One task per split if the job has splits; else files dealt round robin."""
        if splits is not None:
            groups = [[split] for split in splits]
        else:
            files = [WholeFile(path, index) for index, path in enumerate(self.spec.input_files())]
            count = min(self.spec.num_mappers, len(files))
            groups = [files[n::count] for n in range(count)]
        tasks = [self.map_task(number, group) for number, group in enumerate(groups)]
        # Input order, not task order: map-only output is concatenated in it.
        ordered = sorted((part for group in groups for part in group), key=lambda p: p.index)
        self.map_outputs = [helper.output_path(self.mapper_dir, p.path) for p in ordered]
        # Map-only outputs are named by position, so every sort of the names
        # (plain or numeric) gives the job's order.
        self.map_only_names = [names.positional(p.index, p.source) for p in ordered]
        return tasks

    def map_task(self, number, parts):
        paths = [part.path for part in parts]
        outputs = [helper.output_path(self.mapper_dir, path) for path in paths]
        return Task(MAP, number, paths, outputs, self.spec.mapper_executable,
                    self.mapper_dir, self.map_context(number, parts))

    def map_context(self, number, parts):
        """Our extension: what each program reads, sent only to jobs that use extensions."""
        if not self.spec.uses_extensions():
            return None
        return {"env": dict(self.spec.env),
                "files": {part.path: part.environment(number) for part in parts}}

    def sort_tasks(self, live_workers):
        files = self.map_outputs
        count = max(1, min(live_workers, len(files)))
        return [Task(SORT, number, files[number::count],
                     [os.path.join(self.grouper_dir, names.sorted_run(number))])
                for number in range(count)]

    def reduce_tasks(self):
        tasks = []
        partitions = names.partition_paths(self.grouper_dir, self.spec.num_reducers)
        for number, source in enumerate(partitions):
            context = None
            if self.spec.uses_extensions():
                context = {"env": dict(self.spec.env, mapreduce_task_partition=str(number))}
            tasks.append(Task(REDUCE, number, [source],
                              [helper.output_path(self.reducer_dir, source)],
                              self.spec.reducer_executable, self.reducer_dir, context))
        return tasks

    # --- progress ----------------------------------------------------------

    def unfinished(self):
        """This phase's tasks not done yet, in task order."""
        return [t for t in self.tasks.values() if not t.done]

    def finish_task(self, task, duration):
        task.done = True
        self.done_count += 1
        if duration is not None:
            bisect.insort(self.durations, duration)
        self.touch()

    def typical_duration(self):
        """The median duration of this phase's finished tasks, or None."""
        return self.durations[len(self.durations) // 2] if self.durations else None

    def phase_complete(self):
        return self.done_count == len(self.tasks)

    def record_sorted(self, paths, is_sorted):
        keys = task_key(paths)
        if is_sorted:
            self.sorted_files.update(keys)
        else:
            self.sorted_files.difference_update(keys)

    def all_sorted(self, paths):
        return bool(paths) and all(key in self.sorted_files for key in task_key(paths))

    def add_task_counters(self, task, counters, worker):
        """A finished task's counters. A map or reduce without the built-in ones ran
        on a worker that does not count them: the job's totals would be short."""
        if task.kind in (MAP, REDUCE) and FRAMEWORK not in counters and not self.uncounted:
            self.uncounted = True
            self.note(f"built-in counters left out: worker {worker.pid} ran {task.name} "
                      f"without counting them (another implementation's worker?)")
        self.add_counters(counters)

    def shown_counters(self):
        counters = copy.deepcopy(self.counters)
        if self.uncounted:
            counters.pop(FRAMEWORK, None)
        return counters

    def add_counters(self, counters):
        for group, values in counters.items():
            if not isinstance(values, dict):
                continue
            totals = self.counters.setdefault(str(group), {})
            for name, amount in values.items():
                if isinstance(amount, int) and not isinstance(amount, bool):
                    totals[str(name)] = totals.get(str(name), 0) + amount
        self.touch()

    # --- wrap-up -----------------------------------------------------------

    def final_sources(self):
        """The files that make up the job's output, in order."""
        if self.spec.num_reducers == 0:
            return self.map_outputs
        partitions = names.partition_paths(self.grouper_dir, self.spec.num_reducers)
        return [helper.output_path(self.reducer_dir, source) for source in partitions]

    def output_names(self, count):
        base = self.spec.output_base_name
        return None if base is None else names.based(base, count)

    def publish_outputs(self):
        """Hard-link (or copy) the final files into output_directory; return their paths.

        A map-only job's files are first linked into reducer-output too, so
        that every job's results stay readable there, as the spec's test reads them.
        """
        sources = self.final_sources()
        names = self.output_names(len(sources))
        if names is None:
            names = (self.map_only_names if self.spec.num_reducers == 0
                     else [os.path.basename(s) for s in sources])
        if self.spec.num_reducers == 0:
            staged = [os.path.join(self.reducer_dir, name) for name in names]
            publish_all(sources, staged)
            sources = staged
        os.makedirs(self.spec.output_directory, exist_ok=True)
        destinations = [os.path.join(self.spec.output_directory, name) for name in names]
        publish_all(sources, destinations)
        return destinations

    def intermediate_paths(self):
        """What a successful job no longer needs: all of var/job-N but reducer-output."""
        return [os.path.join(self.directory, name) for name in sorted(os.listdir(self.directory))
                if name not in KEPT_AFTER_SUCCESS]

    def snapshot(self):
        """What a client may see of this job (see helper.job_status)."""
        return {"message_type": "job_status_reply", "job_id": self.id, "state": self.state,
                "phase": self.phase, "tasks_done": self.done_count,
                "tasks_total": len(self.tasks),
                "output_directory": self.spec.output_directory, "outputs": list(self.outputs),
                "job_directory": os.path.abspath(self.directory) if self.files_kept else None,
                "error": self.error, "failure": copy.deepcopy(self.failure),
                "events": list(self.events), "events_total": self.events_total,
                "counters": self.shown_counters(),
                "timings": dict(self.timings)}


class WholeFile:
    """An input file processed whole (no split_size): the spec's behaviour."""

    def __init__(self, path, index):
        self.path = self.source = path
        self.index = index

    def environment(self, task_number):
        return {"mapreduce_map_input_file": self.path, "mapreduce_map_input_start": "0",
                "mapreduce_map_input_length": str(os.path.getsize(self.path)),
                "mapreduce_task_partition": str(task_number)}


def publish_all(sources, destinations):
    """Put every source at its destination, or none of them (all or nothing).

    Each is first linked (or copied, across filesystems) to a hidden
    temporary name beside its destination; only when all are there are they
    renamed into place, so a full disk half-way leaves no partial output
    that looks like a real one.
    """
    temporaries = [os.path.join(os.path.dirname(d) or ".",
                                f".{os.path.basename(d)}.tmp-{os.getpid()}") for d in destinations]
    try:
        for source, temporary in zip(sources, temporaries):
            discard(temporary)
            try:
                os.link(source, temporary)
            except OSError:
                shutil.copyfile(source, temporary)
            outputdir.mark(temporary)  # --overwrite's proof that it is a job's output
        for temporary, destination in zip(temporaries, destinations):
            os.replace(temporary, destination)
    finally:
        for temporary in temporaries:
            discard(temporary)
