"""flannel's udp backend: what flanneld does with packets of ``flannel0``.

flanneld reads raw IPv4 packets from the TUN device ``flannel0`` and sends
each one, unchanged but for the TTL, as the payload of a UDP datagram to the
node whose lease covers the destination (port 8285 by default). Datagrams it
receives are written back into ``flannel0``. Faithful details (flannel's
``backend/udp`` proxy):

* the TTL is decremented on both sides, with the checksum patched (RFC 1624);
  a packet whose TTL reaches zero is discarded *without* an ICMP error;
* no lease for the destination: an ICMP net unreachable is written back into
  the TUN, source = the ``flannel0`` address, never for ICMP errors or
  non-first fragments (the namespace's ``icmp_send`` applies those rules).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from emunet.dataplane.lpm import PrefixMap
from emunet.packets import ipv4

DEFAULT_PORT = 8285
# flannel0's MTU is the underlay's minus an IPv4 and a UDP header
OVERHEAD = 20 + 8


class Lease:
    __slots__ = ("addr", "public_ip", "subnet")

    def __init__(self, subnet: IPv4Network, public_ip: IPv4Address, port: int) -> None:
        self.subnet = subnet
        self.public_ip = public_ip
        self.addr = (str(public_ip), port)


class FlannelUDP:
    """The subnet -> PublicIP table and the per-packet rules of flannel's udp proxy."""

    def __init__(self, own_subnet: IPv4Network, port: int = DEFAULT_PORT) -> None:
        self.own_subnet = own_subnet
        self.port = port
        # read-only outside: flows cache a lease per version of it
        self.table: PrefixMap[Lease] = PrefixMap()
        self.ttl_drops = 0
        self.no_lease = 0
        # the PublicIPs holding a lease (text, as a datagram's source arrives), with
        # how many leases each holds; flanneld accepts any sender, emunet counts the
        # others (from_unknown) and refuses them when `accept_unknown` is off
        self.peers: dict[str, int] = {}
        self.from_unknown = 0
        self.accept_unknown = True

    def set_lease(self, subnet: IPv4Network, public_ip: IPv4Address) -> None:
        old = self.table.get(subnet)
        if old is not None:
            self._forget_peer(old.public_ip)
        self.table.set(subnet, Lease(subnet, public_ip, self.port))
        key = str(public_ip)
        self.peers[key] = self.peers.get(key, 0) + 1

    def remove_lease(self, subnet: IPv4Network) -> Lease | None:
        lease = self.table.remove(subnet)
        if lease is not None:
            self._forget_peer(lease.public_ip)
        return lease

    def _forget_peer(self, public_ip: IPv4Address) -> None:
        key = str(public_ip)
        left = self.peers.get(key, 0) - 1
        if left > 0:
            self.peers[key] = left
        else:
            self.peers.pop(key, None)

    def leases(self) -> list[Lease]:
        return [lease for group in self.table.by_length() for lease in group]

    def lookup(self, dst: bytes) -> Lease | None:
        """The lease covering a packed destination (flanneld's ``find_route``)."""
        return self.table.lookup(dst)

    @staticmethod
    def decrement_ttl(pkt: bytearray) -> bool:
        """flannel's ``decrement_ttl``: False when the TTL reaches zero (discard)."""
        if pkt[ipv4.TTL] <= 1:
            return False
        ipv4.decrement_ttl(pkt)
        return True
