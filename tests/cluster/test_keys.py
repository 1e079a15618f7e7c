"""The registry's etcd key schema (one table, docs/ARCHITECTURE.md)."""

from __future__ import annotations

import pytest

from emunet.cluster import keys
from emunet.cluster.keys import CONTROLLER_LEASE_KEY, KINDS, Kind, key, parse_key, prefix
from emunet.errors import ConfigError

# every kind: (name, namespace, the exact key etcd holds)
EXACT = {
    Kind.POD: ("web-1", "default", "/registry/pods/default/web-1"),
    Kind.SERVICE: ("dns", "kube-system", "/registry/services/specs/kube-system/dns"),
    Kind.DEPLOYMENT: ("web", "default", "/registry/deployments/default/web"),
    Kind.NODE: ("node1", None, "/registry/minions/node1"),
    Kind.NODE_LEASE: ("node1", None, "/registry/leases/kube-node-lease/node1"),
    Kind.SYSTEM_LEASE: (
        "kube-controller-manager",
        None,
        "/registry/leases/kube-system/kube-controller-manager",
    ),
    Kind.HOST: ("gateway", None, "/registry/emunet/hosts/gateway"),
    Kind.SERVICE_IP: ("10.96.0.5", None, "/registry/ranges/serviceips/10.96.0.5"),
    Kind.NODE_PORT: ("30080", None, "/registry/ranges/servicenodeports/30080"),
}

PREFIXES = {
    Kind.POD: "/registry/pods/",
    Kind.SERVICE: "/registry/services/specs/",
    Kind.DEPLOYMENT: "/registry/deployments/",
    Kind.NODE: "/registry/minions/",
    Kind.NODE_LEASE: "/registry/leases/kube-node-lease/",
    Kind.SYSTEM_LEASE: "/registry/leases/kube-system/",
    Kind.HOST: "/registry/emunet/hosts/",
    Kind.SERVICE_IP: "/registry/ranges/serviceips/",
    Kind.NODE_PORT: "/registry/ranges/servicenodeports/",
}


def test_every_kind_is_covered() -> None:
    assert set(EXACT) == set(Kind) == set(KINDS) == set(PREFIXES)


@pytest.mark.parametrize("kind", list(Kind))
def test_key_exact_and_round_trip(kind: Kind) -> None:
    name, namespace, expected = EXACT[kind]
    assert key(kind, name, namespace) == expected
    parsed = (kind, namespace or "", name)
    assert parse_key(expected) == parsed
    assert parse_key(expected.encode()) == parsed
    assert KINDS[kind].namespaced == (namespace is not None)


@pytest.mark.parametrize("kind", list(Kind))
def test_prefix_exact(kind: Kind) -> None:
    assert prefix(kind) == PREFIXES[kind]
    _, namespace, expected = EXACT[kind]
    assert expected.startswith(prefix(kind, namespace))
    if namespace is not None:
        assert prefix(kind, namespace) == f"{PREFIXES[kind]}{namespace}/"


def test_parsed_kind_is_its_string() -> None:
    parsed = parse_key("/registry/pods/default/web-1")
    assert parsed == ("pod", "default", "web-1")
    assert parsed is not None and parsed[0] is Kind.POD


def test_controller_lease_key() -> None:
    assert CONTROLLER_LEASE_KEY == "/registry/leases/kube-system/kube-controller-manager"
    assert parse_key(CONTROLLER_LEASE_KEY) == (Kind.SYSTEM_LEASE, "", "kube-controller-manager")


@pytest.mark.parametrize(
    "text",
    [
        "/coreos.com/network/config",
        "/registry/pods/default",
        "/registry/pods/a/b/c",
        "/registry/pods/default/",
        "/registry/minions/",
        "/registry/minions/a/b",
        "/registry/leases/other/x",
        "/registry/unknown/x",
        "/registry",
        "registry/pods/default/web",
        "",
    ],
)
def test_parse_key_rejects(text: str) -> None:
    assert parse_key(text) is None


@pytest.mark.parametrize(
    ("kind", "name", "namespace", "message"),
    [
        (Kind.POD, "a/b", "default", "pod name"),
        (Kind.POD, "", "default", "pod name"),
        (Kind.POD, "web", "a/b", "namespace"),
        (Kind.SERVICE, "svc", "", "namespace"),
        (Kind.NODE, "a/b", None, "node name"),
        (Kind.HOST, "", None, "host name"),
        (Kind.POD, "web", None, "need a namespace"),
        (Kind.NODE, "node1", "default", "have no namespace"),
    ],
)
def test_key_refuses(kind: Kind, name: str, namespace: str | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        key(kind, name, namespace)


def test_paths_are_unambiguous() -> None:
    """No kind's path is a prefix of another's: parse_key's order does not matter."""
    paths = [spec.path for spec in KINDS.values()]
    for a in paths:
        assert a.endswith("/")
        assert [b for b in paths if b.startswith(a)] == [a]
    assert keys.PREFIX == "/registry"
