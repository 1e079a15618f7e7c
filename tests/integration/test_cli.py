"""The ``emunet`` CLI against a real etcd (no agents: nodes are registered here)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from emunet.control.cli import app
from emunet.nodes.etcd_server import EtcdServer
from emunet.nodes.registry import Registry
from typer.testing import CliRunner

from emunet.cluster.registry import Deployment, NodeInfo, Pod, PodPhase, Service

pytestmark = pytest.mark.integration


class Cli:
    def __init__(self, endpoint: str, state_dir: Path) -> None:
        self.endpoint = endpoint
        self.state_dir = state_dir
        self.runner = CliRunner()

    async def __call__(self, *args: str, ok: bool = True) -> Any:
        argv = ["--etcd", self.endpoint, "--state-dir", str(self.state_dir), *args]
        # commands run their own event loop: keep them off the test's loop
        result = await asyncio.to_thread(self.runner.invoke, app, argv)
        if ok:
            assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        return result


@pytest.fixture
async def cluster(etcd: EtcdServer, tmp_path: Path) -> AsyncIterator[tuple[Cli, Registry]]:
    async with Registry(etcd.endpoint) as reg:
        for i in (1, 2, 3):
            await reg.register_node(
                NodeInfo(f"node{i}", IPv4Address(f"127.0.0.{10 + i}"), None, "127.0.0.1:1"),
                ttl=30,
            )
        yield Cli(etcd.endpoint, tmp_path / "state"), reg


def one_line_error(result: Any, starts: str) -> None:
    assert result.exit_code == 1, (result.stdout, result.stderr)
    err = result.stderr.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"error: {starts}"), err


async def test_get_nodes(cluster: tuple[Cli, Registry]) -> None:
    cli, _reg = cluster
    out = (await cli("get", "nodes")).stdout.splitlines()
    assert out[0].split() == ["NAME", "STATUS", "INTERNAL-IP", "POD-CIDR"]
    assert [line.split()[:3] for line in out[1:]] == [
        ["node1", "Ready", "127.0.0.11"],
        ["node2", "Ready", "127.0.0.12"],
        ["node3", "Ready", "127.0.0.13"],
    ]
    doc = json.loads((await cli("get", "nodes", "-o", "json")).stdout)
    assert doc["kind"] == "List" and len(doc["items"]) == 3


async def test_run_expose_scale_delete(cluster: tuple[Cli, Registry]) -> None:
    cli, reg = cluster
    result = await cli("run", "web", "--app", "http", "--replicas", "3")
    assert result.stdout.strip() == "deployment.apps/web created"
    pods = await reg.list_pods("default")
    assert sorted(p.node_name for p in pods) == ["node1", "node2", "node3"]
    assert all(p.owner == "web" and p.labels["app"] == "web" for p in pods)
    assert all(p.containers[0].app == "http" and p.containers[0].args == {"port": 80} for p in pods)

    result = await cli("expose", "web", "--port", "8080", "--type", "NodePort")
    assert result.stdout.strip() == "service/web exposed"
    svc = await reg.require_service("default", "web")
    assert svc.selector == {"app": "web"}
    assert svc.ports[0].port == 8080 and svc.ports[0].target_port == 80  # the container's port
    assert 30000 <= svc.ports[0].node_port <= 32767 and svc.cluster_ip is not None

    out = (await cli("get", "svc")).stdout.splitlines()
    assert out[1].split()[:5] == [
        "web",
        "NodePort",
        str(svc.cluster_ip),
        "<none>",
        f"8080:{svc.ports[0].node_port}/TCP",
    ]

    # endpoints follow Running pods with an IP (what a kubelet would write)
    for i, p in enumerate(pods):
        await reg.put_pod(p.with_status(PodPhase.RUNNING, IPv4Address(f"10.244.{i}.2")))
    eps = json.loads((await cli("get", "endpoints", "web", "-o", "json")).stdout)
    assert sorted(a["ip"] for a in eps["subsets"][0]["addresses"]) == [
        "10.244.0.2",
        "10.244.1.2",
        "10.244.2.2",
    ]
    assert eps["subsets"][0]["ports"] == [{"port": 80, "protocol": "TCP"}]

    await cli("scale", "web", "--replicas", "1")
    assert len(await reg.list_pods("default")) == 1
    await cli("scale", "web", "--replicas", "2")
    assert len(await reg.list_pods("default")) == 2

    victim = (await reg.list_pods("default"))[0]
    result = await cli("delete", "pod", victim.name)
    assert result.stdout.strip() == f'pod "{victim.name}" deleted'
    names = {p.name for p in await reg.list_pods("default")}
    assert len(names) == 2 and victim.name not in names  # replaced by the controller

    await cli("delete", "deployment", "web")
    assert await reg.list_pods("default") == []
    await cli("delete", "service", "web")
    assert await reg.list_services() == []


MANIFEST = textwrap.dedent(
    """\
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: web
      labels: {app: web}
    spec:
      replicas: 3
      selector:
        matchLabels: {app: web}
      template:
        metadata:
          labels: {app: web}
        spec:
          containers:
          - name: web
            image: traefik/whoami
            resources: {limits: {cpu: 100m}}
            ports:
            - {name: http, containerPort: 80}
    ---
    apiVersion: v1
    kind: Service
    metadata:
      name: web
      labels: {app: web}
    spec:
      type: NodePort
      selector: {app: web}
      ports:
      - {port: 80, targetPort: 80}
    """
)


def _norm_dep(d: Deployment) -> Deployment:
    return replace(d, namespace="x", uid="", created="")


def _norm_svc(s: Service) -> Service:
    ports = tuple(replace(p, node_port=0) for p in s.ports)
    return replace(s, namespace="x", uid="", created="", cluster_ip=None, ports=ports)


def _norm_pods(pods: list[Pod]) -> list[tuple[Any, ...]]:
    return sorted((p.node_name, p.owner, p.containers, p.phase) for p in pods)


async def test_apply_matches_imperative(cluster: tuple[Cli, Registry], tmp_path: Path) -> None:
    cli, reg = cluster
    await cli("run", "web", "--app", "http", "--replicas", "3", "-n", "imperative")
    await cli(
        "expose",
        "web",
        "--port",
        "80",
        "--target-port",
        "80",
        "--type",
        "NodePort",
        "-n",
        "imperative",
    )
    path = tmp_path / "web.yaml"
    path.write_text(MANIFEST)
    result = await cli("apply", "-f", str(path), "-n", "declarative")
    assert result.stdout.splitlines() == ["deployment.apps/web created", "service/web created"]
    assert result.stderr.strip() == (
        f"Warning: {path}: document 1 (Deployment web): "
        "spec.template.spec.containers[0].resources: not used by emunet, ignored"
    )
    imp_dep = await reg.require_deployment("imperative", "web")
    dec_dep = await reg.require_deployment("declarative", "web")
    assert _norm_dep(imp_dep) == _norm_dep(dec_dep)
    imp_svc = await reg.require_service("imperative", "web")
    dec_svc = await reg.require_service("declarative", "web")
    assert _norm_svc(imp_svc) == _norm_svc(dec_svc)
    assert dec_svc.ports[0].node_port and dec_svc.cluster_ip
    assert dec_svc.cluster_ip != imp_svc.cluster_ip
    imp_pods = await reg.list_pods("imperative")
    dec_pods = await reg.list_pods("declarative")
    assert len(dec_pods) == 3
    assert {p.labels["pod-template-hash"] for p in dec_pods} == {
        p.labels["pod-template-hash"] for p in imp_pods
    }
    # the same spread: one pod per node each (the scheduler counts both namespaces)
    assert sorted(p.node_name for p in dec_pods) == sorted(p.node_name for p in imp_pods)
    assert _norm_pods(imp_pods) == _norm_pods(dec_pods)
    # applying again changes nothing
    again = await cli("apply", "-f", str(path), "-n", "declarative")
    assert again.stdout.splitlines() == ["deployment.apps/web unchanged", "service/web unchanged"]
    assert {p.name for p in await reg.list_pods("declarative")} == {p.name for p in dec_pods}
    # a new replica count is reconciled
    path.write_text(MANIFEST.replace("replicas: 3", "replicas: 1"))
    again = await cli("apply", "-f", str(path), "-n", "declarative")
    assert again.stdout.splitlines()[0] == "deployment.apps/web configured"
    assert len(await reg.list_pods("declarative")) == 1


async def test_one_line_errors(
    cluster: tuple[Cli, Registry], tmp_path: Path, free_port: Callable[[], int]
) -> None:
    cli, reg = cluster
    one_line_error(await cli("describe", "pod", "nope", ok=False), 'pods "nope" not found')
    one_line_error(
        await cli("run", "web", "--node", "node9", ok=False), "no such node: node9 (nodes: node1"
    )
    one_line_error(await cli("routes", "node9", ok=False), "no such node: node9")
    # issue 11: a missing pod is the error, not the port that --proto icmp ignores
    one_line_error(await cli("trace", "nosuch", "web:80", ok=False), 'pods "nosuch" not found')
    one_line_error(await cli("get", "widgets", ok=False), "unknown resource type 'widgets'")
    bad = tmp_path / "bad.yaml"
    bad.write_text(MANIFEST.replace("- {port: 80, targetPort: 80}", "- {port: 70000}"))
    one_line_error(
        await cli("apply", "-f", str(bad), ok=False),
        f"{bad}: document 2 (Service web): spec.ports[0].port: must be 1-65535, got 70000",
    )
    assert await reg.list_deployments() == []  # nothing applied from a bad file
    one_line_error(
        await cli("apply", "-f", str(tmp_path / "missing.yaml"), ok=False),
        f"{tmp_path / 'missing.yaml'}: No such file",
    )
    await cli("run", "web")
    await cli("expose", "web", "--port", "80", "--type", "NodePort", "--node-port", "30080")
    one_line_error(
        await cli(
            "expose",
            "web",
            "--name",
            "web2",
            "--port",
            "80",
            "--type",
            "NodePort",
            "--node-port",
            "30080",
            ok=False,
        ),
        "spec.ports[0].nodePort: 30080: provided port is already allocated",
    )
    one_line_error(await cli("run", "web", ok=False), 'deployments.apps "web" already exists')
    # a node whose agent does not answer
    one_line_error(
        await cli("conntrack", "node1", ok=False), "node agent unreachable at 127.0.0.1:1"
    )
    # etcd down
    dead = Cli(f"127.0.0.1:{free_port()}", tmp_path)
    one_line_error(await dead("get", "pods", ok=False), "etcd unreachable at 127.0.0.1:")
    # no endpoint at all
    nowhere = CliRunner()
    result = await asyncio.to_thread(
        nowhere.invoke,
        app,
        ["--state-dir", str(tmp_path / "none"), "get", "pods"],
        env={"EMUNET_ETCD": None},
    )
    one_line_error(result, "no etcd endpoint: start a fabric with `emunet up --local`")


def test_main_usage_errors_are_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "EMUNET_STATE": str(tmp_path)}
    env.pop("EMUNET_ETCD", None)
    for argv, expected in [
        (["bogus"], "error: No such command 'bogus'."),
        (["scale", "web"], "error: Missing option '--replicas'"),
        (["get", "pods"], "error: no etcd endpoint"),
    ]:
        proc = subprocess.run(
            [sys.executable, "-c", "from emunet.control.cli import main; main()", *argv],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
        )
        assert proc.returncode == 1, proc
        assert proc.stderr.startswith(expected), proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


# -- the control API client against a scripted server ---------------------------------


async def test_control_client(free_port: Callable[[], int]) -> None:
    import struct

    import msgpack
    from emunet.nodes.control_client import (
        AgentUnavailable,
        ControlClient,
        ControlError,
        ControlNotFound,
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                (length,) = struct.unpack(">I", await reader.readexactly(4))
            except asyncio.IncompleteReadError:
                break
            req = msgpack.unpackb(await reader.readexactly(length), raw=False)
            rid, op = req["id"], req["op"]
            replies: list[dict[str, Any]] = []
            if op == "exec":
                replies += [
                    {"v": 1, "id": rid, "stream": {"out": "line 1\n"}},
                    {"v": 1, "id": rid, "stream": {"err": "oops\n"}},
                    {"v": 1, "id": rid, "ok": True, "result": {"exit": 3}},
                ]
            elif op == "status":
                replies.append({"v": 1, "id": rid - 1, "ok": True, "result": "stale"})
                replies.append({"v": 1, "id": rid, "ok": True, "result": dict(req["args"])})
            elif op == "silent":
                continue
            else:
                code = "not_found" if op == "missing" else "unknown_op"
                replies.append(
                    {"v": 1, "id": rid, "ok": False, "error": {"code": code, "message": f"{op}?"}}
                )
            for reply in replies:
                body = msgpack.packb(reply, use_bin_type=True)
                writer.write(struct.pack(">I", len(body)) + body)
            await writer.drain()
        writer.close()

    port = free_port()
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    try:
        async with ControlClient("127.0.0.1", port, timeout=0.5) as c:
            assert await c.call("status", what="x") == {"what": "x"}
            frames = [(f.kind, f.data) async for f in c.stream("exec", pod="p", argv=["ls"])]
            assert frames == [
                ("stream", {"out": "line 1\n"}),
                ("stream", {"err": "oops\n"}),
                ("result", {"exit": 3}),
            ]
            with pytest.raises(ControlNotFound, match=r"missing\?"):
                await c.call("missing")
            with pytest.raises(ControlError) as info:
                await c.call("frobnicate")
            assert info.value.code == "unknown_op"
            with pytest.raises(AgentUnavailable, match=r"no reply within 0\.5 s"):
                await c.call("silent")
    finally:
        server.close()
        await server.wait_closed()
    with pytest.raises(AgentUnavailable, match=f"127.0.0.1:{port} \\(connection refused\\)"):
        async with ControlClient("127.0.0.1", port):
            pass
