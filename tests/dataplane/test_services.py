"""Services through the in-memory fabric (issue 4, acceptance points 1-7).

Every test drives real sockets in pods, nodes and external hosts; nothing is
poked into netfilter directly. The servers answer with the peer address they
saw, so a test reads both sides of every NAT.
"""

from __future__ import annotations

import re
from collections import Counter
from ipaddress import IPv4Address

import pytest

from emunet.cluster.kubeproxy import (
    Endpoint,
    Service,
    ServicePort,
    ServiceType,
    SessionAffinity,
    TrafficPolicy,
)
from emunet.dataplane.conntrack import TcpState
from emunet.dataplane.fabric import Fabric
from emunet.dataplane.internet import NO_HEALTHY_TARGET, ExternalHost
from emunet.dataplane.netns import Namespace
from emunet.dataplane.tcp import TCPConnection
from emunet.dataplane.trace import Drop

A = IPv4Address
CIP = A("10.96.0.20")
LB_IP = A("198.51.100.10")
WEB = ("default", "web")
Peer = tuple[IPv4Address, int]


def web(
    proto: str = "UDP",
    *,
    typ: ServiceType = ServiceType.CLUSTER_IP,
    node_port: int = 0,
    policy: TrafficPolicy = TrafficPolicy.CLUSTER,
    affinity: SessionAffinity = SessionAffinity.NONE,
    timeout: int = 10800,
) -> Service:
    return Service(
        "default",
        "web",
        CIP,
        (ServicePort("http", proto, 80, 8080, node_port),),
        type=typ,
        session_affinity=affinity,
        affinity_timeout=timeout,
        external_traffic_policy=policy,
        load_balancer_ip=LB_IP if typ == ServiceType.LOAD_BALANCER else None,
    )


def endpoints(fab: Fabric, *pods: str) -> dict[tuple[str, str], list[Endpoint]]:
    return {WEB: [Endpoint(fab.pod(p).ip, fab.node_of(p).name, port_name="http") for p in pods]}


def whoami_udp(fab: Fabric, ns: Namespace, seen: list[Peer], port: int = 8080) -> None:
    """A UDP server that records and answers with the peer address it sees."""
    srv = ns.udp_socket()
    srv.bind(port=port)

    def on_event() -> None:
        while (msg := srv.recvfrom()) is not None:
            seen.append(msg[1])
            srv.sendto(f"{ns.name} saw {msg[1][0]}:{msg[1][1]}".encode(), msg[1], fab.now)

    srv.on_event = on_event


def whoami_tcp(ns: Namespace, seen: list[Peer], port: int = 8080) -> None:
    """A TCP server that records the peer, answers with its own name and closes."""
    listener = ns.tcp_listen(port)

    def on_accept() -> None:
        while (conn := listener.accept()) is not None:
            seen.append((conn.remote_ip, conn.remote_port))
            conn.send(ns.name.encode(), conn.now)
            conn.close(conn.now)

    listener.on_event = on_accept


def udp_ask(fab: Fabric, ns: Namespace, dst: IPv4Address, port: int = 80) -> tuple[bytes, Peer]:
    """One datagram from a new socket (a new connection); the answer and its source."""
    sock = ns.udp_socket()
    sock.sendto(b"?", (dst, port), fab.now)
    fab.run_until(lambda: bool(sock.rx or sock.errors), timeout=2.0)
    msg = sock.recvfrom()
    sock.close()
    assert msg is not None, f"no answer from {dst}:{port}"
    return msg


def tcp_ask(
    fab: Fabric, ns: Namespace, dst: IPv4Address, port: int = 80
) -> tuple[TCPConnection, bytes]:
    """Connect, read until the server closes, close; the connection and what came."""
    conn = ns.tcp_connect(dst, port, fab.now)
    got = bytearray()

    def on_event() -> None:
        if conn.error is not None:
            return
        got.extend(conn.recv())
        if conn.state.name == "CLOSE_WAIT":
            conn.close(fab.now)

    conn.on_event = on_event
    fab.run_until(lambda: conn.state.name in ("CLOSED", "TIME_WAIT"), timeout=5.0)
    return conn, bytes(got)


# --- 1. the seed's walk-through ---------------------------------------------


def test_pod_to_service_walk_through() -> None:
    fab = Fabric(nodes=3, seed=1, trace=True)
    client = fab.add_pod("node1", "client")
    backend = fab.add_pod("node2", "web1")
    seen: list[Peer] = []
    whoami_udp(fab, backend.netns, seen)
    fab.set_services([web()], endpoints(fab, "web1"))
    sock = client.netns.udp_socket()
    sock.bind(port=40000)
    sock.sendto(b"?", (CIP, 80), fab.now)
    fab.run(1.0)

    # the backend saw the pod itself; the client sees the ClusterIP answer
    assert seen == [(client.ip, 40000)]
    assert sock.recvfrom() == (b"web1 saw 10.244.1.2:40000", (CIP, 80))
    # conntrack on the client's node: both tuples, the reply from the endpoint
    listing = fab.node("node1").conntrack_listing(fab.now)
    assert (
        "src=10.244.1.2 dst=10.96.0.20 sport=40000 dport=80 "
        "src=10.244.2.2 dst=10.244.1.2 sport=8080 dport=40000 mark=0" in listing
    )
    assert "[UNREPLIED]" not in listing
    # the trace: each step, in order
    steps = [
        (h.node, h.iface, h.event, h.detail)
        for h in fab.tracer.hops
        if (h.netns == "root" and h.event in ("conntrack new", "DNAT", "encapsulate", "un-DNAT"))
        or (h.netns == "client" and h.event in ("sendto", "deliver"))
        or (h.netns == "web1" and h.event == "deliver")
    ]
    order = [(n, e) for n, _, e, _ in steps]
    assert order[:5] == [
        ("node1", "sendto"),  # client pod
        ("node1", "conntrack new"),  # root netns, PREROUTING on cni0
        ("node1", "DNAT"),  # KUBE-SVC -> KUBE-SEP
        ("node1", "encapsulate"),  # flannel0: to node2
        ("node2", "conntrack new"),  # node2 tracks a plain pod-to-pod flow
    ]
    # web1's socket gets it and its reply goes back over flannel (the order of
    # the two trace lines depends on whether the app answers inside the callback)
    assert sorted(order[5:7]) == [("node2", "deliver"), ("node2", "encapsulate")]
    assert order[7:] == [
        ("node1", "un-DNAT"),  # POSTROUTING: reply source back to the ClusterIP
        ("node1", "deliver"),  # client socket
    ]
    dnat = next(s for s in steps if s[2] == "DNAT")
    assert "10.96.0.20:80 -> 10.244.2.2:8080" in dnat[3] and "KUBE-SVC-" in dnat[3]
    undnat = next(s for s in steps if s[2] == "un-DNAT")
    assert undnat[1] == "cni0" and "src 10.96.0.20:80 dst 10.244.1.2:40000" in undnat[3]


# --- 2. endpoint selection ----------------------------------------------------


def _three_endpoints(proxy_mode: str = "iptables") -> tuple[Fabric, dict[str, list[Peer]]]:
    fab = Fabric(nodes=4, seed=3, proxy_mode=proxy_mode, ipvs_scheduler="rr")
    fab.add_pod("node1", "client")
    seen: dict[str, list[Peer]] = {}
    for i, node in enumerate(("node2", "node3", "node4"), 1):
        pod = fab.add_pod(node, f"web{i}")
        seen[pod.name] = []
        whoami_udp(fab, pod.netns, seen[pod.name])
    return fab, seen


def test_iptables_mode_spreads_3000_connections_a_third_each() -> None:
    fab, seen = _three_endpoints()
    fab.set_services([web()], endpoints(fab, "web1", "web2", "web3"))
    ns = fab.pod("client").netns
    socks = []
    for i in range(3000):
        s = ns.udp_socket()
        s.bind(port=20000 + i)  # 3,000 distinct connections
        s.sendto(b"?", (CIP, 80), fab.now)
        socks.append(s)
        if i % 50 == 49:
            fab.run(0.01)  # batches: the first ones wait in ARP queues (101 packets max)
    fab.run(2.0)
    counts = {name: len(peers) for name, peers in seen.items()}
    assert sum(counts.values()) == 3000
    for n in counts.values():
        assert abs(n / 3000 - 1 / 3) <= 0.05, counts
    assert all(s.rx and s.rx[0][1] == (CIP, 80) for s in socks)
    assert len(fab.node("node1").netfilter.conntrack) == 3000  # type: ignore[union-attr]


def test_ipvs_round_robin_cycles_exactly() -> None:
    fab, _ = _three_endpoints(proxy_mode="ipvs")
    fab.set_services([web()], endpoints(fab, "web1", "web2", "web3"))
    order = []
    for _ in range(9):
        answer, _src = udp_ask(fab, fab.pod("client").netns, CIP)
        order.append(answer.split()[0].decode())
    # endpoints in kube-proxy's order ("ip:port" sorted): web1, web2, web3
    assert order == ["web1", "web2", "web3"] * 3


def test_client_ip_affinity_sticks_until_the_timeout() -> None:
    fab, _ = _three_endpoints()
    svc = web(affinity=SessionAffinity.CLIENT_IP, timeout=60)
    fab.set_services([svc], endpoints(fab, "web1", "web2", "web3"))
    ns = fab.pod("client").netns
    first = [udp_ask(fab, ns, CIP)[0].split()[0] for _ in range(30)]
    assert len(set(first)) == 1  # 30 new connections, one endpoint
    # each connection refreshes the recent list: within 59 s it still sticks
    fab.run(59.0)
    assert udp_ask(fab, ns, CIP)[0].split()[0] == first[0]
    # after the timeout the choice is random again
    later = set()
    for _ in range(12):
        fab.run(61.0)
        later.add(udp_ask(fab, ns, CIP)[0].split()[0])
    assert len(later) > 1


# --- 3. no endpoints ------------------------------------------------------------


def test_no_endpoints_udp_gets_port_unreachable_and_tcp_is_refused() -> None:
    fab = Fabric(nodes=2, seed=4, trace=True)
    client = fab.add_pod("node1", "client")
    fab.set_services([web("UDP"), web("TCP").__class__(
        "default", "tweb", A("10.96.0.21"), (ServicePort("http", "TCP", 80, 8080),)
    )], {})  # fmt: skip
    sock = client.netns.udp_socket()
    sock.sendto(b"?", (CIP, 80), fab.now)
    fab.run(1.0)
    assert not sock.rx
    err = sock.errors.popleft()
    assert (err.errno_name, err.icmp_type, err.icmp_code) == ("ECONNREFUSED", 3, 3)
    assert err.offender == fab.node("node1").gateway_ip and err.dst == CIP
    assert any(h.event == "REJECT" for h in fab.tracer.hops)
    assert fab.node("node1").drops()[str(Drop.NO_ENDPOINTS)] == 1
    assert fab.node("node1").conntrack_listing(fab.now) == ""  # REJECT leaves no entry

    start = fab.now
    conn = client.netns.tcp_connect(A("10.96.0.21"), 80, fab.now)
    fab.run_until(lambda: conn.state.name == "CLOSED", timeout=5.0)
    assert conn.error == "ECONNREFUSED" and fab.now - start < 0.01  # fails fast, no retries


# --- 4. hairpin, outside-cluster masquerade, NodePort, LoadBalancer -------------


def test_hairpin_pod_reaches_itself_through_its_service_masqueraded() -> None:
    fab = Fabric(nodes=2, seed=5)
    pod = fab.add_pod("node1", "web1")
    seen: list[Peer] = []
    whoami_udp(fab, pod.netns, seen)
    fab.set_services([web()], endpoints(fab, "web1"))
    _, src = udp_ask(fab, pod.netns, CIP)
    assert src == (CIP, 80)
    # it landed on itself, seen from cni0's address (KUBE-SEP: -s ep -j KUBE-MARK-MASQ)
    assert seen[0][0] == fab.node("node1").gateway_ip
    listing = fab.node("node1").conntrack_listing(fab.now)
    assert "src=10.244.1.2 dst=10.96.0.20" in listing and "dst=10.244.1.1 sport=8080" in listing


def test_clusterip_from_outside_the_cluster_cidr_is_masqueraded() -> None:
    fab = Fabric(nodes=3, seed=6)
    backend = fab.add_pod("node2", "web1")
    seen: list[Peer] = []
    whoami_udp(fab, backend.netns, seen)
    fab.set_services([web()], endpoints(fab, "web1"))
    node3 = fab.node("node3")
    # the node's root namespace: source 172.18.0.4 (eth0), not in 10.244.0.0/16
    _, src = udp_ask(fab, node3.root, CIP)
    assert src == (CIP, 80)
    # masqueraded on the way out of flannel0: the backend sees node3's flannel0 address
    assert seen[-1][0] == node3.subnet.network_address
    assert "dst=10.244.3.0" in node3.conntrack_listing(fab.now)


@pytest.fixture
def np_fab() -> tuple[Fabric, ExternalHost, dict[str, list[Peer]]]:
    """3 nodes, backends web1 on node2 and web2 on node3, a VM on the node network."""
    fab = Fabric(nodes=3, seed=8, trace=True)
    seen: dict[str, list[Peer]] = {}
    for node, name in (("node2", "web1"), ("node3", "web2")):
        pod = fab.add_pod(node, name)
        seen[name] = []
        whoami_udp(fab, pod.netns, seen[name])
        whoami_tcp(pod.netns, seen[name])
    vm = fab.add_host("vm", "172.18.0.100", segment="nodes")
    return fab, vm, seen


def test_nodeport_cluster_policy_on_every_node_ip(
    np_fab: tuple[Fabric, ExternalHost, dict[str, list[Peer]]],
) -> None:
    fab, vm, _ = np_fab
    fab.set_services(
        [web(typ=ServiceType.NODE_PORT, node_port=30080)], endpoints(fab, "web1", "web2")
    )
    for node in fab.nodes.values():
        for _ in range(4):
            answer, src = udp_ask(fab, vm.netns, node.node_ip, 30080)
            assert src == (node.node_ip, 30080)
            backend_saw = A(answer.split()[2].decode().split(":")[0])
            # SNAT to the receiving node: its flannel0 address across the overlay,
            # its cni0 address when the endpoint is local; never the client
            assert backend_saw in (node.subnet.network_address, node.gateway_ip)
            assert backend_saw != vm.ip


def test_nodeport_local_policy_keeps_the_client_ip_and_drops_without_local_endpoint(
    np_fab: tuple[Fabric, ExternalHost, dict[str, list[Peer]]],
) -> None:
    fab, vm, seen = np_fab
    fab.set_services(
        [web("TCP", typ=ServiceType.NODE_PORT, node_port=30080, policy=TrafficPolicy.LOCAL)],
        endpoints(fab, "web1", "web2"),
    )
    for node, pod in (("node2", "web1"), ("node3", "web2")):
        conn, got = tcp_ask(fab, vm.netns, fab.node(node).node_ip, 30080)
        assert conn.error is None and got == pod.encode()
        assert seen[pod][-1][0] == vm.ip  # client source preserved
    # node1 has no local endpoint: DROP (not REJECT), the SYN vanishes
    fab.tracer.clear()
    conn = vm.netns.tcp_connect(fab.node("node1").node_ip, 30080, fab.now)
    fab.run(3.0)
    assert conn.state.name == "SYN_SENT"
    assert fab.node("node1").drops()[str(Drop.NO_LOCAL_ENDPOINTS)] >= 2  # SYN + retransmission


@pytest.mark.parametrize("policy", [TrafficPolicy.CLUSTER, TrafficPolicy.LOCAL])
def test_loadbalancer_spreads_over_nodeports(policy: TrafficPolicy) -> None:
    fab = Fabric(nodes=3, seed=9)
    seen: dict[str, list[Peer]] = {}
    for node, name in (("node2", "web1"), ("node3", "web2")):
        pod = fab.add_pod(node, name)
        seen[name] = []
        whoami_tcp(pod.netns, seen[name])
    client = fab.add_host("client", "203.0.113.10")
    fab.set_services(
        [web("TCP", typ=ServiceType.LOAD_BALANCER, node_port=30080, policy=policy)],
        endpoints(fab, "web1", "web2"),
    )
    for _ in range(12):
        conn, got = tcp_ask(fab, client.netns, LB_IP, 80)
        assert conn.error is None and got in (b"web1", b"web2")
    gw = fab.internet.gateway  # type: ignore[union-attr]
    listing = gw.conntrack_listing(fab.now)
    # which node each connection was sent to: the source of the reply tuple
    hit = Counter(
        re.findall(r"src=(\S+)", line)[1]
        for line in listing.splitlines()
        if "dst=198.51.100.10" in line
    )
    peers = [ip for name in seen for ip, _ in seen[name]]
    if policy == TrafficPolicy.CLUSTER:
        assert hit == {"172.18.0.2": 4, "172.18.0.3": 4, "172.18.0.4": 4}
        assert client.ip not in peers  # masqueraded by the node
    else:
        # health checks: only node2 and node3 have a local endpoint
        assert hit == {"172.18.0.3": 6, "172.18.0.4": 6}
        assert peers == [client.ip] * 12  # the client IP reaches the backend
        assert len(seen["web1"]) == len(seen["web2"]) == 6


def test_loadbalancer_without_healthy_node_drops() -> None:
    fab = Fabric(nodes=2, seed=10, trace=True)
    client = fab.add_host("client", "203.0.113.10")
    fab.set_services(
        [web(typ=ServiceType.LOAD_BALANCER, node_port=30080, policy=TrafficPolicy.LOCAL)], {}
    )
    sock = client.netns.udp_socket()
    sock.sendto(b"?", (LB_IP, 80), fab.now)
    fab.run(1.0)
    assert not sock.rx
    assert any(h.event == "drop" and NO_HEALTHY_TARGET in h.detail for h in fab.tracer.hops)


# --- 5. egress to the internet -----------------------------------------------------


def test_pod_to_internet_host_snat_at_node_and_gateway() -> None:
    fab = Fabric(nodes=2, seed=11, trace=True)
    pod = fab.add_pod("node1", "client")
    host = fab.add_host("web", "203.0.113.10")
    host.serve_udp_echo(7)
    host.serve_tcp(80, "http")
    sock = pod.netns.udp_socket()
    sock.bind(port=40000)
    sock.sendto(b"hi", (host.ip, 7), fab.now)
    fab.run(1.0)
    msg = sock.recvfrom()
    assert msg is not None and msg[1] == (host.ip, 7)
    # the host saw the gateway's public address
    assert host.peers[0][1] == A("198.51.100.1")
    node_port = int(msg[0].split(b":")[-1])
    node_ct = fab.node("node1").conntrack_listing(fab.now)
    line = next(x for x in node_ct.splitlines() if "dport=7 " in x)
    # flannel's ip-masq on node1: the reply comes back to the node IP
    assert (
        "src=10.244.1.2 dst=203.0.113.10 sport=40000 dport=7 src=203.0.113.10 dst=172.18.0.2"
        in (line)
    )
    node_sport = int(line.split()[-3].removeprefix("dport="))
    gw_ct = fab.internet.gateway.conntrack_listing(fab.now)  # type: ignore[union-attr]
    assert (
        f"src=172.18.0.2 dst=203.0.113.10 sport={node_sport} dport=7 "
        f"src=203.0.113.10 dst=198.51.100.1 sport=7 dport={node_port}" in gw_ct
    )
    events = [(h.node, h.event) for h in fab.tracer.hops if h.event in ("MASQUERADE", "un-SNAT")]
    assert events == [
        ("node1", "MASQUERADE"),
        ("gateway", "MASQUERADE"),
        ("gateway", "un-SNAT"),
        ("node1", "un-SNAT"),
    ]
    # and TCP: an HTTP GET through both NATs
    conn = pod.netns.tcp_connect(host.ip, 80, fab.now)
    got = bytearray()
    conn.on_event = lambda: got.extend(conn.recv())
    fab.run_until(lambda: conn.state.name == "ESTABLISHED", timeout=2.0)
    conn.send(b"GET / HTTP/1.0\r\n\r\n", fab.now)
    fab.run(1.0)
    assert got.startswith(b"HTTP/1.0 200 OK") and b"to 198.51.100.1:" in got


def test_ping_to_internet_host_and_icmp_error_back_through_both_nats() -> None:
    fab = Fabric(nodes=2, seed=12)
    pod = fab.add_pod("node1", "client")
    host = fab.add_host("web", "203.0.113.10")
    ping = pod.netns.ping_socket()
    ping.send(host.ip, 1, fab.now, b"x" * 16)
    fab.run(1.0)
    assert [r.src for r in ping.replies] == [host.ip]
    # a closed UDP port: the host's port unreachable is translated back to the pod
    sock = pod.netns.udp_socket()
    sock.sendto(b"?", (host.ip, 9), fab.now)
    fab.run(1.0)
    err = sock.errors.popleft()
    assert (err.errno_name, err.offender, err.dst) == ("ECONNREFUSED", host.ip, host.ip)


# --- 6. conntrack through the fabric -------------------------------------------------


def test_tcp_connection_states_through_a_service_and_expiry() -> None:
    fab = Fabric(nodes=2, seed=13)
    client = fab.add_pod("node1", "client")
    backend = fab.add_pod("node2", "web1")
    seen: list[Peer] = []
    whoami_tcp(backend.netns, seen)
    fab.set_services([web("TCP")], endpoints(fab, "web1"))
    node1 = fab.node("node1")
    table = node1.netfilter.conntrack  # type: ignore[union-attr]
    states: list[str] = []

    def watch(now: float = 0.0, data: object = None) -> None:
        for e in table:
            name = TcpState(e.state).name
            if not states or states[-1] != name:
                states.append(name)

    # sample the state each time a segment crosses the pod's eth0 or node1's flannel0
    # (every hop of node1's conntrack lies between two of these)
    client.eth0.taps.append(watch)
    node1.flannel0.taps.append(watch)
    conn = client.netns.tcp_connect(CIP, 80, fab.now)
    got = bytearray()

    def on_event() -> None:
        if conn.error is not None:
            return
        got.extend(conn.recv())
        if conn.state.name == "CLOSE_WAIT":
            conn.close(fab.now)

    conn.on_event = on_event
    fab.run(2.0)
    watch()
    assert got == b"web1"
    # the server closes first: its FIN is in the REPLY direction
    assert states == [
        "SYN_SENT",
        "SYN_RECV",
        "ESTABLISHED",
        "FIN_WAIT",
        "CLOSE_WAIT",
        "LAST_ACK",
        "TIME_WAIT",
    ], states
    listing = fab.node("node1").conntrack_listing(fab.now)
    assert "TIME_WAIT" in listing and "[ASSURED]" in listing and "src=10.244.2.2" in listing
    fab.run(117.0)  # TIME_WAIT (120 s) began a few ms after t=0
    assert len(table) == 1
    fab.run(2.0)
    assert len(table) == 0 and fab.node("node1").conntrack_listing(fab.now) == ""


def test_udp_entries_expire_in_fake_time() -> None:
    fab = Fabric(nodes=2, seed=14)
    client = fab.add_pod("node1", "client")
    backend = fab.add_pod("node2", "web1")
    whoami_udp(fab, backend.netns, [])
    fab.set_services([web()], endpoints(fab, "web1"))
    udp_ask(fab, client.netns, CIP)
    assert len(fab.node("node1").netfilter.conntrack) == 1  # type: ignore[union-attr]
    fab.run(29.0)
    assert len(fab.node("node1").netfilter.conntrack) == 1  # type: ignore[union-attr]
    fab.run(1.5)
    assert len(fab.node("node1").netfilter.conntrack) == 0  # type: ignore[union-attr]


def test_removing_a_udp_endpoint_flushes_its_entries() -> None:
    fab = Fabric(nodes=3, seed=15, trace=True)
    client = fab.add_pod("node1", "client")
    seen: dict[str, list[Peer]] = {}
    for node, name in (("node2", "web1"), ("node3", "web2")):
        pod = fab.add_pod(node, name)
        seen[name] = []
        whoami_udp(fab, pod.netns, seen[name])
    fab.set_services([web()], endpoints(fab, "web1", "web2"))
    sock = client.netns.udp_socket()
    sock.bind(port=41000)
    for _ in range(3):  # one flow, pinned to one endpoint by its conntrack entry
        sock.sendto(b"?", (CIP, 80), fab.now)
        fab.run(0.5)
    first = "web1" if seen["web1"] else "web2"
    other = "web2" if first == "web1" else "web1"
    assert len(seen[first]) == 3 and not seen[other]
    # the endpoint goes away (its pod is deleted); kube-proxy flushes the entry
    fab.node_of(first).remove_pod(first)
    fab.set_services([web()], endpoints(fab, other))
    assert any(h.event == "conntrack flush" for h in fab.tracer.hops)
    sock.sendto(b"?", (CIP, 80), fab.now)
    fab.run(0.5)
    assert len(seen[other]) == 1 and sock.rx[-1][1] == (CIP, 80)


def test_full_table_evicts_unassured_then_drops_with_reason() -> None:
    fab = Fabric(nodes=2, seed=16, conntrack_max=2)
    client = fab.add_pod("node1", "client")
    backend = fab.add_pod("node2", "web1")
    whoami_tcp(backend.netns, [])
    fab.set_services([web("TCP")], endpoints(fab, "web1"))
    # two established (ASSURED) connections fill node1's table
    conns = [client.netns.tcp_connect(CIP, 80, fab.now) for _ in range(2)]
    fab.run(0.01)
    assert all(c.state.name in ("ESTABLISHED", "CLOSE_WAIT") for c in conns)
    third = client.netns.tcp_connect(CIP, 80, fab.now)
    fab.run(0.01)
    assert third.state.name == "SYN_SENT"
    assert fab.node("node1").drops()[str(Drop.CONNTRACK_FULL)] >= 1


# --- 7. iptables-save --------------------------------------------------------------------


def test_iptables_save_lists_kube_proxy_chains_with_probabilities() -> None:
    fab = Fabric(nodes=3, seed=17)
    fab.add_pod("node2", "web1")
    fab.add_pod("node3", "web2")
    fab.set_services([web("TCP")], endpoints(fab, "web1", "web2"))
    dump = fab.node("node1").iptables_save().splitlines()
    svc = [ln for ln in dump if ln.startswith("-A KUBE-SVC-")]
    chain = svc[0].split()[1]
    assert svc == [
        f"-A {chain} ! -s 10.244.0.0/16 -d 10.96.0.20/32 -p tcp -m comment --comment "
        '"default/web:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ',
        f'-A {chain} -m comment --comment "default/web:http -> 10.244.2.2:8080" '
        "-m statistic --mode random --probability 0.50000000000 -j " + svc[1].split()[-1],
        f'-A {chain} -m comment --comment "default/web:http -> 10.244.3.2:8080" -j '
        + svc[2].split()[-1],
    ]
    seps = [ln for ln in dump if ln.startswith("-A KUBE-SEP-")]
    assert len(seps) == 4
    assert any("-s 10.244.2.2/32" in ln and "KUBE-MARK-MASQ" in ln for ln in seps)
    assert any("DNAT --to-destination 10.244.3.2:8080" in ln for ln in seps)
    for needed in (
        ":KUBE-SERVICES - [0:0]",
        ":KUBE-MARK-MASQ - [0:0]",
        ":KUBE-POSTROUTING - [0:0]",
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        "-A KUBE-POSTROUTING -m comment --comment "
        '"kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully',
    ):
        assert needed in dump
