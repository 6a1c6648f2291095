"""A hein 0.2.3 receiver peer for the interop tests (run by the legacy interpreter, ``-I``).

Usage: python -I legacy_receiver.py PORT NAME [--host HOST|default] [--connect-wait S]

``--host default`` leaves the legacy default host (the address of this machine's hostname).
Prints JSON lines: {"ev": "ready", "version": "0.2.3", ...}, {"ev": "connected"} per connection,
{"ev": "msg", "tag": ..., "type": ..., "repr": ..., "message": ...} per message (legacy ``Byt``
values shown as ``bytes``; "message" is the repr of a legacy Message's ``.message``).
Reads JSON commands on stdin: {"cmd": "quit"} (or the end of stdin) stops and exits.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # -I leaves it out

from _legacy_common import emit, hein, plain, ready


class Receiver(hein.SocReceiver):
    def process(self, data, tag):
        event = {"ev": "msg", "tag": tag, "type": type(data).__name__, "repr": repr(plain(data))}
        if isinstance(data, hein.Message):
            event["message"] = repr(plain(data.message))
        emit(event)

    def _newconnection(self):
        emit({"ev": "connected"})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("name")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--connect-wait", type=float, default=0.1)
    args = parser.parse_args()
    receiver = Receiver(
        args.port,
        args.name,
        connect=False,
        connectWait=args.connect_wait,
        hostname=None if args.host == "default" else args.host,
    )
    ready(host=receiver.host)
    receiver.connect()
    for line in sys.stdin:
        if json.loads(line)["cmd"] == "quit":
            break
    emit({"ev": "bye"})
    os._exit(0)  # the legacy threads are daemons; no need to wait for them


if __name__ == "__main__":
    main()
