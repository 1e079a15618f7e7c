"""How long the container fabric takes from `up` to every node Ready (issue 10's aim:
under 15 s with the image present), next to a baseline measured in the same run.

Each round, in turn:

* **compose**: `docker-compose up -d` (or `docker compose`) of compose/docker-compose.yml
  under a project of its own, timed until etcd lists three Ready nodes (a node lease
  key each, read with etcdctl inside the etcd container) and the internet's hosts are
  recorded; then `down -v`;
* **baseline**: the same engine starting and removing one container of the same image
  that exits at once (`docker run --rm IMAGE true`): what any container costs here.

The image must exist (`make image`); without a Docker engine the benchmark says so
and exits 0.

    python benchmarks/bench_compose_up.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "compose" / "docker-compose.yml"
IMAGE = os.environ.get("EMUNET_IMAGE", "emunet:latest")
AIM = 15.0  # seconds, issue 10


def _compose() -> list[str] | None:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def _ready(project: str, env: dict[str, str]) -> bool:
    names = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project}",
         "--filter", "label=com.docker.compose.service=etcd"],
        capture_output=True, text=True, env=env,
    ).stdout.split()  # fmt: skip
    if not names:
        return False
    etcd = names[0]
    out = subprocess.run(
        ["docker", "exec", etcd, "etcdctl", "get", "--prefix", "--keys-only", "/registry/"],
        capture_output=True, text=True, env=env,
    ).stdout  # fmt: skip
    leases = [k for k in out.split() if k.startswith("/registry/leases/kube-node-lease/")]
    hosts = [k for k in out.split() if k.startswith("/registry/emunet/hosts/")]
    return len(leases) == 3 and len(hosts) >= 4


def compose_round(compose: list[str], index: int) -> float:
    project = f"emunet-bench-{os.getpid()}-{index}"
    env = {**os.environ, "EMUNET_NET_PREFIX": "172.29.79", "COMPOSE_PROJECT_NAME": project}
    cmd = [*compose, "-f", str(COMPOSE_FILE), "-p", project]
    start = time.monotonic()
    try:
        up = subprocess.run([*cmd, "up", "-d"], capture_output=True, text=True, env=env)
        if up.returncode != 0:
            raise SystemExit(f"bench_compose_up: up failed: {up.stderr.strip()[-500:]}")
        deadline = start + 120
        while not _ready(project, env):
            if time.monotonic() > deadline:
                raise SystemExit("bench_compose_up: nodes not Ready within 120 s")
            time.sleep(0.2)
        return time.monotonic() - start
    finally:
        subprocess.run([*cmd, "down", "-v", "--remove-orphans"], capture_output=True, env=env)


def baseline_round() -> float:
    start = time.monotonic()
    run = subprocess.run(["docker", "run", "--rm", "--network", "none", IMAGE, "true"],
                         capture_output=True, text=True)  # fmt: skip
    if run.returncode != 0:
        raise SystemExit(f"bench_compose_up: docker run failed: {run.stderr.strip()}")
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, choices=range(1, 21), metavar="1-20")
    args = parser.parse_args()
    if (
        shutil.which("docker") is None
        or subprocess.run(["docker", "info"], capture_output=True).returncode != 0
    ):
        print("bench_compose_up: no Docker engine answers here; nothing to measure")
        return
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode:
        print(f"bench_compose_up: image {IMAGE} not found; run `make image` first")
        return
    compose = _compose()
    if compose is None:
        print("bench_compose_up: neither `docker compose` nor `docker-compose` is installed")
        return
    ups, bases = [], []
    for i in range(args.rounds):
        bases.append(baseline_round())
        ups.append(compose_round(compose, i))
        print(f"round {i + 1}: up to Ready {ups[-1]:.2f} s, one container {bases[-1]:.2f} s",
              flush=True)  # fmt: skip
    up, base = statistics.median(ups), statistics.median(bases)
    print(f"{' '.join(compose)} up -> 3 nodes Ready: median {up:.2f} s "
          f"(min {min(ups):.2f}, max {max(ups):.2f}) over {len(ups)} rounds")  # fmt: skip
    print(f"baseline, docker run --rm of the image: median {base:.2f} s; ratio {up / base:.1f}x")
    print(f"aim (under {AIM:.0f} s): {'met' if up < AIM else 'NOT met'}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
