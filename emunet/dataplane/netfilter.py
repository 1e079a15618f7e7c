"""The netfilter hooks of a node's root namespace: conntrack, kube-proxy's nat
and filter rules, flannel's ip-masq, evaluated in O(1) per packet.

API for the node
----------------
The node hands every IPv4 packet (a ``bytearray``, IP header at offset 0,
reassembled) to the hooks in Linux order and obeys the verdict; NAT rewrites
the packet in place, so after ``prerouting``/``output`` the node routes on the
(possibly new) destination. The SAME bytearray object must go through all the
hooks of one packet's path (it stands for ``skb->_nfct``)::

    routed in:     prerouting(pkt, in_iface, now) -> route ->
                   forward(pkt, in_iface, out_iface, now) ->
                   postrouting(pkt, out_iface, out_src, now)      # out_src: MASQUERADE address
    delivered:     prerouting(...) -> route -> input(pkt, in_iface, now)
    sent locally:  output(pkt, now) -> route -> postrouting(...)

Bridged IPv4 between pods of one node goes through the same hooks
(:mod:`~emunet.dataplane.br_netfilter`).

``Verdict.DROP``: ``last_drop`` holds the :class:`Drop` reason (already traced).
``Verdict.REJECT``: the node sends ``last_reject`` = ICMP (type, code) =
(3, 3) port unreachable back to the packet's source (kube-proxy's REJECT uses
icmp-port-unreachable, for TCP too), then drops the packet.

``set_services(services, endpoints)`` is kube-proxy's sync (and flushes stale
UDP conntrack entries); ``get_timer()``/``handle_timer(now)`` expire conntrack
entries; ``conntrack.listing(now)`` is ``conntrack -L``; ``iptables_save()`` the
rules as ``iptables-save`` prints them.

Equivalence with the chains (see :mod:`emunet.cluster.kubeproxy`)
----------------------------------------------------------------
nat PREROUTING/OUTPUT, NEW packets only: KUBE-SERVICES is one lookup
``(proto, dst, dport)`` in the ClusterIP and LoadBalancer tables, then, if the
destination is a local address, ``(proto, dport)`` in the NodePort table
(KUBE-NODEPORTS, ``--dst-type LOCAL``). KUBE-SVC: ``! -s clusterCIDR`` marks
for masquerade; the endpoint is :mod:`~emunet.dataplane.services`'s choice
(affinity, then the rules' probabilities). KUBE-SEP: ``-s endpoint`` marks
(hairpin); DNAT. KUBE-EXT: Cluster
policy marks and goes to KUBE-SVC; Local policy sends pod sources to KUBE-SVC,
marks LOCAL sources and sends them to KUBE-SVC, others to KUBE-SVL (local
endpoints) or falls through (then the filter table DROPs). The mark 0x4000 is
kept on the conntrack entry (only the first packet traverses nat).

nat POSTROUTING, NEW only: KUBE-POSTROUTING masquerades marked packets;
FLANNEL-POSTRTG: ``-s cluster -d cluster`` RETURN, ``-s cluster ! -d
224.0.0.0/4`` MASQUERADE, ``! -s cluster -d podSubnet`` RETURN, ``! -s cluster
-d cluster`` MASQUERADE. MASQUERADE ``--random-fully`` picks a random source
port (ICMP: identifier) in the port's class (1-511, 600-1023, 1024-65535) whose
reply tuple is free, as Linux does even when the original port is free.

filter FORWARD: INVALID dropped (KUBE-FORWARD, unless ``drop_invalid`` is
False: nf_conntrack_tcp_be_liberal); mark or RELATED,ESTABLISHED accepted;
NEW to a ClusterIP without endpoints REJECT; LoadBalancer IP without
(local) endpoints REJECT/DROP. filter INPUT: NEW to a local NodePort / LB IP
without (local) endpoints REJECT/DROP. filter OUTPUT: as FORWARD's
KUBE-SERVICES.

IPVS mode keeps the same NAT and masquerade decisions (kube-proxy's IPVS
proxier marks the same traffic); only the endpoint choice is the scheduler's.
The DNAT is done at PREROUTING/OUTPUT here (real IPVS does it at LOCAL_IN on
the kube-ipvs0 addresses); ``iptables_save`` shows the iptables-mode rules only.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence
from enum import IntEnum
from ipaddress import IPv4Address, IPv4Network
from typing import Final, Protocol

from emunet.cluster import iptables, kubeproxy
from emunet.cluster.kubeproxy import (
    EndpointsMap,
    Service,
    ServicePortInfo,
    ServiceTable,
    address_key,
    node_port_key,
)
from emunet.dataplane import nat
from emunet.dataplane.conntrack import (
    DEFAULT_TIMEOUTS,
    ORIGINAL,
    REPLY,
    ConntrackEntry,
    ConntrackTable,
    CtState,
    Status,
    TcpState,
    TcpVerdict,
    Timeouts,
    Tuple,
)
from emunet.dataplane.nat import ICMP_ERRORS, ICMP_QUERIES, ICMP_REPLIES
from emunet.dataplane.services import (
    RECENT_LIST_TOT,
    Balancer,
    Mode,
    Scheduler,
    ServiceFilters,
    stale_udp,
)
from emunet.dataplane.trace import Drop, Tracer
from emunet.errors import ConfigError

__all__ = ["RECENT_LIST_TOT", "Mode", "Netfilter", "Scheduler", "Verdict"]

_U16: Final = struct.Struct("!H")
_II: Final = struct.Struct("!II")
_HH: Final = struct.Struct("!HH")

_SEEN_REPLY, _SRC_NAT, _DST_NAT = int(Status.SEEN_REPLY), int(Status.SRC_NAT), int(Status.DST_NAT)
_MULTICAST: Final = (0xE0000000, 0xF0000000)  # 224.0.0.0/4


class Verdict(IntEnum):
    ACCEPT = 0
    DROP = 1
    REJECT = 2


class NetfilterHooks(Protocol):
    """The hook points a namespace calls (the netfilter engine, or a gateway's NAT).

    A refused packet's reason is ``last_drop``; a REJECT's ICMP error ``last_reject``.
    """

    last_reject: tuple[int, int] | None
    last_drop: Drop | None

    def prerouting(self, pkt: bytearray, in_iface: str, now: float) -> int: ...

    def input(self, pkt: bytearray, in_iface: str, now: float) -> int: ...

    def forward(self, pkt: bytearray, in_iface: str, out_iface: str, now: float) -> int: ...

    def output(self, pkt: bytearray, now: float) -> int: ...

    def postrouting(
        self, pkt: bytearray, out_iface: str, out_src: IPv4Address, now: float
    ) -> int: ...


class Netfilter:
    """netfilter + conntrack + kube-proxy for one node's root namespace."""

    def __init__(
        self,
        node: str,
        tracer: Tracer,
        *,
        cluster_cidr: IPv4Network,
        service_cidr: IPv4Network,
        local_addresses: set[IPv4Address],
        rng: random.Random,
        pod_subnet: IPv4Network | None = None,
        conntrack_max: int = 262144,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        mode: str = "iptables",
        ipvs_scheduler: str = "rr",
        masquerade_egress: bool = True,
        drop_invalid: bool = True,
    ) -> None:
        try:
            self.mode = Mode(mode)
            self.scheduler = Scheduler(ipvs_scheduler)
        except ValueError as exc:
            raise ConfigError(f"netfilter on {node}: {exc}") from None
        self.node = node
        self.tracer = tracer
        self.rng = rng
        self.cluster_cidr = cluster_cidr
        self.service_cidr = service_cidr
        self.pod_subnet = pod_subnet
        self.masquerade_egress = masquerade_egress
        self.drop_invalid = drop_invalid
        self._cnet = int(cluster_cidr.network_address)
        self._cmask = int(cluster_cidr.netmask)
        self._pnet = int(pod_subnet.network_address) if pod_subnet else -1
        self._pmask = int(pod_subnet.netmask) if pod_subnet else 0
        self._local: set[int] = set()
        self.rules_version = 0  # moves with every change of the filter rules' inputs
        self.set_local_addresses(local_addresses)
        self.conntrack = ConntrackTable(conntrack_max, timeouts, on_destroy=self._destroyed)
        self.last_reject: tuple[int, int] | None = None
        self.last_drop: Drop | None = None
        self.services: list[Service] = []
        self.endpoints: EndpointsMap = {}
        self._table = ServiceTable({}, {}, {}, [])
        self._filters = ServiceFilters(self._table)
        self.balancer = Balancer(self.mode, self.scheduler, rng)
        # the packet in flight ("skb"): its conntrack entry and what we know of it
        self._skb: bytearray | None = None
        self._ct: ConntrackEntry | None = None
        self._dir = ORIGINAL
        self._state = CtState.INVALID
        self._inner = -1  # offset of the quoted packet of a RELATED ICMP error
        self._src = 0
        self._sport = 0
        # the last packet out of POSTROUTING: if it loops back to a local address it
        # keeps its conntrack entry; any other packet entering the hooks forgets it
        self.left: bytearray | None = None
        self._left_ct: ConntrackEntry | None = None

    # --- configuration ------------------------------------------------------

    def set_local_addresses(self, addresses: set[IPv4Address]) -> None:
        """The node's own addresses (``--dst-type LOCAL`` / ``--src-type LOCAL``)."""
        self._local = {int(a) for a in addresses}
        self.rules_version += 1

    def set_services(
        self, services: Sequence[Service], endpoints: EndpointsMap, now: float = 0.0
    ) -> None:
        """kube-proxy's sync: rebuild the tables; flush stale UDP conntrack entries."""
        new = kubeproxy.compile_services(services, endpoints, self.node)
        old = self._table
        self.services = list(services)
        self.endpoints = endpoints
        self._table = new
        self._filters = ServiceFilters(new)
        self.rules_version += 1
        self._flush_stale_udp(old, new, now)

    def _flush_stale_udp(self, old: ServiceTable, new: ServiceTable, now: float) -> None:
        """kube-proxy's CleanStaleEntries (:func:`stale_udp`)."""
        doomed = stale_udp(old, new)
        n = self.conntrack.flush(doomed) if doomed is not None else 0
        if n and self.tracer.enabled:
            self.tracer.hop(now, self.node, "root", "", "conntrack flush", f"{n} stale UDP")

    # --- the hooks ----------------------------------------------------------

    def prerouting(self, pkt: bytearray, in_iface: str, now: float) -> Verdict:
        return self._enter(pkt, in_iface, now)

    def output(self, pkt: bytearray, now: float) -> Verdict:
        v = self._enter(pkt, "", now)
        if v != Verdict.ACCEPT or self._state != CtState.NEW:
            return v
        return self._filter(pkt, "", now, True, False)

    def forward(self, pkt: bytearray, in_iface: str, out_iface: str, now: float) -> Verdict:
        state = self._state if pkt is self._skb else self._relookup(pkt, now)
        if state == CtState.INVALID:
            if self.drop_invalid:
                return self._drop(pkt, Drop.CONNTRACK_INVALID, in_iface, now)
            return Verdict.ACCEPT
        if state != CtState.NEW:
            return Verdict.ACCEPT  # RELATED,ESTABLISHED
        ct = self._ct
        if ct is not None and ct.masq:
            return Verdict.ACCEPT  # KUBE-FORWARD: marked 0x4000
        return self._filter(pkt, in_iface, now, True, True)

    def fast_forward(self, pkt: bytearray, now: float) -> tuple[ConntrackEntry, int] | None:
        """PREROUTING + FORWARD + POSTROUTING of a tracked, un-NATed TCP/UDP packet
        or ICMP echo (request or reply) that is ESTABLISHED, or UDP in the ORIGINAL
        direction of a connection that has not seen its reply (NEW) and that no
        filter rule judges.

        For such a packet the hooks do exactly this: one conntrack lookup and
        one state update (only the first packet traverses nat, a connection
        without a NAT binding is not rewritten, FORWARD accepts it): conntrack's
        ``refresh_established`` or ``refresh_unreplied``, and forgetting
        :attr:`left` as any packet entering the hooks does (:meth:`flow_refresh`).
        Returns the entry and the packet's direction, or None, having changed
        nothing, when the packet needs the full hooks. FORWARD's verdict holds
        while :attr:`rules_version` does."""
        proto = pkt[9]
        ihl = (pkt[0] & 0x0F) << 2
        if ihl < 20 or len(pkt) < ihl + (20 if proto == 6 else 8) or pkt[6] & 0x3F or pkt[7]:
            return None  # a malformed header or a fragment: the full hooks judge it
        src, dst = _II.unpack_from(pkt, 12)
        if proto == 1:
            typ = pkt[ihl]
            if typ != 8 and typ != 0:  # an echo request or reply
                return None
            sport, dport = nat.icmp_ports(typ, pkt[ihl + 1], _U16.unpack_from(pkt, ihl + 4)[0])
        elif proto == 6 or proto == 17:
            sport, dport = _HH.unpack_from(pkt, ihl)
        else:
            return None
        hit = self.conntrack.lookup((proto, src, dst, sport, dport), now)
        if hit is None:
            return None
        e, d = hit
        if not e.status & _SEEN_REPLY and (  # NEW: FORWARD's rules see every packet
            d != ORIGINAL
            or self._filters.match(proto, dst, dport, dst in self._local, True, True) is not None
        ):
            return None
        if not self.flow_refresh(e, pkt[ihl + 13] if proto == 6 else 0, now):
            return None
        return hit

    def flow_refresh(self, ct: ConntrackEntry, flags: int, now: float) -> bool:
        """The hooks' whole work for a packet :meth:`fast_forward` took, of the
        direction it took, whose entry the caller holds (a flow table's, decided
        with this :attr:`rules_version`): conntrack's refresh, and :attr:`left`
        forgotten as any packet entering the hooks does. False, having changed
        nothing, when the packet needs the full hooks."""
        table = self.conntrack
        if not table.refresh_established(ct, flags, now) and not table.refresh_unreplied(ct, now):
            return False
        self.left = None
        return True

    def input(self, pkt: bytearray, in_iface: str, now: float) -> Verdict:
        if pkt is not self._skb:
            self._relookup(pkt, now)
        if self._state == CtState.NEW:
            v = self._filter(pkt, in_iface, now, False, True)
            if v != Verdict.ACCEPT:
                return v
        self._leave(pkt, None, now)
        return Verdict.ACCEPT

    def postrouting(
        self, pkt: bytearray, out_iface: str, out_src: IPv4Address, now: float
    ) -> Verdict:
        if pkt is not self._skb:
            self._relookup(pkt, now)
        return self._leave(pkt, (out_iface, int(out_src)), now)

    # --- timers -------------------------------------------------------------

    def get_timer(self) -> float | None:
        return self.conntrack.get_timer()

    def handle_timer(self, now: float) -> None:
        self.conntrack.handle_timer(now)

    # --- dumps --------------------------------------------------------------

    def iptables_save(self) -> str:
        return self.ruleset().iptables_save()

    def ruleset(self) -> iptables.Ruleset:
        return iptables.build_ruleset(
            self.services,
            self.endpoints,
            node=self.node,
            cluster_cidr=self.cluster_cidr,
            pod_subnet=self.pod_subnet,
            masquerade_egress=self.masquerade_egress,
        )

    # --- internals: entering the stack --------------------------------------

    def _enter(self, pkt: bytearray, iface: str, now: float) -> Verdict:
        if pkt is self.left and self._left_ct is not None and self._left_ct.live:
            # looped back to a local address: the packet keeps its conntrack
            self._skb, self._ct, self._inner = pkt, self._left_ct, -1
            self.left = None
            self._state = CtState.ESTABLISHED
            return Verdict.ACCEPT
        self.left = None
        ct = self._ct
        if ct is not None and not ct.live:
            self.conntrack.discard(ct)  # the previous packet never left
        self._skb, self._ct, self._inner, self._state = pkt, None, -1, CtState.INVALID
        n = len(pkt)
        if n < 20:
            return self._drop(pkt, Drop.MALFORMED, iface, now)
        ihl = (pkt[0] & 0x0F) << 2
        end = _U16.unpack_from(pkt, 2)[0]
        if ihl < 20 or end < ihl or end > n:
            return self._drop(pkt, Drop.MALFORMED, iface, now)
        proto = pkt[9]
        src, dst = _II.unpack_from(pkt, 12)
        flags = 0
        sport = dport = 0
        if proto == 6 or proto == 17:
            if end < ihl + (14 if proto == 6 else 8):
                return self._drop(pkt, Drop.MALFORMED, iface, now)
            sport, dport = _HH.unpack_from(pkt, ihl)
            if proto == 6:
                flags = pkt[ihl + 13]
        elif proto == 1:
            if end < ihl + 8:
                return self._drop(pkt, Drop.MALFORMED, iface, now)
            typ = pkt[ihl]
            if typ in ICMP_ERRORS:
                return self._enter_related(pkt, ihl, end, iface, now)
            if typ in ICMP_QUERIES or typ in ICMP_REPLIES:
                sport, dport = nat.icmp_ports(typ, pkt[ihl + 1], _U16.unpack_from(pkt, ihl + 4)[0])
            else:
                return Verdict.ACCEPT  # untracked ICMP (redirect, ...): INVALID
        self._src = src
        self._sport = sport
        t: Tuple = (proto, src, dst, sport, dport)
        table = self.conntrack
        tracked = table.track(t, flags, now)
        if tracked is not None:
            e, d, v = tracked
            if v == TcpVerdict.OK:
                self._ct = e
                self._dir = d
                self._state = (
                    CtState.NEW
                    if d == ORIGINAL and not e.status & _SEEN_REPLY
                    else CtState.ESTABLISHED
                )
                other = nat.nat_packet(pkt, end, e.tuples, e.status, d, False, dst, dport)
                if other is not None and self.tracer.enabled:
                    self._trace_manip(now, iface, "un-SNAT" if d else "DNAT", t, other)
                return Verdict.ACCEPT
            if self.tracer.enabled:  # INVALID
                why = f"{self._tuple_str(t)} in {TcpState(e.state).name}"
                self.tracer.hop(now, self.node, "root", iface, "conntrack invalid", why)
            return Verdict.ACCEPT
        if proto == 1 and typ not in ICMP_QUERIES:
            return Verdict.ACCEPT  # unsolicited ICMP reply: INVALID
        e2 = table.allocate(t, now)
        if e2 is None:
            return self._drop(pkt, Drop.CONNTRACK_FULL, iface, now)
        if not table.start(e2, flags, now):
            table.discard(e2)
            return Verdict.ACCEPT  # INVALID (e.g. a stray RST)
        if proto == 1:
            e2.icmp_type, e2.icmp_code = typ, pkt[ihl + 1]
        self._ct = e2
        self._dir = ORIGINAL
        self._state = CtState.NEW
        if self.tracer.enabled:
            self.tracer.hop(now, self.node, "root", iface, "conntrack new", self._tuple_str(t))
        if proto == 6 or proto == 17:
            self._nat_services(pkt, end, e2, t, iface, now)
        return Verdict.ACCEPT

    def _enter_related(self, pkt: bytearray, ihl: int, end: int, iface: str, now: float) -> Verdict:
        """An ICMP error: find the connection of the packet it quotes (RELATED)."""
        quoted = nat.quoted_tuple(pkt, ihl, end)
        if quoted is None:
            return Verdict.ACCEPT  # INVALID
        ioff, t = quoted
        hit = self.conntrack.lookup(t, now)
        if hit is None:
            return Verdict.ACCEPT
        e, d = hit
        self._ct = e
        self._dir = d
        self._state = CtState.RELATED
        self._inner = ioff
        self._related_manip(pkt, end, e, d, False, iface, now)
        return Verdict.ACCEPT

    def _related_manip(
        self,
        pkt: bytearray,
        end: int,
        e: ConntrackEntry,
        d: int,
        is_src: bool,
        iface: str,
        now: float,
    ) -> None:
        """Linux nf_nat_icmp_reply_translation for one manip type."""
        done = nat.icmp_reply_translation(pkt, self._inner, end, e.tuples, e.status, d, is_src)
        if done and self.tracer.enabled:
            self.tracer.hop(now, self.node, "root", iface, "NAT ICMP error",
                            "translated with its connection (RELATED)")  # fmt: skip

    def _relookup(self, pkt: bytearray, now: float) -> CtState:
        """A hook called with a packet we did not see enter: find its entry."""
        self._skb, self._ct, self._inner, self._state = pkt, None, -1, CtState.INVALID
        if len(pkt) < 20:
            return self._state
        ihl = (pkt[0] & 0x0F) << 2
        proto = pkt[9]
        src, dst = _II.unpack_from(pkt, 12)
        sport = dport = 0
        if (proto == 6 or proto == 17) and len(pkt) >= ihl + 4:
            sport, dport = _HH.unpack_from(pkt, ihl)
        elif proto == 1 and len(pkt) >= ihl + 8 and pkt[ihl] in nat.ICMP_QUERY_TYPES:
            sport, dport = nat.icmp_ports(pkt[ihl], pkt[ihl + 1], _U16.unpack_from(pkt, ihl + 4)[0])
        self._src, self._sport = src, sport
        hit = self.conntrack.lookup((proto, src, dst, sport, dport), now)
        if hit is not None:
            self._ct, self._dir = hit
            self._state = CtState.ESTABLISHED
        return self._state

    # --- internals: kube-proxy's nat rules ----------------------------------

    def _nat_services(
        self, pkt: bytearray, end: int, e: ConntrackEntry, t: Tuple, iface: str, now: float
    ) -> None:
        proto, src, dst, _, dport = t
        tbl = self._table
        key = address_key(proto, dst, dport)
        sp = tbl.by_cluster_ip.get(key)
        if sp is not None:
            if not sp.endpoints:
                return  # filter KUBE-SERVICES rejects it
            if (src & self._cmask) != self._cnet:
                e.masq = True  # KUBE-SVC: ! -s clusterCIDR -j KUBE-MARK-MASQ
            self._to_endpoint(pkt, end, e, t, sp, False, iface, now)
            return
        if tbl.by_lb_ip:
            sp = tbl.by_lb_ip.get(key)
        if sp is None and dst in self._local:
            sp = tbl.by_node_port.get(node_port_key(proto, dport))  # KUBE-NODEPORTS
        if sp is None or not sp.endpoints:
            return
        # KUBE-EXT
        if not sp.external_local:
            e.masq = True
            self._to_endpoint(pkt, end, e, t, sp, False, iface, now)
        elif (src & self._cmask) == self._cnet:
            self._to_endpoint(pkt, end, e, t, sp, False, iface, now)
        elif src in self._local:
            e.masq = True
            self._to_endpoint(pkt, end, e, t, sp, False, iface, now)
        elif sp.local_endpoints:
            self._to_endpoint(pkt, end, e, t, sp, True, iface, now)
        # else: no local endpoint; filter KUBE-EXTERNAL-SERVICES drops it

    def _to_endpoint(
        self,
        pkt: bytearray,
        end: int,
        e: ConntrackEntry,
        t: Tuple,
        sp: ServicePortInfo,
        local: bool,
        iface: str,
        now: float,
    ) -> None:
        """DNAT to an endpoint of KUBE-SVC-* (KUBE-SVL-*, the local ones, if ``local``)."""
        proto, src, _, sport, _ = t
        ep = self.balancer.pick(sp, local, t, now)
        # KUBE-SEP
        if src == ep.ip:
            e.masq = True  # hairpin
        reply = (proto, ep.ip, src, ep.port, sport)
        self.conntrack.set_reply(e, reply)
        e.status |= _DST_NAT
        if self.balancer.counts:  # IPVS lc: the entry's end is a disconnection
            e.owner = (sp.chain(local), ep.addr)
            self.balancer.connected(*e.owner)
        nat.manip(pkt, 0, end, False, ep.ip, ep.port)
        if self.tracer.enabled:
            chain = sp.chain(local)
            how = "IPVS " + self.scheduler.value if self.mode == Mode.IPVS else "iptables"
            self.tracer.hop(now, self.node, "root", "", "DNAT",
                            f"{chain} -> {ep.chain} ({how}) "
                            f"{IPv4Address(t[2])}:{t[4]} -> {ep.addr}")  # fmt: skip

    def _destroyed(self, e: ConntrackEntry) -> None:
        if e.owner is not None:
            self.balancer.disconnected(*e.owner)

    # --- internals: filter rules --------------------------------------------

    def _filter(
        self, pkt: bytearray, iface: str, now: float, cluster: bool, external: bool
    ) -> Verdict:
        """filter KUBE-SERVICES (``cluster``) and KUBE-EXTERNAL-SERVICES (``external``)
        for a NEW packet (:meth:`ServiceFilters.match`)."""
        f = self._filters
        proto = pkt[9]
        if f.empty or (proto != 6 and proto != 17):
            return Verdict.ACCEPT
        dst = _II.unpack_from(pkt, 12)[1]
        dport = _U16.unpack_from(pkt, ((pkt[0] & 0x0F) << 2) + 2)[0]
        hit = f.match(proto, dst, dport, dst in self._local, cluster, external)
        if hit is None:
            return Verdict.ACCEPT
        if hit[0]:
            return self._reject(pkt, hit[1], iface, now)
        return self._drop(pkt, Drop.NO_LOCAL_ENDPOINTS, iface, now, hit[1].name)

    def _reject(self, pkt: bytearray, sp: ServicePortInfo, iface: str, now: float) -> Verdict:
        self._abandon()
        self.last_reject = (3, 3)
        self.last_drop = Drop.NO_ENDPOINTS
        if self.tracer.enabled:
            self.tracer.hop(now, self.node, "root", iface, "REJECT",
                            f"{sp.name} has no endpoints: icmp-port-unreachable")  # fmt: skip
        return Verdict.REJECT

    def _drop(
        self, pkt: bytearray, reason: Drop, iface: str, now: float, extra: str = ""
    ) -> Verdict:
        self._abandon()
        self.last_drop = reason
        if self.tracer.enabled:
            detail = f"{reason.value}: {extra}" if extra else reason.value
            self.tracer.hop(now, self.node, "root", iface, "drop", detail)
        return Verdict.DROP

    def _abandon(self) -> None:
        ct = self._ct
        if ct is not None and not ct.live:
            self.conntrack.discard(ct)
        self._ct = None
        self._skb = None

    # --- internals: leaving the stack ---------------------------------------

    def _leave(self, pkt: bytearray, out: tuple[str, int] | None, now: float) -> Verdict:
        """nat POSTROUTING (``out`` given) or INPUT: SNAT, then confirm."""
        e = self._ct
        if e is None:
            return Verdict.ACCEPT
        iface = out[0] if out is not None else ""
        end = _U16.unpack_from(pkt, 2)[0]
        d = self._dir
        if self._inner >= 0:
            self._related_manip(pkt, end, e, d, True, iface, now)
            self._skb = None
            return Verdict.ACCEPT
        if not e.live:
            if out is not None:
                self._nat_postrouting(pkt, e, out[1], iface, now)
            r = e.tuples[REPLY]
            if self.conntrack.is_taken(r):
                # reply tuple clash: Linux's implicit source port remap
                self._snat(e, r[2], iface, now, implicit=True)
            self.conntrack.confirm(e)
        other = nat.nat_packet(pkt, end, e.tuples, e.status, d, True, self._src, self._sport)
        if other is not None and self.tracer.enabled:
            what = "SNAT" if d == ORIGINAL else "un-DNAT"
            self._trace_manip(now, iface, what, e.tuples[d], other)
        self._skb = None
        if out is not None:
            self.left, self._left_ct = pkt, e
        return Verdict.ACCEPT

    def _nat_postrouting(
        self, pkt: bytearray, e: ConntrackEntry, out_src: int, iface: str, now: float
    ) -> None:
        if e.masq:
            self._snat(e, out_src, iface, now, chain="KUBE-POSTROUTING")
            return
        if not self.masquerade_egress:
            return
        src, dst = _II.unpack_from(pkt, 12)
        cm, cn = self._cmask, self._cnet
        if (src & cm) == cn:
            if (dst & cm) == cn or (dst & _MULTICAST[1]) == _MULTICAST[0]:
                return
            self._snat(e, out_src, iface, now, chain="FLANNEL-POSTRTG")
        elif (dst & cm) == cn and (dst & self._pmask) != self._pnet:
            self._snat(e, out_src, iface, now, chain="FLANNEL-POSTRTG")

    def _snat(
        self,
        e: ConntrackEntry,
        addr: int,
        iface: str,
        now: float,
        *,
        chain: str = "",
        implicit: bool = False,
    ) -> None:
        """Bind a source NAT (MASQUERADE --random-fully) on an unconfirmed entry."""
        p, rs, _, rsp, rdp = e.tuples[REPLY]
        port = rdp
        if p in (6, 17, 1):
            lo, size = nat.port_range(p, port)
            taken = self.conntrack.is_taken
            rnd = self.rng.randrange
            for _ in range(128):
                cand = lo + rnd(size)
                if not taken((p, rs, addr, *nat.nat_ports(p, rsp, cand))):
                    port = cand
                    break
            else:
                port = rdp  # Linux gives up and keeps the clash (the packet may be dropped)
            rsp, port = nat.nat_ports(p, rsp, port)  # ICMP: the identifier is both "ports"
        self.conntrack.set_reply(e, (p, rs, addr, rsp, port))
        e.status |= _SRC_NAT
        if self.tracer.enabled and not implicit:
            self.tracer.hop(now, self.node, "root", iface, "MASQUERADE",
                            f"{chain}: source -> {IPv4Address(addr)}:{port}")  # fmt: skip

    # --- tracing helpers ----------------------------------------------------

    @staticmethod
    def _tuple_str(t: Tuple) -> str:
        name = {6: "tcp", 17: "udp", 1: "icmp"}.get(t[0], str(t[0]))
        m = nat.PORT_MASK
        return f"{name} {IPv4Address(t[1])}:{t[3] & m} -> {IPv4Address(t[2])}:{t[4] & m}"

    def _trace_manip(self, now: float, iface: str, what: str, t: Tuple, other: Tuple) -> None:
        o, m = other, nat.PORT_MASK
        to = f"src {IPv4Address(o[2])}:{o[4] & m} dst {IPv4Address(o[1])}:{o[3] & m}"
        self.tracer.hop(now, self.node, "root", iface, what, f"{self._tuple_str(t)} => {to}")
