"""What a node asks its adapter to do: the only ways a packet leaves a node.

* an overlay datagram, flanneld's ``sendto``: the plain tuple
  ``((peer PublicIP, flannel port), payload)`` whose payload is a raw IPv4
  packet. Every packet between nodes is one, and a plain tuple is the
  cheapest object to make: a named tuple costs three times as much;
* an :class:`UnderlayPacket`: anything else leaving ``eth0``.

Tell them apart with ``isinstance(action, UnderlayPacket)``, first: an
``UnderlayPacket`` is a 2-tuple too, so it would unpack as a datagram.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import NamedTuple, TypeAlias

OverlayDatagram: TypeAlias = tuple[tuple[str, int], bytearray]


class UnderlayPacket(NamedTuple):
    """An IPv4 packet leaving the node's ``eth0`` for ``next_hop`` on the node network."""

    next_hop: IPv4Address
    packet: bytearray


Action: TypeAlias = OverlayDatagram | UnderlayPacket
