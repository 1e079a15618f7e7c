"""The machines of one internet process: the gateway and external hosts, as a
node of the real fabric. Sans-I/O.

Theory of operation
-------------------
In the in-memory :class:`~emunet.dataplane.fabric.Fabric` one
:class:`~emunet.dataplane.internet.Internet` holds every machine outside the
cluster. In a running fabric they live in one or more ``emunet-internet``
processes beside the node agents, each an :class:`InternetSite`: the hosts it
runs (by name), optionally the :class:`~emunet.dataplane.internet.Gateway`,
and the rules that carry their packets:

* a packet leaving on the **internet** segment goes to the host of this site
  that owns the next hop (the gateway's ``wan0`` and its LoadBalancer IPs, or
  an internet host); the internet exists only inside the site that runs the
  gateway, so a private node address is never reachable from it;
* a packet leaving on the **nodes** segment goes to the local owner of the next
  hop if there is one (the gateway and a node-network host of the same
  process), else it leaves the site as an
  :class:`~emunet.dataplane.actions.UnderlayPacket`, which the adapter sends on
  the node network's wire exactly as a node agent sends its own;
* what arrives from the wire is handed to the host that owns the address the
  datagram was sent to (:meth:`InternetSite.wire_received`).

Every external host runs the small apps of
:class:`~emunet.dataplane.internet.ExternalHost`: ``http`` on TCP 80 (a body
naming the client address it saw) and ``echo`` on TCP and UDP 7.

For the runtime, the control API and pod-shell the site answers like a
:class:`~emunet.dataplane.node.Node`: ``pods`` maps each host's name to the
host (``.ip``, ``.netns``), ``namespace(name)`` is that host's namespace, and
``take_actions`` / ``get_timer`` / ``handle_timer`` drive all of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Final

from emunet.cluster.kubeproxy import EndpointsMap, Service
from emunet.dataplane.actions import UnderlayPacket
from emunet.dataplane.internet import (
    INTERNET,
    NODES,
    ExternalHost,
    Gateway,
    Host,
    HostPacket,
    load_balancer_targets,
)
from emunet.dataplane.netns import Namespace
from emunet.dataplane.trace import Tracer
from emunet.errors import ConfigError

__all__ = ["APPS", "InternetSite"]

APPS: Final = ("http:80/tcp", "echo:7/tcp", "echo:7/udp")
"""What every external host serves."""

_DOC_NETS: Final = tuple(
    IPv4Network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
)
_MAX_ROUNDS: Final = 64  # local deliveries carried per take_actions (a loop between hosts ends)


class InternetSite:
    """The gateway (when ``gateway`` is given) and the hosts of one process."""

    def __init__(
        self,
        name: str,
        tracer: Tracer | None = None,
        *,
        node_network: IPv4Network | str,
        gateway: IPv4Address | str | None = None,
        gateway_via: IPv4Address | str | None = None,
        public: IPv4Interface | str = "198.51.100.1/24",
        seed: int = 0,
    ) -> None:
        self.name = name
        self.tracer = tracer or Tracer(enabled=False)
        self.seed = seed
        self.node_network = IPv4Network(node_network)
        self.actions: list[UnderlayPacket] = []
        self.undeliverable = 0
        self.pods: dict[str, Host] = {}
        self.gateway: Gateway | None = None
        if gateway is not None:
            gw = IPv4Address(gateway)
            self._on_node_network(gw, "--gateway")
            self.gateway = Gateway(
                self.tracer,
                inside=IPv4Interface(f"{gw}/{self.node_network.prefixlen}"),
                public=IPv4Interface(public),
                seed=seed,
            )
            self.pods[self.gateway.name] = self.gateway
            self.gateway_ip: IPv4Address | None = gw
        else:
            self.gateway_ip = IPv4Address(gateway_via) if gateway_via is not None else None
            if self.gateway_ip is not None:
                self._on_node_network(self.gateway_ip, "--gateway-ip")

    def _on_node_network(self, ip: IPv4Address, what: str) -> None:
        if ip not in self.node_network:
            raise ConfigError(f"{what}: {ip} is not on the node network {self.node_network}")

    # ------------------------------------------------------------ topology

    def add_host(self, name: str, ip: IPv4Address | str) -> ExternalHost:
        """A host on the node network (an address of it) or on the internet; it
        serves :data:`APPS`."""
        addr = IPv4Address(ip)
        if name in self.pods:
            raise ConfigError(f"host {name} already exists")
        if addr in self.node_network:
            segment = NODES
            if addr == self.node_network.network_address or addr == (
                self.node_network.broadcast_address
            ):
                raise ConfigError(f"host {name}: {addr} is not a host address")
            iface = IPv4Interface(f"{addr}/{self.node_network.prefixlen}")
        else:
            segment = INTERNET
            if self.gateway is None:
                raise ConfigError(
                    f"host {name}: {addr} is on the internet, which only a process running "
                    "the gateway (--gateway) has"
                )
            # the internet segment is public space (RFC 5737's documentation ranges,
            # which ipaddress calls private, are what the defaults use)
            if addr.is_private and not any(addr in n for n in _DOC_NETS):
                raise ConfigError(
                    f"host {name}: {addr} is neither on the node network "
                    f"{self.node_network} nor a public address"
                )
            iface = IPv4Interface(f"{addr}/24")
        for other in self.pods.values():
            if other.owns(segment, addr) is not None:
                raise ConfigError(f"host {name}: {addr} is already in use by {other.name}")
        host = ExternalHost(
            name,
            self.tracer,
            iface,
            segment=segment,
            gateway=self.gateway_ip if segment == NODES else None,
            seed=self.seed + 1 + len(self.pods),
        )
        host.serve_tcp(80, "http")
        host.serve_tcp(7, "echo")
        host.serve_udp_echo(7)
        self.pods[name] = host
        return host

    @property
    def node_ip(self) -> IPv4Address:
        """This site's first address on the node network (its control API's)."""
        for addr in self.wire_addresses():
            return addr
        raise ConfigError(f"{self.name}: no host on the node network")

    def wire_addresses(self) -> list[IPv4Address]:
        """The node-network addresses the site receives wire packets for."""
        out: list[IPv4Address] = []
        for host in self:
            for iface, segment in host.segments.items():
                if segment == NODES:
                    out.extend(a.ip for a in host.netns.interfaces[iface].addresses)
        return out

    def __iter__(self) -> Iterator[Host]:
        return iter(self.pods.values())

    def host_ip(self, host: Host) -> IPv4Address:
        if isinstance(host, ExternalHost):
            return host.ip
        assert isinstance(host, Gateway)
        return host.eth0.addresses[0].ip

    def segment_of(self, host: Host) -> str:
        return host.segments.get("eth0", NODES)

    # ------------------------------------------------- the node interface

    def namespace(self, name: str) -> Namespace:
        """A host's namespace; ``root`` is the gateway's (else the first host's)."""
        if name == "root" and self.pods:
            return (self.gateway or next(iter(self.pods.values()))).netns
        host = self.pods.get(name)
        if host is None:
            known = ", ".join(self.pods) or "none"
            raise ConfigError(f"no host {name!r} here (hosts: {known})")
        return host.netns

    def namespaces(self) -> list[Namespace]:
        return [h.netns for h in self]

    def wire_received(self, local: IPv4Address, packet: bytes, now: float) -> None:
        """A raw IPv4 packet from the wire, sent to ``local`` (an address of ours)."""
        for host in self:
            iface = host.owns(NODES, local)
            if iface is not None:
                host.receive(iface, packet, now)
                return
        self.undeliverable += 1

    def take_actions(self) -> list[UnderlayPacket]:
        """Run every host's queue, carry local deliveries, return what leaves."""
        for _round in range(_MAX_ROUNDS):
            moved = False
            for host in list(self):
                for action in host.take_actions():
                    moved = True
                    self._carry(host, action)
            if not moved:
                break
        out, self.actions = self.actions, []
        return out

    def _carry(self, host: Host, action: HostPacket) -> None:
        segment = host.segments.get(action.iface, "")
        for other in self:
            iface = other.owns(segment, action.next_hop)
            if iface is not None:
                other.receive(iface, action.packet, action.time)
                return
        if segment == NODES:
            self.actions.append(UnderlayPacket(action.next_hop, action.packet, action.time))
        else:
            self.undeliverable += 1

    def get_timer(self) -> float | None:
        times = [t for t in (h.get_timer() for h in self) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for host in self:
            t = host.get_timer()
            if t is not None and t <= now:
                host.handle_timer(now)

    # ---------------------------------------------------------- the cloud

    def set_services(
        self,
        services: Sequence[Service],
        endpoints: EndpointsMap,
        node_ips: Mapping[str, IPv4Address],
    ) -> int:
        """The cloud controller's sync of the load balancer; returns the number of
        LB IP:ports programmed (0 without a gateway here)."""
        if self.gateway is None:
            return 0
        targets = load_balancer_targets(services, endpoints, node_ips)
        self.gateway.set_load_balancers(targets)
        return len(targets)

    # ------------------------------------------------------------ dumps

    def counters(self) -> dict[str, dict[str, int]]:
        return {
            f"{h.name}/{iface.name}": iface.counters()
            for h in self
            for iface in h.netns.interfaces.values()
        }

    def drops(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for ns in self.namespaces():
            for reason, n in ns.drops.items():
                total[reason] = total.get(reason, 0) + n
        if self.undeliverable:
            total["no host owns the next hop"] = self.undeliverable
        return total

    def conntrack_listing(self, now: float) -> str:
        return self.gateway.conntrack_listing(now) if self.gateway is not None else ""

    def iptables_save(self) -> str:
        """The gateway's rules as ``iptables-save`` would print them."""
        gw = self.gateway
        if gw is None:
            return ""
        lines = ["*nat", ":PREROUTING ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]"]
        for t in sorted(gw.nat.vips.values(), key=lambda v: (int(v.ip), v.port)):
            proto = {6: "tcp", 17: "udp"}.get(t.proto, str(t.proto))
            n = len(t.targets)
            if not n:
                lines.append(
                    f"-A PREROUTING -d {t.ip}/32 -p {proto} -m {proto} --dport {t.port} "
                    f'-m comment --comment "{t.service} no healthy target" -j DROP'
                )
            for i, node in enumerate(t.targets):
                stat = f"-m statistic --mode nth --every {n - i} --packet 0 " if i < n - 1 else ""
                lines.append(
                    f"-A PREROUTING -d {t.ip}/32 -p {proto} -m {proto} --dport {t.port} "
                    f'-m comment --comment "{t.service}" {stat}'
                    f"-j DNAT --to-destination {node}:{t.node_port}"
                )
        lines.append(
            f"-A POSTROUTING -s {gw.nat.inside} -o {gw.nat.wan} -j MASQUERADE",
        )
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"


def lb_pool(text: str) -> list[IPv4Address]:
    """``198.51.100.10-198.51.100.99`` (or a CIDR): the cloud's LoadBalancer IPs."""
    try:
        if "-" in text:
            lo_text, hi_text = text.split("-", 1)
            lo, hi = IPv4Address(lo_text.strip()), IPv4Address(hi_text.strip())
        else:
            net = IPv4Network(text.strip())
            lo, hi = net.network_address, net.broadcast_address
    except ValueError:
        raise ConfigError(f"LB pool {text!r}: expected FIRST-LAST or a CIDR") from None
    if hi < lo:
        raise ConfigError(f"LB pool {text!r}: the last address is before the first")
    if int(hi) - int(lo) >= 65536:
        raise ConfigError(f"LB pool {text!r}: at most 65536 addresses")
    return [IPv4Address(i) for i in range(int(lo), int(hi) + 1)]


def choose_ingress(
    pool: Sequence[IPv4Address],
    used: set[IPv4Address],
    requested: IPv4Address | None,
) -> IPv4Address | None:
    """The cloud controller's choice for a LoadBalancer Service: the requested
    ``spec.loadBalancerIP`` when it is in the pool and free, else the lowest free
    address (None when the pool is exhausted or the request cannot be met)."""
    if requested is not None:
        return requested if requested in pool and requested not in used else None
    for ip in pool:
        if ip not in used:
            return ip
    return None
