"""``emunet up --local`` / ``down`` with a real etcd and three real agent processes
(issue 5, acceptance 1, 2, 3 and 8), driven as a user drives them: CLI and pod-shell."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from emunet.control.local import LocalFabric, pid_alive
from emunet.nodes.etcd_server import find_etcd_binary

pytestmark = pytest.mark.integration

NODES_TABLE = re.compile(
    r"NAME\s+STATUS\s+INTERNAL-IP\s+POD-CIDR\n"
    r"node1\s+Ready\s+172\.18\.0\.11\s+10\.244\.\d+\.0/24\n"
    r"node2\s+Ready\s+172\.18\.0\.12\s+10\.244\.\d+\.0/24\n"
    r"node3\s+Ready\s+172\.18\.0\.13\s+10\.244\.\d+\.0/24\n"
)


def emunet(state: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EMUNET_STATE": str(state)}
    env.pop("EMUNET_ETCD", None)
    return subprocess.run(
        [sys.executable, "-c", "from emunet.control.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=state.parent,
        timeout=timeout,
    )


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "state"
    yield path
    LocalFabric(path).down()  # whatever the test did, stop what it started


def etcdctl(endpoint: str, *args: str) -> str:
    proc = subprocess.run(
        [find_etcd_binary("etcdctl"), "--endpoints", endpoint, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_up_down_three_nodes(state: Path) -> None:
    up = emunet(state, "up", "--local", "--nodes", "3")
    assert up.returncode == 0, up.stderr
    assert NODES_TABLE.fullmatch(up.stdout), up.stdout
    assert "... 3/3 nodes Ready" in up.stderr
    fabric = LocalFabric(state)
    recorded = fabric.load()
    assert recorded is not None
    names = [p.name for p in recorded.processes]
    assert names == ["etcd", "node1", "node2", "node3", "internet", "controller-manager"]
    assert all(pid_alive(p.pid, p.marker) for p in recorded.processes)

    # flannel's schema, byte for byte, as etcdctl prints it
    listing = etcdctl(recorded.etcd_endpoint, "get", "--prefix", "/coreos.com/network/subnets")
    lines = listing.splitlines()
    keys, values = lines[0::2], lines[1::2]
    assert len(keys) == 3
    assert all(re.fullmatch(r"/coreos\.com/network/subnets/10\.244\.\d+\.0-24", k) for k in keys)
    assert sorted(values) == [
        '{"PublicIP":"172.18.0.11","PublicIPv6":null}',
        '{"PublicIP":"172.18.0.12","PublicIPv6":null}',
        '{"PublicIP":"172.18.0.13","PublicIPv6":null}',
    ]
    config = etcdctl(recorded.etcd_endpoint, "get", "/coreos.com/network/config")
    assert json.loads(config.splitlines()[1])["Network"] == "10.244.0.0/16"
    # every subnet key sits on an etcd lease (24 h TTL), as do the node leases
    detail = json.loads(
        etcdctl(
            recorded.etcd_endpoint, "get", "--prefix", "/coreos.com/network/subnets", "-w", "json"
        )
    )
    assert all(kv.get("lease") for kv in detail["kvs"])
    node_leases = etcdctl(
        recorded.etcd_endpoint, "get", "--prefix", "--keys-only", "/registry/leases/"
    ).split()
    assert node_leases == [
        *(f"/registry/leases/kube-node-lease/node{i}" for i in (1, 2, 3)),
        "/registry/leases/kube-system/kube-controller-manager",
    ]

    # idempotent: a second `up` says so and changes nothing
    again = emunet(state, "up", "--local", "--nodes", "3")
    assert again.returncode == 0 and "already up" in again.stdout
    assert fabric.load() == recorded

    status = emunet(state, "status")
    assert status.returncode == 0 and status.stdout.startswith("fabric up;")
    assert status.stdout.count("running") == 6

    down = emunet(state, "down")
    assert down.returncode == 0, down.stderr
    assert down.stdout.startswith(
        "stopped: node1, node2, node3, internet, controller-manager, etcd;"
    )
    assert not state.exists()
    assert not any(pid_alive(p.pid, p.marker) for p in recorded.processes)
    for p in recorded.processes:
        assert not Path(f"/proc/{p.pid}").exists() or not pid_alive(p.pid, p.marker)
    assert emunet(state, "down").stdout.startswith("no local fabric")


def test_up_restarts_what_died_and_keeps_the_cluster(state: Path) -> None:
    up = emunet(state, "up", "--local", "--nodes", "1")
    assert up.returncode == 0, up.stderr
    assert emunet(state, "run", "web", "--app", "http").returncode == 0
    recorded = LocalFabric(state).load()
    assert recorded is not None
    agent = recorded.processes[1]
    os.kill(agent.pid, signal.SIGKILL)
    status = emunet(state, "status")
    assert "degraded" in status.stdout and "gone" in status.stdout
    again = emunet(state, "up")  # local mode is the default
    assert again.returncode == 0, again.stderr
    assert "restarting node1" in again.stderr
    now = LocalFabric(state).load()
    assert now is not None and now.etcd_endpoint == recorded.etcd_endpoint  # same etcd
    assert pid_alive(recorded.processes[0].pid, recorded.processes[0].marker)
    assert now.processes[1].pid != agent.pid and pid_alive(now.processes[1].pid, agent.marker)
    pods = json.loads(emunet(state, "get", "pods", "-o", "json").stdout)["items"]
    assert [p["metadata"]["labels"]["app"] for p in pods] == ["web"]  # the cluster survived


def test_readme_local_mode_output_matches() -> None:
    """The README's `emunet up --local` example must look like what a user gets."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    match = re.search(r"\$ emunet up --local[^\n]*\n(.*?)```", readme, re.S)
    assert match is not None, "README has no `$ emunet up --local` example"
    shown = (
        "\n".join(
            line for line in match.group(1).splitlines() if not line.startswith("...")
        ).strip()
        + "\n"
    )
    assert NODES_TABLE.fullmatch(shown), shown


def pod_shell(state: Path, pod: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EMUNET_STATE": str(state)}
    env.pop("EMUNET_ETCD", None)
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from emunet.control.podshell import main; main()",
            pod,
            "--",
            *argv,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=state.parent,
        timeout=60,
    )


def pods(state: Path, prefix: str) -> dict[str, str]:
    """Running pods whose name starts with ``prefix``: name -> IP."""
    out = emunet(state, "get", "pods", "-o", "json").stdout
    items = json.loads(out)["items"]
    return {
        p["metadata"]["name"]: p["status"].get("podIP", "")
        for p in items
        if p["metadata"]["name"].startswith(prefix) and p["status"].get("phase") == "Running"
    }


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.e2e
def test_user_paths_nodeport_and_pod_recreation(state: Path) -> None:
    """Issue 5 acceptance 2 and 3, as a user types them: CLI + pod-shell."""
    assert emunet(state, "up", "--local", "--nodes", "3").returncode == 0
    assert emunet(state, "run", "web", "--app", "http", "--replicas", "3").returncode == 0
    assert emunet(state, "run", "client", "--app", "none", "--node", "node1").returncode == 0
    r = emunet(state, "expose", "web", "--port", "80", "--type", "NodePort", "--node-port", "30080")
    assert r.returncode == 0, r.stderr
    wait_until(
        lambda: len(pods(state, "web-")) == 3 and len(pods(state, "client")) == 1,
        30,
        "pods Running",
    )
    client = next(iter(pods(state, "client")))
    webs = pods(state, "web-")
    # pod -> pod across nodes: ping and curl
    far = next(
        name for name in webs if emunet(state, "describe", "pod", name).stdout.count("node1") == 0
    )
    r = pod_shell(state, client, "ping", "-c", "2", "-i", "0.2", webs[far])
    assert r.returncode == 0 and "2 packets transmitted, 2 received, 0% packet loss" in r.stdout
    r = pod_shell(state, client, "curl", "-s", f"http://{webs[far]}/")
    assert r.returncode == 0 and f"IP: {webs[far]}" in r.stdout
    # traceroute across nodes shows both routers (and flannel's silent hops between)
    r = pod_shell(state, client, "traceroute", "-n", "-w", "0.5", webs[far])
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and " 1  10.244." in lines[1] and webs[far] in lines[-1], r.stdout

    def all_backends(url: str) -> bool:
        seen = set()
        for _ in range(30):
            out = pod_shell(state, client, "curl", "-s", "-m", "2", url).stdout
            seen.add(out.split("\n", 1)[0])
        return seen == {f"Hostname: {name}" for name in webs}

    # the ClusterIP reaches all three backends; the NodePort answers at every node IP
    wait_until(lambda: all_backends("http://web/"), 30, "the ClusterIP to reach 3 backends")
    for ip in ("172.18.0.11", "172.18.0.12", "172.18.0.13"):
        r = pod_shell(state, client, "curl", "-s", "-m", "2", f"http://{ip}:30080/")
        assert r.returncode == 0 and r.stdout.startswith("Hostname: web-"), (ip, r)
    # delete a backend: the Deployment replaces it with a new IP; no node keeps the old one
    victim, old_ip = next(iter(webs.items()))
    assert emunet(state, "delete", "pod", victim).returncode == 0
    wait_until(
        lambda: victim not in pods(state, "web-") and len(pods(state, "web-")) == 3,
        30,
        "the replacement pod",
    )
    new = pods(state, "web-")
    assert old_ip not in new.values()
    for node in ("node1", "node2", "node3"):
        wait_until(
            lambda n=node: (
                old_ip not in emunet(state, "iptables-save", n).stdout
                and all(ip in emunet(state, "iptables-save", n).stdout for ip in new.values())
            ),
            15,
            f"{node}'s rules to drop {old_ip}",
        )
    webs = new
    wait_until(lambda: all_backends("http://web/"), 30, "the Service to use the new pod")


def test_up_from_the_source_checkout_as_make_up_runs_it(tmp_path: Path) -> None:
    """`make up` runs `emunet up --local` in the repository root, whose emunet/ folder
    has no nodes subpackage: the agents must not import from the caller's directory."""
    repo = Path(__file__).parents[2]
    env = {**os.environ, "EMUNET_STATE": str(tmp_path / "state")}
    env.pop("EMUNET_ETCD", None)
    cli = [str(Path(sys.executable).parent / "emunet")]  # the console script make up runs
    try:
        up = subprocess.run(
            [*cli, "up", "--nodes", "1"],
            capture_output=True,
            text=True,
            env=env,
            cwd=repo,
            timeout=120,
        )
        assert up.returncode == 0, up.stderr
        assert "node1   Ready" in up.stdout
    finally:
        LocalFabric(tmp_path / "state").down()


def external_shell(state: Path, host: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EMUNET_STATE": str(state)}
    env.pop("EMUNET_ETCD", None)
    code = "from emunet.control.podshell import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, "--external", host, "--", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=state.parent,
        timeout=60,
    )


@pytest.mark.e2e
def test_the_internet_in_local_mode(state: Path) -> None:
    """Issue 10 acceptance 2 (external clients) and 3 (pod -> internet) on a local fabric."""
    assert emunet(state, "up", "--local", "--nodes", "3").returncode == 0
    hosts = json.loads(emunet(state, "get", "hosts", "-o", "json").stdout)["items"]
    by_name = {h["metadata"]["name"]: h["spec"] for h in hosts}
    assert by_name["example"]["ip"] == "203.0.113.10"
    assert by_name["vm"] == {**by_name["vm"], "ip": "172.18.0.100", "segment": "nodes"}
    assert by_name["gateway"]["publicIP"] == "198.51.100.1"
    assert emunet(state, "run", "web", "--app", "http", "--replicas", "3").returncode == 0
    assert emunet(state, "run", "client", "--app", "none", "--node", "node1").returncode == 0
    r = emunet(state, "expose", "web", "--port", "80", "--type", "LoadBalancer")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: len(pods(state, "web-")) == 3 and pods(state, "client"), 30, "pods")
    client = next(iter(pods(state, "client")))

    # pod -> internet: masqueraded by the node (to its IP), then by the gateway
    r = pod_shell(state, client, "curl", "-s", "-m", "3", "http://203.0.113.10/")
    assert r.returncode == 0 and "hello from example to 198.51.100.1:" in r.stdout, r
    r = pod_shell(state, client, "ping", "-c", "1", "203.0.113.10")
    assert r.returncode == 0 and "1 received" in r.stdout, r
    ct = emunet(state, "conntrack", "node1").stdout
    assert re.search(r"dst=203\.0\.113\.10 .* src=203\.0\.113\.10 dst=172\.18\.0\.11 ", ct), ct

    # LoadBalancer: an ingress IP from the pool, reached from an internet host
    def lb_ip() -> str:
        svc = json.loads(emunet(state, "get", "svc", "web", "-o", "json").stdout)
        ingress = svc["status"]["loadBalancer"].get("ingress") or [{}]
        return str(ingress[0].get("ip", ""))

    wait_until(lambda: lb_ip().startswith("198.51.100."), 15, "an ingress IP")
    ip = lb_ip()
    assert ip in emunet(state, "get", "svc").stdout
    seen = set()
    for _ in range(12):
        r = external_shell(state, "client", "curl", "-s", "-m", "3", f"http://{ip}/")
        assert r.returncode == 0, r
        seen.add(r.stdout.split("\n", 1)[0])
    assert len(seen) >= 2 and all(s.startswith("Hostname: web-") for s in seen), seen

    # the node-network host reaches the NodePort at every node IP
    svc = json.loads(emunet(state, "get", "svc", "web", "-o", "json").stdout)
    node_port = svc["spec"]["ports"][0]["nodePort"]
    for node_ip in ("172.18.0.11", "172.18.0.12", "172.18.0.13"):
        r = external_shell(state, "vm", "curl", "-s", "-m", "3", f"http://{node_ip}:{node_port}/")
        assert r.returncode == 0 and r.stdout.startswith("Hostname: web-"), (node_ip, r)
    # ... and an internet host never reaches a private node address
    r = external_shell(
        state, "example", "curl", "-s", "-m", "1", f"http://172.18.0.11:{node_port}/"
    )
    assert r.returncode != 0


@pytest.mark.e2e
def test_200_concurrent_pod_shells_see_no_false_etcd_outage(state: Path) -> None:
    """Issue 11 acceptance 6: 200 pod-shells at once on a 2-core machine used to
    print `etcd unreachable ... (no answer)` 120 times while etcd was healthy."""
    assert emunet(state, "up", "--local", "--nodes", "3").returncode == 0
    assert emunet(state, "run", "client", "--app", "none", "--node", "node1").returncode == 0
    wait_until(lambda: bool(pods(state, "client")), 30, "the client pod")
    client = next(iter(pods(state, "client")))
    env = {**os.environ, "EMUNET_STATE": str(state)}
    env.pop("EMUNET_ETCD", None)
    code = "from emunet.control.podshell import main; main()"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, client, "--", "hostname"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=state.parent,
        )
        for _ in range(200)
    ]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    failures = [err for rc, _out, err in results if rc != 0]
    assert not [f for f in failures if "etcd unreachable" in f], failures[:3]
    busy = [f for f in failures if "busy" in f]
    assert len(failures) == len(busy), failures[:3]  # a busy agent may say so, in one line
    assert sum(1 for rc, out, _ in results if rc == 0 and out.strip() == client) >= 150


@pytest.mark.e2e
def test_impossible_pods_show_a_reason_and_no_agent_dies(state: Path, tmp_path: Path) -> None:
    """Issue 11 acceptance 1: a Pod named `root`, 255 pods on one node and
    `--replicas 100000` used to kill every agent, which then crash-looped."""
    assert emunet(state, "up", "--local", "--nodes", "3").returncode == 0
    fabric = LocalFabric(state)
    recorded = fabric.load()
    assert recorded is not None
    manifest = tmp_path / "root.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: root}\n"
        "spec: {containers: [{name: main, image: traefik/whoami}]}\n"
    )
    r = emunet(state, "apply", "-f", str(manifest))
    assert r.returncode == 0, r.stderr
    r = emunet(state, "run", "big", "--app", "none", "--replicas", "100000")
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0, r
    assert "spec.replicas: must be 0 to 1000, got 100000" in r.stderr
    r = emunet(state, "run", "fill", "--app", "none", "--replicas", "255", "--node", "node3")
    assert r.returncode == 0, r.stderr

    def listed() -> dict[str, tuple[str, str]]:
        items = json.loads(emunet(state, "get", "pods", "-o", "json").stdout)["items"]
        return {
            p["metadata"]["name"]: (p["status"].get("phase", ""), p["status"].get("reason", ""))
            for p in items
        }

    def settled() -> bool:
        pods = listed()
        fill = [v for k, v in pods.items() if k.startswith("fill-")]
        running = sum(1 for phase, _ in fill if phase == "Running")
        waiting = sum(1 for v in fill if v == ("Pending", "Unschedulable"))
        return pods.get("root", ("", ""))[0] == "Failed" and running + waiting == 255 and waiting

    wait_until(settled, 120, "the pods to settle")
    pods = listed()
    assert pods["root"] == ("Failed", "CreateFailed")
    fill = [v for k, v in pods.items() if k.startswith("fill-")]
    assert sum(1 for phase, _ in fill if phase == "Running") == 253  # a /24 less the gateway
    table = emunet(state, "get", "pods").stdout
    assert re.search(r"root\s+0/1\s+CreateFailed", table), table
    assert re.search(r"fill-\S+\s+0/1\s+Unschedulable", table), table
    described = emunet(state, "describe", "pod", "root").stdout
    assert "'root' is the node's own namespace" in described
    alive = [p.name for p in recorded.processes if pid_alive(p.pid, p.marker)]
    assert alive == [p.name for p in recorded.processes]
    nodes = emunet(state, "get", "nodes").stdout
    assert nodes.count(" Ready ") == 3, nodes


def test_local_mode_makes_a_control_token_every_client_presents(state: Path) -> None:
    """Issue 11 acceptance 7: `up` creates the token (0600); the CLI presents it, a
    request without it is refused."""
    import asyncio

    from emunet.nodes.control_client import ControlError, call

    assert emunet(state, "up", "--local", "--nodes", "1").returncode == 0
    token_file = state / "token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    assert emunet(state, "counters", "node1").returncode == 0  # the CLI presents it
    with pytest.raises(ControlError) as err:
        asyncio.run(call("127.0.0.11", 10250, "status"))
    assert err.value.code == "unauthorized"
    assert asyncio.run(call("127.0.0.11", 10250, "status", token=token))["name"] == "node1"


@pytest.mark.e2e
def test_300_idle_connections_do_not_lock_pod_shell_out(state: Path) -> None:
    """Issue 11 acceptance 3, as a user meets it: 300 idle connections to node1's
    control API locked every client out for up to 300 s."""
    import socket

    assert emunet(state, "up", "--local", "--nodes", "1").returncode == 0
    assert emunet(state, "run", "client", "--app", "none").returncode == 0
    wait_until(lambda: bool(pods(state, "client")), 30, "the client pod")
    client = next(iter(pods(state, "client")))
    idle = [socket.create_connection(("127.0.0.11", 10250), timeout=5) for _ in range(300)]
    try:
        r = pod_shell(state, client, "hostname")
        assert r.returncode == 0 and r.stdout.strip() == client, r
        r = emunet(state, "counters", "node1")
        assert r.returncode == 0 and "control evicted_idle:" in r.stdout, r
    finally:
        for sock in idle:
            sock.close()
