"""IPv4 fragmentation and reassembly (Linux's ``ip_fragment.c``).

:func:`fragment` splits a packet for a smaller MTU (RFC 791 section 3.2).
:class:`Defrag` holds a namespace's reassembly queues (``ip_defrag``): as
Linux, a fragment ending past 65535 bytes, overlapping another one (RFC 5722's
rule, applied to IPv4 since Linux 4.19) or contradicting the known end discards
the whole queue; queues hold at most ``ipfrag_high_thresh`` bytes per namespace
(each fragment charged its data and :data:`FRAG_TRUESIZE`, so header-only
fragments count too and the number of queues is bounded), the oldest queue
evicted first. Queues are kept in the order they started, so eviction and
expiry look at the front only. The caller reports what is discarded: every
call returns the reasons.
"""

from __future__ import annotations

import struct
from typing import Final

from emunet.packets import ipv4
from emunet.packets.checksum import internet_checksum

_U16: Final = struct.Struct("!H")

# net.ipv4.ipfrag_time, net.ipv4.ipfrag_high_thresh; a queued fragment costs its
# data plus an skb's overhead (Linux counts truesize): 4 MiB / 256 B, 16384 queues at most
FRAG_TIMEOUT: Final = 30.0
FRAG_HIGH_THRESH: Final = 4 * 1024 * 1024
FRAG_TRUESIZE: Final = 256

FragKey = tuple[bytes, bytes, int, int]  # (source, destination, identification, protocol)


class Reassembly:
    """One queue: the fragments of one datagram seen so far."""

    __slots__ = ("first", "frags", "size", "started", "total")

    def __init__(self, now: float) -> None:
        self.started = now
        self.frags: dict[int, bytes] = {}
        self.total = -1
        self.first: bytearray | None = None
        self.size = 0  # bytes charged against ipfrag_high_thresh


class Defrag:
    """The reassembly queues of one namespace."""

    def __init__(self) -> None:
        self.queues: dict[FragKey, Reassembly] = {}
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.queues)

    def add(self, pkt: bytearray, now: float, discarded: list[str]) -> tuple[bytearray, int] | None:
        """Add a fragment; the whole packet and how many fragments made it once
        complete, else None. The reasons
        of what this call discarded (this queue, older ones evicted) are appended
        to ``discarded``."""
        key = (bytes(pkt[12:16]), bytes(pkt[16:20]), (pkt[4] << 8) | pkt[5], pkt[9])
        hlen = (pkt[0] & 0x0F) << 2
        ff = (pkt[6] << 8) | pkt[7]
        offset = (ff & ipv4.FRAG_MASK) * 8
        more = bool(ff & ipv4.FLAG_MF)
        data = bytes(pkt[hlen:])
        end = offset + len(data)
        queues = self.queues
        r = queues.get(key)
        if end + hlen > 0xFFFF or (more and len(data) % 8):
            self._discard(key, r, discarded, "fragment beyond 65535 bytes or misaligned")
            return None
        cost = len(data) + FRAG_TRUESIZE
        while queues and self.bytes + cost > FRAG_HIGH_THRESH:
            old = next(iter(queues))
            if old == key:  # this queue alone fills the memory: it goes
                break
            self._discard(old, queues[old], discarded, "ipfrag_high_thresh")
        if self.bytes + cost > FRAG_HIGH_THRESH:
            self._discard(key, r, discarded, "ipfrag_high_thresh")
            return None
        if r is None:
            r = queues[key] = Reassembly(now)
        for off, seen in r.frags.items():
            if off < end and offset < off + len(seen) and (off, seen) != (offset, data):
                self._discard(key, r, discarded, "overlapping fragments")
                return None
        if (not more and r.total >= 0 and r.total != end) or (0 <= r.total < end):
            self._discard(key, r, discarded, "fragments disagree on the end")
            return None
        if offset not in r.frags:
            self.bytes += cost
            r.size += cost
        r.frags[offset] = data
        if offset == 0:
            r.first = pkt
        if not more:
            r.total = end
        if r.total < 0 or r.first is None:
            return None
        pos = 0
        for off in sorted(r.frags):
            if off > pos:
                return None
            pos = max(pos, off + len(r.frags[off]))
        if pos < r.total:
            return None
        del queues[key]
        self.bytes -= r.size
        return _join(r.first, r), len(r.frags)

    def _discard(self, key: FragKey, r: Reassembly | None, discarded: list[str], why: str) -> None:
        if r is not None and self.queues.pop(key, None) is r:
            self.bytes -= r.size
        discarded.append(why)

    def next_expiry(self) -> float | None:
        """When the oldest queue times out."""
        if not self.queues:
            return None
        return next(iter(self.queues.values())).started + FRAG_TIMEOUT

    def expire(self, now: float) -> list[tuple[FragKey, Reassembly]]:
        """Remove the queues older than ``ipfrag_time`` (the oldest are at the front)."""
        queues = self.queues
        out = []
        while queues:
            key = next(iter(queues))
            r = queues[key]
            if now < r.started + FRAG_TIMEOUT:  # the deadline next_expiry gives, exactly
                break
            del queues[key]
            self.bytes -= r.size
            out.append((key, r))
        return out

    def clear(self) -> None:
        self.queues.clear()
        self.bytes = 0


def _join(first: bytearray, r: Reassembly) -> bytearray:
    """The datagram of a complete queue: the first fragment's header, the data."""
    body = bytearray(r.total)
    for off, data in r.frags.items():
        body[off : off + len(data)] = data[: max(0, r.total - off)]
    fhlen = (first[0] & 0x0F) << 2
    whole = bytearray(first[:fhlen]) + body
    _U16.pack_into(whole, 2, len(whole))
    whole[6] &= 0x40  # keep DF, clear MF and offset
    whole[7] = 0
    whole[10:12] = b"\x00\x00"
    _U16.pack_into(whole, 10, internet_checksum(memoryview(whole)[:fhlen]))
    return whole


def fragment(pkt: bytearray, mtu: int) -> list[bytearray]:
    """Split an IPv4 packet into fragments that fit ``mtu`` (RFC 791 section 3.2)."""
    hlen = (pkt[0] & 0x0F) << 2
    header = pkt[:hlen]
    body = memoryview(pkt)[hlen:]
    chunk = ((mtu - hlen) // 8) * 8
    ff = (pkt[6] << 8) | pkt[7]
    base = ff & ipv4.FRAG_MASK
    last_mf = ff & ipv4.FLAG_MF
    out: list[bytearray] = []
    for start in range(0, len(body), chunk):
        part = body[start : start + chunk]
        frag = bytearray(header) + part
        more = start + chunk < len(body)
        flags = (ipv4.FLAG_MF if more or last_mf else 0) | (base + start // 8)
        _U16.pack_into(frag, 2, len(frag))
        _U16.pack_into(frag, 6, flags)
        frag[10:12] = b"\x00\x00"
        _U16.pack_into(frag, 10, internet_checksum(memoryview(frag)[:hlen]))
        out.append(frag)
    return out
