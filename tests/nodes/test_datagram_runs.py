"""The runs of datagrams the runtime hands to the kernel as one UDP GSO send.

A GSO send carries datagrams of one size to one address (the last may be
shorter) and at most so many of them: ``datagram_runs`` must cut a flush's
actions into such runs and keep every datagram, in order.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

from emunet.nodes.runtime import GSO_BYTES, datagram_runs
from hypothesis import given
from hypothesis import strategies as st

from emunet.dataplane.actions import UnderlayPacket

PEER1, PEER2 = ("172.18.0.12", 8285), ("172.18.0.13", 8285)
HOP1, HOP2 = IPv4Address("172.18.0.12"), IPv4Address("172.18.0.13")


def overlay(dst: tuple[str, int], size: int, tag: int = 0) -> tuple[Any, ...]:
    return (dst, bytes([tag % 256]) * size, 0.0)


def wire(hop: IPv4Address, size: int, tag: int = 0) -> UnderlayPacket:
    return UnderlayPacket(hop, bytearray([tag % 256]) * size, 0.0)


def shapes(actions: list[Any], limit: int = 64) -> list[tuple[bool, object, list[int]]]:
    return [(w, k, [len(p) for p in ps]) for w, k, ps in datagram_runs(actions, limit)]


def test_equal_datagrams_to_one_peer_go_in_runs_of_the_limit() -> None:
    actions = [overlay(PEER1, 1000, i) for i in range(150)]
    assert shapes(actions) == [
        (False, PEER1, [1000] * 64),
        (False, PEER1, [1000] * 64),
        (False, PEER1, [1000] * 22),
    ]
    assert shapes(actions, limit=1) == [(False, PEER1, [1000])] * 150
    # 1428 B (a 1400 B UDP payload in its inner packet): 45 fill a datagram
    assert [len(s) for _, _, s in shapes([overlay(PEER1, 1428)] * 50)] == [45, 5]


def test_a_shorter_datagram_ends_a_run_and_a_longer_one_starts_the_next() -> None:
    actions = [overlay(PEER1, n) for n in (1000, 1000, 400, 1000, 1200, 1200)]
    assert shapes(actions) == [
        (False, PEER1, [1000, 1000, 400]),
        (False, PEER1, [1000]),
        (False, PEER1, [1200, 1200]),
    ]


def test_a_new_peer_a_new_next_hop_or_the_other_kind_starts_a_run() -> None:
    actions = [
        overlay(PEER1, 100),
        overlay(PEER2, 100),
        overlay(PEER2, 100),
        wire(HOP2, 100),
        wire(HOP2, 100),
        wire(HOP1, 100),
        overlay(PEER1, 100),
    ]
    assert shapes(actions) == [
        (False, PEER1, [100]),
        (False, PEER2, [100, 100]),
        (True, HOP2, [100, 100]),
        (True, HOP1, [100]),
        (False, PEER1, [100]),
    ]


def test_a_run_stays_under_a_datagrams_bytes() -> None:
    actions = [overlay(PEER1, 9000) for _ in range(10)]
    runs = shapes(actions)
    assert [len(sizes) for _, _, sizes in runs] == [7, 3]
    assert all(sum(sizes) <= GSO_BYTES for _, _, sizes in runs)


@given(
    st.lists(st.tuples(st.booleans(), st.sampled_from([0, 1]), st.integers(0, 3000)), max_size=200),
    st.integers(1, 64),
)
def test_runs_keep_every_datagram_in_order_and_fit_one_gso_send(
    spec: list[tuple[bool, int, int]], limit: int
) -> None:
    actions = [
        wire((HOP1, HOP2)[peer], size, i) if is_wire else overlay((PEER1, PEER2)[peer], size, i)
        for i, (is_wire, peer, size) in enumerate(spec)
    ]
    runs = list(datagram_runs(actions, limit))
    flat = [(w, k, bytes(p)) for w, k, ps in runs for p in ps]
    want = [
        (True, a.next_hop, bytes(a.packet))
        if isinstance(a, UnderlayPacket)
        else (False, a[0], bytes(a[1]))
        for a in actions
    ]
    assert flat == want
    for _, _, payloads in runs:
        sizes = [len(p) for p in payloads]
        assert 1 <= len(sizes) <= limit
        assert len(sizes) == 1 or sum(sizes) <= GSO_BYTES
        assert len(sizes) == 1 or 0 not in sizes  # GSO cannot carry an empty datagram
        assert all(n == sizes[0] for n in sizes[:-1]) and sizes[-1] <= sizes[0]
