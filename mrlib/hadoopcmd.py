"""The Hadoop Streaming command for a job: `send_job.py --runner hadoop --print-command`.

For a user with a Hadoop cluster: the same programs, inputs and settings as
`hadoop jar hadoop-streaming.jar` options. The programs travel with -files
and run from the task's directory by their base names. Hadoop Streaming's
key is ours (the bytes before the first tab), and its reducers read their
keys sorted bytewise; where Hadoop differs, a comment line before the
command says how.
"""
import os
import shlex

from mrlib import pyjob
from mrlib.shipping import SHIPPED_PREFIX

STREAMING_JAR = '"${HADOOP_STREAMING_JAR:?set it to the path of hadoop-streaming-*.jar}"'
SECONDS_MS = 1000


class NoEquivalent(Exception):
    """Hadoop Streaming has no equivalent of something the job asks for."""


def command(spec, shipped_paths=()):
    """The shell command (comment lines, then the command itself) for a JobSpec;
    `shipped_paths`: the files it ships (--job's, --ship's), which go with -files."""
    if spec.record_size or spec.output_record_size:
        raise NoEquivalent("--runner hadoop: Hadoop Streaming hands its programs lines; it has "
                           "no fixed-size binary records (--record-size, --output-record-size)")
    notes, files, programs = [], [os.path.abspath(p) for p in shipped_paths], {}
    for role, path in (("mapper", spec.mapper_executable), ("reducer", spec.reducer_executable),
                       ("combiner", spec.combiner_executable)):
        if path and not (role == "reducer" and spec.num_reducers == 0):
            programs[role] = program(spec, role, path, files)
    if spec.python_job is not None:
        notes.append("# a Python job: mapreduce-server must be installed on every node "
                     "(pip install mapreduce-server)")
    words = ["hadoop", "jar", STREAMING_JAR]
    words += generic_options(spec, files)
    for path in inputs(spec):
        words += ["-input", path]
    words += ["-output", spec.output_directory, "-mapper", programs["mapper"]]
    if "combiner" in programs:
        words += ["-combiner", programs["combiner"]]
    words += ["-reducer", programs.get("reducer", "NONE"), "-numReduceTasks",
              str(spec.num_reducers)]
    for name, value in spec.env.items():
        words += ["-cmdenv", f"{name}={value}"]
    check_files(files)
    notes += differences(spec)
    return "\n".join(notes + [render(words)])


def check_files(files):
    """-files links each file into the task's directory by its name, and is a list
    split at commas; the programs are named by those names, split at spaces."""
    names = {}
    for path in dict.fromkeys(files):
        name = os.path.basename(path)
        if name in names:
            raise NoEquivalent(f"--runner hadoop: {names[name]} and {path} have the same name, "
                               f"and -files gives a task one file of each name: rename one")
        if "," in path or any(c.isspace() for c in name):
            raise NoEquivalent(f"--runner hadoop: {path!r} cannot go in -files (a comma in its "
                               f"path, or a space in its name)")
        names[name] = path


def program(spec, role, path, files):
    """How a program is named on the command line; its file is added to `files`."""
    if spec.python_job is not None:
        name, _, class_name = spec.python_job.partition(":")
        phase = (pyjob.REDUCE if role != "mapper" else pyjob.MAP if spec.num_reducers > 0
                 else pyjob.MAP_ONLY)  # no reducers: nothing combined
        return f"python3 -m mrlib.pyjobrun {phase} {name} {class_name}"
    if path.startswith(SHIPPED_PREFIX):
        return path[len(SHIPPED_PREFIX):]  # in -files already
    files.append(os.path.abspath(path))
    return os.path.basename(path)


def generic_options(spec, files):
    """-D settings and -files: Hadoop wants them before the streaming options."""
    settings = {"mapreduce.job.maps": spec.num_mappers,
                "mapreduce.map.maxattempts": spec.max_attempts,
                "mapreduce.reduce.maxattempts": spec.max_attempts,
                "mapreduce.task.timeout": int(spec.task_timeout * SECONDS_MS),
                "mapreduce.map.speculative": str(bool(spec.speculative)).lower(),
                "mapreduce.reduce.speculative": str(bool(spec.speculative)).lower()}
    if spec.split_size:
        settings["mapreduce.input.fileinputformat.split.maxsize"] = spec.split_size
    words = []
    for name, value in settings.items():
        words += ["-D", f"{name}={value}"]
    unique = list(dict.fromkeys(files))
    if unique:
        words += ["-files", ",".join(unique)]
    return words


def inputs(spec):
    if spec.input_file is not None:
        return [spec.input_file]
    if spec.input_base_name is not None:
        return [spec.input_base_name + "*"]  # a glob, as Hadoop reads it
    return [spec.input_directory]


def differences(spec):
    """Comment lines on what Hadoop does otherwise."""
    notes = []
    if spec.num_reducers > 1 and spec.partitioner == "range":
        notes.append("# Hadoop hashes keys to reducers (HashPartitioner): for our range order "
                     "across files, sort the outputs together (or use -numReduceTasks 1)")
    elif spec.num_reducers > 1:
        notes.append("# Hadoop's HashPartitioner hashes keys otherwise than our md5: the "
                     "same keys go together, into other files")
    notes.append("# Hadoop names the outputs part-00000, part-00001, ... and adds _SUCCESS")
    notes.append("# -input and -output are read on Hadoop's default filesystem (HDFS): copy "
                 "the input there, or give file:// paths a shared filesystem holds")
    notes.append("# mapreduce.task.timeout is Hadoop's limit on a task that reports no "
                 "progress, not on its whole run as --timeout is")
    return notes


def render(words):
    """The words as a shell command, an option and its value to a line."""
    lines, current = [], []
    for word in words:
        quoted = word if word == STREAMING_JAR else shlex.quote(word)
        if word.startswith("-") and current:
            lines.append(" ".join(current))
            current = []
        current.append(quoted)
    lines.append(" ".join(current))
    return " \\\n    ".join(lines)
