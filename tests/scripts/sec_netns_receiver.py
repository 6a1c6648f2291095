"""A receiver peer for the bind-policy tests, run inside a network namespace (our hein).

Usage: python sec_netns_receiver.py PORT NAME HOST [--connect-wait S]

Prints one JSON object per line on stdout:
  {"ev": "ready", "version": ..., "file": ..., "pid": ...}  once started
  {"ev": "connected"}                                         on each registration
  {"ev": "msg", "repr": ...}                                  per message
  {"ev": "log", "level": "WARNING", "logger": ..., "msg": ...}  per hein record (DEBUG and up)
Reads JSON commands on stdin: {"cmd": "quit"} (or the end of stdin) closes the receiver and exits.
"""

import argparse
import json
import logging
import os
import sys

from _peer_common import EmitLogs, emit

import hein


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("name")
    parser.add_argument("host")
    parser.add_argument("--connect-wait", type=float, default=0.05)
    args = parser.parse_args()
    logger = logging.getLogger("hein")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(EmitLogs())
    receiver = hein.SocReceiver(
        args.port, args.name, connect=False, connectWait=args.connect_wait, hostname=args.host
    )
    receiver.process = lambda data, tag: emit({"ev": "msg", "repr": repr(data)})
    receiver._newconnection = lambda: emit({"ev": "connected"})
    emit({"ev": "ready", "version": hein.__version__, "file": hein.__file__, "pid": os.getpid()})
    receiver.connect()
    try:
        for line in sys.stdin:
            if json.loads(line)["cmd"] == "quit":
                break
    finally:
        receiver.close()
    emit({"ev": "bye"})


if __name__ == "__main__":
    main()
