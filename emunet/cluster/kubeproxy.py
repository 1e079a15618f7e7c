"""kube-proxy, iptables mode: Services and Endpoints in, netfilter rules out.

Pure data. Two outputs are built from the same Services and Endpoints:

* :func:`compile_services` gives the hash tables the data plane evaluates per
  packet (:class:`ServiceTable`): ``(proto, ip, port) -> ServicePortInfo`` for
  ClusterIPs and LoadBalancer IPs, ``(proto, node_port)`` for NodePorts. One
  lookup replaces the walk down KUBE-SERVICES, so a new connection costs O(1) in
  the number of Services (real iptables mode walks the chain: O(n)).
* :func:`emunet.cluster.iptables.build_ruleset` gives the rules kube-proxy
  writes, in its own words and in ``iptables-save``'s.

Names follow kube-proxy's ``proxier.go``: a service port's name string is
``namespace/name:port`` (``namespace/name`` when the port is unnamed); chain
suffixes are the first 16 characters of base32(sha256(name + protocol)) with the
protocol in lower case, and for KUBE-SEP the endpoint string ``ip:port`` is
appended to the hashed text. kube-proxy iterates a Go map, so its rule order
between Services is arbitrary; we sort by name string. Endpoints are sorted by
their ``ip:port`` string. Only ready endpoints are used (no terminating
fallback); loadBalancerSourceRanges, externalIPs, internalTrafficPolicy and
topology hints are not modelled.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address
from typing import Final

from emunet.errors import ConfigError

MASQ_MARK: Final = 0x4000
NODE_PORT_RANGE: Final = range(30000, 32768)
DEFAULT_AFFINITY_TIMEOUT: Final = 10800
MAX_AFFINITY_TIMEOUT: Final = 86400

PROTO_NUMBERS: Final = {"TCP": 6, "UDP": 17}


class ServiceType(StrEnum):
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"


class SessionAffinity(StrEnum):
    NONE = "None"
    CLIENT_IP = "ClientIP"


class TrafficPolicy(StrEnum):
    CLUSTER = "Cluster"
    LOCAL = "Local"


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One port of a Service; ``node_port`` 0 means none (ClusterIP type)."""

    name: str
    protocol: str
    port: int
    target_port: int
    node_port: int = 0


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    cluster_ip: IPv4Address
    ports: tuple[ServicePort, ...]
    type: ServiceType = ServiceType.CLUSTER_IP
    session_affinity: SessionAffinity = SessionAffinity.NONE
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    external_traffic_policy: TrafficPolicy = TrafficPolicy.CLUSTER
    load_balancer_ip: IPv4Address | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A backend of a Service. ``port`` None means the ServicePort's target_port;
    ``port_name`` selects which ServicePort it serves (EndpointSlice semantics)."""

    ip: IPv4Address
    node: str
    port: int | None = None
    ready: bool = True
    port_name: str = ""


EndpointsMap = Mapping[tuple[str, str], Sequence[Endpoint]]
"""Endpoints of each Service, keyed by ``(namespace, name)``."""


# --- names ------------------------------------------------------------------


def _hash16(text: str) -> str:
    # 16 base32 characters are exactly the first 10 bytes (80 bits) of the digest
    return base64.b32encode(hashlib.sha256(text.encode()).digest()[:10]).decode()


def service_port_name(namespace: str, name: str, port_name: str) -> str:
    """kube-proxy's ServicePortName.String()."""
    return f"{namespace}/{name}:{port_name}" if port_name else f"{namespace}/{name}"


def svc_chain(spn: str, protocol: str) -> str:
    """KUBE-SVC-*: the Cluster policy chain of a service port."""
    return "KUBE-SVC-" + _hash16(spn + protocol.lower())


def svl_chain(spn: str, protocol: str) -> str:
    """KUBE-SVL-*: the Local policy chain."""
    return "KUBE-SVL-" + _hash16(spn + protocol.lower())


def ext_chain(spn: str, protocol: str) -> str:
    """KUBE-EXT-*: external (NodePort / LoadBalancer) traffic."""
    return "KUBE-EXT-" + _hash16(spn + protocol.lower())


def sep_chain(spn: str, protocol: str, endpoint: str) -> str:
    """KUBE-SEP-*: one endpoint (``ip:port``) of a service port."""
    return "KUBE-SEP-" + _hash16(spn + protocol.lower() + endpoint)


def probability(n: int) -> str:
    """kube-proxy's ``%0.10f`` of 1/n, written on rule i of n as probability(n - i)."""
    return f"{1.0 / n:.10f}"


def statistic_threshold(n: int) -> int:
    """What the kernel stores for ``--probability probability(n)``: a 31-bit
    fraction; xt_statistic matches when ``random_u32 & 0x7FFFFFFF < threshold``."""
    return round(0x80000000 * float(probability(n)))


# --- validation -------------------------------------------------------------


def validate(services: Iterable[Service]) -> None:
    """Raise :class:`ConfigError` for what the API server would refuse."""
    seen_cluster: set[tuple[int, IPv4Address, int]] = set()
    seen_node: set[tuple[int, int]] = set()
    for svc in services:
        where = f"service {svc.namespace}/{svc.name}"
        if not svc.ports:
            raise ConfigError(f"{where}: at least one port is required")
        if not 0 < svc.affinity_timeout <= MAX_AFFINITY_TIMEOUT:
            raise ConfigError(
                f"{where}: sessionAffinityConfig timeout {svc.affinity_timeout} "
                f"outside 1..{MAX_AFFINITY_TIMEOUT}"
            )
        names = [p.name for p in svc.ports]
        if len(svc.ports) > 1 and ("" in names or len(set(names)) != len(names)):
            raise ConfigError(f"{where}: a multi-port service needs unique port names")
        for p in svc.ports:
            proto = PROTO_NUMBERS.get(p.protocol)
            if proto is None:
                raise ConfigError(f"{where}: protocol {p.protocol!r} (TCP or UDP)")
            if not (0 < p.port < 65536 and 0 < p.target_port < 65536):
                raise ConfigError(f"{where}: port {p.port}/{p.target_port} out of range")
            key = (proto, svc.cluster_ip, p.port)
            if key in seen_cluster:
                raise ConfigError(f"{where}: {svc.cluster_ip}:{p.port}/{p.protocol} in use")
            seen_cluster.add(key)
            if p.node_port:
                if svc.type == ServiceType.CLUSTER_IP:
                    raise ConfigError(f"{where}: nodePort needs type NodePort or LoadBalancer")
                if p.node_port not in NODE_PORT_RANGE:
                    raise ConfigError(f"{where}: nodePort {p.node_port} outside 30000-32767")
                if (proto, p.node_port) in seen_node:
                    raise ConfigError(f"{where}: nodePort {p.node_port} already allocated")
                seen_node.add((proto, p.node_port))


# --- the compiled form ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    ip: int
    port: int
    local: bool
    addr: str  # "ip:port", kube-proxy's endpoint string
    chain: str  # KUBE-SEP-*


@dataclass(slots=True)
class ServicePortInfo:
    """Everything the data plane needs about one service port (one KUBE-SVC chain).

    What a new connection reads comes first: one cache line of a compiled object
    (with 10,000 Services each connection meets a different, cold one)."""

    endpoints: tuple[EndpointInfo, ...]  # ready endpoints, cluster policy
    thresholds: tuple[int, ...]  # statistic_threshold per rule
    affinity_timeout: int  # 0: no ClientIP affinity
    external_local: bool
    local_endpoints: tuple[EndpointInfo, ...]
    name: str  # "ns/svc:port"
    service: tuple[str, str]
    port_name: str
    proto: int
    protocol: str  # "tcp"/"udp"
    cluster_ip: int
    port: int
    node_port: int
    lb_ip: int  # 0 if none
    svc_chain: str
    ext_chain: str
    svl_chain: str

    def chain(self, local: bool) -> str:
        """KUBE-SVL-* (the local endpoints') when ``local``, else KUBE-SVC-*."""
        return self.svl_chain if local else self.svc_chain

    @property
    def has_endpoints(self) -> bool:
        return bool(self.endpoints)

    @property
    def has_external_endpoints(self) -> bool:
        return bool(self.local_endpoints if self.external_local else self.endpoints)


def address_key(proto: int, ip: int, port: int) -> int:
    """The key of a Service port in an address table: ``(proto, ip, port)`` as one int.

    With 10,000 Services each new connection meets a cold entry; a tuple key
    costs a cold tuple and a cold address int to compare, one int key only itself.
    The address is in the low bits: a dict's first probe is the hash's low bits
    (an int's hash is itself), and Services differ by address, not port. With
    the port there, every port-80 Service started in one slot and a lookup
    walked a chain of probes, a cold line each (3.4 cache misses per new
    connection in 10,000 Services, cachegrind). ``port`` is a packet's field
    (an ICMP tuple's query key above it is dropped)."""
    return (proto << 48) | ((port & 0xFFFF) << 32) | ip


def node_port_key(proto: int, port: int) -> int:
    """The key of a NodePort in :attr:`ServiceTable.by_node_port`: ``(proto, port)``."""
    return (proto << 16) | port


@dataclass(slots=True)
class ServiceTable:
    """The hash tables that stand in for KUBE-SERVICES / KUBE-NODEPORTS, keyed by
    :func:`address_key` and :func:`node_port_key`."""

    by_cluster_ip: dict[int, ServicePortInfo]
    by_lb_ip: dict[int, ServicePortInfo]
    by_node_port: dict[int, ServicePortInfo]
    ports: list[ServicePortInfo]


_THRESHOLDS: Final[dict[int, tuple[int, ...]]] = {}


def thresholds(n: int) -> tuple[int, ...]:
    """The kernel thresholds of rules 0..n-2 of an n-endpoint chain (cached)."""
    t = _THRESHOLDS.get(n)
    if t is None:
        t = tuple(statistic_threshold(n - i) for i in range(n - 1))
        _THRESHOLDS[n] = t
    return t


def compile_services(
    services: Sequence[Service], endpoints: EndpointsMap, node: str
) -> ServiceTable:
    """Build the per-packet lookup tables (kube-proxy's sync, minus iptables)."""
    validate(services)
    by_cluster: dict[int, ServicePortInfo] = {}
    by_lb: dict[int, ServicePortInfo] = {}
    by_np: dict[int, ServicePortInfo] = {}
    ports: list[ServicePortInfo] = []
    for svc in services:
        eps_all = endpoints.get(svc.key, ())
        cip = int(svc.cluster_ip)
        lb = int(svc.load_balancer_ip) if svc.load_balancer_ip is not None else 0
        affinity = svc.affinity_timeout if svc.session_affinity == SessionAffinity.CLIENT_IP else 0
        ext_local = svc.external_traffic_policy == TrafficPolicy.LOCAL
        for p in svc.ports:
            proto = PROTO_NUMBERS[p.protocol]
            protocol = p.protocol.lower()
            spn = service_port_name(svc.namespace, svc.name, p.name)
            infos = []
            for ep in eps_all:
                if not ep.ready or ep.port_name != p.name:
                    continue
                port = ep.port if ep.port is not None else p.target_port
                addr = f"{ep.ip}:{port}"
                infos.append((addr, ep.ip, port, ep.node == node))
            infos.sort()
            eps = tuple(
                EndpointInfo(int(ip), port, local, addr, sep_chain(spn, protocol, addr))
                for addr, ip, port, local in infos
            )
            hashed = _hash16(spn + protocol)
            info = ServicePortInfo(
                name=spn,
                service=svc.key,
                port_name=p.name,
                proto=proto,
                protocol=protocol,
                cluster_ip=cip,
                port=p.port,
                node_port=p.node_port if svc.type != ServiceType.CLUSTER_IP else 0,
                lb_ip=lb if svc.type == ServiceType.LOAD_BALANCER else 0,
                endpoints=eps,
                local_endpoints=tuple(e for e in eps if e.local),
                affinity_timeout=affinity,
                external_local=ext_local,
                svc_chain="KUBE-SVC-" + hashed,
                ext_chain="KUBE-EXT-" + hashed,
                svl_chain="KUBE-SVL-" + hashed,
                thresholds=thresholds(len(eps)),
            )
            ports.append(info)
            by_cluster[address_key(proto, cip, p.port)] = info
            if info.lb_ip:
                by_lb[address_key(proto, info.lb_ip, p.port)] = info
            if info.node_port:
                by_np[node_port_key(proto, info.node_port)] = info
    return ServiceTable(by_cluster, by_lb, by_np, ports)
