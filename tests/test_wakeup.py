"""The transmitter's self-pipe (hein/_wakeup.py): a wake is never lost, whatever the timing."""

import collections
import selectors
import threading
import time

from hein._wakeup import Waker


def test_no_wake_is_lost_when_it_races_with_clear():
    """A producer thread queues items and wakes; the loop sleeps in select() up to 2 s. Every
    item must be seen well before that timeout, including when a wake() comes between the
    flag's reset and the draining of the pipe in clear() (it used to leave the flag set with no
    byte in the pipe, so that every later wake() was skipped)."""
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
            selector.select(0 if inbox else 2.0)
            waker.clear()
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


def test_clear_after_wake_leaves_the_waker_ready_for_the_next_wake():
    waker = Waker()
    try:
        waker.wake()
        waker.clear()
        waker.wake()
        selector = selectors.DefaultSelector()
        selector.register(waker.fileno(), selectors.EVENT_READ)
        assert selector.select(1.0), "the wake after a clear wrote no byte"
        selector.close()
    finally:
        waker.close()
