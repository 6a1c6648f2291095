"""The hein 1 extensions of the handshake, as pure functions (no sockets, no threads).

hein 0.2.3 receivers ignore the payload of ``__png__`` frames, so a hein 1 transmitter
announces itself with one ping right after the registration ACK, whose payload is::

    hein/1 heartbeat=SECONDS

(``key=value`` fields separated by spaces; unknown keys are ignored, so later versions can add
fields). A hein 1 receiver that reads it knows that the transmitter pings idle receivers every
``heartbeat`` seconds, and so that a transmitter silent for much longer than that is gone. A
receiver never sends anything but ACKs, except its answer to an authentication challenge
(extension 2, below), which only a transmitter made with an ``authkey`` sends.
"""

import hashlib
import hmac
import os
from typing import Any, Dict, List, Optional, Tuple

from ._framing import ACK, KIND_PING, TERMINATOR, clean_tag, encode_frame
from ._serializer import json_dumps, json_loads
from .errors import ProtocolError

__all__ = [
    "HELLO_PREFIX",
    "check_authkey",
    "KIND_AUTH",
    "KIND_CONTROL",
    "KIND_SEQUENCE",
    "ReceiverBytes",
    "control_frame",
    "parse_control",
    "parse_sequence",
    "sequence_frame",
    "answer_frame",
    "auth_digest",
    "challenge_frame",
    "digests_match",
    "hello_frame",
    "hex_field",
    "new_nonce",
    "parse_hello",
    "proof_frame",
    "silence_limit",
]

#: Start of the payload of the announcing ping.
HELLO_PREFIX = b"hein/"
#: Protocol extension version this module speaks.
VERSION = 1


def hello_frame(heartbeat: Optional[float]) -> bytes:
    """The ping frame a transmitter sends after registering a receiver."""
    fields = [b"hein/%d" % VERSION]
    if heartbeat is not None:
        fields.append(b"heartbeat=%s" % repr(float(heartbeat)).encode("ascii"))
    return encode_frame(KIND_PING, None, True, b" ".join(fields))


def parse_hello(payload: bytes) -> Optional[Dict[str, str]]:
    """The fields of an announcing ping's payload, or None for any other ping.

    ``{"version": "1", "heartbeat": "2.0"}`` for ``b"hein/1 heartbeat=2.0"``; malformed
    fields are left out.
    """
    if not payload.startswith(HELLO_PREFIX) or len(payload) > 1024:
        return None
    try:
        text = payload.decode("ascii")
    except UnicodeDecodeError:
        return None
    words = text.split(" ")
    fields = {"version": words[0][len("hein/") :]}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if sep and key and key not in fields:
            fields[key] = value
    return fields


def silence_limit(fields: Dict[str, str]) -> Optional[float]:
    """Seconds of silence after which a receiver takes the transmitter for gone, or None.

    Twice the announced heartbeat, plus a second for scheduling delays.
    """
    try:
        heartbeat = float(fields["heartbeat"])
    except (KeyError, ValueError):
        return None
    if not 0 < heartbeat < 86400:
        return None
    return 2 * heartbeat + 1.0


# ------------------------------------------------------------------ extension 2: authentication
#
# A transmitter made with an ``authkey`` answers a receiver's name with a challenge instead of
# the registration ACK (a 0.2.3 receiver, expecting the ACK, gives up: it is refused)::
#
#     b"__png__:1:hein/1 challenge=HEX" TERMINATOR              (transmitter -> receiver)
#     b"__aut__:1:hein/1 response=HEX challenge=HEX" TERMINATOR (receiver -> transmitter)
#     b"__png__:1:hein/1 response=HEX" TERMINATOR, then ACK     (transmitter -> receiver)
#
# Each response is HMAC-SHA256(authkey, ROLE + challenge + name), ROLE being b"receiver" for
# the receiver's answer and b"transmitter" for the transmitter's, so that neither side can
# replay the other's answer. The key never travels; digests are compared in constant time.

#: Kind of the one frame a receiver ever sends (its answer to a challenge).
KIND_AUTH = b"__aut__"
#: Random bytes in a challenge.
NONCE_SIZE = 32
#: Largest authentication frame accepted, in bytes.
MAX_AUTH_FRAME = 512


def check_authkey(authkey: Any) -> Optional[bytes]:
    """Validate an ``authkey`` argument: None, or non-empty bytes.

    Raises:
        TypeError: not bytes. ValueError: empty.
    """
    if authkey is None:
        return None
    if not isinstance(authkey, (bytes, bytearray)):
        raise TypeError("authkey must be bytes, not %s" % type(authkey).__name__)
    if not authkey:
        raise ValueError("authkey must not be empty")
    return bytes(authkey)


def new_nonce() -> bytes:
    """A fresh random challenge."""
    return os.urandom(NONCE_SIZE)


def auth_digest(authkey: bytes, role: bytes, nonce: bytes, name: bytes) -> bytes:
    """HMAC-SHA256 of the role, the challenge and the receiver's name under ``authkey``."""
    return hmac.new(authkey, role + nonce + name, hashlib.sha256).digest()


def digests_match(expected: bytes, received: bytes) -> bool:
    """Compare two digests in constant time."""
    return hmac.compare_digest(expected, received)


def challenge_frame(nonce: bytes) -> bytes:
    """The transmitter's challenge (sent instead of the registration ACK)."""
    return encode_frame(KIND_PING, None, True, b"hein/1 challenge=" + nonce.hex().encode())


def answer_frame(response: bytes, nonce: bytes) -> bytes:
    """The receiver's answer: its response and its own challenge."""
    payload = b"hein/1 response=%s challenge=%s" % (response.hex().encode(), nonce.hex().encode())
    return encode_frame(KIND_AUTH, None, True, payload)


def proof_frame(response: bytes) -> bytes:
    """The transmitter's response to the receiver's challenge."""
    return encode_frame(KIND_PING, None, True, b"hein/1 response=" + response.hex().encode())


def hex_field(fields: Optional[Dict[str, str]], key: str, size: int) -> Optional[bytes]:
    """The bytes of a hexadecimal field of ``size`` bytes, or None if absent or malformed."""
    if fields is None:
        return None
    value = fields.get(key, "")
    if len(value) != 2 * size:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


# ------------------------------------------- extension 3: subscriptions and sequence markers
#
# Once a receiver has read the announcing ping, it knows the transmitter reads more than ACKs
# and may send control frames among its ACKs (never to a 0.2.3 transmitter, which never
# announces itself)::
#
#     b"__ctl__:1:" EXTENDED_JSON({"v": 1, "tags": [PREFIX, ...] or None, "seq": True}) TERMINATOR
#
# ``tags`` are tag prefixes (None: everything); the transmitter then sends only frames whose tag
# starts with one of them (an untagged frame has the tag ""), then a marker::
#
#     b"__seq__:1:hein/1 epoch=HEX group=HEX seq=N" TERMINATOR
#
# saying that the next message it sends is number N of the messages this transmitter (epoch)
# told that match this subscription (group). A receiver counts the messages it gets after a
# marker; a later marker of the same epoch and group whose N is ahead of that count tells how
# many it missed.

#: Kind of a receiver's control frame (subscription).
KIND_CONTROL = b"__ctl__"
#: Kind of the transmitter's sequence marker.
KIND_SEQUENCE = b"__seq__"
#: Largest control frame a transmitter accepts, in bytes.
MAX_CONTROL_FRAME = 64 * 1024
#: Most prefixes in one subscription.
MAX_PREFIXES = 1024


def control_frame(prefixes: Optional[Tuple[str, ...]], compact: bool = True) -> bytes:
    """A receiver's control frame carrying its subscription (None: every tag), and whether it
    reads the compact encoding (extension 5)."""
    message = {
        "v": VERSION,
        "tags": None if prefixes is None else list(prefixes),
        "seq": True,
        "sized": True,
        "compact": compact,
    }
    return encode_frame(KIND_CONTROL, None, True, json_dumps(message))


def parse_control(payload: bytes) -> Tuple[Optional[Tuple[bytes, ...]], bool, bool]:
    """The subscription of a control frame's payload, as byte prefixes (None: every tag),
    whether the receiver reads sized frames, and whether it reads the compact encoding.

    Raises:
        ProtocolError: the payload is not a valid control message.
    """
    message = json_loads(payload)
    if not isinstance(message, dict):
        raise ProtocolError("control message is not a dict")
    tags = message.get("tags")
    sized = message.get("sized") is True
    compact = message.get("compact") is True
    if tags is None:
        return None, sized, compact
    if not isinstance(tags, list) or len(tags) > MAX_PREFIXES:
        raise ProtocolError("bad subscription")
    prefixes = []
    for tag in tags:
        if not isinstance(tag, str) or clean_tag(tag) != tag:
            raise ProtocolError("bad tag prefix %r" % (tag,))
        prefixes.append(tag.encode("ascii"))
    return tuple(sorted(set(prefixes))), sized, compact


def sequence_frame(epoch: str, group: str, number: int) -> bytes:
    """The transmitter's marker: the next message is number ``number`` of (epoch, group)."""
    payload = "hein/%d epoch=%s group=%s seq=%d" % (VERSION, epoch, group, number)
    return encode_frame(KIND_SEQUENCE, None, True, payload.encode("ascii"))


def parse_sequence(payload: bytes) -> Optional[Tuple[str, str, int]]:
    """(epoch, group, number) of a marker's payload, or None when malformed."""
    fields = parse_hello(payload)
    if fields is None:
        return None
    try:
        number = int(fields["seq"])
        return fields["epoch"], fields["group"], number
    except (KeyError, ValueError):
        return None


class ReceiverBytes:
    """Splits what a receiver sends after registration into ACKs and control frames (sans-I/O).

    :meth:`feed` returns ``(acks, frames)``: the number of ACK bytes and the complete control
    frames (without terminator). Raises :class:`ProtocolError` for any byte that is neither an
    ACK nor part of a frame, or a frame over MAX_CONTROL_FRAME.
    """

    __slots__ = ("_frame",)

    def __init__(self) -> None:
        self._frame: Optional[bytearray] = None  # a control frame being read

    def feed(self, data: bytes) -> Tuple[int, List[bytes]]:
        acks = 0
        frames: List[bytes] = []
        position = 0
        size = len(data)
        while position < size:
            if self._frame is None:
                rest = data[position:]
                stripped = rest.lstrip(ACK)
                acks += len(rest) - len(stripped)
                position += len(rest) - len(stripped)
                if position >= size:
                    break
                if data[position : position + 1] != b"_":
                    raise ProtocolError(
                        "%r is neither an ACK nor a control frame" % data[position : position + 8]
                    )
                self._frame = bytearray()
            frame = self._frame
            start = max(0, len(frame) - 3)
            frame += data[position:]
            end = frame.find(TERMINATOR, start)
            if end < 0:
                if len(frame) > MAX_CONTROL_FRAME:
                    raise ProtocolError("control frame too long")
                return acks, frames
            consumed = end + len(TERMINATOR) - (len(frame) - (size - position))
            frames.append(bytes(frame[:end]))
            self._frame = None
            position += consumed
        return acks, frames
