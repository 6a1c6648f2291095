"""hein from asyncio: ``async for`` over a receiver's messages, and tell() from a coroutine.

Run: python examples/asyncio_receiver.py
"""

import asyncio

import hein


async def main():
    with hein.SocTransmitter(0, 5) as t:
        t._newconnection = lambda name: None
        with hein.SocReceiver(t.port, "aio", hostname="127.0.0.1", pull=True) as r:
            while t.nreceivers < 1:
                await asyncio.sleep(0.01)  # yields to the loop while the receiver registers

            async def producer():
                for i in range(5):
                    t.tell({"tick": i}, tag="clock")  # never blocks: safe in a coroutine
                    await asyncio.sleep(0.01)

            task = asyncio.ensure_future(producer())
            received = []
            async for _tag, data in r.amessages(timeout=2):
                received.append(data["tick"])
                if len(received) == 5:
                    break
            await task
            print("received ticks: %s" % received)


asyncio.run(main())
