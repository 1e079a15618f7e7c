"""The cluster registry's objects, pure: Nodes, Pods, Services, Deployments.

What etcd holds under ``/registry`` (docs/ARCHITECTURE.md) as Kubernetes-like
JSON with Kubernetes field names. No I/O: the etcd adapter is
``emunet.nodes.registry``.

API summary
-----------
Objects (frozen dataclasses; ``to_dict()`` / ``to_json()`` and
``from_dict()`` / ``from_json()`` in Kubernetes field names; ``validate()``
raises :class:`~emunet.errors.ConfigError` whose message starts with the field
path, e.g. ``spec.ports[0].port: must be 1-65535, got 70000``):

* :class:`NodeInfo` (``name``, ``internal_ip``, ``pod_cidr``,
  ``control_endpoint`` "host:port", ``ready`` which is *not* stored: the
  adapter sets it from the node's lease key).
* :class:`ExternalHostInfo`: a machine outside the cluster (emunet's own kind).
* :class:`Pod` (``name``, ``namespace``, ``labels``, ``uid``, ``node_name``,
  ``containers`` of :class:`Container` (``name``, ``app``, ``args``,
  ``ports`` of :class:`ContainerPort`), ``phase`` (:class:`PodPhase`),
  ``pod_ip``, ``host_ip``, ``owner`` (the Deployment's name, or "")).
* :class:`Service` (``type``, ``selector``, ``ports`` of
  :class:`ServicePortSpec` whose ``target_port`` is an int or a port name,
  ``cluster_ip`` (None until allocated), ``session_affinity`` +
  ``affinity_timeout``, ``external_traffic_policy``, ``load_balancer_ip``).
* :class:`Deployment` (``replicas``, ``selector``, ``template``:
  :class:`PodTemplate`).

Pods, Containers, PodTemplates and Deployments are defined in
:mod:`emunet.cluster.workloads`; every object class can be imported from here.

Elsewhere: the etcd keys in :mod:`emunet.cluster.keys`; the field walker and
the validation rules in :mod:`emunet.cluster.schema`; ClusterIP and NodePort
allocation in :mod:`emunet.cluster.allocators`; endpoints and kube-proxy's
view of a Service in :mod:`emunet.cluster.endpoints`; scheduling and the
Deployment controller's pods in :mod:`emunet.cluster.controllers`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import AddressValueError, IPv4Address, IPv4Network, NetmaskValueError
from typing import Any

from emunet.cluster import keys
from emunet.cluster.allocators import NODE_PORT_RANGE
from emunet.cluster.keys import Kind
from emunet.cluster.kubeproxy import (
    DEFAULT_AFFINITY_TIMEOUT,
    MAX_AFFINITY_TIMEOUT,
    ServiceType,
    SessionAffinity,
    TrafficPolicy,
)
from emunet.cluster.schema import (
    FieldReader,
    check_dns1035,
    check_dns_label,
    check_labels,
    check_port,
    check_port_name,
    check_protocol,
    check_subdomain,
    dump_json,
    enum_value,
    host_port,
    load_json,
    object_meta,
    require_ipv4,
)
from emunet.cluster.workloads import (
    DEFAULT_NAMESPACE,
    MAX_REPLICAS,
    Container,
    ContainerPort,
    Deployment,
    Pod,
    PodPhase,
    PodTemplate,
    netns_name,
)
from emunet.errors import ConfigError

__all__ = [
    "DEFAULT_NAMESPACE",
    "MAX_REPLICAS",
    "NODE_LEASE_TTL",
    "Container",
    "ContainerPort",
    "Deployment",
    "ExternalHostInfo",
    "NodeInfo",
    "Pod",
    "PodPhase",
    "PodTemplate",
    "Service",
    "ServicePortSpec",
    "ServiceType",
    "SessionAffinity",
    "TrafficPolicy",
    "netns_name",
]

NODE_LEASE_TTL = 10
"""Seconds of the etcd lease under a node's ``kube-node-lease`` key."""


# --------------------------------------------------------------------------
# Node


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """``/registry/minions/<name>``; ``ready`` comes from the node lease key."""

    name: str
    internal_ip: IPv4Address
    pod_cidr: IPv4Network | None = None
    control_endpoint: str = ""
    ready: bool = False

    @property
    def control_address(self) -> tuple[str, int]:
        """``(host, port)`` of the agent's control API."""
        return host_port(self.control_endpoint, f"node {self.name}: status.controlEndpoint")

    def validate(self) -> None:
        check_subdomain("metadata.name", self.name)
        if self.control_endpoint:
            self.control_address  # noqa: B018 (raises when malformed)

    def to_dict(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "addresses": [
                {"type": "InternalIP", "address": str(self.internal_ip)},
                {"type": "Hostname", "address": self.name},
            ],
            "controlEndpoint": self.control_endpoint,
        }
        spec: dict[str, Any] = {}
        if self.pod_cidr is not None:
            spec["podCIDR"] = str(self.pod_cidr)
            spec["podCIDRs"] = [str(self.pod_cidr)]
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name},
            "spec": spec,
            "status": status,
        }

    def to_json(self) -> str:
        return dump_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, warnings: list[str] | None = None) -> NodeInfo:
        r = FieldReader(data, "", warnings)
        r.ignore("apiVersion", "kind")
        meta = r.obj("metadata")
        name = meta.text("name")
        spec = r.obj("spec")
        cidr_text = spec.text("podCIDR", "")
        spec.ignore("podCIDRs")
        try:
            cidr = IPv4Network(cidr_text) if cidr_text else None
        except (AddressValueError, NetmaskValueError, ValueError):
            raise ConfigError(f"spec.podCIDR: {cidr_text!r} is not an IPv4 CIDR") from None
        status = r.obj("status")
        internal: IPv4Address | None = None
        for addr in status.objs("addresses"):
            if addr.text("type", "") == "InternalIP":
                internal = addr.ipv4("address")
            addr.ignore("address")
        if internal is None:
            raise ConfigError("status.addresses: no InternalIP address")
        node = cls(name, internal, cidr, status.text("controlEndpoint", ""))
        node.validate()
        return node

    @classmethod
    def from_json(cls, text: str | bytes) -> NodeInfo:
        return cls.from_dict(load_json(text, "node"))


@dataclass(frozen=True, slots=True)
class ExternalHostInfo:
    """``/registry/emunet/hosts/<name>``: a machine outside the cluster run by the
    internet process (emunet's own kind; Kubernetes has no such object): the
    gateway, a host on the node network, or a host on the internet."""

    name: str
    ip: IPv4Address
    segment: str  # "nodes" or "internet"
    role: str = "host"  # "gateway" or "host"
    apps: tuple[str, ...] = ()
    control_endpoint: str = ""
    public_ip: IPv4Address | None = None  # the gateway's address on the internet

    @property
    def control_address(self) -> tuple[str, int]:
        return host_port(self.control_endpoint, f"host {self.name}: controlEndpoint")

    def validate(self) -> None:
        check_subdomain("metadata.name", self.name)
        if self.segment not in ("nodes", "internet"):
            raise ConfigError(f"spec.segment: {self.segment!r} (nodes or internet)")
        if self.control_endpoint:
            self.control_address  # noqa: B018 (raises when malformed)

    def to_dict(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "ip": str(self.ip),
            "segment": self.segment,
            "role": self.role,
            "apps": list(self.apps),
        }
        if self.public_ip is not None:
            spec["publicIP"] = str(self.public_ip)
        return {
            "apiVersion": "emunet/v1",
            "kind": "ExternalHost",
            "metadata": {"name": self.name},
            "spec": spec,
            "status": {"controlEndpoint": self.control_endpoint},
        }

    def to_json(self) -> str:
        return dump_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, warnings: list[str] | None = None) -> ExternalHostInfo:
        r = FieldReader(data, "", warnings)
        r.ignore("apiVersion", "kind")
        meta = r.obj("metadata")
        spec = r.obj("spec")
        status = r.obj("status")
        apps = spec.raw("apps") if spec.has("apps") else []
        if not isinstance(apps, list) or not all(isinstance(a, str) for a in apps):
            raise ConfigError("spec.apps: must be a list of strings")
        host = cls(
            name=meta.text("name"),
            ip=require_ipv4(spec.ipv4("ip"), "spec.ip"),
            segment=spec.text("segment"),
            role=spec.text("role", "host"),
            apps=tuple(apps),
            control_endpoint=status.text("controlEndpoint", ""),
            public_ip=spec.ipv4("publicIP"),
        )
        host.validate()
        return host

    @classmethod
    def from_json(cls, text: str | bytes) -> ExternalHostInfo:
        return cls.from_dict(load_json(text, "external host"))


# --------------------------------------------------------------------------
# Service


@dataclass(frozen=True, slots=True)
class ServicePortSpec:
    """One entry of ``spec.ports``: ``target_port`` is a number or a container
    port name; ``node_port`` 0 means none (or: to be allocated)."""

    port: int
    target_port: int | str = 0
    protocol: str = "TCP"
    name: str = ""
    node_port: int = 0

    @property
    def effective_target(self) -> int | str:
        """targetPort defaults to port."""
        return self.target_port or self.port

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.name:
            out["name"] = self.name
        out["protocol"] = self.protocol
        out["port"] = self.port
        out["targetPort"] = self.effective_target
        if self.node_port:
            out["nodePort"] = self.node_port
        return out


@dataclass(frozen=True, slots=True)
class Service:
    """``/registry/services/specs/<namespace>/<name>``."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    type: ServiceType = ServiceType.CLUSTER_IP
    selector: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[ServicePortSpec, ...] = ()
    cluster_ip: IPv4Address | None = None
    session_affinity: SessionAffinity = SessionAffinity.NONE
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    external_traffic_policy: TrafficPolicy = TrafficPolicy.CLUSTER
    load_balancer_ip: IPv4Address | None = None  # spec.loadBalancerIP: a request
    labels: Mapping[str, str] = field(default_factory=dict)
    uid: str = ""
    created: str = ""
    ingress_ip: IPv4Address | None = None  # status.loadBalancer.ingress[0].ip: the cloud's

    @property
    def key(self) -> str:
        return keys.key(Kind.SERVICE, self.name, self.namespace)

    @property
    def external_ip(self) -> IPv4Address | None:
        """The LoadBalancer IP kube-proxy programs: ``status.loadBalancer.ingress``,
        what the cloud assigned (a request it refused is programmed nowhere)."""
        if self.type != ServiceType.LOAD_BALANCER:
            return None
        return self.ingress_ip

    @property
    def node_ports(self) -> list[int]:
        return [p.node_port for p in self.ports if p.node_port]

    def validate(self, service_cidr: IPv4Network | None = None) -> None:
        """The API server's checks; ``service_cidr`` also checks spec.clusterIP."""
        check_dns1035("metadata.name", self.name)
        check_dns_label("metadata.namespace", self.namespace)
        check_labels("metadata.labels", self.labels)
        check_labels("spec.selector", self.selector)
        if not self.ports:
            raise ConfigError("spec.ports: at least one port is required")
        names: set[str] = set()
        seen: set[tuple[int, str]] = set()
        seen_np: set[tuple[int, str]] = set()
        for i, p in enumerate(self.ports):
            path = f"spec.ports[{i}]"
            if p.name:
                check_port_name(f"{path}.name", p.name)
                if p.name in names:
                    raise ConfigError(f"{path}.name: duplicate {p.name!r}")
                names.add(p.name)
            elif len(self.ports) > 1:
                raise ConfigError(f"{path}.name: required when a Service has several ports")
            check_protocol(f"{path}.protocol", p.protocol)
            check_port(f"{path}.port", p.port)
            if (p.port, p.protocol) in seen:
                raise ConfigError(f"{path}: duplicate {p.port}/{p.protocol}")
            seen.add((p.port, p.protocol))
            target = p.effective_target
            if isinstance(target, int):
                check_port(f"{path}.targetPort", target)
            else:
                check_port_name(f"{path}.targetPort", target)
            if p.node_port:
                if self.type == ServiceType.CLUSTER_IP:
                    raise ConfigError(
                        f"{path}.nodePort: may not be used when `type` is 'ClusterIP'"
                    )
                lo, hi = NODE_PORT_RANGE
                if not lo <= p.node_port <= hi:
                    raise ConfigError(f"{path}.nodePort: must be {lo}-{hi}, got {p.node_port}")
                if (p.node_port, p.protocol) in seen_np:
                    raise ConfigError(f"{path}.nodePort: duplicate {p.node_port}")
                seen_np.add((p.node_port, p.protocol))
        if self.session_affinity == SessionAffinity.CLIENT_IP and not (
            0 < self.affinity_timeout <= MAX_AFFINITY_TIMEOUT
        ):
            raise ConfigError(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds: must be "
                f"1-{MAX_AFFINITY_TIMEOUT}, got {self.affinity_timeout}"
            )
        if (
            self.external_traffic_policy == TrafficPolicy.LOCAL
            and self.type == ServiceType.CLUSTER_IP
        ):
            raise ConfigError(
                "spec.externalTrafficPolicy: may only be set when `type` is 'NodePort' or "
                "'LoadBalancer'"
            )
        if self.load_balancer_ip is not None and self.type != ServiceType.LOAD_BALANCER:
            raise ConfigError("spec.loadBalancerIP: may only be set when `type` is 'LoadBalancer'")
        if (
            service_cidr is not None
            and self.cluster_ip is not None
            and self.cluster_ip not in service_cidr
        ):
            raise ConfigError(
                f"spec.clusterIP: {self.cluster_ip} is not in the service CIDR {service_cidr}"
            )

    def to_dict(self) -> dict[str, Any]:
        meta = object_meta(self.name, self.namespace, self.uid, self.created, self.labels)
        spec: dict[str, Any] = {"type": self.type.value}
        if self.selector:
            spec["selector"] = dict(self.selector)
        spec["ports"] = [p.to_dict() for p in self.ports]
        if self.cluster_ip is not None:
            spec["clusterIP"] = str(self.cluster_ip)
            spec["clusterIPs"] = [str(self.cluster_ip)]
        spec["sessionAffinity"] = self.session_affinity.value
        if self.session_affinity == SessionAffinity.CLIENT_IP:
            spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": self.affinity_timeout}}
        if self.type != ServiceType.CLUSTER_IP:
            spec["externalTrafficPolicy"] = self.external_traffic_policy.value
        status: dict[str, Any] = {"loadBalancer": {}}
        if self.load_balancer_ip is not None:
            spec["loadBalancerIP"] = str(self.load_balancer_ip)
        if self.ingress_ip is not None:
            status["loadBalancer"] = {"ingress": [{"ip": str(self.ingress_ip)}]}
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": spec,
            "status": status,
        }

    def to_json(self) -> str:
        return dump_json(self.to_dict())

    @classmethod
    def read_spec(cls, meta: FieldReader, spec: FieldReader, status: FieldReader) -> Service:
        """Build from the readers of a stored object or a manifest (shared rules)."""
        ports = []
        for pr in spec.objs("ports"):
            target = pr.int_or_str("targetPort")
            ports.append(
                ServicePortSpec(
                    port=pr.integer("port"),
                    target_port=target if target is not None else 0,
                    protocol=pr.text("protocol", "TCP"),
                    name=pr.text("name", ""),
                    node_port=pr.integer("nodePort", 0),
                )
            )
            pr.finish()
        spec.ignore("clusterIPs")
        cluster_ip = spec.ipv4("clusterIP")
        affinity = enum_value(
            "spec.sessionAffinity", SessionAffinity, spec.text("sessionAffinity", "None")
        )
        timeout = DEFAULT_AFFINITY_TIMEOUT
        if spec.has("sessionAffinityConfig"):
            sac = spec.obj("sessionAffinityConfig")
            client_ip = sac.obj("clientIP")
            timeout = client_ip.integer("timeoutSeconds", DEFAULT_AFFINITY_TIMEOUT)
            client_ip.finish()
            sac.finish()
        lb_ip = spec.ipv4("loadBalancerIP")
        ingress_ip: IPv4Address | None = None
        if status.has("loadBalancer"):
            lb = status.obj("loadBalancer")
            for ing in lb.objs("ingress"):
                ingress_ip = ingress_ip or ing.ipv4("ip")
                ing.finish()
            lb.finish()
        svc = cls(
            name=meta.text("name"),
            namespace=meta.text("namespace", DEFAULT_NAMESPACE),
            type=enum_value("spec.type", ServiceType, spec.text("type", "ClusterIP")),
            selector=spec.str_map("selector"),
            ports=tuple(ports),
            cluster_ip=cluster_ip,
            session_affinity=affinity,
            affinity_timeout=timeout,
            external_traffic_policy=enum_value(
                "spec.externalTrafficPolicy",
                TrafficPolicy,
                spec.text("externalTrafficPolicy", "Cluster"),
            ),
            load_balancer_ip=lb_ip,
            ingress_ip=ingress_ip,
            labels=meta.str_map("labels"),
            uid=meta.text("uid", ""),
            created=meta.text("creationTimestamp", ""),
        )
        svc.validate()
        return svc

    @classmethod
    def from_dict(cls, data: Any, warnings: list[str] | None = None) -> Service:
        r = FieldReader(data, "", warnings)
        r.ignore("apiVersion", "kind")
        return cls.read_spec(r.obj("metadata"), r.obj("spec"), r.obj("status"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Service:
        return cls.from_dict(load_json(text, "service"))
