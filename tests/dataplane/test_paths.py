"""Pod-to-pod, pod-to-node paths through an in-memory fabric (issue 3)."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest

from emunet.dataplane.fabric import Fabric
from emunet.dataplane.node import Pod
from emunet.dataplane.trace import Drop
from emunet.errors import SocketError


def ping(fab: Fabric, pod: Pod, dst: IPv4Address | str, count: int = 3) -> list[int]:
    sock = pod.netns.ping_socket()
    for seq in range(1, count + 1):
        sock.send(dst, seq, fab.now, b"\x00" * 56)
        fab.run(0.5)
    return [r.seq for r in sock.replies]


def udp_echo_server(fab: Fabric, pod: Pod, port: int) -> None:
    srv = pod.netns.udp_socket()
    srv.bind(port=port)

    def on_event() -> None:
        while (msg := srv.recvfrom()) is not None:
            data, src = msg
            srv.sendto(data.upper(), src, fab.now)

    srv.on_event = on_event


@pytest.fixture
def fab() -> Fabric:
    f = Fabric(nodes=3, seed=7)
    f.add_pod("node1", "a")
    f.add_pod("node1", "b")
    f.add_pod("node2", "c")
    return f


@pytest.mark.parametrize("dst", ["b", "c"], ids=["same-node", "cross-node"])
def test_ping_pod_to_pod(fab: Fabric, dst: str) -> None:
    assert ping(fab, fab.pod("a"), fab.pod(dst).ip) == [1, 2, 3]


@pytest.mark.parametrize("dst", ["b", "c"], ids=["same-node", "cross-node"])
def test_udp_request_response(fab: Fabric, dst: str) -> None:
    udp_echo_server(fab, fab.pod(dst), 5353)
    cl = fab.pod("a").netns.udp_socket()
    cl.sendto(b"hello", (fab.pod(dst).ip, 5353), fab.now)
    fab.run(1.0)
    data, src = cl.recvfrom() or (b"", None)
    assert data == b"HELLO"
    # the server saw the pod's own IP, and answered from its own: no NAT between pods
    assert src == (fab.pod(dst).ip, 5353)


def test_pod_to_own_node_ip_and_other_node_ip(fab: Fabric) -> None:
    a = fab.pod("a")
    assert ping(fab, a, fab.node("node1").node_ip, 2) == [1, 2]
    assert ping(fab, a, fab.node("node2").node_ip, 2) == [1, 2]
    # and the gateway on cni0
    assert ping(fab, a, fab.node("node1").gateway_ip, 1) == [1]


def test_peers_agree_on_pod_ip(fab: Fabric) -> None:
    c = fab.pod("c")
    srv = c.netns.udp_socket()
    srv.bind(port=7000)
    a = fab.pod("a")
    cl = a.netns.udp_socket()
    cl.sendto(b"who am i", (c.ip, 7000), fab.now)
    fab.run(1.0)
    msg = srv.recvfrom()
    assert msg is not None
    assert msg[1][0] == a.ip == a.netns.addresses[-1][1].ip  # eth0's address, as seen by a peer


def test_containers_of_a_pod_share_localhost_and_port_space(fab: Fabric) -> None:
    pod = fab.pod("a")
    assert pod.containers == ("app",)
    web = pod.netns.udp_socket()  # "container" 1
    web.bind("127.0.0.1", 8080)
    sidecar = pod.netns.udp_socket()  # "container" 2, same netns
    sidecar.sendto(b"ping", ("127.0.0.1", 8080), fab.now)
    fab.run(0.1)
    msg = web.recvfrom()
    assert msg is not None and msg[0] == b"ping" and msg[1][0] == IPv4Address("127.0.0.1")
    again = pod.netns.udp_socket()
    with pytest.raises(SocketError) as err:
        again.bind("0.0.0.0", 8080)
    assert err.value.errno_name == "EADDRINUSE"
    # another pod has its own port space
    other = fab.pod("b").netns.udp_socket()
    other.bind("0.0.0.0", 8080)


def test_arp_queues_first_packet_and_fdb_ages_out(fab: Fabric) -> None:
    fab.tracer.enabled = True
    a, b = fab.pod("a"), fab.pod("b")
    srv = b.netns.udp_socket()
    srv.bind(port=9)
    cl = a.netns.udp_socket()
    cl.sendto(b"first", (b.ip, 9), fab.now)
    fab.run(0.1)
    events = [h.event for h in fab.tracer.hops if h.netns == "a"]
    assert events.index("neigh queued") < events.index("arp request") < events.index("tx")
    assert srv.recvfrom() == (b"first", (a.ip, cl.local[1] if cl.local else 0))
    assert any(
        f"{b.ip} dev eth0 lladdr {b.mac} REACHABLE" == line for line in a.netns.neigh_show(fab.now)
    )
    bridge = fab.node("node1").bridge
    assert set(bridge.fdb) == {a.mac, b.mac}
    fab.run(299.0)
    assert set(bridge.fdb) == {a.mac, b.mac}
    fab.run(2.0)
    assert bridge.fdb == {}


def test_arp_timeout_gives_host_unreachable(fab: Fabric) -> None:
    a = fab.pod("a")
    cl = a.netns.udp_socket()
    ghost = IPv4Address("10.244.1.200")  # in the subnet, nobody there
    cl.sendto(b"x", (ghost, 9), fab.now)
    fab.run(5.0)
    assert [e.errno_name for e in cl.errors] == ["EHOSTUNREACH"]
    assert fab.node("node1").drops().get(str(Drop.ARP_TIMEOUT)) == 1


def test_deleting_an_unresolved_neighbour_fails_its_queued_packets(fab: Fabric) -> None:
    """``ip neigh del`` of an entry still resolving: what waited for it fails as on an
    ARP timeout (counted, host unreachable to the sender), not silently."""
    a = fab.pod("a")
    cl = a.netns.udp_socket()
    ghost = IPv4Address("10.244.1.200")
    cl.sendto(b"x", (ghost, 9), fab.now)
    fab.run(0.1)
    assert a.netns.neighbours[ghost.packed].state == "INCOMPLETE"
    assert a.netns.neigh_delete(ghost, fab.now) and not a.netns.neigh_delete(ghost, fab.now)
    fab.run(0.1)
    assert [e.errno_name for e in cl.errors] == ["EHOSTUNREACH"]
    assert ghost.packed not in a.netns.neighbours


def test_bridge_never_learns_its_own_mac_on_a_port(fab: Fabric) -> None:
    """A frame from a pod with cni0's MAC as its source does not move cni0's own
    address to that port (Linux keeps it a local entry)."""
    node = fab.node("node1")
    a = fab.pod("a")
    assert node.cni0.mac is not None
    frame = struct.pack("!6s6sH", b"\xff" * 6, node.cni0.mac, 0x0800) + bytes(20)
    node.inject("root", a.veth, frame, fab.now)
    assert node.cni0.mac not in node.bridge.fdb


def test_net_unreachable_for_unknown_subnet(fab: Fabric) -> None:
    cl = fab.pod("a").netns.udp_socket()
    cl.sendto(b"x", ("10.244.77.5", 9), fab.now)
    fab.run(1.0)
    (err,) = cl.errors
    assert (err.icmp_type, err.icmp_code, err.errno_name) == (3, 0, "ENETUNREACH")
    assert err.offender == IPv4Address("10.244.1.0")  # flannel0's address
    assert fab.node("node1").flannel.no_lease == 1


def test_port_unreachable_for_closed_udp_port(fab: Fabric) -> None:
    cl = fab.pod("a").netns.udp_socket()
    cl.sendto(b"x", (fab.pod("c").ip, 4444), fab.now)
    fab.run(1.0)
    (err,) = cl.errors
    assert (err.icmp_type, err.icmp_code, err.errno_name) == (3, 3, "ECONNREFUSED")
    assert err.offender == fab.pod("c").ip


def test_frag_needed_with_next_hop_mtu_for_df_packet() -> None:
    # the classic MTU mistake: pods configured with 1500 while flannel0 has 1472
    fab = Fabric(nodes=2, pod_mtu=1500)
    a = fab.add_pod("node1", "a")
    c = fab.add_pod("node2", "c")
    cl = a.netns.udp_socket()
    cl.sendto(b"\x00" * (1500 - 28), (c.ip, 9), fab.now)  # a 1500-byte DF packet
    fab.run(1.0)
    (err,) = cl.errors
    assert (err.icmp_type, err.icmp_code, err.mtu, err.errno_name) == (3, 4, 1472, "EMSGSIZE")
    assert err.offender == fab.node("node1").gateway_ip


def test_fragmented_without_df_and_reassembled_at_receiver() -> None:
    fab = Fabric(nodes=2, pod_mtu=1500)
    a = fab.add_pod("node1", "a")
    c = fab.add_pod("node2", "c")
    srv = c.netns.udp_socket()
    srv.bind(port=9)
    cl = a.netns.udp_socket()
    cl.df = False
    payload = bytes(range(256)) * 12  # 3072 bytes: pod eth0 fragments, flannel0 again
    cl.sendto(payload, (c.ip, 9), fab.now)
    fab.run(1.0)
    msg = srv.recvfrom()
    assert msg is not None and msg[0] == payload
    assert fab.node("node1").flannel0.tx_packets >= 3


def test_local_emsgsize_when_df_datagram_exceeds_pod_mtu(fab: Fabric) -> None:
    cl = fab.pod("a").netns.udp_socket()
    with pytest.raises(SocketError) as err:
        cl.sendto(b"\x00" * 1500, (fab.pod("c").ip, 9), fab.now)
    assert err.value.errno_name == "EMSGSIZE"


def test_traceroute_gets_time_exceeded_from_each_router_in_order(fab: Fabric) -> None:
    a, c = fab.pod("a"), fab.pod("c")
    answers: list[tuple[int, str]] = []
    for ttl in range(1, 8):
        sock = a.netns.ping_socket()
        sock.send(c.ip, ttl, fab.now, b"\x00" * 32, ttl=ttl)
        fab.run(1.0)
        if sock.replies:
            answers.append((ttl, f"reply {sock.replies[0].src}"))
            break
        if sock.errors:
            err = sock.errors[0]
            answers.append((ttl, f"{err.icmp_type}/{err.icmp_code} {err.offender}"))
        else:
            answers.append((ttl, "*"))
    # node1 (cni0 gateway) answers TTL 1; flannel's udp proxy decrements the TTL
    # on send and on receive and discards silently at zero: TTL 2 and 3 vanish;
    # node2 answers from flannel0's address; then the pod itself.
    assert answers == [
        (1, "11/0 10.244.1.1"),
        (2, "*"),
        (3, "*"),
        (4, "11/0 10.244.2.0"),
        (5, f"reply {c.ip}"),
    ]
    assert fab.node("node1").flannel.ttl_drops == 1
    assert fab.node("node2").flannel.ttl_drops == 1


def test_lease_removal_makes_subnet_unreachable(fab: Fabric) -> None:
    assert ping(fab, fab.pod("a"), fab.pod("c").ip, 1) == [1]
    fab.remove_lease("node2")
    sock = fab.pod("a").netns.ping_socket()
    sock.send(fab.pod("c").ip, 9, fab.now)
    udp = fab.pod("a").netns.udp_socket()
    udp.sendto(b"x", (fab.pod("c").ip, 9), fab.now)
    fab.run(1.0)
    # flanneld answers net unreachable, but never about an ICMP packet: ping just times out
    assert not sock.replies and not sock.errors
    assert [e.errno_name for e in udp.errors] == ["ENETUNREACH"]


def test_counters_count_per_interface(fab: Fabric) -> None:
    ping(fab, fab.pod("a"), fab.pod("c").ip, 2)
    n1 = fab.node("node1")
    assert n1.flannel0.tx_packets == 2 and n1.flannel0.rx_packets == 2
    assert fab.pod("a").eth0.tx_packets >= 3  # ARP request + 2 echo requests
    assert n1.counters()["root/flannel0"]["tx_bytes"] == 2 * (20 + 8 + 56)


def test_icmp_error_names_the_probe_it_quotes(fab: Fabric) -> None:
    cl = fab.pod("a").netns.udp_socket()
    cl.bind(port=40001)
    cl.sendto(b"x", (fab.pod("c").ip, 33435), fab.now)
    ping = fab.pod("a").netns.ping_socket()
    ping.send(fab.pod("c").ip, 7, fab.now, ttl=1)
    fab.run(1.0)
    (udp_err,) = cl.errors
    assert (udp_err.sport, udp_err.dport) == (40001, 33435)
    (icmp_err,) = ping.errors
    assert (icmp_err.seq, icmp_err.icmp_type) == (7, 11)


def test_removing_a_pod_closes_its_sockets_and_connections(fab: Fabric) -> None:
    b = fab.pod("b")
    lst = b.netns.tcp_listen(8080)
    conn = fab.pod("a").netns.tcp_connect(b.ip, 8080, fab.now)
    fab.run(0.5)
    server = lst.accept()
    assert server is not None and conn.state.name == "ESTABLISHED"
    fab.node("node1").remove_pod("b")
    assert b.netns.tcp_conns == {} and b.netns.tcp_listeners == {}
    assert server.state.name == "CLOSED"
    assert b.netns.get_timer() is None  # no retransmission or TIME_WAIT timer left behind
