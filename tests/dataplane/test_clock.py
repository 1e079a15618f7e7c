"""Per-packet time (issue 13): a packet's ``now`` moves by the modelled delay of
every device it crosses (``interfaces.HOP_DELAY``), on the flow table's path as
on the full one, and tables that keep a time keep the latest they saw."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from emunet.dataplane.fabric import Fabric
from emunet.dataplane.interfaces import BRIDGE, HOP_DELAY, LOOPBACK, TUN, UNDERLAY, VETH
from emunet.dataplane.neigh import NeighTable
from emunet.dataplane.node import Node
from emunet.dataplane.tcp import TCPConnection, TCPListener
from emunet.packets.mac import MAC
from emunet.packets.tcp import parse

V, B, LO, T, U = (HOP_DELAY[kind] for kind in (VETH, BRIDGE, LOOPBACK, TUN, UNDERLAY))
LINK = 0.0001  # the fabric's default one-way link delay


@pytest.fixture
def fab() -> Fabric:
    f = Fabric(nodes=2, seed=3, delay=LINK)
    f.add_pod("node1", "a")
    f.add_pod("node1", "b")
    f.add_pod("node2", "c")
    f.add_host("web", "203.0.113.10")
    f.run(1.0)
    return f


def ping_rtts(fab: Fabric, dst: IPv4Address, count: int = 3) -> list[float]:
    sock = fab.pod("a").netns.ping_socket()
    for seq in range(count):
        sock.send(dst, seq, fab.now)
        fab.run(0.01)
    assert [r.seq for r in sock.replies] == list(range(count))
    return [r.rtt for r in sock.replies]


# (destination, the hops one way; the reply crosses the same ones)
PATHS = [
    ("b", V + B + V),  # same node: eth0 -> veth -> cni0 -> veth -> eth0
    ("a", LO),  # itself, through lo
    ("gateway", V + B),  # cni0's address: up from the bridge
    ("node2", V + B + U + LINK),  # node2's IP: eth0, the wire
    ("c", V + B + T + U + LINK + T + B + V),  # a pod of node2: flanneld both sides
    ("web", V + B + U + LINK + U + LINK),  # the internet: eth0, the gateway's wan0
]


@pytest.mark.parametrize(("dst", "one_way"), PATHS, ids=[p[0] for p in PATHS])
def test_ping_rtt_is_the_sum_of_the_hop_delays(fab: Fabric, dst: str, one_way: float) -> None:
    ips = {
        "gateway": fab.node("node1").gateway_ip,
        "node2": fab.node("node2").node_ip,
        "web": IPv4Address("203.0.113.10"),
    }
    rtts = ping_rtts(fab, ips[dst] if dst in ips else fab.pod(dst).ip)
    assert rtts[-1] > 0
    assert rtts[-1] == pytest.approx(2 * one_way)


def test_same_node_ping_is_tens_of_microseconds_and_arp_costs_a_round_trip(fab: Fabric) -> None:
    first, *rest = ping_rtts(fab, fab.pod("b").ip)
    assert rest == [pytest.approx(2 * (V + B + V))] * 2
    assert 20e-6 <= rest[0] <= 50e-6  # a real node: 20-50 us through veths and a bridge
    # the first echo waited for ARP: a request and its reply cross the same hops
    assert first == pytest.approx(4 * (V + B + V))


def test_one_device_delay_changes_its_hop_only(fab: Fabric) -> None:
    b = fab.pod("b")
    fab.node("node1").root.interfaces[b.veth].delay = 0.001  # netem delay 1ms on b's veth
    rtts = ping_rtts(fab, b.ip)
    assert rtts[-1] == pytest.approx(2 * (V + B + V) - V + 0.001)


def one_way_udp(flow_cache: bool) -> tuple[list[float], int]:
    """Datagrams a (node1) -> c (node2) answered by an echo: the time each takes to
    reach c's eth0, and how many flows node1 and node2 hold after."""
    fab = Fabric(nodes=2, seed=3, delay=LINK, flow_cache=flow_cache)
    a = fab.add_pod("node1", "a")
    c = fab.add_pod("node2", "c")
    srv = c.netns.udp_socket()
    srv.bind(port=7)

    def echo() -> None:
        while (msg := srv.recvfrom()) is not None:
            srv.sendto(msg[0], msg[1], fab.now)

    srv.on_event = echo
    arrived: list[float] = []

    def tap(now: float, frame: bytes | bytearray) -> None:
        if frame[0:6] == c.mac and frame[12:14] == b"\x08\x00" and frame[23] == 17:
            arrived.append(now)

    c.eth0.taps.append(tap)
    cli = a.netns.udp_socket()
    sent = []
    for _ in range(5):
        sent.append(fab.now)
        cli.sendto(b"ping", (c.ip, 7), fab.now)
        fab.run(0.01)
    assert len(cli.rx) == 5
    flows = sum(len(n.root.flows or ()) for n in fab.nodes.values())
    return [t - s for t, s in zip(arrived, sent, strict=True)], flows


def test_flow_table_path_takes_the_same_time_as_the_full_path() -> None:
    fast, flows = one_way_udp(flow_cache=True)
    full, no_flows = one_way_udp(flow_cache=False)
    assert flows > 0 and no_flows == 0
    assert fast == pytest.approx(full)
    # after the first (ARP on both nodes): the hops of a cross-node datagram
    assert fast[1:] == [pytest.approx(V + B + T + U + LINK + T + B + V)] * 4


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
