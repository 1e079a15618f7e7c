"""pod-shell's ``sockperf ping-pong``: UDP request/response latency, as sockperf reports it.

``sockperf ping-pong -i HOST -p PORT [-t S] [-m SIZE] [--mps N] [--full-rtt]``
sends one ``SIZE``-byte message, waits for it to come back, sends the next,
for ``S`` seconds (at most ``N`` messages per second; ``max``, the default,
sends the next as soon as the reply arrives). Any UDP echo answers it (the
``echo`` app of every pod image and of every external host, RFC 862 on port
7), so the probe crosses whatever lies between: a Service's DNAT, a NodePort's
masquerade, the overlay.

As sockperf does, the first messages of the run (its warm-up, here the first
tenth of the time, at most 0.4 s) are not counted, a message whose reply does
not come within :data:`REPLY_TIMEOUT` is counted dropped, and the latency is
half the round trip unless ``--full-rtt`` asks for the round trip. The
percentile lines are sockperf's (``---> percentile 99.000 = 11.542``, µs).
"""

from __future__ import annotations

import asyncio
import math
import struct
from ipaddress import IPv4Address

from emunet.nodes.shell_env import Shell, UsageError, clip, int_opt, num_opt, os_reason
from emunet.nodes.sockets import UDPEndpoint

__all__ = ["PERCENTILES", "cmd_sockperf", "latency_report", "percentile"]

USAGE = "sockperf ping-pong -i HOST -p PORT [-t S] [-m SIZE] [--mps N] [--full-rtt]"
HEADER = struct.Struct("!Q")  # the message's sequence number
REPLY_TIMEOUT = 0.2  # seconds a message waits for its reply before it counts dropped
MAX_SAMPLES = 200_000  # observations kept (a run stops counting at this many)
PERCENTILES = (99.999, 99.99, 99.9, 99.0, 90.0, 75.0, 50.0, 25.0)


def percentile(values: list[float], pct: float) -> float:
    """The nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_report(samples_us: list[float], dropped: int) -> list[str]:
    """sockperf's summary lines of one run's latencies (µs)."""
    ordered = sorted(samples_us)
    n = len(ordered)
    avg = sum(ordered) / n if n else 0.0
    std = math.sqrt(sum((x - avg) ** 2 for x in ordered) / n) if n else 0.0
    lines = [
        f"sockperf: ====> avg-latency={avg:.3f} (std-dev={std:.3f})",
        f"sockperf: # dropped messages = {dropped}; # duplicated messages = 0; "
        "# out-of-order messages = 0",
        f"sockperf: Summary: Latency is {avg:.3f} usec",
        f"sockperf: Total {n} observations; each percentile contains {n / 100:.2f} observations",
    ]
    if n:
        lines.append(f"sockperf: ---> <MAX> observation = {ordered[-1]:8.3f}")
        for pct in PERCENTILES:
            lines.append(f"sockperf: ---> percentile {pct:6.3f} = {percentile(ordered, pct):8.3f}")
        lines.append(f"sockperf: ---> <MIN> observation = {ordered[0]:8.3f}")
    return lines


def _options(argv: list[str]) -> tuple[dict[str, str], bool]:
    """sockperf's options, ``--opt=value`` or ``--opt value`` (mps, full-rtt, ...)."""
    if len(argv) < 2 or argv[1] not in ("ping-pong", "pp"):
        raise UsageError(f"usage: {USAGE}")
    names = {"-i": "-i", "--ip": "-i", "-p": "-p", "--port": "-p", "-t": "-t", "--time": "-t"}
    names |= {"-m": "-m", "--msg-size": "-m", "--mps": "--mps"}
    opts: dict[str, str] = {}
    full = False
    args = argv[2:]
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--full-rtt":
            full = True
            i += 1
            continue
        key, eq, value = arg.partition("=")
        if key not in names:
            raise UsageError(f"unrecognized option '{clip(arg)}'")
        if not eq:
            if i + 1 >= len(args):
                raise UsageError(f"option '{key}' requires an argument")
            value = args[i + 1]
            i += 1
        opts[names[key]] = value
        i += 1
    return opts, full


async def cmd_sockperf(sh: Shell, argv: list[str]) -> int:
    try:
        opts, full = _options(argv)
        seconds = num_opt(opts, "-t", 1.0, "time", 3600)
        port = int_opt(opts, "-p", 11111, 1, 65535)
        size = int_opt(opts, "-m", 64, HEADER.size, 65000)
        mps_text = opts.get("--mps", "max")
        mps = 0 if mps_text == "max" else int_opt(opts, "--mps", 0, 1, 10_000_000)
        if "-i" not in opts:
            raise UsageError("-i HOST is required")
    except UsageError as exc:
        sh.eprint(f"sockperf: {exc}")
        return 1
    host = opts["-i"]
    ip = await sh.resolve(host)
    if ip is None:
        sh.eprint(f"sockperf: failed to resolve host '{clip(host)}'")
        return 1
    sh.print("sockperf: == version #3.10-emunet ==")
    sh.print(f"[ 0] IP = {ip!s:<15} PORT = {port:5d} # UDP")
    try:
        sock = await sh.runtime.udp_bind(sh.pod)
    except OSError as exc:
        sh.eprint(f"sockperf: bind failed: {os_reason(exc)}")
        return 1
    try:
        return await _ping_pong(sh, sock, (ip, port), seconds, size, mps, full)
    finally:
        sock.close()


async def _ping_pong(
    sh: Shell,
    sock: UDPEndpoint,
    dst: tuple[IPv4Address, int],
    seconds: float,
    size: int,
    mps: int,
    full: bool,
) -> int:
    pad = bytes(size - HEADER.size)
    gap = 1.0 / mps if mps else 0.0
    t0 = sh.now
    warmup = t0 + min(0.4, seconds / 10)
    samples: list[float] = []
    sent = received = dropped = 0
    scale = 1e6 if full else 0.5e6  # sockperf: half the round trip, in µs
    while (start := sh.now) - t0 < seconds and len(samples) < MAX_SAMPLES:
        try:
            sock.sendto(HEADER.pack(sent) + pad, dst)
        except OSError as exc:
            sh.eprint(f"sockperf: send failed: {os_reason(exc)}")
            return 1
        seq = sent
        sent += 1
        while True:  # the reply of this message; older (late) replies are skipped
            left = start + REPLY_TIMEOUT - sh.now
            if left <= 0:
                dropped += 1
                break
            try:
                data, _addr = await sock.recvfrom(timeout=left)
            except TimeoutError:
                dropped += 1
                break
            except OSError as exc:
                sh.eprint(f"sockperf: {os_reason(exc)}")
                return 1
            if len(data) >= HEADER.size and HEADER.unpack_from(data)[0] == seq:
                received += 1
                if start >= warmup:
                    samples.append((sh.now - start) * scale)
                break
        if gap:
            await _sleep_until(sh, t0 + sent * gap)
    run = sh.now - t0
    sh.print("sockperf: Test end (interrupted by timer)")
    sh.print(
        f"sockperf: [Total Run] RunTime={run:.3f} sec; SentMessages={sent}; "
        f"ReceivedMessages={received}"
    )
    for line in latency_report(samples, dropped):
        sh.print(line)
    return 0


async def _sleep_until(sh: Shell, at: float) -> None:
    delay = at - sh.now
    if delay > 0:
        await asyncio.sleep(delay)
