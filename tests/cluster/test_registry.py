"""The registry's objects and rules, pure (no etcd)."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from emunet.cluster import kubeproxy
from emunet.cluster.allocators import RangeFull, allocate_cluster_ip, allocate_node_port
from emunet.cluster.controllers import (
    Unschedulable,
    deployment_pod_name,
    pod_for_deployment,
    pod_template_hash,
    schedule_pod,
)
from emunet.cluster.endpoints import endpoints_for, endpoints_map, to_kubeproxy
from emunet.cluster.registry import (
    Container,
    ContainerPort,
    Deployment,
    NodeInfo,
    Pod,
    PodPhase,
    PodTemplate,
    Service,
    ServicePortSpec,
    ServiceType,
    SessionAffinity,
    TrafficPolicy,
)
from emunet.cluster.schema import FieldReader, selector_matches
from emunet.errors import ConfigError

A = IPv4Address

HTTP = Container("web", "http", {"port": 8080}, (ContainerPort(8080, "TCP", "http"),))
ECHO = Container(
    "echo",
    "echo",
    {"port": 7},
    (ContainerPort(7, "TCP", "echo-tcp"), ContainerPort(7, "UDP", "echo-udp")),
)


def pod(
    name: str,
    ip: str | None = "10.244.1.2",
    *,
    labels: dict[str, str] | None = None,
    phase: PodPhase = PodPhase.RUNNING,
    node: str = "node1",
    ns: str = "default",
    containers: tuple[Container, ...] = (HTTP,),
) -> Pod:
    return Pod(
        name=name,
        namespace=ns,
        labels={"app": "web"} if labels is None else labels,
        node_name=node,
        containers=containers,
        phase=phase,
        pod_ip=A(ip) if ip else None,
        host_ip=A("127.0.0.11"),
    )


def svc(**kw: Any) -> Service:
    base: dict[str, Any] = {
        "name": "web",
        "selector": {"app": "web"},
        "ports": (ServicePortSpec(80, 8080),),
        "cluster_ip": A("10.96.0.50"),
    }
    base.update(kw)
    return Service(**base)


# -- round trips -------------------------------------------------------------------

OBJECTS: list[Any] = [
    NodeInfo("node1", A("127.0.0.11"), IPv4Network("10.244.1.0/24"), "127.0.0.11:10250"),
    NodeInfo("node2", A("127.0.0.12")),
    pod("web-1"),
    pod("web-2", None, phase=PodPhase.PENDING, containers=(HTTP, ECHO)),
    replace(pod("web-3"), owner="web", uid="u-1", created="2024-01-01T00:00:00Z", message="m"),
    svc(),
    svc(
        type=ServiceType.NODE_PORT,
        ports=(
            ServicePortSpec(80, "http", "TCP", "http", 30080),
            ServicePortSpec(7, 7, "UDP", "echo", 30007),
        ),
        session_affinity=SessionAffinity.CLIENT_IP,
        affinity_timeout=60,
        external_traffic_policy=TrafficPolicy.LOCAL,
        labels={"tier": "front"},
    ),
    svc(type=ServiceType.LOAD_BALANCER, load_balancer_ip=A("172.18.255.1")),
    Deployment(
        "web", replicas=3, selector={"app": "web"}, template=PodTemplate({"app": "web"}, (HTTP,))
    ),
    Deployment(
        "pinned",
        replicas=0,
        selector={"app": "p"},
        template=PodTemplate({"app": "p", "x": "y"}, (ECHO,), "node2"),
    ),
]


@pytest.mark.parametrize("obj", OBJECTS, ids=lambda o: f"{type(o).__name__}-{o.name}")
def test_round_trip(obj: Any) -> None:
    text = obj.to_json()
    again = type(obj).from_json(text)
    if isinstance(obj, Service):
        # targetPort defaults to port once stored
        obj = replace(
            obj, ports=tuple(replace(p, target_port=p.effective_target) for p in obj.ports)
        )
    assert again == obj
    assert again.to_json() == text


def test_kubernetes_field_names() -> None:
    p = json.loads(replace(pod("web-1"), owner="web").to_json())
    assert p["metadata"]["ownerReferences"][0] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "web",
    }
    assert p["spec"]["nodeName"] == "node1"
    assert p["spec"]["containers"][0]["ports"][0] == {
        "name": "http",
        "containerPort": 8080,
        "protocol": "TCP",
    }
    assert p["status"] == {
        "phase": "Running",
        "hostIP": "127.0.0.11",
        "podIP": "10.244.1.2",
        "podIPs": [{"ip": "10.244.1.2"}],
    }
    s = json.loads(
        svc(session_affinity=SessionAffinity.CLIENT_IP, type=ServiceType.NODE_PORT).to_json()
    )
    assert s["spec"]["clusterIP"] == "10.96.0.50"
    assert s["spec"]["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 10800}}
    assert s["spec"]["externalTrafficPolicy"] == "Cluster"
    assert s["spec"]["ports"][0] == {"protocol": "TCP", "port": 80, "targetPort": 8080}
    n = json.loads(OBJECTS[0].to_json())
    assert n["status"]["addresses"][0] == {"type": "InternalIP", "address": "127.0.0.11"}
    assert n["status"]["controlEndpoint"] == "127.0.0.11:10250"
    assert n["spec"]["podCIDR"] == "10.244.1.0/24"


# -- validation -----------------------------------------------------------------------

INVALID: list[tuple[str, Callable[[], Any], str]] = [
    ("port range", lambda: svc(ports=(ServicePortSpec(70000),)).validate(),
     "spec.ports[0].port: must be 1-65535, got 70000"),
    ("target range", lambda: svc(ports=(ServicePortSpec(80, 0x10000),)).validate(),
     "spec.ports[0].targetPort: must be 1-65535, got 65536"),
    ("target name", lambda: svc(ports=(ServicePortSpec(80, "Not_A_Name"),)).validate(),
     "spec.ports[0].targetPort: 'Not_A_Name' must be an IANA service name"),
    ("protocol", lambda: svc(ports=(ServicePortSpec(80, 80, "SCTP"),)).validate(),
     "spec.ports[0].protocol: must be TCP or UDP, got 'SCTP'"),
    ("no ports", lambda: svc(ports=()).validate(), "spec.ports: at least one port is required"),
    ("unnamed multi", lambda: svc(ports=(ServicePortSpec(80), ServicePortSpec(81))).validate(),
     "spec.ports[0].name: required when a Service has several ports"),
    ("dup port",
     lambda: svc(ports=(ServicePortSpec(80, name="a"), ServicePortSpec(80, name="b"))).validate(),
     "spec.ports[1]: duplicate 80/TCP"),
    ("nodePort on ClusterIP", lambda: svc(ports=(ServicePortSpec(80, node_port=30001),)).validate(),
     "spec.ports[0].nodePort: may not be used when `type` is 'ClusterIP'"),
    ("nodePort range",
     lambda: svc(type=ServiceType.NODE_PORT, ports=(ServicePortSpec(80, node_port=80),)).validate(),
     "spec.ports[0].nodePort: must be 30000-32767, got 80"),
    ("affinity timeout",
     lambda: svc(session_affinity=SessionAffinity.CLIENT_IP, affinity_timeout=86401).validate(),
     "spec.sessionAffinityConfig.clientIP.timeoutSeconds: must be 1-86400, got 86401"),
    ("local on ClusterIP", lambda: svc(external_traffic_policy=TrafficPolicy.LOCAL).validate(),
     "spec.externalTrafficPolicy: may only be set when `type` is 'NodePort' or 'LoadBalancer'"),
    ("lb ip", lambda: svc(load_balancer_ip=A("1.2.3.4")).validate(),
     "spec.loadBalancerIP: may only be set when `type` is 'LoadBalancer'"),
    ("cidr", lambda: svc(cluster_ip=A("10.0.0.1")).validate(IPv4Network("10.96.0.0/12")),
     "spec.clusterIP: 10.0.0.1 is not in the service CIDR 10.96.0.0/12"),
    ("svc name", lambda: svc(name="1web").validate(), "metadata.name: '1web' must be a DNS-1035"),
    ("selector", lambda: svc(selector={"app": "bad value!"}).validate(),
     "spec.selector.app: 'bad value!' is not a valid label value"),
    ("pod name", lambda: pod("Web").validate(), "metadata.name: 'Web' must be a DNS subdomain"),
    ("no containers", lambda: pod("w", containers=()).validate(),
     "spec.containers: at least one container is required"),
    ("container port",
     lambda: pod("w", containers=(Container("c", "http", {}, (ContainerPort(0),)),)).validate(),
     "spec.containers[0].ports[0].containerPort: must be 1-65535, got 0"),
    ("dup container", lambda: pod("w", containers=(HTTP, HTTP)).validate(),
     "spec.containers[1].name: duplicate 'web'"),
    ("no app", lambda: pod("w", containers=(Container("c", ""),)).validate(),
     "spec.containers[0].app: required"),
    ("replicas", lambda: replace(OBJECTS[8], replicas=-1).validate(),
     "spec.replicas: must be 0 to 1000, got -1"),
    ("selector mismatch", lambda: replace(OBJECTS[8], selector={"app": "other"}).validate(),
     "spec.template.metadata.labels: `selector` does not match template `labels`"),
    ("no selector", lambda: replace(OBJECTS[8], selector={}).validate(),
     "spec.selector.matchLabels: required"),
    ("json type", lambda: Service.from_dict(
        {"metadata": {"name": "x"}, "spec": {"ports": [{"port": "eighty"}]}}),
     "spec.ports[0].port: must be an integer, got string"),
    ("json bool", lambda: Service.from_dict(
        {"metadata": {"name": "x"}, "spec": {"ports": [{"port": True}]}}),
     "spec.ports[0].port: must be an integer, got boolean"),
    ("json enum", lambda: Service.from_dict(
        {"metadata": {"name": "x"}, "spec": {"type": "External", "ports": [{"port": 1}]}}),
     "spec.type: must be one of ClusterIP, NodePort, LoadBalancer, got 'External'"),
    ("json ip", lambda: Pod.from_dict(
        {"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c", "app": "http"}]},
         "status": {"podIP": "10.1"}}),
     "status.podIP: '10.1' is not an IPv4 address"),
    ("json missing", lambda: Pod.from_dict({"metadata": {}}), "metadata.name: required"),
    ("json list", lambda: Pod.from_dict({"metadata": {"name": "x"}, "spec": {"containers": {}}}),
     "spec.containers: must be a list, got object"),
    ("json syntax", lambda: Pod.from_json("{"), "pod: not valid JSON"),
    ("node cidr", lambda: NodeInfo.from_dict(
        {"metadata": {"name": "n"}, "spec": {"podCIDR": "10.244.1.0/33"}}),
     "spec.podCIDR: '10.244.1.0/33' is not an IPv4 CIDR"),
    ("node ip", lambda: NodeInfo.from_dict({"metadata": {"name": "n"}}),
     "status.addresses: no InternalIP address"),
    ("control endpoint", lambda: NodeInfo("n", A("127.0.0.1"), None, "nope").validate(),
     "node n: status.controlEndpoint 'nope' is not host:port"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "build", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid(case: str, build: Callable[[], Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build()
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize("obj", OBJECTS, ids=lambda o: f"{type(o).__name__}-{o.name}")
def test_valid(obj: Any) -> None:
    obj.validate()


def test_field_reader_warnings() -> None:
    warnings: list[str] = []
    r = FieldReader({"a": 1, "b": {"c": 2, "d": 3}, "e": [{"f": 1, "g": 2}]}, "", warnings)
    assert r.integer("a") == 1
    assert r.obj("b").integer("c") == 2
    assert [x.integer("f") for x in r.objs("e")] == [1]
    r.finish()
    assert warnings == ["b.d: unknown field, ignored", "e[0].g: unknown field, ignored"]


# -- endpoints ---------------------------------------------------------------------------


def test_endpoints_for_selects_running_pods_with_ip() -> None:
    pods = [
        pod("a", "10.244.1.2"),
        pod("b", "10.244.2.2", node="node2"),
        pod("c", "10.244.1.3", phase=PodPhase.PENDING),
        pod("d", None),
        pod("e", "10.244.1.4", labels={"app": "other"}),
        pod("f", "10.244.1.5", ns="prod"),
        pod("g", "10.244.1.6", phase=PodPhase.FAILED),
    ]
    eps = endpoints_for(svc(), pods)
    assert [(str(e.ip), e.node, e.port) for e in eps] == [
        ("10.244.1.2", "node1", 8080),
        ("10.244.2.2", "node2", 8080),
    ]
    assert endpoints_for(svc(selector={}), pods) == []
    assert endpoints_map([svc()], pods) == {("default", "web"): eps}


def test_endpoints_named_target_port() -> None:
    other = Container("alt", "http", {}, (ContainerPort(9090, "TCP", "http"),))
    udp_only = Container("u", "echo", {}, (ContainerPort(53, "UDP", "http"),))
    pods = [
        pod("a", "10.244.1.2"),
        pod("b", "10.244.1.3", containers=(other,)),
        pod("c", "10.244.1.4", containers=(udp_only,)),  # same name, other protocol
        pod("d", "10.244.1.5", containers=(Container("n", "http"),)),  # no such port
    ]
    s = svc(ports=(ServicePortSpec(80, "http", "TCP", "web"), ServicePortSpec(81, 81, "TCP", "x")))
    eps = endpoints_for(s, pods)
    web = [(str(e.ip), e.port) for e in eps if e.port_name == "web"]
    assert web == [("10.244.1.2", 8080), ("10.244.1.3", 9090)]
    assert len([e for e in eps if e.port_name == "x"]) == 4


def test_to_kubeproxy_compiles() -> None:
    s = svc(
        type=ServiceType.NODE_PORT,
        ports=(ServicePortSpec(80, "http", "TCP", "", 30080),),
    )
    kp = to_kubeproxy(s)
    assert kp.ports == (kubeproxy.ServicePort("", "TCP", 80, 80, 30080),)
    assert kp.cluster_ip == A("10.96.0.50")
    eps = endpoints_for(s, [pod("a"), pod("b", "10.244.2.2", node="node2")])
    table = kubeproxy.compile_services([kp], {kp.key: eps}, "node1")
    info = table.by_node_port[kubeproxy.node_port_key(6, 30080)]
    assert [(e.addr, e.local) for e in info.endpoints] == [
        ("10.244.1.2:8080", True),
        ("10.244.2.2:8080", False),
    ]
    lb = to_kubeproxy(svc(type=ServiceType.CLUSTER_IP))
    assert lb.load_balancer_ip is None
    with pytest.raises(ConfigError, match=re.escape("spec.clusterIP: not set")):
        to_kubeproxy(svc(cluster_ip=None))


def test_selector_matches() -> None:
    assert selector_matches({"a": "1"}, {"a": "1", "b": "2"})
    assert not selector_matches({"a": "1", "c": "3"}, {"a": "1"})
    assert not selector_matches({}, {"a": "1"})


# -- allocation and scheduling ---------------------------------------------------------


def test_cluster_ip_skips_reserved_addresses() -> None:
    cidr = IPv4Network("10.96.0.0/28")
    rng = random.Random(1)
    used: set[IPv4Address] = set()
    for _ in range(12):  # 16 - network, .1, .10, broadcast
        used.add(allocate_cluster_ip(used, cidr, rng))
    assert all(ip in cidr for ip in used)
    assert {A("10.96.0.0"), A("10.96.0.1"), A("10.96.0.10"), A("10.96.0.15")}.isdisjoint(used)
    with pytest.raises(RangeFull, match=re.escape("10.96.0.0/28 has no free ClusterIP")):
        allocate_cluster_ip(used, cidr, rng)


def test_cluster_ip_default_range_random() -> None:
    rng = random.Random(7)
    ips = {allocate_cluster_ip((), rng=rng) for _ in range(50)}
    assert len(ips) == 50
    assert all(ip in IPv4Network("10.96.0.0/12") for ip in ips)


def test_node_port_allocation() -> None:
    rng = random.Random(3)
    used: set[int] = set()
    for _ in range(11):
        used.add(allocate_node_port(used, rng, (30000, 30010)))
    assert used == set(range(30000, 30011))
    with pytest.raises(RangeFull, match="30000-30010"):
        allocate_node_port(used, rng, (30000, 30010))
    assert 30000 <= allocate_node_port((), rng) <= 32767


def n(name: str, ready: bool = True) -> NodeInfo:
    return NodeInfo(name, A("127.0.0.1"), ready=ready)


@pytest.mark.parametrize(
    ("pods", "nodes", "expected"),
    [
        ([], [n("node2"), n("node1")], "node1"),
        ([pod("a", node="node1")], [n("node1"), n("node2")], "node2"),
        ([pod("a", node="node1"), pod("b", node="node2")], [n("node1"), n("node2")], "node1"),
        ([], [n("node1", ready=False), n("node2")], "node2"),
        (
            [pod("a", node="node1", phase=PodPhase.FAILED), pod("b", node="node2")],
            [n("node1"), n("node2")],
            "node1",
        ),
        ([pod("a", node="node9")], [n("node1")], "node1"),
    ],
)
def test_schedule(pods: list[Pod], nodes: list[NodeInfo], expected: str) -> None:
    assert schedule_pod(pods, nodes) == expected


def test_schedule_without_ready_nodes() -> None:
    with pytest.raises(Unschedulable, match="no Ready node"):
        schedule_pod([], [n("node1", ready=False)])


def test_deployment_pod_names() -> None:
    dep = OBJECTS[8]
    rng = random.Random(5)
    name = deployment_pod_name(dep, rng)
    assert re.fullmatch(r"web-[0-9a-f]{10}-[bcdfghjklmnpqrstvwxz2456789]{5}", name)
    assert pod_template_hash(dep.template) == pod_template_hash(dep.template)
    assert pod_template_hash(dep.template) != pod_template_hash(
        replace(dep.template, labels={"app": "web", "v": "2"})
    )
    p = pod_for_deployment(dep, "node3", rng, taken={name})
    assert p.name != name and p.owner == "web" and p.node_name == "node3"
    assert p.labels == {"app": "web", "pod-template-hash": pod_template_hash(dep.template)}
    assert p.phase == PodPhase.PENDING and p.containers == (HTTP,)
    p.validate()
    pinned = pod_for_deployment(OBJECTS[9], "node1", rng)
    assert pinned.node_name == "node2"
