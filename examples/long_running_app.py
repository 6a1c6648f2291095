"""A receiver inside a long-running application: it reconnects by itself.

Run: python examples/long_running_app.py
The application's main loop does its own work; the receiver runs in its background thread and
hands messages to a queue the loop drains. The transmitter restarts in the middle: the receiver
connects to the new one on the same port without any help.
"""

import queue
import time

import hein

inbox = queue.Queue()
t = hein.SocTransmitter(0, 5)
t._newconnection = lambda name: print("transmitter: hello %s" % name)
port = t.port
r = hein.SocReceiver(port, "app", hostname="127.0.0.1", connectWait=0.1, connect=False)
r.process = lambda data, tag: inbox.put(data)
r._newconnection = lambda: print("app: connected")
r.connect()


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.01)  # the application's own loop pace


try:
    wait_for(lambda: t.nreceivers == 1)
    t.tell("first")
    print("app loop got: %s" % inbox.get(timeout=10))
    t.close()  # the transmitter goes away...
    t = hein.SocTransmitter(port, 5)  # ...and comes back on the same port
    t._newconnection = lambda name: print("transmitter: hello again %s" % name)
    wait_for(lambda: t.nreceivers == 1)
    t.tell("second")
    print("app loop got: %s" % inbox.get(timeout=10))
    stats = r.stats()
    print("receiver stats: %s" % {k: stats[k] for k in ("connections", "reconnects", "messages")})
finally:
    r.close()
    t.close()
