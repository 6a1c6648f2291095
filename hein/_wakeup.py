"""The self-pipe of the transmitter's loop thread: other threads wake it through a socketpair.

Other threads never touch the loop's sockets: they queue work, then call :meth:`Waker.wake`.
A flag keeps a burst of ``wake()`` calls down to one byte on the pipe: the loop calls
:meth:`Waker.clear` *before* it looks at the queues, and clear() empties the pipe *before* it
resets the flag. So a wake() during clear() either finds the flag still set (and its work is in
the queues the loop is about to read) or, once the flag is reset, writes a byte that stays in the
pipe: a wake is never lost. (Resetting the flag first would let the pipe's draining eat the byte
of a wake() that came in between, leaving the flag set with an empty pipe: every later wake()
would be skipped, and the loop would sleep its full timeout.)
"""

import socket


class Waker:
    """A socketpair whose read end sits in the loop's selector."""

    __slots__ = ("_pending", "_reader", "_writer")

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._pending = False

    def fileno(self) -> int:
        """The descriptor to register for reading in the selector."""
        return self._reader.fileno()

    def wake(self) -> None:
        """Make the loop's ``select()`` return (cheap when a wake is already pending)."""
        if self._pending:
            return
        self._pending = True
        try:
            self._writer.send(b"\0")
        except (BlockingIOError, OSError):  # full (a wake is pending anyway) or closed
            pass

    def clear(self) -> None:
        """Called by the loop thread when it wakes, before it reads the queues."""
        try:
            while self._reader.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        self._pending = False

    def close(self) -> None:
        """Close both ends (idempotent)."""
        self._reader.close()
        self._writer.close()
