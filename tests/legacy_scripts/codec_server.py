"""Serve the legacy hein 0.2.3 serializer to the tests (see ``tests/legacy.py``).

Run by the legacy environment's interpreter (``python -I codec_server.py``), never by the project's:
it imports the legacy ``hein.core`` and ``byt``, and refuses to run if ``import hein`` finds the
project's package. It reads requests on stdin and writes replies on stdout, each an 8-byte
big-endian length followed by a pickle:

- ``("dumps", value)``  -> ``(True, bytes)``: what the legacy ``json_dumps(value)`` writes;
- ``("loads", payload)`` -> ``(True, value)``: what the legacy ``json_loads(Byt(payload))`` reads,
  with every ``Byt`` turned into ``bytes`` (the tests' environment has no ``byt``);
- on a legacy exception, ``(False, repr(exception))``.

The first reply, sent before any request, is ``(True, info)`` describing the server. The server
exits when its stdin is closed.
"""

import os
import pickle
import struct
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(os.path.dirname(_HERE))
_PROJECT_PACKAGE = os.path.join(_REPO, "hein")

# The legacy peers' common module: it cleans the import path, so that "import hein" never finds
# the project's package, and imports the legacy hein (-I leaves this directory out of the path).
sys.path.insert(0, _HERE)

from _legacy_common import Byt, hein, plain  # noqa: E402  (hein: the legacy one)

HEADER = struct.Struct(">Q")
PICKLE_PROTOCOL = 4


def handle(op, argument):
    if op == "dumps":
        return bytes(hein.core.json_dumps(argument))
    if op == "loads":
        return plain(hein.core.json_loads(Byt(bytes(argument))))
    raise ValueError("unknown request %r" % (op,))


def read_exact(stream, size):
    data = stream.read(size)
    if data is None or len(data) != size:
        return None
    return data


def main():
    requests = sys.stdin.buffer
    # Keep a private copy of stdout for the replies, and send anything else written to stdout
    # (a stray print in the legacy code) to stderr instead.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def reply(ok, result):
        try:
            data = pickle.dumps((ok, result), protocol=PICKLE_PROTOCOL)
        except Exception as error:  # the legacy result cannot travel
            data = pickle.dumps((False, "unpicklable result: %r" % (error,)), PICKLE_PROTOCOL)
        replies.write(HEADER.pack(len(data)) + data)
        replies.flush()

    hein_file = os.path.abspath(hein.__file__)
    if os.path.dirname(hein_file) == _PROJECT_PACKAGE:
        reply(False, "imported the project's hein (%s), not the legacy one" % hein_file)
        return 1
    reply(
        True,
        {
            "version": getattr(hein, "__version__", None),
            "hein_file": hein_file,
            "python": sys.version,
            "executable": sys.executable,
        },
    )
    while True:
        header = read_exact(requests, HEADER.size)
        if header is None:
            return 0
        (size,) = HEADER.unpack(header)
        body = read_exact(requests, size)
        if body is None:
            return 0
        op, argument = pickle.loads(body)
        try:
            result = handle(op, argument)
        except Exception as error:
            reply(False, repr(error))
        else:
            reply(True, result)


if __name__ == "__main__":
    sys.exit(main())
