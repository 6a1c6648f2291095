"""The receiver: connects to a transmitter by name, reconnects by itself, calls back per message.

Threads: one named daemon thread (``hein-rx-NAME``) does everything for a receiver: it connects,
does the handshake, reads with large ``recv_into`` calls into one reusable buffer, feeds the
sans-I/O :class:`~hein._framing.FrameDecoder`, acknowledges every read that completed frames (an
ACK means "read", see README "Guarantees"), then calls ``process(data, tag)`` for each message,
in order. When the connection ends it waits ``connectWait`` seconds and connects again, until
:meth:`SocReceiver.close` (or :meth:`SocReceiver.stop_connectLoop`).

Bad bytes from the transmitter never reach user code: a malformed frame is logged and skipped,
a frame over ``max_frame_size`` closes the connection (and the receiver reconnects).
"""

import logging
import socket
import threading
from typing import Any, Dict, Optional

from ._framing import (
    ACK,
    DEFAULT_MAX_FRAME_SIZE,
    KIND_JSON,
    KIND_PING,
    KIND_RAW,
    FrameDecoder,
    parse_frame,
)
from ._netutil import default_host
from ._serializer import json_loads
from .core import Message
from .errors import FrameTooLarge, ProtocolError

__all__ = ["SocReceiver"]

logger = logging.getLogger(__name__)

#: Longest receiver name, in bytes of UTF-8 (longer names are cut, as in hein 0.2.3).
NAME_MAX_LENGTH = 15
#: Seconds to wait for each ACK of the handshake, and for the TCP connection.
HANDSHAKE_WAIT = 1.0
#: Bytes asked of each read (``buffer_size`` is raised to this).
READ_SIZE = 256 * 1024
#: Most warnings logged per connection for bad frames (the rest are counted).
MAX_WARNINGS_PER_CONNECTION = 5

_POLL = 0.25


def _cut_name(name: str) -> bytes:
    raw = name.encode("utf-8")
    if len(raw) <= NAME_MAX_LENGTH:
        return raw
    return raw[:NAME_MAX_LENGTH].decode("utf-8", "ignore").encode("utf-8")


class SocReceiver:
    """Listens to a :class:`~hein.SocTransmitter` under a name, in a background thread.

    Args:
        port: the transmitter's port.
        name: this receiver's name (at most 15 bytes of UTF-8; longer names are cut). A
            transmitter refuses a second live receiver of the same name.
        buffer_size: kept for compatibility: reads ask for at least 256 KiB.
        connect: start the connection loop now (else call :meth:`connect`).
        connectWait: seconds between two connection attempts (at least 0.01).
        portname: a name for display only.
        hostname: the transmitter's host. Default: the address of this machine's hostname,
            as in hein 0.2.3 (127.0.0.1 when it does not resolve).
        max_frame_size: keyword-only; the largest frame accepted (bytes); a larger one closes
            the connection.

    Methods for callers: :meth:`connect`, :meth:`stop_connectLoop`, :meth:`close`.

    Methods you may override (or replace on the instance: ``r.process = f``), run in the
    receiver's thread: ``process(data, tag)`` (default prints the message, ``TAG: `` first when
    tagged), ``_newconnection()`` (default prints the connection).

    Attributes: ``port``, ``name``, ``host``, ``portname``, ``connected``, ``running``,
    ``loopConnect``.
    """

    def __init__(
        self,
        port: int,
        name: str,
        buffer_size: int = 1024,
        connect: bool = True,
        connectWait: float = 0.5,
        portname: str = "",
        hostname: Optional[str] = None,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError("port must be an int, not %s" % type(port).__name__)
        if not 0 < port <= 65535:
            raise ValueError("port must be between 1 and 65535, got %d" % port)
        self.port = port
        if not isinstance(name, str):
            raise TypeError("name must be a str, not %s" % type(name).__name__)
        raw_name = _cut_name(name)
        if not raw_name:
            raise ValueError("name must not be empty")
        self._raw_name = raw_name
        self.name = raw_name.decode("utf-8")
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
            raise ValueError("buffer_size must be a positive int, got %r" % (buffer_size,))
        self.buffer_size = buffer_size
        if isinstance(connectWait, bool) or not isinstance(connectWait, (int, float)):
            raise TypeError("connectWait must be a number of seconds")
        if not connectWait >= 0.01:
            raise ValueError("connectWait must be at least 0.01 s, got %r" % connectWait)
        self._connectWait = float(connectWait)
        self.portname = str(portname)[:15]
        self.host = default_host() if hostname is None else str(hostname)
        if isinstance(max_frame_size, bool) or not isinstance(max_frame_size, int) or max_frame_size < 64:
            raise ValueError("max_frame_size must be an int of at least 64, got %r" % (max_frame_size,))
        self.max_frame_size = max_frame_size
        self._loop_connect = False
        self._closing = False
        self._connected = False
        self._running = False
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._nudge = threading.Event()
        self._lock = threading.Lock()  # guards start/close; never held around user code
        self._stats: Dict[str, int] = {"frames": 0, "bytes": 0, "connections": 0, "bad_frames": 0}
        if connect:
            self.connect()

    # ----------------------------------------------------------------- properties and dunders

    def __str__(self) -> str:
        return "Socket receiver on port %d (%s)" % (self.port, "on" if self.running else "off")

    __repr__ = __str__

    def __enter__(self) -> "SocReceiver":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        """Whether the receiver is connected to a transmitter and registered."""
        return self._connected

    @property
    def running(self) -> bool:
        """Whether the receiver is connected and listening."""
        return self._running

    @property
    def loopConnect(self) -> bool:
        """Whether the connection loop runs (connects again whenever the connection ends)."""
        return self._loop_connect

    # ----------------------------------------------------------------------------- lifecycle

    def connect(self) -> None:
        """Start the connection loop (no-op when it runs)."""
        with self._lock:
            if self._closing:
                self._closing = False
            self._loop_connect = True
            if self._thread is not None and self._thread.is_alive():
                return
            self._nudge.clear()
            self._thread = threading.Thread(target=self._run, name="hein-rx-%s" % self.name, daemon=True)
            self._thread.start()

    def stop_connectLoop(self) -> None:
        """Stop connecting again; the current connection, if any, goes on until it ends."""
        self._loop_connect = False
        self._nudge.set()

    def close(self) -> None:
        """Stop for good: the connection loop and the connection. Joins the thread.

        Idempotent; returns within about a second. :meth:`connect` starts again.
        """
        with self._lock:
            self._closing = True
            self._loop_connect = False
            self._nudge.set()
            sock, thread = self._sock, self._thread
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)
            if thread.is_alive():
                logger.warning("%s: thread still busy (in a callback?) after close()", self)

    # ----------------------------------------------------------------- callbacks to override

    def process(self, data: Any, tag: Optional[str]) -> None:
        """Called (in the receiver thread) for each message. Prints it by default."""
        print("%s%s" % ("" if tag is None else "%s: " % tag, data))

    def _newconnection(self) -> None:
        """Called (in the receiver thread) after each successful connection."""
        print(self._sock)

    # ------------------------------------------------------------------------------- stats

    def stats(self) -> Dict[str, int]:
        """Counters: ``frames`` and ``bytes`` received, ``connections`` made, ``bad_frames``."""
        return dict(self._stats)

    # --------------------------------------------------------------------------- the thread

    def _should_stop(self) -> bool:
        return self._closing

    def _run(self) -> None:
        refused_logged = False
        try:
            while not self._closing and self._loop_connect:
                sock, why = self._handshake()
                if sock is None:
                    if not refused_logged:
                        logger.warning(
                            "%s %r: cannot connect to %s:%d (%s); retrying every %.3g s",
                            self,
                            self.name,
                            self.host,
                            self.port,
                            why,
                            self._connectWait,
                        )
                        refused_logged = True
                    else:
                        logger.debug("%s %r: still cannot connect (%s)", self, self.name, why)
                    self._wait(self._connectWait)
                    continue
                refused_logged = False
                try:
                    self._serve(sock)
                finally:
                    self._connected = False
                    self._running = False
                    self._sock = None
                    try:
                        sock.close()
                    except OSError:  # pragma: no cover
                        pass
                if not self._closing and self._loop_connect:
                    self._wait(self._connectWait)
        except Exception:  # pragma: no cover - a bug: log it
            logger.exception("%s %r: receiver thread failed", self, self.name)
        finally:
            self._connected = False
            self._running = False

    def _wait(self, seconds: float) -> None:
        self._nudge.wait(seconds)
        self._nudge.clear()

    def _handshake(self) -> "tuple[Optional[socket.socket], str]":
        try:
            sock = socket.create_connection((self.host, self.port), timeout=HANDSHAKE_WAIT)
        except OSError as error:
            return None, error.strerror or str(error)
        self._sock = sock
        try:
            if self._closing:
                raise OSError("closing")
            sock.settimeout(HANDSHAKE_WAIT)
            if sock.recv(1) != ACK:
                raise OSError("no ACK from the transmitter")
            sock.sendall(self._raw_name)
            if sock.recv(1) != ACK:
                raise OSError("refused by the transmitter (name in use, or full)")
        except OSError as error:
            self._sock = None
            sock.close()
            return None, (error.strerror or str(error)) if not isinstance(error, socket.timeout) else "handshake timed out"
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover
            pass
        return sock, ""

    def _serve(self, sock: socket.socket) -> None:
        self._connected = True
        self._running = True
        self._stats["connections"] += 1
        logger.info("%s %r: connected to %s:%d", self, self.name, self.host, self.port)
        self._call_newconnection()
        decoder = FrameDecoder(self.max_frame_size)
        buffer = bytearray(max(self.buffer_size, READ_SIZE))
        view = memoryview(buffer)
        sock.settimeout(_POLL)
        warnings = 0
        stats = self._stats
        while not self._closing:
            try:
                count = sock.recv_into(buffer)
            except socket.timeout:
                continue
            except OSError as error:
                logger.info("%s %r: connection lost: %s", self, self.name, error)
                return
            if not count:
                logger.info("%s %r: the transmitter closed the connection", self, self.name)
                return
            stats["bytes"] += count
            try:
                frames = decoder.feed(view[:count])
            except FrameTooLarge as error:
                logger.warning("%s %r: %s; closing the connection", self, self.name, error)
                return
            if not frames:
                continue
            try:
                sock.sendall(ACK)
            except OSError as error:
                logger.info("%s %r: connection lost: %s", self, self.name, error)
                return
            stats["frames"] += len(frames)
            for raw in frames:
                try:
                    frame = parse_frame(raw)
                    kind = frame.kind
                    if kind == KIND_JSON:
                        data: Any = json_loads(frame.payload) if frame.unpack else Message(frame.payload)
                    elif kind == KIND_RAW:
                        data = frame.payload
                    elif kind == KIND_PING:
                        continue
                    else:  # KIND_DIE
                        logger.info("%s %r: told to drop by the transmitter", self, self.name)
                        return
                except ProtocolError as error:
                    stats["bad_frames"] += 1
                    warnings += 1
                    if warnings <= MAX_WARNINGS_PER_CONNECTION:
                        logger.warning("%s %r: skipped a bad frame: %s", self, self.name, error)
                    continue
                try:
                    self.process(data, frame.tag)
                except Exception:
                    logger.exception("%s %r: exception in process()", self, self.name)
                if self._closing:
                    return

    def _call_newconnection(self) -> None:
        try:
            self._newconnection()
        except Exception:
            logger.exception("%s %r: exception in _newconnection()", self, self.name)


