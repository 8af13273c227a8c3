"""What a job asks for, checked: paths exist, programs run, counts make sense.

A `new_master_job` message that passed helper.validate (field types) becomes
a JobSpec here, or a JobRejected naming the first problem. The client runs
the same checks before sending, and the sequential mode runs jobs from it.
"""
import dataclasses
import os
import re

from helper import MAX_TASK_TIMEOUT  # the largest a task message may carry
from mrlib import pyjob, records, runner, shipping
from mrlib.outputdir import within

DEFAULT_TASK_TIMEOUT = 600.0  # seconds; a task running longer is a failed attempt
DEFAULT_MAX_ATTEMPTS = 4      # Hadoop's default: a task may fail 3 times and still pass
MAX_TASKS = 100_000  # per phase; more is a mistake (millions of files and messages)
PATH_FIELDS = ("input_directory", "output_directory", "mapper_executable",
               "reducer_executable", "input_file", "input_base_name", "combiner_executable")
PARTITIONERS = ("range", "hash")
# What a program may be given as an environment variable: a POSIX shell name.
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# The send_job.py option behind each new_master_job field: what a user of
# send_job typed, and so what a rejection should name to them.
OPTION_OF_FIELD = {
    "input_directory": "--input", "input_file": "--input-file", "input_base_name": "--input-base",
    "output_directory": "--output", "output_base_name": "--output-base",
    "mapper_executable": "--mapper", "reducer_executable": "--reducer",
    "combiner_executable": "--combiner", "num_mappers": "--mappers",
    "num_reducers": "--reducers", "split_size": "--split-size", "record_size": "--record-size",
    "output_record_size": "--output-record-size", "key_size": "--key-size",
    "partitioner": "--partitioner", "task_timeout": "--timeout",
    "max_attempts": "--max-attempts", "env": "--env"}
# A field's name as a word of its own: not inside a path or an option (--env).
_FIELD_NAMES = re.compile(r"(?<![\w/.-])(" + "|".join(OPTION_OF_FIELD) + r")(?![\w/.-])")


class JobRejected(Exception):
    """A job that cannot run, with the reason in one line."""


def in_option_terms(reason):
    """A rejection's reason with the message's field names as send_job's options."""
    return _FIELD_NAMES.sub(lambda match: OPTION_OF_FIELD[match.group(1)], reason)


@dataclasses.dataclass
class JobSpec:
    input_directory: str
    output_directory: str
    mapper_executable: str
    reducer_executable: str
    num_mappers: int
    num_reducers: int
    input_file: str = None
    input_base_name: str = None
    split_size: int = None
    record_size: int = None
    output_record_size: int = None  # 0: the map output is lines, whatever the input
    key_size: int = None
    combiner_executable: str = None
    partitioner: str = "range"
    task_timeout: float = DEFAULT_TASK_TIMEOUT
    env: dict = dataclasses.field(default_factory=dict)
    output_base_name: str = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    speculative: bool = False
    keep_intermediate: bool = False
    shipped_files: dict = None  # {name: {"data": base64, "executable": bool}} (mrlib/shipping.py)
    python_job: str = None  # "NAME:CLASS" of a shipped file: a Python job (mrlib/pyjob.py)

    @classmethod
    def from_message(cls, message, var_directory=None):
        """Build and check a spec from a validated new_master_job message.

        `var_directory`, the master's, is a place no output may go.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        spec = cls(**{k: v for k, v in message.items() if k in fields and v is not None})
        spec.check()
        spec.check_output(var_directory)
        return spec

    def check(self):
        """Raise JobRejected with the first thing wrong with this job."""
        for field in PATH_FIELDS:
            value = getattr(self, field)
            if value is not None and ("\0" in value or not value):
                raise JobRejected(f"{field} {value!r} is not a usable path")
        if self.num_mappers < 1:
            raise JobRejected(f"num_mappers must be at least 1, got {self.num_mappers}")
        if self.num_reducers < 0:
            raise JobRejected(f"num_reducers must be 0 (map only) or more, got {self.num_reducers}")
        if max(self.num_mappers, self.num_reducers) > MAX_TASKS:
            raise JobRejected(f"num_mappers and num_reducers must be at most {MAX_TASKS}")
        self.check_programs()
        self.check_inputs()
        self.check_options()

    def programs(self):
        """{field: executable} of the programs the job runs."""
        programs = {"mapper_executable": self.mapper_executable}
        if self.num_reducers > 0:
            programs["reducer_executable"] = self.reducer_executable
        if self.combiner_executable:
            programs["combiner_executable"] = self.combiner_executable
        return programs

    def check_programs(self):
        try:
            shipping.check(self.shipped_files, self.python_job, self.programs())
        except shipping.ShippingError as error:
            raise JobRejected(str(error)) from None
        if self.python_job is not None:
            if self.combiner_executable:
                raise JobRejected("combiner_executable is for programs: a Python job "
                                  "combines with its combiner method")
            return  # its programs are written with its code when it is accepted
        for field, program in self.programs().items():
            if not program.startswith(shipping.SHIPPED_PREFIX):
                check_executable(field, program)

    def install_code(self, job_directory):
        """Snapshot the shipped files into the job's directory and point the job's
        programs at the snapshot (OSError if it cannot be written)."""
        if not self.shipped_files:
            return
        programs = shipping.install(self.shipped_files, self.python_job, job_directory,
                                    reducer=self.num_reducers > 0)
        self.shipped_files = {name: None for name in self.shipped_files}  # the copy is in var/
        if self.python_job is not None:
            self.mapper_executable = programs[pyjob.MAP]
            self.reducer_executable = programs.get(pyjob.REDUCE, self.reducer_executable)
            return
        for field in ("mapper_executable", "reducer_executable", "combiner_executable"):
            value = getattr(self, field)
            if value and value in programs:
                setattr(self, field, programs[value])

    def check_inputs(self):
        if self.input_file is not None:
            if not os.path.isfile(self.input_file):
                raise JobRejected(f"input_file {self.input_file} is not a file")
            return
        if self.input_base_name is not None:
            if not base_name_files(self.input_base_name):
                raise JobRejected(f"no input files start with {self.input_base_name}")
            return
        if not os.path.isdir(self.input_directory):
            raise JobRejected(f"input_directory {self.input_directory} is not a directory")

    def check_for_client(self):
        """What the master finds only once the job runs, or runs anyway: refused
        before the job is sent."""
        self.check_input_slip()
        try:
            self.check_input_records()
        except records.RecordError as error:
            raise JobRejected(str(error)) from None

    def check_input_slip(self):
        """For a client: an input directory with no files but directories is a slip (the
        files are one level down), though the spec's master runs it as a job with no input."""
        if self.input_file is not None or self.input_base_name is not None:
            return
        if directory_files(self.input_directory):
            return
        subdirectories = [n for n in sorted(os.listdir(self.input_directory))
                          if os.path.isdir(os.path.join(self.input_directory, n))]
        if subdirectories:
            raise JobRejected(
                f"input_directory {self.input_directory} holds no input files (only files "
                f"directly in it are read, hidden ones not); it has the directories "
                f"{', '.join(subdirectories[:3])}{', ...' if len(subdirectories) > 3 else ''}")

    def check_options(self):
        if self.combiner_executable and self.num_reducers == 0:
            raise JobRejected(f"combiner_executable {self.combiner_executable} with "
                              f"num_reducers 0: a map-only job's map output is its output, "
                              f"nothing combines it")
        if self.split_size is not None and self.split_size < 1:
            raise JobRejected(f"split_size must be at least 1 byte, got {self.split_size}")
        if self.record_size is not None and not 1 <= self.record_size <= records.MAX_RECORD_BYTES:
            raise JobRejected(f"record_size must be between 1 and {records.MAX_RECORD_BYTES} "
                              f"bytes, got {self.record_size}")
        self.check_record_options()
        if self.partitioner not in PARTITIONERS:
            raise JobRejected(f"partitioner must be one of {', '.join(PARTITIONERS)}, "
                              f"got {self.partitioner!r}")
        if not 0 < self.task_timeout <= MAX_TASK_TIMEOUT:  # also refuses NaN
            raise JobRejected(f"task_timeout must be between 0 and {MAX_TASK_TIMEOUT:g} "
                              f"seconds, got {self.task_timeout}")
        base = self.output_base_name
        if base is not None and (base in ("", ".", "..") or "/" in base or "\0" in base):
            raise JobRejected(f"output_base_name must be a plain file name, got {base!r}")
        if self.max_attempts < 1:
            raise JobRejected(f"max_attempts must be at least 1, got {self.max_attempts}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.env.items()):
            raise JobRejected("env must map names to string values")
        for name, value in self.env.items():
            if not ENV_NAME.fullmatch(name):
                raise JobRejected(f"env name {name!r} is not a variable name (letters, digits "
                                  f"and _, not starting with a digit)")
            if "\0" in value:
                raise JobRejected(f"env {name}'s value contains a NUL byte")

    def check_record_options(self):
        output, key = self.output_record_size, self.key_size
        if output is not None and not 0 <= output <= records.MAX_RECORD_BYTES:
            raise JobRejected(f"output_record_size must be a number of bytes up to "
                              f"{records.MAX_RECORD_BYTES}, or 0 for lines, got {output}")
        if key is None:
            return
        layout = self.shuffle_layout()
        if layout is None and output == 0:
            raise JobRejected(f"key_size {key} is for records, but output_record_size says the "
                              f"map output is lines (whose key is before the tab)")
        if layout is None:
            raise JobRejected(f"key_size {key} is for records: give record_size or "
                              f"output_record_size too (a line's key is before its tab)")
        if not 1 <= key <= layout.size:
            raise JobRejected(f"key_size must be between 1 and the {layout.size}-byte record, "
                              f"got {key}")

    def final_record_size(self):
        """The size of the job's output records, if the job says it (else unchecked)."""
        return self.output_record_size or None

    def final_layout(self):
        """The records.Layout the job's output must have, if the job says it."""
        size = self.final_record_size()
        return records.Layout(size) if size else None

    def record_units(self, kind):
        """{"input": unit, "output": unit} of a map or reduce task's data, for counting:
        0 for lines, or a record size (what the programs write is the output's)."""
        written = self.output_record_size if self.output_record_size is not None \
            else self.record_size or 0
        return {"input": (self.record_size or 0) if kind == "map" else written,
                "output": written}

    def shuffle_layout(self):
        """The records.Layout of the map output and the reducers' input, or None for lines."""
        size = self.output_record_size if self.output_record_size is not None \
            else self.record_size
        if not size:
            return None
        option = records.INPUT_OPTION if self.output_record_size is None \
            else records.OUTPUT_OPTION
        return records.Layout(size, self.key_size, option)

    def check_input_records(self):
        """Raise records.RecordError unless every input file is whole records."""
        if self.record_size:
            for path in self.input_files():
                records.check_file(path, self.record_size)

    def check_output(self, var_directory=None):
        """Refuse an output directory the job could not write, or would damage.

        Its files would be read back as input by the next run if it were the
        input directory (or inside it); it must not be the root or the
        master's var/; and it must exist as a writable directory or be
        creatable, found out now rather than after the whole job ran.
        """
        where = self.output_directory
        real = os.path.realpath(where)
        if real == os.path.realpath(os.sep):
            raise JobRejected(f"output_directory {where} is the filesystem root")
        self.check_output_outside_input(real)
        if var_directory is not None and within(real, var_directory):
            raise JobRejected(f"output_directory {where} is inside the master's working "
                              f"directory {var_directory}")
        check_writable_directory(where)

    def check_output_outside_input(self, real_output):
        """The next run must not read this one's outputs (or have them replace its input)."""
        where = self.output_directory
        if self.input_file is None and self.input_base_name is None:
            if within(real_output, self.input_directory):
                raise JobRejected(f"output_directory {where} is input_directory "
                                  f"{self.input_directory} or inside it: the next job "
                                  f"would read these outputs as input")
            return
        field, path = (("input_file", self.input_file) if self.input_file is not None
                       else ("input_base_name", self.input_base_name))
        if real_output == os.path.realpath(os.path.dirname(path) or "."):
            raise JobRejected(f"output_directory {where} is the directory of {field} {path}: "
                              f"the outputs would land among the inputs")

    def uses_extensions(self):
        """True if tasks need our optional fields (context), i.e. not a plain spec job."""
        return bool(self.env or self.split_size or self.record_size or self.input_file
                    or self.input_base_name or self.output_record_size)

    def input_files(self):
        """The job's input files, in the order their outputs are concatenated."""
        if self.input_file is not None:
            return [self.input_file]
        if self.input_base_name is not None:
            return base_name_files(self.input_base_name)
        return directory_files(self.input_directory)


def check_executable(field, path):
    if not os.path.exists(path):
        raise JobRejected(f"{field} {path} does not exist")
    if not os.path.isfile(path):
        raise JobRejected(f"{field} {path} is not a file")
    if not os.access(path, os.X_OK):
        raise JobRejected(f"{field} {path} is not executable (chmod +x it)")
    problem = runner.shebang_problem(path)
    if problem:
        raise JobRejected(f"{field} {path} cannot start: {problem}")


def check_writable_directory(path):
    """Raise JobRejected unless `path` is a writable directory or can be made one."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise JobRejected(f"output_directory {path} exists and is not a directory")
    existing = path
    while not os.path.lexists(existing):
        parent = os.path.dirname(os.path.abspath(existing))
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        raise JobRejected(f"output_directory {path} cannot be created: {existing} is not "
                          f"a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else f"cannot be created in {existing}"
        raise JobRejected(f"output_directory {path} {what} (permission denied or "
                          f"a read-only filesystem)")


def directory_files(directory):
    """Regular, non-hidden files of a directory, sorted by name (as `input/*`)."""
    names = sorted(n for n in os.listdir(directory) if not n.startswith("."))
    return [os.path.join(directory, n) for n in names
            if os.path.isfile(os.path.join(directory, n))]


def natural_key(name):
    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", name)]


def base_name_files(base_name):
    """Files named base_name* in name order, numbers compared as numbers."""
    directory, prefix = os.path.split(base_name)
    directory = directory or "."
    if not os.path.isdir(directory) or not prefix:
        return []
    names = [n for n in os.listdir(directory)
             if n.startswith(prefix) and os.path.isfile(os.path.join(directory, n))]
    names.sort(key=natural_key)
    return [os.path.join(directory, n) for n in names]
