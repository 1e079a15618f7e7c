"""UDPPort: batches of real datagrams on loopback (recvmmsg and the recvfrom
fallback), the send FIFO when the kernel refuses, and errors counted."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable, Iterator

import pytest
from emunet.nodes import udp_port
from emunet.nodes.udp_port import BATCH, UDPPort

MMSG_CALLS: list[int] = []


@pytest.fixture(params=["recvmmsg", "recvfrom"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    MMSG_CALLS.clear()
    if request.param == "recvfrom":
        monkeypatch.setattr(udp_port, "_RECVMMSG", None)
    elif not udp_port.recvmmsg_available():
        pytest.skip("no recvmmsg in this C library")
    else:
        real = udp_port._RECVMMSG

        def counted(*args: object) -> int:
            n: int = real(*args)
            MMSG_CALLS.append(n)
            return n

        monkeypatch.setattr(udp_port, "_RECVMMSG", counted)
    yield request.param


def bound() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # the burst must fit
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def until(done: Callable[[], bool], seconds: float = 1.0) -> None:
    """Let the loop run until ``done()`` or ``seconds`` have passed."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not done() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.001)


class Recorder:
    def __init__(self) -> None:
        self.got: list[tuple[bytes, tuple[str, int], float]] = []
        self.batches: list[int] = []
        self.errors: list[BaseException] = []

    def datagram(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        self.got.append((data, addr, now))

    def batch(self) -> None:
        self.batches.append(len(self.got) - sum(self.batches))

    def error(self, exc: BaseException) -> None:
        self.errors.append(exc)


async def test_datagrams_arrive_whole_in_order_in_bounded_batches(mode: str) -> None:
    loop = asyncio.get_running_loop()
    rec = Recorder()
    port = UDPPort(loop, bound(), rec.datagram, rec.batch, rec.error)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    try:
        dst = port.sock.getsockname()
        # sizes from empty to the largest IPv4 datagram, then a burst of more than a batch
        sizes = [0, 1, 1472, 9000, 65507] + [100 + i for i in range(3 * BATCH)]
        payloads = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
        for p in payloads:
            sender.sendto(p, dst)
        await until(lambda: len(rec.got) == len(payloads))
        assert [d for d, _, _ in rec.got] == payloads
        assert {a for _, a, _ in rec.got} == {sender.getsockname()}
        assert sum(rec.batches) == len(payloads) and max(rec.batches) <= BATCH
        assert len(rec.batches) >= 3  # a burst of 3 batches' worth cannot come in one
        # one clock reading per batch: the datagrams of a batch share their time
        first = rec.got[: rec.batches[0]]
        assert len({t for _, _, t in first}) == 1
        assert rec.errors == []
        # an idle socket's first event reads with recvfrom; a busy one with recvmmsg
        if mode == "recvmmsg":
            assert max(MMSG_CALLS) > 1 and sum(n for n in MMSG_CALLS if n > 0) < len(payloads)
        else:
            assert MMSG_CALLS == []
    finally:
        sender.close()
        port.close()
    assert port.sock.fileno() == -1
    port.close()  # twice is harmless


class WrappedSocket:
    """A real bound socket behind a test's own methods."""

    def __init__(self) -> None:
        self._real = bound()

    def fileno(self) -> int:
        return self._real.fileno()

    def getsockname(self) -> tuple[str, int]:
        name: tuple[str, int] = self._real.getsockname()
        return name

    def close(self) -> None:
        self._real.close()


class RefusingSocket(WrappedSocket):
    """A socket whose kernel buffer is full until ``room`` is set."""

    def __init__(self, fail: BaseException | None = None) -> None:
        super().__init__()
        self.room = False
        self.fail = fail
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
        if self.fail is not None:
            raise self.fail
        if not self.room:
            raise BlockingIOError(errno.EAGAIN, "busy")
        self.sent.append(bytes(data))
        return len(data)


async def test_what_the_kernel_refuses_waits_in_order_and_leaves_when_writable() -> None:
    loop = asyncio.get_running_loop()
    rec = Recorder()
    sock = RefusingSocket()
    port = UDPPort(loop, sock, rec.datagram, rec.batch, rec.error)  # type: ignore[arg-type]
    try:
        for i in range(5):
            port.sendto(bytes([i]) * 10, ("127.0.0.1", 9))
        assert port.get_write_buffer_size() == 50 and sock.sent == []
        sock.room = True
        port.sendto(b"late", ("127.0.0.1", 9))  # behind the queued ones, not before
        await until(lambda: not port.get_write_buffer_size(), 0.5)
        assert sock.sent == [bytes([i]) * 10 for i in range(5)] + [b"late"]
        port.sendto(b"now", ("127.0.0.1", 9))  # an empty queue: straight to the kernel
        assert sock.sent[-1] == b"now" and port.get_write_buffer_size() == 0
    finally:
        port.close()


async def test_a_send_error_is_reported_and_the_datagram_dropped() -> None:
    loop = asyncio.get_running_loop()
    rec = Recorder()
    sock = RefusingSocket(fail=OSError(errno.ECONNREFUSED, "refused"))
    port = UDPPort(loop, sock, rec.datagram, rec.batch, rec.error)  # type: ignore[arg-type]
    try:
        port.sendto(b"x", ("127.0.0.1", 9))
        assert [e.errno for e in rec.errors if isinstance(e, OSError)] == [errno.ECONNREFUSED]
        assert port.get_write_buffer_size() == 0
    finally:
        port.close()
    port.sendto(b"after close", ("127.0.0.1", 9))  # ignored, as a closed transport's
    assert port.get_write_buffer_size() == 0


def test_a_datagram_the_runtime_chokes_on_is_counted_and_the_others_go_on() -> None:
    from emunet.nodes.runtime import NodeRuntime

    from emunet.dataplane.node import Node

    class Map:  # an address map that cannot place one sender
        def to_emulated(self, ip: str) -> str:
            if ip == "127.0.0.66":
                raise ValueError("boom")
            return ip

        def to_real(self, ip: str) -> str:
            return ip

    node = Node("node1", "127.0.4.1", "10.244.1.0/24", node_network="127.0.0.0/8")
    rt = NodeRuntime(node, address_map=Map())  # type: ignore[arg-type]
    for peer in ("127.0.4.2", "127.0.0.66", "127.0.4.3"):
        rt._overlay_in(b"x" * 28, (peer, 8285), 1.0)
    assert rt.stats.internal_errors == 1 and rt.stats.overlay_rx == 3
    assert set(rt._to_emulated) == {"127.0.4.2", "127.0.4.3"}  # both others went on


async def test_a_raising_callback_is_reported_and_a_closing_one_stops_the_batch(
    mode: str,
) -> None:
    loop = asyncio.get_running_loop()
    rec = Recorder()
    holder: list[UDPPort] = []

    def datagram(data: bytes, addr: tuple[str, int], now: float) -> None:
        if data == b"bad":
            raise ValueError("boom")
        rec.datagram(data, addr, now)
        if data == b"stop":
            holder[0].close()

    flushed_closed: list[bool] = []

    def batch() -> None:
        flushed_closed.append(holder[0].closed)
        rec.batch()

    port = UDPPort(loop, bound(), datagram, batch, rec.error)
    holder.append(port)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        dst = port.sock.getsockname()
        for p in [b"one", b"bad", b"two", b"stop", b"never"] + [b"x"] * BATCH:
            sender.sendto(p, dst)
        await until(lambda: port.closed, 0.5)
        await asyncio.sleep(0.02)
        assert [d for d, _, _ in rec.got] == [b"one", b"two", b"stop"]
        assert [type(e) for e in rec.errors] == [ValueError]
        assert True not in flushed_closed  # the closed port's batch was not flushed
        assert sum(rec.batches) < len(rec.got)  # ... and "stop" was in it
    finally:
        sender.close()
        port.close()


async def test_a_queued_datagram_is_a_copy() -> None:
    loop = asyncio.get_running_loop()
    rec = Recorder()
    sock = RefusingSocket()
    port = UDPPort(loop, sock, rec.datagram, rec.batch, rec.error)  # type: ignore[arg-type]
    try:
        buf = bytearray(b"first")
        port.sendto(buf, ("127.0.0.1", 9))
        buf[:] = b"later"  # the data plane reuses its buffers
        sock.room = True
        await until(lambda: not port.get_write_buffer_size(), 0.5)
        assert sock.sent == [b"first"]
    finally:
        port.close()


class CountingSocket(WrappedSocket):
    """A real bound socket that counts its reads and the ones that found nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.empty = 0

    def recvfrom(self, size: int) -> tuple[bytes, tuple[str, int]]:
        self.reads += 1
        try:
            return self._real.recvfrom(size)
        except BlockingIOError:
            self.empty += 1
            raise


async def test_an_idle_port_reads_each_datagram_with_one_call_a_busy_one_in_batches(
    mode: str,
) -> None:
    loop = asyncio.get_running_loop()
    rec = Recorder()
    sock = CountingSocket()
    port = UDPPort(loop, sock, rec.datagram, rec.batch, rec.error)  # type: ignore[arg-type]
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        dst = sock.getsockname()
        for i in range(5):  # a ping's pace: no read that finds the socket empty
            sender.sendto(b"ping %d" % i, dst)
            await until(lambda: len(rec.got) > i, 0.1)  # noqa: B023 (awaited here)
            await asyncio.sleep(3 * udp_port.BUSY_GAP)
        assert len(rec.got) == 5 and rec.batches == [1] * 5
        assert (sock.reads, sock.empty) == (5, 0)
        for _ in range(4 * BATCH):  # a burst: events back to back switch to batches
            sender.sendto(b"x", dst)
        await until(lambda: len(rec.got) == 5 + 4 * BATCH)
        burst = rec.batches[5:]
        assert sum(burst) == 4 * BATCH and 1 < max(burst) <= BATCH
        if mode == "recvmmsg":
            assert max(MMSG_CALLS) > 1
        # after a pause, a lone datagram is read with one call again
        for late in (b"late 1", b"late 2"):
            reads = sock.reads
            await asyncio.sleep(3 * udp_port.BUSY_GAP)
            sender.sendto(late, dst)
            await until(lambda: rec.got[-1][0] == late, 0.1)  # noqa: B023 (awaited here)
            assert rec.got[-1][0] == late and rec.batches[-1] == 1
            assert sock.reads == reads + 1
    finally:
        sender.close()
        port.close()
