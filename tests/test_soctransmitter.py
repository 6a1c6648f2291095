"""SocTransmitter: the hein 0.2.3 API and the behaviour of issue 3, on loopback sockets.

Receivers run in this process (threads); a few tests speak the wire protocol directly through a
plain socket ("raw receivers") to check the handshake and the frames byte for byte, or to play a
receiver that stalls.
"""

import datetime
import logging
import os
import random
import socket
import threading
import time

import pytest
from helpers import (
    LOCALHOST,
    WAIT,
    Collector,
    assert_eventually,
    hein_thread_names,
    holds_for,
    open_fds,
    silent,
    wait_for,
    wait_registered,
)

from hein import Message, SocReceiver, SocTransmitter, json_dumps

ACK = b"\x06"
TERMINATOR = b"\xac\x96\xac\x96"


# ------------------------------------------------------------------------- raw receivers


def raw_receiver(port, name, rcvbuf=None):
    """A plain socket that does the receiver's side of the handshake as PROTOCOL.md says."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(WAIT)
    sock.connect((LOCALHOST, port))
    assert sock.recv(1) == ACK, "the transmitter must send ACK on accept"
    sock.sendall(name.encode())
    assert sock.recv(1) == ACK, "the transmitter must ACK the registration"
    return sock


def read_frame(sock, buffer=b""):
    """Read up to the next terminator; return (frame without terminator, rest)."""
    while TERMINATOR not in buffer:
        chunk = sock.recv(65536)
        assert chunk, "connection closed while reading a frame"
        buffer += chunk
    frame, _, rest = buffer.partition(TERMINATOR)
    return frame, rest


def read_data_frame(sock, buffer=b""):
    """Like :func:`read_frame`, skipping heartbeat pings (ACKing every read)."""
    while True:
        frame, buffer = read_frame(sock, buffer)
        sock.sendall(ACK)
        if not frame.startswith(b"__png__"):
            return frame, buffer


# ------------------------------------------------------------------------- construction


@pytest.mark.parametrize(
    "args, kwargs, error, words",
    [
        (("abc", 1), {}, TypeError, ["port"]),
        ((1.5, 1), {}, TypeError, ["port"]),
        ((None, 1), {}, TypeError, ["port"]),
        ((-1, 1), {}, ValueError, ["port", "-1"]),
        ((65536, 1), {}, ValueError, ["port", "65536"]),
        ((0, 0), {}, ValueError, ["nreceivermax", "0"]),
        ((0, -3), {}, ValueError, ["nreceivermax"]),
        ((0, 2.5), {}, TypeError, ["nreceivermax"]),
        ((0, "3"), {}, TypeError, ["nreceivermax"]),
        ((0, None), {}, TypeError, ["nreceivermax"]),
        ((0, 1), {"timeoutACK": 0}, ValueError, ["timeoutACK"]),
        ((0, 1), {"timeoutACK": -1.0}, ValueError, ["timeoutACK"]),
        ((0, 1), {"timeoutACK": "1"}, TypeError, ["timeoutACK"]),
        ((0, 1), {"heartbeat": 0}, ValueError, ["heartbeat"]),
        ((0, 1), {"max_queue_bytes": 10}, ValueError, ["max_queue_bytes"]),
    ],
)
def test_constructor_rejects_bad_arguments(args, kwargs, error, words):
    with pytest.raises(error) as info:
        SocTransmitter(*args, start=False, **kwargs)
    for word in words:
        assert word in str(info.value)


def test_new_options_are_keyword_only():
    with pytest.raises(TypeError):
        SocTransmitter(0, 1, False, "", 1.0, LOCALHOST)


@pytest.mark.parametrize("nreceivermax", [1, 5, 7, 1000])
def test_nreceivermax_any_positive_int(nreceivermax):
    t = SocTransmitter(0, nreceivermax, start=False)
    assert t.nreceivermax == nreceivermax


def test_str_and_attributes(closer):
    t = SocTransmitter(50007, 3, start=False)
    assert str(t) == "Socket transmitter on port 50007 name '' (off)"
    assert repr(t) == str(t)
    assert not t.running
    t = closer.transmitter(3, portname="a-port-name-longer-than-15")
    assert t.port > 0
    assert t.portname == "a-port-name-lon"
    assert str(t) == "Socket transmitter on port %d name 'a-port-name-lon' (on)" % t.port
    assert t.running
    assert t.timeoutACK == 1.0
    assert t.receivers == {} and t.nreceivers == 0
    t.close()
    assert str(t) == "Socket transmitter on port %d name 'a-port-name-lon' (off)" % t.port
    assert not t.running


def test_start_false_then_start(closer):
    t = closer.add(SocTransmitter(0, 2, start=False))
    t._newconnection = silent
    assert not t.running
    assert t.tell(1) is False and t.tell_raw("x") is False and t.ping() == {}
    t.start()
    t.start()  # no-op when running
    assert t.running and t.port > 0
    closer.receiver(t.port, "late")
    wait_registered(t, "late")


def test_port_in_use_raises_oserror_naming_the_port(closer):
    blocker = socket.socket()
    closer.add(blocker)
    blocker.bind((LOCALHOST, 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    with pytest.raises(OSError) as info:
        SocTransmitter(port, 1)
    assert str(port) in str(info.value)
    t = SocTransmitter(port, 1, start=False)
    with pytest.raises(OSError) as info:
        t.start()
    assert str(port) in str(info.value)
    assert not t.running
    # a running transmitter holds its port too
    first = closer.transmitter(1)
    with pytest.raises(OSError) as info:
        SocTransmitter(first.port, 1)
    assert str(first.port) in str(info.value)


# ------------------------------------------------------------------------------ sending


def test_tell_delivers_typed_values(closer):
    t = closer.transmitter(2)
    got = Collector()
    closer.receiver(t.port, "typed", got)
    wait_registered(t, "typed")
    values = [
        {"int": 3, "float": -2.5, "text": 'héllo "quoted" \\', "none": None, "bool": True},
        [1, [2, [3, "x"]], {"k": b"\x00\xac\x96\xff"}],
        datetime.datetime(2021, 3, 4, 5, 6, 7, 89),
        datetime.date(1999, 12, 31),
        datetime.time(23, 59, 58, 1),
        "",
        0,
        2**70,
        float("inf"),
    ]
    for value in values:
        assert t.tell(value) is True
    items = got.wait_for_count(len(values))
    assert items == [(value, None) for value in values]
    for (data, _), value in zip(items, values):
        assert type(data) is type(value)


def test_tell_raw_sends_bytes_and_rejects_non_strings_and_empty(closer):
    t = closer.transmitter(2)
    got = Collector()
    closer.receiver(t.port, "raw", got)
    wait_registered(t, "raw")
    for bad in (5, None, 1.5, ["x"], {"a": 1}, "", b""):
        assert t.tell_raw(bad) is False, bad
    assert t.tell_raw("text é") is True
    assert t.tell_raw(b"\x00bytes\xac\x96\xac\x96end") is True
    items = got.wait_for_count(2)
    assert items == [("text é".encode(), None), (b"\x00bytes\xac\x96\xac\x96end", None)]
    assert got.count == 2  # the rejected ones sent nothing
    t.close()
    assert t.tell_raw("late") is False
    assert t.tell("late") is False


def test_unpack_false_gives_a_message(closer):
    t = closer.transmitter(2)
    got = Collector()
    closer.receiver(t.port, "lazy", got)
    wait_registered(t, "lazy")
    value = {"a": [1, 2.5, "x"], "when": datetime.date(2020, 2, 29)}
    t.tell(value, tag="lazy", unpack=False)
    t.tell(value, unpack=True)
    (data, tag), (plain, _) = got.wait_for_count(2)
    assert isinstance(data, Message)
    assert tag == "lazy"
    assert data.raw == json_dumps(value)
    assert data.message == value
    assert plain == value and not isinstance(plain, Message)


@pytest.mark.parametrize(
    "tag, arrives",
    [
        (None, None),
        ("", None),
        ("plain", "plain"),
        ("my tag!*", "my tag"),
        ("x.y_z-1 2", "x.y_z-1 2"),
        ("a" * 20, "a" * 15),
        ("!!!", None),
        ("é-tag", "-tag"),
    ],
)
def test_tags_are_cleaned(closer, tag, arrives):
    t = closer.transmitter(2)
    got = Collector()
    closer.receiver(t.port, "tags", got)
    wait_registered(t, "tags")
    t.tell(1, tag=tag)
    t.tell_raw("r", tag=tag)
    t.tell(2, tag=tag, unpack=False)
    items = got.wait_for_count(3)
    assert [tag for _, tag in items] == [arrives] * 3


@pytest.mark.parametrize(
    "name",
    ["tell_json", "tell_json_ext", "tell_dict", "tell_dict_type", "tell_list", "tell_list_type"],
)
def test_deprecated_senders_warn_and_send_like_tell(closer, name):
    t = closer.transmitter(2)
    got = Collector()
    closer.receiver(t.port, "old", got)
    wait_registered(t, "old")
    sender = getattr(t, name)
    with pytest.warns(DeprecationWarning, match=r"\btell\b") as record:
        assert sender({"k": name, "n": 1}) is True
    assert name in str(record[0].message)
    with pytest.warns(DeprecationWarning):
        assert sender([1, 2], tag="old tag!", unpack=False) is True
    (first, tag1), (second, tag2) = got.wait_for_count(2)
    assert (first, tag1) == ({"k": name, "n": 1}, None)
    assert isinstance(second, Message) and second.message == [1, 2] and tag2 == "old tag"


@pytest.mark.parametrize("name", ["tell_key", "tell_report"])
def test_meaningless_senders_warn_and_return_false(closer, name):
    t = closer.transmitter(2)
    got = Collector()
    closer.receiver(t.port, "old", got)
    wait_registered(t, "old")
    with pytest.warns(DeprecationWarning, match=r"\btell\b"):
        assert getattr(t, name)("key", 1) is False
    t.tell("marker")
    assert got.wait_for_count(1) == [("marker", None)]


def test_unknown_attribute_still_raises():
    t = SocTransmitter(0, 1, start=False)
    with pytest.raises(AttributeError):
        _ = t.tell_nothing


# ---------------------------------------------------------------------------- callbacks


def test_newconnection_prints_hello_by_default(closer, capsys):
    t = closer.add(SocTransmitter(0, 2))  # default callbacks
    closer.receiver(t.port, "Captain")
    out = []

    def printed():
        out.append(capsys.readouterr().out)
        return "hello: Captain\n" in "".join(out)

    assert_eventually(printed, message=lambda: "printed: %r" % "".join(out))


def test_callbacks_assigned_on_the_instance(closer):
    t = closer.transmitter(3)
    hello, dropped = Collector(), Collector()
    t._newconnection = hello
    t._dropped = dropped
    r = closer.receiver(t.port, "inst")
    assert hello.wait_for_count(1) == ["inst"]
    assert dropped.count == 0
    r.close()
    assert dropped.wait_for_count(1) == ["inst"]
    assert t.nreceivers == 0
    # callbacks run outside the loop thread
    assert not any(name == "hein-tx-%d" % t.port for name in hello.threads + dropped.threads)


def test_callbacks_overridden_in_a_subclass(closer):
    events = Collector()

    class Transmitter(SocTransmitter):
        def _newconnection(self, name):
            events(("new", name))

        def _dropped(self, name):
            events(("dropped", name))

    t = closer.add(Transmitter(0, 2))
    r = closer.receiver(t.port, "sub")
    assert events.wait_for_count(1) == [("new", "sub")]
    r.close()
    assert events.wait_for_count(2)[1] == ("dropped", "sub")


def test_exceptions_in_callbacks_are_logged_and_survived(closer, caplog):
    caplog.set_level(logging.ERROR, logger="hein")
    t = closer.transmitter(3)

    def explode(name):
        raise RuntimeError("boom in _newconnection for %s" % name)

    hello = Collector(explode)
    dropped = Collector(lambda name: 1 / 0)
    t._newconnection = hello
    t._dropped = dropped
    got = Collector()
    first = closer.receiver(t.port, "first", got)
    hello.wait_for_count(1)
    first.close()
    dropped.wait_for_count(1)
    # the transmitter and its callback thread carry on
    second = closer.receiver(t.port, "second", got)
    assert hello.wait_for_count(2)[1] == "second"
    wait_registered(t, "second")
    t.tell("still working")
    assert got.wait_for_count(1) == [("still working", None)]
    assert second.connected

    def logged(exc_type, text):
        return any(
            r.exc_info and isinstance(r.exc_info[1], exc_type) and text in str(r.exc_info[1])
            for r in caplog.records
        )

    assert_eventually(
        lambda: (
            logged(RuntimeError, "boom in _newconnection for first")
            and logged(ZeroDivisionError, "")
        ),
        message=lambda: [r.getMessage() for r in caplog.records],
    )


def test_tell_ping_and_close_receivers_from_inside_newconnection(closer):
    t = closer.transmitter(3)
    results = {}

    def welcome(name):
        results["tell"] = t.tell(("welcome", name))
        results["tell_raw"] = t.tell_raw(b"raw welcome")
        results["ping"] = t.ping()

    hello = Collector(welcome)
    t._newconnection = hello
    got = Collector()
    closer.receiver(t.port, "guest", got)
    items = got.wait_for_count(2)
    assert items == [(["welcome", "guest"], None), (b"raw welcome", None)]  # tuples travel as lists
    assert hello.wait_for_count(1) == ["guest"]
    assert_eventually(lambda: "ping" in results)
    assert results["tell"] is True and results["tell_raw"] is True
    assert results["ping"] == {"guest": True}


def test_close_receivers_from_inside_newconnection(closer):
    t = closer.transmitter(3)
    calls = []

    def kick(name):
        calls.append(name)
        if len(calls) == 1:
            t.close_receivers()

    hello = Collector(kick)
    t._newconnection = hello
    got = Collector()
    closer.receiver(t.port, "kicked", got)
    # kicked once, then back
    assert hello.wait_for_count(2) == ["kicked", "kicked"]
    wait_registered(t, "kicked")
    t.tell("back")
    assert got.wait_for_count(1) == [("back", None)]


def test_close_from_inside_callbacks(closer):
    t = closer.transmitter(3)
    elapsed = []

    def close_now(name):
        start = time.monotonic()
        t.close()
        elapsed.append(time.monotonic() - start)

    t._newconnection = Collector(close_now)
    closer.receiver(t.port, "closer")
    assert_eventually(lambda: elapsed, message="close() from _newconnection never returned")
    assert elapsed[0] < 1.5
    assert not t.running
    assert_eventually(
        lambda: not [n for n in hein_thread_names() if n.startswith("hein-tx-%d" % t.port)]
    )


def test_close_from_inside_dropped(closer):
    t = closer.transmitter(3)
    done = []
    t._dropped = Collector(lambda name: (t.close(), done.append(name)))
    r = closer.receiver(t.port, "leaver")
    wait_registered(t, "leaver")
    r.close()
    assert_eventually(lambda: done == ["leaver"])
    assert not t.running


def test_context_manager(closer):
    with SocTransmitter(0, 2) as t:
        t._newconnection = silent
        assert t.running
        r = closer.receiver(t.port, "ctx")
        wait_registered(t, "ctx")
        port = t.port
    assert not t.running
    assert not [n for n in hein_thread_names() if n.startswith("hein-tx-%d" % port)]
    with pytest.raises(KeyError):
        with SocTransmitter(0, 2) as t2:
            raise KeyError("inside")
    assert not t2.running
    r.close()


# ------------------------------------------------------------------------ handshake, names


def test_handshake_and_frames_on_the_wire(closer):
    t = closer.transmitter(2)
    sock = closer.add(raw_receiver(t.port, "wire"))
    wait_registered(t, "wire")
    assert t.tell_raw(b"hello!") and t.tell_raw(b"by\xac\x96tes", tag="my tag!*")
    assert t.tell(5) and t.tell("x", tag="t", unpack=False)
    frame, rest = read_data_frame(sock)
    assert frame == b"__raw__:0:hello!"
    frame, rest = read_data_frame(sock, rest)
    assert frame == b"__raw__my tag:0:by\xac\x96\xeetes"
    frame, rest = read_data_frame(sock, rest)
    assert frame == b'__jsn__:1:"i:5"'
    frame, rest = read_data_frame(sock, rest)
    assert frame == b'__jsn__t:0:"u:x"'


def test_long_receiver_name_registers_cut_to_15(closer):
    t = closer.transmitter(2)
    hello = Collector()
    t._newconnection = hello
    r = closer.receiver(t.port, "Captain-with-a-long-name")
    assert r.name == "Captain-with-a-"
    assert hello.wait_for_count(1) == ["Captain-with-a-"]
    assert list(t.receivers) == ["Captain-with-a-"]


def test_connection_without_a_name_is_closed(closer):
    t = closer.transmitter(2, handshake_timeout=0.3)
    sock = closer.add(socket.create_connection((LOCALHOST, t.port), timeout=WAIT))
    assert sock.recv(1) == ACK
    start = time.monotonic()
    assert sock.recv(1) == b""  # closed, never registered
    assert time.monotonic() - start < 0.3 + 2.0
    assert t.nreceivers == 0


def test_receiver_sending_garbage_is_dropped(closer):
    t = closer.transmitter(2)
    dropped = Collector()
    t._dropped = dropped
    sock = closer.add(raw_receiver(t.port, "rude"))
    wait_registered(t, "rude")
    sock.sendall(b"not an ack")
    assert dropped.wait_for_count(1) == ["rude"]
    assert t.nreceivers == 0


def test_duplicate_name_refused_while_first_alive_then_accepted(closer):
    t = closer.transmitter(5)
    hello = Collector()
    t._newconnection = hello
    got1, got2 = Collector(), Collector()
    first = closer.receiver(t.port, "twin", got1)
    assert hello.wait_for_count(1) == ["twin"]
    second = closer.receiver(t.port, "twin", got2, connectWait=0.05)
    # about 20 attempts of the second one, all refused, while the first keeps receiving
    sent = 0

    def first_still_served():
        nonlocal sent
        sent += 1
        t.tell(sent)
        return not second.connected and list(t.receivers) == ["twin"] and hello.count == 1

    assert holds_for(first_still_served, 1.0, interval=0.02)
    assert [d for d, _ in got1.wait_for_count(sent)] == list(range(1, sent + 1))
    assert got2.count == 0
    first.close()
    assert_eventually(lambda: second.connected, message="the second 'twin' was never accepted")
    assert hello.wait_for_count(2) == ["twin", "twin"]
    wait_registered(t, "twin")
    t.tell("for the second")
    assert got2.wait_for_item(lambda item: item == ("for the second", None))


def refused_retries(closer, caplog, logger_name):
    """Keep a second 'twin' refused for about 20 retries; return logger_name's WARNING lines."""
    caplog.set_level(logging.INFO, logger="hein")
    t = closer.transmitter(5)
    first = closer.receiver(t.port, "twin")
    wait_registered(t, "twin")
    second = closer.receiver(t.port, "twin", connectWait=0.05)
    assert holds_for(lambda: not second.connected and first.connected, 1.0)
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == logger_name and r.levelno >= logging.WARNING and "twin" in r.getMessage()
    ]


def test_refused_receiver_logs_once_not_per_retry(closer, caplog):
    warnings = refused_retries(closer, caplog, "hein.socreceiver")
    assert len(warnings) == 1, warnings


def test_transmitter_logs_a_refused_duplicate_once_not_per_retry(closer, caplog):
    warnings = refused_retries(closer, caplog, "hein.soctransmitter")
    assert len(warnings) == 1, warnings


def test_full_transmitter_refuses_the_extra_receiver(closer):
    t = closer.transmitter(7)
    names = ["r%d" % i for i in range(7)]
    receivers = [closer.receiver(t.port, name) for name in names]
    wait_registered(t, names)
    extra_got = Collector()
    extra = closer.receiver(t.port, "extra", extra_got)
    assert holds_for(
        lambda: t.nreceivers == 7 and "extra" not in t.receivers and not extra.connected, 1.0
    )
    t.tell("not for extra")
    receivers[0].close()
    wait_registered(t, "extra")
    assert t.nreceivers == 7
    t.tell("for extra")
    assert extra_got.wait_for_count(1) == [("for extra", None)]


# -------------------------------------------------------------------------- ping, closing


def test_ping(closer):
    t = closer.transmitter(5)
    start = time.monotonic()
    assert t.ping() == {}
    assert time.monotonic() - start < 1.0
    names = ["p1", "p2", "p3"]
    for name in names:
        closer.receiver(t.port, name)
    wait_registered(t, names)
    assert t.ping() == dict.fromkeys(names, True)


def test_ping_reports_and_drops_a_silent_receiver(closer):
    t = closer.transmitter(5, timeoutACK=0.5)
    dropped = Collector()
    t._dropped = dropped
    closer.receiver(t.port, "alive")
    silent_sock = closer.add(raw_receiver(t.port, "mute"))
    wait_registered(t, ["alive", "mute"])
    start = time.monotonic()
    assert t.ping() == {"alive": True, "mute": False}
    assert time.monotonic() - start < 0.5 + 1.0
    assert dropped.wait_for_count(1) == ["mute"]
    assert list(t.receivers) == ["alive"]
    silent_sock.close()


def test_close_receivers_then_they_reconnect(closer):
    t = closer.transmitter(5)
    hello = Collector()
    t._newconnection = hello
    names = ["c1", "c2", "c3"]
    collectors = [Collector() for _ in names]
    for name, got in zip(names, collectors):
        closer.receiver(t.port, name, got)
    hello.wait_for_count(3)
    wait_registered(t, names)
    t.close_receivers()
    assert t.nreceivers == 0
    assert sorted(hello.wait_for_count(6)[3:]) == names
    wait_registered(t, names)
    t.tell("after")
    for got in collectors:
        assert got.wait_for_count(1) == [("after", None)]


def test_new_transmitter_on_the_same_port_and_receivers_resume(closer):
    t1 = closer.transmitter(5)
    port = t1.port
    names = ["s1", "s2"]
    collectors = [Collector() for _ in names]
    for name, got in zip(names, collectors):
        closer.receiver(t1.port, name, got)
    wait_registered(t1, names)
    t1.tell(1)
    for got in collectors:
        got.wait_for_count(1)
    t1.close()
    assert not t1.running
    t2 = closer.transmitter(5, port=port)  # binds at once: close() freed the port
    assert t2.port == port
    wait_registered(t2, names)
    t2.tell(2)
    for got in collectors:
        assert [d for d, _ in got.wait_for_count(2)] == [1, 2]


def test_nothing_sent_before_registration_reaches_a_receiver(closer):
    t = closer.transmitter(5)
    for i in range(100):
        assert t.tell(("before", i))
    assert t.tell_raw("raw before")
    got = Collector()
    closer.receiver(t.port, "late", got)
    wait_registered(t, "late")
    t.tell("after")
    assert got.wait_for_count(1) == [("after", None)]
    assert got.count == 1


def test_close_is_idempotent_fast_and_frees_the_port(closer):
    t = closer.transmitter(5)
    port = t.port
    closer.receiver(t.port, "normal")
    # a receiver that never reads: its queue and socket buffers fill up
    stalled = closer.add(raw_receiver(t.port, "stalled", rcvbuf=4096))
    wait_registered(t, ["normal", "stalled"])
    for _ in range(20):
        t.tell_raw(b"z" * 100_000)
    start = time.monotonic()
    t.close()
    assert time.monotonic() - start < 1.5
    assert not t.running
    assert not [n for n in hein_thread_names() if n.startswith("hein-tx-%d" % port)]
    start = time.monotonic()
    t.close()
    assert time.monotonic() - start < 0.1
    assert t.receivers == {} and t.nreceivers == 0
    # the port is free at once
    again = SocTransmitter(port, 1)
    again.close()
    # close() on a transmitter never started
    SocTransmitter(0, 1, start=False).close()
    stalled.close()


def test_restart_with_start_after_close(closer):
    t = closer.transmitter(2)
    port = t.port
    got = Collector()
    closer.receiver(port, "phoenix", got)
    wait_registered(t, "phoenix")
    t.close()
    t.start()
    assert t.running and t.port == port
    wait_registered(t, "phoenix")
    t.tell("reborn")
    assert got.wait_for_count(1) == [("reborn", None)]


# -------------------------------------------------------------------------- slow receivers


def test_stalled_receiver_does_not_delay_the_others_and_is_dropped(closer):
    t = closer.transmitter(5, timeoutACK=0.5)
    dropped = Collector()
    t._dropped = dropped
    got = Collector()
    closer.receiver(t.port, "fast", got)
    stalled = closer.add(raw_receiver(t.port, "stalled", rcvbuf=4096))
    wait_registered(t, ["fast", "stalled"])
    payload = b"p" * 50_000
    start = time.monotonic()
    for i in range(200):  # 10 MB: far more than the stalled one's socket buffers take
        t.tell_raw(b"%d:" % i + payload)
    items = got.wait_for_count(200)
    assert [data.split(b":", 1)[0] for data, _ in items] == [b"%d" % i for i in range(200)]
    assert dropped.wait_for_count(1, timeout=0.5 + 2.0) == ["stalled"]
    assert time.monotonic() - start < 0.5 + 2.0
    assert list(t.receivers) == ["fast"]
    stalled.close()


def test_queue_bound_drops_a_receiver_that_overruns_it(closer):
    t = closer.transmitter(5, timeoutACK=None, max_queue_bytes=1 << 20)
    dropped = Collector()
    t._dropped = dropped
    got = Collector()
    closer.receiver(t.port, "fast", got)
    stalled = closer.add(raw_receiver(t.port, "stalled", rcvbuf=4096))
    wait_registered(t, ["fast", "stalled"])
    for i in range(100):  # 10 MB, each message once the fast one has the previous one
        t.tell_raw(b"q" * 100_000)
        got.wait_for_count(i + 1)
    assert dropped.wait_for_count(1) == ["stalled"]
    assert list(t.receivers) == ["fast"]
    stalled.close()


def test_timeoutack_none_never_drops_for_silence(closer):
    t = closer.transmitter(5, timeoutACK=None, heartbeat=0.1)
    dropped = Collector()
    t._dropped = dropped
    mute = closer.add(raw_receiver(t.port, "mute"))
    wait_registered(t, "mute")
    t.tell("unanswered")
    assert holds_for(lambda: "mute" in t.receivers, 1.0)
    assert dropped.count == 0
    mute.close()


def test_steady_slow_reader_of_a_large_frame_is_not_dropped(closer):
    t = closer.transmitter(2, timeoutACK=0.75, max_queue_bytes=64 << 20)
    dropped = Collector()
    t._dropped = dropped
    sock = closer.add(raw_receiver(t.port, "steady", rcvbuf=32 * 1024))
    wait_registered(t, "steady")
    size = 24 << 20
    t.tell_raw(b"s" * size)
    received = 0
    tail = b""
    started = time.monotonic()
    while True:  # read about 16 MB/s, steadily: the frame takes about 1.5 s
        chunk = sock.recv(65536)
        assert chunk, "dropped after %d bytes in %.2f s" % (received, time.monotonic() - started)
        received += len(chunk)
        tail = (tail + chunk)[-4:]
        if tail == TERMINATOR and received >= size:
            sock.sendall(ACK)
            break
        time.sleep(0.004)  # the pace of a slow reader, not a synchronisation
    assert dropped.count == 0
    assert "steady" in t.receivers


# ---------------------------------------------------------------------------- volume, scale


def test_messages_arrive_complete_and_in_order(closer):
    t = closer.transmitter(3)
    collectors = [Collector(), Collector()]
    for i, got in enumerate(collectors):
        closer.receiver(t.port, "bulk%d" % i, got)
    wait_registered(t, ["bulk0", "bulk1"])
    rng = random.Random(20240601)
    expected = []
    big = bytes(rng.getrandbits(8) for _ in range(256)) * 4096 + b"\xac\x96\xac\x96"  # > 1 MiB
    for i in range(20_000):
        if i % 2000 == 1999:
            payload = b"%d:" % i + big
            assert t.tell_raw(payload, tag="big")
            expected.append((payload, "big"))
        elif i % 3 == 0:
            payload = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 300)))
            assert t.tell_raw(payload)
            expected.append((payload, None))
        else:
            value = {"i": i, "s": 'x\u00e9"' * rng.randrange(0, 200), "f": i / 7}
            assert t.tell(value, tag="d")
            expected.append((value, "d"))
    for got in collectors:
        items = got.wait_for_count(len(expected), timeout=60)
        assert len(items) == len(expected)
        for index, (item, want) in enumerate(zip(items, expected)):
            assert item == want, "message %d differs" % index
        assert got.count == len(expected)


def test_hundred_receivers_all_get_every_message(closer):
    t = closer.transmitter(100)
    names = ["n%03d" % i for i in range(100)]
    collectors = {name: Collector() for name in names}
    for name in names:
        closer.receiver(t.port, name, collectors[name], connectWait=0.2)
    wait_registered(t, names, timeout=30)
    assert t.nreceivers == 100
    for i in range(50):
        t.tell({"seq": i}, tag="all")
    expected = [({"seq": i}, "all") for i in range(50)]
    for name in names:
        assert collectors[name].wait_for_count(50, timeout=30) == expected, name
    result = t.ping()
    assert result == dict.fromkeys(names, True)


def test_open_close_cycles_leak_no_thread_nor_fd():
    def cycle(i):
        t = SocTransmitter(0, 1)
        t._newconnection = silent
        got = Collector()
        r = SocReceiver(t.port, "cycle", connect=False, connectWait=0.05, hostname=LOCALHOST)
        r.process = got
        r._newconnection = silent
        try:
            r.connect()
            assert wait_for(lambda: t.nreceivers == 1), "cycle %d: never registered" % i
            t.tell(i)
            assert got.wait_for_count(1) == [(i, None)]
        finally:
            if i % 2:
                t.close()
                r.close()
            else:
                r.close()
                t.close()

    cycle(-1)
    cycle(-2)
    fds, threads = open_fds(), threading.active_count()
    for i in range(200):
        cycle(i)
    assert wait_for(lambda: (open_fds(), threading.active_count()) == (fds, threads), 5.0), (
        "fds %d -> %d, threads %d -> %d (%s)"
        % (fds, open_fds(), threads, threading.active_count(), hein_thread_names())
    )


def test_tell_never_blocks_on_a_stalled_receiver(closer):
    t = closer.transmitter(2, timeoutACK=None, max_queue_bytes=256 << 20)
    stalled = closer.add(raw_receiver(t.port, "stalled", rcvbuf=4096))
    wait_registered(t, "stalled")
    payload = b"b" * 100_000
    start = time.monotonic()
    for _ in range(300):  # 30 MB that the stalled receiver will never read
        assert t.tell_raw(payload)
    assert time.monotonic() - start < 1.0
    assert "stalled" in t.receivers
    stalled.close()


def test_works_with_file_descriptors_above_1024(closer):
    spare = []
    try:
        while not spare or spare[-1] < 1100:
            spare.append(os.open(os.devnull, os.O_RDONLY))
        t = closer.transmitter(3)
        got = Collector()
        closer.receiver(t.port, "high-fd", got)
        wait_registered(t, "high-fd")
        t.tell("over 1024")
        assert got.wait_for_count(1) == [("over 1024", None)]
        assert t.ping() == {"high-fd": True}
    finally:
        closer.close()
        for fd in spare:
            os.close(fd)
