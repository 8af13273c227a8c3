"""The phases of a job, written once: split, map, group, merge, reduce, publish.

`next_step` says what a job does after its current phase: a set of tasks
that workers run (map, group, reduce) or work the master does itself (cut
splits, merge sorted runs into partitions, publish the outputs). The
coordinator hands tasks to workers and work to a background thread; a
sequential run does both in turn, in its own process (mrlib/sequential.py).
"""
from mrlib import grouping, runner, splits
from mrlib.job import GROUP, MAP, MERGE, PUBLISH, QUEUED, REDUCE, SPLIT

ORDER = (QUEUED, SPLIT, MAP, GROUP, MERGE, REDUCE, PUBLISH)


class Tasks:
    """A phase of tasks for workers; an empty one is skipped."""

    def __init__(self, phase, tasks):
        self.phase = phase
        self.tasks = tasks


class Work:
    """A phase the master does itself: `run(guard)` off the master's thread,
    then `done(result)` on it."""

    def __init__(self, phase, run, done=None):
        self.phase = phase
        self.run = run
        self.done = done or (lambda result: None)
        self.name = phase


def next_step(job, workers):
    """The step after the job's current phase, or None when the job is done.

    `workers` is how many can run tasks now (the group phase makes one sort
    task per worker). Raises OSError if the input cannot be listed.
    """
    for phase in ORDER[ORDER.index(job.phase) + 1:]:
        step = PLANNERS[phase](job, workers)
        if step is not None:
            return step
    return None


def plan_split(job, workers):
    spec = job.spec
    if not spec.split_size and not spec.record_size:
        return None

    def cut(guard):
        spec.check_input_records()  # records.RecordError names a file that is not whole records
        if not spec.split_size:
            return None
        planned = splits.plan(spec.input_files(), spec.split_size, spec.record_size)
        return splits.materialize(planned, job.splits_dir)

    def keep(made):
        job.splits = made
    return Work(SPLIT, cut, keep)


def plan_map(job, workers):
    return Tasks(MAP, job.map_tasks(job.splits))


def plan_group(job, workers):
    if job.spec.num_reducers == 0 or not job.map_outputs:
        return None
    if job.spec.shuffle_layout() is not None:
        # Records: the merge cuts the sorted map outputs and merges each
        # partition's pieces at once (records.py merges 64 at a time), which
        # saves the pass over the data that merging them on the workers first costs.
        return None
    tasks = job.sort_tasks(workers)
    job.sort_outputs = [task.outputs[0] for task in tasks]
    return Tasks(GROUP, tasks)


def plan_merge(job, workers):
    if job.spec.num_reducers == 0:
        return None
    sorted_paths = list(job.sort_outputs or job.map_outputs)
    # Another worker may sort in its own locale's order: only our worker's
    # `sorted: true` promises bytewise order.
    unsure = [path for path in sorted_paths if not job.all_sorted([path])]

    layout = job.spec.shuffle_layout()

    def merge(guard):
        for path in unsure:
            runner.sort_files([path], path, guard=guard, layout=layout)
        grouping.merge_and_partition(sorted_paths, job.grouper_dir, job.spec.num_reducers,
                                     job.spec.partitioner, guard, layout)
    step = Work(MERGE, merge)
    step.unsure = unsure
    return step


def plan_reduce(job, workers):
    if job.spec.num_reducers == 0:
        return None
    return Tasks(REDUCE, job.reduce_tasks())


def plan_publish(job, workers):
    def publish(guard):
        try:
            return job.publish_outputs()
        except (OSError, ValueError) as error:
            raise OSError(f"cannot write the output to {job.spec.output_directory}: "
                          f"{error}") from None

    def keep(outputs):
        job.outputs = outputs
    return Work(PUBLISH, publish, keep)


PLANNERS = {SPLIT: plan_split, MAP: plan_map, GROUP: plan_group, MERGE: plan_merge,
            REDUCE: plan_reduce, PUBLISH: plan_publish}
