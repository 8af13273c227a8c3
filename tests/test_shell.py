"""The master's shell in-process: couriers deliver task messages and end when idle."""
import queue
import socket
import threading

import pytest

import helper
import master
from mrlib.events import Delivered
from support.localcluster import wait_until

pytestmark = pytest.mark.timeout(30)

IDLE = 0.2  # seconds a courier waits for more work before its thread ends


class Listener:
    """A worker's TCP port that reads every connection to EOF and keeps the messages."""

    def __init__(self):
        self.sock = socket.create_server(("localhost", 0))
        self.port = self.sock.getsockname()[1]
        self.messages = queue.Queue()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b"".join(iter(lambda: conn.recv(65536), b""))
            self.messages.put(helper.decode(data))

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def couriers():
    events = queue.Queue()
    stopping = threading.Event()
    couriers = master.Couriers(set(), events.put, stopping, idle=IDLE)
    couriers.events = events
    yield couriers
    stopping.set()
    couriers.close()
    couriers.join(5)
    assert not couriers.threads()


def delivered(couriers):
    event = couriers.events.get(timeout=10)
    assert isinstance(event, Delivered), event
    return event.attempt


def test_an_idle_courier_ends_and_the_next_task_starts_another(couriers):
    listener = Listener()
    try:
        couriers.send("localhost", listener.port, 1, helper.shutdown())
        assert delivered(couriers) == 1
        wait_until(lambda: not couriers.threads(), timeout=10, what="the idle courier to end")
        couriers.send("localhost", listener.port, 2, helper.shutdown())
        assert delivered(couriers) == 2
        wait_until(lambda: listener.messages.qsize() == 2, timeout=10, what="both messages")
    finally:
        listener.close()


def test_retired_couriers_are_not_kept(couriers):
    listeners = [Listener() for _ in range(3)]
    try:
        for number, listener in enumerate(listeners):
            couriers.send("localhost", listener.port, number, helper.shutdown())
            delivered(couriers)
        wait_until(lambda: not couriers.threads(), timeout=10, what="idle couriers to end")
        couriers.send("localhost", listeners[0].port, 9, helper.shutdown())
        assert delivered(couriers) == 9
        assert len(couriers.by_address) == 1
    finally:
        for listener in listeners:
            listener.close()
