"""Signing and checking messages with a shared secret (mrlib/auth.py), in-process."""
import os

import pytest

import helper
from mrlib import auth
from support.localcluster import SECRET_MODE

pytestmark = pytest.mark.timeout(30)

SECRET = b"s" * 32
OTHER_SECRET = b"o" * 32
BODY = helper.encode(helper.heartbeat(7))  # no secret in use here: the spec's bytes


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


def test_a_sealed_message_opens_to_its_exact_bytes():
    signer = auth.Signer(SECRET)
    assert signer.open(signer.seal(BODY)) == BODY


@pytest.mark.parametrize("tamper, reason", [
    (lambda data: BODY, "unsigned"),
    (lambda data: data[:-2] + b"8}", "wrong signature"),
    (lambda data: data.replace(b" ", b"  ", 1), "malformed"),
    (lambda data: data.split(b"\n")[0], "malformed"),
])
def test_a_changed_or_unsigned_message_is_refused(tamper, reason):
    signer = auth.Signer(SECRET)
    with pytest.raises(auth.AuthError, match=reason):
        signer.open(tamper(signer.seal(BODY)))


def test_another_secret_is_refused():
    with pytest.raises(auth.AuthError, match="wrong signature"):
        auth.Signer(SECRET).open(auth.Signer(OTHER_SECRET).seal(BODY))


def test_a_replay_is_refused_and_so_is_an_old_message():
    clock = Clock()
    sender, receiver = auth.Signer(SECRET, clock), auth.Signer(SECRET, clock)
    sealed = sender.seal(BODY)
    receiver.open(sealed)
    with pytest.raises(auth.AuthError, match="replayed"):
        receiver.open(sealed)
    old = sender.seal(BODY)
    clock.now += auth.MAX_CLOCK_SKEW + 1
    with pytest.raises(auth.AuthError, match="window"):
        receiver.open(old)


def test_nonces_are_forgotten_only_after_their_message_is_too_old_anyway():
    clock = Clock()
    sender, receiver = auth.Signer(SECRET, clock), auth.Signer(SECRET, clock)
    sealed = sender.seal(BODY)
    receiver.open(sealed)
    for _ in range(3):
        clock.now += auth.MAX_CLOCK_SKEW / 2
        receiver.open(sender.seal(BODY))  # sweeps
        with pytest.raises(auth.AuthError):
            receiver.open(sealed)


def test_without_a_secret_the_wire_is_the_specs_and_signed_messages_are_refused():
    assert not helper.has_secret()
    assert helper.decode(BODY) == helper.heartbeat(7)
    with pytest.raises(helper.ProtocolError, match="no secret"):
        helper.decode(auth.Signer(SECRET).seal(BODY))


@pytest.mark.parametrize("content, reason", [
    (b"", "is empty"), (b"  \n", "is empty"), (b"short", "at least"),
])
def test_unusable_secret_files_are_named(tmp_path, content, reason):
    path = tmp_path / "secret"
    path.write_bytes(content)
    path.chmod(SECRET_MODE)
    with pytest.raises(auth.SecretError, match=reason) as raised:
        auth.read_secret(path)
    assert str(path) in str(raised.value)


def test_a_missing_secret_file_is_named(tmp_path):
    with pytest.raises(auth.SecretError, match="cannot read") as raised:
        auth.read_secret(tmp_path / "nope")
    assert "nope" in str(raised.value)


@pytest.mark.parametrize("host, loopback", [
    ("localhost", True), ("127.0.0.1", True), ("127.0.0.3", True), ("::1", True),
    ("0.0.0.0", False), ("", False), ("10.1.2.3", False),
])
def test_loopback_addresses(host, loopback):
    assert auth.is_loopback(host) is loopback


def test_a_secret_file_that_is_no_regular_file_or_too_big_is_refused_at_once(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big"
    big.write_bytes(b"x" * (auth.MAX_SECRET_BYTES + 1))
    big.chmod(SECRET_MODE)
    for path, reason in ((fifo, "not a regular file"), (tmp_path, "not a regular file"),
                         (big, "at most")):
        with pytest.raises(auth.SecretError, match=reason):
            auth.read_secret(path)


def test_an_empty_secret_file_option_is_an_error():
    with pytest.raises(auth.SecretError, match="--secret-file is empty"):
        auth.secret_path("")


@pytest.mark.parametrize("stamp", [b"9" * 400, b"+1000", b"1_000", b"", b"-5", "\u0661".encode()])
def test_a_signed_header_with_a_bad_time_is_refused_not_crashed_on(stamp):
    signer = auth.Signer(SECRET)
    head = auth.MAGIC + b" " + stamp + b" " + b"ab" * 16
    forged = head + b" " + signer.mac(head + b"\n" + BODY) + b"\n" + BODY
    with pytest.raises(auth.AuthError, match="malformed"):
        signer.open(forged)


def test_a_message_from_before_the_receiver_started_is_refused():
    """A restarted process has an empty nonce cache: what was signed before it started is old."""
    clock = Clock()
    sender = auth.Signer(SECRET, clock)
    sealed = sender.seal(BODY)
    clock.now += 2 * auth.START_SLACK
    with pytest.raises(auth.AuthError, match="before this process started"):
        auth.Signer(SECRET, clock).open(sealed)


def test_a_message_from_the_future_is_refused():
    clock = Clock()
    sender, receiver = auth.Signer(SECRET, clock), auth.Signer(SECRET, clock)
    clock.now += auth.MAX_CLOCK_SKEW + 1
    early = sender.seal(BODY)
    clock.now -= auth.MAX_CLOCK_SKEW + 1
    with pytest.raises(auth.AuthError, match="in the future"):
        receiver.open(early)
