"""ARP (RFC 826) for one namespace, as Linux's ``net/ipv4/arp.c`` runs it.

:meth:`Arp.solicit` sends the request for a neighbour that the table
(:class:`~emunet.dataplane.neigh.NeighTable`, ``neighbour.c``'s part) is
resolving: a broadcast, or a unicast probe to the MAC the entry had when it went
stale. :meth:`Arp.rcv` takes an ``ETH_P_ARP`` frame: the sender is learned as
with ``arp_accept`` 0 (an unsolicited reply only refreshes an existing entry; a
request for one of our addresses creates one), the packets that waited for it
leave, and a request for one of our addresses is answered on the interface it
came in on.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Protocol

from emunet.dataplane.interfaces import Interface
from emunet.dataplane.neigh import NeighTable
from emunet.dataplane.trace import Drop, Tracer
from emunet.errors import MalformedFrame
from emunet.packets import arp
from emunet.packets.ethernet import ETH_P_ARP, ETH_P_IP
from emunet.packets.ethernet import HEADER as _ETH
from emunet.packets.mac import MAC


class LinkLayer(Protocol):
    """What ARP uses of its namespace."""

    local: dict[bytes, Interface]
    neigh: NeighTable

    def l2_xmit(self, dev: Interface, frame: bytes | bytearray, now: float) -> None: ...

    def drop(self, now: float, iface: Interface | None, reason: Drop, detail: str = "") -> None: ...

    def trace(self, now: float, iface: str, event: str, detail: str = "") -> None: ...

    def source_for(self, dev: Interface, target: bytes) -> IPv4Address: ...


class Arp:
    """The ARP requests a namespace sends and the ARP frames it receives."""

    def __init__(self, ns: LinkLayer, tracer: Tracer) -> None:
        self.ns = ns
        self._tracer = tracer

    def solicit(
        self, dev: Interface, target: bytes, now: float, unicast: bytes | None = None
    ) -> None:
        """``arp_solicit``: who-has ``target`` (packed), broadcast or to ``unicast``."""
        ns = self.ns
        ns.neigh.requested(ns.neigh.entries[target], now, unicast is not None)
        src_ip = ns.source_for(dev, target)
        assert dev.mac is not None
        req = arp.ARPPacket(
            arp.REQUEST,
            dev.mac,
            src_ip,
            MAC(unicast) if unicast else MAC.ZERO,
            IPv4Address(target),
        )
        if self._tracer.enabled:
            how = f" (unicast probe to {MAC(unicast)})" if unicast else ""
            ns.trace(
                now, dev.name, "arp request", f"who-has {IPv4Address(target)} tell {src_ip}{how}"
            )
        dst = unicast or MAC.BROADCAST
        ns.l2_xmit(dev, _ETH.pack(dst, dev.mac, ETH_P_ARP) + arp.build(req), now)

    def rcv(self, iface: Interface, frame: bytes | bytearray, now: float) -> None:
        """``arp_rcv``: an ARP frame (Ethernet header included) arriving on ``iface``."""
        ns = self.ns
        try:
            p = arp.parse(frame, 14)
        except MalformedFrame as exc:
            ns.drop(now, iface, Drop.MALFORMED, exc.reason)
            return
        sip = p.sender_ip.packed
        for_us = ns.local.get(p.target_ip.packed) is not None
        n = ns.neigh.confirm(sip, bytes(p.sender_mac), iface, now, for_us and p.op == arp.REQUEST)
        if isinstance(n, Drop):
            ns.drop(now, iface, n, str(p.sender_ip))
            return
        if n is not None:
            if self._tracer.enabled and p.op == arp.REPLY:
                ns.trace(now, iface.name, "arp reply", f"{p.sender_ip} is-at {p.sender_mac}")
            assert iface.mac is not None and n.mac is not None
            while n.queue:
                queued = n.queue.popleft()
                ns.l2_xmit(iface, _ETH.pack(n.mac, iface.mac, ETH_P_IP) + queued, now)
        if p.op == arp.REQUEST and for_us:
            assert iface.mac is not None
            if self._tracer.enabled:
                ns.trace(now, iface.name, "arp reply", f"{p.target_ip} is-at {iface.mac}")
            rep = arp.ARPPacket(arp.REPLY, iface.mac, p.target_ip, p.sender_mac, p.sender_ip)
            ns.l2_xmit(iface, _ETH.pack(p.sender_mac, iface.mac, ETH_P_ARP) + arp.build(rep), now)
