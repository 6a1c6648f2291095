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

import asyncio
import collections
import logging
import queue
import socket
import ssl
import struct
import threading
import time
from itertools import repeat
from typing import Any, AsyncIterator, Deque, Dict, Iterable, Iterator, List, Optional, Set, Tuple

from ._checks import check_positive_int
from ._compact import compact_loads_joined, compact_loads_many
from ._framing import (
    ACK,
    DEFAULT_MAX_FRAME_SIZE,
    KIND_COMPACT,
    KIND_JSON,
    KIND_PING,
    KIND_RAW,
    KINDS,
    TAG_MAX_LENGTH,
    TERMINATOR,
    Frame,
    FrameDecoder,
    HeaderCache,
    unescape_payload,
)
from ._handshake import (
    KIND_SEQUENCE,
    MAX_AUTH_FRAME,
    NONCE_SIZE,
    answer_frame,
    auth_digest,
    check_authkey,
    control_frame,
    digests_match,
    hex_field,
    new_nonce,
    parse_hello,
    parse_sequence,
    silence_limit,
)
from ._netutil import check_ssl_context, default_host
from ._serializer import DecodeFailure, json_loads_many
from .core import Message, clean_tag
from .errors import ProtocolError

__all__ = ["SocReceiver"]

logger = logging.getLogger(__name__)

#: Longest receiver name, in bytes of UTF-8 (longer names are cut, as in hein 0.2.3).
NAME_MAX_LENGTH = 15
#: Seconds to wait for each ACK of the handshake, and for the TCP connection.
HANDSHAKE_WAIT = 1.0
#: Bytes asked of each read (``buffer_size`` is raised to this).
READ_SIZE = 256 * 1024
#: Longest wait between two attempts after repeated authentication failures, in seconds.
AUTH_RETRY_MAX = 5.0
#: While a long batch of callbacks runs, ACK a hein 1 transmitter this often (seconds), so
#: that a receiver busy with what it read is not taken for a stalled one.
PROGRESS_ACK_INTERVAL = 0.25
#: Most warnings logged per connection for bad frames (the rest are counted).
MAX_WARNINGS_PER_CONNECTION = 5

#: Default bound of the pull queue (``pull=True``), in messages.
DEFAULT_QUEUE_SIZE = 10000

_POLL = 0.25


def _check_tags(tags: Optional[Iterable[str]]) -> Optional[Tuple[str, ...]]:
    """Validate tag prefixes; None (or a list holding "") means everything."""
    if tags is None:
        return None
    if isinstance(tags, str):
        raise TypeError("tags must be a list of tag prefixes, not a str (use [%r])" % tags)
    prefixes = []
    for tag in tags:
        if not isinstance(tag, str):
            raise TypeError("a tag prefix must be a str, not %s" % type(tag).__name__)
        if clean_tag(tag) != tag or len(tag) > TAG_MAX_LENGTH:
            raise ValueError("tag prefix %r: at most 15 characters of [A-Za-z0-9._- ]" % (tag,))
        prefixes.append(tag)
    if "" in prefixes:
        return None
    return tuple(sorted(set(prefixes)))


_TIMEVAL = struct.pack("ll", int(_POLL), int(_POLL % 1 * 1_000_000))


def _set_poll_timeout(sock: socket.socket) -> None:
    """Make reads and writes on ``sock`` give up after ``_POLL`` seconds.

    A plain socket gets the kernel's timeouts (SO_RCVTIMEO, SO_SNDTIMEO: a timed-out call
    raises BlockingIOError) in blocking mode, so that each read or write is one system call;
    Python's own timeout (``settimeout``) polls before each of them. TLS sockets keep it.
    """
    if isinstance(sock, ssl.SSLSocket):
        sock.settimeout(_POLL)
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _TIMEVAL)
    except OSError:  # pragma: no cover - a platform without them
        sock.settimeout(_POLL)
        return
    sock.settimeout(None)


def _read_frame(sock: socket.socket) -> bytes:
    """Read one handshake frame, byte by byte (nothing after it), without its terminator.

    Raises:
        OSError: the connection closed, timed out, or the frame is too long.
    """
    data = bytearray()
    while not data.endswith(TERMINATOR):
        byte = sock.recv(1)
        if not byte:
            raise OSError("the transmitter closed the connection in the handshake")
        data += byte
        if len(data) > MAX_AUTH_FRAME:
            raise OSError("handshake frame too long")
    return bytes(data[: -len(TERMINATOR)])


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
        pull: keyword-only; deliver messages to a bounded queue read with :meth:`get`,
            :meth:`messages` or ``async for`` over :meth:`amessages`, instead of printing them
            (the default ``process`` does this; an overridden ``process`` gets them instead).
        queue_size: keyword-only; bound of that queue, in messages. When it is full the
            oldest message is dropped to make room (counted in ``stats()["dropped"]``).
        authkey: keyword-only; bytes shared with the transmitter: both prove they know it
            (HMAC-SHA256 challenges; the key never travels). A receiver with a key refuses a
            transmitter without one, and the other way round.
        tags: keyword-only; tag prefixes to receive (ZeroMQ-style: ``"temp"`` matches
            ``"temp"`` and ``"temp.in"``; ``""`` matches everything, untagged messages
            included); None (the default): everything. A hein 1 transmitter then sends only
            those; with a 0.2.3 transmitter the receiver filters. See :meth:`subscribe`.
        ssl_context: keyword-only; an ``ssl.SSLContext`` for the client side: the connection
            is TLS, and the transmitter's certificate is checked for ``hostname`` as the
            context says (``ssl.create_default_context()`` verifies it).

    Methods for callers: :meth:`connect`, :meth:`stop_connectLoop`, :meth:`close`,
    :meth:`stats`; with ``pull=True``: :meth:`get`, :meth:`messages`, :meth:`amessages`.

    Methods you may override (or replace on the instance: ``r.process = f``), run in the
    receiver's thread: ``process(data, tag)`` (default prints the message, ``TAG: `` first when
    tagged), ``_newconnection()`` (default prints the connection).

    Attributes: ``port``, ``name``, ``host``, ``portname``, ``connected``, ``running``,
    ``loopConnect``.
    """

    #: For relays (``hein.bridge``), set on a subclass: ``process(frame, tag)`` then gets each
    #: ``__jsn__`` and ``__raw__`` message undecoded, as a ``hein._framing.Frame`` (``kind``,
    #: ``tag``, ``unpack``, ``payload``: the payload bytes as told).
    _raw_frames = False
    #: Ask a hein 1 transmitter for the compact encoding (extension 5 of ``PROTOCOL.rst``);
    #: relays that forward payloads as they are set it to False on a subclass.
    _compact = True

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
        pull: bool = False,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        authkey: Optional[bytes] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
        tags: Optional[Iterable[str]] = None,
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
        self.buffer_size = check_positive_int("buffer_size", buffer_size)
        if isinstance(connectWait, bool) or not isinstance(connectWait, (int, float)):
            raise TypeError("connectWait must be a number of seconds")
        if not connectWait >= 0.01:
            raise ValueError("connectWait must be at least 0.01 s, got %r" % connectWait)
        self._connectWait = float(connectWait)
        self.portname = str(portname)[:15]
        self.host = default_host() if hostname is None else str(hostname)
        if (
            isinstance(max_frame_size, bool)
            or not isinstance(max_frame_size, int)
            or max_frame_size < 64
        ):
            raise ValueError(
                "max_frame_size must be an int of at least 64, got %r" % (max_frame_size,)
            )
        self.max_frame_size = max_frame_size
        self._loop_connect = False
        self._closing = False
        self._connected = False
        self._running = False
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._nudge = threading.Event()
        self._lock = threading.Lock()  # guards start/close; never held around user code
        self._stats: Dict[str, int] = {
            "frames": 0,
            "bytes": 0,
            "messages": 0,
            "connections": 0,
            "bad_frames": 0,
            "dropped": 0,
            "missed": 0,
        }
        check_positive_int("queue_size", queue_size)
        self.pull = bool(pull)
        self._authkey = check_authkey(authkey)
        self.ssl_context = check_ssl_context(ssl_context)
        self._prefixes = _check_tags(tags)
        self._send_lock = threading.Lock()  # the thread's ACKs and subscribe() from others
        self._control_sock: Optional[socket.socket] = None  # set when the peer reads controls
        self._sequence: Optional[List[Any]] = None  # [epoch, group, next number]
        self.queue_size = queue_size
        self._queue: Deque[Tuple[Optional[str], Any]] = collections.deque()
        self._queue_cond = threading.Condition(threading.Lock())
        self._async_waiters: Set[Tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._overflowing = False
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
            self._thread = threading.Thread(
                target=self._run, name="hein-rx-%s" % self.name, daemon=True
            )
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
        with self._queue_cond:
            self._queue_cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)
            if thread.is_alive():
                logger.warning("%s: thread still busy (in a callback?) after close()", self)

    # ----------------------------------------------------------------- callbacks to override

    def process(self, data: Any, tag: Optional[str]) -> None:
        """Called (in the receiver thread) for each message.

        Prints it by default (``TAG: data``, or ``data`` when untagged); with ``pull=True``
        queues it for :meth:`get` instead.
        """
        if self.pull:
            self._enqueue([(tag, data)])
        else:
            print("%s%s" % ("" if tag is None else "%s: " % tag, data))

    def _missed(self, count: int) -> None:
        """Called (in the receiver thread) when a hein 1 transmitter's sequence numbers show
        that ``count`` messages of this receiver's subscription were missed (while it was
        disconnected or dropped). Logs a warning by default."""
        logger.warning("%s %r: missed %d messages", self, self.name, count)

    @property
    def tags(self) -> Optional[Tuple[str, ...]]:
        """The tag prefixes received (None: everything)."""
        return self._prefixes

    def subscribe(self, tags: Optional[Iterable[str]]) -> None:
        """Change the tag prefixes received, also while connected (None: everything).

        Messages already on their way may still arrive under the old subscription until the
        transmitter has read the new one; the receiver filters them out itself.

        Raises:
            ValueError: a prefix has characters a tag cannot have, or is over 15 characters.
        """
        self._prefixes = _check_tags(tags)
        with self._send_lock:
            sock = self._control_sock
            if sock is not None:
                try:
                    sock.sendall(control_frame(self._prefixes, self._compact))
                except OSError:
                    pass  # the connection is going: the next one subscribes

    # ------------------------------------------------------------------------------ pull API

    def _enqueue(self, items: List[Tuple[Optional[str], Any]]) -> None:
        """Append messages to the pull queue (dropping the oldest past ``queue_size``)."""
        pending = self._queue
        with self._queue_cond:
            pending.extend(items)
            excess = len(pending) - self.queue_size
            if excess > 0:
                for _ in range(excess):
                    pending.popleft()
                self._stats["dropped"] += excess
                if not self._overflowing:
                    self._overflowing = True
                    logger.warning(
                        "%s %r: pull queue full (%d messages): dropping the oldest",
                        self,
                        self.name,
                        self.queue_size,
                    )
            elif self._overflowing and len(pending) < self.queue_size // 2:
                self._overflowing = False
            self._queue_cond.notify_all()
            waiters = list(self._async_waiters) if self._async_waiters else ()
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that event loop is closed
                self._async_waiters.discard((loop, event))

    def _check_pull(self) -> None:
        if not self.pull:
            raise RuntimeError("the pull API needs SocReceiver(..., pull=True)")

    def get(self, timeout: Optional[float] = None) -> Tuple[Optional[str], Any]:
        """Take the oldest queued message, waiting for one if the queue is empty.

        Args:
            timeout: seconds to wait at most (None: forever).

        Returns:
            ``(tag, data)``.

        Raises:
            queue.Empty: nothing arrived within ``timeout``, or the receiver is closed and its
                queue is empty.
            RuntimeError: the receiver was not made with ``pull=True``.
        """
        self._check_pull()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._queue_cond:
            while not self._queue:
                remaining = None if deadline is None else deadline - time.monotonic()
                if (remaining is not None and remaining <= 0) or self._closing:
                    raise queue.Empty
                self._queue_cond.wait(remaining)
            return self._queue.popleft()

    def messages(self, timeout: Optional[float] = None) -> Iterator[Tuple[Optional[str], Any]]:
        """Iterate over messages as they arrive: ``for tag, data in r.messages(timeout=5):``.

        Stops when no message arrives for ``timeout`` seconds (None: never), or when the
        receiver is closed and its queue is empty.
        """
        self._check_pull()
        while True:
            try:
                yield self.get(timeout)
            except queue.Empty:
                return

    async def amessages(
        self, timeout: Optional[float] = None
    ) -> AsyncIterator[Tuple[Optional[str], Any]]:
        """Iterate over messages from asyncio: ``async for tag, data in r.amessages():``.

        The receiver thread wakes the event loop with ``loop.call_soon_threadsafe`` (once per
        batch of messages); the coroutine never blocks the loop. Stops when no message arrives
        for ``timeout`` seconds (None: never), or when the receiver is closed and drained.
        """
        self._check_pull()
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        waiter = (loop, event)
        self._async_waiters.add(waiter)
        try:
            while True:
                with self._queue_cond:
                    item = self._queue.popleft() if self._queue else None
                    if item is None:
                        event.clear()
                if item is not None:
                    yield item
                    continue
                if self._closing and not (self._thread and self._thread.is_alive()):
                    return
                try:
                    await asyncio.wait_for(
                        event.wait(), timeout if timeout is not None else _POLL * 4
                    )
                except asyncio.TimeoutError:
                    if timeout is not None:
                        return
        finally:
            self._async_waiters.discard(waiter)

    def _newconnection(self) -> None:
        """Called (in the receiver thread) after each successful connection.

        Prints the connected socket, as hein 0.2.3 did (nothing with ``pull=True``)."""
        if not self.pull:
            print(self._sock)

    # ------------------------------------------------------------------------------- stats

    def stats(self) -> Dict[str, int]:
        """Counters (cheap, always on): ``frames``, ``bytes`` and ``messages`` received,
        ``connections`` made, ``reconnects`` (connections after the first), ``bad_frames``
        skipped, ``dropped`` from a full pull queue, ``missed`` (see :meth:`_missed`)."""
        stats = dict(self._stats)
        stats["reconnects"] = max(0, stats["connections"] - 1)
        return stats

    # --------------------------------------------------------------------------- the thread

    def _run(self) -> None:
        refused_logged = ""
        auth_failures = 0
        try:
            while not self._closing and self._loop_connect:
                sock, why = self._handshake()
                if sock is None:
                    if self._closing:
                        break
                    if refused_logged != why:
                        logger.warning(
                            "%s %r: cannot connect to %s:%d (%s); retrying every %.3g s",
                            self,
                            self.name,
                            self.host,
                            self.port,
                            why,
                            self._connectWait,
                        )
                        refused_logged = why
                    else:
                        logger.debug("%s %r: still cannot connect (%s)", self, self.name, why)
                    # a key mismatch will not mend by itself: retry less often
                    auth_failures = auth_failures + 1 if why.startswith("authentication") else 0
                    self._wait(min(AUTH_RETRY_MAX, self._connectWait * 2**auth_failures))
                    continue
                refused_logged = ""
                auth_failures = 0
                try:
                    self._serve(sock)
                finally:
                    with self._send_lock:
                        self._control_sock = None
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

    def _handshake(self) -> Tuple[Optional[socket.socket], str]:
        """Connect and register; return the socket, or None and why not."""
        try:
            sock = socket.create_connection((self.host, self.port), timeout=HANDSHAKE_WAIT)
        except OSError as error:
            return None, error.strerror or str(error)
        self._sock = sock
        try:
            if self._closing:
                raise OSError("closing")
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(sock, server_hostname=self.host)
                self._sock = sock
            sock.settimeout(HANDSHAKE_WAIT)
            if sock.recv(1) != ACK:
                raise OSError("no ACK from the transmitter")
            sock.sendall(self._raw_name)
            answer = sock.recv(1)
            if answer == ACK:
                if self._authkey is not None:
                    raise OSError(
                        "authentication failed: the transmitter did not ask for the authkey"
                    )
            elif answer == KIND_PING[:1]:
                self._authenticate(sock, answer + _read_frame(sock))
                if sock.recv(1) != ACK:
                    raise OSError("refused by the transmitter (name in use, or full)")
            else:
                raise OSError("refused by the transmitter (name in use, or full)")
        except OSError as error:
            self._sock = None
            sock.close()
            if isinstance(error, socket.timeout):
                return None, "handshake timed out"
            return None, error.strerror or str(error)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover
            pass
        return sock, ""

    def _authenticate(self, sock: socket.socket, challenge_frame: bytes) -> None:
        """Answer the transmitter's challenge and check its answer to ours (PROTOCOL.rst)."""
        prefix = KIND_PING + b":1:"
        fields = (
            parse_hello(challenge_frame[len(prefix) :])
            if challenge_frame.startswith(prefix)
            else None
        )
        challenge = hex_field(fields, "challenge", NONCE_SIZE)
        if challenge is None:
            raise OSError("unexpected bytes from the transmitter in the handshake")
        if self._authkey is None:
            raise OSError("authentication failed: the transmitter requires an authkey")
        nonce = new_nonce()
        response = auth_digest(self._authkey, b"receiver", challenge, self._raw_name)
        sock.sendall(answer_frame(response, nonce))
        try:
            proof_frame = _read_frame(sock)
        except OSError:
            raise OSError(
                "authentication failed: the transmitter refused our answer (wrong authkey?)"
            ) from None
        fields = parse_hello(proof_frame[len(prefix) :]) if proof_frame.startswith(prefix) else None
        proof = hex_field(fields, "response", 32)
        expected = auth_digest(self._authkey, b"transmitter", nonce, self._raw_name)
        if proof is None or not digests_match(expected, proof):
            raise OSError("authentication failed: the transmitter does not know the authkey")

    def _serve(self, sock: socket.socket) -> None:
        self._connected = True
        self._running = True
        self._stats["connections"] += 1
        logger.info("%s %r: connected to %s:%d", self, self.name, self.host, self.port)
        self._call_newconnection()
        decoder = FrameDecoder(self.max_frame_size)
        known_kinds = KINDS | {KIND_SEQUENCE}
        if self._compact:
            known_kinds |= {KIND_COMPACT}
        header_cache = HeaderCache(known_kinds)
        parse_frame = header_cache.parse
        compact = self._compact
        counting = False  # after a sequence marker: count the messages
        send_lock = self._send_lock
        buffer = bytearray(max(self.buffer_size, READ_SIZE))
        view = memoryview(buffer)
        _set_poll_timeout(sock)
        warnings = 0
        stats = self._stats
        raw_frames = self._raw_frames
        silence: Optional[float] = None  # set once the transmitter announces heartbeats
        last_heard = time.monotonic()
        while not self._closing:
            target = decoder.sized_target()
            try:
                count = sock.recv_into(buffer if target is None else target)
            except (socket.timeout, BlockingIOError):  # _POLL seconds without a byte
                if silence is not None and time.monotonic() - last_heard > silence:
                    logger.warning(
                        "%s %r: nothing from the transmitter for %.3g s (it announced "
                        "heartbeats); reconnecting",
                        self,
                        self.name,
                        silence,
                    )
                    return
                continue
            except OSError as error:
                logger.info("%s %r: connection lost: %s", self, self.name, error)
                return
            if not count:
                logger.info("%s %r: the transmitter closed the connection", self, self.name)
                return
            stats["bytes"] += count
            if silence is not None:
                last_heard = time.monotonic()
            try:
                items = (
                    decoder.feed_blocks(view[:count])
                    if target is None
                    else decoder.sized_filled(count)
                )
            except ProtocolError as error:  # FrameTooLarge included: the stream is broken
                logger.warning("%s %r: %s; closing the connection", self, self.name, error)
                return
            if not items:
                continue
            lost: Optional[OSError] = None
            try:
                with send_lock:
                    sock.sendall(ACK)
            except OSError as error:  # deliver what was read all the same, then leave
                lost = error
            last_ack = time.monotonic()
            batch: List[Tuple[Optional[str], Any]] = []
            to_decode: List[bytes] = []  # payloads of unpacked __jsn__ frames, decoded at once
            decode_at: List[int] = []  # ... and their places in the batch
            compact_payloads: List[bytes] = []  # the same for __jsc__ frames
            compact_at: List[int] = []
            told_to_die = False
            missed = 0
            prefixes = self._prefixes
            for item in items:
                if compact and type(item) is bytes:
                    # a run of __jsc__ frames with one header, as a stream of tell()s is:
                    # decoded with a few calls for the whole run
                    run = self._compact_run(item, header_cache, prefixes)
                    if run is not None:
                        tag, nframes, values = run
                        stats["frames"] += nframes
                        if counting:
                            self._sequence[2] += nframes  # type: ignore[index]
                        if values:
                            batch.extend(zip(repeat(tag), values))
                        continue
                frames = item.split(TERMINATOR) if type(item) is bytes else (item,)
                stats["frames"] += len(frames)
                for raw in frames:
                    if type(raw) is Frame:
                        frame = raw  # a sized frame, parsed already
                    elif raw[:7] not in known_kinds:
                        logger.debug("%s %r: ignored a frame of kind %r", self, self.name, raw[:7])
                        continue
                    try:
                        if type(raw) is not Frame:
                            frame = parse_frame(raw)  # type: ignore[arg-type]
                        kind = frame.kind
                        if kind == KIND_COMPACT or kind == KIND_JSON or kind == KIND_RAW:
                            if counting:
                                self._sequence[2] += 1  # type: ignore[index]
                            if prefixes is not None and not (frame.tag or "").startswith(prefixes):
                                continue
                        if kind == KIND_COMPACT:  # decoded with the others of this read
                            if not frame.unpack:
                                raise ProtocolError("a compact frame with unpack 0")
                            compact_at.append(len(batch))
                            compact_payloads.append(frame.payload)
                            batch.append((frame.tag, None))
                            continue
                        if raw_frames and (kind == KIND_JSON or kind == KIND_RAW):
                            data: Any = frame
                        elif kind == KIND_JSON:
                            # decoded now, in one scan with the others of this read, also when
                            # unpack is 0 (then wrapped in a Message): a payload that does not
                            # decode is skipped here, never handed to user code
                            decode_at.append(len(batch))
                            to_decode.append(frame.payload)
                            batch.append((frame.tag, None if frame.unpack else frame.payload))
                            continue
                        elif kind == KIND_RAW:
                            data = frame.payload
                        elif kind == KIND_PING:
                            if frame.payload:
                                hello = parse_hello(frame.payload)
                                if hello is not None:
                                    silence = silence_limit(hello)
                                    last_heard = time.monotonic()
                                    self._start_controls(sock)
                            continue
                        elif kind == KIND_SEQUENCE:
                            marker = parse_sequence(frame.payload)
                            if marker is not None:
                                missed += self._on_marker(*marker)
                                counting = True
                            continue
                        else:  # KIND_DIE
                            told_to_die = True
                            break
                    except ProtocolError as error:
                        stats["bad_frames"] += 1
                        warnings += 1
                        if warnings <= MAX_WARNINGS_PER_CONNECTION:
                            logger.warning("%s %r: skipped a bad frame: %s", self, self.name, error)
                        continue
                    batch.append((frame.tag, data))
                if told_to_die:
                    break
            if to_decode or compact_payloads:
                failed = False
                decoded = list(zip(decode_at, json_loads_many(to_decode))) if to_decode else []
                if compact_payloads:
                    decoded += zip(compact_at, compact_loads_many(compact_payloads))
                for index, value in decoded:
                    if type(value) is DecodeFailure:
                        failed = True
                        batch[index] = None  # type: ignore[call-overload]
                        stats["bad_frames"] += 1
                        warnings += 1
                        if warnings <= MAX_WARNINGS_PER_CONNECTION:
                            logger.warning(
                                "%s %r: skipped a bad frame: %s", self, self.name, value.error
                            )
                    else:
                        tag, raw_payload = batch[index]
                        if raw_payload is not None:  # unpack=0: a Message, decoded already
                            value = Message._decoded(raw_payload, value)
                        batch[index] = (tag, value)
                if failed:
                    batch = [item for item in batch if item is not None]
            if missed:
                stats["missed"] += missed
                try:
                    self._missed(missed)
                except Exception:
                    logger.exception("%s %r: exception in _missed()", self, self.name)
            if batch:
                stats["messages"] += len(batch)
                if (
                    self.pull
                    and "process" not in self.__dict__
                    and type(self).process is SocReceiver.process
                ):
                    self._enqueue(batch)
                else:
                    process = self.process
                    control_sock = self._control_sock
                    for index, (tag, data) in enumerate(batch):
                        try:
                            process(data, tag)
                        except Exception:
                            logger.exception("%s %r: exception in process()", self, self.name)
                        if self._closing:
                            return
                        if (
                            index & 255 == 255
                            and control_sock is not None
                            and time.monotonic() - last_ack > PROGRESS_ACK_INTERVAL
                        ):
                            # a long batch: tell a hein 1 transmitter we are alive and busy
                            last_ack = time.monotonic()
                            try:
                                with send_lock:
                                    control_sock.sendall(ACK)
                            except OSError:
                                pass
            if told_to_die:
                logger.info("%s %r: told to drop by the transmitter", self, self.name)
                return
            if lost is not None:
                logger.info("%s %r: connection lost: %s", self, self.name, lost)
                return

    @staticmethod
    def _compact_run(
        block: bytes, headers: HeaderCache, prefixes: Optional[Tuple[str, ...]]
    ) -> Optional[Tuple[Optional[str], int, Optional[List[Any]]]]:
        """(tag, number of frames, values; None when the subscription leaves them out) of a
        block of ``__jsc__`` frames that all have the same header, or None for any other
        block, or one that does not decode: the caller then takes it frame by frame."""
        if not block.startswith(KIND_COMPACT):
            return None
        found = headers.header(block)
        if found is None or not found[1][2]:  # (unpack 0: refused frame by frame)
            return None
        end, fields = found
        header = block[:end]
        count = block.count(TERMINATOR) + 1
        if count > 1 and block.count(TERMINATOR + header) != count - 1:
            return None
        tag = fields[1]
        if prefixes is not None and not (tag or "").startswith(prefixes):
            return tag, count, None
        joined = block[end:]
        if count > 1:  # the payloads, comma-separated: one JSON array with the brackets
            joined = joined.replace(TERMINATOR + header, b",")
        values = compact_loads_joined(unescape_payload(joined), count)
        if values is None:
            return None
        return tag, count, values

    def _start_controls(self, sock: socket.socket) -> None:
        """The transmitter announced itself (hein 1): send our subscription."""
        with self._send_lock:
            try:
                sock.sendall(control_frame(self._prefixes, self._compact))
            except OSError:
                return
            self._control_sock = sock

    def _on_marker(self, epoch: str, group: str, number: int) -> int:
        """A sequence marker: return how many messages were missed since the last one."""
        state = self._sequence
        missed = 0
        if state is not None:
            if state[0] == epoch and state[1] == group:
                missed = number - state[2]
            elif state[0] != epoch:  # another transmitter: what it told before we came
                missed = number
        self._sequence = [epoch, group, number]
        return max(0, missed)

    def _call_newconnection(self) -> None:
        try:
            self._newconnection()
        except Exception:
            logger.exception("%s %r: exception in _newconnection()", self, self.name)
