"""What a node asks its adapter to do: the only ways a packet leaves a node.

Both are plain named tuples (cheap to make on the hot path).
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import NamedTuple


class OverlayDatagram(NamedTuple):
    """flanneld's ``sendto``: a UDP datagram whose payload is a raw IPv4 packet."""

    dst: tuple[str, int]  # (peer PublicIP, flannel port)
    payload: bytearray


class UnderlayPacket(NamedTuple):
    """An IPv4 packet leaving the node's ``eth0`` for ``next_hop`` on the node network."""

    next_hop: IPv4Address
    packet: bytearray


Action = OverlayDatagram | UnderlayPacket
