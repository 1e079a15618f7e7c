"""Throughput and latency of every path of a real local fabric (etcd + 3 agents).

Paths, each measured from a client pod on node1 with pod-shell's ``iperf -c``
(TCP bulk transfer to a ``sink`` pod) and ``ping``:

* pod -> pod, same node (veth, cni0, veth),
* pod -> pod, other node (cni0, flannel0, real UDP 8285 between two processes),
* pod -> ClusterIP (kube-proxy DNAT, then the overlay; one endpoint on node2),
* pod -> NodePort on node2's IP (DNAT + masquerade on node2).

Baseline, measured in the same run: the kernel's own loopback between two
Python processes (TCP throughput with uvloop streams, UDP ping-pong RTT), i.e.
what the machine does without emulating anything. Every emulated byte crosses
Python twice per hop, so expect a large ratio; the figure that matters is how
the paths compare to each other.

    python benchmarks/bench_fabric.py [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-c", "from emunet.control.cli import main; main()"]
SHELL = [sys.executable, "-c", "from emunet.control.podshell import main; main()"]


def _run(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"bench_fabric: {' '.join(argv[3:])} failed: {proc.stderr.strip()}")
    return proc.stdout


def _rate(out: str) -> float:
    m = re.search(r"([\d.]+) ([KMG])bits/sec", out)
    if m is None:
        raise SystemExit(f"bench_fabric: no iperf figure in {out!r}")
    return float(m.group(1)) * {"K": 1e3, "M": 1e6, "G": 1e9}[m.group(2)]


def _rtt(out: str) -> float:
    m = re.search(r"rtt min/avg/max/mdev = [\d.]+/([\d.]+)/", out)
    if m is None:
        raise SystemExit(f"bench_fabric: no ping figure in {out!r}")
    return float(m.group(1))


_PEER = r"""
import socket, sys
kind, port = sys.argv[1], int(sys.argv[2])
if kind == "tcp":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port)); s.listen(1); print("ready", flush=True)
    c, _ = s.accept()
    while c.recv(1 << 16):
        pass
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", port))
    print("ready", flush=True)
    while True:
        data, addr = s.recvfrom(2048)
        if data == b"stop":
            break
        s.sendto(data, addr)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kernel_baseline(seconds: float) -> tuple[float, float]:
    """(TCP bits/s, UDP RTT ms) between two processes over the kernel's loopback."""
    port = _free_port()
    peer = subprocess.Popen([sys.executable, "-c", _PEER, "tcp", str(port)], stdout=subprocess.PIPE)
    assert peer.stdout is not None
    peer.stdout.readline()
    sock = socket.create_connection(("127.0.0.1", port))
    chunk = bytes(1 << 16)
    sent = 0
    end = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < end:
        sock.sendall(chunk)
        sent += len(chunk)
    elapsed = time.perf_counter() - start
    sock.close()
    peer.wait(10)
    port = _free_port()
    peer = subprocess.Popen([sys.executable, "-c", _PEER, "udp", str(port)], stdout=subprocess.PIPE)
    assert peer.stdout is not None
    peer.stdout.readline()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtts = []
    for _ in range(200):
        t0 = time.perf_counter()
        u.sendto(b"x" * 56, ("127.0.0.1", port))
        u.recvfrom(2048)
        rtts.append((time.perf_counter() - t0) * 1000)
    u.sendto(b"stop", ("127.0.0.1", port))
    peer.wait(10)
    return sent * 8 / elapsed, sorted(rtts)[len(rtts) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="iperf duration per path")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="emunet-bench-") as tmp:
        cwd = Path(tmp)
        env = {**os.environ, "EMUNET_STATE": str(cwd / "state")}
        env.pop("EMUNET_ETCD", None)
        cli = lambda *a: _run([*CLI, *a], env, cwd)  # noqa: E731
        print("starting a local fabric (etcd + 3 agents)...", flush=True)
        cli("up", "--local", "--nodes", "3")
        try:
            cli("run", "client", "--app", "none", "--node", "node1")
            cli("run", "near", "--app", "sink", "--node", "node1")
            cli("run", "far", "--app", "sink", "--node", "node2")
            cli("expose", "far", "--port", "5001", "--type", "NodePort", "--node-port", "30501")
            pods: dict[str, str] = {}
            for _ in range(100):
                items = json.loads(cli("get", "pods", "-o", "json"))["items"]
                pods = {
                    p["metadata"]["labels"]["app"]: p["metadata"]["name"]
                    for p in items
                    if p["status"].get("phase") == "Running"
                }
                ips = {p["metadata"]["labels"]["app"]: p["status"].get("podIP", "") for p in items}
                if len(pods) == 3:
                    break
                time.sleep(0.3)
            client = pods["client"]
            paths = {
                "pod->pod same node": ips["near"],
                "pod->pod other node": ips["far"],
                "pod->ClusterIP": "far",
                "pod->NodePort": "172.18.0.12",
            }
            bits, rtt = kernel_baseline(args.seconds)
            print(f"\n{'path':<22}{'TCP Mbit/s':>12}{'ping ms':>10}{'vs kernel tput':>16}")
            print(f"{'kernel loopback':<22}{bits / 1e6:>12.0f}{rtt:>10.3f}{1.0:>16.1f}")
            time.sleep(1.0)  # the ClusterIP rules are programmed by now
            for name, dst in paths.items():
                port = "30501" if name == "pod->NodePort" else "5001"
                out = _run(
                    [*SHELL, client, "--", "iperf", "-c", dst, "-p", port, "-t", str(args.seconds)],
                    env,
                    cwd,
                )
                ping_dst = ips["far"] if name in ("pod->ClusterIP", "pod->NodePort") else dst
                if name == "pod->NodePort":
                    ping_dst = "172.18.0.12"
                pout = _run(
                    [*SHELL, client, "--", "ping", "-c", "20", "-i", "0.05", ping_dst], env, cwd
                )
                r = _rate(out)
                ms = _rtt(pout)
                shown = f"{ms:.3f}" if ms >= 0.001 else "<0.001"  # one loop step, one process
                print(f"{name:<22}{r / 1e6:>12.1f}{shown:>10}{bits / r:>15.0f}x")
        finally:
            cli("down")


if __name__ == "__main__":
    main()
