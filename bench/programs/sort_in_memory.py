#!/usr/bin/env python3
"""Group in memory: read every line, sort them in a list, write them out.

The naive alternative to an external sort, for the "disk beats memory"
demonstration: under a memory limit smaller than the map output it fails
with MemoryError, where the cluster's bounded-memory sort succeeds.
"""
import sys

sys.stdout.buffer.writelines(sorted(sys.stdin.buffer))
