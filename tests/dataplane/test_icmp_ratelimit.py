"""ICMP errors are rate-limited as Linux's (net/ipv4/icmp.c): per destination
(6 at once, then one a second) and per namespace (50 at once, 1000 a second)."""

from __future__ import annotations

from ipaddress import IPv4Address

from emunet.cluster.kubeproxy import Service, ServicePort
from emunet.dataplane.fabric import Fabric
from emunet.dataplane.icmp_limit import PEERS, IcmpRateLimit
from emunet.dataplane.trace import Drop

HOST = str(Drop.ICMP_RATELIMIT_HOST)
GLOBAL = str(Drop.ICMP_RATELIMIT_GLOBAL)
A, B = b"\x0a\xf4\x01\x02", b"\x0a\xf4\x01\x03"


def sent(lim: IcmpRateLimit, n: int, now: float, dst: bytes = A, typ: int = 3) -> int:
    return sum(lim.allow(typ, 3, dst, False, now) for _ in range(n))


def test_a_destination_gets_a_burst_of_six_then_one_a_second() -> None:
    drops: dict[str, int] = {}
    lim = IcmpRateLimit(drops)
    assert sent(lim, 10, 0.0) == 6
    assert drops == {HOST: 4}
    assert sent(lim, 1, 0.5) == 0  # half a token
    assert sent(lim, 3, 1.0) == 1  # a whole one: one error
    assert sent(lim, 10, 4.0) == 3  # three seconds, three tokens
    assert sent(lim, 10, 100.0) == 6  # the bucket holds six, no more
    assert sent(lim, 10, 100.0, dst=B) == 6  # another destination has its own


def test_time_is_counted_in_whole_milliseconds_and_never_runs_back() -> None:
    lim = IcmpRateLimit({})
    assert sent(lim, 6, 0.3) == 6
    assert sent(lim, 1, 1.3) == 1  # exactly a second later: a float's 0.9999... is not less
    assert sent(lim, 1, 0.5) == 0  # a step out of time order adds nothing...
    assert sent(lim, 1, 2.299) == 0  # ...nor takes the time back: 999 ms since 1.3
    assert sent(lim, 1, 2.3) == 1
    lim = IcmpRateLimit({})
    dsts = [bytes([10, 0, 0, i]) for i in range(60)]
    assert sum(lim.allow(3, 3, d, False, 5.0) for d in dsts) == 50
    assert sum(lim.allow(3, 3, d, False, 4.0) for d in dsts) == 0  # no refill from the past
    assert sum(lim.allow(3, 3, d, False, 5.02) for d in dsts[50:]) == 10  # 20 ms: 20 credits


def test_the_namespace_sends_at_most_fifty_at_once_then_a_thousand_a_second() -> None:
    drops: dict[str, int] = {}
    lim = IcmpRateLimit(drops)
    dsts = [bytes([10, 0, i // 256, i % 256]) for i in range(200)]
    assert sum(lim.allow(3, 3, d, False, 0.0) for d in dsts[:60]) == 50
    assert drops == {GLOBAL: 10}
    assert sum(lim.allow(3, 3, d, False, 0.01) for d in dsts[60:70]) == 0  # refills every 20 ms
    assert sum(lim.allow(3, 3, d, False, 0.03) for d in dsts[70:110]) == 30  # 30 ms: 30 more
    # a destination held back by its own bucket spends no global credit
    assert sent(lim, 5, 5.0) == 5 and lim.credit == 45


def test_errors_pmtu_discovery_needs_and_queries_are_never_limited() -> None:
    lim = IcmpRateLimit({})
    assert sum(lim.allow(3, 4, A, False, 0.0) for _ in range(100)) == 100  # frag needed
    assert sent(lim, 100, 0.0, typ=0) == 100  # echo reply
    assert sent(lim, 100, 0.0, typ=5) == 100  # redirect: not in icmp_ratemask
    assert sent(lim, 100, 0.0, typ=11) == 6  # time exceeded is
    assert lim.credit == 50 - 6


def test_errors_about_packets_that_came_in_on_lo_skip_both_limits() -> None:
    lim = IcmpRateLimit({})
    assert sum(lim.allow(3, 3, A, True, 0.0) for _ in range(100)) == 100
    assert lim.credit == 0 and not lim.peers  # neither was consulted


def test_a_missing_route_pays_ip_error_first_two_at_once_then_one_after_two_quiet_seconds() -> None:
    lim = IcmpRateLimit({})
    pkt = bytearray(12) + A + B  # a forwarded packet's header: source A

    def errors(now: float, n: int = 10) -> int:
        return sum(lim.route_error(pkt, now) and lim.allow(3, 0, A, False, now) for _ in range(n))

    assert errors(0.0) == 2
    assert errors(1.0) == 0  # ip_error takes the second as it comes: icmp_send finds none
    assert errors(2.0) == 0  # so a source that keeps sending hears nothing more
    assert errors(4.0) == 1  # two quiet seconds: one for ip_error, one for icmp_send


def test_remembered_destinations_are_bounded_least_recently_used_first() -> None:
    lim = IcmpRateLimit({})
    first, second = b"\x01\x00\x00\x00", b"\x02\x00\x00\x00"
    assert sent(lim, 6, 0.0, dst=first) == 6  # its bucket is empty
    assert sent(lim, 1, 0.0, dst=second) == 1
    assert sent(lim, 1, 0.5, dst=first) == 0  # used again: now the more recent of the two
    for i in range(PEERS - 1):  # 50 a second: the global credit never runs out
        lim.allow(3, 3, (i + 16).to_bytes(4, "big"), False, 1.0 + i / 50)
    assert len(lim.peers) == PEERS
    assert second not in lim.peers and first in lim.peers
    lim.allow(3, 3, b"\x03\x00\x00\x00", False, 1.0 + PEERS / 50)
    assert first not in lim.peers  # forgotten: it comes back with a full bucket
    assert sent(lim, 10, 2.0 + PEERS / 50, dst=first) == 6


def test_a_udp_blast_at_a_closed_port_gets_six_errors_then_one_a_second() -> None:
    fab = Fabric(nodes=2, seed=7)
    a, c = fab.add_pod("node1", "a"), fab.add_pod("node2", "c")
    cl = a.netns.udp_socket()
    for _ in range(100):
        cl.sendto(b"x", (c.ip, 4444), fab.now)
    fab.run(0.5)
    assert [e.errno_name for e in cl.errors] == ["ECONNREFUSED"] * 6
    assert c.netns.drops[str(Drop.PORT_UNREACHABLE)] == 100
    assert c.netns.drops[HOST] == 94
    fab.tracer.enabled = True  # a trace says why no error came back
    cl.sendto(b"x", (c.ip, 4444), fab.now)
    fab.run(0.01)
    (held,) = [h for h in fab.tracer.hops if h.event == "icmp error held back"]
    assert (held.netns, held.detail) == ("c", "type 3 code 3: rate limit")
    fab.tracer.enabled = False
    fab.run(1.0)  # more than a second after the burst, less than two: one token
    cl.errors.clear()
    cl.sendto(b"x", (c.ip, 4444), fab.now)
    cl.sendto(b"x", (c.ip, 4444), fab.now)
    fab.run(0.5)
    assert len(cl.errors) == 1
    assert c.netns.drops[HOST] == 96


def test_time_exceeded_from_a_router_is_limited_per_destination() -> None:
    fab = Fabric(nodes=2, seed=7)
    a, c = fab.add_pod("node1", "a"), fab.add_pod("node2", "c")
    sock = a.netns.ping_socket()
    for seq in range(20):
        sock.send(c.ip, seq, fab.now, b"", ttl=1)  # node1's cni0 gateway answers TTL 1
    fab.run(0.5)
    assert [(e.icmp_type, e.icmp_code) for e in sock.errors] == [(11, 0)] * 6
    assert fab.node("node1").drops()[HOST] == 14


def test_kube_proxy_rejects_are_limited_as_the_kernel_limits_them() -> None:
    fab = Fabric(nodes=2, seed=4)
    client = fab.add_pod("node1", "client")
    cip = IPv4Address("10.96.0.20")
    fab.set_services([Service("default", "dns", cip, (ServicePort("dns", "UDP", 53, 53),))], {})
    sock = client.netns.udp_socket()
    for _ in range(20):  # no endpoints: REJECT, icmp-port-unreachable (nf_send_unreach)
        sock.sendto(b"?", (cip, 53), fab.now)
    fab.run(0.5)
    assert [e.errno_name for e in sock.errors] == ["ECONNREFUSED"] * 6
    assert fab.node("node1").drops()[HOST] == 14
