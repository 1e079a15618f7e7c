"""The gateway's netfilter hooks: conntrack, source NAT and the cloud load
balancer's DNAT, for the router between the node network and the internet.

A small dedicated NAT (not a :class:`~emunet.dataplane.netfilter.Netfilter`,
whose rules are kube-proxy's and flannel's) built on the same
:class:`~emunet.dataplane.conntrack.ConntrackTable` and
:mod:`~emunet.dataplane.nat` rewriting; :mod:`~emunet.dataplane.internet`
describes what it does.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Final

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
    Tuple,
)
from emunet.dataplane.nat import ICMP_ERRORS, ICMP_QUERIES, ICMP_REPLIES
from emunet.dataplane.netfilter import Verdict
from emunet.dataplane.trace import Drop, Tracer

NO_HEALTHY_TARGET: Final = Drop.LB_NO_HEALTHY_TARGET
ACCEPT, NF_DROP = Verdict.ACCEPT, Verdict.DROP

_U16: Final = struct.Struct("!H")
_II: Final = struct.Struct("!II")
_HH: Final = struct.Struct("!HH")
_SRC_NAT, _DST_NAT, _SEEN_REPLY = int(Status.SRC_NAT), int(Status.DST_NAT), int(Status.SEEN_REPLY)


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
        self.last_drop: Drop | None = None
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
            if typ in ICMP_QUERIES or typ in ICMP_REPLIES:
                sport, dport = nat.icmp_ports(typ, pkt[ihl + 1], _U16.unpack_from(pkt, ihl + 4)[0])
                return sport, dport, 0
        return None

    def _enter(self, pkt: bytearray, iface: str, now: float) -> int:
        ct = self._ct
        if ct is not None and not ct.live:
            self.conntrack.discard(ct)
        self._skb, self._ct, self._inner = pkt, None, -1
        ihl = (pkt[0] & 0x0F) << 2
        end = _U16.unpack_from(pkt, 2)[0]
        proto = pkt[9]
        if proto == 1 and end >= ihl + 8 and pkt[ihl] in ICMP_ERRORS:
            self._related(pkt, ihl, end, iface, now)
            return ACCEPT
        key = self._key(pkt, ihl, end)
        if key is None:
            return ACCEPT  # untracked
        sport, dport, flags = key
        src, dst = _II.unpack_from(pkt, 12)
        t: Tuple = (proto, src, dst, sport, dport)
        table = self.conntrack
        tracked = table.track(t, flags, now)
        if tracked is not None:  # established or not, the connection's NAT applies
            e, d, _ = tracked
            self._ct, self._dir = e, d
            other = nat.nat_packet(pkt, end, e.tuples, e.status, d, False, dst, dport)
            if other is not None:
                self._hop(now, iface, "un-SNAT" if d else "DNAT", t, other)
            return ACCEPT
        if proto == 1 and pkt[ihl] not in ICMP_QUERIES:
            return ACCEPT
        e2 = table.allocate(t, now)
        if e2 is None:
            self.last_drop = Drop.CONNTRACK_FULL
            return NF_DROP
        if not table.start(e2, flags, now):
            table.discard(e2)
            return ACCEPT
        if proto == 1:
            e2.icmp_type, e2.icmp_code = pkt[ihl], pkt[ihl + 1]
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
        ihl = (pkt[0] & 0x0F) << 2
        sport = _U16.unpack_from(pkt, ihl + 4 if pkt[9] == 1 else ihl)[0]
        src = _II.unpack_from(pkt, 12)[0]
        other = nat.nat_packet(pkt, end, e.tuples, e.status, d, True, src, sport)
        if other is not None:
            self._hop(now, out_iface or "", "SNAT" if d == ORIGINAL else "un-DNAT",
                      e.tuples[d], other)  # fmt: skip
        return ACCEPT

    def _masquerade(self, e: ConntrackEntry, now: float, iface: str) -> None:
        """MASQUERADE (no --random-fully): keep the port if its reply tuple is free."""
        p, rs, _, rsp, rdp = e.tuples[REPLY]
        addr = int(self.public_ip)
        taken = self.conntrack.is_taken
        port = rdp
        if taken((p, rs, addr, *nat.nat_ports(p, rsp, port))):
            lo, size = nat.port_range(p, rdp)
            for cand in range(lo, lo + size):
                if not taken((p, rs, addr, *nat.nat_ports(p, rsp, cand))):
                    port = cand
                    break
        rsp, port = nat.nat_ports(p, rsp, port)
        self.conntrack.set_reply(e, (p, rs, addr, rsp, port))
        e.status |= _SRC_NAT
        if self.tracer.enabled:
            self.tracer.hop(now, self.name, "root", iface, "MASQUERADE",
                            f"source -> {self.public_ip}:{port}")  # fmt: skip

    def _related(self, pkt: bytearray, ihl: int, end: int, iface: str, now: float) -> None:
        quoted = nat.quoted_tuple(pkt, ihl, end)
        if quoted is None:
            return
        ioff, t = quoted
        hit = self.conntrack.lookup(t, now)
        if hit is None:
            return
        e, d = hit
        self._ct, self._dir, self._inner = e, d, ioff
        if self._related_manip(pkt, end, e, d, False) and self.tracer.enabled:
            self.tracer.hop(now, self.name, "root", iface, "NAT ICMP error",
                            "translated with its connection (RELATED)")  # fmt: skip

    def _related_manip(
        self, pkt: bytearray, end: int, e: ConntrackEntry, d: int, is_src: bool
    ) -> bool:
        return nat.icmp_reply_translation(pkt, self._inner, end, e.tuples, e.status, d, is_src)

    def _hop(
        self, now: float, iface: str, what: str, t: tuple[int, ...], o: tuple[int, ...]
    ) -> None:
        if self.tracer.enabled:
            m = nat.PORT_MASK  # an ICMP tuple's query key is not the identifier's
            detail = (
                f"{IPv4Address(t[1])}:{t[3] & m} -> {IPv4Address(t[2])}:{t[4] & m} => "
                f"src {IPv4Address(o[2])}:{o[4] & m} dst {IPv4Address(o[1])}:{o[3] & m}"
            )
            self.tracer.hop(now, self.name, "root", iface, what, detail)


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
