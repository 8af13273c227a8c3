#!/bin/sh
# Install the benchmark's peers (mrjob, Dask, Spark) and matplotlib for the
# plot into bench/.venv, pinned to the versions the results were taken with.
# Spark also needs a Java 17+ runtime on the PATH. The project itself needs
# none of this.
set -eu
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check \
    mrjob==0.7.4 "dask[bag]==2026.8.0" pyspark==4.3.0 matplotlib==3.11.2
echo "peers installed in bench/.venv"
