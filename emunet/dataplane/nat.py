"""NAT packet manipulation, in place, with incremental checksums (RFC 1624).

``manip(pkt, off, end, is_src, addr, port)`` rewrites one side of the IPv4
packet whose header starts at ``off`` (``end`` is where the IP datagram's bytes
stop in ``pkt``): the address, and the L4 "port" of that side (TCP/UDP port,
or the ICMP query identifier: see :func:`icmp_ports`). The IP header
checksum, the TCP/UDP checksum (the pseudo-header holds the addresses) and the
ICMP checksum (the identifier) are patched, not recomputed.

For a packet quoted inside an ICMP error only the first 8 bytes of L4 are
present: a UDP checksum (bytes 6-7) is still patched, the TCP checksum (bytes
16-17) is absent and left alone, as Linux's nf_nat does. The ICMP error's own
checksum is then recomputed over the whole message (:func:`fix_icmp_checksum`),
also what Linux does (``nf_nat_icmp_reply_translation``).

A UDP checksum of 0 means "none" (RFC 768) and stays 0; a patched checksum
that comes out 0 is sent as 0xFFFF.

ICMP queries in a conntrack tuple (:func:`icmp_ports`): Linux keys an ICMP
query's tuple by its identifier (``src.u.icmp.id``) *and* its type and code
(``dst.u.icmp.type/code``), the reply tuple holding the reply's type (8 -> 0).
Our tuples are ``(proto, src, dst, sport, dport)`` with the reply made by
swapping sides, so the identifier is in both "ports" and the query's type and
code ride above its low 16 bits on the responder's side: a request
``(id, id | key)``, its reply ``(id | key, id)``. A request from the other end
with the same identifier is then its own connection, as in Linux, not the
reply of the first (and a ping to a node's address is not taken for the reply
of a masqueraded ping that was given the same identifier). The packet's
identifier is a port's low 16 bits (:data:`PORT_MASK`).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

from emunet.packets.checksum import incremental_update, internet_checksum
from emunet.packets.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP

_U16: Final = struct.Struct("!H")
_U32: Final = struct.Struct("!I")


ICMP_ERRORS: Final = frozenset({3, 4, 5, 11, 12})  # quote the packet that caused them
ICMP_QUERIES: Final = frozenset({8, 13, 15, 17})  # may open a connection
ICMP_REPLIES: Final = frozenset({0, 14, 16, 18})
# ICMP query and reply types, whose identifier is tracked like a port (RFC 792)
ICMP_QUERY_TYPES: Final = ICMP_QUERIES | ICMP_REPLIES


def _csum_add32(csum: int, old: int, new: int) -> int:
    """Patch ``csum`` for a 32-bit field changing from ``old`` to ``new`` (RFC 1624 eqn. 3)."""
    total = (
        (~csum & 0xFFFF)
        + ((~old >> 16) & 0xFFFF)
        + (~old & 0xFFFF)
        + ((new >> 16) & 0xFFFF)
        + (new & 0xFFFF)
    )
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def manip(pkt: bytearray, off: int, end: int, is_src: bool, addr: int, port: int) -> None:
    """Set the source (``is_src``) or destination address and port of the packet at ``off``.

    The caller has checked that the L4 header's port bytes are present.
    """
    ihl = (pkt[off] & 0x0F) << 2
    proto = pkt[off + 9]
    aoff = off + (12 if is_src else 16)
    (old_addr,) = _U32.unpack_from(pkt, aoff)
    l4 = off + ihl
    avail = end - l4
    if old_addr != addr:
        (c,) = _U16.unpack_from(pkt, off + 10)
        _U16.pack_into(pkt, off + 10, _csum_add32(c, old_addr, addr))
        _U32.pack_into(pkt, aoff, addr)
    if proto in (PROTO_TCP, PROTO_UDP):
        poff = l4 + (0 if is_src else 2)
        (old_port,) = _U16.unpack_from(pkt, poff)
        _U16.pack_into(pkt, poff, port)
        coff = l4 + (16 if proto == PROTO_TCP else 6)
        if coff + 2 > l4 + avail:
            return  # checksum not present (quoted TCP header)
        (c,) = _U16.unpack_from(pkt, coff)
        if proto == PROTO_UDP and c == 0:
            return
        if old_addr != addr:
            c = _csum_add32(c, old_addr, addr)
        if old_port != port:
            c = incremental_update(c, old_port, port)
        if proto == PROTO_UDP and c == 0:
            c = 0xFFFF
        _U16.pack_into(pkt, coff, c)
    elif proto == PROTO_ICMP and pkt[l4] in ICMP_QUERY_TYPES:
        port &= PORT_MASK  # the identifier, without the tuple's query key
        (old_id,) = _U16.unpack_from(pkt, l4 + 4)
        if old_id != port:
            _U16.pack_into(pkt, l4 + 4, port)
            (c,) = _U16.unpack_from(pkt, l4 + 2)
            _U16.pack_into(pkt, l4 + 2, incremental_update(c, old_id, port))


def manip_addr(pkt: bytearray, off: int, is_src: bool, addr: int) -> None:
    """Change only an address of the IP header at ``off`` (the outer header of
    an ICMP error): no L4 pseudo-header to patch."""
    aoff = off + (12 if is_src else 16)
    (old_addr,) = _U32.unpack_from(pkt, aoff)
    if old_addr != addr:
        (c,) = _U16.unpack_from(pkt, off + 10)
        _U16.pack_into(pkt, off + 10, _csum_add32(c, old_addr, addr))
        _U32.pack_into(pkt, aoff, addr)


def fix_icmp_checksum(pkt: bytearray, icmp_off: int, end: int) -> None:
    """Recompute the ICMP checksum over ``pkt[icmp_off:end]``."""
    _U16.pack_into(pkt, icmp_off + 2, 0)
    _U16.pack_into(pkt, icmp_off + 2, internet_checksum(memoryview(pkt)[icmp_off:end]))


# ---------------------------------------------------------------- ICMP errors
# shared by every NAT engine (the node's netfilter, the internet gateway)

_II: Final = struct.Struct("!II")
_HH: Final = struct.Struct("!HH")
SRC_NAT, DST_NAT = 1 << 4, 1 << 5  # conntrack's IPS_SRC_NAT, IPS_DST_NAT status bits
PORT_MASK: Final = 0xFFFF  # a tuple port's packet field (an ICMP key rides above it)
ICMP_QUERY_OF: Final = {0: 8, 14: 13, 16: 15, 18: 17}  # a reply type -> its query's


def manips(status: int, direction: int, is_src: bool) -> bool:
    """Linux ``nf_nat_packet``'s test: a packet travelling in ``direction`` of a
    connection with NAT ``status`` gets the source (``is_src``, POSTROUTING/INPUT)
    or destination (PREROUTING/OUTPUT) manip: SNAT's bit in the original
    direction, DNAT's in the reply, and the other way round for destinations."""
    return bool(status & (SRC_NAT if is_src != bool(direction) else DST_NAT))


def nat_packet(
    pkt: bytearray,
    end: int,
    tuples: Sequence[tuple[int, ...]],
    status: int,
    direction: int,
    is_src: bool,
    addr: int,
    port: int,
) -> tuple[int, ...] | None:
    """Linux ``nf_nat_packet`` for a tracked packet travelling in ``direction``: when
    the connection's NAT applies (:func:`manips`), its source (``is_src``) or
    destination becomes the other direction's tuple's, unless it already is
    (``addr``, ``port``: the packet's now). The tuple it was set from, for a trace;
    None if the packet is unchanged."""
    if not manips(status, direction, is_src):
        return None
    other = tuples[1 - direction]
    to_addr, to_port = (other[2], other[4]) if is_src else (other[1], other[3])
    if to_addr == addr and not (to_port ^ port) & PORT_MASK:
        return None
    manip(pkt, 0, end, is_src, to_addr, to_port)
    return other


def icmp_ports(typ: int, code: int, ident: int) -> tuple[int, int]:
    """The tuple's (sport, dport) of an ICMP query (``typ`` in :data:`ICMP_QUERIES`)
    or reply (in :data:`ICMP_REPLIES`) with identifier ``ident``: the identifier
    both sides, the query's type and code above it on the responder's side."""
    query = ICMP_QUERY_OF.get(typ)
    if query is None:  # a query: the responder is the destination
        return ident, ident | (typ << 8 | code) << 16
    return ident | (query << 8 | code) << 16, ident


def nat_ports(proto: int, sport: int, port: int) -> tuple[int, int]:
    """The (sport, dport) of a reply tuple whose destination port a source NAT set
    to ``port``: an ICMP identifier is both ports, the query's key kept."""
    if proto == PROTO_ICMP:
        return (sport & ~PORT_MASK) | port, port
    return sport, port


def quoted_tuple(pkt: bytes | bytearray, ihl: int, end: int) -> tuple[int, tuple[int, ...]] | None:
    """The ICMP error in ``pkt`` (IP header of ``ihl`` bytes): where its quoted
    packet starts and that packet's tuple *inverted* (the quoted packet went the
    other way, so its inverse is the error's direction); None when the quote is
    too short (or quotes an ICMP message that is not a query or reply)."""
    ioff = ihl + 8
    if end < ioff + 20:
        return None
    iihl = (pkt[ioff] & 0x0F) << 2
    iproto = pkt[ioff + 9]
    isrc, idst = _II.unpack_from(pkt, ioff + 12)
    l4 = ioff + iihl
    if iproto in (PROTO_TCP, PROTO_UDP):
        if end < l4 + 4:
            return None
        isport, idport = _HH.unpack_from(pkt, l4)
    elif iproto == PROTO_ICMP:
        if end < l4 + 8 or (pkt[l4] not in ICMP_QUERIES and pkt[l4] not in ICMP_REPLIES):
            return None
        isport, idport = icmp_ports(pkt[l4], pkt[l4 + 1], _U16.unpack_from(pkt, l4 + 4)[0])
    else:  # another protocol: conntrack tracks it by addresses alone
        isport = idport = 0
    return ioff, (iproto, idst, isrc, idport, isport)


def icmp_reply_translation(
    pkt: bytearray,
    ioff: int,
    end: int,
    tuples: Sequence[tuple[int, ...]],
    status: int,
    direction: int,
    is_src: bool,
) -> bool:
    """Linux's ``nf_nat_icmp_reply_translation`` for one manip type: an ICMP error
    travelling in ``direction`` of a connection (its ``tuples`` and NAT ``status``)
    is rewritten as the packet it quotes was: the quoted packet with the inverse
    manip, the error's own addresses, then the error's checksum. True if rewritten."""
    if not manips(status, direction, is_src):
        return False
    other = tuples[1 - direction]
    if is_src:
        manip(pkt, ioff, end, False, other[2], other[4])
    else:
        manip(pkt, ioff, end, True, other[1], other[3])
    manip_addr(pkt, 0, is_src, other[2] if is_src else other[1])
    fix_icmp_checksum(pkt, ioff - 8, end)
    return True


def port_range(proto: int, port: int) -> tuple[int, int]:
    """The (first, count) of the class of ``port`` a source NAT keeps a port in:
    1-511, 600-1023, 1024-65535 (Linux's), or every ICMP identifier."""
    if proto == PROTO_ICMP:
        return 0, 65536
    if port < 512:
        return 1, 511
    if port < 1024:
        return 600, 424
    return 1024, 64512
