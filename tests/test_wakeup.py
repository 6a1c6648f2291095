"""The transmitter's self-pipe (hein/_wakeup.py): a wake is never lost, whatever the timing."""

import collections
import selectors
import threading
import time

from hein._wakeup import Waker


def test_no_wake_is_lost_whatever_the_timing():
    """A producer thread queues items then wakes; the loop arms, looks at the queue, sleeps in
    select() up to 2 s, disarms. Every item must be seen well before that timeout."""
    waker = Waker()
    selector = selectors.DefaultSelector()
    selector.register(waker.fileno(), selectors.EVENT_READ)
    inbox = collections.deque()
    count = 3000
    worst = [0.0]
    done = threading.Event()

    def loop():
        seen = 0
        while seen < count:
            waker.arm()
            if selector.select(0 if inbox else 2.0):
                waker.clear()
            waker.disarm()
            now = time.monotonic()
            while inbox:
                worst[0] = max(worst[0], now - inbox.popleft())
                seen += 1
        done.set()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        for index in range(count):
            inbox.append(time.monotonic())
            waker.wake()
            if index % 3 == 0:
                time.sleep(0)  # let the loop run between some of the wakes
        assert done.wait(30.0)
        assert worst[0] < 1.0, "a wake was lost: an item waited %.3f s" % worst[0]
    finally:
        thread.join(5.0)
        selector.close()
        waker.close()


def test_wake_writes_a_byte_only_while_the_loop_is_armed():
    waker = Waker()
    selector = selectors.DefaultSelector()
    selector.register(waker.fileno(), selectors.EVENT_READ)
    try:
        waker.wake()  # the loop is busy (not armed): no system call, no byte
        assert selector.select(0) == []
        waker.arm()
        waker.wake()
        assert selector.select(1.0), "an armed waker wrote no byte"
        waker.clear()
        assert selector.select(0) == []
        waker.wake()  # disarmed by the first wake: one byte per sleep
        assert selector.select(0) == []
    finally:
        selector.close()
        waker.close()
