"""Observability: hop-by-hop traces and named drop reasons.

Every component of a node reports to one injected :class:`Tracer`. A hop is
``(node, netns, iface, event, detail)``; a drop is a hop whose event is
``"drop"`` and whose detail starts with a :class:`Drop` reason. Tracing costs
one attribute test on the hot path when it is off (``tracer.enabled``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from emunet.render import tcpdump_line


class Drop(StrEnum):
    """Why a packet was dropped; the values are what users read."""

    MALFORMED = "malformed"
    NO_ROUTE = "no route to host"
    TTL_EXCEEDED = "TTL exceeded"
    FLANNEL_TTL_ZERO = "flannel: TTL reached zero, discarded without ICMP"
    FLANNEL_NO_LEASE = "flannel: no lease for destination subnet"
    OVERLAY_UNKNOWN_PEER = "flannel: datagram from a sender holding no lease (refused)"
    ARP_TIMEOUT = "ARP timeout: neighbour did not answer"
    ARP_QUEUE_FULL = "ARP queue full"
    NEIGH_TABLE_OVERFLOW = "neighbour table overflow"
    PORT_UNREACHABLE = "port unreachable: no socket bound"
    PROTO_UNREACHABLE = "protocol unreachable"
    NOT_FOR_US = "not addressed to this host"
    FRAG_NEEDED = "fragmentation needed but DF set"
    REASSEMBLY_TIMEOUT = "fragment reassembly timeout"
    LINK_DOWN = "link down"
    SOCKET_BUFFER_FULL = "socket receive buffer full"
    NO_ENDPOINTS = "service has no endpoints (REJECT)"
    NO_LOCAL_ENDPOINTS = "externalTrafficPolicy=Local and no local endpoint (DROP)"
    CONNTRACK_FULL = "nf_conntrack: table full, dropping packet"
    CONNTRACK_INVALID = "conntrack: invalid state"
    FILTERED = "filtered by a netfilter rule"
    TCP_NO_LISTENER = "no TCP listener (RST sent)"
    UNSUPPORTED_ETHERTYPE = "unsupported ethertype"
    NO_PING_SOCKET = "no ping socket"
    ICMP_TYPE_UNHANDLED = "icmp type not handled"
    ICMP_ERROR_NO_SOCKET = "icmp error for no socket"
    ICMP_RATELIMIT_HOST = "ICMP error not sent: per-destination rate limit (icmp_ratelimit)"
    ICMP_RATELIMIT_GLOBAL = "ICMP error not sent: global rate limit (icmp_msgs_per_sec)"
    INTERNAL_ERROR = "internal error"
    LB_NO_HEALTHY_TARGET = "load balancer: no healthy target"


@dataclass(frozen=True, slots=True)
class Hop:
    time: float
    node: str
    netns: str
    iface: str
    event: str
    detail: str

    def __str__(self) -> str:
        where = f"{self.node}/{self.netns}" + (f" {self.iface}" if self.iface else "")
        return f"{where}: {self.event}" + (f" ({self.detail})" if self.detail else "")


class Tracer:
    """Collects hops while ``enabled``; optionally filtered and bounded."""

    def __init__(
        self,
        enabled: bool = False,
        *,
        limit: int = 100_000,
    ) -> None:
        self.enabled = enabled
        self.limit = limit
        self.hops: list[Hop] = []
        self.dropped_hops = 0

    def hop(self, now: float, node: str, netns: str, iface: str, event: str, detail: str) -> None:
        h = Hop(now, node, netns, iface, event, detail)
        if len(self.hops) < self.limit:
            self.hops.append(h)
        else:
            self.dropped_hops += 1

    def clear(self) -> None:
        self.hops.clear()

    def events(self) -> list[tuple[str, str, str, str]]:
        """``(node, netns, iface, event)`` tuples: what walk-through tests compare."""
        return [(h.node, h.netns, h.iface, h.event) for h in self.hops]

    def drops(self) -> list[Hop]:
        return [h for h in self.hops if h.event == "drop"]


def describe(pkt: bytes | bytearray | memoryview) -> str:
    """An IPv4 packet as a trace shows it: tcpdump -v's line (tracing only, never
    on the hot path)."""
    return tcpdump_line(pkt, l2=False, verbose=True)
