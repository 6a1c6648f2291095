"""The hein 1 extensions of the handshake, as pure functions (no sockets, no threads).

hein 0.2.3 receivers ignore the payload of ``__png__`` frames, so a hein 1 transmitter
announces itself with one ping right after the registration ACK, whose payload is::

    hein/1 heartbeat=SECONDS

(``key=value`` fields separated by spaces; unknown keys are ignored, so later versions can add
fields). A hein 1 receiver that reads it knows that the transmitter pings idle receivers every
``heartbeat`` seconds, and so that a transmitter silent for much longer than that is gone. A
receiver never sends anything but ACKs (see PROTOCOL.rst).
"""

from typing import Dict, Optional

from ._framing import KIND_PING, encode_frame

__all__ = ["HELLO_PREFIX", "hello_frame", "parse_hello", "silence_limit"]

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
