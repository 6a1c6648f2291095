"""hein.bridge against real nats-server processes (never a mock).

The chain under test is the deployment of README "Scaling past one machine"::

    SocTransmitter -> HeinToNats -> nats-server(s) -> NatsToHein -> SocReceiver (or hein 0.2.3)

Servers run on free 127.0.0.1 ports and are stopped by pid (``tests/nats_helpers.py``); every
wait polls a condition with a deadline.
"""

import datetime as dt
import logging
import os
import signal
import string
import subprocess
import sys
import threading
import time

import pytest
from helpers import (
    LOCALHOST,
    REPO_ROOT,
    Collector,
    assert_eventually,
    free_port,
    holds_for,
    wait_for,
    wait_registered,
)
from nats_helpers import NatsProbe, NatsServer, start_cluster, start_server
from test_legacy_codec import SPECIAL_BYTES, SPECIAL_TEXT, ZONED, ZONED_TIMES
from test_legacy_interop import VALUES as LEGACY_VALUES
from test_serializer import BIG_INTS, NASTY_BYTES, NASTY_TEXT, assert_same

import hein
import hein.bridge
from hein import Message, SocTransmitter, json_dumps
from hein.bridge import (
    HEADER_KIND,
    HEADER_ORIGIN,
    HEADER_UNPACK,
    UNTAGGED_TOKEN,
    HeinToNats,
    NatsToHein,
    subject_for,
    tag_from_subject,
    tag_to_token,
    token_to_tag,
)

#: Every character a tag may hold.
TAG_CHARACTERS = string.ascii_letters + string.digits + "._- "
#: Tags that use every allowed character, and the awkward ones.
TAGS = [TAG_CHARACTERS[k : k + 15] for k in range(0, len(TAG_CHARACTERS), 15)] + [
    ".",
    " ",
    "..",
    " . ",
    "a.b",
    "a b",
    "-",
    "_",
    "~untagged"[1:],
    "x" * 15,
    None,
]

#: The type corpus of the wire-core tests, as far as it round-trips with its type.
CORPUS = [
    None,
    True,
    False,
    0,
    -5,
    1.5,
    -0.0,
    float("inf"),
    float("-inf"),
    "",
    b"",
    [],
    {},
    (),
    [[[]]],
    {"": {"": []}},
    dt.date(1, 1, 1),
    dt.date(9999, 12, 31),
    dt.datetime.min,
    dt.datetime.max,
    dt.time.min,
    dt.time.max,
    *[n for n in BIG_INTS if abs(n) < 10**6000],
    *NASTY_TEXT,
    *NASTY_BYTES,
    *SPECIAL_TEXT,
    *SPECIAL_BYTES,
    *ZONED,
    *ZONED_TIMES,
    {"nested": [1, 2.5, "three", b"\xac\x96\xac\x96", {"when": ZONED[0], "t": ZONED_TIMES[0]}]},
    ("a", ("tuple", 1)),
    {1: "int key", None: "none key"},
]

#: Fast reconnection for the tests.
FAST = {"reconnect_time_wait": 0.05, "stats_interval": None}


@pytest.fixture
def nats_server():
    server = start_server("solo")
    try:
        yield server
    finally:
        server.close()


class Chain:
    """transmitter -> HeinToNats -> NATS -> NatsToHein -> receiver "far" (a Collector)."""

    def __init__(self, closer, url_out, url_in, out_options=None, in_options=None, far=True):
        self.closer = closer
        self.t = closer.transmitter(5)
        self.out = closer.add(
            HeinToNats(
                self.t.port,
                url_out,
                name="to-nats",
                host=LOCALHOST,
                connectWait=0.05,
                **dict(FAST, **(out_options or {})),
            )
        )
        self.inn = closer.add(NatsToHein(url_in, port=0, **dict(FAST, **(in_options or {}))))
        self.inn.transmitter._newconnection = lambda name: None
        assert self.out.wait_ready(10), self.out.stats()
        assert self.inn.wait_ready(10), self.inn.stats()
        self.got = Collector()
        if far:
            self.far = closer.receiver(self.inn.port, "far", process=self.got)
            wait_registered(self.inn.transmitter, "far")
        self.told = 0

    # --------------------------------------------------------------- a numbered stream

    def tell_next(self):
        self.t.tell({"i": self.told}, tag="stream")
        self.told += 1

    def indexes(self):
        return [data["i"] for data, tag in self.got.items if tag == "stream"]

    def stream_until(self, condition, timeout=20.0, what="the condition"):
        """Tell numbered messages, one per poll of ``condition`` (at most every 5 ms)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(
                    "streamed %d messages for %.3g s without %s; out %r, in %r"
                    % (self.told, timeout, what, self.out.stats(), self.inn.stats())
                )
            self.tell_next()
            wait_for(condition, 0.005, interval=0.001)

    def prime(self, timeout=20.0):
        """Stream until the far receiver gets a message (routes and interest in place)."""
        self.stream_until(lambda: self.indexes(), timeout, "any message arriving")

    def losses(self):
        out, inn = self.out.stats(), self.inn.stats()
        return out["dropped"] + inn["lost"] + inn["dropped"]


# ------------------------------------------------------------------ subjects, pure functions


def test_tag_tokens_round_trip_and_are_single_subject_tokens():
    for tag in TAGS:
        token = tag_to_token(tag)
        assert token and not set(token) & set(". *>\t\r\n"), (tag, token)
        assert token_to_tag(token) == (tag or None)
        assert tag_from_subject(subject_for("a.b", tag)) == (tag or None)
    assert tag_to_token("temp.in") == "temp~2Ein"
    assert tag_to_token("my tag") == "my~20tag"
    assert tag_to_token("plain-tag_1") == "plain-tag_1"
    assert tag_to_token(None) == tag_to_token("") == UNTAGGED_TOKEN == "~untagged"
    assert subject_for("hein", "a.b c") == "hein.a~2Eb~20c"
    assert subject_for("site1.hein", None) == "site1.hein.~untagged"
    # cleaned as it travels: other characters removed, 15 at most
    assert tag_to_token("my tag!*>") == "my~20tag"
    assert token_to_tag("x" * 20) == "x" * 15
    # tokens from other NATS clients
    assert tag_from_subject("sensors.kitchen.temp") == "temp"
    assert token_to_tag("~zz") == "zz"
    assert token_to_tag("caf\u00e9") == "caf"
    assert token_to_tag("") is None


def test_bad_arguments_are_refused(closer):
    with pytest.raises(ValueError):
        HeinToNats(1234, "nats://127.0.0.1:1", prefix="a..b")
    with pytest.raises(ValueError):
        HeinToNats(1234, "nats://127.0.0.1:1", prefix="hein.>")
    with pytest.raises(ValueError):
        NatsToHein("nats://127.0.0.1:1", subjects=["a.>.b"])
    with pytest.raises(ValueError):
        HeinToNats(1234, [], prefix="hein")
    with pytest.raises(ValueError):
        HeinToNats(1234, "nats://127.0.0.1:1", token="t", user="u", password="p")
    with pytest.raises(TypeError):
        HeinToNats(1234, "nats://127.0.0.1:1", error_cb=None)
    with pytest.raises(ValueError):
        HeinToNats(1234, "nats://127.0.0.1:1", bridge_id="has space")
    for url in ("nats://127.0.0.1:notaport", "http://127.0.0.1:4222", "nats://:4222"):
        with pytest.raises(ValueError, match="URL"):
            NatsToHein(url)


def test_core_never_imports_nats():
    code = (
        "import sys, hein, hein.cli, hein.core, hein.socreceiver, hein.soctransmitter; "
        "hein.cli.build_parser(); "
        "print(sorted(m for m in sys.modules if m == 'nats' or m.startswith(('nats.', "
        "'hein.bridge'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=str(REPO_ROOT), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --------------------------------------------------------------------- through one server


def test_type_corpus_tags_raw_and_unpack_false_through_nats(closer, nats_server):
    chain = Chain(closer, nats_server.url, nats_server.url)
    t = chain.t
    hein.register_type(complex, "j", repr, lambda text: complex(text.strip("()")))
    closer.add(lambda: hein.unregister_type(complex))
    expected = []
    for index, value in enumerate(CORPUS):
        tag = TAGS[index % len(TAGS)]
        assert t.tell(value, tag=tag)
        expected.append(("value", value, tag))
    for tag in TAGS:
        assert t.tell({"tag": tag}, tag=tag)
        expected.append(("value", {"tag": tag}, tag))
    assert t.tell(complex(1, -2), tag="custom")
    expected.append(("value", complex(1, -2), "custom"))
    lazy = {"a": [1, 2], "when": ZONED[0]}
    assert t.tell(lazy, tag="later", unpack=False)
    expected.append(("message", lazy, "later"))
    raw = b"raw \x00\xff \xac\x96\xac\x96 \xac\x96\xee end"
    assert t.tell_raw(raw, tag="bin.x y")
    expected.append(("raw", raw, "bin.x y"))
    assert t.tell_raw("text sent raw")
    expected.append(("raw", b"text sent raw", None))
    big = os.urandom(200_000)  # over the transmitter's sized-frame threshold
    assert t.tell_raw(big, tag="big")
    expected.append(("raw", big, "big"))
    big_value = {"blob": big, "text": "\xac\x96" * 1000}
    assert t.tell(big_value, tag="big")
    expected.append(("value", big_value, "big"))

    got = chain.got.wait_for_count(len(expected), timeout=30)
    for index, ((data, tag), (kind, value, wanted_tag)) in enumerate(zip(got, expected)):
        assert tag == (wanted_tag or None), (index, tag, wanted_tag)
        if kind == "value":
            assert_same(data, value, "message %d" % index)
        elif kind == "message":
            assert type(data) is Message, index
            assert data.raw == json_dumps(value)
            assert_same(data.message, value)
        else:
            assert type(data) is bytes and data == value, index
    # (a bridge counts a message once told: its receivers may have it a moment before)
    assert_eventually(
        lambda: chain.out.stats()["forwarded"] == chain.inn.stats()["forwarded"] == len(expected),
        message=lambda: (chain.out.stats(), chain.inn.stats()),
    )
    out, inn = chain.out.stats(), chain.inn.stats()
    assert out["dropped"] == inn["dropped"] == inn["lost"] == 0


@pytest.mark.parametrize("writer", ["hpub", "nats-py publish"])
def test_subjects_headers_and_payloads_on_nats(closer, nats_server, monkeypatch, writer):
    if writer != "hpub":  # the bridge's fallback when nats-py lacks what its writer needs
        monkeypatch.setattr(hein.bridge, "_can_write_commands", lambda nc: False)
    probe = closer.add(NatsProbe(nats_server.url, ["hein.>"]))
    t = closer.transmitter(5)
    out = closer.add(
        HeinToNats(t.port, nats_server.url, host=LOCALHOST, bridge_id="site-a", **FAST)
    )
    assert out.wait_ready(10)
    value = {"x": 1.5, "when": ZONED[2]}
    t.tell(value, tag="temp.in")
    t.tell(value, unpack=False)
    t.tell_raw(b"\x00raw", tag="my tag")
    assert_eventually(lambda: len(probe.received()) == 3, message=probe.received)
    first, second, third = probe.received()
    assert first == (
        "hein.temp~2Ein",
        {HEADER_KIND: "json", HEADER_UNPACK: "1", HEADER_ORIGIN: "site-a 1"},
        json_dumps(value),
    )
    assert second == (
        "hein.~untagged",
        {HEADER_KIND: "json", HEADER_UNPACK: "0", HEADER_ORIGIN: "site-a 1"},
        json_dumps(value),
    )
    assert third == (
        "hein.my~20tag",
        {HEADER_KIND: "raw", HEADER_UNPACK: "0", HEADER_ORIGIN: "site-a 1"},
        b"\x00raw",
    )


def test_messages_from_other_nats_clients(closer, nats_server):
    probe = closer.add(NatsProbe(nats_server.url))
    inn = closer.add(NatsToHein(nats_server.url, subjects=["sensors.>", "hein.>"], **FAST))
    assert inn.wait_ready(10)
    got = Collector()
    closer.receiver(inn.port, "far", process=got)
    wait_registered(inn.transmitter, "far")
    probe.publish("sensors.kitchen.temp", b"21.5")  # no headers: raw, tag = last token
    probe.publish("hein.a~2Eb", json_dumps([1, 2]), {HEADER_KIND: "json"})
    probe.publish("hein.x", b"?", {HEADER_KIND: "pickle"})  # unknown kind: dropped
    probe.publish("hein.y", b"", {HEADER_KIND: "raw"})  # an empty raw message: dropped
    probe.publish("hein.z", json_dumps("lazy"), {HEADER_KIND: "json", HEADER_UNPACK: "0"})
    assert got.wait_for_count(3) == [
        (b"21.5", "temp"),
        ([1, 2], "a.b"),
        (Message(b'"u:lazy"'), "z"),
    ]
    assert_eventually(
        lambda: (
            (inn.stats()["dropped_bad"], inn.stats()["received"], inn.stats()["forwarded"])
            == (2, 5, 3)
        ),
        message=inn.stats,
    )
    # a bridge's numbers: a gap is counted as lost, per origin and subject
    for origin, number in (("far", 1), ("far", 2), ("far", 6), ("other", 1), ("far", 7)):
        probe.publish(
            "hein.n", b"x", {HEADER_KIND: "raw", HEADER_ORIGIN: "%s %d" % (origin, number)}
        )
    got.wait_for_count(8)
    assert inn.stats()["lost"] == 3


def test_a_hein_0_2_3_receiver_at_the_far_end(closer, peers, nats_server):
    from test_legacy_interop import start_legacy_receiver

    chain = Chain(closer, nats_server.url, nats_server.url, far=False)
    legacy = start_legacy_receiver(peers, chain.inn.port, "old-timer")
    wait_registered(chain.inn.transmitter, "old-timer")
    for value in LEGACY_VALUES:
        assert chain.t.tell(value, tag="my tag!*")
    assert chain.t.tell_raw(b"raw \x00\xff bytes \xac\x96\xac\x96 end", tag="bin.x")
    lazy = {"a": [1, 2], "d": dt.date(2000, 1, 2)}
    assert chain.t.tell(lazy, tag="later", unpack=False)
    events = legacy.wait_count("msg", len(LEGACY_VALUES) + 2, timeout=20)
    for event, value in zip(events, LEGACY_VALUES):
        assert (event["tag"], event["repr"]) == ("my tag", repr(value)), event
    raw, message = events[len(LEGACY_VALUES) :]
    assert (raw["tag"], raw["repr"]) == ("bin.x", repr(b"raw \x00\xff bytes \xac\x96\xac\x96 end"))
    assert (message["tag"], message["type"]) == ("later", "Message")
    assert message["message"] == repr(lazy)


def test_both_directions_in_one_process_without_loops(closer, nats_server):
    url = nats_server.url
    sites = {}
    for site in ("a", "b"):
        t = closer.transmitter(5)
        out = closer.add(
            HeinToNats(
                t.port, url, name="out-" + site, host=LOCALHOST, bridge_id="site-" + site, **FAST
            )
        )
        inn = closer.add(
            NatsToHein(url, port=0, name="in-" + site, bridge_id="site-" + site, **FAST)
        )
        got = Collector()
        closer.receiver(inn.port, "local-" + site, process=got)
        assert out.wait_ready(10) and inn.wait_ready(10)
        wait_registered(inn.transmitter, "local-" + site)
        sites[site] = (t, out, inn, got)
    ta, _, in_a, got_a = sites["a"]
    tb, _, in_b, got_b = sites["b"]
    ta.tell("from a", tag="news")
    assert got_b.wait_for_count(1) == [("from a", "news")]
    assert_eventually(lambda: in_a.stats()["ignored"] == 1, message=in_a.stats)
    tb.tell("from b", tag="news")
    assert got_a.wait_for_count(1) == [("from b", "news")]
    assert_eventually(lambda: in_b.stats()["ignored"] == 1, message=in_b.stats)
    assert holds_for(lambda: got_a.count == 1 and got_b.count == 1, 0.3)
    # a to-nats bridge never listens to a from-nats bridge of its own process
    with pytest.raises(ValueError, match="back to NATS"):
        HeinToNats(in_a.port, url, host=LOCALHOST, **FAST)


def test_a_burst_larger_than_the_queue_is_held_back_not_dropped(closer, nats_server):
    chain = Chain(closer, nats_server.url, nats_server.url, out_options={"queue_size": 50})
    for i in range(5000):
        chain.t.tell({"i": i}, tag="stream")
    chain.told = 5000
    assert_eventually(lambda: len(chain.indexes()) == 5000, 30, message=chain.out.stats)
    assert chain.indexes() == list(range(5000))
    assert chain.out.stats()["dropped"] == 0


def test_a_message_over_max_payload_is_dropped_and_counted(closer, nats_server):
    chain = Chain(closer, nats_server.url, nats_server.url)
    assert chain.t.tell_raw(os.urandom(2 * 1024 * 1024), tag="huge")  # server max: 1 MiB
    chain.t.tell("after", tag="small")
    assert chain.got.wait_for_count(1) == [("after", "small")]
    stats = chain.out.stats()
    assert (stats["dropped_nats"], stats["dropped"], stats["forwarded"]) == (1, 1, 1)
    assert chain.out.connected  # NATS was not disturbed


# ---------------------------------------------------------------------------------- faults


def test_nats_server_killed_and_restarted_mid_stream(closer, nats_server):
    # nats-py buffers at most 4 KiB while disconnected (the bridge's own queue is drained
    # into that buffer, and what does not fit is dropped and counted)
    chain = Chain(closer, nats_server.url, nats_server.url, out_options={"pending_size": 4096})
    chain.stream_until(lambda: len(chain.indexes()) >= 50, what="50 messages")
    nats_server.kill()
    assert_eventually(lambda: not chain.out.connected and not chain.inn.connected)
    chain.stream_until(lambda: chain.out.stats()["dropped_nats"] >= 10, what="drops")
    nats_server.start()
    chain.stream_until(
        lambda: (
            chain.out.stats()["nats_reconnects"] >= 1 and chain.inn.stats()["nats_reconnects"] >= 1
        ),
        what="both bridges reconnecting",
    )
    resumed_from = chain.told
    chain.stream_until(
        lambda: any(i >= resumed_from for i in chain.indexes()), what="the stream resuming"
    )
    # stop telling: everything told is either received or counted as lost by the bridges
    told = chain.told
    assert_eventually(
        lambda: len(chain.indexes()) + chain.losses() == told,
        message=lambda: (
            "told %d, received %d, out %r, in %r"
            % (told, len(chain.indexes()), chain.out.stats(), chain.inn.stats())
        ),
    )
    indexes = chain.indexes()
    assert indexes == sorted(set(indexes)), "duplicates or disorder"
    assert chain.out.stats()["received"] == told  # the hein side lost nothing
    assert chain.out.stats()["dropped_nats"] >= 10  # told while NATS was away: counted
    assert chain.out.stats()["reconnects"] >= 1 and chain.inn.stats()["reconnects"] >= 1


def test_hein_transmitter_restarted(closer, nats_server):
    chain = Chain(closer, nats_server.url, nats_server.url)
    chain.stream_until(lambda: len(chain.indexes()) >= 20, what="20 messages")
    port = chain.t.port
    chain.t.close()
    assert_eventually(lambda: not chain.out.receiver.connected)
    chain.t = closer.transmitter(5, port=port)
    wait_registered(chain.t, "to-nats")
    chain.t.tell("after the restart", tag="news")
    chain.got.wait_for_item(lambda item: item == ("after the restart", "news"))
    stats = chain.out.stats()
    assert stats["hein_reconnects"] == 1 and stats["reconnects"] >= 1
    assert stats["dropped"] == 0


def test_nats_down_the_bridge_holds_a_bounded_queue_then_drops(closer):
    server = NatsServer("late")  # not started yet: nothing listens on its port
    closer.add(server)
    t = closer.transmitter(5)
    out = closer.add(
        HeinToNats(t.port, server.url, host=LOCALHOST, queue_size=100, connectWait=0.05, **FAST)
    )
    assert_eventually(lambda: out.receiver.connected)
    assert not out.wait_ready(0.2)
    for i in range(1000):
        t.tell({"i": i})
    assert_eventually(lambda: out.stats()["received"] == 1000, message=out.stats)
    stats = out.stats()
    assert (stats["queued"], stats["dropped_full"], stats["forwarded"]) == (100, 900, 0)
    probe = None
    server.start()
    probe = closer.add(NatsProbe(server.url, ["hein.>"]))
    assert out.wait_ready(10)
    t.tell({"i": 1000})
    assert_eventually(lambda: out.stats()["forwarded"] == 101, message=out.stats)
    assert_eventually(lambda: any(m[2] == json_dumps({"i": 1000}) for m in probe.received()))


def test_cluster_failover_when_the_publishing_server_dies(closer):
    servers = start_cluster(["A", "B", "C"])
    for server in servers:
        closer.add(server)
    a, b, c = servers
    chain = Chain(
        closer,
        [a.url, b.url],
        [c.url],
        out_options={"dont_randomize": True},  # on A first
    )
    assert chain.out.nats_url == a.url
    chain.prime()
    chain.stream_until(lambda: len(chain.indexes()) >= 30, what="30 messages through A and C")
    a.kill()
    chain.stream_until(
        lambda: chain.out.stats()["nats_reconnects"] >= 1, what="the bridge failing over"
    )
    assert chain.out.nats_url in (b.url, c.url)  # B, or C that the cluster announced
    resumed_from = chain.told
    chain.stream_until(
        lambda: any(i >= resumed_from for i in chain.indexes()), what="the stream resuming"
    )
    told = chain.told
    assert_eventually(
        lambda: len(chain.indexes()) + chain.losses() == told,
        message=lambda: (
            "told %d, received %d, out %r, in %r"
            % (told, len(chain.indexes()), chain.out.stats(), chain.inn.stats())
        ),
    )
    assert chain.inn.stats()["nats_reconnects"] == 0  # C never went away


# ------------------------------------------------------------------------------ JetStream


def test_jetstream_replays_to_a_late_subscriber_and_a_durable_one_resumes(closer):
    server = closer.add(start_server("js", jetstream=True))
    t = closer.transmitter(5)
    out = closer.add(
        HeinToNats(t.port, server.url, host=LOCALHOST, stream="HEIN", connectWait=0.05, **FAST)
    )
    assert out.wait_ready(10)
    for i in range(5):  # nobody listens yet: the stream keeps them
        t.tell({"i": i, "when": ZONED[0]}, tag="a.b")
    t.tell_raw(b"raw", tag="c")
    assert_eventually(lambda: out.stats()["forwarded"] == 6, message=out.stats)

    def late_bridge(name):
        """A durable consumer's bridge and a receiver (the server may still see the last
        bridge's subscription for a moment: try again until it binds)."""
        deadline = time.monotonic() + 10
        while True:
            inn = NatsToHein(server.url, stream="HEIN", durable="late", port=0, **FAST)
            got = Collector()
            receiver = receiver_of(inn.port, name, got)
            if inn.wait_ready(3) or time.monotonic() > deadline:
                break
            receiver.close()
            inn.close()
        closer.add(inn)
        closer.add(receiver)
        assert inn.wait_ready(0), inn.stats()
        return inn, receiver, got

    def receiver_of(port, name, process):
        receiver = hein.SocReceiver(port, name, connect=False, connectWait=0.05, hostname=LOCALHOST)
        receiver.process = process
        receiver._newconnection = lambda: None
        receiver.connect()
        return receiver

    inn, receiver, got = late_bridge("late")
    items = got.wait_for_count(6)
    for i, (data, tag) in enumerate(items[:5]):
        assert tag == "a.b"
        assert_same(data, {"i": i, "when": ZONED[0]})
    assert items[5] == (b"raw", "c")
    assert_eventually(lambda: inn.stats()["forwarded"] == 6, message=inn.stats)
    receiver.close()
    inn.close()
    for i in range(5, 8):  # told while the durable consumer's bridge is away
        t.tell({"i": i}, tag="a.b")
    assert_eventually(lambda: out.stats()["forwarded"] == 9, message=out.stats)
    inn, receiver, got = late_bridge("late-again")
    assert [data for data, _ in got.wait_for_count(3)] == [{"i": 5}, {"i": 6}, {"i": 7}]
    assert holds_for(lambda: got.count == 3, 0.3)  # nothing acknowledged came back


def test_jetstream_arguments():
    with pytest.raises(ValueError):
        NatsToHein("nats://127.0.0.1:1", durable="d")  # no stream
    with pytest.raises(ValueError):
        NatsToHein("nats://127.0.0.1:1", stream="a.b")
    with pytest.raises(ValueError):
        NatsToHein("nats://127.0.0.1:1", stream="S", deliver="by_start_time")
    with pytest.raises(ValueError):
        NatsToHein("nats://127.0.0.1:1", stream="S", durable="d", subjects=["a.>", "b.>"])


# ----------------------------------------------------------------------- lifecycle, logging


def test_threads_close_and_idempotence(nats_server):
    t = SocTransmitter(0, 5)
    t._newconnection = lambda name: None
    out = HeinToNats(t.port, nats_server.url, name="named", host=LOCALHOST, **FAST)
    inn = NatsToHein(nats_server.url, name="other", **FAST)
    try:
        assert out.wait_ready(10) and inn.wait_ready(10)
        names = {thread.name for thread in threading.enumerate()}
        assert {"hein-bridge-to-nats-named", "hein-bridge-from-nats-other"} <= names
        assert out.running and inn.running
    finally:
        for item in (out, inn):
            item.close()
            item.close()
        t.close()
    assert not out.running and not inn.running
    assert not inn.transmitter.running


def test_close_while_nats_never_answered():
    port = free_port()
    inn = NatsToHein("nats://127.0.0.1:%d" % free_port(), port=port, **FAST)
    started = time.monotonic()
    inn.close()
    assert time.monotonic() - started < 3.0
    assert not inn.running


def test_counters_are_logged_at_debug_level(closer, nats_server, caplog):
    caplog.set_level(logging.DEBUG, logger="hein.bridge")
    t = closer.transmitter(5)
    out = closer.add(
        HeinToNats(
            t.port, nats_server.url, host=LOCALHOST, reconnect_time_wait=0.05, stats_interval=0.05
        )
    )
    assert out.wait_ready(10)
    t.tell("counted")
    assert_eventually(
        lambda: any(
            "forwarded=1" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records
        )
    )


# ------------------------------------------------------------------------------------- CLI


def _hein(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "hein", *args],
        cwd=str(REPO_ROOT),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_cli_bridges_and_a_clean_ctrl_c(closer, nats_server):
    far_port = free_port()
    t = closer.transmitter(5)
    from_nats = _hein("bridge", "from-nats", str(far_port), "--nats", nats_server.url)
    to_nats = _hein(
        "bridge", "to-nats", str(t.port), "--nats", nats_server.url, "--name", "cli-bridge"
    )
    procs = [from_nats, to_nats]
    closer.add(lambda: [p.kill() for p in procs if p.poll() is None])
    got = Collector()
    closer.receiver(far_port, "far", process=got, connectWait=0.05)
    wait_registered(t, "cli-bridge", timeout=30)
    # the from-nats bridge's subscription may come a moment later: tell until it goes through
    deadline = time.monotonic() + 30
    while not got.count and time.monotonic() < deadline:
        t.tell({"via": "cli"}, tag="a.b")
        wait_for(lambda: got.count, 0.05)
    assert got.items[0] == ({"via": "cli"}, "a.b")
    for proc in procs:
        proc.send_signal(signal.SIGINT)
    for proc in procs:
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert "bridge stopped: received" in err, err


def test_cli_usage_errors():
    for args, code in (
        (["bridge"], 2),
        (["bridge", "to-nats"], 2),
        (["bridge", "to-nats", "5000", "--password", "secret"], 2),
        (["bridge", "from-nats", "0", "--tls-cert", "cert.pem"], 2),
        (["bridge", "to-nats", "5000", "--prefix", "a..b"], 1),
    ):
        proc = _hein(*args)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == code, (args, err)


def test_the_bridge_header_parser_agrees_with_nats_py():
    from nats.aio.client import Client

    assert hein.bridge._has_header_parser()
    assert isinstance(hein.bridge._new_client(), hein.bridge._Client)
    blocks = [
        b"Hein-Kind: json\r\nHein-Unpack: 1\r\nHein-Origin: host-1-ab 17\r\n\r\n",
        b"A:b\r\nC:\tD \r\nno colon\r\n\r\n",
        b"Bad Name: x\r\nTab\tName: y\r\nOk: v\xc3\xa9\r\n",
        b"Caf\xc3\xa9: x\r\nEmpty:\r\n: nameless\r\nX: bad \xff utf-8\r\n",
        b"Twice: 1\r\nTwice: 2\r\n",
        b"",
    ]
    for raw in blocks:
        assert hein.bridge._parse_header_lines(raw) == Client._parse_header_lines(raw), raw
