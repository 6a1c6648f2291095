"""The self-pipe of the transmitter's loop thread: other threads wake it through a socketpair.

Other threads never touch the loop's sockets: they queue work, then call :meth:`Waker.wake`.
A byte on the pipe is only needed when the loop may be asleep in ``select()``: the loop calls
:meth:`Waker.arm` before it looks at its queues one last time and blocks, and
:meth:`Waker.disarm` as soon as ``select()`` returns. ``wake()`` writes a byte only while the
loop is armed, so a busy loop costs its producers no system call at all.

No wake is lost: a producer queues its work *then* reads the flag. If it read the flag before
``arm()``, its work was queued before the loop's last look at the queues, which sees it; if
after, it finds the flag set and writes the byte that ends the ``select()``. A byte written
late (the loop woke meanwhile) only makes one ``select()`` return early.
"""

import socket


class Waker:
    """A socketpair whose read end sits in the loop's selector."""

    __slots__ = ("_armed", "_reader", "_writer")

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._armed = False

    def fileno(self) -> int:
        """The descriptor to register for reading in the selector."""
        return self._reader.fileno()

    def wake(self) -> None:
        """Make the loop's ``select()`` return, if it may be blocked in it (call it after
        queueing the work)."""
        if not self._armed:
            return
        self._armed = False
        try:
            self._writer.send(b"\0")
        except (BlockingIOError, OSError):  # full (a wake is pending anyway) or closed
            pass

    @property
    def armed(self) -> bool:
        """Whether the loop may be asleep in ``select()`` (armed and not woken yet)."""
        return self._armed

    def arm(self) -> None:
        """Called by the loop thread before its last look at the queues and ``select()``."""
        self._armed = True

    def disarm(self) -> None:
        """Called by the loop thread when ``select()`` returns."""
        self._armed = False

    def clear(self) -> None:
        """Empty the pipe (the loop thread, when the read end is readable)."""
        try:
            while self._reader.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        """Close both ends (idempotent)."""
        self._reader.close()
        self._writer.close()
