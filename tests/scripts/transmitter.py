"""A transmitter peer for the tests, running the project's hein in a child process.

Usage: python transmitter.py PORT NRECEIVERMAX [--timeout-ack S|none]

Prints one JSON object per line on stdout:
  {"ev": "ready", "version": ..., "file": ..., "port": ..., "pid": ...}  once listening
  {"ev": "hello", "name": ...} / {"ev": "dropped", "name": ...}         from the callbacks
  {"ev": "reply", "cmd": ..., "result": repr(result)}                   after each command
Reads JSON commands on stdin:
  {"cmd": "tell", "expr": PYTHON_EXPR, "tag": ..., "unpack": ...}
      (expr: a repr, evaluated with the datetime module at hand)
  {"cmd": "tell_raw", "expr": PYTHON_EXPR, "tag": ...}
  {"cmd": "ping"}, {"cmd": "close_receivers"}, {"cmd": "close"}, {"cmd": "quit"}
The end of stdin also quits.
"""

import argparse
import datetime
import json
import os
import sys

from _peer_common import emit

import hein

NAMESPACE = {"datetime": datetime}  # expressions are reprs: datetime.date(2020, 1, 2)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("nreceivermax", type=int)
    parser.add_argument("--timeout-ack", default="1.0")
    args = parser.parse_args()
    timeout = None if args.timeout_ack == "none" else float(args.timeout_ack)
    transmitter = hein.SocTransmitter(args.port, args.nreceivermax, start=False, timeoutACK=timeout)
    transmitter._newconnection = lambda name: emit({"ev": "hello", "name": name})
    transmitter._dropped = lambda name: emit({"ev": "dropped", "name": name})
    transmitter.start()
    emit(
        {
            "ev": "ready",
            "version": hein.__version__,
            "file": hein.__file__,
            "port": transmitter.port,
            "pid": os.getpid(),
        }
    )
    try:
        for line in sys.stdin:
            command = json.loads(line)
            cmd = command["cmd"]
            if cmd == "quit":
                break
            if cmd == "tell":
                result = transmitter.tell(
                    eval(command["expr"], NAMESPACE),
                    tag=command.get("tag"),
                    unpack=command.get("unpack", True),
                )
            elif cmd == "tell_raw":
                result = transmitter.tell_raw(
                    eval(command["expr"], NAMESPACE), tag=command.get("tag")
                )
            elif cmd == "ping":
                result = transmitter.ping()
            elif cmd == "close_receivers":
                result = transmitter.close_receivers()
            elif cmd == "close":
                result = transmitter.close()
            else:
                result = "unknown command %r" % cmd
            emit({"ev": "reply", "cmd": cmd, "result": repr(result)})
    finally:
        transmitter.close()
    emit({"ev": "bye"})


if __name__ == "__main__":
    main()
