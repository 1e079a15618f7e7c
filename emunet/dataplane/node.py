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

import heapq
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, Final

from emunet.cluster.kubeproxy import EndpointsMap, Service
from emunet.dataplane.actions import UnderlayPacket
from emunet.dataplane.br_netfilter import BrNetfilter
from emunet.dataplane.bridge import DEFAULT_AGEING, Bridge
from emunet.dataplane.interfaces import BRIDGE, DUMMY, TUN, UNDERLAY, VETH, Interface
from emunet.dataplane.machine import Machine
from emunet.dataplane.netfilter import Netfilter
from emunet.dataplane.netns import Namespace
from emunet.dataplane.overlay import DEFAULT_PORT, OVERHEAD, FlannelUDP
from emunet.dataplane.trace import Drop, Tracer
from emunet.errors import ConfigError
from emunet.packets import arp, ethernet
from emunet.packets.ethernet import ETH_P_ARP
from emunet.packets.mac import MAC

DEFAULT_NETWORK: Final = IPv4Network("10.244.0.0/16")
DEFAULT_SERVICE_CIDR: Final = IPv4Network("10.96.0.0/12")


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


class Node(Machine):
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
        self.node_ip = IPv4Address(node_ip)
        self.subnet = IPv4Network(subnet)
        self.network = IPv4Network(network)
        if not self.subnet.subnet_of(self.network):
            raise ConfigError(f"node {name}: subnet {self.subnet} is not inside {self.network}")
        super().__init__(name, tracer, random.Random(seed), strict)
        self.internal_errors = 0
        self._mac_seq = 0

        self.root = Namespace(self, "root", ip_forward=True)
        root = self.root
        # eth0: the node's link to the node network (docker network, loopback...)
        node_net = IPv4Network(node_network)
        self.eth0 = root.add_interface("eth0", UNDERLAY, mtu=underlay_mtu)
        self.eth0.driver = self.underlay_xmit
        root.add_address(self.eth0, IPv4Interface(f"{self.node_ip}/{node_net.prefixlen}"))
        if gateway is not None:
            root.add_route("0.0.0.0/0", self.eth0, via=gateway)
        # cni0: the bridge holding the subnet's gateway address
        self.gateway_ip = next(self.subnet.hosts())
        self.pod_mtu = pod_mtu if pod_mtu is not None else underlay_mtu - OVERHEAD
        self.cni0 = root.add_interface("cni0", BRIDGE, mac=self._new_mac(), mtu=self.pod_mtu)
        self.bridge = Bridge(self.cni0, root, trace=self._bridge_trace, ageing_time=ageing_time)
        root.add_address(self.cni0, IPv4Interface(f"{self.gateway_ip}/{self.subnet.prefixlen}"))
        # flannel0: TUN with the subnet's network address as /32, the Network routed to it
        self.flannel0 = root.add_interface("flannel0", TUN, mtu=underlay_mtu - OVERHEAD)
        self.flannel = FlannelUDP(
            self.subnet,
            self.node_ip,
            root=root,
            flannel0=self.flannel0,
            eth0=self.eth0,
            emit=self.actions.append,
            enqueue=self.enqueue,
            tracer=self.tracer,
            port=flannel_port,
        )
        root.add_address(self.flannel0, IPv4Interface(f"{self.subnet.network_address}/32"))
        root.add_route(self.network, self.flannel0)
        self.pods: dict[str, Pod] = {}
        # pods' deadlines, read again only for the namespaces marked since (timer_marks),
        # and a heap of them (an item whose deadline has moved since is skipped)
        self._pod_timers: dict[Namespace, float] = {}
        self._timer_heap: list[tuple[float, int, Namespace]] = []
        self._timer_pushes = 0
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
            self.bridge.nf_hook = BrNetfilter(
                self.netfilter,
                root,
                self.cni0,
                self.gateway_ip,
                forward=self.bridge.forward,
                enqueue=self.enqueue,
                tracer=self.tracer,
            ).hook
            if self.netfilter.mode == "ipvs":
                # IPVS mode binds every ClusterIP to this dummy device
                self.kube_ipvs0 = root.add_interface("kube-ipvs0", DUMMY)
            if flow_cache:
                root.enable_flows(self.netfilter)

    # --------------------------------------------------------- context API

    def _new_mac(self) -> MAC:
        self._mac_seq += 1
        return MAC(
            bytes((0x02, self.rng.randrange(256)))
            + self.rng.randbytes(3)
            + bytes((self._mac_seq & 0xFF,))
        )

    def step_failed(self, exc: Exception, args: tuple[Any, ...]) -> None:
        """A step raised: counted, and the packet dropped with reason ``internal error``."""
        self.internal_errors += 1
        now = args[-1] if args and isinstance(args[-1], float) else 0.0
        self.root.drop(now, None, Drop.INTERNAL_ERROR, repr(exc))

    # ------------------------------------------------------------ bridge glue

    def _bridge_trace(self, now: float, event: str, detail: str, iface: str) -> None:
        self.tracer.hop(now, self.name, "root", iface or "cni0", event, detail)

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

    def underlay_xmit(self, pkt: bytearray, next_hop: bytes, now: float) -> None:
        """eth0's driver: a packet for the node network leaves the node at ``now``."""
        self.actions.append(UnderlayPacket(IPv4Address(next_hop), pkt, now))

    # -------------------------------------------------------- entry points

    def overlay_received(
        self, src: tuple[str, int], payload: bytes | bytearray, now: float, *, defer: bool = False
    ) -> None:
        """A UDP datagram arrived on the flannel port (flanneld's ``udp_to_tun``).

        ``defer``: only queue it; the next :meth:`take_actions` (or ``process``)
        runs it together with whatever else arrived meanwhile, as one batch (what
        an adapter reads in one loop wakeup, a NAPI poll's worth).
        """
        self.enqueue(self.flannel.udp_to_tun, src, payload, now)
        if not defer:
            self.process()

    def underlay_received(
        self, packet: bytes | bytearray, now: float, *, defer: bool = False
    ) -> None:
        """An IPv4 packet arrived on eth0 from the node network (not the overlay);
        ``defer`` as for :meth:`overlay_received`."""
        self.enqueue(self.root.rx_packet, self.eth0, bytearray(packet), now)
        if not defer:
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
        self._pod_timers.pop(pod.netns, None)
        # its heap items go too, or the deleted namespace stays until its deadline
        heap = self._timer_heap
        heap[:] = [item for item in heap if item[2] is not pod.netns]
        heapq.heapify(heap)
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

    def _pod_deadline(self) -> float | None:
        """The pods' earliest deadline, the marked namespaces' read again: O(pods
        touched since the last read, log pods with a timer), not O(pods) per flush."""
        timers, heap, pods = self._pod_timers, self._timer_heap, self.pods
        for ns in self.timer_marks:
            pod = pods.get(ns.name)
            if pod is None or pod.netns is not ns:
                continue  # the root namespace (always read) or a deleted pod's
            t = ns.get_timer()
            if t is None:
                timers.pop(ns, None)
            elif timers.get(ns) != t:
                timers[ns] = t
                self._timer_pushes += 1
                heapq.heappush(heap, (t, self._timer_pushes, ns))
        self.timer_marks.clear()
        if len(heap) > 2 * len(timers) + 64:  # mostly moved deadlines: build it again
            heap[:] = [(t, i, ns) for i, (ns, t) in enumerate(timers.items())]
            heapq.heapify(heap)
            self._timer_pushes = len(heap)
        while heap and timers.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def get_timer(self) -> float | None:
        """The earliest deadline of the node: sometimes early (a cancelled timer),
        never late."""
        times: list[float] = []
        for t in (self._pod_deadline(), self.root.get_timer(), self.bridge.next_expiry()):
            if t is not None:
                times.append(t)
        if self.netfilter is not None:
            t = self.netfilter.get_timer()
            if t is not None:
                times.append(t)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:

        def run() -> None:
            self.root.handle_timer(now)
            self._pod_deadline()
            for ns in [ns for ns, t in self._pod_timers.items() if t <= now]:
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
