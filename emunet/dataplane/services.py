"""kube-proxy's Service tables as the data plane uses them: the choice of an
endpoint for a new connection (:class:`Balancer`), the filter rules of ports
without endpoints (:class:`ServiceFilters`), the conntrack entries a sync makes
stale (:func:`stale_udp`).

The endpoint choice, iptables mode: ``sessionAffinity: ClientIP`` first (``-m recent --rcheck
--seconds N --reap`` per endpoint, in endpoint order), then rule i of n
matches with the kernel's 31-bit threshold for ``--probability 1/(n-i)``
(``xt_statistic``), drawn from the injected ``random.Random``; the chosen
endpoint's list remembers the client (``-m recent --set``, at most
:data:`RECENT_LIST_TOT` addresses, oldest forgotten). IPVS mode: the same
affinity, then the virtual server's scheduler: round robin, least
connections (counted from conntrack entries), source or destination hashing.

Pure decisions: the caller (netfilter's DNAT) rewrites the packet.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable
from enum import StrEnum
from typing import Final

from emunet.cluster import kubeproxy
from emunet.cluster.kubeproxy import EndpointInfo, ServicePortInfo, address_key, node_port_key
from emunet.dataplane.conntrack import ConntrackEntry, Status, Tuple

RECENT_LIST_TOT: Final = 100
"""xt_recent's default ``ip_list_tot``: addresses remembered per list (oldest forgotten)."""


class Mode(StrEnum):
    IPTABLES = "iptables"
    IPVS = "ipvs"


class Scheduler(StrEnum):
    RR = "rr"
    LC = "lc"
    SH = "sh"
    DH = "dh"


def _ip_hash(addr: int) -> int:
    return (addr * 2654435761) & 0xFFFFFFFF


class Balancer:
    """The endpoint choice of one node's kube-proxy, with its state (affinity
    lists, round-robin positions, connection counts)."""

    def __init__(self, mode: Mode, scheduler: Scheduler, rng: random.Random) -> None:
        self.mode = mode
        self.scheduler = scheduler
        self.rng = rng
        self._recent: dict[str, OrderedDict[int, float]] = {}
        self._rr: dict[str, int] = {}
        self._lc: dict[str, dict[str, int]] = {}
        # IPVS lc counts each endpoint's connections; no other choice needs them
        self.counts = mode == Mode.IPVS and scheduler == Scheduler.LC

    def pick(self, sp: ServicePortInfo, local: bool, t: Tuple, now: float) -> EndpointInfo:
        """The endpoint of ``sp`` (of its local endpoints, KUBE-SVL-*, when ``local``)
        for a new connection of tuple ``t``, remembered for the client when the Service
        has affinity."""
        eps = sp.local_endpoints if local else sp.endpoints
        src = t[1]
        ep: EndpointInfo | None = None
        timeout = sp.affinity_timeout
        if timeout:
            recent = self._recent
            for cand in eps:  # KUBE-SVC: -m recent --rcheck --seconds N --reap
                lst = recent.get(cand.chain)
                if lst is not None:
                    seen = lst.get(src)
                    if seen is not None:
                        if now - seen < timeout:
                            ep = cand
                            break
                        del lst[src]  # --reap
        if ep is None:
            ep = self._choose(sp, local, eps, t)
        if timeout:  # KUBE-SEP: -m recent --set
            lst = self._recent.setdefault(ep.chain, OrderedDict())
            lst[src] = max(now, lst.get(src, now))  # steps need not come in time order
            lst.move_to_end(src)
            if len(lst) > RECENT_LIST_TOT:
                lst.popitem(last=False)
        return ep

    def _choose(
        self,
        sp: ServicePortInfo,
        local: bool,
        eps: tuple[EndpointInfo, ...],
        t: Tuple,
    ) -> EndpointInfo:
        n = len(eps)
        if n == 1:
            return eps[0]
        if self.mode == Mode.IPTABLES:
            thresholds = kubeproxy.thresholds(n) if local else sp.thresholds
            bits = self.rng.getrandbits
            for i, th in enumerate(thresholds):
                if bits(31) < th:  # xt_statistic: (random & 0x7FFFFFFF) < probability
                    return eps[i]
            return eps[-1]
        chain = sp.chain(local)
        sched = self.scheduler
        if sched == Scheduler.RR:
            i = self._rr.get(chain, -1) + 1
            if i >= n:
                i = 0
            self._rr[chain] = i
            return eps[i]
        if sched == Scheduler.LC:
            counts = self._lc.get(chain, {})
            return min(eps, key=lambda ep: counts.get(ep.addr, 0))
        if sched == Scheduler.SH:
            return eps[(_ip_hash(t[1]) >> 24) % n]
        return eps[(_ip_hash(t[2]) & 0xFF) % n]  # DH

    def connected(self, chain: str, addr: str) -> None:
        """A connection went to endpoint ``addr`` of ``chain`` (IPVS lc counts it)."""
        if self.counts:
            counts = self._lc.setdefault(chain, {})
            counts[addr] = counts.get(addr, 0) + 1

    def disconnected(self, chain: str, addr: str) -> None:
        """Its conntrack entry is gone."""
        counts = self._lc.get(chain)
        if counts and counts.get(addr, 0) > 0:
            counts[addr] -= 1


class ServiceFilters:
    """kube-proxy's filter rules for Service ports without (local) endpoints, as
    lookup tables: KUBE-SERVICES REJECTs a new connection to a ClusterIP without
    endpoints; KUBE-EXTERNAL-SERVICES REJECTs (no endpoint at all) or DROPs (no
    local endpoint with Local policy) one to a LoadBalancer IP or a NodePort."""

    def __init__(self, table: kubeproxy.ServiceTable) -> None:
        # (proto, ClusterIP, port) -> the port (keys: kubeproxy.address_key)
        self.reject_cluster: dict[int, ServicePortInfo] = {}
        # (proto, LB IP, port) and (proto, NodePort) -> (REJECT rather than DROP, the port)
        self.external_ip: dict[int, tuple[bool, ServicePortInfo]] = {}
        self.external_node_port: dict[int, tuple[bool, ServicePortInfo]] = {}
        for sp in table.ports:
            if not sp.has_endpoints:
                self.reject_cluster[address_key(sp.proto, sp.cluster_ip, sp.port)] = sp
            if not sp.has_external_endpoints:
                reject = not sp.has_endpoints
                if sp.lb_ip:
                    self.external_ip[address_key(sp.proto, sp.lb_ip, sp.port)] = (reject, sp)
                if sp.node_port:
                    key = node_port_key(sp.proto, sp.node_port)
                    self.external_node_port[key] = (reject, sp)
        self.empty = not (self.reject_cluster or self.external_ip or self.external_node_port)

    def match(
        self, proto: int, dst: int, dport: int, local: bool, cluster: bool, external: bool
    ) -> tuple[bool, ServicePortInfo] | None:
        """The rule a NEW packet to ``dst``:``dport`` meets (``local``: ``dst`` is the
        node's own address) in filter KUBE-SERVICES (``cluster``: FORWARD, OUTPUT)
        and KUBE-EXTERNAL-SERVICES (``external``: FORWARD, INPUT): (REJECT rather
        than DROP, the port), or None when the packet goes on."""
        key = address_key(proto, dst, dport)
        if cluster and (sp := self.reject_cluster.get(key)) is not None:
            return True, sp
        if not external:
            return None
        hit = self.external_ip.get(key)
        if hit is None and local:
            hit = self.external_node_port.get(node_port_key(proto, dport))
        return hit


def stale_udp(
    old: kubeproxy.ServiceTable, new: kubeproxy.ServiceTable
) -> Callable[[ConntrackEntry], bool] | None:
    """kube-proxy's CleanStaleEntries after a sync from ``old`` to ``new``: which
    conntrack entries to flush (UDP entries DNAT'd to an endpoint that went away,
    and UDP entries to a service IP that just got endpoints); None when none."""
    stale: set[tuple[int, int, int, int]] = set()
    for sp in old.ports:
        if sp.proto != 17 or not sp.endpoints:
            continue
        nsp = new.by_cluster_ip.get(address_key(17, sp.cluster_ip, sp.port))
        alive = {(e.ip, e.port) for e in nsp.endpoints} if nsp is not None else set()
        for ep in sp.endpoints:
            if (ep.ip, ep.port) in alive:
                continue
            stale.add((ep.ip, ep.port, sp.cluster_ip, sp.port))
            if sp.lb_ip:
                stale.add((ep.ip, ep.port, sp.lb_ip, sp.port))
            if sp.node_port:
                stale.add((ep.ip, ep.port, -1, sp.node_port))
    woke: set[tuple[int, int]] = set()
    for sp in new.ports:
        if sp.proto == 17 and sp.endpoints:
            osp = old.by_cluster_ip.get(address_key(17, sp.cluster_ip, sp.port))
            if osp is None or not osp.endpoints:
                woke.add((sp.cluster_ip, sp.port))
    if not stale and not woke:
        return None

    def doomed(e: ConntrackEntry) -> bool:
        if e.proto != 17:
            return False
        o, r = e.tuples
        if (o[2], o[4]) in woke and not e.status & Status.DST_NAT:
            return True
        return (r[1], r[3], o[2], o[4]) in stale or (r[1], r[3], -1, o[4]) in stale

    return doomed
