"""Security tests (issue 5, "Security"): authkey, TLS, the default bind policy, limits at edges.

- authkey: mutual HMAC-SHA256 challenge-response (PROTOCOL.rst, extension 2). Right key: messages
  flow. Wrong key, no key, key on one side only, a hein 0.2.3 receiver, a replayed answer: never
  registered, nothing delivered, no hang, logged once per side.
- TLS: a throwaway CA and certificates made by ``trustme`` at test time; certificate and
  hostname verification by the receiver; plain and TLS peers mixed up.
- Bind policy: a real second host, a network namespace joined by a veth pair
  (``tests/netns_helpers.py``, needs root and iproute2).
- Limits: every limit at its edge (n accepted, n + 1 refused, and so on).

Raw clients and a raw fake transmitter speak the protocol byte by byte (PROTOCOL.rst) so that each
edge is hit exactly. Every wait is bounded; nothing sleeps to synchronise.
"""

import hashlib
import hmac
import logging
import os
import queue
import socket
import ssl
import sys
import threading
import time

import pytest
from helpers import (
    LOCALHOST,
    PEER_START_TIMEOUT,
    SCRIPTS_DIR,
    WAIT,
    Collector,
    Peer,
    Peers,
    assert_eventually,
    holds_for,
    silent,
    wait_for,
    wait_registered,
)

import hein
import hein._handshake
from hein import SocReceiver, SocTransmitter

ACK = b"\x06"
TERMINATOR = b"\xac\x96\xac\x96"
#: Bytes a raw frame adds to its payload when untagged: ``__raw__`` + ``:0:`` + terminator.
RAW_OVERHEAD = 7 + 3 + 4
KEY = b"correct horse battery staple"
MiB = 1024 * 1024


@pytest.fixture
def logs(caplog):
    """caplog with every hein record captured (DEBUG and up)."""
    caplog.set_level(logging.DEBUG, logger="hein")
    return caplog


def records(caplog, logger, level=None, contains=()):
    """The captured records of ``logger`` (exactly that level, if given) containing every string
    of ``contains`` in their message."""
    if isinstance(contains, str):
        contains = (contains,)
    return [
        r
        for r in list(caplog.records)
        if r.name == logger
        and (level is None or r.levelno == level)
        and all(c in r.getMessage() for c in contains)
    ]


def rx_records(caplog, name, level=None):
    """Records of hein.socreceiver about the receiver ``name`` (its ``%r`` is in each)."""
    return records(caplog, "hein.socreceiver", level, repr(name))


def tell_until(t, condition, timeout=WAIT, what="condition"):
    """Tell 0, 1, 2, ... (one every 20 ms at most) until ``condition()``; return how many."""
    deadline = time.monotonic() + timeout
    told = 0
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("after %.3g s: %s never happened" % (timeout, what))
        t.tell(told)
        told += 1
        wait_for(condition, 0.02)
    return told


class Raw:
    """A raw TCP client of a transmitter, speaking PROTOCOL.rst byte by byte."""

    def __init__(self, port, rcvbuf=None, host=LOCALHOST):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(WAIT)
        self.sock.connect((host, port))
        self.received = bytearray()
        self._pending = bytearray()

    def close(self):
        self.sock.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        self.sock.settimeout(max(0.001, deadline - time.monotonic()))
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the transmitter closed the connection")
        self.received += data
        self._pending += data

    def read(self, n, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while len(self._pending) < n:
            self._fill(deadline)
        data, self._pending = bytes(self._pending[:n]), self._pending[n:]
        return data

    def read_frame(self, timeout=WAIT, limit=4096):
        """One frame, without its terminator."""
        deadline = time.monotonic() + timeout
        while TERMINATOR not in self._pending:
            assert len(self._pending) < limit, "no terminator in %r" % bytes(self._pending[:80])
            self._fill(deadline)
        end = self._pending.index(TERMINATOR)
        frame = bytes(self._pending[:end])
        del self._pending[: end + len(TERMINATOR)]
        return frame

    def wait_closed(self, timeout):
        """Read until the transmitter closes; the bytes read meanwhile, or None on timeout."""
        deadline = time.monotonic() + timeout
        got = bytearray(self._pending)
        self._pending.clear()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return None
            except ConnectionResetError:
                return bytes(got)
            if not data:
                return bytes(got)
            got += data

    def is_open(self):
        """Whether the transmitter has not closed this connection (nothing is consumed)."""
        self.sock.settimeout(0.0)
        try:
            data = self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            self.sock.settimeout(WAIT)
        return bool(data)

    def register(self, name):
        """The handshake of a receiver without a key; ACKs the announcing ping."""
        assert self.read(1) == ACK
        self.send(name)
        assert self.read(1) == ACK
        self.read_frame()  # the announcing ping (extension 1)
        self.send(ACK)


def hmac256(key, data):
    return hmac.new(key, data, hashlib.sha256).digest()


def parse_fields(frame, prefix):
    """The ``key=value`` fields of a handshake frame's payload (PROTOCOL.rst, extension 2)."""
    assert frame.startswith(prefix), frame[:40]
    words = frame[len(prefix) :].decode("ascii").split(" ")
    assert words[0] == "hein/1", frame[:40]
    return dict(word.split("=", 1) for word in words[1:])


# ========================================================================================== authkey


def test_same_authkey_both_sides_messages_flow(closer):
    t = closer.transmitter(authkey=KEY)
    got = Collector()
    r = closer.receiver(t.port, "keyholder", process=got, authkey=bytearray(KEY))
    wait_registered(t, "keyholder")
    assert r.connected
    t.tell({"n": 1}, tag="a")
    t.tell_raw(b"raw\xac\x96bytes")
    assert got.wait_for_count(2) == [({"n": 1}, "a"), (b"raw\xac\x96bytes", None)]


def test_wrong_authkey_never_receives_and_each_side_logs_once(closer, logs):
    t = closer.transmitter(authkey=KEY)
    joined = Collector()
    t._newconnection = joined
    good = Collector()
    closer.receiver(t.port, "good", process=good, authkey=KEY)
    wait_registered(t, "good")
    bad_got = Collector()
    bad = closer.receiver(t.port, "intruder", process=bad_got, authkey=b"a wrong key")
    # the receiver retries (less and less often): wait for the first try and three more
    told = tell_until(
        t,
        lambda: len(rx_records(logs, "intruder")) >= 4,
        what="four connection attempts of the wrong-key receiver",
    )
    good.wait_for_count(told)
    assert bad_got.count == 0 and bad.stats()["connections"] == 0 and not bad.connected
    assert joined.items == ["good"]
    assert set(t.receivers) == {"good"}
    rx_warnings = rx_records(logs, "intruder", logging.WARNING)
    assert len(rx_warnings) == 1, [r.getMessage() for r in rx_warnings]
    assert "authentication failed" in rx_warnings[0].getMessage()
    tx_warnings = records(logs, "hein.soctransmitter", logging.WARNING, "'intruder'")
    assert len(tx_warnings) == 1, [r.getMessage() for r in tx_warnings]
    assert "authentication" in tx_warnings[0].getMessage()


def test_receiver_without_key_fails_fast_against_a_keyed_transmitter(closer, logs):
    t = closer.transmitter(authkey=KEY, handshake_timeout=30.0)
    joined = Collector()
    t._newconnection = joined
    got = Collector()
    start = time.time()
    r = closer.receiver(t.port, "keyless", process=got)
    warning = assert_eventually(
        lambda: rx_records(logs, "keyless", logging.WARNING), 3.0, "the keyless receiver gave up"
    )[0]
    # no hang: it gave up well before its 1 s handshake wait, and says why
    assert warning.created - start < 0.8, warning.created - start
    assert "authkey" in warning.getMessage()
    assert not r.connected and r.stats()["connections"] == 0
    tell_until(
        t, lambda: len(rx_records(logs, "keyless")) >= 3, what="three attempts of the receiver"
    )
    assert holds_for(lambda: joined.count == 0 and not t.receivers, 0.3)
    assert got.count == 0 and r.stats()["bytes"] == 0
    assert len(rx_records(logs, "keyless", logging.WARNING)) == 1


def test_keyed_receiver_refuses_a_transmitter_without_key(closer, logs):
    t = closer.transmitter()
    joined, dropped = Collector(), Collector()
    t._newconnection, t._dropped = joined, dropped
    got = Collector()
    start = time.time()
    r = closer.receiver(t.port, "keyed", process=got, authkey=KEY)
    warning = assert_eventually(
        lambda: rx_records(logs, "keyed", logging.WARNING), 3.0, "the keyed receiver gave up"
    )[0]
    assert warning.created - start < 0.8, warning.created - start
    assert "authkey" in warning.getMessage()
    tell_until(t, lambda: len(rx_records(logs, "keyed")) >= 3, what="three attempts")
    # the transmitter (which cannot know better) registered it each time; the receiver closed
    # at once each time, so it was dropped right away and never delivered anything
    assert_eventually(lambda: not t.receivers and dropped.count == joined.count >= 1, 3.0)
    for joined_at, dropped_at in zip(joined.times, dropped.times):
        assert dropped_at - joined_at < 0.5
    assert got.count == 0 and r.stats()["connections"] == 0 and r.stats()["messages"] == 0
    assert len(rx_records(logs, "keyed", logging.WARNING)) == 1


@pytest.mark.legacy
def test_legacy_receiver_accepted_without_key_refused_with_key(closer, peers, logs):
    plain = closer.transmitter()
    old = peers.start("legacy_receiver.py", plain.port, "oldie", "--host", LOCALHOST, legacy=True)
    wait_registered(plain, "oldie")
    plain.tell("welcome")
    assert old.wait_event("msg")["repr"] == "'welcome'"

    keyed = closer.transmitter(authkey=KEY)
    joined = Collector()
    keyed._newconnection = joined
    refused = peers.start(
        "legacy_receiver.py", keyed.port, "oldie", "--host", LOCALHOST, legacy=True
    )
    # it reached the keyed transmitter, which closed it after the challenge
    assert_eventually(
        lambda: records(logs, "hein.soctransmitter", None, ("port %d" % keyed.port, "closed")),
        WAIT,
        "the keyed transmitter saw the 0.2.3 receiver",
    )
    for n in range(20):
        keyed.tell("secret %d" % n)
    assert holds_for(
        lambda: not keyed.receivers and joined.count == 0 and refused.count("connected") == 0,
        1.0,
    )
    assert refused.count("msg") == 0
    assert old.count("msg") == 1  # the accepted one got nothing from the keyed transmitter


@pytest.mark.parametrize("cls", ["transmitter", "receiver"])
def test_authkey_types_validated(cls):
    def make(authkey):
        if cls == "transmitter":
            return SocTransmitter(0, 1, start=False, authkey=authkey)
        return SocReceiver(50007, "k", connect=False, authkey=authkey)

    with pytest.raises(TypeError):
        make("a str key")
    with pytest.raises(TypeError):
        make(12345)
    with pytest.raises(ValueError):
        make(b"")
    with pytest.raises(ValueError):
        make(bytearray())
    make(b"k")
    make(bytearray(b"k"))


def test_replayed_answer_to_a_new_challenge_is_refused(closer, logs):
    """A captured valid answer does not open a second session: each challenge is new."""
    t = closer.transmitter(authkey=KEY)
    joined = Collector()
    t._newconnection = joined
    name = b"victim"
    prefix_ping = b"__png__:1:"

    # a genuine session, as an eavesdropper would record it
    first = closer.add(Raw(t.port))
    assert first.read(1) == ACK
    first.send(name)
    challenge = bytes.fromhex(parse_fields(first.read_frame(), prefix_ping)["challenge"])
    assert len(challenge) == 32
    our_nonce = os.urandom(32)
    answer = b"__aut__:1:hein/1 response=%s challenge=%s" % (
        hmac256(KEY, b"receiver" + challenge + name).hex().encode(),
        our_nonce.hex().encode(),
    )
    first.send(answer + TERMINATOR)
    proof = bytes.fromhex(parse_fields(first.read_frame(), prefix_ping)["response"])
    assert proof == hmac256(KEY, b"transmitter" + our_nonce + name)  # it knows the key
    assert first.read(1) == ACK
    wait_registered(t, "victim")
    assert KEY not in first.received and KEY.hex().encode() not in first.received
    first.close()
    assert_eventually(lambda: not t.receivers, WAIT, "the first session ended")

    # the replay: same name, same answer bytes, new connection
    second = closer.add(Raw(t.port))
    assert second.read(1) == ACK
    second.send(name)
    new_challenge = bytes.fromhex(parse_fields(second.read_frame(), prefix_ping)["challenge"])
    assert new_challenge != challenge
    second.send(answer + TERMINATOR)
    rest = second.wait_closed(2.0)
    assert rest == b"", "the transmitter answered a replayed answer with %r" % (rest,)
    assert holds_for(lambda: not t.receivers, 0.3)
    assert joined.items == ["victim"]  # only the genuine session
    assert records(logs, "hein.soctransmitter", logging.WARNING, ("'victim'", "authentication"))


def test_digests_compared_with_hmac_compare_digest(closer, monkeypatch):
    real = hmac.compare_digest
    calls = []

    def spy(a, b):
        result = real(a, b)
        calls.append((threading.current_thread().name, result))
        return result

    monkeypatch.setattr(hein._handshake.hmac, "compare_digest", spy)
    t = closer.transmitter(authkey=KEY)
    got = Collector()
    closer.receiver(t.port, "spied", process=got, authkey=KEY)
    wait_registered(t, "spied")
    t.tell(1)
    got.wait_for_count(1)
    # both proofs were checked with compare_digest: the receiver's by the transmitter, and the
    # transmitter's by the receiver
    assert any(name.startswith("hein-tx") and ok for name, ok in calls), calls
    assert any(name.startswith("hein-rx") and ok for name, ok in calls), calls
    closer.receiver(t.port, "wrongkey", authkey=b"nope")
    assert_eventually(
        lambda: any(name.startswith("hein-tx") and not ok for name, ok in list(calls)),
        WAIT,
        "the wrong answer compared with compare_digest",
    )


# ============================================================================================== TLS


class TLS:
    """A throwaway CA, a certificate for 127.0.0.1/localhost and one for "otherhost" only."""

    def __init__(self):
        try:
            import trustme
        except ImportError:
            pytest.fail("the TLS tests need trustme (a test extra): pip install trustme")
        self.ca = trustme.CA()
        self.cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.other_cert = self.ca.issue_cert("otherhost")

    def server(self, cert=None):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        (cert or self.cert).configure_cert(context)
        return context

    def client(self):
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture(scope="module")
def tls():
    return TLS()


def test_tls_messages_flow_big_and_many_in_order(closer, tls):
    t = closer.transmitter(ssl_context=tls.server())
    got = Collector()
    r = closer.receiver(t.port, "secure", process=got, ssl_context=tls.client())
    wait_registered(t, "secure")
    assert r.connected
    big = os.urandom(4 * MiB - 8) + TERMINATOR + b"\xac\x96\xee\xac"  # terminator halves inside
    assert len(big) == 4 * MiB
    assert t.tell_raw(big)
    for i in range(10000):
        t.tell(i)
    items = got.wait_for_count(10001, timeout=60)
    assert items[0] == (big, None)
    assert [data for data, _ in items[1:]] == list(range(10000))
    assert t.flush(WAIT)
    assert holds_for(lambda: got.count == 10001, 0.2)


def test_tls_receiver_with_default_context_never_connects_and_logs_once(closer, tls, logs):
    t = closer.transmitter(ssl_context=tls.server())
    joined = Collector()
    t._newconnection = joined
    got = Collector()
    r = closer.receiver(t.port, "untrusting", process=got, ssl_context=ssl.create_default_context())
    tell_until(t, lambda: len(rx_records(logs, "untrusting")) >= 5, what="five attempts")
    warnings = rx_records(logs, "untrusting", logging.WARNING)
    assert len(warnings) == 1, [w.getMessage() for w in warnings]
    assert "CERTIFICATE_VERIFY_FAILED" in warnings[0].getMessage()
    tx_warnings = records(logs, "hein.soctransmitter", logging.WARNING)
    assert len(tx_warnings) == 1, [w.getMessage() for w in tx_warnings]
    assert "TLS" in tx_warnings[0].getMessage()
    assert joined.count == 0 and not t.receivers
    assert got.count == 0 and r.stats()["connections"] == 0


def test_tls_hostname_verified_by_default(closer, tls, logs):
    wrong = closer.transmitter(ssl_context=tls.server(tls.other_cert))
    joined = Collector()
    wrong._newconnection = joined
    got = Collector()
    r = closer.receiver(wrong.port, "picky", process=got, ssl_context=tls.client())
    tell_until(wrong, lambda: len(rx_records(logs, "picky")) >= 3, what="three attempts")
    warning = rx_records(logs, "picky", logging.WARNING)
    assert len(warning) == 1
    assert "CERTIFICATE_VERIFY_FAILED" in warning[0].getMessage()
    assert joined.count == 0 and got.count == 0 and r.stats()["connections"] == 0
    # the same CA and client context with a certificate for 127.0.0.1: accepted
    right = closer.transmitter(ssl_context=tls.server())
    ok = Collector()
    closer.receiver(right.port, "picky", process=ok, ssl_context=tls.client())
    wait_registered(right, "picky")
    right.tell("fine")
    assert ok.wait_for_count(1) == [("fine", None)]


def test_plain_receiver_to_tls_transmitter(closer, tls, logs):
    t = closer.transmitter(ssl_context=tls.server())
    joined = Collector()
    t._newconnection = joined
    got_plain = Collector()
    start = time.time()
    plain = closer.receiver(t.port, "plain", process=got_plain)
    first = assert_eventually(
        lambda: rx_records(logs, "plain", logging.WARNING), 3.0, "the plain receiver gave up"
    )[0]
    assert first.created - start < 2.0  # bounded by its handshake wait (1 s)
    # a legitimate TLS receiver is served meanwhile
    got = Collector()
    closer.receiver(t.port, "legit", process=got, ssl_context=tls.client())
    wait_registered(t, "legit")
    told = tell_until(
        t, lambda: len(rx_records(logs, "plain")) >= 2, what="a second attempt of the plain one"
    )
    got.wait_for_count(told)
    assert [d for d, _ in got.items] == list(range(told))
    assert joined.items == ["legit"] and set(t.receivers) == {"legit"}
    assert got_plain.count == 0 and plain.stats()["connections"] == 0
    assert len(rx_records(logs, "plain", logging.WARNING)) == 1
    tx_warnings = records(logs, "hein.soctransmitter", logging.WARNING)
    assert len(tx_warnings) == 1, [w.getMessage() for w in tx_warnings]


def test_tls_receiver_to_plain_transmitter_no_hang_nothing_delivered(closer, tls, logs):
    t = closer.transmitter()
    got_tls = Collector()
    start = time.time()
    r = closer.receiver(t.port, "tlsonly", process=got_tls, ssl_context=tls.client())
    first = assert_eventually(
        lambda: rx_records(logs, "tlsonly", logging.WARNING), 3.0, "the TLS receiver gave up"
    )[0]
    assert first.created - start < 0.8
    tell_until(t, lambda: len(rx_records(logs, "tlsonly")) >= 5, what="five attempts")
    assert got_tls.count == 0 and r.stats()["connections"] == 0
    assert len(rx_records(logs, "tlsonly", logging.WARNING)) == 1
    # the transmitter stays healthy: a plain receiver is served, completely and in order
    got = Collector()
    closer.receiver(t.port, "plainrx", process=got)
    wait_registered(t, "plainrx")
    for i in range(1000):
        t.tell(i)
    assert [d for d, _ in got.wait_for_count(1000)] == list(range(1000))
    assert t.running


def test_tls_receiver_to_plain_transmitter_never_registered(closer, tls, logs):
    t = closer.transmitter()
    joined = Collector()
    t._newconnection = joined
    names = set()

    def watch():
        names.update(t.receivers)
        return len(rx_records(logs, "tlsonly")) >= 5

    closer.receiver(t.port, "tlsonly", ssl_context=tls.client())
    tell_until(t, watch, what="five attempts of the TLS receiver")
    assert joined.items == [] and names == set()
    tx_warnings = records(logs, "hein.soctransmitter", logging.WARNING)
    assert len(tx_warnings) <= 1, [w.getMessage() for w in tx_warnings]


def test_tls_and_authkey_together(closer, tls, logs):
    t = closer.transmitter(ssl_context=tls.server(), authkey=KEY)
    got = Collector()
    closer.receiver(t.port, "both", process=got, ssl_context=tls.client(), authkey=KEY)
    wait_registered(t, "both")
    bad = Collector()
    closer.receiver(t.port, "tlsnokey", process=bad, ssl_context=tls.client(), authkey=b"bad")
    closer.receiver(t.port, "keynotls", process=bad, authkey=KEY)
    told = tell_until(
        t,
        lambda: len(rx_records(logs, "tlsnokey")) >= 3 and len(rx_records(logs, "keynotls")) >= 2,
        what="attempts of both refused receivers",
    )
    assert [d for d, _ in got.wait_for_count(told)] == list(range(told))
    assert bad.count == 0 and set(t.receivers) == {"both"}
    assert "authentication" in rx_records(logs, "tlsnokey", logging.WARNING)[0].getMessage()


# ================================================================== default bind policy (netns)


@pytest.fixture(scope="module")
def netns():
    from netns_helpers import NetNS

    ns = NetNS()
    with ns:
        yield ns
    assert not ns.exists(), "namespace %s left behind" % ns.name


def start_ns_peer(netns, port, name, host):
    argv = netns.command(
        [sys.executable, "-u", str(SCRIPTS_DIR / "sec_netns_receiver.py"), str(port), name, host]
    )
    peer = Peer(argv, "netns-rx-%s" % name)
    try:
        ready = peer.wait_event("ready", PEER_START_TIMEOUT)
        assert ready["version"] == hein.__version__ != "0.2.3", ready  # our hein
    except BaseException:
        peer.close()
        raise
    return peer


def test_remote_receiver_refused_unless_allow_remote(netns, closer, logs):
    with Peers() as peers:
        t = closer.transmitter(host=netns.host_addr)  # allow_remote=False
        joined = Collector()
        t._newconnection = joined
        peer = start_ns_peer(netns, t.port, "faraway", netns.host_addr)
        peers.all.append(peer)
        refusals = lambda: records(logs, "hein.soctransmitter", None, netns.ns_addr)  # noqa: E731
        tell_until(t, lambda: len(refusals()) >= 4, what="four refused attempts from the namespace")
        warnings = [r for r in refusals() if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [w.getMessage() for w in warnings]
        assert "remote" in warnings[0].getMessage()
        assert peer.wait_event("log", level="WARNING")  # it was refused, and said so
        assert holds_for(lambda: joined.count == 0 and not t.receivers, 0.3)
        assert peer.count("connected") == 0 and peer.count("msg") == 0

        # the same address with allow_remote=True: accepted, and messages arrive
        allowed = closer.transmitter(host=netns.host_addr, allow_remote=True)
        welcome = start_ns_peer(netns, allowed.port, "welcome", netns.host_addr)
        peers.all.append(welcome)
        wait_registered(allowed, "welcome")
        assert allowed.receivers["welcome"].address[0] == netns.ns_addr
        allowed.tell({"over": "the veth"})
        assert welcome.wait_event("msg")["repr"] == repr({"over": "the veth"})
        assert peer.count("connected") == 0


def test_default_bind_not_reachable_from_another_host(netns, closer, logs):
    with Peers() as peers:
        t = closer.transmitter()  # default host and policy
        local = Collector()
        closer.receiver(t.port, "local", process=local)
        wait_registered(t, "local")
        peer = start_ns_peer(netns, t.port, "outsider", netns.host_addr)
        peers.all.append(peer)
        warning = peer.wait_event("log", level="WARNING", logger="hein.socreceiver")
        # nothing listens there (the default is 127.0.0.1 and the hostname's address): the
        # connection is refused before the transmitter even sees it
        assert "Connection refused" in warning["msg"], warning
        told = tell_until(
            t,
            lambda: peer.count("log", logger="hein.socreceiver") >= 3,
            what="retries of the outsider",
        )
        assert [d for d, _ in local.wait_for_count(told)] == list(range(told))
        assert set(t.receivers) == {"local"}
        assert peer.count("connected") == 0 and peer.count("msg") == 0
        assert not records(logs, "hein.soctransmitter", None, netns.ns_addr)


# ========================================================================================== limits


def test_limit_defaults_and_keywords():
    t = SocTransmitter(0, 3, start=False)
    assert t.nreceivermax == 3
    assert t.max_queue_bytes == 64 * MiB
    assert t.handshake_timeout == 5.0
    assert t.max_pending == 1024
    assert t.timeoutACK == 1.0
    assert t.heartbeat == 2.0
    r = SocReceiver(50007, "defaults", connect=False)
    assert r.max_frame_size == 64 * MiB
    assert r.queue_size == 10000
    t = SocTransmitter(
        0, 7, start=False, max_queue_bytes=4096, handshake_timeout=0.5, max_pending=2
    )
    assert (t.nreceivermax, t.max_queue_bytes, t.handshake_timeout, t.max_pending) == (
        7,
        4096,
        0.5,
        2,
    )
    r = SocReceiver(50007, "kw", connect=False, max_frame_size=100, queue_size=3)
    assert (r.max_frame_size, r.queue_size) == (100, 3)
    for bad in ({"max_pending": 0}, {"handshake_timeout": 0}, {"max_queue_bytes": 0}):
        with pytest.raises(ValueError):
            SocTransmitter(0, 1, start=False, **bad)
    with pytest.raises(ValueError):
        SocTransmitter(0, 0, start=False)
    for bad in ({"max_frame_size": 0}, {"queue_size": 0}):
        with pytest.raises(ValueError):
            SocReceiver(50007, "bad", connect=False, **bad)


def test_nreceivermax_n_accepted_n_plus_1_refused(closer, logs):
    t = closer.transmitter(nreceivermax=3)
    got = [Collector() for _ in range(4)]
    first = [closer.receiver(t.port, "member%d" % i, process=got[i]) for i in range(3)]
    wait_registered(t, {"member0", "member1", "member2"})
    closer.receiver(t.port, "member3", process=got[3])
    tell_until(t, lambda: len(rx_records(logs, "member3")) >= 3, what="three refusals")
    assert set(t.receivers) == {"member0", "member1", "member2"}
    assert got[3].count == 0
    assert len(records(logs, "hein.soctransmitter", logging.WARNING, "nreceivermax")) == 1
    # the bound is on registered receivers: one leaves, the fourth gets in
    first[0].close()
    wait_registered(t, "member3")
    assert set(t.receivers) == {"member1", "member2", "member3"}


class FakeTransmitter:
    """A listening socket that speaks the transmitter's side of the handshake by hand."""

    def __init__(self):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind((LOCALHOST, 0))
        self.listener.listen(8)
        self.listener.settimeout(WAIT)
        self.port = self.listener.getsockname()[1]
        self.conns = []

    def accept(self, name):
        conn, _ = self.listener.accept()
        self.conns.append(conn)
        conn.settimeout(WAIT)
        conn.sendall(ACK)
        assert conn.recv(15) == name
        conn.sendall(ACK)
        return conn

    def close(self):
        for conn in self.conns:
            conn.close()
        self.listener.close()


def test_max_frame_size_edge(closer, logs):
    limit = 4096
    fake = closer.add(FakeTransmitter())
    got = Collector()
    r = closer.receiver(fake.port, "framed", process=got, max_frame_size=limit)
    conn = fake.accept(b"framed")
    header = b"__raw__:0:"
    exact = header + b"a" * (limit - len(header))  # header + payload: exactly the limit
    assert len(exact) == limit
    conn.sendall(exact + TERMINATOR)
    assert conn.recv(1) == ACK
    assert got.wait_for_count(1) == [(b"a" * (limit - len(header)), None)]
    over = header + b"b" * (limit + 1 - len(header))
    conn.sendall(over + TERMINATOR)
    conn.settimeout(2.0)
    try:
        rest = conn.recv(16)
    except ConnectionResetError:
        rest = b""
    assert rest == b"", "the receiver answered %r to a frame over its limit" % rest
    assert [w for w in rx_records(logs, "framed", logging.WARNING) if "limit" in w.getMessage()]
    # it connects again, and the limit still lets an exact frame through
    conn2 = fake.accept(b"framed")
    conn2.sendall(exact + TERMINATOR)
    assert conn2.recv(1) == ACK
    got.wait_for_count(2)
    assert got.items == [(b"a" * (limit - len(header)), None)] * 2
    assert r.stats()["connections"] == 2


def test_max_queue_bytes_tell_edge(closer):
    limit = 64 * 1024
    t = closer.transmitter(max_queue_bytes=limit)
    got = Collector()
    closer.receiver(t.port, "edge", process=got)
    wait_registered(t, "edge")
    assert t.tell_raw(b"x" * (limit - RAW_OVERHEAD)) is True  # a frame of exactly the bound
    with pytest.raises(ValueError):
        t.tell_raw(b"x" * (limit - RAW_OVERHEAD + 1))
    with pytest.raises(ValueError):
        t.tell(b"y" * limit)
    with pytest.raises(ValueError):
        t.tell("z" * (2 * limit))
    assert got.wait_for_count(1) == [(b"x" * (limit - RAW_OVERHEAD), None)]
    assert holds_for(lambda: got.count == 1, 0.2)


def _stable_queued(t):
    last = [None]

    def same():
        value = t.queued_bytes()
        stable = value == last[0]
        last[0] = value
        return stable

    assert wait_for(same, WAIT, interval=0.01), "queued_bytes() never settled"
    return last[0]


@pytest.mark.parametrize("over", [0, 1], ids=["at-the-bound-kept", "one-byte-over-dropped"])
def test_max_queue_bytes_receiver_edge(closer, over):
    """A receiver whose backlog is exactly max_queue_bytes stays; one byte more drops it.

    A raw receiver that never reads (and a tiny receive buffer) stalls; a real receiver that
    reads everything paces the test (each frame it gets has been queued for both). The stalled
    backlog is known exactly once two frames in a row add exactly their size to it.
    """
    limit = MiB
    t = closer.transmitter(max_queue_bytes=limit, timeoutACK=None, heartbeat=None)
    dropped = Collector()
    t._dropped = dropped
    got = Collector()
    closer.receiver(t.port, "reader", process=got)
    stalled = closer.add(Raw(t.port, rcvbuf=4096))
    stalled.register(b"stalled")
    wait_registered(t, {"reader", "stalled"})
    told = 0

    def tell_frame(size):
        nonlocal told
        t.tell_raw(b"q" * (size - RAW_OVERHEAD))
        told += 1
        got.wait_for_count(told)
        return _stable_queued(t)

    chunk = 64 * 1024
    backlog, exact = 0, 0
    for _ in range(300):
        new = tell_frame(chunk)
        exact = exact + 1 if backlog and new == backlog + chunk else 0
        backlog = new
        if exact >= 2:
            break
    assert exact >= 2, "the raw receiver never stalled"
    assert backlog < limit // 2
    final = tell_frame(limit + over - backlog)
    if over:
        assert dropped.wait_for_count(1) == ["stalled"]
        assert_eventually(lambda: set(t.receivers) == {"reader"})
    else:
        assert final == limit  # its backlog is exactly the bound
        assert holds_for(lambda: "stalled" in t.receivers and dropped.count == 0, 0.5)
        assert t.queued_bytes() == limit


def test_handshake_timeout_edge(closer):
    timeout = 1.0
    t = closer.transmitter(handshake_timeout=timeout, heartbeat=None)
    patient = closer.add(Raw(t.port))
    late = closer.add(Raw(t.port))
    assert patient.read(1) == ACK
    assert late.read(1) == ACK
    start = time.monotonic()
    # silent for three quarters of the timeout: still open, then its name registers it
    assert holds_for(lambda: patient.is_open() and late.is_open(), 0.75 * timeout)
    patient.send(b"patient")
    assert patient.read(1) == ACK
    wait_registered(t, "patient")
    # silent past it: closed at the timeout (plus the transmitter's timer period)
    rest = late.wait_closed(timeout + 2.0)
    elapsed = time.monotonic() - start
    assert rest == b"", rest
    assert timeout - 0.05 <= elapsed < timeout + 0.5, elapsed
    assert set(t.receivers) == {"patient"}


def test_max_pending_edge(closer, logs):
    n = 4
    t = closer.transmitter(max_pending=n, handshake_timeout=30.0)
    half_open = [closer.add(Raw(t.port)) for _ in range(n)]
    for raw in half_open:
        assert raw.read(1) == ACK  # accepted, in its handshake
    extra = closer.add(Raw(t.port))
    assert extra.wait_closed(2.0) == b"", "the connection over max_pending was not refused"
    again = closer.add(Raw(t.port))
    assert again.wait_closed(2.0) == b""
    assert len(records(logs, "hein.soctransmitter", logging.WARNING, "max_pending")) == 1
    got = Collector()
    closer.receiver(t.port, "legit", process=got)
    assert wait_for(lambda: len(rx_records(logs, "legit")) >= 2, WAIT)  # refused while full
    assert not t.receivers
    for raw in half_open:
        raw.close()
    wait_registered(t, "legit")
    t.tell("in")
    assert got.wait_for_count(1) == [("in", None)]


def test_name_length_edge(closer):
    t = closer.transmitter()
    cases = {
        "a" * 15: "a" * 15,  # exactly 15 bytes: kept
        "b" * 20: "b" * 15,  # cut to 15 bytes
        "é" * 10: "é" * 7,  # 20 bytes: cut on a character boundary (14 bytes)
        "abcdefghijklmn€": "abcdefghijklmn",  # 14 + 3 bytes: the euro sign goes
        "x" * 12 + "😀": "x" * 12,  # 12 + 4 = 16 bytes: the emoji goes
    }
    receivers = {given: closer.receiver(t.port, given) for given in cases}
    for given, expected in cases.items():
        assert receivers[given].name == expected
        assert len(expected.encode("utf-8")) <= 15
    raw = closer.add(Raw(t.port))
    raw.register(b"c" * 15)  # a 0.2.3 receiver sends the name as is
    wait_registered(t, set(cases.values()) | {"c" * 15})
    assert len(t.receivers) == len(cases) + 1


def test_pull_queue_size_edge(closer, logs):
    size = 5
    t = closer.transmitter()
    r = closer.add(
        SocReceiver(
            t.port,
            "puller",
            connect=False,
            connectWait=0.05,
            hostname=LOCALHOST,
            pull=True,
            queue_size=size,
        )
    )
    r._newconnection = silent
    r.connect()
    wait_registered(t, "puller")
    for i in range(size):
        t.tell(i)
    assert_eventually(lambda: r.stats()["messages"] == size)
    assert r.stats()["dropped"] == 0
    assert [r.get(timeout=WAIT) for _ in range(size)] == [(None, i) for i in range(size)]
    with pytest.raises(queue.Empty):
        r.get(timeout=0.05)
    for i in range(10, 10 + size + 1):
        t.tell(i)
    assert_eventually(lambda: r.stats()["messages"] == 2 * size + 1)
    assert r.stats()["dropped"] == 1
    assert [r.get(timeout=WAIT)[1] for _ in range(size)] == list(range(11, 11 + size))
    full = [w for w in rx_records(logs, "puller", logging.WARNING) if "full" in w.getMessage()]
    assert len(full) == 1
