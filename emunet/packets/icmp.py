"""ICMP for IPv4 (RFC 792): echo, destination unreachable, time exceeded.

Errors quote the offending packet's IP header plus the first 8 bytes of its
payload (RFC 792; RFC 1812 section 4.3.2.3 allows more, Linux sends more, we
send the minimum the RFCs require). Fragmentation-needed carries the next-hop
MTU in the low 16 bits of the "rest of header" word (RFC 1191).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from emunet.errors import ConfigError, MalformedFrame
from emunet.packets import ipv4
from emunet.packets.checksum import internet_checksum

HEADER: Final = struct.Struct("!BBHI")
HEADER_LEN: Final = HEADER.size  # 8

ECHO_REPLY: Final = 0
DEST_UNREACH: Final = 3
ECHO_REQUEST: Final = 8
TIME_EXCEEDED: Final = 11

# destination unreachable codes
NET_UNREACH: Final = 0
HOST_UNREACH: Final = 1
PROTO_UNREACH: Final = 2
PORT_UNREACH: Final = 3
FRAG_NEEDED: Final = 4
ADMIN_PROHIBITED: Final = 13
# time exceeded codes
TTL_EXCEEDED: Final = 0
FRAG_REASSEMBLY_EXCEEDED: Final = 1

ERROR_TYPES: Final = frozenset({DEST_UNREACH, TIME_EXCEEDED, 4, 5, 12})

_U16: Final = struct.Struct("!H")


@dataclass(frozen=True, slots=True)
class ICMPMessage:
    """An ICMP message; ``rest`` is the 32-bit "rest of header" word."""

    type: int
    code: int = 0
    rest: int = 0
    payload: bytes = b""
    checksum: int = field(default=0, compare=False)

    @property
    def identifier(self) -> int:
        return self.rest >> 16

    @property
    def sequence(self) -> int:
        return self.rest & 0xFFFF

    @property
    def next_hop_mtu(self) -> int:
        return self.rest & 0xFFFF

    @property
    def is_error(self) -> bool:
        return self.type in ERROR_TYPES


def parse(
    buf: bytes | bytearray | memoryview, offset: int = 0, *, verify_checksum: bool = False
) -> ICMPMessage:
    mv = memoryview(buf)[offset:]
    if len(mv) < HEADER_LEN:
        raise MalformedFrame(f"icmp: {len(mv)} bytes, header needs {HEADER_LEN}")
    typ, code, csum, rest = HEADER.unpack_from(mv, 0)
    if verify_checksum and internet_checksum(mv) != 0:
        raise MalformedFrame("icmp: bad checksum")
    return ICMPMessage(typ, code, rest, bytes(mv[HEADER_LEN:]), csum)


def build(msg: ICMPMessage) -> bytes:
    if not (0 <= msg.type <= 255 and 0 <= msg.code <= 255 and 0 <= msg.rest <= 0xFFFFFFFF):
        raise ConfigError(f"icmp field out of range in {msg}")
    out = bytearray(HEADER.pack(msg.type, msg.code, 0, msg.rest))
    out += msg.payload
    _U16.pack_into(out, 2, internet_checksum(out))
    return bytes(out)


def echo(typ: int, identifier: int, sequence: int, payload: bytes = b"") -> bytes:
    return build(ICMPMessage(typ, 0, ((identifier & 0xFFFF) << 16) | (sequence & 0xFFFF), payload))


def quote(ip_packet: bytes | bytearray | memoryview) -> bytes:
    """The part of an offending packet an ICMP error carries: IP header + 8 bytes."""
    if len(ip_packet) < ipv4.MIN_HEADER_LEN:
        raise MalformedFrame(f"icmp: cannot quote a {len(ip_packet)}-byte IP packet")
    hlen = (ip_packet[0] & 0x0F) * 4
    return bytes(ip_packet[: hlen + 8])


def parse_quote(payload: bytes | bytearray | memoryview) -> tuple[ipv4.IPv4Header, memoryview]:
    """The offending packet quoted by an ICMP error: its IP header and the bytes quoted
    after it (8 or more; RFC 792, RFC 1812 section 4.3.2.3).

    The quote is cut short of the quoted packet's total length by design, so the
    header's ``total_length`` is the original packet's, larger than what follows.
    """
    return ipv4.parse(payload, truncated_ok=True)


def error(typ: int, code: int, ip_packet: bytes | bytearray | memoryview, mtu: int = 0) -> bytes:
    """An ICMP error message quoting ``ip_packet`` (whose IP header starts at 0)."""
    return build(ICMPMessage(typ, code, mtu & 0xFFFF, quote(ip_packet)))
