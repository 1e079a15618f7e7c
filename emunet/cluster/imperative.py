"""The objects ``emunet run`` and ``emunet expose`` write, as pure functions.

kubectl's imperative commands build an object from a few options: ``run`` a
Deployment of one app container, ``expose`` a Service selecting a Deployment's
(or a pod's) pods. The choices they make (an app's ports, the default target
port, the selector) live here; the commands only read the registry and write
what these return. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address

from emunet.cluster.registry import (
    Container,
    ContainerPort,
    Deployment,
    Pod,
    PodTemplate,
    Service,
    ServicePortSpec,
    ServiceType,
    SessionAffinity,
    TrafficPolicy,
)
from emunet.errors import ConfigError

__all__ = [
    "APP_PORTS",
    "app_container",
    "default_target_port",
    "expose_service",
    "parse_target",
    "pod_selector",
    "run_deployment",
]

APP_PORTS: dict[str, tuple[tuple[str, int, str], ...]] = {
    # app -> (port name, default port, protocol) of its container ports
    "http": (("http", 80, "TCP"),),
    "echo": (("echo-tcp", 7, "TCP"), ("echo-udp", 7, "UDP")),
    "sink": (("sink", 5001, "TCP"),),
}


def app_container(name: str, app_name: str, port: int | None) -> Container:
    """The container of ``run --app APP [--port N]``: a built-in app's named ports
    (every one on ``port`` when given, else on the app's default); another app one
    TCP port named ``app``, or none."""
    specs = APP_PORTS.get(app_name)
    if specs is None:
        ports = (ContainerPort(port, "TCP", "app"),) if port else ()
        args = {"port": port} if port else {}
        return Container(name, app_name, args, ports)
    chosen = port or specs[0][1]
    return Container(
        name,
        app_name,
        {"port": chosen},
        tuple(ContainerPort(chosen, proto, pname) for pname, _default, proto in specs),
    )


def run_deployment(
    name: str, app_name: str, replicas: int, namespace: str, node: str | None, port: int | None
) -> Deployment:
    """The Deployment of ``run NAME``: labelled and selected by ``app=NAME``."""
    labels = {"app": name}
    return Deployment(
        name=name,
        namespace=namespace,
        replicas=replicas,
        selector=labels,
        template=PodTemplate(labels, (app_container(name, app_name, port),), node or ""),
        labels=labels,
    )


def parse_target(text: str | None) -> int | str:
    """``--target-port``: a number, a container port's name, or 0 (not given)."""
    if text is None or text == "":
        return 0
    return int(text) if text.isdigit() else text


def pod_selector(pod: Pod) -> dict[str, str]:
    """The selector of a Service exposing a bare pod: its labels but the
    Deployment's ``pod-template-hash``. Raises :class:`ConfigError` if none is left."""
    selector = {k: v for k, v in pod.labels.items() if k != "pod-template-hash"}
    if not selector:
        raise ConfigError(f'pod "{pod.name}" has no labels to select it by')
    return selector


def default_target_port(containers: Sequence[Container], protocol: str, port: int) -> int:
    """The target port when ``--target-port`` is not given: the one container port
    of that protocol, else (none, or several numbers) the service port."""
    candidates = {
        p.container_port for c in containers for p in c.ports if p.protocol == protocol.upper()
    }
    return candidates.pop() if len(candidates) == 1 else port


def expose_service(
    *,
    name: str,
    namespace: str,
    selector: Mapping[str, str],
    containers: Sequence[Container],
    labels: Mapping[str, str],
    port: int,
    target_port: str | None,
    protocol: str,
    type_: ServiceType,
    session_affinity: SessionAffinity,
    affinity_timeout: int,
    external_traffic_policy: TrafficPolicy,
    node_port: int,
    load_balancer_ip: IPv4Address | None,
) -> Service:
    """The Service of ``expose``: one port, selecting ``selector``'s pods (whose
    ``containers`` give the default target port)."""
    target = parse_target(target_port)
    if target == 0:
        target = default_target_port(containers, protocol, port)
    return Service(
        name=name,
        namespace=namespace,
        type=type_,
        selector=dict(selector),
        ports=(ServicePortSpec(port, target, protocol.upper(), "", node_port),),
        session_affinity=session_affinity,
        affinity_timeout=affinity_timeout,
        external_traffic_policy=external_traffic_policy,
        load_balancer_ip=load_balancer_ip,
        labels=dict(labels),
    )
