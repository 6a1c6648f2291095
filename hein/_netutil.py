"""Small socket helpers shared by the transmitter and the receiver."""

import ipaddress
import socket
import ssl
from typing import Any, List, Optional, Tuple


def default_host() -> str:
    """The host a receiver connects to by default, as in hein 0.2.3: the address of this
    machine's own hostname, or 127.0.0.1 when the hostname does not resolve."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def local_bind_addresses() -> List[str]:
    """The IPv4 addresses a transmitter listens on by default: loopback, and the address of
    this machine's hostname (where 0.2.3 receivers connect by default) when it differs."""
    addresses = ["127.0.0.1"]
    own = default_host()
    if own not in addresses and not ipaddress.ip_address(own).is_loopback:
        addresses.append(own)
    return addresses


def is_local_peer(sock: socket.socket) -> bool:
    """Whether the peer of an accepted connection runs on this machine.

    A connection from this machine to one of its own addresses comes from that same address
    (or from loopback), so comparing the peer address with the local one tells.
    """
    try:
        peer = sock.getpeername()[0]
        local = sock.getsockname()[0]
    except OSError:
        return False
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return address.is_loopback or peer == local


def family_of(host: str) -> socket.AddressFamily:
    """AF_INET6 for an IPv6 literal, AF_INET otherwise."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET


def describe(address: Optional[Tuple[Any, ...]]) -> str:
    """``host:port`` for a socket address."""
    if not address:
        return "?"
    host, port = address[0], address[1]
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)


def check_ssl_context(context: Any) -> Optional[ssl.SSLContext]:
    """Validate an ``ssl_context`` argument: None, or an ``ssl.SSLContext``.

    Raises:
        TypeError: anything else.
    """
    if context is not None and not isinstance(context, ssl.SSLContext):
        raise TypeError("ssl_context must be an ssl.SSLContext")
    return context
