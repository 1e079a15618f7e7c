"""A network namespace: interfaces, addresses, routes, neighbours, sockets.

Theory of operation
-------------------
Frames enter through :meth:`Namespace.rx_frame` (L2 interfaces) or
:meth:`Namespace.rx_packet` (L3 ones: ``lo``, ``flannel0``, the node's
``eth0``). ARP is answered and learned in :meth:`_arp_rcv`. An IPv4 packet is
checked (:meth:`ip_rcv`, like Linux's ``ip_rcv``), offered to netfilter's
PREROUTING when the namespace has netfilter (the node's root namespace), then
either delivered locally (INPUT, reassembly, ICMP/UDP/TCP demultiplexing) or
forwarded (route, FORWARD, TTL, MTU, POSTROUTING, neighbour, transmit).
Locally generated packets start in :meth:`ip_send_local` (route, source
address selection, OUTPUT) and join the same output path.

Nothing here does I/O or reads a clock: every entry point takes ``now``;
transmission on an interface is queued on the node, which runs the queue to
completion and turns what leaves the node into actions. Packets inside the
namespace are ``bytearray`` IPv4 packets (header at offset 0), rewritten in
place (TTL, NAT). Malformed input is counted and dropped with a reason.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import TYPE_CHECKING, Any, Protocol

from emunet.dataplane.bridge import FORGOTTEN
from emunet.dataplane.interfaces import BRIDGE, LOOPBACK, TUN, UNDERLAY, VETH, Interface
from emunet.dataplane.lpm import PrefixMap
from emunet.dataplane.overlay import OVERHEAD as OVERLAY_OVERHEAD
from emunet.dataplane.routing import SCOPE_HOST, SCOPE_LINK, Route, RouteTable
from emunet.dataplane.sockets import ANY, PingSocket, SocketErrorEvent, UDPSocket, errno_for
from emunet.dataplane.tcp import TCPConnection, TCPListener, rst_for
from emunet.dataplane.trace import Drop, Tracer
from emunet.errors import ConfigError, MalformedFrame, SocketError
from emunet.packets import arp, icmp, ipv4, tcp, udp
from emunet.packets.checksum import HEADER20_WIDE, header_ok, internet_checksum, pseudo_header_sum
from emunet.packets.ethernet import ETH_P_ARP, ETH_P_IP
from emunet.packets.mac import MAC

if TYPE_CHECKING:
    from emunet.dataplane.bridge import Bridge, FdbEntry

_ETH = struct.Struct("!6s6sH")
_U16 = struct.Struct("!H")
_PORTS = struct.Struct("!HH")
_FLOW_KEY = struct.Struct("!9xB2x12s")  # (protocol, addresses and ports)
_DST = struct.Struct("!16x4s")
_HEADER20_WIDE = HEADER20_WIDE
_TTL_CSUM = ipv4.TTL_CSUM
_TTL_STEPS = ipv4.TTL_STEPS
_UDP_HDR = struct.Struct("!HHHH")

BROADCAST_IP = b"\xff\xff\xff\xff"
EPHEMERAL_LOW = 32768
EPHEMERAL_HIGH = 60999

# Linux neighbour defaults: 3 probes one second apart (mcast_solicit,
# retrans_time), base_reachable_time 30 s, unresolved queue (a packet count
# here rather than unres_qlen_bytes).
ARP_RETRIES = 3
ARP_RETRANS = 1.0
REACHABLE_TIME = 30.0
ARP_QUEUE_MAX = 101
DELAY_FIRST_PROBE_TIME = 5.0
NEIGH_GC_THRESH3 = 1024
# net.ipv4.ipfrag_time, net.ipv4.ipfrag_high_thresh; a queued fragment costs its
# data plus an skb's overhead (Linux counts truesize), so header-only fragments
# count too and the number of queues is bounded (4 MiB / 256 B: 16384 at most)
FRAG_TIMEOUT = 30.0
FRAG_HIGH_THRESH = 4 * 1024 * 1024
FRAG_TRUESIZE = 256


class NodeContext(Protocol):
    """What a namespace needs from its node."""

    name: str
    tracer: Tracer

    def enqueue(self, fn: Callable[..., None], *args: Any) -> None: ...

    # the queue itself: ``queue.append((fn, args))`` is ``enqueue(fn, *args)``
    queue: deque[tuple[Callable[..., None], tuple[Any, ...]]]

    def tun_xmit(self, dev: Interface, pkt: bytearray, now: float) -> None: ...

    actions: list[Any]

    def tun_flow_target(self) -> tuple[PrefixMap[Any], Interface]:
        """flanneld's lease table and the interface its datagrams leave by."""
        ...

    def underlay_xmit(
        self, dev: Interface, next_hop: bytes, pkt: bytearray, now: float
    ) -> None: ...

    def next_ident(self) -> int: ...

    def random_port(self, low: int, high: int) -> int: ...

    def tcp_iss(self) -> int: ...


class NetfilterHooks(Protocol):
    """The hook points a namespace calls (implemented by the netfilter engine)."""

    last_reject: tuple[int, int] | None
    last_drop: Any
    left: Any
    conntrack: Any

    def prerouting(self, pkt: bytearray, in_iface: str, now: float) -> int: ...

    def fast_forward(self, pkt: bytearray, now: float) -> Any: ...

    def input(self, pkt: bytearray, in_iface: str, now: float) -> int: ...

    def forward(self, pkt: bytearray, in_iface: str, out_iface: str, now: float) -> int: ...

    def output(self, pkt: bytearray, now: float) -> int: ...

    def postrouting(
        self, pkt: bytearray, out_iface: str, out_src: IPv4Address, now: float
    ) -> int: ...


ACCEPT, NF_DROP, NF_REJECT = 0, 1, 2


class Neighbour:
    """An ARP cache entry (``ip neigh``), with Linux's NUD states.

    INCOMPLETE (broadcast requests) -> REACHABLE (confirmed by ARP) -> STALE after
    ``base_reachable_time``; using a STALE entry moves it to DELAY, which becomes
    PROBE (unicast requests to the cached MAC) unless confirmed in time, and FAILED
    (forgotten) after ``ucast_solicit`` unanswered probes.
    """

    __slots__ = ("dev", "ip", "mac", "probe_at", "probes", "queue", "state", "updated")

    def __init__(self, ip: bytes, dev: Interface, now: float) -> None:
        self.ip = ip
        self.dev = dev
        self.mac: bytes | None = None
        self.state = "INCOMPLETE"
        self.updated = now
        self.probes = 0
        self.probe_at = 0.0  # DELAY/PROBE: when the next unicast probe is due
        self.queue: deque[bytearray] = deque()


FLOW_CACHE_MAX = 65536
_USABLE = frozenset({"REACHABLE", "STALE", "DELAY", "PROBE"})  # states with a MAC to use


class _Flow:
    """A cached forwarding decision for one direction of a connection.

    Held valid by what it was decided with, compared for every packet: the
    route table's (``rmap``/``version``) and flanneld's lease table's
    (``lmap``/``lver``) versions, the devices on the way (``dev``, then ``out``:
    eth0 for flannel0 flows, the bridge port for cni0 ones) and, for cni0, the
    neighbour's MAC and state and the FDB entry. ``ttl_min``: a packet needs a
    TTL above it (flannel0: flanneld decrements again and discards at zero);
    ``steps``: the TTL decrements the replay applies (FORWARD's, and flanneld's
    for flannel0). ``lease``: the (PublicIP, port) flanneld sends to.
    """

    __slots__ = (
        "bridge",
        "ct",
        "dev",
        "fdb",
        "header",
        "lease",
        "lmap",
        "lver",
        "mac",
        "neigh",
        "out",
        "peer",
        "rmap",
        "steps",
        "ttl_min",
        "version",
    )

    def __init__(self, ct: Any, dev: Interface, out: Interface, rmap: PrefixMap[Route]) -> None:
        self.ct = ct
        self.dev = dev
        self.out = out
        self.rmap = rmap
        self.version = rmap.version
        self.lmap = _NO_LEASES
        self.lver = _NO_LEASES.version
        self.ttl_min = 1
        self.steps = 1
        self.lease: tuple[str, int] | None = None
        self.neigh: Neighbour | None = None
        self.mac = b""
        self.fdb: FdbEntry | None = None
        self.peer: Interface | None = None
        self.bridge: Bridge | None = None
        self.header = b""


_NO_LEASES: PrefixMap[Any] = PrefixMap()  # the lease table of a flow that needs none


class _Reassembly:
    __slots__ = ("first", "frags", "size", "started", "total")

    def __init__(self, now: float) -> None:
        self.started = now
        self.frags: dict[int, bytes] = {}
        self.total = -1
        self.first: bytearray | None = None
        self.size = 0  # bytes charged against ipfrag_high_thresh


def describe(pkt: bytes | bytearray | memoryview) -> str:
    """One line like tcpdump's for an IPv4 packet (tracing only: not on the hot path)."""
    try:
        hdr, payload = ipv4.parse(pkt)
    except MalformedFrame as exc:
        return f"malformed ({exc.reason})"
    base = f"{hdr.src} > {hdr.dst}"
    frag = ""
    if hdr.is_fragment:
        frag = f" frag id {hdr.identification} off {hdr.fragment_offset * 8}"
        frag += " MF" if hdr.mf else ""
        if hdr.fragment_offset:
            return f"{base}: proto {hdr.protocol} ttl {hdr.ttl}{frag}"
    if hdr.protocol == ipv4.PROTO_UDP and len(payload) >= 8:
        sp, dp = _PORTS.unpack_from(payload)
        return f"{base}: udp {sp} > {dp} len {len(payload) - 8} ttl {hdr.ttl}{frag}"
    if hdr.protocol == ipv4.PROTO_TCP and len(payload) >= 20:
        try:
            th, data = tcp.parse(payload)
        except MalformedFrame:
            return f"{base}: tcp (truncated)"
        return (
            f"{base}: tcp {th.sport} > {th.dport} [{th.flag_names}] seq {th.seq} "
            f"ack {th.ack} len {len(data)} ttl {hdr.ttl}"
        )
    if hdr.protocol == ipv4.PROTO_ICMP and len(payload) >= 8:
        m = icmp.parse(payload)
        names = {0: "echo reply", 8: "echo request", 3: "unreachable", 11: "time exceeded"}
        name = names.get(m.type, f"type {m.type}")
        if m.type in (0, 8):
            return f"{base}: icmp {name} id {m.identifier} seq {m.sequence} ttl {hdr.ttl}"
        return f"{base}: icmp {name} code {m.code} ttl {hdr.ttl}"
    return f"{base}: proto {hdr.protocol} len {len(payload)} ttl {hdr.ttl}{frag}"


class Namespace:
    """One network namespace (a pod's, or a node's root namespace)."""

    def __init__(self, node: NodeContext, name: str, *, ip_forward: bool = False) -> None:
        self.node = node
        self.name = name
        self.ip_forward = ip_forward
        self.interfaces: dict[str, Interface] = {}
        self.routes = RouteTable()
        self.local: dict[bytes, Interface] = {}
        self.neighbours: dict[bytes, Neighbour] = {}
        self.netfilter: NetfilterHooks | None = None
        # the flow cache of the root namespace (None: every packet takes the full path)
        self.flows: dict[tuple[int, bytes], _Flow] | None = None
        self.udp_sockets: dict[tuple[bytes, int], UDPSocket] = {}
        self.ping_sockets: dict[int, PingSocket] = {}
        self.tcp_conns: dict[tuple[bytes, int, bytes, int], TCPConnection] = {}
        self.tcp_listeners: dict[tuple[bytes, int], TCPListener] = {}
        self._bound: dict[tuple[int, int], list[bytes]] = {}
        self._tcp_owned: dict[tuple[IPv4Address, int, IPv4Address, int], TCPConnection] = {}
        self._frags: dict[tuple[bytes, bytes, int, int], _Reassembly] = {}
        self._addr_cache: dict[bytes, IPv4Address] = {}
        self._broadcasts: set[bytes] = set()  # directed broadcasts of our subnets
        # Ethernet headers of frames bridged up to this namespace: their FDB entry
        self._up_headers: dict[bytes, FdbEntry] = {}
        self._frag_bytes = 0
        self._next_ifindex = 1
        self._tracer = node.tracer
        self._queue_append = node.queue.append
        self.drops: dict[str, int] = {}
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
        for ip in [ip for ip, n in self.neighbours.items() if n.dev is iface]:
            self._forget_neighbour(ip)

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

    def primary_address(self, iface: Interface) -> IPv4Address | None:
        return iface.addresses[0].ip if iface.addresses else None

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

    # ---------------------------------------------------------------- tracing

    def trace(self, now: float, iface: str, event: str, detail: str = "") -> None:
        self._tracer.hop(now, self.node.name, self.name, iface, event, detail)

    def drop(
        self, now: float, iface: Interface | None, reason: Drop | str, detail: str = ""
    ) -> None:
        key = str(reason)
        self.drops[key] = self.drops.get(key, 0) + 1
        if iface is not None:
            iface.rx_dropped += 1
        if self._tracer.enabled:
            text = str(reason) + (f": {detail}" if detail else "")
            self.trace(now, iface.name if iface else "", "drop", text)

    # ------------------------------------------------------------- receiving

    def rx_frame(self, iface: Interface, frame: bytes | bytearray, now: float) -> None:
        """An Ethernet frame arriving on an L2 interface of this namespace."""
        iface.rx_packets += 1
        iface.rx_bytes += len(frame)
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
            self.ip_rcv(iface, bytearray(memoryview(frame)[14:]), now)
        elif etype == ETH_P_ARP:
            self._arp_rcv(iface, frame, now)
        else:
            self.drop(now, iface, "unsupported ethertype", f"{etype:#06x}")

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

    def ip_rcv(self, iface: Interface, pkt: bytearray, now: float, pending: int = 0) -> None:
        """``ip_rcv``: header checks, then PREROUTING (or the flow cache), then the
        routing decision.

        ``pending``: TTL decrements the packet still owes to an earlier hop. A
        packet flanneld writes into flannel0 comes before its decrement when
        nothing traces or taps flannel0 and the TTL is above 1
        (``Node.overlay_received``): the flow cache applies it together with
        FORWARD's, the full path first thing after the header checks (which the
        TTL does not change), so both give the bytes of the two steps."""
        n = len(pkt)
        if n < 20:
            self.drop(now, iface, Drop.MALFORMED, f"ipv4: {n} bytes")
            return
        # the first 20 bytes as 64, 64 and 32 bits: version/IHL, total length and
        # fragment field from the first part, and checksum.header_ok's sum
        a, b, c = _HEADER20_WIDE.unpack_from(pkt)
        nf = self.netfilter
        if (a >> 32) & 0xFF00FFFF == 0x45000000 + n:  # version 4, IHL 5, no padding
            if (a + b + c) % 0xFFFF:
                self.drop(now, iface, Drop.MALFORMED, "ipv4: bad header checksum")
                return
            if (
                not a & 0x3FFF  # a fragment is reassembled first
                and nf is not None
                and self.flows is not None
                and not self._tracer.enabled
                and self._flow_path(iface, pkt, n, now, pending)
            ):
                return
        else:
            vihl = a >> 56
            total = (a >> 32) & 0xFFFF
            hlen = (vihl & 0x0F) << 2
            if vihl >> 4 != 4 or hlen < 20 or total < hlen or total > n:
                self.drop(now, iface, Drop.MALFORMED, "ipv4: bad version, IHL or total length")
                return
            if not header_ok(pkt):
                self.drop(now, iface, Drop.MALFORMED, "ipv4: bad header checksum")
                return
            if total < n:
                del pkt[total:]  # the link layer's padding
        if a & 0x3FFF and nf is not None:  # MF or offset: nf_defrag reassembles first
            if pending:
                ipv4.decrement_ttl_by(pkt, pending)
                pending = 0
            whole = self.reassemble(iface, pkt, now)
            if whole is None:
                return
            pkt = whole
        if pending:
            ipv4.decrement_ttl_by(pkt, pending)
        if nf is not None:
            verdict = nf.prerouting(pkt, iface.name, now)
            if verdict != ACCEPT:
                self._nf_refused(iface, pkt, verdict, now)
                return
        self.route_input(iface, pkt, now)

    # --------------------------------------------------------- flow cache
    #
    # The software fast path of an ESTABLISHED, un-NATed TCP/UDP connection,
    # like Linux's nf_flowtable: the first packet after the connection is
    # established takes the full path and its outcome (the route, and for
    # cni0 the neighbour and the FDB entry) is kept; later packets replay it
    # after checking that each input is still what it was. Whatever would
    # make the full path behave differently (tracing, taps, TTL or MTU
    # limits, a changed route, neighbour or FDB entry, a FIN/RST/SYN, an
    # expired or NATed conntrack entry) sends the packet down the full path.

    def _flow_path(
        self, iface: Interface, pkt: bytearray, size: int, now: float, pending: int
    ) -> bool:
        """True when the packet was forwarded by the flow cache or the fast hooks;
        False, having changed nothing, when it takes the full path.

        ``pending``: TTL decrements still owed by an earlier hop (flanneld's, see
        :meth:`ip_rcv`), applied with the flow's as one RFC 1624 update.
        One function on purpose: every packet of an established flow runs it,
        and each call saved is a measurable share of the whole path.
        """
        # ip_rcv checked the header (IHL 5, its checksum, no fragment; size bytes)
        proto = pkt[9]
        if proto == 17:
            if size < 28:
                return False
            flags = 0
        elif proto == 6:
            if size < 40:
                return False
            flags = pkt[33]
        else:
            return False
        key = _FLOW_KEY.unpack_from(pkt)  # conntrack's tuple, as (proto, 12 bytes)
        flows: dict[tuple[int, bytes], _Flow] = self.flows  # type: ignore[assignment]
        nf: NetfilterHooks = self.netfilter  # type: ignore[assignment]  # both set: ip_rcv checked
        flow = flows.get(key)
        fresh = False
        if flow is None:
            fresh = True
            # the connection's first packet here since its flow was decided (or
            # invalidated): fast_forward does the hooks' work, the routing
            # decision and the neighbour/FDB entries are looked up to be kept
            dst = _DST.unpack_from(pkt)[0]
            if dst in self.local:
                return False
            hit = nf.fast_forward(pkt, now)
            if hit is None:
                return False
            flow = self._flow_new(hit[0], dst)
            if flow is None:
                self._forward_passed(iface, pkt, now, pending)
                return True
        dev = flow.dev
        out = flow.out
        n = flow.neigh
        if not (
            flow.rmap.version == flow.version
            and flow.lmap.version == flow.lver
            and pkt[8] > flow.ttl_min + pending
            and size <= dev.mtu  # (only a veth pair's ends care whether they are up)
            and not dev.taps
            and not out.taps
            and (
                n is None
                or (
                    # cni0: the neighbour and the FDB entry are the ones the full
                    # path would use, the ports on the way up. A removed neighbour
                    # ends FAILED (_forget_neighbour), a removed FDB entry ends
                    # infinitely old (Bridge.forget): the objects held tell.
                    n.mac == flow.mac
                    and n.state in _USABLE
                    and (entry := flow.fdb).port is out  # type: ignore[union-attr]
                    and now - entry.updated < flow.bridge.ageing_time  # type: ignore[union-attr]
                    and out.up
                    and flow.peer.up  # type: ignore[union-attr]
                )
            )
            and (fresh or nf.conntrack.refresh_established(flow.ct, flags, now))
        ):
            if not fresh:
                del flows[key]
                return False
            self._forward_passed(iface, pkt, now, pending)
            return True
        if fresh:  # kept once it passed
            if len(flows) >= FLOW_CACHE_MAX:
                flows.clear()
            flows[key] = flow
        nf.left = None  # as after any packet through the hooks
        # the TTL decrements as one update (ipv4.decrement_ttl_by, inlined)
        step, const = _TTL_STEPS[flow.steps + pending]
        word, csum = _TTL_CSUM.unpack_from(pkt, 8)
        csum = (csum ^ 0xFFFF) + const
        _TTL_CSUM.pack_into(pkt, 8, word - step, ((csum & 0xFFFF) + (csum >> 16)) ^ 0xFFFF)
        dev.tx_packets += 1
        if n is None:
            # flannel0, then flanneld's tun_to_udp: the datagram leaves by eth0
            dev.tx_bytes += size
            out.tx_packets += 1
            out.tx_bytes += size + OVERLAY_OVERHEAD
            self.node.actions.append((flow.lease, pkt))  # an overlay datagram
            return True
        # cni0: the neighbour's MAC, the FDB entry's port, its veth peer
        if n.state != "REACHABLE" or now - n.updated > REACHABLE_TIME:
            self._neigh_used(n, now)
        frame = flow.header + pkt
        size += 14
        dev.tx_bytes += size
        out.tx_packets += 1
        out.tx_bytes += size
        peer: Interface = flow.peer  # type: ignore[assignment]
        self._queue_append((peer.receive, (peer, frame, now)))  # enqueue
        return True

    def _forward_passed(self, iface: Interface, pkt: bytearray, now: float, pending: int) -> None:
        """The full path's forwarding of a packet fast_forward passed (the hooks'
        work done), its pending TTL decrements first."""
        if pending:
            ipv4.decrement_ttl_by(pkt, pending)
        self.forward(iface, pkt, now, established=True)

    def _flow_new(self, ct: Any, dst: bytes) -> _Flow | None:
        """The flow of a packet that fast_forward passed, or None when the full
        path must judge each of its packets (no route, no usable neighbour or FDB
        entry, no lease: what only the full path says how to handle)."""
        route = self.routes.lookup(dst)
        if route is None:
            return None
        dev = route.dev
        if dev.kind == TUN:
            leases, eth0 = self.node.tun_flow_target()
            lease = leases.lookup(dst)
            if lease is None:
                return None
            flow = _Flow(ct, dev, eth0, self.routes.prefixes)
            flow.lmap, flow.lver, flow.lease = leases, leases.version, lease.addr
            flow.ttl_min = 2  # flanneld decrements again and discards at zero
            flow.steps = 2
            return flow
        if dev.kind != BRIDGE or dev.bridge is None:
            return None
        n = self.neighbours.get(route.via.packed if route.via else dst)
        if n is None or n.mac is None or n.state not in _USABLE:
            return None
        entry = dev.bridge.fdb.get(n.mac)
        if entry is None or entry.port.peer is None:
            return None
        assert dev.mac is not None
        flow = _Flow(ct, dev, entry.port, self.routes.prefixes)
        flow.neigh, flow.mac, flow.fdb, flow.peer = n, n.mac, entry, entry.port.peer
        flow.header = _ETH.pack(n.mac, dev.mac, ETH_P_IP)
        flow.bridge = dev.bridge
        return flow

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

    def _nf_refused(self, iface: Interface, pkt: bytearray, verdict: int, now: float) -> None:
        nf = self.netfilter
        assert nf is not None
        reason = nf.last_drop or Drop.FILTERED
        if verdict == NF_REJECT and nf.last_reject is not None:
            typ, code = nf.last_reject
            self.icmp_send(pkt, typ, code, now)
        self.drop(now, iface, reason)

    # ------------------------------------------------------------ forwarding

    def forward(
        self, in_iface: Interface, pkt: bytearray, now: float, *, established: bool = False
    ) -> None:
        """Route a packet through, in ``ip_forward``'s order: route, TTL, DF versus
        the next hop's MTU, FORWARD, TTL decrement (``established``: conntrack already
        did the hooks' work)."""
        route = self.routes.lookup(bytes(pkt[16:20]))
        if route is None:
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
        if nf is not None and not established:
            verdict = nf.forward(pkt, in_iface.name, dev.name, now)
            if verdict != ACCEPT:
                self._nf_refused(in_iface, pkt, verdict, now)
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
            verdict = nf.postrouting(pkt, dev.name, src, now)
            if verdict != ACCEPT:
                self._nf_refused(dev, pkt, verdict, now)
                return
        if len(pkt) > dev.mtu:
            for frag in fragment(pkt, dev.mtu):
                self._xmit(route, frag, now)
        else:
            self._xmit(route, pkt, now)

    def _xmit(self, route: Route, pkt: bytearray, now: float) -> None:
        dev = route.dev
        next_hop = route.via.packed if route.via is not None else bytes(pkt[16:20])
        kind = dev.kind
        if kind == TUN:
            self._count_tx(dev, pkt, now)
            self.node.tun_xmit(dev, pkt, now)
        elif kind == UNDERLAY:
            self._count_tx(dev, pkt, now)
            self.node.underlay_xmit(dev, next_hop, pkt, now)
        elif kind == LOOPBACK:
            self._count_tx(dev, pkt, now)
            self.node.enqueue(self.rx_packet, dev, pkt, now)
        else:
            self.neigh_output(dev, next_hop, pkt, now)

    def _count_tx(self, dev: Interface, data: bytes | bytearray, now: float) -> None:
        dev.tx_packets += 1
        dev.tx_bytes += len(data)
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
            self._queue_append((peer.receive, (peer, frame, now)))  # enqueue, without the call
        elif dev.kind == BRIDGE:
            assert dev.bridge is not None
            dev.bridge.input(None, frame, now)

    def bridge_port_rx(self, port: Interface, frame: bytes | bytearray, now: float) -> None:
        """A frame received on a bridge port (a veth enslaved to cni0)."""
        size = len(frame)
        port.rx_packets += 1
        port.rx_bytes += size
        if port.taps:
            for tap in port.taps:
                tap(now, frame)
        if size < 14:
            self.drop(now, port, Drop.MALFORMED, f"ethernet frame of {size} bytes")
            return
        dev: Interface = port.master  # type: ignore[assignment]  # a port has one
        if self._tracer.enabled:
            self.trace(now, port.name, "rx", f"bridge port of {dev.name}")
        elif self.flows is not None and not dev.taps and type(frame) is bytes:
            # The common case of a pod's packet for the root namespace (a route via
            # the gateway), in short: an IPv4 frame to the bridge device's own MAC
            # from a source the bridge has learned on this very port. What
            # Bridge.input (refresh the entry, hand the frame up) and rx_frame
            # (count, strip the header) would do with it. Such headers are kept
            # with their FDB entry, alive (not forgotten) and still on this port.
            header = frame[:14]
            entry = self._up_headers.get(header)
            if entry is None and header[12:] == b"\x08\x00" and header[:6] == dev.mac:
                entry = dev.bridge.fdb.get(header[6:12])  # type: ignore[union-attr]
                if entry is not None:
                    if len(self._up_headers) >= 4096:
                        self._up_headers.clear()
                    self._up_headers[header] = entry
            if entry is not None and entry.port is port and entry.updated != FORGOTTEN:
                entry.updated = now
                dev.rx_packets += 1
                dev.rx_bytes += size
                pkt = bytearray(frame)
                del pkt[:14]  # one copy: a bytearray drops its head in place
                self.ip_rcv(dev, pkt, now)
                return
        dev.bridge.input(port, frame, now)  # type: ignore[union-attr]

    # ------------------------------------------------------------ neighbours

    def neigh_output(self, dev: Interface, next_hop: bytes, pkt: bytearray, now: float) -> None:
        if next_hop in self._broadcasts or next_hop == BROADCAST_IP:
            assert dev.mac is not None
            self.l2_xmit(dev, _ETH.pack(MAC.BROADCAST, dev.mac, ETH_P_IP) + pkt, now)
            return
        n = self.neighbours.get(next_hop)  # never FAILED: those are forgotten
        if n is not None and n.mac is not None:
            self._neigh_used(n, now)
            assert dev.mac is not None
            self.l2_xmit(dev, _ETH.pack(n.mac, dev.mac, ETH_P_IP) + pkt, now)
            return
        new = n is None
        if n is None:
            n = self._neigh_new(next_hop, dev, now)
            if n is None:
                return
        if len(n.queue) >= ARP_QUEUE_MAX:
            self.drop(now, dev, Drop.ARP_QUEUE_FULL, str(IPv4Address(next_hop)))
            return
        n.queue.append(pkt)
        if self._tracer.enabled:
            self.trace(now, dev.name, "neigh queued", f"waiting for ARP of {IPv4Address(next_hop)}")
        if new:
            self._arp_request(dev, next_hop, now)

    def _neigh_used(self, n: Neighbour, now: float) -> None:
        """A packet is sent with this entry's MAC (``neigh_event_send``)."""
        state = n.state
        if state == "REACHABLE":
            if now - n.updated <= REACHABLE_TIME:
                return
            state = n.state = "STALE"
        if state == "STALE":
            n.state = "DELAY"
            n.probe_at = now + DELAY_FIRST_PROBE_TIME

    def _arp_request(
        self, dev: Interface, target: bytes, now: float, unicast: bytes | None = None
    ) -> None:
        n = self.neighbours[target]
        n.probes += 1
        if unicast is None:
            n.updated = now
        src_ip = self._source_for(dev, target)
        assert dev.mac is not None
        req = arp.ARPPacket(
            arp.REQUEST,
            dev.mac,
            src_ip,
            MAC(unicast) if unicast else MAC.ZERO,
            IPv4Address(target),
        )
        if self._tracer.enabled:
            how = f" (unicast probe to {MAC(unicast)})" if unicast else ""
            self.trace(
                now, dev.name, "arp request", f"who-has {IPv4Address(target)} tell {src_ip}{how}"
            )
        dst = unicast or MAC.BROADCAST
        self.l2_xmit(dev, _ETH.pack(dst, dev.mac, ETH_P_ARP) + arp.build(req), now)

    def _neigh_gc(self) -> bool:
        """Forget STALE and DELAY entries (forced GC at gc_thresh3); True if room."""
        for ip in [ip for ip, n in self.neighbours.items() if n.state in ("STALE", "DELAY")]:
            self._forget_neighbour(ip)
        return len(self.neighbours) < NEIGH_GC_THRESH3

    def _neigh_new(self, ip: bytes, dev: Interface, now: float) -> Neighbour | None:
        """A new INCOMPLETE entry, or None (dropped) when the table is full even after GC."""
        if len(self.neighbours) >= NEIGH_GC_THRESH3 and not self._neigh_gc():
            self.drop(now, dev, "neighbour table overflow", str(IPv4Address(ip)))
            return None
        n = self.neighbours[ip] = Neighbour(ip, dev, now)
        return n

    def _forget_neighbour(self, ip: bytes) -> None:
        """Remove an entry; it ends FAILED, so a flow that cached it sees it is gone."""
        self.neighbours.pop(ip).state = "FAILED"

    def _source_for(self, dev: Interface, target: bytes) -> IPv4Address:
        t = IPv4Address(target)
        for a in dev.addresses:
            if t in a.network:
                return a.ip
        return dev.addresses[0].ip if dev.addresses else IPv4Address(0)

    def _arp_rcv(self, iface: Interface, frame: bytes | bytearray, now: float) -> None:
        try:
            p = arp.parse(frame, 14)
        except MalformedFrame as exc:
            self.drop(now, iface, Drop.MALFORMED, exc.reason)
            return
        sip = p.sender_ip.packed
        tip = p.target_ip.packed
        for_us = self.local.get(tip) is not None
        n = self.neighbours.get(sip)
        # arp_accept=0: an unsolicited reply only refreshes an existing entry; a
        # request for one of our addresses creates one for its sender
        if n is not None or (for_us and p.op == arp.REQUEST):
            if n is None:
                n = self._neigh_new(sip, iface, now)
                if n is None:
                    return
            n.mac = bytes(p.sender_mac)
            n.state = "REACHABLE"
            n.updated = now
            n.dev = iface
            if self._tracer.enabled and p.op == arp.REPLY:
                self.trace(now, iface.name, "arp reply", f"{p.sender_ip} is-at {p.sender_mac}")
            while n.queue:
                queued = n.queue.popleft()
                assert iface.mac is not None
                self.l2_xmit(iface, _ETH.pack(n.mac, iface.mac, ETH_P_IP) + queued, now)
        if p.op == arp.REQUEST and for_us:
            assert iface.mac is not None
            if self._tracer.enabled:
                self.trace(now, iface.name, "arp reply", f"{p.target_ip} is-at {iface.mac}")
            rep = arp.ARPPacket(arp.REPLY, iface.mac, p.target_ip, p.sender_mac, p.sender_ip)
            self.l2_xmit(iface, _ETH.pack(p.sender_mac, iface.mac, ETH_P_ARP) + arp.build(rep), now)

    # ------------------------------------------------------- local delivery

    def local_in(self, iface: Interface, pkt: bytearray, now: float) -> None:
        if pkt[6] & 0x3F or pkt[7]:
            whole = self.reassemble(iface, pkt, now)
            if whole is None:
                return
            pkt = whole
        nf = self.netfilter
        if nf is not None:
            verdict = nf.input(pkt, iface.name, now)
            if verdict != ACCEPT:
                self._nf_refused(iface, pkt, verdict, now)
                return
        proto = pkt[9]
        hlen = (pkt[0] & 0x0F) << 2
        if proto == ipv4.PROTO_UDP:
            self._udp_rcv(iface, pkt, hlen, now)
        elif proto == ipv4.PROTO_TCP:
            self._tcp_rcv(iface, pkt, hlen, now)
        elif proto == ipv4.PROTO_ICMP:
            self._icmp_rcv(iface, pkt, hlen, now)
        else:
            self.icmp_send(pkt, icmp.DEST_UNREACH, icmp.PROTO_UNREACH, now)
            self.drop(now, iface, Drop.PROTO_UNREACHABLE, f"protocol {proto}")

    def _udp_rcv(self, iface: Interface, pkt: bytearray, hlen: int, now: float) -> None:
        n = len(pkt) - hlen
        if n < 8:
            self.drop(now, iface, Drop.MALFORMED, f"udp: {n} bytes")
            return
        sport, dport, length, csum = _UDP_HDR.unpack_from(pkt, hlen)
        if length < 8 or length > n:
            self.drop(now, iface, Drop.MALFORMED, f"udp: length {length} with {n} bytes")
            return
        mv = memoryview(pkt)
        if csum:
            init = pseudo_header_sum(bytes(pkt[12:16]), bytes(pkt[16:20]), 17, length)
            if internet_checksum(mv[hlen : hlen + length], init) != 0:
                self.drop(now, iface, Drop.MALFORMED, "udp: bad checksum")
                return
        dst = bytes(pkt[16:20])
        sock = self.udp_sockets.get((dst, dport)) or self.udp_sockets.get((ANY.packed, dport))
        if sock is None:
            self.icmp_send(pkt, icmp.DEST_UNREACH, icmp.PORT_UNREACH, now)
            self.drop(now, iface, Drop.PORT_UNREACHABLE, f"udp port {dport}")
            return
        src = self.address(bytes(pkt[12:16]))
        if sock.deliver(bytes(mv[hlen + 8 : hlen + length]), (src, sport)):
            if self._tracer.enabled:
                self.trace(now, "", "deliver", f"udp socket :{dport} ({length - 8} bytes)")
        else:
            self.drop(now, iface, Drop.SOCKET_BUFFER_FULL, f"udp port {dport}")

    def _tcp_rcv(self, iface: Interface, pkt: bytearray, hlen: int, now: float) -> None:
        src, dst = bytes(pkt[12:16]), bytes(pkt[16:20])
        try:
            hdr, payload = tcp.parse(
                memoryview(pkt)[hlen:], verify_with=(IPv4Address(src), IPv4Address(dst))
            )
        except MalformedFrame as exc:
            self.drop(now, iface, Drop.MALFORMED, exc.reason)
            return
        conn = self.tcp_conns.get((dst, hdr.dport, src, hdr.sport))
        if conn is not None:
            conn.receive(hdr, payload, now)
            if self._tracer.enabled:
                self.trace(now, "", "deliver", f"tcp socket :{hdr.dport} [{hdr.flag_names}]")
            self.tcp_flush(conn, now)
            return
        listener = self.tcp_listeners.get((dst, hdr.dport)) or self.tcp_listeners.get(
            (ANY.packed, hdr.dport)
        )
        if listener is not None and hdr.flags & tcp.SYN and not hdr.flags & (tcp.ACK | tcp.RST):
            route = self.routes.lookup(src)
            mtu = route.dev.mtu if route is not None and src not in self.local else 65535
            new = listener.receive_syn(
                IPv4Address(src), IPv4Address(dst), hdr, now, self.node.tcp_iss(), mss=mtu - 40
            )
            if new is not None:
                self.tcp_conns[(dst, hdr.dport, src, hdr.sport)] = new
                new.on_output = self._flusher(new)
                if self._tracer.enabled:
                    self.trace(now, "", "deliver", f"tcp listener :{hdr.dport} [SYN]")
                self.tcp_flush(new, now)
            return

        rst = rst_for(hdr, len(payload), IPv4Address(dst), IPv4Address(src))
        self.drop(now, iface, Drop.TCP_NO_LISTENER, f"tcp port {hdr.dport}")
        if rst is not None:
            self.ip_send_local(6, IPv4Address(dst), IPv4Address(src), rst, now, df=True)

    def tcp_flush(self, conn: TCPConnection, now: float) -> None:
        """Send what a TCP connection has queued; forget it once it is closed."""
        for seg in conn.segments_to_send():
            self.ip_send_local(6, conn.local_ip, conn.remote_ip, seg, now, df=True, owner=conn)
        if conn.state.name == "CLOSED":
            key = (conn.local_ip.packed, conn.local_port, conn.remote_ip.packed, conn.remote_port)
            if self.tcp_conns.get(key) is conn:
                del self.tcp_conns[key]
                self._release_tcp_port(conn)

    def _release_tcp_port(self, conn: TCPConnection) -> None:
        if self._tcp_owned.pop(conn.key, None) is not None:
            self.unbind_port(6, (conn.local_ip, conn.local_port))

    def _flusher(self, conn: TCPConnection) -> Callable[[], None]:
        """``on_output`` for a connection: an app call queued segments, send them now."""

        def flush() -> None:
            self.tcp_flush(conn, conn.now)

        return flush

    def _icmp_rcv(self, iface: Interface, pkt: bytearray, hlen: int, now: float) -> None:
        mv = memoryview(pkt)[hlen:]
        if len(mv) < 8:
            self.drop(now, iface, Drop.MALFORMED, f"icmp: {len(mv)} bytes")
            return
        if internet_checksum(mv) != 0:
            self.drop(now, iface, Drop.MALFORMED, "icmp: bad checksum")
            return
        typ = mv[0]
        src = IPv4Address(bytes(pkt[12:16]))
        if typ == icmp.ECHO_REQUEST:
            dst = bytes(pkt[16:20])
            if dst == BROADCAST_IP:
                return  # icmp_echo_ignore_broadcasts=1
            reply = bytearray(mv)
            reply[0] = icmp.ECHO_REPLY
            reply[2:4] = b"\x00\x00"
            _U16.pack_into(reply, 2, internet_checksum(reply))
            if self._tracer.enabled:
                self.trace(now, "", "deliver", "icmp echo request: replying")
            # the kernel's ICMP socket sends with IP_PMTUDISC_DONT: big replies fragment
            self.ip_send_local(1, IPv4Address(dst), src, bytes(reply), now, df=False)
        elif typ == icmp.ECHO_REPLY:
            ident, seq = _PORTS.unpack_from(mv, 4)
            sock = self.ping_sockets.get(ident)
            if sock is None:
                self.drop(now, iface, "no ping socket", f"id {ident}")
                return
            if self._tracer.enabled:
                self.trace(now, "", "deliver", f"icmp echo reply id {ident} seq {seq}")
            sock.reply_received(seq, src, pkt[8], len(mv) - 8, now)
        elif typ in (icmp.DEST_UNREACH, icmp.TIME_EXCEEDED):
            self._icmp_error_rcv(iface, src, mv, now)
        else:
            self.drop(now, iface, "icmp type not handled", str(typ))

    def _icmp_error_rcv(
        self, iface: Interface, offender: IPv4Address, mv: memoryview, now: float
    ) -> None:
        typ, code = mv[0], mv[1]
        mtu = _U16.unpack_from(mv, 6)[0]
        inner = mv[8:]
        if len(inner) < 28 or inner[0] >> 4 != 4:
            self.drop(now, iface, Drop.MALFORMED, "icmp error: quoted packet too short")
            return
        ihl = (inner[0] & 0x0F) << 2
        if len(inner) < ihl + 8:
            self.drop(now, iface, Drop.MALFORMED, "icmp error: quoted packet too short")
            return
        proto = inner[9]
        isrc, idst = bytes(inner[12:16]), bytes(inner[16:20])
        target: Any = None
        sport = dport = 0
        seq = -1
        if proto == ipv4.PROTO_UDP:
            sport, dport = _PORTS.unpack_from(inner, ihl)
            target = self.udp_sockets.get((isrc, sport)) or self.udp_sockets.get(
                (ANY.packed, sport)
            )
        elif proto == ipv4.PROTO_ICMP:
            ident, seq = _PORTS.unpack_from(inner, ihl + 4)
            target = self.ping_sockets.get(ident)
        elif proto == ipv4.PROTO_TCP:
            sport, dport = _PORTS.unpack_from(inner, ihl)
            target = self.tcp_conns.get((isrc, sport, idst, dport))
        ev = SocketErrorEvent(
            errno_for(typ, code),
            typ,
            code,
            offender,
            IPv4Address(idst),
            mtu,
            now,
            sport,
            dport,
            seq,
        )
        if target is None:
            self.drop(now, iface, "icmp error for no socket", str(ev))
            return
        if self._tracer.enabled:
            self.trace(now, "", "deliver", f"icmp error to socket: {ev}")
        if proto == ipv4.PROTO_TCP:
            target.icmp_error(ev.errno_name, now, ev.mtu)
            self.tcp_flush(target, now)
        else:
            target.error_received(ev)

    # ---------------------------------------------------------- ICMP errors

    def icmp_send(
        self, offending: bytearray, typ: int, code: int, now: float, *, mtu: int = 0
    ) -> None:
        """Send an ICMP error about ``offending`` back to its source (RFC 1812 4.3.2.7)."""
        if len(offending) < 20:
            return
        if offending[6] & 0x1F or offending[7]:
            return  # never for a non-first fragment
        src = bytes(offending[12:16])
        odst = bytes(offending[16:20])
        if src == b"\x00\x00\x00\x00" or src[0] >= 224 or src in self._broadcasts:
            return
        if odst[0] >= 224 or odst == BROADCAST_IP or odst in self._broadcasts:
            return  # RFC 1812 4.3.2.7: never about multicast or broadcast datagrams
        if offending[9] == ipv4.PROTO_ICMP:
            hlen = (offending[0] & 0x0F) << 2
            if len(offending) > hlen and offending[hlen] in icmp.ERROR_TYPES:
                return  # never about an ICMP error
        msg = icmp.error(typ, code, offending, mtu)
        dst = bytes(offending[16:20])
        from_addr = IPv4Address(dst) if dst in self.local else None
        if self._tracer.enabled:
            self.trace(
                now,
                "",
                "icmp error",
                f"type {typ} code {code} to {IPv4Address(src)}" + (f" mtu {mtu}" if mtu else ""),
            )
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
    ) -> None:
        """Route and send a locally generated packet (``ip_queue_xmit``).

        Errors a real ``sendto`` would return raise :class:`SocketError`
        when ``owner`` is a socket; otherwise they are dropped with a reason.
        """
        dpk = dst.packed
        if dpk in self.local or dst.is_loopback:
            dev = self.local.get(dpk) or self.interfaces["lo"]
            s = src or dst
            pkt = ipv4.build_fast(
                s.packed, dpk, proto, payload, ttl=ttl, ident=self.node.next_ident(), df=df
            )
            nf = self.netfilter
            if nf is not None:
                verdict = nf.output(pkt, now)
                if verdict != ACCEPT:
                    self._nf_refused(dev, pkt, verdict, now)
                    return
            lo = self.interfaces["lo"]
            self._count_tx(lo, pkt, now)
            if self._tracer.enabled:
                self.trace(now, "lo", "tx", describe(pkt))
            self.node.enqueue(self.rx_packet, lo, pkt, now)
            return
        route = self.routes.lookup(dpk)
        if route is None:
            if owner is not None and not hasattr(owner, "state"):
                raise SocketError("ENETUNREACH", f"no route to {dst} in {self.name}")
            self.drop(now, None, Drop.NO_ROUTE, f"to {dst}")
            return
        if src is None:
            src = route.src or self._source_for(route.dev, (route.via or dst).packed)
        pkt = ipv4.build_fast(
            src.packed, dpk, proto, payload, ttl=ttl, ident=self.node.next_ident(), df=df
        )
        if df and len(pkt) > route.dev.mtu and isinstance(owner, UDPSocket):
            raise SocketError("EMSGSIZE", f"message of {len(pkt)} bytes > mtu {route.dev.mtu}")
        nf = self.netfilter
        if nf is not None:
            verdict = nf.output(pkt, now)
            if verdict != ACCEPT:
                self._nf_refused(route.dev, pkt, verdict, now)
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

    # --------------------------------------------------------------- sockets

    def bind_port(
        self, proto: int, addr: IPv4Address, port: int, sock: Any
    ) -> tuple[IPv4Address, int]:
        if addr != ANY and addr.packed not in self.local:
            raise SocketError("EADDRNOTAVAIL", f"{addr} is not an address of {self.name}")
        if port == 0:
            port = self._ephemeral(proto)
        elif not 0 < port <= 0xFFFF:
            raise SocketError("EINVAL", f"port {port} out of range")
        owners = self._bound.setdefault((proto, port), [])
        if owners and (addr.packed in owners or ANY.packed in owners or addr == ANY):
            raise SocketError("EADDRINUSE", f"port {port} is already in use in {self.name}")
        owners.append(addr.packed)
        if proto == 17:
            self.udp_sockets[(addr.packed, port)] = sock
        return addr, port

    def unbind_port(self, proto: int, local: tuple[IPv4Address, int]) -> None:
        addr, port = local
        owners = self._bound.get((proto, port))
        if owners and addr.packed in owners:
            owners.remove(addr.packed)
            if not owners:
                del self._bound[(proto, port)]
        if proto == 17:
            self.udp_sockets.pop((addr.packed, port), None)
        elif proto == 6:
            self.tcp_listeners.pop((addr.packed, port), None)

    def _ephemeral(self, proto: int) -> int:
        span = EPHEMERAL_HIGH - EPHEMERAL_LOW + 1
        start = self.node.random_port(EPHEMERAL_LOW, EPHEMERAL_HIGH)
        for i in range(span):
            port = EPHEMERAL_LOW + (start - EPHEMERAL_LOW + i) % span
            if (proto, port) not in self._bound:
                return port
        raise SocketError("EADDRINUSE", f"no free ephemeral port in {self.name}")

    def udp_socket(self) -> UDPSocket:
        return UDPSocket(self)

    def ping_socket(self, ident: int | None = None) -> PingSocket:
        if ident is None:
            ident = self.node.random_port(1, 0xFFFF)
            while ident in self.ping_sockets:
                ident = ident % 0xFFFF + 1
        elif ident in self.ping_sockets:
            raise SocketError("EADDRINUSE", f"ping id {ident} in use")
        sock = PingSocket(self, ident)
        self.ping_sockets[ident] = sock
        return sock

    def udp_send(
        self, sock: UDPSocket, data: bytes, dst: IPv4Address, dport: int, now: float
    ) -> None:
        assert sock.local is not None
        laddr, lport = sock.local
        src: IPv4Address | None = laddr if laddr != ANY else None
        if src is None:
            if dst.packed in self.local or dst.is_loopback:
                src = dst
            else:
                route = self.routes.lookup(dst.packed)
                if route is None:
                    raise SocketError("ENETUNREACH", f"no route to {dst} in {self.name}")
                src = route.src or self._source_for(route.dev, (route.via or dst).packed)

        seg = udp.build_fast(lport, dport, data, src.packed, dst.packed)
        if self._tracer.enabled:
            self.trace(now, "", "sendto", f"udp {src}:{lport} > {dst}:{dport} ({len(data)} bytes)")
        self.ip_send_local(17, src, dst, seg, now, ttl=sock.ttl, df=sock.df, owner=sock)

    def tcp_listen(
        self, port: int, addr: IPv4Address | str = ANY, backlog: int = 128
    ) -> TCPListener:

        a = IPv4Address(addr)
        self.bind_port(6, a, port, None)
        listener = TCPListener(a, port, backlog)
        self.tcp_listeners[(a.packed, port)] = listener
        return listener

    def tcp_connect(self, dst: IPv4Address | str, dport: int, now: float) -> TCPConnection:

        d = IPv4Address(dst)
        if d.packed in self.local or d.is_loopback:
            src = d
            mtu = self.interfaces["lo"].mtu
        else:
            route = self.routes.lookup(d.packed)
            if route is None:
                raise SocketError("ENETUNREACH", f"no route to {d} in {self.name}")
            src = route.src or self._source_for(route.dev, (route.via or d).packed)
            mtu = route.dev.mtu
        _, lport = self.bind_port(6, src, 0, None)
        conn = TCPConnection(
            src, lport, d, dport, mss=min(mtu, 65535) - 40, iss=self.node.tcp_iss(), now=now
        )
        self._tcp_owned[conn.key] = conn
        conn.on_output = self._flusher(conn)
        self.tcp_conns[(src.packed, lport, d.packed, dport)] = conn
        conn.connect(now)
        self.tcp_flush(conn, now)
        return conn

    # ------------------------------------------------------- fragmentation

    def reassemble(self, iface: Interface, pkt: bytearray, now: float) -> bytearray | None:
        """Add a fragment; the whole packet once complete (``ip_defrag``).

        As Linux: a fragment ending past 65535 bytes, overlapping another one
        (RFC 5722's rule, applied to IPv4 since Linux 4.19) or contradicting
        the known end discards the whole queue; queues hold at most
        ``ipfrag_high_thresh`` bytes per namespace (each fragment charged its data
        and :data:`FRAG_TRUESIZE`), oldest queue evicted first. Queues are kept in
        the order they started, so eviction and expiry look at the front only.
        """
        key = (bytes(pkt[12:16]), bytes(pkt[16:20]), (pkt[4] << 8) | pkt[5], pkt[9])
        hlen = (pkt[0] & 0x0F) << 2
        ff = (pkt[6] << 8) | pkt[7]
        offset = (ff & ipv4.FRAG_MASK) * 8
        more = bool(ff & ipv4.FLAG_MF)
        data = bytes(pkt[hlen:])
        end = offset + len(data)
        r = self._frags.get(key)
        if end + hlen > 0xFFFF or (more and len(data) % 8):
            self._frag_discard(key, r, iface, now, "fragment beyond 65535 bytes or misaligned")
            return None
        cost = len(data) + FRAG_TRUESIZE
        while self._frags and self._frag_bytes + cost > FRAG_HIGH_THRESH:
            old = next(iter(self._frags))
            if old == key:  # this queue alone fills the memory: it goes
                break
            self._frag_discard(old, self._frags[old], iface, now, "ipfrag_high_thresh")
        if self._frag_bytes + cost > FRAG_HIGH_THRESH:
            self._frag_discard(key, r, iface, now, "ipfrag_high_thresh")
            return None
        if r is None:
            r = self._frags[key] = _Reassembly(now)
        for off, seen in r.frags.items():
            if off < end and offset < off + len(seen) and (off, seen) != (offset, data):
                self._frag_discard(key, r, iface, now, "overlapping fragments")
                return None
        if (not more and r.total >= 0 and r.total != end) or (0 <= r.total < end):
            self._frag_discard(key, r, iface, now, "fragments disagree on the end")
            return None
        if offset not in r.frags:
            self._frag_bytes += cost
            r.size += cost
        r.frags[offset] = data
        if offset == 0:
            r.first = pkt
        if not more:
            r.total = end
        if r.total < 0 or r.first is None:
            return None
        pos = 0
        for off in sorted(r.frags):
            if off > pos:
                return None
            pos = max(pos, off + len(r.frags[off]))
        if pos < r.total:
            return None
        del self._frags[key]
        self._frag_bytes -= r.size
        body = bytearray(r.total)
        for off, data in r.frags.items():
            body[off : off + len(data)] = data[: max(0, r.total - off)]
        first = r.first
        fhlen = (first[0] & 0x0F) << 2
        whole = bytearray(first[:fhlen]) + body
        _U16.pack_into(whole, 2, len(whole))
        whole[6] &= 0x40  # keep DF, clear MF and offset
        whole[7] = 0
        whole[10:12] = b"\x00\x00"
        _U16.pack_into(whole, 10, internet_checksum(memoryview(whole)[:fhlen]))
        if self._tracer.enabled:
            self.trace(
                now, iface.name, "reassembled", f"{len(r.frags)} fragments, {len(whole)} bytes"
            )
        return whole

    def _frag_discard(
        self,
        key: tuple[bytes, bytes, int, int],
        r: _Reassembly | None,
        iface: Interface,
        now: float,
        why: str,
    ) -> None:
        if r is not None and self._frags.pop(key, None) is r:
            self._frag_bytes -= r.size
        self.drop(now, iface, Drop.MALFORMED, why)

    def expire_fragments(self, now: float) -> None:
        """Drop the queues older than ipfrag_time: the oldest are at the front."""
        frags = self._frags
        while frags:
            key = next(iter(frags))
            r = frags[key]
            if now - r.started < FRAG_TIMEOUT:
                break
            del frags[key]
            self._frag_bytes -= r.size
            # time exceeded only when this host was the destination (a router that
            # defragments for conntrack stays silent: frag_expire_skip_icmp)
            if r.first is not None and bytes(r.first[16:20]) in self.local:
                self.icmp_send(r.first, icmp.TIME_EXCEEDED, icmp.FRAG_REASSEMBLY_EXCEEDED, now)
            self.drop(now, None, Drop.REASSEMBLY_TIMEOUT, f"id {key[2]}")

    def close_all(self) -> None:
        """The namespace goes away (pod deleted): every socket is closed, TCP reset.

        Nothing is sent: the pod's interfaces are already gone, as when a
        network namespace is destroyed under its sockets.
        """
        for sock in list(self.udp_sockets.values()):
            sock.close()
        for ping in list(self.ping_sockets.values()):
            ping.close()
        for conn in list(self.tcp_conns.values()):
            conn.on_output = None
            conn.abort(conn.now)
            conn.segments_to_send()
        self.tcp_conns.clear()
        self.tcp_listeners.clear()
        self._tcp_owned.clear()
        self._bound.clear()
        for ip in list(self.neighbours):
            self._forget_neighbour(ip)
        self._frags.clear()
        self._frag_bytes = 0

    # ----------------------------------------------------------------- timers

    def get_timer(self) -> float | None:
        times: list[float] = []
        for n in self.neighbours.values():
            if n.state == "INCOMPLETE":
                times.append(n.updated + ARP_RETRANS)
            elif n.state in ("DELAY", "PROBE"):
                times.append(n.probe_at)
        if self._frags:  # the oldest queue expires first
            times.append(next(iter(self._frags.values())).started + FRAG_TIMEOUT)
        for conn in self.tcp_conns.values():
            t = conn.get_timer()
            if t is not None:
                times.append(t)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for n in list(self.neighbours.values()):
            if n.state == "INCOMPLETE" and now >= n.updated + ARP_RETRANS:
                if n.probes >= ARP_RETRIES:
                    queued, n.queue = list(n.queue), deque()
                    self._forget_neighbour(n.ip)
                    self.drop(now, n.dev, Drop.ARP_TIMEOUT, str(IPv4Address(n.ip)))
                    for pkt in queued:
                        self.icmp_send(pkt, icmp.DEST_UNREACH, icmp.HOST_UNREACH, now)
                else:
                    self._arp_request(n.dev, n.ip, now)
            elif n.state in ("DELAY", "PROBE") and now >= n.probe_at:
                if n.state == "PROBE" and n.probes >= ARP_RETRIES:
                    self._forget_neighbour(n.ip)  # FAILED: the next packet resolves anew
                    self.drop(now, n.dev, Drop.ARP_TIMEOUT, f"{IPv4Address(n.ip)} (probe)")
                    continue
                if n.state == "DELAY":
                    n.state = "PROBE"
                    n.probes = 0
                n.probe_at = now + ARP_RETRANS
                self._arp_request(n.dev, n.ip, now, unicast=n.mac)
        if self._frags:
            self.expire_fragments(now)
        for conn in list(self.tcp_conns.values()):
            t = conn.get_timer()
            if t is not None and now >= t:
                conn.handle_timer(now)
                self.tcp_flush(conn, now)

    # ----------------------------------------------------------------- views

    def neigh_delete(self, ip: IPv4Address, now: float) -> bool:
        """``ip neigh del``: forget an entry (the next packet resolves it again).
        Packets waiting for its resolution fail as on an ARP timeout."""
        n = self.neighbours.get(ip.packed)
        if n is None:
            return False
        queued, n.queue = list(n.queue), deque()
        self._forget_neighbour(ip.packed)
        if queued:
            self.drop(now, n.dev, Drop.ARP_TIMEOUT, f"{ip} (deleted)")
            for pkt in queued:
                self.icmp_send(pkt, icmp.DEST_UNREACH, icmp.HOST_UNREACH, now)
        return True

    def neigh_show(self, now: float) -> list[str]:
        """Lines like ``ip neigh show``."""
        out = []
        for n in self.neighbours.values():
            state = n.state
            if state == "REACHABLE" and now - n.updated > REACHABLE_TIME:
                state = "STALE"
            mac = f" lladdr {MAC(n.mac)}" if n.mac else ""
            out.append(f"{IPv4Address(n.ip)} dev {n.dev.name}{mac} {state}")
        return out


def fragment(pkt: bytearray, mtu: int) -> list[bytearray]:
    """Split an IPv4 packet into fragments that fit ``mtu`` (RFC 791 section 3.2)."""
    hlen = (pkt[0] & 0x0F) << 2
    header = pkt[:hlen]
    body = memoryview(pkt)[hlen:]
    chunk = ((mtu - hlen) // 8) * 8
    ff = (pkt[6] << 8) | pkt[7]
    base = ff & ipv4.FRAG_MASK
    last_mf = ff & ipv4.FLAG_MF
    out: list[bytearray] = []
    for start in range(0, len(body), chunk):
        part = body[start : start + chunk]
        frag = bytearray(header) + part
        more = start + chunk < len(body)
        flags = (ipv4.FLAG_MF if more or last_mf else 0) | (base + start // 8)
        _U16.pack_into(frag, 2, len(frag))
        _U16.pack_into(frag, 6, flags)
        frag[10:12] = b"\x00\x00"
        _U16.pack_into(frag, 10, internet_checksum(memoryview(frag)[:hlen]))
        out.append(frag)
    return out
