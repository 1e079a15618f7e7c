"""What every ``emunet`` command shares: errors as one line, the fabric this
invocation talks to, its registry and agents, and printing.

The root callback (:mod:`emunet.control.cli`) records the global options in
:data:`settings`; :func:`target` turns them into a fabric once per invocation.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
import yaml
from emunet.control.args import Output
from emunet.control.fabric import ETCD_TIMEOUT, FabricTarget, select_target
from emunet.control.local import default_state_dir
from emunet.control.views import Table, table_lines
from emunet.nodes.control_client import ControlClient
from emunet.nodes.registry import Registry
from rich.console import Console
from rich.text import Text

from emunet.errors import EmunetError

__all__ = [
    "NamespaceOpt",
    "OutputOpt",
    "control_client",
    "echo_lines",
    "emit",
    "fail",
    "friendly",
    "handled",
    "print_table",
    "progress",
    "registry",
    "run",
    "settings",
    "state_dir",
    "target",
]

P = ParamSpec("P")
T = TypeVar("T")

settings: dict[str, Any] = {"etcd": None, "state_dir": None, "fabric": None, "target": None}

NamespaceOpt = Annotated[str, typer.Option("--namespace", "-n", help="namespace")]
OutputOpt = Annotated[Output | None, typer.Option("--output", "-o", help="json, yaml or wide")]


def _console() -> Console:
    # kubectl-like tables must not wrap when piped: a wide virtual terminal
    return Console(width=None if sys.stdout.isatty() else 250, highlight=False)


def fail(message: str) -> NoReturn:
    """Print ``error: MESSAGE`` (one line) on stderr and exit with status 1."""
    text = " ".join(str(message).split("\n")).strip() or "failed"
    typer.echo(f"error: {text}", err=True)
    raise typer.Exit(1)


def friendly(exc: BaseException) -> str:
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
            fail(friendly(exc))

    return wrapper


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def state_dir() -> Path:
    given = settings.get("state_dir")
    return Path(given) if given else default_state_dir()


def target() -> FabricTarget:
    """The fabric this invocation talks to (found once, then cached)."""
    found = settings.get("target")
    if found is None:
        fabric = settings.get("fabric")
        found = select_target(
            fabric=fabric.value if fabric else None,
            etcd=settings.get("etcd"),
            state_dir=state_dir(),
        )
        settings["target"] = found
    assert isinstance(found, FabricTarget)
    return found


def registry() -> Registry:
    return Registry(target().etcd, request_timeout=ETCD_TIMEOUT)


def control_client(endpoint: str, timeout: float) -> ControlClient:
    """A client of the control API recorded as ``endpoint``, reached as this host can."""
    fabric = target()
    host, port = fabric.reach(endpoint)
    return ControlClient(host, port, timeout=timeout, token=fabric.token)


def progress(text: str) -> None:
    typer.echo(f"... {text}", err=True)


def print_table(table: Table) -> None:
    """The table as :func:`~emunet.control.views.table_lines` lays it out, header bold."""
    header, *rows = table_lines(table)
    console = _console()
    console.print(Text(header, style="bold"), soft_wrap=True)
    for row in rows:
        console.print(Text(row), soft_wrap=True)


def echo_lines(lines: Iterable[str]) -> None:
    for line in lines:
        typer.echo(line)


def emit(objects: list[dict[str, Any]], output: Output | None, single: bool) -> bool:
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
