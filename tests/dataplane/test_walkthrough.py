"""The seed document's two pod-to-pod walk-throughs, hop by hop (issue 3).

Same node: pod1 eth0 -> veth -> cni0 (FDB) -> veth -> pod2 eth0.
Different nodes: pod1 eth0 -> veth -> cni0 (to its own MAC: up to the root
namespace) -> route 10.244.0.0/16 dev flannel0 -> UDP to node2:8285 ->
node2 flannel0 -> route 10.244.2.0/24 dev cni0 -> veth -> pod4 eth0.
"""

from __future__ import annotations

from emunet.dataplane.fabric import Fabric


def _warm_and_trace(fab: Fabric, src: str, dst: str) -> list[tuple[str, str, str, str]]:
    a, b = fab.pod(src), fab.pod(dst)
    srv = b.netns.udp_socket()
    srv.bind(port=80)
    cl = a.netns.udp_socket()
    cl.sendto(b"warm-up: resolves ARP and fills the FDB", (b.ip, 80), fab.now)
    fab.run(1.0)
    fab.tracer.clear()
    fab.tracer.enabled = True
    cl.sendto(b"hello", (b.ip, 80), fab.now)
    fab.run(1.0)
    assert srv.recvfrom() is not None and srv.recvfrom() == (b"hello", (a.ip, cl.local[1]))  # type: ignore[index]
    return fab.tracer.events()


def test_same_node_via_the_bridge() -> None:
    fab = Fabric(nodes=2, seed=1)
    p1 = fab.add_pod("node1", "pod1")
    p2 = fab.add_pod("node1", "pod2")
    assert _warm_and_trace(fab, "pod1", "pod2") == [
        ("node1", "pod1", "", "sendto"),
        ("node1", "pod1", "eth0", "route"),
        ("node1", "pod1", "eth0", "tx"),
        ("node1", "root", p1.veth, "rx"),
        ("node1", "root", "cni0", "fdb hit"),
        ("node1", "root", p2.veth, "tx"),
        ("node1", "pod2", "eth0", "rx"),
        ("node1", "pod2", "", "deliver"),
    ]


def test_different_nodes_via_default_route_and_overlay() -> None:
    fab = Fabric(nodes=2, seed=1)
    p1 = fab.add_pod("node1", "pod1")
    p4 = fab.add_pod("node2", "pod4")
    events = _warm_and_trace(fab, "pod1", "pod4")
    assert events == [
        ("node1", "pod1", "", "sendto"),
        ("node1", "pod1", "eth0", "route"),  # default via 10.244.1.1 dev eth0
        ("node1", "pod1", "eth0", "tx"),
        ("node1", "root", p1.veth, "rx"),
        ("node1", "root", "cni0", "fdb local"),  # to cni0's own MAC: up to the IP stack
        ("node1", "root", "cni0", "rx"),
        ("node1", "root", "flannel0", "forward"),  # 10.244.0.0/16 dev flannel0
        ("node1", "root", "flannel0", "encapsulate"),
        ("node1", "root", "eth0", "tx"),
        ("node2", "root", "eth0", "rx"),
        ("node2", "root", "flannel0", "decapsulate"),
        ("node2", "root", "flannel0", "rx"),
        ("node2", "root", "cni0", "forward"),  # 10.244.2.0/24 dev cni0
        ("node2", "root", "cni0", "tx"),
        ("node2", "root", "cni0", "fdb hit"),
        ("node2", "root", p4.veth, "tx"),
        ("node2", "pod4", "eth0", "rx"),
        ("node2", "pod4", "", "deliver"),
    ]
    details = {(h.node, h.event): h.detail for h in fab.tracer.hops}
    assert details[("node1", "route")].endswith("via route default via 10.244.1.1 dev eth0")
    assert details[("node1", "forward")].startswith("route 10.244.0.0/16 dev flannel0")
    assert details[("node1", "encapsulate")].startswith("udp 172.18.0.2:8285 > 172.18.0.3:8285")
    assert details[("node2", "forward")].startswith("route 10.244.2.0/24 dev cni0")
