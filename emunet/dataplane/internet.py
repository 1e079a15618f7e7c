"""An emulated internet behind the node network: a gateway router with NAT and a
cloud load balancer, and external hosts running small apps. Sans-I/O.

Theory of operation
-------------------
Topology (addresses are the defaults; documentation ranges, RFC 5737)::

    nodes segment 172.18.0.0/16          internet segment (flat)
    node1 eth0 172.18.0.2 --+
    node2 eth0 172.18.0.3 --+-- eth0 172.18.0.1 [gateway] wan0 198.51.100.1/24 --+-- 203.0.113.10
    vm    eth0 172.18.0.100 +                          LB IPs 198.51.100.10...    +-- 203.0.113.11

Every machine here is a :class:`Host`: one :class:`~emunet.dataplane.netns.Namespace`
(the same IP stack as a pod's: routes, ARP-free L3 links, ICMP, UDP/TCP sockets)
plus the small :class:`~emunet.dataplane.netns.NodeContext` a namespace needs
(a FIFO, ids, ports, a tracer). A packet leaving an L3 interface becomes a
:class:`HostPacket` ``(iface, next_hop, packet)``; the fabric carries it to the
owner of ``next_hop`` on that interface's *segment* (``"nodes"`` or
``"internet"``), so a private node address is never reachable from the
internet side. The internet segment is flat: its hosts route ``default dev
eth0`` and the fabric delivers to the destination address directly (an ideal
transit network; traceroute shows the gateway as the only router).

The gateway forwards between the segments and runs :class:`GatewayNAT` as the
netfilter hooks of its namespace: a small dedicated NAT (not a
:class:`~emunet.dataplane.netfilter.Netfilter`, whose rules are kube-proxy's
and flannel's) built on the same :class:`~emunet.dataplane.conntrack.ConntrackTable`
and :mod:`~emunet.dataplane.nat` rewriting:

* **source NAT** (a home/cloud NAT gateway: ``-o wan0 -s 172.18.0.0/16 -j
  MASQUERADE`` without ``--random-fully``): the source becomes the public
  address; the source port (ICMP: echo id) is kept when the reply tuple is
  free, else the first free one of the port's class, as Linux does;
* **a passthrough L4 load balancer** (the way cloud network LBs with instance
  targets work): a new connection to ``LB IP:port`` is DNAT'd to
  ``nodeIP:nodePort`` of one *healthy* node, round robin, keeping the client
  source address. Health is decided as the cloud's probe of kube-proxy's
  ``healthCheckNodePort`` would: with externalTrafficPolicy Local only nodes
  with a ready local endpoint pass; with Cluster every node passes. With no
  healthy node the packet is dropped (reason ``load balancer: no healthy
  target``);
* ICMP errors that quote a tracked connection are translated with it (RELATED).

Replies find their conntrack entry and are translated back, so the node sees
``client -> nodeIP:nodePort`` and the client sees ``LB IP:port`` answer.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Final, NamedTuple

from emunet.cluster.kubeproxy import EndpointsMap, Service
from emunet.dataplane.gateway_nat import (
    NO_HEALTHY_TARGET,
    GatewayNAT,
    LoadBalancerTarget,
    load_balancer_targets,
)
from emunet.dataplane.interfaces import UNDERLAY, Interface
from emunet.dataplane.machine import Machine
from emunet.dataplane.netns import Namespace
from emunet.dataplane.tcp import TCPConnection, TCPListener
from emunet.dataplane.trace import Tracer
from emunet.errors import ConfigError

__all__ = [
    "INTERNET",
    "NODES",
    "NO_HEALTHY_TARGET",
    "ExternalHost",
    "Gateway",
    "GatewayNAT",
    "Host",
    "HostPacket",
    "Internet",
    "LoadBalancerTarget",
    "load_balancer_targets",
]

NODES: Final = "nodes"
"""The segment of the node network (the nodes' ``eth0``)."""
INTERNET: Final = "internet"
"""The segment of public addresses."""


class HostPacket(NamedTuple):
    """An IPv4 packet leaving interface ``iface`` of a host for ``next_hop`` at ``time``."""

    iface: str
    next_hop: IPv4Address
    packet: bytearray
    time: float


# --------------------------------------------------------------------- hosts


class Host(Machine):
    """A machine outside the cluster: one namespace on its :class:`Machine`.

    Entry points (:meth:`receive`, :meth:`handle_timer`) take ``now`` and run
    the host's queue to completion; :meth:`take_actions` hands over the packets
    that leave. ``now`` is also kept in :attr:`now` for apps that answer from a
    socket callback.
    """

    def __init__(
        self, name: str, tracer: Tracer, *, seed: int = 0, ip_forward: bool = False
    ) -> None:
        super().__init__(name, tracer, random.Random(seed), strict=True)
        self.now = 0.0
        self.segments: dict[str, str] = {}  # interface -> segment
        self.netns = Namespace(self, "root", ip_forward=ip_forward)

    def _underlay_xmit(self, iface: str, pkt: bytearray, next_hop: bytes, now: float) -> None:
        """An L3 interface's driver: the packet leaves on the interface's segment."""
        self.actions.append(HostPacket(iface, IPv4Address(next_hop), pkt, now))

    # ------------------------------------------------------------- setup

    def attach(self, iface: str, addr: IPv4Interface, segment: str) -> Interface:
        """An L3 interface on ``segment`` holding ``addr`` (its connected route too)."""
        dev = self.netns.add_interface(iface, UNDERLAY)
        dev.driver = partial(self._underlay_xmit, iface)
        self.netns.add_address(dev, addr)
        self.segments[iface] = segment
        return dev

    def owns(self, segment: str, ip: IPv4Address) -> str | None:
        """The interface that receives packets for ``ip`` on ``segment``, if any."""
        iface = self.netns.local.get(ip.packed)
        if iface is not None and self.segments.get(iface.name) == segment:
            return iface.name
        return None

    # ------------------------------------------------------- entry points

    def receive(self, iface: str, packet: bytes | bytearray, now: float) -> None:
        """A packet arrived on ``iface`` from its segment."""
        self.now = now
        self.enqueue(self.netns.rx_packet, self.netns.interfaces[iface], bytearray(packet), now)
        self.process()

    def get_timer(self) -> float | None:
        return self.netns.get_timer()

    def handle_timer(self, now: float) -> None:
        self.now = now
        self.enqueue(self.netns.handle_timer, now)
        self.process()


class ExternalHost(Host):
    """A server or client on a segment, with one ``eth0``.

    On the internet segment it routes ``default dev eth0`` (the flat internet);
    on the node network ``default via`` the gateway (a VM next to the nodes).
    Apps record the peer address they saw in :attr:`peers` (``(app, ip, port)``)
    and answer with it, like a "whoami" service.
    """

    def __init__(
        self,
        name: str,
        tracer: Tracer,
        addr: IPv4Interface,
        *,
        segment: str = INTERNET,
        gateway: IPv4Address | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(name, tracer, seed=seed)
        self.ip = addr.ip
        eth0 = self.attach("eth0", addr, segment)
        if gateway is not None:
            self.netns.add_route("0.0.0.0/0", eth0, via=gateway)
        else:
            self.netns.add_route("0.0.0.0/0", eth0)
        self.peers: list[tuple[str, IPv4Address, int]] = []

    def serve_udp_echo(self, port: int = 7) -> None:
        """UDP echo: answers each datagram with ``<data> from <ip>:<port>``."""
        sock = self.netns.udp_socket()
        sock.bind(port=port)

        def on_event() -> None:
            while (msg := sock.recvfrom()) is not None:
                data, (ip, sport) = msg
                self.peers.append(("udp-echo", ip, sport))
                sock.sendto(data + f" from {ip}:{sport}".encode(), (ip, sport), self.now)

        sock.on_event = on_event

    def serve_tcp(self, port: int, app: str = "echo") -> TCPListener:
        """A TCP server: ``"echo"`` echoes what arrives; ``"http"`` answers the
        first request with ``200 OK`` and a body naming the peer, then closes."""
        if app not in ("echo", "http"):
            raise ConfigError(f"host {self.name}: unknown app {app!r} (echo or http)")
        listener = self.netns.tcp_listen(port)

        def serve(conn: TCPConnection) -> None:
            buf = bytearray()

            def on_event() -> None:
                data = conn.recv()
                if not data:
                    if conn.state.name == "CLOSE_WAIT":
                        conn.close(conn.now)
                    return
                if app == "echo":
                    conn.send(data, conn.now)
                    return
                buf.extend(data)
                if b"\r\n\r\n" in buf:
                    body = f"hello from {self.name} to {conn.remote_ip}:{conn.remote_port}\n"
                    head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\n\r\n"
                    conn.send((head + body).encode(), conn.now)
                    conn.close(conn.now)

            conn.on_event = on_event

        def on_accept() -> None:
            while (conn := listener.accept()) is not None:
                self.peers.append((app, conn.remote_ip, conn.remote_port))
                serve(conn)

        listener.on_event = on_accept
        return listener


# ------------------------------------------------------------ gateway NAT


class Gateway(Host):
    """The router between the node network and the internet (``eth0``/``wan0``)."""

    def __init__(
        self,
        tracer: Tracer,
        *,
        inside: IPv4Interface,
        public: IPv4Interface,
        name: str = "gateway",
        seed: int = 0,
        conntrack_max: int = 262144,
    ) -> None:
        super().__init__(name, tracer, seed=seed, ip_forward=True)
        self.eth0 = self.attach("eth0", inside, NODES)
        self.wan0 = self.attach("wan0", public, INTERNET)
        self.netns.add_route("0.0.0.0/0", self.wan0)
        self.nat = GatewayNAT(
            name, tracer, inside=inside.network, public_ip=public.ip, conntrack_max=conntrack_max
        )
        self.netns.netfilter = self.nat
        self.lb_ips: set[IPv4Address] = set()

    def set_load_balancers(self, targets: Sequence[LoadBalancerTarget]) -> None:
        """Program the LB: its IPs become addresses of ``wan0``."""
        for t in targets:
            if t.ip not in self.lb_ips:
                self.lb_ips.add(t.ip)
                self.netns.add_address(self.wan0, IPv4Interface(f"{t.ip}/32"))
        self.nat.set_targets(targets)

    def conntrack_listing(self, now: float) -> str:
        return self.nat.conntrack.listing(now)

    def get_timer(self) -> float | None:
        times = [t for t in (self.netns.get_timer(), self.nat.get_timer()) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        self.now = now
        self.enqueue(self.netns.handle_timer, now)
        self.enqueue(self.nat.handle_timer, now)
        self.process()


# ------------------------------------------------------------------ internet


class Internet:
    """The gateway and the external hosts; resolves who owns an address on a segment."""

    def __init__(
        self,
        tracer: Tracer,
        *,
        node_network: IPv4Network | str = "172.18.0.0/16",
        gateway_ip: IPv4Address | str = "172.18.0.1",
        public: IPv4Interface | str = "198.51.100.1/24",
        seed: int = 0,
    ) -> None:
        self.tracer = tracer
        self.seed = seed
        self.node_network = IPv4Network(node_network)
        gw = IPv4Address(gateway_ip)
        if gw not in self.node_network:
            raise ConfigError(f"gateway {gw} is not on the node network {self.node_network}")
        self.gateway = Gateway(
            tracer,
            inside=IPv4Interface(f"{gw}/{self.node_network.prefixlen}"),
            public=IPv4Interface(public),
            seed=seed,
        )
        self.hosts: dict[str, ExternalHost] = {}

    def add_host(
        self, name: str, ip: IPv4Address | str, *, segment: str = INTERNET, prefixlen: int = 24
    ) -> ExternalHost:
        """An external host on the internet, or (``segment="nodes"``) a machine on
        the node network outside the cluster (default route via the gateway)."""
        if name in self.hosts or name == self.gateway.name:
            raise ConfigError(f"host {name} already exists")
        addr = IPv4Address(ip)
        if self.resolve(segment, addr) is not None:
            raise ConfigError(f"{addr} is already in use on the {segment} segment")
        if segment == NODES:
            if addr not in self.node_network:
                raise ConfigError(f"{addr} is not on the node network {self.node_network}")
            iface = IPv4Interface(f"{addr}/{self.node_network.prefixlen}")
            gw: IPv4Address | None = self.gateway.eth0.addresses[0].ip
        elif segment == INTERNET:
            iface = IPv4Interface(f"{addr}/{prefixlen}")
            gw = None
        else:
            raise ConfigError(f"unknown segment {segment!r} ({NODES} or {INTERNET})")
        host = ExternalHost(
            name, self.tracer, iface, segment=segment, gateway=gw, seed=self.seed + len(self.hosts)
        )
        self.hosts[name] = host
        return host

    def __iter__(self) -> Iterator[Host]:
        yield self.gateway
        yield from self.hosts.values()

    def resolve(self, segment: str, ip: IPv4Address) -> tuple[Host, str] | None:
        for host in self:
            iface = host.owns(segment, ip)
            if iface is not None:
                return host, iface
        return None

    def set_services(
        self,
        services: Sequence[Service],
        endpoints: EndpointsMap,
        node_ips: Mapping[str, IPv4Address],
    ) -> None:
        """The cloud controller's sync: LB IPs and healthy nodes of each Service."""
        self.gateway.set_load_balancers(load_balancer_targets(services, endpoints, node_ips))
