"""The README's three-terminal example in one script: a transmitter and two receivers.

Run: python examples/three_terminals.py
In real use each part runs in its own terminal or process; here they share one process.
"""

import datetime
import threading

import pytz

import hein

PORT = 0  # 0 picks a free port; in the README, 50007

with hein.SocTransmitter(port=PORT, nreceivermax=5) as t:
    registered = threading.Semaphore(0)
    t._newconnection = lambda name: (print("hello: %s" % name), registered.release())
    done = threading.Semaphore(0)

    def printer(who):
        def process(data, tag):
            print("[%s] %s%r" % (who, "" if tag is None else tag + ": ", data))
            done.release()

        return process

    captain = hein.SocReceiver(t.port, "Captain", hostname="127.0.0.1", connect=False)
    tennille = hein.SocReceiver(t.port, "Tennille", hostname="127.0.0.1", connect=False)
    with captain, tennille:
        for receiver, who in ((captain, "Captain"), (tennille, "Tennille")):
            receiver.process = printer(who)
            receiver._newconnection = lambda: None  # (default: print the socket, as 0.2.3)
            receiver.connect()
        for _ in range(2):
            assert registered.acquire(timeout=10), "a receiver did not connect"
        when = datetime.datetime(2017, 6, 1, 12, tzinfo=pytz.utc)
        t.tell_json({"pi": 3.14, "when": when, "raw": b"\x00\x01"})  # the 0.2.3 name works
        t.tell_raw("some text", tag="news")
        for _ in range(4):
            assert done.acquire(timeout=10), "a message did not arrive"
print("done")
