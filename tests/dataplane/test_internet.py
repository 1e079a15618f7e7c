"""The emulated internet on its own: segments, the gateway's NAT, LB health, apps."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from emunet.cluster.kubeproxy import Endpoint, Service, ServicePort, ServiceType, TrafficPolicy
from emunet.dataplane.fabric import Fabric
from emunet.dataplane.internet import load_balancer_targets
from emunet.errors import ConfigError

A = IPv4Address


def test_internet_hosts_cannot_reach_private_node_addresses() -> None:
    fab = Fabric(nodes=2, seed=1)
    host = fab.add_host("h", "203.0.113.10")
    ping = host.netns.ping_socket()
    ping.send(fab.node("node1").node_ip, 1, fab.now)
    fab.run(1.0)
    assert not ping.replies and fab.undeliverable == 1
    # but the gateway's public address answers
    ping.send("198.51.100.1", 2, fab.now)
    fab.run(1.0)
    assert [r.src for r in ping.replies] == [A("198.51.100.1")]


def test_gateway_keeps_the_source_port_when_free_and_remaps_a_clash() -> None:
    fab = Fabric(nodes=2, seed=2)
    host = fab.add_host("h", "203.0.113.10")
    host.serve_udp_echo(7)
    # two node root namespaces send from the same port: the second one clashes
    for name in ("node1", "node2"):
        sock = fab.node(name).root.udp_socket()
        sock.bind(port=5000)
        sock.sendto(b"x", (host.ip, 7), fab.now)
        fab.run(0.5)
        assert sock.rx, name
    ports = [port for _, ip, port in host.peers]
    assert [ip for _, ip, _ in host.peers] == [A("198.51.100.1")] * 2
    assert ports[0] == 5000 and ports[1] != 5000


def test_node_network_vm_reaches_the_internet_through_the_gateway() -> None:
    fab = Fabric(nodes=1, seed=3)
    vm = fab.add_host("vm", "172.18.0.100", segment="nodes")
    web = fab.add_host("web", "203.0.113.20")
    web.serve_tcp(80, "http")
    conn = vm.netns.tcp_connect(web.ip, 80, fab.now)
    got = bytearray()

    def on_event() -> None:
        if conn.error is None:
            got.extend(conn.recv())

    conn.on_event = on_event
    fab.run_until(lambda: conn.state.name == "ESTABLISHED", timeout=2.0)
    conn.send(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n", fab.now)
    fab.run(1.0)
    assert got.startswith(b"HTTP/1.0 200 OK") and b"hello from web to 198.51.100.1:" in got


def test_load_balancer_health_follows_local_endpoints() -> None:
    svc = Service(
        "default",
        "web",
        A("10.96.0.20"),
        (ServicePort("http", "TCP", 80, 8080, 30080),),
        type=ServiceType.LOAD_BALANCER,
        external_traffic_policy=TrafficPolicy.LOCAL,
        load_balancer_ip=A("198.51.100.10"),
    )
    nodes = {"node1": A("172.18.0.2"), "node2": A("172.18.0.3"), "node3": A("172.18.0.4")}
    eps = {svc.key: [Endpoint(A("10.244.3.2"), "node3", port_name="http")]}
    (target,) = load_balancer_targets([svc], eps, nodes)
    assert target.targets == (A("172.18.0.4"),) and target.node_port == 30080
    cluster = Service(
        svc.namespace, svc.name, svc.cluster_ip, svc.ports, type=svc.type,
        load_balancer_ip=svc.load_balancer_ip,
    )  # fmt: skip
    (target,) = load_balancer_targets([cluster], eps, nodes)
    assert target.targets == tuple(nodes.values())
    assert [target.pick() for _ in range(4)] == [*nodes.values(), A("172.18.0.2")]


def test_configuration_errors_are_named() -> None:
    fab = Fabric(nodes=1, seed=4)
    fab.add_host("a", "203.0.113.10")
    with pytest.raises(ConfigError, match="already in use"):
        fab.add_host("b", "203.0.113.10")
    with pytest.raises(ConfigError, match="not on the node network"):
        fab.add_host("c", "10.0.0.1", segment="nodes")
    with pytest.raises(ConfigError, match="unknown segment"):
        fab.add_host("d", "203.0.113.11", segment="moon")
    with pytest.raises(ConfigError, match="already has an internet"):
        fab.add_internet()
