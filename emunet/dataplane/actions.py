"""What a node asks its adapter to do: the only ways a packet leaves a node.

* an overlay datagram, flanneld's ``sendto``: the plain tuple
  ``((peer PublicIP, flannel port), payload, time)`` whose payload is a raw
  IPv4 packet. Every packet between nodes is one, and a plain tuple is the
  cheapest object to make: a named tuple costs three times as much;
* an :class:`UnderlayPacket`: anything else leaving ``eth0``.

Tell them apart with ``isinstance(action, UnderlayPacket)``, first: an
``UnderlayPacket`` is a 3-tuple too, so it would unpack as a datagram.

``time`` is the packet's time as it leaves: the entry point's ``now`` plus the
modelled delays of the hops it crossed (``interfaces.HOP_DELAY``). The
in-memory fabric carries it on from then; the node agent sends at once, and
between its nodes the real clock runs (the microseconds the model added in the
sending node are not waited for).
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import NamedTuple, TypeAlias

OverlayDatagram: TypeAlias = tuple[tuple[str, int], bytearray, float]


class UnderlayPacket(NamedTuple):
    """An IPv4 packet leaving the node's ``eth0`` for ``next_hop`` on the node network."""

    next_hop: IPv4Address
    packet: bytearray
    time: float


Action: TypeAlias = OverlayDatagram | UnderlayPacket
