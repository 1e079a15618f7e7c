"""``emunet-internet``: the machines outside the cluster as a running process.

Theory of operation
-------------------
One asyncio (uvloop) process runs an :class:`~emunet.dataplane.site.InternetSite`
beside the node agents, over the same wire:

* each of its addresses on the node network (the gateway's ``eth0``, a host on
  the node network) has a UDP socket on port 8286, emunet's node-network wire:
  a node whose default route points at the gateway sends the packet there as
  it sends any packet on ``eth0``, and what the site sends to a node goes to
  that node's 8286;
* with ``--gateway`` it runs the gateway (NAT to its public address) and the
  **cloud controller**: LoadBalancer Services get an IP from ``--lb-pool``
  written to ``status.loadBalancer.ingress`` (a requested
  ``spec.loadBalancerIP`` is honoured when it is in the pool and free), and
  the load balancer is programmed with the NodePort of each Service port and
  its healthy nodes (Ready nodes; with externalTrafficPolicy Local only those
  with a ready local endpoint, as the cloud's probe of kube-proxy's
  healthCheckNodePort decides);
* every host is recorded in etcd at ``/registry/emunet/hosts/<name>`` with the
  control endpoint of this process, which serves the agents' control API
  (``exec`` runs pod-shell commands on a host: ``pod-shell --external NAME``).

Exit status as ``emunet-node``'s: 0 after SIGTERM/SIGINT, 1 when it had to
stop, 2 for bad arguments; errors are one line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any, cast

from emunet.nodes.address_map import AddressMap
from emunet.nodes.control import ControlServer
from emunet.nodes.process import (
    Service,
    add_token_option,
    address_map_arg,
    network_arg,
    port_arg,
    program_parser,
    restarting,
    run_main,
    setup_logging,
    token_from_args,
    until_signal,
    usage_error,
)
from emunet.nodes.registry import Registry
from emunet.nodes.resolve import resolve_address
from emunet.nodes.runtime import (
    GSO_SEGMENTS,
    NodeRuntime,
    _udp_socket,
    datagram_runs,
)
from emunet.nodes.subnets import EtcdError
from emunet.nodes.udp_port import UDPPort

from emunet.cluster import keys
from emunet.cluster import registry as model
from emunet.cluster.endpoints import endpoints_for, to_kubeproxy
from emunet.cluster.keys import Kind
from emunet.cluster.registry import ExternalHostInfo, ServiceType
from emunet.dataplane.node import Node
from emunet.dataplane.site import APPS, InternetSite, choose_ingress, lb_pool
from emunet.errors import ConfigError

__all__ = ["InternetConfig", "InternetProcess", "InternetRuntime", "main"]

log = logging.getLogger("emunet.internet")

DEFAULT_PUBLIC = "198.51.100.1/24"
DEFAULT_LB_POOL = "198.51.100.10-198.51.100.99"
_SYNC_EVERY = 1.0  # seconds between the cloud controller's syncs (and its node poll)


@dataclass
class InternetConfig:
    etcd: str
    node_network: IPv4Network
    state_dir: Path
    gateway: IPv4Address | None = None
    gateway_via: IPv4Address | None = None
    hosts: list[tuple[str, IPv4Address]] = field(default_factory=list)
    public: str = DEFAULT_PUBLIC
    lb_pool: str = DEFAULT_LB_POOL
    control_port: int = 10250
    address_map: AddressMap | None = None
    name: str = "internet"
    seed: int = 0
    token: str | None = None  # the control API's token


class InternetRuntime(NodeRuntime):
    """:class:`NodeRuntime` for a site: one wire socket per node-network address,
    no overlay (the site is not a flannel peer). The site answers like a Node
    for the shell and the control API (``pods``, ``namespace``, timers)."""

    def __init__(self, site: InternetSite, *, address_map: AddressMap | None = None) -> None:
        # the runtime's node-facing calls are the ones a site provides (see InternetSite)
        super().__init__(cast(Node, site), overlay_port=0, address_map=address_map)
        self.site = site
        self._wires: dict[IPv4Address, UDPPort] = {}
        self._local_real: dict[str, IPv4Address] = {}

    async def start(self) -> None:
        self._wall_offset = time.time() - time.monotonic()
        self.started_at = self.now()
        for addr in self.site.wire_addresses():
            sock = _udp_socket(self.real(str(addr)), self.wire_port)
            try:
                port = UDPPort(
                    self.loop, sock, self._on_wire(addr), self._batch_read, self._socket_error
                )
            except BaseException:
                sock.close()
                raise
            self._wires[addr] = port
        self.poke()

    def _on_wire(self, local: IPv4Address) -> Callable[[bytes, tuple[str, int], float], None]:
        def on_datagram(data: bytes, src: tuple[str, int], now: float) -> None:
            try:
                self._site_wire_in(local, data, now)
            except Exception:  # one bad datagram never stops the site
                self._bad_datagram(src)

        return on_datagram

    async def close(self) -> None:
        await super().close()
        for tr in self._wires.values():
            tr.close()
        self._wires.clear()

    def _site_wire_in(self, local: IPv4Address, data: bytes, now: float) -> None:
        self.stats.wire_rx += 1
        if len(data) < 20:
            self.stats.socket_errors += 1
            return
        self.site.wire_received(local, data, now)

    def flush(self, floor: float | None = None) -> None:
        self._flush_scheduled = False
        if self._closed:
            return
        self.stats.flushes += 1
        try:
            actions = self.site.take_actions()
        except Exception:
            self.stats.internal_errors += 1
            log.exception("%s: error running its hosts", self.site.name)
            actions = []
        wire = next(iter(self._wires.values()), None)  # GSO sends go straight to its socket
        sock = wire.sock if wire else None
        for _, hop, payloads in datagram_runs(actions, GSO_SEGMENTS if self.gso else 1):
            self._send_wire(wire, sock, cast(IPv4Address, hop), payloads)
        self._arm_timer(floor)


class InternetProcess(Service):
    """The site, its runtime and control API, the hosts' records and the cloud."""

    def __init__(self, config: InternetConfig) -> None:
        self.config = config
        self.site = InternetSite(
            config.name,
            node_network=config.node_network,
            gateway=config.gateway,
            gateway_via=config.gateway_via,
            public=config.public,
            seed=config.seed,
        )
        for name, ip in config.hosts:
            self.site.add_host(name, ip)
        if not self.site.wire_addresses():
            raise ConfigError("nothing on the node network: give --gateway or a --host on it")
        self.pool = lb_pool(config.lb_pool) if config.gateway is not None else []
        self.runtime = InternetRuntime(self.site, address_map=config.address_map)
        self.control: ControlServer | None = None
        self.registry: Registry | None = None
        self.services: dict[str, model.Service] = {}
        self.pods: dict[str, model.Pod] = {}
        self._dirty: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.counters: dict[str, int] = {
            "lb_syncs": 0,
            "ingress_writes": 0,
            "pool_exhausted": 0,
            "loop_restarts": 0,
        }
        self._refused: dict[str, str] = {}  # Service key -> why it has no IP

    @property
    def ready_file(self) -> Path:
        return self.config.state_dir / "ready"

    async def start(self) -> None:
        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        self._dirty = asyncio.Event()
        await self.runtime.start()
        self.control = ControlServer(
            self.runtime,
            self.runtime.bind_ip,
            cfg.control_port,
            status=self._status,
            pod_lookup=lambda name: name if name in self.site.pods else None,
            extra_counters=lambda: self.counters,
            token=cfg.token,
        )
        await self.control.start()
        self.registry = Registry(cfg.etcd, request_timeout=3.0)
        await self.registry.__aenter__()
        loop = asyncio.get_running_loop()
        jobs: list[tuple[Callable[[], Any], str]] = [(self._register, "register")]
        if self.site.gateway is not None:
            jobs += [
                (lambda: self._watch(keys.prefix(Kind.SERVICE), self.services), "cloud-services"),
                (lambda: self._watch(keys.prefix(Kind.POD), self.pods), "cloud-pods"),
                (self._cloud_loop, "cloud-controller"),
            ]
        for make, name in jobs:
            self._tasks.append(loop.create_task(self._guard(make, name), name=name))
        log.info(
            "%s up: %s; control %s:%d",
            cfg.name,
            ", ".join(f"{n} {self.site.host_ip(h)}" for n, h in self.site.pods.items()),
            self.runtime.bind_ip,
            self.control.port,
        )

    async def _guard(self, make: Callable[[], Any], name: str) -> None:
        await restarting(make, name, log, self.counters)

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        self._tasks.clear()
        self.ready_file.unlink(missing_ok=True)
        if self.control is not None:
            await self.control.close()
        await self.runtime.close()
        if self.registry is not None:
            with contextlib.suppress(Exception):
                await self.registry.close()

    def _status(self) -> Mapping[str, Any]:
        return {
            "role": "internet",
            "hosts": sorted(self.site.pods),
            "loadBalancers": len(self.site.gateway.nat.vips) if self.site.gateway else 0,
        }

    # ---------------------------------------------------------------- hosts

    def host_records(self) -> list[ExternalHostInfo]:
        assert self.control is not None
        endpoint = f"{self.runtime.bind_ip}:{self.control.port}"
        gw = self.site.gateway
        out = []
        for name, host in self.site.pods.items():
            is_gw = host is gw
            out.append(
                ExternalHostInfo(
                    name,
                    self.site.host_ip(host),
                    self.site.segment_of(host),
                    "gateway" if is_gw else "host",
                    () if is_gw else APPS,
                    endpoint,
                    gw.wan0.addresses[0].ip if is_gw and gw is not None else None,
                )
            )
        return out

    async def _register(self) -> None:
        assert self.registry is not None
        delay = 0.2
        while True:
            try:
                for rec in self.host_records():
                    await self.registry.put_host(rec)
                break
            except EtcdError as exc:
                log.warning("cannot record the hosts yet: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.ready_file.write_text("ready\n")
        log.info("hosts recorded: %s", ", ".join(self.site.pods))

    # ---------------------------------------------------------------- cloud

    async def _watch(self, prefix: str, cache: dict[str, Any]) -> None:
        assert self.registry is not None and self._dirty is not None
        async for ev in self.registry.watch(prefix):
            if ev.type == "PUT" and ev.object is not None:
                cache[ev.key] = ev.object
            elif ev.type == "DELETE":
                cache.pop(ev.key, None)
            self._dirty.set()

    async def _cloud_loop(self) -> None:
        assert self._dirty is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), _SYNC_EVERY)
            self._dirty.clear()
            try:
                await self.sync()
            except EtcdError as exc:
                log.warning("cloud controller: %s (retrying)", exc)

    async def sync(self) -> None:
        """Allocate ingress IPs, then program the load balancer."""
        assert self.registry is not None
        nodes = [n for n in await self.registry.nodes() if n.ready]
        lbs = [s for s in self.services.values() if s.type == ServiceType.LOAD_BALANCER]
        used = {s.ingress_ip for s in lbs if s.ingress_ip is not None}
        for svc in sorted(lbs, key=lambda s: (s.created, s.key)):
            if svc.ingress_ip is not None and (
                svc.load_balancer_ip is None or svc.load_balancer_ip == svc.ingress_ip
            ):
                continue
            if svc.ingress_ip is not None:
                used.discard(svc.ingress_ip)
            ip = choose_ingress(self.pool, used, svc.load_balancer_ip)
            if ip is None:
                if svc.ingress_ip is not None:
                    used.add(svc.ingress_ip)  # it keeps what it has
                why = (
                    f"{svc.load_balancer_ip} is not a free address of the pool"
                    if svc.load_balancer_ip
                    else "the pool is exhausted"
                )
                if self._refused.get(svc.key) != why:  # said once, not every second
                    self._refused[svc.key] = why
                    self.counters["pool_exhausted"] += 1
                    log.warning("LoadBalancer %s/%s: no IP (%s)", svc.namespace, svc.name, why)
                continue
            self._refused.pop(svc.key, None)
            new = await self.registry.set_service_ingress(
                svc.namespace, svc.name, ip, expect=svc.uid
            )
            if new is not None:
                used.add(ip)
                self.services[svc.key] = new
                self.counters["ingress_writes"] += 1
                log.info("LoadBalancer %s/%s: ingress %s", svc.namespace, svc.name, ip)
        services = []
        for s in self.services.values():
            if s.cluster_ip is None or s.external_ip is None:
                continue
            try:
                services.append((s, to_kubeproxy(s)))
            except ConfigError:
                continue
        pods = list(self.pods.values())
        endpoints = {kp.key: endpoints_for(s, pods) for s, kp in services}
        node_ips = {n.name: n.internal_ip for n in nodes}
        self.site.set_services([kp for _, kp in services], endpoints, node_ips)
        self.counters["lb_syncs"] += 1
        self.runtime.poke()


# ------------------------------------------------------------------- main


def _host(text: str) -> tuple[str, str]:
    name, sep, ip = text.partition("=")
    if not sep or not name or not ip:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=IP, e.g. example=203.0.113.10")
    return name, ip


def _interface(text: str) -> str:
    try:
        IPv4Interface(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an address/prefix (a.b.c.d/n)") from None
    return text


def parser() -> argparse.ArgumentParser:
    p = program_parser(
        "emunet-internet",
        "emunet's internet: the gateway router (NAT, the cloud load balancer and "
        "its controller) and hosts outside the cluster, on the node network's wire.",
        "the ready file",
    )
    p.add_argument(
        "--node-network", type=network_arg, help="e.g. 172.18.0.0/24 (or from --address-map)"
    )
    p.add_argument(
        "--gateway", metavar="IP|auto", help="run the gateway here, eth0 at this address"
    )
    p.add_argument(
        "--gateway-ip",
        metavar="IP|NAME",
        help="the gateway runs elsewhere: node-network hosts' route",
    )
    p.add_argument(
        "--host",
        type=_host,
        action="append",
        default=[],
        metavar="NAME=IP",
        help="a host (repeatable): on the node network if IP is in it, else on the internet",
    )
    p.add_argument(
        "--public", type=_interface, default=DEFAULT_PUBLIC, help=f"gateway wan0 ({DEFAULT_PUBLIC})"
    )
    p.add_argument(
        "--lb-pool", default=DEFAULT_LB_POOL, help=f"LoadBalancer IPs ({DEFAULT_LB_POOL})"
    )
    p.add_argument("--control-port", type=port_arg, default=10250, help="control API port (10250)")
    p.add_argument("--address-map", type=address_map_arg, default=None, metavar="EMULATED=REAL")
    p.add_argument("--name", default="internet", help="process name in logs (internet)")
    p.add_argument("--seed", type=int, default=0)
    add_token_option(p)
    return p


async def amain(config: InternetConfig) -> int:
    async with InternetProcess(config):
        await until_signal()
        log.info("signal received, shutting down")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.name, args.log_level)
    if args.node_network is None and args.address_map is None:
        return usage_error("emunet-internet", "--node-network (or --address-map) is required")
    if args.gateway is not None and args.gateway_ip is not None:
        return usage_error("emunet-internet", "--gateway and --gateway-ip exclude each other")
    try:
        gateway = resolve_address(args.gateway) if args.gateway else None
        gateway_via = resolve_address(args.gateway_ip) if args.gateway_ip else None
        hosts = [(name, resolve_address(ip)) for name, ip in args.host]
        token = token_from_args(args.token_file)
    except ConfigError as exc:
        return usage_error("emunet-internet", str(exc))
    config = InternetConfig(
        etcd=args.etcd,
        node_network=args.address_map.emulated if args.address_map else args.node_network,
        state_dir=args.state_dir,
        gateway=gateway,
        gateway_via=gateway_via,
        hosts=hosts,
        public=args.public,
        lb_pool=args.lb_pool,
        control_port=args.control_port,
        address_map=args.address_map,
        name=args.name,
        seed=args.seed,
        token=token,
    )
    return run_main("emunet-internet", amain(config))


if __name__ == "__main__":
    sys.exit(main())
