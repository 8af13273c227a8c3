"""Peer: mrjob's local runner, with our executables or as a Python job.

    python mrjob_wc.py CORPUS_DIR OUT_FILE [--cores N] [--python]

Default: exec/word_count/map.py and reduce.py as mapper_cmd / reducer_cmd
(Hadoop Streaming style). --python: mapper and reducer as Python methods (mrjob_wc_job.py).
mrjob runs the map tasks, sorts, and runs the reduce tasks in N local
processes; the part files are read back and written as OUT_FILE.
"""
import glob
import os
import shutil
import sys
import tempfile

from mrjob.job import MRJob
from mrjob.protocol import RawValueProtocol

from common import MAP, REDUCE, corpus_files, parse_args, write_counts
from mrjob_wc_job import WordCountPython


class WordCountCommands(MRJob):
    """Word count with our executables as the mapper and reducer commands."""
    OUTPUT_PROTOCOL = RawValueProtocol

    def mapper_cmd(self):
        return MAP

    def reducer_cmd(self):
        return REDUCE


def read_parts(directory):
    for part in sorted(glob.glob(os.path.join(directory, "part-*"))):
        with open(part, "rb") as handle:
            for line in handle:
                word, _, count = line.rstrip(b"\n").partition(b"\t")
                yield word, int(count)


def main():
    python_job = "--python" in sys.argv
    sys.argv = [arg for arg in sys.argv if arg != "--python"]
    args = parse_args(__doc__.splitlines()[0])
    job_class = WordCountPython if python_job else WordCountCommands
    scratch = tempfile.mkdtemp(prefix="mrjob-out-", dir=os.path.dirname(os.path.abspath(args.out)))
    try:
        output = os.path.join(scratch, "out")
        job = job_class(["-r", "local", "--num-cores", str(args.cores), "--no-output",
                         "--output-dir", output, *corpus_files(args.corpus)])
        with job.make_runner() as runner:
            runner.run()
        write_counts(read_parts(output), args.out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
