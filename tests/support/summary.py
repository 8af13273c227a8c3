"""What send_job.py prints when a job ends, read back by tests."""
import re

FRAMEWORK = "Map-Reduce Framework"  # the built-in counters' group


def all_counters(stdout):
    """The summary's counters ("counters: GROUP", then "NAME = N" lines) as {GROUP: {NAME: N}}."""
    found, group = {}, None
    for line in stdout.splitlines():
        if heading := re.fullmatch(r"  counters: (.+)", line):
            group = found.setdefault(heading.group(1), {})
        elif group is not None and (entry := re.fullmatch(r"    (.+) = (-?\d+)", line)):
            group[entry.group(1)] = int(entry.group(2))
        else:
            group = None
    return found


def counters(stdout):
    """The programs' own counters in the summary, as {"GROUP.NAME": N}."""
    return {f"{group}.{name}": amount for group, named in all_counters(stdout).items()
            if group != FRAMEWORK for name, amount in named.items()}
