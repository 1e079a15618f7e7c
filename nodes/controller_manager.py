"""``emunet-controller-manager``: kube-controller-manager (and kube-scheduler) of
the fabric, as a process of its own.

Theory of operation
-------------------
One asyncio loop. Watches of Deployments and pods mark the state dirty; every
``--sync-period`` (and at once when dirty, debounced) one sync lists pods,
Deployments and nodes from the registry and applies what
:mod:`emunet.cluster.controllers` decides:

1. node lifecycle: pods of a node NotReady for ``--node-monitor-grace-period``
   are marked not ready (they leave the endpoints); after
   ``--pod-eviction-timeout`` more they are deleted (evicted);
2. garbage collection: pods whose Deployment is gone are deleted;
3. the Deployment controller and the scheduler: missing pods are created
   (on a node with room, or unscheduled and ``Pending`` with the scheduler's
   reason), surplus pods deleted, waiting pods bound once a node has room; at
   most ``--burst`` creations per sync.

It holds the lease key ``/registry/leases/kube-system/kube-controller-manager``
while it runs: the CLI leaves reconciling Deployments to it then (and plays
the controller itself when no controller manager runs). A ready file in the
state directory marks it up, for healthchecks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emunet.nodes.process import (
    Service,
    program_parser,
    restarting,
    run_main,
    setup_logging,
    until_signal,
)
from emunet.nodes.registry import AlreadyExists, Registry
from emunet.nodes.subnets import EtcdError

from emunet.cluster import keys
from emunet.cluster.controllers import (
    DEFAULT_GRACE,
    DEFAULT_TOLERATION,
    NodeLifecycle,
    plan_deployment,
)

__all__ = ["LEASE_KEY", "ControllerConfig", "ControllerManager", "main"]

log = logging.getLogger("emunet.controller-manager")

LEASE_KEY = keys.CONTROLLER_LEASE_KEY
LEASE_TTL = 10


@dataclass
class ControllerConfig:
    etcd: str
    state_dir: Path
    grace: float = DEFAULT_GRACE
    toleration: float = DEFAULT_TOLERATION
    sync_period: float = 1.0
    burst: int = 100
    seed: int | None = None


class ControllerManager(Service):
    """``async with ControllerManager(config): ...`` runs the controllers."""

    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.registry = Registry(config.etcd, request_timeout=5.0)
        self.lifecycle = NodeLifecycle(config.grace, config.toleration)
        self.rng = random.Random(config.seed)
        self.counters: dict[str, int] = {
            "syncs": 0,
            "sync_errors": 0,
            "pods_created": 0,
            "pods_deleted": 0,
            "pods_bound": 0,
            "pods_marked_not_ready": 0,
            "pods_evicted": 0,
            "orphans_deleted": 0,
            "loop_restarts": 0,
        }
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def ready_file(self) -> Path:
        return self.config.state_dir / "ready"

    async def start(self) -> None:
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        await self.registry.__aenter__()
        loop = asyncio.get_running_loop()
        jobs: list[tuple[Callable[[], Any], str]] = [
            (self._hold, "lease"),
            (lambda: self._watch(keys.prefix(keys.Kind.DEPLOYMENT)), "watch-deployments"),
            (lambda: self._watch(keys.prefix(keys.Kind.POD)), "watch-pods"),
            (self._loop, "sync"),
        ]
        for make, name in jobs:
            self._tasks.append(loop.create_task(self._guard(make, name), name=name))

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        self._tasks.clear()
        self.ready_file.unlink(missing_ok=True)
        with contextlib.suppress(Exception):
            await self.registry.close()

    async def _guard(self, make: Callable[[], Any], name: str) -> None:
        await restarting(make, name, log, self.counters)

    async def _hold(self) -> None:
        delay = 0.2
        while True:
            try:
                await self.registry.hold_lease(LEASE_KEY, "kube-controller-manager", LEASE_TTL)
                break
            except EtcdError as exc:
                log.warning("cannot take the controller lease yet: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.ready_file.write_text("ready\n")
        log.info("controller manager up (grace %.0f s, toleration %.0f s)",
                 self.config.grace, self.config.toleration)  # fmt: skip

    async def _watch(self, prefix: str) -> None:
        async for _ev in self.registry.watch(prefix):
            self._dirty.set()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), self.config.sync_period)
            await asyncio.sleep(0.05)  # debounce a burst of events
            self._dirty.clear()
            try:
                await self.sync(time.monotonic())
            except EtcdError as exc:
                self.counters["sync_errors"] += 1
                log.warning("sync failed: %s (retrying)", exc)

    async def sync(self, now: float) -> None:
        """One pass of every controller (see the module docstring)."""
        reg = self.registry
        pods = await reg.list_pods(None)  # pods first: a pod's Deployment is older
        deployments = await reg.list_deployments(None)
        nodes = await reg.nodes()
        self.counters["syncs"] += 1
        life = self.lifecycle
        life.observe(nodes, now)
        mark, evict = life.plan(pods, now)
        for p in mark:
            if await reg.update_pod_if_exists(p):
                self.counters["pods_marked_not_ready"] += 1
                log.info("pod %s/%s not ready: %s", p.namespace, p.name, p.message)
        gone: set[tuple[str, str]] = set()
        for p in evict:
            if await reg.delete_pod(p.namespace, p.name):
                self.counters["pods_evicted"] += 1
                log.info("evicted pod %s/%s from NotReady node %s", p.namespace, p.name,
                         p.node_name)  # fmt: skip
            gone.add((p.namespace, p.name))
        # owners from the keys, not the decoded objects: a Deployment whose value does
        # not decode (written by an older version, by hand) still owns its pods
        owners = await reg.deployment_names()
        for p in pods:
            if (
                p.owner
                and (p.namespace, p.owner) not in owners
                and (p.namespace, p.name) not in gone
            ):
                if await reg.delete_pod(p.namespace, p.name):
                    self.counters["orphans_deleted"] += 1
                gone.add((p.namespace, p.name))
        live = [p for p in pods if (p.namespace, p.name) not in gone]
        plan = plan_deployment(deployments, live, nodes, self.rng, burst=self.config.burst)
        for p in plan.bind:
            if await reg.update_pod_if_exists(p):
                self.counters["pods_bound"] += 1
        for p in plan.create:
            try:
                await reg.create_pod(p)
                self.counters["pods_created"] += 1
            except AlreadyExists:
                continue
        for p in plan.delete:
            if await reg.delete_pod(p.namespace, p.name):
                self.counters["pods_deleted"] += 1
        if plan.create or plan.delete or plan.bind:
            self._dirty.set()  # until it converges


# ------------------------------------------------------------------- main


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"{text!r}: 0 to 86400 seconds")
    return value


def parser() -> argparse.ArgumentParser:
    p = program_parser(
        "emunet-controller-manager",
        "emunet's kube-controller-manager and scheduler: Deployments, node "
        "lifecycle (NotReady, eviction), pod admission by node capacity.",
        "the ready file",
    )
    p.add_argument(
        "--node-monitor-grace-period",
        type=_seconds,
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help=f"NotReady this long: its pods leave the endpoints ({DEFAULT_GRACE:.0f})",
    )
    p.add_argument(
        "--pod-eviction-timeout",
        type=_seconds,
        default=DEFAULT_TOLERATION,
        metavar="SECONDS",
        help="then this long more: its pods are evicted, recreated elsewhere "
        f"({DEFAULT_TOLERATION:.0f}, the not-ready toleration)",
    )
    p.add_argument("--sync-period", type=_seconds, default=1.0, metavar="SECONDS")
    p.add_argument("--burst", type=int, default=100, choices=range(1, 10001), metavar="1-10000")
    p.add_argument("--seed", type=int, default=None)
    return p


async def amain(config: ControllerConfig) -> int:
    async with ControllerManager(config):
        await until_signal()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging("controller-manager", args.log_level)
    config = ControllerConfig(
        etcd=args.etcd,
        state_dir=args.state_dir,
        grace=args.node_monitor_grace_period,
        toleration=args.pod_eviction_timeout,
        sync_period=max(args.sync_period, 0.05),
        burst=args.burst,
        seed=args.seed,
    )
    return run_main("emunet-controller-manager", amain(config))


if __name__ == "__main__":
    sys.exit(main())
