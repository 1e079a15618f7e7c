"""What the ``emunet`` commands print, as pure functions of the objects.

Each function takes registry objects (or an agent's reply) and returns a
:class:`Table` (kubectl's columns) or the lines to print; nothing here reads
etcd, a clock or a terminal. The commands fetch, call one of these and print,
so every column and every ``<none>`` is tested without a fabric.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from emunet.cluster.endpoints import endpoints_for
from emunet.cluster.registry import (
    Deployment,
    ExternalHostInfo,
    NodeInfo,
    Pod,
    PodPhase,
    Service,
    ServiceType,
    SessionAffinity,
)

__all__ = [
    "Table",
    "age",
    "capture_summary",
    "compose_status_table",
    "deployments_table",
    "describe_deployment",
    "describe_node",
    "describe_pod",
    "describe_service",
    "dump_view",
    "endpoints_object",
    "endpoints_table",
    "endpoints_text",
    "external_ip",
    "hosts_table",
    "kv",
    "labels_text",
    "local_status_table",
    "merge_trace",
    "node_hops",
    "nodes_table",
    "pods_table",
    "ports_text",
    "services_table",
    "table_lines",
    "trace_table",
]


@dataclass(frozen=True, slots=True)
class Table:
    """Column headers and rows of cells, as kubectl prints them."""

    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)


def table_lines(table: Table) -> list[str]:
    """kubectl's layout: left-aligned columns three spaces apart, no trailing blanks.

    The first line is the header row."""
    cells = [[str(c) for c in row] for row in table.rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(table.headers)]

    def line(row: Sequence[str]) -> str:
        return "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()

    return [line(table.headers), *(line(row) for row in cells)]


def age(created: str, now: datetime.datetime) -> str:
    """kubectl's AGE column: ``created`` (RFC 3339, UTC) seen from ``now``."""
    if not created:
        return "<unknown>"
    try:
        then = datetime.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.UTC
        )
    except ValueError:
        return "<unknown>"
    seconds = max(int((now - then).total_seconds()), 0)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def labels_text(labels: Mapping[str, str]) -> str:
    """``k=v,k=v`` sorted by key, or ``<none>``."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "<none>"


# -- get ---------------------------------------------------------------------------


def nodes_table(nodes: Sequence[NodeInfo], wide: bool = False) -> Table:
    headers = ["NAME", "STATUS", "INTERNAL-IP", "POD-CIDR"]
    if wide:
        headers.append("CONTROL")
    rows = []
    for n in nodes:
        row = [
            n.name,
            "Ready" if n.ready else "NotReady",
            str(n.internal_ip),
            str(n.pod_cidr) if n.pod_cidr else "<none>",
        ]
        if wide:
            row.append(n.control_endpoint or "<none>")
        rows.append(row)
    return Table(headers, rows)


def hosts_table(hosts: Sequence[ExternalHostInfo], wide: bool = False) -> Table:
    headers = ["NAME", "SEGMENT", "IP"]
    if wide:
        headers += ["ROLE", "PUBLIC-IP", "APPS"]
    rows = []
    for h in hosts:
        row = [h.name, h.segment, str(h.ip)]
        if wide:
            row += [
                h.role,
                str(h.public_ip) if h.public_ip else "<none>",
                ",".join(h.apps) or "<none>",
            ]
        rows.append(row)
    return Table(headers, rows)


def pods_table(
    pods: Iterable[Pod], namespace: str | None, wide: bool, now: datetime.datetime
) -> Table:
    """``get pods``: a NAMESPACE column when listing every namespace (``namespace`` None)."""
    headers = ["NAME", "READY", "STATUS", "IP", "NODE", "AGE"]
    if namespace is None:
        headers.insert(0, "NAMESPACE")
    if wide:
        headers += ["APP", "HOST-IP", "LABELS"]
    rows = []
    for p in sorted(pods, key=lambda p: (p.namespace, p.name)):
        ready = len(p.containers) if p.phase == PodPhase.RUNNING and p.ready else 0
        row = [
            p.name,
            f"{ready}/{len(p.containers)}",
            p.status_text,
            str(p.pod_ip) if p.pod_ip else "<none>",
            p.node_name or "<none>",
            age(p.created, now),
        ]
        if namespace is None:
            row.insert(0, p.namespace)
        if wide:
            row += [
                ",".join(c.app for c in p.containers),
                str(p.host_ip) if p.host_ip else "<none>",
                labels_text(p.labels),
            ]
        rows.append(row)
    return Table(headers, rows)


def deployments_table(
    deps: Iterable[Deployment], pods: Sequence[Pod], wide: bool, now: datetime.datetime
) -> Table:
    """``get deployments``: READY counts the Running pods each Deployment owns."""
    rows = []
    for d in sorted(deps, key=lambda d: (d.namespace, d.name)):
        owned = [p for p in pods if p.owner == d.name and p.namespace == d.namespace]
        running = sum(1 for p in owned if p.phase == PodPhase.RUNNING)
        row = [d.name, f"{running}/{d.replicas}", str(len(owned)), str(running),
               age(d.created, now)]  # fmt: skip
        if wide:
            row.append(",".join(c.app for c in d.template.containers))
        rows.append(row)
    headers = ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    return Table(headers + (["APPS"] if wide else []), rows)


def ports_text(svc: Service) -> str:
    """The PORT(S) column: ``port[:nodePort]/protocol``, comma separated."""
    parts = []
    for p in svc.ports:
        node = f":{p.node_port}" if p.node_port else ""
        parts.append(f"{p.port}{node}/{p.protocol}")
    return ",".join(parts) or "<none>"


def external_ip(svc: Service) -> str:
    """The EXTERNAL-IP column: a LoadBalancer's ingress IP, ``<pending>`` until it has one."""
    if svc.type != ServiceType.LOAD_BALANCER:
        return "<none>"
    return str(svc.ingress_ip) if svc.ingress_ip else "<pending>"


def services_table(services: Iterable[Service], wide: bool, now: datetime.datetime) -> Table:
    headers = ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    if wide:
        headers.append("SELECTOR")
    rows = []
    for s in sorted(services, key=lambda s: (s.namespace, s.name)):
        row = [
            s.name,
            s.type.value,
            str(s.cluster_ip) if s.cluster_ip else "<none>",
            external_ip(s),
            ports_text(s),
            age(s.created, now),
        ]
        if wide:
            row.append(labels_text(s.selector))
        rows.append(row)
    return Table(headers, rows)


def endpoints_object(svc: Service, pods: Sequence[Pod]) -> dict[str, Any]:
    """The v1 Endpoints object of ``svc``: one subset per (service port, target port)."""
    eps = endpoints_for(svc, pods)
    subsets = []
    for p in svc.ports:
        mine = [e for e in eps if e.port_name == p.name]
        by_port: dict[int, list[dict[str, str]]] = {}
        for e in mine:
            by_port.setdefault(e.port or 0, []).append({"ip": str(e.ip), "nodeName": e.node})
        for port, addresses in sorted(by_port.items()):
            entry: dict[str, Any] = {"port": port, "protocol": p.protocol}
            if p.name:
                entry = {"name": p.name, **entry}
            subsets.append({"addresses": addresses, "ports": [entry]})
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": svc.name, "namespace": svc.namespace},
        "subsets": subsets,
    }


def endpoints_text(svc: Service, pods: Sequence[Pod], wide: bool) -> str:
    """The ENDPOINTS column: ``ip:port`` list, the first three and a count unless wide."""
    eps = endpoints_for(svc, pods)
    texts = sorted({f"{e.ip}:{e.port}" for e in eps}, key=lambda t: (len(t), t))
    if not texts:
        return "<none>"
    if wide or len(texts) <= 3:
        return ",".join(texts)
    return ",".join(texts[:3]) + f" + {len(texts) - 3} more..."


def endpoints_table(
    services: Iterable[Service], pods: Sequence[Pod], wide: bool, now: datetime.datetime
) -> Table:
    rows = [
        [s.name, endpoints_text(s, pods, wide), age(s.created, now)]
        for s in sorted(services, key=lambda s: (s.namespace, s.name))
    ]
    return Table(["NAME", "ENDPOINTS", "AGE"], rows)


# -- describe ----------------------------------------------------------------------


def kv(label: str, value: Any, indent: int = 0) -> str:
    """One ``Label:  value`` line of kubectl describe (values from column 24)."""
    return f"{' ' * indent}{label + ':':<24}{value}"


def describe_pod(pod: Pod) -> list[str]:
    lines = [
        kv("Name", pod.name),
        kv("Namespace", pod.namespace),
        kv("Node", f"{pod.node_name or '<none>'}/{pod.host_ip or '<none>'}"),
        kv("Start Time", pod.created or "<unknown>"),
        kv("Labels", labels_text(pod.labels)),
        kv("Status", pod.phase.value),
    ]
    if pod.reason:
        lines.append(kv("Reason", pod.reason))
    if not pod.ready:
        lines.append(kv("Ready", "False"))
    if pod.message:
        lines.append(kv("Message", pod.message))
    lines.append(kv("IP", pod.pod_ip or "<none>"))
    lines.append(kv("Controlled By", f"Deployment/{pod.owner}" if pod.owner else "<none>"))
    lines.append("Containers:")
    for c in pod.containers:
        lines.append(f"  {c.name}:")
        lines.append(kv("App", c.app, 4))
        lines.append(kv("Args", json.dumps(dict(c.args)) if c.args else "<none>", 4))
        ports = ", ".join(
            f"{p.container_port}/{p.protocol}" + (f" ({p.name})" if p.name else "") for p in c.ports
        )
        lines.append(kv("Ports", ports or "<none>", 4))
    return lines


def describe_service(svc: Service, pods: Sequence[Pod]) -> list[str]:
    lines = [
        kv("Name", svc.name),
        kv("Namespace", svc.namespace),
        kv("Labels", labels_text(svc.labels)),
        kv("Selector", labels_text(svc.selector)),
        kv("Type", svc.type.value),
        kv("IP", svc.cluster_ip or "<none>"),
    ]
    if svc.type == ServiceType.LOAD_BALANCER:
        lines.append(kv("LoadBalancer Ingress", svc.ingress_ip or "<pending>"))
    eps = endpoints_for(svc, pods)
    for sp in svc.ports:
        label = sp.name or "<unset>"
        lines.append(kv("Port", f"{label}  {sp.port}/{sp.protocol}"))
        lines.append(kv("TargetPort", f"{sp.effective_target}/{sp.protocol}"))
        if sp.node_port:
            lines.append(kv("NodePort", f"{label}  {sp.node_port}/{sp.protocol}"))
        mine = [f"{e.ip}:{e.port}" for e in eps if e.port_name == sp.name]
        lines.append(kv("Endpoints", ",".join(mine) or "<none>"))
    lines.append(kv("Session Affinity", svc.session_affinity.value))
    if svc.session_affinity == SessionAffinity.CLIENT_IP:
        lines.append(kv("Affinity Timeout", f"{svc.affinity_timeout}s"))
    if svc.type != ServiceType.CLUSTER_IP:
        lines.append(kv("External Traffic Policy", svc.external_traffic_policy.value))
    return lines


def describe_deployment(dep: Deployment, pods: Sequence[Pod]) -> list[str]:
    """``pods``: those of the Deployment's namespace; the ones it owns are listed."""
    owned = [p for p in pods if p.owner == dep.name]
    running = sum(1 for p in owned if p.phase == PodPhase.RUNNING)
    lines = [
        kv("Name", dep.name),
        kv("Namespace", dep.namespace),
        kv("Selector", labels_text(dep.selector)),
        kv("Replicas", f"{dep.replicas} desired | {len(owned)} total | {running} running"),
        kv("Pod Template Labels", labels_text(dep.template.labels)),
    ]
    if dep.template.node_name:
        lines.append(kv("Node", dep.template.node_name))
    for c in dep.template.containers:
        lines.append(kv(f"Container {c.name}", f"app {c.app} {json.dumps(dict(c.args))}"))
    lines.append("Pods:")
    for p in sorted(owned, key=lambda p: p.name):
        lines.append(f"  {p.name}  {p.phase.value}  {p.pod_ip or '<none>'}  {p.node_name}")
    return lines


def describe_node(
    node: NodeInfo, pods: Sequence[Pod], agent: Any = None, agent_error: str | None = None
) -> list[str]:
    """``pods``: every pod; ``agent``: the agent's ``status`` reply (None: not asked);
    ``agent_error``: why the agent could not be asked."""
    lines = [
        kv("Name", node.name),
        kv("Status", "Ready" if node.ready else "NotReady"),
        kv("InternalIP", node.internal_ip),
        kv("PodCIDR", node.pod_cidr or "<none>"),
        kv("Control Endpoint", node.control_endpoint or "<none>"),
    ]
    if isinstance(agent, dict):
        for key in ("subnet", "leases", "pods"):
            if key in agent:
                lines.append(kv(key.capitalize(), agent[key]))
        if isinstance(agent.get("uptime"), int | float):
            lines.append(kv("Uptime", f"{agent['uptime']:.0f}s"))
    if agent_error is not None:
        lines.append(kv("Agent", f"unreachable ({agent_error})"))
    mine = [p for p in pods if p.node_name == node.name]
    lines.append(f"Non-terminated Pods:    ({len(mine)} in total)")
    for p in sorted(mine, key=lambda p: (p.namespace, p.name)):
        lines.append(f"  {p.namespace:<12}{p.name:<40}{p.phase.value:<10}{p.pod_ip or ''}")
    return lines


# -- status ------------------------------------------------------------------------


def local_status_table(processes: Iterable[Mapping[str, Any]]) -> Table:
    """``status`` of a local fabric: one row per process of ``LocalFabric.describe()``."""
    return Table(
        ["NAME", "PID", "STATE", "NODE-IP", "LOG"],
        [
            [
                p["name"],
                str(p["pid"]),
                "running" if p["running"] else "gone",
                p["nodeIP"] or "-",
                p["log"],
            ]
            for p in processes
        ],
    )


def compose_status_table(containers: Iterable[Mapping[str, Any]]) -> Table:
    """``status`` of a compose fabric: one row per container of ``ComposeProject.describe()``."""
    return Table(
        ["NAME", "ROLE", "STATE", "HEALTH", "NODE-IP", "PUBLISHED"],
        [
            [
                c["name"],
                c["role"],
                c["state"] or "-",
                c["health"] or "-",
                c["nodeIP"] or "-",
                c["published"] or "-",
            ]
            for c in containers
        ],
    )


# -- node state: dump, trace, capture --------------------------------------------


def dump_view(result: Any) -> Table | list[str]:
    """An agent's ``dump`` reply: its ``lines`` as they are, rows of dicts as a table
    (the keys, upper-cased, are the headers), anything else as indented JSON."""
    if isinstance(result, dict) and "lines" in result:
        return [str(line) for line in result["lines"]]
    rows = result.get("rows") if isinstance(result, dict) else result
    if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
        headers = list(rows[0].keys())
        return Table(
            [h.upper() for h in headers], [[str(r.get(h, "")) for h in headers] for r in rows]
        )
    return json.dumps(result, indent=2, default=str).split("\n")


def node_hops(node: str, result: Any) -> list[list[Any]]:
    """The hops an observing node's ``trace`` reply holds, and a last row naming the
    hops it left out (at the time of its last hop)."""
    hops = list(result.get("hops", [])) if isinstance(result, dict) else []
    omitted = result.get("omitted", 0) if isinstance(result, dict) else 0
    if omitted:
        last = hops[-1][5] if hops and len(hops[-1]) > 5 else 0.0
        hops.append([node, "", "", "hops omitted", f"{omitted} more hops", last])
    return hops


def merge_trace(origin: Mapping[str, Any], others: Iterable[list[list[Any]]]) -> dict[str, Any]:
    """The probing node's reply and the other nodes' hops as one trace: every hop in
    time order (a stable sort: each node's own order is kept)."""
    hops = list(origin.get("hops", []))
    for extra in others:
        hops.extend(extra)
    hops.sort(key=lambda hop: hop[5] if len(hop) > 5 else 0.0)
    return {"hops": hops, "result": origin.get("result", "")}


def trace_table(hops: Iterable[Sequence[Any]]) -> Table:
    rows = [[str(i), *(str(x) for x in hop[:5])] for i, hop in enumerate(hops, 1)]
    return Table(["#", "NODE", "NETNS", "IFACE", "EVENT", "DETAIL"], rows)


def capture_summary(result: Any, written: int, path: object) -> str:
    """The line ``capture`` ends with, from the agent's final ``result`` frame."""
    packets = result.get("packets", "?") if isinstance(result, dict) else "?"
    dropped = result.get("dropped", 0) if isinstance(result, dict) else 0
    extra = f", {dropped} dropped" if dropped else ""
    return f"{packets} packets captured ({written} bytes{extra}) to {path}"
