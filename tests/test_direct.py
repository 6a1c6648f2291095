"""Sparse messages are sent by the thread that tells them (SocTransmitter._send_now), bursts go
through the loop thread; whichever way each message takes, receivers get all, in order."""

import random
import threading
import time

from helpers import WAIT, Collector, assert_eventually, wait_registered

from hein import soctransmitter


def idle(t):
    """Wait until the loop thread sleeps in select() and the last tell is old enough."""
    assert_eventually(
        lambda: (
            t._waker.armed
            and not t._inbox
            and time.monotonic() - t._last_tell > soctransmitter.DIRECT_GAP
        )
    )


def test_a_sparse_message_is_written_before_tell_returns(closer):
    t = closer.transmitter()
    got = Collector()
    closer.receiver(t.port, "r", process=got)
    wait_registered(t, "r")
    t.tell("warm-up")
    got.wait_for_count(1)
    assert_eventually(lambda: t.stats()["receivers"]["r"]["compact"])
    for n in range(5):
        idle(t)
        before = t.stats()["receivers"]["r"]["bytes_sent"]
        assert t.tell({"n": n})
        # written by this thread, in this call: no hand-over to the loop thread
        assert t.stats()["receivers"]["r"]["bytes_sent"] > before
    assert [item[0] for item in got.wait_for_count(6)[1:]] == [{"n": n} for n in range(5)]


def test_a_burst_after_a_pause_keeps_its_order(closer):
    t = closer.transmitter()
    everything = Collector()
    some = Collector()
    closer.receiver(t.port, "all", process=everything)
    closer.receiver(t.port, "some", process=some, tags=["odd"])
    wait_registered(t, ["all", "some"])
    told = []
    for burst in range(30):
        idle(t)  # the first message of each burst may go straight out
        for _ in range(burst % 7 + 1):
            n = len(told)
            tag = "odd" if n % 2 else "even"
            t.tell(n, tag=tag)
            told.append((n, tag))
    assert everything.wait_for_count(len(told)) == told
    odd = [item for item in told if item[1] == "odd"]
    assert some.wait_for_count(len(odd)) == odd


def test_threads_telling_at_random_gaps_lose_nothing(closer):
    t = closer.transmitter()
    got = Collector()
    closer.receiver(t.port, "r", process=got)
    wait_registered(t, "r")
    per_thread = 300
    gaps = [0, 0, 0, 0.0002, 0.0006, 0.001]

    def produce(name, seed):
        rng = random.Random(seed)
        deadline = time.monotonic() + WAIT
        for n in range(per_thread):  # bounded in count and time
            if time.monotonic() > deadline:
                break
            t.tell([name, n])
            time.sleep(rng.choice(gaps))  # pacing the stream, not synchronising

    threads = [
        threading.Thread(target=produce, args=("p%d" % k, k), name="test-producer-%d" % k)
        for k in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    items = got.wait_for_count(4 * per_thread, timeout=2 * WAIT)
    for k in range(4):
        mine = [item[0][1] for item in items if item[0][0] == "p%d" % k]
        assert mine == list(range(per_thread))
    assert len(items) == 4 * per_thread
