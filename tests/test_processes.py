"""Fault tests with peers in child processes: kill -9, SIGSTOP/SIGCONT, transmitter restarts.

The peers are ``tests/scripts/receiver.py`` and ``tests/scripts/transmitter.py`` (our hein),
each reporting on its stdout (see :class:`helpers.Peer`). Every wait is bounded; every child is
killed by pid (its process group) at the end of its test.
"""

import threading
import time

import pytest
from helpers import (
    WAIT,
    Collector,
    assert_eventually,
    free_port,
    holds_for,
    wait_registered,
)

pytestmark = pytest.mark.faults


class Streamer:
    """Tells 0, 1, 2, ... from a thread, one message every ``interval`` seconds, until stopped."""

    def __init__(self, transmitter, interval=0.002):
        self.transmitter = transmitter
        self.interval = interval
        self.sent = 0
        self.times = []  # monotonic time of each tell
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-streamer", daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.times.append(time.monotonic())
            self.transmitter.tell(self.sent)
            self.sent += 1
            self._stop.wait(self.interval)  # the stream's pace

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(WAIT)
        return self.sent

    def sent_between(self, start, end):
        return sum(1 for t in self.times if start <= t <= end)


def received(peer):
    return [int(e["repr"]) for e in peer.select("msg")]


def assert_contiguous(peer, first=0):
    values = received(peer)
    assert values == list(range(first, first + len(values))), "%s: gaps or disorder" % peer.label


@pytest.fixture
def streamers():
    running = []
    try:
        yield running
    finally:
        for streamer in running:
            streamer.stop()


def streaming_to(t, peers, streamers, *names):
    """Receiver processes under these names, registered and receiving a numbered stream."""
    hello, dropped = Collector(), Collector()
    t._newconnection, t._dropped = hello, dropped
    procs = {name: peers.start("receiver.py", t.port, name, label=name) for name in names}
    wait_registered(t, list(names))
    streamer = Streamer(t)
    streamers.append(streamer.start())
    for name in names:
        procs[name].wait_count("msg", 50)
    return procs, hello, dropped, streamer


def test_kill_9_of_a_receiver_mid_stream(closer, peers, streamers):
    t = closer.transmitter(5)
    procs, hello, dropped, streamer = streaming_to(
        t, peers, streamers, "steady1", "steady2", "victim"
    )
    procs["victim"].kill()
    killed_at = time.monotonic()
    dropped.wait_for_item(lambda name: name == "victim", timeout=1.0 + 2.0)
    assert dropped.times[dropped.items.index("victim")] - killed_at < 1.0 + 1.0
    assert sorted(t.receivers) == ["steady1", "steady2"]
    # the others go on
    for name in ("steady1", "steady2"):
        procs[name].wait_count("msg", procs[name].count("msg") + 200)
    # it comes back under the same name
    again = peers.start("receiver.py", t.port, "victim", label="victim-again")
    again.wait_count("msg", 50)
    assert hello.items.count("victim") == 2
    sent = streamer.stop()
    for name in ("steady1", "steady2"):
        procs[name].wait_count("msg", sent)
        assert_contiguous(procs[name])
    first = received(again)[0]
    assert_contiguous(again, first)
    assert dropped.items == ["victim"]


def test_transmitter_process_restart(closer, peers):
    port = free_port()
    tx = peers.start("transmitter.py", port, 5, label="tx1")
    names = ["r1", "r2"]
    collectors = [Collector() for _ in names]
    receivers = [
        closer.receiver(port, name, got, connectWait=0.05) for name, got in zip(names, collectors)
    ]
    for name in names:
        tx.wait_event("hello", name=name)
    tx.request("tell", expr="{'n': 1}", tag="one")
    for got in collectors:
        assert got.wait_for_count(1) == [({"n": 1}, "one")]
    tx.kill()  # kill -9, no goodbye
    assert_eventually(lambda: not any(r.connected for r in receivers))
    tx2 = peers.start("transmitter.py", port, 5, label="tx2")
    for name in names:
        tx2.wait_event("hello", name=name)
    tx2.request("tell", expr="{'n': 2}", tag="two")
    for got in collectors:
        assert got.wait_for_count(2) == [({"n": 1}, "one"), ({"n": 2}, "two")]
    # and once more, with a clean close this time
    tx2.request("close")
    tx3 = peers.start("transmitter.py", port, 5, label="tx3")
    for name in names:
        tx3.wait_event("hello", name=name)
    tx3.request("tell_raw", expr="b'three'")
    for got in collectors:
        assert got.wait_for_count(3)[2] == (b"three", None)


def test_sigstopped_receiver_is_dropped_and_comes_back_after_sigcont(closer, peers, streamers):
    timeout_ack = 1.0
    t = closer.transmitter(5, timeoutACK=timeout_ack)
    procs, hello, dropped, streamer = streaming_to(t, peers, streamers, "busy1", "busy2", "sleeper")
    procs["sleeper"].stop()
    stopped_at = time.monotonic()
    dropped.wait_for_item(lambda name: name == "sleeper", timeout=timeout_ack + 3.0)
    dropped_at = dropped.times[dropped.items.index("sleeper")]
    assert dropped_at - stopped_at < timeout_ack + 1.0
    # the others kept their rate while it was stopped
    window_end = dropped_at
    sent = streamer.sent_between(stopped_at, window_end)
    assert sent > 50
    for name in ("busy1", "busy2"):
        procs[name].wait_count("msg", streamer.sent)  # nothing lost, whatever the delays
        got = sum(1 for e in procs[name].select("msg") if stopped_at <= e["_t"] <= window_end + 0.2)
        assert got >= 0.5 * sent, "%s got %d of %d messages while the sleeper was stopped" % (
            name,
            got,
            sent,
        )
    # SIGCONT: it notices, reconnects under its name and receives again
    mark = procs["sleeper"].mark()
    procs["sleeper"].cont()
    procs["sleeper"].wait_event("connected", after=mark)
    assert_eventually(lambda: hello.items.count("sleeper") == 2)
    procs["sleeper"].wait_event("msg", after=procs["sleeper"].mark())
    total = streamer.stop()
    for name in ("busy1", "busy2"):
        procs[name].wait_count("msg", total)
        assert_contiguous(procs[name])


def test_stopped_receiver_is_replaced_by_a_new_one_of_the_same_name(closer, peers):
    t = closer.transmitter(5, timeoutACK=None)  # never dropped for silence alone
    hello, dropped = Collector(), Collector()
    t._newconnection, t._dropped = hello, dropped
    old = peers.start("receiver.py", t.port, "twin", label="old-twin")
    wait_registered(t, "twin")
    old.stop()
    got = Collector()
    new = closer.receiver(t.port, "twin", got)
    assert_eventually(lambda: new.connected, message="the new 'twin' was not accepted")
    assert hello.wait_for_count(2) == ["twin", "twin"]
    assert dropped.wait_for_count(1) == ["twin"]
    t.tell("for the new one")
    assert got.wait_for_count(1) == [("for the new one", None)]
    # the old one wakes up: its connection is gone and the name is taken by a live receiver
    old.cont()
    assert holds_for(lambda: old.count("connected") == 1 and new.connected, 0.5)
    assert old.count("msg") == 0
    assert hello.count == 2
