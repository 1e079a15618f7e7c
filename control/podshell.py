"""``pod-shell``: run commands inside a pod's network namespace, or on an external host.

``pod-shell POD -- CMD ARGS...`` runs one command and exits with its status
(with ``-i``, standard input is sent to the command: ``echo hi | pod-shell -i
web-1 -- nc -u 10.244.2.3 7``). Without a command it is an interactive shell:
prompt ``root@POD:/# ``, readline history in ``<state dir>/pod-shell_history``,
tab completion of command names, ``exit`` or Ctrl-D to leave.
``pod-shell --external NAME [-- CMD ...]`` does the same on a machine outside the
cluster that the internet process runs (``emunet get hosts`` lists them).

The pod's node (or the host's internet process) comes from the registry; the
command runs there (control API op ``exec``), which streams its output back. The
fabric is chosen as the ``emunet`` CLI chooses it (``--fabric``, ``--etcd``,
``$EMUNET_FABRIC``, ``$EMUNET_ETCD``, a running local fabric, a compose fabric
found through Docker; :mod:`emunet.control.fabric`), and recorded control
endpoints are reached through it (a compose fabric's published ports). Errors
are one line on stderr with status 1 (unknown pod, etcd or agent unreachable...).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from emunet.control.fabric import ETCD_TIMEOUT, FabricChoice, FabricTarget, select_target
from emunet.control.local import default_state_dir
from emunet.nodes.control_client import ControlClient
from emunet.nodes.etcd import EtcdUnavailable
from emunet.nodes.registry import Registry

from emunet.cluster import registry as model
from emunet.cluster.registry import ExternalHostInfo, NodeInfo
from emunet.errors import EmunetError

__all__ = ["PodTarget", "find_host", "find_pod", "main", "run_exec"]

_IDLE_TIMEOUT = 300.0
_BUILTINS = ("exit", "help")
_ETCD_PATIENCE = 60.0  # seconds to keep asking an etcd that does not answer in time
T = TypeVar("T")


class PodTarget:
    """Where commands run: the control endpoint serving ``exec`` (as this process
    reaches it), the ``pod`` argument of ``exec`` (the pod's name in its agent,
    ``namespace/name`` outside "default"; an external host's name) and the name the
    prompt shows."""

    def __init__(
        self, name: str, netns: str, host: str, port: int, token: str | None = None
    ) -> None:
        self.token = token
        self.name = name
        self.netns = netns
        self.host = host
        self.port = port


async def _patiently(fn: Callable[[], Awaitable[T]], patience: float = _ETCD_PATIENCE) -> T:
    """A read that gets no answer in time is asked again, for up to ``patience``
    seconds: a machine busy with hundreds of clients answers late (a refused
    connection, or any other error, fails at once)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return await fn()
        except EtcdUnavailable as exc:
            if "no answer" not in str(exc) or time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.2)


async def find_pod(fabric: FabricTarget, namespace: str, name: str) -> PodTarget:
    async def lookup() -> tuple[model.Pod, NodeInfo]:
        async with Registry(fabric.etcd, request_timeout=ETCD_TIMEOUT) as reg:
            pod = await reg.require_pod(namespace, name)
            if not pod.node_name:
                raise EmunetError(f"pod {name} is not scheduled on a node yet")
            return pod, await reg.require_node(pod.node_name)

    pod, node = await _patiently(lookup)
    if pod.phase != model.PodPhase.RUNNING:
        raise EmunetError(f"pod {name} is {pod.phase.value}, not Running")
    if not node.control_endpoint:
        raise EmunetError(f"node {node.name} has no control endpoint (is its agent running?)")
    host, port = fabric.reach(node.control_endpoint)
    netns = model.netns_name(pod.namespace, pod.name)
    return PodTarget(pod.name, netns, host, port, fabric.token)


async def find_host(fabric: FabricTarget, name: str) -> PodTarget:
    """An external host (``emunet get hosts``): its internet process runs the commands."""

    async def lookup() -> ExternalHostInfo:
        async with Registry(fabric.etcd, request_timeout=ETCD_TIMEOUT) as reg:
            return await reg.require_host(name)

    host = await _patiently(lookup)
    if not host.control_endpoint:
        raise EmunetError(f"host {name} has no control endpoint (is the internet process running?)")
    address, port = fabric.reach(host.control_endpoint)
    return PodTarget(host.name, host.name, address, port, fabric.token)


async def run_exec(target: PodTarget, argv: Sequence[str], stdin: bytes = b"") -> int:
    """Run one command; copy its output to our stdout/stderr; return its status."""
    args: dict[str, Any] = {"pod": target.netns, "argv": list(argv)}
    if stdin:
        args["stdin"] = stdin
    code = 1
    async with ControlClient(target.host, target.port, timeout=10.0, token=target.token) as client:
        async for frame in client.stream("exec", idle_timeout=_IDLE_TIMEOUT, **args):
            if frame.kind == "stream" and isinstance(frame.data, dict):
                for key, stream in (("out", sys.stdout), ("err", sys.stderr)):
                    text = frame.data.get(key)
                    if isinstance(text, bytes):
                        text = text.decode(errors="replace")
                    if isinstance(text, str):
                        stream.write(text)
                        stream.flush()
            elif frame.kind == "result":
                result = frame.data
                if isinstance(result, dict) and isinstance(result.get("exit"), int):
                    code = result["exit"]
    return code


def _command_names() -> list[str]:
    try:
        from emunet.nodes.shell import COMMANDS

        names = list(COMMANDS)
    except Exception:  # the agent's shell module is optional for the client
        names = ["ip", "hostname", "ping", "traceroute", "curl", "nc", "tcpdump", "iperf"]
    return sorted({*names, *_BUILTINS})


def _setup_readline(history: Path) -> Any:
    try:
        import readline
    except ImportError:  # pragma: no cover - not on Linux
        return None
    names = _command_names()

    def complete(text: str, state: int) -> str | None:
        line = readline.get_line_buffer()
        if line[: readline.get_begidx()].strip():
            return None  # only the command name is completed
        matches = [n + " " for n in names if n.startswith(text)]
        return matches[state] if state < len(matches) else None

    readline.set_completer(complete)
    readline.set_completer_delims(" \t")
    readline.parse_and_bind("tab: complete")
    with contextlib.suppress(OSError):
        readline.read_history_file(history)
    readline.set_history_length(1000)
    return readline


def interactive(target: PodTarget, history: Path) -> int:
    rl = _setup_readline(history)
    prompt = f"root@{target.name}:/# "
    status = 0
    try:
        while True:
            try:
                line = input(prompt)
            except EOFError:
                print()
                break
            except KeyboardInterrupt:
                print("^C")
                continue
            try:
                argv = shlex.split(line)
            except ValueError as exc:
                print(f"sh: syntax error: {exc}", file=sys.stderr)
                status = 2
                continue
            if not argv:
                continue
            if argv[0] == "exit":
                status = int(argv[1]) if len(argv) > 1 and argv[1].isdigit() else status
                break
            try:
                status = asyncio.run(run_exec(target, argv))
            except KeyboardInterrupt:
                print("^C")
                status = 130
            except EmunetError as exc:
                print(f"pod-shell: {exc}", file=sys.stderr)
                status = 1
    finally:
        # no state dir (a remote etcd): no history file
        if rl is not None and history.parent.is_dir():
            with contextlib.suppress(OSError):
                rl.write_history_file(history)
    return status


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pod-shell",
        description="Run commands inside an emunet pod, or on an external host "
        "(ip, ping, curl, nc, traceroute, ...).",
        usage="pod-shell [-i] [-n NAMESPACE] [--fabric local|compose] [--etcd HOST:PORT] "
        "(POD | --external NAME) [-- CMD ARGS...]",
    )
    p.add_argument("pod", nargs="?", help="pod name")
    p.add_argument(
        "--external", metavar="NAME", default=None, help="an external host (emunet get hosts)"
    )
    p.add_argument("-i", "--stdin", action="store_true", help="pass standard input to the command")
    p.add_argument("-n", "--namespace", default=model.DEFAULT_NAMESPACE)
    p.add_argument(
        "--fabric",
        choices=[c.value for c in FabricChoice],
        default=None,
        help="the fabric (default: --etcd, else $EMUNET_FABRIC, else $EMUNET_ETCD, else a "
        "running local fabric, else a compose fabric found through Docker)",
    )
    p.add_argument("--etcd", default=None, help="etcd endpoint (default: $EMUNET_ETCD or found)")
    p.add_argument("--state-dir", type=Path, default=None, help="local fabric state directory")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in args_list:
        i = args_list.index("--")
        args_list, command = args_list[:i], args_list[i + 1 :]
    parser = _parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:
        sys.exit(1 if exc.code else 0)
    if (args.pod is None) == (args.external is None):
        print("pod-shell: give a POD or --external NAME (one of them)", file=sys.stderr)
        sys.exit(1)
    state_dir = args.state_dir or default_state_dir()
    try:
        fabric = select_target(fabric=args.fabric, etcd=args.etcd, state_dir=state_dir)
        if args.external is not None:
            target = asyncio.run(find_host(fabric, args.external))
        else:
            target = asyncio.run(find_pod(fabric, args.namespace, args.pod))
        if command:
            # like kubectl exec: standard input only with -i
            stdin = sys.stdin.buffer.read() if args.stdin and sys.stdin is not None else b""
            sys.exit(asyncio.run(run_exec(target, command, stdin)))
        history = Path(state_dir) / "pod-shell_history"
        sys.exit(interactive(target, history))
    except EmunetError as exc:
        print(f"pod-shell: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)
    except OSError as exc:
        print(f"pod-shell: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
