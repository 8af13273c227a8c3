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


def main():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a ^C to the terminal is the worker's to handle
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


if __name__ == "__main__":
    main()
