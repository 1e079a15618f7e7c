"""The map between emulated node-network addresses and the real socket addresses."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from emunet.errors import ConfigError

__all__ = ["AddressMap"]


@dataclass(frozen=True)
class AddressMap:
    """Where emulated node addresses really live: ``172.18.0.0/16=127.0.0.0/16``.

    In local mode every agent binds a loopback address, but pods must be able
    to reach node IPs, and 127.0.0.0/8 is every namespace's own loopback. So
    the data plane (and flannel's lease PublicIP) use node-network addresses,
    as in a container deployment, and the runtime maps them to the real socket
    addresses (same offset in the other network) only at the socket boundary.
    """

    emulated: IPv4Network
    real: IPv4Network

    def __post_init__(self) -> None:
        if self.emulated.prefixlen != self.real.prefixlen:
            raise ConfigError(f"address map {self}: both networks need the same prefix length")

    def __str__(self) -> str:
        return f"{self.emulated}={self.real}"

    @classmethod
    def parse(cls, text: str) -> AddressMap:
        try:
            left, right = text.split("=")
            return cls(IPv4Network(left.strip()), IPv4Network(right.strip()))
        except ValueError:
            raise ConfigError(
                f"address map {text!r}: expected EMULATED_CIDR=REAL_CIDR, "
                "e.g. 172.18.0.0/16=127.0.0.0/16"
            ) from None

    def to_real(self, ip: str) -> str:
        addr = IPv4Address(ip)
        if addr not in self.emulated:
            return ip
        return str(self.real.network_address + (int(addr) - int(self.emulated.network_address)))

    def to_emulated(self, ip: str) -> str:
        addr = IPv4Address(ip)
        if addr not in self.real:
            return ip
        return str(self.emulated.network_address + (int(addr) - int(self.real.network_address)))
