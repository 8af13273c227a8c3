"""What every peer script shares: its command line and how it writes the result.

Each peer counts the words of CORPUS_DIR's files and writes `word<TAB>count`
lines in bytewise key order to OUT_FILE: the same bytes as the sequential
pipeline, so the runner can check every result before timing counts.
"""
import argparse
import glob
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAP = os.path.join(REPO, "exec", "word_count", "map.py")
REDUCE = os.path.join(REPO, "exec", "word_count", "reduce.py")


def parse_args(description, cores=2):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("corpus", help="directory of input files")
    parser.add_argument("out", help="file to write word<TAB>count lines to")
    parser.add_argument("--cores", type=int, default=cores, help="processes to use")
    return parser.parse_args()


def corpus_files(directory):
    return sorted(path for path in glob.glob(os.path.join(directory, "*")) if os.path.isfile(path))


def write_counts(pairs, out):
    """Write (word, count) pairs, words as str or bytes, in bytewise word order."""
    encoded = sorted((w.encode() if isinstance(w, str) else w, int(c)) for w, c in pairs)
    with open(out, "wb") as handle:
        for word, count in encoded:
            handle.write(b"%s\t%d\n" % (word, count))
