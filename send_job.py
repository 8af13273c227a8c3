"""Submit a job to the master, and optionally wait for it.

    python3 send_job.py 6000                 # the sample word count, as the spec's starter
    python3 send_job.py 6000 --wait          # ... and follow it to the end
    python3 send_job.py 6000 --input input/big --mappers 8 --reducers 4 --wait
    python3 send_job.py 6000 --status 3      # one job's state
    python3 send_job.py 6000 --shutdown      # stop the master and its workers

Exit codes: 0 done (or submitted), 1 the job failed or the master could not
be reached, 2 the job is invalid (checked here before sending).
"""
import argparse
import os
import re
import select
import shutil
import signal
import socket
import sys
import time

import helper
from mrlib import auth, display, hadoopcmd, outputdir, pyjob, records, shipping, sparkrun
from mrlib.display import describe
from mrlib.grouping import raise_open_file_limit
from mrlib.jobspec import (DEFAULT_MAX_ATTEMPTS, DEFAULT_TASK_TIMEOUT, ENV_NAME, JobRejected,
                           JobSpec, in_option_terms)
from mrlib.runner import TaskFailed
from mrlib.sequential import SequentialRun
from mrlib.splits import TooManySplits

# The sample job's files, found beside this script wherever it is run from.
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_INPUT = os.path.relpath(os.path.join(HERE, "input", "sample1"))
DEFAULT_OUTPUT = "output"
DEFAULT_REDUCERS = 2
RUNNERS = ("cluster", "spark", "hadoop")
SPARK_MASTER = re.compile(r"local(\[(\*|\d+)(,\d+)?\])?|spark://\S+|yarn|k8s://\S+")
DEFAULT_MAPPER = os.path.relpath(os.path.join(HERE, "exec", "word_count", "map.py"))
DEFAULT_REDUCER = os.path.relpath(os.path.join(HERE, "exec", "word_count", "reduce.py"))
# How long one status query may wait on the master for news.
STATUS_WAIT = 10.0
# A job id no master hands out: asking for it tells our master from another.
UNUSED_JOB_ID = -1
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C
ENDED = ("succeeded", "failed", "cancelled", "unknown")
# A status answered at once with no news means the master had no room for
# another waiting query: ask again after this long, not in a busy loop.
BUSY_MASTER_PAUSE = 0.5
# --wait goes on asking a master it cannot reach for this long (a flaky or
# briefly cut network) before it gives up.
LOST_CONTACT_LIMIT = 60.0
# The last lines of a failed program's stderr that the failure block shows.
STDERR_LINES_SHOWN = 10
# How long --shutdown listens for a refusal before taking silence for yes.
SHUTDOWN_WAIT = 2.0
# Reply fields shown line by line, each line made printable where it is printed.
LINE_BY_LINE = ("stderr_tail",)


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Submit a MapReduce job.")
    parser.add_argument("master", nargs="?",
                        help="the master's TCP port, or HOST:PORT (not with --sequential)")
    parser.add_argument("--input", help=f"input directory (default: {DEFAULT_INPUT})")
    parser.add_argument("--input-file", help="a single input file instead of a directory")
    parser.add_argument("--input-base", help="a base name: every file starting with it, "
                                             "numbers in numeric order (input/book_ -> book_0, "
                                             "book_1 ... book_10)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT,
                        help=f"output directory (default: {DEFAULT_OUTPUT}); must be empty "
                             f"or new, unless --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="remove an earlier job's output files from the output directory "
                             "first (and nothing else)")
    parser.add_argument("--mapper", help=f"map executable (default: {DEFAULT_MAPPER})")
    parser.add_argument("--reducer", help=f"reduce executable (default: {DEFAULT_REDUCER})")
    parser.add_argument("--job", metavar="FILE.py[:CLASS]",
                        help="a Python job: a Job subclass in FILE (mrlib.Job), shipped with "
                             "the job; instead of --mapper, --reducer and --combiner")
    parser.add_argument("--ship", action="append", default=[], metavar="FILE",
                        help="a file the tasks need (a module, data, a program), copied with the "
                             "job; a shipped program named as --mapper etc. runs from the copy")
    parser.add_argument("--combiner", help="combiner executable, run over each map output")
    parser.add_argument("--mappers", type=int, default=4, help="number of map tasks (default 4)")
    parser.add_argument("--reducers", type=int, default=None,
                        help="number of reduce tasks (default 2; 0 = map only)")
    parser.add_argument("--split-size", type=int, help="cut inputs into splits of this many bytes")
    parser.add_argument("--record-size", type=int,
                        help="the input is fixed-size binary records of this many bytes "
                             "(splits fall between them), and so is the map output")
    parser.add_argument("--output-record-size", type=record_size_or_lines, metavar="N|lines",
                        help="the map programs write N-byte records (default: --record-size), "
                             "or lines; the reducers read them")
    parser.add_argument("--key-size", type=int, metavar="K",
                        help="a record's key is its first K bytes (default: the whole record)")
    parser.add_argument("--partitioner", choices=("range", "hash"), default=None,
                        help="range (ordered output, default) or hash of the key")
    parser.add_argument("--timeout", type=float,
                        help=f"per-task time limit in seconds (default: {DEFAULT_TASK_TIMEOUT:g})")
    parser.add_argument("--max-attempts", type=int,
                        help=f"attempts per task before the job fails (default: {DEFAULT_MAX_ATTEMPTS})")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment variable for the programs (repeatable)")
    parser.add_argument("--output-base", help="name outputs BASE_00, BASE_01 ... ")
    parser.add_argument("--speculative", action="store_true", default=None,
                        help="run backup copies of slow tasks near the end of a phase")
    parser.add_argument("--keep-intermediate", action="store_true", default=None,
                        help="keep the job's intermediate files in the master's var/job-N")
    parser.add_argument("--sequential", action="store_true",
                        help="run the job here, in one process, with no master or workers")
    parser.add_argument("--runner", choices=RUNNERS, default="cluster",
                        help="cluster: our master (default); spark: run the job on Apache "
                             "Spark; hadoop: with --print-command, the Hadoop Streaming "
                             "command for it")
    parser.add_argument("--spark-master", metavar="URL",
                        help=f"with --runner spark: where Spark runs (default "
                             f"{sparkrun.DEFAULT_MASTER}; spark://HOST:7077, yarn, k8s://...)")
    parser.add_argument("--print-command", action="store_true",
                        help="with --runner hadoop: print the command and exit")
    parser.add_argument("--wait", action="store_true", help="follow the job until it ends")
    parser.add_argument("--quiet", action="store_true", help="with --wait: only the result")
    parser.add_argument("--status", type=int, metavar="JOB_ID", help="print a job's state")
    parser.add_argument("--kill", type=int, metavar="JOB_ID",
                        help="cancel a queued or running job (its files are kept as a "
                             "failed job's)")
    parser.add_argument("--workers", action="store_true", help="list the workers and their states")
    parser.add_argument("--shutdown", action="store_true", help="shut the cluster down")
    auth.add_arguments(parser, listens=False)
    args = parser.parse_args(argv)
    refuse_conflicts(parser, args)
    args.job_class = None
    if args.job is not None:
        load_python_job(parser, args)
    else:
        args.mapper = args.mapper or DEFAULT_MAPPER
        args.reducer = args.reducer or DEFAULT_REDUCER
        args.reducers = DEFAULT_REDUCERS if args.reducers is None else args.reducers
    if not (args.status is not None or args.kill is not None or args.workers or args.shutdown):
        refuse_missing_sample(parser, args)
    if args.input is None:
        args.input = DEFAULT_INPUT
    args.host, args.port = "localhost", None
    if args.sequential or args.runner != "cluster":
        return args
    if args.master is None:
        parser.error("give the master's port (or --sequential, or --runner spark)")
    try:
        args.host, args.port = helper.parse_address(args.master)
    except ValueError as error:
        parser.error(f"bad master address {args.master!r}: {error}")
    return args


def load_python_job(parser, args):
    """Find the --job's class (its file is run here, as the user's own code): its
    programs are written by the master; without a reducer it is map-only."""
    for option, value in (("--mapper", args.mapper), ("--reducer", args.reducer),
                          ("--combiner", args.combiner)):
        if value is not None:
            parser.error(f"--job and {option} cannot go together: a Python job's methods "
                         f"are its programs")
    path, colon, class_name = args.job.rpartition(":")
    if not colon or os.path.isfile(args.job):  # FILE alone (a colon may be in its name)
        path, class_name = args.job, ""
    elif not class_name.isidentifier():
        parser.error(f"--job {args.job}: {class_name!r} is not the name of a class at the top "
                     f"of {path}")
    for option, value in (("--record-size", args.record_size),
                          ("--output-record-size", args.output_record_size),
                          ("--key-size", args.key_size)):
        if value is not None:
            parser.error(f"--job reads and writes lines: {option} is for programs that "
                         f"read or write records")
    try:
        described = pyjob.describe_job(path, class_name or None, args.ship)
    except pyjob.CodeBroken as broken:
        print(f"send_job: --job {args.job}: {broken}", file=sys.stderr)
        sys.exit(2)
    args.job_class, args.job_file = described["class"], path
    has_reducer = described["reducer"]
    if args.reducers is None:
        args.reducers = DEFAULT_REDUCERS if has_reducer else 0
    elif args.reducers > 0 and not has_reducer:
        parser.error(f"--reducers {args.reducers}: {args.job_class} has no reducer, "
                     f"so it is map-only; drop --reducers or define reducer()")
    args.mapper = args.reducer = path  # what a spec-only reader of the message sees


def record_size_or_lines(text):
    """--output-record-size: a number of bytes, or `lines` (0 in the message)."""
    if text == "lines":
        return 0
    try:
        size = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"give a number of bytes or lines, not {text!r}")
    if size < 1:
        raise argparse.ArgumentTypeError(f"give a number of bytes (1 or more) or lines, "
                                         f"not {text}")
    return size


def refuse_missing_sample(parser, args):
    """An installed send_job has no sample job: say so instead of a missing path."""
    defaults = [("--mapper", args.mapper, DEFAULT_MAPPER),
                ("--reducer", args.reducer, DEFAULT_REDUCER)]
    if args.input is None and args.input_file is None and args.input_base is None:
        defaults.append(("--input", DEFAULT_INPUT, DEFAULT_INPUT))
    missing = [option for option, value, default in defaults
               if value == default and not os.path.exists(default)]
    if missing:
        parser.error(f"the sample job ships only with a checkout of this project: give "
                     f"{', '.join(sorted(missing))}")


def refuse_conflicts(parser, args):
    """Options that cannot go together: an error naming them, before anything is done."""
    inputs = [name for name, value in (("--input", args.input), ("--input-file", args.input_file),
                                       ("--input-base", args.input_base)) if value is not None]
    if len(inputs) > 1:
        parser.error(f"{' and '.join(inputs)} each name the whole input: give one")
    if args.ship and (args.status is not None or args.kill is not None or args.workers
                      or args.shutdown):
        parser.error("--ship goes with a job to submit")
    queries = [name for name, given in (("--status", args.status is not None),
                                        ("--kill", args.kill is not None),
                                        ("--workers", args.workers),
                                        ("--shutdown", args.shutdown),
                                        ("--sequential", args.sequential)) if given]
    if len(queries) > 1:
        parser.error(f"{' and '.join(queries)} cannot go together: give one")
    if queries and queries != ["--sequential"] and args.wait:
        parser.error(f"--wait follows a job this command submits, not {queries[0]}")
    if args.sequential and args.master is not None:
        parser.error(f"--sequential runs the job here, with no master: drop {args.master}")
    if args.quiet and not (args.wait or args.sequential):
        parser.error("--quiet quiets --wait: give --wait too")
    refuse_runner_conflicts(parser, args, queries)


def refuse_runner_conflicts(parser, args, queries):
    """--runner spark and hadoop run or print a job without our master."""
    if args.spark_master is not None and args.runner != "spark":
        parser.error("--spark-master says where --runner spark runs: give --runner spark")
    if args.spark_master is not None and not SPARK_MASTER.fullmatch(args.spark_master):
        parser.error(f"--spark-master {args.spark_master!r} is not a Spark master URL: local, "
                     f"local[N], local[*], spark://HOST:PORT, yarn or k8s://...")
    if args.print_command and args.runner != "hadoop":
        parser.error("--print-command prints the Hadoop Streaming command: give --runner hadoop")
    if args.runner == "cluster":
        return
    if args.runner == "hadoop" and not args.print_command:
        parser.error("--runner hadoop does not run the job here; --print-command prints the "
                     "command that runs it on a Hadoop cluster")
    if queries:
        parser.error(f"--runner {args.runner} and {queries[0]} cannot go together")
    if args.master is not None:
        parser.error(f"--runner {args.runner} runs without our master: drop {args.master}")


def _resolve(path, local):
    """Send absolute paths to a local master, so its working directory doesn't matter."""
    if not path or not local:  # "" stays "": the checks name it, not the directory it means
        return path
    return os.path.abspath(path)


def check_program_name(option, typed, shipped=()):
    """JobRejected with a hint for a program given as Hadoop Streaming takes one (a
    command on PATH, or a command line), where a path to a file is wanted."""
    if not typed or os.path.exists(typed) or any(os.path.basename(p) == typed for p in shipped):
        return
    words = typed.split()
    found = shutil.which(words[0]) if words else None
    if len(words) > 1:
        raise JobRejected(f"--{option} {typed!r} does not exist: a program is one file, "
                          f"run without arguments; put the command line in a script "
                          f"(#!/bin/sh, then: exec {typed}) and give its path")
    if found and os.sep not in typed:
        raise JobRejected(f"--{option} {typed} does not exist here: programs are given by "
                          f"path, PATH is not searched; did you mean --{option} {found}?")


def parse_env(pairs):
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not ENV_NAME.fullmatch(name):
            raise JobRejected(f"--env wants NAME=VALUE, NAME of letters, digits and _ "
                              f"(not starting with a digit), got {pair!r}")
        env[name] = value
    return env


def build_job(args):
    """The new_master_job message for these arguments; JobRejected if invalid."""
    local = args.host in LOCAL_HOSTS
    input_directory = args.input
    if args.input_file:
        input_directory = os.path.dirname(args.input_file) or "."
    elif args.input_base:
        input_directory = os.path.dirname(args.input_base) or "."
    message = helper.new_master_job(
        _resolve(input_directory, local), _resolve(args.output, local),
        _resolve(args.mapper, local), _resolve(args.reducer, local),
        args.mappers, args.reducers,
        input_file=_resolve(args.input_file, local),
        input_base_name=_resolve(args.input_base, local) if args.input_base else None,
        split_size=args.split_size, record_size=args.record_size,
        output_record_size=args.output_record_size, key_size=args.key_size,
        combiner_executable=_resolve(args.combiner, local), partitioner=args.partitioner,
        task_timeout=args.timeout, max_attempts=args.max_attempts,
        env=parse_env(args.env) or None, output_base_name=args.output_base,
        speculative=args.speculative, keep_intermediate=args.keep_intermediate)
    if args.input_base and args.input_base.endswith(os.sep):
        raise JobRejected(f"--input-base {args.input_base} names a directory; use --input")
    for option in ("mapper", "reducer", "combiner"):
        if local:  # a remote master's paths are not ours to look at
            check_program_name(option, getattr(args, option), args.ship)
    ship(args, message)
    helper.validate(message)
    if local:
        JobSpec.from_message(message).check_for_client()  # the master's checks, and slips
    return message


def ship(args, message):
    """Put the Python job's file and the --ship files into the message; a program
    that is one of them runs from the job's snapshot (`shipped:NAME`)."""
    paths = ([args.job_file] if args.job is not None else []) + list(args.ship)
    if not paths:
        return
    try:
        message["shipped_files"] = shipping.pack(paths)
    except shipping.ShippingError as error:
        raise JobRejected(str(error)) from None
    if args.job is not None:
        message["python_job"] = f"{os.path.basename(os.path.abspath(args.job_file))}:" \
                                f"{args.job_class}"
        return
    shipped = {os.path.realpath(path): os.path.basename(os.path.abspath(path)) for path in paths}
    for field in ("mapper_executable", "reducer_executable", "combiner_executable"):
        program = message.get(field)
        if program and os.path.realpath(program) in shipped:
            message[field] = shipping.SHIPPED_PREFIX + shipped[os.path.realpath(program)]


def follow(args, job_id, quiet):
    """Show progress until the job ends; return the exit code."""
    shown = None if quiet else display.for_output(job_id)
    try:
        return watch(args, job_id, shown)
    finally:
        if shown is not None:
            shown.close()


def watch(args, job_id, shown):
    version, seen_events = -1, 0
    contact = Contact(args)
    while True:
        status = contact.ask(helper.job_status(job_id, version, STATUS_WAIT),
                             reply_timeout=STATUS_WAIT + helper.READ_TIMEOUT)
        if status is None:
            continue
        if status.get("version", version) == version and status.get("state") not in ENDED:
            time.sleep(BUSY_MASTER_PAUSE)  # answered without waiting: the master is busy
        version = status.get("version", version)
        events = status.get("events") or []
        # The master keeps the latest events only; events_total counts them all.
        total = status.get("events_total", len(events))
        if shown is not None:
            if total - seen_events > len(events):
                shown.event(f"({total - seen_events - len(events)} earlier event(s) not shown)")
            for event in events[max(0, len(events) - (total - seen_events)):]:
                shown.event(event)
            shown.update(status)
        seen_events = total
        if status.get("state") in ENDED:
            if shown is not None:
                shown.close()
            return summarize(status)


class Contact:
    """Queries while following a job, riding out a master that is out of reach for a while."""

    def __init__(self, args):
        self.args = args
        self.lost_since = None

    def ask(self, message, reply_timeout):
        """The reply, or None after a failure that may pass (raised once it lasts too long)."""
        try:
            reply = ask(self.args, message, reply_timeout=reply_timeout)
        except (OSError, helper.ProtocolError) as error:
            now = time.monotonic()
            if self.lost_since is None:
                self.lost_since = now
                print(f"send_job: lost contact with the master ({helper.printable(str(error))}); "
                      f"still trying for {LOST_CONTACT_LIMIT:g} s", file=sys.stderr, flush=True)
            elif now - self.lost_since > LOST_CONTACT_LIMIT:
                raise
            time.sleep(BUSY_MASTER_PAUSE)
            return None
        if self.lost_since is not None:
            print("send_job: in contact with the master again", file=sys.stderr, flush=True)
            self.lost_since = None
        return reply


def summarize(status, stream=sys.stderr):
    """Print how the job ended (a failure on `stream`); its exit code."""
    if status.get("state") == "succeeded":
        print(f"job {status['job_id']} succeeded: {len(status.get('outputs', []))} file(s) in "
              f"{status.get('output_directory')}")
        for group, counters in display.counter_groups(status.get("counters")):
            print(f"  counters: {group}")
            for name, amount in counters:
                print(f"    {name} = {amount}")
        if status.get("timings"):
            timings = ", ".join(f"{k} {v:.2f}s" for k, v in status["timings"].items())
            print(f"  timings: {timings}")
        return 0
    print(f"job {status.get('job_id')} {status.get('state')}: {status.get('error')}",
          file=stream)
    for line in probable_cause(status.get("failure")):
        print(line, file=stream)
    if status.get("job_directory"):
        print(f"  intermediate files kept in {status['job_directory']}", file=stream)
    return 1


def probable_cause(failure):
    """The lines of a "Probable cause of failure" block for the job's last failed attempt."""
    if not failure:
        return []
    tries = (f"failure {failure.get('failures')} of {failure.get('max_attempts')} allowed"
             if not failure.get("code_broken") else "the job's code cannot run: not tried again")
    lines = ["Probable cause of failure:",
             f"  task:      {failure.get('task')}, attempt {failure.get('attempt')} on worker "
             f"{failure.get('worker')} ({tries})"]
    return lines + attempt_lines(failure)


def attempt_lines(failure):
    """What went wrong in one failed run of a program: input, how it ended, stderr, log."""
    lines = []
    where = failure.get("input")
    if failure.get("input_length") is not None and "input_start" in failure:
        start = failure["input_start"]
        where = f"{where}, bytes {start}-{start + failure['input_length'] - 1}"
    lines.append(f"  input:     {where}")
    error = failure.get("error") or ""
    if error.startswith("timed out") or (failure.get("reason") or "").startswith("no result"):
        lines.append(f"  killed:    after the {failure.get('time_limit'):g} s time limit "
                     f"(--timeout)")
    elif failure.get("exit_code") is not None:
        lines.append(f"  exit code: {failure['exit_code']}")
    if error and not error.startswith("timed out"):
        lines.append(f"  error:     {error}")
    tail = (failure.get("stderr_tail") or "").rstrip("\n")
    if tail:
        lines.append("  stderr (last lines):")
        lines.extend(f"    {helper.printable(line)}"
                     for line in tail.splitlines()[-STDERR_LINES_SHOWN:])
    if failure.get("log_file"):
        lines.append(f"  log:       {failure['log_file']}")
    return lines


class Refused(Exception):
    """The job is not sent; the message says why, in one line."""


def outputs_to_replace(args, message):
    """What --overwrite must remove from the output directory; Refused if it may not be used.

    Only a path this client sees as the master does is looked at: any path
    for a local master (send_job made it absolute), an absolute one else.
    """
    output = message["output_directory"]
    if not os.path.isabs(output):
        if args.overwrite:
            raise Refused(f"--overwrite needs an absolute --output for a master on another "
                          f"host, got {args.output}")
        return []
    local = args.host in LOCAL_HOSTS  # else the input paths may be the master's, not ours

    def inputs():  # listed only if there is something --overwrite would remove
        return JobSpec.from_message(message).input_files() if local else []
    try:
        return outputdir.check(output, args.overwrite, args.output_base, inputs)
    except outputdir.OutputDirectoryInUse as refusal:
        raise Refused(str(refusal)) from None


def replace_outputs(args, output, names, master=None):
    """Remove an earlier job's outputs, once nothing stands in the way of the new job.
    `master`: our master's cluster_status reply, if a master is asked (master_status)."""
    master = master or {}
    var_directory = master.get("var_directory")
    if var_directory and outputdir.within(output, var_directory):
        raise Refused(f"output directory {args.output} is inside the master's working "
                      f"directory {var_directory}")
    for job in master.get("active_jobs") or ():
        refuse_if_in_use(args, output, names, job)
    try:
        outputdir.remove(output, names)
    except OSError as error:
        raise Refused(f"cannot remove the earlier outputs from {args.output}: {error}") from None
    print(f"removed {len(names)} earlier output file(s) from {args.output}: "
          f"{outputdir.show(names)}", flush=True)


def ask(args, message, **options):
    """The master's reply, to be shown: see shown()."""
    return shown(helper.request(args.host, args.port, message, **options))


def shown(value):
    """A reply with every string (keys too) made printable, so that a path or a message
    cannot drive the terminal or forge a line; LINE_BY_LINE fields keep their newlines."""
    if isinstance(value, str):
        return helper.printable(value)
    if isinstance(value, list):
        return [shown(item) for item in value]
    if isinstance(value, dict):
        return {shown(key): item if key in LINE_BY_LINE and isinstance(item, str)
                else shown(item) for key, item in value.items()}
    return value


def refuse_if_in_use(args, output, names, job):
    """Refused if removing `names` from `output` takes what a queued or running job (one
    of cluster_status's active_jobs) writes or has still to read."""
    where = f"job {job.get('job_id')}, which is {job.get('state')}: wait for it, or " \
            f"choose another --output"
    if outputdir.same_directory(output, job.get("output_directory")):
        raise Refused(f"output directory {args.output} is the output of {where}")
    if args.host not in LOCAL_HOSTS:
        return  # its input paths are the master's, not ours
    inputs = job_inputs(job)
    used = [name for name in names
            if any(outputdir.same_file(os.path.join(output, name), path) for path in inputs)]
    if used:
        raise Refused(f"--overwrite would remove {outputdir.show(used)} from {args.output}: "
                      f"the input of {where}")


def job_inputs(job):
    """The input files of an active job, as listed now."""
    try:
        spec = JobSpec(job.get("input_directory") or "", job.get("output_directory") or "",
                       "", "", 1, 1, input_file=job.get("input_file"),
                       input_base_name=job.get("input_base_name"))
        return spec.input_files()
    except (OSError, TypeError, ValueError):
        return []


def master_status(args):
    """Our master's cluster_status reply (its var/, where no output may go, and its active
    jobs); None for another implementation's master.

    Asked before anything is removed, so that a master that cannot be
    reached (OSError, raised) costs the user no file.
    """
    try:
        return helper.request(args.host, args.port, helper.cluster_status())
    except helper.NoReply:
        return None


def kill(args):
    """Cancel a job; 0 if it is now cancelled, 1 if it had ended, was unknown or publishing."""
    status = ask(args, helper.cancel_job(args.kill))
    state = status.get("state")
    if state == "cancelled":  # now, or by an earlier --kill
        print(f"job {args.kill} cancelled; its files are kept in {status.get('job_directory')}")
        return 0
    if state == "unknown":
        print(f"send_job: no job {args.kill} on the master at {args.host}:{args.port}",
              file=sys.stderr)
    elif state in ("succeeded", "failed"):
        print(f"send_job: job {args.kill} has already ended: {state}", file=sys.stderr)
    else:
        print(f"send_job: job {args.kill} not cancelled: {status.get('error')}", file=sys.stderr)
    return 1


def local_job(args):
    """(new_master_job message, JobSpec) of the job the options describe, run from here
    (not by a master), or (None, None) after saying why it is invalid."""
    try:
        message = build_job(args)
        return message, JobSpec.from_message(message)
    except (JobRejected, helper.ProtocolError) as error:
        print(f"send_job: invalid job: {in_option_terms(str(error))}", file=sys.stderr)
        return None, None


def run_sequential(args):
    """Run the job in this process; print what --wait would; return the exit code."""
    message, spec = local_job(args)
    if spec is None:
        return 2
    try:
        names = outputs_to_replace(args, message)
        if names:
            replace_outputs(args, spec.output_directory, names)
    except Refused as refusal:
        print(f"send_job: {refusal}", file=sys.stderr)
        return 2
    raise_open_file_limit()
    # A terminated run unwinds like Ctrl-C does, so it removes its scratch directory.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        job = SequentialRun(spec).run()
    except TaskFailed as failure:
        print("sequential job failed:", file=sys.stderr)
        for line in attempt_lines({"input": failure.input_file, "exit_code": failure.exit_code,
                                   "error": failure.reason, "stderr_tail": failure.stderr_tail,
                                   "time_limit": spec.task_timeout}):
            print(line, file=sys.stderr)
        return 1
    except (OSError, TooManySplits, records.RecordError) as error:
        print(f"sequential job failed: {error}", file=sys.stderr)
        return 1
    return summarize(job.snapshot())


def run_on_spark(args):
    """Run the job on Spark from here; print what --wait would; return the exit code."""
    message, spec = local_job(args)
    if spec is None:
        return 2
    try:
        names = outputs_to_replace(args, message)
    except Refused as refusal:
        print(f"send_job: {refusal}", file=sys.stderr)
        return 2
    say = (lambda line: print(line, flush=True)) if args.wait and not args.quiet else None
    spark = sparkrun.SparkRun(spec, args.spark_master or sparkrun.DEFAULT_MASTER, say)

    def terminated(*_):  # Spark stops at once, then the scratch directory goes
        spark.abandon()
        sys.exit(128 + signal.SIGTERM)
    signal.signal(signal.SIGTERM, terminated)

    def prepare():  # once Spark has started: a Spark that cannot start costs no file
        if names:
            replace_outputs(args, spec.output_directory, names)
    try:
        job = spark.run(prepare)
    except Exception as error:
        return spark_failed(spark, spec, error)
    return summarize(job.snapshot())


def spark_failed(spark, spec, error):
    """Say why a --runner spark job did not succeed; its exit code."""
    if spark.abandoned:  # SIGTERM: Spark was stopped under the job
        print("send_job: terminated: Spark stopped", file=sys.stderr)
        return 128 + signal.SIGTERM
    if isinstance(error, (sparkrun.SparkUnavailable, Refused)):
        print(f"send_job: {error}", file=sys.stderr)
        return 2
    if isinstance(error, sparkrun.SparkJobFailed):
        print(f"spark job failed: {error.reason}", file=sys.stderr)
        for line in attempt_lines(dict(error.failure, time_limit=spec.task_timeout)) \
                if error.failure else []:
            print(line, file=sys.stderr)
        return 1
    if isinstance(error, (OSError, TooManySplits, records.RecordError)):
        print(f"spark job failed: {error}", file=sys.stderr)
        return 1
    raise error


def print_hadoop_command(args):
    """Print the Hadoop Streaming command line for the job."""
    _, spec = local_job(args)
    if spec is None:
        return 2
    try:
        print(hadoopcmd.command(spec, ([args.job_file] if args.job else []) + args.ship))
    except hadoopcmd.NoEquivalent as error:
        print(f"send_job: {error}", file=sys.stderr)
        return 2
    return 0


def submit(args):
    try:
        message = build_job(args)
    except (JobRejected, helper.ProtocolError) as error:
        print(f"send_job: invalid job: {in_option_terms(str(error))}", file=sys.stderr)
        return 2
    try:
        names = outputs_to_replace(args, message)
        if names:
            replace_outputs(args, message["output_directory"], names, master_status(args))
    except Refused as refusal:
        print(f"send_job: {refusal}", file=sys.stderr)
        return 2
    try:
        reply = ask(args, message)
    except helper.NoReply:
        return submitted_without_reply(args)
    if reply.get("message_type") == "job_rejected":
        print(f"send_job: the master rejected the job: {in_option_terms(str(reply.get('error')))}",
              file=sys.stderr)
        return 2
    job_id = reply.get("job_id")
    try:  # from here on the job exists, so an interrupt says how to find it again
        print(f"job {job_id} submitted to {args.host}:{args.port}", flush=True)
        return follow(args, job_id, args.quiet) if args.wait else 0
    except KeyboardInterrupt:
        print(f"\nsend_job: stopped following job {job_id}; it goes on. Its state: "
              f"python3 send_job.py {args.master} --status {job_id}", file=sys.stderr)
        return INTERRUPTED


def submitted_without_reply(args):
    """The master read the job and closed without a job id: ours when busy, or another's."""
    try:  # our master answers job_status off its main thread, however busy that is
        helper.request(args.host, args.port, helper.job_status(UNUSED_JOB_ID))
    except (OSError, helper.ProtocolError):
        # A master without our client extensions takes the job and says nothing.
        print(f"job submitted to {args.host}:{args.port} (the master sent no job id)",
              flush=True)
        if args.wait:
            print("send_job: cannot follow the job: this master does not answer job_status",
                  file=sys.stderr)
            return 1
        return 0
    print(f"send_job: the master at {args.host}:{args.port} took the job but did not confirm "
          f"it in time; its log says whether it was accepted (--workers shows the queue)",
          file=sys.stderr)
    return 1


def stdout_reader_gone():
    """True if stdout is a pipe whose reader has closed it (poll says POLLERR)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False


def quiet_after_broken_stdout():
    """Exit as a program killed by SIGPIPE would, without Python's complaint on exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


def main(argv=None):
    try:
        return run(parse_args(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:  # before a job was submitted, or outside --wait
        print("\nsend_job: interrupted", file=sys.stderr)
        return INTERRUPTED


def shut_down(args):
    """Say what stops, send shutdown; a master that refuses it says so (ours, with a secret)."""
    try:
        cluster = ask(args, helper.cluster_status())
    except (OSError, helper.ProtocolError):
        cluster = None  # another implementation's master: it only takes shutdown
    if cluster is not None and "current_job" in cluster:
        running, queued = cluster.get("current_job"), cluster.get("queued_jobs") or []
        print(f"shutting down the master at {args.host}:{args.port} and its "
              f"{len(cluster.get('workers') or [])} worker(s)"
              + (f"; job {running} stops unfinished" if running is not None else "")
              + (f"; queued job(s) dropped: {', '.join(map(str, queued))}" if queued else ""),
              flush=True)
    try:
        helper.request(args.host, args.port, helper.shutdown(), reply_timeout=SHUTDOWN_WAIT)
    except (helper.NoReply, socket.timeout):  # taken: the spec's master answers nothing
        pass
    return 0


def run(args):
    if args.sequential:
        return run_sequential(args)
    if args.runner == "spark":
        return run_on_spark(args)
    if args.runner == "hadoop":
        return print_hadoop_command(args)
    try:
        helper.use_secret(auth.configure(args))
    except auth.SecretError as error:
        print(f"send_job: {error}", file=sys.stderr)
        return 2
    try:
        if args.shutdown:
            return shut_down(args)
        if args.workers:
            reply = ask(args, helper.cluster_status())
            for worker in reply.get("workers", []):
                aside = worker.get("set_aside")
                print(f"worker {worker['pid']} {worker['host']}:{worker['port']} "
                      f"{worker['state']} ({worker['tasks']} task(s), "
                      f"{f'{aside} set aside, ' if aside else ''}last heard "
                      f"{worker.get('since_heartbeat', 0):.1f} s ago)")
            if "current_job" in reply:  # our master's extension: the queue
                queued = ", ".join(str(j) for j in reply.get("queued_jobs") or []) or "none"
                current = reply["current_job"]
                print(f"running job: {'none' if current is None else current}; "
                      f"queued jobs: {queued}")
            return 0
        if args.kill is not None:
            return kill(args)
        if args.status is not None:
            status = ask(args, helper.job_status(args.status))
            if status.get("state") in ("succeeded", "failed", "cancelled"):
                return summarize(status, sys.stdout)  # counters and timings, or the cause
            print(describe(status))
            return 0 if status.get("state") != "unknown" else 1
        return submit(args)
    except (OSError, helper.ProtocolError) as error:
        if isinstance(error, BrokenPipeError) and stdout_reader_gone():
            return quiet_after_broken_stdout()  # `send_job.py ... | head`: not the master's
        hint = ""
        if isinstance(error, helper.NoReply):
            hint = (" (a master with a secret answers only messages signed with it: "
                    "--secret-file)" if not helper.has_secret() else
                    " (is it another secret than the master's?)")
        print(f"send_job: cannot talk to the master at {args.host}:{args.port}: "
              f"{helper.printable(str(error))}{hint}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
