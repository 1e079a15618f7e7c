"""An internet site as the internet process runs it: a node and the site joined
only by the wire (UnderlayPackets one way, ``wire_received`` the other)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from emunet.cluster.kubeproxy import Endpoint, Service, ServicePort, ServiceType
from emunet.dataplane.actions import UnderlayPacket
from emunet.dataplane.node import Node
from emunet.dataplane.site import InternetSite, choose_ingress, lb_pool
from emunet.errors import ConfigError

A = IPv4Address
NET = IPv4Network("172.18.0.0/24")


class Wire:
    """Carries UnderlayPackets between one node and the sites, in fake time."""

    def __init__(self, node: Node, *sites: InternetSite) -> None:
        self.node = node
        self.sites = sites
        self.now = 0.0
        self.to_sites = 0

    def run(self, seconds: float = 1.0, step: float = 0.001) -> None:
        end = self.now + seconds
        while self.now < end:
            moved = True
            while moved:
                moved = False
                for action in self.node.take_actions():
                    assert isinstance(action, UnderlayPacket)
                    for site in self.sites:
                        if action.next_hop in site.wire_addresses():
                            self.to_sites += 1
                            site.wire_received(action.next_hop, bytes(action.packet), self.now)
                            moved = True
                for site in self.sites:
                    for out in site.take_actions():
                        if out.next_hop == self.node.node_ip:
                            self.node.underlay_received(bytes(out.packet), self.now)
                            moved = True
                        else:
                            for other in self.sites:
                                if out.next_hop in other.wire_addresses():
                                    other.wire_received(out.next_hop, bytes(out.packet), self.now)
                                    moved = True
            self.now += step
            for clock in (self.node, *self.sites):
                t = clock.get_timer()
                if t is not None and t <= self.now:
                    clock.handle_timer(self.now)


def node() -> Node:
    return Node(
        "node1", A("172.18.0.11"), IPv4Network("10.244.1.0/24"), node_network=NET,
        gateway=A("172.18.0.1"), seed=1,
    )  # fmt: skip


def site() -> InternetSite:
    s = InternetSite("internet", node_network=NET, gateway="172.18.0.1", seed=2)
    s.add_host("example", "203.0.113.10")
    return s


def http_get(ns: object, ip: IPv4Address, port: int, wire: Wire) -> bytes:
    conn = ns.tcp_connect(ip, port, wire.now)  # type: ignore[attr-defined]
    got = bytearray()

    def on_event() -> None:
        if conn.error is None:
            got.extend(conn.recv())

    conn.on_event = on_event
    wire.run(0.2)
    assert conn.state.name == "ESTABLISHED", conn.error
    conn.send(b"GET / HTTP/1.0\r\n\r\n", wire.now)
    wire.run(0.5)
    return bytes(got)


def test_a_pod_reaches_an_internet_host_masqueraded_twice() -> None:
    n, s = node(), site()
    pod = n.add_pod("client", ip=A("10.244.1.5"), now=0.0)
    wire = Wire(n, s)
    body = http_get(pod.netns, A("203.0.113.10"), 80, wire)
    # the node masquerades to its IP, the gateway to its public address
    assert body.startswith(b"HTTP/1.0 200 OK")
    assert b"hello from example to 198.51.100.1:" in body
    assert wire.to_sites > 0
    listing = n.conntrack_listing(wire.now)
    assert "src=203.0.113.10 dst=172.18.0.11" in listing
    assert "dst=198.51.100.1" in s.conntrack_listing(wire.now)


def test_node_network_host_in_another_site_reaches_a_node_and_the_internet() -> None:
    n, gw = node(), site()
    lan = InternetSite("vm", node_network=NET, gateway_via="172.18.0.1", seed=3)
    vm = lan.add_host("vm", "172.18.0.100")
    wire = Wire(n, gw, lan)
    ping = vm.netns.ping_socket()
    ping.send(A("172.18.0.11"), 1, wire.now)
    wire.run(0.2)
    assert [r.src for r in ping.replies] == [A("172.18.0.11")]
    body = http_get(vm.netns, A("203.0.113.10"), 80, wire)
    assert b"hello from example to 198.51.100.1:" in body


def test_internet_hosts_never_reach_private_addresses() -> None:
    s = site()
    ex = s.pods["example"]
    ping = ex.netns.ping_socket()
    ping.send(A("172.18.0.11"), 1, 0.0)
    assert s.take_actions() == [] and s.undeliverable == 1
    assert s.drops() == {"no host owns the next hop": 1}


def test_load_balancer_programmed_from_services() -> None:
    s = site()
    svc = Service(
        "default", "web", A("10.96.0.20"), (ServicePort("http", "TCP", 80, 8080, 30080),),
        type=ServiceType.LOAD_BALANCER, load_balancer_ip=A("198.51.100.10"),
    )  # fmt: skip
    eps = {svc.key: [Endpoint(A("10.244.1.2"), "node1", port_name="http")]}
    assert s.set_services([svc], eps, {"node1": A("172.18.0.11")}) == 1
    rules = s.iptables_save()
    assert "-d 198.51.100.10/32 -p tcp -m tcp --dport 80" in rules
    assert "--to-destination 172.18.0.11:30080" in rules
    assert "-A POSTROUTING -s 172.18.0.0/24 -o wan0 -j MASQUERADE" in rules
    # a site without the gateway has no load balancer
    lan = InternetSite("vm", node_network=NET, gateway_via="172.18.0.1")
    assert lan.set_services([svc], eps, {"node1": A("172.18.0.11")}) == 0


def test_ingress_choice_honours_requests_in_the_pool() -> None:
    pool = lb_pool("198.51.100.10-198.51.100.12")
    assert pool == [A("198.51.100.10"), A("198.51.100.11"), A("198.51.100.12")]
    assert choose_ingress(pool, set(), None) == A("198.51.100.10")
    assert choose_ingress(pool, {A("198.51.100.10")}, None) == A("198.51.100.11")
    assert choose_ingress(pool, set(), A("198.51.100.12")) == A("198.51.100.12")
    assert choose_ingress(pool, {A("198.51.100.12")}, A("198.51.100.12")) is None
    assert choose_ingress(pool, set(), A("192.0.2.1")) is None
    assert choose_ingress(pool, set(pool), None) is None
    assert len(lb_pool("198.51.100.0/30")) == 4
    for bad in ("nonsense", "198.51.100.9-198.51.100.1", "10.0.0.0/8"):
        with pytest.raises(ConfigError, match="LB pool"):
            lb_pool(bad)


def test_site_configuration_errors_are_one_line() -> None:
    lan = InternetSite("vm", node_network=NET, gateway_via="172.18.0.1")
    with pytest.raises(ConfigError, match="only a process running the gateway"):
        lan.add_host("x", "203.0.113.30")
    s = site()
    with pytest.raises(ConfigError, match="already exists"):
        s.add_host("example", "203.0.113.11")
    with pytest.raises(ConfigError, match="already in use by example"):
        s.add_host("other", "203.0.113.10")
    with pytest.raises(ConfigError, match="nor a public address"):
        s.add_host("p", "10.1.2.3")
    with pytest.raises(ConfigError, match="not a host address"):
        s.add_host("b", "172.18.0.255")
    with pytest.raises(ConfigError, match="not on the node network"):
        InternetSite("g", node_network=NET, gateway="10.0.0.1")
    with pytest.raises(ConfigError, match="no host"):
        s.namespace("nosuch")
    assert s.namespace("root") is s.pods["gateway"].netns
