"""Run a job on Apache Spark instead of our master: `send_job.py --runner spark`.

The job is the one the usual options describe, run the way the sequential
mode runs it, with Spark doing the work in between:

- the same splits (mrlib/pipeline.py cuts them into a scratch directory
  beside the output, as --sequential does) and the same map tasks, one Spark
  partition each; a task runs its programs with mrlib/runner.py, exactly as
  our worker does (environment, combiner, counters, the probable cause of a
  failure);
- Spark's shuffle: map output lines (or records) become the keys of
  `repartitionAndSortWithinPartitions`, partitioned by range (boundaries
  sampled from the map output) or by our md5 hash of the key, and sorted as
  bytes within each partition, the order of `LC_ALL=C sort`;
- each reducer runs over its sorted partition, writing our output names
  into the scratch directory; the outputs are then published as ours are.

Data stays bytes throughout: lines and records are Python bytes, never
decoded. `reporter:counter` lines and the built-in counters are summed in a
Spark accumulator. The programs and this library must be on every machine
that runs Spark executors, at the same paths, and the input and the output's
parent directory must be shared with them (as with Hadoop Streaming).
"""
import bisect
import itertools
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import threading
import warnings

from mrlib import grouping, pipeline, records, runner, sequential
from mrlib.job import MAP, REDUCE, SUCCEEDED, Job

DEFAULT_MASTER = "local[*]"
SHUFFLE = "shuffle"  # the progress of the map side of Spark's shuffle
# A task failure travels to the driver inside Spark's exception text, after this mark.
FAILURE_MARK = "MAPREDUCE_TASK_FAILED:"
# Keys sampled from each map partition to choose range boundaries.
SAMPLES_PER_PARTITION = 200
# Elements written to a reducer's input at once.
WRITE_BATCH = 10_000
PROGRESS_SECONDS = 0.5
# Spark's own log: off. Its default is a screenful of warnings per run, and a
# failed task's stack traces, one per attempt; the job's failure says what failed.
LOG_SETTINGS = """rootLogger.level = off
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = spark: %p %c{1}: %m%n
"""
JAVA_MISSING = "--runner spark needs Java 17 or later on the PATH (or JAVA_HOME): none found"
# What the executors' Python adds to the environment, which the programs do not get.
SPARK_VARIABLES = ("SPARK_", "PYSPARK_", "PYTHON_WORKER_FACTORY", "OMP_NUM_THREADS",
                   "PYTHONHASHSEED", "PYTHONPATH")
PYSPARK_MISSING = ("--runner spark needs PySpark, which is not installed: "
                   "pip install 'mapreduce-server[spark]' (or pip install pyspark)")


class SparkUnavailable(Exception):
    """Spark cannot run here: the reason in one line."""


class SparkJobFailed(Exception):
    """The job failed on Spark: `failure` as the probable cause (or None), `reason`."""

    def __init__(self, reason, failure=None):
        super().__init__(reason)
        self.reason = reason
        self.failure = failure


def load_pyspark():
    """The pyspark module, or SparkUnavailable saying what is missing."""
    java_home = os.environ.get("JAVA_HOME")
    if not shutil.which("java") and not (java_home and os.path.isfile(
            os.path.join(java_home, "bin", "java"))):
        raise SparkUnavailable(JAVA_MISSING)
    try:
        import pyspark
    except ImportError:
        raise SparkUnavailable(PYSPARK_MISSING) from None
    return pyspark


def local_with_retries(master, attempts):
    """Spark's local mode tries a task once unless its master URL says otherwise."""
    threads = "1" if master == "local" else \
        master[len("local["):-1] if master.startswith("local[") and master.endswith("]") else None
    if threads is not None and (threads == "*" or threads.isdigit()):
        return f"local[{threads},{attempts}]"
    return master


def is_local(master):
    return master == "local" or master.startswith("local[")


# --- what runs on the executors ----------------------------------------------------

class Plan:
    """What the executors need of a job, plain and picklable."""

    def __init__(self, spec, layout, scratch, driver_env):
        self.scratch = scratch  # where tasks write what they hold (None: the temp directory)
        self.driver_env = driver_env  # the variables the programs may keep of Spark's
        self.mapper = spec.mapper_executable
        self.reducer = spec.reducer_executable
        self.combiner = spec.combiner_executable
        self.timeout = spec.task_timeout
        self.map_only = spec.num_reducers == 0
        self.layout = layout
        self.final_layout = spec.final_layout()
        self.units = {kind: spec.record_units(kind) for kind in (MAP, REDUCE)}

    def counting(self, kind):
        return runner.Counting.from_message(kind, self.units[kind])

    def environment(self, context, input_file):
        """The program's environment: our worker's, without what Spark's Python adds."""
        base = {name: value for name, value in os.environ.items()
                if not name.startswith(SPARK_VARIABLES)}
        base.update({name: value for name, value in self.driver_env.items()
                     if name.startswith(SPARK_VARIABLES)})
        return context.environment(input_file, base)


def task_failed(failure, task):
    """A RuntimeError carrying a TaskFailed to the driver, through Spark."""
    details = {"task": task, "input": failure.input_file, "exit_code": failure.exit_code,
               "error": failure.reason, "stderr_tail": failure.stderr_tail}
    return RuntimeError(FAILURE_MARK + json.dumps(details) + "\n")


def elements(path, layout, program):
    """The lines (without their newline) or records of a map output file."""
    with open(path, "rb") as handle:
        if layout is None:
            for line in handle:
                yield line[:-1] if line.endswith(b"\n") else line
            return
        size = layout.size
        length = os.fstat(handle.fileno()).st_size
        if length % size:
            raise runner.TaskFailed(str(records.not_records(
                f"the output of {program}", length, size, layout.option)))
        while chunk := handle.read(max(size, records.WRITE_CHUNK // size * size)):
            for start in range(0, len(chunk), size):
                yield chunk[start:start + size]


def run_map_task(plan, task, counters):
    """One map task's inputs through the map program (and combiner): its output's
    elements, or for a map-only job its output files written in place."""
    context = runner.TaskContext(task["context"])
    scratch = tempfile.mkdtemp(prefix="map-task-", dir=plan.scratch)
    guard = runner.ProgramGuard()  # its programs, and all they start, die with the task
    try:
        for source, output in zip(task["inputs"], task["outputs"]):
            target = output if plan.map_only else os.path.join(scratch, "output")
            try:
                report = runner.run_task_program(
                    plan.mapper, source, target, combiner=plan.combiner, guard=guard,
                    env=plan.environment(context, source), timeout=plan.timeout,
                    counting=plan.counting(MAP), spills=not plan.map_only,
                    layout=plan.layout,
                    output_records=plan.final_layout if plan.map_only else None)
                counters.add(report.counters)
                if not plan.map_only:
                    yield from elements(target, plan.layout, plan.combiner or plan.mapper)
            except runner.TaskFailed as failure:
                failure.input_file = failure.input_file or source
                raise task_failed(failure, f"map task {task['number']}") from None
    finally:
        guard.close()
        shutil.rmtree(scratch, ignore_errors=True)


def run_reduce_task(plan, task, sorted_pairs, counters):
    """The reducer over one sorted partition, into the job's reducer output."""
    scratch = tempfile.mkdtemp(prefix="reduce-task-", dir=plan.scratch)
    source = os.path.join(scratch, "input")
    ending = b"" if plan.layout is not None else b"\n"
    guard = runner.ProgramGuard()
    try:
        with open(source, "wb") as out:
            while batch := list(itertools.islice(sorted_pairs, WRITE_BATCH)):
                out.write(b"".join(element + ending for element, _ in batch))
        context = runner.TaskContext(task["context"])
        report = runner.run_task_program(
            plan.reducer, source, task["outputs"][0], env=plan.environment(context, source),
            timeout=plan.timeout, guard=guard, counting=plan.counting(REDUCE),
            output_records=plan.final_layout)
        counters.add(report.counters)
    except runner.TaskFailed as failure:
        failure.input_file = f"reduce partition {task['number']}"
        raise task_failed(failure, f"reduce task {task['number']}") from None
    finally:
        guard.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return task["number"]


def key_function(layout):
    """The key of an element: bytes before the first tab, or a record's first bytes."""
    if layout is None:
        return grouping.key_of
    return layout.key_of


def boundary_function(layout):
    """An element's key if it may separate range partitions, else None: a line's key
    holding a byte at or below the tab may not (mrlib/grouping.py says why)."""
    if layout is None:
        return grouping.boundary_key
    return layout.key_of


def sample_keys(boundary, count):
    """(elements seen, up to `count` of their boundary keys, drawn evenly) of one
    partition; elements whose key cannot be a boundary are counted, not drawn."""
    def sample(elements_of_partition):
        chosen, seen, usable = [], 0, 0
        rng = random.Random(0)
        for element in elements_of_partition:
            seen += 1
            key = boundary(element)
            if key is None:
                continue
            usable += 1
            if len(chosen) < count:
                chosen.append(key)
            elif (slot := rng.randrange(usable)) < count:
                chosen[slot] = key
        yield seen, chosen
    return sample


def boundaries(samples, parts):
    """parts-1 increasing keys at the weighted quantiles of the sampled keys."""
    weighted = sorted((k, seen / len(keys)) for seen, keys in samples if keys for k in keys)
    total = sum(weight for _, weight in weighted)
    chosen, reached, step = [], 0.0, total / parts
    for k, weight in weighted:
        reached += weight
        if len(chosen) < parts - 1 and reached >= step * (len(chosen) + 1) \
                and (not chosen or k > chosen[-1]):
            chosen.append(k)
    return chosen


class CounterSum:
    """Spark's AccumulatorParam for {group: {name: amount}} counters."""

    @staticmethod
    def zero(value):
        return {}

    @staticmethod
    def addInPlace(first, second):
        for group, counters in second.items():
            totals = first.setdefault(group, {})
            for name, amount in counters.items():
                totals[name] = totals.get(name, 0) + amount
        return first


# --- the driver ------------------------------------------------------------------------

class Progress(threading.Thread):
    """--wait's progress lines, from Spark's status tracker."""

    def __init__(self, context, say):
        super().__init__(daemon=True)
        self.context, self.say = context, say
        self.phase = None
        self.stopped = threading.Event()
        self.last = None

    def run(self):
        while not self.stopped.wait(PROGRESS_SECONDS):
            try:
                self.report()
            except Exception:  # py4j's errors: the JVM is gone (stopped, or killed by SIGTERM)
                return  # the job's own action fails too, and says why

    def report(self):
        tracker = self.context.statusTracker()
        for stage_id in sorted(tracker.getActiveStageIds()):
            info = tracker.getStageInfo(stage_id)
            if info is None:
                continue
            phase = self.phase_of(tracker, stage_id)
            done, total = info.numCompletedTasks, info.numTasks
            line = (f"job spark: running, {phase} phase, {done}/{total} tasks done "
                    f"({done * 100 // max(total, 1)}%)")
            if line != self.last:
                self.last = line
                self.say(line)

    def phase_of(self, tracker, stage_id):
        """In the job that runs the reducers, the last stage reduces; those before it
        feed the shuffle."""
        if self.phase != REDUCE:
            return self.phase
        for job_id in tracker.getJobIdsForGroup(REDUCE):
            job = tracker.getJobInfo(job_id)
            if job is not None and stage_id == max(job.stageIds):
                return REDUCE
        return SHUFFLE

    def stop(self):
        self.stopped.set()
        self.join()


class SparkRun:
    """One job on Spark, in a scratch directory beside its output."""

    def __init__(self, spec, master=DEFAULT_MASTER, say=None):
        self.spec = spec
        self.master = master
        self.say = say  # prints a progress line, or None
        self.parent = os.path.dirname(os.path.abspath(spec.output_directory))
        self.job = None
        self.context = None
        self.driver_env = dict(os.environ)
        self.abandoned = False  # stopped by abandon(): what fails next is not the job's

    def abandon(self):
        """Stop Spark at once (SIGTERM): its executors die, and the programs with them."""
        gateway = getattr(self.context, "_gateway", None)
        process = getattr(gateway, "proc", None)
        self.abandoned = True
        # py4j logs each call that loses the gateway, traceback and all, to the root
        # logger, and PySpark warns that the JVM it is stopping is gone.
        logging.disable(logging.CRITICAL)
        warnings.filterwarnings("ignore", "Unable to cleanly shutdown Spark JVM")
        if process is not None:
            process.kill()

    def run(self, prepare=None):
        """Run the job; return the ended Job (outputs, counters, timings).

        Spark starts first: SparkUnavailable if it cannot, before `prepare`
        (which may remove an earlier job's outputs) is called."""
        pyspark = load_pyspark()
        os.makedirs(self.parent, exist_ok=True)
        sequential.remove_abandoned_scratch(self.parent)
        with sequential.scratch_directory(self.parent) as scratch:
            session = self.start(pyspark, scratch)
            self.context = session.sparkContext
            try:
                if prepare is not None:
                    prepare()
                self.job = Job(0, self.spec, scratch)
                self.job.make_directories()
                split = pipeline.plan_split(self.job, 1)
                if split is not None:
                    self.job.begin_phase(split.phase, [])
                    split.done(split.run(None))
                self.run_on(session.sparkContext, pyspark, scratch)
            finally:
                stop(session)
            self.job.begin_phase("publish", [])
            self.job.outputs = self.job.publish_outputs()
        self.job.end(SUCCEEDED)
        return self.job

    def start(self, pyspark, scratch):
        from pyspark.sql import SparkSession
        log_settings = os.path.join(scratch, "log4j2.properties")
        with open(log_settings, "w") as handle:
            handle.write(LOG_SETTINGS)
        # The executors' Python runs the programs with this library.
        paths = [runner.LIBRARY] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                    if p]
        os.environ["PYTHONPATH"] = os.pathsep.join(paths)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        master = local_with_retries(self.master, self.spec.max_attempts)
        builder = (SparkSession.builder.master(master).appName("mapreduce job")
                   .config("spark.ui.showConsoleProgress", "false")
                   .config("spark.task.maxFailures", str(self.spec.max_attempts))
                   .config("spark.executorEnv.PYTHONPATH", os.environ["PYTHONPATH"])
                   .config("spark.driver.extraJavaOptions",
                           f"-Dlog4j2.configurationFile=file:{log_settings}"))
        if is_local(self.master):  # Spark's shuffle files too go beside the output
            builder = builder.config("spark.local.dir", scratch)
        try:
            session = builder.getOrCreate()
        except Exception as error:  # a bad master URL: py4j's and Spark's own errors
            raise SparkUnavailable(f"Spark did not start with --spark-master {self.master}: "
                                   f"{gist(error)}") from None
        session.sparkContext.setLogLevel("ERROR")
        return session

    def run_on(self, context, pyspark, scratch):
        spec, job = self.spec, self.job
        layout = spec.shuffle_layout() if spec.num_reducers > 0 else None
        plan = Plan(spec, layout, scratch if is_local(self.master) else None, self.driver_env)
        counters = context.accumulator({}, CounterSum())
        tasks = [{"number": t.number, "inputs": t.inputs, "outputs": t.outputs,
                  "context": t.context} for t in job.map_tasks(job.splits)]
        progress = Progress(context, self.say) if self.say else None
        if progress:
            progress.start()
        try:
            mapped = context.parallelize(tasks, max(1, len(tasks))).flatMap(
                lambda task: run_map_task(plan, task, counters))
            self.job.begin_phase(MAP, [])
            if plan.map_only:
                self.act(progress, MAP, mapped.count)
            else:
                self.shuffle_and_reduce(context, pyspark, mapped, plan, counters, progress)
        finally:
            if progress:
                progress.stop()
        job.counters = counters.value

    def shuffle_and_reduce(self, context, pyspark, mapped, plan, counters, progress):
        spec, job = self.spec, self.job
        parts, key = spec.num_reducers, key_function(plan.layout)
        boundary = boundary_function(plan.layout)
        if spec.partitioner == "hash":
            def partition(element):
                return grouping.hash_partition(key(element), parts)
        else:
            mapped = mapped.persist(pyspark.StorageLevel.MEMORY_AND_DISK)  # mapped once
            samples = self.act(progress, MAP, mapped.mapPartitions(
                sample_keys(boundary, SAMPLES_PER_PARTITION)).collect)
            bounds = boundaries(samples, parts)

            def partition(element):
                return bisect.bisect_right(bounds, key(element))
        reduce_tasks = [{"number": t.number, "outputs": t.outputs, "context": t.context}
                        for t in job.reduce_tasks()]
        shuffled = mapped.map(lambda element: (element, None)).repartitionAndSortWithinPartitions(
            parts, partition, ascending=True)
        reduced = shuffled.mapPartitionsWithIndex(
            lambda number, pairs: [run_reduce_task(plan, reduce_tasks[number], pairs, counters)])
        self.job.begin_phase(REDUCE, [])
        self.act(progress, REDUCE, reduced.collect)

    def act(self, progress, phase, action):
        """Run a Spark action as `phase`; a failed task becomes SparkJobFailed."""
        self.context.setJobGroup(phase, f"mapreduce {phase}")
        if progress and progress.phase != phase:
            progress.phase = phase
            progress.say(f"job spark: running, {phase} phase")  # even if it ends before a poll
        try:
            return action()
        except Exception as error:  # py4j's Py4JJavaError, and what Spark raises itself
            raise failure_of(error) from None


def stop(session):
    """Stop a Spark session, even one whose JVM is gone (abandoned)."""
    try:
        session.stop()
    except Exception:  # py4j: the gateway is gone
        pass


def failure_of(error):
    """SparkJobFailed for an exception of a Spark action: our task's failure if it
    carries one, else the gist of Spark's message."""
    text = str(error)
    start = text.find(FAILURE_MARK)
    if start >= 0:
        line = text[start + len(FAILURE_MARK):].split("\n", 1)[0]
        try:
            failure = json.loads(line)
        except ValueError:
            failure = None
        if failure is not None:
            return SparkJobFailed(f"{failure['task']} failed", failure)
    return SparkJobFailed(gist(error))


def gist(error):
    """The first line of an exception's text: py4j's and Spark's run to pages."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
