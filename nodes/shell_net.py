"""pod-shell's probes: ``ping``, ``traceroute`` and ``tcpdump`` (see :mod:`emunet.nodes.shell`)."""

from __future__ import annotations

import asyncio
import math
import time
from ipaddress import IPv4Address

from emunet.nodes.runtime import BoundedQueue
from emunet.nodes.shell_env import Shell, UsageError, int_opt, num_opt, os_reason, parse_opts

from emunet.dataplane.sockets import EchoReply, SocketErrorEvent
from emunet.errors import EmunetError
from emunet.packets import icmp
from emunet.render import ping_icmp_error, tcpdump_line

__all__ = ["cmd_ping", "cmd_tcpdump", "cmd_traceroute", "icmp_error_text"]


# -------------------------------------------------------------------- ping


def icmp_error_text(ev: SocketErrorEvent) -> str:
    return ping_icmp_error(ev.icmp_type, ev.icmp_code, ev.mtu)


async def cmd_ping(sh: Shell, argv: list[str]) -> int:
    try:
        opts, rest = parse_opts(argv[1:], "c:i:W:t:s:w:qn")
        count = int_opt(opts, "-c", 4, 1, 100_000)
        interval = num_opt(opts, "-i", 1.0, "interval", 3600)
        wait = num_opt(opts, "-W", 1.0, "timeout", 3600)
        ttl = int_opt(opts, "-t", 64, 1, 255)
        size = int_opt(opts, "-s", 56, 0, 65507)
        deadline = num_opt(opts, "-w", 0, "deadline", 86400)
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
                sh.eprint(f"ping: sendmsg: {os_reason(exc)}")
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
        opts, rest = parse_opts(argv[1:], "nIm:q:w:p:f:")
        max_ttl = int_opt(opts, "-m", 30, 1, 255)
        nqueries = int_opt(opts, "-q", 3, 1, 10)
        wait = num_opt(opts, "-w", 1.0, "wait", 60)
        port = int_opt(opts, "-p", 33434, 1, 65535)
        first = int_opt(opts, "-f", 1, 1, 255)
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


# ----------------------------------------------------------------- tcpdump


async def cmd_tcpdump(sh: Shell, argv: list[str]) -> int:
    try:
        opts, _rest = parse_opts(argv[1:], "c:ni:evq", ["duration="])
        count = int_opt(opts, "-c", 10, 1, 1_000_000)
        duration = num_opt(opts, "--duration", 10.0, "duration", 3600)
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
        async for now, data in queue.take(count, end, sh.runtime.now):
            seen += 1
            stamp = time.strftime("%H:%M:%S", time.localtime(sh.runtime.wall(now)))
            frac = f"{sh.runtime.wall(now) % 1:.6f}"[1:]
            sh.print(f"{stamp}{frac} {tcpdump_line(data, l2=l2)}")
    finally:
        remove()
    sh.eprint("")
    sh.eprint(f"{seen} packets captured")
    sh.eprint(f"{seen + len(queue) + queue.dropped} packets received by filter")
    sh.eprint(f"{queue.dropped} packets dropped by kernel")
    return 0
