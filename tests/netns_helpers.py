"""A second host for the bind-policy tests: a network namespace joined to this one by a veth pair.

:class:`NetNS` (a context manager) creates, as root::

    namespace  heintest-PID
    veth pair  veth-hPID (this namespace, 10.213.X.1/30)  <->  veth-nPID (in the namespace,
               10.213.X.2/30)

where X is chosen so that no address of this machine is already in 10.213.X.0/30. Processes run
in the namespace with ``ip netns exec`` (:meth:`NetNS.command`) see a machine of their own whose
only way out is the veth pair: a connection from there to 10.213.X.1 comes from another host as
far as the transmitter can tell. Only these two addresses are ever used.

Everything is removed on exit, and :func:`remove_leftovers` removes namespaces and links of this
prefix left by earlier runs whose process is gone (a killed test run). The tests fail, never
skip, when ``ip`` (iproute2) is missing or when not run as root.
"""

import os
import re
import shutil
import subprocess
from typing import List, Optional

import pytest

NS_PREFIX = "heintest-"
HOST_LINK_PREFIX = "veth-h"
NS_LINK_PREFIX = "veth-n"
SUBNET_PREFIX = "10.213."
#: Bound on one ``ip`` command, in seconds.
IP_TIMEOUT = 20.0


def require_ip() -> str:
    """The path of ``ip``; fails the test (with what to install) when it is missing or not root."""
    ip = shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip") if os.path.exists(p)),
        None,
    )
    if ip is None:
        pytest.fail(
            "the bind-policy tests need the `ip` command (iproute2) to create a network "
            "namespace: install it (apt-get install -y iproute2)"
        )
    if os.geteuid() != 0:
        pytest.fail("the bind-policy tests create a network namespace and must run as root")
    return ip


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [require_ip(), *args],
        capture_output=True,
        text=True,
        timeout=IP_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        pytest.fail(
            "`ip %s` failed (exit status %d): %s%s"
            % (" ".join(args), result.returncode, result.stdout, result.stderr)
        )
    return result


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's process
        return True
    return True


def _stale(name: str, prefix: str) -> bool:
    """Whether ``name`` is PREFIX + the pid of a process that no longer runs."""
    suffix = name[len(prefix) :]
    return suffix.isdigit() and int(suffix) != os.getpid() and not _pid_alive(int(suffix))


def remove_leftovers() -> List[str]:
    """Delete the namespaces and host-side links of dead earlier runs; return their names."""
    removed = []
    listing = _ip("netns", "list", check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(NS_PREFIX) and _stale(name, NS_PREFIX):
            _ip("netns", "del", name, check=False)
            removed.append(name)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        match = re.match(r"\d+:\s+([^:@\s]+)", line)
        if match:
            name = match.group(1)
            if name.startswith(HOST_LINK_PREFIX) and _stale(name, HOST_LINK_PREFIX):
                _ip("link", "del", name, check=False)
                removed.append(name)
    return removed


def _free_subnet() -> int:
    """An X such that this machine has no address in 10.213.X.0/30."""
    used = _ip("-4", "-o", "addr", "show", check=False).stdout
    start = os.getpid() % 250
    for offset in range(250):
        x = (start + offset) % 250 + 1
        if " %s%d." % (SUBNET_PREFIX, x) not in used:
            return x
    pytest.fail("no free 10.213.X.0/30 subnet for the test namespace")


class NetNS:
    """A namespace ``heintest-PID`` joined by a veth pair; see the module docstring."""

    def __init__(self) -> None:
        pid = os.getpid()
        self.name = "%s%d" % (NS_PREFIX, pid)
        self.host_link = "%s%d" % (HOST_LINK_PREFIX, pid)
        self.ns_link = "%s%d" % (NS_LINK_PREFIX, pid)
        self.host_addr = ""
        self.ns_addr = ""
        self._created = False

    def __enter__(self) -> "NetNS":
        require_ip()
        remove_leftovers()
        self._remove()  # ours, from an earlier test of this run that could not clean up
        try:
            x = _free_subnet()
            self.host_addr = "%s%d.1" % (SUBNET_PREFIX, x)
            self.ns_addr = "%s%d.2" % (SUBNET_PREFIX, x)
            self._created = True
            _ip("netns", "add", self.name)
            _ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.ns_link)
            _ip("link", "set", self.ns_link, "netns", self.name)
            _ip("addr", "add", self.host_addr + "/30", "dev", self.host_link)
            _ip("link", "set", self.host_link, "up")
            self.ns_ip("addr", "add", self.ns_addr + "/30", "dev", self.ns_link)
            self.ns_ip("link", "set", self.ns_link, "up")
            self.ns_ip("link", "set", "lo", "up")
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._remove()

    def ns_ip(self, *args: str) -> subprocess.CompletedProcess:
        """Run ``ip ARGS`` inside the namespace."""
        return _ip("netns", "exec", self.name, require_ip(), *args)

    def command(self, argv: List[str]) -> List[str]:
        """``argv`` prefixed to run inside the namespace (``ip netns exec`` keeps the pid)."""
        return [require_ip(), "netns", "exec", self.name, *argv]

    def _remove(self) -> None:
        _ip("netns", "del", self.name, check=False)  # takes the namespace's veth end with it
        _ip("link", "del", self.host_link, check=False)  # and so its peer, if still there

    def exists(self) -> Optional[bool]:
        return self.name in _ip("netns", "list", check=False).stdout.split()
