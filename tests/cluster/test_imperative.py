"""The objects ``run`` and ``expose`` build (pure)."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

import pytest

from emunet.cluster.imperative import (
    app_container,
    default_target_port,
    expose_service,
    parse_target,
    pod_selector,
    run_deployment,
)
from emunet.cluster.registry import (
    Container,
    ContainerPort,
    Pod,
    PodTemplate,
    ServicePortSpec,
    ServiceType,
    SessionAffinity,
    TrafficPolicy,
)
from emunet.errors import ConfigError


@pytest.mark.parametrize(
    ("app", "port", "args", "ports"),
    [
        ("http", None, {"port": 80}, [(80, "TCP", "http")]),
        ("http", 8080, {"port": 8080}, [(8080, "TCP", "http")]),
        ("echo", None, {"port": 7}, [(7, "TCP", "echo-tcp"), (7, "UDP", "echo-udp")]),
        ("echo", 9, {"port": 9}, [(9, "TCP", "echo-tcp"), (9, "UDP", "echo-udp")]),
        ("sink", None, {"port": 5001}, [(5001, "TCP", "sink")]),
        ("none", None, {}, []),
        ("mod:App", 1234, {"port": 1234}, [(1234, "TCP", "app")]),
    ],
)
def test_app_container(
    app: str, port: int | None, args: dict[str, Any], ports: list[tuple[int, str, str]]
) -> None:
    c = app_container("web", app, port)
    assert (c.name, c.app, dict(c.args)) == ("web", app, args)
    assert [(p.container_port, p.protocol, p.name) for p in c.ports] == ports


def test_run_deployment() -> None:
    dep = run_deployment("web", "echo", 3, "prod", None, None)
    assert (dep.name, dep.namespace, dep.replicas) == ("web", "prod", 3)
    assert dep.selector == dep.labels == dep.template.labels == {"app": "web"}
    assert dep.template == PodTemplate({"app": "web"}, (app_container("web", "echo", None),), "")
    assert run_deployment("web", "http", 1, "default", "node2", 81).template.node_name == "node2"
    dep.validate()


@pytest.mark.parametrize(
    ("text", "target"),
    [(None, 0), ("", 0), ("8080", 8080), ("http", "http"), ("-1", "-1"), ("0", 0)],
)
def test_parse_target(text: str | None, target: int | str) -> None:
    assert parse_target(text) == target


def test_pod_selector_drops_the_template_hash() -> None:
    pod = Pod("p", labels={"app": "web", "pod-template-hash": "abc"})
    assert pod_selector(pod) == {"app": "web"}
    with pytest.raises(ConfigError, match='pod "p" has no labels to select it by'):
        pod_selector(Pod("p", labels={"pod-template-hash": "abc"}))


ECHO = (Container("e", "echo", {}, (ContainerPort(7, "TCP"), ContainerPort(7, "UDP"))),)
TWO_TCP = (Container("a", "x", {}, (ContainerPort(81), ContainerPort(82))),)


@pytest.mark.parametrize(
    ("containers", "protocol", "port", "target"),
    [
        (ECHO, "TCP", 8080, 7),
        (ECHO, "udp", 8080, 7),  # the protocol option is case-insensitive
        ((), "TCP", 8080, 8080),  # no container port: the service port
        (TWO_TCP, "TCP", 8080, 8080),  # several: the service port
        (TWO_TCP, "UDP", 8080, 8080),  # none of that protocol
        ((*TWO_TCP, Container("b", "x", {}, (ContainerPort(81),))), "TCP", 9, 9),
        ((Container("a", "x", {}, (ContainerPort(81),)),) * 2, "TCP", 9, 81),  # same number
    ],
)
def test_default_target_port(
    containers: tuple[Container, ...], protocol: str, port: int, target: int
) -> None:
    assert default_target_port(containers, protocol, port) == target


def _expose(**changes: Any) -> Any:
    options: dict[str, Any] = {
        "name": "web",
        "namespace": "default",
        "selector": {"app": "web"},
        "containers": ECHO,
        "labels": {"app": "web"},
        "port": 8080,
        "target_port": None,
        "protocol": "udp",
        "type_": ServiceType.NODE_PORT,
        "session_affinity": SessionAffinity.CLIENT_IP,
        "affinity_timeout": 60,
        "external_traffic_policy": TrafficPolicy.LOCAL,
        "node_port": 30007,
        "load_balancer_ip": None,
    }
    return expose_service(**{**options, **changes})


def test_expose_service() -> None:
    svc = _expose()
    assert svc.ports == (ServicePortSpec(8080, 7, "UDP", "", 30007),)
    assert (svc.name, svc.namespace, svc.type) == ("web", "default", ServiceType.NODE_PORT)
    assert svc.selector == svc.labels == {"app": "web"}
    assert (svc.session_affinity, svc.affinity_timeout) == (SessionAffinity.CLIENT_IP, 60)
    assert svc.external_traffic_policy == TrafficPolicy.LOCAL
    assert _expose(target_port="echo-udp").ports[0].target_port == "echo-udp"
    assert _expose(target_port="9").ports[0].target_port == 9
    lb = _expose(type_=ServiceType.LOAD_BALANCER, load_balancer_ip=IPv4Address("203.0.113.9"))
    assert lb.load_balancer_ip == IPv4Address("203.0.113.9")
