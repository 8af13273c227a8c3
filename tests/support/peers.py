"""Fake peers: processes of another implementation, played over loopback sockets.

Two families, for two kinds of test:

- FakeWorker, FakeWorkerPool and FakeMaster (tests/test_conformance.py) speak
  the 2017 spec over raw sockets and share no protocol code with helper.py:
  every message is spelled out field by field, sent the way another
  implementation typically would (json.dumps with its default separators,
  one object per connection), and what our processes send is checked to be
  compact single-line JSON, one object per connection, read to EOF.
- ScriptedWorker (tests/test_reliability.py) plays a worker through
  helper.py's protocol code: it registers and heartbeats, and takes and
  answers tasks only when the test says so.
"""
import json
import queue
import socket
import subprocess
import threading
import time

import helper
from support.localcluster import listening

# The longest any one expected message may take to arrive.
MESSAGE_TIMEOUT = 15.0
# How often receiver threads wake to notice they should stop.
STOP_POLL = 0.1
MAX_DATAGRAM = 64 * 1024
RECV_CHUNK = 64 * 1024
# Fake workers need ids only: the master never signals a worker's pid.
FAKE_PID_BASE = 70001


# --- the wire ------------------------------------------------------------------

def send_json(port, message):
    """Send one message as another implementation would: connect, sendall, close."""
    with socket.create_connection(("localhost", port), timeout=MESSAGE_TIMEOUT) as sock:
        sock.sendall(json.dumps(message).encode())


def read_to_eof(conn):
    """A connection's bytes up to EOF (or what came before a stalled peer's timeout)."""
    chunks = []
    try:
        while chunk := conn.recv(RECV_CHUNK):
            chunks.append(chunk)
    except socket.timeout:
        pass
    return b"".join(chunks)


def parse_wire(raw):
    """Decode bytes our process sent; assert they are one compact single-line JSON object."""
    message = json.loads(raw)
    assert isinstance(message, dict), raw
    assert raw == json.dumps(message, separators=(",", ":")).encode(), \
        f"not compact single-line JSON: {raw!r}"
    return message


def assert_same_message(actual, expected):
    """Same keys, same values and same JSON types (5 is not 5.0 nor true)."""
    assert actual == expected
    assert {k: type(v) for k, v in actual.items()} == {k: type(v) for k, v in expected.items()}


def poll(source, timeout):
    """The next item of a queue, or None if none comes within `timeout` seconds."""
    try:
        return source.get(timeout=timeout)
    except queue.Empty:
        return None


# --- listening -----------------------------------------------------------------

class Receiver:
    """A loopback socket whose thread passes every message's raw bytes to `deliver`."""

    def __init__(self, sock, deliver):
        self.sock = sock
        self.sock.settimeout(STOP_POLL)
        self.port = sock.getsockname()[1]
        self.deliver = deliver
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stopping.is_set():
            try:
                raw = self.receive()
            except socket.timeout:
                continue
            self.deliver(raw)

    def receive(self):
        raise NotImplementedError

    def close(self):
        self.stopping.set()
        self.thread.join()
        self.sock.close()


class TcpReceiver(Receiver):
    """One message per connection, read to EOF, one connection at a time."""

    def __init__(self, port, deliver):
        super().__init__(socket.create_server(("localhost", port)), deliver)

    def receive(self):
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(MESSAGE_TIMEOUT)
            return read_to_eof(conn)


class UdpReceiver(Receiver):
    """One message per datagram."""

    def __init__(self, port, deliver):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("localhost", port))
        self.sender = None  # of the last datagram
        super().__init__(sock, deliver)

    def receive(self):
        raw, self.sender = self.sock.recvfrom(MAX_DATAGRAM)
        return raw


# --- a foreign worker against our master --------------------------------------------

class FakeWorker:
    """Another implementation's worker: listens, registers, heartbeats, nothing more."""

    def __init__(self, master_port, pid, inbox, receiver=TcpReceiver):
        self.master_port = master_port
        self.pid = pid
        self.server = receiver(0, lambda raw: inbox.put((self, raw)))
        self.port = self.server.port
        self.stopping = threading.Event()
        self.heartbeats = threading.Thread(target=self.heartbeat_loop, daemon=True)

    def register(self):
        self.send({"message_type": "register", "worker_host": "localhost",
                   "worker_port": self.port, "worker_pid": self.pid})

    def send(self, message):
        send_json(self.master_port, message)

    def heartbeat_loop(self):
        beat = json.dumps({"message_type": "heartbeat", "worker_pid": self.pid}).encode()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            while True:
                sock.sendto(beat, ("localhost", self.master_port - 1))
                # The master under test expects the interval its helper was given.
                if self.stopping.wait(helper.HEARTBEAT_INTERVAL):
                    return

    def close(self):
        self.stopping.set()
        if self.heartbeats.is_alive():
            self.heartbeats.join()
        self.server.close()


class FakeWorkerPool:
    """Fake workers of one master, sharing an inbox so messages are seen in arrival order."""

    def __init__(self, master_port):
        self.master_port = master_port
        self.inbox = queue.Queue()
        self.workers = []

    def add(self, receiver=TcpReceiver):
        """A new fake worker, listening but not registered."""
        fake = FakeWorker(self.master_port, FAKE_PID_BASE + len(self.workers), self.inbox,
                          receiver)
        self.workers.append(fake)
        return fake

    def join(self, receiver=TcpReceiver):
        """Start a fake worker, register it, check its register_ack, start its heartbeats."""
        fake = self.add(receiver)
        fake.register()
        sender, ack = self.next_message()
        assert sender is fake
        assert_same_message(ack, {"message_type": "register_ack", "worker_host": "localhost",
                                  "worker_port": fake.port, "worker_pid": fake.pid})
        fake.heartbeats.start()
        return fake

    def next_message(self, timeout=MESSAGE_TIMEOUT):
        """(fake worker, message) for the next message the master sent to any of them."""
        received = poll(self.inbox, timeout)
        assert received is not None, f"no message from the master within {timeout} s"
        fake, raw = received
        return fake, parse_wire(raw)

    def close(self):
        for fake in self.workers:
            fake.close()


# --- a foreign master against our worker -------------------------------------------

class FakeMaster:
    """Another implementation's master: TCP on PORT, heartbeats on UDP PORT-1."""

    def __init__(self, port, worker_port):
        self.port = port
        self.worker_port = worker_port
        self.messages = queue.Queue()
        self.heartbeats = queue.Queue()
        # Probed when the first message (register) arrives, before it is even parsed.
        self.worker_listening_at_register = None
        self.tcp = TcpReceiver(port, self.on_message)
        self.udp = UdpReceiver(port - 1,
                               lambda raw: self.heartbeats.put((time.monotonic(), raw)))
        self.worker = None
        self.workdir = None

    def on_message(self, raw):
        if self.worker_listening_at_register is None:
            self.worker_listening_at_register = listening(self.worker_port)
        self.messages.put(raw)

    def next_message(self, timeout=MESSAGE_TIMEOUT):
        raw = poll(self.messages, timeout)
        assert raw is not None, f"no message from the worker within {timeout} s"
        return parse_wire(raw)

    def next_heartbeat(self, timeout=MESSAGE_TIMEOUT):
        """(arrival time, heartbeat) of the next heartbeat."""
        received = poll(self.heartbeats, timeout)
        assert received is not None, f"no heartbeat within {timeout} s"
        arrived, raw = received
        return arrived, parse_wire(raw)

    def send(self, message):
        send_json(self.worker_port, message)

    def send_datagram(self, message):
        """A datagram from PORT-1 to where the heartbeats come from (as our master's)."""
        self.udp.sock.sendto(json.dumps(message).encode(), self.udp.sender)

    def send_cancel(self, task_id, attempt_id):
        """Our master's cancel_task (an extension) to the worker's heartbeat socket."""
        self.send_datagram({"message_type": "cancel_task", "worker_pid": self.worker.pid,
                            "task_id": task_id, "attempt_id": attempt_id})

    def heartbeats_after(self, moment, count):
        """Wait for `count` heartbeats sent after `moment` (time.monotonic())."""
        while count:
            arrived, _ = self.next_heartbeat()
            count -= arrived > moment

    def ack(self, register):
        self.send({"message_type": "register_ack", "worker_host": register["worker_host"],
                   "worker_port": register["worker_port"], "worker_pid": register["worker_pid"]})

    def close(self):
        self.tcp.close()
        self.udp.close()


# --- one of our workers, played by the test -----------------------------------------

class ScriptedWorker:
    """A scripted worker over raw sockets: it takes tasks and answers when told."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.sock = socket.create_server(("localhost", 0))
        self.sock.settimeout(10)
        self.port = self.sock.getsockname()[1]
        self.pid = 4_000_000 + self.port  # no real process has it
        self.beating = threading.Event()
        self.beating.set()
        self.thread = threading.Thread(target=self.heartbeat_loop, daemon=True)

    def register(self):
        helper.send_message("localhost", self.cluster.port,
                            helper.register("localhost", self.port, self.pid))
        assert self.receive()["message_type"] == "register_ack"
        self.thread.start()

    def heartbeat_loop(self):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            while self.beating.is_set():
                helper.send_heartbeat(udp, "localhost", helper.heartbeat_port(self.cluster.port),
                                      self.pid)
                time.sleep(0.1)

    def receive(self):
        conn, _ = self.sock.accept()
        with conn:
            return helper.recv_message(conn)

    def run_task(self, message):
        """Do a map task for real, in the master's working directory."""
        outputs = []
        for path in message["input_files"]:
            target = self.cluster.workdir / helper.output_path(message["output_directory"], path)
            with open(path, "rb") as stdin, open(target, "wb") as stdout:
                subprocess.run([message["executable"]], stdin=stdin, stdout=stdout, check=True)
            outputs.append(helper.output_path(message["output_directory"], path))
        return outputs

    def close(self):
        self.beating.clear()
        self.sock.close()
