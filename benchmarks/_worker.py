"""One process of a benchmark run: a publisher or a subscriber process, for one peer.

Started by ``benchmarks/run.py`` as ``PYTHON _worker.py CONFIG_JSON``; never imported by it, and it
imports nothing from this repository except ``hein`` itself, so that the same file runs under the
legacy hein 0.2.3 virtual environment (where ``import hein`` is the legacy package).

Protocol with the orchestrator:
- events go out on the *original* standard output as lines ``@@BENCH {json}``; everything the
  libraries print is sent to standard error instead (the orchestrator logs it);
- commands come in on standard input, one per line: ``GO`` (publisher: start sending), ``END``
  (publisher: report), ``QUIT`` (publisher: close and exit), ``STOP`` (subscriber: report now if
  not done yet, and exit).

Publisher events: ``port`` (port, rss_kb), ``ready`` (ok, nreceivers, rss_kb), ``sent`` (t_first,
t_sent, n_sent, timeout), ``result`` (cpu_s, dropped, rss_kb). Subscriber event: ``done``
(receivers: list of {name, count, t_last, nbytes, check, latency}, timeout, stopped).

Times are ``time.monotonic()``: on Linux that is CLOCK_MONOTONIC, one clock for every process of
the machine, so a publisher's send time and a subscriber's receive time can be subtracted.
"""

import json
import logging
import os
import random
import resource
import selectors
import socket
import struct
import sys
import threading
import time
from datetime import datetime

MARK = "@@BENCH "
MIB = 1024 * 1024
RAW_SIZE = MIB
#: Peers whose publisher is a hein SocTransmitter and whose subscribers are SocReceivers.
HEIN_PEERS = ("hein", "hein-0.2.3", "hein-bridged")
#: Peers that send JSON, with the datetime as an isoformat string.
JSON_PEERS = ("pyzmq-json", "plain-socket", "nats-py")
#: NATS subjects: the messages (hein-bridged: the bridges' prefix) and the subscribers' hellos.
NATS_SUBJECT = "bench.msg"
NATS_PREFIX = "bench"
NATS_HELLO = "benchctl.hello"
#: timeoutACK of hein transmitters in W5 (200 receivers on 2 cores; see HeinPub).
W5_TIMEOUT_ACK = 10.0
#: W4 publishers wait while more than this is queued for the receiver.
RAW_BACKLOG = 16 * MIB

mono = time.monotonic

# ----------------------------------------------------------------------------------- plumbing

_proto = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr
_emit_lock = threading.Lock()
logging.basicConfig(
    level=logging.INFO,
    stream=sys.stderr,
    format="%(asctime)s pid %(process)d %(threadName)s %(name)s %(levelname)s: %(message)s",
)


def emit(ev, **fields):
    fields["ev"] = ev
    line = MARK + json.dumps(fields) + "\n"
    with _emit_lock:
        _proto.write(line)
        _proto.flush()


class Commands:
    """Reads commands from stdin in a thread; one Event per command word."""

    def __init__(self):
        self.events = {word: threading.Event() for word in ("GO", "END", "QUIT", "STOP")}
        thread = threading.Thread(target=self._read, daemon=True)
        thread.start()

    def _read(self):
        for line in sys.stdin:
            word = line.strip().upper()
            if word in self.events:
                self.events[word].set()
        # stdin closed: the orchestrator is gone; stop everything
        for event in self.events.values():
            event.set()

    def wait(self, word, deadline):
        return self.events[word].wait(max(0.0, deadline - mono()))

    def is_set(self, word):
        return self.events[word].is_set()


def rss_kb():
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def cpu_s():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raw_payload():
    return random.Random(4).getrandbits(RAW_SIZE * 8).to_bytes(RAW_SIZE, "little")


# ---------------------------------------------------------------------------------- publishers


class HeinPub:
    """Ours (the repository's hein) or, run under the legacy venv, hein 0.2.3."""

    def __init__(self, cfg):
        import hein
        from hein import SocTransmitter

        self.legacy = cfg["peer"] == "hein-0.2.3"
        self.version = getattr(hein, "__version__", "?")
        self.dropped = []
        self.stale_queued_bytes = 0
        if self.legacy:
            self.t = SocTransmitter(free_port(), cfg["nrecv"], start=False)
            self.port = self.t.port
            original = self.t._dropped

            def dropped(name):
                self.dropped.append(name)
                return original(name)

            self.t._dropped = dropped
        else:
            # W5 runs 50 receiver threads per process on 2 cores: their first read can come
            # seconds after the data is in their socket buffers (they wait for the GIL), which
            # the default timeoutACK of 1 s takes for a stall; give them W5_TIMEOUT_ACK.
            timeout_ack = W5_TIMEOUT_ACK if cfg["workload"] == "W5" else 1.0
            self.t = SocTransmitter(0, cfg["nrecv"], start=False, timeoutACK=timeout_ack)
            self.t._dropped = self.dropped.append
        self.t._newconnection = lambda name: None
        self.t.start()
        self.port = self.t.port
        self.send = self.t.tell
        self.send_raw = self.t.tell_raw

    def nreceivers(self):
        return self.t.nreceivers

    def wait_ready(self, n, deadline):
        while mono() < deadline:
            if self.t.nreceivers >= n:
                return True
            time.sleep(0.01)
        return self.t.nreceivers >= n

    def backlog(self):
        if self.legacy:
            return sum(len(item[0]) for item in list(self.t.sending_buffer))
        return self.t.queued_bytes()

    def wait_backlog(self, limit, deadline):
        while self.backlog() > limit:
            if mono() > deadline:
                return False
            if self.legacy:
                time.sleep(0.0005)
            elif self.t.flush(0.005):
                # everything is in the kernel, yet queued_bytes() may still say otherwise: it
                # has been seen stale (refreshed only when a message is queued, not after
                # writes), which would stall this loop forever. Count it, and go on.
                if self.backlog() > limit:
                    self.stale_queued_bytes += 1
                return True
        return True

    def finish(self, deadline):
        if self.legacy:
            while self.t.sending_buffer and mono() < deadline:
                time.sleep(0.001)
        else:
            self.t.flush(max(0.0, deadline - mono()))

    def close(self):
        self.t.close()


class ZmqPub:
    """pyzmq: an XPUB socket (a PUB that also sees subscriptions, to know when all are in)."""

    def __init__(self, cfg):
        import zmq

        self.zmq = zmq
        self.version = "pyzmq %s, libzmq %s" % (zmq.pyzmq_version(), zmq.zmq_version())
        self.dropped = []
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        if cfg["workload"] == "W4":
            # a bounded queue: with XPUB_NODROP a full queue blocks the sender instead of dropping
            self.sock.setsockopt(zmq.XPUB_NODROP, 1)
            self.sock.setsockopt(zmq.SNDHWM, 16)
            self.sock.setsockopt(zmq.SNDTIMEO, 500)
        else:
            self.sock.setsockopt(zmq.SNDHWM, 0)  # lossless
        self.sock.setsockopt(zmq.LINGER, 0)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.subscribed = 0
        if cfg["peer"] == "pyzmq-json":
            self.send = self.sock.send_json
        else:
            self.send = self.sock.send_pyobj

    def send_raw(self, data):
        zmq = self.zmq
        while True:
            try:
                self.sock.send(data, copy=False)
                return True
            except zmq.Again:
                if mono() > self.raw_deadline:
                    return False

    def nreceivers(self):
        return self.subscribed

    def wait_ready(self, n, deadline):
        zmq = self.zmq
        while self.subscribed < n and mono() < deadline:
            if self.sock.poll(50, zmq.POLLIN):
                while True:
                    try:
                        msg = self.sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if msg[:1] == b"\x01":
                        self.subscribed += 1
        return self.subscribed >= n

    def backlog(self):
        return 0

    def wait_backlog(self, limit, deadline):
        self.raw_deadline = deadline
        return True

    def finish(self, deadline):
        pass

    def close(self):
        self.sock.close(0)
        self.ctx.term()


def _sendall_parts(sock, parts):
    views = [memoryview(part) for part in parts]
    while views:
        sent = sock.sendmsg(views)
        while sent:
            if sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][sent:]
                sent = 0


class PlainPub:
    """Length-prefixed frames over one TCP connection per subscriber; json.dumps once per message."""

    FLUSH = 64 * 1024

    def __init__(self, cfg):
        self.version = "python %s sockets" % sys.version.split()[0]
        self.dropped = []
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1024)
        self.port = self.listener.getsockname()[1]
        self.conns = []
        self.parts = []
        self.pending = 0
        self.each = cfg["workload"] == "W3"  # latency: no batching
        self.pack = struct.Struct("<I").pack
        self.dumps = json.dumps

    def nreceivers(self):
        return len(self.conns)

    def wait_ready(self, n, deadline):
        while len(self.conns) < n and mono() < deadline:
            self.listener.settimeout(max(0.01, min(0.2, deadline - mono())))
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(10.0)  # a stuck subscriber ends the run with an error, not a hang
            self.conns.append(conn)
        return len(self.conns) >= n

    def send(self, msg):
        body = self.dumps(msg).encode()
        self.parts.append(self.pack(len(body)))
        self.parts.append(body)
        self.pending += len(body) + 4
        if self.each or self.pending >= self.FLUSH:
            self.flush()
        return True

    def flush(self):
        if not self.parts:
            return
        data = b"".join(self.parts)
        self.parts = []
        self.pending = 0
        for conn in self.conns:
            conn.sendall(data)

    def send_raw(self, data):
        header = self.pack(len(data))
        for conn in self.conns:
            _sendall_parts(conn, [header, data])
        return True

    def backlog(self):
        return 0

    def wait_backlog(self, limit, deadline):
        return True

    def finish(self, deadline):
        self.flush()

    def close(self):
        for conn in self.conns:
            conn.close()
        self.listener.close()


def make_message_factory(cfg):
    """A function i -> the message of W1/W2/W3/W5/W6 for this peer."""
    import pytz

    utc = pytz.utc
    now = datetime.now
    iso = cfg["peer"] in JSON_PEERS  # json cannot carry a datetime
    if cfg["workload"] == "W3":
        if iso:
            return lambda i: {
                "i": i,
                "x": 1.5,
                "s": "hello",
                "t": now(utc).isoformat(),
                "m": mono(),
            }
        return lambda i: {"i": i, "x": 1.5, "s": "hello", "t": now(utc), "m": mono()}
    if iso:
        return lambda i: {"i": i, "x": 1.5, "s": "hello", "t": now(utc).isoformat()}
    return lambda i: {"i": i, "x": 1.5, "s": "hello", "t": now(utc)}


def publisher(cfg):
    deadline = cfg["deadline"]
    peer = cfg["peer"]
    # before the stdin thread: hein 0.2.3 forks a multiprocessing Manager here, and a forked
    # child closes sys.stdin, which deadlocks on the buffer lock a reading thread holds
    if peer == "nats-py":
        nats_publisher(cfg)
        return
    if peer in HEIN_PEERS:
        pub = HeinPub(cfg)
    elif peer.startswith("pyzmq"):
        pub = ZmqPub(cfg)
    else:
        pub = PlainPub(cfg)
    commands = Commands()
    emit("port", port=pub.port, rss_kb=rss_kb(), version=pub.version)
    ok = pub.wait_ready(cfg["nrecv"], deadline)
    emit("ready", ok=ok, nreceivers=pub.nreceivers(), rss_kb=rss_kb())
    if not ok or not commands.wait("GO", deadline) or commands.is_set("END"):
        emit("sent", t_first=None, t_sent=None, n_sent=0, timeout=True, error="not ready")
        commands.wait("END", deadline + 5)
        emit("result", cpu_s=None, dropped=pub.dropped, rss_kb=rss_kb())
        pub.close()
        return
    n = cfg["n"]
    workload = cfg["workload"]
    timed_out = False
    error = None
    sent = 0
    cpu0 = cpu_s()
    try:
        if workload == "W4":
            payload = raw_payload()
            send_raw = pub.send_raw
            t_first = mono()
            for i in range(n):
                if not pub.wait_backlog(RAW_BACKLOG, deadline) or mono() > deadline:
                    timed_out = True
                    break
                if not send_raw(payload):
                    timed_out = True
                    break
                sent += 1
        elif workload == "W3":
            make = make_message_factory(cfg)
            send = pub.send
            period = 1.0 / cfg["rate"]
            t_first = mono()
            start = t_first + period
            for i in range(n):
                target = start + i * period
                delay = target - mono()
                if delay > 0:
                    time.sleep(delay)
                if mono() > deadline:
                    timed_out = True
                    break
                send(make(i))
                sent += 1
        else:
            make = make_message_factory(cfg)
            send = pub.send
            t_first = mono()
            for i in range(n):
                send(make(i))
                sent += 1
                if not i & 1023 and mono() > deadline:
                    timed_out = True
                    break
        t_sent = mono()
        pub.finish(deadline)
    except Exception as exc:  # a broken connection and the like: report, do not hang
        t_sent = mono()
        error = "%s: %s" % (type(exc).__name__, exc)
    emit("sent", t_first=t_first, t_sent=t_sent, n_sent=sent, timeout=timed_out, error=error)
    commands.wait("END", deadline + 10)
    emit(
        "result",
        cpu_s=cpu_s() - cpu0,
        dropped=list(pub.dropped),
        rss_kb=rss_kb(),
        stale_queued_bytes=getattr(pub, "stale_queued_bytes", 0),
    )
    commands.wait("QUIT", deadline + 20)
    try:
        pub.close()
    except Exception:
        pass


# --------------------------------------------------------------------------------- subscribers


class Counter:
    __slots__ = ("count", "last", "lat", "name", "nbytes", "t_last")

    def __init__(self, name):
        self.name = name
        self.count = 0
        self.last = None
        self.t_last = None
        self.nbytes = 0
        self.lat = []


class Finish:
    """Counts the receivers of this process that got all their messages."""

    def __init__(self, nreceivers):
        self.left = nreceivers
        self.lock = threading.Lock()
        self.event = threading.Event()

    def one_done(self):
        with self.lock:
            self.left -= 1
            if self.left <= 0:
                self.event.set()


class Idle:
    """Tells when the receivers of this process have made no progress for ``seconds``.

    Counts polls without progress rather than reading the clock, so that time spent
    SIGSTOPped (W6) does not count as idle time.
    """

    def __init__(self, counters, seconds, period):
        self.counters = counters
        self.limit = max(1, int(seconds / period))
        self.last_total = 0
        self.quiet = 0
        self.stalled = False

    def poll(self):
        total = 0
        for counter in self.counters:
            total += counter.count
        if total != self.last_total or not total:
            self.last_total = total
            self.quiet = 0
            return False
        self.quiet += 1
        if self.quiet >= self.limit:
            self.stalled = True
        return self.stalled


def make_callback(counter, workload, n, finish):
    """The per-message callback every peer's subscriber calls: count, keep the last value."""
    if workload == "W3":

        def callback(data, tag=None):
            now = mono()
            counter.lat.append(now - data["m"])
            counter.last = data
            counter.t_last = now
            counter.count += 1
            if counter.count == n:
                finish.one_done()

    elif workload == "W4":

        def callback(data, tag=None):
            counter.nbytes += len(data)
            counter.last = data
            counter.t_last = mono()
            counter.count += 1
            if counter.count == n:
                finish.one_done()

    else:

        def callback(data, tag=None):
            counter.last = data
            counter.t_last = mono()
            counter.count += 1
            if counter.count == n:
                finish.one_done()

    return callback


def check_last(counter, cfg):
    """Whether the last message is the last one sent, with the expected types."""
    last = counter.last
    if last is None:
        return None
    if cfg["workload"] == "W4":
        return len(last) == RAW_SIZE
    try:
        ok = last["i"] == cfg["n"] - 1 and last["s"] == "hello" and last["x"] == 1.5
        if cfg["peer"] in JSON_PEERS:
            return bool(ok and isinstance(last["t"], str))
        return bool(ok and isinstance(last["t"], datetime) and last["t"].tzinfo is not None)
    except Exception as exc:
        return "bad last message %r: %s" % (type(last).__name__, exc)


def latency_stats(values):
    if not values:
        return None
    worst = sorted(range(len(values)), key=values.__getitem__)[-3:][::-1]
    values_in_order = values
    values = sorted(values)
    count = len(values)

    def rank(q):
        return values[min(count - 1, max(0, int(-(-q * count // 1)) - 1))]

    return {
        "n": count,
        "p50_us": rank(0.50) * 1e6,
        "p99_us": rank(0.99) * 1e6,
        "max_us": values[-1] * 1e6,
        "mean_us": sum(values) / count * 1e6,
        # the three worst: (index in arrival order, latency in us)
        "worst": [(k, round(values_in_order[k] * 1e6)) for k in worst],
    }


def hein_subscriber(cfg, counters, callbacks, commands, finish):
    from hein import SocReceiver

    legacy = cfg["peer"] == "hein-0.2.3"
    receivers = []
    for counter, callback in zip(counters, callbacks):
        if legacy:
            receiver = SocReceiver(
                cfg["port"],
                counter.name,
                buffer_size=cfg["legacy_buffer"],
                connect=False,
                connectWait=0.1,
                hostname="127.0.0.1",
            )
        else:
            receiver = SocReceiver(
                cfg["port"], counter.name, connect=False, connectWait=0.05, hostname="127.0.0.1"
            )
        receiver._newconnection = lambda: None
        receiver.process = callback
        receiver.connect()
        receivers.append(receiver)
    deadline = cfg["deadline"]
    idle = Idle(counters, cfg["idle"], 0.05)
    while mono() < deadline and not commands.is_set("STOP"):
        if finish.event.wait(0.05) or idle.poll():
            break

    def close():
        for receiver in receivers:
            if legacy:
                receiver._loopConnect = False
            try:
                receiver.close()
            except Exception:
                pass

    return close, idle


def zmq_subscriber(cfg, counters, callbacks, commands, finish):
    import zmq

    ctx = zmq.Context()
    socks = []
    for counter in counters:
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, 0 if cfg["workload"] != "W4" else 16)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect("tcp://127.0.0.1:%d" % cfg["port"])
        socks.append(sock)
    if cfg["workload"] == "W4":
        recvs = [sock.recv for sock in socks]
    elif cfg["peer"] == "pyzmq-json":
        recvs = [sock.recv_json for sock in socks]
    else:
        recvs = [sock.recv_pyobj for sock in socks]
    deadline = cfg["deadline"]
    n = cfg["n"]
    idle = Idle(counters, cfg["idle"], 0.1)
    if len(socks) == 1:
        sock, recv, callback, counter = socks[0], recvs[0], callbacks[0], counters[0]
        sock.setsockopt(zmq.RCVTIMEO, 100)
        while counter.count < n:
            try:
                callback(recv())
            except zmq.Again:
                if mono() > deadline or commands.is_set("STOP") or idle.poll():
                    break
    else:
        poller = zmq.Poller()
        for sock in socks:
            poller.register(sock, zmq.POLLIN)
        index = {sock: k for k, sock in enumerate(socks)}
        NOBLOCK = zmq.NOBLOCK
        while not finish.event.is_set():
            ready = poller.poll(100)
            if not ready and (mono() > deadline or commands.is_set("STOP") or idle.poll()):
                break
            for sock, _ in ready:
                k = index[sock]
                recv, callback = recvs[k], callbacks[k]
                while True:
                    try:
                        data = recv(NOBLOCK)
                    except zmq.Again:
                        break
                    callback(data)
            if mono() > deadline or commands.is_set("STOP"):
                break

    def close():
        for sock in socks:
            sock.close(0)
        ctx.term()

    return close, idle


class _PlainConn:
    """One plain-socket connection: a reusable read buffer, and a separate buffer per big frame."""

    READ = 256 * 1024
    BIG = 64 * 1024  # frames from this size on are read straight into their own buffer

    __slots__ = ("big", "big_got", "big_view", "buf", "callback", "end", "sock", "start", "view")

    def __init__(self, sock, callback):
        self.sock = sock
        self.callback = callback
        self.buf = bytearray(self.READ)
        self.view = memoryview(self.buf)
        self.start = 0
        self.end = 0
        self.big = None
        self.big_view = None
        self.big_got = 0


def plain_subscriber(cfg, counters, callbacks, commands, finish):
    raw = cfg["workload"] == "W4"
    loads = json.loads
    unpack_from = struct.Struct("<I").unpack_from
    selector = selectors.DefaultSelector()
    socks = []
    for callback in callbacks:
        sock = socket.create_connection(("127.0.0.1", cfg["port"]), timeout=5)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, _PlainConn(sock, callback))
        socks.append(sock)
    deadline = cfg["deadline"]
    idle = Idle(counters, cfg["idle"], 0.1)
    BIG = _PlainConn.BIG
    while not finish.event.is_set():
        events = selector.select(0.1)
        if not events and (mono() > deadline or commands.is_set("STOP") or idle.poll()):
            break
        for key, _ in events:
            conn = key.data
            try:
                if conn.big is not None:
                    count = conn.sock.recv_into(conn.big_view[conn.big_got :])
                    if count:
                        conn.big_got += count
                        if conn.big_got == len(conn.big):
                            big = conn.big
                            conn.big = conn.big_view = None
                            conn.callback(big)
                        continue
                else:
                    if conn.end == len(conn.buf):  # full: move the partial frame to the front
                        length = conn.end - conn.start
                        conn.buf[:length] = conn.buf[conn.start : conn.end]
                        conn.start, conn.end = 0, length
                    count = conn.sock.recv_into(conn.view[conn.end :])
            except BlockingIOError:
                continue
            if not count:
                selector.unregister(conn.sock)
                continue
            conn.end += count
            buf, start, end, callback = conn.buf, conn.start, conn.end, conn.callback
            while end - start >= 4:
                (length,) = unpack_from(buf, start)
                stop = start + 4 + length
                if stop <= end:
                    callback(bytes(buf[start + 4 : stop]) if raw else loads(buf[start + 4 : stop]))
                    start = stop
                    continue
                if length >= BIG:
                    have = end - start - 4
                    conn.big = bytearray(length)
                    conn.big_view = memoryview(conn.big)
                    conn.big_view[:have] = conn.view[start + 4 : end]
                    conn.big_got = have
                    start = end
                break
            if start == end:
                start = end = 0
            conn.start, conn.end = start, end
        if mono() > deadline or commands.is_set("STOP"):
            break

    def close():
        for sock in socks:
            sock.close()
        selector.close()

    return close, idle


def subscriber(cfg):
    commands = Commands()
    names = cfg["names"]
    n = cfg["n"]
    counters = [Counter(name) for name in names]
    finish = Finish(len(counters))
    callbacks = [make_callback(counter, cfg["workload"], n, finish) for counter in counters]
    peer = cfg["peer"]
    if peer in HEIN_PEERS:
        close, idle = hein_subscriber(cfg, counters, callbacks, commands, finish)
    elif peer == "nats-py":
        close, idle = nats_subscriber(cfg, counters, callbacks, commands, finish)
    elif peer.startswith("pyzmq"):
        close, idle = zmq_subscriber(cfg, counters, callbacks, commands, finish)
    else:
        close, idle = plain_subscriber(cfg, counters, callbacks, commands, finish)
    complete = all(counter.count >= n for counter in counters)
    report = []
    for counter in counters:
        report.append(
            {
                "name": counter.name,
                "count": counter.count,
                "t_last": counter.t_last,
                "nbytes": counter.nbytes,
                "check": check_last(counter, cfg),
                "latency": latency_stats(counter.lat) if cfg["workload"] == "W3" else None,
            }
        )
    emit(
        "done",
        receivers=report,
        complete=complete,
        timeout=not complete and mono() > cfg["deadline"],
        stalled=not complete and idle.stalled,
        stopped=commands.is_set("STOP"),
        cpu_s=cpu_s(),
    )
    # wait to be told (so that a hein receiver does not reconnect-loop noisily), then leave
    commands.wait("STOP", cfg["deadline"] + 10)
    try:
        close()
    except Exception:
        pass


# ------------------------------------------------------------------------ nats-py and bridges


def _nats_version():
    from importlib.metadata import version

    return version("nats-py")


def _nats_connect_options():
    return {"max_reconnect_attempts": 20, "reconnect_time_wait": 0.1, "connect_timeout": 5}


def nats_publisher(cfg):
    """The nats-py peer's publisher: json.dumps then publish; ready once every subscriber
    process has said hello (after its subscription reached the server)."""
    import asyncio

    import nats

    commands = Commands()
    deadline = cfg["deadline"]

    async def wait_command(word):
        while not commands.is_set(word) and mono() < deadline:
            await asyncio.sleep(0.005)
        return commands.is_set(word)

    async def run():
        nc = await nats.connect(cfg["nats_url"], **_nats_connect_options())
        hellos = set()

        async def on_hello(msg):
            hellos.add(msg.data)

        await nc.subscribe(NATS_HELLO, cb=on_hello)
        await nc.flush()
        emit("port", port=0, rss_kb=rss_kb(), version="nats-py %s" % _nats_version())
        nprocs = cfg["nproc"]
        while len(hellos) < nprocs and mono() < deadline:
            await asyncio.sleep(0.01)
        ok = len(hellos) >= nprocs
        emit("ready", ok=ok, nreceivers=len(hellos), rss_kb=rss_kb())
        if not ok or not await wait_command("GO") or commands.is_set("END"):
            emit("sent", t_first=None, t_sent=None, n_sent=0, timeout=True, error="not ready")
            await wait_command("END")
            emit("result", cpu_s=None, dropped=[], rss_kb=rss_kb())
            await nc.close()
            return
        make = make_message_factory(cfg)
        dumps = json.dumps
        publish = nc.publish
        n = cfg["n"]
        sent = 0
        timed_out = False
        error = None
        cpu0 = cpu_s()
        t_first = mono()
        try:
            if cfg["workload"] == "W3":
                period = 1.0 / cfg["rate"]
                start = t_first + period
                for i in range(n):
                    delay = start + i * period - mono()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if mono() > deadline:
                        timed_out = True
                        break
                    await publish(NATS_SUBJECT, dumps(make(i)).encode())
                    sent += 1
            else:
                for i in range(n):
                    await publish(NATS_SUBJECT, dumps(make(i)).encode())
                    sent += 1
                    if not i & 255:
                        await asyncio.sleep(0)  # let the flusher write
                        if mono() > deadline:
                            timed_out = True
                            break
            t_sent = mono()
            await nc.flush(max(1, int(deadline - mono())))
        except Exception as exc:
            t_sent = mono()
            error = "%s: %s" % (type(exc).__name__, exc)
        emit("sent", t_first=t_first, t_sent=t_sent, n_sent=sent, timeout=timed_out, error=error)
        await wait_command("END")
        emit("result", cpu_s=cpu_s() - cpu0, dropped=[], rss_kb=rss_kb())
        await nc.close()

    asyncio.run(run())
    commands.wait("QUIT", deadline + 20)


def nats_subscriber(cfg, counters, callbacks, commands, finish):
    """The nats-py peer's subscriber process: one subscription (and connection) per counter,
    json.loads and the callback per message."""
    import asyncio

    import nats

    deadline = cfg["deadline"]
    idle = Idle(counters, cfg["idle"], 0.05)

    async def run():
        conns = []
        for callback in callbacks:
            nc = await nats.connect(cfg["nats_url"], **_nats_connect_options())

            def make_cb(callback):
                loads = json.loads

                async def on_message(msg):
                    callback(loads(msg.data))

                return on_message

            await nc.subscribe(NATS_SUBJECT, cb=make_cb(callback))
            await nc.flush()
            conns.append(nc)
        await conns[0].publish(NATS_HELLO, ("%d" % os.getpid()).encode())
        await conns[0].flush()
        while mono() < deadline and not commands.is_set("STOP"):
            if finish.event.is_set() or idle.poll():
                break
            await asyncio.sleep(0.05)
        for nc in conns:
            await nc.close()

    asyncio.run(run())
    return (lambda: None), idle


def bridge(cfg):
    """A bridge process of the hein-bridged peer: ``bridge-in`` (NatsToHein: NATS -> the
    subscribers' transmitter) or ``bridge-out`` (HeinToNats: the publisher's transmitter ->
    NATS). Events: ``port`` (bridge-in, its transmitter's port), ``ready`` (bridge-in: every
    subscriber registered; bridge-out: connected to both sides), ``result`` (stats) on END."""
    from hein.bridge import HeinToNats, NatsToHein

    commands = Commands()
    deadline = cfg["deadline"]
    if cfg["role"] == "bridge-in":
        b = NatsToHein(
            cfg["nats_url"],
            subjects=[NATS_PREFIX + ".>"],
            port=0,
            nreceivermax=cfg["nrecv"],
            name="bench-in",
            stats_interval=None,
        )
        ok = b.wait_ready(max(0.0, deadline - mono()))
        emit("port", port=b.port, rss_kb=rss_kb(), ok=ok)
        while b.transmitter.nreceivers < cfg["nrecv"] and mono() < deadline:
            time.sleep(0.01)
        emit("ready", ok=b.transmitter.nreceivers >= cfg["nrecv"], rss_kb=rss_kb())
    else:
        b = HeinToNats(
            cfg["port"],
            cfg["nats_url"],
            prefix=NATS_PREFIX,
            name="bench-out",
            host="127.0.0.1",
            connectWait=0.05,
            stats_interval=None,
        )
        emit("ready", ok=b.wait_ready(max(0.0, deadline - mono())), rss_kb=rss_kb())
    cpu0 = cpu_s()
    commands.wait("END", deadline + 20)
    emit("result", stats=b.stats(), cpu_s=cpu_s() - cpu0, rss_kb=rss_kb())
    commands.wait("QUIT", deadline + 20)
    b.close()


def main():
    cfg = json.loads(sys.argv[1])
    try:
        if cfg["role"] == "pub":
            publisher(cfg)
        elif cfg["role"] in ("bridge-in", "bridge-out"):
            bridge(cfg)
        else:
            subscriber(cfg)
    except BaseException as exc:
        emit("error", error="%s: %s" % (type(exc).__name__, exc))
        raise
    finally:
        try:
            _proto.flush()
        except Exception:
            pass
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
