"""An in-memory fabric: N nodes, the links between them, and a fake clock.

The fabric plays the part the node agents and the real network play in a
deployment: it moves overlay datagrams and :class:`UnderlayPacket`
actions between nodes after a per-link delay, counted from the time each
action carries (the time the packet left its node), with optional random
loss, and fires node timers in time order. Everything is deterministic for a
seed.

    fab = Fabric(nodes=2, seed=1)
    a = fab.add_pod("node1", "a"); b = fab.add_pod("node2", "b")
    s = b.netns.udp_socket(); s.bind(port=5000)
    c = a.netns.udp_socket(); c.sendto(b"hi", (b.ip, 5000), fab.now)
    fab.run(1.0)

With :meth:`Fabric.add_internet` the fabric also carries the packets of an
emulated internet (:mod:`emunet.dataplane.internet`): a gateway at the nodes'
default route (the first address of the node network) and external hosts.
:meth:`Fabric.set_services` is kube-proxy's sync on every node plus the cloud
controller's (LoadBalancer IPs on the gateway).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from emunet.cluster.kubeproxy import EndpointsMap, Service
from emunet.dataplane.actions import OverlayDatagram, UnderlayPacket
from emunet.dataplane.internet import NODES, ExternalHost, Host, HostPacket, Internet
from emunet.dataplane.node import DEFAULT_NETWORK, Node, Pod
from emunet.dataplane.trace import Tracer
from emunet.errors import ConfigError


@dataclass
class Link:
    """One direction between two node IPs: one-way delay (s) and loss probability."""

    delay: float = 0.0001
    loss: float = 0.0
    up: bool = True
    sent: int = 0
    lost: int = 0


class Fabric:
    def __init__(
        self,
        nodes: int = 3,
        *,
        network: IPv4Network | str = DEFAULT_NETWORK,
        node_network: IPv4Network | str = "172.18.0.0/16",
        seed: int = 0,
        trace: bool = False,
        delay: float = 0.0001,
        loss: float = 0.0,
        strict: bool = True,
        **node_options: Any,
    ) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self.tracer = Tracer(enabled=trace)
        self.network = IPv4Network(network)
        self.node_network = IPv4Network(node_network)
        self.nodes: dict[str, Node] = {}
        self.by_ip: dict[IPv4Address, Node] = {}
        # an overlay datagram names its peer as the socket would, "ip": its peer and
        # link are found without parsing, formatting or hashing an IPv4Address (whose
        # hash formats a string); an underlay packet's next hop is hashed (by_ip)
        self._peers: dict[str, Node] = {}  # "ip" -> node
        self._addr: dict[str, str] = {}  # node name -> "ip"
        self.links: dict[tuple[str, str], Link] = {}  # by node names
        self.default_link = Link(delay=delay, loss=loss)
        self._events: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self._timer_at: dict[str, float] = {}
        self.undeliverable = 0
        self.seed = seed
        self.internet: Internet | None = None
        self.services: list[Service] = []
        self.endpoints: EndpointsMap = {}
        subnets = self.network.subnets(new_prefix=24)
        next(subnets)  # SubnetMin: flannel skips the first subnet
        hosts = self.node_network.hosts()
        gateway = next(hosts)
        self.gateway_ip = gateway
        for i in range(nodes):
            self.add_node(
                f"node{i + 1}",
                next(hosts),
                next(subnets),
                gateway=gateway,
                seed=seed * 1000 + i,
                strict=strict,
                **node_options,
            )

    # ----------------------------------------------------------- topology

    def add_node(self, name: str, ip: IPv4Address, subnet: IPv4Network, **options: Any) -> Node:
        if name in self.nodes:
            raise ConfigError(f"node {name} already exists")
        node = Node(
            name,
            ip,
            subnet,
            network=self.network,
            node_network=self.node_network,
            tracer=self.tracer,
            **options,
        )
        for other in self.nodes.values():
            other.set_lease(node.subnet, node.node_ip)
            node.set_lease(other.subnet, other.node_ip)
        self.nodes[name] = node
        self.by_ip[node.node_ip] = node
        self._addr[name] = str(node.node_ip)
        self._peers[self._addr[name]] = node
        return node

    def remove_lease(self, name: str) -> None:
        """The node's flannel lease disappears from every other node (etcd expiry)."""
        gone = self.nodes[name]
        for other in self.nodes.values():
            if other is not gone:
                other.remove_lease(gone.subnet)

    def node(self, name: str) -> Node:
        try:
            return self.nodes[name]
        except KeyError:
            raise ConfigError(f"no node {name!r}") from None

    def add_pod(self, node: str, name: str, **options: Any) -> Pod:
        pod = self.node(node).add_pod(name, now=self.now, **options)
        self._touch(self.node(node))
        return pod

    def pod(self, name: str) -> Pod:
        for node in self.nodes.values():
            if name in node.pods:
                return node.pods[name]
        raise ConfigError(f"no pod {name!r}")

    def node_of(self, pod: str) -> Node:
        for node in self.nodes.values():
            if pod in node.pods:
                return node
        raise ConfigError(f"no pod {pod!r}")

    def add_internet(self, *, public: str = "198.51.100.1/24") -> Internet:
        """The gateway (at the nodes' default route) with its NAT and load balancer."""
        if self.internet is not None:
            raise ConfigError("the fabric already has an internet")
        self.internet = Internet(
            self.tracer,
            node_network=self.node_network,
            gateway_ip=self.gateway_ip,
            public=public,
            seed=self.seed * 1000 + 999,
        )
        self.internet.set_services(self.services, self.endpoints, self._node_ips())
        return self.internet

    def add_host(self, name: str, ip: IPv4Address | str, **options: Any) -> ExternalHost:
        """An external host (see :meth:`Internet.add_host`); adds the internet if needed."""
        internet = self.internet or self.add_internet()
        return internet.add_host(name, ip, **options)

    def host(self, name: str) -> Host:
        if self.internet is not None:
            for h in self.internet:
                if h.name == name:
                    return h
        raise ConfigError(f"no host {name!r}")

    def set_services(self, services: list[Service], endpoints: EndpointsMap) -> None:
        """kube-proxy's sync on every node, and the cloud controller's on the gateway."""
        self.services, self.endpoints = list(services), endpoints
        for node in self.nodes.values():
            node.set_services(services, endpoints, self.now)
        if self.internet is not None:
            self.internet.set_services(services, endpoints, self._node_ips())
        self.flush()

    def _node_ips(self) -> dict[str, IPv4Address]:
        return {name: node.node_ip for name, node in self.nodes.items()}

    def link(self, src: str, dst: str) -> Link:
        """The link from node ``src`` to node ``dst`` (created on first use)."""
        key = (self.node(src).name, self.node(dst).name)
        if key not in self.links:
            d = self.default_link
            self.links[key] = Link(d.delay, d.loss)
        return self.links[key]

    def set_links(self, *, delay: float | None = None, loss: float | None = None) -> None:
        """Set delay/loss on every link, both directions (and the default)."""
        names = list(self.nodes)
        for link in [self.default_link] + [self.link(a, b) for a in names for b in names if a != b]:
            if delay is not None:
                link.delay = delay
            if loss is not None:
                link.loss = loss

    # ---------------------------------------------------------- event loop

    def schedule(self, at: float, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, self._seq, fn, args))

    def _touch(self, node: Node) -> None:
        """Collect a node's actions and (re)arm its timer."""
        for action in node.take_actions():
            if isinstance(action, UnderlayPacket):
                self._carry(node, self.by_ip.get(action.next_hop), action.next_hop, action)
            else:
                self._carry(node, self._peers.get(action[0][0]), None, action)
        self._arm(node)

    def _touch_host(self, host: Host) -> None:
        for action in host.take_actions():
            self._carry_host(host, action)
        self._arm(host)

    def _arm(self, who: Node | Host) -> None:
        """(Re)arm the timer of a node or host when it is due sooner than armed."""
        t = who.get_timer()
        if t is not None and (self._timer_at.get(who.name) is None or t < self._timer_at[who.name]):
            self._timer_at[who.name] = t
            self.schedule(max(t, self.now), self._fire_timer, who)

    def _carry_host(self, host: Host, action: HostPacket) -> None:
        """A host's packet: to the owner of the next hop on the interface's segment."""
        segment = host.segments.get(action.iface, "")
        link = self.default_link
        link.sent += 1
        if link.loss and self.rng.random() < link.loss:
            link.lost += 1
            return
        at = max(self.now, action.time) + link.delay
        if segment == NODES:
            node = self.by_ip.get(action.next_hop)
            if node is not None:
                self.schedule(at, node.underlay_received, bytes(action.packet))
                return
        assert self.internet is not None
        owner = self.internet.resolve(segment, action.next_hop)
        if owner is None:
            self.undeliverable += 1
            return
        self.schedule(at, owner[0].receive, owner[1], bytes(action.packet))

    def _carry(
        self,
        src: Node,
        dst: Node | None,
        hop: IPv4Address | None,
        action: OverlayDatagram | UnderlayPacket,
    ) -> None:
        """A node's packet to node ``dst``; else, on the node network (``hop``, an
        :class:`UnderlayPacket`'s next hop), to the internet host that has it."""
        sent = action.time if isinstance(action, UnderlayPacket) else action[2]
        sent = max(self.now, sent)
        if dst is None:
            owner = (
                self.internet.resolve(NODES, hop)
                if self.internet is not None and hop is not None
                else None
            )
            if owner is None:
                self.undeliverable += 1
                return
            assert isinstance(action, UnderlayPacket)
            self.schedule(
                sent + self.default_link.delay, owner[0].receive, owner[1], bytes(action.packet)
            )
            return
        link = self.links.get((src.name, dst.name)) or self.default_link
        link.sent += 1
        if not link.up or (link.loss and self.rng.random() < link.loss):
            link.lost += 1
            return
        if isinstance(action, UnderlayPacket):
            self.schedule(sent + link.delay, dst.underlay_received, bytes(action.packet))
        else:
            (_, port), payload, _ = action
            self.schedule(
                sent + link.delay,
                dst.overlay_received,
                (self._addr[src.name], port),
                bytes(payload),
            )

    def _fire_timer(self, node: Node | Host, now: float) -> None:
        t = self._timer_at.get(node.name)
        if t is not None and t <= now:
            del self._timer_at[node.name]
            node.handle_timer(now)

    def flush(self) -> None:
        """Collect what socket calls made since the last step queued on the nodes."""
        for node in self.nodes.values():
            self._touch(node)
        if self.internet is not None:
            for host in self.internet:
                self._touch_host(host)

    def run(
        self,
        duration: float = 1.0,
        *,
        until: Callable[[], bool] | None = None,
        max_events: int = 10_000_000,
    ) -> int:
        """Advance fake time by ``duration`` (or until ``until()`` holds); returns events run."""
        end = self.now + duration
        self.flush()
        count = 0
        events = self._events
        while events and events[0][0] <= end and count < max_events:
            at, _, fn, args = heapq.heappop(events)
            self.now = max(self.now, at)
            fn(*args, self.now)
            count += 1
            # callbacks (apps) may have sent on any node: collect everywhere
            self.flush()
            if until is not None and until():
                return count
        if until is None or not until():
            self.now = max(self.now, end)
        return count

    def run_until(self, cond: Callable[[], bool], timeout: float = 60.0) -> bool:
        """Run until ``cond()`` is true or ``timeout`` seconds of fake time pass."""
        self.flush()
        if cond():
            return True
        self.run(timeout, until=cond)
        return cond()
