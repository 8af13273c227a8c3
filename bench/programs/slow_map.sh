#!/bin/sh
# A straggler for the backup-task benchmark: on a worker started with
# MR_BENCH_SLOW set (bench/cluster_run.py --slow-workers), every map task
# first waits MR_BENCH_SLOW_SECONDS (default 4), like a worker on a failing
# disk; elsewhere it is the word count map.
if [ -n "${MR_BENCH_SLOW:-}" ]; then
    sleep "${MR_BENCH_SLOW_SECONDS:-4}"
fi
exec "$(dirname "$0")/../../exec/word_count/map.py"
