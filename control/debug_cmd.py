"""The node-state commands, through each agent's control API: the dumps
(``conntrack``, ``iptables-save``, ``routes``, ``fdb``, ``neigh``,
``counters``), ``trace`` and ``capture``.

What they print is :mod:`emunet.control.views`' (``dump_view``, ``merge_trace``,
``trace_table``, ``capture_summary``); here they find the agents and talk to them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from emunet.control import views
from emunet.control.args import Proto, split_dest
from emunet.control.common import (
    NamespaceOpt,
    OutputOpt,
    control_client,
    echo_lines,
    emit,
    handled,
    print_table,
    registry,
    run,
)
from emunet.nodes.control_client import ControlClient, Frame
from emunet.nodes.registry import NotFound, Registry

from emunet.cluster import registry as model
from emunet.cluster.registry import NodeInfo, Pod
from emunet.errors import ConfigError, EmunetError

__all__ = ["register"]


async def _node_client(reg: Registry, node_name: str) -> ControlClient:
    node = await reg.require_node(node_name)
    if not node.control_endpoint:
        raise NotFound(f"node {node_name} has no control endpoint (is its agent running?)")
    return control_client(node.control_endpoint, 10.0)


def _pod_netns(pod: Pod) -> str:
    return model.netns_name(pod.namespace, pod.name)


def _print_dump(result: Any) -> None:
    view = views.dump_view(result)
    if isinstance(view, views.Table):
        print_table(view)
    else:
        echo_lines(view)


async def _dump(node_name: str, what: str, netns: str | None, namespace: str) -> Any:
    async with registry() as reg:
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


def _dump_command(app: typer.Typer, what: str, name: str, doc: str, netns: bool = False) -> None:
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


async def _trace(pod_name: str, dest: str, proto: Proto, namespace: str, duration: float) -> Any:
    host, port = split_dest(dest)
    async with registry() as reg:  # the pod first: a missing one is the error to name
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
            async with control_client(node.control_endpoint, duration + 5.0) as c:
                result = await c.call("trace", proto=proto.value, duration=duration + 0.5)
        except EmunetError as exc:  # say so: a silent gap would mislead
            return [[node.name, "", "", "hops unavailable", str(exc), 0.0]]
        return views.node_hops(node.name, result)

    async def probe(node: NodeInfo) -> dict[str, Any]:
        args: dict[str, Any] = {
            "pod": _pod_netns(pod),
            "dst": host,
            "proto": proto.value,
            "duration": duration,
        }
        if port is not None:
            args["port"] = port
        async with control_client(node.control_endpoint, duration + 5.0) as c:
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
    return views.merge_trace(main_result, other_hops)


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
    if emit([result], output, True):
        return
    print_table(views.trace_table(result["hops"]))
    if result.get("result"):
        typer.echo(f"result: {result['result']}")


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
        async with registry() as reg:
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
    typer.echo(views.capture_summary(result, written, write))


def register(app: typer.Typer) -> None:
    """Add the node-state commands to ``app``, in the order ``--help`` lists them."""
    _dump_command(app, "conntrack", "conntrack", "The node's conntrack table (conntrack -L).")
    _dump_command(app, "iptables", "iptables-save", "The node's iptables rules (iptables-save).")
    _dump_command(
        app, "routes", "routes", "Routes of the node (or of a pod with --netns).", netns=True
    )
    _dump_command(app, "fdb", "fdb", "The cni0 bridge forwarding database (bridge fdb show).")
    _dump_command(app, "neigh", "neigh", "ARP neighbours of the node (or a pod).", netns=True)
    _dump_command(app, "counters", "counters", "Packet and drop counters of the node.")
    app.command()(trace)
    app.command()(capture)
