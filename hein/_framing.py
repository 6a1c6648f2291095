"""Frames of the hein wire protocol: building them, and decoding a byte stream into them.

Sans-I/O: nothing here touches a socket or a thread. A frame is::

    KIND(7 bytes)  TAG  b":"  UNPACK  b":"  ESCAPED_PAYLOAD  b"\\xac\\x96\\xac\\x96"

Every ``b"\\xac\\x96"`` inside the payload travels as ``b"\\xac\\x96\\xee"``, so the terminator can
never occur inside an escaped payload. The decoder keeps one ``bytearray`` and searches for the
terminator only in bytes it has not searched before (plus the three bytes before them, which may
hold the start of a terminator), so its cost is linear in the bytes received whatever the chunk
boundaries. The buffered, still incomplete frame is bounded by ``max_frame_size``.
"""

import re
from typing import Dict, FrozenSet, List, NamedTuple, Optional, Tuple, Union

from .errors import FrameTooLarge, ProtocolError

__all__ = [
    "ACK",
    "KIND_RAW",
    "KIND_JSON",
    "KIND_PING",
    "KIND_DIE",
    "KIND_COMPACT",
    "KINDS",
    "TERMINATOR",
    "TAG_MAX_LENGTH",
    "DEFAULT_MAX_FRAME_SIZE",
    "Frame",
    "FrameDecoder",
    "clean_tag",
    "encode_frame",
    "escape_payload",
    "unescape_payload",
]

#: The acknowledgement byte, sent by the transmitter in the handshake and by receivers after reads.
ACK = b"\x06"
KIND_RAW = b"__raw__"
KIND_JSON = b"__jsn__"
KIND_PING = b"__png__"
KIND_DIE = b"__die__"
#: A ``tell`` payload in the compact encoding (hein 1, for receivers that ask for it).
KIND_COMPACT = b"__jsc__"
#: A length-prefixed frame (hein 1, for receivers that ask for them): see :func:`sized_header`.
KIND_SIZED = b"__siz__"
#: Payloads larger than this go in sized frames to receivers that accept them.
SIZED_THRESHOLD = 64 * 1024
#: The frame kinds of the legacy protocol.
KINDS = frozenset((KIND_RAW, KIND_JSON, KIND_PING, KIND_DIE))
# The kinds a sized frame may carry.
_SIZED_KINDS = KINDS | {KIND_COMPACT}
KIND_LENGTH = 7

_END = b"\xac\x96"
_ESCAPED_END = b"\xac\x96\xee"
#: Ends every frame.
TERMINATOR = _END + _END

_SIZED_AFTER_TERMINATOR = TERMINATOR + KIND_SIZED

#: Longest tag, in characters (longer tags are cut).
TAG_MAX_LENGTH = 15
#: Default bound on one frame's size (header and escaped payload), in bytes.
DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024
# KIND + TAG + ":" + UNPACK + ":"; the longest header a valid frame can have.
_MAX_HEADER = KIND_LENGTH + TAG_MAX_LENGTH + 3

_NOT_TAG_CHAR = re.compile(r"[^A-Za-z0-9._\- ]")


class Frame(NamedTuple):
    """One decoded frame.

    Attributes:
        kind: one of the 7-byte kinds (``KIND_RAW``, ``KIND_JSON``, ``KIND_PING``, ``KIND_DIE``).
        tag: the tag, or None for an untagged frame.
        unpack: the unpack flag.
        payload: the unescaped payload bytes.
    """

    kind: bytes
    tag: Optional[str]
    unpack: bool
    payload: bytes


def clean_tag(tag: Union[str, bytes, None]) -> str:
    """Return the tag as it travels: characters of ``[A-Za-z0-9._- ]`` only, at most 15 of them.

    ``None`` and the empty string mean "no tag" and give ``""``. Bytes are read as Latin-1.

    Raises:
        TypeError: the tag is neither str, bytes nor None.
    """
    if tag is None:
        return ""
    if isinstance(tag, (bytes, bytearray)):
        tag = bytes(tag).decode("latin-1")
    elif not isinstance(tag, str):
        raise TypeError("tag must be a str, bytes or None, not %s" % type(tag).__name__)
    return _NOT_TAG_CHAR.sub("", tag)[:TAG_MAX_LENGTH]


def escape_payload(payload: bytes) -> bytes:
    """Escape every terminator half inside ``payload``."""
    if payload.find(_END) >= 0:  # (not "in": bytes.__contains__ tries an int first, dearly)
        return payload.replace(_END, _ESCAPED_END)
    return payload


def unescape_payload(payload: bytes) -> bytes:
    """Undo :func:`escape_payload`."""
    if payload.find(_END) >= 0:  # (not "in": bytes.__contains__ tries an int first, dearly)
        return payload.replace(_ESCAPED_END, _END)
    return payload


def frame_header(kind: bytes, tag: str, unpack: bool) -> bytes:
    """Return the header of a frame; ``tag`` must already be clean (see :func:`clean_tag`)."""
    return b"%s%s:%s:" % (kind, tag.encode("ascii"), b"1" if unpack else b"0")


def encode_frame(kind: bytes, tag: Union[str, bytes, None], unpack: bool, payload: bytes) -> bytes:
    """Return one complete frame, ready to be written to a socket.

    Args:
        kind: a 7-byte frame kind (``KIND_RAW``, ``KIND_JSON``, ...).
        tag: the tag; cleaned with :func:`clean_tag`.
        unpack: the unpack flag.
        payload: the payload bytes, unescaped.

    Raises:
        ValueError: ``kind`` is not 7 bytes long.
    """
    if len(kind) != KIND_LENGTH:
        raise ValueError("a frame kind is %d bytes long, got %r" % (KIND_LENGTH, kind))
    return frame_header(kind, clean_tag(tag), unpack) + escape_payload(payload) + TERMINATOR


def parse_frame(data: bytes, known_kinds: FrozenSet[bytes] = KINDS, escaped: bool = True) -> Frame:
    """Parse one frame without its terminator (``escaped=False``: the inner frame of a sized
    frame, whose payload travels as it is).

    Raises:
        ProtocolError: the frame is malformed or of an unknown kind.
    """
    kind = data[:KIND_LENGTH]
    if kind not in known_kinds:
        raise ProtocolError("unknown frame kind %r" % kind[:KIND_LENGTH])
    colon = data.find(b":", KIND_LENGTH, _MAX_HEADER)
    if colon < 0 or data[colon + 2 : colon + 3] != b":":
        raise ProtocolError("malformed frame header %r" % data[:_MAX_HEADER])
    flag = data[colon + 1 : colon + 2]
    if flag == b"1":
        unpack = True
    elif flag == b"0":
        unpack = False
    else:
        raise ProtocolError("bad unpack flag %r" % flag)
    tag = data[KIND_LENGTH:colon]
    try:
        text = tag.decode("ascii") if tag else None
    except UnicodeDecodeError:
        raise ProtocolError("non-ASCII tag %r" % tag) from None
    payload = data[colon + 3 :]
    return Frame(kind, text, unpack, unescape_payload(payload) if escaped else payload)


def sized_header(kind: bytes, tag: str, unpack: bool, payload_size: int) -> bytes:
    """What goes before the (unescaped) payload in a sized frame (PROTOCOL.rst, extension 4).

    A sized frame is ``b"__siz__:" LENGTH b":"`` then LENGTH bytes: an ordinary frame header
    and the payload as it is; no escaping, no terminator. Only receivers that asked for them
    get sized frames.
    """
    inner = frame_header(kind, tag, unpack)
    return b"%s:%d:%s" % (KIND_SIZED, len(inner) + payload_size, inner)


class HeaderCache:
    """Parses frames like :func:`parse_frame`, remembering the headers it has seen.

    Streams repeat a handful of headers (kind, tag, flag), so parsing each only once makes the
    per-frame work two slices and a dict lookup. The cache is bounded.
    """

    __slots__ = ("_headers", "known_kinds")

    MAX_HEADERS = 1024

    def __init__(self, known_kinds: FrozenSet[bytes] = KINDS) -> None:
        self.known_kinds = known_kinds
        self._headers: Dict[bytes, Tuple[bytes, Optional[str], bool]] = {}

    def header(self, data: bytes) -> Optional[Tuple[int, Tuple[bytes, Optional[str], bool]]]:
        """Where the header of the frame ``data`` ends, and its (kind, tag, unpack); None if
        that header is not valid."""
        end = data.find(b":", KIND_LENGTH, _MAX_HEADER) + 3
        if end < 3:
            return None
        fields = self._headers.get(data[:end])
        if fields is None:
            try:
                frame = parse_frame(data[:end], self.known_kinds)
            except ProtocolError:
                return None
            fields = (frame.kind, frame.tag, frame.unpack)
            if len(self._headers) >= self.MAX_HEADERS:
                self._headers.clear()
            self._headers[data[:end]] = fields
        return end, fields

    def parse(self, data: bytes) -> Frame:
        """Parse one frame (without terminator); raises ProtocolError like :func:`parse_frame`."""
        found = self.header(data)
        if found is None:
            return parse_frame(data, self.known_kinds)  # raises the ProtocolError that says why
        end, (kind, tag, unpack) = found
        payload = data[end:]
        if payload.find(_END) >= 0:
            payload = payload.replace(_ESCAPED_END, _END)
        return Frame(kind, tag, unpack, payload)


class FrameDecoder:
    """Incremental decoder: feed it bytes in chunks of any size, take complete frames out.

    Usage::

        decoder = FrameDecoder()
        for chunk in chunks:
            for raw in decoder.feed(chunk):
                frame = raw if type(raw) is Frame else parse_frame(raw)  # may raise

    :meth:`feed` returns the complete frames in order: terminated frames as bytes (unparsed,
    without terminator), sized frames (``__siz__``) already parsed, as :class:`Frame`. It keeps
    the incomplete tail, and raises :class:`FrameTooLarge` (keeping nothing) once a frame
    outgrows ``max_frame_size``; the stream cannot be resynchronised after that.

    While a sized frame is being read, :meth:`sized_target` gives the memory its remaining bytes
    go to, so that a reader can ``recv_into`` it directly, then call :meth:`sized_filled`.
    """

    __slots__ = ("_buffer", "_scanned", "_sized", "_sized_fill", "max_frame_size")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if max_frame_size < _MAX_HEADER:
            raise ValueError("max_frame_size must be at least %d bytes" % _MAX_HEADER)
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        # bytes of _buffer already searched for a terminator (none was found in them)
        self._scanned = 0
        self._sized: Optional[bytearray] = None  # the sized frame being read
        self._sized_fill = 0

    @property
    def buffered(self) -> int:
        """Bytes held for a frame that is not complete yet."""
        return len(self._buffer) + self._sized_fill

    def sized_target(self) -> Optional[memoryview]:
        """The unfilled part of the sized frame being read, or None."""
        if self._sized is None:
            return None
        return memoryview(self._sized)[self._sized_fill :]

    def sized_filled(self, count: int) -> List[Union[bytes, Frame]]:
        """Say that ``count`` bytes were written into :meth:`sized_target`."""
        self._sized_fill += count
        out: List[Union[bytes, Frame]] = []
        if self._sized is not None and self._sized_fill == len(self._sized):
            out.append(self._finish_sized())
        return out

    def _finish_sized(self) -> Frame:
        inner = self._sized
        assert inner is not None
        self._sized = None
        self._sized_fill = 0
        end = inner.find(b":", KIND_LENGTH, _MAX_HEADER) + 3
        if end < 3:
            raise ProtocolError("malformed sized frame header %r" % bytes(inner[:_MAX_HEADER]))
        frame = parse_frame(bytes(inner[:end]), _SIZED_KINDS, escaped=False)
        with memoryview(inner) as view:
            payload = bytes(view[end:])
        return Frame(frame.kind, frame.tag, frame.unpack, payload)

    def feed(self, data: Union[bytes, bytearray, memoryview]) -> List[Union[bytes, Frame]]:
        """Add ``data`` to the stream and return every frame it completes, in order.

        Raises:
            FrameTooLarge: a frame is longer than ``max_frame_size``.
            ProtocolError: a sized frame's header is malformed.
        """
        out: List[Union[bytes, Frame]] = []
        for item in self.feed_blocks(data):
            if type(item) is bytes:
                out.extend(item.split(TERMINATOR))
            else:
                out.append(item)
        return out

    def feed_blocks(self, data: Union[bytes, bytearray, memoryview]) -> List[Union[bytes, Frame]]:
        """Like :meth:`feed`, but consecutive terminated frames come as one ``bytes`` block:
        the frames joined by the terminator (``block.split(TERMINATOR)`` gives them), so that
        a reader can work on a whole run of frames with a few calls."""
        out: List[Union[bytes, Frame]] = []
        if self._sized is not None:
            target = self._sized
            take = min(len(data), len(target) - self._sized_fill)
            target[self._sized_fill : self._sized_fill + take] = data[:take]
            self._sized_fill += take
            if self._sized_fill < len(target):
                return out
            out.append(self._finish_sized())
            data = data[take:]
            if not data:
                return out
        buffer = self._buffer
        start = self._scanned - 3 if self._scanned > 3 else 0
        buffer += data
        self._process(out, start)
        return out

    def _process(self, out: List[Union[bytes, Frame]], start: int) -> None:
        limit = self.max_frame_size
        while True:
            buffer = self._buffer
            if buffer[:1] == b"_" and (
                buffer[:KIND_LENGTH] == KIND_SIZED or KIND_SIZED.startswith(buffer)
            ):
                if not self._start_sized(out):
                    return
                if self._sized is not None:
                    return
                start = 0
                continue
            end = buffer.find(TERMINATOR, start)
            if end < 0:
                self._scanned = len(buffer)
                if len(buffer) > limit + 4:
                    self.reset()
                    raise FrameTooLarge("frame larger than the limit of %d bytes" % limit)
                return
            sized_at = buffer.find(_SIZED_AFTER_TERMINATOR, end)
            stop = sized_at if sized_at >= 0 else buffer.rfind(TERMINATOR)
            if stop > 1024 * 1024:  # few, large frames: copy each once
                frames: List[bytes] = []
                position = 0
                with memoryview(buffer) as view:
                    while position <= stop:
                        frames.append(bytes(view[position:end]))
                        position = end + 4
                        end = buffer.find(TERMINATOR, position, stop + 4)
                        if end < 0:
                            break
            else:
                frames = [bytes(buffer[:stop])]  # one block
            del buffer[: stop + 4]
            for frame in frames:
                if len(frame) > limit:
                    for part in frame.split(TERMINATOR):
                        if len(part) > limit:
                            self.reset()
                            raise FrameTooLarge(
                                "frame of %d bytes over the limit of %d" % (len(part), limit)
                            )
            out.extend(frames)
            self._scanned = 0
            start = 0
            if sized_at < 0:
                self._scanned = len(buffer)
                if len(buffer) > limit + 4:
                    self.reset()
                    raise FrameTooLarge("frame larger than the limit of %d bytes" % limit)
                return

    def _start_sized(self, out: List[Union[bytes, Frame]]) -> bool:
        """The buffer starts with (the start of) a sized frame. False: wait for more bytes."""
        buffer = self._buffer
        colon = buffer.find(b":", KIND_LENGTH + 1, KIND_LENGTH + 22)
        if colon < 0:
            if len(buffer) > KIND_LENGTH + 21:
                self.reset()
                raise ProtocolError("malformed sized frame header %r" % bytes(buffer[:30]))
            return False
        if (
            buffer[KIND_LENGTH : KIND_LENGTH + 1] != b":"
            or not buffer[KIND_LENGTH + 1 : colon].isdigit()
        ):
            self.reset()
            raise ProtocolError("malformed sized frame header %r" % bytes(buffer[:30]))
        length = int(buffer[KIND_LENGTH + 1 : colon])
        if length > self.max_frame_size:
            self.reset()
            raise FrameTooLarge("sized frame of %d bytes over the limit" % length)
        if length < KIND_LENGTH + 3:
            self.reset()
            raise ProtocolError("sized frame of %d bytes is too short" % length)
        begin = colon + 1
        available = len(buffer) - begin
        if available >= length:
            self._sized = bytearray(buffer[begin : begin + length])
            self._sized_fill = length
            del buffer[: begin + length]
            out.append(self._finish_sized())
            return True
        target = bytearray(length)
        target[:available] = buffer[begin:]
        self._sized = target
        self._sized_fill = available
        buffer.clear()
        self._scanned = 0
        return True

    def reset(self) -> None:
        """Forget every buffered byte."""
        self._buffer = bytearray()
        self._scanned = 0
        self._sized = None
        self._sized_fill = 0
