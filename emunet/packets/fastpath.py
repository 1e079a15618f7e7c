"""The forwarding hot path: a router's Ethernet, IPv4 and L4-port fields in one read.

Theory of operation. To forward a frame the data plane needs a dozen fields
from three headers: the MACs and EtherType (bridge), the IPv4 version/IHL,
total length, flags/fragment offset, TTL, protocol, source and destination
(routing, netfilter), and the first four bytes of the L4 header (conntrack's
ports). The typed parsers (``ethernet.parse``, ``ipv4.parse``, ``udp.parse``)
build dataclasses and ``IPv4Address`` objects, which costs several
microseconds a frame. :func:`peek` is what the data plane calls instead: one
precompiled ``Struct.unpack_from`` over the first 38 bytes of an untagged
frame, then the few comparisons that make the read trustworthy. The common
case (IHL 5, room for the ports) returns the unpacked tuple as is; IPv4
options or a short frame take a checked slow path with the same result shape.

What :func:`peek` guarantees when it returns a tuple: EtherType is IPv4, the
version is 4, the IHL is at least 5, ``IHL*4 <= total length <= bytes
present after the Ethernet header``. It does not verify the header checksum
(use ``ipv4.verify_checksum``), and the two port fields are simply the first
four bytes of the IP payload: ports for TCP and UDP first fragments, type,
code and checksum for ICMP, payload bytes for a non-first fragment (check
``FLAGS_FRAG & ipv4.FRAG_MASK``), and ``0, 0`` when fewer than four bytes
follow the header. Frames that are not untagged IPv4 (ARP, 802.1Q, IPv6)
return ``None``: dispatch those on the EtherType with the typed parsers.

Addresses stay packed 4-byte ``bytes`` (hashable, the route cache key);
``IPv4Address(b)`` converts one when a human needs it.
"""

from __future__ import annotations

import struct
from typing import Any, Final

from emunet.errors import MalformedFrame

#: Ethernet (14) + fixed IPv4 header (20) + the first 4 bytes of L4, in one read.
FRAME: Final = struct.Struct("!6s6sHBxHxxHBBxx4s4sHH")
_NO_PORTS: Final = struct.Struct("!6s6sHBxHxxHBBxx4s4s")
_PORTS: Final = struct.Struct("!HH")
_unpack = FRAME.unpack_from

#: where the IPv4 header starts in an untagged frame
L3_OFFSET: Final = 14
#: where L4 starts when the IPv4 header has no options (IHL 5)
L4_OFFSET: Final = 34

# indices into the tuple :func:`peek` returns
ETH_DST: Final = 0
ETH_SRC: Final = 1
ETHERTYPE: Final = 2
VER_IHL: Final = 3
TOTAL_LENGTH: Final = 4
FLAGS_FRAG: Final = 5
TTL: Final = 6
PROTO: Final = 7
SRC: Final = 8
DST: Final = 9
SPORT: Final = 10
DPORT: Final = 11

#: (eth dst, eth src, ethertype, version/IHL byte, total length, flags+fragment
#: offset word, ttl, protocol, ip src, ip dst, sport, dport)
Peek = tuple[bytes, bytes, int, int, int, int, int, int, bytes, bytes, int, int]


def peek(frame: bytes | bytearray | memoryview) -> Peek | None:
    """The router's fields of an untagged IPv4 Ethernet frame; ``None`` if not IPv4.

    Raises :class:`MalformedFrame` for a truncated or inconsistent IPv4 header.
    """
    try:
        f: Peek = _unpack(frame)
    except struct.error:
        return _peek_short(frame)
    if f[2] != 0x0800:
        return None
    if f[3] == 0x45 and 24 <= f[4] <= len(frame) - 14:
        return f
    return _checked(frame, f[:10])


def l4_offset(fields: Peek) -> int:
    """Offset of the L4 header in the frame :func:`peek` read."""
    return L3_OFFSET + (fields[3] & 0x0F) * 4


def _peek_short(frame: bytes | bytearray | memoryview) -> Peek | None:
    n = len(frame)
    if n < L3_OFFSET:
        raise MalformedFrame(f"ethernet: {n} bytes, header needs {L3_OFFSET}")
    if frame[12] != 0x08 or frame[13] != 0x00:
        return None
    if n < L4_OFFSET:
        raise MalformedFrame(f"ipv4: {n - L3_OFFSET} bytes, header needs 20")
    return _checked(frame, _NO_PORTS.unpack_from(frame))


def _checked(frame: bytes | bytearray | memoryview, f: tuple[Any, ...]) -> Peek:
    vihl: int = f[VER_IHL]
    total: int = f[TOTAL_LENGTH]
    if vihl >> 4 != 4:
        raise MalformedFrame(f"ipv4: version {vihl >> 4}")
    hlen = (vihl & 0x0F) * 4
    if hlen < 20:
        raise MalformedFrame(f"ipv4: IHL {hlen // 4} below 5")
    avail = len(frame) - L3_OFFSET
    if avail < hlen:
        raise MalformedFrame(f"ipv4: {avail} bytes, IHL says {hlen}")
    if total < hlen:
        raise MalformedFrame(f"ipv4: total length {total} below header length {hlen}")
    if total > avail:
        raise MalformedFrame(f"ipv4: total length {total} but only {avail} bytes")
    ports = _PORTS.unpack_from(frame, L3_OFFSET + hlen) if total - hlen >= 4 else (0, 0)
    return (*f, *ports)
