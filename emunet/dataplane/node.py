"""One Kubernetes node's network, sans-I/O.

Theory of operation
-------------------
A :class:`Node` holds the root namespace and one namespace per pod, wired the
way flannel + the CNI bridge plugin wire a real node::

    pod netns: eth0 (pod IP/24, default via cni0's address)
        |  veth pair
    root netns: vethXXXXXXXX -- cni0 (bridge, subnet gateway .1/24)
                flannel0 (TUN, subnet network /32, Network/16 routed here)
                eth0 (node IP on the node network, default route)

Entry points take ``now`` and return nothing; everything they cause runs to
completion on the node's internal FIFO (so a frame crossing five devices is
five queue steps, not five nested calls) and what must leave the node is
appended to :attr:`Node.actions`: an overlay datagram (flanneld's UDP send
to a peer node, a plain tuple) or an :class:`UnderlayPacket` (anything else leaving
``eth0``). The adapter calls :meth:`take_actions` and performs them, and
drives time through :meth:`get_timer` / :meth:`handle_timer`.

A node in ``strict`` mode lets internal errors propagate (tests); otherwise
an unexpected exception while processing a packet is counted and the packet
dropped with reason ``internal error``, so one bad packet never stops a node.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from emunet.cluster.kubeproxy import EndpointsMap, Service
from emunet.dataplane.actions import Action, UnderlayPacket
from emunet.dataplane.bridge import DEFAULT_AGEING, Bridge
from emunet.dataplane.interfaces import BRIDGE, DUMMY, TUN, UNDERLAY, VETH, Interface
from emunet.dataplane.lpm import PrefixMap
from emunet.dataplane.netfilter import Netfilter, Verdict
from emunet.dataplane.netns import Namespace, describe, fragment
from emunet.dataplane.overlay import DEFAULT_PORT, OVERHEAD, FlannelUDP, Lease
from emunet.dataplane.trace import Drop, Tracer
from emunet.errors import ConfigError
from emunet.packets import arp, ethernet, icmp, ipv4, udp
from emunet.packets.ethernet import ETH_P_ARP
from emunet.packets.mac import MAC

DEFAULT_NETWORK = IPv4Network("10.244.0.0/16")
DEFAULT_SERVICE_CIDR = IPv4Network("10.96.0.0/12")


@dataclass
class Pod:
    """A pod: one network namespace shared by its containers (the pause container's)."""

    name: str
    namespace: str
    netns: Namespace
    ip: IPv4Address
    mac: MAC
    veth: str
    containers: tuple[str, ...] = ("app",)
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def eth0(self) -> Interface:
        return self.netns.interfaces["eth0"]


class Node:
    """A node's data plane: root namespace, pods, cni0, flannel0, eth0."""

    def __init__(
        self,
        name: str,
        node_ip: IPv4Address | str,
        subnet: IPv4Network | str,
        *,
        network: IPv4Network | str = DEFAULT_NETWORK,
        node_network: IPv4Network | str = "172.18.0.0/16",
        gateway: IPv4Address | str | None = None,
        tracer: Tracer | None = None,
        underlay_mtu: int = 1500,
        pod_mtu: int | None = None,
        flannel_port: int = DEFAULT_PORT,
        ageing_time: float = DEFAULT_AGEING,
        service_cidr: IPv4Network | str = DEFAULT_SERVICE_CIDR,
        proxy_mode: str = "iptables",
        ipvs_scheduler: str = "rr",
        conntrack_max: int = 262144,
        netfilter: bool = True,
        flow_cache: bool = True,
        seed: int | None = None,
        strict: bool = False,
    ) -> None:
        self.name = name
        self.node_ip = IPv4Address(node_ip)
        self.subnet = IPv4Network(subnet)
        self.network = IPv4Network(network)
        if not self.subnet.subnet_of(self.network):
            raise ConfigError(f"node {name}: subnet {self.subnet} is not inside {self.network}")
        self.tracer = tracer or Tracer()
        self.strict = strict
        self.rng = random.Random(seed)
        self.actions: list[Action] = []
        self.internal_errors = 0
        self.queue: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._running = False
        self._ident = self.rng.randrange(0x10000)
        self._mac_seq = 0

        self.root = Namespace(self, "root", ip_forward=True)
        root = self.root
        # eth0: the node's link to the node network (docker network, loopback...)
        node_net = IPv4Network(node_network)
        self.eth0 = root.add_interface("eth0", UNDERLAY, mtu=underlay_mtu)
        root.add_address(self.eth0, IPv4Interface(f"{self.node_ip}/{node_net.prefixlen}"))
        if gateway is not None:
            root.add_route("0.0.0.0/0", self.eth0, via=gateway)
        # cni0: the bridge holding the subnet's gateway address
        self.gateway_ip = next(self.subnet.hosts())
        self.pod_mtu = pod_mtu if pod_mtu is not None else underlay_mtu - OVERHEAD
        self.cni0 = root.add_interface("cni0", BRIDGE, mac=self._new_mac(), mtu=self.pod_mtu)
        assert self.cni0.mac is not None
        self.bridge = Bridge(
            "cni0",
            self.cni0.mac,
            deliver=self._bridge_deliver,
            local=self._bridge_local,
            trace=self._bridge_trace,
            tracer=self.tracer,
            ageing_time=ageing_time,
        )
        self.cni0.bridge = self.bridge
        root.add_address(self.cni0, IPv4Interface(f"{self.gateway_ip}/{self.subnet.prefixlen}"))
        # flannel0: TUN with the subnet's network address as /32, the Network routed to it
        self.flannel = FlannelUDP(self.subnet, flannel_port)
        self.flannel0 = root.add_interface("flannel0", TUN, mtu=underlay_mtu - OVERHEAD)
        root.add_address(self.flannel0, IPv4Interface(f"{self.subnet.network_address}/32"))
        root.add_route(self.network, self.flannel0)
        self.pods: dict[str, Pod] = {}
        self._ip_owner: dict[IPv4Address, str] = {}
        # netfilter in the root namespace: conntrack, kube-proxy's rules, flannel's ip-masq
        self.service_cidr = IPv4Network(service_cidr)
        self.netfilter: Netfilter | None = None
        self.kube_ipvs0: Interface | None = None
        if netfilter:
            self.netfilter = Netfilter(
                name,
                self.tracer,
                cluster_cidr=self.network,
                service_cidr=self.service_cidr,
                local_addresses={
                    self.node_ip,
                    self.gateway_ip,
                    self.subnet.network_address,
                    IPv4Address("127.0.0.1"),
                },
                rng=random.Random(self.rng.random()),
                pod_subnet=self.subnet,
                conntrack_max=conntrack_max,
                mode=proxy_mode,
                ipvs_scheduler=ipvs_scheduler,
            )
            root.netfilter = self.netfilter
            self.bridge.nf_hook = self._br_netfilter
            if self.netfilter.mode == "ipvs":
                # IPVS mode binds every ClusterIP to this dummy device
                self.kube_ipvs0 = root.add_interface("kube-ipvs0", DUMMY)
            if flow_cache:
                root.flows = {}

    # --------------------------------------------------------- context API

    def _new_mac(self) -> MAC:
        self._mac_seq += 1
        return MAC(
            bytes((0x02, self.rng.randrange(256)))
            + self.rng.randbytes(3)
            + bytes((self._mac_seq & 0xFF,))
        )

    def next_ident(self) -> int:
        self._ident = (self._ident + 1) & 0xFFFF
        return self._ident

    def random_port(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def tcp_iss(self) -> int:
        return self.rng.randrange(1 << 32)

    def enqueue(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` after what is already queued (at the next :meth:`process`)."""
        self.queue.append((fn, args))

    def process(self) -> None:
        """Run the node's queue to completion.

        Entry points call it; after socket calls made by applications (which
        only queue work, so an app is never re-entered from inside its own
        call) the owner of the node calls it, as the fabric and the agent do.
        """
        if self._running:
            return
        self._running = True
        queue = self.queue
        strict = self.strict
        try:
            while queue:  # as _drain, inlined: every packet comes this way
                step, a = queue.popleft()
                if strict:
                    step(*a)
                    continue
                try:
                    step(*a)
                except Exception as exc:  # a bad packet must not stop a node
                    self._internal_error(exc, a)
        finally:
            self._running = False

    def run(self, fn: Callable[..., None], *args: Any) -> None:
        """``enqueue(fn, *args)`` then :meth:`process`, without the queue's round
        trip when it is idle and empty (the same order, one step less)."""
        if self._running or self.queue:
            self.queue.append((fn, args))
            self.process()
            return
        self._running = True
        try:
            if self.strict:
                fn(*args)
            else:
                try:
                    fn(*args)
                except Exception as exc:  # a bad packet must not stop a node
                    self._internal_error(exc, args)
            self._drain()
        finally:
            self._running = False

    def _drain(self) -> None:
        queue = self.queue
        strict = self.strict
        while queue:
            step, a = queue.popleft()
            if strict:
                step(*a)
                continue
            try:
                step(*a)
            except Exception as exc:  # a bad packet must not stop a node
                self._internal_error(exc, a)

    def _internal_error(self, exc: Exception, a: tuple[Any, ...]) -> None:
        self.internal_errors += 1
        now = a[-1] if a and isinstance(a[-1], float) else 0.0
        self.root.drop(now, None, "internal error", repr(exc))

    # ------------------------------------------------------------ bridge glue

    # The bridge hands frames on by direct calls: neither transmitting on a port
    # (the veth hop into a pod is queued) nor the root stack's receive can call
    # an app back synchronously, so no app is re-entered from its own call.

    def _bridge_deliver(self, port: Interface, frame: bytes | bytearray, now: float) -> None:
        self.root.l2_xmit(port, frame, now)

    def _bridge_local(self, frame: bytes | bytearray, now: float) -> None:
        self.root.rx_frame(self.cni0, frame, now)

    def _bridge_trace(self, now: float, event: str, detail: str, iface: str) -> None:
        self.tracer.hop(now, self.name, "root", iface or "cni0", event, detail)

    def _br_netfilter(
        self, port: Interface, frame: bytes | bytearray, now: float
    ) -> bytes | bytearray | None:
        """br_netfilter: an IPv4 frame bridged between pods crosses the iptables hooks.

        Kubernetes requires ``bridge-nf-call-iptables=1``: without it the reply
        of a same-node Service endpoint would skip conntrack's reverse DNAT.
        """
        nf = self.netfilter
        assert nf is not None
        pkt = bytearray(memoryview(frame)[14:])
        n = len(pkt)
        if n < 20 or pkt[0] >> 4 != 4 or (pkt[2] << 8 | pkt[3]) > n:
            return frame  # not for the hooks: the receiving stack drops it with a reason
        total = pkt[2] << 8 | pkt[3]
        if total < n:
            del pkt[total:]
        root, cni0 = self.root, self.cni0
        if not self.tracer.enabled and nf.fast_forward(pkt, now) is not None:
            return frame  # established, un-NATed: the hooks would change nothing
        fragmented = bool(pkt[6] & 0x3F or pkt[7])
        if fragmented:
            # nf_defrag: the hooks see whole packets; refragmented after POSTROUTING
            whole = root.reassemble(port, pkt, now)
            if whole is None:
                return None
            pkt = whole
        old_dst = bytes(pkt[16:20])
        verdict = nf.prerouting(pkt, "cni0", now)
        if verdict != Verdict.ACCEPT:
            root._nf_refused(port, pkt, verdict, now)
            return None
        if bytes(pkt[16:20]) != old_dst:
            # DNAT'd: no longer a bridging decision, the root namespace routes it
            self.enqueue(root.route_input, cni0, pkt, now)
            return None
        verdict = nf.forward(pkt, "cni0", "cni0", now)
        if verdict == Verdict.ACCEPT:
            verdict = nf.postrouting(pkt, "cni0", self.gateway_ip, now)
        if verdict != Verdict.ACCEPT:
            root._nf_refused(port, pkt, verdict, now)
            return None
        header = bytes(memoryview(frame)[:14])
        if not fragmented:
            return header + pkt
        pieces = fragment(pkt, cni0.mtu) if len(pkt) > cni0.mtu else [pkt]
        for piece in pieces:
            self.bridge.forward(port, header[:6], header + piece, now)
        return None

    def set_services(
        self, services: Sequence[Service], endpoints: EndpointsMap, now: float
    ) -> None:
        """kube-proxy's sync: program the Services and their endpoints on this node."""
        if self.netfilter is None:
            raise ConfigError(f"node {self.name} runs without netfilter: no kube-proxy")
        self.netfilter.set_services(services, endpoints, now)
        dummy = self.kube_ipvs0
        if dummy is not None:
            want = {s.cluster_ip for s in services} | {
                s.load_balancer_ip for s in services if s.load_balancer_ip is not None
            }
            have = {a.ip for a in dummy.addresses}
            for ip in sorted(have - want):
                self.root.remove_address(dummy, ip)
            for ip in sorted(want - have):
                self.root.add_address(dummy, IPv4Interface(f"{ip}/32"), connected=False)

    def conntrack_listing(self, now: float) -> str:
        """``conntrack -L`` output."""
        return self.netfilter.conntrack.listing(now) if self.netfilter else ""

    def iptables_save(self) -> str:
        return self.netfilter.iptables_save() if self.netfilter else ""

    # ------------------------------------------------------------- overlay

    def tun_xmit(self, dev: Interface, pkt: bytearray, now: float) -> None:
        """flanneld read a packet from flannel0 (``tun_to_udp``): route, then TTL."""
        lease = self.flannel.lookup(bytes(pkt[16:20]))
        if lease is None:
            self.flannel.no_lease += 1
            # written back into the TUN: arrives on flannel0 from the flannel0 address
            self._flannel_unreachable(pkt, now)
            self.root.drop(now, dev, Drop.FLANNEL_NO_LEASE, str(IPv4Address(bytes(pkt[16:20]))))
            return
        if not FlannelUDP.decrement_ttl(pkt):  # zero means discard, without ICMP
            self.flannel.ttl_drops += 1
            self.root.drop(
                now, dev, Drop.FLANNEL_TTL_ZERO, describe(pkt) if self.tracer.enabled else ""
            )
            return
        if self.tracer.enabled:
            self.root.trace(
                now,
                "flannel0",
                "encapsulate",
                f"udp {self.node_ip}:{self.flannel.port} > {lease.addr[0]}:{lease.addr[1]} "
                f"(lease {lease.subnet})",
            )
        eth0 = self.eth0
        if self.tracer.enabled:
            self.root.trace(
                now,
                "eth0",
                "tx",
                f"{self.node_ip} > {lease.public_ip}: udp 8285 > {lease.addr[1]}"
                f" len {len(pkt)} (flannel udp, inner {describe(pkt)})",
            )
        eth0.tx_packets += 1
        eth0.tx_bytes += len(pkt) + OVERHEAD
        if eth0.taps:
            outer = self._outer(self.node_ip, lease.public_ip, pkt)
            for tap in eth0.taps:
                tap(now, outer)
        self.actions.append((lease.addr, pkt))  # an overlay datagram

    def tun_flow_target(self) -> tuple[PrefixMap[Lease], Interface]:
        """For the flow cache's replay of :meth:`tun_xmit`: flanneld's lease table
        (a flow keeps its lease per version of it) and eth0."""
        return self.flannel.table, self.eth0

    def _flannel_unreachable(self, pkt: bytearray, now: float) -> None:
        """flanneld's ``send_net_unreachable``: never about any ICMP packet (not only
        errors) nor a non-first fragment; TTL 8, id 0, no DF; from flannel0's address."""
        if pkt[6] & 0x1F or pkt[7] or pkt[9] == ipv4.PROTO_ICMP:
            return
        msg = icmp.error(icmp.DEST_UNREACH, icmp.NET_UNREACH, pkt)
        src = self.subnet.network_address.packed
        reply = ipv4.build_fast(src, bytes(pkt[12:16]), ipv4.PROTO_ICMP, msg, ttl=8, df=False)
        self.enqueue(self.root.rx_packet, self.flannel0, reply, now)

    @staticmethod
    def _outer(src: IPv4Address, dst: IPv4Address, inner: bytes | bytearray) -> bytearray:
        """The underlay datagram as it appears on eth0 (for captures only)."""
        port = DEFAULT_PORT
        seg = udp.build_fast(port, port, inner, src.packed, dst.packed)
        return ipv4.build_fast(src.packed, dst.packed, ipv4.PROTO_UDP, seg, df=False)

    def underlay_xmit(self, dev: Interface, next_hop: bytes, pkt: bytearray, now: float) -> None:
        self.actions.append(UnderlayPacket(IPv4Address(next_hop), pkt))

    # -------------------------------------------------------- entry points

    def overlay_received(
        self, src: tuple[str, int], payload: bytes | bytearray, now: float
    ) -> None:
        """A UDP datagram arrived on the flannel port (flanneld's ``udp_to_tun``)."""
        n = len(payload)
        eth0 = self.eth0
        eth0.rx_packets += 1
        eth0.rx_bytes += n + OVERHEAD
        pkt = bytearray(payload)
        if eth0.taps:
            outer = self._outer(IPv4Address(src[0]), self.node_ip, pkt)
            for tap in eth0.taps:
                tap(now, outer)
        flannel0 = self.flannel0
        flannel = self.flannel
        if src[0] not in flannel.peers:  # a sender that holds no lease
            flannel.from_unknown += 1
            if not flannel.accept_unknown:
                self.root.drop(now, flannel0, Drop.OVERLAY_UNKNOWN_PEER, src[0])
                return
        if n < 20 or pkt[0] >> 4 != 4:
            self.root.drop(now, flannel0, Drop.MALFORMED, f"overlay payload of {n} bytes")
            return
        if n > flannel0.mtu:
            # flanneld reads into a buffer of flannel0's MTU: the rest is cut off and
            # the kernel drops what it writes into the TUN
            self.root.drop(
                now,
                flannel0,
                Drop.MALFORMED,
                f"overlay datagram of {n} bytes > flannel0 mtu {flannel0.mtu}",
            )
            return
        if self.tracer.enabled:
            self.root.trace(
                now,
                "eth0",
                "rx",
                f"{src[0]} > {self.node_ip}: udp {src[1]} > "
                f"{self.flannel.port} len {len(pkt)} (flannel udp)",
            )
            self.root.trace(now, "flannel0", "decapsulate", f"udp from {src[0]}:{src[1]}")
        if pkt[8] <= 1:  # flannel's decrement_ttl would reach zero: discard
            self.flannel.ttl_drops += 1
            self.root.drop(
                now,
                flannel0,
                Drop.FLANNEL_TTL_ZERO,
                describe(pkt) if self.tracer.enabled else "",
            )
            return
        root = self.root
        if root.flows is not None and not self.tracer.enabled and not flannel0.taps:
            # rx_packet's work (count, then ip_rcv) with the decrement left to
            # ip_rcv, to be done with FORWARD's (see its ``pending``)
            flannel0.rx_packets += 1
            flannel0.rx_bytes += n
            self.run(root.ip_rcv, flannel0, pkt, now, 1)
            return
        ipv4.decrement_ttl(pkt)
        self.run(root.rx_packet, flannel0, pkt, now)

    def underlay_received(self, packet: bytes | bytearray, now: float) -> None:
        """An IPv4 packet arrived on eth0 from the node network (not the overlay)."""
        self.enqueue(self.root.rx_packet, self.eth0, bytearray(packet), now)
        self.process()

    def inject(self, netns: str, iface: str, data: bytes | bytearray, now: float) -> None:
        """Hand raw bytes to any interface as if received there (tests, fuzzing)."""
        ns = self.root if netns == "root" else self.pods[netns].netns
        dev = ns.interfaces[iface]
        if dev.is_l2:
            self.enqueue(dev.receive, dev, bytes(data), now)
        else:
            self.enqueue(ns.rx_packet, dev, bytearray(data), now)
        self.process()

    def take_actions(self) -> list[Action]:
        """Run what is queued, then hand over what must leave the node."""
        self.process()
        out, self.actions = self.actions, []
        return out

    # ---------------------------------------------------------------- leases

    def set_lease(self, subnet: IPv4Network | str, public_ip: IPv4Address | str) -> None:
        """A peer's lease appeared (or changed): its subnet is reached via its PublicIP."""
        net = IPv4Network(subnet)
        if net == self.subnet:
            return
        self.flannel.set_lease(net, IPv4Address(public_ip))

    def remove_lease(self, subnet: IPv4Network | str) -> None:
        self.flannel.remove_lease(IPv4Network(subnet))

    # ------------------------------------------------------------------ pods

    def add_pod(
        self,
        name: str,
        *,
        namespace: str = "default",
        ip: IPv4Address | str | None = None,
        containers: Iterable[str] = ("app",),
        labels: dict[str, str] | None = None,
        now: float = 0.0,
    ) -> Pod:
        """CNI ADD: a namespace, a veth pair into cni0, an IP from the node's subnet."""
        if name in self.pods:
            raise ConfigError(f"pod {name} already exists on {self.name}")
        if name == "root":
            raise ConfigError("'root' is the node's own namespace, not a pod name")
        addr = IPv4Address(ip) if ip is not None else self._allocate_ip()
        if addr not in self.subnet or addr in (
            self.gateway_ip,
            self.subnet.broadcast_address,
            self.subnet.network_address,
        ):
            raise ConfigError(f"pod IP {addr} is not a usable address of {self.subnet}")
        if addr in self._ip_owner:
            raise ConfigError(f"pod IP {addr} is already used by {self._ip_owner[addr]}")
        ns = Namespace(self, name)
        mac = self._new_mac()
        eth0 = ns.add_interface("eth0", VETH, mac=mac, mtu=self.pod_mtu)
        ns.add_address(eth0, IPv4Interface(f"{addr}/{self.subnet.prefixlen}"))
        ns.add_route("0.0.0.0/0", eth0, via=self.gateway_ip)
        veth_name = "veth" + self.rng.randbytes(4).hex()
        veth = self.root.add_interface(veth_name, VETH, mac=self._new_mac(), mtu=self.pod_mtu)
        veth.enslave(self.cni0)
        eth0.peer, veth.peer = veth, eth0
        self.bridge.add_port(veth)
        pod = Pod(name, namespace, ns, addr, mac, veth_name, tuple(containers), dict(labels or {}))
        self.pods[name] = pod
        self._ip_owner[addr] = name
        # the CNI bridge plugin announces the new address with a gratuitous ARP: a
        # stale entry for a recycled IP (another pod's MAC) is corrected at once
        garp = arp.ARPPacket(arp.REQUEST, mac, addr, MAC.ZERO, addr)
        frame = ethernet.frame(MAC.BROADCAST, mac, ETH_P_ARP, arp.build(garp))
        self.enqueue(ns.l2_xmit, eth0, frame, now)
        self.process()
        return pod

    def remove_pod(self, name: str) -> None:
        """CNI DEL: the veth pair goes, the bridge forgets its port, the IP is free."""
        pod = self.pods.pop(name, None)
        if pod is None:
            raise ConfigError(f"no pod {name} on node {self.name}")
        veth = self.root.interfaces[pod.veth]
        self.bridge.remove_port(veth)
        self.root.remove_interface(pod.veth)
        self._ip_owner.pop(pod.ip, None)
        pod.eth0.up = False
        pod.netns.close_all()

    def _allocate_ip(self) -> IPv4Address:
        for host in self.subnet.hosts():
            if host != self.gateway_ip and host not in self._ip_owner:
                return host
        raise ConfigError(f"node {self.name}: subnet {self.subnet} has no free address")

    def namespace(self, name: str) -> Namespace:
        if name == "root":
            return self.root
        pod = self.pods.get(name)
        if pod is None:
            raise ConfigError(f"no pod or namespace {name!r} on node {self.name}")
        return pod.netns

    def namespaces(self) -> list[Namespace]:
        return [self.root, *(p.netns for p in self.pods.values())]

    # ---------------------------------------------------------------- timers

    def get_timer(self) -> float | None:
        times = [t for t in (ns.get_timer() for ns in self.namespaces()) if t is not None]
        expiry = self.bridge.next_expiry()
        if expiry is not None:
            times.append(expiry)
        if self.netfilter is not None:
            t = self.netfilter.get_timer()
            if t is not None:
                times.append(t)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:

        def run() -> None:
            for ns in self.namespaces():
                ns.handle_timer(now)
            self.bridge.age(now)
            if self.netfilter is not None:
                self.netfilter.handle_timer(now)

        self.enqueue(run)
        self.process()

    # ------------------------------------------------------------------ views

    def counters(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for ns in self.namespaces():
            for iface in ns.interfaces.values():
                out[f"{ns.name}/{iface.name}"] = iface.counters()
        return out

    def drops(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for ns in self.namespaces():
            for reason, n in ns.drops.items():
                total[reason] = total.get(reason, 0) + n
        return total
