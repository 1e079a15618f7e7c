"""A per-namespace IPv4 route table: routes as ``ip route`` shows them, found by
longest-prefix match (:class:`~emunet.dataplane.lpm.PrefixMap`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Final

from emunet.dataplane.interfaces import Interface
from emunet.dataplane.lpm import PrefixMap
from emunet.errors import ConfigError

SCOPE_LINK: Final = "link"
SCOPE_GLOBAL: Final = "global"
SCOPE_HOST: Final = "host"


@dataclass(frozen=True, slots=True)
class Route:
    """A route as ``ip route`` shows it: ``dst [via gw] dev DEV [proto P] [scope S] [src A]``."""

    dst: IPv4Network
    dev: Interface
    via: IPv4Address | None = None
    src: IPv4Address | None = None
    proto: str = "static"
    scope: str = SCOPE_GLOBAL
    metric: int = 0
    # the gateway as bytes, the next hop ip_output hands the device (a packet's
    # own destination when b""): packed once, not per packet
    via_packed: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "via_packed", self.via.packed if self.via is not None else b"")

    def __str__(self) -> str:
        dst = "default" if self.dst.prefixlen == 0 else str(self.dst)
        parts = [dst]
        if self.via is not None:
            parts.append(f"via {self.via}")
        parts.append(f"dev {self.dev.name}")
        if self.proto != "static":
            parts.append(f"proto {self.proto}")
        if self.scope != SCOPE_GLOBAL:
            parts.append(f"scope {self.scope}")
        if self.src is not None:
            parts.append(f"src {self.src}")
        if self.metric:
            parts.append(f"metric {self.metric}")
        return " ".join(parts)


class RouteTable:
    """A namespace's routes (``ip route``): longest-prefix match with a cache."""

    def __init__(self) -> None:
        # its version is bumped on every change: flow caches compare it
        self.prefixes: PrefixMap[Route] = PrefixMap()

    def touch(self) -> None:
        """Local addresses changed: decisions taken with the routes are stale."""
        self.prefixes.touch()

    def add(self, route: Route, *, replace: bool = False) -> None:
        if route.via is not None and route.via in route.dst and route.dst.prefixlen == 32:
            raise ConfigError(f"route {route}: gateway inside its own /32")
        old = self.prefixes.get(route.dst)
        if old is not None and not replace and old.metric <= route.metric:
            if old == route:
                return
            raise ConfigError(f"RTNETLINK answers: File exists ({route.dst})")
        self.prefixes.set(route.dst, route)

    def delete(self, dst: IPv4Network) -> Route | None:
        return self.prefixes.remove(dst)

    def delete_dev(self, dev: Interface) -> None:
        for route in [r for r in self if r.dev is dev]:
            self.delete(route.dst)

    def lookup(self, dst: bytes) -> Route | None:
        """Longest-prefix match for a packed IPv4 destination (4 bytes)."""
        return self.prefixes.lookup(dst)

    def __iter__(self) -> Iterator[Route]:
        for group in self.prefixes.by_length():
            yield from sorted(group, key=lambda r: r.dst)

    def dump(self) -> list[str]:
        """Lines as ``ip route show`` prints them (default first, then by prefix).

        Host-scope routes (``127.0.0.0/8 dev lo``) live in Linux's local table,
        which ``ip route show`` does not list.
        """
        routes = sorted(
            (r for r in self if r.scope != SCOPE_HOST), key=lambda r: (r.dst.prefixlen != 0, r.dst)
        )
        return [str(r) for r in routes]
