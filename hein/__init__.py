"""hein: brokerless one-to-many messaging between processes, with type-preserving messages.

One :class:`SocTransmitter` binds a TCP port and broadcasts; any number of named
:class:`SocReceiver` connect to it, reconnect by themselves, and hand every message to a
callback. Wire-compatible with hein 0.2.3.
"""

import logging

from ._version import __version__
from .core import Message, clean_tag, json_dumps, json_loads, register_type, unregister_type
from .errors import FrameTooLarge, HeinError, ProtocolError
from .socreceiver import SocReceiver
from .soctransmitter import ReceiverInfo, SocTransmitter

logging.getLogger("hein").addHandler(logging.NullHandler())

__all__ = [
    "__version__",
    "FrameTooLarge",
    "HeinError",
    "Message",
    "ProtocolError",
    "ReceiverInfo",
    "SocReceiver",
    "SocTransmitter",
    "clean_tag",
    "json_dumps",
    "json_loads",
    "register_type",
    "unregister_type",
]
