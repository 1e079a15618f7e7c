"""A small MAC address type.

:class:`MAC` subclasses :class:`bytes`, so a MAC is hashable and compares and
hashes equal to the six raw bytes it holds: the bridge FDB can be keyed by
``MAC`` and looked up with a plain ``bytes`` slice of a frame, with no
conversion on the hot path.
"""

from __future__ import annotations

from typing import ClassVar

from emunet.errors import ConfigError


class MAC(bytes):
    """Six bytes of an IEEE 802 MAC address, printed as ``aa:bb:cc:dd:ee:ff``."""

    BROADCAST: ClassVar[MAC]
    ZERO: ClassVar[MAC]

    def __new__(cls, value: bytes | bytearray | memoryview | str) -> MAC:
        if isinstance(value, str):
            parts = value.replace("-", ":").split(":")
            if len(parts) != 6:
                raise ConfigError(f"invalid MAC address {value!r}")
            try:
                raw = bytes(int(p, 16) for p in parts)
            except ValueError:
                raise ConfigError(f"invalid MAC address {value!r}") from None
            return super().__new__(cls, raw)
        raw = bytes(value)
        if len(raw) != 6:
            raise ConfigError(f"a MAC address is 6 bytes, got {len(raw)}")
        return super().__new__(cls, raw)

    def __str__(self) -> str:
        return self.hex(":")

    def __repr__(self) -> str:
        return f"MAC('{self.hex(':')}')"

    @property
    def is_multicast(self) -> bool:
        """Group bit set (broadcast included): the bridge floods these."""
        return bool(self[0] & 1)

    @classmethod
    def local(cls, n: int) -> MAC:
        """A locally administered unicast MAC derived from ``n`` (deterministic)."""
        return cls(bytes((0x02, 0x42)) + (n & 0xFFFFFFFF).to_bytes(4, "big"))


MAC.BROADCAST = MAC(b"\xff" * 6)
MAC.ZERO = MAC(b"\x00" * 6)
