"""Telemetry to several processes: one transmitter, receivers in child processes.

Run: python examples/telemetry.py
The transmitter publishes readings (typed: floats, aware datetimes) with a tag per sensor,
retaining the last value of each, so that a receiver that starts late gets it at once. Each
child process subscribes to the tags it cares about.
"""

import datetime
import multiprocessing
import time

import pytz

import hein


def monitor(port, name, tags, count, results):
    with hein.SocReceiver(port, name, hostname="127.0.0.1", tags=tags, pull=True) as r:
        seen = [(tag, data["value"]) for tag, data in _take(r, count)]
    results.put((name, seen))


def _take(receiver, count):
    for i, item in enumerate(receiver.messages(timeout=10)):
        yield item
        if i + 1 == count:
            return


if __name__ == "__main__":
    results = multiprocessing.Queue()
    with hein.SocTransmitter(0, 10) as t:
        t._newconnection = lambda name: None
        t.tell({"value": 19.5, "at": datetime.datetime.now(pytz.utc)}, tag="temp.in", retain=True)
        children = [
            multiprocessing.Process(target=monitor, args=(t.port, "temps", ["temp."], 4, results)),
            multiprocessing.Process(target=monitor, args=(t.port, "all", None, 6, results)),
        ]
        for child in children:
            child.start()
        deadline = time.monotonic() + 20
        while t.nreceivers < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # waiting for registration: a poll with a deadline
        for value in (20.0, 20.5, 21.0):
            now = datetime.datetime.now(pytz.utc)
            t.tell({"value": value, "at": now}, tag="temp.in")
        t.tell({"value": 1013.2, "at": datetime.datetime.now(pytz.utc)}, tag="pressure")
        t.tell({"value": 55.0, "at": datetime.datetime.now(pytz.utc)}, tag="humidity")
        got = dict(results.get(timeout=20) for _ in children)
        for child in children:
            child.join(10)
    for name in sorted(got):
        print("%s %s" % (name, got[name]))
