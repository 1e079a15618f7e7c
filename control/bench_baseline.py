"""``emunet bench``'s baseline: the same work with nothing emulated, measured in the same run.

* **relay chain**: a paced UDP sender, ``hops - 1`` relays and a receiver,
  each its own uvloop process on loopback, so a datagram crosses ``hops``
  real sockets between processes, as an emulated packet crosses the nodes'
  overlay and wire sockets. The sender paces as pod-shell's ``iperf -u``
  does (bursts caught up after each sleep); the same :class:`RateSearch`
  finds its zero-loss rate.
* **ping-pong**: one uvloop process sends a datagram to an echo process and
  waits for it, again and again: the round trip of two processes, the floor
  of any cross-node RTT; back to back (beside sockperf's ping-pong) and paced
  as the bench's ``ping -i`` (beside ping: an idle process answers later).

Each role is ``python -m emunet.control.bench_baseline ROLE ...``; a relay or
receiver prints ``ready`` once bound. The receiver answers a ``stats``
datagram with how many datagrams arrived since the last ``stats`` (and
resets); the sender prints ``sent N``; ``pingpong`` prints JSON percentiles.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from emunet.control.bench_plan import RateSearch, Trial, percentile

__all__ = ["Chain", "ping_pong", "relay_search"]

HOST = "127.0.0.1"
_SEQ = struct.Struct("!q")
# -P: not the current directory first on the path (from a checkout, ./emunet is the
# source tree, without the installed control and nodes packages)
_PYTHON = (sys.executable, "-P", "-m")
_BURST = 256  # datagrams a late sender catches up with at once (iperf -u's bound)


def _sock(port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)  # as the agents ask
    s.bind((HOST, port))
    s.setblocking(False)
    return s


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, on: Callable[[bytes, tuple[str, int]], None]) -> None:
        self.on = on

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.on(data, addr)


async def _endpoint(
    sock: socket.socket, on: Callable[[bytes, tuple[str, int]], None]
) -> asyncio.DatagramTransport:
    loop = asyncio.get_running_loop()
    tr, _ = await loop.create_datagram_endpoint(lambda: _Proto(on), sock=sock)
    return tr


async def _receiver(sock: socket.socket) -> None:
    count = 0

    def on(data: bytes, addr: tuple[str, int]) -> None:
        nonlocal count
        if data == b"stats":
            tr.sendto(str(count).encode(), addr)
            count = 0
        else:
            count += 1

    tr = await _endpoint(sock, on)
    print("ready", flush=True)
    await asyncio.Event().wait()


async def _relay(sock: socket.socket, nxt: int) -> None:
    dst = (HOST, nxt)
    tr = await _endpoint(sock, lambda data, _addr: tr.sendto(data, dst))
    print("ready", flush=True)
    await asyncio.Event().wait()


async def _sender(dst: int, pps: float, size: int, seconds: float) -> None:
    tr = await _endpoint(_sock(), lambda data, addr: None)
    pad = bytes(size - _SEQ.size)
    gap = 1.0 / pps if math.isfinite(pps) and pps > 0 else 0.0
    t0 = time.monotonic()
    seq = 0
    while (now := time.monotonic()) - t0 < seconds:
        due = seq + _BURST if not gap else min(int((now - t0) / gap) + 1, seq + _BURST)
        while seq < due:
            tr.sendto(_SEQ.pack(seq) + pad, (HOST, dst))
            seq += 1
        await asyncio.sleep(max(0.0, t0 + seq * gap - time.monotonic()) if gap else 0)
    print(f"sent {seq} {time.monotonic() - t0:.6f}", flush=True)


async def _echo(sock: socket.socket) -> None:
    tr = await _endpoint(sock, lambda data, addr: tr.sendto(data, addr))
    print("ready", flush=True)
    await asyncio.Event().wait()


async def _pingpong(dst: int, seconds: float, size: int, interval: float) -> None:
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] | None = None

    def on(data: bytes, addr: tuple[str, int]) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    tr = await _endpoint(_sock(), on)
    rtts: list[float] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds and len(rtts) < 200_000:
        waiter = loop.create_future()
        start = time.monotonic()
        tr.sendto(bytes(size), (HOST, dst))
        try:
            await asyncio.wait_for(waiter, 0.2)
        except TimeoutError:
            continue
        rtts.append((time.monotonic() - start) * 1e6)
        if interval:
            await asyncio.sleep(max(0.0, start + interval - time.monotonic()))
    warm = rtts[len(rtts) // 10 :]
    result: dict[str, Any] = {f"p{p}_us": percentile(warm, p) for p in (50, 90, 99)}
    result["rtts_us"] = [round(r, 1) for r in warm]
    print(json.dumps(result), flush=True)


# ------------------------------------------------------------ orchestration


def _spawn(*args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*_PYTHON, "emunet.control.bench_baseline", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"baseline {args[0]} did not start")
    return proc


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Chain:
    """A receiver and ``hops - 1`` relays, running; :meth:`trial` sends through them."""

    def __init__(self, hops: int) -> None:
        self.hops = max(1, hops)
        self.procs: list[subprocess.Popen[str]] = []
        self.receiver = _free_port()
        self.entry = self.receiver

    def __enter__(self) -> Chain:
        self.procs.append(_spawn("receiver", str(self.receiver)))
        nxt = self.receiver
        for _ in range(self.hops - 1):
            port = _free_port()
            self.procs.append(_spawn("relay", str(port), str(nxt)))
            nxt = port
        self.entry = nxt
        self._stats = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._stats.settimeout(2.0)
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        self._stats.close()

    def _received(self) -> int:
        self._stats.sendto(b"stats", (HOST, self.receiver))
        data, _ = self._stats.recvfrom(64)
        return int(data)

    async def trial(self, pps: float, size: int, seconds: float) -> Trial:
        self._received()  # reset
        proc = await asyncio.create_subprocess_exec(
            *_PYTHON,
            "emunet.control.bench_baseline",
            "sender",
            str(self.entry),
            str(pps),
            str(size),
            str(seconds),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        _word, sent, elapsed = out.decode().split()
        await asyncio.sleep(0.1)  # what is still in flight arrives
        got = self._received()
        return Trial(pps, int(sent), max(0, int(sent) - got), float(elapsed))


async def relay_search(
    chain: Chain, size: int, seconds: float, trials: int
) -> AsyncIterator[RateSearch]:
    """Run the zero-loss search through ``chain``; yields the search after each trial."""
    search = RateSearch(trials)
    while (rate := search.next_rate()) is not None:
        search.record(await chain.trial(rate, size, seconds))
        yield search


async def ping_pong(seconds: float, size: int = 64, interval: float = 0.0) -> dict[str, Any]:
    """Percentiles (µs) of a bare ping-pong between two uvloop processes: back to
    back, or one exchange every ``interval`` seconds (as ``ping -i``: a process idle
    between exchanges wakes up colder, and answers later); ``rtts_us``, the round
    trips they were taken from (the first tenth, the warm-up, left out)."""
    port = _free_port()
    echo = _spawn("echo", str(port))
    try:
        proc = await asyncio.create_subprocess_exec(
            *_PYTHON,
            "emunet.control.bench_baseline",
            "pingpong",
            str(port),
            str(seconds),
            str(size),
            str(interval),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        result: dict[str, Any] = json.loads(out)
        return result
    finally:
        echo.kill()
        echo.wait()


def main(argv: list[str]) -> None:
    import uvloop

    role, *args = argv
    if role == "receiver":
        coro = _receiver(_sock(int(args[0])))
    elif role == "relay":
        coro = _relay(_sock(int(args[0])), int(args[1]))
    elif role == "sender":
        coro = _sender(int(args[0]), float(args[1]), int(args[2]), float(args[3]))
    elif role == "echo":
        coro = _echo(_sock(int(args[0])))
    else:
        coro = _pingpong(int(args[0]), float(args[1]), int(args[2]), float(args[3]))
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(coro)


if __name__ == "__main__":
    main(sys.argv[1:])
