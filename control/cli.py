"""The ``emunet`` command line (typer + rich).

Fabric: ``up [--local|--compose] [--nodes N]``, ``down``, ``status``.
Objects: ``get nodes|pods|services|endpoints|deployments|hosts [NAME] [-o json|yaml|wide]``,
``describe pod|service|node|deployment NAME``, ``run``, ``expose``, ``delete``,
``scale``, ``apply -f FILE``.
Node state (through each agent's control API): ``trace``, ``capture``,
``conntrack``, ``iptables-save``, ``routes``, ``fdb``, ``neigh``, ``counters``.

Deployments are the controller manager's (``emunet-controller-manager``, which
every fabric runs): ``run``, ``scale`` and ``apply`` write the Deployment and it
creates, schedules and deletes the pods. Where no controller manager holds its
lease (a bare etcd), the CLI plays the Deployment controller itself, each pod on
the Ready node with the fewest pods (``controllers.schedule_pod``).

The fabric (its etcd endpoint, and how to reach the agents' control endpoints)
is chosen once per invocation by :func:`emunet.control.fabric.select_target`:
``--fabric local|compose``, else ``--etcd`` (used as given), else
``$EMUNET_FABRIC`` / ``$EMUNET_ETCD``, else a running local fabric (state
directory ``--state-dir``, ``$EMUNET_STATE``, ``./.emunet``), else a compose
fabric found through the Docker SDK.

Every error a user can cause is printed as one line ``error: ...`` on stderr
with exit status 1, never a traceback (``EMUNET_DEBUG=1`` shows tracebacks).
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import json
import os
import random
import sys
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import replace
from enum import StrEnum
from ipaddress import IPv4Address
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
import yaml
from emunet.control.client import ControlClient, Frame
from emunet.control.compose import (
    ComposeFabric,
    default_project,
    find_compose_file,
    image_name,
    recorded_files,
)
from emunet.control.fabric import (
    ETCD_TIMEOUT,
    ComposeProject,
    FabricChoice,
    FabricKind,
    FabricTarget,
    discover_compose,
    fabric_choice,
    pick_project,
    select_target,
)
from emunet.control.local import AlreadyUp, LocalFabric, default_state_dir
from emunet.nodes.registry import AlreadyExists, NotFound, Registry, now_rfc3339
from rich.console import Console
from rich.text import Text

from emunet.cluster import registry as model
from emunet.cluster.controllers import Unschedulable, plan_deployment, schedule_pod
from emunet.cluster.endpoints import endpoints_for
from emunet.cluster.keys import CONTROLLER_LEASE_KEY
from emunet.cluster.kubeproxy import DEFAULT_AFFINITY_TIMEOUT
from emunet.cluster.manifests import parse_manifests
from emunet.cluster.registry import (
    MAX_REPLICAS,
    Container,
    ContainerPort,
    Deployment,
    ExternalHostInfo,
    NodeInfo,
    Pod,
    PodPhase,
    PodTemplate,
    Service,
    ServicePortSpec,
    ServiceType,
    SessionAffinity,
    TrafficPolicy,
)
from emunet.errors import ConfigError, EmunetError

__all__ = ["app", "main"]

P = ParamSpec("P")
T = TypeVar("T")

app = typer.Typer(
    name="emunet",
    help="emunet: a Kubernetes pod-network fabric emulator.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

APP_PORTS: dict[str, tuple[tuple[str, int, str], ...]] = {
    # app -> (port name, default port, protocol) of its container ports
    "http": (("http", 80, "TCP"),),
    "echo": (("echo-tcp", 7, "TCP"), ("echo-udp", 7, "UDP")),
    "sink": (("sink", 5001, "TCP"),),
}


class Output(StrEnum):
    JSON = "json"
    YAML = "yaml"
    WIDE = "wide"


class Proto(StrEnum):
    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"


# -- plumbing ------------------------------------------------------------------

_settings: dict[str, Any] = {"etcd": None, "state_dir": None, "fabric": None, "target": None}


def _console() -> Console:
    # kubectl-like tables must not wrap when piped: a wide virtual terminal
    return Console(width=None if sys.stdout.isatty() else 250, highlight=False)


def _fail(message: str) -> NoReturn:
    text = " ".join(str(message).split("\n")).strip() or "failed"
    typer.echo(f"error: {text}", err=True)
    raise typer.Exit(1)


def _friendly(exc: BaseException) -> str:
    if isinstance(exc, EmunetError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{':' if where else ''}{where}".strip()
    return f"internal error ({type(exc).__name__}: {exc}); set EMUNET_DEBUG=1 for details"


def handled(func: Callable[P, T]) -> Callable[P, T]:
    """Turn a command's errors into one line on stderr and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except BrokenPipeError:
            # the reader (head, less) went away: stop quietly, like coreutils
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(0) from None
        except Exception as exc:
            if os.environ.get("EMUNET_DEBUG"):
                raise
            _fail(_friendly(exc))

    return wrapper


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _state_dir() -> Path:
    given = _settings.get("state_dir")
    return Path(given) if given else default_state_dir()


def _target() -> FabricTarget:
    """The fabric this invocation talks to (found once, then cached)."""
    target = _settings.get("target")
    if target is None:
        fabric = _settings.get("fabric")
        target = select_target(
            fabric=fabric.value if fabric else None,
            etcd=_settings.get("etcd"),
            state_dir=_state_dir(),
        )
        _settings["target"] = target
    assert isinstance(target, FabricTarget)
    return target


def _endpoint() -> str:
    return _target().etcd


def _registry() -> Registry:
    return Registry(_endpoint(), request_timeout=ETCD_TIMEOUT)


def _control(endpoint: str, timeout: float) -> ControlClient:
    """A client of the control API recorded as ``endpoint``, reached as this host can."""
    target = _target()
    host, port = target.reach(endpoint)
    return ControlClient(host, port, timeout=timeout, token=target.token)


@app.callback()
def _root(
    etcd: Annotated[
        str | None,
        typer.Option(
            "--etcd", help="etcd endpoint host:port, used as given (default: $EMUNET_ETCD)"
        ),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir", help="local fabric state directory (default: $EMUNET_STATE or ./.emunet)"
        ),
    ] = None,
    fabric: Annotated[
        FabricChoice | None,
        typer.Option(
            "--fabric",
            help="the fabric to talk to: local, compose or auto (default: --etcd, else "
            "$EMUNET_FABRIC, else $EMUNET_ETCD, else a running local fabric, else a compose "
            "fabric found through Docker)",
            case_sensitive=False,
        ),
    ] = None,
) -> None:
    """emunet: a Kubernetes pod-network fabric emulator."""
    _settings["etcd"] = etcd
    _settings["state_dir"] = state_dir
    _settings["fabric"] = fabric
    _settings["target"] = None


NamespaceOpt = Annotated[str, typer.Option("--namespace", "-n", help="namespace")]
OutputOpt = Annotated[Output | None, typer.Option("--output", "-o", help="json, yaml or wide")]


def _print_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """kubectl's layout: left-aligned columns three spaces apart, no trailing blanks."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(row: Sequence[str]) -> str:
        return "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()

    console = _console()
    console.print(Text(line(headers), style="bold"), soft_wrap=True)
    for row in cells:
        console.print(Text(line(row)), soft_wrap=True)


def _emit(objects: list[dict[str, Any]], output: Output | None, single: bool) -> bool:
    """Print as JSON/YAML; False when the caller should print a table."""
    if output not in (Output.JSON, Output.YAML):
        return False
    doc: Any = (
        objects[0] if single and objects else {"apiVersion": "v1", "kind": "List", "items": objects}
    )
    if output == Output.JSON:
        typer.echo(json.dumps(doc, indent=2))
    else:
        typer.echo(yaml.safe_dump(doc, sort_keys=False).rstrip())
    return True


def _age(created: str) -> str:
    if not created:
        return "<unknown>"
    try:
        then = datetime.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.UTC
        )
    except ValueError:
        return "<unknown>"
    seconds = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


# -- the local fabric --------------------------------------------------------------


def _nodes_table(nodes: Sequence[NodeInfo], wide: bool = False) -> None:
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
    _print_table(headers, rows)


def _progress(text: str) -> None:
    typer.echo(f"... {text}", err=True)


def _running_local() -> bool:
    _state, alive = LocalFabric(_state_dir()).status()
    return any(alive.values())


@app.command()
@handled
def up(
    local: Annotated[
        bool | None,
        typer.Option(
            "--local/--no-local",
            help="run the fabric as processes on this machine (the default)",
        ),
    ] = None,
    compose: Annotated[
        bool,
        typer.Option(
            "--compose",
            help="run the fabric as containers with docker compose (the image: `make image`)",
        ),
    ] = False,
    nodes: Annotated[int, typer.Option("--nodes", min=1, help="number of nodes")] = 3,
    agent_arg: Annotated[
        list[str] | None,
        typer.Option("--agent-arg", help="extra argument for every agent (repeatable; local)"),
    ] = None,
    controller_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--controller-arg",
            help="extra argument for the controller manager (repeatable; local), e.g. "
            "--controller-arg=--node-monitor-grace-period=5",
        ),
    ] = None,
    compose_file: Annotated[
        Path | None,
        typer.Option(
            "--compose-file",
            help="compose file (default: $EMUNET_COMPOSE_FILE or compose/docker-compose.yml)",
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for Ready nodes")] = 60.0,
) -> None:
    """Start etcd and N node agents (processes, or containers with --compose).

    Waits until every node is Ready, then prints the nodes.
    """
    if compose and local:
        _fail("--local and --compose exclude each other")
    if compose or local is False:
        if agent_arg or controller_arg:
            _fail(
                "--agent-arg and --controller-arg are for --local (the compose file holds "
                "the programs' arguments)"
            )
        _up_compose(nodes, compose_file, timeout)
        return
    if compose_file is not None:
        _fail("--compose-file is for --compose")
    fabric = LocalFabric(
        _state_dir(),
        agent_args=agent_arg or (),
        controller_args=controller_arg or (),
        ready_timeout=timeout,
    )
    try:
        ready = run(fabric.up(nodes, _progress))
    except AlreadyUp as exc:
        typer.echo(str(exc))
        return
    _nodes_table(ready)


def _up_compose(nodes: int, compose_file: Path | None, timeout: float) -> None:
    fabric = ComposeFabric(
        find_compose_file(compose_file),
        default_project(),
        image=image_name(),
        ready_timeout=timeout,
    )
    ready = run(fabric.up(nodes, _progress))
    typer.echo(f"compose fabric (project {fabric.project}); etcd at {fabric.etcd_endpoint}")
    _nodes_table(ready)
    if _running_local():
        _progress(
            f"a local fabric runs too (state in {_state_dir()}): commands talk to it unless "
            "--fabric compose (or EMUNET_FABRIC=compose) says otherwise"
        )


def _compose_project() -> tuple[ComposeProject | None, str]:
    """The compose project to act on, or None and why there is none."""
    view = discover_compose()
    if view.error:
        return None, view.error
    wanted = os.environ.get("EMUNET_COMPOSE_PROJECT") or None
    project = pick_project(view.projects, wanted)
    if project is None:
        which = f"named {wanted} " if wanted else ""
        return None, f"no compose project {which}with emunet containers"
    return project, ""


@app.command()
@handled
def down(
    compose_file: Annotated[
        Path | None,
        typer.Option(
            "--compose-file",
            help="compose file, when the one the project was started with is gone",
        ),
    ] = None,
) -> None:
    """Stop the fabric that runs: the local one, else the compose project.

    A local fabric's processes are stopped and its state removed; a compose project
    goes with `down -v --remove-orphans` (containers, network and volumes).
    """
    choice = fabric_choice(_settings["fabric"].value if _settings.get("fabric") else None)
    local = LocalFabric(_state_dir())
    local_there = local.state_dir.exists()
    if choice == FabricChoice.LOCAL or (choice == FabricChoice.AUTO and local_there):
        if not local_there:
            typer.echo(f"no local fabric in {local.state_dir}")
            return
        stopped = local.down()
        what = ", ".join(stopped) if stopped else "nothing was running"
        typer.echo(f"stopped: {what}; removed {local.state_dir}")
        if choice == FabricChoice.AUTO:
            project, _why = _compose_project()
            if project is not None:
                _progress(
                    f"a compose fabric (project {project.name}) runs too: `emunet down` again "
                    "stops it"
                )
        return
    project, why = _compose_project()
    if project is None:
        where = "" if choice == FabricChoice.COMPOSE else f"no local fabric in {local.state_dir}; "
        typer.echo(f"no fabric to stop ({where}{why})")
        return
    recorded = recorded_files(project)
    base = recorded[0] if recorded else None
    if compose_file is not None or base is None or not base.is_file():
        base = find_compose_file(compose_file)
    fabric = ComposeFabric(base, project.name)
    run(fabric.down(project, _progress))
    names = ", ".join(c.name for c in project.containers)
    typer.echo(
        f"stopped compose fabric (project {project.name}): {names}; removed its network and volumes"
    )


@app.command()
@handled
def status(output: OutputOpt = None) -> None:
    """Which fabric the commands talk to, and what it runs."""
    structured = output in (Output.JSON, Output.YAML)
    try:
        target = _target()
    except ConfigError as exc:
        if structured:
            _emit([{"fabric": None, "message": str(exc)}], output, True)
        else:
            typer.echo(str(exc))
        return
    if target.kind == FabricKind.COMPOSE:
        _compose_status(target, output)
        return
    if target.kind == FabricKind.EXPLICIT:
        _explicit_status(target, output)
        return
    info = {"fabric": FabricKind.LOCAL.value, **LocalFabric(_state_dir()).describe()}
    if structured:
        _emit([info], output, True)
        return
    if not info["processes"]:
        typer.echo(f"no local fabric in {info['stateDir']}")
        return
    state = "up" if info["up"] else "degraded (some processes are gone; `emunet up` restarts them)"
    typer.echo(f"fabric {state}; etcd at {info['etcd']}; state in {info['stateDir']}")
    _print_table(
        ["NAME", "PID", "STATE", "NODE-IP", "LOG"],
        [
            [
                p["name"],
                str(p["pid"]),
                "running" if p["running"] else "gone",
                p["nodeIP"] or "-",
                p["log"],
            ]
            for p in info["processes"]
        ],
    )


def _compose_status(target: FabricTarget, output: Output | None) -> None:
    assert target.project is not None
    info = target.project.describe()
    if _emit([info], output, True):
        return
    up = all(c.ready for c in target.project.containers)
    state = "up" if up else "degraded (some containers are not healthy)"
    etcd = target.etcd_endpoint or f"- ({target.problem})"
    typer.echo(f"compose fabric (project {info['project']}) {state}; etcd at {etcd}")
    _print_table(
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
            for c in info["containers"]
        ],
    )


def _explicit_status(target: FabricTarget, output: Output | None) -> None:
    async def go() -> list[NodeInfo]:
        async with _registry() as reg:
            return await reg.nodes()

    nodes = run(go())
    info = {
        "fabric": FabricKind.EXPLICIT.value,
        "etcd": target.etcd,
        "description": target.description,
        "nodes": [n.to_dict() for n in nodes],
    }
    if _emit([info], output, True):
        return
    typer.echo(target.description)
    if nodes:
        _nodes_table(nodes)


# -- get / describe -------------------------------------------------------------


class Kind(StrEnum):
    NODES = "nodes"
    PODS = "pods"
    SERVICES = "services"
    ENDPOINTS = "endpoints"
    DEPLOYMENTS = "deployments"
    HOSTS = "hosts"  # emunet's own kind: the machines outside the cluster


_KIND_ALIASES = {
    "node": Kind.NODES,
    "nodes": Kind.NODES,
    "no": Kind.NODES,
    "pod": Kind.PODS,
    "pods": Kind.PODS,
    "po": Kind.PODS,
    "service": Kind.SERVICES,
    "services": Kind.SERVICES,
    "svc": Kind.SERVICES,
    "endpoints": Kind.ENDPOINTS,
    "endpoint": Kind.ENDPOINTS,
    "ep": Kind.ENDPOINTS,
    "deployment": Kind.DEPLOYMENTS,
    "deployments": Kind.DEPLOYMENTS,
    "deploy": Kind.DEPLOYMENTS,
    "host": Kind.HOSTS,
    "hosts": Kind.HOSTS,
}


def _kind(text: str, allowed: Iterable[Kind] = tuple(Kind)) -> Kind:
    kind = _KIND_ALIASES.get(text.lower())
    allowed = tuple(allowed)
    if kind is None or kind not in allowed:
        names = ", ".join(k.value for k in allowed)
        _fail(f"unknown resource type {text!r} (use one of: {names})")
    return kind


def _ports_text(svc: Service) -> str:
    parts = []
    for p in svc.ports:
        node = f":{p.node_port}" if p.node_port else ""
        parts.append(f"{p.port}{node}/{p.protocol}")
    return ",".join(parts) or "<none>"


def _external_ip(svc: Service) -> str:
    if svc.type != ServiceType.LOAD_BALANCER:
        return "<none>"
    return str(svc.ingress_ip) if svc.ingress_ip else "<pending>"


def _endpoints_object(svc: Service, pods: list[Pod]) -> dict[str, Any]:
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


def _endpoints_text(svc: Service, pods: list[Pod], wide: bool) -> str:
    eps = endpoints_for(svc, pods)
    texts = sorted({f"{e.ip}:{e.port}" for e in eps}, key=lambda t: (len(t), t))
    if not texts:
        return "<none>"
    if wide or len(texts) <= 3:
        return ",".join(texts)
    return ",".join(texts[:3]) + f" + {len(texts) - 3} more..."


def _hosts_table(hosts: Sequence[ExternalHostInfo], wide: bool = False) -> None:
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
    _print_table(headers, rows)


async def _get(kind: Kind, name: str | None, namespace: str | None, output: Output | None) -> None:
    wide = output == Output.WIDE
    async with _registry() as reg:
        if kind == Kind.NODES:
            nodes = await reg.nodes()
            if name is not None:
                nodes = [n for n in nodes if n.name == name]
                if not nodes:
                    raise NotFound(f'nodes "{name}" not found')
            if not _emit([n.to_dict() for n in nodes], output, name is not None):
                if not nodes:
                    typer.echo("No resources found", err=True)
                    return
                _nodes_table(nodes, wide)
            return
        if kind == Kind.HOSTS:
            hosts = await reg.hosts()
            if name is not None:
                hosts = [h for h in hosts if h.name == name]
                if not hosts:
                    raise NotFound(f'hosts "{name}" not found')
            if not _emit([h.to_dict() for h in hosts], output, name is not None):
                if not hosts:
                    typer.echo("No resources found (is the internet process running?)", err=True)
                    return
                _hosts_table(hosts, wide)
            return
        if kind == Kind.PODS:
            pods = await reg.list_pods(namespace)
            if name is not None:
                pods = [p for p in pods if p.name == name]
                if not pods:
                    raise NotFound(f'pods "{name}" not found in namespace {namespace}')
            if _emit([p.to_dict() for p in pods], output, name is not None):
                return
            if not pods:
                typer.echo(f"No resources found in {namespace or 'any'} namespace.", err=True)
                return
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
                    _age(p.created),
                ]
                if namespace is None:
                    row.insert(0, p.namespace)
                if wide:
                    row += [
                        ",".join(c.app for c in p.containers),
                        str(p.host_ip) if p.host_ip else "<none>",
                        ",".join(f"{k}={v}" for k, v in sorted(p.labels.items())) or "<none>",
                    ]
                rows.append(row)
            _print_table(headers, rows)
            return
        if kind == Kind.DEPLOYMENTS:
            deps = await reg.list_deployments(namespace)
            if name is not None:
                deps = [d for d in deps if d.name == name]
                if not deps:
                    raise NotFound(f'deployments "{name}" not found in namespace {namespace}')
            if _emit([d.to_dict() for d in deps], output, name is not None):
                return
            if not deps:
                typer.echo(f"No resources found in {namespace or 'any'} namespace.", err=True)
                return
            pods = await reg.list_pods(namespace)
            rows = []
            for d in sorted(deps, key=lambda d: (d.namespace, d.name)):
                owned = [p for p in pods if p.owner == d.name and p.namespace == d.namespace]
                running = sum(1 for p in owned if p.phase == PodPhase.RUNNING)
                row = [d.name, f"{running}/{d.replicas}", str(len(owned)), str(running),
                       _age(d.created)]  # fmt: skip
                if wide:
                    row.append(",".join(c.app for c in d.template.containers))
                rows.append(row)
            headers = ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
            _print_table(headers + (["APPS"] if wide else []), rows)
            return
        services = await reg.list_services(namespace)
        if name is not None:
            services = [s for s in services if s.name == name]
            if not services:
                raise NotFound(f'services "{name}" not found in namespace {namespace}')
        if kind == Kind.ENDPOINTS:
            pods = await reg.list_pods(namespace)
            objs = [_endpoints_object(s, pods) for s in services]
            if _emit(objs, output, name is not None):
                return
            if not services:
                typer.echo(f"No resources found in {namespace or 'any'} namespace.", err=True)
                return
            rows = [
                [s.name, _endpoints_text(s, pods, wide), _age(s.created)]
                for s in sorted(services, key=lambda s: (s.namespace, s.name))
            ]
            _print_table(["NAME", "ENDPOINTS", "AGE"], rows)
            return
        if _emit([s.to_dict() for s in services], output, name is not None):
            return
        if not services:
            typer.echo(f"No resources found in {namespace or 'any'} namespace.", err=True)
            return
        headers = ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
        if wide:
            headers.append("SELECTOR")
        rows = []
        for s in sorted(services, key=lambda s: (s.namespace, s.name)):
            row = [
                s.name,
                s.type.value,
                str(s.cluster_ip) if s.cluster_ip else "<none>",
                _external_ip(s),
                _ports_text(s),
                _age(s.created),
            ]
            if wide:
                row.append(",".join(f"{k}={v}" for k, v in sorted(s.selector.items())) or "<none>")
            rows.append(row)
        _print_table(headers, rows)


@app.command()
@handled
def get(
    kind: Annotated[
        str, typer.Argument(help="nodes, pods, services, endpoints, deployments or hosts")
    ],
    name: Annotated[str | None, typer.Argument(help="only this object")] = None,
    output: OutputOpt = None,
    namespace: NamespaceOpt = model.DEFAULT_NAMESPACE,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="every namespace")
    ] = False,
) -> None:
    """List objects, like kubectl get."""
    run(_get(_kind(kind), name, None if all_namespaces else namespace, output))


def _kv(label: str, value: Any, indent: int = 0) -> None:
    typer.echo(f"{' ' * indent}{label + ':':<24}{value}")


def _labels(labels: Any) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "<none>"


async def _describe(kind: Kind, name: str, namespace: str) -> None:
    async with _registry() as reg:
        if kind == Kind.PODS:
            pod = await reg.require_pod(namespace, name)
            _kv("Name", pod.name)
            _kv("Namespace", pod.namespace)
            _kv("Node", f"{pod.node_name or '<none>'}/{pod.host_ip or '<none>'}")
            _kv("Start Time", pod.created or "<unknown>")
            _kv("Labels", _labels(pod.labels))
            _kv("Status", pod.phase.value)
            if pod.reason:
                _kv("Reason", pod.reason)
            if not pod.ready:
                _kv("Ready", "False")
            if pod.message:
                _kv("Message", pod.message)
            _kv("IP", pod.pod_ip or "<none>")
            _kv("Controlled By", f"Deployment/{pod.owner}" if pod.owner else "<none>")
            typer.echo("Containers:")
            for c in pod.containers:
                typer.echo(f"  {c.name}:")
                _kv("App", c.app, 4)
                _kv("Args", json.dumps(dict(c.args)) if c.args else "<none>", 4)
                ports = ", ".join(
                    f"{p.container_port}/{p.protocol}" + (f" ({p.name})" if p.name else "")
                    for p in c.ports
                )
                _kv("Ports", ports or "<none>", 4)
            return
        if kind == Kind.SERVICES:
            svc = await reg.require_service(namespace, name)
            pods = await reg.list_pods(namespace)
            _kv("Name", svc.name)
            _kv("Namespace", svc.namespace)
            _kv("Labels", _labels(svc.labels))
            _kv("Selector", _labels(svc.selector))
            _kv("Type", svc.type.value)
            _kv("IP", svc.cluster_ip or "<none>")
            if svc.type == ServiceType.LOAD_BALANCER:
                _kv("LoadBalancer Ingress", svc.ingress_ip or "<pending>")
            eps = endpoints_for(svc, pods)
            for sp in svc.ports:
                label = sp.name or "<unset>"
                _kv("Port", f"{label}  {sp.port}/{sp.protocol}")
                _kv("TargetPort", f"{sp.effective_target}/{sp.protocol}")
                if sp.node_port:
                    _kv("NodePort", f"{label}  {sp.node_port}/{sp.protocol}")
                mine = [f"{e.ip}:{e.port}" for e in eps if e.port_name == sp.name]
                _kv("Endpoints", ",".join(mine) or "<none>")
            _kv("Session Affinity", svc.session_affinity.value)
            if svc.session_affinity == SessionAffinity.CLIENT_IP:
                _kv("Affinity Timeout", f"{svc.affinity_timeout}s")
            if svc.type != ServiceType.CLUSTER_IP:
                _kv("External Traffic Policy", svc.external_traffic_policy.value)
            return
        if kind == Kind.DEPLOYMENTS:
            dep = await reg.require_deployment(namespace, name)
            pods = [p for p in await reg.list_pods(namespace) if p.owner == dep.name]
            running = sum(1 for p in pods if p.phase == PodPhase.RUNNING)
            _kv("Name", dep.name)
            _kv("Namespace", dep.namespace)
            _kv("Selector", _labels(dep.selector))
            _kv("Replicas", f"{dep.replicas} desired | {len(pods)} total | {running} running")
            _kv("Pod Template Labels", _labels(dep.template.labels))
            if dep.template.node_name:
                _kv("Node", dep.template.node_name)
            for c in dep.template.containers:
                _kv(f"Container {c.name}", f"app {c.app} {json.dumps(dict(c.args))}")
            typer.echo("Pods:")
            for p in sorted(pods, key=lambda p: p.name):
                typer.echo(f"  {p.name}  {p.phase.value}  {p.pod_ip or '<none>'}  {p.node_name}")
            return
        node = await reg.require_node(name)
        pods = [p for p in await reg.list_pods(None) if p.node_name == node.name]
        _kv("Name", node.name)
        _kv("Status", "Ready" if node.ready else "NotReady")
        _kv("InternalIP", node.internal_ip)
        _kv("PodCIDR", node.pod_cidr or "<none>")
        _kv("Control Endpoint", node.control_endpoint or "<none>")
        if node.ready and node.control_endpoint:
            try:
                async with _control(node.control_endpoint, 3.0) as cc:
                    info = await cc.call("status")
                if isinstance(info, dict):
                    for key in ("subnet", "leases", "pods"):
                        if key in info:
                            _kv(key.capitalize(), info[key])
                    if isinstance(info.get("uptime"), int | float):
                        _kv("Uptime", f"{info['uptime']:.0f}s")
            except EmunetError as exc:
                _kv("Agent", f"unreachable ({exc})")
        typer.echo(f"Non-terminated Pods:    ({len(pods)} in total)")
        for p in sorted(pods, key=lambda p: (p.namespace, p.name)):
            typer.echo(f"  {p.namespace:<12}{p.name:<40}{p.phase.value:<10}{p.pod_ip or ''}")


@app.command()
@handled
def describe(
    kind: Annotated[str, typer.Argument(help="pod, service, node or deployment")],
    name: Annotated[str, typer.Argument()],
    namespace: NamespaceOpt = model.DEFAULT_NAMESPACE,
) -> None:
    """Show one object in detail, like kubectl describe."""
    allowed = (Kind.PODS, Kind.SERVICES, Kind.NODES, Kind.DEPLOYMENTS)
    run(_describe(_kind(kind, allowed), name, namespace))


# -- the deployment controller ---------------------------------------------------


async def _require_ready(reg: Registry) -> None:
    if not any(n.ready for n in await reg.nodes()):
        raise Unschedulable("no Ready node to schedule pods on (is the fabric up?)")


async def reconcile(reg: Registry, dep: Deployment, rng: random.Random | None = None) -> None:
    """The Deployment controller's work for ``dep`` (``controllers.plan_deployment``,
    the controller manager's own decisions), done here only while no controller
    manager runs (it holds its lease key then, and reconciles by itself)."""
    if await reg.lease_held(CONTROLLER_LEASE_KEY):
        return
    all_pods = await reg.list_pods(None)
    nodes = await reg.nodes()
    if dep.template.node_name and not any(n.name == dep.template.node_name for n in nodes):
        raise NotFound(f"no such node: {dep.template.node_name}")
    plan = plan_deployment([dep], all_pods, nodes, rng or random.Random(), burst=MAX_REPLICAS)
    if any(not p.node_name for p in plan.create) and not any(n.ready for n in nodes):
        schedule_pod(all_pods, nodes)  # raises: no Ready node (is the fabric up?)
    for p in plan.create:
        await reg.create_pod(p)
    for p in plan.bind:
        await reg.update_pod_if_exists(p)
    for p in plan.delete:
        await reg.delete_pod(p.namespace, p.name)


def _app_container(name: str, app_name: str, port: int | None) -> Container:
    specs = APP_PORTS.get(app_name)
    if specs is None:
        ports = (ContainerPort(port, "TCP", "app"),) if port else ()
        args = {"port": port} if port else {}
        return Container(name, app_name, args, ports)
    chosen = port or specs[0][1]
    return Container(
        name,
        app_name,
        {"port": chosen},
        tuple(ContainerPort(chosen, proto, pname) for pname, _default, proto in specs),
    )


def _deployment(
    name: str, app_name: str, replicas: int, namespace: str, node: str | None, port: int | None
) -> Deployment:
    labels = {"app": name}
    return Deployment(
        name=name,
        namespace=namespace,
        replicas=replicas,
        selector=labels,
        template=PodTemplate(labels, (_app_container(name, app_name, port),), node or ""),
        labels=labels,
    )


@app.command("run")
@handled
def run_cmd(
    name: Annotated[str, typer.Argument(help="deployment name")],
    app_name: Annotated[
        str, typer.Option("--app", help="pod app: http, echo, sink or module:Class")
    ] = "http",
    replicas: Annotated[int, typer.Option("--replicas", "-r", min=0)] = 1,
    node: Annotated[str | None, typer.Option("--node", help="put every pod on this node")] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", help="app port (http 80, echo 7, sink 5001)", min=1, max=65535),
    ] = None,
    namespace: NamespaceOpt = model.DEFAULT_NAMESPACE,
) -> None:
    """Create a Deployment running APP and its pods."""
    _check_app(app_name)
    dep = _deployment(name, app_name, replicas, namespace, node, port)
    dep.validate()

    async def go() -> None:
        async with _registry() as reg:
            if await reg.get_deployment(namespace, name) is not None:
                raise AlreadyExists(f'deployments.apps "{name}" already exists')
            if node is not None:
                await reg.require_node(node)
            elif replicas > 0:
                await _require_ready(reg)
            stored = await reg.put_deployment(dep)
            await reconcile(reg, stored)

    run(go())
    typer.echo(f"deployment.apps/{name} created")


@app.command()
@handled
def scale(
    name: Annotated[str, typer.Argument(help="deployment name")],
    replicas: Annotated[int, typer.Option("--replicas", "-r", min=0)],
    namespace: NamespaceOpt = model.DEFAULT_NAMESPACE,
) -> None:
    """Change the number of pods of a Deployment."""

    async def go() -> None:
        async with _registry() as reg:
            dep = await reg.require_deployment(namespace, name)
            dep = await reg.put_deployment(replace(dep, replicas=replicas))
            await reconcile(reg, dep)

    run(go())
    typer.echo(f"deployment.apps/{name} scaled")


def _parse_target(text: str | None) -> int | str:
    if text is None or text == "":
        return 0
    return int(text) if text.isdigit() else text


@app.command()
@handled
def expose(
    name: Annotated[str, typer.Argument(help="deployment (or pod) to expose")],
    port: Annotated[int, typer.Option("--port", help="service port")],
    target_port: Annotated[
        str | None, typer.Option("--target-port", help="container port number or name")
    ] = None,
    type_: Annotated[ServiceType, typer.Option("--type")] = ServiceType.CLUSTER_IP,
    protocol: Annotated[str, typer.Option("--protocol", help="TCP or UDP")] = "TCP",
    session_affinity: Annotated[
        SessionAffinity, typer.Option("--session-affinity")
    ] = SessionAffinity.NONE,
    session_affinity_timeout: Annotated[
        int, typer.Option("--session-affinity-timeout", help="seconds (ClientIP)")
    ] = DEFAULT_AFFINITY_TIMEOUT,
    external_traffic_policy: Annotated[
        TrafficPolicy, typer.Option("--external-traffic-policy")
    ] = TrafficPolicy.CLUSTER,
    node_port: Annotated[int, typer.Option("--node-port", help="NodePort to claim")] = 0,
    load_balancer_ip: Annotated[
        str | None, typer.Option("--load-balancer-ip", help="LoadBalancer ingress IP")
    ] = None,
    service_name: Annotated[
        str | None, typer.Option("--name", help="service name (default: NAME)")
    ] = None,
    namespace: NamespaceOpt = model.DEFAULT_NAMESPACE,
) -> None:
    """Create a Service selecting the pods of a Deployment (or a pod's labels).

    The target port defaults to the deployment's container port of that
    protocol when it has exactly one, else to --port.
    """
    lb_ip: IPv4Address | None = None
    if load_balancer_ip:
        try:
            lb_ip = IPv4Address(load_balancer_ip)
        except ValueError:
            _fail(f"--load-balancer-ip: {load_balancer_ip!r} is not an IPv4 address")

    async def go() -> Service:
        async with _registry() as reg:
            dep = await reg.get_deployment(namespace, name)
            containers: tuple[Container, ...]
            if dep is not None:
                selector = dict(dep.selector)
                containers = dep.template.containers
            else:
                pod = await reg.get_pod(namespace, name)
                if pod is None:
                    raise NotFound(f'no deployment or pod named "{name}" in namespace {namespace}')
                selector = {k: v for k, v in pod.labels.items() if k != "pod-template-hash"}
                if not selector:
                    raise ConfigError(f'pod "{name}" has no labels to select it by')
                containers = pod.containers
            target = _parse_target(target_port)
            if target == 0:
                candidates = {
                    p.container_port
                    for c in containers
                    for p in c.ports
                    if p.protocol == protocol.upper()
                }
                target = candidates.pop() if len(candidates) == 1 else port
            svc = Service(
                name=service_name or name,
                namespace=namespace,
                type=type_,
                selector=selector,
                ports=(ServicePortSpec(port, target, protocol.upper(), "", node_port),),
                session_affinity=session_affinity,
                affinity_timeout=session_affinity_timeout,
                external_traffic_policy=external_traffic_policy,
                load_balancer_ip=lb_ip,
                labels=dict(dep.labels) if dep is not None else {},
            )
            return await reg.create_service(svc)

    svc = run(go())
    typer.echo(f"service/{svc.name} exposed")


@app.command()
@handled
def delete(
    kind: Annotated[str, typer.Argument(help="pod, service or deployment")],
    name: Annotated[str, typer.Argument()],
    namespace: NamespaceOpt = model.DEFAULT_NAMESPACE,
) -> None:
    """Delete an object (a Deployment's deleted pod is replaced, like kubectl)."""
    which = _kind(kind, (Kind.PODS, Kind.SERVICES, Kind.DEPLOYMENTS))

    async def go() -> str:
        async with _registry() as reg:
            if which == Kind.PODS:
                pod = await reg.require_pod(namespace, name)
                await reg.delete_pod(namespace, name)
                if pod.owner:
                    dep = await reg.get_deployment(namespace, pod.owner)
                    if dep is not None:
                        await reconcile(reg, dep)
                return f'pod "{name}" deleted'
            if which == Kind.SERVICES:
                if not await reg.delete_service(namespace, name):
                    raise NotFound(f'services "{name}" not found in namespace {namespace}')
                return f'service "{name}" deleted'
            await reg.require_deployment(namespace, name)
            await reg.delete_deployment(namespace, name)
            for p in await reg.list_pods(namespace):
                if p.owner == name:
                    await reg.delete_pod(namespace, p.name)
            return f'deployment.apps "{name}" deleted'

    typer.echo(run(go()))


def _same_service(a: Service, b: Service) -> bool:
    def norm(s: Service) -> Service:
        ports = tuple(replace(p, target_port=p.effective_target, node_port=0) for p in s.ports)
        return replace(s, ports=ports, cluster_ip=None, uid="", created="")

    return norm(a) == norm(b) and all(
        not want.node_port or want.node_port == have.node_port
        for want, have in zip(b.ports, a.ports, strict=False)
    )


async def apply_objects(reg: Registry, objects: Sequence[Pod | Deployment | Service]) -> list[str]:
    """Create or update each object (the CLI's ``apply``); return kubectl-like lines."""
    if any(
        (isinstance(o, Deployment) and o.replicas > 0 and not o.template.node_name)
        or (isinstance(o, Pod) and not o.node_name)
        for o in objects
    ):
        await _require_ready(reg)
    lines = []
    for obj in objects:
        if isinstance(obj, Deployment):
            old = await reg.get_deployment(obj.namespace, obj.name)
            if old is not None and replace(old, uid="", created="") == obj:
                await reconcile(reg, old)
                lines.append(f"deployment.apps/{obj.name} unchanged")
                continue
            if old is not None:
                obj = replace(obj, uid=old.uid, created=old.created)
            if obj.template.node_name:
                await reg.require_node(obj.template.node_name)
            stored = await reg.put_deployment(obj)
            if old is not None and old.template != obj.template:
                # a new template: replace the old pods (Recreate strategy), once the
                # Deployment names the new template (a controller that replaces them
                # meanwhile uses it)
                for p in await reg.list_pods(obj.namespace):
                    if p.owner == obj.name:
                        await reg.delete_pod(p.namespace, p.name)
            await reconcile(reg, stored)
            lines.append(f"deployment.apps/{obj.name} {'configured' if old else 'created'}")
        elif isinstance(obj, Service):
            old_svc = await reg.get_service(obj.namespace, obj.name)
            if old_svc is None:
                await reg.create_service(obj)
                lines.append(f"service/{obj.name} created")
            elif _same_service(old_svc, obj):
                lines.append(f"service/{obj.name} unchanged")
            else:
                await reg.update_service(obj)
                lines.append(f"service/{obj.name} configured")
        else:
            old_pod = await reg.get_pod(obj.namespace, obj.name)
            if old_pod is not None:
                if replace(old_pod, uid="", created="", phase=PodPhase.PENDING, pod_ip=None,
                           host_ip=None, message="",
                           node_name=obj.node_name or "") != obj:  # fmt: skip
                    raise ConfigError(
                        f'pod "{obj.name}": a pod spec cannot be changed; delete the pod first'
                    )
                lines.append(f"pod/{obj.name} unchanged")
                continue
            node = obj.node_name
            if node:
                await reg.require_node(node)
            else:
                node = schedule_pod(await reg.list_pods(None), await reg.nodes())
            await reg.create_pod(replace(obj, node_name=node, created=now_rfc3339()))
            lines.append(f"pod/{obj.name} created")
    return lines


@app.command()
@handled
def apply(
    filename: Annotated[str, typer.Option("--filename", "-f", help="YAML file, or - for stdin")],
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="default namespace")
    ] = None,
) -> None:
    """Create or update the Pods, Deployments and Services of a Kubernetes YAML file."""
    if filename == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(filename).read_text(encoding="utf-8")
        except OSError as exc:
            _fail(f"{filename}: {exc.strerror or exc}")
        except UnicodeDecodeError:
            _fail(f"{filename}: not UTF-8 text (a Kubernetes YAML manifest is expected)")
    try:
        manifest = parse_manifests(text, namespace)
    except ConfigError as exc:
        _fail(f"{filename}: {exc}")
    for warning in manifest.warnings:
        typer.echo(f"Warning: {filename}: {warning}", err=True)

    async def go() -> list[str]:
        async with _registry() as reg:
            return await apply_objects(reg, manifest.objects)

    for line in run(go()):
        typer.echo(line)


# -- node state through the control API ------------------------------------------


async def _node_client(reg: Registry, node_name: str) -> ControlClient:
    node = await reg.require_node(node_name)
    if not node.control_endpoint:
        raise NotFound(f"node {node_name} has no control endpoint (is its agent running?)")
    return _control(node.control_endpoint, 10.0)


def _pod_netns(pod: Pod) -> str:
    return model.netns_name(pod.namespace, pod.name)


def _print_dump(result: Any) -> None:
    if isinstance(result, dict) and "lines" in result:
        for line in result["lines"]:
            typer.echo(line)
        return
    rows = result.get("rows") if isinstance(result, dict) else result
    if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
        headers = list(rows[0].keys())
        _print_table(
            [h.upper() for h in headers], [[str(r.get(h, "")) for h in headers] for r in rows]
        )
        return
    typer.echo(json.dumps(result, indent=2, default=str))


async def _dump(node_name: str, what: str, netns: str | None, namespace: str) -> Any:
    async with _registry() as reg:
        args: dict[str, Any] = {"what": what}
        if netns:
            pod = await reg.require_pod(namespace, netns)
            if pod.node_name != node_name:
                raise ConfigError(
                    f"pod {netns} runs on {pod.node_name or 'no node'}, not {node_name}"
                )
            args["netns"] = _pod_netns(pod)
        client = await _node_client(reg, node_name)
    async with client as c:
        return await c.call("dump", **args)


def _dump_command(what: str, name: str, doc: str, netns: bool = False) -> None:
    if netns:

        def command(
            node: Annotated[str, typer.Argument(help="node name")],
            pod: Annotated[
                str | None, typer.Option("--netns", help="a pod's namespace instead of the root")
            ] = None,
            namespace: NamespaceOpt = model.DEFAULT_NAMESPACE,
        ) -> None:
            _print_dump(run(_dump(node, what, pod, namespace)))

    else:

        def command(  # type: ignore[misc]
            node: Annotated[str, typer.Argument(help="node name")],
        ) -> None:
            _print_dump(run(_dump(node, what, None, model.DEFAULT_NAMESPACE)))

    command.__doc__ = doc
    app.command(name)(handled(command))


_dump_command("conntrack", "conntrack", "The node's conntrack table (conntrack -L).")
_dump_command("iptables", "iptables-save", "The node's iptables rules (iptables-save).")
_dump_command("routes", "routes", "Routes of the node (or of a pod with --netns).", netns=True)
_dump_command("fdb", "fdb", "The cni0 bridge forwarding database (bridge fdb show).")
_dump_command("neigh", "neigh", "ARP neighbours of the node (or a pod).", netns=True)
_dump_command("counters", "counters", "Packet and drop counters of the node.")


def _split_dest(dest: str) -> tuple[str, int | None]:
    host, sep, port = dest.rpartition(":")
    if not sep:
        return dest, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"DEST: {dest!r}: the port must be 1-65535")
    return host, int(port)


async def _trace(pod_name: str, dest: str, proto: Proto, namespace: str, duration: float) -> Any:
    host, port = _split_dest(dest)
    async with _registry() as reg:  # the pod first: a missing one is the error to name
        pod = await reg.require_pod(namespace, pod_name)
        if not pod.node_name:
            raise ConfigError(f"pod {pod_name} is not scheduled on a node yet")
        nodes = [n for n in await reg.nodes() if n.ready and n.control_endpoint]
        if pod.node_name not in {n.name for n in nodes}:
            raise ConfigError(f"node {pod.node_name} of pod {pod_name} is not Ready")
    if proto == Proto.ICMP and port is not None:
        raise ConfigError("DEST: a port makes no sense with --proto icmp")

    async def observe(node: NodeInfo) -> list[list[Any]]:
        # record the hops this node sees while the probe runs
        try:
            async with _control(node.control_endpoint, duration + 5.0) as c:
                result = await c.call("trace", proto=proto.value, duration=duration + 0.5)
        except EmunetError as exc:  # say so: a silent gap would mislead
            return [[node.name, "", "", "hops unavailable", str(exc), 0.0]]
        hops = list(result.get("hops", [])) if isinstance(result, dict) else []
        omitted = result.get("omitted", 0) if isinstance(result, dict) else 0
        if omitted:
            last = hops[-1][5] if hops and len(hops[-1]) > 5 else 0.0
            hops.append([node.name, "", "", "hops omitted", f"{omitted} more hops", last])
        return hops

    async def probe(node: NodeInfo) -> dict[str, Any]:
        args: dict[str, Any] = {
            "pod": _pod_netns(pod),
            "dst": host,
            "proto": proto.value,
            "duration": duration,
        }
        if port is not None:
            args["port"] = port
        async with _control(node.control_endpoint, duration + 5.0) as c:
            result = await c.call("trace", **args)
        return result if isinstance(result, dict) else {"hops": []}

    origin = next(n for n in nodes if n.name == pod.node_name)
    others = [n for n in nodes if n.name != pod.node_name]
    observers = [asyncio.ensure_future(observe(n)) for n in others]
    await asyncio.sleep(0.2 if observers else 0)  # let the observers arm their tracers
    try:
        main_result = await probe(origin)
    finally:
        other_hops = await asyncio.gather(*observers)
    hops = list(main_result.get("hops", []))
    for extra in other_hops:
        hops.extend(extra)
    # interleave the nodes' hops in time order (stable: a node's own order is kept)
    hops.sort(key=lambda hop: hop[5] if len(hop) > 5 else 0.0)
    return {"hops": hops, "result": main_result.get("result", "")}


@app.command()
@handled
def trace(
    pod: Annotated[str, typer.Argument(help="source pod")],
    dest: Annotated[str, typer.Argument(help="DEST[:PORT], an IP or a service/pod name")],
    proto: Annotated[Proto, typer.Option("--proto")] = Proto.ICMP,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds to wait")] = 1.0,
    namespace: NamespaceOpt = model.DEFAULT_NAMESPACE,
    output: OutputOpt = None,
) -> None:
    """Send one probe from POD and print the hops it took on every node."""
    result = run(_trace(pod, dest, proto, namespace, timeout))
    if _emit([result], output, True):
        return
    rows = [[str(i), *(str(x) for x in hop[:5])] for i, hop in enumerate(result["hops"], 1)]
    _print_table(["#", "NODE", "NETNS", "IFACE", "EVENT", "DETAIL"], rows)
    if result.get("result"):
        typer.echo(f"result: {result['result']}")


@app.command()
@handled
def capture(
    node: Annotated[str, typer.Argument(help="node name")],
    iface: Annotated[str, typer.Argument(help="interface (cni0, flannel0, eth0 with --netns)")],
    write: Annotated[Path, typer.Option("--write", "-w", help="pcap file to write")],
    count: Annotated[int, typer.Option("--count", "-c", min=1)] = 100,
    timeout: Annotated[float, typer.Option("--timeout", help="stop after seconds")] = 10.0,
    netns: Annotated[str | None, typer.Option("--netns", help="a pod's namespace")] = None,
    namespace: NamespaceOpt = model.DEFAULT_NAMESPACE,
) -> None:
    """Capture packets on an interface of a node into a pcap file."""

    async def go() -> tuple[int, Any]:
        args: dict[str, Any] = {"iface": iface, "count": count, "timeout": timeout}
        async with _registry() as reg:
            if netns:
                pod = await reg.require_pod(namespace, netns)
                args["netns"] = _pod_netns(pod)
            else:
                args["netns"] = "root"
            client = await _node_client(reg, node)
        written = 0
        result: Any = None
        partial = write.with_name(write.name + ".part")
        with open(partial, "wb") as out:
            async with client as c:
                frames = c.stream("capture", idle_timeout=timeout + 10.0, **args)
                frame: Frame
                async for frame in frames:
                    if frame.kind == "stream" and isinstance(frame.data, dict):
                        chunk = frame.data.get("pcap", b"")
                        if isinstance(chunk, bytes | bytearray):
                            out.write(chunk)
                            written += len(chunk)
                    elif frame.kind == "result":
                        result = frame.data
        partial.replace(write)  # an existing capture is only replaced by a complete one
        return written, result

    try:
        written, result = run(go())
    finally:
        write.with_name(write.name + ".part").unlink(missing_ok=True)
    packets = result.get("packets", "?") if isinstance(result, dict) else "?"
    dropped = result.get("dropped", 0) if isinstance(result, dict) else 0
    extra = f", {dropped} dropped" if dropped else ""
    typer.echo(f"{packets} packets captured ({written} bytes{extra}) to {write}")


def _check_app(name: str) -> None:
    """Refuse an app the agents cannot know (a module:Class is checked by the agent)."""
    from importlib.metadata import entry_points

    from emunet.nodes.apps import BUILTIN_APPS, ENTRY_POINT_GROUP

    if name in BUILTIN_APPS or ":" in name:
        return
    if any(ep.name == name for ep in entry_points(group=ENTRY_POINT_GROUP)):
        return
    known = ", ".join(sorted(BUILTIN_APPS))
    raise ConfigError(f"--app: unknown app {name!r}: use one of {known} or module:Class")


# -- entry point -------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """``emunet``: run the app; any error is one line on stderr, exit status 1."""
    try:
        code = app(args=list(argv) if argv is not None else None, standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except typer.TyperException as exc:
        # typer's own click: usage errors (no such command, bad option...)
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
            sys.exit(0)
        fmt = getattr(exc, "format_message", None)
        message = fmt() if callable(fmt) else str(exc)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        typer.echo(f"error: {' '.join(str(message).split())}{hint}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("EMUNET_DEBUG"):
            raise
        typer.echo(f"error: {_friendly(exc)}", err=True)
        sys.exit(1)
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the reader (head) left: quiet, like coreutils
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
