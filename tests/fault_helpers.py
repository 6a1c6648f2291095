"""Helpers of the fault-injection tests (``test_faults.py``).

- /proc readers for any process: :func:`rss_of`, :func:`threads_of`, :func:`fds_of`,
  :func:`socket_fds_of`.
- :func:`start_fault_peers` starts ``tests/scripts/fault_*.py`` children in parallel (they
  report summaries of a numbered stream instead of one line per message).
- :class:`NumberedStreamer` tells ``[seq, time.monotonic()]`` from a thread, recording when it
  told each number; :class:`Tracker` (shared with ``fault_receiver.py``) checks such a stream per
  connection of an in-process receiver.
- Raw peers: :func:`raw_register` (a plain-socket receiver), :func:`tcp_state` (whether the
  other end closed, without reading), :class:`FakeTransmitter` (a plain listening socket that
  plays the transmitter's side of the handshake, for hostile-transmitter tests).
"""

import importlib.util
import os
import resource
import socket
import struct
import sys
import threading
import time
from typing import Any, Dict, List, Optional

from helpers import LOCALHOST, PEER_START_TIMEOUT, SCRIPTS_DIR, WAIT, Peer, Peers

ACK = b"\x06"
TERMINATOR = b"\xac\x96\xac\x96"


def _load_script(name: str) -> Any:
    if str(SCRIPTS_DIR) not in sys.path:  # the scripts import their sibling _peer_common
        sys.path.append(str(SCRIPTS_DIR))
    spec = importlib.util.spec_from_file_location(name, str(SCRIPTS_DIR / ("%s.py" % name)))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_fault_receiver = _load_script("fault_receiver")
#: Per-connection segments of a numbered stream (the same class the child receivers use).
Tracker = _fault_receiver.Tracker
#: ``(seq, t_sent)`` of a numbered message, or None.
sequence_of = _fault_receiver.sequence_of


# ------------------------------------------------------------------------------- /proc


def _status(pid: Any) -> Dict[str, str]:
    fields = {}
    with open("/proc/%s/status" % pid) as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def rss_of(pid: Any = "self") -> int:
    """Resident set size of a process, in bytes."""
    return int(_status(pid)["VmRSS"].split()[0]) * 1024


def threads_of(pid: Any = "self") -> int:
    """Threads of a process (from /proc, so any process of ours)."""
    return int(_status(pid)["Threads"])


def fds_of(pid: Any = "self") -> int:
    """Open file descriptors of a process."""
    return len(os.listdir("/proc/%s/fd" % pid))


def socket_fds_of(pid: Any = "self") -> int:
    """Open sockets of a process."""
    count = 0
    base = "/proc/%s/fd" % pid
    for fd in os.listdir(base):
        try:
            if os.readlink(os.path.join(base, fd)).startswith("socket:"):
                count += 1
        except OSError:  # closed meanwhile
            pass
    return count


def raise_nofile(wanted: int) -> int:
    """Raise the soft limit of open files towards ``wanted`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return soft


# ------------------------------------------------------------------------------- peers


def start_fault_peers(peers: Peers, specs: List[List[Any]], labels: List[str]) -> List[Peer]:
    """Start several ``tests/scripts/SCRIPT ARGS...`` children at once, then wait for each one's
    ``ready`` event (in parallel: an interpreter start costs a few hundred ms here)."""
    started = []
    for spec, label in zip(specs, labels):
        argv = [sys.executable, "-u", str(SCRIPTS_DIR / spec[0])] + [str(a) for a in spec[1:]]
        peer = Peer(argv, label)
        peers.all.append(peer)
        started.append(peer)
    for peer in started:
        peer.wait_event("ready", PEER_START_TIMEOUT)
    return started


def last_tick(peer: Peer) -> Dict[str, Any]:
    """The latest ``tick`` event of a ``fault_receiver.py`` child (an empty one before any)."""
    ticks = peer.select("tick")
    return ticks[-1] if ticks else {"count": 0, "bytes": 0, "t": 0.0, "connections": 0}


# ------------------------------------------------------------------------------- streams


class NumberedStreamer:
    """Tells ``[seq, monotonic]`` from a thread, one every ``interval`` seconds, until stopped.

    ``times[seq]`` is the ``time.monotonic()`` taken just before telling ``seq``.
    """

    def __init__(self, transmitter: Any, interval: float = 0.002) -> None:
        self.transmitter = transmitter
        self.interval = interval
        self.sent = 0
        self.times: List[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-streamer", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            self.times.append(now)
            self.transmitter.tell([self.sent, now])
            self.sent += 1
            self._stop.wait(self.interval)  # the stream's pace

    def start(self) -> "NumberedStreamer":
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(WAIT)
        return self.sent

    def first_told_after(self, when: float) -> int:
        """The first number told after ``when`` (``sent`` if none yet)."""
        times = self.times
        lo, hi = 0, len(times)
        while lo < hi:
            mid = (lo + hi) // 2
            if times[mid] > when:
                hi = mid
            else:
                lo = mid + 1
        return lo


# ------------------------------------------------------------------------------- raw peers


def raw_register(port: int, name: bytes, timeout: float = WAIT) -> socket.socket:
    """A plain socket that registers as a receiver (the handshake of PROTOCOL.rst)."""
    sock = socket.create_connection((LOCALHOST, port), timeout=timeout)
    try:
        assert sock.recv(1) == ACK, "no ACK on accept"
        sock.sendall(name)
        assert sock.recv(1) == ACK, "no registration ACK"
    except BaseException:
        sock.close()
        raise
    return sock


_TCP_STATES = {1: "ESTABLISHED", 7: "CLOSE", 8: "CLOSE_WAIT", 11: "CLOSING", 9: "LAST_ACK"}


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of a socket (1 ESTABLISHED; 8 CLOSE_WAIT once the peer closed)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    return struct.unpack("B", info[:1])[0]


def peer_closed(sock: socket.socket) -> bool:
    """Whether the other end closed (FIN or RST), seen without reading the socket."""
    try:
        return tcp_state(sock) != 1
    except OSError:
        return True


def read_until_closed(sock: socket.socket, timeout: float) -> Optional[float]:
    """Read and discard until the peer closes; the time it closed, or None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        sock.settimeout(remaining)
        try:
            if not sock.recv(1 << 20):
                return time.monotonic()
        except socket.timeout:
            return None
        except OSError:  # reset
            return time.monotonic()


class FakeTransmitter:
    """A listening socket on 127.0.0.1 that plays a (possibly hostile) transmitter.

    The test thread drives it: :meth:`accept` the receiver's next connection, :meth:`handshake`
    (ACK, read the name, registration ACK, optional announcing ping), then send what it likes.
    """

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((LOCALHOST, 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.connections: List[socket.socket] = []
        self.accepted_at: List[float] = []

    def accept(self, timeout: float = WAIT) -> socket.socket:
        self.listener.settimeout(timeout)
        conn, _ = self.listener.accept()
        self.accepted_at.append(time.monotonic())
        conn.settimeout(timeout)
        self.connections.append(conn)
        return conn

    def accepts_within(self, timeout: float) -> Optional[socket.socket]:
        """The next connection, or None when none comes within ``timeout``."""
        try:
            return self.accept(timeout)
        except socket.timeout:
            return None

    @staticmethod
    def handshake(conn: socket.socket, hello: Optional[bytes] = None) -> bytes:
        """ACK, read the name, ACK the registration (then ``hello``, an announcing ping)."""
        conn.sendall(ACK)
        name = conn.recv(15)
        conn.sendall(ACK + (hello or b""))
        return name

    def close(self) -> None:
        for conn in self.connections:
            try:
                conn.close()
            except OSError:  # pragma: no cover
                pass
        self.listener.close()


def fd_targets(pid: Any = "self") -> List[str]:
    """What each open descriptor of a process points to (sorted), for failure messages."""
    base = "/proc/%s/fd" % pid
    targets = []
    for fd in os.listdir(base):
        try:
            targets.append(os.readlink(os.path.join(base, fd)))
        except OSError:  # closed meanwhile
            pass
    return sorted(targets)
