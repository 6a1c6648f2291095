"""The exceptions hein raises.

Every error that comes from bytes received off the network is a :class:`ProtocolError`, so that
the I/O layers can catch exactly that, log it, close the offending connection and carry on.
"""


class HeinError(Exception):
    """Base class of every exception defined by hein."""


class ProtocolError(HeinError):
    """Bytes received from a peer do not follow the hein protocol.

    Raised by the sans-I/O core for malformed frames, unknown frame kinds, bad extended JSON,
    unknown type codes, bad date/time fields and invalid UTF-8.
    """


class FrameTooLarge(ProtocolError):
    """A frame (complete or still arriving) is larger than the configured maximum frame size.

    The stream it came from cannot be resynchronised: the connection must be closed.
    """
