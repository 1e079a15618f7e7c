"""flanneld takes overlay datagrams from any sender; emunet counts those from an
address holding no lease and can refuse them (issue 11)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from emunet.dataplane.node import Node
from emunet.dataplane.trace import Drop
from emunet.packets import ipv4

A = IPv4Address


def _node() -> Node:
    n = Node("node1", A("172.18.0.11"), IPv4Network("10.244.1.0/24"), seed=1)
    n.set_lease(IPv4Network("10.244.2.0/24"), A("172.18.0.12"))
    n.add_pod("p", ip=A("10.244.1.5"))
    n.take_actions()
    return n


def _datagram() -> bytes:
    return ipv4.build_fast(A("10.244.2.9").packed, A("10.244.1.5").packed, 17, bytes(12))


def test_unknown_senders_are_counted_and_accepted_by_default() -> None:
    n = _node()
    n.overlay_received(("172.18.0.12", 8285), _datagram(), 0.0)
    n.overlay_received(("172.18.0.99", 8285), _datagram(), 0.0)
    n.take_actions()
    assert n.flannel.from_unknown == 1
    assert n.flannel0.rx_packets == 2  # flanneld's default: both go into the TUN
    assert Drop.OVERLAY_UNKNOWN_PEER.value not in n.drops()


def test_unknown_senders_refused_when_asked_and_peers_follow_the_leases() -> None:
    n = _node()
    n.flannel.accept_unknown = False
    n.overlay_received(("172.18.0.99", 8285), _datagram(), 0.0)
    assert n.drops() == {Drop.OVERLAY_UNKNOWN_PEER.value: 1}
    # a peer's lease moves to another address: the old one holds nothing any more
    n.set_lease(IPv4Network("10.244.2.0/24"), A("172.18.0.13"))
    assert n.flannel.peers == {"172.18.0.13": 1}
    n.overlay_received(("172.18.0.12", 8285), _datagram(), 0.0)
    assert n.drops()[Drop.OVERLAY_UNKNOWN_PEER.value] == 2
    n.set_lease(IPv4Network("10.244.3.0/24"), A("172.18.0.13"))
    n.remove_lease(IPv4Network("10.244.2.0/24"))
    assert n.flannel.peers == {"172.18.0.13": 1}
    n.remove_lease(IPv4Network("10.244.3.0/24"))
    assert n.flannel.peers == {}
