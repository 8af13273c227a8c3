"""Shared-secret authentication of messages between our own processes.

With a secret, every message (TCP or UDP) travels as one header line and
the spec's JSON bytes after it:

    MRAUTH1 <time in ms> <nonce, 32 hex digits> <HMAC-SHA256, 64 hex digits>\\n<JSON>

The HMAC is keyed with the secret and covers everything but itself: the
magic word, time, nonce and the JSON bytes exactly as sent. A receiver drops
a message that is unsigned, wrongly signed, further than MAX_CLOCK_SKEW from
its own clock, or whose nonce it has seen within that window (a replay).
Without a secret nothing is added: the wire is byte-for-byte the spec's.

What it protects: who may submit, run tasks, read status and shut down. What
it does not: the data is not encrypted (use a private network or a tunnel),
and a message captured on its way to one of our processes can be replayed to
another within the window (a task message names its worker's pid, which
other workers refuse).
"""
import hashlib
import hmac
import ipaddress
import os
import shlex
import socket
import stat
import threading
import time

MAGIC = b"MRAUTH1"
NONCE_BYTES = 16
MAC_HEX_DIGITS = 64
# The largest difference between sender's and receiver's clocks (and travel
# time) a message may show; also how long nonces are remembered.
MAX_CLOCK_SKEW = 60.0
# The variable naming a secret file for every program when no --secret-file
# is given.
SECRET_FILE_VARIABLE = "MAPREDUCE_SECRET_FILE"
MIN_SECRET_BYTES = 16
MAX_SECRET_BYTES = 4096  # a secret file is a few dozen bytes; more is the wrong file
# A time stamp: milliseconds since the epoch, in plain digits.
MAX_STAMP_DIGITS = 16
# Permission bits a secret file may not have: read, write or execute for its
# group or others. Like ssh with a private key, we refuse such a file rather
# than sign with a secret others may read (or replace).
SHARED_MODE_BITS = 0o077
# Messages stamped this long before the process started are refused: its
# nonce cache is new, so it could not tell a replay of them.
START_SLACK = 1.0


class AuthError(Exception):
    """A message that must be dropped: the text says why."""


class SecretError(Exception):
    """The secret file cannot be used: the text names it and why."""


def read_secret(path):
    """The secret in the regular file at `path` (surrounding whitespace ignored)."""
    try:  # non-blocking: a FIFO must not hang the start
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        raise SecretError(f"cannot read the secret file {path}: {error.strerror}") from None
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise SecretError(f"the secret file {path} is not a regular file")
        refuse_shared(path, status.st_mode)
        if status.st_size > MAX_SECRET_BYTES:
            raise SecretError(f"the secret file {path} is {status.st_size} bytes; a secret "
                              f"is at most {MAX_SECRET_BYTES} (is it the right file?)")
        secret = os.read(descriptor, MAX_SECRET_BYTES + 1).strip()
    except OSError as error:
        raise SecretError(f"cannot read the secret file {path}: {error.strerror}") from None
    finally:
        os.close(descriptor)
    if not secret:
        raise SecretError(f"the secret file {path} is empty")
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretError(f"the secret in {path} is {len(secret)} bytes; "
                          f"use at least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)")
    return secret


def refuse_shared(path, mode):
    """SecretError if a secret file's mode lets its group or others at it."""
    if mode & SHARED_MODE_BITS:
        raise SecretError(f"the secret file {path} has mode {stat.S_IMODE(mode):04o}: its group "
                          f"or others have access to it. Make it its owner's only: "
                          f"chmod 600 {shlex.quote(str(path))}")


def secret_path(given):
    """--secret-file if given, else the environment's MAPREDUCE_SECRET_FILE, else None."""
    if given is not None:
        if not given:
            raise SecretError("--secret-file is empty: give the path of the secret file")
        return given
    return os.environ.get(SECRET_FILE_VARIABLE) or None


def is_signed(data):
    return data.startswith(MAGIC + b" ")


class Signer:
    """Seals outgoing messages and opens incoming ones with one secret."""

    def __init__(self, secret, clock=time.time):
        self.secret = secret
        self.clock = clock
        self.started = clock()
        self.seen = {}  # nonce -> when it may be forgotten
        self.lock = threading.Lock()
        self.next_sweep = 0.0

    def mac(self, signed_part):
        return hmac.new(self.secret, signed_part, hashlib.sha256).hexdigest().encode()

    def seal(self, body):
        stamp = str(int(self.clock() * 1000)).encode()
        nonce = os.urandom(NONCE_BYTES).hex().encode()
        head = MAGIC + b" " + stamp + b" " + nonce
        return head + b" " + self.mac(head + b"\n" + body) + b"\n" + body

    def open(self, data):
        """The JSON bytes of a sealed message; AuthError if it must be dropped."""
        if not is_signed(data):
            raise AuthError("unsigned (this process has a secret)")
        header, newline, body = data.partition(b"\n")
        fields = header.split(b" ")
        if not newline or len(fields) != 4 or len(fields[3]) != MAC_HEX_DIGITS:
            raise AuthError("malformed signature header")
        _, stamp, nonce, mac = fields
        head = b" ".join(fields[:3])
        if not hmac.compare_digest(self.mac(head + b"\n" + body), mac):
            raise AuthError("wrong signature (another secret?)")
        if not (stamp.isdigit() and stamp.isascii() and len(stamp) <= MAX_STAMP_DIGITS):
            raise AuthError("malformed time in the signature header")
        sent = int(stamp) / 1000
        now = self.clock()
        if now - sent > MAX_CLOCK_SKEW:
            raise AuthError(f"signed {now - sent:.0f} s ago, outside the "
                            f"{MAX_CLOCK_SKEW:g} s window (clocks apart, or a replay)")
        if sent - now > MAX_CLOCK_SKEW:
            raise AuthError(f"signed {sent - now:.0f} s in the future, outside the "
                            f"{MAX_CLOCK_SKEW:g} s window (clocks apart)")
        if sent < self.started - START_SLACK:
            raise AuthError("signed before this process started (a replay, or clocks apart)")
        self.remember(nonce, now)
        return body

    def remember(self, nonce, now):
        with self.lock:
            if now >= self.next_sweep:
                self.seen = {n: t for n, t in self.seen.items() if t > now}
                self.next_sweep = now + MAX_CLOCK_SKEW
            if nonce in self.seen:
                raise AuthError("replayed (its nonce was seen already)")
            self.seen[nonce] = now + 2 * MAX_CLOCK_SKEW


# --- command lines ---------------------------------------------------------------

def add_arguments(parser, listens):
    """--secret-file for every program; --insecure for those that listen."""
    parser.add_argument("--secret-file", metavar="PATH",
                        help=f"sign and check every message with the secret in PATH "
                             f"(default: ${SECRET_FILE_VARIABLE} if set)")
    if listens:
        parser.add_argument("--insecure", action="store_true",
                            help="listen on a non-loopback address without a secret: anyone "
                                 "who reaches the port can run programs here")


def is_loopback(host):
    """True if every address `host` names is a loopback one."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    return bool(found) and all(ipaddress.ip_address(entry[4][0].split("%")[0]).is_loopback
                               for entry in found)


def configure(args, host=None):
    """The secret the command line asks for (None for none); SecretError if unusable.

    A program that listens on `host` refuses a non-loopback address without a
    secret, unless --insecure.
    """
    path = secret_path(args.secret_file)
    secret = read_secret(path) if path else None
    if host is not None and secret is None and not args.insecure and not is_loopback(host):
        raise SecretError(
            f"refusing to listen on {host} without a secret: anyone who can reach it could "
            f"run programs on this machine. Give --secret-file PATH (the same secret to the "
            f"master, every worker and send_job.py; see README, 'Running on several "
            f"machines'), or --insecure to listen anyway")
    return secret
