"""Python jobs: map, combine and reduce as methods of a `Job` subclass.

    from mrlib import Job

    class WordCount(Job):
        def mapper(self, key, line):
            for word in line.split():
                yield word, 1

        def combiner(self, word, counts):
            yield word, sum(counts)

        def reducer(self, word, counts):
            yield word, sum(counts)

Input lines reach `mapper` as key None and the line as a str without its
newline (UTF-8; bytes that are not kept with surrogateescape). Keys and values
are anything JSON can encode. Between phases, and in the job's output, a pair
is one line: JSON of the key (its dicts' keys sorted, so equal keys are equal
bytes), a tab, JSON of the value; the shuffle groups by the key's bytes.

The same module runs a job's phase as a program over stdin and stdout
(`python3 -m mrlib.pyjobrun PHASE FILE CLASS`): the master writes one small
script per phase that does so from the job's snapshot of its code. The map
program combines its output in memory, per key, before it writes anything.
"""
import collections
import decimal
import gc
import importlib.util
import itertools
import json
import operator
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback

# A program of a Python job exits with this when the job's code cannot run at
# all (it does not import, has no such class, or its *_init raised): the
# master then fails the job at once instead of trying again elsewhere.
CODE_BROKEN_EXIT = 86
EXITED_EARLY = 1  # the job's code called sys.exit() during a task: it fails
MAP, REDUCE, DESCRIBE = "map", "reduce", "describe"
MAP_ONLY = "map-only"  # the map of a job without reducers: no combiner (as Hadoop's)
# The map side holds pairs in memory, per key, up to about this much, then
# combines and writes them. A job sets its own with `combine_memory_mib`.
DEFAULT_COMBINE_MEMORY_MIB = 64
# What a held value (its place in a list, with the list's spare room: 9.8 bytes
# in word count) and a held key (its place in the dict, and its list) cost
# beyond their own size, which is measured on MEASURED of them each time
# MEASURE_EVERY more pairs are held.
VALUE_COST_BYTES = 10
KEY_COST_BYTES = 160
MEASURED, MEASURE_EVERY = 16, 2048
# Held memory full: the keys holding this many values are combined first (in word
# count a few thousand keys hold most values), then, if that was not enough,
# every key holding more than one.
HOT_VALUES = 64
WRITE_BYTES = 1024 * 1024  # output joined per write
ENCODE_PAIRS = 4096  # pairs encoded and joined at once, at most
SMALL_INTS = 256  # the int values 0 .. SMALL_INTS - 1 are written from text made once
# Input read, decoded and given to the mapper at once: a batch's pairs stay in the
# processor's cache (64 KiB took 10-20% longer).
READ_BATCH_BYTES = 16 * 1024
GC_THRESHOLD = 10_000  # objects made (and not freed) between two looks for cycles
USER_MODULE = "mapreduce_user_job"
LOADING_VARIABLE = "MAPREDUCE_LOADING_JOB"  # set while a job file is loaded to run or submit
LIBRARY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # holds mrlib, send_job
FRAMEWORK = "Map-Reduce Framework"  # the group of the built-in counters (Hadoop's)


class JobFailed(Exception):
    """A job run from Python ended without success; the text says why."""


class Job:
    """Subclass and define `mapper`, and optionally `combiner`, `reducer`,
    `mapper_init`, `mapper_final`, `reducer_init`, `reducer_final`: each a
    generator of (key, value) pairs. A job without `reducer` is map-only."""

    combine_memory_mib = DEFAULT_COMBINE_MEMORY_MIB

    def mapper(self, key, value):
        raise NotImplementedError(f"{type(self).__name__} defines no mapper")

    def increment_counter(self, group, name, amount=1):
        """Add `amount` to counter group.name (summed over the job, shown with --wait)."""
        group, name = (str(x).replace(",", ";").replace("\n", " ") for x in (group, name))
        report(f"reporter:counter:{group},{name},{int(amount)}\n")

    def set_status(self, text):
        """Say what the task is doing (logged by the master)."""
        report("reporter:status:" + str(text).replace("\n", " ") + "\n")

    def run(self, input, output=None, master=None, sequential=False, **options):
        """Run this job on a cluster (`master` "HOST:PORT" or a port) or, with
        sequential=True, in this process; return an iterator over the output pairs.

        `input` is a directory (or, with input_file=True, one file). Other
        options are send_job.py's, by their names: reducers=4, mappers=8,
        split_size=..., partitioner="hash", ship=[paths], timeout=...; a
        true value stands for a flag. Without `output`, the outputs are read
        from a temporary directory, which is then removed."""
        return run_job(type(self), input, output, master, sequential, options)


def report(line):
    """A reporter: line to stderr, on a line of its own after what the job printed
    without a newline (in a task, stderr is a LineTracking)."""
    if getattr(sys.stderr, "in_line", False):
        line = "\n" + line
    sys.stderr.write(line)


class LineTracking:
    """A text stream that knows whether what was last written to it left a line open."""

    def __init__(self, stream):
        self.stream = stream
        self.in_line = False

    def write(self, text):
        if text:
            self.in_line = not text.endswith("\n")
        return self.stream.write(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self.stream, name)


# --- running a job from Python ---------------------------------------------------

def job_reference(cls):
    """FILE:CLASS for a Job subclass defined at the top of a file."""
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    if not path or "." in cls.__qualname__:
        raise JobFailed(f"{cls.__qualname__} is not a class at the top of a file, so it "
                        f"cannot be shipped")
    return f"{os.path.abspath(path)}:{cls.__name__}"


def refuse_nested_run():
    """run() while a job file loads (in a task, or being looked at to submit it)
    would submit a job from inside a job: without end, or waiting for itself."""
    if os.environ.get(LOADING_VARIABLE):
        raise JobFailed("Job.run() called while the job file is loaded to run or submit it: "
                        "guard the call with  if __name__ == \"__main__\":")


def run_job(cls, input, output, master, sequential, options):
    refuse_nested_run()
    if (master is None) == (not sequential):
        raise JobFailed("give master='HOST:PORT' or sequential=True")
    argv = [] if sequential else [str(master)]
    argv += ["--job", job_reference(cls), "--quiet",
             "--input-file" if options.pop("input_file", False) else "--input", str(input)]
    argv += ["--sequential"] if sequential else ["--wait"]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            argv += [flag] if item is True else [] if item is False else [flag, str(item)]
    scratch = None
    try:
        if output is None:
            scratch = tempfile.mkdtemp(prefix="mapreduce-job-output-")
            output = os.path.join(scratch, "output")
        submit(argv + ["--output", str(output)], None if sequential else master,
               options.get("secret_file"))
        if scratch is None:
            return read_output(output)
        return iter(list(read_output(output)))  # read before its directory goes
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


SEND_JOB = os.path.join(LIBRARY, "send_job.py")
SUBMITTED = re.compile(rb"^job (\d+) submitted", re.MULTILINE)  # send_job's first line
CANCEL_WAIT = 30.0  # the longest an interrupted run() waits for send_job, and to cancel


def submit(argv, master=None, secret_file=None):
    """send_job.py with these options, in a process of its own (the project's top-level
    modules, helper and send_job, never meet the caller's own modules of those names).
    Interrupted (Ctrl-C), it cancels the job it submitted to `master`: run() is the job,
    and nobody else would read its output."""
    process = subprocess.Popen([sys.executable, SEND_JOB, *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        stdout, stderr = process.communicate()
    except KeyboardInterrupt:
        cancel_submitted(process, master, secret_file)
        raise
    sys.stderr.write(stderr.decode("utf-8", "replace"))
    if process.returncode != 0:
        said = (stdout + stderr).decode("utf-8", "replace").strip()
        raise JobFailed(f"the job failed (send_job exit code {process.returncode}): {said}")


def cancel_submitted(process, master, secret_file):
    """After Ctrl-C: stop send_job (it stops following, or a sequential run cleans up),
    then cancel the job it had submitted, if it had."""
    try:  # a second Ctrl-C must not stop the cancel half-way
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: no signal reaches this code
        previous = None
    try:
        _cancel_submitted(process, master, secret_file)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _cancel_submitted(process, master, secret_file):
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # as a terminal's Ctrl-C would
    try:
        stdout, _ = process.communicate(timeout=CANCEL_WAIT)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, _ = process.communicate()
    submitted = SUBMITTED.search(stdout)
    if master is None or submitted is None:
        return
    secret = ["--secret-file", str(secret_file)] if secret_file else []
    cancelled = subprocess.run([sys.executable, SEND_JOB, str(master), *secret, "--kill",
                                submitted.group(1).decode()], capture_output=True,
                               timeout=CANCEL_WAIT)
    sys.stderr.write(f"interrupted: job {submitted.group(1).decode()} "
                     f"{'cancelled' if cancelled.returncode == 0 else 'not cancelled'}\n")


def read_output(directory):
    """The pairs of a job's output files, in partition order."""
    names = [n for n in os.listdir(directory) if not n.startswith(".")]
    names.sort(key=lambda n: [int(p) if p.isdigit() else p
                              for p in n.replace("_", " ").split()])
    for name in names:
        with open(os.path.join(directory, name), "rb") as handle:
            for line in handle:
                yield decode_pair(line)


# --- the wire form of a pair -------------------------------------------------------

_JSON_STRING = json.encoder.encode_basestring_ascii  # json.dumps of a str, in C


def encode_key(key):
    """A key's JSON, one form for equal keys (dicts' keys sorted)."""
    return _encode(key, "key", True)


def encode_value(value):
    return _encode(value, "value", False)


class EncodedKey(str):
    """A key's JSON, written as it is (what the combiner gives back of a held key)."""


def _encode(thing, what, sort_keys):
    """JSON of a key or value: a str or int the fast way; BadPair if it is not JSON."""
    kind = thing.__class__
    if kind is str:
        return _JSON_STRING(thing)
    if kind is int:
        return int.__repr__(thing)
    if kind is EncodedKey:
        return thing
    try:
        return json.dumps(thing, sort_keys=sort_keys)
    except (TypeError, ValueError) as error:
        raise BadPair(f"a pair's {what} {thing!r:.100} is not JSON: {error}") from None


def encode_pair(key, value):
    return f"{encode_key(key)}\t{encode_value(value)}\n"


_TAB_SMALL_INT = tuple(f"\t{number}\n" for number in range(SMALL_INTS))  # made once


def _tab_value_line(value):
    """What follows a key on its line: a tab, the value's JSON, a newline."""
    return f"\t{value if value.__class__ is int else encode_value(value)}\n"


def decode_pair(line):
    """(key, value) of one line; ValueError if it is not JSON<TAB>JSON. Ints of any
    size, without lifting the limit Python puts on them for the whole process."""
    line = line[:-1] if line.endswith(b"\n") else line
    key, tab, value = line.partition(b"\t")
    if not tab:
        raise ValueError(f"not a key<TAB>value line of JSON: {line[:200]!r}")
    return _decode_json(key), _decode_json(value)


def _any_int(text):
    try:
        return int(text)
    except ValueError:  # more digits than Python converts by default: a Decimal does
        return int(decimal.Decimal(text))


# Made once: json.loads given parse_int would make a decoder a call.
_ANY_INT_DECODER = json.JSONDecoder(parse_int=_any_int)


def _decode_json(raw):
    """json.loads of bytes, ints of any size."""
    return _ANY_INT_DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))


# --- the programs ------------------------------------------------------------------

_NOT_PAIRS = (tuple, str, bytes)  # what a method may not return: one pair, or text


def pairs_of(result, method="a method"):
    """A method's pairs: a generator, a list, or None (nothing)."""
    if result is None:
        return ()
    if isinstance(result, _NOT_PAIRS):
        raise TypeError(f"{method} returned {type(result).__name__} {result!r:.80}: yield each "
                        f"(key, value) pair, or return a list of them")
    return result


def calling(method, name):
    """A function that calls `method` with two arguments and gives an iterator of its
    pairs (pairs_of). A StopIteration that a method which is not a generator raises
    (next() of an exhausted iterator), or the __iter__ of what it returns, is made an
    error: called by map(), as the programs call their methods, it would end the pairs
    of every call after it quietly. (A generator's is an error already, PEP 479.)"""
    def call(first, second):
        try:
            result = method(first, second)
            if result is None or isinstance(result, _NOT_PAIRS):
                return pairs_of(result, name)
            return iter(result)  # here: an __iter__ may raise StopIteration too
        except StopIteration as stop:
            raise RuntimeError(f"{name} raised StopIteration (next() of an exhausted "
                               f"iterator?)") from stop
    return call


class BadPair(TypeError):
    """A method gave a key or value JSON cannot encode."""


def line_batches(stream):
    """The input's lines as str, a batch at a time: without their newline (and its \r,
    as Hadoop's line reader does), undecodable bytes kept as surrogates. Decoding a
    batch at once gives what decoding each line would: no UTF-8 sequence holds a newline."""
    while batch := stream.readlines(READ_BATCH_BYTES):
        text = b"".join(batch).decode("utf-8", "surrogateescape")
        if "\r" in text:
            text = text.replace("\r\n", "\n")
        lines = text.split("\n")
        if batch[-1].endswith(b"\n"):
            lines.pop()  # what follows the last newline: no line
        yield lines


class Output:
    """Encoded pairs to a binary stream, in batches."""

    def __init__(self, stream):
        self.stream = stream
        self.chunks = []  # str, each of whole lines
        self.size = 0

    def write(self, key, value):
        self._add(encode_pair(key, value))

    def absorb_calls(self, results):
        """The pairs of many calls of a method, an iterable of pairs per call; how many
        there were. Each pair is encoded as it is given, before the method goes on (it
        may change and give the same object again), str keys and small int values
        without a call of Python code; ENCODE_PAIRS lines are joined at a time."""
        pairs, taken = itertools.chain.from_iterable(results), 0
        while lines := [(_JSON_STRING(k) if k.__class__ is str else encode_key(k))
                        + (_TAB_SMALL_INT[v] if v.__class__ is int and -1 < v < SMALL_INTS
                           else _tab_value_line(v))
                        for k, v in itertools.islice(pairs, ENCODE_PAIRS)]:
            self._add("".join(lines))
            taken += len(lines)
        return taken

    def _add(self, text):
        self.chunks.append(text)
        self.size += len(text)
        if self.size >= WRITE_BYTES:
            self.flush()

    def flush(self):
        if self.chunks:
            self.stream.write("".join(self.chunks).encode("ascii"))
            self.chunks, self.size = [], 0


class Combining:
    """Map output held per key in a dict of bounded size, combined before it is
    written: Hadoop's spill-time combine, without sorting uncombined pairs. Once
    about `limit_bytes` are held, each key's values are combined in place; if
    that leaves more than half of it, everything is written out."""

    def __init__(self, combiner, output, limit_bytes):
        self.combine_key = calling(combiner, "combiner")
        self.output = output
        self.limit = limit_bytes
        self.held = collections.defaultdict(list)  # a str key as itself, others (None, JSON)
        self.values = 0  # values held
        self.taken = 0  # pairs the mapper gave
        self.given = 0  # pairs written after combining
        self.key_cost, self.value_cost = KEY_COST_BYTES, VALUE_COST_BYTES  # measured anew
        self.measured_at = -MEASURE_EVERY  # self.taken when the costs were last measured

    def write(self, key, value):
        self.absorb(((key, value),))

    def absorb(self, pairs):
        """All the pairs one call of a method gave."""
        self.absorb_calls((pairs,))

    def absorb_calls(self, results):
        """The pairs of many calls of the mapper, an iterable of pairs per call (the hot
        loop). What is held is measured and kept within the limit every MEASURE_EVERY
        pairs, or sooner when fewer would fill it: within one call that gives millions
        of pairs too."""
        pairs = itertools.chain.from_iterable(results)
        while True:
            held = self.held  # a new dict after a flush
            room = (self.limit - self.cost()) // (self.key_cost + self.value_cost)
            # the first MEASURED pairs are measured before more are taken
            wanted = max(1, min(MEASURE_EVERY if self.measured_at >= 0 else MEASURED, room))
            taken = 0
            for taken, (key, value) in enumerate(itertools.islice(pairs, wanted), 1):
                held[key if key.__class__ is str else (None, encode_key(key))].append(
                    value if value.__class__ in _HELD_AS_IS else held_copy(value))
            self.taken += taken
            self.values += taken
            self.keep_within_limit()
            if taken < wanted:
                return

    def keep_within_limit(self):
        if self.taken - self.measured_at >= MEASURE_EVERY:
            self.measured_at = self.taken
            self.measure()
        if self.cost() > self.limit:
            self.combine_in_place(HOT_VALUES)  # a few keys hold most values: cheap
            if self.cost() > self.limit // 2:
                self.combine_in_place(2)
            if self.cost() > self.limit // 2:
                self.flush()

    def cost(self):
        return self.key_cost * len(self.held) + self.value_cost * self.values

    def measure(self):
        """What a held key and value cost, from a few of them: big ones fill memory sooner."""
        sample = list(itertools.islice(reversed(self.held.items()), MEASURED))  # the newest
        if sample:
            self.key_cost = KEY_COST_BYTES + sum(
                sys.getsizeof(slot if slot.__class__ is str else slot[1])
                for slot, _ in sample) // len(sample)
            self.value_cost = VALUE_COST_BYTES + sum(
                own_size(values[-1]) for _, values in sample) // len(sample)

    def combine_in_place(self, least):
        """Combine the values of each key that holds at least `least` of them."""
        for slot in [slot for slot, values in self.held.items() if len(values) >= least]:
            self.combine(slot)

    def combine(self, slot):
        """Combine one key's values in place (what comes back for other keys is held)."""
        values = self.held.pop(slot)
        key = key_of_slot(slot)
        kept, others = [], []
        for out_key, out_value in self.combine_key(key, iter(values)):
            if out_key == key and type(out_key) is type(key):
                kept.append(held_copy(out_value))
            else:
                others.append((out_key, held_copy(out_value)))
        self.values -= len(values) - len(kept)
        if kept:
            self.held[slot] = kept
        for out_key, out_value in others:
            self.held[out_key if out_key.__class__ is str
                      else (None, encode_key(out_key))].append(out_value)
            self.values += 1

    def flush(self):
        """Combine every key's values and write what comes back (the combiner called
        by map(), for each key once the pairs for the key before are written)."""
        held, self.held, self.values = self.held, collections.defaultdict(list), 0
        self.given += self.output.absorb_calls(map(self.combine_slot, held, held.values()))
        self.output.flush()

    def combine_slot(self, slot, values):
        """The combiner's pairs for the key held in `slot`, given the key as the reducer
        would get it. That key given back is written as the mapper's was: JSON may decode
        a key to one that encodes otherwise (a dict's int keys come back as str)."""
        if slot.__class__ is str:
            return self.combine_key(slot, iter(values))
        key, encoded = key_of_slot(slot), EncodedKey(slot[1])
        return ((encoded if out_key == key and type(out_key) is type(key) else out_key, value)
                for out_key, value in self.combine_key(key, iter(values)))

    def report(self, job):
        """The combine counters, as the framework's (the worker sees only what was written)."""
        job.increment_counter(FRAMEWORK, "Combine input records", self.taken)
        job.increment_counter(FRAMEWORK, "Combine output records", self.given)


_HELD_AS_IS = frozenset({str, int, float, bool, type(None)})  # no one can change them


def held_copy(value):
    """What Combining holds of a value: the value if it cannot change, else what its
    JSON decodes to, as the reducer would get it. A method may change an object after
    it gave it (Hadoop's habit of reusing a record); the pair is what it was when given.
    A tuple or list of str, int, float, bool or None is copied as a list, a dict of
    them with str keys as a dict, without JSON."""
    kind = value.__class__
    if kind in _HELD_AS_IS:
        return value
    if (kind is tuple or kind is list) and _HELD_AS_IS.issuperset(map(type, value)):
        return list(value)
    if (kind is dict and _HELD_AS_IS.issuperset(map(type, value.values()))
            and all(key.__class__ is str for key in value)):
        return dict(value)
    return _ANY_INT_DECODER.decode(encode_value(value))


def key_of_slot(slot):
    """The key held in a slot of Combining.held: a str as itself, others as (None, JSON)."""
    return slot if slot.__class__ is str else json.loads(slot[1])


def own_size(value):
    """The memory a held value adds: none for the objects Python shares (small ints,
    None, True, False), its size otherwise; a list or dict (held as JSON decodes, see
    held_copy) adds the length of its JSON: what it holds at any depth, measured in C."""
    if value is None or value is True or value is False:
        return 0
    kind = value.__class__
    if kind is int and -5 <= value <= 256:
        return 0
    if kind is list or kind is dict:
        return sys.getsizeof(value) + len(encode_value(value))
    return sys.getsizeof(value)


class CodeBroken(Exception):
    """The job's code cannot run at all: not this attempt's fault."""


def load_module(path):
    """The job file run as a module, with its directory importable (its helper
    modules); CodeBroken with the traceback if it does not load."""
    try:
        directory = os.path.dirname(os.path.abspath(path))
        if directory not in sys.path:
            sys.path.insert(0, directory)
        spec = importlib.util.spec_from_file_location(USER_MODULE, path)
        if spec is None:
            raise ImportError(f"{path} is not a Python file (its name must end in .py)")
        module = importlib.util.module_from_spec(spec)
        sys.modules[USER_MODULE] = module
        os.environ[LOADING_VARIABLE] = "1"  # run() refuses: see refuse_nested_run
        spec.loader.exec_module(module)
    except BaseException:
        raise CodeBroken(f"the job file {path} does not load:\n{traceback.format_exc()}")
    return module


def job_class(module, path, class_name=None):
    """The Job subclass `class_name` of a loaded job file (or its only one); CodeBroken if
    there is none such, or it cannot be a job."""
    names = job_classes(module)
    if class_name is None:
        if len(names) != 1:
            raise CodeBroken(f"{path} defines {len(names)} Job subclasses"
                             f"{' (' + ', '.join(names) + ')' if names else ''}: "
                             f"name one as {path}:CLASS")
        class_name = names[0]
    cls = vars(module).get(class_name)
    if not (isinstance(cls, type) and issubclass(cls, Job) and cls is not Job):
        raise CodeBroken(f"{path} has no Job subclass {class_name} at its top level (it has: "
                         f"{', '.join(names) or 'none'})")
    if cls.mapper is Job.mapper:
        raise CodeBroken(f"{class_name} defines no mapper(self, key, value)")
    return cls


def load_job(path, class_name):
    """An instance of the job's class from its file; CodeBroken with the traceback if not."""
    cls = job_class(load_module(path), path, class_name)
    try:
        return cls()
    except (Exception, SystemExit):
        raise CodeBroken(f"{class_name}() raised:\n{traceback.format_exc()}")


def describe(path, class_name=None):
    """What a client needs to submit the job in `path`: {"class", "reducer"}."""
    cls = job_class(load_module(path), path, class_name)
    return {"class": cls.__name__, "reducer": getattr(cls, "reducer", None) is not None}


def describe_job(path, class_name=None, shipped=()):
    """describe() as the job's code will run on a worker: a copy of the job file and
    the `shipped` files in a directory of their own, in a fresh interpreter (the
    client's modules, helper and send_job, never meet the job's, and a module the
    job imports but does not ship is missed here, not on every worker). CodeBroken
    with what it said if the job cannot be used."""
    if not os.path.isfile(path):
        raise CodeBroken(f"{path} is not a file")
    with tempfile.TemporaryDirectory(prefix="mapreduce-job-code-") as code:
        for source in [*shipped, path]:
            if os.path.isfile(source):
                shutil.copyfile(source, os.path.join(code, os.path.basename(source)))
        copy = os.path.join(code, os.path.basename(path))
        paths = [LIBRARY] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
        result = subprocess.run(
            [sys.executable, "-m", "mrlib.pyjobrun", DESCRIBE, copy,
             *([class_name] if class_name else [])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=code,
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(paths)))
    if result.returncode != 0:
        said = result.stderr.decode("utf-8", "replace").strip()
        raise CodeBroken(said.replace(copy, path).replace(code + os.sep, ""))
    return json.loads(result.stdout)


def job_classes(module):
    """Names of the Job subclasses a module defines itself (an alias counted once)."""
    return [name for name, value in vars(module).items()
            if isinstance(value, type) and issubclass(value, Job) and value is not Job
            and value.__module__ == module.__name__ and value.__name__ == name]


def call_init(job, name, output):
    """The pairs of mapper_init or reducer_init written; CodeBroken if it raises (not
    what takes its pairs: the combiner's errors are the task's)."""
    method = getattr(job, name, None)
    if method is None:
        return
    try:
        pairs = iter(pairs_of(method()))
    except (Exception, SystemExit):
        raise CodeBroken(f"{name} raised:\n{traceback.format_exc()}")
    while True:
        try:
            key, value = next(pairs)
        except StopIteration:
            return
        except (Exception, SystemExit):
            raise CodeBroken(f"{name} raised:\n{traceback.format_exc()}")
        try:
            encode_key(key), encode_value(value)  # a pair JSON cannot encode: every attempt
        except BadPair as bad:
            raise CodeBroken(f"{name} gave {bad}") from None
        output.write(key, value)


def call_final(job, name, output):
    method = getattr(job, name, None)
    if method is not None:
        for key, value in pairs_of(method()):
            output.write(key, value)


def run_map(job, stdin, stdout, combine=True):
    """The mapper over each line; its pairs combined first if the job has a combiner
    and `combine` (not in a map-only job: its map output is the job's output)."""
    output = Output(stdout)
    combiner = getattr(job, "combiner", None) if combine else None
    sink = output
    if combiner is not None:
        sink = Combining(combiner, output, int(job.combine_memory_mib * 1024 * 1024))
    call_init(job, "mapper_init", sink)
    map_line = calling(job.mapper, "mapper")
    for lines in line_batches(stdin):  # the mapper called by map(): no Python loop a line
        # each call made when the pairs of the one before have been taken
        sink.absorb_calls(map(map_line, itertools.repeat(None), lines))
    call_final(job, "mapper_final", sink)
    sink.flush()
    output.flush()
    if sink is not output:
        sink.report(job)


_NUMBER_STARTS = frozenset(b"-0123456789")


def decode_value(raw):
    """JSON of a value, as our encoder writes it (a trailing newline allowed): an int
    the fast way, anything else by json."""
    if not raw:
        raise ValueError("a line of the reducer's input is not key<TAB>value")
    if raw[0] in _NUMBER_STARTS:
        try:
            return int(raw)
        except ValueError:  # a float: 1.5, 1e+20, -Infinity
            pass
    return json.loads(raw)


# JSON of a str with nothing escaped: ASCII, no control character, quote or backslash.
_PLAIN_JSON_STRING = re.compile(rb'"[ !#-\[\]-\x7f]*"')


def decode_key(encoded):
    """A key's JSON: a str as our encoder writes it (ASCII, nothing escaped) the fast
    way, anything else by json."""
    if _PLAIN_JSON_STRING.fullmatch(encoded):
        return encoded[1:-1].decode("ascii")
    return json.loads(encoded)


def keyed_values(stream):
    """(encoded key, decoded value) of each key<TAB>value line. Lines are read, split
    and their values decoded a batch of READ_BATCH_BYTES at a time by C-level iterators,
    a batch of ints by int() (one that holds anything else value by value, by Python
    code), whether the reducer reads them or not; no more than a batch (or one big
    line) is read ahead of the reducer."""
    return itertools.chain.from_iterable(_keyed_value_batches(stream))


_SPLIT_AT_TAB = operator.methodcaller("partition", b"\t")
_FIRST, _SECOND, _THIRD = map(operator.itemgetter, range(3))


def _keyed_value_batches(stream):
    while lines := stream.readlines(READ_BATCH_BYTES):
        parts = list(map(_SPLIT_AT_TAB, lines))
        yield zip(map(_FIRST, parts), _decode_batch(list(map(_THIRD, parts))))


def _decode_batch(raws):
    try:
        return list(map(int, raws))  # what decode_value gives an int our encoder wrote
    except ValueError:
        return list(map(decode_value, raws))


def run_reduce(job, stdin, stdout):
    """The reducer over each run of one key, called by map() as itertools.groupby
    finds the runs, once the pairs of the key before are written."""
    output = Output(stdout)
    call_init(job, "reducer_init", output)
    reduce_key = calling(job.reducer, "reducer")

    def reduce_run(run):
        encoded, keyed = run
        return reduce_key(decode_key(encoded), map(_SECOND, keyed))

    runs = itertools.groupby(keyed_values(stdin), key=_FIRST)
    output.absorb_calls(map(reduce_run, runs))
    call_final(job, "reducer_final", output)
    output.flush()


def collect_cycles_seldom():
    """Millions of pairs are made and freed: look for reference cycles once
    GC_THRESHOLD more objects are held, not every 700 (Python's default), and
    never among what is loaded already."""
    gc.collect()  # what loading left in cycles is not kept for good
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


def main(argv=None):
    """map|map-only|reduce FILE CLASS: one phase over stdin to stdout; describe FILE [CLASS]: what
    a client needs to know of the job, as JSON (mrlib/pyjobrun.py)."""
    argv = sys.argv[1:] if argv is None else argv
    if sys.path and sys.path[0] == os.getcwd():
        del sys.path[0]  # python -m put the working directory there: only the job's own
    os.environ[LOADING_VARIABLE] = "1"  # run() refuses in here: see refuse_nested_run
    # Our output gets the real stdout; what the job's code or its own programs
    # print goes to stderr (a task's: the attempt's log).
    stdout = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr = LineTracking(sys.stderr)
    if argv[:1] == [DESCRIBE] and len(argv) in (2, 3):
        try:
            stdout.write(json.dumps(describe(*argv[1:])).encode())
        except CodeBroken as broken:
            print(broken, file=sys.stderr)
            return 2
        stdout.flush()
        return 0
    if len(argv) != 3 or argv[0] not in (MAP, MAP_ONLY, REDUCE):
        print("usage: python3 -m mrlib.pyjobrun map|map-only|reduce FILE CLASS",
              file=sys.stderr)
        return 2
    phase, path, class_name = argv
    if hasattr(sys, "set_int_max_str_digits"):  # Python 3.11, 3.10.7 and 3.9.14 on
        sys.set_int_max_str_digits(0)  # an int of any size is a value, as JSON allows
    stdin = sys.stdin.buffer
    try:
        job = load_job(path, class_name)
        collect_cycles_seldom()
        if phase == REDUCE:
            run_reduce(job, stdin, stdout)
        else:
            run_map(job, stdin, stdout, combine=phase == MAP)
    except CodeBroken as broken:
        print(broken, file=sys.stderr)
        return CODE_BROKEN_EXIT
    except SystemExit as stop:  # the pairs held or not yet made would be lost
        print(f"{traceback.format_exc()}the job called sys.exit({stop.code!r}) in the "
              f"middle of its {phase}: the task fails", file=sys.stderr)
        return EXITED_EARLY
    stdout.flush()
    return 0
