"""One attempt's stderr, kept in a file of bounded size (var/job-N/logs/...).

The master names the file in the task message (`log_file`); our worker writes
into it what its programs wrote to stderr, minus `reporter:` lines, with a
header per input file or program when there are several. The file is made
only if there is something to keep. Past MAX_LOG_BYTES the rest is counted,
not kept, and the count is said at the end: a program that floods its stderr
cannot fill the disk.
"""
import os

MAX_LOG_BYTES = 1 << 20


class AttemptLog:
    def __init__(self, path, limit=MAX_LOG_BYTES):
        self.path = path
        self.limit = limit
        self.handle = None
        self.written = 0
        self.dropped = 0
        self.pending_header = None
        self.failed = False  # it could not be written: the task goes on without it

    def section(self, title):
        """Start a part; its header is written only if the part has content."""
        self.pending_header = f"==> {title} <==\n".encode("utf-8", "surrogateescape")

    def write(self, data):
        if self.path is None or self.failed or not data:
            return
        if self.pending_header is not None:  # headers are not counted against the limit
            header, self.pending_header = self.pending_header, None
            self._put(header)
        room = max(self.limit - self.written, 0)
        if room < len(data):
            self.dropped += len(data) - room
            data = data[:room]
        self.written += self._put(data)

    def _put(self, data):
        """Write `data`; how many bytes went in."""
        if not data or not self._open():
            return 0
        try:
            self.handle.write(data)
        except OSError:
            self.failed = True
            return 0
        return len(data)

    def _open(self):
        if self.handle is None:
            try:
                os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
                self.handle = open(self.path, "ab")
            except OSError:
                self.failed = True
                return False
        return True

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
