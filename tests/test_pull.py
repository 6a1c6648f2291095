"""The pull API (get, messages) and the asyncio iterator (amessages) of SocReceiver."""

import asyncio
import queue
import threading
import time

import pytest

from tests.helpers import wait_for, wait_registered


def puller(closer, t, name="puller", **kwargs):
    from hein import SocReceiver

    r = closer.add(
        SocReceiver(t.port, name, hostname="127.0.0.1", connectWait=0.05, pull=True, **kwargs)
    )
    wait_registered(t, name)
    return r


def test_get_returns_messages_in_order_and_times_out(closer):
    t = closer.transmitter(5)
    r = puller(closer, t)
    t.tell({"a": 1}, tag="x")
    t.tell_raw(b"raw")
    assert r.get(timeout=5) == ("x", {"a": 1})
    assert r.get(timeout=5) == (None, b"raw")
    started = time.monotonic()
    with pytest.raises(queue.Empty):
        r.get(timeout=0.2)
    assert 0.15 < time.monotonic() - started < 2.0


def test_messages_iterates_until_silence(closer):
    t = closer.transmitter(5)
    r = puller(closer, t)
    for i in range(50):
        t.tell(i)
    got = [data for _tag, data in r.messages(timeout=0.5)]
    assert got == list(range(50))


def test_queue_is_bounded_drops_the_oldest_and_counts(closer, caplog):
    t = closer.transmitter(5)
    r = puller(closer, t, queue_size=10)
    for i in range(25):
        t.tell(i)
    assert wait_for(lambda: r.stats()["messages"] == 25, 5.0)
    assert [data for _tag, data in r.messages(timeout=0.2)] == list(range(15, 25))
    assert r.stats()["dropped"] == 15
    assert sum("pull queue full" in rec.getMessage() for rec in caplog.records) == 1


def test_pull_api_needs_pull_true(closer):
    t = closer.transmitter(5)
    from hein import SocReceiver

    r = closer.add(SocReceiver(t.port, "cb", hostname="127.0.0.1", connect=False))
    with pytest.raises(RuntimeError):
        r.get(timeout=0)
    with pytest.raises(RuntimeError):
        next(r.messages())


def test_get_and_messages_end_when_the_receiver_is_closed(closer):
    t = closer.transmitter(5)
    r = puller(closer, t)
    t.tell("last")
    assert wait_for(lambda: r.stats()["messages"] == 1, 5.0)
    result = []
    reader = threading.Thread(target=lambda: result.extend(r.messages()))  # no timeout
    reader.start()
    assert wait_for(lambda: result == [(None, "last")], 5.0)
    r.close()
    reader.join(5)
    assert not reader.is_alive()
    with pytest.raises(queue.Empty):
        r.get()  # closed and empty: does not wait forever


def test_amessages_in_asyncio_with_tell_from_a_coroutine(closer):
    t = closer.transmitter(5)
    r = puller(closer, t)

    async def main():
        loop_thread = threading.current_thread()
        seen_threads = set()

        async def produce():
            for i in range(20):
                assert t.tell({"n": i}, tag="aio")  # never blocks the loop
                await asyncio.sleep(0)

        task = asyncio.ensure_future(produce())
        got = []
        async for tag, data in r.amessages(timeout=5):
            seen_threads.add(threading.current_thread())
            got.append((tag, data["n"]))
            if len(got) == 20:
                break
        await task
        return got, seen_threads == {loop_thread}

    got, in_loop_thread = asyncio.run(main())
    assert got == [("aio", i) for i in range(20)]
    assert in_loop_thread


def test_amessages_ends_after_timeout_without_messages(closer):
    t = closer.transmitter(5)
    r = puller(closer, t)

    async def main():
        started = time.monotonic()
        items = [item async for item in r.amessages(timeout=0.3)]
        return items, time.monotonic() - started

    items, elapsed = asyncio.run(main())
    assert items == [] and 0.25 < elapsed < 3.0
