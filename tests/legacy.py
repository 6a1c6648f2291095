"""Helpers to use the legacy hein 0.2.3 from the tests.

hein 0.2.3 installs a package also named ``hein``, so it lives in its own virtual environment,
``<repo>/.legacy-venv``, and the tests talk to it through child processes only:

- :func:`legacy_python` returns that environment's interpreter, creating the environment first if
  needed (under a file lock, so that parallel test processes create it once);
- :class:`LegacyCodec` runs ``legacy_scripts/codec_server.py`` under that interpreter, once, and
  asks it to serialize (``json_dumps``) or deserialize (``json_loads``) values with the legacy code.

The codec protocol, over the child's stdin/stdout: each message is an 8-byte big-endian length
followed by that many bytes of pickle. Requests are ``(op, argument)`` tuples; every reply is an
``(ok, result)`` tuple, where ``result`` is the legacy return value when ``ok`` is true and the
``repr`` of the legacy exception otherwise. The first reply, sent unasked, describes the server.
"""

import functools
import hashlib
import json
import os
import pickle
import select
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

__all__ = [
    "LEGACY_VENV",
    "LegacyCodec",
    "LegacyCodecError",
    "LegacyUnavailable",
    "legacy_python",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Where the legacy environment lives (ignored by git).
LEGACY_VENV = REPO_ROOT / ".legacy-venv"
#: What the legacy environment holds.
LEGACY_REQUIREMENTS = ("hein==0.2.3", "byt", "pytz")
LEGACY_VERSION = "0.2.3"
CODEC_SERVER = Path(__file__).resolve().parent / "legacy_scripts" / "codec_server.py"

#: Bound on creating the environment (python -m venv, pip install), in seconds.
VENV_CREATE_TIMEOUT = 600.0
#: Bound on checking that the environment works, in seconds.
VENV_CHECK_TIMEOUT = 60.0
#: Bound on the codec server's start (interpreter start, imports, hello), in seconds.
START_TIMEOUT = 60.0
#: Bound on one codec request, in seconds.
REQUEST_TIMEOUT = 60.0
#: Bound on the codec server's exit after its stdin is closed, in seconds.
CLOSE_TIMEOUT = 5.0

_HEADER = struct.Struct(">Q")
_PICKLE_PROTOCOL = 4
# At most this many bytes per os.write to the server's stdin: a pipe that select() reports
# writable accepts PIPE_BUF bytes without blocking.
_WRITE_CHUNK = getattr(select, "PIPE_BUF", 512)

# Run in the legacy interpreter, from a directory outside the repository: it must find the legacy
# package, not ours.
_CHECK_SCRIPT = (
    "import json, hein, hein.core, byt, pytz; "
    "print(json.dumps({'version': hein.__version__, 'file': hein.__file__}))"
)


class LegacyUnavailable(RuntimeError):
    """The legacy environment cannot be created, or does not work."""


class LegacyCodecError(Exception):
    """The legacy code raised; the message is the ``repr`` of its exception."""


def _venv_python(venv: Path) -> Path:
    if os.name == "nt":  # pragma: no cover - the tests run on POSIX
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def _check_legacy(python: Path) -> Optional[str]:
    """Return None if ``python`` imports hein 0.2.3 from outside the repository, else why not."""
    if not python.exists():
        return "%s does not exist" % python
    try:
        result = subprocess.run(
            [str(python), "-I", "-c", _CHECK_SCRIPT],
            cwd=tempfile.gettempdir(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=VENV_CHECK_TIMEOUT,
        )
    except (OSError, subprocess.SubprocessError) as error:
        return "cannot run %s: %r" % (python, error)
    if result.returncode != 0:
        return "%s cannot import the legacy hein: %s" % (python, result.stderr.strip()[-2000:])
    try:
        info = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return "unexpected output from %s: %r" % (python, result.stdout[-2000:])
    if info.get("version") != LEGACY_VERSION:
        return "%s has hein %r, not %s" % (python, info.get("version"), LEGACY_VERSION)
    if Path(info["file"]).resolve().parent == REPO_ROOT / "hein":
        return "%s imports the project's hein, not the legacy one" % python
    return None


def _run_step(command: list, what: str) -> None:
    try:
        result = subprocess.run(
            command,
            cwd=tempfile.gettempdir(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=VENV_CREATE_TIMEOUT,
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise LegacyUnavailable("%s failed: %r" % (what, error)) from error
    if result.returncode != 0:
        raise LegacyUnavailable(
            "%s failed (exit status %d): %s\n%s"
            % (what, result.returncode, result.stdout[-2000:], result.stderr[-4000:])
        )


class _FileLock:
    """An exclusive, blocking lock on a file, released on exit (POSIX ``flock``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1

    def __enter__(self) -> "_FileLock":
        self._fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.name == "nt":  # pragma: no cover
                import msvcrt

                msvcrt.locking(self._fd, msvcrt.LK_LOCK, 1)
            else:
                import fcntl

                fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(self._fd)
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        os.close(self._fd)  # closing the descriptor releases the lock


@functools.cache
def legacy_python() -> str:
    """Return the path of the legacy environment's interpreter, creating the environment if needed.

    The environment is ``<repo>/.legacy-venv`` with ``hein==0.2.3``, ``byt`` and ``pytz``; a broken
    one is recreated. Parallel callers (threads or processes) serialize on a lock file in the
    temporary directory, so it is created once.

    Raises:
        LegacyUnavailable: the environment cannot be created (no network, no ``venv``...) or does
            not import hein 0.2.3. The tests that need it fail; they are never skipped.
    """
    python = _venv_python(LEGACY_VENV)
    if _check_legacy(python) is None:
        return str(python)
    # The lock lives outside the environment, which "venv --clear" empties.
    digest = hashlib.sha1(str(LEGACY_VENV).encode("utf-8")).hexdigest()[:16]
    lock = _FileLock(Path(tempfile.gettempdir()) / ("hein-legacy-venv-%s.lock" % digest))
    try:
        lock.__enter__()
    except OSError as error:
        raise LegacyUnavailable("cannot lock %s: %r" % (lock.path, error)) from error
    try:
        if _check_legacy(python) is not None:  # nobody created it while we waited for the lock
            _run_step(
                [sys.executable, "-m", "venv", "--clear", str(LEGACY_VENV)],
                "creating %s" % LEGACY_VENV,
            )
            _run_step(
                [
                    str(python),
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "--quiet",
                    *LEGACY_REQUIREMENTS,
                ],
                "installing %s into %s" % (" ".join(LEGACY_REQUIREMENTS), LEGACY_VENV),
            )
        problem = _check_legacy(python)
    finally:
        lock.__exit__()
    if problem is not None:
        raise LegacyUnavailable("the legacy environment does not work: %s" % problem)
    return str(python)


class LegacyCodec:
    """One long-lived child process that runs the legacy hein 0.2.3 serializer on request.

    Methods for callers:
        dumps(value): the bytes the legacy ``json_dumps`` writes for ``value``.
        loads(payload): the value the legacy ``json_loads`` reads from ``payload`` (legacy ``Byt``
            values come back as ``bytes``).
        request(op, argument): the raw ``(ok, result)`` reply.
        close(): stop the child (idempotent); also on leaving a ``with`` block.

    Attributes:
        info: what the server said about itself (legacy version, ``hein.__file__``, python).
        pid: the child's process id.

    ``dumps`` and ``loads`` raise :class:`LegacyCodecError` when the legacy code raises, and
    :class:`RuntimeError` when the child dies, misbehaves or takes longer than ``timeout``.
    Values travel by pickle, so they must be picklable in both environments.
    """

    def __init__(self, python: Optional[str] = None, timeout: float = REQUEST_TIMEOUT) -> None:
        self.timeout = timeout
        self._stderr = tempfile.TemporaryFile()
        self._proc: Optional[subprocess.Popen] = None
        try:
            self._proc = subprocess.Popen(
                [python or legacy_python(), "-I", str(CODEC_SERVER)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                cwd=tempfile.gettempdir(),
                bufsize=0,
            )
            self.pid = self._proc.pid
            ok, info = self._receive(time.monotonic() + START_TIMEOUT)
            if not ok:
                raise RuntimeError("the legacy codec server failed to start: %s" % info)
            self.info: Dict[str, Any] = info
            if info.get("version") != LEGACY_VERSION:
                raise RuntimeError("the codec server runs hein %r" % info.get("version"))
            if Path(info["hein_file"]).resolve().parent == REPO_ROOT / "hein":
                raise RuntimeError("the codec server imported the project's hein")
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------------ requests

    def request(self, op: str, argument: Any) -> Tuple[bool, Any]:
        """Send one request and return the server's ``(ok, result)`` reply."""
        if self._proc is None:
            raise RuntimeError("the legacy codec is closed")
        deadline = time.monotonic() + self.timeout
        self._send(pickle.dumps((op, argument), protocol=_PICKLE_PROTOCOL), deadline)
        return self._receive(deadline)

    def dumps(self, value: Any) -> bytes:
        """Return what the legacy ``json_dumps(value)`` writes, as bytes."""
        ok, result = self.request("dumps", value)
        if not ok:
            raise LegacyCodecError(result)
        return result  # type: ignore[no-any-return]

    def loads(self, payload: bytes) -> Any:
        """Return what the legacy ``json_loads(Byt(payload))`` reads."""
        ok, result = self.request("loads", bytes(payload))
        if not ok:
            raise LegacyCodecError(result)
        return result

    # ---------------------------------------------------------------------------------- pipes

    def _fail(self, what: str) -> "RuntimeError":
        proc = self._proc
        status = None if proc is None else proc.poll()
        self._stderr.seek(0)
        stderr = self._stderr.read()[-4000:].decode("utf-8", "replace")
        self.close()
        return RuntimeError(
            "legacy codec server: %s (exit status %s); its stderr:\n%s" % (what, status, stderr)
        )

    def _send(self, data: bytes, deadline: float) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        fd = self._proc.stdin.fileno()
        view = memoryview(_HEADER.pack(len(data)) + data)
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._fail("timed out writing a request")
            _, writable, _ = select.select([], [fd], [], remaining)
            if not writable:
                continue
            try:
                written = os.write(fd, view[:_WRITE_CHUNK])
            except OSError as error:
                raise self._fail("cannot write a request: %r" % error) from None
            view = view[written:]

    def _read_exact(self, size: int, deadline: float) -> bytes:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        chunks = []
        while size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._fail("timed out waiting for a reply")
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(fd, min(size, 1 << 20))
            if not chunk:
                raise self._fail("exited instead of replying")
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def _receive(self, deadline: float) -> Tuple[bool, Any]:
        (size,) = _HEADER.unpack(self._read_exact(_HEADER.size, deadline))
        reply = pickle.loads(self._read_exact(size, deadline))
        if not (isinstance(reply, tuple) and len(reply) == 2):
            raise self._fail("malformed reply %r" % (reply,))
        return reply  # type: ignore[no-any-return]

    # -------------------------------------------------------------------------------- closing

    def close(self) -> None:
        """Stop the server: close its stdin, wait for it a bounded time, then kill it by pid."""
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if proc.stdin is not None:
                    try:
                        proc.stdin.close()
                    except OSError:
                        pass
                try:
                    proc.wait(timeout=CLOSE_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=CLOSE_TIMEOUT)
            finally:
                if proc.stdout is not None:
                    proc.stdout.close()
        if not self._stderr.closed:
            self._stderr.close()

    def __enter__(self) -> "LegacyCodec":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
