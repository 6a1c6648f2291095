"""A receiver peer for the tests, running the project's hein in a child process.

Usage: python receiver.py PORT NAME [--host HOST|default] [--connect-wait S] [--slow S]

Prints one JSON object per line on stdout:
  {"ev": "ready", "version": ..., "file": ..., "pid": ...}   once started
  {"ev": "connected"}                                        on each new connection
  {"ev": "msg", "tag": ..., "type": ..., "repr": ..., "message": ...}  per message
     ("message" is the repr of ``data.message`` for a hein.Message)
Reads JSON commands on stdin: {"cmd": "quit"} closes the receiver and exits; so does the end of
stdin (so the child never outlives a test that forgot it).
"""

import argparse
import json
import os
import sys
import time

from _peer_common import emit

import hein


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("name")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--connect-wait", type=float, default=0.05)
    parser.add_argument("--slow", type=float, default=0.0, help="seconds spent in each process()")
    args = parser.parse_args()

    def process(data, tag):
        event = {"ev": "msg", "tag": tag, "type": type(data).__name__, "repr": repr(data)}
        if isinstance(data, hein.Message):
            event["message"] = repr(data.message)
        emit(event)
        if args.slow:
            time.sleep(args.slow)  # simulates a slow consumer

    receiver = hein.SocReceiver(
        args.port,
        args.name,
        connect=False,
        connectWait=args.connect_wait,
        hostname=None if args.host == "default" else args.host,
    )
    receiver.process = process
    receiver._newconnection = lambda: emit({"ev": "connected"})
    emit({"ev": "ready", "version": hein.__version__, "file": hein.__file__, "pid": os.getpid()})
    receiver.connect()
    try:
        for line in sys.stdin:
            command = json.loads(line)
            if command["cmd"] == "quit":
                break
    finally:
        receiver.close()
    emit({"ev": "bye"})


if __name__ == "__main__":
    main()
