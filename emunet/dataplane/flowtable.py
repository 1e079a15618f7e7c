"""The flow table of a forwarding namespace, as Linux's ``nf_flowtable``.

An ESTABLISHED, un-NATed TCP or UDP connection crosses the netfilter hooks the
same way for every packet: one conntrack lookup and a state refresh, nothing
rewritten (``Netfilter.fast_forward`` says when that holds). So do, beyond
nf_flowtable, a stream of un-NATed UDP that has not seen its reply and that no
filter rule judges (only its first packet traverses nat, FORWARD accepts every
packet and conntrack refreshes the entry's timer), and the echo requests and
replies of an un-NATed ping that has seen its reply (conntrack keys them by
identifier, type and code and only refreshes the entry; the flow's key is the
same, without the checksum that follows the code). Linux offloads TCP and UDP
only; here a flow changes nothing a packet would see, only how fast the hooks'
outcome is known.
The first such packet of a connection seen here gets a flow: its conntrack
entry, the route it was forwarded by and the versions of the route table and
the ruleset it was decided with. Later packets of the connection find the flow
by their tuple and, while both versions hold and conntrack still calls the
connection established (or unreplied) and un-NATed, skip the hooks and the
route lookup. As nf_flowtable's offload path, the namespace then decrements the
TTL and hands the packet to the route's device, the output function every
packet ends in (neighbours, the bridge, flanneld); a packet whose TTL or size
the flow cannot take goes through forwarding, with the flow's route and without
the hooks. Nothing else is kept, so nothing else can go stale.
"""

from __future__ import annotations

import struct
from typing import Any, Final

from emunet.dataplane.conntrack import ConntrackEntry
from emunet.dataplane.netfilter import Netfilter
from emunet.dataplane.routing import Route, RouteTable

FLOW_TABLE_MAX: Final = 65536
_FLOW_KEY: Final = struct.Struct("!9xB2x12s")  # (protocol, addresses and ports) of a 20-byte header
# (addresses, type and code, identifier) of an ICMP echo: conntrack's key (nat.icmp_ports)
_ECHO_KEY: Final = struct.Struct("!12x10s2x2s")
_DST: Final = struct.Struct("!16x4s")


class Flow:
    """One direction of a connection: its conntrack entry, its route and the next
    hop the route gives (the gateway, else the destination itself; packed)."""

    __slots__ = ("ct", "next_hop", "route", "rules", "version")

    def __init__(
        self, ct: ConntrackEntry, route: Route | None, version: int, rules: int, dst: bytes
    ) -> None:
        self.ct = ct
        self.route = route
        self.version = version
        self.rules = rules
        self.next_hop = (route.via_packed if route is not None else b"") or dst


class FlowTable:
    """The flows of one namespace, bounded (cleared whole when full)."""

    def __init__(self, routes: RouteTable, local: dict[bytes, Any], hooks: Netfilter) -> None:
        self._routes = routes
        self._prefixes = routes.prefixes  # its version changes with every route or address
        self._local = local
        self._hooks = hooks
        self.flows: dict[tuple[Any, ...], Flow] = {}

    def __len__(self) -> int:
        return len(self.flows)

    def lookup(self, pkt: bytearray, size: int, now: float) -> Flow | None:
        """The flow of a packet to forward (a 20-byte header, checked, no fragment),
        the hooks' work for it done; None, having changed nothing, when the packet
        takes the full path. A flow whose route is None found none: the full
        path's forwarding says what happens to the packet, without the hooks."""
        proto = pkt[9]
        flags = 0
        key: tuple[Any, ...]
        if proto == 17:
            if size < 28:
                return None
            key = _FLOW_KEY.unpack_from(pkt)
        elif proto == 6:
            if size < 40:
                return None
            flags = pkt[33]
            key = _FLOW_KEY.unpack_from(pkt)
        elif proto == 1:
            if size < 28 or (pkt[20] != 8 and pkt[20] != 0):  # an echo request or reply
                return None
            addrs, ident = _ECHO_KEY.unpack_from(pkt)
            key = (1, addrs + ident)  # not the checksum, which follows the type
        else:
            return None
        flows = self.flows
        flow = flows.get(key)
        if flow is not None:
            hooks = self._hooks
            if (
                flow.version == self._prefixes.version
                and flow.rules == hooks.rules_version
                and hooks.flow_refresh(flow.ct, flags, now)
            ):
                return flow
            del flows[key]
            return None
        dst = _DST.unpack_from(pkt)[0]
        if dst in self._local:
            return None
        hit = self._hooks.fast_forward(pkt, now)
        if hit is None:
            return None
        route = self._routes.lookup(dst)
        flow = Flow(hit[0], route, self._prefixes.version, self._hooks.rules_version, dst)
        if flow.route is not None:
            if len(flows) >= FLOW_TABLE_MAX:
                flows.clear()
            flows[key] = flow
        return flow
