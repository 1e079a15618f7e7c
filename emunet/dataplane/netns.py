"""A network namespace: interfaces, addresses, routes and the IPv4 layer.

Theory of operation
-------------------
Frames enter through :meth:`Namespace.rx_frame` (L2 interfaces; a bridge
port's frames go to its bridge first, see :mod:`~emunet.dataplane.bridge`) or
:meth:`Namespace.rx_packet` (L3 ones: ``lo``, ``flannel0``, the node's
``eth0``). ARP is answered and learned by :mod:`~emunet.dataplane.arp` with the
neighbour table (:mod:`~emunet.dataplane.neigh`). An IPv4 packet is checked
(:meth:`ip_rcv`, like Linux's ``ip_rcv``); in a forwarding namespace with
netfilter, a packet of an established connection may find its flow
(:mod:`~emunet.dataplane.flowtable`) and be forwarded with the flow's route,
skipping the hooks. Otherwise fragments are reassembled
(:mod:`~emunet.dataplane.frag`), PREROUTING runs, and the packet is either
delivered locally (INPUT, then the protocol handlers of
:mod:`~emunet.dataplane.transport`) or forwarded (route, TTL, MTU, FORWARD,
POSTROUTING, then the device: the neighbour and an L2 transmit, or an L3
device's driver such as flanneld for ``flannel0``). Locally generated packets
start in :meth:`ip_send_local` (route, source address, OUTPUT) and join the
same output path.

Nothing here does I/O or reads a clock: every entry point takes ``now``;
transmission on an L2 interface is a step on the machine's queue, which runs
to completion and turns what leaves the machine into actions. ``now`` is the
packet's time: the two transmit functions (:meth:`Namespace.l2_xmit`,
:meth:`Namespace.dev_xmit`) hand a packet on with ``now`` plus the device's
modelled delay (:data:`~emunet.dataplane.interfaces.HOP_DELAY`), so the steps
of one queue run need not see ``now`` in order. Packets inside the namespace are
``bytearray`` IPv4 packets (header at offset 0), rewritten in place (TTL, NAT). Malformed
input is counted and dropped with a reason. ICMP errors pass Linux's rate limits
(:mod:`~emunet.dataplane.icmp_limit`).
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, Final

from emunet.dataplane.arp import Arp
from emunet.dataplane.flowtable import FlowTable
from emunet.dataplane.frag import Defrag, fragment
from emunet.dataplane.icmp_limit import IcmpRateLimit
from emunet.dataplane.interfaces import LOOPBACK, VETH, Interface
from emunet.dataplane.machine import Machine
from emunet.dataplane.neigh import Neighbour, NeighTable, Pending
from emunet.dataplane.netfilter import Netfilter, NetfilterHooks, Verdict
from emunet.dataplane.routing import SCOPE_HOST, SCOPE_LINK, Route, RouteTable
from emunet.dataplane.sockets import ANY, PingSocket, UDPSocket
from emunet.dataplane.tcp import TCPConnection, TCPListener
from emunet.dataplane.trace import Drop, describe
from emunet.dataplane.transport import BROADCAST_IP, Transport
from emunet.errors import ConfigError, SocketError
from emunet.packets import icmp, ipv4
from emunet.packets.checksum import header_ok, header_words
from emunet.packets.ethernet import ETH_P_ARP, ETH_P_IP
from emunet.packets.mac import MAC
from emunet.render import ip_neigh_line

_ETH: Final = struct.Struct("!6s6sH")
ACCEPT: Final = Verdict.ACCEPT


class Namespace:
    """One network namespace (a pod's, a node's root namespace, an internet host)."""

    def __init__(self, node: Machine, name: str, *, ip_forward: bool = False) -> None:
        self.node = node
        self.name = name
        self.ip_forward = ip_forward
        self.interfaces: dict[str, Interface] = {}
        self.routes = RouteTable()
        self.local: dict[bytes, Interface] = {}
        self.neigh = NeighTable()
        self.neighbours = self.neigh.entries  # ``ip neigh``'s entries by packed address
        self.netfilter: NetfilterHooks | None = None
        self.flows: FlowTable | None = None  # see enable_flows
        self.defrag = Defrag()
        self._tracer = node.tracer
        self.sockets = Transport(self, node, self._tracer)
        self.arp = Arp(self, self._tracer)
        self.tcp_conns = self.sockets.tcp_conns  # ``ss -t``: connections and listeners
        self.tcp_listeners = self.sockets.tcp_listeners
        self._addr_cache: dict[bytes, IPv4Address] = {}
        # ip_send_local's source decisions: packed dst -> (route version, src, packed src)
        self._src_cache: dict[bytes, tuple[int, IPv4Address, bytes]] = {}
        self._broadcasts: set[bytes] = set()  # directed broadcasts of our subnets
        self._next_ifindex = 1
        self._push = node.push
        self.drops: dict[str, int] = {}
        self.icmp_limit = IcmpRateLimit(self.drops)
        lo = self.add_interface("lo", LOOPBACK, mtu=65536)
        self.add_address(lo, IPv4Interface("127.0.0.1/8"))

    # ------------------------------------------------------------------ setup

    def add_interface(
        self, name: str, kind: str, *, mac: MAC | None = None, mtu: int = 1500
    ) -> Interface:
        if name in self.interfaces:
            raise ConfigError(f"{self.name}: interface {name} already exists")
        iface = Interface(self, name, kind, index=self._next_ifindex, mac=mac, mtu=mtu)
        self._next_ifindex += 1
        self.interfaces[name] = iface
        return iface

    def remove_interface(self, name: str) -> None:
        iface = self.interfaces.pop(name, None)
        if iface is None:
            return
        self.routes.delete_dev(iface)
        for a in iface.addresses:
            self.local.pop(a.ip.packed, None)
        self.neigh.forget_dev(iface)

    def add_address(self, iface: Interface, addr: IPv4Interface, *, connected: bool = True) -> None:
        """``ip addr add``: the address becomes local and its connected route appears."""
        iface.addresses.append(addr)
        self.local[addr.ip.packed] = iface
        if addr.network.prefixlen < 31:
            self._broadcasts.add(addr.network.broadcast_address.packed)
        self.routes.touch()  # the set of local addresses changed: flows re-decide
        if iface.kind == LOOPBACK:
            self.routes.add(
                Route(addr.network, iface, proto="kernel", scope=SCOPE_HOST), replace=True
            )
        elif connected and addr.network.prefixlen < 32:
            self.routes.add(
                Route(addr.network, iface, src=addr.ip, proto="kernel", scope=SCOPE_LINK),
                replace=True,
            )

    def remove_address(self, iface: Interface, ip: IPv4Address) -> None:
        """``ip addr del``: the address and its connected route go."""
        for addr in [a for a in iface.addresses if a.ip == ip]:
            iface.addresses.remove(addr)
            if self.local.get(ip.packed) is iface:
                del self.local[ip.packed]
            self._broadcasts.discard(addr.network.broadcast_address.packed)
            route = self.routes.lookup(addr.network.network_address.packed)
            if route is not None and route.dst == addr.network and route.dev is iface:
                self.routes.delete(addr.network)
        self.routes.touch()  # the set of local addresses changed: flows re-decide

    def add_route(
        self,
        dst: IPv4Network | str,
        dev: Interface | str,
        *,
        via: IPv4Address | str | None = None,
        src: IPv4Address | None = None,
        scope: str | None = None,
        replace: bool = False,
    ) -> Route:
        dev_i = self.interfaces[dev] if isinstance(dev, str) else dev
        net = IPv4Network(dst)
        gw = IPv4Address(via) if via is not None else None
        route = Route(net, dev_i, via=gw, src=src, scope=scope or ("global" if gw else SCOPE_LINK))
        self.routes.add(route, replace=replace)
        return route

    def enable_flows(self, hooks: Netfilter) -> None:
        """Keep a flow table (a forwarding namespace whose netfilter is ``hooks``)."""
        self.flows = FlowTable(self.routes, self.local, hooks)

    @property
    def addresses(self) -> list[tuple[str, IPv4Interface]]:
        return [(i.name, a) for i in self.interfaces.values() for a in i.addresses]

    def address(self, packed: bytes) -> IPv4Address:
        """``IPv4Address`` for packed bytes, from a small cache (sockets report peers)."""
        addr = self._addr_cache.get(packed)
        if addr is None:
            if len(self._addr_cache) >= 4096:
                self._addr_cache.clear()
            addr = self._addr_cache[packed] = IPv4Address(packed)
        return addr

    def source_for(self, dev: Interface, target: bytes) -> IPv4Address:
        """The source address for a packet to ``target`` out of ``dev``."""
        t = int.from_bytes(target, "big")
        for a in dev.addresses:
            net = a.network  # integers: no address objects per packet
            if t & int(net.netmask) == int(net.network_address):
                return a.ip
        return dev.addresses[0].ip if dev.addresses else IPv4Address(0)

    # ---------------------------------------------------------------- tracing

    def trace(self, now: float, iface: str, event: str, detail: str = "") -> None:
        self._tracer.hop(now, self.node.name, self.name, iface, event, detail)

    def drop(self, now: float, iface: Interface | None, reason: Drop, detail: str = "") -> None:
        key = str(reason)
        self.drops[key] = self.drops.get(key, 0) + 1
        if iface is not None:
            iface.rx_dropped += 1
        if self._tracer.enabled:
            text = key + (f": {detail}" if detail else "")
            self.trace(now, iface.name if iface else "", "drop", text)

    def nf_refused(self, iface: Interface, pkt: bytearray, verdict: int, now: float) -> bool:
        """False for ACCEPT; else the packet is dropped with netfilter's reason (a
        REJECT sends its ICMP error first) and the answer is True."""
        if verdict == ACCEPT:
            return False
        nf = self.netfilter
        assert nf is not None
        if verdict == Verdict.REJECT and nf.last_reject is not None:
            typ, code = nf.last_reject
            self.icmp_send(pkt, typ, code, now)
        self.drop(now, iface, nf.last_drop or Drop.FILTERED)
        return True

    # ------------------------------------------------------------- receiving

    def rx_frame(self, iface: Interface, frame: bytes | bytearray, now: float) -> None:
        """An Ethernet frame arriving on an L2 interface of this namespace."""
        iface.rx_packets += 1
        iface.rx_bytes += len(frame)
        if iface.taps:
            for tap in iface.taps:
                tap(now, frame)
        if len(frame) < 14:
            self.drop(now, iface, Drop.MALFORMED, f"ethernet frame of {len(frame)} bytes")
            return
        dst, _src, etype = _ETH.unpack_from(frame)
        if dst != iface.mac and not dst[0] & 1:
            self.drop(now, iface, Drop.NOT_FOR_US, f"destination MAC {MAC(dst)}")
            return
        if etype == ETH_P_IP:
            if self._tracer.enabled:
                self.trace(now, iface.name, "rx", describe(memoryview(frame)[14:]))
            pkt = bytearray(frame)
            del pkt[:14]  # one copy: a bytearray drops its head in place
            self.ip_rcv(iface, pkt, now)
        elif etype == ETH_P_ARP:
            self.arp.rcv(iface, frame, now)
        else:
            self.drop(now, iface, Drop.UNSUPPORTED_ETHERTYPE, f"{etype:#06x}")

    def rx_packet(self, iface: Interface, pkt: bytearray, now: float) -> None:
        """An IPv4 packet arriving on an L3 interface (lo, flannel0, eth0)."""
        iface.rx_packets += 1
        iface.rx_bytes += len(pkt)
        if iface.taps:
            for tap in iface.taps:
                tap(now, pkt)
        if self._tracer.enabled and iface.kind != LOOPBACK:
            self.trace(now, iface.name, "rx", describe(pkt))
        self.ip_rcv(iface, pkt, now)

    def ip_rcv(self, iface: Interface, pkt: bytearray, now: float) -> None:
        """``ip_rcv``: header checks, the flow table or reassembly and PREROUTING,
        then the routing decision."""
        self.node.mark_timers(self)
        n = len(pkt)
        if n < 20:
            self.drop(now, iface, Drop.MALFORMED, f"ipv4: {n} bytes")
            return
        # version/IHL/TOS/total length, ident/fragment field, the checksum's residue
        w0, w1, residue = header_words(pkt)
        nf = self.netfilter
        if w0 & 0xFF00FFFF == 0x45000000 + n:  # version 4, IHL 5, no padding
            if residue:
                self.drop(now, iface, Drop.MALFORMED, "ipv4: bad header checksum")
                return
            flows = self.flows
            if flows is not None and not w1 & 0x3FFF and not self._tracer.enabled:
                flow = flows.lookup(pkt, n, now)
                if flow is not None:  # conntrack did the hooks' work
                    route = flow.route
                    if route is not None and pkt[8] > 1 and n <= route.dev.mtu:
                        # nf_flow_offload: TTL, then straight to the device
                        ipv4.decrement_ttl(pkt)
                        self.dev_xmit(route.dev, flow.next_hop, pkt, now)
                    else:  # no route, TTL or MTU: what forwarding does about it
                        self.forward(iface, pkt, now, established=True, route=route)
                    return
        else:
            vihl = w0 >> 24
            total = w0 & 0xFFFF
            hlen = (vihl & 0x0F) << 2
            if vihl >> 4 != 4 or hlen < 20 or total < hlen or total > n:
                self.drop(now, iface, Drop.MALFORMED, "ipv4: bad version, IHL or total length")
                return
            if not header_ok(pkt):
                self.drop(now, iface, Drop.MALFORMED, "ipv4: bad header checksum")
                return
            if total < n:
                del pkt[total:]  # the link layer's padding
        if nf is not None:
            if w1 & 0x3FFF:  # MF or offset: nf_defrag reassembles first
                whole = self.reassemble(iface, pkt, now)
                if whole is None:
                    return
                pkt = whole
            if self.nf_refused(iface, pkt, nf.prerouting(pkt, iface.name, now), now):
                return
        self.route_input(iface, pkt, now)

    def route_input(self, iface: Interface, pkt: bytearray, now: float) -> None:
        """After PREROUTING: deliver locally or forward (``ip_route_input``)."""
        dst = bytes(pkt[16:20])
        if dst in self.local or dst == BROADCAST_IP or dst in self._broadcasts:
            self.local_in(iface, pkt, now)
            return
        if not self.ip_forward:
            self.drop(now, iface, Drop.NOT_FOR_US, f"{IPv4Address(dst)} is not local")
            return
        self.forward(iface, pkt, now)

    # ------------------------------------------------------------ forwarding

    def forward(
        self,
        in_iface: Interface,
        pkt: bytearray,
        now: float,
        *,
        established: bool = False,
        route: Route | None = None,
    ) -> None:
        """Route a packet through, in ``ip_forward``'s order: route, TTL, DF versus
        the next hop's MTU, FORWARD, TTL decrement. ``established``: conntrack
        already did the hooks' work (the flow table, with its ``route``)."""
        if route is None:
            route = self.routes.lookup(bytes(pkt[16:20]))
            if route is None:
                if self.icmp_limit.route_error(pkt, now):  # ip_error pays first
                    self.icmp_send(pkt, icmp.DEST_UNREACH, icmp.NET_UNREACH, now)
                self.drop(now, in_iface, Drop.NO_ROUTE, f"to {IPv4Address(bytes(pkt[16:20]))}")
                return
        if pkt[8] <= 1:
            self.icmp_send(pkt, icmp.TIME_EXCEEDED, icmp.TTL_EXCEEDED, now)
            self.drop(now, in_iface, Drop.TTL_EXCEEDED, f"ttl {pkt[8]} at {self.name}")
            return
        dev = route.dev
        if len(pkt) > dev.mtu and pkt[6] & 0x40:  # DF: fragmentation needed
            self.icmp_send(pkt, icmp.DEST_UNREACH, icmp.FRAG_NEEDED, now, mtu=dev.mtu)
            self.drop(now, dev, Drop.FRAG_NEEDED, f"{len(pkt)} bytes > mtu {dev.mtu}")
            return
        nf = self.netfilter
        if (
            nf is not None
            and not established
            and self.nf_refused(in_iface, pkt, nf.forward(pkt, in_iface.name, dev.name, now), now)
        ):
            return
        ipv4.decrement_ttl(pkt)
        if self._tracer.enabled:
            self.trace(now, dev.name, "forward", f"route {route}; ttl now {pkt[8]}")
        self.ip_output(route, pkt, now, established=established)

    def ip_output(
        self, route: Route, pkt: bytearray, now: float, *, established: bool = False
    ) -> None:
        """POSTROUTING on the whole packet, then fragmentation, then transmission
        (``ip_output`` -> ``ip_finish_output``)."""
        dev = route.dev
        if len(pkt) > dev.mtu and pkt[6] & 0x40:  # DF
            self.icmp_send(pkt, icmp.DEST_UNREACH, icmp.FRAG_NEEDED, now, mtu=dev.mtu)
            self.drop(now, dev, Drop.FRAG_NEEDED, f"{len(pkt)} bytes > mtu {dev.mtu}")
            return
        nf = self.netfilter
        if nf is not None and not established:
            src = route.src or (dev.addresses[0].ip if dev.addresses else IPv4Address(0))
            if self.nf_refused(dev, pkt, nf.postrouting(pkt, dev.name, src, now), now):
                return
        next_hop = route.via_packed or bytes(pkt[16:20])
        if len(pkt) > dev.mtu:
            for frag in fragment(pkt, dev.mtu):
                self.dev_xmit(dev, next_hop, frag, now)
        else:
            self.dev_xmit(dev, next_hop, pkt, now)

    def dev_xmit(self, dev: Interface, next_hop: bytes, pkt: bytearray, now: float) -> None:
        """``ip_finish_output2``: an L2 device resolves the neighbour; an L3 device's
        driver takes the packet (flanneld, the node network); lo loops it back."""
        driver = dev.driver
        if driver is not None:  # the driver takes it the device's delay later (HOP_DELAY)
            self._count_tx(dev, pkt, now)
            driver(pkt, next_hop, now + dev.delay)
        elif dev.kind == LOOPBACK:
            self._count_tx(dev, pkt, now)
            self.node.enqueue(self.rx_packet, dev, pkt, now + dev.delay)
        else:
            self.neigh_output(dev, next_hop, pkt, now)

    def _count_tx(self, dev: Interface, data: bytes | bytearray, now: float) -> None:
        dev.tx_packets += 1
        dev.tx_bytes += len(data)
        if dev.taps:
            for tap in dev.taps:
                tap(now, data)

    # ------------------------------------------------------- L2 transmission

    def l2_xmit(self, dev: Interface, frame: bytes | bytearray, now: float) -> None:
        """Send an Ethernet frame on an L2 device (veth end or the bridge device)."""
        dev.tx_packets += 1
        dev.tx_bytes += len(frame)
        if dev.taps:
            for tap in dev.taps:
                tap(now, frame)
        if self._tracer.enabled and frame[12:14] == b"\x08\x00":
            self.trace(now, dev.name, "tx", describe(memoryview(frame)[14:]))
        if dev.kind == VETH:
            peer = dev.peer
            if peer is None or not dev.up or not peer.up:
                self.drop(now, dev, Drop.LINK_DOWN, dev.name)
                return
            # the peer receives it next, the veth's delay later (HOP_DELAY), and
            # the bridge's too when the peer is a bridge port: the frame enters it
            at = now + dev.delay
            master = peer.master
            if master is not None:
                at += master.delay
            self._push((peer.receive, (peer, frame, at)))
        elif dev.start_xmit is not None:  # the bridge device: into its bridge
            dev.start_xmit(frame, now + dev.delay)

    # ------------------------------------------------------------ neighbours

    def neigh_output(self, dev: Interface, next_hop: bytes, pkt: bytearray, now: float) -> None:
        """``neigh_output``: the frame to the neighbour's MAC, or the packet waits
        for ARP (a new entry sends its first request)."""
        assert dev.mac is not None
        if next_hop in self._broadcasts or next_hop == BROADCAST_IP:
            self.l2_xmit(dev, _ETH.pack(MAC.BROADCAST, dev.mac, ETH_P_IP) + pkt, now)
            return
        mac = self.neigh.resolve(next_hop, dev, pkt, now)
        if isinstance(mac, bytes):
            self.l2_xmit(dev, _ETH.pack(mac, dev.mac, ETH_P_IP) + pkt, now)
        elif isinstance(mac, Drop):
            self.drop(now, dev, mac, str(IPv4Address(next_hop)))
        else:
            if self._tracer.enabled:
                who = IPv4Address(next_hop)
                self.trace(now, dev.name, "neigh queued", f"waiting for ARP of {who}")
            if mac is Pending.NEW:
                self.arp.solicit(dev, next_hop, now)

    def _neigh_failed(self, n: Neighbour, queued: list[bytearray], detail: str, now: float) -> None:
        """An entry failed (no answer, or deleted): its waiting packets are
        unreachable."""
        self.drop(now, n.dev, Drop.ARP_TIMEOUT, detail)
        for pkt in queued:
            self.icmp_send(pkt, icmp.DEST_UNREACH, icmp.HOST_UNREACH, now)

    # ------------------------------------------------------- local delivery

    def local_in(self, iface: Interface, pkt: bytearray, now: float) -> None:
        """``ip_local_deliver``: reassembly, INPUT, then the protocol's handler."""
        if pkt[6] & 0x3F or pkt[7]:
            whole = self.reassemble(iface, pkt, now)
            if whole is None:
                return
            pkt = whole
        nf = self.netfilter
        if nf is not None and self.nf_refused(iface, pkt, nf.input(pkt, iface.name, now), now):
            return
        proto = pkt[9]
        handler = self.sockets.handlers.get(proto)
        if handler is None:
            self.icmp_send(pkt, icmp.DEST_UNREACH, icmp.PROTO_UNREACH, now)
            self.drop(now, iface, Drop.PROTO_UNREACHABLE, f"protocol {proto}")
            return
        handler(iface, pkt, (pkt[0] & 0x0F) << 2, now)

    def reassemble(self, iface: Interface, pkt: bytearray, now: float) -> bytearray | None:
        """Add a fragment to its queue (:class:`~emunet.dataplane.frag.Defrag`); the
        whole packet once complete. What the queues discard is dropped with its reason."""
        discarded: list[str] = []
        done = self.defrag.add(pkt, now, discarded)
        for why in discarded:
            self.drop(now, iface, Drop.MALFORMED, why)
        if done is None:
            return None
        whole, count = done
        if self._tracer.enabled:
            self.trace(now, iface.name, "reassembled", f"{count} fragments, {len(whole)} bytes")
        return whole

    # ---------------------------------------------------------- ICMP errors

    def icmp_send(
        self, offending: bytearray, typ: int, code: int, now: float, *, mtu: int = 0
    ) -> None:
        """Send an ICMP error about ``offending`` back to its source (RFC 1812 4.3.2.7)."""
        if len(offending) < 20 or offending[6] & 0x1F or offending[7]:
            return  # too short, or a non-first fragment: never
        src, odst = bytes(offending[12:16]), bytes(offending[16:20])
        if src == b"\x00\x00\x00\x00" or src[0] >= 224 or src in self._broadcasts:
            return
        if odst[0] >= 224 or odst == BROADCAST_IP or odst in self._broadcasts:
            return  # RFC 1812 4.3.2.7: never about multicast or broadcast datagrams
        if offending[9] == ipv4.PROTO_ICMP:
            hlen = (offending[0] & 0x0F) << 2
            if len(offending) > hlen and offending[hlen] in icmp.ERROR_TYPES:
                return  # never about an ICMP error
        if not self.icmp_limit.allow(typ, code, src, src in self.local or src[0] == 127, now):
            if self._tracer.enabled:  # held back, and counted in drops
                self.trace(now, "", "icmp error held back", f"type {typ} code {code}: rate limit")
            return
        msg = icmp.error(typ, code, offending, mtu)
        from_addr = IPv4Address(odst) if odst in self.local else None
        if self._tracer.enabled:
            what = f"type {typ} code {code} to {IPv4Address(src)}" + (f" mtu {mtu}" if mtu else "")
            self.trace(now, "", "icmp error", what)
        self.ip_send_local(1, from_addr, IPv4Address(src), msg, now, ttl=64, df=False)

    # -------------------------------------------------------- local output

    def ip_send_local(
        self,
        proto: int,
        src: IPv4Address | None,
        dst: IPv4Address,
        payload: bytes | bytearray,
        now: float,
        *,
        ttl: int = 64,
        df: bool = True,
        owner: Any = None,
        packed: tuple[bytes, bytes] | None = None,
    ) -> None:
        """Route and send a locally generated packet (``ip_queue_xmit``).

        Errors a real ``sendto`` would return raise :class:`SocketError`
        when ``owner`` is a socket; otherwise they are dropped with a reason.
        ``packed``: ``src`` (``b""`` for None) and ``dst`` as bytes: packing is a Python call.
        """
        self.node.mark_timers(self)
        spk, dpk = packed or ((src.packed if src is not None else b""), dst.packed)
        nf = self.netfilter
        if dpk in self.local or dpk[0] == 127:  # 127.0.0.0/8, dst.is_loopback
            dev = self.local.get(dpk) or self.interfaces["lo"]
            s = spk if src is not None else dpk
            pkt = ipv4.build_fast(
                s, dpk, proto, payload, ttl=ttl, ident=self.node.next_ident(), df=df
            )
            if nf is not None and self.nf_refused(dev, pkt, nf.output(pkt, now), now):
                return
            if self._tracer.enabled:
                self.trace(now, "lo", "tx", describe(pkt))
            self.dev_xmit(self.interfaces["lo"], dpk, pkt, now)
            return
        route = self.routes.lookup(dpk)
        if route is None:
            if owner is not None and not hasattr(owner, "state"):
                raise SocketError("ENETUNREACH", f"no route to {dst} in {self.name}")
            self.drop(now, None, Drop.NO_ROUTE, f"to {dst}")
            return
        if src is None:
            version = self.routes.prefixes.version  # bumped by route and address changes
            hit = self._src_cache.get(dpk)
            if hit is not None and hit[0] == version:
                src, spk = hit[1], hit[2]
            else:
                src = route.src or self.source_for(route.dev, route.via_packed or dpk)
                spk = src.packed
                if len(self._src_cache) >= 4096:
                    self._src_cache.clear()
                self._src_cache[dpk] = (version, src, spk)
        pkt = ipv4.build_fast(
            spk, dpk, proto, payload, ttl=ttl, ident=self.node.next_ident(), df=df
        )
        if df and len(pkt) > route.dev.mtu and isinstance(owner, UDPSocket):
            raise SocketError("EMSGSIZE", f"message of {len(pkt)} bytes > mtu {route.dev.mtu}")
        if nf is not None:
            if self.nf_refused(route.dev, pkt, nf.output(pkt, now), now):
                return
            if bytes(pkt[16:20]) != dpk:
                rerouted = self.routes.lookup(bytes(pkt[16:20]))
                if rerouted is None:
                    self.drop(now, None, Drop.NO_ROUTE, describe(pkt))
                    return
                route = rerouted
        if self._tracer.enabled:
            self.trace(now, route.dev.name, "route", f"{describe(pkt)} via route {route}")
        self.ip_output(route, pkt, now)

    # ------------------- sockets: the socket calls of apps (socket(2), bind, connect...)

    def udp_socket(self) -> UDPSocket:
        return self.sockets.udp_socket()

    def ping_socket(self, ident: int | None = None) -> PingSocket:
        return self.sockets.ping_socket(ident)

    def tcp_listen(
        self, port: int, addr: IPv4Address | str = ANY, backlog: int = 128
    ) -> TCPListener:
        return self.sockets.tcp_listen(port, addr, backlog)

    def tcp_connect(self, dst: IPv4Address | str, dport: int, now: float) -> TCPConnection:
        return self.sockets.tcp_connect(dst, dport, now)

    def close_all(self) -> None:
        """The namespace goes away (pod deleted): every socket is closed, TCP reset.

        Nothing is sent: the pod's interfaces are already gone, as when a
        network namespace is destroyed under its sockets.
        """
        self.sockets.close_all()
        self.neigh.clear()
        self.defrag.clear()

    # ----------------------------------------------------------------- timers

    def get_timer(self) -> float | None:
        times = [
            t
            for t in (self.neigh.get_timer(), self.defrag.next_expiry(), self.sockets.get_timer())
            if t is not None
        ]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        self.node.mark_timers(self)
        for due in self.neigh.expire(now):
            n = due.neighbour
            if due.queued is None:
                self.arp.solicit(n.dev, n.ip, now, unicast=due.unicast)
            elif n.mac is None:  # INCOMPLETE: no answer to any request
                self._neigh_failed(n, due.queued, str(IPv4Address(n.ip)), now)
            else:  # PROBE: FAILED, the next packet resolves anew
                self._neigh_failed(n, due.queued, f"{IPv4Address(n.ip)} (probe)", now)
        for key, r in self.defrag.expire(now):
            # time exceeded only when this host was the destination (a router that
            # defragments for conntrack stays silent: frag_expire_skip_icmp)
            if r.first is not None and bytes(r.first[16:20]) in self.local:
                self.icmp_send(r.first, icmp.TIME_EXCEEDED, icmp.FRAG_REASSEMBLY_EXCEEDED, now)
            self.drop(now, None, Drop.REASSEMBLY_TIMEOUT, f"id {key[2]}")
        self.sockets.handle_timer(now)

    # ----------------------------------------------------------------- views

    def neigh_delete(self, ip: IPv4Address, now: float) -> bool:
        """``ip neigh del``: forget an entry (the next packet resolves it again).
        Packets waiting for its resolution fail as on an ARP timeout."""
        deleted = self.neigh.delete(ip.packed)
        if deleted is None:
            return False
        n, queued = deleted
        if queued:
            self._neigh_failed(n, queued, f"{ip} (deleted)", now)
        return True

    def neigh_show(self, now: float) -> list[str]:
        """Lines like ``ip neigh show``."""
        return [ip_neigh_line(*row) for row in self.neigh.show(now)]
