"""SocReceiver: the hein 0.2.3 API and the behaviour of issue 3, on loopback sockets.

Most tests pair it with our SocTransmitter in this process; the protocol tests at the end play
the transmitter's side by hand on a plain listening socket ("fake transmitter"), to check the
handshake, the ACKs and the handling of pings, unknown and bad frames, ``__die__`` and refusals
byte for byte.
"""

import datetime
import logging
import socket
import time

import pytest
from helpers import (
    LOCALHOST,
    WAIT,
    Collector,
    assert_eventually,
    free_port,
    hein_thread_names,
    holds_for,
    raw_frame,
    silent,
    wait_registered,
)

from hein import Message, SocReceiver

ACK = b"\x06"
TERMINATOR = b"\xac\x96\xac\x96"


def rx_threads(name):
    return [n for n in hein_thread_names() if n == "hein-rx-%s" % name]


# ------------------------------------------------------------------------- construction


@pytest.mark.parametrize(
    "args, kwargs, error, word",
    [
        (("50007", "n"), {}, TypeError, "port"),
        ((None, "n"), {}, TypeError, "port"),
        ((0, "n"), {}, ValueError, "port"),
        ((65536, "n"), {}, ValueError, "port"),
        ((50007, 5), {}, TypeError, "name"),
        ((50007, None), {}, TypeError, "name"),
        ((50007, ""), {}, ValueError, "name"),
        ((50007, "n"), {"buffer_size": 0}, ValueError, "buffer_size"),
        ((50007, "n"), {"buffer_size": "big"}, ValueError, "buffer_size"),
        ((50007, "n"), {"connectWait": "soon"}, TypeError, "connectWait"),
        ((50007, "n"), {"connectWait": 0}, ValueError, "connectWait"),
        ((50007, "n"), {"connectWait": -1}, ValueError, "connectWait"),
    ],
)
def test_constructor_rejects_bad_arguments(args, kwargs, error, word):
    with pytest.raises(error) as info:
        SocReceiver(*args, connect=False, **kwargs)
    assert word in str(info.value)
    assert not hein_thread_names()


def test_attributes_and_str(closer):
    r = closer.add(SocReceiver(50007, "Captain-with-a-long-name", connect=False, portname="p" * 20))
    assert r.port == 50007
    assert r.name == "Captain-with-a-"
    assert r.portname == "p" * 15
    assert r.host == socket.gethostbyname(socket.gethostname())  # the 0.2.3 default
    assert not r.connected and not r.running and not r.loopConnect
    assert str(r) == "Socket receiver on port 50007 (off)"
    assert repr(r) == str(r)
    assert not rx_threads("Captain-with-a-")


def test_utf8_name_is_cut_on_a_character_boundary(closer):
    t = closer.transmitter(2)
    r = closer.receiver(t.port, "é" * 10)  # 20 bytes of UTF-8
    assert r.name == "é" * 7
    wait_registered(t, "é" * 7)


def test_connect_false_then_connect(closer):
    t = closer.transmitter(2)
    hello = Collector()
    t._newconnection = hello
    r = closer.receiver(t.port, "lazy", connect=False)
    assert holds_for(lambda: t.nreceivers == 0 and not r.connected, 0.3)
    assert not r.loopConnect
    r.connect()
    assert r.loopConnect
    assert hello.wait_for_count(1) == ["lazy"]
    assert_eventually(lambda: r.connected and r.running)
    assert str(r) == "Socket receiver on port %d (on)" % t.port
    r.connect()  # no-op while the loop runs
    assert holds_for(lambda: hello.count == 1, 0.2)


def test_default_host_connects_to_a_default_transmitter(closer):
    t = closer.transmitter(2)
    r = closer.receiver(t.port, "default", hostname=None)
    assert r.host == socket.gethostbyname(socket.gethostname())
    wait_registered(t, "default")


def test_receiver_started_before_its_transmitter(closer):
    port = free_port()
    got = Collector()
    closer.receiver(port, "early", got, connectWait=0.05)
    t = closer.transmitter(2, port=port)
    wait_registered(t, "early")
    t.tell("finally")
    assert got.wait_for_count(1) == [("finally", None)]


# ----------------------------------------------------------------------------- delivery


def test_message_kinds(closer):
    t = closer.transmitter(2)
    got = Collector()
    closer.receiver(t.port, "kinds", got)
    wait_registered(t, "kinds")
    t.tell_raw("text")
    t.tell_raw(b"\xff\x00")
    t.tell({"when": datetime.datetime(2020, 1, 1, 12, 30)}, tag="dict")
    t.tell([1, "a"], unpack=False)
    (raw1, _), (raw2, _), (value, tag), (message, _) = got.wait_for_count(4)
    assert raw1 == b"text" and type(raw1) is bytes
    assert raw2 == b"\xff\x00"
    assert value == {"when": datetime.datetime(2020, 1, 1, 12, 30)} and tag == "dict"
    assert isinstance(message, Message) and message.message == [1, "a"]


def test_default_process_prints_the_message(closer, capsys):
    t = closer.transmitter(2)
    r = closer.add(
        SocReceiver(t.port, "printer", connect=False, connectWait=0.05, hostname=LOCALHOST)
    )
    r._newconnection = silent
    r.connect()  # the default process()
    wait_registered(t, "printer")
    t.tell({"a": 1}, tag="TAG")
    t.tell(42)
    t.tell_raw(b"raw", tag="r")
    t.tell([1, 2], unpack=False)
    out = []
    expected = "TAG: {'a': 1}\n42\nr: b'raw'\n[1, 2]\n"

    def printed():
        out.append(capsys.readouterr().out)
        return expected in "".join(out)

    assert_eventually(printed, message=lambda: "printed %r" % "".join(out))


def test_default_newconnection_prints(closer, capsys):
    t = closer.transmitter(2)
    r = closer.add(
        SocReceiver(t.port, "hello", connect=False, connectWait=0.05, hostname=LOCALHOST)
    )
    r.process = silent
    r.connect()
    wait_registered(t, "hello")
    out = []
    assert_eventually(lambda: out.append(capsys.readouterr().out) or "".join(out).strip())


def test_process_assigned_on_the_instance_and_in_a_subclass(closer):
    t = closer.transmitter(3)
    got = Collector()
    closer.receiver(t.port, "assigned", got)

    class Receiver(SocReceiver):
        def process(self, data, tag):
            got(("subclass", data, tag))

        def _newconnection(self):
            got(("subclass connected",))

    closer.add(Receiver(t.port, "subclassed", connectWait=0.05, hostname=LOCALHOST))
    wait_registered(t, ["assigned", "subclassed"])
    t.tell(7, tag="x")
    items = got.wait_for_count(3)
    assert (7, "x") in items and ("subclass", 7, "x") in items and ("subclass connected",) in items


def test_exceptions_in_callbacks_are_logged_and_survived(closer, caplog):
    caplog.set_level(logging.ERROR, logger="hein")
    t = closer.transmitter(2)

    def fragile(data, tag):
        if data == "bad":
            raise ValueError("boom in process")

    got = Collector(fragile)
    r = closer.add(
        SocReceiver(t.port, "fragile", connect=False, connectWait=0.05, hostname=LOCALHOST)
    )
    r.process = got
    connected = Collector(lambda: 1 / 0)
    r._newconnection = connected
    r.connect()
    wait_registered(t, "fragile")
    connected.wait_for_count(1)
    t.tell("bad")
    t.tell("good")
    assert got.wait_for_count(2) == [("bad", None), ("good", None)]
    assert r.connected and t.nreceivers == 1

    def logged(exc_type, text):
        return any(
            r.exc_info and isinstance(r.exc_info[1], exc_type) and text in str(r.exc_info[1])
            for r in caplog.records
        )

    assert_eventually(
        lambda: logged(ValueError, "boom in process") and logged(ZeroDivisionError, "")
    )


# ------------------------------------------------------------- calls from inside process()


def test_tell_and_tell_raw_from_inside_process(closer):
    t = closer.transmitter(2)

    def echo(data, tag):
        if isinstance(data, int) and data < 50:
            t.tell(data + 1)
            t.tell_raw(b"raw %d" % data)

    got = Collector(echo)
    closer.receiver(t.port, "echo", got)
    wait_registered(t, "echo")
    t.tell(0)
    items = got.wait_for_count(101)
    assert [d for d, _ in items if isinstance(d, int)] == list(range(51))
    assert [d for d, _ in items if isinstance(d, bytes)] == [b"raw %d" % i for i in range(50)]


def test_ping_from_inside_process_returns(closer):
    t = closer.transmitter(3, timeoutACK=0.5)
    results = []

    def pinger(data, tag):
        start = time.monotonic()
        results.append((t.ping(), time.monotonic() - start))

    closer.receiver(t.port, "other")
    closer.receiver(t.port, "pinger", Collector(pinger))
    wait_registered(t, ["other", "pinger"])
    t.tell("ping please")
    assert_eventually(lambda: results, message="ping() from process() never returned")
    result, elapsed = results[0]
    assert elapsed < 0.5 + 1.5
    assert set(result) == {"other", "pinger"} and result["other"] is True
    # the pinger may have missed its own ping (it was busy in process()); it comes back anyway
    wait_registered(t, ["other", "pinger"])


def test_transmitter_close_from_inside_process(closer):
    t = closer.transmitter(2)
    elapsed = []

    def stopper(data, tag):
        start = time.monotonic()
        t.close()
        elapsed.append(time.monotonic() - start)

    r = closer.receiver(t.port, "stopper", Collector(stopper))
    wait_registered(t, "stopper")
    t.tell("stop")
    assert_eventually(lambda: elapsed)
    assert elapsed[0] < 1.5 and not t.running
    assert_eventually(lambda: not r.connected)


def test_receiver_close_from_inside_its_own_process(closer):
    t = closer.transmitter(2)
    r = closer.receiver(t.port, "self-closer")
    elapsed = []

    def close_myself(data, tag):
        start = time.monotonic()
        r.close()
        elapsed.append(time.monotonic() - start)

    got = Collector(close_myself)
    r.process = got
    wait_registered(t, "self-closer")
    t.tell(1)
    t.tell(2)
    assert_eventually(lambda: elapsed)
    assert elapsed[0] < 0.5
    assert_eventually(lambda: not rx_threads("self-closer") and t.nreceivers == 0)
    assert not r.connected and not r.loopConnect
    assert got.count == 1  # it stopped right after the message it was processing


# -------------------------------------------------------------------------- lifecycle


def test_stop_connectloop_keeps_the_connection_but_not_the_loop(closer):
    t = closer.transmitter(2)
    got = Collector()
    r = closer.receiver(t.port, "once", got)
    wait_registered(t, "once")
    r.stop_connectLoop()
    assert not r.loopConnect
    t.tell("still here")
    assert got.wait_for_count(1) == [("still here", None)]
    assert r.connected
    t.close_receivers()
    assert holds_for(lambda: t.nreceivers == 0, 0.5)  # 10 connectWaits: it did not come back
    assert_eventually(lambda: not rx_threads("once"))
    r.connect()
    wait_registered(t, "once")


def test_close_stops_for_good_fast_and_is_idempotent(closer):
    t = closer.transmitter(2)
    dropped = Collector()
    t._dropped = dropped
    r = closer.receiver(t.port, "leaving")
    wait_registered(t, "leaving")
    start = time.monotonic()
    r.close()
    assert time.monotonic() - start < 1.0
    assert not rx_threads("leaving")
    assert not r.connected and not r.running and not r.loopConnect
    assert dropped.wait_for_count(1) == ["leaving"]
    assert holds_for(lambda: t.nreceivers == 0, 0.3)  # it did not come back
    start = time.monotonic()
    r.close()
    assert time.monotonic() - start < 0.1
    # connect() starts it again
    r.connect()
    wait_registered(t, "leaving")


def test_close_while_no_transmitter_is_there(closer):
    r = closer.receiver(free_port(), "waiting", connectWait=5.0)
    assert_eventually(lambda: rx_threads("waiting"))
    start = time.monotonic()
    r.close()
    assert time.monotonic() - start < 1.0
    assert not rx_threads("waiting")


def test_close_of_a_receiver_never_connected():
    r = SocReceiver(50007, "never", connect=False)
    r.close()
    r.close()


def test_context_manager(closer):
    t = closer.transmitter(2)
    with SocReceiver(t.port, "ctx", connectWait=0.05, hostname=LOCALHOST) as r:
        r._newconnection = silent
        wait_registered(t, "ctx")
    assert not rx_threads("ctx") and not r.loopConnect
    assert_eventually(lambda: t.nreceivers == 0)


def test_reconnects_after_close_receivers_and_transmitter_restart(closer):
    t = closer.transmitter(2)
    got = Collector()
    closer.receiver(t.port, "faithful", got)
    wait_registered(t, "faithful")
    t.close_receivers()
    wait_registered(t, "faithful")
    t.tell(1)
    t.close()
    t2 = closer.transmitter(2, port=t.port)
    wait_registered(t2, "faithful")
    t2.tell(2)
    assert got.wait_for_count(2) == [(1, None), (2, None)]


# ------------------------------------------------------------- against a fake transmitter


class FakeTransmitter:
    """The transmitter's side of the protocol, by hand, on a plain listening socket."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((LOCALHOST, 0))
        self.listener.listen(8)
        self.listener.settimeout(WAIT)
        self.port = self.listener.getsockname()[1]
        self.connections = []

    def accept(self, ack=True):
        conn, _ = self.listener.accept()
        conn.settimeout(WAIT)
        self.connections.append(conn)
        if ack:
            conn.sendall(ACK)
        return conn

    def register(self):
        """Accept, ACK, read the name, ACK again; return (connection, name)."""
        conn = self.accept()
        name = conn.recv(15)
        conn.sendall(ACK)
        return conn, name

    def close(self):
        for conn in self.connections:
            conn.close()
        self.listener.close()


@pytest.fixture
def fake(closer):
    return closer.add(FakeTransmitter())


frame = raw_frame


def test_handshake_sends_the_name_cut_to_15_bytes(closer, fake):
    hello = Collector()
    r = closer.receiver(fake.port, "Captain-with-a-long-name", connect=False)
    r._newconnection = hello
    r.connect()
    _, name = fake.register()
    assert name == b"Captain-with-a-"
    hello.wait_for_count(1)
    assert_eventually(lambda: r.connected)


def test_acks_each_read_that_completes_frames(closer, fake):
    got = Collector()
    closer.receiver(fake.port, "acker", got)
    conn, _ = fake.register()
    conn.sendall(frame(b"__jsn__", b'"i:1"') + frame(b"__raw__", b"two", unpack=b"0"))
    assert got.wait_for_count(2) == [(1, None), (b"two", None)]
    acks = conn.recv(16)
    assert acks and acks.strip(ACK) == b"" and len(acks) <= 2
    # half a frame: no ACK until it completes
    whole = frame(b"__raw__", b"x" * 1000 + b"\xac\x96" + b"y" * 1000, tag=b"split", unpack=b"0")
    conn.sendall(whole[:700])
    conn.settimeout(0.3)
    with pytest.raises(socket.timeout):
        conn.recv(1)
    conn.settimeout(WAIT)
    for i in range(700, len(whole), 97):
        conn.sendall(whole[i : i + 97])
    assert conn.recv(1) == ACK
    assert got.wait_for_count(3)[2] == (b"x" * 1000 + b"\xac\x96" + b"y" * 1000, "split")


def test_pings_unknown_and_bad_frames_are_acked_and_skipped(closer, fake, caplog):
    caplog.set_level(logging.WARNING, logger="hein")
    got = Collector()
    closer.receiver(fake.port, "tolerant", got)
    conn, _ = fake.register()
    for bad in (
        frame(b"__png__", b""),
        frame(b"__xyz__", b'"i:5"'),
        frame(b"__jsn__", b"{not json"),
        b"garbage without header" + TERMINATOR,
    ):
        conn.sendall(bad)
        assert conn.recv(1) == ACK, bad
    conn.sendall(frame(b"__jsn__", b'"u:after"', tag=b"t"))
    assert conn.recv(1) == ACK
    assert got.wait_for_count(1) == [("after", "t")]
    assert got.count == 1


def test_die_closes_the_connection_and_the_receiver_reconnects(closer, fake):
    connected = Collector()
    r = closer.receiver(fake.port, "mortal", connectWait=0.05, connect=False)
    r._newconnection = connected
    r.connect()
    conn, _ = fake.register()
    connected.wait_for_count(1)
    conn.sendall(frame(b"__die__", b""))
    data = b""
    while True:  # it ACKs the read, then closes
        chunk = conn.recv(16)
        if not chunk:
            break
        data += chunk
    assert data.strip(ACK) == b""
    _, name = fake.register()
    assert name == b"mortal"
    assert connected.wait_for_count(2)


def test_refused_receiver_retries_quietly(closer, fake, caplog):
    caplog.set_level(logging.INFO, logger="hein")
    r = closer.receiver(fake.port, "refused", connectWait=0.05)
    for _ in range(5):  # refuse it five times: read its name, close
        conn = fake.accept()
        assert conn.recv(15) == b"refused"
        conn.close()
    conn, _ = fake.register()
    assert_eventually(lambda: r.connected)
    warnings = [
        x for x in caplog.records if x.levelno >= logging.WARNING and x.name == "hein.socreceiver"
    ]
    assert len(warnings) == 1, [x.getMessage() for x in warnings]


def test_no_ack_on_accept_gives_up_after_a_second_and_retries(closer, fake):
    r = closer.receiver(fake.port, "patient", connectWait=0.05)
    mute = fake.accept(ack=False)
    start = time.monotonic()
    assert mute.recv(1) == b""  # it closed: no name without the ACK
    assert 0.8 < time.monotonic() - start < 1.0 + 2.0
    _, name = fake.register()
    assert name == b"patient"
    assert_eventually(lambda: r.connected)
