"""Per-packet time (issue 13): steps of one queue run need not come in time
order; tables that keep a time keep the latest they saw."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from emunet.dataplane.neigh import NeighTable
from emunet.dataplane.node import Node
from emunet.dataplane.tcp import TCPConnection, TCPListener
from emunet.packets.mac import MAC
from emunet.packets.tcp import parse


def test_tables_keep_the_latest_time_they_saw() -> None:
    """Steps of one queue run need not come in time order (a packet queued
    earlier may carry a later time): what a table stores as "last seen" does not
    go back."""
    node = Node("node1", "172.18.0.2", "10.244.1.0/24", seed=1)
    pod = node.add_pod("p")
    veth = node.root.interfaces[pod.veth]
    frame = bytes(MAC("02:00:00:00:00:99")) + bytes(pod.mac) + b"\x08\x06" + bytes(28)
    node.bridge.input(veth, frame, 2.0)
    node.bridge.input(veth, frame, 1.0)
    node.take_actions()
    assert node.bridge.fdb[bytes(pod.mac)].updated == 2.0

    neigh = NeighTable()
    ip = IPv4Address("10.244.1.9").packed
    neigh.confirm(ip, bytes(6), node.eth0, 2.0, True)
    neigh.confirm(ip, bytes(6), node.eth0, 1.0, True)
    assert neigh.entries[ip].updated == 2.0


def test_tcp_rtt_sample_is_never_negative() -> None:
    """An app's call carries its caller's clock, which may lag the packets' times:
    an ACK can seem to leave before the segment it acknowledges. The sample is 0."""
    a, b = IPv4Address("10.244.1.2"), IPv4Address("10.244.1.3")
    client = TCPConnection(a, 40000, b, 80, mss=1460, iss=1000, now=1.0)
    client.connect(1.0)
    (syn,) = client.segments_to_send()
    hdr, _ = parse(syn, verify_with=(a, b))
    server = TCPListener(b, 80).receive_syn(a, b, hdr, 1.0, 5000)
    assert server is not None
    (synack,) = server.segments_to_send()
    hdr, payload = parse(synack, verify_with=(b, a))
    client.receive(hdr, payload, 1.0 - 40e-6)
    assert client.srtt == 0.0
    assert client.rto == pytest.approx(0.2)  # Linux's floor
