"""ICMP queries in conntrack are keyed by identifier *and* type, as Linux keys
them (``nf_conntrack_proto_icmp``): a request from the other end with the same
identifier is its own connection, not the reply of the first."""

from __future__ import annotations

from emunet.dataplane import nat
from emunet.dataplane.conntrack import REPLY
from emunet.dataplane.fabric import Fabric
from emunet.packets import icmp, ipv4
from emunet.packets.checksum import internet_checksum


def icmp_lines(listing: str) -> list[str]:
    return [line for line in listing.splitlines() if line.startswith("icmp")]


def test_icmp_ports_put_the_query_key_on_the_responders_side() -> None:
    # a request and its reply are the two tuples of one entry (the reply swaps sides)
    req = nat.icmp_ports(icmp.ECHO_REQUEST, 0, 77)
    rep = nat.icmp_ports(icmp.ECHO_REPLY, 0, 77)
    assert rep == (req[1], req[0])
    assert req[0] == 77 and req[1] & nat.PORT_MASK == 77 and req[1] != 77
    # a timestamp query is another connection than an echo with that identifier
    assert nat.icmp_ports(13, 0, 77) != req
    # a source NAT that gives the reply tuple identifier 9 keeps the query's key
    assert nat.nat_ports(ipv4.PROTO_ICMP, rep[0], 9) == nat.icmp_ports(icmp.ECHO_REPLY, 0, 9)
    assert nat.nat_ports(ipv4.PROTO_UDP, 5000, 9) == (5000, 9)


def test_two_pods_pinging_each_other_with_one_identifier_are_two_connections() -> None:
    fab = Fabric(nodes=2, seed=7)
    a = fab.add_pod("node1", "a")
    b = fab.add_pod("node2", "b")
    pa, pb = a.netns.ping_socket(4242), b.netns.ping_socket(4242)
    pa.send(b.ip, 1, fab.now, b"\x00" * 56)
    pb.send(a.ip, 1, fab.now, b"\x00" * 56)
    fab.run(0.5)
    assert [r.src for r in pa.replies] == [b.ip]
    assert [r.src for r in pb.replies] == [a.ip]
    for node in ("node1", "node2"):  # each request NEW, each answered: type=8 twice
        lines = icmp_lines(fab.node(node).conntrack_listing(fab.now))
        assert len(lines) == 2, lines
        assert all(" type=8 code=0 id=4242 " in line for line in lines)
        assert not any("UNREPLIED" in line for line in lines)


def test_a_ping_to_a_node_is_not_taken_for_the_reply_of_a_masqueraded_ping() -> None:
    """A pod pings node2 (masqueraded to node1's address, identifier J); node2 then
    pings node1 with identifier J: node1 answers it itself (TTL 64), the pod never
    sees it. Keyed by identifier alone, the request matched the pod's reply tuple,
    was un-SNAT'd to the pod, and came back from the pod (TTL 63, routed once)."""
    fab = Fabric(nodes=2, seed=7)
    pod = fab.add_pod("node1", "a")
    n1, n2 = fab.node("node1"), fab.node("node2")
    out = pod.netns.ping_socket(4242)
    out.send(n2.node_ip, 1, fab.now, b"\x00" * 56)
    fab.run(0.5)
    assert [r.src for r in out.replies] == [n2.node_ip]
    assert n1.netfilter is not None
    table = n1.netfilter.conntrack
    (entry,) = [e for e in table if e.proto == ipv4.PROTO_ICMP]
    reply = entry.tuples[REPLY]
    assert reply[2] == int(n1.node_ip)  # masqueraded
    ident = reply[4]
    probe = n2.root.ping_socket(ident)
    probe.send(n1.node_ip, 1, fab.now, b"\x00" * 56)
    fab.run(0.5)
    assert [(r.src, r.ttl) for r in probe.replies] == [(n1.node_ip, 64)]
    assert len(out.replies) == 1  # the pod saw no request
    assert len([e for e in table if e.proto == ipv4.PROTO_ICMP]) == 2


def test_the_gateway_keys_pings_by_type_too() -> None:
    """Two nodes ping an internet host with one identifier: the gateway keeps it for
    the first and remaps the clash, both are answered. The host then pings the
    gateway's public address with that identifier: the gateway answers (TTL 64);
    it is not the reply of node1's ping, un-SNAT'd to node1 (TTL 63)."""
    fab = Fabric(nodes=2, seed=2)
    host = fab.add_host("h", "203.0.113.10")
    socks = [fab.node(name).root.ping_socket(4242) for name in ("node1", "node2")]
    for sock in socks:  # both waiting for their reply at once
        sock.send(host.ip, 1, fab.now, b"\x00" * 56)
    fab.run(0.5)
    assert [[r.src for r in sock.replies] for sock in socks] == [[host.ip], [host.ip]]
    probe = host.netns.ping_socket(4242)
    probe.send("198.51.100.1", 1, fab.now, b"\x00" * 56)
    fab.run(0.5)
    assert [(str(r.src), r.ttl) for r in probe.replies] == [("198.51.100.1", 64)]
    assert [len(sock.replies) for sock in socks] == [1, 1]


def test_time_exceeded_reaches_a_masqueraded_ping_after_its_first_reply() -> None:
    """mtr -I: once a masqueraded ping is answered, a TTL-limited probe of it dies on
    the way and its error finds the socket. The request is only SNAT'd (the
    identifier changes on the way out, not on the way in): had prerouting given
    it the SNAT'd identifier, the error quoted a packet of no connection."""
    fab = Fabric(nodes=2, seed=7)
    host = fab.add_host("h", "203.0.113.10")
    pod = fab.add_pod("node1", "a")
    sock = pod.netns.ping_socket(4242)
    sock.send(host.ip, 1, fab.now, b"\x00" * 8)
    fab.run(0.5)
    for seq, ttl in ((2, 1), (3, 2)):  # dies at node1, then at the gateway
        sock.send(host.ip, seq, fab.now, b"\x00" * 8, ttl=ttl)
        fab.run(0.5)
    assert [r.seq for r in sock.replies] == [1]
    assert [(e.icmp_type, e.seq) for e in sock.errors] == [(11, 2), (11, 3)]


def test_the_gateway_sends_time_exceeded_to_a_remapped_ping() -> None:
    fab = Fabric(nodes=2, seed=2)
    host = fab.add_host("h", "203.0.113.10")
    socks = [fab.node(name).root.ping_socket(4242) for name in ("node1", "node2")]
    for sock in socks:  # the second one's identifier is remapped (a clash)
        sock.send(host.ip, 1, fab.now, b"\x00" * 8)
    fab.run(0.5)
    for sock in socks:
        sock.send(host.ip, 2, fab.now, b"\x00" * 8, ttl=1)  # dies at the gateway
    fab.run(0.5)
    assert [[(e.icmp_type, e.seq) for e in sock.errors] for sock in socks] == [[(11, 2)]] * 2


def test_an_echo_of_another_code_is_another_connection_on_the_flow_path_too() -> None:
    """The flow table keys an echo as conntrack does (type and code): a request
    with code 3 and a flowing ping's identifier opens its own entry, listed with
    its code, whether the hooks or the flow see it."""
    for trace in (False, True):  # a tracer sends every packet through the hooks
        fab = Fabric(nodes=2, seed=7, trace=trace)
        a = fab.add_pod("node1", "a")
        c = fab.add_pod("node2", "c")
        sock = a.netns.ping_socket(900)
        for seq in range(3):
            sock.send(c.ip, seq, fab.now, b"z" * 8)
            fab.run(0.5)
        msg = bytearray(icmp.echo(icmp.ECHO_REQUEST, 900, 50, b"z" * 8))
        msg[1] = 3
        msg[2:4] = b"\x00\x00"
        msg[2:4] = internet_checksum(msg).to_bytes(2, "big")
        a.netns.ip_send_local(1, a.ip, c.ip, bytes(msg), fab.now, df=False)
        fab.run(0.5)
        lines = icmp_lines(fab.node("node1").conntrack_listing(fab.now))
        assert len(lines) == 2, (trace, lines)
        assert sorted(line.split(" code=")[1][0] for line in lines) == ["0", "3"]
