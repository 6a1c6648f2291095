"""The transmitter: one TCP port, any number of named receivers, every message to all of them.

Threads: one loop thread (``hein-tx-PORT``) owns the listening sockets and every receiver
connection through a ``selectors`` selector; nobody else touches them. ``tell()`` and the other
public methods, from any thread, encode the frame once, append it to a queue and wake the loop
through a socketpair (:mod:`hein._wakeup`). The loop hands each batch of queued frames, joined
into one chunk, to every receiver's own bounded queue and writes as much as each socket takes
without blocking. User callbacks (``_newconnection``, ``_dropped``) run in a second thread
(``hein-tx-PORT-callbacks``), so that a slow or blocking callback never stalls the network and
may itself call ``tell``, ``ping`` or ``close``.

Handshake and liveness (see PROTOCOL.rst): ACK on accept, the name within the handshake
timeout, ACK on registration; then every receiver ACKs each read that completed frames. A
receiver that has frames outstanding and sends no ACK for ``timeoutACK`` seconds is dropped;
one that is idle gets a ping every ``heartbeat`` seconds, so a dead peer is noticed without
traffic.
"""

import collections
import errno
import logging
import os
import queue
import selectors
import socket
import ssl
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple, Union

from ._checks import check_positive_int
from ._compact import compact_dumps, compact_loads
from ._framing import (
    _END,  # half a terminator: a payload that holds it needs escaping
    ACK,
    KIND_COMPACT,
    KIND_DIE,
    KIND_JSON,
    KIND_PING,
    KIND_RAW,
    SIZED_THRESHOLD,
    TAG_MAX_LENGTH,
    TERMINATOR,
    clean_tag,
    encode_frame,
    escape_payload,
    frame_header,
    parse_frame,
    sized_header,
)
from ._handshake import (
    KIND_AUTH,
    KIND_CONTROL,
    MAX_AUTH_FRAME,
    NONCE_SIZE,
    ReceiverBytes,
    auth_digest,
    challenge_frame,
    check_authkey,
    digests_match,
    hello_frame,
    hex_field,
    new_nonce,
    parse_control,
    parse_hello,
    proof_frame,
    sequence_frame,
)
from ._netutil import check_ssl_context, describe, family_of, is_local_peer, local_bind_addresses
from ._serializer import json_dumps
from ._wakeup import Waker
from .errors import ProtocolError

__all__ = ["SocTransmitter", "ReceiverInfo"]

logger = logging.getLogger(__name__)

#: Seconds a new connection has to send its name.
HANDSHAKE_TIMEOUT = 5.0
#: Default bound on the bytes queued for one receiver; a receiver over it is dropped.
DEFAULT_MAX_QUEUE_BYTES = 64 * 1024 * 1024
#: Default seconds between pings to an idle receiver (None: no heartbeat).
DEFAULT_HEARTBEAT = 2.0
#: Longest a duplicate-name check waits for the registered receiver's answer, in seconds.
DUPLICATE_CHECK_TIMEOUT = 0.5
#: Default maximum of connections still in their handshake.
DEFAULT_MAX_PENDING = 1024
#: Most tags with a retained value.
MAX_RETAINED = 10000
#: Most distinct tags counted for gap detection (messages of later tags are not counted).
MAX_TAGS_COUNTED = 10000
#: Most subscription groups remembered for gap detection.
MAX_GROUPS = 1024
#: How long ``close()`` waits for the threads, in seconds.
CLOSE_TIMEOUT = 2.0
#: Seconds a receiver told to drop (``__die__``) has to close its end before we close ours.
DIE_GRACE = 0.5

_SEND_CHUNK = 4 * 1024 * 1024
# (kind, tag as given, unpack) -> (tag as it travels, frame header): tags repeat
_HEADERS: Dict[Tuple[bytes, Optional[str], bool], Tuple[str, bytes]] = {}
# After a drain of at least LINGER_AFTER messages, the loop waits up to LINGER seconds for more
# without asking producers to wake it.
LINGER_AFTER = 4
LINGER = 0.0002
# A tell() at least this many seconds after the previous one may be sent at once by its own
# thread (see SocTransmitter._send_now)
DIRECT_GAP = 0.0005
_TIMER_PERIOD = 0.05
_PING_FRAME = frame_header(KIND_PING, "", True) + TERMINATOR
_DIE_FRAME = frame_header(KIND_DIE, "", True) + TERMINATOR


def _deprecated_alias(name: str) -> Callable[..., bool]:
    """A deprecated 0.2.3 sender of SocTransmitter: warns, then does what ``tell`` does."""

    def sender(
        self: "SocTransmitter", v: Any, tag: Optional[str] = None, unpack: bool = True
    ) -> bool:
        warnings.warn("%s is deprecated, use tell instead" % name, DeprecationWarning, stacklevel=2)
        return self.tell(v, tag=tag, unpack=unpack)

    sender.__name__ = name
    sender.__qualname__ = "SocTransmitter." + name
    sender.__doc__ = "Deprecated alias of :meth:`tell` (warns, then sends)."
    return sender


@dataclass
class ReceiverInfo:
    """What the transmitter knows of one registered receiver (a snapshot, read-only).

    Attributes:
        name: the name it registered with.
        address: ``(host, port)`` of its connection.
        connected_since: ``time.time()`` when it was registered.
    """

    name: str
    address: Any
    connected_since: float


class _PingRequest:
    """One ``ping()`` call: the loop fills ``results`` then sets ``done``."""

    def __init__(self) -> None:
        self.results: Dict[str, bool] = {}
        self.pending: Dict[_Connection, int] = {}
        self.deadline = 0.0
        self.done = threading.Event()


class _Big:
    """A message with a large payload: sent as a sized frame (no escaping, no copy) to
    receivers that read them, and escaped (once, on demand) for the others."""

    __slots__ = ("_json", "_legacy", "kind", "payload", "size", "sized_head", "tag", "unpack")

    def __init__(self, kind: bytes, tag: str, unpack: bool, payload: bytes) -> None:
        self.kind = kind
        self.tag = tag
        self.unpack = unpack
        self.payload = payload
        self.sized_head = sized_header(kind, tag, unpack, len(payload))
        self.size = len(self.sized_head) + len(payload)
        self._legacy: Optional[bytes] = None
        self._json: Optional[_Big] = None

    def legacy(self) -> bytes:
        """The frame as hein 0.2.3 reads it (escaped, not sized)."""
        if self._legacy is None:
            self._legacy = encode_frame(self.kind, self.tag, self.unpack, self.payload)
        return self._legacy

    def as_json(self) -> Optional["_Big"]:
        """This message in the extended JSON (for a compact one), or None if it cannot be."""
        if self._json is None:
            payload = _extended_json(self.payload)
            if payload is None:
                return None
            self._json = _Big(KIND_JSON, self.tag, self.unpack, payload)
        return self._json


def _extended_json(compact: bytes) -> Optional[bytes]:
    """A compact payload re-encoded in the extended JSON, or None (logged) if it cannot be."""
    try:
        return json_dumps(compact_loads(compact))
    except (ProtocolError, ValueError) as error:
        logger.error("cannot re-encode a compact message: %s", error)
        return None


@dataclass(eq=False)
class _Group:
    """Receivers with the same subscription, and how many messages matched it so far."""

    prefixes: Optional[Tuple[bytes, ...]]
    gid: str = field(default_factory=lambda: os.urandom(6).hex())
    count: int = 0

    def matches(self, tag: bytes) -> bool:
        return self.prefixes is None or tag.startswith(self.prefixes)


@dataclass(eq=False)
class _Connection:
    """Per-connection state, owned by the loop thread."""

    sock: socket.socket
    address: Any
    accepted: float
    name: Optional[str] = None
    registered: bool = False
    since: float = 0.0
    # outgoing bytes: chunks, the offset already sent of the first one, and the total
    outbox: Deque[bytes] = field(default_factory=collections.deque)
    offset: int = 0
    queued: int = 0
    # bytes handed to the kernel, and bytes ever queued (for ping bookkeeping)
    sent_total: int = 0
    queued_total: int = 0
    writing: bool = False
    # ACK bookkeeping: waiting since when for an ACK (None: nothing outstanding)
    waiting_since: Optional[float] = None
    last_write: float = 0.0
    # name-duplicate check: the new connection waiting for this registered one, and vice versa
    challenger: Optional["_Connection"] = None
    challenged: Optional["_Connection"] = None
    challenge_deadline: float = 0.0
    pings: List[_PingRequest] = field(default_factory=list)
    challenge_offset: int = 0
    tls: bool = False
    tls_handshaking: bool = False
    auth_nonce: Optional[bytes] = None
    auth_buffer: bytearray = field(default_factory=bytearray)
    pending: bool = True  # still in its handshake (counts against max_pending)
    dying_deadline: float = 0.0  # told to drop: closed at this time at the latest
    half_closed: bool = False
    blocked: bool = False  # the last write found the socket buffers full
    control: Optional[ReceiverBytes] = None  # parser, once it sent more than ACKs
    group: Optional[_Group] = None  # its subscription (None: everything, no markers)
    sized: bool = False  # it reads sized frames (extension 4)
    compact: bool = False  # it reads the compact encoding (extension 5)
    frames_sent: int = 0
    closed: bool = False


class SocTransmitter:
    """Broadcasts messages to every connected :class:`~hein.SocReceiver`.

    Args:
        port: the TCP port to listen on (0 picks a free one; ``port`` then tells which).
        nreceivermax: the most receivers registered at once (any positive integer).
        start: start listening now (else call :meth:`start`).
        portname: a name for display only (at most 15 characters).
        timeoutACK: seconds a receiver may leave frames unacknowledged while making no
            progress before it is dropped; ``None``: never drop for silence.
        host: keyword-only; address or list of addresses to listen on. Default: loopback and
            the address of this machine's hostname.
        allow_remote: keyword-only; accept receivers from other machines (default False: only
            processes on this machine may subscribe). With ``allow_remote=True`` and no
            ``host``, listens on every interface.
        max_queue_bytes: keyword-only; bound on the bytes queued for one receiver; one that
            falls further behind is dropped (it reconnects by itself).
        heartbeat: keyword-only; seconds between pings to an idle receiver (None: off).
        handshake_timeout: keyword-only; seconds a new connection has to send its name (and,
            with ``authkey``, to answer the challenge).
        max_pending: keyword-only; most connections still in their handshake at once.
        authkey: keyword-only; bytes shared with the receivers: only a receiver that proves it
            knows the key (HMAC-SHA256 challenge, both ways; the key never travels) is
            registered. hein 0.2.3 receivers cannot, so they are refused.
        ssl_context: keyword-only; an ``ssl.SSLContext`` for the server side (with its
            certificate loaded): every connection is TLS. hein 0.2.3 receivers cannot connect.

    Methods for callers: :meth:`start`, :meth:`close`, :meth:`tell`, :meth:`tell_raw`,
    :meth:`ping`, :meth:`close_receivers`, :meth:`flush`, :meth:`queued_bytes`.

    Methods you may override (or replace on the instance), run in the callback thread:
    ``_newconnection(name)`` (default prints ``hello: NAME``), ``_dropped(name)``.

    Attributes: ``port``, ``portname``, ``timeoutACK``, ``receivers`` (dict name ->
    :class:`ReceiverInfo`), ``nreceivers``, ``running``.
    """

    def __init__(
        self,
        port: int,
        nreceivermax: int,
        start: bool = True,
        portname: str = "",
        timeoutACK: Optional[float] = 1.0,
        *,
        host: Union[str, Sequence[str], None] = None,
        allow_remote: bool = False,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        heartbeat: Optional[float] = DEFAULT_HEARTBEAT,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        max_pending: int = DEFAULT_MAX_PENDING,
        authkey: Optional[bytes] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
    ) -> None:
        self.port = _check_port(port)
        if isinstance(nreceivermax, bool) or not isinstance(nreceivermax, int):
            raise TypeError("nreceivermax must be an int, not %s" % type(nreceivermax).__name__)
        if nreceivermax < 1:
            raise ValueError("nreceivermax must be at least 1, got %d" % nreceivermax)
        self._nreceivermax = nreceivermax
        self.portname = str(portname)[:TAG_MAX_LENGTH]
        self.timeoutACK = _check_seconds("timeoutACK", timeoutACK, allow_none=True)
        self.heartbeat = _check_seconds("heartbeat", heartbeat, allow_none=True)
        self.handshake_timeout = _positive_seconds("handshake_timeout", handshake_timeout)
        if isinstance(max_queue_bytes, bool) or not isinstance(max_queue_bytes, int):
            raise TypeError("max_queue_bytes must be an int")
        if max_queue_bytes < 1024:
            raise ValueError("max_queue_bytes must be at least 1024, got %d" % max_queue_bytes)
        self.max_queue_bytes = max_queue_bytes
        self.max_pending = check_positive_int("max_pending", max_pending)
        self.allow_remote = bool(allow_remote)
        self._authkey = check_authkey(authkey)
        self.ssl_context = check_ssl_context(ssl_context)
        self._warned: Dict[Any, float] = {}
        if host is None:
            self._hosts = [""] if self.allow_remote else local_bind_addresses()
        elif isinstance(host, str):
            self._hosts = [host]
        else:
            self._hosts = [str(item) for item in host]
            if not self._hosts:
                raise ValueError("host must name at least one address")
        self.receivers: Dict[str, ReceiverInfo] = {}
        self._running = False
        self._lock = threading.Lock()  # guards start/close only; never held around user code
        self._inbox: Deque[Any] = collections.deque()
        self._waker: Optional[Waker] = None
        self._thread: Optional[threading.Thread] = None
        self._callback_thread: Optional[threading.Thread] = None
        self._callbacks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._listeners: List[socket.socket] = []
        self._retained: Dict[bytes, Union[bytes, _Big]] = {}
        self._retained_bytes = 0  # accounted by the callers of tell(), under _retain_lock
        self._retained_sizes: Dict[bytes, int] = {}
        self._retain_lock = threading.Lock()
        self._nretained = 0
        self._told = 0
        self._drops: Dict[str, int] = {}
        self._registered_snapshot: List[_Connection] = []
        self._groups: collections.OrderedDict[Any, _Group] = collections.OrderedDict()
        self._epoch = ""
        self._tag_counts: collections.Counter[bytes] = collections.Counter()
        self._inbox_bytes = 0  # bytes told but not yet taken by the loop thread
        self._inbox_lock = threading.Lock()
        self._room = threading.Event()  # set while the inbox is under max_queue_bytes
        self._room.set()
        self._drained = 0
        self._drained_items = 0  # items the last drain took (a burst makes the loop linger)
        # registered receivers that did not ask for the compact encoding (set by the loop
        # thread): while there is one, tell() writes the extended JSON, which all can read
        self._nslow = 0
        # Held by the loop thread except while it sleeps in select(): a tell() that finds the
        # loop asleep with nothing queued may take it and send the message itself (no wake-up,
        # no hand-over to another thread: the latency of sparse messages)
        self._busy = threading.Lock()
        self._last_tell = 0.0
        self._stop_deadline = 0.0
        if start:
            self.start()

    # ----------------------------------------------------------------- properties and dunders

    def __str__(self) -> str:
        return "Socket transmitter on port %d name '%s' (%s)" % (
            self.port,
            self.portname,
            "on" if self.running else "off",
        )

    __repr__ = __str__

    def __enter__(self) -> "SocTransmitter":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def running(self) -> bool:
        """Whether the transmitter is listening and broadcasting."""
        return self._running

    @property
    def nreceivers(self) -> int:
        """The number of registered receivers."""
        return len(self.receivers)

    @property
    def nreceivermax(self) -> int:
        """The most receivers registered at once."""
        return self._nreceivermax

    # ----------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Listen and start the loop thread (no-op when running).

        Raises:
            OSError: the port cannot be bound (in use, or no permission); the message names it.
        """
        with self._lock:
            if self._running:
                return
            listeners = self._bind()
            self._listeners = listeners
            self._waker = Waker()
            self._inbox = collections.deque()
            self._inbox_bytes = 0
            self._callbacks = queue.SimpleQueue()
            self._epoch = os.urandom(8).hex()
            self._groups = collections.OrderedDict()
            self._tag_counts = collections.Counter()
            self._running = True
            self._thread = threading.Thread(
                target=self._loop, name="hein-tx-%d" % self.port, daemon=True
            )
            self._callback_thread = threading.Thread(
                target=self._run_callbacks,
                args=(self._callbacks,),
                name="hein-tx-%d-callbacks" % self.port,
                daemon=True,
            )
            self._callback_thread.start()
            self._thread.start()
        logger.info(
            "%s: listening on %s", self, ", ".join(describe(s.getsockname()) for s in listeners)
        )

    def _bind(self) -> List[socket.socket]:
        listeners: List[socket.socket] = []
        port = self.port
        try:
            for host in self._hosts:
                family = (
                    socket.AF_INET6
                    if host and family_of(host) == socket.AF_INET6
                    else socket.AF_INET
                )
                sock = socket.socket(family, socket.SOCK_STREAM)
                listeners.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((host, port))
                except OSError as error:
                    raise OSError(
                        error.errno,
                        "cannot listen on port %d (%s): %s"
                        % (port, host or "all interfaces", error.strerror or error),
                    ) from None
                sock.listen(min(socket.SOMAXCONN, 4096))
                sock.setblocking(False)
                port = sock.getsockname()[1]
        except BaseException:
            for sock in listeners:
                sock.close()
            raise
        self.port = port
        return listeners

    def close(self) -> None:
        """Tell every receiver to drop (``__die__``), close every socket and stop the threads.

        Idempotent; returns within about a second whatever the receivers do. The transmitter
        can be started again with :meth:`start`.
        """
        with self._lock:
            if not self._running:
                return
            self._running = False
            thread, callback_thread = self._thread, self._callback_thread
            self._inbox.append(("close",))
            assert self._waker is not None
            self._waker.wake()
        self._room.set()  # producers waiting for room give up
        current = threading.current_thread()
        if thread is not None and thread is not current:
            thread.join(CLOSE_TIMEOUT)
        self._callbacks.put(None)
        if callback_thread is not None and callback_thread is not current:
            callback_thread.join(CLOSE_TIMEOUT)
        logger.info("%s: closed", self)

    def close_receivers(self) -> None:
        """Tell every registered receiver to drop (``__die__``) and close their connections.

        They reconnect by themselves after their ``connectWait`` if their loop still runs.
        """
        if not self._running:
            return
        done = threading.Event()
        self._command(("die", done))
        if threading.current_thread() is not self._thread:
            done.wait(CLOSE_TIMEOUT)

    # ------------------------------------------------------------------------------ sending

    def tell(
        self, v: Any, tag: Optional[str] = None, unpack: bool = True, *, retain: bool = False
    ) -> bool:
        """Broadcast a value; receivers get it with its type.

        Args:
            v: the value (see :func:`hein.json_dumps` for the types that keep their type).
            tag: a tag (at most 15 of ``[A-Za-z0-9._- ]``; other characters are removed).
            unpack: if False, receivers get a :class:`hein.Message` to decode when they like.
            retain: keyword-only; also keep this message as the retained value of its tag:
                every receiver that registers later gets it first (see
                :meth:`clear_retained`). Retained values take at most ``max_queue_bytes``
                in all (``ValueError`` past it) and at most 10,000 tags.

        Returns:
            True once the message is queued, False when the transmitter is not running.
        """
        if not self._running:
            return False
        if unpack and not retain and not self._nslow:
            return self._tell_payload(KIND_COMPACT, tag, True, compact_dumps(v))
        return self._tell_payload(KIND_JSON, tag, unpack, json_dumps(v), retain)

    def tell_raw(
        self, txt: Union[str, bytes], tag: Optional[str] = None, *, retain: bool = False
    ) -> bool:
        """Broadcast text or bytes as they are; receivers get bytes.

        Returns:
            False (and sends nothing) for a non-string or empty message, or when not running.
        """
        if isinstance(txt, str):
            data = txt.encode("utf-8")
        elif isinstance(txt, (bytes, bytearray, memoryview)):
            data = bytes(txt)
        else:
            return False
        if not data or not self._running:
            return False
        return self._tell_payload(KIND_RAW, tag, False, data, retain)

    def _tell_payload(
        self, kind: bytes, tag: Optional[str], unpack: bool, payload: bytes, retain: bool = False
    ) -> bool:
        """Queue one message whose payload is encoded already (the extended-JSON bytes of a
        ``tell``, the bytes of a ``tell_raw``). Relays (``hein.bridge``) call it directly."""
        cached = _HEADERS.get((kind, tag, unpack))
        if cached is None:
            clean = clean_tag(tag)
            cached = (clean, frame_header(kind, clean, unpack))
            if len(_HEADERS) >= 1024:
                _HEADERS.clear()
            _HEADERS[(kind, tag, unpack)] = cached
        clean, header = cached
        if len(payload) > SIZED_THRESHOLD:
            return self._queue(_Big(kind, clean, unpack, payload), clean if retain else None)
        if payload.find(_END) >= 0:
            payload = escape_payload(payload)
        frame = header + payload + TERMINATOR
        if retain:
            return self._queue(frame, clean)
        # the common case, in short: a small message, not retained
        now = time.monotonic()
        if now - self._last_tell >= DIRECT_GAP and self._send_now(frame):
            self._last_tell = now
            return True
        self._last_tell = now
        size = len(frame)
        if size <= self.max_queue_bytes and self._try_enqueue(frame, size):
            return True
        return self._queue(frame)  # too large (it raises), or waiting for room

    def _send_now(self, frame: bytes) -> bool:
        """Broadcast ``frame`` from the calling thread when the loop thread is asleep with
        nothing queued (the caller checked that the previous message was told a while ago: a
        sparse stream); False (nothing done) otherwise: the caller queues it. Bursts are
        queued, so that the loop writes them in few system calls."""
        waker = self._waker
        if self._inbox or waker is None or not waker.armed:
            return False
        busy = self._busy
        if not busy.acquire(blocking=False):
            return False
        try:
            if (
                self._inbox
                or not self._running
                or self._stop_deadline
                or len(frame) > (self.max_queue_bytes)
            ):
                return False
            self._broadcast([frame])
            return True
        finally:
            busy.release()

    def _queue(self, frame: Union[bytes, _Big], retain_tag: Optional[str] = None) -> bool:
        size = len(frame) if type(frame) is bytes else frame.size  # type: ignore[union-attr]
        if size > self.max_queue_bytes:
            raise ValueError(
                "message of %d bytes is larger than max_queue_bytes (%d)"
                % (size, self.max_queue_bytes)
            )
        if retain_tag is not None:
            key = retain_tag.encode("ascii")
            with self._retain_lock:  # account here, so that values told in a row add up
                sizes = self._retained_sizes
                total = self._retained_bytes - sizes.get(key, 0) + size
                if total > self.max_queue_bytes:
                    raise ValueError(
                        "retained values would take %d bytes, over max_queue_bytes (%d)"
                        % (total, self.max_queue_bytes)
                    )
                if key not in sizes and len(sizes) >= MAX_RETAINED:
                    raise ValueError("%d tags have a retained value already" % MAX_RETAINED)
                sizes[key] = size
                self._retained_bytes = total
            item: Any = ("retain", key, frame)
        else:
            item = frame
        while not self._try_enqueue(item, size):
            # a producer faster than the loop thread waits for it here (never on the
            # network: the loop hands frames to the receivers' queues without blocking)
            self._room.wait(0.1)
        return True

    def _try_enqueue(self, item: Any, size: int) -> bool:
        """Hand ``item`` (of ``size`` bytes) to the loop thread, unless more than
        max_queue_bytes wait for it already: then False (wait for ``_room``)."""
        with self._inbox_lock:
            if self._inbox_bytes > self.max_queue_bytes and self._running:
                self._room.clear()
                return False
            self._inbox_bytes += size
            self._inbox.append(item)
        waker = self._waker
        if waker is not None:
            waker.wake()
        return True

    def _command(self, command: Any) -> None:
        self._inbox.append(command)
        if self._waker is not None:
            self._waker.wake()

    def clear_retained(self, *tags: Optional[str]) -> None:
        """Forget retained values: of the tags given (None or "" for untagged messages), or of
        every tag when called without arguments."""
        keys = [clean_tag(tag).encode("ascii") for tag in tags] if tags else [None]
        with self._retain_lock:
            for key in keys:
                if key is None:
                    self._retained_sizes.clear()
                    self._retained_bytes = 0
                else:
                    self._retained_bytes -= self._retained_sizes.pop(key, 0)
        for key in keys:
            if self._running:
                self._command(("unretain", key))
            else:
                self._unretain(key)

    def stats(self) -> Dict[str, Any]:
        """Counters, cheap enough to leave on.

        Returns:
            ``{"told": messages told, "retained": tags with a retained value, "receivers":
            {name: {"connected_since", "frames_sent", "bytes_sent", "queued_bytes", "drops",
            "compact"}}}`` (``drops``: how many times a receiver of that name was dropped;
            ``compact``: it reads the compact encoding, see ``PROTOCOL.rst``).
        """
        receivers = {}
        for conn in list(self._registered_snapshot):
            receivers[conn.name or ""] = {
                "connected_since": conn.since,
                "frames_sent": conn.frames_sent,
                "bytes_sent": conn.sent_total,
                "queued_bytes": conn.queued,
                "drops": self._drops.get(conn.name or "", 0),
                "compact": conn.compact,
            }
        return {"told": self._told, "retained": self._nretained, "receivers": receivers}

    def ping(self) -> Dict[str, bool]:
        """Ping every registered receiver and wait for their answers.

        Waits at most ``timeoutACK`` seconds (1 s when it is None). A receiver that does not
        answer is dropped when ``timeoutACK`` is set.

        Returns:
            ``{name: answered}`` for every receiver registered when the ping was sent.
        """
        if not self._running:
            return {}
        request = _PingRequest()
        self._command(("ping", request))
        request.done.wait((self.timeoutACK or 1.0) + 1.0)
        return dict(request.results)

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every queued frame has been handed to the kernel for every receiver.

        Returns:
            True when everything was written, False on timeout or when not running.
        """
        if not self._running:
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._running:
            done = threading.Event()
            self._command(("flush", done))
            if done.wait(
                0.05 if deadline is None else max(0.0, min(0.05, deadline - time.monotonic()))
            ):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
        return False

    def queued_bytes(self) -> int:
        """The largest number of bytes waiting for one receiver: told but not yet handed to
        the kernel (use it to pace a producer; :meth:`flush` waits for zero)."""
        backlog = max((conn.queued for conn in list(self._registered_snapshot)), default=0)
        return backlog + self._inbox_bytes

    # ------------------------------------------------------------------- deprecated senders

    # (class attributes, not a __getattr__: a class with __getattr__ makes every attribute
    # lookup of its instances slower, tell()'s included)
    tell_json = _deprecated_alias("tell_json")
    tell_json_ext = _deprecated_alias("tell_json_ext")
    tell_dict = _deprecated_alias("tell_dict")
    tell_dict_type = _deprecated_alias("tell_dict_type")
    tell_list = _deprecated_alias("tell_list")
    tell_list_type = _deprecated_alias("tell_list_type")

    def tell_key(self, *args: Any, **kwargs: Any) -> bool:
        """Deprecated and meaningless since hein 0.2: warns and sends nothing."""
        warnings.warn("tell_key is deprecated, use tell instead", DeprecationWarning, stacklevel=2)
        return False

    def tell_report(self, *args: Any, **kwargs: Any) -> bool:
        """Deprecated and meaningless since hein 0.2: warns and sends nothing."""
        warnings.warn(
            "tell_report is deprecated, use tell instead", DeprecationWarning, stacklevel=2
        )
        return False

    # ----------------------------------------------------------------- callbacks to override

    def _newconnection(self, name: str) -> None:
        """Called (in the callback thread) when a receiver registers. Prints ``hello: NAME``."""
        print("hello: %s" % name)

    def _dropped(self, name: str) -> None:
        """Called (in the callback thread) when a registered receiver is dropped or leaves."""

    def _run_callbacks(self, callbacks: "queue.SimpleQueue[Any]") -> None:
        while True:
            item = callbacks.get()
            if item is None:
                return
            method, name = item
            try:
                getattr(self, method)(name)
            except Exception:
                logger.exception("%s: exception in %s(%r)", self, method, name)

    # ------------------------------------------------------------------------ the loop thread

    def _loop(self) -> None:
        assert self._waker is not None
        waker = self._waker
        selector = selectors.DefaultSelector()
        self._selector = selector
        self._connections: Dict[socket.socket, _Connection] = {}
        self._registered: Dict[str, _Connection] = {}
        self._pings: List[_PingRequest] = []
        self._npending = 0
        self._next_timers = 0.0
        self._flush_waiters: List[threading.Event] = []
        listeners = self._listeners
        busy = self._busy
        busy.acquire()  # released only while asleep in select()
        try:
            selector.register(waker.fileno(), selectors.EVENT_READ, None)
            for sock in listeners:
                selector.register(sock, selectors.EVENT_READ, sock)
            inbox = self._inbox
            self._stop_deadline = 0.0
            while True:
                if self._stop_deadline:
                    now = time.monotonic()
                    if now >= self._stop_deadline or not self._connections:
                        break
                timeout = (
                    max(0.0, self._next_timers - time.monotonic())
                    if self._next_timers
                    else _TIMER_PERIOD
                )
                if inbox and not self._stop_deadline:  # (closing: the inbox is not read)
                    events = selector.select(0)
                elif self._drained_items >= LINGER_AFTER:
                    # a burst: gather what comes next for a moment rather than have every
                    # tell() pay a system call to wake us (latency at low rates is unchanged)
                    events = selector.select(min(timeout, LINGER))
                else:
                    waker.arm()  # from here on producers write a byte to wake us
                    busy.release()  # (or send what they tell themselves: _send_now)
                    try:
                        # look at the inbox again *after* arming: what came in between wrote
                        # no byte
                        events = selector.select(
                            0 if inbox and not self._stop_deadline else timeout
                        )
                    finally:
                        busy.acquire()
                    waker.disarm()
                self._drained_items = 0
                for key, mask in events:
                    data = key.data
                    if data is None:
                        waker.clear()
                        continue
                    if isinstance(data, _Connection):
                        if data.closed:
                            continue
                        if mask & selectors.EVENT_READ:
                            self._on_readable(data)
                        if mask & selectors.EVENT_WRITE and not data.closed:
                            if data.tls_handshaking:
                                self._tls_step(data)
                            else:
                                self._write(data)
                    else:
                        self._accept(data)
                if inbox and not self._stop_deadline and self._drain_inbox(inbox):
                    self._begin_close()
                now = time.monotonic()
                if now >= self._next_timers:
                    self._check_timers(now)
                    self._next_timers = now + _TIMER_PERIOD
        except Exception:  # pragma: no cover - a bug: log it, clean up below
            logger.exception("%s: loop thread failed", self)
            self._running = False
        finally:
            self._shutdown_connections()
            self._close_listeners()
            busy.release()
            selector.close()
            waker.close()
            self.receivers = {}
            for request in self._pings:
                request.done.set()

    def _close_listeners(self) -> None:
        for sock in self._listeners:
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()

    def _begin_close(self) -> None:
        """Stop listening, tell every receiver to drop, and give them DIE_GRACE to close."""
        self._close_listeners()
        self._stop_deadline = time.monotonic() + DIE_GRACE
        for conn in list(self._connections.values()):
            if conn.registered:
                self._retire(conn, "the transmitter is closing")
            elif conn.dying_deadline == 0.0:
                self._close(conn)

    def _drain_inbox(self, inbox: Deque[Any]) -> bool:
        """Move queued frames to every receiver; run commands. True when asked to stop."""
        self._drained = 0
        try:
            return self._drain(inbox)
        finally:
            with self._inbox_lock:
                self._inbox_bytes = max(0, self._inbox_bytes - self._drained)
                room = self._inbox_bytes <= self.max_queue_bytes
            if room and not self._room.is_set():  # producers waiting in _queue may go on
                self._room.set()

    def _drain(self, inbox: Deque[Any]) -> bool:
        frames: List[bytes] = []
        stop = False
        self._drained_items += len(inbox)
        while inbox:
            item = inbox.popleft()
            if type(item) is bytes:
                self._drained += len(item)
                frames.append(item)
                continue
            if type(item) is _Big:
                self._drained += item.size
                if frames:
                    self._broadcast(frames)
                    frames = []
                self._broadcast_big(item)
                continue
            if item[0] == "retain":
                self._drained += _size(item[2])
                self._retain(item[1], item[2])
                if type(item[2]) is bytes:
                    frames.append(item[2])
                    continue
                if frames:
                    self._broadcast(frames)
                    frames = []
                self._broadcast_big(item[2])
                continue
            if frames:
                self._broadcast(frames)
                frames = []
            command = item[0]
            if command == "close":
                stop = True
                break
            if command == "ping":
                self._start_ping(item[1])
            elif command == "die":
                self._kill_all()
                item[1].set()
            elif command == "unretain":
                self._unretain(item[1])
            elif command == "flush":
                if all(not c.outbox for c in self._registered.values()):
                    item[1].set()
                else:
                    self._flush_waiters.append(item[1])
        if frames:
            self._broadcast(frames)
        return stop

    def _broadcast(self, frames: List[bytes]) -> None:
        count = len(frames)
        self._told += count
        groups = self._groups
        tags = [frame[7 : frame.find(b":", 7)] for frame in frames]
        if len(self._tag_counts) < MAX_TAGS_COUNTED:
            self._tag_counts.update(tags)
        for group in groups.values():
            if group.prefixes is None:
                group.count += count
            else:
                group.count += sum(1 for tag in tags if tag.startswith(group.prefixes))
        everything = frames[0] if count == 1 else b"".join(frames)
        chunks: Dict[Any, Tuple[bytes, int]] = {None: (everything, count)}
        limit = self.max_queue_bytes
        compact: Optional[bool] = None  # whether some frames are in the compact encoding
        for conn in list(self._registered.values()):
            prefixes = conn.group.prefixes if conn.group is not None else None
            key: Any = prefixes
            if not conn.compact:
                if compact is None:
                    compact = any(frame.startswith(KIND_COMPACT) for frame in frames)
                if compact:
                    key = ("json", prefixes, conn.group is not None)
            chunk_count = chunks.get(key)
            if chunk_count is None:
                if prefixes is None:
                    selected = frames
                else:
                    selected = [f for f, tag in zip(frames, tags) if tag.startswith(prefixes)]
                if key is not prefixes:
                    selected = self._readable(selected, conn.group is not None)
                chunk_count = chunks[key] = (b"".join(selected), len(selected))
            chunk, sent = chunk_count
            if not sent:
                continue
            conn.outbox.append(chunk)
            conn.queued += len(chunk)
            conn.queued_total += len(chunk)
            conn.frames_sent += sent
            if not conn.writing:
                self._write(conn)
            if conn.queued > limit:
                self._drop(conn, "its queue is over %d bytes (a slow or stalled receiver)" % limit)
                continue

    def _readable(self, frames: List[bytes], subscribed: bool) -> List[bytes]:
        """``frames`` for a receiver that does not read the compact encoding.

        Compact frames were told while every registered receiver read them, so before this
        one registered: a receiver that has not sent its control frame yet (it may be a hein
        0.2.3 one) does not get them. One that sent it (subscribed) and still does not read
        them gets them re-encoded (no hein receiver asks for that; a later one might).
        """
        if not subscribed:
            return [frame for frame in frames if not frame.startswith(KIND_COMPACT)]
        out = []
        for frame in frames:
            if frame.startswith(KIND_COMPACT):
                parsed = parse_frame(frame[: -len(TERMINATOR)], frozenset((KIND_COMPACT,)))
                payload = _extended_json(parsed.payload)
                if payload is None:
                    continue
                frame = encode_frame(KIND_JSON, parsed.tag, parsed.unpack, payload)
            out.append(frame)
        return out

    def _broadcast_big(self, big: _Big) -> None:
        self._told += 1
        tag = big.tag.encode("ascii")
        if len(self._tag_counts) < MAX_TAGS_COUNTED:
            self._tag_counts[tag] += 1
        for group in self._groups.values():
            if group.matches(tag):
                group.count += 1
        limit = self.max_queue_bytes
        for conn in list(self._registered.values()):
            if conn.group is not None and not conn.group.matches(tag):
                continue
            message = big
            if big.kind == KIND_COMPACT and not conn.compact:
                # see _readable: told before this receiver registered, or re-encoded
                converted = big.as_json() if conn.group is not None else None
                if converted is None:
                    continue
                message = converted
            parts = (message.sized_head, message.payload) if conn.sized else (message.legacy(),)
            for part in parts:
                conn.outbox.append(part)
                conn.queued += len(part)
                conn.queued_total += len(part)
            conn.frames_sent += 1
            if not conn.writing:
                self._write(conn)
            if conn.queued > limit:
                self._drop(conn, "its queue is over %d bytes (a slow or stalled receiver)" % limit)

    def _retain(self, tag: bytes, frame: Union[bytes, _Big]) -> None:
        """Keep a retained value (its size was accounted for by ``tell``)."""
        self._retained.pop(tag, None)
        self._retained[tag] = frame
        self._nretained = len(self._retained)

    def _unretain(self, tag: Optional[bytes]) -> None:
        if tag is None:
            self._retained.clear()
        else:
            self._retained.pop(tag, None)
        self._nretained = len(self._retained)

    def _group_for(self, prefixes: Optional[Tuple[bytes, ...]]) -> _Group:
        """The group of a subscription, made if new (the least recently used unused go)."""
        groups = self._groups
        group = groups.get(prefixes)
        if group is None:
            # counted from this transmitter's start (as far as the tags were counted)
            group = groups[prefixes] = _Group(prefixes)
            group.count = sum(n for tag, n in self._tag_counts.items() if group.matches(tag))
            if len(groups) > MAX_GROUPS:
                used = {id(c.group) for c in self._registered.values()}
                for key, old in list(groups.items()):
                    if len(groups) <= MAX_GROUPS:
                        break
                    if id(old) not in used:
                        del groups[key]
        else:
            groups.move_to_end(prefixes)
        return group

    def _on_control(self, conn: _Connection, raw: bytes) -> None:
        """A receiver's control frame (extension 3 of PROTOCOL.rst): its subscription."""
        try:
            if not raw.startswith(KIND_CONTROL + b":1:"):
                raise ProtocolError("unknown control frame %r" % raw[:20])
            prefixes, conn.sized, compact = parse_control(raw[len(KIND_CONTROL) + 3 :])
        except ProtocolError as error:
            self._drop(conn, "bad control frame: %s" % error)
            return
        if compact != conn.compact:
            conn.compact = compact
            self._count_slow()
        if prefixes is not None and b"" in prefixes:
            prefixes = None  # the empty prefix matches everything
        group = self._group_for(prefixes)
        conn.group = group
        logger.debug("%s: receiver %r subscribes to %r", self, conn.name, prefixes)
        self._send_to(conn, sequence_frame(self._epoch, group.gid, group.count))

    def _send_to(self, conn: _Connection, data: bytes) -> None:
        conn.outbox.append(data)
        conn.queued += len(data)
        conn.queued_total += len(data)
        if not conn.writing:
            self._write(conn)

    def _write(self, conn: _Connection) -> None:
        """Write as much of the connection's queue as the socket takes without blocking."""
        outbox = conn.outbox
        sock = conn.sock
        while outbox:
            head = outbox[0]
            try:
                if conn.offset:
                    sent = sock.send(memoryview(head)[conn.offset : conn.offset + _SEND_CHUNK])
                elif len(head) > _SEND_CHUNK or len(outbox) == 1:
                    sent = sock.send(
                        head if len(head) <= _SEND_CHUNK else memoryview(head)[:_SEND_CHUNK]
                    )
                else:
                    # coalesce small chunks into one write
                    parts = []
                    total = 0
                    for part in outbox:
                        parts.append(part)
                        total += len(part)
                        if total >= _SEND_CHUNK or len(parts) >= 512:
                            break
                    if len(parts) == 1:
                        sent = sock.send(parts[0])
                    elif conn.tls:
                        sent = sock.send(b"".join(parts))
                    else:
                        sent = sock.sendmsg(parts)
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                conn.blocked = True
                break
            except OSError as error:
                self._drop(conn, "write failed: %s" % (error.strerror or error))
                return
            if sent <= 0:
                break
            now = time.monotonic()
            conn.last_write = now
            if conn.registered:
                if conn.blocked:
                    # the socket buffers were full, so the kernel took these bytes only
                    # because the receiver read: progress, as good as an ACK
                    conn.blocked = False
                    conn.waiting_since = now
                elif conn.waiting_since is None:
                    conn.waiting_since = now
            conn.sent_total += sent
            conn.queued -= sent
            remaining = sent + conn.offset
            conn.offset = 0
            while remaining and outbox:
                length = len(outbox[0])
                if remaining >= length:
                    remaining -= length
                    outbox.popleft()
                else:
                    conn.offset = remaining
                    remaining = 0
        wants_write = bool(outbox)
        if not wants_write and conn.dying_deadline and not conn.half_closed:
            self._half_close(conn)
            if conn.closed:
                return
        if wants_write != conn.writing:
            conn.writing = wants_write
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if wants_write else 0)
            try:
                self._selector.modify(sock, events, conn)
            except (KeyError, ValueError, OSError):  # pragma: no cover - closed under us
                pass
        if not wants_write and self._flush_waiters:
            if all(not c.outbox for c in self._registered.values()):
                for event in self._flush_waiters:
                    event.set()
                self._flush_waiters = []

    # ------------------------------------------------------------------- accept and handshake

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(64):
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    logger.warning("%s: cannot accept: %s", self, error)
                return
            if not self.allow_remote and not is_local_peer(sock):
                self._warn_once(
                    ("remote", address[0]),
                    "%s: refused remote peer %s (allow_remote=False)",
                    describe(address),
                )
                sock.close()
                continue
            if self._npending >= self.max_pending:
                self._warn_once(
                    "max_pending",
                    "%s: refused %s: %d handshakes pending (max_pending)",
                    describe(address),
                    self._npending,
                )
                sock.close()
                continue
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover - not TCP
                pass
            if self.ssl_context is not None:
                try:
                    sock = self.ssl_context.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False
                    )
                except (OSError, ValueError) as error:
                    self._warn_once(
                        ("tls", address[0]), "%s: TLS refused %s: %s", describe(address), error
                    )
                    sock.close()
                    continue
            conn = _Connection(sock=sock, address=address, accepted=time.monotonic())
            self._connections[sock] = conn
            self._npending += 1
            self._selector.register(sock, selectors.EVENT_READ, conn)
            logger.debug("%s: accepted %s", self, describe(address))
            if self.ssl_context is not None:
                conn.tls = conn.tls_handshaking = True
                self._tls_step(conn)
            else:
                self._send_to(conn, ACK)

    def _tls_step(self, conn: _Connection) -> None:
        """Advance a server-side TLS handshake without blocking; send the ACK when done."""
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._set_events(conn, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._set_events(conn, selectors.EVENT_READ | selectors.EVENT_WRITE)
            return
        except (ssl.SSLError, OSError) as error:
            self._warn_once(
                ("tls", conn.address[0]),
                "%s: TLS handshake with %s failed: %s",
                describe(conn.address),
                error,
            )
            self._close(conn)
            return
        conn.tls_handshaking = False
        self._set_events(conn, selectors.EVENT_READ)
        self._send_to(conn, ACK)

    def _set_events(self, conn: _Connection, events: int) -> None:
        conn.writing = bool(events & selectors.EVENT_WRITE)
        try:
            self._selector.modify(conn.sock, events, conn)
        except (KeyError, ValueError, OSError):  # pragma: no cover - closed under us
            pass

    def _warn_once(self, key: Any, message: str, *args: Any) -> None:
        """Log a warning once per ``key`` a minute (peers may retry many times a second)."""
        now = time.monotonic()
        if now - self._warned.get(key, -1e9) < 60.0:
            logger.debug(message, self, *args)
            return
        if len(self._warned) > 1024:
            self._warned.clear()
        self._warned[key] = now
        logger.warning(message, self, *args)

    def _on_readable(self, conn: _Connection) -> None:
        if conn.tls_handshaking:
            self._tls_step(conn)
            return
        if conn.registered:
            size = 65536
        elif conn.name is None:
            size = TAG_MAX_LENGTH
        else:
            size = max(1, MAX_AUTH_FRAME - len(conn.auth_buffer))
        try:
            data = conn.sock.recv(size)
            if conn.tls and conn.registered:
                pending = conn.sock.pending()  # type: ignore[attr-defined]
                if pending:
                    data += conn.sock.recv(pending)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError as error:  # reset by the peer: it went away, as with a plain close
            self._drop(conn, "read failed: %s" % (error.strerror or error), logging.INFO)
            return
        if not data:
            self._drop(conn, "connection closed by the receiver", logging.INFO)
            return
        if conn.dying_deadline:
            return  # ACKs from a receiver told to drop
        if conn.registered:
            if conn.control is None and not data.strip(ACK):
                self._on_ack(conn)
                return
            if conn.control is None:
                conn.control = ReceiverBytes()
            try:
                acks, controls = conn.control.feed(data)
            except ProtocolError as error:
                self._drop(conn, "it sent bytes that are not ACKs: %s" % error)
                return
            for raw in controls:
                self._on_control(conn, raw)
            if acks and not conn.closed:
                self._on_ack(conn)
        elif conn.name is None:
            self._on_name(conn, data)
        elif conn.auth_nonce is not None:
            self._on_auth(conn, data)
        else:  # bytes during the duplicate check, before registration
            self._drop(conn, "it sent bytes before it was registered")

    def _on_ack(self, conn: _Connection) -> None:
        now = time.monotonic()
        conn.waiting_since = now if conn.outbox else None
        if conn.pings:
            answered = [r for r in conn.pings if conn.sent_total >= r.pending.get(conn, 0)]
            for request in answered:
                conn.pings.remove(request)
                request.pending.pop(conn, None)
                request.results[conn.name or ""] = True
                if not request.pending:
                    self._finish_ping(request)
        challenger = conn.challenger
        if challenger is not None and conn.sent_total >= conn.challenge_offset:
            conn.challenger = None
            challenger.challenged = None
            self._warn_once(
                ("duplicate", conn.name),
                "%s: refused a second receiver named %r from %s: the first one answers",
                conn.name,
                describe(challenger.address),
            )
            self._close(challenger)

    def _on_name(self, conn: _Connection, data: bytes) -> None:
        if data.startswith(b"\x16\x03"):  # a TLS ClientHello: a TLS receiver, and we are not
            self._warn_once(
                ("tls-hello", conn.address[0]),
                "%s: refused %s: it speaks TLS and this transmitter has no ssl_context",
                describe(conn.address),
            )
            self._close(conn)
            return
        try:
            name = data.decode("utf-8")
        except UnicodeDecodeError:
            name = data.decode("latin-1")
        conn.name = name
        if self._authkey is not None:
            conn.auth_nonce = new_nonce()
            self._send_to(conn, challenge_frame(conn.auth_nonce))
            return
        self._admit(conn)

    def _on_auth(self, conn: _Connection, data: bytes) -> None:
        """Bytes of the receiver's answer to the challenge (extension 2 of PROTOCOL.rst)."""
        buffer = conn.auth_buffer
        buffer += data
        end = buffer.find(TERMINATOR)
        if end < 0:
            if len(buffer) >= MAX_AUTH_FRAME:
                self._auth_failed(conn, "its answer is too long")
            return
        if end + len(TERMINATOR) != len(buffer):
            self._auth_failed(conn, "it sent bytes after its answer")
            return
        raw = bytes(buffer[:end])
        nonce = conn.auth_nonce
        assert nonce is not None and self._authkey is not None
        name = (conn.name or "").encode("utf-8")
        prefix = KIND_AUTH + b":1:"
        fields = parse_hello(raw[len(prefix) :]) if raw.startswith(prefix) else None
        response = hex_field(fields, "response", 32)
        their_nonce = hex_field(fields, "challenge", NONCE_SIZE)
        if response is None or their_nonce is None:
            self._auth_failed(conn, "its answer is malformed")
            return
        expected = auth_digest(self._authkey, b"receiver", nonce, name)
        if not digests_match(expected, response):
            self._auth_failed(conn, "wrong authkey")
            return
        conn.auth_nonce = None
        conn.auth_buffer = bytearray()
        proof = auth_digest(self._authkey, b"transmitter", their_nonce, name)
        self._send_to(conn, proof_frame(proof))
        self._admit(conn)

    def _auth_failed(self, conn: _Connection, reason: str) -> None:
        self._warn_once(
            ("auth", conn.name, conn.address[0]),
            "%s: receiver %r from %s failed authentication (%s); refused",
            conn.name,
            describe(conn.address),
            reason,
        )
        self._close(conn)

    def _admit(self, conn: _Connection) -> None:
        """Register an identified receiver, check a duplicate name first, or refuse it."""
        name = conn.name or ""
        existing = self._registered.get(name)
        if existing is not None:
            if existing.challenger is not None:
                self._drop(conn, "another receiver named %r is being checked" % name)
                return
            # ask the registered one whether it is alive
            existing.challenger = conn
            conn.challenged = existing
            conn.challenge_deadline = time.monotonic() + min(
                self.timeoutACK or 1.0, DUPLICATE_CHECK_TIMEOUT
            )
            self._send_to(existing, _PING_FRAME)
            existing.challenge_offset = existing.queued_total
            return
        if len(self._registered) >= self._nreceivermax:
            self._warn_once(
                ("full", name),
                "%s: refused receiver %r from %s: %d receivers already (nreceivermax)",
                name,
                describe(conn.address),
                self._nreceivermax,
            )
            self._close(conn)
            return
        self._register(conn)

    def _register(self, conn: _Connection) -> None:
        name = conn.name
        assert name is not None
        self._npending -= 1
        conn.pending = False
        conn.registered = True
        conn.since = time.time()
        conn.last_write = time.monotonic()
        self._registered[name] = conn
        retained = b"".join(
            frame if type(frame) is bytes else frame.legacy()  # type: ignore[union-attr]
            for frame in self._retained.values()
        )
        # counted (receivers, _nslow) before the ACK goes: a tell() made once the receiver
        # knows it is registered must reach it
        self._update_receivers()
        self._send_to(conn, ACK + hello_frame(self.heartbeat) + retained)
        logger.info("%s: receiver %r registered from %s", self, name, describe(conn.address))
        self._callbacks.put(("_newconnection", name))

    def _update_receivers(self) -> None:
        self._registered_snapshot = list(self._registered.values())
        self._count_slow()
        self.receivers = {
            name: ReceiverInfo(name, c.address, c.since) for name, c in self._registered.items()
        }

    def _count_slow(self) -> None:
        """Count the registered receivers that do not read the compact encoding (tell()
        reads the count: while it is not 0, it writes the extended JSON)."""
        self._nslow = sum(1 for c in self._registered_snapshot if not c.compact)

    # ------------------------------------------------------------------------ timers and pings

    def _check_timers(self, now: float) -> None:
        timeout = self.timeoutACK
        heartbeat = self.heartbeat
        for conn in list(self._connections.values()):
            if conn.closed:
                continue
            if conn.dying_deadline:
                if now >= conn.dying_deadline:
                    self._close(conn)
                continue
            if not conn.registered:
                if conn.challenged is not None:
                    if now >= conn.challenge_deadline:
                        self._replace(conn.challenged, conn)
                elif now - conn.accepted > self.handshake_timeout:
                    self._drop(conn, "no name within the handshake timeout")
                continue
            if (
                timeout is not None
                and conn.waiting_since is not None
                and now - conn.waiting_since > timeout
            ):
                self._drop(conn, "no ACK for %.3g s" % timeout)
                continue
            if heartbeat is not None and not conn.outbox and now - conn.last_write > heartbeat:
                self._send_to(conn, _PING_FRAME)
        for request in list(self._pings):
            if now >= request.deadline:
                for conn in list(request.pending):
                    request.results[conn.name or ""] = False
                    if conn in self._connections.values() and request in conn.pings:
                        conn.pings.remove(request)
                    if self.timeoutACK is not None and not conn.closed:
                        self._drop(conn, "no answer to a ping")
                request.pending.clear()
                self._finish_ping(request)

    def _replace(self, old: _Connection, new: _Connection) -> None:
        old.challenger = None
        new.challenged = None
        if not old.closed:
            self._drop(old, "unresponsive; replaced by a new receiver of the same name")
        if not new.closed:
            self._register(new)

    def _start_ping(self, request: _PingRequest) -> None:
        request.deadline = time.monotonic() + (self.timeoutACK or 1.0)
        for conn in self._registered.values():
            request.results[conn.name or ""] = False
            self._send_to(conn, _PING_FRAME)
            request.pending[conn] = conn.queued_total
            conn.pings.append(request)
        if request.pending:
            self._pings.append(request)
        else:
            request.done.set()

    def _finish_ping(self, request: _PingRequest) -> None:
        if request in self._pings:
            self._pings.remove(request)
        request.done.set()

    # --------------------------------------------------------------------- dropping, closing

    def _drop(self, conn: _Connection, reason: str, level: int = logging.WARNING) -> None:
        """Close a connection; if it was a registered receiver, say so and call ``_dropped``."""
        if conn.closed:
            return
        if conn.registered:
            logger.log(level, "%s: dropped receiver %r: %s", self, conn.name, reason)
            if level >= logging.WARNING:
                if len(self._drops) > 4096:
                    self._drops.clear()
                self._drops[conn.name or ""] = self._drops.get(conn.name or "", 0) + 1
        else:
            logger.info("%s: closed connection from %s: %s", self, describe(conn.address), reason)
        self._close(conn)

    def _close(self, conn: _Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        was_registered = conn.registered
        self._connections.pop(conn.sock, None)
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        try:
            conn.sock.close()
        except OSError:  # pragma: no cover
            pass
        conn.outbox.clear()
        conn.queued = 0
        for request in conn.pings:
            request.pending.pop(conn, None)
            request.results[conn.name or ""] = False
            if not request.pending:
                self._finish_ping(request)
        conn.pings = []
        if conn.challenger is not None:  # the registered one died during a duplicate check
            challenger = conn.challenger
            conn.challenger = None
            challenger.challenged = None
            if not challenger.closed:
                self._unregister_name(conn)
                self._register(challenger)
        if conn.challenged is not None:
            conn.challenged.challenger = None
            conn.challenged = None
        if was_registered:
            self._unregister_name(conn)
        if conn.pending:
            conn.pending = False
            self._npending -= 1

    def _unregister_name(self, conn: _Connection) -> None:
        if conn.registered and self._registered.get(conn.name or "") is conn:
            del self._registered[conn.name or ""]
            conn.registered = False
            self._update_receivers()
            self._callbacks.put(("_dropped", conn.name))

    def _kill_all(self) -> None:
        for conn in list(self._registered.values()):
            self._retire(conn, "close_receivers()")

    def _retire(self, conn: _Connection, reason: str) -> None:
        """Unregister a receiver and tell it to drop (``__die__``), then half-close.

        The connection stays open for reading until the receiver closes its end (or
        DIE_GRACE passes): a 0.2.3 receiver fails to reconnect when its socket is reset under
        it while it handles ``__die__``.
        """
        logger.info("%s: telling receiver %r to drop: %s", self, conn.name, reason)
        self._unregister_name(conn)
        conn.dying_deadline = time.monotonic() + DIE_GRACE
        if conn.queued > self.max_queue_bytes // 2:  # far behind: do not wait for it
            self._close(conn)
            return
        self._send_to(conn, _DIE_FRAME)

    def _half_close(self, conn: _Connection) -> None:
        conn.half_closed = True
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)

    def _shutdown_connections(self) -> None:
        for conn in list(self._connections.values()):
            self._close(conn)
        for event in self._flush_waiters:
            event.set()
        self._flush_waiters = []


def _size(frame: Union[bytes, _Big]) -> int:
    return len(frame) if type(frame) is bytes else frame.size  # type: ignore[union-attr]


def _check_port(port: Any) -> int:
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError("port must be an int, not %s" % type(port).__name__)
    if not 0 <= port <= 65535:
        raise ValueError("port must be between 0 and 65535, got %d" % port)
    return port


def _check_seconds(name: str, value: Any, allow_none: bool = False) -> Optional[float]:
    if value is None and allow_none:
        return None
    return _positive_seconds(name, value)


def _positive_seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("%s must be a number of seconds, not %s" % (name, type(value).__name__))
    if not value > 0:
        raise ValueError("%s must be positive, got %r" % (name, value))
    return float(value)
