"""A receiver peer for the fault tests: checks a numbered stream itself and reports summaries.

Usage: python fault_receiver.py PORT NAME [--connect-wait S] [--max-frame-size N] [--tick S]

The transmitter sends numbered messages: ``[seq, t_sent]`` (``tell``) or
``b"SEQ:T_SENT:padding"`` (``tell_raw``), ``t_sent`` being ``time.monotonic()`` of the sender
(CLOCK_MONOTONIC is shared by every process of the machine, so latencies are comparable).
Messages of any other shape are counted as "other".

Per connection it keeps a segment: first and last sequence number, count, the number of gaps
(a message whose number is not the previous one plus one) and the first few of them, and the
largest latency. Prints one JSON object per line on stdout:

  {"ev": "ready", "version": ..., "pid": ...}                      once started
  {"ev": "connected", "n": CONNECTIONS, "t": MONOTONIC}            on each new connection
  {"ev": "tick", "t": ..., "count": ..., "bytes": ..., "last": ..., "gaps": ...,
   "maxlat": ..., "connections": ...}                              every --tick seconds
  {"ev": "reply", "cmd": "stats", "segments": [...], "threads": N, "stats": {...}}

Reads JSON commands on stdin: {"cmd": "stats"}, {"cmd": "quit"} (closes the receiver and exits;
so does the end of stdin, so the child never outlives a test that forgot it).
"""

import argparse
import json
import os
import sys
import threading
import time

from _peer_common import emit

import hein


def sequence_of(data):
    """(seq, t_sent) of a numbered message, or None."""
    if isinstance(data, list) and len(data) >= 2 and isinstance(data[0], int):
        return data[0], float(data[1])
    if isinstance(data, bytes):
        head = data[:64].split(b":", 2)
        if len(head) >= 2:
            try:
                return int(head[0]), float(head[1])
            except ValueError:
                return None
    return None


class Tracker:
    """Segments of the numbered stream, one per connection (updated in the receiver thread)."""

    def __init__(self):
        self.segments = []
        self.count = 0
        self.bytes = 0
        self.other = 0
        self.gaps = 0
        self.last = None
        self.last_t_sent = 0.0
        self.maxlat = 0.0

    def new_connection(self, now):
        self.segments.append(
            {
                "connected": now,
                "first": None,
                "last": None,
                "count": 0,
                "gaps": 0,
                "gap_list": [],
                "maxlat": 0.0,
                "first_t_sent": None,
            }
        )

    def add(self, data):
        now = time.monotonic()
        found = sequence_of(data)
        if isinstance(data, (bytes, bytearray)):
            self.bytes += len(data)
        if found is None:
            self.other += 1
            return
        seq, t_sent = found
        if not self.segments:  # pragma: no cover - a message before any connection
            self.new_connection(now)
        seg = self.segments[-1]
        latency = now - t_sent
        if seg["first"] is None:
            seg["first"] = seq
            seg["first_t_sent"] = t_sent
        elif seq != seg["last"] + 1:
            seg["gaps"] += 1
            self.gaps += 1
            if len(seg["gap_list"]) < 10:
                seg["gap_list"].append([seg["last"], seq])
        seg["last"] = seq
        seg["count"] += 1
        seg["maxlat"] = max(seg["maxlat"], latency)
        self.maxlat = max(self.maxlat, latency)
        self.count += 1
        self.last = seq
        self.last_t_sent = t_sent


def threads_of_this_process():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return -1  # pragma: no cover


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("name")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--connect-wait", type=float, default=0.05)
    parser.add_argument("--max-frame-size", type=int, default=64 * 1024 * 1024)
    parser.add_argument("--tick", type=float, default=0.1)
    args = parser.parse_args()
    tracker = Tracker()

    receiver = hein.SocReceiver(
        args.port,
        args.name,
        connect=False,
        connectWait=args.connect_wait,
        hostname=args.host,
        max_frame_size=args.max_frame_size,
    )
    receiver.process = lambda data, tag: tracker.add(data)

    def newconnection():
        now = time.monotonic()
        tracker.new_connection(now)
        emit({"ev": "connected", "n": len(tracker.segments), "t": now})

    receiver._newconnection = newconnection
    stop = threading.Event()

    def tick():
        while not stop.wait(args.tick):  # the reporting period
            emit(
                {
                    "ev": "tick",
                    "t": time.monotonic(),
                    "count": tracker.count,
                    "bytes": tracker.bytes,
                    "last": tracker.last,
                    "gaps": tracker.gaps,
                    "maxlat": tracker.maxlat,
                    "connections": len(tracker.segments),
                }
            )

    emit({"ev": "ready", "version": hein.__version__, "file": hein.__file__, "pid": os.getpid()})
    receiver.connect()
    ticker = threading.Thread(target=tick, name="ticker", daemon=True)
    ticker.start()
    try:
        for line in sys.stdin:
            command = json.loads(line)
            cmd = command["cmd"]
            if cmd == "quit":
                break
            if cmd == "stats":
                emit(
                    {
                        "ev": "reply",
                        "cmd": cmd,
                        "segments": [dict(s) for s in tracker.segments],
                        "count": tracker.count,
                        "other": tracker.other,
                        "gaps": tracker.gaps,
                        "maxlat": tracker.maxlat,
                        "threads": threads_of_this_process(),
                        "stats": receiver.stats(),
                        "connected": receiver.connected,
                    }
                )
            else:
                emit({"ev": "reply", "cmd": cmd, "result": "unknown command"})
    finally:
        stop.set()
        receiver.close()
    emit({"ev": "bye"})


if __name__ == "__main__":
    main()
