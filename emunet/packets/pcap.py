"""Classic libpcap files (the format tcpdump, Wireshark and tshark read).

LINKTYPE_ETHERNET (1) for L2 interfaces (pod eth0, veths, cni0, the node's
eth0) and LINKTYPE_RAW (101) for L3 ones such as ``flannel0``; microsecond or
nanosecond timestamps. The writer and reader take an already-open binary
stream: opening files is the caller's business.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final

from emunet.errors import ConfigError, MalformedFrame

LINKTYPE_ETHERNET: Final = 1
LINKTYPE_RAW: Final = 101

MAGIC_USEC: Final = 0xA1B2C3D4
MAGIC_NSEC: Final = 0xA1B23C4D

_GLOBAL: Final = struct.Struct("<IHHiIII")
_RECORD: Final = struct.Struct("<IIII")


@dataclass(frozen=True, slots=True)
class PcapRecord:
    """One record. ``timestamp`` is in seconds; ``timestamp_ns`` is the exact
    value from the file (a float cannot hold nanoseconds since 1970)."""

    timestamp: float
    data: bytes
    orig_len: int
    timestamp_ns: int


class PcapWriter:
    """Writes the global header on construction, then one record per :meth:`write`."""

    def __init__(
        self,
        stream: BinaryIO,
        linktype: int = LINKTYPE_ETHERNET,
        *,
        nanosecond: bool = False,
        snaplen: int = 262144,
    ) -> None:
        self._stream = stream
        self._nano = nanosecond
        self._snaplen = snaplen
        self.linktype = linktype
        self.count = 0
        stream.write(
            _GLOBAL.pack(MAGIC_NSEC if nanosecond else MAGIC_USEC, 2, 4, 0, 0, snaplen, linktype)
        )

    def write(self, timestamp: float, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` captured at ``timestamp`` seconds (rounded to the file's unit)."""
        scale = 1_000_000_000 if self._nano else 1_000_000
        self._write(*divmod(round(timestamp * scale), scale), data)

    def write_ns(self, timestamp_ns: int, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` at an integer nanosecond time (exact in a nanosecond file)."""
        if self._nano:
            self._write(*divmod(timestamp_ns, 1_000_000_000), data)
        else:
            self._write(*divmod((timestamp_ns + 500) // 1000, 1_000_000), data)

    def _write(self, sec: int, frac: int, data: bytes | bytearray | memoryview) -> None:
        if not 0 <= sec <= 0xFFFFFFFF:
            raise ConfigError(f"pcap timestamp of {sec} s does not fit 32 bits")
        caplen = min(len(data), self._snaplen)
        self._stream.write(_RECORD.pack(sec, frac, caplen, len(data)))
        self._stream.write(bytes(data[:caplen]))
        self.count += 1

    def flush(self) -> None:
        self._stream.flush()


class PcapReader:
    """Iterates the records of a classic pcap stream (either byte order)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        head = stream.read(_GLOBAL.size)
        if len(head) < _GLOBAL.size:
            raise MalformedFrame("pcap: truncated global header")
        magic = struct.unpack_from("<I", head)[0]
        if magic in (MAGIC_USEC, MAGIC_NSEC):
            self._endian = "<"
        elif magic in (0xD4C3B2A1, 0x4D3CB2A1):
            self._endian = ">"
            magic = struct.unpack_from(">I", head)[0]
        else:
            raise MalformedFrame(f"pcap: bad magic {magic:#x}")
        self.nanosecond = magic == MAGIC_NSEC
        fields = struct.unpack_from(self._endian + "IHHiIII", head)
        self.snaplen = fields[5]
        self.linktype = fields[6]
        self._record = struct.Struct(self._endian + "IIII")

    def __iter__(self) -> Iterator[PcapRecord]:
        scale = 1_000_000_000 if self.nanosecond else 1_000_000
        to_ns = 1 if self.nanosecond else 1000
        while True:
            head = self._stream.read(self._record.size)
            if not head:
                return
            if len(head) < self._record.size:
                raise MalformedFrame("pcap: truncated record header")
            sec, frac, caplen, orig = self._record.unpack(head)
            data = self._stream.read(caplen)
            if len(data) < caplen:
                raise MalformedFrame("pcap: truncated record")
            yield PcapRecord(sec + frac / scale, data, orig, sec * 1_000_000_000 + frac * to_ns)
