"""IPv4 headers (RFC 791): parse, build, verify, and the hot-path helpers.

Offsets of the fields a router touches are module constants so the data plane
can read them straight from a frame. :func:`decrement_ttl` patches the header
checksum incrementally (RFC 1624) instead of recomputing it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Final

from emunet.errors import ConfigError, MalformedFrame
from emunet.packets.checksum import incremental_update, internet_checksum, pseudo_header_sum

HEADER: Final = struct.Struct("!BBHHHBBH4s4s")
MIN_HEADER_LEN: Final = HEADER.size  # 20
MAX_HEADER_LEN: Final = 60

# byte offsets inside the header
TOTAL_LENGTH: Final = 2
IDENT: Final = 4
FLAGS_FRAG: Final = 6
TTL: Final = 8
PROTO: Final = 9
CHECKSUM: Final = 10
SRC: Final = 12
DST: Final = 16

PROTO_ICMP: Final = 1
PROTO_TCP: Final = 6
PROTO_UDP: Final = 17

FLAG_DF: Final = 0x4000
FLAG_MF: Final = 0x2000
FRAG_MASK: Final = 0x1FFF

_U16: Final = struct.Struct("!H")


@dataclass(frozen=True, slots=True)
class IPv4Header:
    """An IPv4 header. ``fragment_offset`` is in 8-byte units, as on the wire.

    ``total_length`` and ``checksum`` are filled in by :func:`parse` and derived
    by :func:`build`; they take no part in equality.
    """

    src: IPv4Address
    dst: IPv4Address
    protocol: int
    ttl: int = 64
    identification: int = 0
    df: bool = False
    mf: bool = False
    fragment_offset: int = 0
    dscp: int = 0
    ecn: int = 0
    options: bytes = b""
    total_length: int = field(default=0, compare=False)
    checksum: int = field(default=0, compare=False)

    @property
    def header_length(self) -> int:
        return MIN_HEADER_LEN + len(self.options)

    @property
    def is_fragment(self) -> bool:
        return self.mf or self.fragment_offset != 0


def parse(
    buf: bytes | bytearray | memoryview,
    offset: int = 0,
    *,
    verify_checksum: bool = False,
    truncated_ok: bool = False,
) -> tuple[IPv4Header, memoryview]:
    """Parse the header at ``offset``; returns it and a view of the payload.

    Bytes after ``total_length`` (Ethernet padding) are not part of the payload.
    ``truncated_ok`` accepts a packet shorter than its total length (the header
    itself must be whole): that is what an ICMP error quotes (RFC 792), and the
    payload view then holds only the bytes present.
    """
    avail = len(buf) - offset
    if avail < MIN_HEADER_LEN:
        raise MalformedFrame(f"ipv4: {avail} bytes, header needs {MIN_HEADER_LEN}")
    vihl, tos, wire_total, ident, flags_frag, ttl, proto, csum, src, dst = HEADER.unpack_from(
        buf, offset
    )
    total = wire_total
    if vihl >> 4 != 4:
        raise MalformedFrame(f"ipv4: version {vihl >> 4}")
    hlen = (vihl & 0x0F) * 4
    if hlen < MIN_HEADER_LEN:
        raise MalformedFrame(f"ipv4: IHL {hlen // 4} below 5")
    if avail < hlen:
        raise MalformedFrame(f"ipv4: {avail} bytes, IHL says {hlen}")
    if total < hlen:
        raise MalformedFrame(f"ipv4: total length {total} below header length {hlen}")
    if total > avail:
        if not truncated_ok:
            raise MalformedFrame(f"ipv4: total length {total} but only {avail} bytes")
        total = avail
    mv = memoryview(buf)
    if verify_checksum and internet_checksum(mv[offset : offset + hlen]) != 0:
        raise MalformedFrame("ipv4: bad header checksum")
    hdr = IPv4Header(
        src=IPv4Address(src),
        dst=IPv4Address(dst),
        protocol=proto,
        ttl=ttl,
        identification=ident,
        df=bool(flags_frag & FLAG_DF),
        mf=bool(flags_frag & FLAG_MF),
        fragment_offset=flags_frag & FRAG_MASK,
        dscp=tos >> 2,
        ecn=tos & 3,
        options=bytes(mv[offset + MIN_HEADER_LEN : offset + hlen]),
        total_length=wire_total,
        checksum=csum,
    )
    return hdr, mv[offset + hlen : offset + total]


def build(hdr: IPv4Header, payload: bytes | bytearray | memoryview = b"") -> bytes:
    """Serialize with the derived total length and a fresh header checksum."""
    opts = hdr.options
    if len(opts) % 4 or len(opts) > MAX_HEADER_LEN - MIN_HEADER_LEN:
        raise ConfigError(f"ipv4 options must be a multiple of 4 bytes up to 40, got {len(opts)}")
    hlen = MIN_HEADER_LEN + len(opts)
    total = hlen + len(payload)
    if total > 0xFFFF:
        raise ConfigError(f"ipv4 packet of {total} bytes exceeds 65535")
    if not (0 <= hdr.ttl <= 255 and 0 <= hdr.protocol <= 255 and 0 <= hdr.dscp <= 63):
        raise ConfigError(f"ipv4 field out of range in {hdr}")
    if not (0 <= hdr.ecn <= 3 and 0 <= hdr.fragment_offset <= FRAG_MASK):
        raise ConfigError(f"ipv4 field out of range in {hdr}")
    if not 0 <= hdr.identification <= 0xFFFF:
        raise ConfigError(f"ipv4 identification {hdr.identification} out of range")
    flags_frag = (FLAG_DF if hdr.df else 0) | (FLAG_MF if hdr.mf else 0) | hdr.fragment_offset
    head = bytearray(
        HEADER.pack(
            0x40 | (hlen // 4),
            (hdr.dscp << 2) | hdr.ecn,
            total,
            hdr.identification,
            flags_frag,
            hdr.ttl,
            hdr.protocol,
            0,
            hdr.src.packed,
            hdr.dst.packed,
        )
    )
    head += opts
    _U16.pack_into(head, CHECKSUM, internet_checksum(head))
    return bytes(head) + payload


def build_fast(
    src: bytes,
    dst: bytes,
    protocol: int,
    payload: bytes | bytearray,
    *,
    ttl: int = 64,
    ident: int = 0,
    df: bool = True,
    tos: int = 0,
) -> bytearray:
    """Hot-path builder: 20-byte header, packed addresses, no validation.

    The header checksum is summed from the fields, before packing (the ten
    words: version/IHL/TOS, length, ident, flags, TTL/protocol, the addresses),
    so the header is packed once, complete, and never read back."""
    total = 20 + len(payload)
    flags = FLAG_DF if df else 0
    s = 0x4500 + tos + total + ident + flags + (ttl << 8 | protocol)
    s += pseudo_header_sum(src, dst, 0, 0)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    head = bytearray(
        HEADER.pack(0x45, tos, total, ident, flags, ttl, protocol, ~s & 0xFFFF, src, dst)
    )
    head += payload
    return head


def decrement_ttl(buf: bytearray | memoryview, offset: int = 0) -> int:
    """Decrement TTL in place, patching the checksum (RFC 1624). Returns the new TTL.

    This is the forwarding hot path. The caller drops the packet (ICMP time
    exceeded) when the TTL was already 1 or 0; this function only refuses to
    go below zero. ``buf`` must hold at least the 20-byte fixed header at
    ``offset`` (the caller has parsed it).

    The TTL is the high byte of the word it shares with the protocol, so the
    changed word goes from ``m`` to ``m' = m - 0x100`` and ``~m + m'`` is the
    constant 0xFEFF: RFC 1624 eqn. 3, ``HC' = ~(~HC + ~m + m')``, becomes
    ``~(~HC + 0xFEFF)`` with one end-around carry. Adding a non-zero constant
    can never produce one's-complement +0, so the result always equals a full
    recomputation (the eqn. 2 pitfall of RFC 1624 section 3 does not arise).

    Three byte reads and three byte writes: the compiled module indexes the
    buffer directly, where a ``struct`` call would box a tuple and two ints.
    """
    ttl = buf[offset + 8]
    if ttl == 0:
        return 0
    at = offset + 10
    total = ((buf[at] << 8 | buf[at + 1]) ^ 0xFFFF) + 0xFEFF
    total = ((total & 0xFFFF) + (total >> 16)) ^ 0xFFFF
    buf[offset + 8] = ttl - 1
    buf[at] = total >> 8
    buf[at + 1] = total & 0xFF
    return ttl - 1


def decrement_ttl_generic(buf: bytearray | memoryview, offset: int = 0) -> int:
    """:func:`decrement_ttl` through the general one-word RFC 1624 update (a reference)."""
    ttl = buf[offset + TTL]
    if ttl == 0:
        return 0
    proto = buf[offset + PROTO]
    old_word = (ttl << 8) | proto
    buf[offset + TTL] = ttl - 1
    (csum,) = _U16.unpack_from(buf, offset + CHECKSUM)
    _U16.pack_into(buf, offset + CHECKSUM, incremental_update(csum, old_word, old_word - 0x100))
    return ttl - 1


def verify_checksum(buf: bytes | bytearray | memoryview, offset: int = 0) -> bool:
    """True when the header at ``offset`` sums to zero; a cut header is malformed."""
    if len(buf) - offset < MIN_HEADER_LEN:
        raise MalformedFrame(f"ipv4: {len(buf) - offset} bytes, header needs {MIN_HEADER_LEN}")
    hlen = (buf[offset] & 0x0F) * 4
    if hlen < MIN_HEADER_LEN or len(buf) - offset < hlen:
        raise MalformedFrame(f"ipv4: IHL {hlen // 4} with {len(buf) - offset} bytes")
    return internet_checksum(memoryview(buf)[offset : offset + hlen]) == 0
