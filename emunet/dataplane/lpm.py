"""Longest-prefix match over IPv4 networks, shared by route tables and flannel's leases.

One dict per prefix length, walked longest first: at most 33 dict probes, usually
a handful. A cache keyed by the packed destination makes the steady state one
dict hit; every change clears it and bumps :attr:`PrefixMap.version`, which flow
caches compare to know their decision still stands.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Network
from typing import Final, Generic, TypeVar

T = TypeVar("T")

_CACHE_MAX: Final = 4096


class PrefixMap(Generic[T]):
    def __init__(self) -> None:
        self._by_len: dict[int, dict[int, T]] = {}
        self._lengths: list[int] = []
        self._cache: dict[bytes, T | None] = {}
        self.version = 0

    def get(self, net: IPv4Network) -> T | None:
        """The value stored for exactly ``net``."""
        table = self._by_len.get(net.prefixlen)
        return table.get(int(net.network_address)) if table else None

    def set(self, net: IPv4Network, value: T) -> None:
        self._by_len.setdefault(net.prefixlen, {})[int(net.network_address)] = value
        self._lengths = sorted(self._by_len, reverse=True)
        self.touch()

    def remove(self, net: IPv4Network) -> T | None:
        table = self._by_len.get(net.prefixlen)
        if table is None:
            return None
        value = table.pop(int(net.network_address), None)
        if not table:
            del self._by_len[net.prefixlen]
            self._lengths = sorted(self._by_len, reverse=True)
        self.touch()
        return value

    def touch(self) -> None:
        """Something the lookups depend on changed: forget cached answers."""
        self._cache.clear()
        self.version += 1

    def lookup(self, dst: bytes) -> T | None:
        """The value of the longest prefix covering a packed IPv4 address."""
        try:
            return self._cache[dst]
        except KeyError:
            pass
        addr = int.from_bytes(dst, "big")
        found = None
        for plen in self._lengths:
            value = self._by_len[plen].get(addr & ((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF))
            if value is not None:
                found = value
                break
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[bytes(dst)] = found
        return found

    def by_length(self) -> Iterator[list[T]]:
        """The values grouped by prefix length, longest first."""
        for plen in self._lengths:
            yield list(self._by_len[plen].values())
