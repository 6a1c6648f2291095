"""The compact encoding on the wire (extension 5): who gets it, who does not, and the change
from one to the other while messages flow, with hand-written receivers and hein 0.2.3 ones."""

import datetime
import threading
import time

import pytest
import pytz
from helpers import WAIT, Collector, assert_eventually, wait_registered
from test_extensions import (
    TERM,
    FakeTransmitter,
    RawReceiver,
    make_frame,
    parse_frame,
    settle,
    start_legacy_receiver,
)

from hein import SocReceiver, json_dumps, json_loads
from hein._compact import compact_dumps
from hein._framing import KIND_COMPACT, KIND_JSON, KINDS, HeaderCache
from hein.soctransmitter import _Big

WHEN = datetime.datetime(2017, 6, 1, 12, 30, tzinfo=pytz.utc)


def control(compact):
    """A control frame as a hein 1 receiver writes it (extended JSON), with or without the
    compact flag (None: no such key, as a receiver that does not know extension 5)."""
    fields = '"v":"i:1","tags":"n:","seq":"b:1","sized":"b:1"'
    if compact is not None:
        fields += ',"compact":"b:%d"' % compact
    return make_frame(b"__ctl__", payload=("{%s}" % fields).encode())


def messages(raw):
    return [m for m in (parse_frame(f) for f in raw.frames()) if m[0] in (b"__jsn__", b"__jsc__")]


def test_receivers_that_ask_get_compact_frames(closer):
    t = closer.transmitter()
    got = Collector()
    modern = closer.receiver(t.port, "modern", process=got)
    raw = closer.add(RawReceiver(t.port, b"raw", control=control(True)))
    wait_registered(t, ["modern", "raw"])
    settle(t)
    assert {name: r["compact"] for name, r in t.stats()["receivers"].items()} == {
        "modern": True,
        "raw": True,
    }
    value = {"i": 1, "x": 1.5, "s": "é", "t": WHEN, "b": b"\x00\xff", "l": (1, None)}
    t.tell(value, tag="a")
    t.tell([1, 2])
    assert_eventually(lambda: len(messages(raw)) == 2)
    assert messages(raw) == [
        (b"__jsc__", b"a", b"1", compact_dumps(value)),
        (b"__jsc__", b"", b"1", b"[1,2]"),
    ]
    assert compact_dumps(value).startswith(b'{"i":1,"x":1.5,"s":"\xc3\xa9","t":{"\\u0000":["t",')
    items = got.wait_for_count(2)
    assert items == [(json_loads(json_dumps(value)), "a"), ([1, 2], None)]
    assert items[0][0]["t"].tzinfo is pytz.utc
    assert modern.stats()["bad_frames"] == 0


def test_unpack_false_and_retained_values_stay_in_the_extended_json(closer):
    t = closer.transmitter()
    raw = closer.add(RawReceiver(t.port, b"raw", control=control(True)))
    wait_registered(t, "raw")
    settle(t)
    t.tell({"a": 1}, tag="m", unpack=False)  # a Message's raw is extended JSON
    t.tell(2, tag="r", retain=True)  # retained values go to every receiver that comes
    t.tell(3, tag="c")
    assert_eventually(lambda: len(messages(raw)) == 3)
    assert messages(raw) == [
        (b"__jsn__", b"m", b"0", json_dumps({"a": 1})),
        (b"__jsn__", b"r", b"1", json_dumps(2)),
        (b"__jsc__", b"c", b"1", b"3"),
    ]


@pytest.mark.parametrize("flag", [False, None], ids=["compact-false", "no-compact-key"])
def test_one_receiver_that_does_not_ask_makes_every_message_extended_json(closer, flag):
    t = closer.transmitter()
    fast = closer.add(RawReceiver(t.port, b"fast", control=control(True)))
    wait_registered(t, "fast")
    settle(t)
    t.tell(1)
    assert_eventually(lambda: len(messages(fast)) == 1)
    slow = RawReceiver(t.port, b"slow", control=control(flag))
    wait_registered(t, "slow")
    settle(t)
    assert t.stats()["receivers"]["slow"]["compact"] is False
    t.tell(2)
    assert_eventually(lambda: len(messages(fast)) == 2 and len(messages(slow)) == 1)
    assert messages(slow) == [(b"__jsn__", b"", b"1", b'"i:2"')]
    slow.close()
    assert_eventually(lambda: "slow" not in t.receivers)
    t.tell(3)
    assert_eventually(lambda: len(messages(fast)) == 3)
    assert [m[0] + m[3] for m in messages(fast)] == [
        b"__jsc__1",
        b'__jsn__"i:2"',
        b"__jsc__3",
    ]


def test_frames_for_receivers_that_do_not_read_compact_ones(closer):
    """Compact frames in flight when a receiver that does not read them registers: skipped for
    one that has not subscribed yet (they were told before it registered), re-encoded for one
    that has (the transmitter's _readable and _Big.as_json)."""
    t = closer.transmitter()
    value = {"t": WHEN, "b": b"\xac\x96\xac\x96", "n": [1.5, None]}
    compact = make_frame(KIND_COMPACT, b"tg", True, compact_dumps(value))
    legacy = make_frame(KIND_JSON, b"tg", True, json_dumps(7))
    assert t._readable([compact, legacy, compact], False) == [legacy]
    again = t._readable([compact, legacy], True)
    assert [parse_frame(f[:-4]) for f in again] == [
        (b"__jsn__", b"tg", b"1", json_dumps(value)),
        (b"__jsn__", b"tg", b"1", json_dumps(7)),
    ]
    big = _Big(KIND_COMPACT, "tg", True, compact_dumps(["x" * 100_000, WHEN]))
    converted = big.as_json()
    assert converted is not None and converted.kind == KIND_JSON
    assert json_loads(converted.payload) == ["x" * 100_000, WHEN]
    assert big.as_json() is converted  # once per message


@pytest.mark.legacy
def test_a_legacy_receiver_joining_a_compact_stream(closer, peers):
    """While messages flow, a hein 0.2.3 receiver joins: it gets every message told after its
    registration, with its type; the hein receiver loses nothing through the change of
    encoding, and gets compact frames again once the 0.2.3 one has left."""
    t = closer.transmitter()
    got = Collector()
    modern = closer.receiver(t.port, "modern", process=got)
    wait_registered(t, "modern")
    settle(t)
    told_after_registration = []
    stop = threading.Event()

    def produce():
        deadline = time.monotonic() + WAIT
        for i in range(20_000):  # bounded in count and time
            if stop.is_set() or time.monotonic() > deadline:
                break
            registered = "old" in t.receivers
            t.tell({"i": i, "t": WHEN}, tag="s")
            if registered:
                told_after_registration.append(i)
            if i % 50 == 49:
                time.sleep(0.002)  # a steady stream, not a flood the 0.2.3 receiver drowns in

    producer = threading.Thread(target=produce, name="test-producer", daemon=True)
    producer.start()
    try:
        got.wait_for_count(200)  # compact frames are flowing
        old = start_legacy_receiver(peers, t.port, "old")
        wait_registered(t, ["old", "modern"])
        assert_eventually(lambda: len(told_after_registration) >= 300)
    finally:
        stop.set()
        producer.join(WAIT)
    last = told_after_registration[-1]
    events = old.wait_count("msg", len(told_after_registration))
    reprs = [e["repr"] for e in events]
    wanted = ["{'i': %d, 't': %r}" % (i, WHEN) for i in told_after_registration]
    assert wanted[0] in reprs, (wanted[0], reprs[:3])
    assert reprs[reprs.index(wanted[0]) :] == wanted
    items = got.wait_for_count(last + 1)
    assert [item[0]["i"] for item in items] == list(range(last + 1))
    assert all(item[0]["t"] == WHEN and item[0]["t"].tzinfo is pytz.utc for item in items)
    assert modern.stats()["missed"] == 0
    old.close()
    assert_eventually(lambda: "old" not in t.receivers)
    raw = closer.add(RawReceiver(t.port, b"raw", control=control(True)))
    wait_registered(t, "raw")
    settle(t)
    t.tell("after")
    assert_eventually(lambda: len(messages(raw)) == 1)
    assert messages(raw)[0][0] == b"__jsc__"


def test_a_receiver_registering_during_a_flood_never_sees_a_compact_frame(closer):
    """The transmitter's inbox holds compact frames told before the receiver registered; a
    receiver that never asked for them (as 0.2.3 ones never do) gets none of them."""
    t = closer.transmitter()
    got = Collector()
    closer.receiver(t.port, "modern", process=got)
    wait_registered(t, "modern")
    settle(t)
    stop = threading.Event()
    told = []

    def produce():
        deadline = time.monotonic() + WAIT
        for i in range(300_000):  # bounded in count and time
            if stop.is_set() or time.monotonic() > deadline:
                break
            t.tell({"i": i, "t": WHEN})
            told.append(i)

    producer = threading.Thread(target=produce, name="test-producer", daemon=True)
    producer.start()
    raws = []
    try:
        for n in range(5):
            assert_eventually(lambda n=n: len(told) > 2000 * (n + 1))
            raws.append(closer.add(RawReceiver(t.port, b"old-style-%d" % n)))
            wait_registered(t, "old-style-%d" % n)
        assert_eventually(lambda: all(len(messages(raw)) > 100 for raw in raws))
    finally:
        stop.set()
        producer.join(WAIT)
    for raw in raws:
        kinds = {m[0] for m in messages(raw)}
        assert kinds == {b"__jsn__"}, kinds
        numbers = [json_loads(m[3])["i"] for m in messages(raw)]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    got.wait_for_count(len(told), timeout=3 * WAIT)
    assert [item[0]["i"] for item in got.items] == told


def jsc(payload, tag=b""):
    return make_frame(KIND_COMPACT, tag, True, payload)


def test_runs_of_compact_frames_decode_like_single_ones(closer):
    """The receiver decodes a run of __jsc__ frames with one header in one scan; frames that
    need escaping, headers inside payloads, other tags, bad payloads and unpack 0 in the
    middle of a run: each message comes out as it would alone, bad ones skipped and counted."""
    fake = closer.add(FakeTransmitter())
    got = Collector()
    receiver = closer.receiver(fake.port, "runs", process=got)
    fake.accept(b"runs")
    tricky = "\u0b16 \u0b16\u0b16 __jsc__:1: \xac"  # UTF-8 of U+0B16 holds \xac\x96
    assert b"\xac\x96" in tricky.encode()
    good = [
        (b"", {"i": 0, "t": WHEN}),
        (b"", tricky),
        (b"", [b"\xac\x96\xac\x96", {"\x00": 1}]),
        (b"other", 3),
        (b"other", 4),
        (b"", 5),
    ]
    stream = b"".join(jsc(compact_dumps(value), tag) for tag, value in good[:2])
    stream += jsc(b'{"\\u0000":["t",2017,13]}')  # bad: a run falls back to frame by frame
    stream += jsc(compact_dumps(good[2][1]))
    stream += make_frame(KIND_COMPACT, b"", False, b"1")  # bad: unpack 0
    stream += b"".join(jsc(compact_dumps(value), tag) for tag, value in good[3:])
    stream += jsc(b"not json")  # bad, alone
    fake.send(stream)
    items = got.wait_for_count(len(good))
    assert items == [(json_loads(json_dumps(v)), tag.decode() or None) for tag, v in good]
    assert items[1][0] == tricky
    assert_eventually(lambda: receiver.stats()["bad_frames"] == 3)
    # a long clean run, sent in one write: the fast path, in order
    fake.send(b"".join(jsc(compact_dumps({"n": n, "t": WHEN}), b"run") for n in range(5000)))
    items = got.wait_for_count(len(good) + 5000)[len(good) :]
    assert [(item[0]["n"], item[1]) for item in items] == [(n, "run") for n in range(5000)]
    assert receiver.stats()["bad_frames"] == 3 and receiver.stats()["messages"] == 5006


def test_compact_run_parts():
    """SocReceiver._compact_run: which blocks it takes whole, and what it gives."""
    headers = HeaderCache(KINDS | {KIND_COMPACT})
    run = SocReceiver._compact_run
    one = jsc(b"[1]", b"t")[:-4]
    escaped = jsc('"\u0b16"'.encode(), b"t")[:-4]  # escaped on the wire: \xac\x96\xee
    assert b"\xac\x96\xee" in escaped
    block = TERM.join([one, one, escaped])
    tag, count, values = run(block, headers, None)
    assert (tag, count, values) == ("t", 3, [[1], [1], "\u0b16"])
    assert run(block, headers, ("x",)) == ("t", 3, None)  # counted, not delivered
    assert run(block, headers, ("t",))[2][:2] == [[1], [1]]
    mixed = TERM.join([one, jsc(b"[1]", b"u")[:-4]])
    assert run(mixed, headers, None) is None  # two headers: frame by frame
    assert run(make_frame(KIND_JSON, b"", True, b'"i:1"')[:-4], headers, None) is None
    assert run(TERM.join([one, jsc(b"[1", b"t")[:-4]]), headers, None) is None
    assert run(jsc(b"1,2", b"t")[:-4], headers, None) is None  # two values in one payload


def test_a_message_told_as_soon_as_the_receiver_is_connected_reaches_it(closer):
    """The transmitter counts a new receiver as one that may not read the compact encoding
    before its registration ACK leaves: a tell() made as soon as the receiver knows it is
    registered (here, while the transmitter's thread is held right after writing that ACK)
    is in the extended JSON, and reaches it."""
    t = closer.transmitter()
    told = threading.Event()
    send_to = t._send_to

    def held_send_to(conn, data):
        send_to(conn, data)
        if data[:8] == b"\x06__png__":  # the registration ACK and the announcing ping
            told.wait(WAIT)

    t._send_to = held_send_to
    connected = threading.Event()
    got = Collector()
    receiver = closer.receiver(t.port, "quick", process=got, connect=False)
    receiver._newconnection = connected.set
    receiver.connect()
    assert connected.wait(WAIT)
    t.tell({"first": WHEN})
    told.set()
    assert got.wait_for_count(1) == [({"first": WHEN}, None)]
