"""Ethernet II frames (IEEE 802.3 type field), with 802.1Q tag parsing.

Hot-path users read only what they need straight from the frame: the bridge
reads ``frame[0:6]`` / ``frame[6:12]`` (:data:`DST`, :data:`SRC`) and the
EtherType at :data:`TYPE_OFFSET`; :func:`parse` is the typed, checked view.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from emunet.errors import ConfigError, MalformedFrame
from emunet.packets.mac import MAC

ETH_P_IP: Final = 0x0800
ETH_P_ARP: Final = 0x0806
ETH_P_8021Q: Final = 0x8100
ETH_P_IPV6: Final = 0x86DD

HEADER: Final = struct.Struct("!6s6sH")
TAG: Final = struct.Struct("!HH")  # TCI, inner EtherType
HEADER_LEN: Final = HEADER.size  # 14
TYPE_OFFSET: Final = 12
DST: Final = slice(0, 6)
SRC: Final = slice(6, 12)


@dataclass(frozen=True, slots=True)
class VlanTag:
    """An 802.1Q tag: priority code point, drop eligible indicator, VLAN id."""

    vid: int
    pcp: int = 0
    dei: bool = False


@dataclass(frozen=True, slots=True)
class EthernetHeader:
    dst: MAC
    src: MAC
    ethertype: int
    vlan: VlanTag | None = None

    @property
    def length(self) -> int:
        return HEADER_LEN + (4 if self.vlan is not None else 0)


def parse(buf: bytes | bytearray | memoryview) -> tuple[EthernetHeader, int]:
    """Parse the Ethernet header; returns it and the offset of the payload."""
    if len(buf) < HEADER_LEN:
        raise MalformedFrame(f"ethernet: {len(buf)} bytes, header needs {HEADER_LEN}")
    dst, src, ethertype = HEADER.unpack_from(buf, 0)
    vlan = None
    offset = HEADER_LEN
    if ethertype == ETH_P_8021Q:
        if len(buf) < HEADER_LEN + TAG.size:
            raise MalformedFrame("ethernet: truncated 802.1Q tag")
        tci, ethertype = TAG.unpack_from(buf, HEADER_LEN)
        vlan = VlanTag(vid=tci & 0x0FFF, pcp=tci >> 13, dei=bool(tci & 0x1000))
        offset += TAG.size
    return EthernetHeader(MAC(dst), MAC(src), ethertype, vlan), offset


def build(hdr: EthernetHeader, payload: bytes | bytearray | memoryview = b"") -> bytes:
    if not 0 <= hdr.ethertype <= 0xFFFF:
        raise ConfigError(f"ethertype {hdr.ethertype} out of range")
    if hdr.vlan is None:
        if hdr.ethertype == ETH_P_8021Q:
            raise ConfigError("ethertype 0x8100 is the 802.1Q tag: pass vlan=VlanTag(...)")
        return HEADER.pack(hdr.dst, hdr.src, hdr.ethertype) + payload
    v = hdr.vlan
    if not (0 <= v.vid <= 0xFFF and 0 <= v.pcp <= 7):
        raise ConfigError(f"invalid 802.1Q tag {v}")
    tci = (v.pcp << 13) | (0x1000 if v.dei else 0) | v.vid
    return (
        HEADER.pack(hdr.dst, hdr.src, ETH_P_8021Q) + TAG.pack(tci, hdr.ethertype) + bytes(payload)
    )


def frame(dst: bytes, src: bytes, ethertype: int, payload: bytes | bytearray) -> bytes:
    """Untagged frame, hot path: no validation, no dataclass."""
    return HEADER.pack(dst, src, ethertype) + payload
