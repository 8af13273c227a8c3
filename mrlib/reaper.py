"""Kill a worker's programs when the worker dies, however it dies.

The worker starts this once and writes `+PGID` / `-PGID` lines to its stdin
as programs start and end. When stdin reaches EOF (the worker exited, or was
SIGKILLed and the kernel closed the pipe), every process group still listed
is sent SIGKILL. This catches grandchildren too (a shell script's pipeline),
which the kernel's parent-death signal alone would not.
"""
import os
import signal
import sys

# In every program's environment: which attempt started it (mrlib/runner.py
# sets it). A program that leaves its process group (setsid, a daemonising
# script) keeps it, so whatever an attempt started can be found and killed.
ATTEMPT_VARIABLE = "MAPREDUCE_ATTEMPT"
# A bound on kill_tagged's passes over /proc, for a process SIGKILL cannot
# end (one stuck in the kernel): it would be found in every pass.
MAX_SWEEPS = 100


def main():
    # The reaper runs in a process group of its own, so signals to its parent's group
    # (a ^C, PySpark's daemon's hang-up as it exits) do not reach it; and ignores
    # these two if they are sent to it: it outlives its parent to kill what is left.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    prefix = sys.argv[1] if len(sys.argv) > 1 else None
    groups = set()
    for line in sys.stdin.buffer:
        sign, number = line[:1], line[1:].strip()
        if not number.isdigit():
            continue
        if sign == b"+":
            groups.add(int(number))
        elif sign == b"-":
            groups.discard(int(number))
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except OSError:
            pass
    if prefix:
        kill_tagged(prefix, whole=False)


def kill_tagged(tag, whole=True):
    """SIGKILL every process whose environment says an attempt tagged `tag` started it.

    With whole=False, `tag` is a prefix: every attempt of one guard. Passes over
    /proc/*/environ (about half a millisecond for a hundred processes) go on
    until one finds none: a program's shell can fork between a pass's listing of
    /proc and its kill, and the child, tagged too, is found by the next pass.
    """
    for _ in range(MAX_SWEEPS):
        if not _kill_tagged_once(tag, whole):
            return


def _kill_tagged_once(tag, whole):
    """One pass of kill_tagged: how many tagged processes it found."""
    found = 0
    needle = f"\0{ATTEMPT_VARIABLE}={tag}{chr(0) if whole else ''}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environment = b"\0" + handle.read()
        except OSError:
            continue
        if needle in environment:
            found += 1
            try:
                os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass
    return found


if __name__ == "__main__":
    main()
