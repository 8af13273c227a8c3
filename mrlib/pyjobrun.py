"""python3 -m mrlib.pyjobrun map|map-only|reduce FILE CLASS: one phase of a Python job.

A module of its own: run as `-m mrlib.pyjob`, the module would be loaded twice
(once by the package, once as __main__), and a job's class would derive from
the other copy's Job.
"""
import sys

from mrlib.pyjob import main

if __name__ == "__main__":
    sys.exit(main())
