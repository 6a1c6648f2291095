"""Interoperability with hein 0.2.3, both directions, over real loopback sockets.

The legacy peers run in child processes under the legacy environment's interpreter
(``tests/legacy.py``): ``legacy_scripts/legacy_receiver.py`` listens to our transmitter and
reports what the legacy code delivered; ``legacy_scripts/legacy_transmitter.py`` sends what we
ask to our receivers. Values are limited to what 0.2.3 itself handles correctly (ASCII text, no
quotes or backslashes, naive dates and times; see PROTOCOL.md "Legacy bugs").

Legacy limits to keep in mind: its transmitter writes at most 100 times per second, keeps at most
5 receivers and starts a multiprocessing manager (killed with its process group); its receiver
connects by default to ``gethostbyname(gethostname())``, which our transmitter listens on too.
"""

import ast
import datetime
import socket
import time

import pytest
from helpers import (
    Collector,
    assert_eventually,
    free_port,
    holds_for,
    wait_registered,
)

from hein import Message

pytestmark = pytest.mark.legacy

# What 0.2.3 carries faithfully in both directions.
VALUES = [
    {"int": 3, "neg": -17, "big": 2**40, "float": 2.5, "small": -1e-07, "text": "plain ASCII text"},
    {
        "date": datetime.date(2021, 12, 31),
        "datetime": datetime.datetime(2020, 2, 29, 23, 59, 58, 123456),
    },
    {"time": datetime.time(7, 8, 9, 10), "none": None, "yes": True, "no": False},
    {"nested": {"list": [1, 2.0, "three", [4, {"five": 5}]]}},
    [1, "two", 3.0, None],
    42,
    "just a string",
    datetime.date(1970, 1, 1),
]


def start_legacy_receiver(peers, port, name, host="127.0.0.1"):
    return peers.start(
        "legacy_receiver.py", port, name, "--host", host, legacy=True, label="legacy-rx-%s" % name
    )


def start_legacy_transmitter(peers, port, nreceivermax=5):
    return peers.start(
        "legacy_transmitter.py", port, nreceivermax, legacy=True, label="legacy-tx-%d" % port
    )


# ------------------------------------------------------------- legacy receiver, our transmitter


def test_legacy_receiver_gets_tell_values_tags_and_raw(closer, peers):
    t = closer.transmitter(5)
    legacy = start_legacy_receiver(peers, t.port, "old-timer")
    wait_registered(t, "old-timer")
    legacy.wait_event("connected")
    for value in VALUES:
        assert t.tell(value, tag="my tag!*")
    assert t.tell_raw("raw text")
    assert t.tell_raw(b"raw \x00\xff bytes \xac\x96\xac\x96 end", tag="bin")
    messages = legacy.wait_count("msg", len(VALUES) + 2)
    for event, value in zip(messages, VALUES):
        assert event["tag"] == "my tag"
        assert event["repr"] == repr(value), event
    raw_text, raw_bytes = messages[len(VALUES) :]
    assert (raw_text["tag"], raw_text["repr"]) == (None, repr(b"raw text"))
    assert (raw_bytes["tag"], raw_bytes["repr"]) == (
        "bin",
        repr(b"raw \x00\xff bytes \xac\x96\xac\x96 end"),
    )


def test_legacy_receiver_gets_its_message_with_unpack_false(closer, peers):
    t = closer.transmitter(5)
    legacy = start_legacy_receiver(peers, t.port, "lazy")
    wait_registered(t, "lazy")
    value = {"a": [1, 2], "d": datetime.date(2000, 1, 2)}
    t.tell(value, tag="later", unpack=False)
    (event,) = legacy.wait_count("msg", 1)
    assert event["type"] == "Message"
    assert event["tag"] == "later"
    assert event["message"] == repr(value)


def test_legacy_receiver_answers_pings_and_stays(closer, peers):
    t = closer.transmitter(5, timeoutACK=1.0, heartbeat=0.1)  # frequent heartbeat pings too
    legacy = start_legacy_receiver(peers, t.port, "pinged")
    ours = closer.receiver(t.port, "ours")
    wait_registered(t, ["pinged", "ours"])
    for _ in range(3):
        assert t.ping() == {"pinged": True, "ours": True}
    assert holds_for(lambda: "pinged" in t.receivers, 0.5)
    t.tell("still there")
    assert legacy.wait_count("msg", 1)[0]["repr"] == repr("still there")
    assert ours.connected


def test_legacy_receiver_with_its_default_host(closer, peers):
    t = closer.transmitter(5)  # listens on loopback and on the address of the hostname
    legacy = start_legacy_receiver(peers, t.port, "defaulted", host="default")
    assert legacy.select("ready")[0]["host"] == socket.gethostbyname(socket.gethostname())
    wait_registered(t, "defaulted")
    t.tell({"k": 1})
    assert legacy.wait_count("msg", 1)[0]["repr"] == repr({"k": 1})


def test_legacy_duplicate_name_refused_while_the_first_is_alive(closer, peers):
    t = closer.transmitter(5)
    hello = Collector()
    t._newconnection = hello
    first = start_legacy_receiver(peers, t.port, "dup")
    assert hello.wait_for_count(1) == ["dup"]
    address = t.receivers["dup"].address
    second = start_legacy_receiver(peers, t.port, "dup")
    ours = closer.receiver(t.port, "dup")
    assert holds_for(
        lambda: (
            t.receivers["dup"].address == address
            and second.count("connected") == 0
            and not ours.connected
        ),
        1.0,
    )
    t.tell("to the first")
    assert first.wait_count("msg", 1)[0]["repr"] == repr("to the first")
    assert second.count("msg") == 0
    assert hello.count == 1
    # once the first is gone, the name is free again (a refused 0.2.3 receiver never retries
    # properly, a legacy bug: our receiver of that name, which does, gets it)
    first.kill()
    assert_eventually(lambda: ours.connected)
    assert hello.wait_for_count(2) == ["dup", "dup"]


def test_legacy_receiver_accepted_once_the_name_is_free(closer, peers):
    t = closer.transmitter(5)
    ours = closer.receiver(t.port, "shared")
    wait_registered(t, "shared")
    ours.close()
    assert_eventually(lambda: t.nreceivers == 0)
    legacy = start_legacy_receiver(peers, t.port, "shared")
    legacy.wait_event("connected")
    wait_registered(t, "shared")
    t.tell(1)
    assert legacy.wait_count("msg", 1)[0]["repr"] == "1"


def test_legacy_receiver_reconnects_after_close_receivers(closer, peers):
    t = closer.transmitter(5)
    legacy = start_legacy_receiver(peers, t.port, "comeback")
    legacy.wait_event("connected")
    for round in range(1, 9):
        wait_registered(t, "comeback")
        t.tell(round)  # a settled connection: the legacy reader is in its loop
        legacy.wait_count("msg", round)
        t.close_receivers()
        assert wait_for_count(legacy, "connected", round + 1, 3.0), (
            "no reconnection in round %d" % round
        )
    wait_registered(t, "comeback")
    t.tell("back")
    assert legacy.wait_count("msg", 9)[8]["repr"] == repr("back")


def test_legacy_receiver_reconnects_to_a_new_transmitter_after_close(closer, peers):
    t = closer.transmitter(5)
    port = t.port
    legacy = start_legacy_receiver(peers, port, "follower")
    legacy.wait_event("connected")
    for round in range(1, 9):
        wait_registered(t, "follower")
        t.tell(round)  # a settled connection: the legacy reader is in its loop
        legacy.wait_count("msg", round)
        t.close()
        t = closer.transmitter(5, port=port)
        assert wait_for_count(legacy, "connected", round + 1, 3.0), (
            "no reconnection in round %d" % round
        )
    wait_registered(t, "follower")
    t.tell("new transmitter")
    assert legacy.wait_count("msg", 9)[8]["repr"] == repr("new transmitter")


def tcp_queues(port):
    """(send queue, receive queue) in bytes of each IPv4 TCP socket connected to or from
    ``port`` on this machine (from /proc/net/tcp): a list of ((local, remote), (tx, rx))."""
    out = []
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local, remote = (int(a.rsplit(":", 1)[1], 16) for a in fields[1:3])
            if fields[3] == "01" and port in (local, remote):  # ESTABLISHED
                tx, rx = (int(q, 16) for q in fields[4].split(":"))
                out.append(((local, remote), (tx, rx)))
    return out


def wait_quiet(port):
    """Wait until every connection of ``port`` has nothing unread and nothing unsent."""
    assert_eventually(lambda: (queues := tcp_queues(port)) and all(q == (0, 0) for _, q in queues))


def test_legacy_receiver_reconnects_after_an_abrupt_close(closer, peers):
    """Without a ``__die__`` frame (a transmitter that vanishes), 0.2.3 receivers reconnect."""
    port = free_port()
    tx = peers.start("transmitter.py", port, 5, label="our-tx")
    legacy = start_legacy_receiver(peers, port, "survivor")
    tx.wait_event("hello", name="survivor")
    tx.request("tell", expr="'before the crash'")
    legacy.wait_count("msg", 1)  # a settled connection (0.2.3 races right after connecting)
    # A 0.2.3 receiver whose read fails with a reset never reconnects (a legacy bug: it keeps
    # the closed socket; README, "Compatibility with hein 0.2.3"). A reset comes when the
    # transmitter dies with bytes it has not read yet, or when the receiver's last ACK is still
    # on its way (0.2.3 leaves Nagle's algorithm on: a 1-byte ACK may wait for the TCP
    # acknowledgement of the previous one). So the kill comes once the connection is quiet.
    wait_quiet(port)
    tx.kill()  # kill -9: the connection just ends
    tx2 = peers.start("transmitter.py", port, 5, label="our-tx2")
    tx2.wait_event("hello", name="survivor")
    tx2.request("tell", expr="'after the crash'")
    assert legacy.wait_count("msg", 2)[1]["repr"] == repr("after the crash")


def wait_for_count(peer, ev, n, timeout):
    deadline = time.monotonic() + timeout
    while peer.count(ev) < n:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# ------------------------------------------------------------- our receiver, legacy transmitter


def test_our_receiver_gets_legacy_tell_values_tags_and_raw(closer, peers):
    port = free_port()
    legacy = start_legacy_transmitter(peers, port)
    got = Collector()
    closer.receiver(port, "modern", got)
    legacy.wait_event("hello", name="modern")
    for value in VALUES:
        assert legacy.request("tell", expr=repr(value), tag="my tag!*")["result"] == "True"
    assert legacy.request("tell_raw", expr=repr("raw text"))["result"] == "True"
    assert (
        legacy.request("tell_raw", expr=repr(b"raw \x00\xff \xac\x96\xac\x96 end"), tag="bin")[
            "result"
        ]
        == "True"
    )
    items = got.wait_for_count(len(VALUES) + 2)
    expected = [(value, "my tag") for value in VALUES]
    expected += [(b"raw text", None), (b"raw \x00\xff \xac\x96\xac\x96 end", "bin")]
    assert items == expected
    for (data, _), (value, _) in zip(items, expected):
        assert type(data) is type(value)


def test_our_receiver_gets_a_message_with_unpack_false_from_legacy(closer, peers):
    port = free_port()
    legacy = start_legacy_transmitter(peers, port)
    got = Collector()
    closer.receiver(port, "lazy", got)
    legacy.wait_event("hello", name="lazy")
    value = {"when": datetime.datetime(2019, 5, 6, 7, 8, 9), "n": [1, 2]}
    legacy.request("tell", expr=repr(value), tag="later", unpack=False)
    ((data, tag),) = got.wait_for_count(1)
    assert isinstance(data, Message) and tag == "later"
    assert data.message == value


def test_legacy_ping_of_our_receivers(closer, peers):
    port = free_port()
    legacy = start_legacy_transmitter(peers, port)
    names = ["p1", "p2"]
    receivers = [closer.receiver(port, name) for name in names]
    for name in names:
        legacy.wait_event("hello", name=name)
    assert ast.literal_eval(legacy.request("ping")["result"]) == {"p1": True, "p2": True}
    got = Collector()
    receivers[0].process = got
    legacy.request("tell", expr="'after the ping'")
    assert got.wait_for_count(1) == [("after the ping", None)]
    assert legacy.count("dropped") == 0


def test_our_receiver_reconnects_to_the_next_legacy_transmitter(closer, peers):
    port = free_port()
    first = start_legacy_transmitter(peers, port)
    got = Collector()
    r = closer.receiver(port, "loyal", got)
    first.wait_event("hello", name="loyal")
    first.request("tell", expr="1")
    got.wait_for_count(1)
    first.request("close")
    assert_eventually(lambda: not r.connected)
    first.close()
    second = start_legacy_transmitter(peers, port)
    second.wait_event("hello", name="loyal")
    second.request("tell", expr="2")
    assert got.wait_for_count(2) == [(1, None), (2, None)]


def test_legacy_transmitter_refuses_our_duplicate_then_accepts_it(closer, peers):
    port = free_port()
    legacy = start_legacy_transmitter(peers, port)
    first_got, second_got = Collector(), Collector()
    first = closer.receiver(port, "dup", first_got)
    legacy.wait_event("hello", name="dup")
    second = closer.receiver(port, "dup", second_got, connectWait=0.1)
    assert holds_for(lambda: not second.connected and legacy.count("hello") == 1, 1.0)
    legacy.request("tell", expr="'first only'")
    assert first_got.wait_for_count(1) == [("first only", None)]
    first.close()
    legacy.wait_count("hello", 2, name="dup")
    assert_eventually(lambda: second.connected)
    legacy.request("tell", expr="'second now'")
    assert second_got.wait_for_item(lambda item: item == ("second now", None))
    assert first_got.count == 1
