"""``emunet up --local`` / ``down`` with a real etcd and three real agent processes
(issue 5, acceptance 1 and 8)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from emunet.control.local import LocalFabric, pid_alive
from emunet.nodes.etcd_server import find_etcd_binary

pytestmark = pytest.mark.integration

NODES_TABLE = re.compile(
    r"NAME\s+STATUS\s+INTERNAL-IP\s+POD-CIDR\n"
    r"node1\s+Ready\s+127\.0\.0\.11\s+10\.244\.\d+\.0/24\n"
    r"node2\s+Ready\s+127\.0\.0\.12\s+10\.244\.\d+\.0/24\n"
    r"node3\s+Ready\s+127\.0\.0\.13\s+10\.244\.\d+\.0/24\n"
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
    assert [p.name for p in recorded.processes] == ["etcd", "node1", "node2", "node3"]
    assert all(pid_alive(p.pid, p.marker) for p in recorded.processes)

    # flannel's schema, byte for byte, as etcdctl prints it
    listing = etcdctl(recorded.etcd_endpoint, "get", "--prefix", "/coreos.com/network/subnets")
    lines = listing.splitlines()
    keys, values = lines[0::2], lines[1::2]
    assert len(keys) == 3
    assert all(re.fullmatch(r"/coreos\.com/network/subnets/10\.244\.\d+\.0-24", k) for k in keys)
    assert sorted(values) == [
        '{"PublicIP":"127.0.0.11","PublicIPv6":null}',
        '{"PublicIP":"127.0.0.12","PublicIPv6":null}',
        '{"PublicIP":"127.0.0.13","PublicIPv6":null}',
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
    assert node_leases == [f"/registry/leases/kube-node-lease/node{i}" for i in (1, 2, 3)]

    # idempotent: a second `up` says so and changes nothing
    again = emunet(state, "up", "--local", "--nodes", "3")
    assert again.returncode == 0 and "already up" in again.stdout
    assert fabric.load() == recorded

    status = emunet(state, "status")
    assert status.returncode == 0 and status.stdout.startswith("fabric up;")
    assert status.stdout.count("running") == 4

    down = emunet(state, "down")
    assert down.returncode == 0, down.stderr
    assert down.stdout.startswith("stopped: node1, node2, node3, etcd;")
    assert not state.exists()
    assert not any(pid_alive(p.pid, p.marker) for p in recorded.processes)
    for p in recorded.processes:
        assert not Path(f"/proc/{p.pid}").exists() or not pid_alive(p.pid, p.marker)
    assert emunet(state, "down").stdout.startswith("no local fabric")


def test_stale_state_is_cleaned(state: Path) -> None:
    up = emunet(state, "up", "--local", "--nodes", "1")
    assert up.returncode == 0, up.stderr
    recorded = LocalFabric(state).load()
    assert recorded is not None
    agent = recorded.processes[1]
    os.kill(agent.pid, signal.SIGKILL)
    status = emunet(state, "status")
    assert "degraded" in status.stdout and "gone" in status.stdout
    again = emunet(state, "up", "--local", "--nodes", "1")
    assert again.returncode == 0, again.stderr
    assert "cleaning up a stale fabric" in again.stderr
    assert not pid_alive(recorded.processes[0].pid, recorded.processes[0].marker)  # old etcd
    fresh = LocalFabric(state).load()
    assert fresh is not None and fresh.etcd_endpoint != recorded.etcd_endpoint


def test_readme_local_mode_output_matches() -> None:
    """The README's `emunet up --local` example must look like what a user gets."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    match = re.search(r"\$ emunet up --local[^\n]*\n(.*?)```", readme, re.S)
    if match is None:
        pytest.skip("README has no `$ emunet up --local` example yet")
    shown = (
        "\n".join(
            line for line in match.group(1).splitlines() if not line.startswith("...")
        ).strip()
        + "\n"
    )
    assert NODES_TABLE.fullmatch(shown), shown
