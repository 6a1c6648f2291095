"""The ``hein`` command line: watch a stream, send messages, see a demo, run the benchmarks.

Subcommands (``hein COMMAND --help`` tells more about each)::

    hein listen PORT --name NAME [--host HOST] [--json] [--count N] [--timeout S]
    hein tell PORT [--tag TAG] [--raw] [--wait-receivers N] [--timeout S] [MESSAGE ...]
    hein demo [--port PORT] [--timeout S]
    hein bench [ARGS ...]
    hein bridge to-nats PORT [--nats URL] [--prefix P] [--name NAME] [auth and TLS options]
    hein bridge from-nats PORT [--nats URL] [--subject S] [auth and TLS options]

Exit status: 0 on success (and when ``listen`` or ``bridge`` is stopped by Ctrl-C), 1 on an
error (a port in use, a transmitter that never answers, receivers that never come, ...), 2 on a
usage error (an unknown option, a bad port, ...), 130 when ``tell``, ``demo`` or ``bench`` is
interrupted.
Errors are one line on standard error, ``hein: error: ...``, never a traceback.
"""

import argparse
import base64
import datetime as _dt
import json
import logging
import math
import os
import queue
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, NoReturn, Optional, Sequence, Tuple

import pytz

from . import __version__
from ._framing import TAG_MAX_LENGTH, clean_tag
from .core import Message
from .errors import ProtocolError
from .socreceiver import SocReceiver
from .soctransmitter import SocTransmitter

__all__ = ["main", "find_benchmarks", "to_jsonable", "format_message", "parse_message"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: Environment variable naming the benchmark runner (a ``run.py`` file, or a directory holding
#: one) for ``hein bench``; when set, nothing else is searched.
BENCH_ENV = "HEIN_BENCHMARKS"

#: Longest receiver name, in bytes of UTF-8.
_NAME_MAX_BYTES = 15
#: Default seconds ``tell`` waits for its receivers, and then for its messages to go out.
_TELL_TIMEOUT = 10.0
#: Default most receivers ``tell`` accepts.
_TELL_MAX_RECEIVERS = 100
#: Default seconds between two connection attempts of ``listen``.
_LISTEN_RETRY = 0.25
#: Default seconds each step of ``demo`` may take.
_DEMO_TIMEOUT = 20.0

_log_handler: Optional[logging.Handler] = None


class CLIError(Exception):
    """An error reported as ``hein: error: MESSAGE`` with exit status ``code``."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------------- argument types


def _port_type(allow_zero: bool) -> Callable[[str], int]:
    low = 0 if allow_zero else 1

    def port(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise argparse.ArgumentTypeError("invalid port %r: not an integer" % text) from None
        if not low <= value <= 65535:
            raise argparse.ArgumentTypeError(
                "invalid port %d: must be between %d and 65535" % (value, low)
            )
        return value

    port.__name__ = "port"
    return port


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("invalid number of seconds %r" % text) from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError("invalid number of seconds %r: must be positive" % text)
    return value


def _count_type(minimum: int) -> Callable[[str], int]:
    def count(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError("invalid count %r: not an integer" % text) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(
                "invalid count %d: must be at least %d" % (value, minimum)
            )
        return value

    count.__name__ = "count"
    return count


def _name_type(text: str) -> str:
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        size = 0
    if not 0 < size <= _NAME_MAX_BYTES:
        raise argparse.ArgumentTypeError(
            "invalid name %r: must be 1 to %d bytes of UTF-8" % (text, _NAME_MAX_BYTES)
        )
    return text


def _tag_type(text: str) -> str:
    if not text or clean_tag(text) != text:
        raise argparse.ArgumentTypeError(
            "invalid tag %r: use 1 to %d of the characters A-Z a-z 0-9 . _ - and space"
            % (text, TAG_MAX_LENGTH)
        )
    return text


# --------------------------------------------------------------------------------- output


def to_jsonable(value: Any) -> Any:
    """``value`` as plain JSON data, for ``hein listen --json``.

    datetime, date and time become ISO 8601 strings (``isoformat()``; an aware datetime keeps
    its UTC offset); bytes become ``{"$bytes": BASE64}``; tuples become lists; dict keys become
    strings; NaN and infinities become ``{"$float": "nan" | "inf" | "-inf"}``; a
    :class:`hein.Message` is decoded (``{"$undecodable": BASE64}`` when it cannot be); any other
    object becomes ``{"$repr": repr(value)}``.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)
        return {"$float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, Message):
        try:
            decoded = value.message
        except ProtocolError:
            return {"$undecodable": base64.b64encode(value.raw).decode("ascii")}
        return to_jsonable(decoded)
    return {"$repr": repr(value)}


def format_message(data: Any, tag: Optional[str], as_json: bool = False) -> str:
    """One line for one message: ``TAG: value`` (``value`` when untagged), or a JSON object
    ``{"tag": TAG or null, "data": ...}`` with ``as_json`` (see :func:`to_jsonable`).

    In the plain form the value is ``str(data)``, as the default ``process`` callback prints
    it, with newlines and carriage returns shown as ``\\n`` and ``\\r`` to keep one line.
    """
    if as_json:
        return json.dumps({"tag": tag or None, "data": to_jsonable(data)}, ensure_ascii=False)
    text = str(data)
    if "\n" in text or "\r" in text:
        text = text.replace("\n", "\\n").replace("\r", "\\r")
    return "%s: %s" % (tag, text) if tag else text


def _emit(line: str, stream: Any = None) -> None:
    """Write one line and flush; characters the stream cannot encode are escaped."""
    stream = sys.stdout if stream is None else stream
    try:
        stream.write(line + "\n")
    except UnicodeEncodeError:
        encoding = getattr(stream, "encoding", None) or "ascii"
        stream.write(line.encode(encoding, "backslashreplace").decode(encoding, "replace") + "\n")
    stream.flush()


def _note(message: str) -> None:
    """A line on standard error, ``hein: MESSAGE``."""
    try:
        _emit("hein: %s" % message, sys.stderr)
    except (OSError, ValueError):  # pragma: no cover - stderr closed
        pass


# ---------------------------------------------------------------------------------- input


class _BadTypedValue(Exception):
    """A ``{"$bytes": ...}``-style object whose value does not parse."""


class _NotJSON(ValueError):
    pass


def _parse_datetime(text: str) -> _dt.datetime:
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    return _dt.datetime.fromisoformat(text)


def _parse_time(text: str) -> _dt.time:
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    return _dt.time.fromisoformat(text)


_TYPED_INPUT: Dict[str, Callable[[str], Any]] = {
    "$bytes": lambda text: base64.b64decode(text, validate=True),
    "$datetime": _parse_datetime,
    "$date": _dt.date.fromisoformat,
    "$time": _parse_time,
    "$float": float,
}


def _typed_object(pairs: List[Tuple[str, Any]]) -> Any:
    if len(pairs) == 1 and pairs[0][0] in _TYPED_INPUT:
        key, text = pairs[0]
        if not isinstance(text, str):
            raise _BadTypedValue("%s wants a string, not %s" % (key, json.dumps(text)))
        try:
            return _TYPED_INPUT[key](text)
        except (ValueError, TypeError) as error:
            raise _BadTypedValue("bad %s value %r: %s" % (key, text, error)) from None
    return dict(pairs)


def _reject_constant(name: str) -> Any:
    raise _NotJSON(name)


def parse_message(text: str) -> Any:
    """The value ``hein tell`` sends for one message given as text.

    JSON when the text parses as JSON (strict JSON: ``NaN`` and ``Infinity`` are text), with
    these one-key objects read as typed values: ``{"$bytes": BASE64}``, ``{"$datetime": ISO}``,
    ``{"$date": ISO}``, ``{"$time": ISO}`` (a trailing ``Z`` means UTC) and
    ``{"$float": "nan" | "inf" | "-inf"}``. Any other text is sent as a string.

    Raises:
        ValueError: a typed object whose value does not parse (e.g. bad base64).
    """
    try:
        return json.loads(text, object_pairs_hook=_typed_object, parse_constant=_reject_constant)
    except _BadTypedValue as error:
        raise ValueError(str(error)) from None
    except (ValueError, RecursionError):
        return text


# -------------------------------------------------------------------------------- logging


def _setup_logging(verbosity: int) -> None:
    global _log_handler
    if verbosity <= 0:
        return
    logger = logging.getLogger("hein")
    if _log_handler is not None:
        logger.removeHandler(_log_handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbosity == 1 else logging.DEBUG)
    _log_handler = handler


# --------------------------------------------------------------------------------- listen


def _why_not_connected(host: str, port: int) -> str:
    try:
        probe = socket.create_connection((host, port), timeout=1.0)
    except socket.timeout:
        return "connection timed out"
    except OSError as error:
        return (error.strerror or str(error)).lower()
    probe.close()
    return "a transmitter answers but did not register this receiver (name in use, or full)"


class _SignalWaker:
    """Lets the main thread sleep until another thread, SIGINT or SIGTERM wakes it.

    The signal handlers only record the signal (no lock is taken in a handler); the signal's
    wakeup fd and :meth:`wake` write to a socketpair that :meth:`wait` selects on.
    """

    def __init__(self) -> None:
        self.signalled = False
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._previous: Dict[int, Any] = {}
        self._previous_fd: Optional[int] = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signalled = True

    def wake(self) -> None:
        try:
            self._writer.send(b"\0")
        except OSError:  # full (a wake is pending anyway) or closed
            pass

    def wait(self, timeout: Optional[float]) -> None:
        select.select([self._reader], [], [], timeout)
        try:
            while self._reader.recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        if self._previous_fd is not None:
            signal.set_wakeup_fd(self._previous_fd)
            self._previous_fd = None
        self._reader.close()
        self._writer.close()


def cmd_listen(args: argparse.Namespace) -> int:
    host, port = args.host, args.port
    try:
        socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    except OSError as error:
        raise CLIError("cannot resolve host %r: %s" % (host, error.strerror or error)) from None

    waker = _SignalWaker()
    connected = threading.Event()
    reasons: List[str] = []
    lock = threading.Lock()
    received = [0]

    def stop(reason: str) -> None:
        reasons.append(reason)
        waker.wake()

    def on_message(data: Any, tag: Optional[str]) -> None:
        with lock:
            if reasons or (args.count and received[0] >= args.count):
                return
            try:
                _emit(format_message(data, tag, args.json))
            except (BrokenPipeError, ValueError):  # the reader went away, or stdout closed
                stop("pipe")
                return
            received[0] += 1
            if args.count and received[0] >= args.count:
                stop("count")

    def on_connection() -> None:
        connected.set()
        waker.wake()

    receiver = None
    try:
        waker.install()
        try:
            receiver = SocReceiver(
                port, args.name, connect=False, connectWait=args.retry, hostname=host
            )
        except (TypeError, ValueError) as error:
            raise CLIError(str(error)) from None
        receiver.process = on_message  # type: ignore[method-assign]
        receiver._newconnection = on_connection  # type: ignore[method-assign]
        receiver.connect()
        deadline = None if args.timeout is None else time.monotonic() + args.timeout
        while not reasons and not waker.signalled:
            if deadline is not None and not connected.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    receiver.close()
                    raise CLIError(
                        "not connected to a transmitter at %s:%d within %g s: %s"
                        % (host, port, args.timeout, _why_not_connected(host, port))
                    )
                waker.wait(remaining)
            else:
                waker.wait(None)
    finally:
        if receiver is not None:
            receiver.close()
        waker.close()
    if "pipe" in reasons:
        try:  # nothing more can be written: keep the interpreter quiet at exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):  # pragma: no cover
            pass
    return EXIT_OK


# ----------------------------------------------------------------------------------- tell


def _start_transmitter(
    port: int,
    nreceivermax: int,
    hosts: Optional[Sequence[str]],
    allow_remote: bool,
    on_new: Callable[[str], None],
    on_dropped: Callable[[str], None],
) -> SocTransmitter:
    try:
        transmitter = SocTransmitter(
            port,
            nreceivermax,
            start=False,
            host=list(hosts) if hosts else None,
            allow_remote=allow_remote,
        )
    except (TypeError, ValueError) as error:
        raise CLIError(str(error)) from None
    transmitter._newconnection = on_new  # type: ignore[method-assign,assignment]
    transmitter._dropped = on_dropped  # type: ignore[method-assign,assignment]
    try:
        transmitter.start()
    except OSError as error:
        message = error.strerror or str(error)
        if "port" not in message:
            message = "cannot listen on port %d: %s" % (port, message)
        raise CLIError(message) from None
    return transmitter


def _arg_value(text: str, raw: bool) -> Any:
    """What to send for one MESSAGE argument (raises ValueError for a bad typed object)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in argv: send them as they are
        return os.fsencode(text)
    return text.encode("utf-8") if raw else parse_message(text)


def _line_value(line: bytes, raw: bool) -> Any:
    """What to send for one line of standard input (raises ValueError for a bad typed object)."""
    if raw:
        return line
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return line
    return parse_message(text)


def cmd_tell(args: argparse.Namespace) -> int:
    raw = args.raw
    values: List[Any] = []
    for number, text in enumerate(args.messages, 1):
        try:
            value = _arg_value(text, raw)
        except ValueError as error:
            raise CLIError("message %d: %s" % (number, error)) from None
        if raw and not value:
            raise CLIError("message %d: --raw cannot send an empty message" % number)
        values.append(value)

    changed = threading.Event()

    def on_new(name: str) -> None:
        if args.verbose:
            _emit("hello: %s" % name, sys.stderr)
        changed.set()

    def on_dropped(name: str) -> None:
        if args.verbose:
            _emit("goodbye: %s" % name, sys.stderr)

    transmitter = _start_transmitter(
        args.port,
        max(args.max_receivers, args.wait_receivers, 1),
        args.host,
        args.allow_remote,
        on_new,
        on_dropped,
    )
    skipped = 0
    try:
        if args.port == 0:
            _note("listening on port %d" % transmitter.port)
        wanted = args.wait_receivers
        deadline = time.monotonic() + args.timeout
        while transmitter.nreceivers < wanted:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CLIError(
                    "%d of %d receiver%s connected to port %d within %g s"
                    % (
                        transmitter.nreceivers,
                        wanted,
                        "" if wanted == 1 else "s",
                        transmitter.port,
                        args.timeout,
                    )
                )
            changed.wait(remaining)
            changed.clear()

        def send(value: Any) -> None:
            if raw:
                ok = transmitter.tell_raw(value, tag=args.tag)
            else:
                ok = transmitter.tell(value, tag=args.tag)
            if not ok:
                raise CLIError("the transmitter stopped; message not sent")

        if args.messages:
            for value in values:
                send(value)
        else:
            stdin = sys.stdin.buffer
            if stdin.isatty():
                _note("reading messages from standard input, one per line (Ctrl-D to end)")
            for number, line in enumerate(stdin, 1):
                line = line.rstrip(b"\r\n")
                if not line.strip():
                    continue
                try:
                    value = _line_value(line, raw)
                except ValueError as error:
                    _note("warning: line %d skipped: %s" % (number, error))
                    skipped += 1
                    continue
                send(value)
        if not transmitter.flush(args.timeout):
            raise CLIError("messages not all written to the receivers within %g s" % args.timeout)
    finally:
        transmitter.close()
    if skipped:
        raise CLIError("%d line%s skipped" % (skipped, "" if skipped == 1 else "s"))
    return EXIT_OK


# ----------------------------------------------------------------------------------- demo

#: The receivers of the demo, in display order, with how many messages each one waits for.
_DEMO_RECEIVERS = (("Captain", 4), ("Tennille", 3))


def _child_env() -> Dict[str, str]:
    """The environment for a child ``python -m hein``: this very hein package first on the path."""
    env = dict(os.environ)
    parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


class _Demo:
    """The state of ``hein demo``; only the main thread prints."""

    def __init__(self, timeout: float, verbose: int) -> None:
        self.timeout = timeout
        self.verbose = verbose
        self.events: queue.Queue[Tuple[str, str, Optional[str]]] = queue.Queue()
        self.pending: Dict[str, List[str]] = {name: [] for name, _ in _DEMO_RECEIVERS}
        self.hello: List[str] = []
        self.left: List[str] = []
        self.ended: List[str] = []
        self.procs: Dict[str, subprocess.Popen[bytes]] = {}
        self.threads: List[threading.Thread] = []

    def say(self, who: str, text: str) -> None:
        _emit("[%s] %s" % (who, text))

    def spawn(self, name: str, port: int, count: int) -> None:
        command = [
            sys.executable,
            "-m",
            "hein",
            "listen",
            str(port),
            "--name",
            name,
            "--host",
            "127.0.0.1",
            "--count",
            str(count),
            "--timeout",
            "%g" % self.timeout,
        ] + ["-v"] * self.verbose
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=_child_env(),
        )
        self.procs[name] = proc
        thread = threading.Thread(target=self._read, args=(name, proc), daemon=True)
        thread.start()
        self.threads.append(thread)

    def _read(self, name: str, proc: "subprocess.Popen[bytes]") -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.events.put(("line", name, line.decode("utf-8", "replace").rstrip("\r\n")))
        self.events.put(("eof", name, None))

    def handle(self, event: Tuple[str, str, Optional[str]]) -> None:
        kind, name, text = event
        if kind == "line":
            self.pending[name].append(text or "")
        elif kind == "eof":
            self.ended.append(name)
        elif kind == "hello":
            self.hello.append(name)
            self.say("transmitter", "hello: %s" % name)
        elif kind == "left":
            self.left.append(name)

    def show(self) -> None:
        """Print what the receivers printed so far, receiver by receiver."""
        for name, _ in _DEMO_RECEIVERS:
            lines, self.pending[name] = self.pending[name], []
            for line in lines:
                self.say(name, line)

    def wait(self, done: Callable[[], bool], what: str, watch: Sequence[str] = ()) -> None:
        """Handle events until ``done()``; error out after the timeout, or when one of the
        ``watch`` receivers ends first."""
        deadline = time.monotonic() + self.timeout
        while not done():
            for name in watch:
                if name in self.ended:
                    self.show()
                    code = self.procs[name].wait()
                    raise CLIError(
                        "receiver %s exited (status %d) while waiting for %s" % (name, code, what)
                    )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.show()
                raise CLIError("timed out after %g s waiting for %s" % (self.timeout, what))
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            self.handle(event)

    def wait_hello(self, name: str) -> None:
        self.wait(lambda: name in self.hello, "receiver %s to connect" % name, [name])

    def step(self, code: str, targets: Sequence[str]) -> None:
        """Print the transmitter's ``code`` (already run), then each target's line."""
        self.say("transmitter", ">>> " + code)
        self.wait(
            lambda: all(self.pending[name] for name in targets),
            "every receiver to print the message",
            targets,
        )
        self.show()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:  # pragma: no cover
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        for thread in self.threads:
            thread.join(1.0)


def cmd_demo(args: argparse.Namespace) -> int:
    demo = _Demo(args.timeout, args.verbose)
    names = [name for name, _ in _DEMO_RECEIVERS]
    transmitter = _start_transmitter(
        args.port,
        len(names),
        ["127.0.0.1"],
        False,
        lambda name: demo.events.put(("hello", name, None)),
        lambda name: demo.events.put(("left", name, None)),
    )
    try:
        port = transmitter.port
        _emit(
            "hein demo: a transmitter (this process) on 127.0.0.1:%d and two receivers, %s,"
            " each in its own process (hein listen)" % (port, " and ".join(names))
        )
        demo.say(
            "transmitter",
            ">>> t = hein.SocTransmitter(port=%d, nreceivermax=%d)" % (port, len(names)),
        )
        for name, count in _DEMO_RECEIVERS:
            demo.spawn(name, port, count)
        for name in names:
            demo.wait_hello(name)

        when = _dt.datetime(2017, 6, 1, 12, tzinfo=pytz.utc)
        value: Any = {"pi": 3.14, "when": when, "raw": b"\x00\x01"}
        transmitter.tell(value)
        demo.step("t.tell(%r)" % value, names)

        transmitter.tell_raw("some text", tag="news")
        demo.step("t.tell_raw('some text', tag='news')", names)

        now = _dt.datetime.now(pytz.utc).replace(microsecond=0)
        value = {"foo": "bar", "now": now, "n": 42, "b": b"bytes"}
        transmitter.tell(value, tag="status")
        demo.step("t.tell(%r, tag='status')" % value, names)

        leaving, staying = names[1], names[0]
        demo.wait(
            lambda: leaving in demo.left and leaving in demo.ended,
            "receiver %s to leave" % leaving,
        )
        code = demo.procs[leaving].wait()
        if code != 0:
            raise CLIError("receiver %s exited with status %d" % (leaving, code))
        demo.say(leaving, "(exits after %d messages)" % dict(_DEMO_RECEIVERS)[leaving])
        demo.say("transmitter", ">>> t.ping()")
        demo.say("transmitter", repr(transmitter.ping()))

        value = ["only", staying, "hears", "this"]
        transmitter.tell(value)
        demo.step("t.tell(%r)" % (value,), [staying])
        demo.wait(lambda: staying in demo.ended, "receiver %s to exit" % staying)
        code = demo.procs[staying].wait()
        if code != 0:
            raise CLIError("receiver %s exited with status %d" % (staying, code))
        demo.say(staying, "(exits after %d messages)" % dict(_DEMO_RECEIVERS)[staying])
        transmitter.close()
        demo.say("transmitter", ">>> t.close()")
        _emit("demo done: every receiver got every message, with its type")
    finally:
        transmitter.close()
        demo.stop()
    return EXIT_OK


# ---------------------------------------------------------------------------------- bench


def find_benchmarks(
    env: Optional[Mapping[str, str]] = None,
    package_dir: Optional[Path] = None,
    cwd: Optional[Path] = None,
) -> Tuple[Optional[Path], List[Path]]:
    """Find the benchmark runner: ``(path or None, the paths looked at)``.

    ``$HEIN_BENCHMARKS`` (a ``run.py`` or a directory holding one) when set; else
    ``benchmarks/run.py`` next to the ``hein`` package (a source checkout), then in ``cwd``.
    """
    env = os.environ if env is None else env
    override = env.get(BENCH_ENV)
    if override:
        path = Path(override)
        if path.is_dir():
            path = path / "run.py"
        return (path if path.is_file() else None), [path]
    package_dir = Path(__file__).resolve().parent if package_dir is None else package_dir
    cwd = Path.cwd() if cwd is None else cwd
    candidates: List[Path] = []
    for base in (package_dir.parent, cwd):
        path = base / "benchmarks" / "run.py"
        if path not in candidates:
            candidates.append(path)
    for path in candidates:
        if path.is_file():
            return path, candidates
    return None, candidates


def cmd_bench(args: argparse.Namespace) -> int:
    script, looked = find_benchmarks()
    if script is None:
        raise CLIError(
            "no benchmark suite found (looked for %s); it comes with the source checkout,"
            " or set %s" % (", ".join(str(path) for path in looked), BENCH_ENV)
        )
    proc = subprocess.Popen([sys.executable, str(script), *args.args])
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.wait()
        return EXIT_INTERRUPTED


# --------------------------------------------------------------------------------- bridge

#: Where ``hein bridge`` connects by default.
_BRIDGE_NATS_URL = "nats://127.0.0.1:4222"
#: Seconds between two checks that the bridge's thread still runs.
_BRIDGE_POLL = 0.5


def _import_bridge() -> Any:
    """``hein.bridge``, imported only here: the rest of hein never imports nats-py."""
    try:
        from . import bridge
    except ImportError as error:
        raise CLIError("hein bridge needs nats-py: pip install 'hein[nats]' (%s)" % error) from None
    return bridge


def _nats_urls(values: Optional[List[str]]) -> List[str]:
    urls = [url.strip() for value in values or [] for url in value.split(",") if url.strip()]
    return urls or [_BRIDGE_NATS_URL]


def _nats_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The NATS keywords of the bridges from the command line (credentials, TLS)."""
    password = args.password if args.password is not None else os.environ.get("NATS_PASSWORD")
    token = args.token if args.token is not None else os.environ.get("NATS_TOKEN")
    if password is not None and args.user is None:
        raise CLIError("--password (or $NATS_PASSWORD) needs --user", EXIT_USAGE)
    if token is not None and args.user is not None:
        raise CLIError("give --token or --user/--password, not both", EXIT_USAGE)
    if args.creds is not None and not os.path.isfile(args.creds):
        raise CLIError("--creds %s: no such file" % args.creds)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise CLIError("--tls-cert and --tls-key go together", EXIT_USAGE)
    context = None
    if args.tls_ca or args.tls_cert:
        try:
            context = ssl.create_default_context(cafile=args.tls_ca)
            if args.tls_cert:
                context.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as error:
            raise CLIError("TLS files: %s" % error) from None
    return {
        "user": args.user,
        "password": password,
        "token": token,
        "creds": args.creds,
        "tls": context,
        "tls_hostname": args.tls_hostname,
        "bridge_id": args.bridge_id,
        "stats_interval": args.stats,
    }


def _run_bridge(make: Callable[[], Any], started: Callable[[Any], str]) -> int:
    """Make the bridge, say so, and run it until Ctrl-C or SIGTERM (exit status 0)."""
    waker = _SignalWaker()
    bridge: Any = None
    try:
        waker.install()
        try:
            bridge = make()
        except (TypeError, ValueError) as error:
            raise CLIError(str(error)) from None
        except OSError as error:
            raise CLIError(error.strerror or str(error)) from None
        _note(started(bridge))
        announced = False
        while not waker.signalled:
            if not bridge.running:
                raise CLIError("the bridge stopped (run with -v to see why)")
            if not announced and bridge.connected:
                announced = True
                _note("connected to NATS at %s" % bridge.nats_url)
            waker.wait(_BRIDGE_POLL)
    finally:
        if bridge is not None:
            bridge.close()
            counts = bridge.stats()
            _note(
                "bridge stopped: %s"
                % ", ".join(
                    "%s %d" % (key, counts[key])
                    for key in ("received", "forwarded", "dropped", "lost", "missed", "reconnects")
                    if key in counts
                )
            )
        waker.close()
    return EXIT_OK


def cmd_bridge_to_nats(args: argparse.Namespace) -> int:
    module = _import_bridge()
    options = _nats_options(args)
    urls = _nats_urls(args.nats)

    def make() -> Any:
        return module.HeinToNats(
            args.port,
            urls,
            prefix=args.prefix,
            name=args.name,
            host=args.host,
            tags=args.tag,
            queue_size=args.queue_size,
            stream=args.stream,
            **options,
        )

    def started(bridge: Any) -> str:
        return "bridging the transmitter at %s:%d to NATS (%s) on %s.TAG as %r; Ctrl-C stops" % (
            args.host,
            args.port,
            ", ".join(urls),
            args.prefix,
            args.name,
        )

    return _run_bridge(make, started)


def cmd_bridge_from_nats(args: argparse.Namespace) -> int:
    module = _import_bridge()
    options = _nats_options(args)
    urls = _nats_urls(args.nats)

    def make() -> Any:
        return module.NatsToHein(
            urls,
            subjects=args.subject or ["hein.>"],
            port=args.port,
            nreceivermax=args.max_receivers,
            name=args.name,
            host=list(args.host) if args.host else None,
            allow_remote=args.allow_remote,
            ignore_origins=args.ignore_origin or (),
            stream=args.stream,
            durable=args.durable,
            deliver=args.deliver,
            **options,
        )

    def started(bridge: Any) -> str:
        return "bridging NATS (%s) subjects %s to the receivers of port %d; Ctrl-C stops" % (
            ", ".join(urls),
            " ".join(bridge.subjects),
            bridge.port,
        )

    return _run_bridge(make, started)


def _add_nats_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nats",
        action="append",
        metavar="URL",
        help="a NATS server URL (repeatable, or comma-separated: the cluster's servers, for "
        "failover; tls://... for TLS; default: %s)" % _BRIDGE_NATS_URL,
    )
    parser.add_argument("--user", help="NATS user name")
    parser.add_argument("--password", help="NATS password (or $NATS_PASSWORD)")
    parser.add_argument("--token", help="NATS authentication token (or $NATS_TOKEN)")
    parser.add_argument("--creds", metavar="FILE", help="a NATS .creds file (JWT and NKey)")
    parser.add_argument("--tls-ca", metavar="FILE", help="CA certificates to verify NATS with")
    parser.add_argument("--tls-cert", metavar="FILE", help="client certificate for NATS (TLS)")
    parser.add_argument("--tls-key", metavar="FILE", help="the client certificate's key")
    parser.add_argument("--tls-hostname", metavar="NAME", help="the name NATS's certificate has")
    parser.add_argument(
        "--name",
        type=_name_type,
        default="nats-bridge",
        help="this bridge's name: its receiver name and NATS connection name "
        "(default: nats-bridge)",
    )
    parser.add_argument(
        "--bridge-id",
        metavar="ID",
        help="stamped on what this bridge publishes (Hein-Origin); a from-nats bridge drops "
        "what carries its own id (default: HOST-PID-RANDOM)",
    )
    parser.add_argument(
        "--stats",
        type=_seconds,
        default=10.0,
        metavar="S",
        help="seconds between two lines of counters, logged at debug level (-vv; default: 10)",
    )


def _add_bridge_parsers(sub: Any, verbose: argparse.ArgumentParser) -> None:
    bridge = sub.add_parser(
        "bridge",
        formatter_class=_FORMATTER,
        help="bridge a stream to or from NATS (needs pip install 'hein[nats]')",
        description="Take a hein stream past one machine through NATS: 'to-nats' listens to a "
        "transmitter as a receiver and publishes each message to NATS; 'from-nats' subscribes "
        "to NATS and re-broadcasts each message to local receivers (hein 0.2.3 ones "
        "included). Both reconnect by themselves; Ctrl-C (or SIGTERM) stops them with exit "
        "status 0. See README 'Scaling past one machine'.",
    )
    bridges = bridge.add_subparsers(
        dest="bridge_command", metavar="DIRECTION", parser_class=_Parser
    )
    bridge.set_defaults(func=lambda args: _usage(bridge))
    to_nats = bridges.add_parser(
        "to-nats",
        parents=[verbose],
        formatter_class=_FORMATTER,
        help="publish a transmitter's messages to NATS",
        description="Connect to the transmitter on PORT as receiver NAME and publish every "
        "message to NATS on PREFIX.TAG (characters of the tag other than A-Z a-z 0-9 _ - as "
        "~XX, e.g. 'temp.in' -> temp~2Ein; untagged messages on PREFIX.~untagged), the payload "
        "unchanged, the kind and unpack flag in the headers Hein-Kind and Hein-Unpack.",
        epilog="example:\n  hein bridge to-nats 50007 --nats nats://127.0.0.1:4222 --prefix hein",
    )
    to_nats.add_argument(
        "port", metavar="PORT", type=_port_type(False), help="the transmitter's port"
    )
    to_nats.add_argument(
        "--host", default="127.0.0.1", help="the transmitter's host (default: 127.0.0.1)"
    )
    to_nats.add_argument("--prefix", default="hein", help="the subject prefix (default: hein)")
    to_nats.add_argument(
        "--tag",
        action="append",
        metavar="PREFIX",
        help="forward only the tags that start with PREFIX (repeatable; default: everything)",
    )
    to_nats.add_argument(
        "--queue-size",
        type=_count_type(1),
        default=10000,
        metavar="N",
        help="messages the bridge holds while NATS is slow or away before it drops them "
        "(default: 10000)",
    )
    to_nats.add_argument(
        "--stream",
        metavar="NAME",
        help="keep what is published in this JetStream stream (made for PREFIX.> if missing)",
    )
    _add_nats_options(to_nats)
    to_nats.set_defaults(func=cmd_bridge_to_nats)

    from_nats = bridges.add_parser(
        "from-nats",
        parents=[verbose],
        formatter_class=_FORMATTER,
        help="re-broadcast NATS messages to local receivers",
        description="Subscribe to the NATS SUBJECTs and re-broadcast every message through a "
        "transmitter on PORT, with the tag taken from the subject's last token and the kind "
        "and unpack flag from the headers: receivers get what the remote tell() sent. NATS "
        "messages without hein headers go out as raw messages.",
        epilog="example:\n  hein bridge from-nats 50008 --nats nats://127.0.0.1:4222 "
        "--subject 'hein.>'\n  hein listen 50008 --name far-away",
    )
    from_nats.add_argument(
        "port",
        metavar="PORT",
        type=_port_type(True),
        help="the port to transmit on (0: any free one, printed)",
    )
    from_nats.add_argument(
        "--subject",
        action="append",
        metavar="SUBJECT",
        help="a NATS subject to subscribe to, wildcards allowed (repeatable; default: hein.>)",
    )
    from_nats.add_argument(
        "--host",
        action="append",
        metavar="HOST",
        help="an address to listen on (repeatable; default: 127.0.0.1 and this machine's address)",
    )
    from_nats.add_argument(
        "--allow-remote",
        action="store_true",
        help="accept receivers from other machines (default: this machine only)",
    )
    from_nats.add_argument(
        "--max-receivers",
        type=_count_type(1),
        default=_TELL_MAX_RECEIVERS,
        metavar="M",
        help="the most receivers at once (default: %d)" % _TELL_MAX_RECEIVERS,
    )
    from_nats.add_argument(
        "--ignore-origin",
        action="append",
        metavar="ID",
        help="also drop what the bridge with this id published (repeatable)",
    )
    from_nats.add_argument(
        "--stream",
        metavar="NAME",
        help="consume through JetStream from this stream (made for the subjects if missing), "
        "once a first receiver is registered; messages are acknowledged once told",
    )
    from_nats.add_argument(
        "--durable",
        metavar="NAME",
        help="with --stream: a durable consumer, which resumes where it left off",
    )
    from_nats.add_argument(
        "--deliver",
        choices=["all", "new", "last", "last_per_subject"],
        default="all",
        help="with --stream: where a new consumer starts (default: all, the whole stream)",
    )
    _add_nats_options(from_nats)
    from_nats.set_defaults(func=cmd_bridge_from_nats)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


# ---------------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """Usage errors exit with status 2; with ``intermixed`` set, options and positionals may
    come in any order (``hein tell 5000 --tag news hello``)."""

    intermixed = False
    _parsing = False

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, "%s: error: %s\n" % (self.prog, message))

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if not self.intermixed or self._parsing:  # the intermixed parse calls back here (< 3.12)
            return super().parse_known_args(args, namespace)
        self._parsing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._parsing = False


_FORMATTER = argparse.RawDescriptionHelpFormatter


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hein``."""
    verbose = _Parser(add_help=False)
    verbose.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="log what hein does to standard error (-vv: debug)",
    )
    parser = _Parser(
        prog="hein",
        description="hein: brokerless one-to-many messaging. Watch a stream, send messages, "
        "see it work.",
        epilog="Run 'hein COMMAND --help' for the options of each command.\n\n"
        "Exit status: 0 success, 1 error, 2 usage error, 130 interrupted.",
        formatter_class=_FORMATTER,
    )
    parser.add_argument("--version", action="version", version="hein %s" % __version__)
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log what hein does to standard error (-vv: debug)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    listen = sub.add_parser(
        "listen",
        parents=[verbose],
        formatter_class=_FORMATTER,
        help="print the messages of a transmitter as they arrive",
        description="Connect to the transmitter on PORT as receiver NAME and print each message "
        "as it arrives, one line each: 'TAG: value' ('value' when untagged), as the default "
        "process callback prints it (newlines inside a message shown as \\n). The receiver "
        "reconnects whenever the transmitter goes away and comes back. Ctrl-C (or SIGTERM) "
        "stops it with exit status 0.",
        epilog='With --json each line is a JSON object {"tag": TAG or null, "data": ...}:\n'
        "  datetime, date, time -> ISO 8601 strings (isoformat(), with the UTC offset\n"
        '                          when aware), e.g. "2017-06-01T12:00:00+00:00"\n'
        '  bytes                -> {"$bytes": "BASE64"}, e.g. {"$bytes": "AAE="}\n'
        '  tuple -> list; NaN and infinities -> {"$float": "nan"|"inf"|"-inf"}\n'
        "  raw messages (tell_raw) arrive as bytes.\n\n"
        "example:\n"
        "  hein listen 50007 --name Captain --json | jq .data",
    )
    listen.add_argument(
        "port", metavar="PORT", type=_port_type(False), help="the transmitter's port"
    )
    listen.add_argument(
        "--name",
        required=True,
        type=_name_type,
        help="this receiver's name (1 to 15 bytes of UTF-8)",
    )
    listen.add_argument(
        "--host", default="127.0.0.1", help="the transmitter's host (default: 127.0.0.1)"
    )
    listen.add_argument("--json", action="store_true", help="print JSON lines (see below)")
    listen.add_argument(
        "--count",
        type=_count_type(1),
        metavar="N",
        help="exit (status 0) after N messages (default: run until interrupted)",
    )
    listen.add_argument(
        "--timeout",
        type=_seconds,
        metavar="S",
        help="exit with status 1 if not connected within S seconds (default: wait forever)",
    )
    listen.add_argument(
        "--retry",
        type=_seconds,
        metavar="S",
        default=_LISTEN_RETRY,
        help="seconds between connection attempts (default: %g)" % _LISTEN_RETRY,
    )
    listen.set_defaults(func=cmd_listen)

    tell = sub.add_parser(
        "tell",
        parents=[verbose],
        formatter_class=_FORMATTER,
        help="send messages to every receiver",
        description="Listen on PORT as a transmitter, wait until N receivers are registered, "
        "send each MESSAGE (or, with no MESSAGE, each line of standard input as it comes; "
        "blank lines are skipped) to all of them, make sure it is written, and exit. Each "
        "message is sent as JSON when it parses as strict JSON (so 42 is an int, "
        "'{\"a\": [1, 2]}' a dict, '\"42\"' a string), else as a string; --raw sends the bytes "
        "as they are (tell_raw).",
        epilog="Typed values in JSON messages (one-key objects):\n"
        '  {"$bytes": "BASE64"}, {"$datetime": "2017-06-01T12:00:00+00:00"},\n'
        '  {"$date": "2017-06-01"}, {"$time": "12:00:00"}, {"$float": "nan"}\n'
        "  (ISO 8601 as datetime.fromisoformat reads it; a trailing Z means UTC).\n"
        "A bad typed value is an error for a MESSAGE argument, and skips the line (warning,\n"
        "exit status 1 at the end) on standard input.\n\n"
        "examples:\n"
        '  hein tell 50007 hello 42 \'{"when": {"$datetime": "2017-06-01T12:00Z"}}\'\n'
        "  tail -f app.log | hein tell 50007 --raw --tag log --wait-receivers 0",
    )
    tell.intermixed = True
    tell.add_argument(
        "port",
        metavar="PORT",
        type=_port_type(True),
        help="the port to listen on (0: any free one, printed)",
    )
    tell.add_argument("messages", metavar="MESSAGE", nargs="*", help="the messages to send")
    tell.add_argument("--tag", type=_tag_type, help="tag every message with TAG")
    tell.add_argument("--raw", action="store_true", help="send the text as raw bytes (tell_raw)")
    tell.add_argument(
        "--wait-receivers",
        type=_count_type(0),
        default=1,
        metavar="N",
        help="wait until N receivers are registered before sending (default: 1; 0: do not wait)",
    )
    tell.add_argument(
        "--timeout",
        type=_seconds,
        default=_TELL_TIMEOUT,
        metavar="S",
        help="seconds to wait for the receivers, then for the messages to be written, before "
        "failing with exit status 1 (default: %g)" % _TELL_TIMEOUT,
    )
    tell.add_argument(
        "--host",
        action="append",
        metavar="HOST",
        help="an address to listen on (repeatable; default: 127.0.0.1 and this machine's address)",
    )
    tell.add_argument(
        "--allow-remote",
        action="store_true",
        help="accept receivers from other machines (default: this machine only)",
    )
    tell.add_argument(
        "--max-receivers",
        type=_count_type(1),
        default=_TELL_MAX_RECEIVERS,
        metavar="M",
        help="the most receivers at once (default: %d)" % _TELL_MAX_RECEIVERS,
    )
    tell.set_defaults(func=cmd_tell)

    demo = sub.add_parser(
        "demo",
        parents=[verbose],
        formatter_class=_FORMATTER,
        help="see it work: a transmitter and two receivers in their own processes",
        description="The README's three-terminal example in one command: this process is the "
        "transmitter; receivers %s each run 'hein listen' in their own process. Every message "
        "is shown as each receiver printed it, prefixed with its name. Exit status 0 when "
        "every receiver got every message." % " and ".join(name for name, _ in _DEMO_RECEIVERS),
    )
    demo.add_argument(
        "--port",
        type=_port_type(True),
        default=0,
        help="the port on 127.0.0.1 (default: 0, any free one)",
    )
    demo.add_argument(
        "--timeout",
        type=_seconds,
        default=_DEMO_TIMEOUT,
        metavar="S",
        help="seconds each step may take before the demo fails (default: %g)" % _DEMO_TIMEOUT,
    )
    demo.set_defaults(func=cmd_demo)

    bench = sub.add_parser(
        "bench",
        formatter_class=_FORMATTER,
        help="run the benchmark suite (source checkout only)",
        description="Run the benchmark suite, benchmarks/run.py, passing ARGS through; exit with "
        "its status. It is looked for next to the hein package (a source checkout), then in "
        "the current directory; $%s (a run.py or its directory) overrides both. "
        "'hein bench -- --help' shows the suite's own help." % BENCH_ENV,
    )
    bench.add_argument("args", metavar="ARGS", nargs="*", help="arguments for benchmarks/run.py")
    bench.set_defaults(func=cmd_bench)
    _add_bridge_parsers(sub, verbose)
    return parser


def _split_bench(argv: List[str]) -> Optional[Tuple[List[str], List[str]]]:
    """``(hein's arguments, the suite's arguments)`` when the command is ``bench``."""
    for index, token in enumerate(argv):
        if token.startswith("-"):
            continue
        if token != "bench":
            return None
        rest = argv[index + 1 :]
        if rest[:1] in (["-h"], ["--help"]):
            return None
        if rest[:1] == ["--"]:
            rest = rest[1:]
        return argv[: index + 1], rest
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``hein`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        split = _split_bench(argv)
        if split is not None:
            args = parser.parse_args(split[0])
            args.args = split[1]
        else:
            args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        args.verbose = getattr(args, "verbose", 0) or 0
        _setup_logging(args.verbose)
        return int(args.func(args))
    except CLIError as error:
        _note("error: %s" % error)
        return error.code
    except KeyboardInterrupt:
        _note("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):  # pragma: no cover
            pass
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
