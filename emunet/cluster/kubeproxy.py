"""kube-proxy, iptables mode: Services and Endpoints in, netfilter rules out.

Pure data. Two outputs are built from the same Services and Endpoints:

* :func:`compile_services` gives the hash tables the data plane evaluates per
  packet (:class:`ServiceTable`): ``(proto, ip, port) -> ServicePortInfo`` for
  ClusterIPs and LoadBalancer IPs, ``(proto, node_port)`` for NodePorts. One
  lookup replaces the walk down KUBE-SERVICES, so a new connection costs O(1) in
  the number of Services (real iptables mode walks the chain: O(n)).
* :func:`build_ruleset` gives the rules kube-proxy writes, in its own words:
  :meth:`Ruleset.iptables_restore` is the text kube-proxy feeds to
  ``iptables-restore`` (probabilities with 10 decimals, ``--or-mark``),
  :meth:`Ruleset.iptables_save` is what ``iptables-save`` prints once the kernel
  holds those rules (canonical argument order, ``/32`` suffixes, the statistic
  probability quantised to 31 bits and printed with 11 decimals, ``MARK
  --set-xmark``, the ``recent`` defaults spelled out).

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
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network
from typing import Protocol

from emunet.errors import ConfigError

MASQ_MARK = 0x4000
NODE_PORT_RANGE = range(30000, 32768)
DEFAULT_AFFINITY_TIMEOUT = 10800
MAX_AFFINITY_TIMEOUT = 86400

PROTO_NUMBERS = {"TCP": 6, "UDP": 17}


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
    """Everything the data plane needs about one service port (one KUBE-SVC chain)."""

    name: str  # "ns/svc:port"
    service: tuple[str, str]
    port_name: str
    proto: int
    protocol: str  # "tcp"/"udp"
    cluster_ip: int
    port: int
    node_port: int
    lb_ip: int  # 0 if none
    endpoints: tuple[EndpointInfo, ...]  # ready endpoints, cluster policy
    local_endpoints: tuple[EndpointInfo, ...]
    affinity_timeout: int  # 0: no ClientIP affinity
    external_local: bool
    svc_chain: str
    ext_chain: str
    svl_chain: str
    thresholds: tuple[int, ...] = field(default=())  # statistic_threshold per rule

    @property
    def has_endpoints(self) -> bool:
        return bool(self.endpoints)

    @property
    def has_external_endpoints(self) -> bool:
        return bool(self.local_endpoints if self.external_local else self.endpoints)


@dataclass(slots=True)
class ServiceTable:
    """The hash tables that stand in for KUBE-SERVICES / KUBE-NODEPORTS."""

    by_cluster_ip: dict[tuple[int, int, int], ServicePortInfo]
    by_lb_ip: dict[tuple[int, int, int], ServicePortInfo]
    by_node_port: dict[tuple[int, int], ServicePortInfo]
    ports: list[ServicePortInfo]


_THRESHOLDS: dict[int, tuple[int, ...]] = {}


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
    by_cluster: dict[tuple[int, int, int], ServicePortInfo] = {}
    by_lb: dict[tuple[int, int, int], ServicePortInfo] = {}
    by_np: dict[tuple[int, int], ServicePortInfo] = {}
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
            by_cluster[(proto, cip, p.port)] = info
            if info.lb_ip:
                by_lb[(proto, info.lb_ip, p.port)] = info
            if info.node_port:
                by_np[(proto, info.node_port)] = info
    return ServiceTable(by_cluster, by_lb, by_np, ports)


# --- the rules as text ------------------------------------------------------

# Built-in chains per table, in iptables-save order, with their policies.
_BUILTIN = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
}


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``-A chain args...`` line, args in the writer's order (as passed to
    iptables-restore; a comment token keeps the quotes its writer put in)."""

    table: str
    chain: str
    args: tuple[str, ...]

    def restore_line(self) -> str:
        return " ".join(("-A", self.chain, *self.args))

    def save_line(self) -> str:
        return _save_line(self.chain, self.args)


@dataclass(slots=True)
class Ruleset:
    chains: dict[str, list[str]]  # table -> user chain names, in declaration order
    rules: list[Rule]

    def iptables_restore(self) -> str:
        """The input kube-proxy (and flannel's rules) give to iptables-restore."""
        out: list[str] = []
        for table in ("filter", "nat"):
            out.append(f"*{table}")
            out.extend(f":{c} - [0:0]" for c in self.chains[table])
            out.extend(r.restore_line() for r in self.rules if r.table == table)
            out.append("COMMIT")
        return "\n".join(out) + "\n"

    def iptables_save(self) -> str:
        """What ``iptables-save -t nat; iptables-save -t filter`` prints (no
        timestamps): builtin chains first, then user chains sorted, rules grouped
        by chain in insertion order."""
        out: list[str] = []
        for table in ("nat", "filter"):
            out.append("# Generated by emunet")
            out.append(f"*{table}")
            builtin = _BUILTIN[table]
            user = sorted(set(self.chains[table]) - set(builtin))
            out.extend(f":{c} ACCEPT [0:0]" for c in builtin)
            out.extend(f":{c} - [0:0]" for c in user)
            by_chain: dict[str, list[Rule]] = {}
            for r in self.rules:
                if r.table == table:
                    by_chain.setdefault(r.chain, []).append(r)
            for c in (*builtin, *user):
                out.extend(r.save_line() for r in by_chain.get(c, ()))
            out.append("COMMIT")
            out.append("# Completed by emunet")
        return "\n".join(out) + "\n"

    def chain(self, table: str, name: str) -> list[Rule]:
        return [r for r in self.rules if r.table == table and r.chain == name]


def _q(text: str) -> str:
    return f'"{text}"'


def build_ruleset(
    services: Sequence[Service],
    endpoints: EndpointsMap,
    *,
    node: str,
    cluster_cidr: IPv4Network,
    pod_subnet: IPv4Network | None = None,
    masquerade_egress: bool = True,
) -> Ruleset:
    """The nat and filter rules kube-proxy (iptables mode) and flanneld install."""
    table = compile_services(sorted(services, key=lambda s: s.key), endpoints, node)
    cc = str(cluster_cidr)
    mark = f"{MASQ_MARK:#x}"
    rules: list[Rule] = []
    filter_chains = [
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
    ]
    nat_chains = ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"]

    def nat(chain: str, *args: str) -> None:
        rules.append(Rule("nat", chain, args))

    def flt(chain: str, *args: str) -> None:
        rules.append(Rule("filter", chain, args))

    # Jumps from the built-in chains (kube-proxy prepends them, so the last
    # inserted comes first).
    new = ("-m", "conntrack", "--ctstate", "NEW")
    for chain, extra, comment, dst in (
        ("INPUT", new, "kubernetes load balancer firewall", "KUBE-PROXY-FIREWALL"),
        ("INPUT", (), "kubernetes health check service ports", "KUBE-NODEPORTS"),
        ("INPUT", new, "kubernetes externally-visible service portals", "KUBE-EXTERNAL-SERVICES"),
        ("FORWARD", new, "kubernetes load balancer firewall", "KUBE-PROXY-FIREWALL"),
        ("FORWARD", (), "kubernetes forwarding rules", "KUBE-FORWARD"),
        ("FORWARD", new, "kubernetes service portals", "KUBE-SERVICES"),
        ("FORWARD", new, "kubernetes externally-visible service portals", "KUBE-EXTERNAL-SERVICES"),
        ("OUTPUT", new, "kubernetes load balancer firewall", "KUBE-PROXY-FIREWALL"),
        ("OUTPUT", new, "kubernetes service portals", "KUBE-SERVICES"),
    ):
        flt(chain, *extra, "-m", "comment", "--comment", _q(comment), "-j", dst)
    if masquerade_egress:
        filter_chains.append("FLANNEL-FWD")
        flt("FORWARD", "-m", "comment", "--comment", _q("flanneld forward"), "-j", "FLANNEL-FWD")
    for chain in ("PREROUTING", "OUTPUT"):
        nat(
            chain,
            "-m",
            "comment",
            "--comment",
            _q("kubernetes service portals"),
            "-j",
            "KUBE-SERVICES",
        )
    nat(
        "POSTROUTING",
        "-m", "comment", "--comment", _q("kubernetes postrouting rules"),
        "-j", "KUBE-POSTROUTING",
    )  # fmt: skip

    nat("KUBE-POSTROUTING", "-m", "mark", "!", "--mark", f"{mark}/{mark}", "-j", "RETURN")
    nat("KUBE-POSTROUTING", "-j", "MARK", "--xor-mark", mark)
    nat(
        "KUBE-POSTROUTING",
        "-m", "comment", "--comment", _q("kubernetes service traffic requiring SNAT"),
        "-j", "MASQUERADE", "--random-fully",
    )  # fmt: skip
    nat("KUBE-MARK-MASQ", "-j", "MARK", "--or-mark", mark)

    for sp in table.ports:
        _service_port_rules(sp, cc, nat, flt, nat_chains)

    nat(
        "KUBE-SERVICES",
        "-m", "comment", "--comment",
        _q("kubernetes service nodeports; NOTE: this must be the last rule in this chain"),
        "-m", "addrtype", "--dst-type", "LOCAL",
        "-j", "KUBE-NODEPORTS",
    )  # fmt: skip
    flt("KUBE-FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
    flt(
        "KUBE-FORWARD",
        "-m", "comment", "--comment", _q("kubernetes forwarding rules"),
        "-m", "mark", "--mark", f"{mark}/{mark}", "-j", "ACCEPT",
    )  # fmt: skip
    flt(
        "KUBE-FORWARD",
        "-m", "comment", "--comment", _q("kubernetes forwarding conntrack rule"),
        "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT",
    )  # fmt: skip

    if masquerade_egress:
        # flanneld's ip-masq (FLANNEL-POSTRTG, inserted at the top of POSTROUTING
        # after kube-proxy's jump) and its forward accepts.
        nat_chains.append("FLANNEL-POSTRTG")
        fm = ("-m", "comment", "--comment", _q("flanneld masq"))
        nat("POSTROUTING", *fm, "-j", "FLANNEL-POSTRTG")
        nat("FLANNEL-POSTRTG", "-m", "mark", "--mark", f"{mark}/{mark}", *fm, "-j", "RETURN")
        nat("FLANNEL-POSTRTG", "-s", cc, "-d", cc, *fm, "-j", "RETURN")
        nat("FLANNEL-POSTRTG", "-s", cc, "!", "-d", "224.0.0.0/4", *fm,
            "-j", "MASQUERADE", "--random-fully")  # fmt: skip
        if pod_subnet is not None:
            nat("FLANNEL-POSTRTG", "!", "-s", cc, "-d", str(pod_subnet), *fm, "-j", "RETURN")
        nat("FLANNEL-POSTRTG", "!", "-s", cc, "-d", cc, *fm,
            "-j", "MASQUERADE", "--random-fully")  # fmt: skip
        ff = ("-m", "comment", "--comment", _q("flanneld forward"))
        flt("FLANNEL-FWD", "-s", cc, *ff, "-j", "ACCEPT")
        flt("FLANNEL-FWD", "-d", cc, *ff, "-j", "ACCEPT")

    # kube-proxy's buffers: rules of all service chains follow the top-level
    # chains; iptables-save regroups them by chain anyway.
    return Ruleset({"filter": filter_chains, "nat": nat_chains}, rules)


def _service_port_rules(
    sp: ServicePortInfo,
    cluster_cidr: str,
    nat: _Writer,
    flt: _Writer,
    nat_chains: list[str],
) -> None:
    proto = sp.protocol
    name = sp.name
    cip = str(IPv4Address(sp.cluster_ip))
    port = str(sp.port)
    match_cip = ("-m", proto, "-p", proto, "-d", cip, "--dport", port)
    if sp.has_endpoints:
        nat("KUBE-SERVICES", "-m", "comment", "--comment", _q(f"{name} cluster IP"),
            *match_cip, "-j", sp.svc_chain)  # fmt: skip
    else:
        flt("KUBE-SERVICES", "-m", "comment", "--comment", _q(f"{name} has no endpoints"),
            *match_cip, "-j", "REJECT")  # fmt: skip
    ext_target = ""
    ext_comment = ""
    if not sp.has_endpoints:
        ext_target, ext_comment = "REJECT", f"{name} has no endpoints"
    elif not sp.has_external_endpoints:
        ext_target, ext_comment = "DROP", f"{name} has no local endpoints"
    if sp.lb_ip:
        lbip = str(IPv4Address(sp.lb_ip))
        if sp.has_endpoints:
            nat("KUBE-SERVICES", "-m", "comment", "--comment", _q(f"{name} loadbalancer IP"),
                "-m", proto, "-p", proto, "-d", lbip, "--dport", port,
                "-j", sp.ext_chain)  # fmt: skip
        if ext_target:
            flt("KUBE-EXTERNAL-SERVICES", "-m", "comment", "--comment", _q(ext_comment),
                "-m", proto, "-p", proto, "-d", lbip, "--dport", port,
                "-j", ext_target)  # fmt: skip
    if sp.node_port:
        if sp.has_endpoints:
            nat("KUBE-NODEPORTS", "-m", "comment", "--comment", name,
                "-m", proto, "-p", proto, "--dport", str(sp.node_port),
                "-j", sp.ext_chain)  # fmt: skip
        if ext_target:
            flt("KUBE-EXTERNAL-SERVICES", "-m", "comment", "--comment", _q(ext_comment),
                "-m", "addrtype", "--dst-type", "LOCAL",
                "-m", proto, "-p", proto, "--dport", str(sp.node_port),
                "-j", ext_target)  # fmt: skip
    if not sp.has_endpoints:
        return

    # KUBE-SVC: masquerade off-cluster sources, then the endpoints.
    nat_chains.append(sp.svc_chain)
    nat(sp.svc_chain, "-m", "comment", "--comment", _q(f"{name} cluster IP"),
        *match_cip, "!", "-s", cluster_cidr, "-j", "KUBE-MARK-MASQ")  # fmt: skip
    _endpoint_rules(sp, sp.svc_chain, sp.endpoints, nat)

    if sp.node_port or sp.lb_ip:
        ext = sp.ext_chain
        nat_chains.append(ext)
        if not sp.external_local:
            nat(ext, "-m", "comment", "--comment",
                _q(f"masquerade traffic for {name} external destinations"),
                "-j", "KUBE-MARK-MASQ")  # fmt: skip
        else:
            nat(ext, "-m", "comment", "--comment",
                _q(f"pod traffic for {name} external destinations"),
                "-s", cluster_cidr, "-j", sp.svc_chain)  # fmt: skip
            nat(ext, "-m", "comment", "--comment",
                _q(f"masquerade LOCAL traffic for {name} external destinations"),
                "-m", "addrtype", "--src-type", "LOCAL", "-j", "KUBE-MARK-MASQ")  # fmt: skip
            nat(ext, "-m", "comment", "--comment",
                _q(f"route LOCAL traffic for {name} external destinations"),
                "-m", "addrtype", "--src-type", "LOCAL", "-j", sp.svc_chain)  # fmt: skip
        if sp.has_external_endpoints:
            nat(ext, "-j", sp.svl_chain if sp.external_local else sp.svc_chain)
        if sp.external_local and sp.local_endpoints:
            nat_chains.append(sp.svl_chain)
            _endpoint_rules(sp, sp.svl_chain, sp.local_endpoints, nat)

    reachable = sp.endpoints
    for ep in reachable:
        nat_chains.append(ep.chain)
        nat(ep.chain, "-m", "comment", "--comment", name,
            "-s", str(IPv4Address(ep.ip)), "-j", "KUBE-MARK-MASQ")  # fmt: skip
        recent: tuple[str, ...] = ()
        if sp.affinity_timeout:
            recent = ("-m", "recent", "--name", ep.chain, "--set")
        nat(ep.chain, "-m", "comment", "--comment", name, *recent,
            "-m", proto, "-p", proto, "-j", "DNAT", "--to-destination", ep.addr)  # fmt: skip


def _endpoint_rules(
    sp: ServicePortInfo, chain: str, eps: tuple[EndpointInfo, ...], nat: _Writer
) -> None:
    if sp.affinity_timeout:
        for ep in eps:
            nat(chain, "-m", "comment", "--comment", _q(f"{sp.name} -> {ep.addr}"),
                "-m", "recent", "--name", ep.chain, "--rcheck",
                "--seconds", str(sp.affinity_timeout), "--reap",
                "-j", ep.chain)  # fmt: skip
    n = len(eps)
    for i, ep in enumerate(eps):
        stat: tuple[str, ...] = ()
        if i < n - 1:
            stat = ("-m", "statistic", "--mode", "random", "--probability", probability(n - i))
        nat(chain, "-m", "comment", "--comment", _q(f"{sp.name} -> {ep.addr}"), *stat,
            "-j", ep.chain)  # fmt: skip


class _Writer(Protocol):
    """A rule writer: appends ``-A chain args...`` to one table."""

    def __call__(self, chain: str, *args: str) -> None: ...


# --- iptables-save canonical form -------------------------------------------

_NO_QUOTE = frozenset("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _save_string(value: str) -> str:
    """xtables_save_string: bare when only [A-Za-z0-9_-], else double-quoted."""
    if value and all(c in _NO_QUOTE for c in value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'")
    return f'"{escaped}"'


def _cidr(addr: str) -> str:
    return addr if "/" in addr else addr + "/32"


def _save_line(chain: str, args: tuple[str, ...]) -> str:
    """Reorder and normalise writer-order args as iptables-save prints them:
    ``-s -d -i -o -p``, then the matches in load order, then ``-j``."""
    ip_part: dict[str, str] = {}
    matches: list[tuple[str, list[str]]] = []
    target: list[str] = []
    i = 0
    neg = False
    n = len(args)
    while i < n:
        tok = args[i]
        if tok == "!" and i + 1 < n and args[i + 1] in ("-s", "-d", "-p", "-i", "-o"):
            neg = True
            i += 1
            continue
        if tok in ("-s", "-d", "-p", "-i", "-o"):
            val = args[i + 1]
            if tok in ("-s", "-d"):
                val = _cidr(val)
            ip_part[tok] = ("! " if neg else "") + f"{tok} {val}"
            neg = False
            i += 2
            continue
        if tok == "-m":
            matches.append((args[i + 1], []))
            i += 2
            continue
        if tok == "-j":
            target = list(args[i + 1 :])
            break
        # a match option (or "!" before one)
        owner = matches[-1][1] if matches else []
        if tok in ("--dport", "--sport"):
            for mname, opts in reversed(matches):
                if mname in ("tcp", "udp"):
                    owner = opts
                    break
        owner.append(tok)
        i += 1
    out = [f"-A {chain}"]
    out.extend(ip_part[k] for k in ("-s", "-d", "-i", "-o", "-p") if k in ip_part)
    for mname, opts in matches:
        out.append(f"-m {mname}" + _save_match(mname, opts))
    if target:
        out.append(f"-j {target[0]}" + _save_target(target[0], target[1:]))
    return " ".join(out)


def _save_match(name: str, opts: list[str]) -> str:
    if name == "comment":
        return " --comment " + _save_string(opts[1].strip('"'))
    if name == "statistic":
        p = float(opts[opts.index("--probability") + 1])
        q = round(0x80000000 * p) / 0x80000000
        return f" --mode random --probability {q:.11f}"
    if name == "recent":
        nm = opts[opts.index("--name") + 1]
        if "--set" in opts:
            return f" --set --name {nm} --mask 255.255.255.255 --rsource"
        secs = opts[opts.index("--seconds") + 1]
        reap = " --reap" if "--reap" in opts else ""
        return f" --rcheck --seconds {secs}{reap} --name {nm} --mask 255.255.255.255 --rsource"
    return "".join(" " + o for o in opts)


def _save_target(name: str, opts: list[str]) -> str:
    if name == "MARK":
        val = int(opts[1], 16)
        if opts[0] == "--or-mark":
            return f" --set-xmark {val:#x}/{val:#x}"
        if opts[0] == "--xor-mark":
            return f" --set-xmark {val:#x}/0x0"
    if name == "REJECT" and not opts:
        return " --reject-with icmp-port-unreachable"
    return "".join(" " + o for o in opts)
