"""The public face of the wire format: the serializer, :class:`Message` and the protocol constants.

hein 0.2.3 users import ``json_dumps``, ``json_loads`` and ``Message`` from here; the machinery
lives in the private, sans-I/O modules ``_framing`` and ``_serializer``.
"""

from typing import Any

from ._framing import (
    ACK,
    DEFAULT_MAX_FRAME_SIZE,
    KIND_DIE,
    KIND_JSON,
    KIND_PING,
    KIND_RAW,
    TAG_MAX_LENGTH,
    TERMINATOR,
    clean_tag,
)
from ._serializer import BUILTIN_CODES, json_dumps, json_loads, register_type, unregister_type
from .errors import ProtocolError

__all__ = [
    "ACK",
    "BUILTIN_CODES",
    "DEFAULT_MAX_FRAME_SIZE",
    "KIND_DIE",
    "KIND_JSON",
    "KIND_PING",
    "KIND_RAW",
    "TAG_MAX_LENGTH",
    "TERMINATOR",
    "Message",
    "clean_tag",
    "json_dumps",
    "json_loads",
    "register_type",
    "unregister_type",
]

_UNSET: Any = object()


class Message:
    """A message received with ``unpack=False``: the raw extended-JSON payload, decoded on demand.

    Attributes:
        raw: the payload bytes, as received.
        message: the decoded value (decoded once, on first access; raises
            :class:`~hein.errors.ProtocolError` if the payload is not valid extended JSON).
    """

    __slots__ = ("_message", "_raw")

    def __init__(self, raw: bytes) -> None:
        self._raw = bytes(raw)
        self._message: Any = _UNSET

    @classmethod
    def _decoded(cls, raw: bytes, value: Any) -> "Message":
        """A Message whose payload was decoded already (by the receiver, which checks it)."""
        message = cls(raw)
        message._message = value
        return message

    @property
    def raw(self) -> bytes:
        """The payload bytes."""
        return self._raw

    @property
    def message(self) -> Any:
        """The decoded value."""
        if self._message is _UNSET:
            self._message = json_loads(self._raw)
        return self._message

    def __repr__(self) -> str:
        try:
            return repr(self.message)
        except ProtocolError:
            return "<hein.Message undecodable %r>" % self._raw[:60]

    def __str__(self) -> str:
        try:
            return str(self.message)
        except ProtocolError:
            return self.__repr__()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Message):
            return self._raw == other._raw
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._raw)
