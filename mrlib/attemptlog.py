"""One attempt's stderr, kept in a file of bounded size (var/job-N/logs/...).

The master names the file in the task message (`log_file`); our worker writes
into it what its programs wrote to stderr, minus `reporter:` lines, with a
header per input file when a task has several, and per program when more
than one wrote to stderr. The file is made only if there is something to
keep, never for an attempt the master cancelled, and never with the job's
directory (a job whose files are gone gets no log). Past MAX_LOG_BYTES the
rest is counted, not kept, and the count is said at the end.
"""
import logging
import os

LOG = logging.getLogger("worker")

MAX_LOG_BYTES = 1 << 20
INPUT, PROGRAM = 0, 1  # header levels: an input file's part holds its programs' parts


class AttemptLog:
    def __init__(self, path, limit=MAX_LOG_BYTES, still_wanted=None):
        self.path = path
        self.limit = limit
        self.still_wanted = still_wanted  # False once the attempt no longer counts
        self.handle = None
        self.written = 0
        self.dropped = 0
        self.pending = {}  # level -> header bytes not yet written
        self.failed = False  # it could not be written: the task goes on without it

    def section(self, title, level=INPUT):
        """Start a part; its header is written only if the part has content."""
        for deeper in [lv for lv in self.pending if lv >= level]:
            del self.pending[deeper]
        self.pending[level] = f"==> {title} <==\n".encode("utf-8", "surrogateescape")

    def write(self, data):
        if self.path is None or self.failed or not data:
            return
        for level in sorted(self.pending):  # headers are not counted against the limit
            self._put(self.pending[level])
        self.pending.clear()
        room = max(self.limit - self.written, 0)
        if room < len(data):
            self.dropped += len(data) - room
            data = data[:room]
        self.written += self._put(data)

    def skipped(self, count):
        """`count` more bytes that were not kept (said at the end)."""
        self.dropped += count

    def _put(self, data):
        """Write `data`; how many bytes went in."""
        if not data or not self._open():
            return 0
        try:
            self.handle.write(data)
        except OSError as error:
            self._give_up(error)
            return 0
        return len(data)

    def _open(self):
        if self.handle is not None:
            return True
        if self.still_wanted is not None and not self.still_wanted():
            self.failed = True  # cancelled: its job may be over and its files gone
            return False
        try:
            directory = os.path.dirname(self.path) or "."
            if not os.path.isdir(directory):
                os.mkdir(directory)  # not makedirs: never bring back a removed job directory
            self.handle = open(self.path, "ab")
        except OSError as error:
            self._give_up(error)
            return False
        return True

    def _give_up(self, error):
        self.failed = True
        LOG.warning("the stderr of this attempt is not kept in %s: %s", self.path, error)

    def close(self):
        if self.handle is None:
            return
        try:
            if self.dropped:
                self.handle.write(f"\n[... {self.dropped} more bytes of stderr not kept: "
                                  f"the log keeps the first {self.limit}]\n".encode())
            self.handle.close()
        except OSError:
            pass
        self.handle = None
