"""A ClusterIP is no interface's address in iptables mode (no ping answer), but IPVS
mode binds every ClusterIP to the dummy kube-ipvs0, so the node answers for it."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from emunet.cluster.kubeproxy import Endpoint, Service, ServicePort
from emunet.dataplane.fabric import Fabric

CLUSTER_IP = IPv4Address("10.96.0.77")


def _fabric(mode: str) -> Fabric:
    fab = Fabric(nodes=2, seed=5, proxy_mode=mode)
    fab.add_pod("node1", "client")
    web = fab.add_pod("node2", "web")
    svc = Service("default", "web", CLUSTER_IP, (ServicePort("http", "TCP", 80, 8080),))
    eps = {("default", "web"): [Endpoint(web.ip, "node2", port_name="http")]}
    for node in fab.nodes.values():
        node.set_services([svc], eps, fab.now)
    return fab


@pytest.mark.parametrize(("mode", "answered"), [("iptables", False), ("ipvs", True)])
def test_ping_cluster_ip(mode: str, answered: bool) -> None:
    fab = _fabric(mode)
    ping = fab.pod("client").netns.ping_socket()
    ping.send(CLUSTER_IP, 1, fab.now)
    fab.run(2.0)
    assert [r.src for r in ping.replies] == ([CLUSTER_IP] if answered else [])
    node = fab.node("node1")
    addrs = {str(a) for _, a in node.root.addresses}
    assert (f"{CLUSTER_IP}/32" in addrs) is answered  # on kube-ipvs0, or nowhere


def test_ipvs_dummy_follows_services_and_service_still_dnats() -> None:
    fab = _fabric("ipvs")
    node = fab.node("node1")
    assert node.kube_ipvs0 is not None
    assert [a.ip for a in node.kube_ipvs0.addresses] == [CLUSTER_IP]
    lst = fab.pod("web").netns.tcp_listen(8080)
    conn = fab.pod("client").netns.tcp_connect(CLUSTER_IP, 80, fab.now)
    fab.run(1.0)
    assert conn.state.name == "ESTABLISHED" and lst.accept() is not None
    # a port the Service does not serve reaches the node itself: RST (connection refused)
    other = fab.pod("client").netns.tcp_connect(CLUSTER_IP, 81, fab.now)
    fab.run(1.0)
    assert other.error == "ECONNREFUSED"
    node.set_services([], {}, fab.now)
    assert node.kube_ipvs0.addresses == []
