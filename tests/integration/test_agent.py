"""Three real agent processes (``python -m emunet.nodes``) and a real etcd on loopback.

The agents run on 127.0.0.11-13 (overlay 8285, wire 8286, control 10250 on
each address), as ``emunet up --local`` places them; set
``EMUNET_TEST_AGENT_IPS=127.0.5.11,127.0.5.12,127.0.5.13`` to use other
addresses while a local fabric is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import aetcd
import pytest
from emunet.nodes.control_client import ControlError, call
from emunet.nodes.etcd_server import EtcdServer
from emunet.nodes.registry import Registry

from emunet.cluster import registry as model

pytestmark = pytest.mark.integration

IPS = [
    IPv4Address(a)
    for a in os.environ.get("EMUNET_TEST_AGENT_IPS", "127.0.0.11,127.0.0.12,127.0.0.13").split(",")
]
CONTROL_PORT = 10250
SUBNET_KEY = re.compile(r"^/coreos\.com/network/subnets/10\.244\.(\d+)\.0-24$")


async def wait_for(
    cond: Callable[[], Awaitable[bool]], timeout: float, what: str, step: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await cond():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(step)


class Cluster:
    """An etcd, three agents, and helpers to drive them like the CLI does."""

    def __init__(self, etcd: EtcdServer, root: Path, agent_args: list[str]) -> None:
        self.etcd = etcd
        self.root = root
        self.agent_args = agent_args
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.reg = Registry(etcd.endpoint)

    def name(self, i: int) -> str:
        return f"node{i + 1}"

    def state_dir(self, i: int) -> Path:
        return self.root / self.name(i)

    async def start_agent(self, i: int) -> None:
        log = open(self.root / f"{self.name(i)}.log", "a")  # noqa: SIM115 (kept by the child)
        self.procs[i] = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "emunet.nodes",
            "--name",
            self.name(i),
            "--node-ip",
            str(IPS[i]),
            "--etcd",
            self.etcd.endpoint,
            "--control-port",
            str(CONTROL_PORT),
            "--state-dir",
            str(self.state_dir(i)),
            "--seed",
            str(i + 1),
            *self.agent_args,
            stdout=log,
            stderr=log,
            cwd=self.root,  # not the repo root: its emunet/ would shadow the installed one
        )
        log.close()

    async def kill(self, i: int, sig: int = signal.SIGKILL) -> int:
        proc = self.procs.pop(i)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        return await proc.wait()

    async def stop_all(self) -> None:
        for i in list(self.procs):
            proc = self.procs[i]
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self.procs.clear()

    def log(self, i: int) -> str:
        return (self.root / f"{self.name(i)}.log").read_text()

    async def ready_nodes(self) -> set[str]:
        try:
            return {n.name for n in await self.reg.nodes() if n.ready}
        except Exception:
            return set()

    async def pod(
        self, name: str, node: int, app: str = "http", labels: dict[str, str] | None = None
    ) -> None:
        await self.reg.create_pod(
            model.Pod(
                name,
                node_name=self.name(node),
                labels=labels or {"app": name},
                containers=(model.Container("main", app),),
            )
        )

    async def running(self, name: str, timeout: float = 10.0) -> model.Pod:
        found: list[model.Pod] = []

        async def ok() -> bool:
            p = await self.reg.get_pod("default", name)
            if p is not None and p.phase == model.PodPhase.RUNNING and p.pod_ip is not None:
                found.append(p)
                return True
            return False

        await wait_for(ok, timeout, f"pod {name} Running")
        return found[-1]

    async def exec(self, node: int, pod: str, *argv: str, timeout: float = 30.0) -> tuple[int, str]:
        out: list[str] = []

        def stream(s: Any) -> None:
            out.append(str(s.get("out", "")) + str(s.get("err", "")))

        result = await call(
            str(IPS[node]),
            CONTROL_PORT,
            "exec",
            {"pod": pod, "argv": list(argv)},
            on_stream=stream,
            timeout=timeout,
        )
        return int(result["exit"]), "".join(out)

    async def control(self, node: int, op: str, **args: Any) -> Any:
        return await call(str(IPS[node]), CONTROL_PORT, op, args, timeout=10)


@contextlib.asynccontextmanager
async def cluster_of(etcd: EtcdServer, root: Path, *agent_args: str) -> AsyncIterator[Cluster]:
    c = Cluster(etcd, root, list(agent_args))
    await c.reg.__aenter__()
    try:
        for i in range(3):
            await c.start_agent(i)

        async def all_ready() -> bool:
            if any(p.returncode is not None for p in c.procs.values()):
                raise AssertionError("an agent exited:\n" + "\n".join(c.log(i) for i in range(3)))
            return len(await c.ready_nodes()) == 3

        try:
            await wait_for(all_ready, 20, "3 Ready nodes")
        except AssertionError:
            logs = "\n".join(c.log(i)[-2000:] for i in range(3))
            raise AssertionError(f"agents did not become Ready:\n{logs}") from None
        yield c
    finally:
        await c.stop_all()
        await c.reg.close()


@pytest.fixture
async def cluster(etcd: EtcdServer, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with cluster_of(etcd, tmp_path, "--node-lease-ttl", "3", "--allow-module-apps") as c:
        yield c


async def subnet_leases(etcd: EtcdServer) -> dict[str, bytes]:
    client = aetcd.Client(etcd.host, etcd.client_port, timeout=5)
    try:
        kvs = await client.get_prefix(b"/coreos.com/network/subnets/")
        return {kv.key.decode(): kv.value for kv in kvs}
    finally:
        await client.close()


async def test_three_nodes_ready_with_flannel_leases(cluster: Cluster) -> None:
    leases = await subnet_leases(cluster.etcd)
    assert len(leases) == 3
    by_ip = {}
    for key, value in leases.items():
        assert SUBNET_KEY.match(key), key
        doc = json.loads(value)
        assert (
            value
            == json.dumps(
                {"PublicIP": doc["PublicIP"], "PublicIPv6": None}, separators=(",", ":")
            ).encode()
        )
        by_ip[doc["PublicIP"]] = key
    assert set(by_ip) == {str(ip) for ip in IPS}
    nodes = {n.name: n for n in await cluster.reg.nodes()}
    for i in range(3):
        node = nodes[cluster.name(i)]
        assert node.ready and node.control_endpoint == f"{IPS[i]}:{CONTROL_PORT}"
        env = (cluster.state_dir(i) / "subnet.env").read_text()
        assert "FLANNEL_NETWORK=10.244.0.0/16\n" in env
        assert f"FLANNEL_SUBNET={IPv4Network(node.pod_cidr).network_address + 1}/24" in env

        async def peers_known(i: int = i) -> bool:  # the lease watch delivers peers soon after
            return int((await cluster.control(i, "status"))["leases"]) == 2

        await wait_for(peers_known, 10, f"{cluster.name(i)} to know both peers' leases")
        status = await cluster.control(i, "status")
        assert status["name"] == cluster.name(i) and status["leases"] == 2
        assert status["subnet"] == str(node.pod_cidr)
        key = by_ip[str(IPS[i])]
        assert key.endswith(str(node.pod_cidr).replace("/", "-"))


async def test_pod_to_pod_and_service_across_nodes(cluster: Cluster) -> None:
    await cluster.pod("client", 0, app="none")
    for i in range(3):
        await cluster.pod(f"web-{i}", i, labels={"app": "web"})
    await cluster.reg.create_service(
        model.Service(
            "web",
            type=model.ServiceType.NODE_PORT,
            selector={"app": "web"},
            ports=(model.ServicePortSpec(80, 80),),
        )
    )
    web2 = await cluster.running("web-2")
    for i in range(2):
        await cluster.running(f"web-{i}")
    await cluster.running("client")
    code, out = await cluster.exec(0, "client", "ping", "-c", "3", "-i", "0.2", "web-2")
    assert code == 0, out
    assert f"PING web-2 ({web2.pod_ip}) 56(84) bytes of data." in out
    assert "3 packets transmitted, 3 received, 0% packet loss" in out
    rtt = re.search(r"rtt min/avg/max/mdev = [\d.]+/([\d.]+)/", out)
    assert rtt is not None
    print(f"\npod-to-pod ping across two agent processes: avg rtt {rtt.group(1)} ms")
    code, out = await cluster.exec(0, "client", "curl", "-s", "http://web-2/")
    assert code == 0 and f"Hostname: web-2\nIP: 127.0.0.1\nIP: {web2.pod_ip}\n" in out
    # the ClusterIP spreads over the three backends, on three nodes

    async def synced() -> bool:
        lines = (await cluster.control(0, "dump", what="iptables"))["lines"]
        return sum(1 for line in lines if line.startswith("-A KUBE-SEP-") and "DNAT" in line) == 3

    await wait_for(synced, 10, "kube-proxy rules with 3 endpoints")
    seen: set[str] = set()
    for _ in range(30):
        code, out = await cluster.exec(0, "client", "curl", "-s", "web.default.svc.cluster.local")
        assert code == 0, out
        seen.add(out.split("\n", 1)[0])
    assert seen == {"Hostname: web-0", "Hostname: web-1", "Hostname: web-2"}
    svc = await cluster.reg.get_service("default", "web")
    assert svc is not None
    node_port = svc.ports[0].node_port
    # every node's kube-proxy programs the NodePort (pods cannot reach 127/8 node
    # IPs: that is their own loopback network, as on Linux)
    for i in range(3):
        lines = (await cluster.control(i, "dump", what="iptables"))["lines"]
        assert any(
            line.startswith("-A KUBE-NODEPORTS") and f"--dport {node_port}" in line
            for line in lines
        ), lines
    await cluster.pod("sink", 1, app="sink")
    await cluster.running("sink")
    code, out = await cluster.exec(0, "client", "iperf", "-c", "sink", "-t", "2")
    rate = re.search(r"sec\s+[\d.]+ \w+\s+([\d.]+ [KMG]bits/sec)", out)
    assert code == 0 and rate is not None, out
    print(f"iperf across two agent processes: {rate.group(1)}")
    # iperf -u: paced datagrams, the server's report (loss, jitter) back to the client
    server = asyncio.create_task(cluster.exec(1, "sink", "iperf", "-s", "-u", "-t", "5"))
    await asyncio.sleep(0.5)
    code, out = await cluster.exec(0, "client", "iperf", "-c", "sink", "-u", "-b", "2M", "-t", "2")
    assert code == 0 and "Sending 1470 byte datagrams" in out and "Server Report:" in out, out
    sent = int(re.search(r"Sent (\d+) datagrams", out).group(1))  # type: ignore[union-attr]
    assert 300 <= sent <= 360, out  # 2 Mbit/s of 1470 B for 2 s: 340
    report = re.search(r"ms\s+(\d+)/\s*(\d+) \(", out)
    assert report is not None and int(report.group(2)) == sent, out
    code, served = await server
    assert code == 0 and f"/{sent:5d} (" in served, served
    print("iperf -u across two agent processes:", out.splitlines()[-1])
    code, out = await cluster.exec(0, "client", "traceroute", "-n", "-w", "0.5", "web-2")
    assert code == 0
    assert out.splitlines()[2] == " 2  * * *" and str(web2.pod_ip) in out.splitlines()[-1]


async def test_kill_and_restart_agent(cluster: Cluster) -> None:
    await cluster.pod("client", 0, app="none")
    await cluster.pod("target", 2)
    target = await cluster.running("target")
    await cluster.running("client")
    code, _ = await cluster.exec(0, "client", "ping", "-c", "1", "target")
    assert code == 0
    subnet_before = (await cluster.control(2, "status"))["subnet"]
    assert await cluster.kill(2) == -signal.SIGKILL
    code, out = await cluster.exec(
        0, "client", "ping", "-c", "2", "-i", "0.2", "-W", "0.5", "target"
    )
    assert code == 1 and "2 packets transmitted, 0 received, 100% packet loss" in out
    code, out = await cluster.exec(0, "client", "curl", "-m", "1", "http://target/")
    assert code == 28, out

    async def not_ready() -> bool:
        return "node3" not in await cluster.ready_nodes()

    await wait_for(not_ready, 10, "node3 NotReady (node lease expired)")
    await cluster.start_agent(2)

    async def ready() -> bool:
        return "node3" in await cluster.ready_nodes()

    await wait_for(ready, 20, "node3 Ready again")
    assert (await cluster.control(2, "status"))["subnet"] == subnet_before
    again = await cluster.running("target")
    assert again.pod_ip == target.pod_ip  # the kubelet restarted it with its address

    async def reachable() -> bool:
        code, _ = await cluster.exec(0, "client", "ping", "-c", "1", "-W", "0.5", "target")
        return code == 0

    await wait_for(reachable, 10, "traffic to recover")
    code, out = await cluster.exec(0, "client", "curl", "-s", "http://target/")
    assert code == 0 and "Hostname: target" in out


async def test_dead_node_lease_expires_and_routes_go(etcd: EtcdServer, tmp_path: Path) -> None:
    async with cluster_of(etcd, tmp_path, "--lease-ttl", "4", "--node-lease-ttl", "3") as c:
        await c.pod("client", 0, app="none")
        await c.pod("target", 2)
        target = await c.running("target")
        await c.running("client")
        code, _ = await c.exec(0, "client", "ping", "-c", "1", "target")
        assert code == 0
        dead_subnet = IPv4Network(f"{target.pod_ip}/24", strict=False)
        await c.kill(2)

        async def expired() -> bool:
            leases = (await c.control(0, "dump", what="leases"))["lines"]
            return not any(line.startswith(str(dead_subnet)) for line in leases)

        await wait_for(expired, 15, "node3's subnet lease to expire on node1")
        assert len(await subnet_leases(etcd)) == 2
        # the route is gone: flanneld answers TCP with net unreachable (ping just times out)
        code, out = await c.exec(0, "client", "curl", "-s", "-m", "2", f"http://{target.pod_ip}/")
        assert code == 7, out
        assert "lease removed: " + str(dead_subnet) in c.log(0)


async def test_etcd_outage_traffic_keeps_flowing(cluster: Cluster) -> None:
    await cluster.pod("client", 0, app="none")
    await cluster.pod("server", 1)
    server = await cluster.running("server")
    await cluster.running("client")
    await cluster.etcd.stop()
    t0 = time.monotonic()
    rounds = 0
    while time.monotonic() - t0 < 10:
        code, out = await cluster.exec(0, "client", "curl", "-s", "-m", "2", "http://server/")
        assert code == 0 and "Hostname: server" in out
        code, out = await cluster.exec(0, "client", "ping", "-c", "1", str(server.pod_ip))
        assert code == 0, out
        rounds += 1
        await asyncio.sleep(0.5)
    assert rounds >= 5
    status = await cluster.control(0, "status")
    assert status["name"] == "node1"  # the control API serves during the outage
    await cluster.etcd.start()

    async def ready() -> bool:
        return len(await cluster.ready_nodes()) == 3

    await wait_for(ready, 20, "all nodes Ready after the outage")
    # changes made once etcd is back reach every agent
    await cluster.pod("late", 2)
    late = await cluster.running("late", timeout=20)
    code, out = await cluster.exec(0, "client", "curl", "-s", "-m", "5", f"http://{late.pod_ip}/")
    assert code == 0 and f"IP: {late.pod_ip}" in out

    async def resolves() -> bool:  # node1's watch reconnects with backoff, then catches up
        code, _ = await cluster.exec(0, "client", "curl", "-s", "-m", "2", "http://late/")
        return code == 0

    await wait_for(resolves, 15, "node1 to learn the pod created after the outage", 0.5)
    with contextlib.suppress(ControlError):
        await cluster.control(0, "status")
    assert os.path.exists(cluster.state_dir(0) / "subnet.env")


async def test_revoked_lease_stops_the_agent_with_a_message(cluster: Cluster) -> None:
    own = (await cluster.control(1, "status"))["subnet"]
    client = aetcd.Client(cluster.etcd.host, cluster.etcd.client_port, timeout=5)
    try:
        key = f"/coreos.com/network/subnets/{own.replace('/', '-')}"
        assert await client.delete(key.encode())
    finally:
        await client.close()
    proc = cluster.procs.pop(1)
    assert await asyncio.wait_for(proc.wait(), 10) == 1
    log = cluster.log(1)
    assert f"emunet-node node2: Lease has been revoked: {own}" in log
    assert "Traceback" not in log


async def test_a_broken_app_fails_its_pod_not_the_agent(cluster: Cluster) -> None:
    await cluster.pod("broken", 0, app="emunet.nodes.apps:AppContext")  # no zero-arg constructor
    failed: list[model.Pod] = []

    async def is_failed() -> bool:
        p = await cluster.reg.get_pod("default", "broken")
        if p is not None and p.phase == model.PodPhase.FAILED:
            failed.append(p)
            return True
        return False

    await wait_for(is_failed, 15, "the pod to be Failed")
    assert "cannot create it" in (failed[0].message or "")
    assert (await cluster.control(0, "status"))["name"] == cluster.name(0)  # still serving
    await cluster.pod("fine", 0, app="echo")
    await cluster.running("fine")


async def test_a_pod_that_cannot_be_created_fails_and_the_agent_lives(cluster: Cluster) -> None:
    """Issue 11: a Pod named `root` (the node's own namespace) used to come back
    through the watch with an empty netns and stop the agent; it crash-looped."""
    await cluster.pod("root", 0, app="echo")
    got: list[model.Pod] = []

    async def is_failed() -> bool:
        p = await cluster.reg.get_pod("default", "root")
        if p is not None and p.phase == model.PodPhase.FAILED:
            got.append(p)
            return True
        return False

    await wait_for(is_failed, 15, "the pod to be Failed")
    assert "'root' is the node's own namespace" in (got[0].message or "")
    await asyncio.sleep(1.5)  # its status came back through the watch meanwhile
    assert cluster.procs[0].returncode is None, cluster.log(0)[-2000:]
    assert (await cluster.control(0, "status"))["name"] == cluster.name(0)
    await cluster.pod("fine", 0, app="echo")
    await cluster.running("fine")


async def test_a_lease_outside_the_node_network_is_refused(
    cluster: Cluster, etcd: EtcdServer
) -> None:
    """Issue 11: anyone who can write to etcd could point pod traffic anywhere."""
    client = aetcd.Client(etcd.host, etcd.client_port, timeout=5)
    try:
        await client.put(
            b"/coreos.com/network/subnets/10.244.200.0-24",
            b'{"PublicIP":"192.0.2.1","PublicIPv6":null}',
        )
    finally:
        await client.close()

    async def refused() -> bool:
        counters = await cluster.control(0, "dump", what="counters")
        return bool(counters["rows"]["agent"]["leases_refused"] == 1)

    await wait_for(refused, 10, "the lease to be refused")
    leases = (await cluster.control(0, "dump", what="leases"))["lines"]
    assert not any("10.244.200.0" in line for line in leases), leases
    assert "refusing lease 10.244.200.0/24: PublicIP 192.0.2.1 is outside" in cluster.log(0)
    counters = (await cluster.control(0, "dump", what="counters"))["rows"]["agent"]
    assert counters["overlay_kernel_drops"] == 0 and "overlay_from_unknown" in counters


async def test_module_apps_only_when_the_agent_allows_them(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    """Issue 11: a pod naming `os:system` made the agent import any module."""
    async with cluster_of(etcd, tmp_path, "--node-lease-ttl", "3") as c:
        await c.pod("evil", 0, app="os:system")
        got: list[model.Pod] = []

        async def is_failed() -> bool:
            p = await c.reg.get_pod("default", "evil")
            if p is not None and p.phase == model.PodPhase.FAILED:
                got.append(p)
                return True
            return False

        await wait_for(is_failed, 15, "the pod to be Failed")
        assert "module:Class apps are refused by this agent" in (got[0].message or "")
        await c.pod("fine", 1, app="echo")
        await c.running("fine")


async def test_a_dead_node_leaves_the_endpoints_then_its_pods_move(
    cluster: Cluster, etcd: EtcdServer, tmp_path: Path
) -> None:
    """Issue 11 acceptance 5 with short periods (node lease 3 s, grace 2 s,
    toleration 4 s): kill -9 of an agent; within the grace period plus 5 s its
    pods leave every endpoint and the Service answers 30 of 30; after the
    toleration the Deployment runs on the other nodes; the node's return
    changes nothing else."""
    log = open(tmp_path / "controller-manager.log", "a")  # noqa: SIM115
    cm = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "emunet.nodes.controller_manager", "--etcd", etcd.endpoint,
        "--state-dir", str(tmp_path / "cm"), "--node-monitor-grace-period", "2",
        "--pod-eviction-timeout", "4", "--sync-period", "0.2", "--seed", "1",
        stdout=log, stderr=log, cwd=tmp_path,
    )  # fmt: skip
    log.close()
    try:
        template = model.PodTemplate({"app": "web"}, (model.Container("main", "http"),))
        await cluster.reg.put_deployment(
            model.Deployment("web", replicas=3, selector={"app": "web"}, template=template)
        )
        await cluster.reg.create_service(
            model.Service("web", selector={"app": "web"}, ports=(model.ServicePortSpec(80, 80),))
        )
        await cluster.pod("client", 0, app="none")
        await cluster.running("client")

        async def web_pods() -> list[model.Pod]:
            return [p for p in await cluster.reg.list_pods("default") if p.owner == "web"]

        async def three_running() -> bool:
            pods = await web_pods()
            return len(pods) == 3 and all(p.phase == model.PodPhase.RUNNING for p in pods)

        await wait_for(three_running, 20, "the controller to run 3 pods")
        pods = await web_pods()
        assert sorted(p.node_name for p in pods) == ["node1", "node2", "node3"]
        victim = next(p for p in pods if p.node_name == "node2")

        async def endpoints(node: int) -> str:
            return "\n".join((await cluster.control(node, "dump", what="iptables"))["lines"])

        async def synced() -> bool:
            rules = await endpoints(0)
            return all(str(p.pod_ip) in rules for p in pods)

        await wait_for(synced, 10, "node1's kube-proxy to have the 3 endpoints")
        await cluster.kill(1)
        t0 = time.monotonic()

        async def gone_everywhere() -> bool:
            rules = [await endpoints(i) for i in (0, 2)]
            return all(str(victim.pod_ip) not in r for r in rules)

        await wait_for(gone_everywhere, 3 + 2 + 5, "node2's pod to leave the endpoints")
        left = time.monotonic() - t0
        for _ in range(30):
            code, out = await cluster.exec(0, "client", "curl", "-s", "-m", "2", "http://web/")
            assert code == 0 and out.startswith("Hostname: web-"), out
        marked = await cluster.reg.get_pod("default", victim.name)
        assert marked is not None and not marked.ready and marked.reason == "NodeNotReady"

        async def moved() -> bool:
            pods = await web_pods()
            return (
                len(pods) == 3
                and all(p.phase == model.PodPhase.RUNNING for p in pods)
                and "node2" not in {p.node_name for p in pods}
            )

        await wait_for(moved, 20, "the Deployment's pods on the other nodes")
        before = sorted((p.name, p.node_name) for p in await web_pods())
        await cluster.start_agent(1)
        await wait_for(lambda: _ready(cluster, 3), 20, "node2 back")
        await asyncio.sleep(2.0)
        assert sorted((p.name, p.node_name) for p in await web_pods()) == before
        print(f"\nnode2's pod left the endpoints {left:.1f} s after kill -9")
    finally:
        cm.terminate()
        await cm.wait()


async def _ready(cluster: Cluster, n: int) -> bool:
    return len(await cluster.ready_nodes()) == n


@pytest.mark.parametrize("how", ["SIGSTOP", "SIGKILL"])
async def test_etcd_frozen_or_killed_the_data_plane_goes_on(cluster: Cluster, how: str) -> None:
    """Issue 11's chaos probes: etcd frozen (SIGSTOP) for 5 s, or killed with -9 and
    started again: pods keep talking across nodes meanwhile, no agent dies, and the
    cluster takes new pods afterwards."""
    await cluster.pod("client", 0, app="none")
    await cluster.pod("server", 1)
    srv = await cluster.running("server")
    await cluster.running("client")
    proc = cluster.etcd._process
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP if how == "SIGSTOP" else signal.SIGKILL)
    try:
        for _ in range(5):
            code, out = await cluster.exec(
                0, "client", "curl", "-s", "-m", "2", f"http://{srv.pod_ip}/"
            )
            assert code == 0 and "Hostname: server" in out, out
            await asyncio.sleep(1.0)
    finally:
        if how == "SIGSTOP":
            os.kill(proc.pid, signal.SIGCONT)
        else:
            await proc.wait()
            cluster.etcd._process = None
            await cluster.etcd.start()
    assert all(p.returncode is None for p in cluster.procs.values())
    await cluster.pod("late", 2)
    late = await cluster.running("late", timeout=30)
    code, out = await cluster.exec(0, "client", "curl", "-s", "-m", "5", f"http://{late.pod_ip}/")
    assert code == 0 and f"IP: {late.pod_ip}" in out, out


async def test_a_name_resolves_before_the_watch_brings_it(etcd: EtcdServer, tmp_path: Path) -> None:
    """Cluster DNS on a node whose caches do not hold a Service or a pod just made
    elsewhere (its watch lags the write: a test once pinged a pod by name the moment
    etcd said Running and got "Name or service not known"): read from etcd."""
    from emunet.nodes.agent import Agent, AgentConfig

    async with Registry(etcd.endpoint) as reg:
        spec = model.Service(
            name="web", selector={"app": "web"}, ports=(model.ServicePortSpec(80),)
        )
        svc = await reg.create_service(spec)
        pod = await reg.create_pod(
            model.Pod(name="db", node_name="node2", containers=(model.Container("main", "http"),))
        )
        await reg.put_pod(pod.with_status(model.PodPhase.RUNNING, IPv4Address("10.244.2.9")))
        config = AgentConfig("node1", IPv4Address("172.18.0.11"), etcd.endpoint, tmp_path)
        agent = Agent(config)
        agent.registry = reg  # never started: no watch has filled its caches
        assert not agent.pods and not agent.services
        assert await agent.resolve("web") == svc.cluster_ip
        assert await agent.resolve("web.default.svc.cluster.local") == svc.cluster_ip
        assert await agent.resolve("db") == IPv4Address("10.244.2.9")
        assert await agent.resolve("db.other") is None  # another namespace's, none
        assert await agent.resolve("nosuch") is None
