"""The node agent: flanneld + kubelet + kube-proxy of one emulated node.

Theory of operation
-------------------
One asyncio process (uvloop under ``python -m emunet.nodes``) per node:

1. **flanneld**: :class:`~emunet.nodes.subnets.SubnetManager` acquires the
   node's subnet lease (reusing its previous one after a restart) and writes
   ``subnet.env`` into the state directory; :meth:`SubnetManager.watch` feeds
   peers' leases to ``node.set_lease`` / ``node.remove_lease``, so peer routes
   appear and disappear with the leases. A revoked own lease stops the agent
   with a one-line message (exit status 1).
2. The data plane :class:`~emunet.dataplane.node.Node` is built on that
   subnet and driven by :class:`~emunet.nodes.runtime.NodeRuntime` (overlay
   UDP on ``node_ip:8285``, underlay wire on ``node_ip:8286``).
3. The node registers in the registry (``/registry/minions/<name>``, a
   kept-alive node lease, the control endpoint).
4. **kubelet**: one watch of ``/registry/pods/`` keeps a cache of every pod.
   Pods with ``spec.nodeName`` == this node are created in the Node (an IP
   from the subnet, host-local style: the next free address after the last
   one handed out, so a recreated pod gets a new IP), their containers' apps
   are started, and ``status`` (phase Running, podIP, hostIP) is written back;
   pods deleted or moved away are removed. A pod that already has a podIP
   of this subnet (the agent restarted) keeps it.
5. **kube-proxy**: a watch of Services plus the pod cache; any change
   schedules one debounced ``node.set_services(services, endpoints)``
   (endpoints derived with ``endpoints.endpoints_for``).
6. The control API (:mod:`emunet.nodes.control`) on ``node_ip:control_port``.

etcd going away changes nothing for the data plane: the watches reconnect
with backoff and re-list (emitting what changed meanwhile); status writes
that failed are retried. SIGTERM/SIGINT stop everything in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from emunet.nodes.address_map import AddressMap
from emunet.nodes.apps import AppContext, load_app
from emunet.nodes.control import ControlServer
from emunet.nodes.process import Service
from emunet.nodes.registry import Registry
from emunet.nodes.runtime import NodeRuntime
from emunet.nodes.subnets import EtcdError, SubnetManager

from emunet.cluster import keys
from emunet.cluster import registry as model
from emunet.cluster.endpoints import endpoints_for, to_kubeproxy
from emunet.cluster.flannel import LeaseAdded, LeaseRemoved, LeaseRevoked, NetworkConfig
from emunet.cluster.keys import Kind
from emunet.cluster.registry import netns_name
from emunet.dataplane.node import Node
from emunet.errors import ConfigError, EmunetError

__all__ = ["Agent", "AgentConfig", "AgentStopped"]

log = logging.getLogger("emunet.agent")

DEFAULT_NETWORK = IPv4Network("10.244.0.0/16")
LOCAL_NODE_NETWORK = IPv4Network("127.0.0.0/8")
_STATUS_RETRY = 1.0


class AgentStopped(EmunetError):
    """The agent stopped because of a condition the user must act on."""


@dataclass
class AgentConfig:
    name: str
    node_ip: IPv4Address
    etcd: str
    state_dir: Path
    control_port: int = 10250
    lease_ttl: int = 86400
    network: IPv4Network = DEFAULT_NETWORK
    node_network: IPv4Network = LOCAL_NODE_NETWORK
    address_map: AddressMap | None = None
    gateway: IPv4Address | None = None
    proxy_mode: str = "iptables"
    ipvs_scheduler: str = "rr"
    proxy_debounce: float = 0.1
    node_lease_ttl: int = model.NODE_LEASE_TTL
    seed: int | None = None
    overlay_accept: str = "any"  # "any" as flanneld, or "leases": refuse other senders
    allow_module_apps: bool = False  # import any module:Class a pod names
    token: str | None = None  # the control API's token (None: no token asked)


@dataclass
class _LocalPod:
    uid: str
    netns: str
    pod: model.Pod
    contexts: list[AppContext] = field(default_factory=list)
    failure: str = ""  # why an app failed: status.message


class Agent(Service):
    """One node agent; ``async with Agent(config) as agent: await agent.wait()``."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.node: Node | None = None
        self.runtime: NodeRuntime | None = None
        self.control: ControlServer | None = None
        self.subnets: SubnetManager | None = None
        self.registry: Registry | None = None
        self.pods: dict[str, model.Pod] = {}  # every pod in the cluster, by key
        self.services: dict[str, model.Service] = {}
        self.local: dict[str, _LocalPod] = {}  # pods of this node, by key
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopped: asyncio.Future[str | None] | None = None
        self._proxy_dirty: asyncio.Event | None = None
        self._status_dirty: set[str] = set()
        self._last_ip: IPv4Address | None = None
        self.registered = False
        self.etcd_ok = False
        self.counters: dict[str, int] = {
            "lease_events": 0,
            "pod_events": 0,
            "service_events": 0,
            "proxy_syncs": 0,
            "proxy_errors": 0,
            "status_writes": 0,
            "status_failures": 0,
            "pods_created": 0,
            "pods_deleted": 0,
            "app_failures": 0,
            "leases_refused": 0,
        }

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        self._stopped = loop.create_future()
        self._proxy_dirty = asyncio.Event()
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        self._load_last_ip()
        self.subnets = SubnetManager(
            cfg.etcd,
            public_ip=cfg.node_ip,
            ttl=cfg.lease_ttl,
            subnet_env_path=cfg.state_dir / "subnet.env",
        )
        await self.subnets.__aenter__()
        lease = await self._acquire()
        self.node = Node(
            cfg.name,
            cfg.node_ip,
            lease.subnet,
            network=lease.config.network,
            node_network=cfg.node_network,
            gateway=cfg.gateway,
            proxy_mode=cfg.proxy_mode,
            ipvs_scheduler=cfg.ipvs_scheduler,
            seed=cfg.seed,
        )
        self.node.flannel.accept_unknown = cfg.overlay_accept == "any"
        self.runtime = NodeRuntime(self.node, loop, address_map=cfg.address_map)
        await self.runtime.start()
        self.control = ControlServer(
            self.runtime,
            self.runtime.bind_ip,
            cfg.control_port,
            status=self._status,
            resolver=self.resolve,
            pod_lookup=self._pod_lookup,
            extra_counters=self._counters,
            token=cfg.token,
        )
        await self.control.start()
        log.info(
            "node %s up: node IP %s, subnet %s, overlay udp %s:%d, control %s:%d",
            cfg.name,
            cfg.node_ip,
            lease.subnet,
            self.runtime.bind_ip,
            self.runtime.overlay_port,
            self.runtime.bind_ip,
            self.control.port,
        )
        self.registry = Registry(cfg.etcd)
        await self.registry.__aenter__()
        for coro, name in (
            (self._watch_leases(), "flannel-watch"),
            (self._register(), "register"),
            (self._kubelet(), "kubelet"),
            (self._watch_services(), "kube-proxy-watch"),
            (self._proxy_sync_loop(), "kube-proxy-sync"),
            (self._status_loop(), "kubelet-status"),
        ):
            self._tasks.append(loop.create_task(self._guard(coro, name), name=name))

    async def _guard(self, coro: Any, name: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except LeaseRevoked as exc:
            self.stop(f"{exc}; stopping (restart the agent to acquire a new subnet)")
        except Exception as exc:
            log.exception("%s failed", name)
            self.stop(f"{name} failed: {exc}")

    def stop(self, reason: str | None = None) -> None:
        """Ask the agent to stop; ``reason`` (an error) makes :meth:`wait` raise."""
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(reason)

    async def wait(self) -> None:
        """Run until :meth:`stop`; raises :class:`AgentStopped` if stopped by an error."""
        assert self._stopped is not None
        reason = await self._stopped
        if reason:
            raise AgentStopped(reason)

    @property
    def ready_file(self) -> Path:
        """``<state dir>/ready`` exists while the node is registered (a container's
        healthcheck reads it)."""
        return self.config.state_dir / "ready"

    async def close(self) -> None:
        with contextlib.suppress(OSError):
            self.ready_file.unlink(missing_ok=True)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        self._tasks.clear()
        if self.control is not None:
            await self.control.close()
        if self.runtime is not None:
            await self.runtime.close()
        if self.registry is not None:
            if self.registered:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.registry.unregister_node(self.config.name), 2.0)
            with contextlib.suppress(Exception):
                await self.registry.close()
        if self.subnets is not None:
            with contextlib.suppress(Exception):
                await self.subnets.close()
        log.info("node %s stopped", self.config.name)

    # --------------------------------------------------------------- flannel

    async def _acquire(self) -> Any:
        assert self.subnets is not None
        delay = 0.2
        while True:
            try:
                await self.subnets.ensure_config(NetworkConfig.create(self.config.network))
                return await self.subnets.acquire()
            except EtcdError as exc:
                log.warning("cannot acquire a subnet yet: %s (retrying in %.1f s)", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _counters(self) -> dict[str, int]:
        out = dict(self.counters)
        if self.node is not None:
            out["overlay_from_unknown"] = self.node.flannel.from_unknown
        if self.runtime is not None:
            for name, n in self.runtime.kernel_drops().items():
                out[f"{name}_kernel_drops"] = n
        return out

    async def _watch_leases(self) -> None:
        assert self.subnets is not None and self.node is not None and self.runtime is not None
        node_network = self.config.node_network
        async for event in self.subnets.watch():
            self.counters["lease_events"] += 1
            if isinstance(event, LeaseAdded) and event.public_ip not in node_network:
                # anyone who can write to etcd could point pod traffic anywhere
                self.counters["leases_refused"] += 1
                log.warning(
                    "refusing lease %s: PublicIP %s is outside the node network %s",
                    event.subnet,
                    event.public_ip,
                    node_network,
                )
                if self.node.flannel.table.get(event.subnet) is not None:
                    self.node.remove_lease(event.subnet)
                continue
            if isinstance(event, LeaseAdded):
                self.node.set_lease(event.subnet, event.public_ip)
                log.info("lease added: %s via %s", event.subnet, event.public_ip)
            elif isinstance(event, LeaseRemoved):
                self.node.remove_lease(event.subnet)
                log.info("lease removed: %s (was %s)", event.subnet, event.public_ip)
            self.runtime.poke()

    # -------------------------------------------------------------- registry

    async def _register(self) -> None:
        assert self.registry is not None and self.node is not None and self.control is not None
        info = model.NodeInfo(
            self.config.name,
            self.config.node_ip,
            self.node.subnet,
            f"{self.runtime.bind_ip if self.runtime else self.config.node_ip}:{self.control.port}",
        )
        delay = 0.2
        while True:
            try:
                await self.registry.register_node(info, self.config.node_lease_ttl)
                self.registered = self.etcd_ok = True
                self.ready_file.write_text("ready\n")
                log.info("registered node %s (Ready)", info.name)
                return
            except EtcdError as exc:
                self.etcd_ok = False
                log.warning("cannot register the node yet: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _status(self) -> Mapping[str, Any]:
        return {
            "ready": self.registered,
            "etcd": "connected" if self.etcd_ok else "unreachable",
            "runningPods": sorted(lp.netns for lp in self.local.values()),
        }

    def _pod_lookup(self, name: str) -> str | None:
        node = self.node
        if node is None:
            return None
        if name in node.pods:
            return name
        ns, sep, pod = name.partition("/")
        if sep:
            cand = netns_name(ns, pod)
            return cand if cand in node.pods else None
        return None

    async def resolve(self, host: str) -> IPv4Address | None:
        """Cluster DNS from the caches: services, pods, nodes."""
        name = host.rstrip(".")
        for suffix in (".svc.cluster.local", ".cluster.local", ".svc"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        svc, _, ns = name.partition(".")
        ns = ns or model.DEFAULT_NAMESPACE
        s = self.services.get(keys.key(Kind.SERVICE, svc, ns)) if _safe(svc, ns) else None
        if s is not None and s.cluster_ip is not None:
            return s.cluster_ip
        p = self.pods.get(keys.key(Kind.POD, svc, ns)) if _safe(svc, ns) else None
        if p is not None and p.pod_ip is not None:
            return p.pod_ip
        for pod in self.pods.values():
            if pod.name == host and pod.pod_ip is not None:
                return pod.pod_ip
        if self.registry is not None:  # a miss: read etcd, the watch may not have caught up
            return await _resolve_from_etcd(self.registry, host, svc, ns)
        return None

    # ---------------------------------------------------------------- kubelet

    async def _kubelet(self) -> None:
        assert self.registry is not None
        async for ev in self.registry.watch(keys.prefix(Kind.POD), sync_marker=True):
            self.etcd_ok = True
            self.counters["pod_events"] += 1
            if ev.type == "SYNC":
                continue
            if ev.type == "PUT" and isinstance(ev.object, model.Pod):
                self.pods[ev.key] = ev.object
                await self._pod_changed(ev.key, ev.object)
            elif ev.type == "DELETE":
                self.pods.pop(ev.key, None)
                await self._remove_local(ev.key, "deleted")
            self._mark_proxy()

    async def _pod_changed(self, key: str, pod: model.Pod) -> None:
        mine = pod.node_name == self.config.name
        local = self.local.get(key)
        if local is not None and (not mine or local.uid != pod.uid):
            await self._remove_local(key, "moved" if not mine else "replaced")
            local = None
        if not mine:
            return
        if local is None:
            await self._create_local(key, pod)
            return
        if not local.netns:
            want = local.pod  # it could not be created: its Failed status stands
        else:
            local.pod = pod
            want = self._running_status(local)
        if _status_of(pod) != _status_of(want):  # e.g. marked not ready while we were away
            self._status_dirty.add(key)

    def _running_status(self, local: _LocalPod) -> model.Pod:
        assert self.node is not None
        ip = self.node.pods[local.netns].ip
        failed = [c for c in local.contexts if c.stats.get("failed")]
        if failed:
            return local.pod.with_status(
                model.PodPhase.FAILED,
                ip,
                self.config.node_ip,
                local.failure or "an app failed",
                reason="Error",
            )
        return local.pod.with_status(model.PodPhase.RUNNING, ip, self.config.node_ip)

    def _pick_ip(self, pod: model.Pod) -> IPv4Address:
        node = self.node
        assert node is not None
        used = {p.ip for p in node.pods.values()}
        subnet = node.subnet
        if (
            pod.pod_ip is not None
            and pod.pod_ip in subnet
            and pod.pod_ip not in used
            and pod.pod_ip not in (node.gateway_ip, subnet.network_address)
            and pod.pod_ip != subnet.broadcast_address
        ):
            return pod.pod_ip  # the agent restarted: the pod keeps its address
        hosts = [h for h in subnet.hosts() if h != node.gateway_ip]
        start = 0
        if self._last_ip is not None and self._last_ip in subnet:
            with contextlib.suppress(ValueError):
                start = hosts.index(self._last_ip) + 1
        for i in range(len(hosts)):
            cand = hosts[(start + i) % len(hosts)]
            if cand not in used:
                self._last_ip = cand
                self._save_last_ip()
                return cand
        raise ConfigError(f"node {node.name}: subnet {subnet} has no free address")

    def _load_last_ip(self) -> None:
        path = self.config.state_dir / "last_reserved_ip.0"
        with contextlib.suppress(OSError, ValueError):
            self._last_ip = IPv4Address(path.read_text().strip())

    def _save_last_ip(self) -> None:
        path = self.config.state_dir / "last_reserved_ip.0"
        with contextlib.suppress(OSError):
            path.write_text(f"{self._last_ip}\n")

    async def _create_local(self, key: str, pod: model.Pod) -> None:
        node, rt = self.node, self.runtime
        assert node is not None and rt is not None
        name = netns_name(pod.namespace, pod.name)
        if name in node.pods:  # a stale namespace under the same name
            await self._remove_netns(name)
        try:
            ip = self._pick_ip(pod)
            p = node.add_pod(
                name,
                namespace=pod.namespace,
                ip=ip,
                containers=[c.name for c in pod.containers] or ["app"],
                labels=dict(pod.labels),
                now=rt.now(),
            )
        except ConfigError as exc:
            log.error("pod %s/%s cannot be created: %s", pod.namespace, pod.name, exc)
            failed = pod.with_status(
                model.PodPhase.FAILED, None, self.config.node_ip, str(exc), reason="CreateFailed"
            )
            self.local[key] = _LocalPod(pod.uid, "", failed)
            self._status_dirty.add(key)
            return
        local = _LocalPod(pod.uid, name, pod)
        self.local[key] = local
        self.counters["pods_created"] += 1
        for c in pod.containers:
            ctx = AppContext(
                rt,
                name,
                pod.namespace,
                p.ip,
                self.config.name,
                dict(c.args),
                [port.container_port for port in c.ports],
            )
            local.contexts.append(ctx)
            try:
                app = load_app(c.app, allow_modules=self.config.allow_module_apps)
            except ConfigError as exc:
                ctx.stats["failed"] = 1
                local.failure = f"container {c.name}: {exc}"
                self.counters["app_failures"] += 1
                log.error("pod %s: container %s: %s", name, c.name, exc)
                continue
            rt.spawn(name, self._run_app(app, ctx, c.name), name=f"{name}/{c.name}")
        rt.poke()
        log.info("pod %s/%s created with IP %s", pod.namespace, pod.name, p.ip)
        self._status_dirty.add(key)
        await self._write_statuses()

    async def _run_app(self, app: Any, ctx: AppContext, container: str) -> None:
        try:
            await app.run(ctx)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an app's bug fails its pod, never the agent
            ctx.stats["failed"] = 1
            self.counters["app_failures"] += 1
            log.error("pod %s: container %s exited: %r", ctx.pod, container, exc)
            for key, lp in self.local.items():
                if lp.netns == ctx.pod:
                    lp.failure = f"container {container} exited: {exc!r}"
                    self._status_dirty.add(key)

    async def _remove_local(self, key: str, why: str) -> None:
        local = self.local.pop(key, None)
        self._status_dirty.discard(key)
        if local is None or not local.netns:
            return
        await self._remove_netns(local.netns)
        self.counters["pods_deleted"] += 1
        log.info("pod %s removed (%s)", local.netns, why)

    async def _remove_netns(self, name: str) -> None:
        rt, node = self.runtime, self.node
        assert rt is not None and node is not None
        await rt.cancel_tasks(name)
        with contextlib.suppress(ConfigError):
            node.remove_pod(name)
        rt.poke()

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(_STATUS_RETRY)
            if self._status_dirty:
                await self._write_statuses()

    async def _write_statuses(self) -> None:
        assert self.registry is not None
        for key in list(self._status_dirty):
            local = self.local.get(key)
            if local is None:
                self._status_dirty.discard(key)
                continue
            pod = local.pod if not local.netns else self._running_status(local)
            try:
                ok = await self.registry.update_pod_if_exists(pod)
            except EtcdError as exc:
                self.etcd_ok = False
                self.counters["status_failures"] += 1
                log.warning("cannot write the status of %s yet: %s", key, exc)
                return
            self.etcd_ok = True
            self._status_dirty.discard(key)
            self.counters["status_writes"] += 1
            if ok:
                local.pod = pod
                self.pods[key] = pod
                self._mark_proxy()

    # ------------------------------------------------------------ kube-proxy

    async def _watch_services(self) -> None:
        assert self.registry is not None
        async for ev in self.registry.watch(keys.prefix(Kind.SERVICE)):
            self.counters["service_events"] += 1
            if ev.type == "PUT" and isinstance(ev.object, model.Service):
                self.services[ev.key] = ev.object
            elif ev.type == "DELETE":
                self.services.pop(ev.key, None)
            self._mark_proxy()

    def _mark_proxy(self) -> None:
        if self._proxy_dirty is not None:
            self._proxy_dirty.set()

    async def _proxy_sync_loop(self) -> None:
        assert self._proxy_dirty is not None
        while True:
            await self._proxy_dirty.wait()
            await asyncio.sleep(self.config.proxy_debounce)
            self._proxy_dirty.clear()
            self.sync_proxy()

    def sync_proxy(self) -> None:
        node, rt = self.node, self.runtime
        assert node is not None and rt is not None
        services = []
        for s in self.services.values():
            if s.cluster_ip is None:
                continue
            try:
                services.append((s, to_kubeproxy(s)))
            except ConfigError as exc:
                log.warning("skipping service %s/%s: %s", s.namespace, s.name, exc)
        pods = list(self.pods.values())
        endpoints = {kp.key: endpoints_for(s, pods) for s, kp in services}
        try:
            node.set_services([kp for _, kp in services], endpoints, rt.now())
        except ConfigError as exc:
            self.counters["proxy_errors"] += 1
            log.error("kube-proxy sync failed, keeping the previous rules: %s", exc)
            return
        self.counters["proxy_syncs"] += 1
        n_ep = sum(len(v) for v in endpoints.values())
        log.info("kube-proxy synced %d services, %d endpoints", len(services), n_ep)
        rt.poke()


def _status_of(pod: model.Pod) -> tuple[object, ...]:
    return (pod.phase, pod.pod_ip, pod.host_ip, pod.ready, pod.reason)


async def _resolve_from_etcd(reg: Registry, host: str, name: str, ns: str) -> IPv4Address | None:
    """A Service, a pod or a node a node's caches do not hold yet (one just created
    elsewhere), read from etcd; each read bounded."""
    try:
        if _safe(name, ns):
            s = await asyncio.wait_for(reg.get_service(ns, name), 2.0)
            if s is not None and s.cluster_ip is not None:
                return s.cluster_ip
            p = await asyncio.wait_for(reg.get_pod(ns, name), 2.0)
            if p is not None and p.pod_ip is not None:
                return p.pod_ip
        n = await asyncio.wait_for(reg.get_node(host), 2.0)
    except (EmunetError, TimeoutError):
        return None
    return n.internal_ip if n is not None else None


def _safe(name: str, namespace: str) -> bool:
    return bool(name) and bool(namespace) and "/" not in name and "/" not in namespace
