"""The container fabric (issue 10, acceptance 1-5): the image, `docker-compose up`
of etcd, three nodes and the internet, driven from the host as a user drives it
(the emunet CLI and pod-shell find the fabric through the Docker SDK).

The project gets its own name, and the compose file's own node network
(172.18.0.0/24) unless another network on this engine holds it (a fabric the
user runs, kind's network): then a free one, as `emunet up --compose` picks it.
It is removed at the end (`down -v`) and the last test checks that nothing of it
is left.
"""

from __future__ import annotations

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
PROJECT = f"emunet-e2e-{os.getpid()}"


def _prefix() -> str:
    """The compose file's node network where it is free, else a free one."""
    import docker
    from emunet.control.compose import node_network_prefix

    return node_network_prefix(docker.from_env(), PROJECT)


PREFIX = ["172.18.0"]  # set by the fixture


def node_ips() -> dict[str, str]:
    return {f"node{i}": f"{PREFIX[0]}.{10 + i}" for i in (1, 2, 3)}


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def compose_command() -> list[str]:
    """`docker compose` (v2) where it exists, else `docker-compose` (v1.29)."""
    v2 = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=20)
    if v2.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("neither `docker compose` nor `docker-compose` is installed")


def env(state: Path) -> dict[str, str]:
    out = {
        **os.environ,
        "EMUNET_NET_PREFIX": PREFIX[0],
        "COMPOSE_PROJECT_NAME": PROJECT,
        "EMUNET_FABRIC": "compose",
        "EMUNET_COMPOSE_PROJECT": PROJECT,
        "EMUNET_STATE": str(state),
    }
    out.pop("EMUNET_ETCD", None)
    return out


class Fabric:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.env = env(state)
        self.compose = [*compose_command(), "-f", str(COMPOSE_FILE), "-p", PROJECT]
        self.up_seconds = 0.0

    def run(
        self, *argv: str, timeout: float = 120, cwd: Path = ROOT
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv), capture_output=True, text=True, env=self.env, timeout=timeout, cwd=cwd
        )

    # the CLI runs outside the checkout: its emunet/ folder would shadow the package
    def emunet(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        code = "from emunet.control.cli import main; main()"
        return self.run(sys.executable, "-c", code, *args, timeout=timeout, cwd=self.state)

    def shell(self, *args: str) -> subprocess.CompletedProcess[str]:
        code = "from emunet.control.podshell import main; main()"
        return self.run(sys.executable, "-c", code, *args, timeout=90, cwd=self.state)

    def container(self, service: str) -> Any:
        import docker

        client = docker.from_env()
        found = client.containers.list(
            all=True,
            filters={
                "label": [
                    f"com.docker.compose.project={PROJECT}",
                    f"com.docker.compose.service={service}",
                ]
            },
        )
        assert len(found) == 1, (service, found)
        return found[0]

    def etcdctl(self, *args: str) -> str:
        code, out = self.container("etcd").exec_run(["etcdctl", *args])
        assert code == 0, out
        return str(out.decode())

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


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def fabric(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fabric]:
    if not _docker_answers():
        pytest.skip("no Docker engine answers here")
    build = subprocess.run(
        ["make", "--no-print-directory", "image"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    PREFIX[0] = _prefix()
    fab = Fabric(tmp_path_factory.mktemp("compose-state"))
    start = time.monotonic()
    up = fab.run(*fab.compose, "up", "-d", timeout=300)
    try:
        assert up.returncode == 0, up.stderr

        def ready() -> bool:
            out = fab.emunet("get", "nodes").stdout
            return out.count(" Ready ") == 3

        wait_until(ready, 60, "three Ready nodes")
        fab.up_seconds = time.monotonic() - start
        yield fab
    finally:
        fab.run(*fab.compose, "down", "-v", "--remove-orphans", timeout=180)


def test_1_three_nodes_ready_with_flannel_leases_in_etcd(fabric: Fabric) -> None:
    assert fabric.up_seconds < 30, f"up to Ready took {fabric.up_seconds:.1f} s"
    out = fabric.emunet("get", "nodes").stdout
    for name, ip in node_ips().items():
        assert re.search(rf"{name}\s+Ready\s+{re.escape(ip)}\s+10\.244\.\d+\.0/24", out), out
    keys = fabric.etcdctl("get", "--prefix", "/coreos.com/network/subnets").splitlines()
    leases = dict(zip(keys[::2], keys[1::2], strict=True))
    assert len(leases) == 3
    for key, value in leases.items():
        assert re.fullmatch(r"/coreos\.com/network/subnets/10\.244\.\d+\.0-24", key), key
        assert json.loads(value)["PublicIP"] in node_ips().values()
    config = json.loads(fabric.etcdctl("get", "--print-value-only", "/coreos.com/network/config"))
    assert config["Network"] == "10.244.0.0/16" and config["Backend"]["Type"] == "udp"
    status = fabric.emunet("status")
    assert status.returncode == 0 and "compose" in status.stdout and PROJECT in status.stdout


def test_1_the_nodes_run_the_compiled_core(fabric: Fabric) -> None:
    """The image installs the wheel setup.py compiles with mypyc (issue 13)."""
    code = (
        "import emunet.dataplane.netns as n, emunet.packets.mac as m; print(n.__file__, m.__file__)"
    )
    out = fabric.run(*fabric.compose, "exec", "-T", "node1", "/opt/emunet/bin/python3", "-c", code)
    assert out.returncode == 0, out.stderr
    netns, mac = out.stdout.split()
    assert netns.endswith(".so") and mac.endswith(".py"), out.stdout


def test_2_services_reached_from_pods_the_lan_and_the_internet(fabric: Fabric) -> None:
    e = fabric.emunet
    assert e("run", "web", "--app", "http", "--replicas", "3").returncode == 0
    assert e("run", "client", "--app", "none", "--node", "node1").returncode == 0
    r = e("expose", "web", "--port", "80", "--type", "NodePort", "--name", "web-np")
    assert r.returncode == 0, r.stderr
    r = e("expose", "web", "--port", "80", "--type", "LoadBalancer", "--name", "web-lb")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: len(fabric.pods("web-")) == 3 and fabric.pods("client"), 30, "pods")
    webs = fabric.pods("web-")
    assert {w["node"] for w in webs.values()} == set(node_ips())  # spread over the nodes
    client = next(iter(fabric.pods("client")))

    svc = json.loads(e("get", "svc", "web-np", "-o", "json").stdout)
    cluster_ip = svc["spec"]["clusterIP"]
    node_port = svc["spec"]["ports"][0]["nodePort"]

    def backends(url: str, n: int = 30) -> set[str]:
        seen = set()
        for _ in range(n):
            out = fabric.shell(client, "--", "curl", "-s", "-m", "2", url).stdout
            seen.add(out.split("\n", 1)[0])
        return seen

    wait_until(
        lambda: backends(f"http://{cluster_ip}/") == {f"Hostname: {n}" for n in webs},
        60,
        "the ClusterIP to reach all three backends in 30 requests",
    )
    far = next(w for w in webs.values() if w["node"] != "node1")
    r = fabric.shell(client, "--", "ping", "-c", "2", "-i", "0.2", far["ip"])
    assert r.returncode == 0 and "2 received" in r.stdout, r
    r = fabric.shell(client, "--", "traceroute", "-n", "-w", "0.5", far["ip"])
    assert r.returncode == 0 and far["ip"] in r.stdout.splitlines()[-1], r.stdout

    # a machine on the node network reaches the NodePort at every node IP
    for ip in node_ips().values():
        r = fabric.shell(
            "--external", "vm", "--", "curl", "-s", "-m", "3", f"http://{ip}:{node_port}/"
        )
        assert r.returncode == 0 and r.stdout.startswith("Hostname: web-"), (ip, r)

    # a client on the internet reaches the LoadBalancer IP the cloud assigned
    def lb_ip() -> str:
        doc = json.loads(e("get", "svc", "web-lb", "-o", "json").stdout)
        ingress = doc["status"]["loadBalancer"].get("ingress") or [{}]
        return str(ingress[0].get("ip", ""))

    wait_until(lambda: lb_ip().startswith("198.51.100."), 20, "the LoadBalancer's ingress IP")
    assert lb_ip() in e("get", "svc").stdout
    r = fabric.shell("--external", "client", "--", "curl", "-s", "-m", "3", f"http://{lb_ip()}/")
    assert r.returncode == 0 and r.stdout.startswith("Hostname: web-"), r
    hosts = e("get", "hosts").stdout
    assert re.search(r"vm\s+nodes\s+" + re.escape(f"{PREFIX[0]}.100"), hosts), hosts


def test_3_pod_to_internet_is_masqueraded_twice(fabric: Fabric) -> None:
    client = next(iter(fabric.pods("client")))
    r = fabric.shell(client, "--", "curl", "-s", "-m", "3", "http://203.0.113.10/")
    assert r.returncode == 0 and "hello from example to 198.51.100.1:" in r.stdout, r
    ct = fabric.emunet("conntrack", "node1").stdout
    pattern = rf"dst=203\.0\.113\.10 .*src=203\.0\.113\.10 dst={re.escape(node_ips()['node1'])} "
    assert re.search(pattern, ct), ct


def test_4_capture_on_node2_eth0_decodes_as_flannel_udp(fabric: Fabric, tmp_path: Path) -> None:
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    client = next(iter(fabric.pods("client")))
    target = next(w for w in fabric.pods("web-").values() if w["node"] == "node2")
    pcap = tmp_path / "overlay.pcap"
    cap = subprocess.Popen(
        [
            sys.executable, "-c", "from emunet.control.cli import main; main()",
            "capture", "node2", "eth0", "-w", str(pcap), "--count", "12", "--timeout", "30",
        ],
        env=fabric.env, cwd=fabric.state, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        time.sleep(1.0)
        for _ in range(4):
            fabric.shell(client, "--", "curl", "-s", "-m", "2", f"http://{target['ip']}/")
            if cap.poll() is not None:
                break
        _out, err = cap.communicate(timeout=40)
    finally:
        if cap.poll() is None:
            cap.kill()
    assert cap.returncode == 0, err
    fields = subprocess.run(
        [
            "tshark", "-r", str(pcap), "-d", "udp.port==8285,ip", "-T", "fields",
            "-e", "udp.dstport", "-e", "ip.src", "-e", "ip.dst", "-e", "tcp.dstport",
        ],
        capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    rows = [line.split("\t") for line in fields.splitlines()]
    inner = [r for r in rows if "8285" in r[0] and target["ip"] in r[2] and r[3]]
    assert inner, fields  # UDP 8285 carrying IPv4 (outer, inner) carrying the TCP stream


def test_5_a_killed_node_comes_back_with_its_subnet_and_pods(fabric: Fabric) -> None:
    client = next(iter(fabric.pods("client")))
    node2 = fabric.container("node2")
    target = next(w for w in fabric.pods("web-").values() if w["node"] == "node2")
    before = fabric.emunet("get", "nodes").stdout
    subnet = re.search(r"node2\s+\S+\s+\S+\s+(10\.244\.\d+\.0/24)", before)
    assert subnet is not None
    node2.kill()
    r = fabric.shell(client, "--", "curl", "-m", "2", f"http://{target['ip']}/")
    assert r.returncode == 28 and "timed out" in r.stderr, r  # curl says why
    node2.start()
    wait_until(lambda: "node2   Ready" in fabric.emunet("get", "nodes").stdout, 30, "node2 Ready")
    after = fabric.emunet("get", "nodes").stdout
    assert re.search(rf"node2\s+Ready\s+\S+\s+{re.escape(subnet.group(1))}", after), after

    def recovered() -> bool:
        r = fabric.shell(client, "--", "curl", "-s", "-m", "2", f"http://{target['ip']}/")
        return r.returncode == 0 and r.stdout.startswith("Hostname: web-")

    wait_until(recovered, 30, "traffic to node2's pod to recover")


def test_6_down_leaves_nothing_of_the_project(fabric: Fabric) -> None:
    import docker

    down = fabric.run(*fabric.compose, "down", "-v", "--remove-orphans", timeout=180)
    assert down.returncode == 0, down.stderr
    client = docker.from_env()
    label = f"com.docker.compose.project={PROJECT}"
    assert client.containers.list(all=True, filters={"label": label}) == []
    assert client.networks.list(filters={"label": label}) == []
    assert client.volumes.list(filters={"label": label}) == []
