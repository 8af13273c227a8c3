"""Peer: Dask bag word count in N processes (`frequencies` combines map-side).

    python dask_wc.py CORPUS_DIR OUT_FILE [--cores N]
"""
import dask
import dask.bag as db

from common import corpus_files, parse_args, write_counts


def main():
    args = parse_args(__doc__.splitlines()[0])
    words = db.read_text(corpus_files(args.corpus)).str.split().flatten()
    with dask.config.set(scheduler="processes", num_workers=args.cores):
        counts = words.frequencies().compute()
    write_counts(counts, args.out)


if __name__ == "__main__":
    main()
