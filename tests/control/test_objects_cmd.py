"""``emunet get`` and ``describe`` against an in-memory registry: which objects,
which messages, which stream (no etcd; the tables are test_views')."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

import pytest
from emunet.control import objects_cmd
from emunet.control.cli import app
from emunet.nodes.registry import NotFound
from typer.testing import CliRunner

from emunet.cluster.registry import (
    Container,
    Deployment,
    ExternalHostInfo,
    NodeInfo,
    Pod,
    PodTemplate,
    Service,
    ServicePortSpec,
)


@dataclass
class FakeRegistry:
    """The few reads ``get`` and ``describe`` make, from lists."""

    node_list: list[NodeInfo] = field(default_factory=list)
    host_list: list[ExternalHostInfo] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)
    deployments: list[Deployment] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)

    async def nodes(self) -> list[NodeInfo]:
        return list(self.node_list)

    async def hosts(self) -> list[ExternalHostInfo]:
        return list(self.host_list)

    async def list_pods(self, namespace: str | None) -> list[Pod]:
        return [p for p in self.pods if namespace in (None, p.namespace)]

    async def list_deployments(self, namespace: str | None) -> list[Deployment]:
        return [d for d in self.deployments if namespace in (None, d.namespace)]

    async def list_services(self, namespace: str | None) -> list[Service]:
        return [s for s in self.services if namespace in (None, s.namespace)]

    async def require_pod(self, namespace: str, name: str) -> Pod:
        for p in self.pods:
            if (p.namespace, p.name) == (namespace, name):
                return p
        raise NotFound(f'pods "{name}" not found')


WEB = Service("web", selector={"app": "web"}, ports=(ServicePortSpec(80),),
              cluster_ip=IPv4Address("10.96.0.10"))  # fmt: skip
FULL = FakeRegistry(
    node_list=[NodeInfo("node1", IPv4Address("127.0.0.11"), ready=True)],
    host_list=[ExternalHostInfo("client", IPv4Address("203.0.113.20"), "internet")],
    pods=[Pod("web-1", labels={"app": "web"}, node_name="node1",
              containers=(Container("web", "http"),))],
    deployments=[Deployment("web", template=PodTemplate({"app": "web"},
                                                        (Container("web", "http"),)))],
    services=[WEB],
)  # fmt: skip


def invoke(monkeypatch: pytest.MonkeyPatch, reg: FakeRegistry, *args: str) -> Any:
    @asynccontextmanager
    async def fake() -> AsyncIterator[FakeRegistry]:
        yield reg

    monkeypatch.setattr(objects_cmd, "registry", fake)
    return CliRunner().invoke(app, ["--etcd", "127.0.0.1:1", *args])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["get", "nodes"], "No resources found"),
        (["get", "hosts"], "No resources found (is the internet process running?)"),
        (["get", "pods"], "No resources found in default namespace."),
        (["get", "pods", "-A"], "No resources found in any namespace."),
        (["get", "deploy", "-n", "prod"], "No resources found in prod namespace."),
        (["get", "svc"], "No resources found in default namespace."),
        (["get", "ep"], "No resources found in default namespace."),
    ],
)
def test_get_nothing_says_so_on_stderr(
    monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    result = invoke(monkeypatch, FakeRegistry(), *args)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", message + "\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["get", "nodes", "x"], 'nodes "x" not found'),
        (["get", "hosts", "x"], 'hosts "x" not found'),
        (["get", "pods", "x"], 'pods "x" not found in namespace default'),
        (["get", "deploy", "x", "-n", "prod"], 'deployments "x" not found in namespace prod'),
        (["get", "svc", "x"], 'services "x" not found in namespace default'),
        (["get", "ep", "x"], 'services "x" not found in namespace default'),
    ],
)
def test_get_a_missing_name_is_an_error(
    monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    result = invoke(monkeypatch, FULL, *args)
    assert (result.exit_code, result.stderr) == (1, f"error: {message}\n")


@pytest.mark.parametrize(
    ("args", "first", "names"),
    [
        (["get", "nodes"], ["NAME", "STATUS", "INTERNAL-IP", "POD-CIDR"], ["node1"]),
        (["get", "hosts"], ["NAME", "SEGMENT", "IP"], ["client"]),
        (["get", "pods"], ["NAME", "READY", "STATUS", "IP", "NODE", "AGE"], ["web-1"]),
        (["get", "deploy"], ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"], ["web"]),
        (["get", "svc"], ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"], ["web"]),
        (["get", "ep"], ["NAME", "ENDPOINTS", "AGE"], ["web"]),
    ],
)
def test_get_prints_a_table(
    monkeypatch: pytest.MonkeyPatch, args: list[str], first: list[str], names: list[str]
) -> None:
    result = invoke(monkeypatch, FULL, *args)
    assert result.exit_code == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == first
    assert [r.split()[0] for r in rows] == names


@pytest.mark.parametrize(
    ("args", "kind"),
    [
        (["get", "nodes", "node1", "-o", "json"], "Node"),
        (["get", "hosts", "client", "-o", "json"], "ExternalHost"),
        (["get", "pods", "web-1", "-o", "json"], "Pod"),
        (["get", "deploy", "web", "-o", "json"], "Deployment"),
        (["get", "svc", "web", "-o", "json"], "Service"),
        (["get", "ep", "web", "-o", "json"], "Endpoints"),
        (["get", "ep", "-o", "json"], "List"),
        (["get", "pods", "-o", "json", "-n", "prod"], "List"),
    ],
)
def test_get_json(monkeypatch: pytest.MonkeyPatch, args: list[str], kind: str) -> None:
    result = invoke(monkeypatch, FULL, *args)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["kind"] == kind


def test_describe_prints_the_view(monkeypatch: pytest.MonkeyPatch) -> None:
    result = invoke(monkeypatch, FULL, "describe", "po", "web-1")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[:2] == [
        "Name:                   web-1",
        "Namespace:              default",
    ]
    bad = invoke(monkeypatch, FULL, "describe", "ep", "web")
    assert bad.stderr == (
        "error: unknown resource type 'ep' (use one of: pods, services, nodes, deployments)\n"
    )
