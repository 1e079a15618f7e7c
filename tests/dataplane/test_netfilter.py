"""The netfilter hooks: kube-proxy's Services, masquerade, conntrack, NAT of ICMP errors.

Packets are built with emunet.packets and pushed through the hooks in the order
a node calls them; every rewritten packet is re-parsed with checksum checks.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from emunet.cluster.kubeproxy import (
    Endpoint,
    Service,
    ServicePort,
    ServiceType,
    SessionAffinity,
    TrafficPolicy,
)
from emunet.dataplane.netfilter import Netfilter, Verdict
from emunet.dataplane.trace import Drop, Tracer
from emunet.packets import icmp, ipv4, tcp, udp
from emunet.packets.tcp import ACK, FIN, RST, SYN, TCPHeader
from emunet.packets.udp import UDPHeader

A = IPv4Address
NODE1 = A("172.18.0.2")
CNI1 = A("10.244.1.1")
POD = A("10.244.1.2")
CIP = A("10.96.0.10")
EP_LOCAL = A("10.244.1.5")
EP_REMOTE = A("10.244.2.5")
EP_REMOTE2 = A("10.244.3.5")
CLIENT = A("198.51.100.7")
INTERNET = A("203.0.113.10")


# --- packets ----------------------------------------------------------------


def tcp_pkt(src: A, dst: A, sport: int, dport: int, flags: int) -> bytearray:
    seg = tcp.build(TCPHeader(sport, dport, seq=1, ack=1, flags=flags), b"hello", src, dst)
    return bytearray(ipv4.build(ipv4.IPv4Header(src, dst, 6), seg))


def udp_pkt(src: A, dst: A, sport: int, dport: int, payload: bytes = b"q") -> bytearray:
    dgram = udp.build(UDPHeader(sport, dport), payload, src, dst)
    return bytearray(ipv4.build(ipv4.IPv4Header(src, dst, 17), dgram))


def echo_pkt(src: A, dst: A, typ: int, ident: int) -> bytearray:
    return bytearray(ipv4.build(ipv4.IPv4Header(src, dst, 1), icmp.echo(typ, ident, 1, b"ping")))


def icmp_error(src: A, dst: A, typ: int, code: int, offending: bytearray) -> bytearray:
    return bytearray(ipv4.build(ipv4.IPv4Header(src, dst, 1), icmp.error(typ, code, offending)))


def addrs(pkt: bytearray) -> tuple[A, A, int, int]:
    """Parse with every checksum verified; (src, dst, sport, dport) (ICMP: id, id)."""
    hdr, payload = ipv4.parse(pkt, verify_checksum=True)
    if hdr.protocol == 6:
        t, _ = tcp.parse(payload, verify_with=(hdr.src, hdr.dst))
        return hdr.src, hdr.dst, t.sport, t.dport
    if hdr.protocol == 17:
        u, _ = udp.parse(payload, verify_with=(hdr.src, hdr.dst))
        return hdr.src, hdr.dst, u.sport, u.dport
    m = icmp.parse(payload, verify_checksum=True)
    return hdr.src, hdr.dst, m.identifier, m.identifier


# --- fixtures ---------------------------------------------------------------


def make_nf(**kw: object) -> Netfilter:
    return Netfilter(
        "node1",
        Tracer(enabled=True),
        cluster_cidr=IPv4Network("10.244.0.0/16"),
        service_cidr=IPv4Network("10.96.0.0/12"),
        local_addresses={NODE1, CNI1},
        rng=random.Random(7),
        pod_subnet=IPv4Network("10.244.1.0/24"),
        **kw,  # type: ignore[arg-type]
    )


def web(
    eps: list[tuple[A, str]],
    *,
    proto: str = "TCP",
    typ: ServiceType = ServiceType.CLUSTER_IP,
    node_port: int = 0,
    affinity: SessionAffinity = SessionAffinity.NONE,
    timeout: int = 10800,
    policy: TrafficPolicy = TrafficPolicy.CLUSTER,
    lb: A | None = None,
) -> tuple[list[Service], dict[tuple[str, str], list[Endpoint]]]:
    svc = Service(
        "default",
        "web",
        CIP,
        (ServicePort("http", proto, 80, 8080, node_port),),
        type=typ,
        session_affinity=affinity,
        affinity_timeout=timeout,
        external_traffic_policy=policy,
        load_balancer_ip=lb,
    )
    return [svc], {("default", "web"): [Endpoint(ip, node, port_name="http") for ip, node in eps]}


def routed(nf: Netfilter, pkt: bytearray, now: float, out_src: A = NODE1) -> Verdict:
    """prerouting -> forward -> postrouting, as the node does for a routed packet."""
    for step in (
        lambda: nf.prerouting(pkt, "cni0", now),
        lambda: nf.forward(pkt, "cni0", "flannel0", now),
        lambda: nf.postrouting(pkt, "flannel0", out_src, now),
    ):
        v = step()
        if v != Verdict.ACCEPT:
            return v
    return Verdict.ACCEPT


def delivered(nf: Netfilter, pkt: bytearray, now: float) -> Verdict:
    v = nf.prerouting(pkt, "eth0", now)
    return v if v != Verdict.ACCEPT else nf.input(pkt, "eth0", now)


# --- ClusterIP --------------------------------------------------------------


def test_clusterip_dnat_reply_undnat_and_conntrack_listing() -> None:
    nf = make_nf()
    nf.set_services(*web([(EP_REMOTE, "node2")]))
    syn = tcp_pkt(POD, CIP, 40000, 80, SYN)
    assert routed(nf, syn, 0.0) == Verdict.ACCEPT
    assert addrs(syn) == (POD, EP_REMOTE, 40000, 8080)
    synack = tcp_pkt(EP_REMOTE, POD, 8080, 40000, SYN | ACK)
    assert routed(nf, synack, 0.1) == Verdict.ACCEPT
    assert addrs(synack) == (CIP, POD, 80, 40000)  # the client sees the ClusterIP
    ack = tcp_pkt(POD, CIP, 40000, 80, ACK)
    routed(nf, ack, 0.2)
    assert addrs(ack) == (POD, EP_REMOTE, 40000, 8080)
    assert nf.conntrack.listing(3.2) == (
        "tcp      6 86397 ESTABLISHED src=10.244.1.2 dst=10.96.0.10 sport=40000 dport=80 "
        "src=10.244.2.5 dst=10.244.1.2 sport=8080 dport=40000 [ASSURED] mark=0 use=1\n"
    )
    events = [h.event for h in nf.tracer.hops]
    assert events[:2] == ["conntrack new", "DNAT"]
    assert "un-DNAT" in events
    dnat = next(h for h in nf.tracer.hops if h.event == "DNAT")
    assert "KUBE-SVC-" in dnat.detail and "KUBE-SEP-" in dnat.detail


def test_iptables_mode_spreads_3000_connections_evenly() -> None:
    nf = make_nf()
    nf.set_services(*web([(EP_LOCAL, "node1"), (EP_REMOTE, "node2"), (EP_REMOTE2, "node3")]))
    hits: Counter[A] = Counter()
    for i in range(3000):
        pkt = tcp_pkt(POD, CIP, 10000 + i, 80, SYN)
        assert routed(nf, pkt, 0.0) == Verdict.ACCEPT
        hits[addrs(pkt)[1]] += 1
    assert set(hits) == {EP_LOCAL, EP_REMOTE, EP_REMOTE2}
    for n in hits.values():
        assert abs(n / 3000 - 1 / 3) < 0.05


@pytest.mark.parametrize(
    ("scheduler", "expected"),
    [
        ("rr", [EP_LOCAL, EP_REMOTE, EP_REMOTE2] * 3),
        ("dh", [None] * 9),  # one VIP: every connection to the same endpoint
        ("sh", [None] * 9),  # one client: every connection to the same endpoint
    ],
)
def test_ipvs_schedulers(scheduler: str, expected: list[A | None]) -> None:
    nf = make_nf(mode="ipvs", ipvs_scheduler=scheduler)
    nf.set_services(*web([(EP_LOCAL, "node1"), (EP_REMOTE, "node2"), (EP_REMOTE2, "node3")]))
    got = []
    for i in range(9):
        pkt = tcp_pkt(POD, CIP, 20000 + i, 80, SYN)
        routed(nf, pkt, 0.0)
        got.append(addrs(pkt)[1])
    if scheduler == "rr":
        assert got == expected
    else:
        assert len(set(got)) == 1


def test_ipvs_lc_picks_least_connections() -> None:
    nf = make_nf(mode="ipvs", ipvs_scheduler="lc")
    nf.set_services(*web([(EP_LOCAL, "node1"), (EP_REMOTE, "node2")]))
    first = [tcp_pkt(POD, CIP, 30000 + i, 80, SYN) for i in range(4)]
    for p in first:
        routed(nf, p, 0.0)
    assert Counter(addrs(p)[1] for p in first) == {EP_LOCAL: 2, EP_REMOTE: 2}
    # close the connections on EP_LOCAL: the next two go there
    nf.conntrack.flush(lambda e: e.tuples[1][1] == int(EP_LOCAL))
    nxt = [tcp_pkt(POD, CIP, 31000 + i, 80, SYN) for i in range(2)]
    for p in nxt:
        routed(nf, p, 1.0)
    assert [addrs(p)[1] for p in nxt] == [EP_LOCAL, EP_LOCAL]


def test_client_ip_affinity_sticks_until_timeout() -> None:
    nf = make_nf()
    nf.set_services(
        *web(
            [(EP_LOCAL, "node1"), (EP_REMOTE, "node2"), (EP_REMOTE2, "node3")],
            affinity=SessionAffinity.CLIENT_IP,
            timeout=60,
        )
    )
    first = tcp_pkt(POD, CIP, 40000, 80, SYN)
    routed(nf, first, 0.0)
    chosen = addrs(first)[1]
    for i in range(30):  # each new connection refreshes the `recent` stamp
        p = tcp_pkt(POD, CIP, 40001 + i, 80, SYN)
        routed(nf, p, 50.0 * i / 30)
        assert addrs(p)[1] == chosen
    # past the timeout since the last hit, the choice is random again
    later = []
    for i in range(30):
        p = tcp_pkt(POD, CIP, 41000 + i, 80, SYN)
        routed(nf, p, 200.0 + 100 * i)
        later.append(addrs(p)[1])
    assert len(set(later)) > 1
    assert "--rcheck --seconds 60 --reap" in nf.iptables_save()


def test_no_endpoints_rejects_with_port_unreachable_and_leaves_no_entry() -> None:
    nf = make_nf()
    for proto, pkt in (
        ("TCP", tcp_pkt(POD, CIP, 40000, 80, SYN)),
        ("UDP", udp_pkt(POD, CIP, 5353, 80)),
    ):
        nf.set_services(*web([], proto=proto))
        assert routed(nf, pkt, 0.0) == Verdict.REJECT
        assert nf.last_reject == (3, 3)
        assert nf.last_drop == Drop.NO_ENDPOINTS
    assert len(nf.conntrack) == 0
    nf.set_services(*web([]))
    # the host itself (OUTPUT) is rejected too
    assert nf.output(tcp_pkt(NODE1, CIP, 40001, 80, SYN), 0.0) == Verdict.REJECT
    assert len(nf.conntrack) == 0
    assert any(h.event == "REJECT" for h in nf.tracer.hops)


def test_hairpin_is_masqueraded() -> None:
    nf = make_nf()
    nf.set_services(*web([(EP_LOCAL, "node1")]))
    syn = tcp_pkt(EP_LOCAL, CIP, 40000, 80, SYN)
    assert routed(nf, syn, 0.0, out_src=CNI1) == Verdict.ACCEPT
    src, dst, sport, dport = addrs(syn)
    assert (src, dst, dport) == (CNI1, EP_LOCAL, 8080)
    reply = tcp_pkt(EP_LOCAL, CNI1, 8080, sport, SYN | ACK)
    assert routed(nf, reply, 0.1, out_src=CNI1) == Verdict.ACCEPT
    assert addrs(reply) == (CIP, EP_LOCAL, 80, 40000)


def test_clusterip_from_outside_the_cluster_cidr_is_masqueraded() -> None:
    nf = make_nf()
    nf.set_services(*web([(EP_REMOTE, "node2")]))
    outsider = A("172.18.0.9")
    syn = tcp_pkt(outsider, CIP, 40000, 80, SYN)
    routed(nf, syn, 0.0, out_src=A("10.244.1.0"))
    src, dst, _, dport = addrs(syn)
    assert (src, dst, dport) == (A("10.244.1.0"), EP_REMOTE, 8080)


# --- NodePort / LoadBalancer ------------------------------------------------


def test_nodeport_cluster_policy_snats_to_the_node() -> None:
    nf = make_nf()
    nf.set_services(*web([(EP_REMOTE, "node2")], typ=ServiceType.NODE_PORT, node_port=30080))
    syn = tcp_pkt(CLIENT, NODE1, 50000, 30080, SYN)
    assert routed(nf, syn, 0.0, out_src=A("10.244.1.0")) == Verdict.ACCEPT
    src, dst, sport, dport = addrs(syn)
    assert (src, dst, dport) == (A("10.244.1.0"), EP_REMOTE, 8080)  # backend sees the node
    reply = tcp_pkt(EP_REMOTE, A("10.244.1.0"), 8080, sport, SYN | ACK)
    routed(nf, reply, 0.1)
    assert addrs(reply) == (NODE1, CLIENT, 30080, 50000)


def test_nodeport_local_policy_keeps_the_client_source() -> None:
    nf = make_nf()
    nf.set_services(
        *web(
            [(EP_LOCAL, "node1"), (EP_REMOTE, "node2")],
            typ=ServiceType.NODE_PORT,
            node_port=30080,
            policy=TrafficPolicy.LOCAL,
        )
    )
    for i in range(10):
        syn = tcp_pkt(CLIENT, NODE1, 50000 + i, 30080, SYN)
        routed(nf, syn, 0.0, out_src=CNI1)
        assert addrs(syn) == (CLIENT, EP_LOCAL, 50000 + i, 8080)  # only the local endpoint


def test_nodeport_local_policy_without_local_endpoint_drops() -> None:
    nf = make_nf()
    nf.set_services(
        *web(
            [(EP_REMOTE, "node2")],
            typ=ServiceType.NODE_PORT,
            node_port=30080,
            policy=TrafficPolicy.LOCAL,
        )
    )
    syn = tcp_pkt(CLIENT, NODE1, 50000, 30080, SYN)
    assert delivered(nf, syn, 0.0) == Verdict.DROP
    assert nf.last_drop == Drop.NO_LOCAL_ENDPOINTS
    assert len(nf.conntrack) == 0
    # a pod of this node still reaches it through the Cluster chain (short-circuit)
    syn = tcp_pkt(POD, NODE1, 40000, 30080, SYN)
    assert routed(nf, syn, 0.0) == Verdict.ACCEPT
    assert addrs(syn)[1] == EP_REMOTE
    assert '"default/web:http has no local endpoints"' in nf.iptables_save()


def test_nodeport_without_endpoints_rejects() -> None:
    nf = make_nf()
    nf.set_services(*web([], typ=ServiceType.NODE_PORT, node_port=30080))
    assert delivered(nf, tcp_pkt(CLIENT, NODE1, 50000, 30080, SYN), 0.0) == Verdict.REJECT
    assert nf.last_reject == (3, 3)


def test_loadbalancer_ip_goes_through_kube_ext() -> None:
    nf = make_nf()
    lb = A("203.0.113.100")
    nf.set_services(
        *web([(EP_REMOTE, "node2")], typ=ServiceType.LOAD_BALANCER, node_port=30080, lb=lb)
    )
    syn = tcp_pkt(CLIENT, lb, 50000, 80, SYN)
    routed(nf, syn, 0.0)
    src, dst, _, dport = addrs(syn)
    assert (src, dst, dport) == (NODE1, EP_REMOTE, 8080)


# --- egress -----------------------------------------------------------------


def test_egress_masquerade_and_reply() -> None:
    nf = make_nf()
    out = udp_pkt(POD, INTERNET, 33000, 53)
    assert routed(nf, out, 0.0) == Verdict.ACCEPT
    src, dst, sport, dport = addrs(out)
    assert (src, dst, dport) == (NODE1, INTERNET, 53)
    assert 1024 <= sport <= 65535  # --random-fully
    back = udp_pkt(INTERNET, NODE1, 53, sport, b"answer")
    assert routed(nf, back, 0.1) == Verdict.ACCEPT
    assert addrs(back) == (INTERNET, POD, 53, 33000)
    line = nf.conntrack.listing(1.0)
    assert line.startswith("udp      17 29 src=10.244.1.2 dst=203.0.113.10 sport=33000 dport=53 ")
    assert f"src=203.0.113.10 dst=172.18.0.2 sport=53 dport={sport} mark=0 use=1" in line


def test_egress_ping_masquerades_the_echo_identifier() -> None:
    nf = make_nf()
    req = echo_pkt(POD, INTERNET, icmp.ECHO_REQUEST, 77)
    routed(nf, req, 0.0)
    src, dst, ident, _ = addrs(req)
    assert (src, dst) == (NODE1, INTERNET)
    rep = echo_pkt(INTERNET, NODE1, icmp.ECHO_REPLY, ident)
    routed(nf, rep, 0.1)
    assert addrs(rep) == (INTERNET, POD, 77, 77)
    assert "type=8 code=0 id=77" in nf.conntrack.listing(0.1)


def test_pod_to_pod_is_not_masqueraded() -> None:
    nf = make_nf()
    pkt = udp_pkt(POD, EP_REMOTE, 1000, 2000)
    routed(nf, pkt, 0.0)
    assert addrs(pkt) == (POD, EP_REMOTE, 1000, 2000)


# --- ICMP errors ------------------------------------------------------------


def test_icmp_error_from_endpoint_is_translated_to_the_clusterip() -> None:
    nf = make_nf()
    nf.set_services(*web([(EP_REMOTE, "node2")], proto="UDP"))
    q = udp_pkt(POD, CIP, 5353, 80)
    routed(nf, q, 0.0)
    assert addrs(q) == (POD, EP_REMOTE, 5353, 8080)
    err = icmp_error(EP_REMOTE, POD, icmp.DEST_UNREACH, icmp.PORT_UNREACH, q)
    assert routed(nf, err, 0.1) == Verdict.ACCEPT
    outer, payload = ipv4.parse(err, verify_checksum=True)
    msg = icmp.parse(payload, verify_checksum=True)
    inner, inner_l4 = ipv4.parse(msg.payload, verify_checksum=True, truncated_ok=True)
    assert (outer.src, outer.dst) == (CIP, POD)  # Linux rewrites the outer source too
    assert (inner.src, inner.dst) == (POD, CIP)
    sport, dport = int.from_bytes(inner_l4[0:2]), int.from_bytes(inner_l4[2:4])
    assert (sport, dport) == (5353, 80)
    # the quoted UDP checksum was patched: recompute it over the original datagram
    original = udp_pkt(POD, CIP, 5353, 80)
    assert bytes(inner_l4[:8]) == bytes(original[20:28])


def test_icmp_error_from_the_internet_reaches_the_masqueraded_pod() -> None:
    nf = make_nf()
    out = udp_pkt(POD, INTERNET, 33000, 33434)
    routed(nf, out, 0.0)
    router = A("198.51.100.1")
    err = icmp_error(router, NODE1, icmp.TIME_EXCEEDED, 0, out)
    assert routed(nf, err, 0.1) == Verdict.ACCEPT
    outer, payload = ipv4.parse(err, verify_checksum=True)
    msg = icmp.parse(payload, verify_checksum=True)
    inner, inner_l4 = ipv4.parse(msg.payload, verify_checksum=True, truncated_ok=True)
    assert (outer.src, outer.dst) == (router, POD)
    assert (inner.src, inner.dst) == (POD, INTERNET)
    assert int.from_bytes(inner_l4[0:2]) == 33000
    assert bytes(inner_l4[:8]) == bytes(udp_pkt(POD, INTERNET, 33000, 33434)[20:28])


# --- conntrack through the hooks --------------------------------------------


def test_udp_endpoint_removal_flushes_and_next_datagram_reaches_a_live_endpoint() -> None:
    nf = make_nf()
    svcs, eps = web([(EP_REMOTE, "node2"), (EP_REMOTE2, "node3")], proto="UDP")
    nf.set_services(svcs, eps)
    first = udp_pkt(POD, CIP, 5000, 80)
    routed(nf, first, 0.0)
    dead = addrs(first)[1]
    alive = EP_REMOTE2 if dead == EP_REMOTE else EP_REMOTE
    again = udp_pkt(POD, CIP, 5000, 80)
    routed(nf, again, 1.0)
    assert addrs(again)[1] == dead  # conntrack keeps the binding
    nf.set_services(svcs, {("default", "web"): [Endpoint(alive, "nodeX", port_name="http")]})
    assert len(nf.conntrack) == 0
    nxt = udp_pkt(POD, CIP, 5000, 80)
    routed(nf, nxt, 2.0)
    assert addrs(nxt)[1] == alive


def test_table_full_drops_with_reason() -> None:
    nf = make_nf(conntrack_max=1)
    first = tcp_pkt(POD, EP_REMOTE, 1, 80, SYN)
    routed(nf, first, 0.0)
    routed(nf, tcp_pkt(EP_REMOTE, POD, 80, 1, SYN | ACK), 0.0)
    routed(nf, tcp_pkt(POD, EP_REMOTE, 1, 80, ACK), 0.0)  # ASSURED: not evictable
    assert nf.prerouting(tcp_pkt(POD, EP_REMOTE, 2, 80, SYN), "cni0", 0.0) == Verdict.DROP
    assert nf.last_drop == Drop.CONNTRACK_FULL
    assert nf.tracer.drops()[-1].detail == "nf_conntrack: table full, dropping packet"


def test_invalid_tcp_is_dropped_in_forward() -> None:
    nf = make_nf()
    stray = tcp_pkt(POD, EP_REMOTE, 1234, 80, FIN)
    assert routed(nf, stray, 0.0) == Verdict.DROP
    assert nf.last_drop == Drop.CONNTRACK_INVALID
    nf2 = make_nf(drop_invalid=False)
    assert routed(nf2, tcp_pkt(POD, EP_REMOTE, 1234, 80, RST), 0.0) == Verdict.ACCEPT


def test_timers_expire_entries() -> None:
    nf = make_nf()
    routed(nf, udp_pkt(POD, INTERNET, 1, 2), 0.0)
    assert len(nf.conntrack) == 1
    t = nf.get_timer()
    assert t == 30.0
    nf.handle_timer(29.9)
    assert len(nf.conntrack) == 1
    nf.handle_timer(30.0)
    assert len(nf.conntrack) == 0


def test_locally_generated_to_clusterip() -> None:
    nf = make_nf()
    nf.set_services(*web([(EP_REMOTE, "node2")]))
    syn = tcp_pkt(NODE1, CIP, 45000, 80, SYN)
    assert nf.output(syn, 0.0) == Verdict.ACCEPT
    assert addrs(syn)[1] == EP_REMOTE
    nf.postrouting(syn, "flannel0", A("10.244.1.0"), 0.0)
    src, _, sport, _ = addrs(syn)
    assert src == A("10.244.1.0")  # flannel: ! -s cluster -d cluster -> MASQUERADE
    reply = tcp_pkt(EP_REMOTE, A("10.244.1.0"), 8080, sport, SYN | ACK)
    assert delivered(nf, reply, 0.1) == Verdict.ACCEPT
    assert addrs(reply) == (CIP, NODE1, 80, 45000)


def test_malformed_is_dropped() -> None:
    nf = make_nf()
    pkt = tcp_pkt(POD, CIP, 1, 80, SYN)
    for cut in (10, 25, 30):
        assert nf.prerouting(bytearray(pkt[:cut]), "cni0", 0.0) == Verdict.DROP
        assert nf.last_drop == Drop.MALFORMED


def test_benchmark_smoke() -> None:
    bench = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_services.py"
    out = subprocess.run(
        [sys.executable, str(bench), "--sizes", "5,20", "--packets", "200", "--sync", "50"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert "ns/packet" in out and "sync" in out
