"""Small map programs that tests write into their scratch directories."""
import stat
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
WORD_COUNT_MAP = REPO / "exec" / "word_count" / "map.py"


def script(path, body):
    """Write an executable sh script and return its path."""
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def write_script(path, text):
    """Write `text`, shebang and all, as an executable file (making its
    directory if need be) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def sleepy_mapper(directory, seconds):
    """The word-count map, after sleeping: a task that takes a while."""
    return script(Path(directory) / "sleepy-map.sh", f"sleep {seconds}\nexec {WORD_COUNT_MAP}\n")


def failing_mapper(directory):
    """A map that reads its input and exits 3."""
    return script(Path(directory) / "failing-map.sh", "cat >/dev/null\nexit 3\n")


def stop(process):
    """End a client the test started, if it is still running (a test that failed)."""
    if process.poll() is None:
        process.kill()
        process.communicate()
