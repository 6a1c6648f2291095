"""Shared helpers for the integration, fault and interop tests.

- :func:`wait_for`, :func:`assert_eventually` and :func:`holds_for` poll a condition with a
  deadline (never a bare ``time.sleep`` to wait for something to happen).
- :class:`Collector` is a callback (``process(data, tag)``, ``_newconnection(name)``, ...) that
  feeds a ``queue.Queue``; the test thread reads it with :meth:`Collector.wait_for_count`.
- :class:`Peer` runs one of the small peer scripts (``tests/scripts/*.py`` under our hein,
  ``tests/legacy_scripts/legacy_*.py`` under hein 0.2.3) in a child process of its own session,
  talks to it with JSON lines (commands on its stdin, events on its stdout), and kills it by pid
  (its process group, which holds the legacy ``multiprocessing`` manager too) when closed.
"""

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest

from hein import SocReceiver, SocTransmitter

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
SCRIPTS_DIR = TESTS_DIR / "scripts"
LEGACY_SCRIPTS_DIR = TESTS_DIR / "legacy_scripts"
LOCALHOST = "127.0.0.1"

#: Default bound on one wait, in seconds (generous: the machine may be loaded).
WAIT = 10.0
#: Bound on a peer script's start (interpreter start, imports, hello), in seconds.
PEER_START_TIMEOUT = 30.0


# ---------------------------------------------------------------------------------- polling


def wait_for(condition: Callable[[], Any], timeout: float = WAIT, interval: float = 0.005) -> Any:
    """Poll ``condition`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def assert_eventually(
    condition: Callable[[], Any],
    timeout: float = WAIT,
    message: Any = "condition never became true",
) -> Any:
    """Like :func:`wait_for`, but fail the test on timeout. ``message`` may be a callable."""
    value = wait_for(condition, timeout)
    if not value:
        pytest.fail("after %.3g s: %s" % (timeout, message() if callable(message) else message))
    return value


def holds_for(condition: Callable[[], Any], duration: float, interval: float = 0.01) -> bool:
    """Whether ``condition`` stays true during ``duration`` seconds (checked every ``interval``).

    For negative checks ("the refused receiver stays out"): returns False at the first failure.
    """
    deadline = time.monotonic() + duration
    while True:
        if not condition():
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(interval)


# ---------------------------------------------------------------------------------- callbacks


class Collector:
    """A callback that records every call, for the test thread to wait on.

    A call with one argument records that argument; with several, the tuple of them (so a
    ``process(data, tag)`` collector records ``(data, tag)`` pairs). Calls come from hein's
    threads; only the test thread reads :attr:`items`.
    """

    def __init__(self, action: Optional[Callable[..., Any]] = None) -> None:
        self.queue: queue.Queue[Any] = queue.Queue()
        self._items: List[Any] = []
        self._times: List[float] = []
        self._threads: List[str] = []
        self.action = action

    def __call__(self, *args: Any) -> None:
        self.queue.put(
            (args[0] if len(args) == 1 else args, time.monotonic(), threading.current_thread().name)
        )
        if self.action is not None:
            self.action(*args)

    def _drain(self, block_until: Optional[float] = None) -> bool:
        try:
            if block_until is None:
                item = self.queue.get_nowait()
            else:
                item = self.queue.get(timeout=max(0.0, block_until - time.monotonic()))
        except queue.Empty:
            return False
        self._items.append(item[0])
        self._times.append(item[1])
        self._threads.append(item[2])
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return True
            self._items.append(item[0])
            self._times.append(item[1])
            self._threads.append(item[2])

    @property
    def items(self) -> List[Any]:
        """Every call recorded so far (what each call recorded)."""
        self._drain()
        return self._items

    @property
    def times(self) -> List[float]:
        """``time.monotonic()`` of each recorded call."""
        self._drain()
        return self._times

    @property
    def threads(self) -> List[str]:
        """The name of the thread that made each recorded call."""
        self._drain()
        return self._threads

    @property
    def count(self) -> int:
        """Calls recorded so far."""
        self._drain()
        return len(self._items)

    def wait_for_count(self, n: int, timeout: float = WAIT) -> List[Any]:
        """Wait until at least ``n`` calls were recorded; return the first ``n`` items.

        Fails the test (with what arrived) when ``timeout`` passes first.
        """
        deadline = time.monotonic() + timeout
        self._drain()
        while len(self.items) < n:
            if time.monotonic() >= deadline:
                pytest.fail(
                    "expected %d calls within %.3g s, got %d; last ones: %r"
                    % (n, timeout, len(self.items), [_short(i) for i in self.items[-5:]])
                )
            self._drain(block_until=deadline)
        return self.items[:n]

    def wait_for_item(self, predicate: Callable[[Any], bool], timeout: float = WAIT) -> Any:
        """Wait for a recorded item satisfying ``predicate`` and return it."""
        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            snapshot = list(self.items)
            for item in snapshot[checked:]:
                if predicate(item):
                    return item
            checked = len(snapshot)
            if time.monotonic() >= deadline:
                pytest.fail(
                    "no matching call within %.3g s; last ones: %r"
                    % (timeout, [_short(i) for i in self.items[-5:]])
                )
            self._drain(block_until=min(deadline, time.monotonic() + 0.05))


def _short(item: Any) -> Any:
    text = repr(item)
    return text if len(text) < 200 else text[:200] + "..."


def silent(*args: Any) -> None:
    """A callback that does nothing (replaces the default printing callbacks)."""


# ------------------------------------------------------------------------ hein objects


class Closer:
    """Closes every registered hein object (or calls every registered function), last first.

    A context manager; the test modules' ``closer`` fixture is one.
    """

    def __init__(self) -> None:
        self._items: List[Any] = []

    def __enter__(self) -> "Closer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def add(self, item: Any) -> Any:
        self._items.append(item)
        return item

    def close(self) -> None:
        errors = []
        while self._items:
            item = self._items.pop()
            try:
                item() if callable(item) and not hasattr(item, "close") else item.close()
            except Exception as error:  # pragma: no cover - reported below
                errors.append(error)
        if errors:  # pragma: no cover
            raise errors[0]

    def transmitter(self, nreceivermax: int = 10, port: int = 0, **kwargs: Any) -> SocTransmitter:
        """A started transmitter on ``port`` (0: a free one) that prints nothing by default."""
        t = self.add(SocTransmitter(port, nreceivermax, **kwargs))
        t._newconnection = silent
        return t

    def receiver(
        self,
        port: int,
        name: str,
        process: Optional[Callable[..., Any]] = None,
        connectWait: float = 0.05,
        hostname: Optional[str] = LOCALHOST,
        **kwargs: Any,
    ) -> SocReceiver:
        """A receiver on 127.0.0.1 whose callbacks are set before it connects."""
        kwargs.setdefault("connect", True)
        connect = kwargs.pop("connect")
        r = self.add(
            SocReceiver(
                port, name, connect=False, connectWait=connectWait, hostname=hostname, **kwargs
            )
        )
        r.process = process if process is not None else silent
        r._newconnection = silent
        if connect:
            r.connect()
        return r


def wait_registered(t: SocTransmitter, names: Any, timeout: float = WAIT) -> None:
    """Wait until every name in ``names`` is registered on ``t``."""
    wanted = {names} if isinstance(names, str) else set(names)
    assert_eventually(
        lambda: wanted <= set(t.receivers),
        timeout,
        lambda: "registered: %s, wanted %s" % (sorted(t.receivers), sorted(wanted)),
    )


def free_port() -> int:
    """A TCP port free on every interface right now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def hein_thread_names() -> List[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("hein"))


# ---------------------------------------------------------------------------------- peers


class Peer:
    """A peer script in a child process, spoken to with JSON lines.

    Its stdout carries one JSON object per line (``{"ev": ...}``), collected by a reader thread
    into :attr:`events`; commands go to its stdin as JSON objects (:meth:`send`). The child runs
    in a new session, so :meth:`close` can kill it and whatever it started (the legacy
    transmitter's manager process) by its process group id, which is its own pid.
    """

    def __init__(self, argv: List[str], label: str, cwd: Optional[str] = None) -> None:
        self.label = label
        self.argv = argv
        self.events: List[Dict[str, Any]] = []
        self._cond = threading.Condition()
        self._stderr = tempfile.TemporaryFile()
        self._stopped = False
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=cwd or str(REPO_ROOT),
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self._reader = threading.Thread(
            target=self._read, name="peer-stdout-%s" % label, daemon=True
        )
        self._reader.start()

    # -- events

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            text = line.decode("utf-8", "replace").rstrip("\n")
            try:
                event = json.loads(text)
                if not isinstance(event, dict):
                    raise ValueError
            except ValueError:
                event = {"ev": "text", "line": text}
            event["_t"] = time.monotonic()
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self.events.append({"ev": "eof", "_t": time.monotonic()})
            self._cond.notify_all()

    def select(self, ev: str, **fields: Any) -> List[Dict[str, Any]]:
        """Events of kind ``ev`` whose fields equal ``fields``, so far."""
        with self._cond:
            return [
                e
                for e in self.events
                if e.get("ev") == ev and all(e.get(k) == v for k, v in fields.items())
            ]

    def count(self, ev: str, **fields: Any) -> int:
        return len(self.select(ev, **fields))

    def wait_event(
        self, ev: str, timeout: float = WAIT, after: int = 0, **fields: Any
    ) -> Dict[str, Any]:
        """Wait for an event of kind ``ev`` with ``fields``, among events from index ``after``.

        Fails the test (with the child's stderr) on timeout or when the child's stdout closes.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events[after:]:
                    if event.get("ev") == ev and all(event.get(k) == v for k, v in fields.items()):
                        return event
                if ev != "eof" and any(e.get("ev") == "eof" for e in self.events[after:]):
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.1))
        pytest.fail(
            "%s (pid %d): no %s event %r within %.3g s; last events %r; stderr:\n%s"
            % (self.label, self.pid, ev, fields, timeout, self.events[-5:], self.stderr())
        )

    def wait_count(
        self, ev: str, n: int, timeout: float = WAIT, **fields: Any
    ) -> List[Dict[str, Any]]:
        """Wait until at least ``n`` events of kind ``ev`` with ``fields`` arrived; return them."""
        found = wait_for(lambda: self.count(ev, **fields) >= n, timeout)
        if not found:
            pytest.fail(
                "%s (pid %d): %d %s events %r within %.3g s, wanted %d; stderr:\n%s"
                % (
                    self.label,
                    self.pid,
                    self.count(ev, **fields),
                    ev,
                    fields,
                    timeout,
                    n,
                    self.stderr(),
                )
            )
        return self.select(ev, **fields)

    def mark(self) -> int:
        """The index of the next event (for ``wait_event(after=...)``)."""
        with self._cond:
            return len(self.events)

    def stderr(self) -> str:
        try:
            self._stderr.seek(0)
            return self._stderr.read()[-4000:].decode("utf-8", "replace")
        except (ValueError, OSError):  # closed
            return ""

    # -- commands and signals

    def send(self, cmd: str, **fields: Any) -> None:
        """Write one command line to the child's stdin."""
        assert self.proc.stdin is not None
        fields["cmd"] = cmd
        self.proc.stdin.write((json.dumps(fields) + "\n").encode("utf-8"))
        self.proc.stdin.flush()

    def request(self, cmd: str, timeout: float = WAIT, **fields: Any) -> Dict[str, Any]:
        """Send a command and wait for its ``reply`` event."""
        start = self.mark()
        self.send(cmd, **fields)
        return self.wait_event("reply", timeout, after=start, cmd=cmd)

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def stop(self) -> None:
        """SIGSTOP the child."""
        self._stopped = True
        self.signal(signal.SIGSTOP)

    def cont(self) -> None:
        """SIGCONT the child."""
        self.signal(signal.SIGCONT)
        self._stopped = False

    def kill(self) -> None:
        """SIGKILL the child's process group and reap the child."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self, timeout: float = 3.0) -> None:
        """Ask the child to quit (unless stopped), then kill its process group; idempotent."""
        try:
            if self.alive and not self._stopped:
                try:
                    self.send("quit")
                    self.proc.wait(timeout=timeout)
                except (OSError, ValueError, subprocess.TimeoutExpired):
                    pass
        finally:
            self.kill()
            for stream in (self.proc.stdin, self.proc.stdout):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:  # pragma: no cover
                    pass
            self._reader.join(WAIT)
            self._stderr.close()


def start_peer(script: str, *args: Any, label: Optional[str] = None, legacy: bool = False) -> Peer:
    """Start ``tests/scripts/SCRIPT`` under this interpreter (our hein), or with ``legacy=True``
    ``tests/legacy_scripts/SCRIPT`` under the hein 0.2.3 interpreter, from a directory outside
    the repository and in isolated mode, so that ``import hein`` there is the legacy one.

    Waits for the script's ``ready`` event.
    """
    if legacy:
        from legacy import legacy_python

        argv = [legacy_python(), "-I", "-u", str(LEGACY_SCRIPTS_DIR / script)]
        cwd = tempfile.gettempdir()
    else:
        argv = [sys.executable, "-u", str(SCRIPTS_DIR / script)]
        cwd = str(REPO_ROOT)
    argv += [str(a) for a in args]
    peer = Peer(argv, label or "%s%s" % ("legacy-" if legacy else "", script), cwd=cwd)
    try:
        ready = peer.wait_event("ready", PEER_START_TIMEOUT)
        if legacy:
            assert ready.get("version") == "0.2.3", ready
        else:
            assert ready.get("version") != "0.2.3", ready
    except BaseException:
        peer.close()
        raise
    return peer


class Peers:
    """Starts peers and closes them all at the end; a context manager (the ``peers`` fixture)."""

    def __init__(self) -> None:
        self.all: List[Peer] = []

    def __enter__(self) -> "Peers":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def start(self, script: str, *args: Any, **kwargs: Any) -> Peer:
        peer = start_peer(script, *args, **kwargs)
        self.all.append(peer)
        return peer

    def close(self) -> None:
        for peer in reversed(self.all):
            peer.close()
        self.all = []


def raw_frame(kind: bytes, payload: bytes, tag: bytes = b"", unpack: bytes = b"1") -> bytes:
    """A frame built by hand from PROTOCOL.rst (independent of hein's own encoder)."""
    escaped = payload.replace(b"\xac\x96", b"\xac\x96\xee")
    return kind + tag + b":" + unpack + b":" + escaped + b"\xac\x96\xac\x96"
