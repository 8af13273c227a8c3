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
import time

# In every program's environment: which attempt started it (mrlib/runner.py
# sets it). A program that leaves its process group (setsid, a daemonising
# script) keeps it, so whatever an attempt started can be found and killed.
ATTEMPT_VARIABLE = "MAPREDUCE_ATTEMPT"
# A bound on kill_tagged's passes over /proc, for a process SIGKILL cannot
# end (one stuck in the kernel): it would be found in every pass.
MAX_SWEEPS = 100
# How long kill_children waits for a killed child to exit: REAP_TRIES looks, REAP_PAUSE apart.
REAP_TRIES, REAP_PAUSE = 50, 0.01


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


def children_of(parent, known=()):
    """(pid, state) of each child of `parent` not in `known`, from /proc/PID/stat (state
    b"Z": a zombie, waiting to be reaped)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in known:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # after the name, which may hold spaces
        if len(fields) > 1 and fields[1] == str(parent).encode():
            found.append((int(entry), fields[0]))
    return found


def kill_children(known):
    """SIGKILL and reap this process's children not in `known`: orphans it adopted as a
    subreaper, and theirs as they in turn are orphaned. What SIGKILL cannot end at once
    (stuck in the kernel) is left for a later call."""
    for _ in range(MAX_SWEEPS):
        children = children_of(os.getpid(), known)
        if not children:
            return
        for pid, state in children:
            if state != b"Z":
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        for pid, _ in children:
            for _ in range(REAP_TRIES):
                try:
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        break
                except ChildProcessError:  # not ours after all, or reaped already
                    break
                time.sleep(REAP_PAUSE)


if __name__ == "__main__":
    main()
