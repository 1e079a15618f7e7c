"""Regressions found in review: fragments through Services, fast-path TCP validation,
big pings, reassembly limits, unsolicited ARP."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest

from emunet.cluster.kubeproxy import Endpoint, Service, ServicePort
from emunet.dataplane.fabric import Fabric
from emunet.packets import ipv4
from emunet.packets.checksum import internet_checksum, pseudo_header_sum

CLUSTER_IP = IPv4Address("10.96.0.50")


@pytest.mark.parametrize("endpoint_node", ["node1", "node2"], ids=["bridged", "overlay"])
def test_large_udp_through_a_service_is_translated_whole(endpoint_node: str) -> None:
    """POSTROUTING and conntrack see whole packets; fragments come after (and
    br_netfilter defragments bridged ones first), so a 3000-byte DNS-like answer
    comes back from the ClusterIP."""
    fab = Fabric(nodes=2, seed=5)
    a = fab.add_pod("node1", "a")
    c = fab.add_pod(endpoint_node, "c")
    svc = Service("default", "dns", CLUSTER_IP, (ServicePort("u", "UDP", 53, 5353),))
    eps = {("default", "dns"): [Endpoint(c.ip, endpoint_node, port_name="u")]}
    for node in fab.nodes.values():
        node.set_services([svc], eps, fab.now)
    srv = c.netns.udp_socket()
    srv.bind(port=5353)
    srv.df = False

    def answer() -> None:
        while (m := srv.recvfrom()) is not None:
            srv.sendto(bytes(3000), m[1], fab.now)

    srv.on_event = answer
    cl = a.netns.udp_socket()
    cl.df = False
    cl.sendto(bytes(3000), (CLUSTER_IP, 53), fab.now)
    fab.run(1.0)
    msg = cl.recvfrom()
    assert msg is not None and len(msg[0]) == 3000 and msg[1] == (CLUSTER_IP, 53)
    assert all(not n.drops() for n in fab.nodes.values())


def test_big_ping_reply_is_fragmented_not_dropped() -> None:
    fab = Fabric(nodes=2, seed=1)
    a = fab.add_pod("node1", "a")
    b = fab.add_pod("node2", "b")
    ping = a.netns.ping_socket()
    ping.send(b.ip, 1, fab.now, bytes(3000))
    fab.run(1.0)
    assert [(r.src, r.size) for r in ping.replies] == [(b.ip, 3000)]


@pytest.mark.parametrize("flow_cache", [False, True])
def test_tcp_segment_without_ack_is_invalid_with_or_without_flow_cache(flow_cache: bool) -> None:
    fab = Fabric(nodes=2, seed=3, flow_cache=flow_cache)
    a = fab.add_pod("node1", "a")
    c = fab.add_pod("node2", "c")
    c.netns.tcp_listen(9000)
    conn = a.netns.tcp_connect(c.ip, 9000, fab.now)
    fab.run(0.5)
    for _ in range(3):  # established, and (with the cache) cached
        conn.send(b"x" * 100, fab.now)
        fab.run(0.1)
    node = fab.node("node1")
    seg = bytearray(struct.pack("!HHIIBBHHH", conn.local_port, 9000, 1, 0, 5 << 4, 0, 1000, 0, 0))
    seg += b"zz"
    init = pseudo_header_sum(a.ip.packed, c.ip.packed, 6, len(seg))
    struct.pack_into("!H", seg, 16, internet_checksum(seg, init))
    pkt = ipv4.build_fast(a.ip.packed, c.ip.packed, 6, bytes(seg), ttl=64, ident=99)
    assert node.cni0.mac is not None
    frame = struct.pack("!6s6sH", node.cni0.mac, a.mac, 0x800) + bytes(pkt)
    sent = node.flannel0.tx_packets
    node.inject("root", a.veth, frame, fab.now)
    assert node.flannel0.tx_packets == sent
    assert node.root.drops == {"conntrack: invalid state": 1}


def _fragment(pod_ip: IPv4Address, src: str, ident: int, offset: int, size: int, more: bool):  # type: ignore[no-untyped-def]
    pkt = bytearray(
        ipv4.build_fast(
            IPv4Address(src).packed, pod_ip.packed, 17, bytes(size), df=False, ident=ident
        )
    )
    struct.pack_into("!H", pkt, 6, (0x2000 if more else 0) | (offset // 8))
    pkt[10:12] = b"\0\0"
    struct.pack_into("!H", pkt, 10, internet_checksum(memoryview(pkt)[:20]))
    return pkt


def test_reassembly_rejects_oversized_and_overlapping_fragments() -> None:
    fab = Fabric(nodes=1, seed=1)  # strict: an exception here would fail the test
    pod = fab.add_pod("node1", "a")
    ns = pod.netns
    node = fab.node("node1")
    cases = [
        [(0, 1400, True), (65000, 1000, False)],  # ends past 65535
        [(0, 800, True), (400, 800, False)],  # overlap
        [(0, 800, True), (2400, 8, False), (1600, 8, False)],  # two different ends
    ]
    for ident, frags in enumerate(cases):
        for off, size, more in frags:
            ns.reassemble(
                pod.eth0, _fragment(pod.ip, "10.244.9.9", ident, off, size, more), fab.now
            )
    assert ns.defrag.queues == {} and ns.defrag.bytes == 0
    assert node.drops()["malformed"] == 3


def test_reassembly_memory_is_bounded() -> None:
    fab = Fabric(nodes=1, seed=1)
    pod = fab.add_pod("node1", "a")
    ns = pod.netns
    for ident in range(6000):  # first fragments only: 6000 x 1400 bytes = 8.4 MB
        ns.reassemble(pod.eth0, _fragment(pod.ip, "10.244.9.9", ident, 0, 1400, True), fab.now)
    assert ns.defrag.bytes <= 4 * 1024 * 1024 and len(ns.defrag.queues) < 6000


def test_header_only_fragments_are_bounded_by_count_and_expire_from_the_front() -> None:
    """Issue 11: 20-byte fragments hold no data; they used to make unbounded
    queues, each scanned by every timer computation."""
    from emunet.dataplane.frag import FRAG_HIGH_THRESH, FRAG_TIMEOUT, FRAG_TRUESIZE

    fab = Fabric(nodes=1, seed=1)
    pod = fab.add_pod("node1", "a")
    ns = pod.netns
    for ident in range(40_000):
        now = ident * 1e-4  # 4 s of a 10,000/s flood
        ns.reassemble(pod.eth0, _fragment(pod.ip, "10.244.9.9", ident % 65536, 8, 0, True), now)
    assert len(ns.defrag.queues) == FRAG_HIGH_THRESH // FRAG_TRUESIZE
    assert ns.defrag.bytes <= FRAG_HIGH_THRESH
    oldest = next(iter(ns.defrag.queues.values())).started
    assert ns.get_timer() == oldest + FRAG_TIMEOUT  # the front is the oldest queue
    ns.handle_timer(oldest + FRAG_TIMEOUT + 1.0)
    assert all(r.started > oldest + 1.0 for r in ns.defrag.queues.values())
    ns.handle_timer(100.0)
    assert ns.defrag.queues == {} and ns.defrag.bytes == 0
    # a real datagram still reassembles afterwards
    for off, size, more in ((0, 800, True), (800, 200, False)):
        whole = ns.reassemble(pod.eth0, _fragment(pod.ip, "10.244.9.9", 7, off, size, more), 101)
    assert whole is not None and len(whole) == 1020


def test_unsolicited_arp_replies_create_no_neighbours() -> None:
    from emunet.packets import arp
    from emunet.packets.mac import MAC

    fab = Fabric(nodes=1, seed=1)
    node = fab.node("node1")
    assert node.cni0.mac is not None
    before = dict(node.root.neighbours)
    for i in range(500):
        sender = IPv4Address("10.244.1.0") + 100 + i
        reply = arp.ARPPacket(arp.REPLY, MAC.local(i), sender, node.cni0.mac, node.gateway_ip)
        frame = struct.pack("!6s6sH", node.cni0.mac, MAC.local(i), 0x0806) + arp.build(reply)
        node.root.rx_frame(node.cni0, frame, fab.now)
    assert node.root.neighbours == before


def test_pod_recreated_with_same_ip_is_reached_at_once() -> None:
    fab = Fabric(nodes=2, seed=2)
    a = fab.add_pod("node1", "a")
    fab.add_pod("node2", "b")
    ip = fab.pod("b").ip
    cl = a.netns.udp_socket()
    cl.sendto(b"one", (ip, 4000), fab.now)
    fab.run(1.0)
    fab.node("node2").remove_pod("b")
    b2 = fab.add_pod("node2", "b2", ip=ip)  # same IP, new MAC: its gratuitous ARP
    start = fab.now  # corrects node2's cni0 entry at once (the CNI bridge plugin sends it)
    srv = b2.netns.udp_socket()
    srv.bind(port=4000)
    got = []
    for _ in range(40):  # node2's cni0 entry for the IP is stale: DELAY, PROBE, FAILED, ARP
        cl.sendto(b"two", (ip, 4000), fab.now)
        fab.run(0.5)
        while (m := srv.recvfrom()) is not None:
            got.append((m[0], fab.now))
    assert got and got[0][1] - start < 1.0
    lines = fab.node("node2").root.neigh_show(fab.now)
    assert any(line.startswith(f"{ip} dev cni0 lladdr {b2.mac}") for line in lines), lines


def test_stale_neighbour_is_probed_and_forgotten() -> None:
    """Without any announcement, a silent neighbour that went away is probed by unicast
    ARP (DELAY 5 s, 3 probes) and forgotten; the next packet resolves it anew."""
    fab = Fabric(nodes=1, seed=2)
    a = fab.add_pod("node1", "a")
    b = fab.add_pod("node1", "b")
    cl = a.netns.udp_socket()
    cl.sendto(b"x", (b.ip, 9), fab.now)
    fab.run(1.0)
    fab.tracer.enabled = True
    fab.run(40.0)  # the entry for b goes STALE
    b.eth0.up = False  # b vanishes silently
    cl.sendto(b"y", (b.ip, 9), fab.now)  # uses the STALE entry: DELAY
    fab.run(12.0)
    probes = [h for h in fab.tracer.hops if h.event == "arp request" and "unicast" in h.detail]
    assert len(probes) == 3
    assert str(b.ip) not in " ".join(a.netns.neigh_show(fab.now))


def test_subnet_broadcast_reaches_the_segment_and_draws_no_icmp_error() -> None:
    fab = Fabric(nodes=1, seed=4)
    a = fab.add_pod("node1", "a")
    b = fab.add_pod("node1", "b")
    listener = b.netns.udp_socket()
    listener.bind(port=9)
    cl = a.netns.udp_socket()
    cl.sendto(b"hello all", ("10.244.1.255", 9), fab.now)
    cl.sendto(b"nobody", ("10.244.1.255", 10), fab.now)  # no socket on port 10 anywhere
    fab.run(1.0)
    msg = listener.recvfrom()
    assert msg is not None and msg == (b"hello all", (a.ip, cl.local[1] if cl.local else 0))
    assert not cl.errors  # RFC 1812 4.3.2.7: no ICMP error about a broadcast datagram


def test_an_icmp_error_about_another_protocol_is_related_to_its_connection() -> None:
    """conntrack tracks any IP protocol by its addresses: the protocol unreachable a
    pod answers to a GRE packet is RELATED and crosses both nodes back to the sender
    (not dropped on the way as conntrack INVALID)."""
    from emunet.dataplane.fabric import Fabric
    from emunet.dataplane.trace import Drop

    fab = Fabric(nodes=2, seed=3)
    a = fab.add_pod("node1", "a")
    b = fab.add_pod("node2", "b")
    a.netns.ip_send_local(47, None, b.ip, b"\x00\x00\x08\x00gre-data", fab.now)
    fab.run(1.0)
    assert b.netns.drops.get(str(Drop.PROTO_UNREACHABLE)) == 1
    for name in ("node1", "node2"):
        assert str(Drop.CONNTRACK_INVALID) not in fab.node(name).drops(), name
    assert a.netns.drops.get(str(Drop.ICMP_ERROR_NO_SOCKET)) == 1  # it arrived
