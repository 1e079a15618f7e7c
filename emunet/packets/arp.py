"""ARP for IPv4 over Ethernet (RFC 826): requests and replies."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Final

from emunet.errors import MalformedFrame
from emunet.packets.mac import MAC

HEADER: Final = struct.Struct("!HHBBH6s4s6s4s")
LENGTH: Final = HEADER.size  # 28
HTYPE_ETHERNET: Final = 1
PTYPE_IPV4: Final = 0x0800
REQUEST: Final = 1
REPLY: Final = 2


@dataclass(frozen=True, slots=True)
class ARPPacket:
    op: int
    sender_mac: MAC
    sender_ip: IPv4Address
    target_mac: MAC
    target_ip: IPv4Address


def parse(buf: bytes | bytearray | memoryview, offset: int = 0) -> ARPPacket:
    if len(buf) - offset < LENGTH:
        raise MalformedFrame(f"arp: {len(buf) - offset} bytes, need {LENGTH}")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = HEADER.unpack_from(buf, offset)
    if htype != HTYPE_ETHERNET or ptype != PTYPE_IPV4 or hlen != 6 or plen != 4:
        raise MalformedFrame(f"arp: unsupported htype={htype} ptype={ptype:#x}")
    if op not in (REQUEST, REPLY):
        raise MalformedFrame(f"arp: unknown op {op}")
    return ARPPacket(op, MAC(sha), IPv4Address(spa), MAC(tha), IPv4Address(tpa))


def build(p: ARPPacket) -> bytes:
    return HEADER.pack(
        HTYPE_ETHERNET,
        PTYPE_IPV4,
        6,
        4,
        p.op,
        p.sender_mac,
        p.sender_ip.packed,
        p.target_mac,
        p.target_ip.packed,
    )
