"""A hein 0.2.3 transmitter peer for the interop tests (run by the legacy interpreter, ``-I``).

Usage: python -I legacy_transmitter.py PORT NRECEIVERMAX [--timeout-ack S]

Prints JSON lines: {"ev": "ready", "version": "0.2.3", ...} once listening, {"ev": "hello",
"name": ...} per registration, {"ev": "dropped", "name": ...} per drop, and {"ev": "reply", "cmd":
..., "result": repr(result)} after each command.
Reads JSON commands on stdin:
  {"cmd": "tell", "expr": PYTHON_EXPR, "tag": ..., "unpack": ...}
      (expr: a repr, evaluated with the datetime module at hand)
  {"cmd": "tell_raw", "expr": PYTHON_EXPR, "tag": ...}
  {"cmd": "ping"}, {"cmd": "close_receivers"}, {"cmd": "close"}, {"cmd": "quit"}
The legacy transmitter starts a multiprocessing manager; the tests kill this process's whole
process group when done.
"""

import argparse
import datetime
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # -I leaves it out

from _legacy_common import emit, hein, ready

NAMESPACE = {"datetime": datetime}  # expressions are reprs: datetime.date(2020, 1, 2)


class Transmitter(hein.SocTransmitter):
    def _newconnection(self, name):
        emit({"ev": "hello", "name": str(name)})

    def _dropped(self, name):
        result = hein.SocTransmitter._dropped(self, name)
        emit({"ev": "dropped", "name": str(name)})
        return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("nreceivermax", type=int)
    parser.add_argument("--timeout-ack", type=float, default=1.0)
    args = parser.parse_args()
    transmitter = Transmitter(args.port, args.nreceivermax, timeoutACK=args.timeout_ack)
    ready(port=transmitter.port)
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
            result = transmitter.tell_raw(eval(command["expr"], NAMESPACE), tag=command.get("tag"))
        elif cmd == "ping":
            result = {str(k): v for k, v in transmitter.ping().items()}
        elif cmd == "close_receivers":
            result = transmitter.close_receivers()
        elif cmd == "close":
            result = transmitter.close()
        else:
            result = "unknown command %r" % cmd
        emit({"ev": "reply", "cmd": cmd, "result": repr(result)})
    try:
        transmitter.close()
    except Exception:  # the legacy close may raise on sockets the peers reset
        pass
    emit({"ev": "bye"})
    os._exit(0)  # the tests kill the process group, manager included


if __name__ == "__main__":
    main()
