"""TCP headers (RFC 9293) with options: MSS, window scale (RFC 7323),
SACK-permitted and SACK blocks (RFC 2018), timestamps (RFC 7323).

Options are kept in wire order as typed values so a header round-trips
byte-exactly; padding to a 32-bit boundary is End-of-Option-List bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntFlag
from ipaddress import IPv4Address
from typing import Final

from emunet.errors import ConfigError, MalformedFrame
from emunet.packets.checksum import internet_checksum, pseudo_header_sum

HEADER: Final = struct.Struct("!HHIIBBHHH")
MIN_HEADER_LEN: Final = HEADER.size  # 20
PROTO: Final = 6

_U16: Final = struct.Struct("!H")
_U32X2: Final = struct.Struct("!II")


class Flags(IntFlag):
    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10
    URG = 0x20
    ECE = 0x40
    CWR = 0x80


# The bits as plain ints for the per-segment paths: ``flags & ACK`` with an
# IntFlag operand runs enum's Python-level __and__ and builds a new member on
# every test. :class:`Flags` stays for names (``flag_names``, rendering).
FIN: Final = 0x01
SYN: Final = 0x02
RST: Final = 0x04
PSH: Final = 0x08
ACK: Final = 0x10

OPT_EOL: Final = 0
OPT_NOP: Final = 1
OPT_MSS: Final = 2
OPT_WSCALE: Final = 3
OPT_SACK_PERMITTED: Final = 4
OPT_SACK: Final = 5
OPT_TIMESTAMPS: Final = 8


@dataclass(frozen=True, slots=True)
class NOP:
    pass


@dataclass(frozen=True, slots=True)
class MSS:
    value: int


@dataclass(frozen=True, slots=True)
class WindowScale:
    shift: int


@dataclass(frozen=True, slots=True)
class SACKPermitted:
    pass


@dataclass(frozen=True, slots=True)
class SACK:
    blocks: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Timestamps:
    tsval: int
    tsecr: int


@dataclass(frozen=True, slots=True)
class UnknownOption:
    kind: int
    data: bytes


Option = NOP | MSS | WindowScale | SACKPermitted | SACK | Timestamps | UnknownOption


@dataclass(frozen=True, slots=True, init=False)
class TCPHeader:
    """A TCP header. :func:`build` takes ``seq`` and ``ack`` modulo 2**32 (sequence
    arithmetic); ``data_offset`` and ``checksum`` are filled in by :func:`parse`
    and take no part in equality."""

    sport: int
    dport: int
    seq: int = 0
    ack: int = 0
    flags: int = 0
    window: int = 65535
    urgent: int = 0
    options: tuple[Option, ...] = ()
    data_offset: int = field(default=0, compare=False)
    checksum: int = field(default=0, compare=False)

    def __init__(
        self,
        sport: int,
        dport: int,
        seq: int = 0,
        ack: int = 0,
        flags: int = 0,
        window: int = 65535,
        urgent: int = 0,
        options: tuple[Option, ...] = (),
        data_offset: int = 0,
        checksum: int = 0,
    ) -> None:
        # The __init__ dataclasses would write, by hand: mypyc compiles this one
        # (the generated one runs as Python: 20x slower, once per segment parsed).
        object.__setattr__(self, "sport", sport)
        object.__setattr__(self, "dport", dport)
        object.__setattr__(self, "seq", seq)
        object.__setattr__(self, "ack", ack)
        object.__setattr__(self, "flags", flags)
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "urgent", urgent)
        object.__setattr__(self, "options", options)
        object.__setattr__(self, "data_offset", data_offset)
        object.__setattr__(self, "checksum", checksum)

    def option(self, kind: type[Option]) -> Option | None:
        for opt in self.options:
            if type(opt) is kind:
                return opt
        return None

    @property
    def mss(self) -> int | None:
        opt = self.option(MSS)
        return opt.value if isinstance(opt, MSS) else None

    @property
    def window_scale(self) -> int | None:
        opt = self.option(WindowScale)
        return opt.shift if isinstance(opt, WindowScale) else None

    @property
    def flag_names(self) -> str:
        return ",".join(f.name or "" for f in Flags if self.flags & f) or "none"


def _parse_options(data: memoryview) -> tuple[Option, ...]:
    out: list[Option] = []
    i, n = 0, len(data)
    while i < n:
        kind = data[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            out.append(NOP())
            i += 1
            continue
        if i + 1 >= n:
            raise MalformedFrame(f"tcp: option {kind} truncated")
        length = data[i + 1]
        if length < 2 or i + length > n:
            raise MalformedFrame(f"tcp: option {kind} has bad length {length}")
        body = data[i + 2 : i + length]
        if kind == OPT_MSS and length == 4:
            out.append(MSS(_U16.unpack_from(body)[0]))
        elif kind == OPT_WSCALE and length == 3:
            out.append(WindowScale(body[0]))
        elif kind == OPT_SACK_PERMITTED and length == 2:
            out.append(SACKPermitted())
        elif kind == OPT_SACK and (length - 2) % 8 == 0 and length > 2:
            blocks = tuple(_U32X2.unpack_from(body, j) for j in range(0, length - 2, 8))
            out.append(SACK(blocks))
        elif kind == OPT_TIMESTAMPS and length == 10:
            out.append(Timestamps(*_U32X2.unpack_from(body)))
        elif kind in (OPT_MSS, OPT_WSCALE, OPT_SACK_PERMITTED, OPT_SACK, OPT_TIMESTAMPS):
            raise MalformedFrame(f"tcp: option {kind} has bad length {length}")
        else:
            out.append(UnknownOption(kind, bytes(body)))
        i += length
    return tuple(out)


def build_options(options: tuple[Option, ...]) -> bytes:
    """Wire form of ``options``; a value that does not fit its field is the caller's error."""
    out = bytearray()
    for opt in options:
        if isinstance(opt, NOP):
            out.append(OPT_NOP)
        elif isinstance(opt, MSS):
            _check(0 <= opt.value <= 0xFFFF, opt)
            out += bytes((OPT_MSS, 4)) + _U16.pack(opt.value)
        elif isinstance(opt, WindowScale):
            _check(0 <= opt.shift <= 0xFF, opt)
            out += bytes((OPT_WSCALE, 3, opt.shift))
        elif isinstance(opt, SACKPermitted):
            out += bytes((OPT_SACK_PERMITTED, 2))
        elif isinstance(opt, SACK):
            _check(1 <= len(opt.blocks) <= 4, opt)
            out += bytes((OPT_SACK, 2 + 8 * len(opt.blocks)))
            for left, right in opt.blocks:
                _check(0 <= left <= 0xFFFFFFFF and 0 <= right <= 0xFFFFFFFF, opt)
                out += _U32X2.pack(left, right)
        elif isinstance(opt, Timestamps):
            _check(0 <= opt.tsval <= 0xFFFFFFFF and 0 <= opt.tsecr <= 0xFFFFFFFF, opt)
            out += bytes((OPT_TIMESTAMPS, 10)) + _U32X2.pack(opt.tsval, opt.tsecr)
        else:
            # kinds 0 and 1 have no length byte, and the known kinds have typed forms
            _check(opt.kind not in _TYPED_KINDS and 0 <= opt.kind <= 0xFF, opt)
            _check(len(opt.data) <= 38, opt)
            out += bytes((opt.kind, 2 + len(opt.data))) + opt.data
    if len(out) % 4:
        out += bytes(4 - len(out) % 4)
    if len(out) > 40:
        raise ConfigError(f"tcp options take {len(out)} bytes, at most 40 fit")
    return bytes(out)


_TYPED_KINDS: Final = frozenset(
    {OPT_EOL, OPT_NOP, OPT_MSS, OPT_WSCALE, OPT_SACK_PERMITTED, OPT_SACK, OPT_TIMESTAMPS}
)


def _check(ok: bool, opt: Option) -> None:
    if not ok:
        raise ConfigError(f"tcp option {opt} does not fit its wire format")


def parse(
    buf: bytes | bytearray | memoryview,
    offset: int = 0,
    *,
    verify_with: tuple[IPv4Address, IPv4Address] | tuple[bytes, bytes] | None = None,
) -> tuple[TCPHeader, memoryview]:
    """Parse at ``offset``; ``buf`` ends where the IP payload ends.

    ``verify_with``: the IPv4 source and destination (addresses, or the packed
    four bytes a receive path already holds) to check the checksum against.
    """
    mv = memoryview(buf)[offset:]
    if len(mv) < MIN_HEADER_LEN:
        raise MalformedFrame(f"tcp: {len(mv)} bytes, header needs {MIN_HEADER_LEN}")
    sport, dport, seq, ack, off_byte, flags, window, csum, urg = HEADER.unpack_from(mv, 0)
    hlen = (off_byte >> 4) * 4
    if hlen < MIN_HEADER_LEN or hlen > len(mv):
        raise MalformedFrame(f"tcp: data offset {hlen} with {len(mv)} bytes present")
    if verify_with is not None:
        if len(mv) > 0xFFFF:
            raise MalformedFrame(f"tcp: segment of {len(mv)} bytes exceeds an IPv4 payload")
        src, dst = verify_with
        initial = pseudo_header_sum(
            src if isinstance(src, bytes) else src.packed,
            dst if isinstance(dst, bytes) else dst.packed,
            PROTO,
            len(mv),
        )
        if internet_checksum(mv, initial) != 0:
            raise MalformedFrame("tcp: bad checksum")
    options = _parse_options(mv[MIN_HEADER_LEN:hlen]) if hlen > MIN_HEADER_LEN else ()
    hdr = TCPHeader(sport, dport, seq, ack, flags, window, urg, options, hlen, csum)
    return hdr, mv[hlen:]


def build(
    hdr: TCPHeader, payload: bytes | bytearray | memoryview, src: IPv4Address, dst: IPv4Address
) -> bytes:
    return build_fast(hdr, payload, src.packed, dst.packed)


def build_fast(
    hdr: TCPHeader, payload: bytes | bytearray | memoryview, src: bytes, dst: bytes
) -> bytes:
    opts = build_options(hdr.options) if hdr.options else b""
    return build_segment(
        hdr.sport,
        hdr.dport,
        hdr.seq,
        hdr.ack,
        hdr.flags,
        hdr.window,
        payload,
        src,
        dst,
        urgent=hdr.urgent,
        options=opts,
    )


def build_segment(
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    payload: bytes | bytearray | memoryview,
    src: bytes,
    dst: bytes,
    *,
    urgent: int = 0,
    options: bytes = b"",
) -> bytes:
    """A checksummed segment from its fields and the options' wire form (a
    :class:`TCPHeader` per segment is what a sender's hot path can skip)."""
    if not (0 <= sport <= 0xFFFF and 0 <= dport <= 0xFFFF and 0 <= flags <= 0xFF):
        raise ConfigError(f"tcp field out of range: ports {sport}, {dport}, flags {flags}")
    if not (0 <= window <= 0xFFFF and 0 <= urgent <= 0xFFFF):
        raise ConfigError(f"tcp window {window} or urgent pointer {urgent} out of range")
    hlen = MIN_HEADER_LEN + len(options)
    out = bytearray(
        HEADER.pack(
            sport,
            dport,
            seq & 0xFFFFFFFF,
            ack & 0xFFFFFFFF,
            (hlen // 4) << 4,
            flags,
            window,
            0,
            urgent,
        )
    )
    out += options
    out += payload
    csum = internet_checksum(out, pseudo_header_sum(src, dst, PROTO, len(out)))
    _U16.pack_into(out, 16, csum)
    return bytes(out)
