"""flannel's subnet-lease control plane, sans-I/O.

Theory of operation
-------------------
flanneld (etcd mode) keeps everything under one prefix, ``/coreos.com/network``
by default:

* ``<prefix>/config`` holds the network config JSON (:class:`NetworkConfig`).
* ``<prefix>/subnets/10.244.1.0-24`` is one node's lease; its value is
  ``{"PublicIP":"172.18.0.3","PublicIPv6":null}`` (Go's ``encoding/json`` of
  ``lease.LeaseAttrs`` for the udp backend: fields in struct order, no spaces)
  and the key is attached to an etcd lease of 24 h.

A node acquires a subnet with :func:`choose_subnet` (reuse the lease holding
our public IP, else the subnet recorded in ``subnet.env`` if it is free, else a
random one among the first 100 free subnets between SubnetMin and SubnetMax),
creates it with an etcd transaction ``If(Version(key) == 0)``, renews it at
:func:`renew_delay` before expiry by granting a *new* etcd lease and putting
the key again, and learns its peers with a snapshot + watch that
:class:`LeaseTable` turns into :class:`LeaseAdded` / :class:`LeaseRemoved`
events. When our own key disappears the table raises :class:`LeaseRevoked`.

Everything here is pure: the etcd adapter (``emunet.nodes.subnets``) supplies
the I/O, the clock and the random source.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from ipaddress import AddressValueError, IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from emunet.errors import ConfigError, EmunetError

__all__ = [
    "DEFAULT_MTU",
    "DEFAULT_PREFIX",
    "DEFAULT_UDP_PORT",
    "MAX_FREE_CANDIDATES",
    "RENEW_MARGIN",
    "RENEW_RETRY",
    "SUBNET_TTL",
    "Allocation",
    "AllocationKind",
    "LeaseAdded",
    "LeaseEvent",
    "LeaseRemoved",
    "LeaseRevoked",
    "LeaseTable",
    "MalformedLease",
    "NetworkConfig",
    "OutOfSubnets",
    "SubnetEnv",
    "choose_subnet",
    "config_key",
    "decode_lease_value",
    "encode_lease_value",
    "is_subnet_compatible",
    "parse_subnet_env",
    "parse_subnet_key",
    "renew_delay",
    "renew_retry_delay",
    "subnet_key",
    "subnets_prefix",
]

DEFAULT_PREFIX = "/coreos.com/network"
DEFAULT_UDP_PORT = 8285
#: flannel's ``subnetTTL``: 24 h.
SUBNET_TTL = 86400
#: flannel's ``--subnet-lease-renew-margin`` default: 60 min.
RENEW_MARGIN = 3600.0
#: After a failed renewal flannel tries again in one minute.
RENEW_RETRY = 60.0
#: flannel collects at most this many free subnets, then picks one at random.
MAX_FREE_CANDIDATES = 100
#: flannel0 MTU on a 1500-byte underlay: 1500 - 20 (IPv4) - 8 (UDP).
DEFAULT_MTU = 1472

_MIN_SUBNET_LEN_LIMIT = 30  # SubnetLen must be less than /31
_SMALLEST_NETWORK = 28  # Minimum useful network prefix is /28
_SUPPORTED_BACKENDS = ("udp",)


class OutOfSubnets(EmunetError):
    """Every subnet between SubnetMin and SubnetMax is leased."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__(
            f"out of subnets: every /{config.subnet_len} between {config.subnet_min} and "
            f"{config.subnet_max} in {config.network} is leased"
        )


class LeaseRevoked(EmunetError):
    """Our own subnet lease was deleted (revoked, expired, or taken over)."""

    def __init__(self, subnet: IPv4Network, detail: str = "") -> None:
        message = f"Lease has been revoked: {subnet}"
        super().__init__(f"{message} ({detail})" if detail else message)
        self.subnet = subnet


class MalformedLease(Exception):
    """A key or value under ``<prefix>/subnets/`` that does not parse (peer's fault)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------
# Network config (<prefix>/config)


def _field(obj: Mapping[str, Any], name: str) -> Any:
    """Go's encoding/json matches object keys to struct fields case-insensitively."""
    if name in obj:
        return obj[name]
    lowered = name.lower()
    for key, value in obj.items():
        if key.lower() == lowered:
            return value
    return None


def _ipv4(value: Any, field: str) -> IPv4Address:
    if not isinstance(value, str):
        raise ConfigError(f"{field}: expected an IPv4 address string, got {value!r}")
    try:
        return IPv4Address(value)
    except AddressValueError:
        raise ConfigError(f"{field}: {value!r} is not an IPv4 address") from None


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{field}: expected an integer, got {value!r}")
    return value


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{field}: expected true or false, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """flannel's network config with defaults applied; build it with :meth:`create`."""

    network: IPv4Network
    subnet_len: int
    subnet_min: IPv4Address
    subnet_max: IPv4Address
    backend_type: str = "udp"
    port: int = DEFAULT_UDP_PORT

    @classmethod
    def create(
        cls,
        network: IPv4Network | str,
        *,
        subnet_len: int | None = None,
        subnet_min: IPv4Address | str | None = None,
        subnet_max: IPv4Address | str | None = None,
        backend_type: str = "udp",
        port: int = DEFAULT_UDP_PORT,
    ) -> NetworkConfig:
        """Apply flannel's defaults and checks (``CheckNetworkConfig``)."""
        if isinstance(network, str):
            try:
                network = IPv4Network(network)
            except ValueError as exc:
                raise ConfigError(f"Network: {network!r} is not an IPv4 CIDR ({exc})") from None
        if subnet_len is None or subnet_len == 0:
            if network.prefixlen > _SMALLEST_NETWORK:
                raise ConfigError(
                    f"Network: {network} is too small. Minimum useful network prefix is "
                    f"/{_SMALLEST_NETWORK}"
                )
            subnet_len = 24 if network.prefixlen <= 22 else network.prefixlen + 2
        else:
            if subnet_len > _MIN_SUBNET_LEN_LIMIT or subnet_len < 0:
                raise ConfigError(f"SubnetLen: /{subnet_len} is invalid; it must be less than /31")
            if subnet_len < network.prefixlen + 2:
                raise ConfigError(
                    f"SubnetLen: /{subnet_len} is too large for Network {network}; the network "
                    "must be able to accommodate at least four subnets"
                )
        size = 1 << (32 - subnet_len)
        default_min = network.network_address + size
        default_max = network.broadcast_address + 1 - size
        bounds: dict[str, IPv4Address] = {}
        for field, given, default in (
            ("SubnetMin", subnet_min, default_min),
            ("SubnetMax", subnet_max, default_max),
        ):
            if given is None:
                bounds[field] = default
                continue
            address = _ipv4(given, field) if isinstance(given, str) else given
            if address not in network:
                raise ConfigError(
                    f"{field}: {address} is not in the range of the Network {network}"
                )
            if int(address) % size:
                raise ConfigError(f"{field} is not on a SubnetLen boundary: {address}")
            bounds[field] = address
        if bounds["SubnetMin"] > bounds["SubnetMax"]:
            raise ConfigError(
                f"SubnetMin: {bounds['SubnetMin']} is above SubnetMax {bounds['SubnetMax']}"
            )
        if backend_type not in _SUPPORTED_BACKENDS:
            raise ConfigError(
                f"Backend.Type: {backend_type!r} is not supported by emunet "
                f"(supported: {', '.join(_SUPPORTED_BACKENDS)})"
            )
        if not 0 < port < 65536:
            raise ConfigError(f"Backend.Port: {port} is not a UDP port (1-65535)")
        return cls(
            network, subnet_len, bounds["SubnetMin"], bounds["SubnetMax"], backend_type, port
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> NetworkConfig:
        """Parse ``<prefix>/config`` like flannel's ``ParseConfig`` + ``CheckNetworkConfig``."""
        try:
            obj = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"network config: not valid JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise ConfigError("network config: expected a JSON object")
        enable_ipv4 = _field(obj, "EnableIPv4")
        if enable_ipv4 is not None and not _bool(enable_ipv4, "EnableIPv4"):
            raise ConfigError("EnableIPv4: false is not supported by emunet (IPv4 only)")
        enable_ipv6 = _field(obj, "EnableIPv6")
        if enable_ipv6 is not None and _bool(enable_ipv6, "EnableIPv6"):
            raise ConfigError("EnableIPv6: true is not supported by emunet (IPv4 only)")
        network = _field(obj, "Network")
        if not isinstance(network, str) or not network:
            raise ConfigError(
                "Network: please define a correct Network parameter in the flannel config"
            )
        subnet_len = _field(obj, "SubnetLen")
        subnet_min = _field(obj, "SubnetMin")
        subnet_max = _field(obj, "SubnetMax")
        backend_type, port = "udp", DEFAULT_UDP_PORT
        backend = _field(obj, "Backend")
        if backend is not None:
            if not isinstance(backend, dict):
                raise ConfigError(f"Backend: expected a JSON object, got {backend!r}")
            kind = _field(backend, "Type")
            if not isinstance(kind, str):
                raise ConfigError(f"Backend.Type: expected a string, got {kind!r}")
            backend_type = kind
            given_port = _field(backend, "Port")
            if given_port is not None and given_port != 0:
                port = _int(given_port, "Backend.Port")
        return cls.create(
            network,
            subnet_len=None if subnet_len is None else _int(subnet_len, "SubnetLen"),
            subnet_min=None if subnet_min is None else _ipv4(subnet_min, "SubnetMin"),
            subnet_max=None if subnet_max is None else _ipv4(subnet_max, "SubnetMax"),
            backend_type=backend_type,
            port=port,
        )

    def to_json(self) -> str:
        """The config as flannel writes it; SubnetMin/Max only when not the defaults."""
        default = NetworkConfig.create(self.network, subnet_len=self.subnet_len)
        obj: dict[str, Any] = {"Network": str(self.network), "SubnetLen": self.subnet_len}
        if self.subnet_min != default.subnet_min:
            obj["SubnetMin"] = str(self.subnet_min)
        if self.subnet_max != default.subnet_max:
            obj["SubnetMax"] = str(self.subnet_max)
        obj["Backend"] = {"Type": self.backend_type, "Port": self.port}
        return json.dumps(obj, separators=(",", ":"))

    @property
    def subnet_size(self) -> int:
        return 1 << (32 - self.subnet_len)

    def subnets(self) -> Iterable[IPv4Network]:
        """Every candidate subnet from SubnetMin to SubnetMax, in order."""
        size = self.subnet_size
        for start in range(int(self.subnet_min), int(self.subnet_max) + 1, size):
            yield IPv4Network((start, self.subnet_len))


# --------------------------------------------------------------------------
# Keys and values


def _clean_prefix(prefix: str) -> str:
    # flannel builds keys with path.Join, which drops a trailing slash
    return "/" + prefix.strip("/") if prefix.strip("/") else ""


def config_key(prefix: str = DEFAULT_PREFIX) -> str:
    return f"{_clean_prefix(prefix)}/config"


def subnets_prefix(prefix: str = DEFAULT_PREFIX) -> str:
    """``<prefix>/subnets/``: the range the leases live in."""
    return f"{_clean_prefix(prefix)}/subnets/"


def subnet_key(subnet: IPv4Network, prefix: str = DEFAULT_PREFIX) -> str:
    """``<prefix>/subnets/10.244.1.0-24`` (flannel's ``MakeSubnetKey``)."""
    return f"{subnets_prefix(prefix)}{subnet.network_address}-{subnet.prefixlen}"


def parse_subnet_key(key: str | bytes, prefix: str = DEFAULT_PREFIX) -> IPv4Network:
    """The subnet named by a lease key; :class:`MalformedLease` if it is not one."""
    if isinstance(key, bytes):
        try:
            key = key.decode("ascii")
        except UnicodeDecodeError:
            raise MalformedLease(f"subnet key {key!r} is not ASCII") from None
    base = subnets_prefix(prefix)
    if not key.startswith(base):
        raise MalformedLease(f"key {key!r} is not under {base}")
    name = key[len(base) :]
    if "&" in name:
        raise MalformedLease(f"key {key!r}: dual-stack leases are not supported (IPv4 only)")
    address, sep, length = name.partition("-")
    if not sep or not length.isdigit() or len(length) > 2:
        raise MalformedLease(f"key {key!r} is not <prefix>/subnets/a.b.c.d-len")
    try:
        return IPv4Network((IPv4Address(address), int(length)))
    except ValueError as exc:
        raise MalformedLease(f"key {key!r}: {exc}") from None


def encode_lease_value(public_ip: IPv4Address) -> bytes:
    """``{"PublicIP":"172.18.0.3","PublicIPv6":null}``, byte for byte as flannel writes it."""
    return b'{"PublicIP":"%s","PublicIPv6":null}' % str(public_ip).encode("ascii")


def decode_lease_value(value: bytes | str) -> IPv4Address:
    """The PublicIP of a lease value written by flannel (any backend) or by us."""
    try:
        obj = json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedLease(f"lease value is not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise MalformedLease("lease value is not a JSON object")
    public_ip = _field(obj, "PublicIP")
    if not isinstance(public_ip, str):
        raise MalformedLease(f"lease value has no PublicIP string: {public_ip!r}")
    try:
        return IPv4Address(public_ip)
    except AddressValueError:
        raise MalformedLease(f"lease PublicIP {public_ip!r} is not an IPv4 address") from None


# --------------------------------------------------------------------------
# Allocation


class AllocationKind(Enum):
    REUSED = "reused"  # a lease already holding our public IP
    PREVIOUS = "previous"  # the subnet recorded in subnet.env, still free
    ALLOCATED = "allocated"  # a random free subnet


@dataclass(frozen=True, slots=True)
class Allocation:
    """What to do: take ``subnet``; delete ``stale`` (our leases the config no longer fits)."""

    subnet: IPv4Network
    kind: AllocationKind
    stale: tuple[IPv4Network, ...] = ()


def is_subnet_compatible(config: NetworkConfig, subnet: IPv4Network) -> bool:
    """flannel's ``isSubnetConfigCompat``: right length, between SubnetMin and SubnetMax."""
    return (
        subnet.prefixlen == config.subnet_len
        and config.subnet_min <= subnet.network_address <= config.subnet_max
    )


def choose_subnet(
    config: NetworkConfig,
    leases: Mapping[IPv4Network, IPv4Address],
    public_ip: IPv4Address,
    previous: IPv4Network | None,
    rng: random.Random,
) -> Allocation:
    """Pick the subnet to lease, following flannel's ``tryAcquireLease``.

    ``leases`` is every lease in etcd (subnet -> PublicIP). Raises
    :class:`OutOfSubnets` when no subnet between SubnetMin and SubnetMax is free.
    """
    ours = sorted(subnet for subnet, ip in leases.items() if ip == public_ip)
    stale = tuple(subnet for subnet in ours if not is_subnet_compatible(config, subnet))
    for subnet in ours:
        if subnet not in stale:
            return Allocation(subnet, AllocationKind.REUSED, stale)
    if (
        previous is not None
        and is_subnet_compatible(config, previous)
        and not any(previous.overlaps(taken) for taken in leases)
    ):
        return Allocation(previous, AllocationKind.PREVIOUS, stale)
    free: list[IPv4Network] = []
    taken = list(leases)
    for candidate in config.subnets():
        if not any(candidate.overlaps(other) for other in taken):
            free.append(candidate)
            if len(free) >= MAX_FREE_CANDIDATES:
                break
    if not free:
        raise OutOfSubnets(config)
    return Allocation(free[rng.randrange(len(free))], AllocationKind.ALLOCATED, stale)


# --------------------------------------------------------------------------
# Renewal


def renew_delay(ttl: float, margin: float = RENEW_MARGIN) -> float:
    """Seconds from granting a lease of ``ttl`` seconds until renewing it.

    flannel renews ``margin`` (60 min) before expiry. A TTL shorter than twice
    the margin (test TTLs of a few seconds) renews at half the TTL instead.
    """
    if ttl <= 0:
        raise ValueError(f"lease TTL must be positive, got {ttl}")
    if ttl >= 2 * margin:
        return ttl - margin
    return ttl / 2


def renew_retry_delay(ttl: float, retry: float = RENEW_RETRY) -> float:
    """Wait after a failed renewal: one minute, or a sixth of a short TTL."""
    return min(retry, ttl / 6)


# --------------------------------------------------------------------------
# subnet.env


@dataclass(frozen=True, slots=True)
class SubnetEnv:
    """``/run/flannel/subnet.env`` as flanneld writes it."""

    network: IPv4Network
    subnet: IPv4Interface  # the first usable address with the subnet's length
    mtu: int = DEFAULT_MTU
    ipmasq: bool = True

    @classmethod
    def for_lease(
        cls, config: NetworkConfig, subnet: IPv4Network, mtu: int = DEFAULT_MTU, ipmasq: bool = True
    ) -> SubnetEnv:
        first = IPv4Interface((subnet.network_address + 1, subnet.prefixlen))
        return cls(config.network, first, mtu, ipmasq)

    @property
    def lease_subnet(self) -> IPv4Network:
        return self.subnet.network

    def render(self) -> str:
        return (
            f"FLANNEL_NETWORK={self.network}\n"
            f"FLANNEL_SUBNET={self.subnet}\n"
            f"FLANNEL_MTU={self.mtu}\n"
            f"FLANNEL_IPMASQ={'true' if self.ipmasq else 'false'}\n"
        )


def parse_subnet_env(text: str) -> SubnetEnv:
    """Parse a ``subnet.env``; unknown variables (FLANNEL_IPV6_*) are ignored."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"subnet.env line {number}: expected NAME=VALUE, got {raw!r}")
        values[name.strip()] = value.strip()
    for name in ("FLANNEL_NETWORK", "FLANNEL_SUBNET"):
        if name not in values:
            raise ConfigError(f"subnet.env: {name} is missing")
    try:
        network = IPv4Network(values["FLANNEL_NETWORK"])
    except ValueError as exc:
        raise ConfigError(f"subnet.env: FLANNEL_NETWORK: {exc}") from None
    try:
        subnet = IPv4Interface(values["FLANNEL_SUBNET"])
    except ValueError as exc:
        raise ConfigError(f"subnet.env: FLANNEL_SUBNET: {exc}") from None
    mtu_text = values.get("FLANNEL_MTU", str(DEFAULT_MTU))
    if not mtu_text.isdigit():
        raise ConfigError(f"subnet.env: FLANNEL_MTU: {mtu_text!r} is not a number")
    masq_text = values.get("FLANNEL_IPMASQ", "false")
    if masq_text not in ("true", "false"):
        raise ConfigError(f"subnet.env: FLANNEL_IPMASQ: {masq_text!r} is not true or false")
    return SubnetEnv(network, subnet, int(mtu_text), masq_text == "true")


# --------------------------------------------------------------------------
# Peer events


@dataclass(frozen=True, slots=True)
class LeaseAdded:
    """A peer's lease appeared, or its PublicIP changed: (re)install its route."""

    subnet: IPv4Network
    public_ip: IPv4Address


@dataclass(frozen=True, slots=True)
class LeaseRemoved:
    """A peer's lease is gone (deleted or expired): remove its route."""

    subnet: IPv4Network
    public_ip: IPv4Address


LeaseEvent = LeaseAdded | LeaseRemoved


class LeaseTable:
    """The peers' leases as last seen, turning snapshots and watch events into events.

    Like flannel's ``LeaseWatcher`` it never reports our own lease; unlike it,
    it raises :class:`LeaseRevoked` when our own key is deleted or taken over.
    A put that changes nothing (a peer's renewal) yields no event.
    """

    def __init__(
        self, own_subnet: IPv4Network | None = None, own_ip: IPv4Address | None = None
    ) -> None:
        self.own_subnet = own_subnet
        self.own_ip = own_ip
        self.peers: dict[IPv4Network, IPv4Address] = {}

    def _check_own(self, public_ip: IPv4Address) -> None:
        assert self.own_subnet is not None
        if self.own_ip is not None and public_ip != self.own_ip:
            raise LeaseRevoked(self.own_subnet, f"now held by {public_ip}")

    def reset(self, snapshot: Mapping[IPv4Network, IPv4Address]) -> list[LeaseEvent]:
        """Diff a full listing against what we knew (first list, relist after compaction)."""
        if self.own_subnet is not None:
            if self.own_subnet not in snapshot:
                raise LeaseRevoked(self.own_subnet, "its key is gone from etcd")
            self._check_own(snapshot[self.own_subnet])
        fresh = {s: ip for s, ip in snapshot.items() if s != self.own_subnet}
        events: list[LeaseEvent] = [
            LeaseRemoved(subnet, ip) for subnet, ip in self.peers.items() if subnet not in fresh
        ]
        events.extend(
            LeaseAdded(subnet, ip) for subnet, ip in fresh.items() if self.peers.get(subnet) != ip
        )
        self.peers = fresh
        return events

    def put(self, subnet: IPv4Network, public_ip: IPv4Address) -> list[LeaseEvent]:
        if subnet == self.own_subnet:
            self._check_own(public_ip)
            return []
        if self.peers.get(subnet) == public_ip:
            return []
        self.peers[subnet] = public_ip
        return [LeaseAdded(subnet, public_ip)]

    def delete(self, subnet: IPv4Network) -> list[LeaseEvent]:
        if subnet == self.own_subnet:
            raise LeaseRevoked(subnet, "its key was deleted from etcd")
        public_ip = self.peers.pop(subnet, None)
        if public_ip is None:
            return []
        return [LeaseRemoved(subnet, public_ip)]
