"""flannel's udp backend: flanneld, between ``flannel0`` and UDP port 8285.

flanneld reads raw IPv4 packets from the TUN device ``flannel0`` and sends
each one, unchanged but for the TTL, as the payload of a UDP datagram to the
node whose lease covers the destination (:meth:`FlannelUDP.tun_to_udp`, the
driver of flannel0). Datagrams it receives are written back into ``flannel0``
(:meth:`FlannelUDP.udp_to_tun`). Faithful details (flannel's ``backend/udp``
proxy):

* the TTL is decremented on both sides, with the checksum patched (RFC 1624);
  a packet whose TTL reaches zero is discarded *without* an ICMP error;
* no lease for the destination: an ICMP net unreachable is written back into
  the TUN (TTL 8, id 0, no DF, source = the ``flannel0`` address), never about
  an ICMP packet nor a non-first fragment;
* flanneld reads into a buffer of flannel0's MTU: a longer datagram is cut and
  the kernel refuses it;
* any sender is accepted (emunet counts those holding no lease, and refuses
  them when ``accept_unknown`` is off).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from typing import Final

from emunet.dataplane.interfaces import Interface
from emunet.dataplane.lpm import PrefixMap
from emunet.dataplane.netns import Namespace
from emunet.dataplane.trace import Drop, Tracer, describe
from emunet.packets import icmp, ipv4, udp

_DST: Final = struct.Struct("!16x4s")  # an IPv4 header's destination

DEFAULT_PORT: Final = 8285
# flannel0's MTU is the underlay's minus an IPv4 and a UDP header
OVERHEAD: Final = 20 + 8

# an overlay datagram leaving the node: ((PublicIP, port), the inner packet, its time)
OverlayDatagram = tuple[tuple[str, int], bytearray, float]


class Lease:
    __slots__ = ("addr", "public_ip", "subnet")

    def __init__(self, subnet: IPv4Network, public_ip: IPv4Address, port: int) -> None:
        self.subnet = subnet
        self.public_ip = public_ip
        self.addr = (str(public_ip), port)


class FlannelUDP:
    """flanneld: the subnet -> PublicIP table and the udp proxy's per-packet rules.

    ``root``, ``flannel0``, ``eth0``: where it reads and writes; ``emit``: an
    overlay datagram leaves the node; ``enqueue``: a step on the node's queue.
    """

    def __init__(
        self,
        own_subnet: IPv4Network,
        node_ip: IPv4Address,
        *,
        root: Namespace,
        flannel0: Interface,
        eth0: Interface,
        emit: Callable[[OverlayDatagram], None],
        enqueue: Callable[..., None],
        tracer: Tracer,
        port: int = DEFAULT_PORT,
    ) -> None:
        self.own_subnet = own_subnet
        self.node_ip = node_ip
        self.port = port
        self.root = root
        self.flannel0 = flannel0
        self.eth0 = eth0
        self._emit = emit
        self._enqueue = enqueue
        self._tracer = tracer
        # read-only outside
        self.table: PrefixMap[Lease] = PrefixMap()
        self.ttl_drops = 0
        self.no_lease = 0
        # the PublicIPs holding a lease (text, as a datagram's source arrives), with
        # how many leases each holds
        self.peers: dict[str, int] = {}
        self.from_unknown = 0
        self.accept_unknown = True
        flannel0.driver = self.tun_to_udp

    # ----------------------------------------------------------------- leases

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

    # ------------------------------------------------------------------ send

    def tun_to_udp(self, pkt: bytearray, next_hop: bytes, now: float) -> None:
        """flanneld read a packet from flannel0: lease, TTL, then the datagram, which
        leaves eth0 its delay later (``HOP_DELAY``)."""
        root = self.root
        lease = self.table.lookup(_DST.unpack_from(pkt)[0])
        if lease is None:
            self.no_lease += 1
            self._send_net_unreachable(pkt, now)
            root.drop(
                now, self.flannel0, Drop.FLANNEL_NO_LEASE, str(IPv4Address(bytes(pkt[16:20])))
            )
            return
        if pkt[ipv4.TTL] <= 1:  # decrement_ttl reaches zero: discard, without ICMP
            self.ttl_drops += 1
            detail = describe(pkt) if self._tracer.enabled else ""
            root.drop(now, self.flannel0, Drop.FLANNEL_TTL_ZERO, detail)
            return
        ipv4.decrement_ttl(pkt)
        eth0 = self.eth0
        if self._tracer.enabled:
            root.trace(
                now,
                "flannel0",
                "encapsulate",
                f"udp {self.node_ip}:{self.port} > {lease.addr[0]}:{lease.addr[1]} "
                f"(lease {lease.subnet})",
            )
            root.trace(
                now,
                "eth0",
                "tx",
                f"{self.node_ip} > {lease.public_ip}: udp 8285 > {lease.addr[1]}"
                f" len {len(pkt)} (flannel udp, inner {describe(pkt)})",
            )
        eth0.tx_packets += 1
        eth0.tx_bytes += len(pkt) + OVERHEAD
        if eth0.taps:
            outer = encapsulated(self.node_ip, lease.public_ip, pkt)
            for tap in eth0.taps:
                tap(now, outer)
        self._emit((lease.addr, pkt, now + eth0.delay))

    def _send_net_unreachable(self, pkt: bytearray, now: float) -> None:
        """flanneld's ``send_net_unreachable``: never about any ICMP packet (not only
        errors) nor a non-first fragment; TTL 8, id 0, no DF; from flannel0's address."""
        if pkt[6] & 0x1F or pkt[7] or pkt[9] == ipv4.PROTO_ICMP:
            return
        msg = icmp.error(icmp.DEST_UNREACH, icmp.NET_UNREACH, pkt)
        src = self.own_subnet.network_address.packed
        reply = ipv4.build_fast(src, bytes(pkt[12:16]), ipv4.PROTO_ICMP, msg, ttl=8, df=False)
        self._enqueue(self.root.rx_packet, self.flannel0, reply, now + self.flannel0.delay)

    # --------------------------------------------------------------- receive

    def udp_to_tun(self, src: tuple[str, int], payload: bytes | bytearray, now: float) -> None:
        """A datagram arrived on the flannel port: checks, TTL, written into flannel0
        (received there the TUN's delay later, ``HOP_DELAY``)."""
        root = self.root
        n = len(payload)
        eth0 = self.eth0
        eth0.rx_packets += 1
        eth0.rx_bytes += n + OVERHEAD
        pkt = bytearray(payload)
        if eth0.taps:
            outer = encapsulated(IPv4Address(src[0]), self.node_ip, pkt)
            for tap in eth0.taps:
                tap(now, outer)
        flannel0 = self.flannel0
        if src[0] not in self.peers:  # a sender that holds no lease
            self.from_unknown += 1
            if not self.accept_unknown:
                root.drop(now, flannel0, Drop.OVERLAY_UNKNOWN_PEER, src[0])
                return
        if n < 20 or pkt[0] >> 4 != 4:
            root.drop(now, flannel0, Drop.MALFORMED, f"overlay payload of {n} bytes")
            return
        if n > flannel0.mtu:
            root.drop(
                now,
                flannel0,
                Drop.MALFORMED,
                f"overlay datagram of {n} bytes > flannel0 mtu {flannel0.mtu}",
            )
            return
        if self._tracer.enabled:
            root.trace(
                now,
                "eth0",
                "rx",
                f"{src[0]} > {self.node_ip}: udp {src[1]} > {self.port} len {n} (flannel udp)",
            )
            root.trace(now, "flannel0", "decapsulate", f"udp from {src[0]}:{src[1]}")
        if pkt[ipv4.TTL] <= 1:  # decrement_ttl would reach zero: discard
            self.ttl_drops += 1
            detail = describe(pkt) if self._tracer.enabled else ""
            root.drop(now, flannel0, Drop.FLANNEL_TTL_ZERO, detail)
            return
        ipv4.decrement_ttl(pkt)
        root.rx_packet(flannel0, pkt, now + flannel0.delay)


def encapsulated(src: IPv4Address, dst: IPv4Address, inner: bytes | bytearray) -> bytearray:
    """The underlay datagram as it appears on eth0 (for captures only)."""
    seg = udp.build_fast(DEFAULT_PORT, DEFAULT_PORT, inner, src.packed, dst.packed)
    return ipv4.build_fast(src.packed, dst.packed, ipv4.PROTO_UDP, seg, df=False)
