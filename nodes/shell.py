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
"""

from __future__ import annotations

import asyncio
import getopt
import logging
import math
import os
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any
from urllib.parse import urlsplit

from emunet.nodes.runtime import BoundedQueue, NodeRuntime, Stream

from emunet.dataplane.interfaces import LOOPBACK
from emunet.dataplane.sockets import EchoReply, SocketErrorEvent
from emunet.errors import EmunetError
from emunet.packets import ethernet, icmp, ipv4, tcp
from emunet.packets.mac import MAC

log = logging.getLogger(__name__)

__all__ = ["COMMANDS", "Resolver", "Shell", "run_command"]

Resolver = Callable[[str], Awaitable[IPv4Address | None]]
Output = Callable[[str], None]

_ETH = ethernet.HEADER
_IP = ipv4.HEADER
_PORTS = struct.Struct("!HH")
_TCP = tcp.HEADER
_ICMP_ECHO = struct.Struct("!BBHHH")


class UsageError(Exception):
    pass


@dataclass
class Shell:
    """One command's environment: the pod, its output streams and stdin."""

    runtime: NodeRuntime
    pod: str
    out: Output
    err: Output
    stdin: bytes = b""
    resolver: Resolver | None = None

    @property
    def ns(self) -> Any:
        return self.runtime.namespace(self.pod)

    @property
    def now(self) -> float:
        return self.runtime.now()

    def print(self, line: str = "") -> None:
        self.out(line + "\n")

    def eprint(self, line: str = "") -> None:
        self.err(line + "\n")

    async def resolve(self, host: str) -> IPv4Address | None:
        try:
            return IPv4Address(host)
        except ValueError:
            pass
        if host == "localhost":
            return IPv4Address("127.0.0.1")
        if host == self.pod:
            return self.runtime.node.pods[self.pod].ip
        if self.resolver is not None:
            try:
                return await self.resolver(host)
            except EmunetError:
                return None
        return None


def _opts(
    argv: list[str], short: str, long: list[str] | None = None
) -> tuple[dict[str, str], list[str]]:
    try:
        pairs, rest = getopt.gnu_getopt(argv, short, long or [])
    except getopt.GetoptError as exc:
        raise UsageError(str(exc)) from None
    return {k: v for k, v in pairs}, rest


def _num(opts: dict[str, str], key: str, default: float, what: str, high: float = 1e6) -> float:
    """A non-negative, finite number of at most ``high`` (seconds, mostly): ``inf``,
    ``nan``, ``1e400`` and negative values are refused as the tools refuse them."""
    if key not in opts:
        return default
    text = opts[key]
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"invalid argument for {key}: '{_clip(text)}' ({what})") from None
    if not math.isfinite(value) or value < 0 or value > high:
        raise UsageError(f"invalid argument for {key}: '{_clip(text)}' ({what}: 0 to {high:g})")
    return value


def _int(opts: dict[str, str], key: str, default: int, low: int, high: int) -> int:
    """A decimal integer in ``[low, high]`` (strtol's way: sign and digits only)."""
    if key not in opts:
        return default
    text = opts[key].strip()
    digits = text[1:] if text[:1] in "+-" else text
    if not digits.isdigit() or not digits.isascii() or len(digits) > 12:
        raise UsageError(f"invalid argument: '{_clip(opts[key])}'")
    value = int(text)
    if not low <= value <= high:
        raise UsageError(
            f"invalid argument: '{_clip(opts[key])}': out of range: {low} <= value <= {high}"
        )
    return value


def _clip(text: str, limit: int = 40) -> str:
    """An argument as an error message quotes it: never a whole megabyte."""
    return text if len(text) <= limit else text[:limit] + "..."


def _why(exc: OSError) -> str:
    """The C library's text for a socket error (``Network is unreachable``)."""
    if exc.errno:
        return os.strerror(exc.errno)
    return exc.strerror or str(exc)


# ---------------------------------------------------------------------- ip


async def cmd_ip(sh: Shell, argv: list[str]) -> int:
    obj = argv[1] if len(argv) > 1 else ""
    ns = sh.ns
    if obj in ("a", "addr", "address"):
        for iface in ns.interfaces.values():
            flags = (
                "LOOPBACK,UP,LOWER_UP"
                if iface.kind == LOOPBACK
                else "BROADCAST,MULTICAST,UP,LOWER_UP"
            )
            if not iface.up:
                flags = flags.replace(",UP,LOWER_UP", "")
            name = iface.name
            if iface.peer is not None:
                name += f"@if{iface.peer.index}"
            state = "UNKNOWN" if iface.kind == LOOPBACK else ("UP" if iface.up else "DOWN")
            sh.print(
                f"{iface.index}: {name}: <{flags}> mtu {iface.mtu} qdisc noqueue "
                f"state {state} group default qlen 1000"
            )
            if iface.kind == LOOPBACK:
                sh.print("    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00")
            elif iface.mac is not None:
                extra = " link-netnsid 0" if iface.peer is not None else ""
                sh.print(f"    link/ether {iface.mac} brd ff:ff:ff:ff:ff:ff{extra}")
            for a in iface.addresses:
                scope = "host" if iface.kind == LOOPBACK else "global"
                brd = (
                    f" brd {a.network.broadcast_address}"
                    if a.network.prefixlen < 31 and iface.kind != LOOPBACK
                    else ""
                )
                sh.print(f"    inet {a.with_prefixlen}{brd} scope {scope} {iface.name}")
                sh.print("       valid_lft forever preferred_lft forever")
        return 0
    if obj in ("r", "ro", "route"):
        for line in ns.routes.dump():
            sh.print(line)
        return 0
    if obj in ("n", "neigh", "neighbor", "neighbour"):
        return _ip_neigh(sh, argv[2:])
    if obj in ("l", "link"):
        for iface in ns.interfaces.values():
            name = iface.name + (f"@if{iface.peer.index}" if iface.peer is not None else "")
            sh.print(f"{iface.index}: {name}: mtu {iface.mtu} state {'UP' if iface.up else 'DOWN'}")
            if iface.mac is not None:
                sh.print(f"    link/ether {iface.mac} brd ff:ff:ff:ff:ff:ff")
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


# -------------------------------------------------------------------- ping

_UNREACH_TEXT = {
    0: "Destination Net Unreachable",
    1: "Destination Host Unreachable",
    2: "Destination Protocol Unreachable",
    3: "Destination Port Unreachable",
    4: "Frag needed and DF set",
    9: "Destination Net Prohibited",
    10: "Destination Host Prohibited",
    13: "Communication prohibited by filter",
}


def icmp_error_text(ev: SocketErrorEvent) -> str:
    if ev.icmp_type == icmp.TIME_EXCEEDED:
        return "Time to live exceeded" if ev.icmp_code == 0 else "Frag reassembly time exceeded"
    text = _UNREACH_TEXT.get(ev.icmp_code, f"Dest Unreachable, Bad Code: {ev.icmp_code}")
    if ev.icmp_code == 4:
        text += f" (mtu = {ev.mtu})"
    return text


async def cmd_ping(sh: Shell, argv: list[str]) -> int:
    try:
        opts, rest = _opts(argv[1:], "c:i:W:t:s:w:qn")
        count = _int(opts, "-c", 4, 1, 100_000)
        interval = _num(opts, "-i", 1.0, "interval", 3600)
        wait = _num(opts, "-W", 1.0, "timeout", 3600)
        ttl = _int(opts, "-t", 64, 1, 255)
        size = _int(opts, "-s", 56, 0, 65507)
        deadline = _num(opts, "-w", 0, "deadline", 86400)
        if not rest:
            raise UsageError("usage error: Destination address required")
        if interval < 0.002:
            # ping's flood floor: the agent's loop must keep serving the other pods
            raise UsageError(f"cannot flood; minimal interval allowed is 2ms, got {interval}")
    except UsageError as exc:
        sh.eprint(f"ping: {exc}")
        return 2
    host = rest[0]
    dst = await sh.resolve(host)
    if dst is None:
        sh.eprint(f"ping: {host}: Name or service not known")
        return 2
    quiet = "-q" in opts
    sh.print(f"PING {host} ({dst}) {size}({size + 28}) bytes of data.")
    ep = sh.runtime.ping_socket(sh.pod)
    payload = bytes(i & 0xFF for i in range(size))
    rtts: list[float] = []
    sent = errors = 0
    start = time.monotonic()
    last_seq = 0
    loop_end = start + deadline if deadline else None

    def report(ev: EchoReply | SocketErrorEvent) -> None:
        nonlocal errors
        if isinstance(ev, EchoReply):
            rtts.append(ev.rtt * 1000)
            if not quiet:
                sh.print(
                    f"{ev.size + 8} bytes from {ev.src}: icmp_seq={ev.seq} ttl={ev.ttl} "
                    f"time={_ms(ev.rtt * 1000)} ms"
                )
        else:
            errors += 1
            if not quiet:
                sh.print(f"From {ev.offender} icmp_seq={last_seq} {icmp_error_text(ev)}")

    try:
        for seq in range(1, count + 1):
            try:
                ep.send(dst, seq, payload, ttl=ttl)
            except OSError as exc:
                sh.eprint(f"ping: sendmsg: {_why(exc)}")
                errors += 1
            sent += 1
            last_seq = seq
            period_end = sh.now + (interval if seq < count else wait)
            while True:
                left = period_end - sh.now
                if loop_end is not None:
                    left = min(left, loop_end - time.monotonic())
                if left <= 0:
                    await asyncio.sleep(0)  # never hold the node's loop for a whole run
                    break
                ev = await ep.receive(left)
                if ev is None:
                    break
                report(ev)
                if seq == count and len(rtts) + errors >= count:
                    break
            if loop_end is not None and time.monotonic() >= loop_end:
                break
    finally:
        ep.close()
    elapsed = int((time.monotonic() - start) * 1000)
    received = len(rtts)
    loss = 100 * (sent - received) // sent if sent else 0
    sh.print("")
    sh.print(f"--- {host} ping statistics ---")
    err = f", +{errors} errors" if errors else ""
    sh.print(
        f"{sent} packets transmitted, {received} received{err}, {loss}% packet loss, "
        f"time {elapsed}ms"
    )
    if rtts:
        avg = sum(rtts) / len(rtts)
        mdev = math.sqrt(sum((r - avg) ** 2 for r in rtts) / len(rtts))
        sh.print(f"rtt min/avg/max/mdev = {min(rtts):.3f}/{avg:.3f}/{max(rtts):.3f}/{mdev:.3f} ms")
    return 0 if received else 1


def _ms(ms: float) -> str:
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    return f"{ms:.3f}"


# -------------------------------------------------------------- traceroute

_ANNOTATION = {0: " !N", 1: " !H", 2: " !P", 4: " !F", 9: " !X", 10: " !X", 13: " !X"}


async def cmd_traceroute(sh: Shell, argv: list[str]) -> int:
    try:
        opts, rest = _opts(argv[1:], "nIm:q:w:p:f:")
        max_ttl = _int(opts, "-m", 30, 1, 255)
        nqueries = _int(opts, "-q", 3, 1, 10)
        wait = _num(opts, "-w", 1.0, "wait", 60)
        port = _int(opts, "-p", 33434, 1, 65535)
        first = _int(opts, "-f", 1, 1, 255)
        if not rest:
            raise UsageError('Specify "host" missing argument.')
        if not 1 <= max_ttl <= 255 or not 1 <= nqueries <= 10 or not 1 <= first <= max_ttl:
            raise UsageError("bad -m, -q or -f value")
    except UsageError as exc:
        sh.eprint(str(exc))
        return 2
    host = rest[0]
    dst = await sh.resolve(host)
    if dst is None:
        sh.eprint(f"{host}: Name or service not known")
        sh.eprint(f'Cannot handle "host" cmdline arg `{host}\' on position 1 (argc 1)')
        return 2
    use_icmp = "-I" in opts
    numeric = "-n" in opts
    size = 60
    sh.print(f"traceroute to {host} ({dst}), {max_ttl} hops max, {size} byte packets")
    probe_no = 0
    for ttl in range(first, max_ttl + 1):
        probes = []
        for _ in range(nqueries):
            probes.append(_probe(sh, dst, ttl, port + probe_no, use_icmp, probe_no, wait, size))
            probe_no += 1
        results = await asyncio.gather(*probes)
        parts: list[str] = []
        last: IPv4Address | None = None
        done = False
        for res in results:
            if res is None:
                parts.append(" *")
                continue
            addr, rtt, note, final = res
            if addr != last:
                parts.append(f" {addr}" if numeric else f" {addr} ({addr})")
                last = addr
            parts.append(f"  {rtt:.3f} ms{note}")
            done = done or final
        sh.print(f"{ttl:2d} " + "".join(parts))
        if done:
            return 0
    return 0


async def _probe(
    sh: Shell,
    dst: IPv4Address,
    ttl: int,
    port: int,
    use_icmp: bool,
    seq: int,
    wait: float,
    size: int,
) -> tuple[IPv4Address, float, str, bool] | None:
    rt = sh.runtime
    t0 = sh.now
    if use_icmp:
        ep = rt.ping_socket(sh.pod)
        try:
            ep.send(dst, seq + 1, bytes(size - 28), ttl=ttl)
            ev = await ep.receive(wait)
        except OSError:
            return None
        finally:
            ep.close()
        if ev is None:
            return None
        rtt = (sh.now - t0) * 1000
        if isinstance(ev, EchoReply):
            return ev.src, rtt, "", True
        return _from_error(ev, rtt, dst)
    udp = await rt.udp_bind(sh.pod)
    try:
        udp.sock.ttl = ttl
        try:
            udp.sendto(bytes(size - 28), (dst, port))
        except OSError:
            return None
        if not await udp.wait_event(wait) or not udp.errors:
            return None
        err = udp.errors.popleft()
        return _from_error(err, (sh.now - t0) * 1000, dst)
    finally:
        udp.close()


def _from_error(
    ev: SocketErrorEvent, rtt: float, dst: IPv4Address
) -> tuple[IPv4Address, float, str, bool]:
    if ev.icmp_type == icmp.TIME_EXCEEDED:
        return ev.offender, rtt, "", False
    if ev.icmp_code == icmp.PORT_UNREACH:
        return ev.offender, rtt, "", True
    return ev.offender, rtt, _ANNOTATION.get(ev.icmp_code, f" !<{ev.icmp_code}>"), True


# -------------------------------------------------------------------- curl


class CurlError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


async def cmd_curl(sh: Shell, argv: list[str]) -> int:
    try:
        opts, rest = _opts(
            argv[1:], "svim:IXH:A:o:", ["max-time=", "connect-timeout=", "silent", "verbose"]
        )
        max_time = _num(opts, "-m", 0, "max time", 86400) or _num(
            opts, "--max-time", 0, "max time", 86400
        )
        connect_timeout = _num(opts, "--connect-timeout", 10.0, "connect timeout", 86400)
    except UsageError as exc:
        sh.eprint(f"curl: option: {exc}")
        sh.eprint("curl: try 'curl --help' for more information")
        return 2
    silent = "-s" in opts or "--silent" in opts
    verbose = "-v" in opts or "--verbose" in opts
    if not rest:
        sh.eprint("curl: no URL specified!")
        return 2
    url = rest[0]
    started = time.monotonic()
    try:
        coro = _curl(sh, url, opts, verbose, connect_timeout)
        if max_time:
            try:
                return await asyncio.wait_for(coro, max_time)
            except TimeoutError:
                ms = int((time.monotonic() - started) * 1000)
                raise CurlError(28, f"Operation timed out after {ms} milliseconds") from None
        return await coro
    except CurlError as exc:
        if not silent or "-S" in opts:
            sh.eprint(f"curl: ({exc.code}) {exc}")
        return exc.code


async def _curl(
    sh: Shell, url: str, opts: dict[str, str], verbose: bool, connect_timeout: float
) -> int:
    if "://" not in url:
        url = "http://" + url
    try:
        parts = urlsplit(url)
        port = parts.port if parts.port is not None else 80  # :0 is port 0, as curl has it
    except ValueError:  # an unclosed [, a port that is no number or past 65535
        raise CurlError(3, "URL using bad/illegal format or missing URL") from None
    if parts.scheme != "http":
        raise CurlError(1, f'Protocol "{_clip(parts.scheme)}" not supported or disabled in libcurl')
    host = parts.hostname or ""
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    ip = await sh.resolve(host)
    if ip is None:
        raise CurlError(6, f"Could not resolve host: {host}")
    if verbose:
        sh.eprint(f"*   Trying {ip}:{port}...")
    t0 = time.monotonic()
    if port == 0:  # connect(2) to port 0 is refused
        raise CurlError(7, f"Failed to connect to {host} port 0 after 0 ms: Couldn't connect "
                        "to server")  # fmt: skip
    try:
        reader, writer = await sh.runtime.open_connection(sh.pod, ip, port, timeout=connect_timeout)
    except TimeoutError:
        ms = int((time.monotonic() - t0) * 1000)
        raise CurlError(28, f"Failed to connect to {host} port {port} after {ms} ms: "
                        "Timeout was reached") from None  # fmt: skip
    except OSError as exc:
        ms = int((time.monotonic() - t0) * 1000)
        why = "Couldn't connect to server"
        if isinstance(exc, ConnectionRefusedError):
            why = "Couldn't connect to server (Connection refused)"
        elif "UNREACH" in str(exc):
            why = "Couldn't connect to server (No route to host)"
        raise CurlError(
            7, f"Failed to connect to {host} port {port} after {ms} ms: {why}"
        ) from None
    if verbose:
        sh.eprint(f"* Connected to {host} ({ip}) port {port}")
    method = "HEAD" if "-I" in opts else opts.get("-X", "GET")
    headers = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host}" + (f":{port}" if port != 80 else ""),
        f"User-Agent: {opts.get('-A', 'curl/8.5.0')}",
        "Accept: */*",
    ]
    if "-H" in opts:
        headers.append(opts["-H"])
    request = "\r\n".join(headers) + "\r\n\r\n"
    if verbose:
        for line in headers:
            sh.eprint(f"> {line}")
        sh.eprint(">")
    try:
        writer.write(request.encode())
        await writer.drain()
        status = await reader.readline()
        if not status:
            raise CurlError(52, "Empty reply from server")
        head = [status.decode("latin-1").rstrip("\r\n")]
        length: int | None = None
        chunked = False
        while True:
            raw = await reader.readline()
            text = raw.decode("latin-1").rstrip("\r\n")
            if not text:
                break
            head.append(text)
            name, _, value = text.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
            elif name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        if verbose:
            for line_s in head:
                sh.eprint(f"< {line_s}")
            sh.eprint("<")
        if "-i" in opts or "-I" in opts:
            sh.out("\r\n".join(head) + "\r\n\r\n")
        if method == "HEAD":
            body = b""
        elif chunked:
            body = await _read_chunked(reader)
        elif length is not None:
            body = await reader.readexactly(length)
        else:
            body = await reader.read()
    except asyncio.IncompleteReadError:
        raise CurlError(18, "transfer closed with outstanding read data remaining") from None
    except ConnectionResetError:
        raise CurlError(56, "Recv failure: Connection reset by peer") from None
    except OSError as exc:
        raise CurlError(56, f"Recv failure: {exc.strerror or exc}") from None
    except ValueError:
        raise CurlError(8, "Weird server reply") from None
    finally:
        writer.abort() if writer.conn.error else writer.close()
    sh.out(body.decode("utf-8", "replace"))
    if verbose:
        sh.eprint(f"* Connection #0 to host {host} left intact")
    return 0


async def _read_chunked(reader: Stream) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readline()).strip().split(b";")[0] or b"0", 16)
        if size == 0:
            await reader.readline()
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readline()


# ---------------------------------------------------------------------- nc


async def cmd_nc(sh: Shell, argv: list[str]) -> int:
    try:
        opts, rest = _opts(argv[1:], "uzvw:nN")
        wait = _num(opts, "-w", 0, "timeout", 86400)
        if len(rest) != 2:
            raise UsageError("missing hostname and port")
        if not rest[1].isdigit() or not rest[1].isascii() or not 0 < int(rest[1]) < 65536:
            raise UsageError(f"port number invalid: {_clip(rest[1])}")
        port = int(rest[1])
    except UsageError as exc:
        sh.eprint(f"nc: {exc}")
        return 1
    host = rest[0]
    ip = await sh.resolve(host)
    if ip is None:
        sh.eprint(f'nc: getaddrinfo for host "{host}" port {port}: Name or service not known')
        return 1
    if "-u" in opts:
        return await _nc_udp(sh, ip, host, port, opts, wait or 1.0)
    try:
        reader, writer = await sh.runtime.open_connection(sh.pod, ip, port, timeout=wait or 10.0)
    except OSError as exc:
        why = (
            "Connection refused"
            if isinstance(exc, ConnectionRefusedError)
            else ("Connection timed out" if isinstance(exc, TimeoutError) else _why(exc))
        )
        sh.eprint(f"nc: connect to {host} port {port} (tcp) failed: {why}")
        return 1
    if "-z" in opts:
        sh.eprint(f"Connection to {host} {port} port [tcp/*] succeeded!")
        writer.close()
        return 0
    try:
        if sh.stdin:
            writer.write(sh.stdin)
            await writer.drain()
        writer.close()

        async def pump() -> None:
            while data := await reader.read(65536):
                sh.out(data.decode("utf-8", "replace"))

        if wait:
            try:
                await asyncio.wait_for(pump(), wait)
            except TimeoutError:
                pass
        else:
            await pump()
    except OSError as exc:
        sh.eprint(f"nc: {_why(exc)}")
        return 1
    return 0


async def _nc_udp(
    sh: Shell, ip: IPv4Address, host: str, port: int, opts: dict[str, str], wait: float
) -> int:
    udp = await sh.runtime.udp_bind(sh.pod)
    try:
        udp.sendto(sh.stdin if "-z" not in opts else b"", (ip, port))
        end = sh.now + wait
        while (left := end - sh.now) > 0:
            if not await udp.wait_event(left):
                break
            if udp.errors:
                ev = udp.errors.popleft()
                if ev.errno_name == "ECONNREFUSED":
                    if "-z" in opts:
                        return 1
                    sh.eprint("nc: read: Connection refused")
                    return 1
                continue
            got = udp.sock.recvfrom()
            if got is not None:
                sh.out(got[0].decode("utf-8", "replace"))
        if "-z" in opts:
            sh.eprint(f"Connection to {host} {port} port [udp/*] succeeded!")
        return 0
    except OSError as exc:
        sh.eprint(f"nc: {_why(exc)}")
        return 1
    finally:
        udp.close()


# ----------------------------------------------------------------- tcpdump

_TCP_FLAGS = ((0x01, "F"), (0x02, "S"), (0x04, "R"), (0x08, "P"), (0x20, "U"))


def decode(data: bytes | bytearray, l2: bool = True) -> str:
    """One tcpdump-like line (without the timestamp) for a frame or an IPv4 packet."""
    mv = memoryview(data)
    try:
        if l2:
            if len(mv) < 14:
                return f"[|ether] length {len(mv)}"
            _dst, _src, etype = _ETH.unpack_from(mv)
            if etype == 0x0806:
                return _decode_arp(mv[14:])
            if etype != 0x0800:
                return f"ethertype 0x{etype:04x}, length {len(mv)}"
            mv = mv[14:]
        return _decode_ip(mv)
    except (struct.error, IndexError, ValueError):
        return f"[|malformed] length {len(mv)}"


def _decode_arp(mv: memoryview) -> str:
    op = struct.unpack_from("!H", mv, 6)[0]
    sha = MAC(bytes(mv[8:14]))
    spa = IPv4Address(bytes(mv[14:18]))
    tpa = IPv4Address(bytes(mv[24:28]))
    if op == 1:
        return f"ARP, Request who-has {tpa} tell {spa}, length {len(mv)}"
    if op == 2:
        return f"ARP, Reply {spa} is-at {sha}, length {len(mv)}"
    return f"ARP, op {op}, length {len(mv)}"


def _decode_ip(mv: memoryview) -> str:
    vihl, _tos, total, _ident, frag, _ttl, proto, _c, s, d = _IP.unpack_from(mv)
    hlen = (vihl & 0x0F) * 4
    src, dst = IPv4Address(s), IPv4Address(d)
    body = mv[hlen:total]
    if frag & 0x1FFF:
        return f"IP {src} > {dst}: ip-proto-{proto}"
    if proto == 1 and len(body) >= 8:
        typ, code, _ck, ident, seq = _ICMP_ECHO.unpack_from(body)
        if typ in (0, 8):
            kind = "echo request" if typ == 8 else "echo reply"
            return f"IP {src} > {dst}: ICMP {kind}, id {ident}, seq {seq}, length {len(body)}"
        if typ == 3 and len(body) >= 36:
            inner = body[8:]
            ihl = (inner[0] & 0x0F) * 4
            idst = IPv4Address(bytes(inner[16:20]))
            iproto = inner[9]
            if code == 3 and iproto == 17:
                dport = _PORTS.unpack_from(inner, ihl)[0]
                what = f"{idst} udp port {dport} unreachable"
                return f"IP {src} > {dst}: ICMP {what}, length {len(body)}"
            what = _UNREACH_TEXT.get(code, f"code {code}").lower()
            return f"IP {src} > {dst}: ICMP {idst} unreachable ({what}), length {len(body)}"
        if typ == 11:
            return f"IP {src} > {dst}: ICMP time exceeded in-transit, length {len(body)}"
        return f"IP {src} > {dst}: ICMP type-#{typ}, length {len(body)}"
    if proto == 17 and len(body) >= 8:
        sp, dp = _PORTS.unpack_from(body)
        return f"IP {src}.{sp} > {dst}.{dp}: UDP, length {len(body) - 8}"
    if proto == 6 and len(body) >= 20:
        sp, dp, seq, ack, off, flags, win, _ck, _urg = _TCP.unpack_from(body)
        doff = (off >> 4) * 4
        names = "".join(n for bit, n in _TCP_FLAGS if flags & bit) + ("." if flags & 0x10 else "")
        plen = len(body) - doff
        text = f"IP {src}.{sp} > {dst}.{dp}: Flags [{names}]"
        if flags & 0x02 or plen or flags & 0x01:
            text += f", seq {seq}" + (f":{(seq + plen) & 0xFFFFFFFF}" if plen else "")
        if flags & 0x10:
            text += f", ack {ack}"
        return text + f", win {win}, length {plen}"
    return f"IP {src} > {dst}: ip-proto-{proto} {len(body)}"


async def cmd_tcpdump(sh: Shell, argv: list[str]) -> int:
    try:
        opts, _rest = _opts(argv[1:], "c:ni:evq", ["duration="])
        count = _int(opts, "-c", 10, 1, 1_000_000)
        duration = _num(opts, "--duration", 10.0, "duration", 3600)
    except UsageError as exc:
        sh.eprint(f"tcpdump: {exc}")
        return 1
    iface = opts.get("-i", "eth0")
    queue: BoundedQueue[tuple[float, bytes]] = BoundedQueue(4096)
    try:

        def tap(now: float, data: bytes | bytearray) -> None:
            queue.put((now, bytes(data)))

        remove = sh.runtime.tap(sh.pod, iface, tap)
    except EmunetError:
        sh.eprint(f"tcpdump: {iface}: No such device exists")
        return 1
    dev = sh.ns.interfaces[iface]
    l2 = dev.is_l2
    link = "EN10MB (Ethernet)" if l2 else "RAW (Raw IP)"
    sh.eprint("tcpdump: verbose output suppressed, use -v[v]... for full protocol decode")
    sh.eprint(f"listening on {iface}, link-type {link}, snapshot length 262144 bytes")
    seen = 0
    end = sh.now + duration
    try:
        while seen < count:
            left = end - sh.now
            if left <= 0:
                break
            try:
                now, data = await asyncio.wait_for(queue.get(), left)
            except TimeoutError:
                break
            seen += 1
            stamp = time.strftime("%H:%M:%S", time.localtime(sh.runtime.wall(now)))
            frac = f"{sh.runtime.wall(now) % 1:.6f}"[1:]
            sh.print(f"{stamp}{frac} {decode(data, l2)}")
    finally:
        remove()
    sh.eprint("")
    sh.eprint(f"{seen} packets captured")
    sh.eprint(f"{seen + len(queue) + queue.dropped} packets received by filter")
    sh.eprint(f"{queue.dropped} packets dropped by kernel")
    return 0


# -------------------------------------------------------------------- iperf


def _human(nbytes: float) -> str:
    for unit, scale in (("GBytes", 1 << 30), ("MBytes", 1 << 20), ("KBytes", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes:.0f} Bytes"


def _rate(bits_per_s: float) -> str:
    for unit, scale in (("Gbits/sec", 1e9), ("Mbits/sec", 1e6), ("Kbits/sec", 1e3)):
        if bits_per_s >= scale:
            return f"{bits_per_s / scale:.2f} {unit}"
    return f"{bits_per_s:.0f} bits/sec"


async def cmd_iperf(sh: Shell, argv: list[str]) -> int:
    try:
        opts, _rest = _opts(argv[1:], "c:st:p:l:")
        seconds = _num(opts, "-t", 10.0 if "-c" in opts else 60.0, "time", 3600)
        port = _int(opts, "-p", 5001, 1, 65535)
        chunk = _int(opts, "-l", 128 * 1024, 1, 1 << 20)
    except UsageError as exc:
        sh.eprint(f"iperf: {exc}")
        return 1
    bar = "-" * 60
    if "-s" in opts:
        return await _iperf_server(sh, port, seconds, bar)
    if "-c" not in opts:
        sh.eprint("iperf: parameter error - must either be a client (-c) or server (-s)")
        return 1
    host = opts["-c"]
    ip = await sh.resolve(host)
    if ip is None:
        sh.eprint(f"iperf: failed to resolve host '{host}'")
        return 1
    sh.print(bar)
    sh.print(f"Client connecting to {host}, TCP port {port}")
    sh.print("TCP window size:  256 KByte (default)")
    sh.print(bar)
    try:
        reader, writer = await sh.runtime.open_connection(sh.pod, ip, port, timeout=10.0)
    except OSError as exc:
        sh.eprint(f"connect failed: {_why(exc)}")
        return 1
    lip, lport = writer.sockname()
    sh.print(f"[  1] local {lip} port {lport} connected with {ip} port {port}")
    block = bytes(chunk)
    sent = 0
    t0 = sh.now

    async def transfer() -> bytes:
        nonlocal sent
        while sh.now - t0 < seconds:
            writer.write(block)
            sent += chunk
            await writer.drain()
        writer.close()
        line = await reader.readline()
        await writer.wait_closed()
        return line

    try:
        reply = await asyncio.wait_for(transfer(), seconds + 10.0)
    except (OSError, TimeoutError) as exc:
        writer.abort()
        sh.eprint(f"iperf: transfer failed: {exc or 'timed out (is a sink listening?)'}")
        return 1
    elapsed = sh.now - t0
    try:
        received = int(reply.strip() or b"0")
    except ValueError:
        received = sent
    sh.print("[ ID] Interval       Transfer     Bandwidth")
    sh.print(f"[  1] 0.0000-{elapsed:.4f} sec  {_human(received)}  {_rate(received * 8 / elapsed)}")
    return 0


async def _iperf_server(sh: Shell, port: int, seconds: float, bar: str) -> int:
    sh.print(bar)
    sh.print(f"Server listening on TCP port {port}")
    sh.print("TCP window size:  256 KByte (default)")
    sh.print(bar)
    ids = 0

    async def serve(reader: Stream, writer: Stream) -> None:
        nonlocal ids
        ids += 1
        n = ids
        rip, rport = writer.peername()
        lip, lport = writer.sockname()
        sh.print(f"[{n:3d}] local {lip} port {lport} connected with {rip} port {rport}")
        t0 = sh.now
        total = 0
        while data := await reader.read(1 << 20):
            total += len(data)
        elapsed = max(sh.now - t0, 1e-9)
        writer.write(f"{total}\n".encode())
        writer.close()
        sh.print(
            f"[{n:3d}] 0.0000-{elapsed:.4f} sec  {_human(total)}  {_rate(total * 8 / elapsed)}"
        )

    try:
        server = await sh.runtime.start_server(sh.pod, port, serve)
    except OSError as exc:
        sh.eprint(f"bind failed: {_why(exc)}")
        return 1
    try:
        await asyncio.sleep(seconds)
    finally:
        server.close()
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
    "iperf": (cmd_iperf, "iperf -c HOST [-t S] [-p PORT] [-l LEN] | iperf -s [-t S] [-p PORT]"),
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
        sh.eprint(f"sh: 1: {_clip(argv[0])}: not found")
        return 127
    try:
        return await entry[0](sh, argv)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a command's bug is one line, never a traceback
        log.warning("%s: %s failed: %s: %s", pod, argv[0], type(exc).__name__, exc)
        sh.eprint(f"{argv[0]}: internal error ({type(exc).__name__})")
        return 1
