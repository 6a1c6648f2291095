"""Custom callbacks: subclass the classes, or assign functions to an instance.

Run: python examples/custom_callbacks.py
"""

import threading

import hein


class Board(hein.SocTransmitter):
    """A transmitter that keeps a roll of who is listening."""

    def _newconnection(self, name):  # runs in the transmitter's callback thread
        print("joined: %s" % name)  # (nothing else prints meanwhile: the receivers are quiet)
        joined.release()

    def _dropped(self, name):  # printed at the end: this thread runs beside the main one
        left.append(name)


class Logger(hein.SocReceiver):
    def _newconnection(self):  # runs in the receiver's thread (default: print the socket)
        pass

    def process(self, data, tag):  # runs in the receiver's thread, once per message
        print("%s got %r (tag %s)" % (self.name, data, tag))
        if data == "bye":
            finished.set()


joined = threading.Semaphore(0)
left = []
finished = threading.Event()
with Board(0, 5) as board:
    with Logger(board.port, "logger", hostname="127.0.0.1"):
        quiet = hein.SocReceiver(board.port, "counter", hostname="127.0.0.1", connect=False)
        counts = {"n": 0}
        counted = threading.Semaphore(0)

        def count(data, tag):  # a plain function assigned to the instance
            counts["n"] += 1
            counted.release()

        quiet.process = count
        quiet._newconnection = lambda: None
        quiet.connect()
        for _ in range(2):
            assert joined.acquire(timeout=10)
        board.tell({"a": 1}, tag="demo")
        board.tell([1, 2, 3], unpack=False)  # the receiver gets a hein.Message
        board.tell("bye")
        assert finished.wait(10)
        for _ in range(3):
            assert counted.acquire(timeout=10)
        quiet.close()
    print("counter saw %d messages" % counts["n"])
print("left: %s" % ", ".join(sorted(left)))
