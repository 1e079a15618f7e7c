"""Addresses given on a command line as an IP, ``auto`` or a host name.

In a compose file every address is static; on Docker Swarm (and any platform
that hands out addresses) a node learns its own address and finds the gateway
by name, so ``--node-ip auto`` and ``--gateway internet`` are accepted too.
"""

from __future__ import annotations

import socket
import time
from ipaddress import IPv4Address

from emunet.errors import ConfigError

__all__ = ["own_address", "resolve_address"]

RESOLVE_WAIT = 60.0  # seconds a name may take to appear (a peer still starting)


def own_address() -> IPv4Address:
    """This machine's address: what its host name resolves to (a container's IP)."""
    try:
        addr = IPv4Address(socket.gethostbyname(socket.gethostname()))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"auto: cannot find this machine's address ({exc})") from None
    if addr.is_loopback:
        raise ConfigError(f"auto: this machine's host name resolves to {addr}; give the address")
    return addr


def resolve_address(text: str, wait: float = RESOLVE_WAIT) -> IPv4Address:
    """``text`` as an IPv4 address: literal, ``auto`` (:func:`own_address`) or a
    host name, retried for up to ``wait`` seconds while it does not resolve."""
    try:
        return IPv4Address(text)
    except ValueError:
        pass
    if text == "auto":
        return own_address()
    deadline = time.monotonic() + wait
    while True:
        try:
            return IPv4Address(socket.gethostbyname(text))
        except (OSError, ValueError, UnicodeError) as exc:
            if time.monotonic() >= deadline:
                raise ConfigError(
                    f"{text!r}: not an IPv4 address, and it does not resolve ({exc})"
                ) from None
            time.sleep(0.5)
