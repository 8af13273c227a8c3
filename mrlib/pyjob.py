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
import contextlib
import importlib.util
import io
import itertools
import json
import os
import shutil
import sys
import tempfile
import traceback

# A program of a Python job exits with this when the job's code cannot run at
# all (it does not import, has no such class, or its *_init raised): the
# master then fails the job at once instead of trying again elsewhere.
CODE_BROKEN_EXIT = 86
MAP, REDUCE = "map", "reduce"
# The map side holds pairs in memory, per key, up to about this much, then
# combines and writes them. A job sets its own with `combine_memory_mib`.
DEFAULT_COMBINE_MEMORY_MIB = 64
# What a held value and a held key are reckoned to cost.
VALUE_COST_BYTES = 64
KEY_COST_BYTES = 128
WRITE_BATCH = 4096  # output lines joined per write
USER_MODULE = "mapreduce_user_job"
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
        sys.stderr.write(f"reporter:counter:{group},{name},{int(amount)}\n")

    def set_status(self, text):
        """Say what the task is doing (logged by the master)."""
        sys.stderr.write("reporter:status:" + str(text).replace("\n", " ") + "\n")

    def run(self, input, output=None, master=None, sequential=False, **options):
        """Run this job on a cluster (`master` "HOST:PORT" or a port) or, with
        sequential=True, in this process; return an iterator over the output pairs.

        `input` is a directory (or, with input_file=True, one file). Other
        options are send_job.py's, by their names: reducers=4, mappers=8,
        split_size=..., partitioner="hash", ship=[paths], timeout=...; a
        true value stands for a flag. Without `output`, the outputs are read
        from a temporary directory, which is then removed."""
        return run_job(type(self), input, output, master, sequential, options)


# --- running a job from Python ---------------------------------------------------

def job_reference(cls):
    """FILE:CLASS for a Job subclass defined in a file."""
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    if not path:
        raise JobFailed(f"{cls.__name__} is not defined in a file, so it cannot be shipped")
    return f"{os.path.abspath(path)}:{cls.__qualname__}"


def run_job(cls, input, output, master, sequential, options):
    import send_job  # the client: only needed when a job is run from Python

    if (master is None) == (not sequential):
        raise JobFailed("give master='HOST:PORT' or sequential=True")
    scratch = None
    if output is None:
        scratch = tempfile.mkdtemp(prefix="mapreduce-job-output-")
        output = os.path.join(scratch, "output")
    argv = [] if sequential else [str(master)]
    argv += ["--job", job_reference(cls), "--output", str(output), "--quiet",
             "--input-file" if options.pop("input_file", False) else "--input", str(input)]
    argv += [] if sequential else ["--wait"]
    argv += ["--sequential"] if sequential else []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            argv += [flag] if item is True else [] if item is False else [flag, str(item)]
    said = io.StringIO()  # send_job's summary: only worth showing if the job failed
    try:
        try:
            with contextlib.redirect_stdout(said):
                code = send_job.main(argv)
        except SystemExit as stop:  # an option send_job refused (said on stderr)
            code = stop.code
        if code != 0:
            raise JobFailed(f"the job failed (send_job exit code {code}); its messages are "
                            f"above{': ' + said.getvalue().strip() if said.getvalue() else ''}")
        return iter(list(read_output(output)))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


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
    kind = key.__class__
    if kind is str:
        return _JSON_STRING(key)
    if kind is int:
        return int.__repr__(key)
    return json.dumps(key, sort_keys=True)


def encode_value(value):
    kind = value.__class__
    if kind is str:
        return _JSON_STRING(value)
    if kind is int:
        return int.__repr__(value)
    return json.dumps(value)


def encode_pair(key, value):
    return f"{encode_key(key)}\t{encode_value(value)}\n"


def decode_pair(line):
    """(key, value) of one line; ValueError if it is not JSON<TAB>JSON."""
    line = line[:-1] if line.endswith(b"\n") else line
    key, tab, value = line.partition(b"\t")
    if not tab:
        raise ValueError(f"not a key<TAB>value line of JSON: {line[:200]!r}")
    return json.loads(key), json.loads(value)


# --- the programs ------------------------------------------------------------------

def pairs_of(result):
    """A method's pairs: a generator, a list, or None (nothing)."""
    return () if result is None else result


class Output:
    """Encoded pairs to a binary stream, in batches."""

    def __init__(self, stream):
        self.stream = stream
        self.lines = []

    def write(self, key, value):
        self.lines.append(encode_pair(key, value))
        if len(self.lines) >= WRITE_BATCH:
            self.flush()

    def absorb(self, pairs):
        """All the pairs one call of a method gave."""
        self.lines.extend([f"{encode_key(k)}\t{encode_value(v)}\n" for k, v in pairs])
        if len(self.lines) >= WRITE_BATCH:
            self.flush()

    def flush(self):
        if self.lines:
            self.stream.write("".join(self.lines).encode("ascii"))
            self.lines = []


class Combining:
    """Map output held per key in a dict of bounded size, combined before it is
    written: Hadoop's spill-time combine, without sorting uncombined pairs. Once
    about `limit_bytes` are held, each key's values are combined in place; if
    that leaves more than half of it, everything is written out."""

    def __init__(self, combiner, output, limit_bytes):
        self.combiner = combiner
        self.output = output
        self.limit = limit_bytes
        self.held = collections.defaultdict(list)  # a str key as itself, others (None, JSON)
        self.values = 0  # values held
        self.taken = 0  # pairs the mapper gave
        self.given = 0  # pairs written after combining

    def write(self, key, value):
        self.absorb(((key, value),))

    def absorb(self, pairs):
        """All the pairs one call of the mapper gave (the hot loop: one call a line)."""
        held = self.held
        taken = 0
        for key, value in pairs:
            taken += 1
            held[key if key.__class__ is str else (None, encode_key(key))].append(value)
        self.taken += taken
        self.values += taken
        if self.cost() > self.limit:
            for slot in [slot for slot, values in held.items() if len(values) > 1]:
                self.combine(slot)
            if self.cost() > self.limit // 2:
                self.flush()

    def cost(self):
        return KEY_COST_BYTES * len(self.held) + VALUE_COST_BYTES * self.values

    def combine(self, slot):
        """Combine one key's values in place (what comes back for other keys is held)."""
        values = self.held.pop(slot)
        key = slot if slot.__class__ is str else json.loads(slot[1])
        kept, others = [], []
        for out_key, out_value in pairs_of(self.combiner(key, iter(values))):
            if out_key == key and type(out_key) is type(key):
                kept.append(out_value)
            else:
                others.append((out_key, out_value))
        self.values -= len(values) - len(kept)
        if kept:
            self.held[slot] = kept
        for out_key, out_value in others:
            self.held[out_key if out_key.__class__ is str
                      else (None, encode_key(out_key))].append(out_value)
            self.values += 1

    def flush(self):
        held, self.held, self.values = self.held, collections.defaultdict(list), 0
        for slot, values in held.items():
            key = slot if slot.__class__ is str else json.loads(slot[1])
            for out_key, out_value in pairs_of(self.combiner(key, iter(values))):
                self.output.write(out_key, out_value)
                self.given += 1
        self.output.flush()

    def report(self, job):
        """The combine counters, as the framework's (the worker sees only what was written)."""
        job.increment_counter(FRAMEWORK, "Combine input records", self.taken)
        job.increment_counter(FRAMEWORK, "Combine output records", self.given)


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
        spec.loader.exec_module(module)
    except BaseException:
        raise CodeBroken(f"the job file {path} does not load:\n{traceback.format_exc()}")
    return module


def load_job(path, class_name):
    """An instance of the job's class from its file; CodeBroken with the traceback if not."""
    module = load_module(path)
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Job)):
        found = ", ".join(job_classes(module)) or "none"
        raise CodeBroken(f"{path} has no Job subclass {class_name} (it has: {found})")
    try:
        return cls()
    except Exception:
        raise CodeBroken(f"{class_name}() raised:\n{traceback.format_exc()}")


def find_class(path, class_name=None):
    """The Job subclass `class_name` (or the only one) of the file at `path`, for a
    client: a module already loaded from that file is used as it is (a job run from
    its own script), else the file is loaded. CodeBroken says what is wrong."""
    real = os.path.realpath(path)
    if not os.path.isfile(real):
        raise CodeBroken(f"{path} is not a file")
    module = next((m for m in list(sys.modules.values())
                   if getattr(m, "__file__", None)
                   and os.path.realpath(m.__file__) == real), None)
    if module is None:
        module = load_module(path)
    names = job_classes(module)
    if class_name is None:
        if len(names) != 1:
            raise CodeBroken(f"{path} defines {len(names)} Job subclasses"
                             f"{' (' + ', '.join(names) + ')' if names else ''}: "
                             f"name one as {path}:CLASS")
        class_name = names[0]
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Job)):
        raise CodeBroken(f"{path} has no Job subclass {class_name} (it has: "
                         f"{', '.join(names) or 'none'})")
    return cls


def job_classes(module):
    """Names of the Job subclasses a module defines itself."""
    return [name for name, value in vars(module).items()
            if isinstance(value, type) and issubclass(value, Job) and value is not Job
            and value.__module__ == module.__name__]


def call_init(job, name, output):
    method = getattr(job, name, None)
    if method is None:
        return
    try:
        for key, value in pairs_of(method()):
            output.write(key, value)
    except Exception:
        raise CodeBroken(f"{name} raised:\n{traceback.format_exc()}")


def call_final(job, name, output):
    method = getattr(job, name, None)
    if method is not None:
        for key, value in pairs_of(method()):
            output.write(key, value)


def run_map(job, stdin, stdout):
    output = Output(stdout)
    combiner = getattr(job, "combiner", None)
    sink = output
    if combiner is not None:
        sink = Combining(combiner, output, int(job.combine_memory_mib * 1024 * 1024))
    call_init(job, "mapper_init", sink)
    mapper = job.mapper
    absorb = sink.absorb
    for line in stdin:
        if line.endswith(b"\n"):
            line = line[:-1]
        result = mapper(None, line.decode("utf-8", "surrogateescape"))
        if result is not None:
            absorb(result)
    call_final(job, "mapper_final", sink)
    sink.flush()
    output.flush()
    if sink is not output:
        sink.report(job)


def key_bytes(line):
    return line.partition(b"\t")[0]


def run_reduce(job, stdin, stdout):
    output = Output(stdout)
    call_init(job, "reducer_init", output)
    reducer = job.reducer
    for encoded, lines in itertools.groupby(stdin, key=key_bytes):
        key = json.loads(encoded)
        values = (decode_pair(line)[1] for line in lines)
        for out_key, out_value in pairs_of(reducer(key, values)):
            output.write(out_key, out_value)
    call_final(job, "reducer_final", output)
    output.flush()


def main(argv=None):
    """map|reduce FILE CLASS: one phase over stdin to stdout (mrlib/pyjobrun.py)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or argv[0] not in (MAP, REDUCE):
        print("usage: python3 -m mrlib.pyjobrun map|reduce FILE CLASS", file=sys.stderr)
        return 2
    phase, path, class_name = argv
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # what the job's code prints goes to its log, not among its pairs
    try:
        job = load_job(path, class_name)
        (run_map if phase == MAP else run_reduce)(job, stdin, stdout)
    except CodeBroken as broken:
        print(broken, file=sys.stderr)
        return CODE_BROKEN_EXIT
    stdout.flush()
    return 0

