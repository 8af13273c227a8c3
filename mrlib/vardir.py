"""The master's working directory `var/`: claimed, locked, and only then emptied.

The spec has the master delete and recreate `var/` on start. A master may
only empty a `var/` it made itself, or one that is empty: when it makes one it
writes a marker file inside, and every master after it holds an exclusive
`flock` on that marker for as long as it runs. So a `var/` without our
marker (a user's data, the system's /var) is never touched, and a second
master in the same directory finds the lock taken and refuses to start
without touching the first one's files. The lock dies with its process,
even on SIGKILL, so a restarted master gets the spec's fresh `var/`.

The marker stays in place while the rest is emptied, so the lock never
leaves the directory it guards: a master that replaced the whole directory
would hold a lock on a file no one else can find.
"""
import fcntl
import logging
import os
import queue
import shutil
import stat
import threading

LOG = logging.getLogger("master")

# Inside var/: a file only a master creates. Hidden, so `ls var/` shows the
# spec's job-N directories only.
MARKER = ".mapreduce-master"
# The marker's first line, so a file of that name we did not write is not ours.
MAGIC = "mapreduce master working directory"


class VarUnavailable(Exception):
    """`var/` cannot be used; the message says why and what to do, in one line."""


class VarDirectory:
    """A claimed `var/`: the lock is held until close() or the process ends."""

    def __init__(self, path, port):
        self.path = os.path.abspath(path)
        self.port = port
        self.fd = None

    def claim(self):
        """Take `var/` (making it if needed), lock it, and empty it; or raise VarUnavailable."""
        made = self._make_or_find()
        fd = self._open_marker(made)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise VarUnavailable(f"{self.path} is in use by another master{holder}; "
                                 f"stop it first, or start this one in another directory")
        self.fd = fd
        self._empty()
        _write_holder(fd, self.port)
        return self

    def close(self):
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None

    def _make_or_find(self):
        """True if this call made the directory."""
        try:
            os.mkdir(self.path)
            return True
        except FileExistsError:
            pass
        if os.path.islink(self.path) or not os.path.isdir(self.path):
            raise VarUnavailable(f"{self.path} exists and is not a directory the master made; "
                                 f"move it away, or start the master in another directory")
        return False

    def _open_marker(self, made):
        marker = os.path.join(self.path, MARKER)
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(marker, flags)
        except FileNotFoundError:
            return self._create_marker(marker, made)
        except OSError as error:
            raise VarUnavailable(f"{self.path} has a {MARKER} the master cannot open "
                                 f"({error.strerror}); move {self.path} away, or start the "
                                 f"master in another directory") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode) or not _is_ours(fd):
            os.close(fd)
            raise VarUnavailable(self._foreign())
        return fd

    def _create_marker(self, marker, made):
        # A master killed while writing the marker leaves only its temporary copy.
        if not made and any(not name.startswith(f"{MARKER}.tmp-")
                            for name in os.listdir(self.path)):
            raise VarUnavailable(self._foreign())
        # Written whole under a temporary name, then linked into place: a marker that
        # could not be written (a full disk) is never left half made, or empty, to be
        # taken for someone else's on the next start.
        temporary = f"{marker}.tmp-{os.getpid()}"
        try:
            fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, f"{MAGIC}\n".encode())
                os.fsync(fd)
                os.link(temporary, marker)
            except BaseException:
                os.close(fd)
                raise
        except FileExistsError:  # another master claimed it in the meantime
            return self._open_marker(made=False)
        except OSError as error:
            raise VarUnavailable(f"cannot write {marker}: {error.strerror}") from None
        finally:
            remove_path(temporary)
        return fd

    def _foreign(self):
        return (f"{self.path} was not made by a MapReduce master (no {MARKER} written by "
                f"one inside) and is not empty; it is left alone: move it away, or start the master "
                f"in another directory")

    def _empty(self):
        """Remove everything in var/ but the marker (the spec's fresh var/)."""
        for name in os.listdir(self.path):
            if name != MARKER:
                remove_path(os.path.join(self.path, name))


class Janitor:
    """Removes files of ended jobs, on a thread of its own so the master never waits on a disk."""

    def __init__(self):
        self.work = queue.Queue()
        self.thread = threading.Thread(target=self.run, name="janitor", daemon=True)
        self.thread.start()

    def remove(self, path):
        """Remove `path` soon, in the background."""
        self.work.put(path)

    def remove_now(self, path):
        """Remove `path` here and now; a failure is logged, never raised."""
        try:
            remove_path(path)
        except OSError as error:
            LOG.warning("could not remove %s: %s", path, error)

    def run(self):
        while (path := self.work.get()) is not None:
            self.remove_now(path)

    def close(self):
        """Finish what was asked, then stop the thread."""
        self.work.put(None)
        self.thread.join()


def remove_path(path):
    """Remove a file, a link (not what it points to) or a whole directory."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def _write_holder(fd, port):
    """Say who holds the marker; written over its first line, never emptied first (a full
    disk may refuse a block to a file truncated to nothing)."""
    text = f"{MAGIC}\npid {os.getpid()} port {port}\n".encode()
    try:
        os.pwrite(fd, text, 0)
        os.ftruncate(fd, len(text))
    except OSError as error:  # the lock is held all the same; only the holder goes unsaid
        LOG.warning("could not note this master in its var/ marker: %s", error.strerror)


def _marker_lines(fd):
    return os.pread(fd, 4096, 0).decode("utf-8", "replace").splitlines()


def _is_ours(fd):
    lines = _marker_lines(fd)
    return bool(lines) and lines[0] == MAGIC


def _holder(fd):
    """' (pid N, port P)' from the marker, or '' if it does not say."""
    lines = _marker_lines(fd)
    fields = lines[1].split() if len(lines) > 1 else []
    if len(fields) == 4 and fields[0] == "pid" and fields[2] == "port":
        return f" (pid {fields[1]}, port {fields[3]})"
    return ""
