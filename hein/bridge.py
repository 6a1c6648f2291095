"""Bridges between hein and NATS: take a hein stream past one machine (the ``nats`` extra).

``pip install 'hein[nats]'`` pulls `nats-py <https://github.com/nats-io/nats.py>`_; nothing else
in hein imports this module or nats-py.

- :class:`HeinToNats` listens to a :class:`~hein.SocTransmitter` as a named receiver and publishes
  every message to NATS on ``PREFIX.TOKEN`` (TOKEN: the tag, see :func:`tag_to_token`), the
  payload bytes unchanged (the extended JSON of ``tell``, the bytes of ``tell_raw``), with the
  frame kind and unpack flag in NATS headers.
- :class:`NatsToHein` subscribes to NATS subjects (wildcards allowed) and re-broadcasts each
  message through a local :class:`~hein.SocTransmitter`, with the tag restored from the subject,
  so that its receivers (hein 0.2.3 ones included) get what the remote ``tell`` sent.

The NATS message of one hein message::

    subject  PREFIX.TOKEN                  TOKEN = tag_to_token(tag); "~untagged" for no tag
    headers  Hein-Kind: json | raw         the frame kind (__jsn__ or __raw__)
             Hein-Unpack: 1 | 0            the unpack flag (0: receivers get a hein.Message)
             Hein-Origin: ID N             the publishing bridge's id (loop prevention) and
                                           the message's number, 1, 2, 3... per bridge and
                                           subject (loss counting)
    payload  the hein payload bytes, as told

Tag tokens: a tag is at most 15 characters of ``[A-Za-z0-9._- ]``; NATS subject tokens cannot
hold ``.`` (it separates tokens) nor a space, so every character outside ``[A-Za-z0-9_-]`` is
written ``~XX`` (its code in two upper-case hex digits): ``"temp.in"`` is ``temp~2Ein``,
``"my tag"`` is ``my~20tag``. ``~`` never occurs in a tag, so the mapping is reversible, and
``~untagged`` (not a valid escape) names untagged messages.

A NATS message without these headers (from any NATS client) reaches hein receivers as a raw
message (bytes) tagged with the last token of its subject.

Optional JetStream: ``HeinToNats(..., stream=NAME)`` makes sure a stream keeps ``PREFIX.>``;
``NatsToHein(..., stream=NAME, durable=..., deliver=...)`` consumes from it (replay for late
subscribers, resumption for durable consumers), acknowledging each message once told.

Threads: each bridge runs nats-py in an asyncio event loop in its own daemon thread,
``hein-bridge-to-nats-NAME`` or ``hein-bridge-from-nats-NAME``, joined by ``close()``. A
:class:`HeinToNats` also has its receiver's thread (``hein-rx-NAME``), which hands frames to the
loop through a bounded queue; a :class:`NatsToHein` has its transmitter's threads.
"""

import asyncio
import collections
import inspect
import logging
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
import uuid
from typing import (
    Any,
    Awaitable,
    Callable,
    Deque,
    Dict,
    Iterable,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

try:
    import nats.errors as nats_errors
    import nats.js.errors as nats_js_errors
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.js.api import DeliverPolicy
except ImportError as _error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "hein.bridge needs nats-py: pip install 'hein[nats]' (%s)" % _error
    ) from _error

from ._checks import check_positive_int
from ._framing import (
    DEFAULT_MAX_FRAME_SIZE,
    KIND_JSON,
    KIND_RAW,
    Frame,
    clean_tag,
)
from ._netutil import default_host
from .socreceiver import SocReceiver
from .soctransmitter import DEFAULT_MAX_QUEUE_BYTES, SocTransmitter

__all__ = [
    "DEFAULT_NATS_URL",
    "HEADER_KIND",
    "HEADER_ORIGIN",
    "HEADER_UNPACK",
    "UNTAGGED_TOKEN",
    "HeinToNats",
    "NatsToHein",
    "subject_for",
    "tag_from_subject",
    "tag_to_token",
    "token_to_tag",
]

logger = logging.getLogger(__name__)

#: Where the bridges connect by default.
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
#: The frame kind: ``json`` (``tell``) or ``raw`` (``tell_raw``).
HEADER_KIND = "Hein-Kind"
#: The unpack flag of a ``json`` message: ``1`` (receivers get the value) or ``0`` (a Message).
HEADER_UNPACK = "Hein-Unpack"
#: ``ID N``: the id of the bridge that published the message, and the message's number among
#: those that bridge published on its subject (from 1).
HEADER_ORIGIN = "Hein-Origin"
#: The subject token of untagged messages.
UNTAGGED_TOKEN = "~untagged"

#: Seconds between two reconnection attempts to a NATS server (nats-py's default is 2).
DEFAULT_RECONNECT_WAIT = 0.25
#: Default bound of the queue between a HeinToNats's receiver thread and its event loop.
DEFAULT_QUEUE_SIZE = 10000
#: Default bound of that queue in bytes of payload.
DEFAULT_QUEUE_BYTES = 64 * 1024 * 1024
#: Default most seconds the receiver thread waits for room in that queue (NATS connected).
DEFAULT_BLOCK = 0.25
#: Default seconds between two statistics lines (logged at DEBUG).
DEFAULT_STATS_INTERVAL = 10.0
#: Default bound of a NatsToHein's subscription queue inside nats-py, in messages and bytes.
DEFAULT_PENDING_MSGS = 65536
DEFAULT_PENDING_BYTES = 64 * 1024 * 1024
#: Default most messages waiting in a NatsToHein's transmitter before new ones are dropped.
DEFAULT_MAX_BACKLOG = 100000
#: Seconds close() gives a HeinToNats to publish what it holds, then to flush it to NATS.
CLOSE_FLUSH = 1.0
#: Seconds close() waits for the bridge thread.
CLOSE_TIMEOUT = 5.0

_KIND_NAMES = {KIND_JSON: "json", KIND_RAW: "raw"}
_SAFE = re.compile(r"[A-Za-z0-9_\-]*")
_ESCAPE = re.compile(r"~([0-9A-Fa-f]{2})")
_BAD_PREFIX_TOKEN = re.compile(r"[\s*>]")
_CACHE_MAX = 4096
_SEQ_KEYS_MAX = 100000
_PUBLISH_BATCH = 256
_DELIVER_POLICIES = (
    DeliverPolicy.ALL,
    DeliverPolicy.NEW,
    DeliverPolicy.LAST,
    DeliverPolicy.LAST_PER_SUBJECT,
)
_NATS_CALLBACKS = (
    "error_cb",
    "disconnected_cb",
    "reconnected_cb",
    "closed_cb",
    "discovered_server_cb",
)

_WHITESPACE = re.compile(r"\s")

# ports of this process's NatsToHein transmitters (a HeinToNats refuses to listen to them)
_local_transmitter_ports: Set[int] = set()


# ------------------------------------------------------------------------ subjects and tags


def tag_to_token(tag: Optional[str]) -> str:
    """The subject token of a hein tag: ``~XX`` for every character outside ``[A-Za-z0-9_-]``
    (``"temp.in"`` -> ``"temp~2Ein"``); :data:`UNTAGGED_TOKEN` for no tag (None or "").

    The tag is cleaned first, as it travels (see :func:`hein.clean_tag`)."""
    tag = clean_tag(tag)
    if not tag:
        return UNTAGGED_TOKEN
    if _SAFE.fullmatch(tag):
        return tag
    return "".join(c if _SAFE.fullmatch(c) else "~%02X" % ord(c) for c in tag)


def token_to_tag(token: str) -> Optional[str]:
    """The hein tag of a subject token (the inverse of :func:`tag_to_token`): None for
    :data:`UNTAGGED_TOKEN` or an empty token. A token that no tag maps to (from another NATS
    client) gives its characters allowed in a tag, at most 15 of them."""
    if not token or token == UNTAGGED_TOKEN:
        return None
    if "~" in token:
        token = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), token)
    return clean_tag(token) or None


def subject_for(prefix: str, tag: Optional[str]) -> str:
    """The NATS subject of a message with ``tag``: ``PREFIX.TOKEN``."""
    return "%s.%s" % (prefix, tag_to_token(tag))


def tag_from_subject(subject: str) -> Optional[str]:
    """The hein tag of a NATS subject: its last token, decoded (see :func:`token_to_tag`)."""
    return token_to_tag(subject.rpartition(".")[2])


def _check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str):
        raise TypeError("prefix must be a str, not %s" % type(prefix).__name__)
    tokens = prefix.split(".")
    if not prefix or any(not token or _BAD_PREFIX_TOKEN.search(token) for token in tokens):
        raise ValueError(
            "prefix %r: one or more NATS subject tokens separated by '.', without spaces or "
            "wildcards" % prefix
        )
    return prefix


def _check_subjects(subjects: Union[str, Iterable[str]]) -> List[str]:
    if isinstance(subjects, str):
        subjects = [subjects]
    checked = []
    for subject in subjects:
        if not isinstance(subject, str):
            raise TypeError("a subject must be a str, not %s" % type(subject).__name__)
        tokens = subject.split(".")
        for index, token in enumerate(tokens):
            if (
                not token
                or re.search(r"\s", token)
                or (">" in token and (token != ">" or index != len(tokens) - 1))
                or ("*" in token and token != "*")
            ):
                raise ValueError("bad NATS subject %r" % subject)
        checked.append(subject)
    if not checked:
        raise ValueError("subjects must not be empty")
    return checked


def _check_servers(servers: Union[str, Sequence[str]]) -> List[str]:
    if isinstance(servers, str):
        servers = [part.strip() for part in servers.split(",")]
    urls = [str(url).strip() for url in servers if str(url).strip()]
    if not urls:
        raise ValueError("give at least one NATS server URL")
    for url in urls:
        parsed = urllib.parse.urlparse(url if "://" in url else "nats://" + url)
        try:
            parsed.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            raise ValueError("NATS server URL %r: bad port" % url) from None
        if parsed.scheme not in ("nats", "tls", "ws", "wss") or not parsed.hostname:
            raise ValueError("NATS server URL %r: want nats://HOST:PORT (or tls://, ws://)" % url)
    return urls


def _default_bridge_id() -> str:
    return "%s-%d-%s" % (socket.gethostname() or "host", os.getpid(), uuid.uuid4().hex[:8])


def _url_text(url: Any) -> str:
    if url is None:
        return "-"
    return "%s://%s:%s" % (url.scheme, url.hostname, url.port)


# ------------------------------------------------------------------------- the NATS client


def _parse_header_lines(raw: bytes) -> Dict[str, str]:
    """What nats-py's ``Client._parse_header_lines`` returns for a header block, about twice
    as fast (it looks for whitespace in each name one character at a time, in Python)."""
    out: Dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if _WHITESPACE.search(key):
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out


def _has_header_parser() -> bool:
    """Whether nats-py parses header blocks with the static method that _Client replaces."""
    method = inspect.getattr_static(NatsClient, "_parse_header_lines", None)
    if not isinstance(method, staticmethod):
        return False
    try:
        return list(inspect.signature(method.__func__).parameters) == ["raw"]
    except (TypeError, ValueError):  # pragma: no cover
        return False


class _Client(NatsClient):
    """nats-py's client, with :func:`_parse_header_lines` for every message with headers
    (every message a bridge publishes has three)."""

    _parse_header_lines = staticmethod(_parse_header_lines)


def _new_client() -> NatsClient:
    return _Client() if _has_header_parser() else NatsClient()


# ---------------------------------------------------------------------------- the base class


class _Bridge:
    """What both directions share: the event loop thread, the NATS connection, counters."""

    _direction = ""

    def __init__(
        self,
        servers: Union[str, Sequence[str]],
        name: str,
        bridge_id: Optional[str],
        stats_interval: Optional[float],
        user: Optional[str],
        password: Optional[str],
        token: Optional[str],
        creds: Optional[str],
        tls: Optional[ssl.SSLContext],
        tls_hostname: Optional[str],
        reconnect_time_wait: float,
        nats_options: Dict[str, Any],
    ) -> None:
        self.servers = _check_servers(servers)
        if not isinstance(name, str) or not name:
            raise ValueError("name must be a non-empty str")
        self.name = name
        if bridge_id is None:
            bridge_id = _default_bridge_id()
        if not isinstance(bridge_id, str) or not re.fullmatch(r"[\x21-\x7e]{1,128}", bridge_id):
            raise ValueError("bridge_id must be 1 to 128 printable ASCII characters, no spaces")
        self.bridge_id = bridge_id
        if stats_interval is not None and not stats_interval > 0:
            raise ValueError("stats_interval must be positive (or None: never)")
        self.stats_interval = stats_interval
        if not reconnect_time_wait >= 0:
            raise ValueError("reconnect_time_wait must be >= 0")
        for key in _NATS_CALLBACKS:
            if key in nats_options:
                raise TypeError("%s: the bridge sets its own NATS callbacks" % key)
        if tls is not None and not isinstance(tls, ssl.SSLContext):
            raise TypeError("tls must be an ssl.SSLContext")
        if token is not None and (user is not None or password is not None):
            raise ValueError("give a token or a user and password, not both")
        options: Dict[str, Any] = {
            "name": name,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": reconnect_time_wait,
            "connect_timeout": 2,
        }
        for key, value in (
            ("user", user),
            ("password", password),
            ("token", token),
            ("user_credentials", creds),
            ("tls", tls),
            ("tls_hostname", tls_hostname),
        ):
            if value is not None:
                options[key] = value
        options.update(nats_options)
        self._nats_options = options
        self._counts: Dict[str, int] = {"nats_reconnects": 0, "nats_disconnects": 0}
        self._nc: Optional[NatsClient] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop: Optional[asyncio.Event] = None
        self._thread: Optional[threading.Thread] = None
        self._started = threading.Event()
        self._nats_ready = threading.Event()
        self._closed = False
        self._close_lock = threading.Lock()
        self._errors_logged: Set[str] = set()
        self._connect_failures = 0
        self.stream: Optional[str] = None  # a JetStream stream (set by the subclasses)
        self.stream_config: Dict[str, Any] = {}

    # -------------------------------------------------------------------------- public

    @property
    def connected(self) -> bool:
        """Whether the NATS connection is up now."""
        nc = self._nc
        return bool(nc is not None and nc.is_connected)

    @property
    def nats_url(self) -> Optional[str]:
        """The NATS server connected to now (``nats://host:port``), or None."""
        nc = self._nc
        if nc is None or not nc.is_connected:
            return None
        return _url_text(nc.connected_url)

    @property
    def running(self) -> bool:
        """Whether the bridge's thread runs (until :meth:`close`)."""
        thread = self._thread
        return bool(thread is not None and thread.is_alive())

    def stats(self) -> Dict[str, int]:
        """Counters; see the subclass."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> "_Bridge":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ------------------------------------------------------------------------- thread

    def _start_thread(self) -> None:
        self._thread = threading.Thread(
            target=self._run,
            name="hein-bridge-%s-%s" % (self._direction, self.name),
            daemon=True,
        )
        self._thread.start()
        self._started.wait(CLOSE_TIMEOUT)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main())
        except asyncio.CancelledError:  # pragma: no cover - a stray cancellation from nats-py
            logger.debug("%s: bridge loop cancelled", self)
        except Exception:  # pragma: no cover - a bug: log it
            logger.exception("%s: bridge thread failed", self)
        finally:
            try:
                tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
                for task in tasks:
                    task.cancel()
                if tasks:  # bounded: a task may swallow its cancellation
                    loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                self._started.set()

    def _request_stop(self) -> None:
        """From any thread: make the loop's main coroutine finish."""
        loop, stop = self._loop, self._stop
        if loop is None or stop is None:
            return
        try:
            loop.call_soon_threadsafe(self._on_stop_request)
        except RuntimeError:  # the loop is closed already
            pass

    def _on_stop_request(self) -> None:
        assert self._stop is not None
        self._stop.set()

    def _join(self) -> None:
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(CLOSE_TIMEOUT)
            if thread.is_alive():  # pragma: no cover
                logger.warning("%s: bridge thread still busy after close()", self)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        nc = _new_client()
        self._nc = nc
        self._started.set()
        stats_task = (
            asyncio.ensure_future(self._log_stats()) if self.stats_interval is not None else None
        )
        try:
            if await self._connect(nc):
                await self._serve(nc)
        finally:
            if stats_task is not None:
                stats_task.cancel()
            await self._finish(nc)
            await self._close_nats(nc)

    async def _connect(self, nc: NatsClient) -> bool:
        """Connect (nats-py retries forever); False when stopped first."""
        assert self._stop is not None
        connect = asyncio.ensure_future(
            nc.connect(
                servers=self.servers,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                closed_cb=self._on_closed,
                **self._nats_options,
            )
        )
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({connect, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not connect.done():
            # nats-py may swallow one cancellation (while it closes a failed attempt): repeat
            for _ in range(int(CLOSE_TIMEOUT / 0.05)):
                connect.cancel()
                await asyncio.wait({connect}, timeout=0.05)
                if connect.done():
                    break
            return False
        error = connect.exception()
        if error is not None:
            logger.error("%s: cannot connect to NATS: %s", self, error)
            return False
        logger.info("%s: connected to NATS at %s", self, _url_text(nc.connected_url))
        self._errors_logged.clear()
        return True

    async def _close_nats(self, nc: NatsClient) -> None:
        try:
            if not nc.is_closed:
                await asyncio.wait_for(nc.close(), CLOSE_TIMEOUT)
        except (Exception, asyncio.CancelledError) as error:
            # never connected, or the server went away (nats-py may cancel its own close while
            # it reconnects): nothing left to do
            logger.debug("%s: closing the NATS connection: %r", self, error)

    async def _serve(self, nc: NatsClient) -> None:
        raise NotImplementedError

    def _set_stream(self, stream: Optional[str], config: Optional[Dict[str, Any]]) -> None:
        if stream is not None and (
            not isinstance(stream, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", stream)
        ):
            raise ValueError("stream: a JetStream stream name, 1 to 255 of [A-Za-z0-9_-]")
        self.stream = stream
        self.stream_config = dict(config or {})

    async def _ensure_stream(self, nc: NatsClient, subjects: Sequence[str]) -> bool:
        """Make the JetStream stream ``self.stream`` for ``subjects`` unless it exists (an
        existing stream is left as it is); True when it is there."""
        if self.stream is None:
            return True
        js = nc.jetstream()
        try:
            try:
                await js.stream_info(self.stream)
            except nats_js_errors.NotFoundError:
                await js.add_stream(name=self.stream, subjects=list(subjects), **self.stream_config)
                logger.info(
                    "%s: made the JetStream stream %s of %s", self, self.stream, ", ".join(subjects)
                )
        except nats_errors.Error as error:
            await self._on_error(error)
            return False
        return True

    async def _finish(self, nc: NatsClient) -> None:
        """After :meth:`_serve` (or a failed connection), before the connection is closed."""

    async def _log_stats(self) -> None:
        assert self.stats_interval is not None
        while True:
            await asyncio.sleep(self.stats_interval)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "%s: %s",
                    self,
                    " ".join("%s=%s" % item for item in sorted(self.stats().items())),
                )

    # ------------------------------------------------------------------ NATS callbacks

    async def _on_error(self, error: Exception) -> None:
        if isinstance(error, nats_errors.SlowConsumerError):
            self._on_slow_consumer()
            return
        text = "%s: %s" % (type(error).__name__, error)
        if not self._nats_ready.is_set():
            self._connect_failures += 1
        if text in self._errors_logged:
            logger.debug("%s: NATS: %s", self, text)
            return
        if len(self._errors_logged) > 100:
            self._errors_logged.clear()
        self._errors_logged.add(text)
        if self._nats_ready.is_set():
            logger.warning("%s: NATS: %s", self, text)
        else:
            logger.warning(
                "%s: cannot connect to NATS at %s (%s); retrying every %g s",
                self,
                ", ".join(self.servers),
                text,
                self._nats_options["reconnect_time_wait"],
            )

    def _on_slow_consumer(self) -> None:
        pass

    async def _on_disconnected(self) -> None:
        if self._nats_ready.is_set() and not self._closed:
            self._counts["nats_disconnects"] += 1
            logger.warning("%s: disconnected from NATS; reconnecting", self)

    async def _on_reconnected(self) -> None:
        self._counts["nats_reconnects"] += 1
        self._errors_logged.clear()
        nc = self._nc
        logger.warning(
            "%s: reconnected to NATS at %s", self, _url_text(nc.connected_url if nc else None)
        )
        await self._after_reconnect()

    async def _after_reconnect(self) -> None:
        pass

    async def _on_closed(self) -> None:
        logger.debug("%s: NATS connection closed", self)


# ----------------------------------------------------------------------------- hein -> NATS


class _FrameReceiver(SocReceiver):
    """A receiver that hands the frames of ``__jsn__`` and ``__raw__`` messages, undecoded, to
    its bridge (``SocReceiver._raw_frames``)."""

    _raw_frames = True
    _compact = False  # payloads go to NATS as told: the extended JSON

    def __init__(self, bridge: "HeinToNats", *args: Any, **kwargs: Any) -> None:
        self._bridge = bridge
        super().__init__(*args, **kwargs)

    def _newconnection(self) -> None:
        self._bridge._on_hein_connection()

    def _missed(self, count: int) -> None:
        self._bridge._on_hein_missed(count)


class HeinToNats(_Bridge):
    """Publishes a hein transmitter's stream to NATS: one NATS message per hein message.

    It is a :class:`~hein.SocReceiver` named ``name`` of the transmitter on ``host:port`` (it
    reconnects whenever the transmitter goes away, like any receiver) and a NATS client of
    ``nats_url`` (nats-py reconnects by itself, forever, trying every server of the list and
    those the cluster announces). Each message goes to ``PREFIX.TOKEN`` (see the module
    docstring) with its payload unchanged.

    Args:
        port: the transmitter's port.
        nats_url: a NATS server URL, a comma-separated list, or a list of them (the cluster's
            servers, for failover). ``tls://`` URLs use TLS.
        prefix: the subject prefix: one or more tokens (``"hein"``, ``"site1.hein"``).
        name: the receiver's name at the transmitter (at most 15 bytes of UTF-8) and the NATS
            connection's name.
        host: the transmitter's host (default: as :class:`~hein.SocReceiver`).
        bridge_id: keyword-only; stamped on every message (``Hein-Origin``); a
            :class:`NatsToHein` with the same id drops them (default: ``HOST-PID-RANDOM``).
        queue_size, queue_bytes: keyword-only; bounds of the queue between the receiver
            thread and the NATS loop (messages, bytes of payload).
        block: keyword-only; when that queue is full and NATS is connected, the receiver
            thread waits at most this many seconds for the loop to drain it by half (meanwhile
            hein's own queue for this receiver, in the transmitter, holds the stream); then,
            or at once while NATS is disconnected, a message that does not fit is dropped
            and counted. Keep it well under the transmitter's ``timeoutACK``.
        tags: keyword-only; tag prefixes to forward (as :class:`~hein.SocReceiver`; None:
            everything).
        connectWait, authkey, ssl_context, max_frame_size: keyword-only; for the receiver
            (see :class:`~hein.SocReceiver`).
        user, password, token, creds, tls, tls_hostname: keyword-only; NATS authentication
            (``creds``: a ``.creds`` file) and TLS (an ``ssl.SSLContext``), passed to nats-py.
        reconnect_time_wait: keyword-only; seconds between NATS reconnection attempts.
        stats_interval: keyword-only; seconds between statistics lines logged at DEBUG
            (None: never).
        stream, stream_config: keyword-only; a JetStream stream to keep what is published on
            ``PREFIX.>`` (made with ``stream_config``, e.g. ``{"max_age": 3600}``, when it does
            not exist; an existing one is used as it is). Publishing stays NATS core.
        nats_options: any other keyword for ``nats.connect`` (``pending_size``,
            ``dont_randomize``, ...), except its callbacks.

    Counters, from :meth:`stats`: ``received`` (messages from hein), ``forwarded`` (handed to
    NATS), ``dropped`` (never handed to NATS: ``dropped_full``, the bridge's queue was full;
    ``dropped_nats``, nats-py refused it: its buffer was full while disconnected, or the
    message is over the server's max_payload), ``queued`` (now), ``missed`` (messages the
    transmitter told while the bridge was not connected to it, as a hein 1 transmitter
    reports them), ``hein_reconnects``, ``nats_reconnects``, ``nats_disconnects``,
    ``reconnects`` (both), ``connected`` (NATS, now).
    """

    _direction = "to-nats"

    def __init__(
        self,
        port: int,
        nats_url: Union[str, Sequence[str]] = DEFAULT_NATS_URL,
        prefix: str = "hein",
        name: str = "nats-bridge",
        host: Optional[str] = None,
        *,
        bridge_id: Optional[str] = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
        block: float = DEFAULT_BLOCK,
        tags: Optional[Iterable[str]] = None,
        connectWait: float = 0.5,
        authkey: Optional[bytes] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        user: Optional[str] = None,
        password: Optional[str] = None,
        token: Optional[str] = None,
        creds: Optional[str] = None,
        tls: Optional[ssl.SSLContext] = None,
        tls_hostname: Optional[str] = None,
        reconnect_time_wait: float = DEFAULT_RECONNECT_WAIT,
        stats_interval: Optional[float] = DEFAULT_STATS_INTERVAL,
        stream: Optional[str] = None,
        stream_config: Optional[Dict[str, Any]] = None,
        **nats_options: Any,
    ) -> None:
        super().__init__(
            nats_url,
            name,
            bridge_id,
            stats_interval,
            user,
            password,
            token,
            creds,
            tls,
            tls_hostname,
            reconnect_time_wait,
            nats_options,
        )
        self.prefix = _check_prefix(prefix)
        self._set_stream(stream, stream_config)
        self.queue_size = check_positive_int("queue_size", queue_size)
        self.queue_bytes = check_positive_int("queue_bytes", queue_bytes)
        self._receiver = _FrameReceiver(
            self,
            port,
            name,
            connect=False,
            connectWait=connectWait,
            hostname=host,
            max_frame_size=max_frame_size,
            authkey=authkey,
            ssl_context=ssl_context,
            tags=tags,
        )
        self._receiver.process = self._offer  # type: ignore[method-assign,assignment]
        if self._receiver.port in _local_transmitter_ports and _is_local(self._receiver.host):
            raise ValueError(
                "port %d is a NatsToHein bridge's transmitter in this process: listening to it "
                "would publish back to NATS what came from NATS" % port
            )
        self._pending: Deque[Frame] = collections.deque()
        self._in_bytes = 0  # written by the receiver thread only
        self._out_bytes = 0  # written by the loop thread only
        self._idle = False
        self._wake: Optional[asyncio.Event] = None
        if not block >= 0:
            raise ValueError("block must be >= 0 seconds")
        self.block = float(block)
        self._room = threading.Event()
        self._want_room = False
        self._hein_ready = threading.Event()
        self._overflowing = False
        self._refusing = False
        self._subjects: Dict[Optional[str], str] = {}
        self._stream_task: Optional[asyncio.Future[bool]] = None
        self._sequences: Dict[str, int] = {}
        self._counts.update(
            received=0, forwarded=0, dropped_full=0, dropped_nats=0, missed=0, hein_connections=0
        )
        self._start_thread()
        self._receiver.connect()

    def __str__(self) -> str:
        return "HeinToNats(%s:%d -> %s.*)" % (self._receiver.host, self._receiver.port, self.prefix)

    __repr__ = __str__

    @property
    def receiver(self) -> SocReceiver:
        """The bridge's receiver (read its ``stats()``, ``connected``...; do not close it)."""
        return self._receiver

    def wait_ready(self, timeout: Optional[float] = None) -> bool:
        """Wait until the bridge is connected to NATS and to the transmitter; True if so."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for event in (self._nats_ready, self._hein_ready):
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not event.wait(remaining):
                return False
        return True

    def stats(self) -> Dict[str, int]:
        """Counters (see the class docstring)."""
        counts = dict(self._counts)
        counts["dropped"] = counts["dropped_full"] + counts["dropped_nats"]
        counts["queued"] = len(self._pending)
        counts["queued_bytes"] = max(0, self._in_bytes - self._out_bytes)
        counts["hein_reconnects"] = max(0, counts.pop("hein_connections") - 1)
        counts["reconnects"] = counts["hein_reconnects"] + counts["nats_reconnects"]
        counts["connected"] = int(self.connected)
        return counts

    def close(self) -> None:
        """Stop: disconnect from the transmitter, publish what is queued (for at most a
        second), close the NATS connection and join the thread. Idempotent."""
        with self._close_lock:
            first = not self._closed
            self._closed = True
        if first:
            self._receiver.close()
            self._request_stop()
        self._join()

    # ------------------------------------------------------------ the receiver thread

    def _offer(self, frame: Frame, tag: Optional[str]) -> None:
        """``process`` of the receiver: queue the frame for the loop, or drop it."""
        counts = self._counts
        counts["received"] += 1
        pending = self._pending
        size = len(frame.payload)
        if (
            len(pending) >= self.queue_size
            or self._in_bytes - self._out_bytes + size > self.queue_bytes
        ) and not self._wait_for_room(size):
            counts["dropped_full"] += 1
            if not self._overflowing:
                self._overflowing = True
                logger.warning(
                    "%s: queue full (%d messages, %d bytes): dropping messages until NATS "
                    "takes them again",
                    self,
                    len(pending),
                    self._in_bytes - self._out_bytes,
                )
            return
        self._in_bytes += size
        pending.append(frame)
        if self._idle:
            self._idle = False
            loop, wake = self._loop, self._wake
            if loop is not None and wake is not None:
                try:
                    loop.call_soon_threadsafe(wake.set)
                except RuntimeError:  # the loop is closed: the bridge is closing
                    pass

    def _full(self, size: int) -> bool:
        return (
            len(self._pending) >= self.queue_size
            or self._in_bytes - self._out_bytes + size > self.queue_bytes
        )

    def _wait_for_room(self, size: int) -> bool:
        """The queue is full: while NATS is connected (the loop is publishing), wait at most
        ``block`` seconds for it to drain by half; True if the frame fits then."""
        if self.block <= 0 or not self.connected or self._closed:
            return False
        room = self._room
        room.clear()
        self._want_room = True
        try:
            if self._full(size):  # checked again after asking: the loop may have drained it
                room.wait(self.block)
        finally:
            self._want_room = False
        return not self._full(size)

    def _on_hein_connection(self) -> None:
        self._counts["hein_connections"] += 1
        receiver = self._receiver
        logger.info("%s: connected to the transmitter %s:%d", self, receiver.host, receiver.port)
        self._hein_ready.set()

    def _on_hein_missed(self, count: int) -> None:
        self._counts["missed"] += count
        logger.warning(
            "%s: missed %d messages of the transmitter while disconnected from it", self, count
        )

    # ---------------------------------------------------------------- the loop thread

    def _on_stop_request(self) -> None:
        super()._on_stop_request()
        if self._wake is not None:
            self._wake.set()

    async def _serve(self, nc: NatsClient) -> None:
        await self._ensure_stream(nc, [self.prefix + ".>"])
        self._nats_ready.set()
        await self._pump(nc, None)

    async def _finish(self, nc: NatsClient) -> None:
        if not nc.is_connected:
            return
        deadline = time.monotonic() + CLOSE_FLUSH
        try:
            if self._pending:
                await asyncio.wait_for(self._pump(nc, deadline), CLOSE_FLUSH)
            await nc.flush(1)
        except (Exception, asyncio.CancelledError) as error:
            logger.debug("%s: final flush: %r", self, error)

    async def _pump(self, nc: NatsClient, deadline: Optional[float]) -> None:
        """Publish queued frames until stopped (``deadline`` None) or until the queue is
        empty (closing)."""
        assert self._stop is not None
        stop = self._stop
        wake = self._wake = asyncio.Event()
        pending = self._pending
        counts = self._counts
        subjects = self._subjects
        sequences = self._sequences
        publish = nc.publish
        fast = self._publisher(nc) if _can_write_commands(nc) else None
        origin = self.bridge_id
        subject_of = self._subject_of
        while True:
            if deadline is None and stop.is_set():
                return  # closing: _finish publishes what is left, within CLOSE_FLUSH
            if not pending:
                if deadline is not None:
                    return
                self._idle = True
                if pending or stop.is_set():  # raced with the receiver thread, or stopping
                    self._idle = False
                    continue
                await wake.wait()
                wake.clear()
                continue
            for _ in range(_PUBLISH_BATCH):
                if not pending:
                    break
                frame = pending.popleft()
                payload = frame.payload
                self._out_bytes += len(payload)
                subject = subjects.get(frame.tag) or subject_of(frame.tag)
                number = sequences.get(subject, 0) + 1
                try:
                    if fast is not None:
                        await fast(subject, payload, frame.kind, frame.unpack, number)
                    else:
                        headers = {
                            HEADER_KIND: _KIND_NAMES[frame.kind],
                            HEADER_UNPACK: "1" if frame.unpack else "0",
                            HEADER_ORIGIN: "%s %d" % (origin, number),
                        }
                        await publish(subject, payload, headers=headers)
                except nats_errors.Error as error:
                    self._refused(error)
                    continue
                sequences[subject] = number
                counts["forwarded"] += 1
            if len(pending) <= self.queue_size // 2 and (
                self._in_bytes - self._out_bytes <= self.queue_bytes // 2 or not pending
            ):
                if self._want_room:
                    self._room.set()
                self._overflowing = False
            await asyncio.sleep(0)  # let nats-py write and read
            if deadline is not None and time.monotonic() > deadline:
                return

    def _publisher(self, nc: NatsClient) -> Callable[..., Awaitable[None]]:
        """A ``publish(subject, payload, kind, unpack, number)`` that writes the HPUB
        command itself (NATS client protocol) into nats-py's outgoing buffer, as nats-py's own
        ``publish`` does, with the same checks, and the headers block prepared once per kind
        and unpack flag: about 1 us a message instead of 8 (nats-py encodes headers anew for
        every message). Used when nats-py has the buffer this relies on (see
        :func:`_can_write_commands`); otherwise the pump uses ``nc.publish``."""
        blocks = {
            (kind, unpack): (
                "NATS/1.0\r\n%s: %s\r\n%s: %s\r\n%s: %s %%d\r\n\r\n"
                % (
                    HEADER_KIND,
                    name,
                    HEADER_UNPACK,
                    "1" if unpack else "0",
                    HEADER_ORIGIN,
                    self.bridge_id.replace("%", "%%"),
                )
            ).encode("ascii")
            for kind, name in _KIND_NAMES.items()
            for unpack in (False, True)
        }
        encoded: Dict[str, bytes] = {}
        stats = nc.stats

        async def publish(
            subject: str, payload: bytes, kind: bytes, unpack: bool, number: int
        ) -> None:
            if nc.is_closed:
                raise nats_errors.ConnectionClosedError
            if nc.is_draining_pubs:
                raise nats_errors.ConnectionDrainingError
            header = blocks[kind, unpack] % number
            size = len(header) + len(payload)
            if size > nc.max_payload:
                raise nats_errors.MaxPayloadError
            if not nc.is_connected and (
                nc._max_pending_size <= 0 or size + nc._pending_data_size > nc._max_pending_size
            ):
                raise nats_errors.OutboundBufferLimitError
            name = encoded.get(subject)
            if name is None:
                if len(encoded) >= _CACHE_MAX:
                    encoded.clear()
                name = encoded[subject] = subject.encode("utf-8")
            command = b"HPUB %s %d %d\r\n%s%s\r\n" % (name, len(header), size, header, payload)
            stats["out_msgs"] += 1
            stats["out_bytes"] += len(payload)
            nc._pending.append(command)
            nc._pending_data_size += len(command)
            if 0 < nc._max_pending_size < nc._pending_data_size:
                await nc._flush_pending(force_flush=True)
            elif nc._flush_queue is not None and nc._flush_queue.empty():
                await nc._flush_pending()

        return publish

    def _subject_of(self, tag: Optional[str]) -> str:
        subjects = self._subjects
        if len(subjects) >= _CACHE_MAX:
            subjects.clear()
            self._sequences.clear()
        subject = subjects[tag] = subject_for(self.prefix, tag)
        return subject

    def _refused(self, error: Exception) -> None:
        self._counts["dropped_nats"] += 1
        if not self._refusing:
            self._refusing = True
            if isinstance(error, nats_errors.MaxPayloadError):
                why = "larger than the server's max_payload"
            elif isinstance(error, nats_errors.OutboundBufferLimitError):
                why = "disconnected, and nats-py's buffer is full"
            else:
                why = "%s: %s" % (type(error).__name__, error)
            logger.warning("%s: NATS refused messages (%s): dropping them", self, why)

    async def _after_reconnect(self) -> None:
        self._refusing = False
        nc = self._nc
        if self.stream is not None and nc is not None:  # not in nats-py's callback: a task
            self._stream_task = asyncio.ensure_future(self._ensure_stream(nc, [self.prefix + ".>"]))


def _can_write_commands(nc: NatsClient) -> bool:
    """Whether this nats-py has the outgoing buffer that :meth:`HeinToNats._publisher` writes
    into (nats-py 2.x does)."""
    return all(
        hasattr(nc, name)
        for name in (
            "_pending",
            "_pending_data_size",
            "_max_pending_size",
            "_flush_queue",
            "_flush_pending",
            "stats",
            "max_payload",
            "is_draining_pubs",
        )
    ) and isinstance(getattr(nc, "_pending", None), list)


def _is_local(host: str) -> bool:
    return host in ("localhost", "::1", default_host()) or host.startswith("127.")


# ----------------------------------------------------------------------------- NATS -> hein


class NatsToHein(_Bridge):
    """Re-broadcasts NATS messages through a local :class:`~hein.SocTransmitter`.

    Subscribes to ``subjects`` (wildcards allowed: ``"hein.>"`` is everything a
    :class:`HeinToNats` with prefix ``hein`` publishes) and tells each message to the
    transmitter's receivers as the remote ``tell``/``tell_raw`` did: the payload bytes
    unchanged (so values keep their types), the tag from the subject's last token, the kind and
    unpack flag from the headers. Messages without the headers go out as raw messages.

    Messages stamped (``Hein-Origin``) with this bridge's ``bridge_id``, or with one of
    ``ignore_origins``, are dropped (counted as ``ignored``): give a :class:`HeinToNats` and a
    :class:`NatsToHein` of the same site the same ``bridge_id`` and the site does not hear its
    own messages back.

    Args:
        nats_url: a NATS server URL, a comma-separated list, or a list of them.
        subjects: the subjects to subscribe to (a str or a list).
        port: the transmitter's port (0: a free one; ``bridge.port`` tells which).
        nreceivermax: the most receivers at once.
        name: the NATS connection's name, and the thread's.
        host, allow_remote, authkey, ssl_context, max_queue_bytes, heartbeat, timeoutACK:
            keyword-only; for the transmitter (see :class:`~hein.SocTransmitter`).
        bridge_id, ignore_origins: keyword-only; see above.
        pending_msgs, pending_bytes: keyword-only; bounds of nats-py's queue for the
            subscriptions (past them nats-py drops messages: a slow consumer, counted).
        max_backlog: keyword-only; most messages waiting in the transmitter before new ones
            are dropped (counted).
        stream, stream_config: keyword-only; consume through JetStream from this stream
            (made for ``subjects`` with ``stream_config`` when it does not exist), instead of
            NATS core, from the moment a first receiver registers: each message is
            acknowledged once told to the transmitter while it has receivers; one that
            cannot be (no receiver: counted as ``held``; a full backlog) is left
            unacknowledged, and JetStream redelivers it after its ack wait (30 s).
        durable: keyword-only; with ``stream``, a durable consumer name: a bridge started
            again with the same name resumes after the last message it acknowledged.
        deliver: keyword-only; with ``stream``, where a new consumer starts: ``"all"`` (the
            whole stream: replay for a late subscriber), ``"new"``, ``"last"``, or
            ``"last_per_subject"`` (the last message of each tag).
        user, password, token, creds, tls, tls_hostname, reconnect_time_wait,
            stats_interval, nats_options: as for :class:`HeinToNats`.

    Counters, from :meth:`stats`: ``received`` (from NATS), ``forwarded`` (told to the
    transmitter), ``dropped`` (received but not told: ``dropped_slow``, nats-py's queue was
    full; ``dropped_full``, the transmitter's backlog was full or it was not running;
    ``dropped_bad``, unknown kind or empty raw message), ``lost`` (messages a bridge handed to
    NATS that never came: gaps in the numbers of its ``Hein-Origin``), ``ignored`` (our own
    messages), ``nats_reconnects``, ``nats_disconnects``, ``reconnects``, ``connected``.
    """

    _direction = "from-nats"

    def __init__(
        self,
        nats_url: Union[str, Sequence[str]] = DEFAULT_NATS_URL,
        subjects: Union[str, Iterable[str]] = ("hein.>",),
        port: int = 0,
        nreceivermax: int = 100,
        name: str = "nats-bridge",
        *,
        host: Union[str, Sequence[str], None] = None,
        allow_remote: bool = False,
        authkey: Optional[bytes] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        heartbeat: Optional[float] = 2.0,
        timeoutACK: Optional[float] = 1.0,
        bridge_id: Optional[str] = None,
        ignore_origins: Iterable[str] = (),
        pending_msgs: int = DEFAULT_PENDING_MSGS,
        pending_bytes: int = DEFAULT_PENDING_BYTES,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
        user: Optional[str] = None,
        password: Optional[str] = None,
        token: Optional[str] = None,
        creds: Optional[str] = None,
        tls: Optional[ssl.SSLContext] = None,
        tls_hostname: Optional[str] = None,
        reconnect_time_wait: float = DEFAULT_RECONNECT_WAIT,
        stats_interval: Optional[float] = DEFAULT_STATS_INTERVAL,
        stream: Optional[str] = None,
        stream_config: Optional[Dict[str, Any]] = None,
        durable: Optional[str] = None,
        deliver: str = "all",
        **nats_options: Any,
    ) -> None:
        super().__init__(
            nats_url,
            name,
            bridge_id,
            stats_interval,
            user,
            password,
            token,
            creds,
            tls,
            tls_hostname,
            reconnect_time_wait,
            nats_options,
        )
        self.subjects = _check_subjects(subjects)
        self._set_stream(stream, stream_config)
        if durable is not None:
            if self.stream is None:
                raise ValueError("durable needs a stream (JetStream)")
            if len(self.subjects) != 1 or not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", durable):
                raise ValueError("durable: a consumer name of [A-Za-z0-9_-], for one subject")
        try:
            self.deliver = DeliverPolicy(deliver)
        except ValueError:
            raise ValueError("deliver must be all, new, last or last_per_subject") from None
        if self.deliver not in _DELIVER_POLICIES:
            raise ValueError("deliver must be all, new, last or last_per_subject")
        self.durable = durable
        self.ignore_origins = frozenset([self.bridge_id, *ignore_origins])
        self.pending_msgs = check_positive_int("pending_msgs", pending_msgs)
        self.pending_bytes = check_positive_int("pending_bytes", pending_bytes)
        self.max_backlog = check_positive_int("max_backlog", max_backlog)
        self._counts.update(
            received=0,
            forwarded=0,
            dropped_slow=0,
            dropped_full=0,
            dropped_bad=0,
            lost=0,
            ignored=0,
            held=0,
        )
        self._tags: Dict[str, Optional[str]] = {}
        self._last_seq: Dict[Tuple[str, str], int] = {}
        self._dropping = False
        self._have_receiver: Optional[asyncio.Event] = None
        self.transmitter = SocTransmitter(
            port,
            nreceivermax,
            start=False,
            timeoutACK=timeoutACK,
            host=host,
            allow_remote=allow_remote,
            max_queue_bytes=max_queue_bytes,
            heartbeat=heartbeat,
            authkey=authkey,
            ssl_context=ssl_context,
        )
        self.transmitter._newconnection = self._hello  # type: ignore[method-assign]
        self.transmitter._dropped = self._goodbye  # type: ignore[method-assign]
        self.transmitter.start()
        self._port = self.transmitter.port
        _local_transmitter_ports.add(self._port)
        try:
            self._start_thread()
        except BaseException:
            self.transmitter.close()
            _local_transmitter_ports.discard(self._port)
            raise

    def __str__(self) -> str:
        return "NatsToHein(%s -> port %d)" % (",".join(self.subjects), self._port)

    __repr__ = __str__

    @property
    def port(self) -> int:
        """The transmitter's port."""
        return self._port

    def wait_ready(self, timeout: Optional[float] = None) -> bool:
        """Wait until the bridge is connected to NATS and its subscriptions are in place."""
        return self._nats_ready.wait(timeout)

    def stats(self) -> Dict[str, int]:
        """Counters (see the class docstring)."""
        counts = dict(self._counts)
        counts["dropped"] = counts["dropped_slow"] + counts["dropped_full"] + counts["dropped_bad"]
        counts["reconnects"] = counts["nats_reconnects"]
        counts["connected"] = int(self.connected)
        counts["receivers"] = self.transmitter.nreceivers
        return counts

    def close(self) -> None:
        """Stop: close the NATS connection, then the transmitter (its receivers are told to
        go); join the threads. Idempotent."""
        with self._close_lock:
            first = not self._closed
            self._closed = True
        if first:
            self._request_stop()
        self._join()
        if first:
            self.transmitter.close()
            _local_transmitter_ports.discard(self._port)

    # ---------------------------------------------------------------------- callbacks

    def _hello(self, name: str) -> None:
        logger.info("%s: receiver %r registered", self, name)
        loop, event = self._loop, self._have_receiver
        if event is not None and loop is not None:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop is closed
                pass

    def _goodbye(self, name: str) -> None:
        logger.info("%s: receiver %r left", self, name)

    def _on_slow_consumer(self) -> None:
        self._counts["dropped_slow"] += 1
        if not self._dropping:
            self._dropping = True
            logger.warning(
                "%s: slow consumer: nats-py's queue is full (%d messages, %d bytes): dropping",
                self,
                self.pending_msgs,
                self.pending_bytes,
            )

    # ---------------------------------------------------------------- the loop thread

    async def _serve(self, nc: NatsClient) -> None:
        assert self._stop is not None
        if self.stream is not None:
            await self._serve_jetstream(nc)
            return
        for subject in self.subjects:
            await nc.subscribe(
                subject,
                cb=self._on_message,
                pending_msgs_limit=self.pending_msgs,
                pending_bytes_limit=self.pending_bytes,
            )
        try:
            await nc.flush()
        except nats_errors.Error as error:  # reconnecting: nats-py subscribes again then
            logger.debug("%s: flush after subscribing: %r", self, error)
        self._nats_ready.set()
        logger.info("%s: subscribed to %s", self, ", ".join(self.subjects))
        await self._stop.wait()

    async def _serve_jetstream(self, nc: NatsClient) -> None:
        """Subscribe through JetStream (retrying until the stream and consumer can be had)."""
        assert self._stop is not None
        stop = self._stop
        # acknowledge only what reaches a receiver: consume once one is registered
        have_receiver = self._have_receiver = asyncio.Event()
        if self.transmitter.nreceivers:
            have_receiver.set()
        waiting = asyncio.ensure_future(have_receiver.wait())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        stopping.cancel()
        while not stop.is_set():
            if await self._ensure_stream(nc, self.subjects):
                try:
                    js = nc.jetstream()
                    for subject in self.subjects:
                        await js.subscribe(
                            subject,
                            cb=self._on_jetstream_message,
                            durable=self.durable,
                            stream=self.stream,
                            manual_ack=True,
                            deliver_policy=self.deliver,
                            pending_msgs_limit=self.pending_msgs,
                            pending_bytes_limit=self.pending_bytes,
                        )
                    break
                except nats_errors.Error as error:
                    await self._on_error(error)
            try:
                await asyncio.wait_for(stop.wait(), max(1.0, self._retry_wait()))
            except asyncio.TimeoutError:
                pass
        else:
            return
        self._nats_ready.set()
        logger.info(
            "%s: consuming %s from the JetStream stream %s%s",
            self,
            ", ".join(self.subjects),
            self.stream,
            " as %s" % self.durable if self.durable else "",
        )
        await stop.wait()

    def _retry_wait(self) -> float:
        return float(self._nats_options["reconnect_time_wait"])

    async def _on_jetstream_message(self, msg: Msg) -> None:
        if not self.transmitter.nreceivers:  # nobody to tell: JetStream redelivers it later
            self._counts["held"] += 1
            return
        if self._handle(msg, False):
            try:
                await msg.ack()
            except nats_errors.Error as error:
                logger.debug("%s: ack: %r", self, error)

    async def _on_message(self, msg: Msg) -> None:
        self._handle(msg, True)

    def _handle(self, msg: Msg, numbered: bool) -> bool:
        """Tell one NATS message to the transmitter; False when it could not be told for now
        (the transmitter's backlog is full, or it is not running), True otherwise (told, ours,
        or not a message hein can tell)."""
        counts = self._counts
        counts["received"] += 1
        subject = msg.subject
        headers = msg.headers
        kind = KIND_RAW
        unpack = False
        if headers:
            stamp = headers.get(HEADER_ORIGIN)
            if stamp is not None:
                origin, _, number = stamp.partition(" ")
                if origin in self.ignore_origins:
                    counts["ignored"] += 1
                    return True
                if number and numbered:
                    self._check_sequence(origin, subject, number)
            name = headers.get(HEADER_KIND)
            if name == "json":
                kind = KIND_JSON
                unpack = headers.get(HEADER_UNPACK, "1") != "0"
            elif name is not None and name != "raw":
                counts["dropped_bad"] += 1
                logger.debug("%s: unknown %s %r on %s", self, HEADER_KIND, name, subject)
                return True
        tags = self._tags
        if subject in tags:
            tag = tags[subject]
        else:
            if len(tags) >= _CACHE_MAX:
                tags.clear()
            tag = tags[subject] = tag_from_subject(subject)
        transmitter = self.transmitter
        if len(transmitter._inbox) >= self.max_backlog or not transmitter.running:
            counts["dropped_full"] += 1
            if not self._dropping:
                self._dropping = True
                logger.warning("%s: the transmitter is not keeping up: dropping messages", self)
            return False
        self._dropping = False
        payload = msg.data
        try:
            if kind == KIND_RAW:
                if not transmitter.tell_raw(payload, tag):
                    counts["dropped_bad"] += 1
                    return True
            else:
                transmitter._tell_payload(kind, tag, unpack, payload)
        except ValueError as error:  # larger than max_queue_bytes
            counts["dropped_full"] += 1
            logger.warning("%s: message on %s dropped: %s", self, subject, error)
            return True
        counts["forwarded"] += 1
        return True

    def _check_sequence(self, origin: str, subject: str, text: str) -> None:
        try:
            number = int(text)
        except ValueError:
            return
        key = (origin, subject)
        last_seq = self._last_seq
        last = last_seq.get(key)
        if last is not None and number > last + 1:
            gap = number - last - 1
            self._counts["lost"] += gap
            logger.warning(
                "%s: %d messages lost in NATS on %s (from %s)", self, gap, subject, origin
            )
        elif last is None and len(last_seq) >= _SEQ_KEYS_MAX:
            last_seq.clear()
        last_seq[key] = number
