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
import struct
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, NamedTuple

from emunet.cluster.kubeproxy import (
    PROTO_NUMBERS,
    EndpointsMap,
    Service,
    ServiceType,
    TrafficPolicy,
)
from emunet.dataplane import nat
from emunet.dataplane.conntrack import (
    DEFAULT_TIMEOUTS,
    ORIGINAL,
    REPLY,
    ConntrackEntry,
    ConntrackTable,
    Status,
    TcpVerdict,
)
from emunet.dataplane.interfaces import UNDERLAY, Interface
from emunet.dataplane.lpm import PrefixMap
from emunet.dataplane.netns import ACCEPT, NF_DROP, Namespace
from emunet.dataplane.tcp import TCPConnection, TCPListener
from emunet.dataplane.trace import Drop, Tracer
from emunet.errors import ConfigError

__all__ = [
    "INTERNET",
    "NODES",
    "ExternalHost",
    "Gateway",
    "GatewayNAT",
    "Host",
    "HostPacket",
    "Internet",
    "LoadBalancerTarget",
]

NODES = "nodes"
"""The segment of the node network (the nodes' ``eth0``)."""
INTERNET = "internet"
"""The segment of public addresses."""

NO_HEALTHY_TARGET = "load balancer: no healthy target"

_U16 = struct.Struct("!H")
_II = struct.Struct("!II")
_HH = struct.Struct("!HH")
_ICMP_ERRORS = frozenset({3, 4, 5, 11, 12})
_ICMP_QUERIES = frozenset({8, 13, 15, 17})
_ICMP_REPLIES = frozenset({0, 14, 16, 18})
_SRC_NAT, _DST_NAT, _SEEN_REPLY = int(Status.SRC_NAT), int(Status.DST_NAT), int(Status.SEEN_REPLY)


class HostPacket(NamedTuple):
    """An IPv4 packet leaving interface ``iface`` of a host for ``next_hop``."""

    iface: str
    next_hop: IPv4Address
    packet: bytearray


# --------------------------------------------------------------------- hosts


class Host:
    """A machine outside the cluster: one namespace and its :class:`NodeContext`.

    Entry points (:meth:`receive`, :meth:`handle_timer`) take ``now`` and run
    the host's FIFO to completion; :meth:`take_actions` hands over the packets
    that leave. ``now`` is also kept in :attr:`now` for apps that answer from a
    socket callback.
    """

    def __init__(
        self, name: str, tracer: Tracer, *, seed: int = 0, ip_forward: bool = False
    ) -> None:
        self.name = name
        self.tracer = tracer
        self.rng = random.Random(seed)
        self.now = 0.0
        self.actions: list[HostPacket] = []
        self.segments: dict[str, str] = {}  # interface -> segment
        self.queue: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._running = False
        self._ident = self.rng.randrange(0x10000)
        self.netns = Namespace(self, "root", ip_forward=ip_forward)

    # ------------------------------------------------------- NodeContext

    def enqueue(self, fn: Callable[..., None], *args: Any) -> None:
        self.queue.append((fn, args))

    def hop(self, fn: Callable[..., None], *args: Any) -> None:
        """The next step of one packet: at once while processing, queued otherwise."""
        if self._running:
            fn(*args)
        else:
            self.queue.append((fn, args))

    def process(self) -> None:
        if self._running:
            return
        self._running = True
        try:
            while self.queue:
                fn, args = self.queue.popleft()
                fn(*args)
        finally:
            self._running = False

    def tun_xmit(self, dev: Interface, pkt: bytearray, now: float) -> None:
        raise ConfigError(f"host {self.name} has no TUN device")  # pragma: no cover

    def tun_flow_target(self) -> tuple[PrefixMap[Any], Interface]:
        raise ConfigError(f"host {self.name} has no TUN device")  # pragma: no cover

    def underlay_xmit(self, dev: Interface, next_hop: bytes, pkt: bytearray, now: float) -> None:
        self.actions.append(HostPacket(dev.name, IPv4Address(next_hop), pkt))

    def next_ident(self) -> int:
        self._ident = (self._ident + 1) & 0xFFFF
        return self._ident

    def random_port(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def tcp_iss(self) -> int:
        return self.rng.randrange(1 << 32)

    # ------------------------------------------------------------- setup

    def attach(self, iface: str, addr: IPv4Interface, segment: str) -> Interface:
        """An L3 interface on ``segment`` holding ``addr`` (its connected route too)."""
        dev = self.netns.add_interface(iface, UNDERLAY)
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

    def take_actions(self) -> list[HostPacket]:
        self.process()
        out, self.actions = self.actions, []
        return out

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


@dataclass
class LoadBalancerTarget:
    """One LB IP:port of a LoadBalancer Service: its NodePort and healthy nodes."""

    service: str  # "namespace/name:port"
    proto: int
    ip: IPv4Address
    port: int
    node_port: int
    targets: tuple[IPv4Address, ...]
    next: int = 0

    def pick(self) -> IPv4Address | None:
        if not self.targets:
            return None
        ip = self.targets[self.next % len(self.targets)]
        self.next = (self.next + 1) % len(self.targets)
        return ip


class GatewayNAT:
    """The netfilter hooks of the gateway: conntrack, source NAT, LB DNAT."""

    def __init__(
        self,
        name: str,
        tracer: Tracer,
        *,
        inside: IPv4Network,
        public_ip: IPv4Address,
        wan: str = "wan0",
        conntrack_max: int = 262144,
    ) -> None:
        self.name = name
        self.tracer = tracer
        self.inside = inside
        self.public_ip = public_ip
        self.wan = wan
        self.conntrack = ConntrackTable(conntrack_max, DEFAULT_TIMEOUTS)
        self.last_reject: tuple[int, int] | None = None
        self.last_drop: Any = None
        self.left: Any = None  # NetfilterHooks: unused here (no flow cache on a gateway)
        self.vips: dict[tuple[int, int, int], LoadBalancerTarget] = {}
        self._inet = int(inside.network_address)
        self._imask = int(inside.netmask)
        self._skb: bytearray | None = None
        self._ct: ConntrackEntry | None = None
        self._dir = ORIGINAL
        self._inner = -1

    def set_targets(self, targets: Sequence[LoadBalancerTarget]) -> None:
        old = self.vips
        self.vips = {}
        for t in targets:
            key = (t.proto, int(t.ip), t.port)
            prev = old.get(key)
            if prev is not None:
                t.next = prev.next
            self.vips[key] = t

    # --- hooks --------------------------------------------------------------

    def prerouting(self, pkt: bytearray, in_iface: str, now: float) -> int:
        return self._enter(pkt, in_iface, now)

    def output(self, pkt: bytearray, now: float) -> int:
        return self._enter(pkt, "", now)

    def forward(self, pkt: bytearray, in_iface: str, out_iface: str, now: float) -> int:
        return ACCEPT

    def fast_forward(self, pkt: bytearray, now: float) -> None:
        return None  # every packet takes the full hooks (the gateway is not a hot path)

    def input(self, pkt: bytearray, in_iface: str, now: float) -> int:
        return self._leave(pkt, None, now)

    def postrouting(self, pkt: bytearray, out_iface: str, out_src: IPv4Address, now: float) -> int:
        return self._leave(pkt, out_iface, now)

    def get_timer(self) -> float | None:
        return self.conntrack.get_timer()

    def handle_timer(self, now: float) -> None:
        self.conntrack.handle_timer(now)

    # --- internals ----------------------------------------------------------

    def _key(self, pkt: bytearray, ihl: int, end: int) -> tuple[int, int, int] | None:
        """(sport, dport, tcp flags) of a trackable packet, None if untracked."""
        proto = pkt[9]
        if proto == 6 or proto == 17:
            if end < ihl + (14 if proto == 6 else 8):
                return None
            sport, dport = _HH.unpack_from(pkt, ihl)
            return sport, dport, pkt[ihl + 13] if proto == 6 else 0
        if proto == 1 and end >= ihl + 8:
            typ = pkt[ihl]
            if typ in _ICMP_QUERIES or typ in _ICMP_REPLIES:
                ident = _U16.unpack_from(pkt, ihl + 4)[0]
                return ident, ident, 0
        return None

    def _enter(self, pkt: bytearray, iface: str, now: float) -> int:
        ct = self._ct
        if ct is not None and not ct.live:
            self.conntrack.discard(ct)
        self._skb, self._ct, self._inner = pkt, None, -1
        ihl = (pkt[0] & 0x0F) << 2
        end = _U16.unpack_from(pkt, 2)[0]
        proto = pkt[9]
        if proto == 1 and end >= ihl + 8 and pkt[ihl] in _ICMP_ERRORS:
            self._related(pkt, ihl, end, iface, now)
            return ACCEPT
        key = self._key(pkt, ihl, end)
        if key is None:
            return ACCEPT  # untracked
        sport, dport, flags = key
        src, dst = _II.unpack_from(pkt, 12)
        t = (proto, src, dst, sport, dport)
        table = self.conntrack
        hit = table.lookup(t, now)
        if hit is not None:
            e, d = hit
            v = table.update(e, d, flags, now)
            if v != TcpVerdict.REOPEN:
                self._ct, self._dir = e, d
                other = e.tuples[1 - d]
                if other[1] != dst or other[3] != dport:
                    nat.manip(pkt, 0, end, False, other[1], other[3])
                    self._hop(now, iface, "un-SNAT" if d else "DNAT", t, other)
                return ACCEPT
            table.remove(e)
        if proto == 1 and pkt[ihl] not in _ICMP_QUERIES:
            return ACCEPT
        e2 = table.allocate(t, now)
        if e2 is None:
            self.last_drop = Drop.CONNTRACK_FULL
            return NF_DROP
        if not table.start(e2, flags, now):
            table.discard(e2)
            return ACCEPT
        if proto == 1:
            e2.icmp_type = pkt[ihl]
        self._ct, self._dir = e2, ORIGINAL
        vip = self.vips.get((proto, dst, dport)) if self.vips else None
        if vip is not None:
            target = vip.pick()
            if target is None:
                table.discard(e2)
                self._ct = None
                self.last_drop = NO_HEALTHY_TARGET
                return NF_DROP
            table.set_reply(e2, (proto, int(target), src, vip.node_port, sport))
            e2.status |= _DST_NAT
            nat.manip(pkt, 0, end, False, int(target), vip.node_port)
            if self.tracer.enabled:
                detail = (
                    f"{vip.service} {vip.ip}:{vip.port} -> {target}:{vip.node_port}"
                    f" (round robin over {len(vip.targets)} healthy nodes)"
                )
                self.tracer.hop(now, self.name, "root", iface, "LB DNAT", detail)
        return ACCEPT

    def _leave(self, pkt: bytearray, out_iface: str | None, now: float) -> int:
        e = self._ct if pkt is self._skb else None
        if e is None:
            return ACCEPT
        self._skb = None
        end = _U16.unpack_from(pkt, 2)[0]
        d = self._dir
        if self._inner >= 0:
            self._related_manip(pkt, end, e, d, True)
            return ACCEPT
        if not e.live:
            src = _II.unpack_from(pkt, 12)[0]
            if out_iface == self.wan and (src & self._imask) == self._inet:
                self._masquerade(e, now, out_iface)
            self.conntrack.confirm(e)
        other = e.tuples[1 - d]
        ihl = (pkt[0] & 0x0F) << 2
        sport = _U16.unpack_from(pkt, ihl + 4 if pkt[9] == 1 else ihl)[0]
        if other[2] != _II.unpack_from(pkt, 12)[0] or other[4] != sport:
            nat.manip(pkt, 0, end, True, other[2], other[4])
            self._hop(now, out_iface or "", "SNAT" if d == ORIGINAL else "un-DNAT",
                      e.tuples[d], other)  # fmt: skip
        return ACCEPT

    def _masquerade(self, e: ConntrackEntry, now: float, iface: str) -> None:
        """MASQUERADE (no --random-fully): keep the port if its reply tuple is free."""
        p, rs, _, rsp, rdp = e.tuples[REPLY]
        addr = int(self.public_ip)
        taken = self.conntrack.is_taken
        port = rdp
        if taken((p, rs, addr, rsp if p != 1 else port, port)):
            lo, hi = (1, 511) if rdp < 512 else (600, 1023) if rdp < 1024 else (1024, 65535)
            if p == 1:
                lo, hi = 0, 65535
            for cand in range(lo, hi + 1):
                if not taken((p, rs, addr, rsp if p != 1 else cand, cand)):
                    port = cand
                    break
        if p == 1:
            rsp = port
        self.conntrack.set_reply(e, (p, rs, addr, rsp, port))
        e.status |= _SRC_NAT
        if self.tracer.enabled:
            self.tracer.hop(now, self.name, "root", iface, "MASQUERADE",
                            f"source -> {self.public_ip}:{port}")  # fmt: skip

    def _related(self, pkt: bytearray, ihl: int, end: int, iface: str, now: float) -> None:
        ioff = ihl + 8
        if end < ioff + 28:
            return
        iihl = (pkt[ioff] & 0x0F) << 2
        iproto = pkt[ioff + 9]
        isrc, idst = _II.unpack_from(pkt, ioff + 12)
        l4 = ioff + iihl
        if end < l4 + 8:
            return
        if iproto == 6 or iproto == 17:
            isport, idport = _HH.unpack_from(pkt, l4)
        elif iproto == 1:
            isport = idport = _U16.unpack_from(pkt, l4 + 4)[0]
        else:
            return
        hit = self.conntrack.lookup((iproto, idst, isrc, idport, isport), now)
        if hit is None:
            return
        e, d = hit
        self._ct, self._dir, self._inner = e, d, ioff
        self._related_manip(pkt, end, e, d, False)
        if self.tracer.enabled:
            self.tracer.hop(now, self.name, "root", iface, "NAT ICMP error",
                            "translated with its connection (RELATED)")  # fmt: skip

    def _related_manip(
        self, pkt: bytearray, end: int, e: ConntrackEntry, d: int, is_src: bool
    ) -> None:
        other = e.tuples[1 - d]
        ioff = self._inner
        if is_src:
            nat.manip(pkt, ioff, end, False, other[2], other[4])
            nat.manip_addr(pkt, 0, True, other[2])
        else:
            nat.manip(pkt, ioff, end, True, other[1], other[3])
            nat.manip_addr(pkt, 0, False, other[1])
        nat.fix_icmp_checksum(pkt, ((pkt[0] & 0x0F) << 2), end)

    def _hop(
        self, now: float, iface: str, what: str, t: tuple[int, ...], o: tuple[int, ...]
    ) -> None:
        if self.tracer.enabled:
            detail = (
                f"{IPv4Address(t[1])}:{t[3]} -> {IPv4Address(t[2])}:{t[4]} => "
                f"src {IPv4Address(o[2])}:{o[4]} dst {IPv4Address(o[1])}:{o[3]}"
            )
            self.tracer.hop(now, self.name, "root", iface, what, detail)


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


def load_balancer_targets(
    services: Sequence[Service],
    endpoints: EndpointsMap,
    node_ips: Mapping[str, IPv4Address],
) -> list[LoadBalancerTarget]:
    """What the cloud controller programs for each LoadBalancer Service port, with
    the health of each node as kube-proxy's healthCheckNodePort reports it."""
    out: list[LoadBalancerTarget] = []
    for svc in services:
        if svc.type != ServiceType.LOAD_BALANCER or svc.load_balancer_ip is None:
            continue
        eps = [e for e in endpoints.get(svc.key, ()) if e.ready]
        for p in svc.ports:
            if not p.node_port:
                continue
            if svc.external_traffic_policy == TrafficPolicy.LOCAL:
                healthy = {e.node for e in eps if e.port_name == p.name}
                nodes = tuple(ip for n, ip in node_ips.items() if n in healthy)
            else:
                nodes = tuple(node_ips.values())
            out.append(
                LoadBalancerTarget(
                    f"{svc.namespace}/{svc.name}:{p.name}",
                    PROTO_NUMBERS[p.protocol],
                    svc.load_balancer_ip,
                    p.port,
                    p.node_port,
                    nodes,
                )
            )
    return out


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
