"""The cluster registry's objects, pure: Nodes, Pods, Services, Deployments.

What etcd holds under ``/registry`` (docs/ARCHITECTURE.md) as Kubernetes-like
JSON with Kubernetes field names, and the rules the API server and the
controllers would apply to it. No I/O: the etcd adapter is
``emunet.nodes.registry``; the clock and the random source are arguments.

API summary
-----------
Objects (frozen dataclasses; ``to_dict()`` / ``to_json()`` and
``from_dict()`` / ``from_json()`` in Kubernetes field names; ``validate()``
raises :class:`~emunet.errors.ConfigError` whose message starts with the field
path, e.g. ``spec.ports[0].port: must be 1-65535, got 70000``):

* :class:`NodeInfo` (``name``, ``internal_ip``, ``pod_cidr``,
  ``control_endpoint`` "host:port", ``ready`` which is *not* stored: the
  adapter sets it from the node's lease key).
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

Keys: :func:`node_key`, :func:`node_lease_key`, :func:`pod_key`,
:func:`service_key`, :func:`deployment_key`, :func:`cluster_ip_key`,
:func:`node_port_key` and the ``*_prefix`` functions; :func:`parse_key`.

Derivations: :func:`endpoints_for` (the endpoints controller: Running pods with
a podIP whose labels match the selector; named targetPorts resolved from the
pod's container ports), :func:`endpoints_map`, :func:`to_kubeproxy`.

Allocation and scheduling: :func:`allocate_cluster_ip`,
:func:`allocate_node_port`, :func:`schedule`, :func:`pod_template_hash`,
:func:`deployment_pod_name`, :func:`pod_for_deployment`.

:class:`FieldReader` is the typed JSON/YAML walker that builds field paths for
error messages and records unknown fields (used by ``manifests`` too).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from ipaddress import AddressValueError, IPv4Address, IPv4Network, NetmaskValueError
from typing import Any

from emunet.cluster import kubeproxy
from emunet.cluster.kubeproxy import (
    DEFAULT_AFFINITY_TIMEOUT,
    MAX_AFFINITY_TIMEOUT,
    ServiceType,
    SessionAffinity,
    TrafficPolicy,
)
from emunet.errors import ConfigError, EmunetError

__all__ = [
    "DEFAULT_NAMESPACE",
    "DEFAULT_SERVICE_CIDR",
    "NODE_LEASE_TTL",
    "NODE_PORT_RANGE",
    "PREFIX",
    "Container",
    "ContainerPort",
    "Deployment",
    "FieldReader",
    "NodeInfo",
    "Pod",
    "PodPhase",
    "PodTemplate",
    "RangeFull",
    "Service",
    "ServicePortSpec",
    "ServiceType",
    "SessionAffinity",
    "TrafficPolicy",
    "Unschedulable",
    "allocate_cluster_ip",
    "allocate_node_port",
    "cluster_ip_key",
    "deployment_key",
    "deployment_pod_name",
    "deployments_prefix",
    "endpoints_for",
    "endpoints_map",
    "node_key",
    "node_lease_key",
    "node_leases_prefix",
    "node_port_key",
    "nodes_prefix",
    "parse_key",
    "pod_for_deployment",
    "pod_key",
    "pod_template_hash",
    "pods_prefix",
    "schedule",
    "selector_matches",
    "service_key",
    "services_prefix",
    "to_kubeproxy",
]

PREFIX = "/registry"
DEFAULT_NAMESPACE = "default"


def netns_name(namespace: str, name: str) -> str:
    """The node's name for a pod's network namespace: ``name`` in "default", else
    ``namespace/name`` (what the agent, the CLI and pod-shell all use)."""
    return name if namespace == DEFAULT_NAMESPACE else f"{namespace}/{name}"


DEFAULT_SERVICE_CIDR = IPv4Network("10.96.0.0/12")
NODE_PORT_RANGE = (30000, 32767)
NODE_LEASE_TTL = 10
"""Seconds of the etcd lease under a node's ``kube-node-lease`` key."""
MAX_REPLICAS = 1000
"""A Deployment's replicas at most (a bound on one request, not on a fabric)."""

# .0 is the network, .1 the `kubernetes` Service, .10 kube-dns (kubeadm's choice)
_RESERVED_SERVICE_OFFSETS = (0, 1, 10)


class RangeFull(EmunetError):
    """No ClusterIP or NodePort left to allocate."""


class Unschedulable(EmunetError):
    """No Ready node can take a pod."""


class PodPhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


# --------------------------------------------------------------------------
# Keys


def _seg(value: str, what: str) -> str:
    if not value or "/" in value:
        raise ConfigError(f"{what}: {value!r} is not a valid name")
    return value


def nodes_prefix() -> str:
    return f"{PREFIX}/minions/"


def node_key(name: str) -> str:
    return f"{PREFIX}/minions/{_seg(name, 'node name')}"


def node_leases_prefix() -> str:
    return f"{PREFIX}/leases/kube-node-lease/"


def node_lease_key(name: str) -> str:
    return f"{PREFIX}/leases/kube-node-lease/{_seg(name, 'node name')}"


def pods_prefix(namespace: str | None = None) -> str:
    if namespace is None:
        return f"{PREFIX}/pods/"
    return f"{PREFIX}/pods/{_seg(namespace, 'namespace')}/"


def pod_key(namespace: str, name: str) -> str:
    return f"{pods_prefix(namespace)}{_seg(name, 'pod name')}"


def services_prefix(namespace: str | None = None) -> str:
    if namespace is None:
        return f"{PREFIX}/services/specs/"
    return f"{PREFIX}/services/specs/{_seg(namespace, 'namespace')}/"


def service_key(namespace: str, name: str) -> str:
    return f"{services_prefix(namespace)}{_seg(name, 'service name')}"


def deployments_prefix(namespace: str | None = None) -> str:
    if namespace is None:
        return f"{PREFIX}/deployments/"
    return f"{PREFIX}/deployments/{_seg(namespace, 'namespace')}/"


def deployment_key(namespace: str, name: str) -> str:
    return f"{deployments_prefix(namespace)}{_seg(name, 'deployment name')}"


def hosts_prefix() -> str:
    return f"{PREFIX}/emunet/hosts/"


def host_key(name: str) -> str:
    return f"{PREFIX}/emunet/hosts/{_seg(name, 'host name')}"


def controller_lease_key() -> str:
    """Held (on an etcd lease) by the running controller manager."""
    return f"{PREFIX}/leases/kube-system/kube-controller-manager"


def cluster_ip_key(ip: IPv4Address) -> str:
    return f"{PREFIX}/ranges/serviceips/{ip}"


def node_port_key(port: int) -> str:
    return f"{PREFIX}/ranges/servicenodeports/{port}"


_KEY_KINDS = (
    ("pods/", "pod", True),
    ("services/specs/", "service", True),
    ("deployments/", "deployment", True),
    ("minions/", "node", False),
    ("leases/kube-node-lease/", "nodelease", False),
    ("emunet/hosts/", "host", False),
)


def parse_key(key: str | bytes) -> tuple[str, str, str] | None:
    """``/registry/pods/default/web-1`` -> ``("pod", "default", "web-1")``;
    nodes and node leases have namespace ""; None for any other key."""
    text = key.decode(errors="replace") if isinstance(key, bytes) else key
    if not text.startswith(PREFIX + "/"):
        return None
    rest = text[len(PREFIX) + 1 :]
    for start, kind, namespaced in _KEY_KINDS:
        if not rest.startswith(start):
            continue
        parts = rest[len(start) :].split("/")
        if namespaced and len(parts) == 2 and all(parts):
            return (kind, parts[0], parts[1])
        if not namespaced and len(parts) == 1 and parts[0]:
            return (kind, "", parts[0])
        return None
    return None


# --------------------------------------------------------------------------
# Field-path reader


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class FieldReader:
    """Walks one JSON/YAML object, naming each field by its path.

    Every accessor marks the key as known; :meth:`finish` appends
    ``"<path>: unknown field, ignored"`` to ``warnings`` for the others (when
    ``warnings`` is None, unknown fields are ignored silently: the stored form).
    """

    __slots__ = ("_children", "_seen", "data", "path", "warnings")

    def __init__(self, data: Any, path: str = "", warnings: list[str] | None = None) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path or '(document)'}: must be an object, got {_type_name(data)}")
        self.data: dict[str, Any] = data
        self.path = path
        self.warnings = warnings
        self._seen: set[str] = set()
        self._children: list[FieldReader] = []

    def _child(self, data: Any, path: str) -> FieldReader:
        child = FieldReader(data, path, self.warnings)
        self._children.append(child)
        return child

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        self._seen.add(key)
        return self.data.get(key) is not None

    def raw(self, key: str) -> Any:
        self._seen.add(key)
        return self.data.get(key)

    def ignore(self, *keys: str) -> None:
        """Accept these keys silently (known, but emunet has no use for them)."""
        self._seen.update(keys)

    def text(self, key: str, default: str | None = None) -> str:
        value = self.raw(key)
        if value is None:
            if default is None:
                raise ConfigError(f"{self.sub(key)}: required")
            return default
        if not isinstance(value, str):
            raise ConfigError(f"{self.sub(key)}: must be a string, got {_type_name(value)}")
        return value

    def integer(self, key: str, default: int | None = None) -> int:
        value = self.raw(key)
        if value is None:
            if default is None:
                raise ConfigError(f"{self.sub(key)}: required")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self.sub(key)}: must be an integer, got {_type_name(value)}")
        return value

    def int_or_str(self, key: str) -> int | str | None:
        value = self.raw(key)
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        if isinstance(value, str):
            return int(value) if value.isdigit() else value
        raise ConfigError(
            f"{self.sub(key)}: must be an integer or a port name, got {_type_name(value)}"
        )

    def ipv4(self, key: str) -> IPv4Address | None:
        value = self.raw(key)
        if value in (None, "", "None"):
            return None
        try:
            return IPv4Address(value)
        except (AddressValueError, ValueError):
            raise ConfigError(f"{self.sub(key)}: {value!r} is not an IPv4 address") from None

    def obj(self, key: str) -> FieldReader:
        return self._child(self.raw(key), self.sub(key))

    def objs(self, key: str) -> list[FieldReader]:
        value = self.raw(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise ConfigError(f"{self.sub(key)}: must be a list, got {_type_name(value)}")
        return [self._child(item, f"{self.sub(key)}[{i}]") for i, item in enumerate(value)]

    def str_map(self, key: str) -> dict[str, str]:
        value = self.raw(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{self.sub(key)}: must be an object, got {_type_name(value)}")
        out: dict[str, str] = {}
        for k, v in value.items():
            if isinstance(v, bool) or not isinstance(v, str | int | float):
                raise ConfigError(f"{self.sub(key)}.{k}: must be a string, got {_type_name(v)}")
            out[str(k)] = v if isinstance(v, str) else str(v)
        return out

    def any_map(self, key: str) -> dict[str, Any]:
        value = self.raw(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{self.sub(key)}: must be an object, got {_type_name(value)}")
        return {str(k): v for k, v in value.items()}

    def finish(self, note: str = "unknown field, ignored") -> None:
        """Record a warning for every key never asked for, here and in the
        objects read through this reader (depth first, in document order)."""
        if self.warnings is None:
            return
        for key in self.data:
            if key not in self._seen:
                self.warnings.append(f"{self.sub(str(key))}: {note}")
        for child in self._children:
            child.finish(note)
        self._children.clear()


def _load(text: str | bytes, what: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what}: not valid JSON ({exc})") from None


def _dump(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


# --------------------------------------------------------------------------
# Validation rules (the API server's)

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
PROTOCOLS = ("TCP", "UDP")


def _check_dns_label(path: str, value: str) -> None:
    if len(value) > 63 or not _DNS_LABEL.match(value):
        raise ConfigError(
            f"{path}: {value!r} must be a DNS label (lowercase letters, digits and '-', "
            "at most 63 characters, starting and ending with a letter or digit)"
        )


def _check_dns1035(path: str, value: str) -> None:
    if len(value) > 63 or not _DNS1035.match(value):
        raise ConfigError(
            f"{path}: {value!r} must be a DNS-1035 label (lowercase letters, digits and '-', "
            "at most 63 characters, starting with a letter)"
        )


def _check_subdomain(path: str, value: str) -> None:
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise ConfigError(
            f"{path}: {value!r} must be a DNS subdomain (lowercase letters, digits, '-' and '.')"
        )


def _check_labels(path: str, labels: Mapping[str, str]) -> None:
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if (
            (prefix and not _DNS_SUBDOMAIN.match(prefix))
            or len(name) > 63
            or not (_LABEL_NAME.match(name))
        ):
            raise ConfigError(f"{path}: {_clip(key)!r} is not a valid label key")
        if value and (len(value) > 63 or not _LABEL_NAME.match(value)):
            why = f" ({len(value)} characters, at most 63)" if len(value) > 63 else ""
            raise ConfigError(
                f"{path}.{_clip(key)}: {_clip(value)!r} is not a valid label value{why}"
            )


def _clip(text: str, limit: int = 70) -> str:
    """A value as an error message quotes it: never a whole megabyte."""
    return text if len(text) <= limit else text[:limit] + "..."


def _check_port(path: str, port: int) -> None:
    if not 0 < port < 65536:
        raise ConfigError(f"{path}: must be 1-65535, got {port}")


def _check_port_name(path: str, name: str) -> None:
    # IANA_SVC_NAME: at most 15 characters, at least one letter, no "--"
    if (
        len(name) > 15
        or not _PORT_NAME.match(name)
        or "--" in name
        or not any(c.isalpha() for c in name)
    ):
        raise ConfigError(
            f"{path}: {name!r} must be an IANA service name (at most 15 lowercase letters, "
            "digits and '-', with at least one letter)"
        )


def _check_protocol(path: str, protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{path}: must be TCP or UDP, got {protocol!r}")


def _enum(path: str, cls: type[StrEnum], value: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise ConfigError(f"{path}: must be one of {allowed}, got {value!r}") from None


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Equality-based selector: every pair present. An empty selector matches nothing
    here (a Service without a selector gets no automatic endpoints)."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


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
        host, sep, port = self.control_endpoint.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(
                f"node {self.name}: status.controlEndpoint {self.control_endpoint!r} "
                "is not host:port"
            )
        return host, int(port)

    def validate(self) -> None:
        _check_subdomain("metadata.name", self.name)
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
        return _dump(self.to_dict())

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
        return cls.from_dict(_load(text, "node"))


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
        host, sep, port = self.control_endpoint.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(
                f"host {self.name}: controlEndpoint {self.control_endpoint!r} is not host:port"
            )
        return host, int(port)

    def validate(self) -> None:
        _check_subdomain("metadata.name", self.name)
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
        return _dump(self.to_dict())

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
            ip=_require_ipv4(spec.ipv4("ip"), "spec.ip"),
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
        return cls.from_dict(_load(text, "external host"))


def _require_ipv4(value: IPv4Address | None, path: str) -> IPv4Address:
    if value is None:
        raise ConfigError(f"{path}: required")
    return value


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
        _check_port(f"{path}.containerPort", self.container_port)
        _check_protocol(f"{path}.protocol", self.protocol)
        if self.name:
            _check_port_name(f"{path}.name", self.name)


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
        _check_dns_label(f"{path}.name", self.name)
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
        return pod_key(self.namespace, self.name)

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
        _check_subdomain("metadata.name", self.name)
        _check_dns_label("metadata.namespace", self.namespace)
        _check_labels("metadata.labels", self.labels)
        _check_containers("spec.containers", self.containers)
        if self.node_name:
            _check_subdomain("spec.nodeName", self.node_name)

    def to_dict(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if self.uid:
            meta["uid"] = self.uid
        if self.created:
            meta["creationTimestamp"] = self.created
        if self.labels:
            meta["labels"] = dict(self.labels)
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
        return _dump(self.to_dict())

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
            phase=_enum("status.phase", PodPhase, status.text("phase", "Pending")),
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
        return cls.from_dict(_load(text, "pod"))


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
        return service_key(self.namespace, self.name)

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
        _check_dns1035("metadata.name", self.name)
        _check_dns_label("metadata.namespace", self.namespace)
        _check_labels("metadata.labels", self.labels)
        _check_labels("spec.selector", self.selector)
        if not self.ports:
            raise ConfigError("spec.ports: at least one port is required")
        names: set[str] = set()
        seen: set[tuple[int, str]] = set()
        seen_np: set[tuple[int, str]] = set()
        for i, p in enumerate(self.ports):
            path = f"spec.ports[{i}]"
            if p.name:
                _check_port_name(f"{path}.name", p.name)
                if p.name in names:
                    raise ConfigError(f"{path}.name: duplicate {p.name!r}")
                names.add(p.name)
            elif len(self.ports) > 1:
                raise ConfigError(f"{path}.name: required when a Service has several ports")
            _check_protocol(f"{path}.protocol", p.protocol)
            _check_port(f"{path}.port", p.port)
            if (p.port, p.protocol) in seen:
                raise ConfigError(f"{path}: duplicate {p.port}/{p.protocol}")
            seen.add((p.port, p.protocol))
            target = p.effective_target
            if isinstance(target, int):
                _check_port(f"{path}.targetPort", target)
            else:
                _check_port_name(f"{path}.targetPort", target)
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
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if self.uid:
            meta["uid"] = self.uid
        if self.created:
            meta["creationTimestamp"] = self.created
        if self.labels:
            meta["labels"] = dict(self.labels)
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
        return _dump(self.to_dict())

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
        affinity = _enum(
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
            type=_enum("spec.type", ServiceType, spec.text("type", "ClusterIP")),
            selector=spec.str_map("selector"),
            ports=tuple(ports),
            cluster_ip=cluster_ip,
            session_affinity=affinity,
            affinity_timeout=timeout,
            external_traffic_policy=_enum(
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
        return cls.from_dict(_load(text, "service"))


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
        return deployment_key(self.namespace, self.name)

    def validate(self) -> None:
        _check_dns_label("metadata.name", self.name)
        _check_dns_label("metadata.namespace", self.namespace)
        _check_labels("metadata.labels", self.labels)
        if not 0 <= self.replicas <= MAX_REPLICAS:
            raise ConfigError(f"spec.replicas: must be 0 to {MAX_REPLICAS}, got {self.replicas}")
        if not self.selector:
            raise ConfigError("spec.selector.matchLabels: required")
        _check_labels("spec.selector.matchLabels", self.selector)
        _check_labels("spec.template.metadata.labels", self.template.labels)
        if not selector_matches(self.selector, self.template.labels):
            raise ConfigError(
                "spec.template.metadata.labels: `selector` does not match template `labels`"
            )
        _check_containers("spec.template.spec.containers", self.template.containers)
        if self.template.node_name:
            _check_subdomain("spec.template.spec.nodeName", self.template.node_name)

    def to_dict(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if self.uid:
            meta["uid"] = self.uid
        if self.created:
            meta["creationTimestamp"] = self.created
        if self.labels:
            meta["labels"] = dict(self.labels)
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
        return _dump(self.to_dict())

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
        return cls.from_dict(_load(text, "deployment"))


# --------------------------------------------------------------------------
# Endpoints and kube-proxy


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


# --------------------------------------------------------------------------
# Allocation and scheduling


def allocate_cluster_ip(
    used: Collection[IPv4Address],
    service_cidr: IPv4Network = DEFAULT_SERVICE_CIDR,
    rng: random.Random | None = None,
) -> IPv4Address:
    """A free ClusterIP, random like the API server's allocator.

    Never the network address, .1 (the ``kubernetes`` Service), .10 (cluster
    DNS) or the broadcast address. Raises :class:`RangeFull`.
    """
    rng = rng or random.Random()
    base = int(service_cidr.network_address)
    size = service_cidr.num_addresses
    reserved = {base + o for o in _RESERVED_SERVICE_OFFSETS if o < size}
    reserved.add(base + size - 1)
    taken = {int(ip) for ip in used}

    def free(value: int) -> bool:
        return value not in reserved and value not in taken

    for _ in range(32):
        candidate = base + rng.randrange(size)
        if free(candidate):
            return IPv4Address(candidate)
    start = rng.randrange(size)
    for i in range(size):
        candidate = base + (start + i) % size
        if free(candidate):
            return IPv4Address(candidate)
    raise RangeFull(f"service CIDR {service_cidr} has no free ClusterIP left")


def allocate_node_port(
    used: Collection[int],
    rng: random.Random | None = None,
    port_range: tuple[int, int] = NODE_PORT_RANGE,
) -> int:
    """A free NodePort in ``port_range`` (inclusive); raises :class:`RangeFull`."""
    rng = rng or random.Random()
    lo, hi = port_range
    taken = set(used)
    for _ in range(32):
        candidate = rng.randint(lo, hi)
        if candidate not in taken:
            return candidate
    count = hi - lo + 1
    start = rng.randrange(count)
    for i in range(count):
        candidate = lo + (start + i) % count
        if candidate not in taken:
            return candidate
    raise RangeFull(f"no free NodePort left in {lo}-{hi}")


def schedule(pods: Iterable[Pod], nodes: Iterable[NodeInfo]) -> str:
    """The Ready node with the fewest (non-terminated) pods; ties by name.

    Raises :class:`Unschedulable` when no node is Ready.
    """
    ready = sorted(n.name for n in nodes if n.ready)
    if not ready:
        raise Unschedulable("no Ready node to schedule the pod on (is the fabric up?)")
    counts = dict.fromkeys(ready, 0)
    for pod in pods:
        if pod.node_name in counts and pod.phase not in (PodPhase.SUCCEEDED, PodPhase.FAILED):
            counts[pod.node_name] += 1
    return min(ready, key=lambda name: (counts[name], name))


# ReplicaSet name suffixes use this alphabet (k8s.io/apimachinery rand.String):
# no vowels (no words), no 0/1/3 (confusable).
_RAND_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def pod_template_hash(template: PodTemplate) -> str:
    """10 hex digits identifying a pod template (the ReplicaSet part of pod names)."""
    text = json.dumps(template.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def deployment_pod_name(deployment: Deployment, rng: random.Random | None = None) -> str:
    """``<deployment>-<10 hex>-<5 alnum>``, like a ReplicaSet's pods."""
    rng = rng or random.Random()
    suffix = "".join(rng.choice(_RAND_ALPHABET) for _ in range(5))
    return f"{deployment.name}-{pod_template_hash(deployment.template)}-{suffix}"


def pod_for_deployment(
    deployment: Deployment,
    node_name: str = "",
    rng: random.Random | None = None,
    *,
    uid: str = "",
    created: str = "",
    taken: Collection[str] = (),
) -> Pod:
    """A new Pending pod of ``deployment`` (name unique among ``taken``); the
    template's nodeName, when set, wins over ``node_name``."""
    rng = rng or random.Random()
    name = deployment_pod_name(deployment, rng)
    while name in taken:
        name = deployment_pod_name(deployment, rng)
    labels = dict(deployment.template.labels)
    labels["pod-template-hash"] = pod_template_hash(deployment.template)
    return Pod(
        name=name,
        namespace=deployment.namespace,
        labels=labels,
        uid=uid,
        node_name=deployment.template.node_name or node_name,
        containers=deployment.template.containers,
        owner=deployment.name,
        created=created,
    )
