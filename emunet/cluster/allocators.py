"""The API server's ClusterIP and NodePort allocators, pure.

The Service registry's ``--service-cluster-ip-range`` and
``--service-node-port-range`` and how a free address or port is picked in
them (at random, like kube-apiserver). Which ones are taken is the caller's
to say: the etcd adapter (``emunet.nodes.registry``) claims each one under
its own key (:mod:`emunet.cluster.keys`) in the transaction that writes the
Service.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from ipaddress import IPv4Address, IPv4Network

from emunet.errors import EmunetError

__all__ = [
    "DEFAULT_SERVICE_CIDR",
    "NODE_PORT_RANGE",
    "RangeFull",
    "allocate_cluster_ip",
    "allocate_node_port",
]

DEFAULT_SERVICE_CIDR = IPv4Network("10.96.0.0/12")
NODE_PORT_RANGE = (30000, 32767)

# .0 is the network, .1 the `kubernetes` Service, .10 kube-dns (kubeadm's choice)
_RESERVED_SERVICE_OFFSETS = (0, 1, 10)


class RangeFull(EmunetError):
    """No ClusterIP or NodePort left to allocate."""


def allocate_cluster_ip(
    used: Collection[IPv4Address],
    service_cidr: IPv4Network = DEFAULT_SERVICE_CIDR,
    rng: random.Random | None = None,
) -> IPv4Address:
    """A free ClusterIP, random like the API server's allocator.

    Never the network address, .1 (the ``kubernetes`` Service), .10 (cluster
    DNS) or the broadcast address. Raises :class:`RangeFull`.
    """
    rng = rng or random.Random()
    base = int(service_cidr.network_address)
    size = service_cidr.num_addresses
    reserved = {base + o for o in _RESERVED_SERVICE_OFFSETS if o < size}
    reserved.add(base + size - 1)
    taken = {int(ip) for ip in used}

    def free(value: int) -> bool:
        return value not in reserved and value not in taken

    for _ in range(32):
        candidate = base + rng.randrange(size)
        if free(candidate):
            return IPv4Address(candidate)
    start = rng.randrange(size)
    for i in range(size):
        candidate = base + (start + i) % size
        if free(candidate):
            return IPv4Address(candidate)
    raise RangeFull(f"service CIDR {service_cidr} has no free ClusterIP left")


def allocate_node_port(
    used: Collection[int],
    rng: random.Random | None = None,
    port_range: tuple[int, int] = NODE_PORT_RANGE,
) -> int:
    """A free NodePort in ``port_range`` (inclusive); raises :class:`RangeFull`."""
    rng = rng or random.Random()
    lo, hi = port_range
    taken = set(used)
    for _ in range(32):
        candidate = rng.randint(lo, hi)
        if candidate not in taken:
            return candidate
    count = hi - lo + 1
    start = rng.randrange(count)
    for i in range(count):
        candidate = lo + (start + i) % count
        if candidate not in taken:
            return candidate
    raise RangeFull(f"no free NodePort left in {lo}-{hi}")
