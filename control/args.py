"""The ``emunet`` command line's own argument values, parsed by pure functions.

typer parses the options it has a type for; what is left (a resource type with
kubectl's aliases, ``DEST[:PORT]``, an IPv4 option) is parsed here, and a bad
value raises :class:`ConfigError` with the message the command prints.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from ipaddress import IPv4Address

from emunet.errors import ConfigError

__all__ = ["KIND_ALIASES", "Kind", "Output", "Proto", "parse_ipv4", "parse_kind", "split_dest"]


class Output(StrEnum):
    JSON = "json"
    YAML = "yaml"
    WIDE = "wide"


class Proto(StrEnum):
    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"


class Kind(StrEnum):
    NODES = "nodes"
    PODS = "pods"
    SERVICES = "services"
    ENDPOINTS = "endpoints"
    DEPLOYMENTS = "deployments"
    HOSTS = "hosts"  # emunet's own kind: the machines outside the cluster


KIND_ALIASES = {
    "node": Kind.NODES,
    "nodes": Kind.NODES,
    "no": Kind.NODES,
    "pod": Kind.PODS,
    "pods": Kind.PODS,
    "po": Kind.PODS,
    "service": Kind.SERVICES,
    "services": Kind.SERVICES,
    "svc": Kind.SERVICES,
    "endpoints": Kind.ENDPOINTS,
    "endpoint": Kind.ENDPOINTS,
    "ep": Kind.ENDPOINTS,
    "deployment": Kind.DEPLOYMENTS,
    "deployments": Kind.DEPLOYMENTS,
    "deploy": Kind.DEPLOYMENTS,
    "host": Kind.HOSTS,
    "hosts": Kind.HOSTS,
}


def parse_kind(text: str, allowed: Iterable[Kind] = tuple(Kind)) -> Kind:
    """A resource type as kubectl spells it (``po``, ``svc``, ``Deployment``...),
    one of ``allowed``."""
    kind = KIND_ALIASES.get(text.lower())
    allowed = tuple(allowed)
    if kind is None or kind not in allowed:
        names = ", ".join(k.value for k in allowed)
        raise ConfigError(f"unknown resource type {text!r} (use one of: {names})")
    return kind


def split_dest(dest: str) -> tuple[str, int | None]:
    """``trace``'s ``DEST[:PORT]``: the destination and the port, if any."""
    host, sep, port = dest.rpartition(":")
    if not sep:
        return dest, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"DEST: {dest!r}: the port must be 1-65535")
    return host, int(port)


def parse_ipv4(option: str, text: str | None) -> IPv4Address | None:
    """An IPv4 address option (None or "" when not given)."""
    if not text:
        return None
    try:
        return IPv4Address(text)
    except ValueError:
        raise ConfigError(f"{option}: {text!r} is not an IPv4 address") from None
