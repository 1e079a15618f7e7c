"""pod-shell commands, run by the agent inside a pod's network namespace.

Each command is ``async def cmd(sh: Shell, argv: list[str]) -> int``: it
writes what the Linux tool would print through ``sh.out`` / ``sh.err`` and
returns the tool's exit status. They use only the pod's sockets (through
:class:`~emunet.nodes.runtime.NodeRuntime`), so they see exactly what an app
in that pod would: routes, ARP, netfilter, the overlay, ICMP errors.

Differences from the real tools, all because an exec has no Ctrl-C:
``ping`` sends 4 probes unless ``-c`` says otherwise; ``tcpdump`` stops after
``-c`` packets (10 by default) or ``--duration`` seconds (10); ``iperf -s``
serves for ``-t`` seconds (60). ``traceroute`` waits 1 s per hop (``-w``),
probing the 3 queries of a hop in parallel. Names are not reverse-resolved.

This module is the dispatcher (:data:`COMMANDS`, :func:`run_command`) and the
iproute2 commands; ``ping``/``traceroute``/``tcpdump`` are in
:mod:`emunet.nodes.shell_net`, ``curl``/``nc``/``iperf`` in
:mod:`emunet.nodes.shell_http`, ``sockperf ping-pong`` (UDP request/response
latency) in :mod:`emunet.nodes.shell_sockperf`, and every tool's output format in
:mod:`emunet.render`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address

from emunet.nodes.runtime import NodeRuntime
from emunet.nodes.shell_env import Output, Resolver, Shell, clip
from emunet.nodes.shell_http import cmd_curl, cmd_iperf, cmd_nc
from emunet.nodes.shell_net import cmd_ping, cmd_tcpdump, cmd_traceroute
from emunet.nodes.shell_sockperf import USAGE, cmd_sockperf

from emunet.render import ip_addr, ip_link

log = logging.getLogger(__name__)

__all__ = ["COMMANDS", "Resolver", "Shell", "run_command"]


# ---------------------------------------------------------------------- ip


async def cmd_ip(sh: Shell, argv: list[str]) -> int:
    obj = argv[1] if len(argv) > 1 else ""
    ns = sh.ns
    if obj in ("a", "addr", "address"):
        for line in ip_addr(ns.interfaces.values()):
            sh.print(line)
        return 0
    if obj in ("r", "ro", "route"):
        for line in ns.routes.dump():
            sh.print(line)
        return 0
    if obj in ("n", "neigh", "neighbor", "neighbour"):
        return _ip_neigh(sh, argv[2:])
    if obj in ("l", "link"):
        for line in ip_link(ns.interfaces.values()):
            sh.print(line)
        return 0
    sh.eprint(f'Object "{obj}" is unknown, try "ip help".' if obj else "Usage: ip OBJECT")
    return 255


def _ip_neigh(sh: Shell, args: list[str]) -> int:
    """``ip neigh [show]``, ``ip neigh del ADDR dev NAME``, ``ip neigh flush all|dev NAME``,
    with iproute2's abbreviations, messages and exit codes."""
    ns = sh.ns
    cmd = args[0] if args else "show"
    addr: str | None = None
    dev: str | None = None
    rest = iter(args[1:])
    for word in rest:
        if word == "dev":
            dev = next(rest, None)
        elif word == "to":
            addr = next(rest, None)
        elif word != "all":
            addr = word
    if dev is not None and dev not in ns.interfaces:
        sh.eprint(f'Cannot find device "{dev}"')
        return 255
    if cmd in ("show", "list", "lst") or (cmd and "show".startswith(cmd)):
        for line in ns.neigh_show(sh.now):
            sh.print(line)
        return 0
    if cmd and "delete".startswith(cmd):
        if dev is None or addr is None:
            sh.eprint("Device and destination are required arguments.")
            return 255
        try:
            ip = IPv4Address(addr)
        except ValueError:
            sh.eprint(f'Error: inet address is expected rather than "{addr}".')
            return 1
        n = ns.neighbours.get(ip.packed)
        if n is None or n.dev.name != dev or not ns.neigh_delete(ip, sh.now):
            sh.eprint("RTNETLINK answers: No such file or directory")
            return 2
        sh.runtime.poke()  # packets that waited for it fail: ICMP to their sockets
        return 0
    if cmd and "flush".startswith(cmd):
        if len(args) < 2:
            sh.eprint("Flush requires arguments.")
            return 255
        for n in list(ns.neighbours.values()):
            if dev is None or n.dev.name == dev:
                ns.neigh_delete(IPv4Address(n.ip), sh.now)
        sh.runtime.poke()
        return 0
    sh.eprint(f'Command "{cmd}" is unknown, try "ip neigh help".')
    return 255


async def cmd_hostname(sh: Shell, argv: list[str]) -> int:
    if len(argv) > 1 and argv[1] in ("-i", "-I"):
        sh.print(str(sh.runtime.node.pods[sh.pod].ip))
    else:
        sh.print(sh.pod.rpartition("/")[2])  # "ns/name" is the node's key; the pod is "name"
    return 0


# --------------------------------------------------------------------- misc


async def cmd_help(sh: Shell, argv: list[str]) -> int:
    sh.print("pod-shell commands (run inside the pod's network namespace):")
    for _fn, usage in COMMANDS.values():
        if usage:
            sh.print(f"  {usage}")
    return 0


async def cmd_echo(sh: Shell, argv: list[str]) -> int:
    sh.print(" ".join(argv[1:]))
    return 0


async def cmd_true(sh: Shell, argv: list[str]) -> int:
    return 0 if argv[0] == "true" else 1


COMMANDS: dict[str, tuple[Callable[[Shell, list[str]], Awaitable[int]], str]] = {
    "ip": (cmd_ip, "ip addr|route|link|neigh [del ADDR dev NAME|flush all]"),
    "hostname": (cmd_hostname, "hostname [-i]"),
    "ping": (cmd_ping, "ping [-c N] [-i S] [-W S] [-w S] [-t TTL] [-s SIZE] [-q] HOST"),
    "traceroute": (cmd_traceroute, "traceroute [-n] [-I] [-m MAX] [-q N] [-w S] [-p PORT] HOST"),
    "curl": (cmd_curl, "curl [-s] [-v] [-i] [-I] [-m S] [-X METHOD] [-H HEADER] URL"),
    "nc": (cmd_nc, "nc [-u] [-z] [-w S] HOST PORT   (stdin is sent)"),
    "tcpdump": (cmd_tcpdump, "tcpdump [-c N] [-n] [-i IFACE] [--duration S]"),
    "iperf": (
        cmd_iperf,
        "iperf -c HOST [-u [-b RATE]] [-t S] [-p PORT] [-l LEN] | iperf -s [-u] [-t S] [-p PORT]",
    ),
    "sockperf": (cmd_sockperf, USAGE),
    "echo": (cmd_echo, "echo TEXT..."),
    "help": (cmd_help, "help"),
    "true": (cmd_true, ""),
    "false": (cmd_true, ""),
}


async def run_command(
    runtime: NodeRuntime,
    pod: str,
    argv: list[str],
    out: Output,
    err: Output | None = None,
    *,
    stdin: bytes = b"",
    resolver: Resolver | None = None,
) -> int:
    """Run one pod-shell command; returns its exit status (127: not found)."""
    sh = Shell(runtime, pod, out, err or out, stdin, resolver)
    if not argv:
        return 0
    entry = COMMANDS.get(argv[0])
    if entry is None:
        sh.eprint(f"sh: 1: {clip(argv[0])}: not found")
        return 127
    try:
        return await entry[0](sh, argv)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a command's bug is one line, never a traceback
        log.warning("%s: %s failed: %s: %s", pod, argv[0], type(exc).__name__, exc)
        sh.eprint(f"{argv[0]}: internal error ({type(exc).__name__})")
        return 1
