"""The registry's etcd key schema, as one table.

Every object the cluster keeps in etcd lives under ``/registry``
(docs/ARCHITECTURE.md) at ``/registry/<path><name>`` or, for a namespaced
kind, ``/registry/<path><namespace>/<name>``; :data:`KINDS` holds each kind's
path. :func:`key` and :func:`prefix` build keys, :func:`parse_key` reads one
back. flannel's own schema (``/coreos.com/network/...``) is in
:mod:`emunet.cluster.flannel`.

=================  ===============================  ==========
kind               path under ``/registry/``        namespaced
=================  ===============================  ==========
``pod``            ``pods/``                        yes
``service``        ``services/specs/``              yes
``deployment``     ``deployments/``                 yes
``node``           ``minions/``                     no
``nodelease``      ``leases/kube-node-lease/``      no
``systemlease``    ``leases/kube-system/``          no
``host``           ``emunet/hosts/``                no
``serviceip``      ``ranges/serviceips/``           no
``nodeport``       ``ranges/servicenodeports/``     no
=================  ===============================  ==========

A node's lease key says it is Ready; the controller manager holds
:data:`CONTROLLER_LEASE_KEY`; a ``serviceip`` / ``nodeport`` key claims one
ClusterIP / NodePort for the Service its value names (``namespace/name``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from emunet.errors import ConfigError

__all__ = [
    "CONTROLLER_LEASE_KEY",
    "KINDS",
    "PREFIX",
    "Kind",
    "KindSpec",
    "key",
    "parse_key",
    "prefix",
]

PREFIX = "/registry"


class Kind(StrEnum):
    POD = "pod"
    SERVICE = "service"
    DEPLOYMENT = "deployment"
    NODE = "node"
    NODE_LEASE = "nodelease"
    SYSTEM_LEASE = "systemlease"
    HOST = "host"
    SERVICE_IP = "serviceip"
    NODE_PORT = "nodeport"


@dataclass(frozen=True, slots=True)
class KindSpec:
    path: str  # under /registry/, ends in "/"
    namespaced: bool
    what: str  # what the name is, for error messages


KINDS: dict[Kind, KindSpec] = {
    Kind.POD: KindSpec("pods/", True, "pod name"),
    Kind.SERVICE: KindSpec("services/specs/", True, "service name"),
    Kind.DEPLOYMENT: KindSpec("deployments/", True, "deployment name"),
    Kind.NODE: KindSpec("minions/", False, "node name"),
    Kind.NODE_LEASE: KindSpec("leases/kube-node-lease/", False, "node name"),
    Kind.SYSTEM_LEASE: KindSpec("leases/kube-system/", False, "lease name"),
    Kind.HOST: KindSpec("emunet/hosts/", False, "host name"),
    Kind.SERVICE_IP: KindSpec("ranges/serviceips/", False, "cluster IP"),
    Kind.NODE_PORT: KindSpec("ranges/servicenodeports/", False, "node port"),
}


def _segment(value: str, what: str) -> str:
    if not value or "/" in value:
        raise ConfigError(f"{what}: {value!r} is not a valid name")
    return value


def prefix(kind: Kind, namespace: str | None = None) -> str:
    """Every key of ``kind`` (in ``namespace``, when given), ending in "/"."""
    spec = KINDS[kind]
    if namespace is None:
        return f"{PREFIX}/{spec.path}"
    if not spec.namespaced:
        raise ConfigError(f"{kind} keys have no namespace (got {namespace!r})")
    return f"{PREFIX}/{spec.path}{_segment(namespace, 'namespace')}/"


def key(kind: Kind, name: str, namespace: str | None = None) -> str:
    """The key of one object; a namespaced kind needs ``namespace``.

    Raises :class:`~emunet.errors.ConfigError` for an empty name or one with a "/".
    """
    if KINDS[kind].namespaced and namespace is None:
        raise ConfigError(f"{kind} keys need a namespace")
    return prefix(kind, namespace) + _segment(name, KINDS[kind].what)


CONTROLLER_LEASE_KEY = key(Kind.SYSTEM_LEASE, "kube-controller-manager")
"""Held (on an etcd lease) by the running controller manager."""


def parse_key(key: str | bytes) -> tuple[Kind, str, str] | None:
    """``/registry/pods/default/web-1`` -> ``(Kind.POD, "default", "web-1")``;
    a kind without namespaces has namespace ""; None for any other key."""
    text = key.decode(errors="replace") if isinstance(key, bytes) else key
    if not text.startswith(PREFIX + "/"):
        return None
    rest = text[len(PREFIX) + 1 :]
    for kind, spec in KINDS.items():
        if not rest.startswith(spec.path):
            continue
        parts = rest[len(spec.path) :].split("/")
        if spec.namespaced and len(parts) == 2 and all(parts):
            return (kind, parts[0], parts[1])
        if not spec.namespaced and len(parts) == 1 and parts[0]:
            return (kind, "", parts[0])
        return None
    return None
