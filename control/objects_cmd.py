"""The object commands: ``get``, ``describe``, ``run``, ``scale``, ``expose``,
``delete`` and ``apply``.

Each reads the registry, asks a pure function what to print
(:mod:`emunet.control.views`) or what to write (:mod:`emunet.cluster.apply`,
:mod:`emunet.cluster.imperative`, :func:`emunet.cluster.controllers.plan_deployment`)
and does it.

Deployments are the controller manager's: ``run``, ``scale`` and ``apply``
write the Deployment and it creates, schedules and deletes the pods. Where no
controller manager holds its lease (a bare etcd), :func:`reconcile` plays the
Deployment controller here.
"""

from __future__ import annotations

import datetime
import random
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeVar

import typer
from emunet.control import views
from emunet.control.args import Kind, Output, parse_ipv4, parse_kind
from emunet.control.common import (
    NamespaceOpt,
    OutputOpt,
    control_client,
    echo_lines,
    emit,
    fail,
    handled,
    print_table,
    registry,
    run,
)
from emunet.nodes.registry import AlreadyExists, NotFound, Registry, now_rfc3339

from emunet.cluster import registry as model
from emunet.cluster.apply import Change, Manifested, decide, needs_ready_node
from emunet.cluster.controllers import Unschedulable, plan_deployment, schedule_pod
from emunet.cluster.imperative import expose_service, pod_selector, run_deployment
from emunet.cluster.keys import CONTROLLER_LEASE_KEY
from emunet.cluster.kubeproxy import DEFAULT_AFFINITY_TIMEOUT
from emunet.cluster.manifests import parse_manifests
from emunet.cluster.registry import (
    MAX_REPLICAS,
    Container,
    Deployment,
    Service,
    ServiceType,
    SessionAffinity,
    TrafficPolicy,
)
from emunet.errors import ConfigError, EmunetError

__all__ = ["apply_objects", "reconcile", "register"]


def _kind(text: str, allowed: Sequence[Kind] = tuple(Kind)) -> Kind:
    try:
        return parse_kind(text, allowed)
    except ConfigError as exc:
        fail(str(exc))


class _Named(Protocol):
    @property
    def name(self) -> str: ...


N = TypeVar("N", bound=_Named)


def _named(objects: list[N], name: str | None, missing: str) -> list[N]:
    """``objects``, or only the one called ``name``; NotFound(``missing``) if none is."""
    if name is None:
        return objects
    found = [o for o in objects if o.name == name]
    if not found:
        raise NotFound(missing)
    return found


def _shown(docs: list[dict[str, Any]], output: Output | None, single: bool, empty: str) -> bool:
    """Print ``docs`` as JSON/YAML, or say on stderr that there are none; False when
    the caller should print its table."""
    if emit(docs, output, single):
        return True
    if not docs:
        typer.echo(empty, err=True)
        return True
    return False


# -- get / describe -------------------------------------------------------------


async def _get(kind: Kind, name: str | None, namespace: str | None, output: Output | None) -> None:
    wide = output == Output.WIDE
    single = name is not None
    now = datetime.datetime.now(datetime.UTC)
    in_namespace = f"not found in namespace {namespace}"
    no_resources = f"No resources found in {namespace or 'any'} namespace."
    async with registry() as reg:
        if kind == Kind.NODES:
            nodes = _named(await reg.nodes(), name, f'nodes "{name}" not found')
            if not _shown([n.to_dict() for n in nodes], output, single, "No resources found"):
                print_table(views.nodes_table(nodes, wide))
        elif kind == Kind.HOSTS:
            hosts = _named(await reg.hosts(), name, f'hosts "{name}" not found')
            empty = "No resources found (is the internet process running?)"
            if not _shown([h.to_dict() for h in hosts], output, single, empty):
                print_table(views.hosts_table(hosts, wide))
        elif kind == Kind.PODS:
            pods = _named(await reg.list_pods(namespace), name, f'pods "{name}" {in_namespace}')
            if not _shown([p.to_dict() for p in pods], output, single, no_resources):
                print_table(views.pods_table(pods, namespace, wide, now))
        elif kind == Kind.DEPLOYMENTS:
            missing = f'deployments "{name}" {in_namespace}'
            deps = _named(await reg.list_deployments(namespace), name, missing)
            if not _shown([d.to_dict() for d in deps], output, single, no_resources):
                pods = await reg.list_pods(namespace)
                print_table(views.deployments_table(deps, pods, wide, now))
        else:
            missing = f'services "{name}" {in_namespace}'
            services = _named(await reg.list_services(namespace), name, missing)
            if kind == Kind.ENDPOINTS:
                pods = await reg.list_pods(namespace)
                docs = [views.endpoints_object(s, pods) for s in services]
                if not _shown(docs, output, single, no_resources):
                    print_table(views.endpoints_table(services, pods, wide, now))
            elif not _shown([s.to_dict() for s in services], output, single, no_resources):
                print_table(views.services_table(services, wide, now))


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


async def _describe(kind: Kind, name: str, namespace: str) -> list[str]:
    async with registry() as reg:
        if kind == Kind.PODS:
            return views.describe_pod(await reg.require_pod(namespace, name))
        if kind == Kind.SERVICES:
            svc = await reg.require_service(namespace, name)
            return views.describe_service(svc, await reg.list_pods(namespace))
        if kind == Kind.DEPLOYMENTS:
            dep = await reg.require_deployment(namespace, name)
            return views.describe_deployment(dep, await reg.list_pods(namespace))
        node = await reg.require_node(name)
        pods = await reg.list_pods(None)
    agent: Any = None
    agent_error: str | None = None
    if node.ready and node.control_endpoint:
        try:
            async with control_client(node.control_endpoint, 3.0) as cc:
                agent = await cc.call("status")
        except EmunetError as exc:
            agent_error = str(exc)
    return views.describe_node(node, pods, agent, agent_error)


@handled
def describe(
    kind: Annotated[str, typer.Argument(help="pod, service, node or deployment")],
    name: Annotated[str, typer.Argument()],
    namespace: NamespaceOpt = model.DEFAULT_NAMESPACE,
) -> None:
    """Show one object in detail, like kubectl describe."""
    allowed = (Kind.PODS, Kind.SERVICES, Kind.NODES, Kind.DEPLOYMENTS)
    echo_lines(run(_describe(_kind(kind, allowed), name, namespace)))


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
    dep = run_deployment(name, app_name, replicas, namespace, node, port)
    dep.validate()

    async def go() -> None:
        async with registry() as reg:
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


@handled
def scale(
    name: Annotated[str, typer.Argument(help="deployment name")],
    replicas: Annotated[int, typer.Option("--replicas", "-r", min=0)],
    namespace: NamespaceOpt = model.DEFAULT_NAMESPACE,
) -> None:
    """Change the number of pods of a Deployment."""

    async def go() -> None:
        async with registry() as reg:
            dep = await reg.require_deployment(namespace, name)
            dep = await reg.put_deployment(replace(dep, replicas=replicas))
            await reconcile(reg, dep)

    run(go())
    typer.echo(f"deployment.apps/{name} scaled")


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
    try:
        lb_ip = parse_ipv4("--load-balancer-ip", load_balancer_ip)
    except ConfigError as exc:
        fail(str(exc))

    async def go() -> Service:
        async with registry() as reg:
            dep = await reg.get_deployment(namespace, name)
            containers: tuple[Container, ...]
            if dep is not None:
                selector = dict(dep.selector)
                containers = dep.template.containers
            else:
                pod = await reg.get_pod(namespace, name)
                if pod is None:
                    raise NotFound(f'no deployment or pod named "{name}" in namespace {namespace}')
                selector = pod_selector(pod)
                containers = pod.containers
            svc = expose_service(
                name=service_name or name,
                namespace=namespace,
                selector=selector,
                containers=containers,
                labels=dep.labels if dep is not None else {},
                port=port,
                target_port=target_port,
                protocol=protocol,
                type_=type_,
                session_affinity=session_affinity,
                affinity_timeout=session_affinity_timeout,
                external_traffic_policy=external_traffic_policy,
                node_port=node_port,
                load_balancer_ip=lb_ip,
            )
            return await reg.create_service(svc)

    svc = run(go())
    typer.echo(f"service/{svc.name} exposed")


@handled
def delete(
    kind: Annotated[str, typer.Argument(help="pod, service or deployment")],
    name: Annotated[str, typer.Argument()],
    namespace: NamespaceOpt = model.DEFAULT_NAMESPACE,
) -> None:
    """Delete an object (a Deployment's deleted pod is replaced, like kubectl)."""
    which = _kind(kind, (Kind.PODS, Kind.SERVICES, Kind.DEPLOYMENTS))

    async def go() -> str:
        async with registry() as reg:
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


# -- apply ---------------------------------------------------------------------------


async def _stored(reg: Registry, obj: Manifested) -> Manifested | None:
    if isinstance(obj, Deployment):
        return await reg.get_deployment(obj.namespace, obj.name)
    if isinstance(obj, Service):
        return await reg.get_service(obj.namespace, obj.name)
    return await reg.get_pod(obj.namespace, obj.name)


async def apply_objects(reg: Registry, objects: Sequence[Manifested]) -> list[str]:
    """Create or update each object (the CLI's ``apply``); return kubectl-like lines.

    What to do with each is :func:`emunet.cluster.apply.decide`'s answer."""
    if needs_ready_node(objects):
        await _require_ready(reg)
    lines = []
    for new in objects:
        step = decide(await _stored(reg, new), new)
        obj = step.obj
        if isinstance(obj, Deployment):
            if step.change == Change.UNCHANGED:
                await reconcile(reg, obj)
            else:
                if obj.template.node_name:
                    await reg.require_node(obj.template.node_name)
                stored = await reg.put_deployment(obj)
                if step.recreate_pods:
                    # a new template: replace the old pods (Recreate strategy), once the
                    # Deployment names the new template (a controller that replaces them
                    # meanwhile uses it)
                    for p in await reg.list_pods(obj.namespace):
                        if p.owner == obj.name:
                            await reg.delete_pod(p.namespace, p.name)
                await reconcile(reg, stored)
        elif isinstance(obj, Service):
            if step.change == Change.CREATED:
                await reg.create_service(obj)
            elif step.change == Change.CONFIGURED:
                await reg.update_service(obj)
        elif step.change == Change.CREATED:
            node = obj.node_name
            if node:
                await reg.require_node(node)
            else:
                node = schedule_pod(await reg.list_pods(None), await reg.nodes())
            await reg.create_pod(replace(obj, node_name=node, created=now_rfc3339()))
        lines.append(step.line)
    return lines


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
            fail(f"{filename}: {exc.strerror or exc}")
        except UnicodeDecodeError:
            fail(f"{filename}: not UTF-8 text (a Kubernetes YAML manifest is expected)")
    try:
        manifest = parse_manifests(text, namespace)
    except ConfigError as exc:
        fail(f"{filename}: {exc}")
    for warning in manifest.warnings:
        typer.echo(f"Warning: {filename}: {warning}", err=True)

    async def go() -> list[str]:
        async with registry() as reg:
            return await apply_objects(reg, manifest.objects)

    echo_lines(run(go()))


def register(app: typer.Typer) -> None:
    """Add the object commands to ``app``, in the order ``--help`` lists them."""
    app.command()(get)
    app.command()(describe)
    app.command("run")(run_cmd)
    app.command()(scale)
    app.command()(expose)
    app.command()(delete)
    app.command()(apply)
