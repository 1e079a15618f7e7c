"""The flow cache is invisible: the same workload with it on and off gives the same
deliveries, counters, conntrack tables and drops (and it really is used)."""

from __future__ import annotations

import hashlib
from ipaddress import IPv4Address
from typing import Any

from emunet.cluster.kubeproxy import Endpoint, Service, ServicePort
from emunet.dataplane.fabric import Fabric
from emunet.dataplane.tcp import TCPConnection


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
    fab.run(5.0)
    used = sum(len(n.root.flows or {}) for n in fab.nodes.values())
    return {
        "tcp": {k: hashlib.sha256(v).hexdigest() for k, v in got.items()},
        "udp": answers,
        "counters": {n.name: n.counters() for n in fab.nodes.values()},
        "conntrack": {n.name: n.conntrack_listing(fab.now) for n in fab.nodes.values()},
        "drops": {n.name: n.drops() for n in fab.nodes.values()},
        "flows": used,
        "now": fab.now,
    }


def test_flow_cache_changes_nothing_observable() -> None:
    slow = workload(flow_cache=False)
    fast = workload(flow_cache=True)
    assert slow["flows"] == 0 and fast["flows"] > 0  # the cache was really exercised
    expected = hashlib.sha256(bytes(range(256)) * 512).hexdigest()
    assert fast["tcp"] == {"b": expected, "c": expected}
    assert len(fast["udp"]) == 20
    for key in ("tcp", "udp", "counters", "conntrack", "drops", "now"):
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
    """A cached flow applies several TTL decrements as one RFC 1624 update (egress:
    FORWARD's and flanneld's; ingress: flanneld's and FORWARD's): the packets must
    be byte for byte what single steps give, whatever the checksum (65536 IP ids
    cover every value), both ways."""
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
        ipv4.decrement_ttl(want)  # FORWARD
        ipv4.decrement_ttl(want)  # flanneld
        assert sent[1] == want, ident
        node.overlay_received(("172.18.0.3", 8285), ingress_packet(pod, ident), 1.0)
        node.take_actions()
        want = bytearray(ingress_packet(pod, ident))
        ipv4.decrement_ttl(want)  # flanneld
        ipv4.decrement_ttl(want)  # FORWARD
        assert got.pop()[14:] == want, ident
        assert sock.recvfrom() is not None
    assert node.root.flows is not None and len(node.root.flows) == 2 and not node.drops()
