"""The pull API: read messages from a bounded queue instead of writing a callback.

Run: python examples/pull_api.py
"""

import hein

with hein.SocTransmitter(0, 5) as t:
    t._newconnection = lambda name: None
    with hein.SocReceiver(t.port, "puller", hostname="127.0.0.1", pull=True) as r:
        t.tell("warming up", retain=True)  # retained: delivered first to whoever registers
        tag, data = r.get(timeout=10)
        print("first: %s %s" % (tag, data))
        for i in range(3):
            t.tell({"i": i}, tag="count")
        for tag, data in r.messages(timeout=1):  # ends after 1 s without a message
            print("pulled: %s %s" % (tag, data))
        print("dropped from a full queue: %d" % r.stats()["dropped"])
