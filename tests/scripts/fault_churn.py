"""Receivers that join and leave on command, for the churn soak (``test_faults.py``).

Usage: python fault_churn.py PORT [--connect-wait S]

Each receiver checks the numbered stream per connection (``fault_receiver.Tracker``).
Prints one JSON object per line on stdout:
  {"ev": "ready", "pid": ...}
  {"ev": "connected", "name": ..., "n": ..., "t": MONOTONIC}   each connection of a receiver
  {"ev": "left", "name": ..., "caught_up": bool, "segments": [...], "maxlat": ...}
     after a leave: the receiver first waits (at most 10 s) for a message told after the
     command arrived, so that its last window ends after the command, then closes
Reads JSON commands on stdin: {"cmd": "join", "name": N}, {"cmd": "leave", "name": N},
{"cmd": "quit"} (the end of stdin also quits).
"""

import argparse
import json
import os
import sys
import threading
import time

from _peer_common import emit
from fault_receiver import Tracker

import hein

CATCH_UP = 10.0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--connect-wait", type=float, default=0.05)
    args = parser.parse_args()
    receivers = {}

    def join(name):
        tracker = Tracker()
        receiver = hein.SocReceiver(
            args.port, name, connect=False, connectWait=args.connect_wait, hostname="127.0.0.1"
        )
        receiver.process = lambda data, tag: tracker.add(data)

        def newconnection():
            now = time.monotonic()
            tracker.new_connection(now)
            emit({"ev": "connected", "name": name, "n": len(tracker.segments), "t": now})

        receiver._newconnection = newconnection
        receivers[name] = (receiver, tracker)
        receiver.connect()

    def leave(name, asked_at):
        receiver, tracker = receivers.pop(name)
        deadline = asked_at + CATCH_UP
        while tracker.last_t_sent < asked_at and time.monotonic() < deadline:
            time.sleep(0.005)  # polling period
        receiver.close()
        emit(
            {
                "ev": "left",
                "name": name,
                "caught_up": tracker.last_t_sent >= asked_at,
                "segments": [dict(s) for s in tracker.segments],
                "maxlat": tracker.maxlat,
                "other": tracker.other,
            }
        )

    emit({"ev": "ready", "version": hein.__version__, "file": hein.__file__, "pid": os.getpid()})
    leavers = []
    try:
        for line in sys.stdin:
            command = json.loads(line)
            cmd = command["cmd"]
            if cmd == "quit":
                break
            if cmd == "join":
                join(command["name"])
            elif cmd == "leave":
                thread = threading.Thread(
                    target=leave, args=(command["name"], time.monotonic()), daemon=True
                )
                thread.start()
                leavers.append(thread)
    finally:
        for thread in leavers:
            thread.join(CATCH_UP + 5)
        for receiver, _ in receivers.values():
            receiver.close()
    emit({"ev": "bye"})


if __name__ == "__main__":
    main()
