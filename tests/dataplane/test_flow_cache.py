"""The flow cache is invisible: the same workload with it on and off gives the same
deliveries, counters, conntrack tables and drops (and it really is used)."""

from __future__ import annotations

import hashlib
from ipaddress import IPv4Address
from typing import Any

from emunet.cluster.kubeproxy import Endpoint, Service, ServicePort
from emunet.dataplane.conntrack import Status
from emunet.dataplane.fabric import Fabric
from emunet.dataplane.tcp import TCPConnection
from emunet.packets.checksum import internet_checksum


def workload(flow_cache: bool) -> dict[str, Any]:
    fab = Fabric(nodes=2, seed=21, flow_cache=flow_cache, delay=0.001)
    a = fab.add_pod("node1", "a")
    b = fab.add_pod("node1", "b")
    c = fab.add_pod("node2", "c")
    svc = Service(
        "default", "echo", IPv4Address("10.96.0.50"), (ServicePort("u", "UDP", 53, 5353),)
    )
    eps = {("default", "echo"): [Endpoint(c.ip, "node2", port_name="u")]}
    for node in fab.nodes.values():
        node.set_services([svc], eps, fab.now)
    got: dict[str, bytearray] = {"b": bytearray(), "c": bytearray()}
    for pod in (b, c):
        lst = pod.netns.tcp_listen(9000)

        def accept(lst: Any = lst, name: str = pod.name) -> None:
            while (conn := lst.accept()) is not None:

                def drain(conn: TCPConnection = conn) -> None:
                    got[name].extend(conn.recv())

                conn.on_event = drain

        lst.on_event = accept
        echo = pod.netns.udp_socket()
        echo.bind(port=5353)

        def reply(echo: Any = echo) -> None:
            while (msg := echo.recvfrom()) is not None:
                echo.sendto(msg[0][::-1], msg[1], fab.now)

        echo.on_event = reply
    data = bytes(range(256)) * 512  # 128 KiB each way
    conns = [a.netns.tcp_connect(p.ip, 9000, fab.now) for p in (b, c)]
    fab.run(0.2)
    for conn in conns:
        sent = 0
        while sent < len(data):
            sent += conn.send(data[sent : sent + 32768], fab.now)
            fab.run(0.01)
        conn.close(fab.now)
    udp = a.netns.udp_socket()
    answers = []
    for i in range(20):  # through the Service (NATed: full path) and straight to the pod
        udp.sendto(
            b"q%d" % i, ("10.96.0.50" if i % 2 else str(c.ip), 53 if i % 2 else 5353), fab.now
        )
        fab.run(0.01)
        while (m := udp.recvfrom()) is not None:
            answers.append((m[0], str(m[1][0])))
    pings = []
    for dst in (c, b):  # across nodes (routed) and on the node (bridged)
        ping = a.netns.ping_socket()
        for seq in range(1, 6):
            ping.send(dst.ip, seq, fab.now, b"p" * 56)
            fab.run(0.01)
        pings += [(r.seq, str(r.src), r.ttl, r.size, round(r.rtt, 9)) for r in ping.replies]
        ping.close()
    fab.run(5.0)
    tables = [n.root.flows.flows for n in fab.nodes.values() if n.root.flows is not None]
    flows = [key for table in tables for key in table]
    return {
        "tcp": {k: hashlib.sha256(v).hexdigest() for k, v in got.items()},
        "udp": answers,
        "ping": pings,
        "echo_flows": sum(key[0] == 1 for key in flows),
        "counters": {n.name: n.counters() for n in fab.nodes.values()},
        "conntrack": {n.name: n.conntrack_listing(fab.now) for n in fab.nodes.values()},
        "drops": {n.name: n.drops() for n in fab.nodes.values()},
        "flows": len(flows),
        "now": fab.now,
    }


def test_flow_cache_changes_nothing_observable() -> None:
    slow = workload(flow_cache=False)
    fast = workload(flow_cache=True)
    assert slow["flows"] == 0 and fast["flows"] > 0  # the cache was really exercised
    assert fast["echo_flows"] == 4  # the ping's requests and replies, leaving and entering
    expected = hashlib.sha256(bytes(range(256)) * 512).hexdigest()
    assert fast["tcp"] == {"b": expected, "c": expected}
    assert len(fast["udp"]) == 20
    assert len(fast["ping"]) == 10
    for key in ("tcp", "udp", "ping", "counters", "conntrack", "drops", "now"):
        assert fast[key] == slow[key], key


def one_pod_node() -> tuple[Any, Any, Any]:
    from emunet.dataplane.node import Node

    node = Node("node1", "172.18.0.2", "10.244.1.0/24", gateway="172.18.0.1", seed=1)
    node.set_lease("10.244.2.0/24", "172.18.0.3")
    pod = node.add_pod("p")
    sock = pod.netns.udp_socket()
    sock.bind(port=5000)
    return node, pod, sock


REMOTE = IPv4Address("10.244.2.7")


def egress_frame(node: Any, pod: Any, ident: int) -> bytes:
    from emunet.packets import ethernet, ipv4, udp

    seg = udp.build_fast(5000, 6000, b"x" * 8, pod.ip.packed, REMOTE.packed)
    pkt = ipv4.build(ipv4.IPv4Header(pod.ip, REMOTE, 17, ttl=64, identification=ident), seg)
    return ethernet.frame(node.cni0.mac, pod.mac, 0x0800, pkt)


def ingress_packet(pod: Any, ident: int) -> bytes:
    from emunet.packets import ipv4, udp

    seg = udp.build_fast(6000, 5000, b"r", REMOTE.packed, pod.ip.packed)
    return ipv4.build(ipv4.IPv4Header(REMOTE, pod.ip, 17, ttl=62, identification=ident), seg)


def test_cached_flows_give_the_full_paths_bytes_for_every_checksum() -> None:
    """A cached flow's packets get their TTL decrements as RFC 1624 updates (egress:
    FORWARD's and flanneld's; ingress: flanneld's and FORWARD's): the packets must
    be byte for byte what the reference steps give, whatever the checksum (65536 IP
    ids cover every value), both ways."""
    from emunet.dataplane.actions import UnderlayPacket
    from emunet.packets import ipv4

    node, pod, sock = one_pod_node()
    got: list[bytes] = []
    rx = pod.eth0.receive

    def pod_rx(iface: Any, frame: bytes, now: float) -> None:
        got.append(bytes(frame))
        rx(iface, frame, now)

    pod.eth0.receive = pod_rx
    for ident in range(0x10000):
        pod.netns.l2_xmit(pod.eth0, egress_frame(node, pod, ident), 1.0)
        (sent,) = node.take_actions()
        assert not isinstance(sent, UnderlayPacket)
        want = bytearray(egress_frame(node, pod, ident)[14:])
        ipv4.decrement_ttl_generic(want)  # FORWARD
        ipv4.decrement_ttl_generic(want)  # flanneld
        assert sent[1] == want, ident
        node.overlay_received(("172.18.0.3", 8285), ingress_packet(pod, ident), 1.0)
        node.take_actions()
        want = bytearray(ingress_packet(pod, ident))
        ipv4.decrement_ttl_generic(want)  # flanneld
        ipv4.decrement_ttl_generic(want)  # FORWARD
        assert got.pop()[14:] == want, ident
        assert sock.recvfrom() is not None
    assert node.root.flows is not None and len(node.root.flows) == 2 and not node.drops()


def changes_workload(flow_cache: bool) -> dict[str, Any]:
    """Traffic of one established UDP flow both ways through a node, with changes
    to everything a cached flow was decided with (each made while the flow is
    cached): what leaves the node, what reaches its pods and what each tap sees
    must not depend on the cache."""
    from ipaddress import IPv4Network

    from emunet.dataplane.actions import UnderlayPacket
    from emunet.dataplane.node import Node
    from emunet.packets import arp, ethernet, ipv4, udp
    from emunet.packets.mac import MAC

    node = Node(
        "node1", "172.18.0.2", "10.244.1.0/24", gateway="172.18.0.1", seed=1, flow_cache=flow_cache
    )
    node.set_lease("10.244.2.0/24", "172.18.0.3")
    pod = node.add_pod("p")
    other = node.add_pod("q")  # sees what the bridge floods
    sock = pod.netns.udp_socket()
    sock.bind(port=5000)
    veth = node.root.interfaces[pod.veth]
    assert node.cni0.mac is not None
    log: list[Any] = []

    def logging_rx(who: Any) -> None:
        rx = who.eth0.receive

        def pod_rx(iface: Any, frame: bytes, now: float) -> None:
            log.append((who.name, bytes(frame)))
            rx(iface, frame, now)

        who.eth0.receive = pod_rx

    logging_rx(pod)
    logging_rx(other)
    now = 1.0
    ident = 0
    cached = unreplied = 0

    def advance(to: float) -> None:
        nonlocal now
        while (t := node.get_timer()) is not None and t <= to:
            node.handle_timer(max(t, now))
        now = to

    def collect() -> None:
        for action in node.take_actions():
            if isinstance(action, UnderlayPacket):
                log.append(("wire", str(action.next_hop), bytes(action.packet)))
            else:
                log.append(("overlay", action[0], bytes(action[1])))
        while (m := sock.recvfrom()) is not None:
            log.append(("sock", m[0], m[1]))

    def traffic(
        n: int = 3,
        size: int = 16,
        ttl_out: int = 64,
        ttl_in: int = 62,
        egress: bool = True,
        every: float = 0.5,
        ingress: bool = True,
        sport: int = 5000,
        dst: IPv4Address = REMOTE,
    ) -> None:
        """``n`` rounds of a datagram from the pod's ``sport`` to ``dst`` (``egress``)
        and one back from ``dst`` (``ingress``)."""
        nonlocal ident, cached, unreplied
        for _ in range(n):
            ident += 1
            if egress:
                payload = bytes([ident & 0xFF]) * size
                seg = udp.build_fast(sport, 6000, payload, pod.ip.packed, dst.packed)
                pkt = ipv4.build_fast(pod.ip.packed, dst.packed, 17, seg, ttl=ttl_out, ident=ident)
                assert node.cni0.mac is not None
                pod.netns.l2_xmit(
                    pod.eth0, ethernet.frame(node.cni0.mac, pod.mac, 0x0800, pkt), now
                )
                collect()
            if ingress:
                seg = udp.build_fast(6000, sport, b"r" * size, dst.packed, pod.ip.packed)
                pkt = ipv4.build_fast(dst.packed, pod.ip.packed, 17, seg, ttl=ttl_in, ident=ident)
                node.overlay_received(("172.18.0.3", 8285), pkt, now)
                collect()
            flows = node.root.flows.flows.values() if node.root.flows is not None else ()
            cached = max(cached, len(flows))
            fresh = sum(1 for f in flows if not f.ct.status & Status.SEEN_REPLY)
            unreplied = max(unreplied, fresh)
            advance(now + every)

    def tap(dev: Any) -> Any:
        def see(t: float, data: bytes | bytearray) -> None:
            log.append(("tap", dev.name, bytes(data)))

        dev.taps.append(see)
        return see

    traffic(4)
    node.set_lease("10.244.2.0/24", "172.18.0.9")  # the peer moved
    traffic()
    for dev in (node.eth0, node.flannel0, node.cni0, veth):
        see = tap(dev)
        traffic()
        dev.taps.remove(see)
        traffic()
    for ttl in (2, 3, 1):  # flanneld's and FORWARD's limits
        traffic(2, ttl_out=ttl, ttl_in=ttl)
        traffic()
    node.root.add_route("10.244.2.0/25", node.eth0, via="172.18.0.1")  # more specific
    traffic()
    node.root.routes.delete(IPv4Network("10.244.2.0/25"))
    traffic()
    node.flannel0.mtu = 1000
    traffic(2, size=1200)  # DF: fragmentation needed, both ways
    node.flannel0.mtu = 1472
    traffic(2, size=1200)
    for dev in (pod.eth0, veth, node.cni0, node.flannel0):
        dev.up = False
        traffic(2)
        dev.up = True
        traffic(2)
    node.root.neigh_delete(pod.ip, now)  # ip neigh del: resolved again
    traffic()
    # an ARP reply gives the pod's IP another MAC, then the entry is deleted again
    fake = MAC(b"\x02\x00\x00\x00\xbe\xef")
    reply = arp.build(arp.ARPPacket(arp.REPLY, fake, pod.ip, MAC(node.cni0.mac), node.gateway_ip))
    node.inject("root", pod.veth, ethernet.frame(node.cni0.mac, fake, 0x0806, reply), now)
    traffic(2, egress=False)
    node.root.neigh_delete(pod.ip, now)
    traffic()
    # the pod's MAC shows up behind the other pod's port: the FDB entry moves
    probe = ipv4.build_fast(pod.ip.packed, node.gateway_ip.packed, 1, b"\x00" * 8, ttl=64)
    node.inject("root", other.veth, ethernet.frame(node.cni0.mac, pod.mac, 0x0800, probe), now)
    traffic(2, egress=False)
    traffic()
    node.bridge.ageing_time = 10.0  # the FDB entry ages out while only replies flow
    traffic(4, egress=False, every=4.0)
    node.bridge.ageing_time = 300.0
    traffic()
    advance(now + 31)  # the neighbour goes STALE
    traffic()
    advance(now + 301)  # the FDB entry ages out, conntrack's entry expires
    traffic()
    node.remove_lease("10.244.2.0/24")  # net unreachable
    traffic()
    node.set_lease("10.244.2.0/24", "172.18.0.3")
    traffic()
    # streams that see no reply (NEW: FORWARD's rules judge every packet), each way
    traffic(4, ingress=False, sport=5001)
    traffic(4, egress=False, sport=5002)  # the pod answers port unreachable (RELATED)
    # a ClusterIP flannel0 routes and FLANNEL-POSTRTG leaves alone (pod to pod: not
    # masqueraded, so the stream is un-NATed); no Service owns it yet
    cip = IPv4Address("10.244.2.77")
    traffic(4, ingress=False, sport=5003, dst=cip)
    gone = Service("default", "gone", cip, (ServicePort("u", "UDP", 6000, 6000),))
    node.set_services([gone], {}, now)  # no endpoints: KUBE-SERVICES rejects what follows
    traffic(2, ingress=False, sport=5003, dst=cip)
    node.set_services([], {}, now)
    traffic(3, ingress=False, sport=5003, dst=cip)
    # the unreplied timeout (30 s) from the last packet, cached or not; then run out
    for every in (25.0, 31.0):
        traffic(1, ingress=False, sport=5001, every=every)
        log.append(("conntrack", node.conntrack_listing(now)))
    traffic(3, sport=5001)  # the reply comes: established
    return {
        "log": log,
        "counters": node.counters(),
        "drops": node.drops(),
        "conntrack": node.conntrack_listing(now),
        "cached": cached,
        "unreplied": unreplied,
    }


def test_flow_cache_follows_every_change_it_was_decided_with() -> None:
    slow = changes_workload(flow_cache=False)
    fast = changes_workload(flow_cache=True)
    assert slow["cached"] == 0 and fast["cached"] >= 2  # both directions were cached
    assert slow["unreplied"] == 0 and fast["unreplied"] >= 2  # streams without replies too
    kinds = {entry[0] for entry in fast["log"]}
    assert kinds == {"p", "q", "overlay", "wire", "sock", "tap", "conntrack"}  # every outcome
    for i, (a, b) in enumerate(zip(fast["log"], slow["log"], strict=True)):
        assert a == b, i
    for key in ("counters", "drops", "conntrack"):
        assert fast[key] == slow[key], key


def test_a_connection_to_the_node_itself_is_delivered_not_forwarded() -> None:
    """An established, un-NATed connection from a pod to a socket of the node's own
    root namespace must never get a flow: its packets are for this host (the
    route table alone would send them back out of cni0)."""
    fab = Fabric(nodes=1, seed=5)
    node = fab.node("node1")
    pod = fab.add_pod("node1", "a")
    lst = node.root.tcp_listen(7000)
    got = bytearray()
    conns: list[TCPConnection] = []

    def accept() -> None:
        while (conn := lst.accept()) is not None:
            conns.append(conn)

            def drain(conn: TCPConnection = conn) -> None:
                got.extend(conn.recv())

            conn.on_event = drain

    lst.on_event = accept
    client = pod.netns.tcp_connect(node.gateway_ip, 7000, fab.now)
    fab.run(0.2)
    for _ in range(20):
        client.send(b"x" * 1000, fab.now)
        fab.run(0.01)
    fab.run(1.0)
    assert bytes(got) == b"x" * 20000 and not node.drops()
    assert node.root.flows is not None and len(node.root.flows) == 0


def test_a_bridged_stream_without_replies_meets_a_new_rule_at_its_next_packet() -> None:
    """Pod to pod on one node, bridged: a UDP stream the peer never answers skips the
    hooks while no rule judges it (br_netfilter asks ``fast_forward`` per packet).
    When a Service without endpoints takes the peer's address and port, KUBE-SERVICES
    rejects the very next datagram, as the full hooks do, and the peer gets nothing."""
    fab = Fabric(nodes=1, seed=5)
    a = fab.add_pod("node1", "a")
    b = fab.add_pod("node1", "b")
    sink = b.netns.udp_socket()
    sink.bind(port=9)
    out = a.netns.udp_socket()
    node = fab.nodes["node1"]
    assert node.netfilter is not None
    for i in range(4):
        out.sendto(b"x%d" % i, (str(b.ip), 9), fab.now)
        fab.run(0.01)
    got = []
    while (m := sink.recvfrom()) is not None:
        got.append(m[0])
    assert got == [b"x0", b"x1", b"x2", b"x3"] and not out.errors
    svc = Service("default", "gone", b.ip, (ServicePort("u", "UDP", 9, 9),))
    node.set_services([svc], {}, fab.now)
    out.sendto(b"late", (str(b.ip), 9), fab.now)
    fab.run(0.01)
    assert sink.recvfrom() is None
    errors = [(e.errno_name, e.icmp_type, e.icmp_code, e.dst) for e in out.errors]
    assert errors == [("ECONNREFUSED", 3, 3, b.ip)]  # KUBE-SERVICES' icmp-port-unreachable
    assert node.netfilter.last_reject == (3, 3)


def test_a_malformed_header_is_not_bridged_as_an_established_ping() -> None:
    """br_netfilter asks ``fast_forward`` per bridged packet. A header length below 20
    bytes is malformed however its bytes read: the root namespace drops it, as the
    full hooks do, though read with that length its bytes name an established ping
    (ID 0x08.. reads as an echo request, TTL 64 and protocol 1 as the identifier)."""
    fab = Fabric(nodes=1, seed=9)
    a = fab.add_pod("node1", "a")
    b = fab.add_pod("node1", "b")
    ping = a.netns.ping_socket(0x4001)
    for seq in (1, 2):
        ping.send(b.ip, seq, fab.now, b"p" * 56)
        fab.run(0.01)
    assert [r.seq for r in ping.replies] == [1, 2]
    node = fab.nodes["node1"]
    assert node.netfilter is not None
    (entry,) = node.netfilter.conntrack
    expires = entry.expires
    fab.run(1.0)
    header = bytearray(bytes.fromhex("4100005408000000400100000000000000000000"))
    header[12:20] = a.ip.packed + b.ip.packed
    echo = bytes.fromhex("0800000040010003") + b"p" * 56
    a.netns.l2_xmit(a.eth0, b.mac + a.mac + b"\x08\x00" + bytes(header) + echo, fab.now)
    fab.run(0.01)
    assert node.root.drops == {"malformed": 1} and not b.netns.drops
    assert entry.expires == expires  # not refreshed: the packet never reached conntrack


def test_a_bridged_established_packet_loses_its_ethernet_padding_as_on_the_full_path() -> None:
    """br_netfilter trims a frame to its IP total length before the hooks (Linux's
    br_validate_ipv4), so a short packet padded to Ethernet's 60 bytes reaches the
    other pod as 14 + its IP length, on the established fast path as on the first."""
    fab = Fabric(nodes=1, seed=9)
    a = fab.add_pod("node1", "a")
    b = fab.add_pod("node1", "b")
    ping = a.netns.ping_socket(0x4002)
    sizes: list[int] = []

    def tap(now: float, frame: bytes | bytearray) -> None:
        if frame[:6] == b.mac and frame[12:14] == b"\x08\x00":  # IPv4 into b
            sizes.append(len(frame))

    b.eth0.taps.append(tap)
    for seq in (1, 2, 3):
        header = bytearray(bytes.fromhex("4500001c000100004001") + bytes(10))
        header[12:20] = a.ip.packed + b.ip.packed
        header[10:12] = internet_checksum(header).to_bytes(2, "big")
        echo = bytearray(bytes.fromhex("08000000400200") + bytes([seq]))
        echo[2:4] = internet_checksum(echo).to_bytes(2, "big")
        frame = b.mac + a.mac + b"\x08\x00" + bytes(header) + bytes(echo) + bytes(18)
        a.netns.l2_xmit(a.eth0, frame, fab.now)
        fab.run(0.01)
    assert len(ping.replies) == 3  # the replies: the connection is established
    assert sizes == [42, 42, 42]  # 14 + 28: padding to 60 trimmed every time
    node = fab.nodes["node1"]
    assert node.netfilter is not None
    (entry,) = node.netfilter.conntrack
    assert entry.status & Status.SEEN_REPLY
