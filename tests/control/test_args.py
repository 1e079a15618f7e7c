"""The CLI's own argument values (pure)."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from emunet.control.args import Kind, parse_ipv4, parse_kind, split_dest

from emunet.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("nodes", Kind.NODES),
        ("no", Kind.NODES),
        ("Node", Kind.NODES),
        ("po", Kind.PODS),
        ("PODS", Kind.PODS),
        ("svc", Kind.SERVICES),
        ("service", Kind.SERVICES),
        ("ep", Kind.ENDPOINTS),
        ("endpoint", Kind.ENDPOINTS),
        ("deploy", Kind.DEPLOYMENTS),
        ("Deployment", Kind.DEPLOYMENTS),
        ("host", Kind.HOSTS),
    ],
)
def test_parse_kind(text: str, kind: Kind) -> None:
    assert parse_kind(text) == kind


@pytest.mark.parametrize(
    ("text", "allowed", "message"),
    [
        ("bogus", tuple(Kind),
         "unknown resource type 'bogus' (use one of: nodes, pods, services, endpoints, "
         "deployments, hosts)"),
        ("node", (Kind.PODS, Kind.SERVICES, Kind.DEPLOYMENTS),
         "unknown resource type 'node' (use one of: pods, services, deployments)"),
        ("", (Kind.PODS,), "unknown resource type '' (use one of: pods)"),
    ],
)  # fmt: skip
def test_parse_kind_refuses(text: str, allowed: tuple[Kind, ...], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_kind(text, allowed)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("dest", "split"),
    [
        ("10.96.0.10", ("10.96.0.10", None)),
        ("10.96.0.10:80", ("10.96.0.10", 80)),
        ("web:65535", ("web", 65535)),
        ("web:1", ("web", 1)),
        ("web", ("web", None)),
    ],
)
def test_split_dest(dest: str, split: tuple[str, int | None]) -> None:
    assert split_dest(dest) == split


@pytest.mark.parametrize("dest", ["web:0", "web:65536", "web:", "web:http", "web:-1"])
def test_split_dest_refuses_a_bad_port(dest: str) -> None:
    with pytest.raises(ConfigError) as info:
        split_dest(dest)
    assert str(info.value) == f"DEST: {dest!r}: the port must be 1-65535"


def test_parse_ipv4() -> None:
    assert parse_ipv4("--x", None) is None
    assert parse_ipv4("--x", "") is None
    assert parse_ipv4("--x", "203.0.113.9") == IPv4Address("203.0.113.9")
    with pytest.raises(ConfigError) as info:
        parse_ipv4("--load-balancer-ip", "nope")
    assert str(info.value) == "--load-balancer-ip: 'nope' is not an IPv4 address"
