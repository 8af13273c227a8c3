"""The wire protocol shared by the master, the workers and the client.

Everything that touches a socket or JSON lives here: framing (one JSON
object per TCP connection, read until EOF, size-capped), the message shapes
of the spec with their field types, the constructors for each message, and
the small TCP / UDP servers both roles run. master.py and worker.py never
call json or recv themselves. With a shared secret (use_secret), every
message is signed and checked here too (mrlib/auth.py).
"""
import argparse
import hashlib
import json
import logging
import os
import selectors
import socket
import threading
import time

from mrlib import auth

LOG = logging.getLogger("helper")

# A message larger than this is refused: no legitimate message comes close
# (the largest is a task listing a few thousand paths), and the cap keeps a
# misbehaving peer from making us buffer without bound.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# A message may hold at most this many JSON items (each `[`, `{` and `,` in
# its bytes, in strings too, counted in C before it is parsed). Parsing costs
# up to ~100 bytes of memory an item ([[],[],...] is 3 bytes an item on the
# wire and 64 in memory), so the count, not the size, bounds what a message
# costs: a 16 MiB one of empty lists took a process from 35 to 470 MB. This
# is one item per 16 bytes at MAX_MESSAGE_BYTES, and parses in at most ~100
# MB; our densest messages (lists of paths, a map task's per-file context)
# take 30 bytes or more an item, so none that fits the size cap comes near it.
MAX_MESSAGE_ITEMS = MAX_MESSAGE_BYTES // 16
RECV_CHUNK = 64 * 1024
# How long a peer may take to deliver one message before we give up on it.
READ_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0
# How often blocking accept/recv loops wake to notice a stop request; only
# affects how quickly threads exit, never how quickly messages are handled.
STOP_POLL_INTERVAL = 0.2
LISTEN_BACKLOG = 128
# After a failed accept (say, out of file descriptors), wait this long.
ACCEPT_RETRY_DELAY = 0.1
# Connections a server holds open at once, read or being answered. A
# legitimate message takes milliseconds from connect to EOF and a cluster has
# tens of workers, so this leaves room for bursts, while keeping open files
# far below the usual limit of 1024. When full, the connection open longest
# (an idle or trickling one) is closed to make room for the new one.
MAX_CONNECTIONS = 256
# Bytes buffered across all the messages still arriving: four messages at
# MAX_MESSAGE_BYTES fit at once. Past it the connection holding the most
# bytes is closed, so connections that never finish cost at most this.
MAX_BUFFERED_BYTES = 64 * 1024 * 1024
# Messages handled at once, each on its own thread. The master's handlers
# may wait (a job submission up to 10 s, a long poll up to 30 s). When all
# are busy the server reads nothing until one frees, leaving the bytes in
# the kernel: a dropped message could not be told from a delivered one.
MAX_HANDLERS = 64
# Connections accepted before the server reads again, so that a burst of new
# connections cannot push out a message that has arrived but is unread.
ACCEPT_BATCH = 32
# Connections closed for a limit are logged at most once per this interval,
# with their count: a flood costs a few lines, not one per connection.
LIMIT_LOG_INTERVAL = 10.0
LOG_BURST = 20  # lines about bad messages per LIMIT_LOG_INTERVAL, per server
MAX_DATAGRAM = 64 * 1024


def _env_float(name, default):
    """Read a positive float setting from the environment (for tests)."""
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        LOG.warning("ignoring %s=%r: not a number", name, value)
        return default
    return number if number > 0 else default


# The spec: a heartbeat every 2 s; a worker that misses more than 5 in a row
# is dead. Tests may shorten the interval with MAPREDUCE_HEARTBEAT_INTERVAL.
HEARTBEAT_INTERVAL = _env_float("MAPREDUCE_HEARTBEAT_INTERVAL", 2.0)
MISSED_HEARTBEATS_LIMIT = 5


class ProtocolError(Exception):
    """A message that is not one the protocol allows, with the reason."""


class NoReply(ProtocolError):
    """The peer read our message and closed without answering (a spec-only master)."""


class NotAuthenticated(ProtocolError):
    """The message lacks a valid signature; or the peer said so of ours (not_authenticated)."""


class MessageTooLarge(ProtocolError):
    """A message over MAX_MESSAGE_BYTES, or holding over MAX_MESSAGE_ITEMS items."""


# Field name -> expected type, per message type. The spec's fields are
# required; OPTIONAL_FIELDS are our additive extensions, checked only when
# present (null counts as absent). bool is refused where int is expected
# (json true is not a port).
STR, INT, STR_LIST, DICT, NUM, BOOL = "string", "int", "list of strings", "object", "number", "bool"

_WORKER_IDENTITY = {"worker_host": STR, "worker_port": INT, "worker_pid": INT}

REQUIRED_FIELDS = {
    "register": _WORKER_IDENTITY,
    "register_ack": _WORKER_IDENTITY,
    "new_master_job": {
        "input_directory": STR,
        "output_directory": STR,
        "mapper_executable": STR,
        "reducer_executable": STR,
        "num_mappers": INT,
        "num_reducers": INT,
    },
    "new_worker_job": {"input_files": STR_LIST, "executable": STR,
                       "output_directory": STR, "worker_pid": INT},
    "new_sort_job": {"input_files": STR_LIST, "output_file": STR, "worker_pid": INT},
    "status": {"status": STR, "worker_pid": INT},
    "heartbeat": {"worker_pid": INT},
    "shutdown": {},
    # Extensions between our client and our master only (never to workers).
    "job_status": {"job_id": INT},
    "cluster_status": {},
    "cancel_job": {"job_id": INT},
    # Our master to whoever sent a heartbeat it cannot place, on UDP, back to
    # the heartbeat's source: our worker registers again (a restarted
    # master); another worker never reads its heartbeat socket.
    "unknown_worker": {"worker_pid": INT},
    # Our master to our worker, the same way: stop this attempt, it no longer
    # counts (its job ended, another copy won, it was given up on).
    "cancel_task": {"worker_pid": INT, "task_id": STR},
}

OPTIONAL_FIELDS = {
    "new_master_job": {
        "input_file": STR, "input_base_name": STR,
        "split_size": INT, "record_size": INT, "output_record_size": INT, "key_size": INT,
        "combiner_executable": STR,
        "partitioner": STR, "task_timeout": NUM, "env": DICT,
        "output_base_name": STR, "max_attempts": INT, "speculative": BOOL,
        "keep_intermediate": BOOL, "shipped_files": DICT, "python_job": STR,
    },
    "new_worker_job": {"timeout": NUM, "context": DICT, "combiner_executable": STR,
                       "sort_output": BOOL, "log_file": STR, "task_label": STR,
                       "attempt_id": INT,
                       "builtin_counters": STR, "record_units": DICT, "records": DICT,
                       "check_record_size": INT},
    "new_sort_job": {"timeout": NUM, "presorted": BOOL, "log_file": STR, "task_label": STR,
                     "records": DICT, "attempt_id": INT},
    "status": {"output_files": STR_LIST, "output_file": STR, "exit_code": INT,
               "error": STR, "stderr_tail": STR, "input_file": STR,
               "counters": DICT, "task_status": STR, "sorted": BOOL, "unfit": BOOL,
               "run_seconds": NUM, "attempt_id": INT},
    "job_status": {"after_version": INT, "wait": NUM},
    # Our worker: random per process, so a restart with the same pid at the
    # same address (pid 1 in a container) is told from a repeated register.
    "register": {"worker_instance": STR},
    # The attempt_id of the task message: an earlier attempt's cancel, repeated
    # after it ended, never stops a later attempt of the same task.
    "cancel_task": {"attempt_id": INT},
}

# The longest time limit a task message's `timeout` (and so a job's
# task_timeout) may give: a week; longer is a mistake, and past
# threading.TIMEOUT_MAX a timer thread dies of OverflowError with no limit.
MAX_TASK_TIMEOUT = 7 * 24 * 3600.0
TIMED_MESSAGES = ("new_worker_job", "new_sort_job")

# Status values on the wire. "finished" is the spec's; "failed" is ours.
FINISHED = "finished"
FAILED = "failed"


def _has_type(value, kind):
    if kind == STR:
        return isinstance(value, str)
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == NUM:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == BOOL:
        return isinstance(value, bool)
    if kind == STR_LIST:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == DICT:
        return isinstance(value, dict)
    raise AssertionError(kind)


def validate(message):
    """Check a decoded message's type and fields; raise ProtocolError if wrong."""
    if not isinstance(message, dict):
        raise ProtocolError(f"expected a JSON object, got {type(message).__name__}")
    kind = message.get("message_type")
    if not isinstance(kind, str):
        raise ProtocolError("missing or non-string 'message_type'")
    if kind not in REQUIRED_FIELDS:
        raise ProtocolError(f"unknown message_type {kind!r}")
    for field, expected in REQUIRED_FIELDS[kind].items():
        if field not in message:
            raise ProtocolError(f"{kind}: missing field {field!r}")
        if not _has_type(message[field], expected):
            raise ProtocolError(f"{kind}: field {field!r} should be a {expected}, "
                                f"got {message[field]!r:.80}")
    for field, expected in OPTIONAL_FIELDS.get(kind, {}).items():
        if field in message and message[field] is None:
            del message[field]  # another implementation's null: the field is absent
        elif field in message and not _has_type(message[field], expected):
            raise ProtocolError(f"{kind}: field {field!r} should be a {expected}, "
                                f"got {message[field]!r:.80}")
    if kind == "status" and "output_files" not in message and "output_file" not in message:
        raise ProtocolError("status: needs 'output_files' or 'output_file'")
    port = message.get("worker_port")
    if kind in ("register", "register_ack") and not 0 < port < 65536:
        raise ProtocolError(f"{kind}: field 'worker_port' out of range 1..65535: {port}")
    timeout = message.get("timeout")
    if kind in TIMED_MESSAGES and timeout is not None and not 0 < timeout <= MAX_TASK_TIMEOUT:
        raise ProtocolError(f"{kind}: field 'timeout' out of range: {timeout!r:.40} s, not "
                            f"above 0 and at most {MAX_TASK_TIMEOUT:g}")
    return message


_signer = None  # an auth.Signer once this process has a secret
REFUSAL_TYPE = "not_authenticated"


def use_secret(secret):
    """Sign every message sent from now on, and drop every one not signed with `secret`."""
    global _signer
    _signer = auth.Signer(secret) if secret else None


def has_secret():
    return _signer is not None


def current_secret():
    """The secret in use (bytes), or None."""
    return _signer.secret if _signer is not None else None


def setup_secret(args, host=None):
    """Use the secret the command line names (auth.add_arguments); False if it cannot.

    `host` is where a listening program binds. Says why in one log line.
    """
    try:
        use_secret(auth.configure(args, host))
    except auth.SecretError as error:
        LOG.error("cannot start: %s", error)
        return False
    if host is not None and args.insecure and _signer is None:
        LOG.warning("--insecure: listening on %s without a secret; anyone who can reach "
                    "it can run programs here", host)
    return True


def encode(message):
    """Serialise a message as compact single-line JSON bytes (signed, with a secret)."""
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    return _signer.seal(body) if _signer else body


def unseal(data):
    """The JSON bytes of what arrived; ProtocolError if its signature is not right."""
    if _signer is not None:
        try:
            return _signer.open(data)
        except auth.AuthError as error:
            raise NotAuthenticated(f"not authenticated: {error}") from None
    if auth.is_signed(data):
        raise NotAuthenticated("not authenticated: signed, but this process has no secret "
                               "(--secret-file)")
    return data


def refusal(error):
    """What a server sends back, unsigned, for a message it refused for its signature: a
    client can tell that from a master that never answers."""
    if _signer is not None:
        error = f"{error}; this process accepts only messages signed with its secret"
    else:
        error = f"{error}; this process has no secret and accepts only unsigned messages"
    return json.dumps({"message_type": REFUSAL_TYPE, "error": str(error)}).encode()


def refusal_reason(data):
    """The reason in an (unsigned) refusal, or None if `data` is something else."""
    if auth.is_signed(data) or not data.startswith(b"{") or REFUSAL_TYPE.encode() not in data:
        return None
    try:
        message = parse_json(data)
    except ProtocolError:
        return None
    if not isinstance(message, dict) or message.get("message_type") != REFUSAL_TYPE:
        return None
    return str(message.get("error"))



def _refuse_constant(name):
    """json's hook for NaN, Infinity and -Infinity, which JSON itself does not have."""
    raise ProtocolError(f"non-finite number {name}: JSON has no NaN, Infinity or -Infinity")


def parse_json(data, what="JSON"):
    """The value of received JSON bytes; ProtocolError if malformed, holding NaN or
    Infinity (which would reach timeouts and waits as numbers), or MessageTooLarge
    if it holds too many items to parse within bounded memory."""
    items = data.count(b"[") + data.count(b"{") + data.count(b",")
    if items > MAX_MESSAGE_ITEMS:
        raise MessageTooLarge(f"{len(data)} bytes of {what} hold {items} items (brackets, "
                              f"braces and commas); at most {MAX_MESSAGE_ITEMS} are parsed")
    try:
        return json.loads(data, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as error:
        raise ProtocolError(f"malformed {what}: {error}") from None
    except RecursionError:
        raise ProtocolError(f"malformed {what}: nested too deeply") from None


def decode(data):
    """Parse and validate one message from raw bytes."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return validate(parse_json(unseal(data)))


def read_until_eof(sock, limit=MAX_MESSAGE_BYTES, deadline=None):
    """Read a connection to EOF; raise MessageTooLarge past `limit` bytes.

    With a `deadline` (time.monotonic()), the whole read must end by then:
    a peer trickling a byte at a time does not hold the connection for ever.
    """
    chunks, size = [], 0
    while True:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("the message did not arrive in time")
            sock.settimeout(remaining)
        chunk = sock.recv(RECV_CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise MessageTooLarge(f"message exceeds {limit} bytes")
        chunks.append(chunk)


def recv_message(sock, deadline=None):
    """Read one message from a connection; None if the peer sent nothing."""
    data = read_until_eof(sock, deadline=deadline)
    if not data.strip():
        return None
    return decode(data)


def send_message(host, port, message, timeout=CONNECT_TIMEOUT, still_wanted=None,
                 source=None, refusal_wait=None):
    """Connect, send one message, close: the spec's one-message-per-connection.

    If `still_wanted()` says no once connected (the connect may have waited
    long), close without sending: an empty connection, which receivers
    ignore. Returns whether the message was sent. With a `source` address,
    the connection is made from it (any port): the receiver sees it as the
    sender's address. With `refusal_wait`, listen that long for a refusal
    (NotAuthenticated) before closing: our process with another secret says so.
    """
    source_address = None if source is None else (source, 0)
    with socket.create_connection((host, port), timeout=timeout,
                                  source_address=source_address) as sock:
        if still_wanted is not None and not still_wanted():
            return False
        sock.sendall(encode(message))
        if refusal_wait is not None:
            _listen_for_refusal(sock, refusal_wait)
    return True


def _listen_for_refusal(sock, seconds):
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(seconds)
        data = read_until_eof(sock, limit=RECV_CHUNK)
    except (OSError, ProtocolError):  # a timeout, a reset, or too much: no refusal
        return
    reason = refusal_reason(data)
    if reason is not None:
        raise NotAuthenticated(reason)


def request(host, port, message, timeout=CONNECT_TIMEOUT, reply_timeout=READ_TIMEOUT):
    """Send a message, half-close, and read the reply on the same connection.

    Used only between our client and our master (see README, "Extensions").
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(encode(message))
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(reply_timeout)
        data = read_until_eof(sock)
    if not data:
        raise NoReply("the master closed the connection without a reply")
    reason = refusal_reason(data)
    if reason is not None:
        raise NotAuthenticated(f"the master refused the message: {reason}")
    return _reply_object(unseal(data))


def _reply_object(data):
    reply = parse_json(data, "reply")
    if not isinstance(reply, dict):
        raise ProtocolError("reply is not a JSON object")
    return reply


def send_with_retry(host, port, message, deadline_seconds, pause=0.05, source=None,
                    refusal_wait=None, stop=None):
    """Send, retrying refused connections until the deadline, or until `stop` (an Event)
    is set; True if sent.

    A NotAuthenticated refusal (see send_message) is raised at once."""
    deadline = time.monotonic() + deadline_seconds
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            send_message(host, port, message, source=source, refusal_wait=refusal_wait)
            return True
        except OSError as error:
            if time.monotonic() >= deadline:
                LOG.warning("could not send %s to %s:%s: %s",
                            message.get("message_type"), host, port, error)
                return False
            stop.wait(pause)
    return False


# --- message constructors: the only place message dicts are spelled out ---

def register(host, port, pid, instance=None):
    message = {"message_type": "register", "worker_host": host,
               "worker_port": port, "worker_pid": pid}
    if instance is not None:
        message["worker_instance"] = instance
    return message


def register_ack(host, port, pid):
    return {"message_type": "register_ack", "worker_host": host,
            "worker_port": port, "worker_pid": pid}


def new_master_job(input_directory, output_directory, mapper_executable,
                   reducer_executable, num_mappers, num_reducers, **extensions):
    message = {"message_type": "new_master_job",
               "input_directory": input_directory,
               "output_directory": output_directory,
               "mapper_executable": mapper_executable,
               "reducer_executable": reducer_executable,
               "num_mappers": num_mappers, "num_reducers": num_reducers}
    message.update({k: v for k, v in extensions.items() if v is not None})
    return message


def new_worker_job(input_files, executable, output_directory, pid, **extensions):
    message = {"message_type": "new_worker_job", "input_files": list(input_files),
               "executable": executable, "output_directory": output_directory,
               "worker_pid": pid}
    message.update({k: v for k, v in extensions.items() if v is not None})
    return message


def new_sort_job(input_files, output_file, pid, **extensions):
    message = {"message_type": "new_sort_job", "input_files": list(input_files),
               "output_file": output_file, "worker_pid": pid}
    message.update({k: v for k, v in extensions.items() if v is not None})
    return message


def status_files(output_files, pid, status=FINISHED, **extensions):
    """A map/reduce task's status: the spec's `output_files` list."""
    message = {"message_type": "status", "output_files": list(output_files),
               "status": status, "worker_pid": pid}
    message.update({k: v for k, v in extensions.items() if v is not None})
    return message


def status_file(output_file, pid, status=FINISHED, **extensions):
    """A sort task's status: the spec's single `output_file`."""
    message = {"message_type": "status", "output_file": output_file,
               "status": status, "worker_pid": pid}
    message.update({k: v for k, v in extensions.items() if v is not None})
    return message


def heartbeat(pid):
    return {"message_type": "heartbeat", "worker_pid": pid}


def shutdown():
    return {"message_type": "shutdown"}


def job_status(job_id, after_version=None, wait=None):
    message = {"message_type": "job_status", "job_id": job_id}
    if after_version is not None:
        message["after_version"] = after_version
    if wait is not None:
        message["wait"] = wait
    return message


def cluster_status():
    return {"message_type": "cluster_status"}


def cancel_job(job_id):
    return {"message_type": "cancel_job", "job_id": job_id}


def heartbeat_port(port):
    """The spec's UDP heartbeat port beside a master's TCP PORT."""
    return port - 1


def output_path(output_directory, input_file):
    """Name a task's output: output_directory + '/' + the input's basename.

    Normalised so that `var/job-0/mapper-output/` and `./var/job-0/...` both
    give `var/job-0/mapper-output/NAME`, the form other masters parse.
    """
    return os.path.join(os.path.normpath(output_directory), os.path.basename(input_file))


def normalize_path(path):
    """The canonical form of a path received on the wire."""
    return os.path.normpath(path)


def parse_address(text, default_host="localhost"):
    """Parse PORT, HOST:PORT or [IPv6]:PORT into (host, port); raise ValueError if bad."""
    host, _, port_text = text.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{port_text!r} is not a port number") from None
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return (host or default_host), port


def port_number(text):
    """An argparse type: a TCP port, 1 to 65535."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1 to 65535)")
    return port


# --- servers ---------------------------------------------------------------

class _Arriving:
    """A connection whose message is still arriving: its bytes so far and its deadline.

    The bytes are kept in pieces of up to RECV_CHUNK, each filled before the
    next is begun: a peer sending a byte at a time costs a byte a byte, not
    an object each, and no large buffer is ever grown by copying.
    """

    __slots__ = ("sock", "chunks", "size", "deadline")

    def __init__(self, sock, deadline):
        self.sock = sock
        self.chunks = []
        self.size = 0
        self.deadline = deadline

    def append(self, data):
        if self.chunks and len(self.chunks[-1]) + len(data) <= RECV_CHUNK:
            self.chunks[-1] += data
        else:
            self.chunks.append(bytearray(data))
        self.size += len(data)


class RateLog:
    """Warnings about bad messages: at most LOG_BURST lines per LIMIT_LOG_INTERVAL.

    The rest are counted, and the count said with the next line logged, so a
    flood (unsigned datagrams cost an attacker nothing) cannot fill the disk.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.window_start = None
        self.lines = 0
        self.suppressed = 0

    def warning(self, text, *args):
        """Log it if within the budget; True if it was logged."""
        now = time.monotonic()
        with self.lock:
            if self.window_start is None or now - self.window_start >= LIMIT_LOG_INTERVAL:
                if self.suppressed:
                    LOG.warning("%d more such message(s) dropped without a log line",
                                self.suppressed)
                self.window_start, self.lines, self.suppressed = now, 0, 0
            if self.lines >= LOG_BURST:
                self.suppressed += 1
                return False
            self.lines += 1
        LOG.warning(text, *args)
        return True


class DropLog:
    """Log connections closed for a limit: the first at once, then counts per interval."""

    def __init__(self, name):
        self.name = name
        self.counts = {}  # reason -> connections dropped since the last line
        self.logged_at = None

    def count(self, reason):
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.flush()

    def flush(self):
        now = time.monotonic()
        if not self.counts or (self.logged_at is not None
                               and now - self.logged_at < LIMIT_LOG_INTERVAL):
            return
        for reason, count in self.counts.items():
            LOG.warning("%s: dropped %d connection(s): %s", self.name, count, reason)
        self.counts.clear()
        self.logged_at = now


class MessageServer:
    """A TCP server, one message per connection: read on one thread, handled on a few.

    One thread accepts every connection and reads them all without blocking,
    each into a buffer of its own, within MAX_CONNECTIONS open,
    MAX_BUFFERED_BYTES across them, MAX_MESSAGE_BYTES per message and
    READ_TIMEOUT for all of it. At EOF the message is decoded and
    `handler(message)` (or `handler(message, peer_ip)` with `with_peer`)
    runs on a thread of its own, at most MAX_HANDLERS at once; if it returns
    a dict, that dict is written back on the connection (our client's
    extension). Empty connections are ignored silently; bad messages are
    logged with the reason and dropped; the server always goes on.
    """

    def __init__(self, host, port, handler, name, with_peer=False):
        self.handler = handler
        self.with_peer = with_peer
        self.name = name
        self.stopping = threading.Event()
        self.sock = socket.create_server((host, port), backlog=LISTEN_BACKLOG)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.sock, selectors.EVENT_READ)
        self.thread = threading.Thread(target=self.serve, name=f"{name}-tcp", daemon=True)
        self.arriving = {}  # _Arriving -> None, in accept order: the oldest first
        self.buffered = 0  # bytes held across self.arriving
        self.accept_failing = False
        self.accept_paused_until = None  # after a failed accept, a time.monotonic()
        self.dropped = DropLog(name)
        self.bad = RateLog()  # lines about bad messages
        self.slots = threading.BoundedSemaphore(MAX_HANDLERS)
        self.handling = set()  # running handler threads
        self.lock = threading.Lock()
        self.scratch = memoryview(bytearray(RECV_CHUNK))  # every read lands here first

    def start(self):
        self.thread.start()
        return self

    def stop(self, join_timeout=2.0):
        """Stop serving; join the server thread and every handler thread."""
        self.stopping.set()
        self.thread.join(join_timeout)
        with self.lock:
            pending = [t for t in self.handling if t is not threading.current_thread()]
        for thread in pending:
            thread.join(join_timeout)

    # --- the server thread ---------------------------------------------------

    def serve(self):
        while not self.stopping.is_set():
            try:
                self.serve_once()
            except Exception:  # a bug here must not stop the server
                LOG.exception("%s: error in the server loop", self.name)
                self.stopping.wait(ACCEPT_RETRY_DELAY)
        self.close()

    def serve_once(self):
        for key, _ in self.selector.select(self.poll_timeout()):
            if key.fileobj is self.sock:
                self.accept()
            elif key.data in self.arriving:  # not dropped earlier in this round
                self.read(key.data)
        self.expire()
        self.resume_accepting()
        self.dropped.flush()

    def poll_timeout(self):
        if self.accept_paused_until is None:
            return STOP_POLL_INTERVAL
        return min(STOP_POLL_INTERVAL, max(0.0, self.accept_paused_until - time.monotonic()))

    def close(self):
        for conn in list(self.arriving):
            self.discard(conn)
        self.selector.close()
        self.sock.close()

    def accept(self):
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = self.sock.accept()
            except BlockingIOError:
                return
            except OSError as error:
                self.pause_accepting(error)
                return
            if self.accept_failing:
                LOG.info("%s: accepting connections again", self.name)
            self.accept_failing = False
            self.admit(sock)

    def pause_accepting(self, error):
        """Out of file descriptors, say: wait for connections to close, quietly."""
        if not self.accept_failing:
            LOG.error("%s: accept failed: %s; retrying", self.name, error)
        self.accept_failing = True
        self.selector.unregister(self.sock)
        self.accept_paused_until = time.monotonic() + ACCEPT_RETRY_DELAY

    def resume_accepting(self):
        if self.accept_paused_until is not None and time.monotonic() >= self.accept_paused_until:
            self.accept_paused_until = None
            self.selector.register(self.sock, selectors.EVENT_READ)

    def admit(self, sock):
        """Take a new connection, closing the oldest if at the limit; read what it sent."""
        while self.arriving and self.open_connections() >= MAX_CONNECTIONS:
            self.drop(next(iter(self.arriving)),
                      f"open longest, at the limit of {MAX_CONNECTIONS} open connections")
        conn = _Arriving(sock, time.monotonic() + READ_TIMEOUT)
        try:
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, conn)
        except (OSError, ValueError) as error:
            LOG.error("%s: dropped a connection: %s", self.name, error)
            sock.close()
            return
        self.arriving[conn] = None
        self.read(conn)  # a message sent right after connecting is usually here already

    def open_connections(self):
        with self.lock:
            return len(self.arriving) + len(self.handling)

    def read(self, conn):
        """Read what has arrived on a connection; at EOF, pass its message on."""
        try:
            count = conn.sock.recv_into(self.scratch)
        except BlockingIOError:
            return
        except OSError as error:  # e.g. reset by the peer
            if conn.size:
                self.drop(conn, f"failed before the end of a message: {error}")
            else:
                self.discard(conn)  # as good as an empty connection
            return
        if not count:
            self.finish(conn)
            return
        conn.append(self.scratch[:count])
        self.buffered += count
        if conn.size > MAX_MESSAGE_BYTES:
            self.discard(conn)
            LOG.warning("%s: dropped a message: message exceeds %d bytes",
                        self.name, MAX_MESSAGE_BYTES)
            return
        self.keep_within_budget()

    def keep_within_budget(self):
        while self.buffered > MAX_BUFFERED_BYTES:
            largest = max(self.arriving, key=lambda conn: conn.size)
            self.drop(largest, f"held the most bytes, at the limit of "
                               f"{MAX_BUFFERED_BYTES // 2**20} MiB buffered across connections")

    def expire(self):
        """Drop connections whose message did not arrive in READ_TIMEOUT.

        Deadlines grow in accept order (a wait for a handler moves them all
        on alike), so only the oldest connections need looking at.
        """
        now = time.monotonic()
        while self.arriving:
            oldest = next(iter(self.arriving))
            if oldest.deadline > now:
                return
            self.drop(oldest, f"no complete message within {READ_TIMEOUT:g} s")

    def drop(self, conn, reason):
        """Close a connection for a limit; the log gets a count per interval."""
        self.discard(conn)
        self.dropped.count(reason)

    def discard(self, conn):
        self.forget(conn)
        conn.sock.close()

    def forget(self, conn):
        """Stop reading a connection; return its chunks, which leave the budget."""
        self.selector.unregister(conn.sock)
        del self.arriving[conn]
        chunks, conn.chunks = conn.chunks, None
        self.buffered -= conn.size
        return chunks

    def finish(self, conn):
        """The peer has sent all: decode its message and hand it to a handler."""
        data = b"".join(self.forget(conn))
        message = None if not data or data.isspace() else self.parse(data, conn)
        del data  # a large message's bytes are not kept while it is handled
        if message is None:
            conn.sock.close()
        else:
            self.dispatch(conn.sock, message)

    def parse(self, data, conn):
        """Decode a message; None (and a log line naming its sender) if it is bad."""
        sock = conn.sock
        try:
            return decode(data)
        except ProtocolError as error:
            self.bad.warning("%s: dropped a message from %s: %s", self.name,
                             _peer_address(sock), error)
            if isinstance(error, NotAuthenticated):
                try:  # a few bytes into an empty socket buffer: never blocks
                    sock.send(refusal(error))
                except OSError:
                    pass
        except Exception as error:  # e.g. MemoryError: drop it, keep serving
            LOG.error("%s: dropped a message from %s: %s: %s", self.name,
                      _peer_address(sock), type(error).__name__, error)
        return None

    def dispatch(self, sock, message):
        """Run the handler on a thread of its own, once a handler slot is free."""
        if not self.wait_for_slot():
            sock.close()
            return
        thread = threading.Thread(target=self.answer, args=(sock, message),
                                  name=f"{self.name}-handler", daemon=True)
        with self.lock:
            self.handling.add(thread)
        try:
            thread.start()
        except RuntimeError as error:  # no thread to be had: drop this one, go on
            LOG.error("%s: dropped a %s: %s", self.name, message["message_type"], error)
            with self.lock:
                self.handling.discard(thread)
            self.slots.release()
            sock.close()

    def wait_for_slot(self):
        """Wait for a free handler slot; False if the server stops first.

        Meanwhile nothing is read: senders' bytes wait in the kernel. The
        delay is ours, not the senders', so their deadlines move on by it.
        """
        if self.slots.acquire(blocking=False):
            return True
        began = time.monotonic()
        while not self.slots.acquire(timeout=STOP_POLL_INTERVAL):
            if self.stopping.is_set():
                return False
        waited = time.monotonic() - began
        for conn in self.arriving:
            conn.deadline += waited
        return True

    # --- handler threads -----------------------------------------------------

    def answer(self, sock, message):
        try:
            with sock:
                self.respond(sock, message)
        finally:
            with self.lock:
                self.handling.discard(threading.current_thread())
            self.slots.release()

    def respond(self, sock, message):
        try:
            if self.with_peer:
                reply = self.handler(message, _peer_address(sock))
            else:
                reply = self.handler(message)
        except Exception:  # one bad message must never stop the server
            LOG.exception("%s: error handling %s", self.name, message.get("message_type"))
            return
        if reply is not None:
            try:
                sock.settimeout(READ_TIMEOUT)
                sock.sendall(encode(reply))
            except OSError:
                pass  # the sender did not wait for a reply; that is allowed


def _peer_address(sock):
    """The IP a connection comes from, or None once it is gone."""
    try:
        return sock.getpeername()[0]
    except OSError:
        return None


class HeartbeatListener:
    """A UDP server for heartbeats: each valid one is passed to `on_heartbeat`."""

    def __init__(self, host, port, on_heartbeat, name):
        self.on_heartbeat = on_heartbeat
        self.name = name
        self.stopping = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.settimeout(STOP_POLL_INTERVAL)
        self.bad = RateLog()
        self.thread = threading.Thread(target=self.serve, name=f"{name}-udp", daemon=True)

    def start(self):
        self.thread.start()
        return self

    def serve(self):
        while not self.stopping.is_set():
            try:
                data, sender = self.sock.recvfrom(MAX_DATAGRAM)
            except socket.timeout:
                continue
            except OSError:
                if self.stopping.is_set():
                    break
                continue
            try:
                self.process(data, sender)
            except Exception:  # one datagram must never stop heartbeat handling
                LOG.exception("%s: error handling a datagram", self.name)
        self.sock.close()

    def process(self, data, sender):
        try:
            message = decode(data)
        except ProtocolError as error:
            logged = self.bad.warning("%s: dropped a datagram from %s:%s: %s", self.name,
                                      *sender[:2], error)
            if logged and isinstance(error, NotAuthenticated):  # as rare as the log lines
                self.reply_raw(refusal(error), sender)
            return
        if message["message_type"] != "heartbeat":
            LOG.warning("%s: dropped a %s on the heartbeat port",
                        self.name, message["message_type"])
            return
        self.on_heartbeat(message["worker_pid"], sender)

    def reply(self, address, message):
        """Send a datagram back to a heartbeat's sender; best effort, as UDP is."""
        self.reply_raw(encode(message), address)

    def reply_raw(self, data, address):
        try:
            self.sock.sendto(data, address)
        except OSError as error:
            LOG.warning("%s: could not answer %s: %s", self.name, address, error)

    def stop(self, join_timeout=2.0):
        self.stopping.set()
        self.thread.join(join_timeout)


def unknown_worker(pid):
    return {"message_type": "unknown_worker", "worker_pid": pid}


def cancel_task(pid, task_id, attempt_id=None):
    message = {"message_type": "cancel_task", "worker_pid": pid, "task_id": task_id}
    if attempt_id is not None:
        message["attempt_id"] = attempt_id
    return message


def task_id(output_paths):
    """A short name for a task both master and worker compute: its outputs, however spelled."""
    key = "\n".join(sorted(os.path.abspath(p) for p in output_paths))
    return hashlib.sha1(os.fsencode(key)).hexdigest()[:20]


_bad_datagrams = RateLog()


def receive_datagrams(sock):
    """The valid messages waiting on a non-blocking UDP socket, without waiting.

    An unsigned refusal (see refusal()) comes as a not_authenticated message.
    """
    messages = []
    while True:
        try:
            data, sender = sock.recvfrom(MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return messages
        except OSError:  # e.g. ICMP port unreachable from an earlier send
            continue
        reason = refusal_reason(data)
        if reason is not None:  # unsigned: the master's, or anyone's
            messages.append({"message_type": REFUSAL_TYPE, "error": reason})
            continue
        try:
            messages.append(decode(data))
        except ProtocolError as error:
            _bad_datagrams.warning("dropped a datagram from %s:%s: %s", *sender[:2], error)


def send_heartbeat(sock, host, port, pid):
    """Send one heartbeat datagram on an existing UDP socket."""
    sock.sendto(encode(heartbeat(pid)), (host, port))


def printable(text):
    """Text made safe for a terminal or a log line: control characters (newlines, escape
    sequences, bidi overrides) as Python escapes, e.g. \\x1b; tabs kept."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\t" else repr(c)[1:-1] for c in text)


# A traceback's lines follow its record indented by this: every line that
# starts at the margin starts a record, whatever an exception's text says.
TRACEBACK_INDENT = "    "


class PrintableFormatter(logging.Formatter):
    """One line per record: what the message carries from peers and users (paths,
    programs' stderr) cannot end the line, forge another or drive the terminal."""

    def formatMessage(self, record):
        record.message = printable(record.message)
        return super().formatMessage(record)

    def formatException(self, ei):
        return self.indented(super().formatException(ei))

    def formatStack(self, stack_info):
        return self.indented(super().formatStack(stack_info))

    @staticmethod
    def indented(text):
        return "\n".join(TRACEBACK_INDENT + printable(line) for line in text.split("\n"))


def configure_logging(name, level=None):
    """Log to stderr with timestamps, one line per record; level from MAPREDUCE_LOG_LEVEL."""
    level = level or os.environ.get("MAPREDUCE_LOG_LEVEL", "INFO")
    handler = logging.StreamHandler()
    handler.setFormatter(PrintableFormatter(
        f"%(asctime)s {name}[%(process)d] %(levelname)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("sh").setLevel(logging.WARNING)  # it logs every process start
