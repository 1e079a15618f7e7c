"""A per-namespace IPv4 route table with longest-prefix match.

Routes are held in one dict per prefix length; a lookup walks the lengths that
are in use, longest first, so it costs at most 33 dict probes and usually a
handful. A small cache keyed by the packed destination makes the steady state
one dict hit; any change to the table clears it.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING

from emunet.errors import ConfigError

if TYPE_CHECKING:
    from emunet.dataplane.interfaces import Interface

SCOPE_LINK = "link"
SCOPE_GLOBAL = "global"
SCOPE_HOST = "host"

_CACHE_MAX = 4096


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
    def __init__(self) -> None:
        self._by_len: dict[int, dict[int, Route]] = {}
        self._lengths: list[int] = []
        self._cache: dict[bytes, Route | None] = {}
        self.version = 0  # bumped on every change: flow caches check it

    def add(self, route: Route, *, replace: bool = False) -> None:
        if route.via is not None and route.via in route.dst and route.dst.prefixlen == 32:
            raise ConfigError(f"route {route}: gateway inside its own /32")
        table = self._by_len.setdefault(route.dst.prefixlen, {})
        key = int(route.dst.network_address)
        old = table.get(key)
        if old is not None and not replace and old.metric <= route.metric:
            if old == route:
                return
            raise ConfigError(f"RTNETLINK answers: File exists ({route.dst})")
        table[key] = route
        self._lengths = sorted(self._by_len, reverse=True)
        self._cache.clear()
        self.version += 1

    def delete(self, dst: IPv4Network) -> Route | None:
        table = self._by_len.get(dst.prefixlen)
        if table is None:
            return None
        route = table.pop(int(dst.network_address), None)
        if not table:
            del self._by_len[dst.prefixlen]
            self._lengths = sorted(self._by_len, reverse=True)
        self._cache.clear()
        self.version += 1
        return route

    def delete_dev(self, dev: Interface) -> None:
        for route in [r for r in self if r.dev is dev]:
            self.delete(route.dst)

    def lookup(self, dst: bytes) -> Route | None:
        """Longest-prefix match for a packed IPv4 destination (4 bytes)."""
        try:
            return self._cache[dst]
        except KeyError:
            pass
        addr = int.from_bytes(dst, "big")
        found = None
        for plen in self._lengths:
            route = self._by_len[plen].get(addr & ((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF))
            if route is not None:
                found = route
                break
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[bytes(dst)] = found
        return found

    def __iter__(self):  # type: ignore[no-untyped-def]
        for plen in self._lengths:
            yield from sorted(self._by_len[plen].values(), key=lambda r: r.dst)

    def dump(self) -> list[str]:
        """Lines as ``ip route show`` prints them (default first, then by prefix).

        Host-scope routes (``127.0.0.0/8 dev lo``) live in Linux's local table,
        which ``ip route show`` does not list.
        """
        routes = sorted(
            (r for r in self if r.scope != SCOPE_HOST), key=lambda r: (r.dst.prefixlen != 0, r.dst)
        )
        return [str(r) for r in routes]
