"""The ``emunet`` command line (typer + rich): the app, and the fabric's lifecycle.

Fabric (here): ``up [--local|--compose] [--nodes N]``, ``down``, ``status``.
Objects (:mod:`emunet.control.objects_cmd`): ``get nodes|pods|services|endpoints|deployments|hosts
[NAME] [-o json|yaml|wide]``, ``describe pod|service|node|deployment NAME``, ``run``,
``expose``, ``delete``, ``scale``, ``apply -f FILE``.
Node state through each agent's control API (:mod:`emunet.control.debug_cmd`):
``trace``, ``capture``, ``conntrack``, ``iptables-save``, ``routes``, ``fdb``,
``neigh``, ``counters``.
Benchmarks (:mod:`emunet.control.bench_cmd`): ``bench [--quick] [-o json] [--save DIR]``.

What the commands print is :mod:`emunet.control.views`'; what they write is
decided by pure functions in :mod:`emunet.cluster` (``apply``, ``imperative``,
``controllers``).

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

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from emunet.control import bench_cmd, debug_cmd, objects_cmd, views
from emunet.control.args import Output
from emunet.control.common import (
    OutputOpt,
    emit,
    fail,
    friendly,
    handled,
    print_table,
    progress,
    registry,
    run,
    settings,
    state_dir,
    target,
)
from emunet.control.compose import (
    ComposeFabric,
    default_project,
    find_compose_file,
    image_name,
    recorded_files,
)
from emunet.control.fabric import (
    ComposeProject,
    FabricChoice,
    FabricKind,
    FabricTarget,
    discover_compose,
    fabric_choice,
    pick_project,
)
from emunet.control.local import AlreadyUp, LocalFabric

from emunet.cluster.registry import NodeInfo
from emunet.errors import ConfigError

__all__ = ["app", "main"]

app = typer.Typer(
    name="emunet",
    help="emunet: a Kubernetes pod-network fabric emulator.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


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
    settings["etcd"] = etcd
    settings["state_dir"] = state_dir
    settings["fabric"] = fabric
    settings["target"] = None


def _running_local() -> bool:
    _state, alive = LocalFabric(state_dir()).status()
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
        fail("--local and --compose exclude each other")
    if compose or local is False:
        if agent_arg or controller_arg:
            fail(
                "--agent-arg and --controller-arg are for --local (the compose file holds "
                "the programs' arguments)"
            )
        _up_compose(nodes, compose_file, timeout)
        return
    if compose_file is not None:
        fail("--compose-file is for --compose")
    fabric = LocalFabric(
        state_dir(),
        agent_args=agent_arg or (),
        controller_args=controller_arg or (),
        ready_timeout=timeout,
    )
    try:
        ready = run(fabric.up(nodes, progress))
    except AlreadyUp as exc:
        typer.echo(str(exc))
        return
    print_table(views.nodes_table(ready))


def _up_compose(nodes: int, compose_file: Path | None, timeout: float) -> None:
    fabric = ComposeFabric(
        find_compose_file(compose_file),
        default_project(),
        image=image_name(),
        ready_timeout=timeout,
    )
    ready = run(fabric.up(nodes, progress))
    typer.echo(f"compose fabric (project {fabric.project}); etcd at {fabric.etcd_endpoint}")
    print_table(views.nodes_table(ready))
    if _running_local():
        progress(
            f"a local fabric runs too (state in {state_dir()}): commands talk to it unless "
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
    choice = fabric_choice(settings["fabric"].value if settings.get("fabric") else None)
    local = LocalFabric(state_dir())
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
                progress(
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
    run(fabric.down(project, progress))
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
        fabric = target()
    except ConfigError as exc:
        if structured:
            emit([{"fabric": None, "message": str(exc)}], output, True)
        else:
            typer.echo(str(exc))
        return
    if fabric.kind == FabricKind.COMPOSE:
        _compose_status(fabric, output)
        return
    if fabric.kind == FabricKind.EXPLICIT:
        _explicit_status(fabric, output)
        return
    info = {"fabric": FabricKind.LOCAL.value, **LocalFabric(state_dir()).describe()}
    if structured:
        emit([info], output, True)
        return
    if not info["processes"]:
        typer.echo(f"no local fabric in {info['stateDir']}")
        return
    state = "up" if info["up"] else "degraded (some processes are gone; `emunet up` restarts them)"
    typer.echo(f"fabric {state}; etcd at {info['etcd']}; state in {info['stateDir']}")
    print_table(views.local_status_table(info["processes"]))


def _compose_status(target: FabricTarget, output: Output | None) -> None:
    assert target.project is not None
    info = target.project.describe()
    if emit([info], output, True):
        return
    up = all(c.ready for c in target.project.containers)
    state = "up" if up else "degraded (some containers are not healthy)"
    etcd = target.etcd_endpoint or f"- ({target.problem})"
    typer.echo(f"compose fabric (project {info['project']}) {state}; etcd at {etcd}")
    print_table(views.compose_status_table(info["containers"]))


def _explicit_status(target: FabricTarget, output: Output | None) -> None:
    async def go() -> list[NodeInfo]:
        async with registry() as reg:
            return await reg.nodes()

    nodes = run(go())
    info = {
        "fabric": FabricKind.EXPLICIT.value,
        "etcd": target.etcd,
        "description": target.description,
        "nodes": [n.to_dict() for n in nodes],
    }
    if emit([info], output, True):
        return
    typer.echo(target.description)
    if nodes:
        print_table(views.nodes_table(nodes))


# the object and node-state commands, after the fabric's (the order --help lists)
objects_cmd.register(app)
debug_cmd.register(app)
app.command()(bench_cmd.bench)


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
        typer.echo(f"error: {friendly(exc)}", err=True)
        sys.exit(1)
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the reader (head) left: quiet, like coreutils
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
