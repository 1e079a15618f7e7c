"""How the runtime sends a run of datagrams, and what it learns when a GSO send fails.

A fake socket and transport stand in for the kernel's answers (EAGAIN, a path
MTU under the segment size, no GSO at all, an unrelated error): every datagram
must still leave, in order, and GSO must stay on unless the kernel lacks it.
"""

from __future__ import annotations

import errno

from emunet.nodes.runtime import GSO_FAILURES, NodeRuntime

from emunet.dataplane.node import Node

ADDR = ("127.0.4.2", 8285)


class FakeTransport:
    def __init__(self, backlog: int = 0) -> None:
        self.sent: list[bytes] = []
        self.backlog = backlog

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        assert addr == ADDR
        self.sent.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return self.backlog


class FakeSocket:
    """``sendmsg`` raises ``fail`` (an errno, or BlockingIOError) for segments over ``mtu``."""

    def __init__(self, fail: int | None = None, mtu: int = 1 << 20) -> None:
        self.fail, self.mtu = fail, mtu
        self.calls: list[tuple[int, int]] = []  # (segment size, bytes)

    def sendmsg(
        self, bufs: list[bytes], anc: list[tuple[int, int, bytes]], flags: int, addr: object
    ) -> int:
        size = int.from_bytes(anc[0][2], "little")
        self.calls.append((size, len(bufs[0])))
        if self.fail == errno.EAGAIN:
            raise BlockingIOError(errno.EAGAIN, "busy")
        if self.fail is not None and size > self.mtu:
            raise OSError(self.fail, "refused")
        return len(bufs[0])


def runtime() -> NodeRuntime:
    return NodeRuntime(Node("node1", "127.0.4.1", "10.244.1.0/24", node_network="127.0.0.0/8"))


def run(size: int, n: int = 5, tag: int = 0) -> list[bytes]:
    return [bytes([tag + i]) * size for i in range(n)]


def test_a_run_leaves_in_one_gso_send() -> None:
    rt, tr, sock = runtime(), FakeTransport(), FakeSocket()
    assert rt._send(tr, sock, ADDR, run(1000))  # type: ignore[arg-type]
    assert sock.calls == [(1000, 5000)] and tr.sent == [] and rt.stats.gso_sends == 1


def test_a_full_kernel_buffer_or_a_backlog_sends_through_the_transport_in_order() -> None:
    rt, tr, sock = runtime(), FakeTransport(), FakeSocket(fail=errno.EAGAIN)
    assert rt._send(tr, sock, ADDR, run(1000))  # type: ignore[arg-type]
    assert tr.sent == run(1000) and rt.stats.gso_sends == 0 and rt.gso
    busy, idle = FakeTransport(backlog=10), FakeSocket()
    assert rt._send(busy, idle, ADDR, run(800, tag=9))  # type: ignore[arg-type]
    assert idle.calls == [] and busy.sent == run(800, tag=9)  # behind the queued ones


def test_an_unrelated_error_leaves_gso_on() -> None:
    rt, tr = runtime(), FakeTransport()
    for i in range(3 * GSO_FAILURES):
        rt._send(tr, FakeSocket(fail=errno.EPERM, mtu=0), ADDR, run(500, tag=i))  # type: ignore[arg-type]
    assert rt.gso and rt.stats.gso_refused == 0
    assert tr.sent == [p for i in range(3 * GSO_FAILURES) for p in run(500, tag=i)]


def test_segments_over_the_path_mtu_go_one_by_one_and_smaller_runs_keep_gso() -> None:
    rt, tr, sock = runtime(), FakeTransport(), FakeSocket(fail=errno.EINVAL, mtu=1472)
    rt._send(tr, sock, ADDR, run(1500))  # type: ignore[arg-type]
    rt._send(tr, sock, ADDR, run(1500, tag=7))  # type: ignore[arg-type]
    assert sock.calls == [(1500, 7500)]  # tried once, then known too big for this path
    assert tr.sent == run(1500) + run(1500, tag=7)
    rt._send(tr, sock, ADDR, run(1000))  # type: ignore[arg-type]
    assert sock.calls[-1] == (1000, 5000) and rt.stats.gso_sends == 1 and rt.gso


def test_a_kernel_without_gso_has_it_turned_off() -> None:
    rt, tr, sock = runtime(), FakeTransport(), FakeSocket(fail=errno.EIO, mtu=0)
    for i in range(GSO_FAILURES):
        assert rt.gso
        rt._send(tr, sock, ADDR, run(600, tag=i))  # type: ignore[arg-type]
    assert not rt.gso and rt.stats.gso_refused == GSO_FAILURES
    assert len(tr.sent) == 5 * GSO_FAILURES
