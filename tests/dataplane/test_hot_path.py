"""The per-packet path packs no address: ``IPv4Address.packed`` is a Python-level
call (interpreted code, cold on every packet of a paced ping), so a route keeps
its gateway packed, a ping socket its destination, and an echo reply takes the
request's address bytes."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest

from emunet.dataplane.fabric import Fabric


def warm_ping() -> Callable[[], None]:
    """A pod on node1 that has pinged one on node2 three times (ARP, routes, flows
    and caches settle); the function it returns pings ten times more and checks that
    all thirteen were answered."""
    fab = Fabric(nodes=2, seed=7)
    a = fab.add_pod("node1", "a")
    b = fab.add_pod("node2", "b")
    sock = a.netns.ping_socket(4242)
    for seq in range(3):
        sock.send(b.ip, seq, fab.now, b"\x00" * 56)
        fab.run(0.5)

    def ten_rounds() -> None:
        for seq in range(3, 13):
            sock.send(b.ip, seq, fab.now, b"\x00" * 56)
            fab.run(0.5)
        assert [r.seq for r in sock.replies] == list(range(13))

    return ten_rounds


def test_a_ping_round_through_two_nodes_packs_no_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ten_rounds = warm_ping()
    calls: list[int] = []
    packed = ipaddress.IPv4Address.packed

    def counted(self: ipaddress.IPv4Address) -> bytes:
        calls.append(1)
        return packed.__get__(self)  # type: ignore[no-any-return]

    monkeypatch.setattr(ipaddress.IPv4Address, "packed", property(counted))
    ten_rounds()
    assert len(calls) == 0


def test_a_ping_round_parses_formats_and_hashes_no_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nor does the in-memory fabric that carries it between the nodes (what every
    in-process measurement runs through): ``IPv4Address``'s hash formats a hex
    string, its ``str`` and constructor are Python calls too. It used to parse each
    overlay datagram's peer, format its source and hash both for the link
    (2 + 2 + 6 calls a round)."""
    ten_rounds = warm_ping()
    calls: list[str] = []
    cls = ipaddress.IPv4Address
    real = {name: getattr(cls, name) for name in ("__hash__", "__str__", "__init__")}

    def counted(name: str) -> object:
        def call(self: ipaddress.IPv4Address, *args: object) -> object:
            calls.append(name)
            return real[name](self, *args)

        return call

    for name in real:
        monkeypatch.setattr(cls, name, counted(name))
    ten_rounds()
    assert calls == []
