"""The CLI and pod-shell against a compose fabric as the Docker engine describes it,
without Docker: a real etcd and scripted control servers on loopback stand for the
containers, whose recorded addresses (127.0.99.x, where nothing listens) are only
reachable through the ports they "publish" on 127.0.0.1. Every command that talks to
an agent or to the internet process must go through :meth:`FabricTarget.reach`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

import msgpack
import pytest
from emunet.control import cli as cli_module
from emunet.control import fabric as fabric_module
from emunet.control import podshell
from emunet.control.cli import app
from emunet.control.fabric import ComposeContainer, DockerView, group_projects
from emunet.nodes.etcd_server import EtcdServer
from emunet.nodes.registry import Registry
from typer.testing import CliRunner

from emunet.cluster.registry import Container, ExternalHostInfo, NodeInfo, Pod, PodPhase

pytestmark = pytest.mark.integration

PROJECT = "emunet-fake"
NET = "127.0.99"  # the "container IPs": loopback addresses nothing listens on


@dataclass
class Agent:
    """A scripted control API: records every request, answers like an agent."""

    name: str
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                (length,) = struct.unpack(">I", await reader.readexactly(4))
                req = msgpack.unpackb(await reader.readexactly(length), raw=False)
                rid, op, args = req["id"], req["op"], dict(req.get("args") or {})
                self.requests.append((op, args))
                frames: list[dict[str, Any]] = []
                if op == "exec":
                    out = f"{' '.join(args['argv'])} ran in {args['pod']} on {self.name}\n"
                    frames.append({"v": 1, "id": rid, "stream": {"out": out}})
                    result: Any = {"exit": 0}
                elif op == "dump":
                    result = {"lines": [f"{args['what']} of {self.name}"]}
                elif op == "status":
                    result = {"name": self.name, "subnet": "10.244.1.0/24", "leases": 2}
                elif op == "trace":
                    hop = [self.name, "root", "eth0", "rx", f"seen by {self.name}", 1.0]
                    result = {"hops": [hop], "result": "delivered" if "pod" in args else ""}
                else:
                    result = None
                frames.append({"v": 1, "id": rid, "ok": True, "result": result})
                for frame in frames:
                    body = msgpack.packb(frame, use_bin_type=True)
                    writer.write(struct.pack(">I", len(body)) + body)
                await writer.drain()
        writer.close()


def inspect(service: str, role: str, ip: str, key: str, port: int) -> dict[str, Any]:
    """A container as `docker inspect` shows it (the sections emunet reads)."""
    return {
        "Name": f"/{PROJECT}_{service}_1",
        "State": {"Status": "running", "Running": True, "Health": {"Status": "healthy"}},
        "Config": {
            "Labels": {
                "com.docker.compose.project": PROJECT,
                "com.docker.compose.service": service,
                "io.emunet.role": role,
                "io.emunet.name": service,
            }
        },
        "NetworkSettings": {
            "Networks": {f"{PROJECT}_nodenet": {"IPAddress": ip}},
            "Ports": {key: [{"HostIp": "127.0.0.1", "HostPort": str(port)}]},
        },
    }


@dataclass
class Fake:
    etcd: EtcdServer
    agents: dict[str, Agent]
    view: DockerView
    runner: CliRunner = field(default_factory=CliRunner)

    async def emunet(self, *args: str, ok: bool = True) -> Any:
        result = await asyncio.to_thread(self.runner.invoke, app, list(args))
        if ok:
            assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        return result

    async def pod_shell(self, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
        def go() -> int:
            try:
                podshell.main(list(args))
            except SystemExit as exc:
                return int(exc.code or 0)
            return 0

        code = await asyncio.to_thread(go)
        out, err = capsys.readouterr()
        return code, out + err


@pytest.fixture
async def fake(
    etcd: EtcdServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> AsyncIterator[Fake]:
    agents = {name: Agent(name) for name in ("node1", "node2", "internet")}
    for agent in agents.values():
        agent.server = await asyncio.start_server(agent.handle, "127.0.0.1", 0)
    etcd_port = int(etcd.endpoint.rpartition(":")[2])
    described = [
        inspect("etcd", "etcd", f"{NET}.2", "2379/tcp", etcd_port),
        inspect("node1", "node", f"{NET}.11", "10250/tcp", agents["node1"].port),
        inspect("node2", "node", f"{NET}.12", "10250/tcp", agents["node2"].port),
        inspect("internet", "internet", f"{NET}.1", "10250/tcp", agents["internet"].port),
    ]
    parsed = [ComposeContainer.from_inspect(a) for a in described]
    view = DockerView(group_projects(c for c in parsed if c is not None))

    def discover(client: Any = None) -> DockerView:
        return view

    monkeypatch.setattr(fabric_module, "discover_compose", discover)
    monkeypatch.setattr(cli_module, "discover_compose", discover)
    # auto selection: no local fabric here, Docker shows the project
    monkeypatch.delenv("EMUNET_FABRIC", raising=False)
    monkeypatch.delenv("EMUNET_ETCD", raising=False)
    monkeypatch.delenv("EMUNET_COMPOSE_PROJECT", raising=False)
    monkeypatch.setenv("EMUNET_STATE", str(tmp_path / "no-local-fabric"))
    async with Registry(etcd.endpoint) as reg:
        for i in (1, 2):
            info = NodeInfo(f"node{i}", IPv4Address(f"{NET}.1{i}"), None, f"{NET}.1{i}:10250")
            await reg.register_node(info, ttl=30)
        pod = Pod("client", node_name="node1", containers=(Container("client", "none", {}, ()),))
        await reg.create_pod(pod)
        await reg.put_pod(
            (await reg.require_pod("default", "client")).with_status(
                PodPhase.RUNNING, IPv4Address("10.244.1.2"), IPv4Address(f"{NET}.11")
            )
        )
        for host in (
            ExternalHostInfo("client", IPv4Address("203.0.113.20"), "internet", "host",
                             ("http:80/tcp",), f"{NET}.1:10250"),
            ExternalHostInfo("gateway", IPv4Address(f"{NET}.1"), "nodes", "gateway", (),
                             f"{NET}.1:10250", IPv4Address("198.51.100.1")),
        ):  # fmt: skip
            await reg.put_host(host)
    try:
        yield Fake(etcd, agents, view)
    finally:
        for agent in agents.values():
            assert agent.server is not None
            agent.server.close()
            await agent.server.wait_closed()


def one_line_error(result: Any, starts: str) -> None:
    assert result.exit_code == 1, (result.stdout, result.stderr)
    err = result.stderr.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"error: {starts}"), err


async def test_status_names_the_compose_fabric(fake: Fake) -> None:
    out = (await fake.emunet("status")).stdout.splitlines()
    assert out[0] == f"compose fabric (project {PROJECT}) up; etcd at {fake.etcd.endpoint}"
    assert out[1].split() == ["NAME", "ROLE", "STATE", "HEALTH", "NODE-IP", "PUBLISHED"]
    rows = [line.split() for line in out[2:]]
    assert [r[:5] for r in rows] == [
        [f"{PROJECT}_etcd_1", "etcd", "running", "healthy", f"{NET}.2"],
        [f"{PROJECT}_node1_1", "node", "running", "healthy", f"{NET}.11"],
        [f"{PROJECT}_node2_1", "node", "running", "healthy", f"{NET}.12"],
        [f"{PROJECT}_internet_1", "internet", "running", "healthy", f"{NET}.1"],
    ]
    assert rows[1][5] == f"127.0.0.1:{fake.agents['node1'].port}"
    doc = json.loads((await fake.emunet("status", "-o", "json")).stdout)
    assert doc["fabric"] == "compose" and doc["project"] == PROJECT
    assert doc["etcd"] == fake.etcd.endpoint
    assert doc["containers"][3]["published"] == f"127.0.0.1:{fake.agents['internet'].port}"


async def test_registry_and_agents_are_reached_through_published_ports(fake: Fake) -> None:
    nodes = (await fake.emunet("get", "nodes")).stdout
    assert "node1   Ready" in nodes and f"{NET}.12" in nodes
    assert (await fake.emunet("conntrack", "node1")).stdout == "conntrack of node1\n"
    assert fake.agents["node1"].requests == [("dump", {"what": "conntrack"})]
    described = (await fake.emunet("describe", "node", "node2")).stdout
    assert "Leases:                 2" in described
    assert fake.agents["node2"].requests == [("status", {})]

    traced = (await fake.emunet("trace", "client", "10.244.2.2")).stdout
    assert "seen by node1" in traced and "seen by node2" in traced
    assert traced.rstrip().endswith("result: delivered")
    probe = [a for op, a in fake.agents["node1"].requests if op == "trace"]
    assert probe and probe[0]["pod"] == "client" and probe[0]["dst"] == "10.244.2.2"

    # the same registry without the translation: the recorded address is not reachable
    one_line_error(
        await fake.emunet("--etcd", fake.etcd.endpoint, "conntrack", "node1", ok=False),
        f"node agent unreachable at {NET}.11:10250",
    )


async def test_pod_shell_in_a_pod_and_on_an_external_host(
    fake: Fake, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = await fake.pod_shell("client", "--", "ip", "addr", capsys=capsys)
    assert (code, out) == (0, "ip addr ran in client on node1\n")
    assert fake.agents["node1"].requests[-1] == ("exec", {"pod": "client", "argv": ["ip", "addr"]})
    code, out = await fake.pod_shell(
        "--external", "client", "--", "curl", "-s", "http://198.51.100.10/", capsys=capsys
    )
    assert (code, out) == (0, "curl -s http://198.51.100.10/ ran in client on internet\n")
    assert fake.agents["internet"].requests[-1][1]["pod"] == "client"

    code, out = await fake.pod_shell("--external", "nobody", "--", "hostname", capsys=capsys)
    assert code == 1
    assert out == "pod-shell: no such external host: nobody (hosts: client, gateway)\n"
    for argv, message in [
        (["--", "hostname"], "give a POD or --external NAME"),
        (["client", "--external", "client"], "give a POD or --external NAME"),
        (["--fabric", "local", "client"], "no etcd endpoint: start a fabric with `emunet up"),
    ]:
        code, out = await fake.pod_shell(*argv, capsys=capsys)
        assert code == 1 and out.startswith(f"pod-shell: {message}"), out
        assert out.count("\n") == 1


async def test_get_hosts(fake: Fake) -> None:
    out = (await fake.emunet("get", "hosts")).stdout.splitlines()
    assert [line.split() for line in out] == [
        ["NAME", "SEGMENT", "IP"],
        ["client", "internet", "203.0.113.20"],
        ["gateway", "nodes", f"{NET}.1"],
    ]
    wide = (await fake.emunet("get", "hosts", "-o", "wide")).stdout.splitlines()
    assert wide[0].split() == ["NAME", "SEGMENT", "IP", "ROLE", "PUBLIC-IP", "APPS"]
    assert wide[1].split() == [
        "client",
        "internet",
        "203.0.113.20",
        "host",
        "<none>",
        "http:80/tcp",
    ]
    assert wide[2].split()[3:] == ["gateway", "198.51.100.1", "<none>"]
    doc = json.loads((await fake.emunet("get", "hosts", "-o", "json")).stdout)
    assert [h["metadata"]["name"] for h in doc["items"]] == ["client", "gateway"]
    assert doc["items"][1]["spec"]["publicIP"] == "198.51.100.1"
    one = json.loads((await fake.emunet("get", "host", "client", "-o", "json")).stdout)
    assert one["kind"] == "ExternalHost" and one["spec"]["ip"] == "203.0.113.20"
    one_line_error(
        await fake.emunet("get", "hosts", "nobody", ok=False), 'hosts "nobody" not found'
    )


def test_cli_error_paths_without_docker(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """`up --compose` and friends: one line each, never a traceback."""
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(app, list(args))

    monkeypatch.setenv("EMUNET_STATE", str(tmp_path / "state"))
    one_line_error(invoke("up", "--local", "--compose"), "--local and --compose exclude")
    one_line_error(
        invoke("up", "--compose", "--agent-arg=-v"), "--agent-arg and --controller-arg are for"
    )
    one_line_error(invoke("up", "--compose-file", "x.yml"), "--compose-file is for --compose")
    one_line_error(
        invoke("up", "--compose", "--compose-file", str(tmp_path / "none.yml")),
        "--compose-file: ",
    )

    def no_docker() -> Any:
        raise ConnectionError("Error while fetching server API version: refused")

    monkeypatch.setattr(fabric_module, "docker_client", no_docker)
    import emunet.control.compose as compose_module

    monkeypatch.setattr(compose_module, "docker_client", no_docker)
    result = invoke("up", "--compose")
    one_line_error(result, "docker is not available (Error while fetching server API version")
    assert "`emunet up --local` runs the fabric without Docker" in result.stderr

    class ImageNotFound(Exception):
        pass

    class Images:
        def get(self, name: str) -> Any:
            raise ImageNotFound(name)

    class Client:
        images = Images()

    monkeypatch.setattr(compose_module, "docker_client", lambda: Client())
    result = invoke("up", "--compose")
    one_line_error(result, "image emunet:latest not found: run `make image`")
    monkeypatch.setenv("EMUNET_IMAGE", "emunet:test")
    one_line_error(invoke("up", "--compose"), "image emunet:test not found: run `make image`")

    # no fabric at all: status says so (status 0), other commands fail with how to start one
    monkeypatch.delenv("EMUNET_FABRIC", raising=False)
    result = invoke("status")
    assert result.exit_code == 0 and result.stdout.startswith("no etcd endpoint: start a fabric")
    assert "docker is not available" in result.stdout
    result = invoke("get", "pods")
    one_line_error(result, "no etcd endpoint: start a fabric with `emunet up --local`")
    assert "`emunet up --compose`" in result.stderr and "`make up`" in result.stderr
    result = invoke("down")
    assert result.exit_code == 0 and result.stdout.startswith("no fabric to stop (no local fabric")
