"""UDP (RFC 768) with the IPv4 pseudo-header checksum.

A transmitted checksum of 0 means "none"; a computed 0 is sent as 0xFFFF.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Final

from emunet.errors import ConfigError, MalformedFrame
from emunet.packets.checksum import internet_checksum, pseudo_header_sum

HEADER: Final = struct.Struct("!HHHH")
HEADER_LEN: Final = HEADER.size  # 8
PROTO: Final = 17

_U16: Final = struct.Struct("!H")


@dataclass(frozen=True, slots=True)
class UDPHeader:
    sport: int
    dport: int
    length: int = field(default=0, compare=False)
    checksum: int = field(default=0, compare=False)


def parse(
    buf: bytes | bytearray | memoryview,
    offset: int = 0,
    *,
    verify_with: tuple[IPv4Address, IPv4Address] | None = None,
) -> tuple[UDPHeader, memoryview]:
    """Parse at ``offset`` (``buf`` ends where the IP payload ends).

    ``verify_with=(src, dst)`` checks the checksum against the pseudo-header.
    """
    mv = memoryview(buf)[offset:]
    if len(mv) < HEADER_LEN:
        raise MalformedFrame(f"udp: {len(mv)} bytes, header needs {HEADER_LEN}")
    sport, dport, length, csum = HEADER.unpack_from(mv, 0)
    if length < HEADER_LEN or length > len(mv):
        raise MalformedFrame(f"udp: length field {length}, {len(mv)} bytes present")
    if verify_with is not None and csum != 0:
        src, dst = verify_with
        initial = pseudo_header_sum(src.packed, dst.packed, PROTO, length)
        if internet_checksum(mv[:length], initial) != 0:
            raise MalformedFrame("udp: bad checksum")
    return UDPHeader(sport, dport, length, csum), mv[HEADER_LEN:length]


def build(
    hdr: UDPHeader,
    payload: bytes | bytearray | memoryview,
    src: IPv4Address,
    dst: IPv4Address,
    *,
    with_checksum: bool = True,
) -> bytes:
    if not (0 <= hdr.sport <= 0xFFFF and 0 <= hdr.dport <= 0xFFFF):
        raise ConfigError(f"udp port out of range in {hdr}")
    return build_fast(hdr.sport, hdr.dport, payload, src.packed, dst.packed, with_checksum)


def build_fast(
    sport: int,
    dport: int,
    payload: bytes | bytearray | memoryview,
    src: bytes,
    dst: bytes,
    with_checksum: bool = True,
) -> bytes:
    """The datagram as bytes: the checksum sums the payload where it lies, plus the
    pseudo-header and the header's words (the header is 16-bit aligned), and the
    payload is copied once, into the result."""
    length = HEADER_LEN + len(payload)
    if length > 0xFFFF:
        raise ConfigError(f"udp datagram of {length} bytes exceeds 65535")
    body = payload if isinstance(payload, bytes) else bytes(payload)
    csum = 0
    if with_checksum:
        init = pseudo_header_sum(src, dst, PROTO, length) + sport + dport + length
        csum = internet_checksum(body, init) or 0xFFFF
    return HEADER.pack(sport, dport, length, csum) + body
