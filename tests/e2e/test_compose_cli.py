"""The host side of the container fabric, against real containers: `emunet up --compose`
(with a generated fourth node), the CLI and pod-shell finding the project through the
Docker SDK and reaching etcd and every agent through the ports published on 127.0.0.1,
`docker-compose exec node1 pod-shell POD` inside the fabric, and `emunet down`.

The project has its own name and node network, and runs from a temporary directory
(the generated nodes file goes there), so a fabric the user runs is not touched; the
module removes whatever it started (`down -v --remove-orphans`)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose" / "docker-compose.yml"
PROJECT = f"emunet-cli-{os.getpid()}"
PREFIX = "172.29.88"  # this module's node network
IMAGE = os.environ.get("EMUNET_IMAGE") or "emunet:latest"


def roles() -> list[str]:
    """The roles of the compose file's services plus node4, in `emunet status` order."""
    from emunet.control.compose import load_compose
    from emunet.control.fabric import ROLES

    found = [
        svc["labels"]["io.emunet.role"] for svc in load_compose(COMPOSE_FILE)["services"].values()
    ]
    found.append("node")  # node4, generated
    return sorted(found, key=lambda r: ROLES.index(r) if r in ROLES else len(ROLES))


def _why_not() -> str:
    """Why the compose tier cannot run here ("" when it can)."""
    if shutil.which("docker") is None:
        return "docker is not installed"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"no Docker engine answers ({exc})"
    if info.returncode != 0:
        return "no Docker engine answers (`docker info` failed)"
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=20)
    if probe.returncode != 0 and shutil.which("docker-compose") is None:
        return "neither `docker compose` nor `docker-compose` is installed"
    image = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, timeout=20)
    if image.returncode != 0:
        return f"image {IMAGE} not found: run `make image`"
    return ""


def compose_command() -> list[str]:
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=20)
    return ["docker", "compose"] if probe.returncode == 0 else ["docker-compose"]


class Fabric:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.env = {
            **os.environ,
            "EMUNET_COMPOSE_PROJECT": PROJECT,
            "EMUNET_NET_PREFIX": PREFIX,
            "EMUNET_COMPOSE_FILE": str(COMPOSE_FILE),
            "EMUNET_STATE": str(work / "no-local-fabric"),
        }
        for name in ("EMUNET_FABRIC", "EMUNET_ETCD"):  # found by itself, as a user's would be
            self.env.pop(name, None)
        self.extra = work / ".emunet-compose" / f"{PROJECT}.nodes.yml"
        self.compose = [*compose_command(), "-p", PROJECT]
        self.up: subprocess.CompletedProcess[str] | None = None

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv), capture_output=True, text=True, env=self.env, cwd=self.work, timeout=timeout
        )

    def emunet(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        code = "from emunet.control.cli import main; main()"
        return self.run(sys.executable, "-c", code, *args, timeout=timeout)

    def shell(self, *args: str) -> subprocess.CompletedProcess[str]:
        code = "from emunet.control.podshell import main; main()"
        return self.run(sys.executable, "-c", code, *args, timeout=90)

    def files(self) -> list[str]:
        out = ["-f", str(COMPOSE_FILE)]
        if self.extra.exists():
            out += ["-f", str(self.extra)]
        return out

    def pods(self, prefix: str) -> dict[str, dict[str, str]]:
        items = json.loads(self.emunet("get", "pods", "-o", "json").stdout)["items"]
        return {
            p["metadata"]["name"]: {
                "ip": p["status"].get("podIP", ""),
                "node": p["spec"]["nodeName"],
            }
            for p in items
            if p["metadata"]["name"].startswith(prefix) and p["status"].get("phase") == "Running"
        }


def leftovers() -> dict[str, list[Any]]:
    import docker

    client = docker.from_env()
    label = {"label": f"com.docker.compose.project={PROJECT}"}
    return {
        "containers": client.containers.list(all=True, filters=label),
        "networks": client.networks.list(filters=label),
        "volumes": client.volumes.list(filters=label),
    }


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def fabric(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fabric]:
    why = _why_not()
    if why:
        pytest.skip(why)
    fab = Fabric(tmp_path_factory.mktemp("compose-cli"))
    try:
        fab.up = fab.emunet("up", "--compose", "--nodes", "4", timeout=240)
        yield fab
    finally:
        files = fab.files()
        fab.run(*fab.compose, *files, "down", "-v", "--remove-orphans", timeout=180)


def test_up_compose_with_a_generated_fourth_node(fabric: Fabric) -> None:
    up = fabric.up
    assert up is not None and up.returncode == 0, (up.stdout if up else "", up.stderr if up else "")
    lines = up.stdout.splitlines()
    assert re.fullmatch(
        rf"compose fabric \(project {PROJECT}\); etcd at 127\.0\.0\.1:\d+", lines[0]
    )
    assert lines[1].split() == ["NAME", "STATUS", "INTERNAL-IP", "POD-CIDR"]
    for i, line in enumerate(lines[2:], start=1):
        assert re.fullmatch(rf"node{i}\s+Ready\s+{PREFIX}\.{10 + i}\s+10\.244\.\d+\.0/24", line)
    assert len(lines) == 6
    n = len(roles())
    assert f"... containers healthy {n}/{n}, nodes Ready 4/4" in up.stderr
    assert "... docker" in up.stderr and "up -d: project" in up.stderr  # compose's progress
    assert "--name=node4" in fabric.extra.read_text()
    # the flannel leases of all four nodes are in etcd
    etcd = f"{PROJECT}_etcd_1"
    leases = subprocess.run(
        ["docker", "exec", etcd, "etcdctl", "get", "--prefix", "--keys-only",
         "/coreos.com/network/subnets"],
        capture_output=True, text=True, timeout=30,
    ).stdout.split()  # fmt: skip
    assert len(leases) == 4, leases


def test_status_names_the_project_and_its_published_ports(fabric: Fabric) -> None:
    import docker

    status = fabric.emunet("status")
    assert status.returncode == 0, status.stderr
    head, *table = status.stdout.splitlines()
    assert re.fullmatch(rf"compose fabric \(project {PROJECT}\) up; etcd at 127\.0\.0\.1:\d+", head)
    rows = {r.split()[0]: r.split() for r in table[1:]}
    assert [r[1] for r in rows.values()] == roles()
    doc = json.loads(fabric.emunet("status", "-o", "json").stdout)
    assert doc["project"] == PROJECT and len(doc["containers"]) == len(roles())
    client = docker.from_env()
    for c in doc["containers"]:
        assert (c["state"], c["health"]) == ("running", "healthy")
        attrs = client.containers.get(c["name"]).attrs
        key = "2379/tcp" if c["role"] == "etcd" else "10250/tcp"
        bindings = attrs["NetworkSettings"]["Ports"].get(key)
        if not bindings:  # a service without a control API (the controller manager)
            assert c["published"] is None and rows[c["name"]][5] == "-"
            continue
        (binding,) = bindings
        assert c["published"] == f"127.0.0.1:{binding['HostPort']}"
        assert rows[c["name"]][5] == c["published"]
        assert doc["etcd"] == c["published"] or c["role"] != "etcd"


def test_every_recorded_endpoint_is_reached_on_loopback(fabric: Fabric) -> None:
    """Nothing relies on routing to container IPs: etcd and every control endpoint the
    registry records is reached at 127.0.0.1 (and answers there)."""
    from emunet.control.fabric import FabricKind, select_target
    from emunet.nodes.control_client import ControlClient
    from emunet.nodes.registry import Registry

    env = {k: v for k, v in fabric.env.items() if k.startswith("EMUNET_")}
    target = select_target(env=env)
    assert target.kind == FabricKind.COMPOSE and target.etcd.startswith("127.0.0.1:")
    assert target.token, "emunet up --compose gives every container a control token"

    async def check() -> list[str]:
        seen = []
        async with Registry(target.etcd) as reg:
            nodes, hosts = await reg.nodes(), await reg.hosts()
        endpoints = [n.control_endpoint for n in nodes] + [h.control_endpoint for h in hosts]
        assert len(nodes) == 4 and {h.name for h in hosts} >= {"vm", "client", "example"}
        for endpoint in endpoints:
            assert endpoint.startswith(f"{PREFIX}.")  # what the processes record
            host, port = target.reach(endpoint)
            assert host == "127.0.0.1" and port != 10250
            async with ControlClient(host, port, timeout=5.0, token=target.token) as c:
                status = await c.call("status")
            seen.append(str(status.get("name", "")) if isinstance(status, dict) else "")
        return seen

    names = asyncio.run(check())
    assert {"node1", "node2", "node3", "node4"} <= set(names)


def test_cli_and_pod_shell_on_the_discovered_fabric(fabric: Fabric) -> None:
    e = fabric.emunet
    r = e("run", "web", "--app", "http", "--replicas", "2", "--node", "node4")
    assert r.returncode == 0, r.stderr
    assert e("run", "client", "--app", "none", "--node", "node1").returncode == 0
    r = e("expose", "web", "--port", "80", "--type", "NodePort")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: len(fabric.pods("web-")) == 2 and bool(fabric.pods("client")), 30, "pods")
    client = next(iter(fabric.pods("client")))
    web = next(iter(fabric.pods("web-").values()))
    r = fabric.shell(client, "--", "curl", "-s", "-m", "3", f"http://{web['ip']}/")
    assert r.returncode == 0 and r.stdout.startswith("Hostname: web-"), r
    r = fabric.shell(client, "--", "curl", "-s", "-m", "3", "http://web/")
    assert r.returncode == 0 and "Node: node4" in r.stdout, r
    assert "src=" in e("conntrack", "node4").stdout
    traced = e("trace", client, "web:80", "--proto", "tcp")
    assert traced.returncode == 0 and "node4" in traced.stdout, traced

    # the node-network host reaches the NodePort on node4's IP
    svc = json.loads(e("get", "svc", "web", "-o", "json").stdout)
    node_port = svc["spec"]["ports"][0]["nodePort"]
    url = f"http://{PREFIX}.14:{node_port}/"
    r = fabric.shell("--external", "vm", "--", "curl", "-s", "-m", "3", url)
    assert r.returncode == 0 and r.stdout.startswith("Hostname: web-"), r
    hosts = e("get", "hosts", "-o", "wide").stdout
    assert re.search(rf"^vm\s+nodes\s+{re.escape(PREFIX)}\.100\s+host\s", hosts, re.M), hosts
    r = fabric.shell("--external", "nobody", "--", "hostname")
    assert r.returncode == 1 and r.stderr.startswith("pod-shell: no such external host: nobody")


def test_inside_a_container_the_compose_etcd_is_used_as_given(fabric: Fabric) -> None:
    """`docker-compose exec node1 pod-shell POD`: EMUNET_ETCD=etcd:2379 is explicit."""
    client = next(iter(fabric.pods("client")))
    exec_ = [*fabric.compose, *fabric.files(), "exec", "-T", "node1"]
    r = fabric.run(*exec_, "pod-shell", client, "--", "curl", "-s", "-m", "3", "http://web/")
    assert r.returncode == 0 and "Node: node4" in r.stdout, (r.stdout, r.stderr)
    r = fabric.run(*exec_, "emunet", "status")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("the fabric of etcd etcd:2379 (from $EMUNET_ETCD)"), r.stdout
    assert "node4   Ready" in r.stdout


def test_bench_quick_on_the_compose_fabric(fabric: Fabric) -> None:
    """`emunet bench` on the containers: every path through the published control
    ports, then its objects deleted."""
    out = fabric.emunet("--fabric", "compose", "bench", "--quick", "-o", "json", timeout=600)
    assert out.returncode == 0, out.stderr
    (found,) = json.loads(out.stdout)["fabrics"]
    assert found["kind"] == "compose"
    for key, path in found["paths"].items():
        assert path["tcp_bps"] > 1e6, key
        assert all(u["zero_loss_pps"] > 0 for u in path["udp"].values()), key
        assert path["latency"]["light"]["p50"] > 0, key
    # the internet and vm containers are separate processes: each has its CPU figure
    cpu = found["paths"]["nodeport"]["udp"]["1400"]["cpu_us_per_packet"]
    assert {"internet", "vm", "node2"} <= set(cpu)
    assert not fabric.pods("bench-")


def test_up_again_changes_nothing(fabric: Fabric) -> None:
    before = {c["name"]: c["published"] for c in json.loads(
        fabric.emunet("status", "-o", "json").stdout)["containers"]}  # fmt: skip
    again = fabric.emunet("up", "--compose", "--nodes", "4")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count(" Ready ") == 4
    after = {c["name"]: c["published"] for c in json.loads(
        fabric.emunet("status", "-o", "json").stdout)["containers"]}  # fmt: skip
    assert after == before  # the same containers, the same ports


def test_down_stops_the_project_and_leaves_nothing(fabric: Fabric) -> None:
    down = fabric.emunet("down")
    assert down.returncode == 0, down.stderr
    assert down.stdout.startswith(f"stopped compose fabric (project {PROJECT}): {PROJECT}_etcd_1")
    assert down.stdout.rstrip().endswith("removed its network and volumes")
    assert leftovers() == {"containers": [], "networks": [], "volumes": []}
    assert not fabric.extra.exists()
    status = fabric.emunet("status")
    assert status.returncode == 0 and status.stdout.startswith("no etcd endpoint"), status
