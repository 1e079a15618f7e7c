"""The Internet checksum (RFC 1071) and its incremental update (RFC 1624).

The one's-complement sum of 16-bit words is the buffer read as one big-endian
integer modulo 0xFFFF (2**16 is 1 modulo 0xFFFF, so each word counts once:
RFC 1071 section 2(E)'s deferred end-around carries, all deferred to one
remainder), with 0xFFFF standing for a non-zero multiple.
:func:`ones_sum` does it with ``int.from_bytes`` and one remainder, both in
C and linear in the length, instead of one Python int per word. Compiled by
mypyc, the module takes :func:`word_sum` instead: a loop over the bytes in
native 64-bit integers, six times faster than the big integer's remainder for
a 1400-byte packet (and far slower than it when interpreted).
"""

from __future__ import annotations

import struct
from typing import Final

from mypy_extensions import i64

Buffer = bytes | bytearray | memoryview
COMPILED: Final = not __file__.endswith(".py")  # a mypyc build's module is a C extension


def word_sum(data: bytes) -> int:
    """Plain sum of the big-endian 16-bit words of ``data`` (an odd last byte is
    the high byte of a word padded with zero): congruent to the buffer read as
    one integer, modulo 0xFFFF, and zero only for a buffer of zeroes."""
    total: i64 = 0
    n: i64 = len(data)
    i: i64 = 0
    while i + 1 < n:
        total += (i64(data[i]) << 8) | i64(data[i + 1])
        i += 2
    if i < n:
        total += i64(data[i]) << 8
    return int(total)


def ones_sum(data: Buffer, initial: int = 0) -> int:
    """One's-complement 16-bit sum of ``data`` (network order), not inverted.

    ``initial`` is a partial sum in network order (e.g. a pseudo-header's).
    An odd trailing byte is the high byte of a last word padded with zero.
    """
    if COMPILED:
        total = word_sum(data if isinstance(data, bytes) else bytes(data)) + initial
    else:
        mv = memoryview(data)
        total = int.from_bytes(mv, "big")
        if len(mv) & 1:
            total <<= 8
        total += initial
    if total == 0:
        return 0
    rem: int = total % 0xFFFF
    return rem if rem else 0xFFFF


def internet_checksum(data: Buffer, initial: int = 0) -> int:
    """RFC 1071 checksum of ``data``: the complement of the one's-complement sum."""
    return ~ones_sum(data, initial) & 0xFFFF


HEADER20_WORDS: Final = struct.Struct("!IIIII")  # a 20-byte header as five 32-bit words


def pseudo_header_sum(src: bytes, dst: bytes, protocol: int, length: int) -> int:
    """Partial sum of the IPv4 pseudo-header (RFC 768, RFC 793 section 3.1)."""
    total = (
        (src[0] << 8 | src[1])
        + (src[2] << 8 | src[3])
        + (dst[0] << 8 | dst[1])
        + (dst[2] << 8 | dst[3])
        + protocol
        + length
    )
    total = (total & 0xFFFF) + (total >> 16)
    return (total & 0xFFFF) + (total >> 16)


def header_words(buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int, int]:
    """A 20-byte IPv4 header at ``offset`` as its first two 32-bit words (version,
    IHL, TOS, total length; ident, flags, fragment offset) and its checksum residue,
    zero when the checksum holds.

    The one's-complement sum of the ten 16-bit words is 0xFFFF exactly when the
    160-bit header, as an integer, is a non-zero multiple of 0xFFFF (2**16 is 1
    modulo 0xFFFF), and so is the sum of its five 32-bit parts: five words to add
    instead of ten, one remainder instead of two folds, and in the compiled module
    every one a machine integer (64-bit parts would not be; the fixed-length tuple
    returned is a C struct). A header with IHL 5 is never all zeroes.
    """
    w0: int
    w1: int
    w2: int
    w3: int
    w4: int
    w0, w1, w2, w3, w4 = HEADER20_WORDS.unpack_from(buf, offset)
    return w0, w1, (w0 + w1 + w2 + w3 + w4) % 0xFFFF


def header_ok(buf: bytes | bytearray | memoryview, offset: int = 0) -> bool:
    """True when an IPv4 header at ``offset`` has a valid checksum (fast for IHL 5,
    :func:`header_words`). The caller has checked that the IHL's bytes are present
    (``ip_rcv`` does)."""
    hlen = (buf[offset] & 0x0F) << 2
    if hlen != 20:
        return internet_checksum(memoryview(buf)[offset : offset + hlen]) == 0
    return header_words(buf, offset)[2] == 0


def incremental_update(checksum: int, old_word: int, new_word: int) -> int:
    """RFC 1624 eqn. 3: ``HC' = ~(~HC + ~m + m')`` for one changed 16-bit word."""
    total = (~checksum & 0xFFFF) + (~old_word & 0xFFFF) + new_word
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
