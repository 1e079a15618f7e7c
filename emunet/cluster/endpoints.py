"""What kube-proxy is given: the endpoints controller's output and its view of a Service.

:func:`endpoints_for` is the endpoints controller (EndpointSlices): the Running,
ready pods with a podIP whose labels match a Service's selector, one endpoint
per (pod, service port) with a named targetPort resolved from the pod's
container ports. :func:`to_kubeproxy` turns a registry Service into the
:class:`emunet.cluster.kubeproxy.Service` the rule builder takes.
"""

from __future__ import annotations

from collections.abc import Iterable

from emunet.cluster import kubeproxy
from emunet.cluster.kubeproxy import ServiceType
from emunet.cluster.registry import Pod, PodPhase, Service
from emunet.cluster.schema import selector_matches
from emunet.errors import ConfigError

__all__ = ["endpoints_for", "endpoints_map", "to_kubeproxy"]


def endpoints_for(service: Service, pods: Iterable[Pod]) -> list[kubeproxy.Endpoint]:
    """What the endpoints controller would publish for ``service``.

    One :class:`kubeproxy.Endpoint` per (ready pod, service port), with the
    port resolved (a named targetPort is looked up in the pod's container ports
    with the same protocol; a pod without it is skipped for that port, as
    Kubernetes does). Sorted by ``(port_name, ip, port)``.
    """
    out: list[kubeproxy.Endpoint] = []
    for pod in pods:
        if (
            pod.namespace != service.namespace
            or pod.phase != PodPhase.RUNNING
            or not pod.ready
            or pod.pod_ip is None
            or not selector_matches(service.selector, pod.labels)
        ):
            continue
        for p in service.ports:
            target = p.effective_target
            port = target if isinstance(target, int) else pod.container_port(target, p.protocol)
            if port is None:
                continue
            out.append(kubeproxy.Endpoint(pod.pod_ip, pod.node_name, port, True, p.name))
    out.sort(key=lambda e: (e.port_name, int(e.ip), e.port or 0))
    return out


def endpoints_map(
    services: Iterable[Service], pods: Iterable[Pod]
) -> dict[tuple[str, str], list[kubeproxy.Endpoint]]:
    """Endpoints of every Service keyed by ``(namespace, name)``, as kube-proxy takes them."""
    pod_list = list(pods)
    return {(s.namespace, s.name): endpoints_for(s, pod_list) for s in services}


def to_kubeproxy(service: Service) -> kubeproxy.Service:
    """The data plane's view of a Service. Endpoints always carry their port
    (see :func:`endpoints_for`), so a named targetPort becomes ``port`` here."""
    if service.cluster_ip is None:
        raise ConfigError(f"service {service.namespace}/{service.name}: spec.clusterIP: not set")
    ports = tuple(
        kubeproxy.ServicePort(
            p.name,
            p.protocol,
            p.port,
            p.effective_target if isinstance(p.effective_target, int) else p.port,
            p.node_port if service.type != ServiceType.CLUSTER_IP else 0,
        )
        for p in service.ports
    )
    return kubeproxy.Service(
        service.namespace,
        service.name,
        service.cluster_ip,
        ports,
        service.type,
        service.session_affinity,
        service.affinity_timeout,
        service.external_traffic_policy,
        service.external_ip,
    )
