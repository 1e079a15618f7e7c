"""Workloads in the registry, pure: Pods and the Deployments that own them.

``/registry/pods/<namespace>/<name>`` and ``/registry/deployments/<namespace>/<name>``
(:mod:`emunet.cluster.keys`) as Kubernetes-like JSON: :class:`Pod` (of
:class:`Container` with :class:`ContainerPort`), :class:`Deployment` (with its
:class:`PodTemplate`). Same conventions as the other objects
(:mod:`emunet.cluster.registry`, which re-exports these): ``to_dict`` /
``to_json``, ``from_dict`` / ``from_json``, ``validate`` raising
:class:`~emunet.errors.ConfigError` whose message starts with the field path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from ipaddress import IPv4Address
from typing import Any

from emunet.cluster import keys
from emunet.cluster.keys import Kind
from emunet.cluster.schema import (
    FieldReader,
    check_dns_label,
    check_labels,
    check_port,
    check_port_name,
    check_protocol,
    check_subdomain,
    dump_json,
    enum_value,
    load_json,
    object_meta,
    selector_matches,
)
from emunet.errors import ConfigError

__all__ = [
    "DEFAULT_NAMESPACE",
    "MAX_REPLICAS",
    "Container",
    "ContainerPort",
    "Deployment",
    "Pod",
    "PodPhase",
    "PodTemplate",
    "netns_name",
]

DEFAULT_NAMESPACE = "default"
MAX_REPLICAS = 1000
"""A Deployment's replicas at most (a bound on one request, not on a fabric)."""


def netns_name(namespace: str, name: str) -> str:
    """The node's name for a pod's network namespace: ``name`` in "default", else
    ``namespace/name`` (what the agent, the CLI and pod-shell all use)."""
    return name if namespace == DEFAULT_NAMESPACE else f"{namespace}/{name}"


class PodPhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


# --------------------------------------------------------------------------
# Pod


@dataclass(frozen=True, slots=True)
class ContainerPort:
    container_port: int
    protocol: str = "TCP"
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.name:
            out["name"] = self.name
        out["containerPort"] = self.container_port
        out["protocol"] = self.protocol
        return out

    @classmethod
    def read(cls, r: FieldReader) -> ContainerPort:
        port = cls(r.integer("containerPort"), r.text("protocol", "TCP"), r.text("name", ""))
        port.validate(r.path)
        return port

    def validate(self, path: str) -> None:
        check_port(f"{path}.containerPort", self.container_port)
        check_protocol(f"{path}.protocol", self.protocol)
        if self.name:
            check_port_name(f"{path}.name", self.name)


@dataclass(frozen=True, slots=True)
class Container:
    """One emulated process of a pod: ``app`` names a built-in app of the agent
    (``http``, ``echo``, ``sink``...), ``args`` its keyword arguments."""

    name: str
    app: str
    args: Mapping[str, Any] = field(default_factory=dict)
    ports: tuple[ContainerPort, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "app": self.app}
        if self.args:
            out["args"] = dict(self.args)
        if self.ports:
            out["ports"] = [p.to_dict() for p in self.ports]
        return out

    @classmethod
    def read(cls, r: FieldReader) -> Container:
        ports = tuple(ContainerPort.read(p) for p in r.objs("ports"))
        return cls(r.text("name"), r.text("app"), r.any_map("args"), ports)

    def validate(self, path: str) -> None:
        check_dns_label(f"{path}.name", self.name)
        if not self.app:
            raise ConfigError(f"{path}.app: required")
        seen: set[str] = set()
        seen_ports: set[tuple[int, str]] = set()
        for i, port in enumerate(self.ports):
            port.validate(f"{path}.ports[{i}]")
            if port.name:
                if port.name in seen:
                    raise ConfigError(f"{path}.ports[{i}].name: duplicate {port.name!r}")
                seen.add(port.name)
            key = (port.container_port, port.protocol)
            if key in seen_ports:
                raise ConfigError(
                    f"{path}.ports[{i}]: duplicate {port.container_port}/{port.protocol}"
                )
            seen_ports.add(key)


def _check_containers(path: str, containers: Sequence[Container]) -> None:
    if not containers:
        raise ConfigError(f"{path}: at least one container is required")
    names: set[str] = set()
    for i, c in enumerate(containers):
        c.validate(f"{path}[{i}]")
        if c.name in names:
            raise ConfigError(f"{path}[{i}].name: duplicate {c.name!r}")
        names.add(c.name)


@dataclass(frozen=True, slots=True)
class Pod:
    """``/registry/pods/<namespace>/<name>``."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    labels: Mapping[str, str] = field(default_factory=dict)
    uid: str = ""
    node_name: str = ""
    containers: tuple[Container, ...] = ()
    phase: PodPhase = PodPhase.PENDING
    pod_ip: IPv4Address | None = None
    host_ip: IPv4Address | None = None
    owner: str = ""  # name of the Deployment that owns this pod, "" if none
    message: str = ""  # status.message (why it failed...)
    created: str = ""  # metadata.creationTimestamp (RFC 3339), set by the writer
    reason: str = ""  # status.reason (Unschedulable, NodeNotReady, ...)
    ready: bool = True  # status.conditions Ready; False takes it out of the endpoints

    @property
    def key(self) -> str:
        return keys.key(Kind.POD, self.name, self.namespace)

    def with_status(
        self,
        phase: PodPhase,
        pod_ip: IPv4Address | None = None,
        host_ip: IPv4Address | None = None,
        message: str = "",
        *,
        reason: str = "",
        ready: bool = True,
    ) -> Pod:
        return replace(
            self,
            phase=phase,
            pod_ip=pod_ip,
            host_ip=host_ip,
            message=message,
            reason=reason,
            ready=ready,
        )

    @property
    def status_text(self) -> str:
        """What ``kubectl get pods`` shows in STATUS: the reason when there is one."""
        return self.reason or self.phase.value

    def container_port(self, name: str, protocol: str) -> int | None:
        """The number of a named container port (for a Service's named targetPort)."""
        for c in self.containers:
            for p in c.ports:
                if p.name == name and p.protocol == protocol:
                    return p.container_port
        return None

    def validate(self) -> None:
        check_subdomain("metadata.name", self.name)
        check_dns_label("metadata.namespace", self.namespace)
        check_labels("metadata.labels", self.labels)
        _check_containers("spec.containers", self.containers)
        if self.node_name:
            check_subdomain("spec.nodeName", self.node_name)

    def to_dict(self) -> dict[str, Any]:
        meta = object_meta(self.name, self.namespace, self.uid, self.created, self.labels)
        if self.owner:
            meta["ownerReferences"] = [
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": self.owner}
            ]
        spec: dict[str, Any] = {"containers": [c.to_dict() for c in self.containers]}
        if self.node_name:
            spec["nodeName"] = self.node_name
        status: dict[str, Any] = {"phase": self.phase.value}
        if self.reason:
            status["reason"] = self.reason
        if self.message:
            status["message"] = self.message
        if not self.ready:
            status["conditions"] = [
                {"type": "Ready", "status": "False", "reason": self.reason or "NotReady"}
            ]
        if self.host_ip is not None:
            status["hostIP"] = str(self.host_ip)
        if self.pod_ip is not None:
            status["podIP"] = str(self.pod_ip)
            status["podIPs"] = [{"ip": str(self.pod_ip)}]
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": spec,
            "status": status,
        }

    def to_json(self) -> str:
        return dump_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, warnings: list[str] | None = None) -> Pod:
        r = FieldReader(data, "", warnings)
        r.ignore("apiVersion", "kind")
        meta = r.obj("metadata")
        owner = ""
        for ref in meta.objs("ownerReferences"):
            if ref.text("kind", "") == "Deployment":
                owner = ref.text("name", "")
            ref.ignore("apiVersion", "name")
        spec = r.obj("spec")
        status = r.obj("status")
        status.ignore("podIPs")
        ready = True
        for cond in status.objs("conditions"):
            if cond.text("type", "") == "Ready":
                ready = cond.text("status", "True") != "False"
            cond.ignore("reason", "status", "lastTransitionTime", "message")
        pod = cls(
            name=meta.text("name"),
            namespace=meta.text("namespace", DEFAULT_NAMESPACE),
            labels=meta.str_map("labels"),
            uid=meta.text("uid", ""),
            node_name=spec.text("nodeName", ""),
            containers=tuple(Container.read(c) for c in spec.objs("containers")),
            phase=enum_value("status.phase", PodPhase, status.text("phase", "Pending")),
            pod_ip=status.ipv4("podIP"),
            host_ip=status.ipv4("hostIP"),
            owner=owner,
            message=status.text("message", ""),
            created=meta.text("creationTimestamp", ""),
            reason=status.text("reason", ""),
            ready=ready,
        )
        pod.validate()
        return pod

    @classmethod
    def from_json(cls, text: str | bytes) -> Pod:
        return cls.from_dict(load_json(text, "pod"))


# --------------------------------------------------------------------------
# Deployment


@dataclass(frozen=True, slots=True)
class PodTemplate:
    """``spec.template``; ``node_name`` pins every pod to one node (``run --node``)."""

    labels: Mapping[str, str] = field(default_factory=dict)
    containers: tuple[Container, ...] = ()
    node_name: str = ""

    def to_dict(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"containers": [c.to_dict() for c in self.containers]}
        if self.node_name:
            spec["nodeName"] = self.node_name
        return {"metadata": {"labels": dict(self.labels)}, "spec": spec}


@dataclass(frozen=True, slots=True)
class Deployment:
    """``/registry/deployments/<namespace>/<name>``."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    replicas: int = 1
    selector: Mapping[str, str] = field(default_factory=dict)
    template: PodTemplate = field(default_factory=PodTemplate)
    labels: Mapping[str, str] = field(default_factory=dict)
    uid: str = ""
    created: str = ""

    @property
    def key(self) -> str:
        return keys.key(Kind.DEPLOYMENT, self.name, self.namespace)

    def validate(self) -> None:
        check_dns_label("metadata.name", self.name)
        check_dns_label("metadata.namespace", self.namespace)
        check_labels("metadata.labels", self.labels)
        if not 0 <= self.replicas <= MAX_REPLICAS:
            raise ConfigError(f"spec.replicas: must be 0 to {MAX_REPLICAS}, got {self.replicas}")
        if not self.selector:
            raise ConfigError("spec.selector.matchLabels: required")
        check_labels("spec.selector.matchLabels", self.selector)
        check_labels("spec.template.metadata.labels", self.template.labels)
        if not selector_matches(self.selector, self.template.labels):
            raise ConfigError(
                "spec.template.metadata.labels: `selector` does not match template `labels`"
            )
        _check_containers("spec.template.spec.containers", self.template.containers)
        if self.template.node_name:
            check_subdomain("spec.template.spec.nodeName", self.template.node_name)

    def to_dict(self) -> dict[str, Any]:
        meta = object_meta(self.name, self.namespace, self.uid, self.created, self.labels)
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta,
            "spec": {
                "replicas": self.replicas,
                "selector": {"matchLabels": dict(self.selector)},
                "template": self.template.to_dict(),
            },
        }

    def to_json(self) -> str:
        return dump_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, warnings: list[str] | None = None) -> Deployment:
        r = FieldReader(data, "", warnings)
        r.ignore("apiVersion", "kind")
        meta = r.obj("metadata")
        spec = r.obj("spec")
        template = spec.obj("template")
        tspec = template.obj("spec")
        dep = cls(
            name=meta.text("name"),
            namespace=meta.text("namespace", DEFAULT_NAMESPACE),
            replicas=spec.integer("replicas", 1),
            selector=spec.obj("selector").str_map("matchLabels"),
            template=PodTemplate(
                template.obj("metadata").str_map("labels"),
                tuple(Container.read(c) for c in tspec.objs("containers")),
                tspec.text("nodeName", ""),
            ),
            labels=meta.str_map("labels"),
            uid=meta.text("uid", ""),
            created=meta.text("creationTimestamp", ""),
        )
        dep.validate()
        return dep

    @classmethod
    def from_json(cls, text: str | bytes) -> Deployment:
        return cls.from_dict(load_json(text, "deployment"))
