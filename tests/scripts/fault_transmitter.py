"""A transmitter peer for the fault tests: numbered streams and floods from a child process.

Usage: python fault_transmitter.py PORT NRECEIVERMAX [--timeout-ack S|none]
       [--heartbeat S|none] [--max-queue-bytes N] [--handshake-timeout S]

Every message it sends is numbered (see ``fault_receiver.py``): ``tell([seq, t_sent])`` for
streams, ``tell_raw(b"SEQ:T_SENT:" + padding)`` for floods.

Prints one JSON object per line on stdout:
  {"ev": "ready", "port": ..., "pid": ...}                 once listening
  {"ev": "hello"|"dropped", "name": ..., "t": MONOTONIC}   from the callbacks
  {"ev": "log", "level": ..., "msg": ..., "exc": bool}     hein log records of WARNING and up
  {"ev": "capped", "rss": ...}                             a flood stopped at 1.5 GiB of RSS
  {"ev": "reply", "cmd": ..., ...}                         after each command
Reads JSON commands on stdin:
  {"cmd": "tell_seq", "n": N}           tell the next N numbers at once
  {"cmd": "stream", "interval": S}      tell the next number every S seconds, in a thread
  {"cmd": "flood", "size": BYTES, "rate": BYTES_PER_S}
                                        tell_raw numbered messages of BYTES, paced at the rate
  {"cmd": "stop"}                       stop the stream or flood; replies with "sent"
  {"cmd": "receivers"}                  replies with the sorted names registered
  {"cmd": "quit"}                       (the end of stdin also quits)
"""

import argparse
import json
import logging
import os
import sys
import threading
import time

from _peer_common import EmitLogs, emit

import hein

#: A flood stops when this process holds more than this (a safety net for the test machine).
RSS_CAP = 1536 * 1024 * 1024


def rss():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0  # pragma: no cover


def seconds(text):
    return None if text == "none" else float(text)


class Sender:
    """Tells numbered messages from a thread until stopped."""

    def __init__(self, transmitter):
        self.transmitter = transmitter
        self.seq = 0
        self.thread = None
        self.stop_event = threading.Event()
        self.started = 0.0

    def tell_seq(self, n):
        for _ in range(n):
            self.transmitter.tell([self.seq, time.monotonic()])
            self.seq += 1

    def _stream(self, interval):
        while not self.stop_event.is_set():
            self.tell_seq(1)
            self.stop_event.wait(interval)  # the stream's pace

    def _flood(self, size, rate):
        padding = b"x" * size
        start = time.monotonic()
        sent_bytes = 0
        while not self.stop_event.is_set():
            if self.seq % 16 == 0 and rss() > RSS_CAP:  # protect the machine from a bug
                emit({"ev": "capped", "rss": rss(), "t": time.monotonic()})
                return
            now = time.monotonic()
            head = b"%d:%.6f:" % (self.seq, now)
            self.transmitter.tell_raw(head + padding[len(head) :])
            self.seq += 1
            sent_bytes += size
            ahead = sent_bytes / rate - (time.monotonic() - start)
            if ahead > 0:
                self.stop_event.wait(ahead)  # the flood's pace: at most `rate` bytes a second

    def start(self, target, *args):
        self.stop()
        self.stop_event = threading.Event()
        self.started = time.monotonic()
        self.thread = threading.Thread(target=target, args=args, name="sender", daemon=True)
        self.thread.start()

    def stop(self):
        if self.thread is not None:
            self.stop_event.set()
            self.thread.join(10.0)
            self.thread = None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("nreceivermax", type=int)
    parser.add_argument("--timeout-ack", default="1.0")
    parser.add_argument("--heartbeat", default="2.0")
    parser.add_argument("--max-queue-bytes", type=int, default=64 * 1024 * 1024)
    parser.add_argument("--handshake-timeout", type=float, default=5.0)
    args = parser.parse_args()
    logger = logging.getLogger("hein")
    logger.addHandler(EmitLogs(logging.WARNING))
    transmitter = hein.SocTransmitter(
        args.port,
        args.nreceivermax,
        start=False,
        timeoutACK=seconds(args.timeout_ack),
        host="127.0.0.1",
        heartbeat=seconds(args.heartbeat),
        max_queue_bytes=args.max_queue_bytes,
        handshake_timeout=args.handshake_timeout,
    )
    transmitter._newconnection = lambda name: emit(
        {"ev": "hello", "name": name, "t": time.monotonic()}
    )
    transmitter._dropped = lambda name: emit({"ev": "dropped", "name": name, "t": time.monotonic()})
    transmitter.start()
    sender = Sender(transmitter)
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
            reply = {"ev": "reply", "cmd": cmd}
            if cmd == "quit":
                break
            if cmd == "tell_seq":
                sender.tell_seq(int(command["n"]))
                reply["next"] = sender.seq
            elif cmd == "stream":
                sender.start(sender._stream, float(command["interval"]))
            elif cmd == "flood":
                sender.start(sender._flood, int(command["size"]), float(command["rate"]))
            elif cmd == "stop":
                sender.stop()
                reply["sent"] = sender.seq
                reply["seconds"] = time.monotonic() - sender.started
            elif cmd == "receivers":
                reply["names"] = sorted(transmitter.receivers)
            else:
                reply["result"] = "unknown command"
            emit(reply)
    finally:
        sender.stop()
        transmitter.close()
    emit({"ev": "bye"})


if __name__ == "__main__":
    main()
