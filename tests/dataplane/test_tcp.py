"""The TCP engine driven through an in-memory link with a fake clock.

The harness plays the network namespace: it parses every segment with its
checksum verified, looks up the 4-tuple, hands SYNs to listeners and answers
the rest with ``rst_for``. The link is a heap of ``(deliver_time, segment)``
with seeded loss.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

import pytest

from emunet.dataplane.tcp import (
    MASK,
    TCPConnection,
    TCPListener,
    TCPState,
    rst_for,
    seq_le,
    seq_lt,
)
from emunet.errors import ConfigError, SocketError
from emunet.packets.tcp import ACK, FIN, RST, SYN, TCPHeader, parse

A_IP = IPv4Address("10.244.1.2")
B_IP = IPv4Address("10.244.2.3")
S = TCPState


@dataclass
class Seen:
    """One segment as it entered the link."""

    time: float
    src: IPv4Address
    hdr: TCPHeader
    payload_len: int
    dropped: bool


class Host:
    """A minimal network namespace: a connection table and listeners."""

    def __init__(self, net: Net, ip: IPv4Address, iss_seed: int) -> None:
        self.net = net
        self.ip = ip
        self.conns: dict[tuple[int, IPv4Address, int], TCPConnection] = {}
        self.listeners: dict[int, TCPListener] = {}
        self.rng = random.Random(iss_seed)
        self.rsts_sent = 0

    def connect(
        self, lport: int, dst: IPv4Address, dport: int, *, iss: int | None = None, **kw: int
    ) -> TCPConnection:
        kw.setdefault("mss", 1460)
        conn = TCPConnection(
            self.ip,
            lport,
            dst,
            dport,
            iss=self.rng.getrandbits(32) if iss is None else iss,
            now=self.net.now,
            **kw,
        )
        self.conns[(lport, dst, dport)] = conn
        conn.connect(self.net.now)
        return conn

    def listen(self, port: int, **kw: int) -> TCPListener:
        lst = TCPListener(self.ip, port, **kw)
        self.listeners[port] = lst
        return lst

    def deliver(self, src: IPv4Address, seg: bytes, now: float) -> None:
        hdr, payload = parse(seg, verify_with=(src, self.ip))
        key = (hdr.dport, src, hdr.sport)
        conn = self.conns.get(key)
        if conn is not None:
            conn.receive(hdr, payload, now)
            return
        lst = self.listeners.get(hdr.dport)
        if lst is not None and hdr.flags & (SYN | ACK | RST) == SYN:
            iss = (
                self.net.server_iss if self.net.server_iss is not None else self.rng.getrandbits(32)
            )
            new = lst.receive_syn(src, self.ip, hdr, now, iss)
            if new is not None:
                self.conns[key] = new
            return
        rst = rst_for(hdr, len(payload), src, self.ip)
        if rst is not None:
            self.rsts_sent += 1
            self.net.send(self.ip, src, rst)

    def flush(self) -> None:
        for key, conn in list(self.conns.items()):
            for seg in conn.segments_to_send():
                self.net.send(self.ip, conn.remote_ip, seg)
            if conn.state is S.CLOSED:
                del self.conns[key]


@dataclass
class Net:
    loss: float = 0.0
    delay: float = 0.001
    jitter: float = 0.0  # extra uniform delay: reorders segments
    seed: int = 1
    server_iss: int | None = None
    now: float = 0.0
    drop: Callable[[Seen], bool] | None = None  # extra, targeted loss
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.heap: list[tuple[float, int, IPv4Address, IPv4Address, bytes]] = []
        self.count = 0
        self.a = Host(self, A_IP, self.seed * 2 + 1)
        self.b = Host(self, B_IP, self.seed * 2 + 2)
        self.hosts = {A_IP: self.a, B_IP: self.b}

    def send(self, src: IPv4Address, dst: IPv4Address, seg: bytes) -> None:
        hdr, payload = parse(seg, verify_with=(src, dst))
        seen = Seen(self.now, src, hdr, len(payload), False)
        self.seen.append(seen)
        if (self.loss and self.rng.random() < self.loss) or (self.drop and self.drop(seen)):
            seen.dropped = True
            return
        self.count += 1
        at = self.now + self.delay
        if self.jitter:
            at += self.rng.uniform(0, self.jitter)
        heapq.heappush(self.heap, (at, self.count, src, dst, seg))

    def flush(self) -> None:
        self.a.flush()
        self.b.flush()

    def _next_timer(self) -> tuple[float, TCPConnection] | None:
        best: tuple[float, TCPConnection] | None = None
        for host in (self.a, self.b):
            for conn in host.conns.values():
                t = conn.get_timer()
                if t is not None and (best is None or t < best[0]):
                    best = (t, conn)
        return best

    def step(self) -> bool:
        """Advance to the next event (a delivery or a timer); False when idle."""
        self.flush()
        timer = self._next_timer()
        if self.heap and (timer is None or self.heap[0][0] <= timer[0]):
            t, _, src, dst, seg = heapq.heappop(self.heap)
            self.now = max(self.now, t)
            self.hosts[dst].deliver(src, seg, self.now)
        elif timer is not None:
            self.now = max(self.now, timer[0])
            timer[1].handle_timer(self.now)
        else:
            return False
        self.flush()
        return True

    def run(
        self,
        until: Callable[[], bool] = lambda: False,
        *,
        app: Callable[[], None] | None = None,
        limit: float = 10_000.0,
    ) -> float:
        """Step until ``until()`` holds, the net is idle, or ``limit`` (fake s)."""
        start = self.now
        while not until() and self.now - start < limit:
            if app is not None:
                app()
                self.flush()
            if not self.step():
                break
        return self.now - start

    def segments(self, src: IPv4Address) -> list[Seen]:
        return [s for s in self.seen if s.src == src]


def states(conn: TCPConnection) -> list[TCPState]:
    """Record every state a connection goes through, via on_event."""
    seen = [conn.state]

    def on_event() -> None:
        if conn.state is not seen[-1]:
            seen.append(conn.state)

    conn.on_event = on_event
    return seen


def open_pair(
    net: Net, *, client_iss: int | None = None, **kw: int
) -> tuple[TCPConnection, TCPConnection, TCPListener]:
    lst = net.b.listen(80, **kw)
    client = net.a.connect(40000, B_IP, 80, iss=client_iss)
    net.run(lambda: lst.queued > 0 and client.state is S.ESTABLISHED)
    server = lst.accept()
    assert server is not None
    return client, server, lst


def transfer(
    net: Net, src: TCPConnection, dst: TCPConnection, data: bytes, *, limit: float = 600.0
) -> tuple[bytes, float]:
    """Push ``data`` src -> dst (send as space allows, read everything)."""
    got = bytearray()
    sent = 0

    def app() -> None:
        nonlocal sent
        if sent < len(data):
            sent += src.send(memoryview(data)[sent : sent + 65536], net.now)
        got.extend(dst.recv())

    elapsed = net.run(lambda: len(got) >= len(data), app=app, limit=limit)
    return bytes(got), elapsed


def payload(n: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(n)


# ---------------------------------------------------------------- unit pieces


def test_sequence_comparisons_wrap() -> None:
    assert seq_lt(MASK, 0) and seq_lt(MASK - 10, 5) and not seq_lt(5, MASK - 10)
    assert seq_le(7, 7) and not seq_lt(7, 7)
    assert seq_lt(0, 0x7FFFFFFF) and not seq_lt(0, 0x80000001)


def test_constructor_rejects_bad_config() -> None:
    with pytest.raises(ConfigError):
        TCPConnection(A_IP, 0, B_IP, 80, mss=1460, iss=0, now=0.0)
    with pytest.raises(ConfigError):
        TCPConnection(A_IP, 1, B_IP, 80, mss=10, iss=0, now=0.0)
    with pytest.raises(ConfigError):
        TCPListener(A_IP, 80, backlog=0)


@pytest.mark.parametrize(
    ("flags", "plen", "want_flags", "want_seq", "want_ack"),
    [
        (SYN, 0, RST | ACK, 0, 1001),  # no ACK: ack = seq + len (SYN counts)
        (SYN | FIN, 10, RST | ACK, 0, 1012),
        (0, 5, RST | ACK, 0, 1005),
        (ACK, 0, RST, 777, 0),  # ACK: seq = SEG.ACK
        (ACK | FIN, 3, RST, 777, 0),
    ],
)
def test_rst_for_closed_port(
    flags: int, plen: int, want_flags: int, want_seq: int, want_ack: int
) -> None:
    hdr = TCPHeader(40000, 81, seq=1000, ack=777, flags=flags)
    seg = rst_for(hdr, plen, A_IP, B_IP)
    assert seg is not None
    rst, body = parse(seg, verify_with=(B_IP, A_IP))  # goes back B -> A
    assert (rst.sport, rst.dport) == (81, 40000)
    assert (rst.flags, rst.seq, rst.ack, len(body)) == (want_flags, want_seq, want_ack, 0)


def test_rst_for_never_answers_a_rst() -> None:
    assert rst_for(TCPHeader(1, 2, flags=RST), 0, A_IP, B_IP) is None
    assert rst_for(TCPHeader(1, 2, flags=RST | ACK), 0, A_IP, B_IP) is None


def test_rst_for_seq_wraps() -> None:
    seg = rst_for(TCPHeader(1, 2, seq=MASK, flags=SYN), 0, A_IP, B_IP)
    assert seg is not None
    assert parse(seg)[0].ack == 0


# ------------------------------------------------------------------ handshake


def test_handshake_states_and_options() -> None:
    net = Net()
    lst = net.b.listen(80, mss=1360)
    accepted: list[int] = []
    lst.on_event = lambda: accepted.append(lst.queued)
    client = net.a.connect(40000, B_IP, 80, iss=1000)
    client_states = states(client)
    assert client.state is S.SYN_SENT
    net.run(lambda: bool(accepted))
    server = lst.accept()
    assert server is not None and lst.accept() is None
    server_states = states(server)
    net.run()
    assert client_states == [S.SYN_SENT, S.ESTABLISHED]
    assert server.state is S.ESTABLISHED and server_states == [S.ESTABLISHED]
    syn, synack, ack = (s.hdr for s in net.seen[:3])
    assert syn.flags == SYN and syn.seq == 1000 and syn.mss == 1460 and syn.window_scale == 3
    assert synack.flags == SYN | ACK and synack.ack == 1001 and synack.mss == 1360
    assert synack.window_scale == 3 and synack.window == 65535
    assert ack.flags == ACK and ack.seq == 1001 and ack.ack == (synack.seq + 1) & MASK
    # Both ends use the smaller MSS; an RTT sample came from the handshake.
    assert client.srtt == pytest.approx(0.002) and server.srtt == pytest.approx(0.002)
    assert client.rto == pytest.approx(0.2)  # Linux's floor
    assert server.key == (B_IP, 80, A_IP, 40000)


def test_lost_synack_and_lost_final_ack_recover() -> None:
    drops = {"synack": 1, "ack": 1}

    def drop(s: Seen) -> bool:
        kind = "synack" if s.hdr.flags == SYN | ACK else "ack" if s.src == A_IP else ""
        if drops.get(kind, 0) > 0:
            drops[kind] -= 1
            return True
        return False

    net = Net(drop=drop)
    client, server, _ = open_pair(net)
    assert client.state is server.state is S.ESTABLISHED
    got, _ = transfer(net, client, server, b"hello")
    assert got == b"hello"
    assert drops == {"synack": 0, "ack": 0}
    assert server.stats.retransmits >= 1  # the SYN,ACK went out again after 1 s


def test_simultaneous_open() -> None:
    net = Net(delay=0.01)
    a = net.a.connect(5000, B_IP, 6000, iss=10)
    b = net.b.connect(6000, A_IP, 5000, iss=20)
    a_states, b_states = states(a), states(b)
    net.run(lambda: a.state is S.ESTABLISHED and b.state is S.ESTABLISHED)
    assert a_states == b_states == [S.SYN_SENT, S.SYN_RECEIVED, S.ESTABLISHED]
    got, _ = transfer(net, a, b, b"x" * 5000)
    assert got == b"x" * 5000


# ------------------------------------------------------------------- transfer


def test_1mib_clean_link() -> None:
    net = Net(delay=0.001)
    client, server, _ = open_pair(net)
    data = payload(1 << 20)
    got, elapsed = transfer(net, client, server, data)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert client.stats.retransmits == 0 and client.stats.timeouts == 0
    net.run()  # the last ACKs
    assert client.stats.bytes_out == client.stats.bytes_acked == 1 << 20
    assert server.stats.bytes_in == 1 << 20
    assert max(s.payload_len for s in net.seen) == 1460
    assert elapsed < 1.0
    # The receiver delays ACKs: about one per two segments.
    acks = [s for s in net.segments(B_IP) if s.hdr.flags == ACK]
    assert len(acks) < 0.6 * (1 << 20) / 1460


def test_1mib_lossy_link() -> None:
    net = Net(loss=0.05, delay=0.02, seed=3)
    client, server, _ = open_pair(net)
    data = payload(1 << 20)
    t0 = time.perf_counter()
    got, elapsed = transfer(net, client, server, data)
    wall = time.perf_counter() - t0
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert elapsed < 30.0, elapsed
    assert wall < 5.0, wall
    assert client.stats.fast_retransmits > 0 and client.stats.retransmits > 0
    assert server.stats.ooo_segments_in > 0
    print(f"1 MiB, 5% loss, 20 ms: {elapsed:.1f} s fake, {wall:.2f} s wall, {client.stats}")


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_bidirectional_lossy_transfer_with_wraparound(seed: int) -> None:
    net = Net(loss=0.05, delay=0.005, seed=seed, server_iss=MASK - 3000)
    client, server, _ = open_pair(net, client_iss=MASK - 50_000)
    up, down = payload(300_000, seed), payload(200_000, seed + 100)
    got_up, got_down = bytearray(), bytearray()
    sent_up = sent_down = 0

    def app() -> None:
        nonlocal sent_up, sent_down
        sent_up += client.send(up[sent_up : sent_up + 20_000], net.now)
        sent_down += server.send(down[sent_down : sent_down + 20_000], net.now)
        got_up.extend(server.recv())
        got_down.extend(client.recv())

    net.run(lambda: len(got_up) == len(up) and len(got_down) == len(down), app=app, limit=300)
    assert bytes(got_up) == up and bytes(got_down) == down
    # Both sequence spaces wrapped past 2**32.
    assert seq_lt(client.iss, client.snd_una) and client.snd_una < client.iss
    assert seq_lt(server.iss, server.snd_una) and server.snd_una < server.iss


@pytest.mark.parametrize("seed", [21, 22, 23, 24])
def test_reordering_loss_then_both_close(seed: int) -> None:
    """Jitter reorders segments; the stream stays intact and both ends close."""
    net = Net(loss=0.03, delay=0.01, jitter=0.01, seed=seed)
    client, server, _ = open_pair(net)
    data = payload(200_000, seed)
    got, _ = transfer(net, client, server, data)
    assert got == data
    reply = b"thanks" * 1000
    assert server.send(reply, net.now) == len(reply)
    server.close(net.now)
    back = bytearray()
    net.run(lambda: client.at_eof, app=lambda: back.extend(client.recv()), limit=120)
    assert back == reply
    client.close(net.now)
    net.run(limit=300)
    assert client.state is server.state is S.CLOSED
    assert client.error is None and server.error is None
    assert not net.a.conns and not net.b.conns


def test_peer_without_options_gets_default_mss_and_no_scaling() -> None:
    lst = TCPListener(B_IP, 80, mss=1460)
    syn = TCPHeader(40000, 80, seq=500, flags=SYN, window=8192)
    conn = lst.receive_syn(A_IP, B_IP, syn, 0.0, iss=9000)
    assert conn is not None and lst.pending == 1
    assert states(conn) == [S.SYN_RECEIVED]
    (seg,) = conn.segments_to_send()
    synack, _ = parse(seg, verify_with=(B_IP, A_IP))
    assert synack.flags == SYN | ACK and synack.seq == 9000 and synack.ack == 501
    assert synack.mss == 1460 and synack.window_scale is None
    assert conn.get_timer() == pytest.approx(1.0)  # RFC 6298 initial RTO
    ack = TCPHeader(40000, 80, seq=501, ack=9001, flags=ACK, window=8192)
    conn.receive(ack, b"", 0.01)
    assert conn.state is S.ESTABLISHED and lst.accept() is conn and lst.pending == 0
    assert conn.send(b"z" * 5000, 0.01) == 5000
    sizes = [len(parse(s)[1]) for s in conn.segments_to_send()]
    assert sizes == [536] * 9 + [5000 - 9 * 536]  # RFC 9293 default MSS
    assert conn.snd_wnd == 8192  # unscaled


def test_listener_ignores_non_syn_and_rst_kills_pending() -> None:
    lst = TCPListener(B_IP, 80)
    assert lst.receive_syn(A_IP, B_IP, TCPHeader(1, 80, flags=ACK), 0.0, iss=1) is None
    assert lst.receive_syn(A_IP, B_IP, TCPHeader(1, 80, flags=SYN | ACK), 0.0, iss=1) is None
    conn = lst.receive_syn(A_IP, B_IP, TCPHeader(1, 80, seq=7, flags=SYN), 0.0, iss=1)
    assert conn is not None and lst.pending == 1
    conn.receive(TCPHeader(1, 80, seq=8, flags=RST), b"", 0.1)
    assert conn.state is S.CLOSED and conn.error is None and lst.pending == 0
    assert lst.accept() is None


def test_large_buffers_use_window_scaling() -> None:
    net = Net(delay=0.01)
    client, server, _ = open_pair(net, rcv_buf_size=4 << 20)
    assert client.snd_wnd == 65535  # a SYN's window is never scaled (RFC 7323 2.2)
    data = payload(3 << 20)
    got, elapsed = transfer(net, client, server, data)
    assert got == data and client.stats.retransmits == 0
    assert client.snd_wnd > 3 << 20  # the server's 4 MiB window, scaled by 2**7
    assert elapsed < 1.0


def test_on_output_fires_for_application_calls() -> None:
    net = Net()
    client, _, _ = open_pair(net)
    net.run()
    calls: list[str] = []
    client.on_output = lambda: calls.append("out")
    client.send(b"x", net.now)
    assert calls == ["out"]
    client.close(net.now)
    assert calls == ["out", "out"]
    assert len(client.segments_to_send()) == 2 and client.segments_to_send() == []


def test_out_of_order_segments_are_kept_not_resent() -> None:
    lost: list[int] = []

    def drop(s: Seen) -> bool:
        if s.src == A_IP and s.payload_len and not lost:
            lost.append(s.hdr.seq)
            return True
        return False

    net = Net(drop=drop)
    client, server, _ = open_pair(net)
    data = payload(20 * 1460)
    got, elapsed = transfer(net, client, server, data)
    assert got == data
    assert client.stats.fast_retransmits == 1
    assert client.stats.retransmits == 1  # only the hole went out again
    assert client.stats.timeouts == 0
    assert server.stats.ooo_segments_in >= 3
    assert elapsed < 0.1  # no RTO wait


def test_mss_segmentation_and_send_buffer_backpressure() -> None:
    net = Net()
    client, server, _ = open_pair(net, mss=536)
    assert client.send(b"a" * 100_000, net.now) == 100_000
    # The client's buffer is 256 KiB: a larger write is accepted in part.
    assert client.send(b"b" * 300_000, net.now) == 256 * 1024 - 100_000
    assert client.send(b"c", net.now) == 0 and client.send_space == 0
    got = bytearray()
    net.run(lambda: len(got) >= 256 * 1024, app=lambda: got.extend(server.recv()))
    assert got == b"a" * 100_000 + b"b" * (256 * 1024 - 100_000)
    assert {s.payload_len for s in net.segments(A_IP)} <= set(range(537))
    net.run()
    assert client.send_space == 256 * 1024


def test_delayed_ack_waits_40ms_for_a_lone_segment() -> None:
    net = Net(delay=0.001)
    client, server, _ = open_pair(net)
    net.run()
    client.send(b"ping", net.now)
    sent_at = net.now
    net.run(lambda: server.readable > 0)
    arrived = net.now
    net.run()
    ack = next(s for s in net.segments(B_IP) if s.time > sent_at)
    assert ack.hdr.flags == ACK and ack.hdr.ack == client.snd_nxt
    assert ack.time == pytest.approx(arrived + 0.04)
    assert server.recv() == b"ping"


def _deliver_all(
    conn: TCPConnection, segs: list[bytes], src: IPv4Address, now: float, *, batched: bool
) -> list[TCPHeader]:
    """Hand ``segs`` to ``conn``; the headers of what it sends meanwhile."""
    out = []
    for seg in segs:
        hdr, body = parse(seg, verify_with=(src, conn.local_ip))
        conn.receive(hdr, body, now, batched=batched)
        out += [parse(s)[0] for s in conn.segments_to_send()]
    return out


def test_a_batch_of_segments_is_acknowledged_once_at_its_end() -> None:
    net = Net()
    client, server, _ = open_pair(net)
    net.run()
    client.send(payload(10 * 1460), net.now)
    segs = client.segments_to_send()
    assert len(segs) == 10  # the initial window
    # one at a time: an ACK for every second segment (RFC 5681 section 4.2)
    acks = _deliver_all(server, segs[:4], A_IP, net.now, batched=False)
    assert [h.ack for h in acks] == [parse(segs[i])[0].seq + 1460 for i in (1, 3)]
    # a batch: nothing until it ends, then one ACK for all of it
    assert _deliver_all(server, segs[4:], A_IP, net.now, batched=True) == []
    assert server.ack_deferred
    server.end_batch(net.now)
    (ack,) = [parse(s)[0] for s in server.segments_to_send()]
    assert ack.flags == ACK and ack.ack == client.snd_nxt
    assert not server.ack_deferred
    assert server.recv() == payload(10 * 1460)


def test_a_lone_segment_of_a_batch_still_waits_for_the_delayed_ack() -> None:
    net = Net()
    client, server, _ = open_pair(net)
    net.run()
    client.send(b"x" * 100, net.now)
    assert _deliver_all(server, client.segments_to_send(), A_IP, net.now, batched=True) == []
    assert not server.ack_deferred
    server.end_batch(net.now)
    assert server.segments_to_send() == []
    assert server.get_timer() == pytest.approx(net.now + 0.04)


def test_out_of_order_segments_of_a_batch_are_still_acknowledged_at_once() -> None:
    net = Net()
    client, server, _ = open_pair(net)
    net.run()
    client.send(payload(6 * 1460), net.now)
    segs = client.segments_to_send()
    del segs[1]  # a hole: every later segment is out of order
    acks = _deliver_all(server, segs, A_IP, net.now, batched=True)
    first = parse(segs[0])[0].seq
    assert [h.ack for h in acks] == [first + 1460] * 4  # duplicate ACKs, one per segment
    server.end_batch(net.now)
    assert server.segments_to_send() == []  # nothing in order owed an ACK


# --------------------------------------------------------------- flow control


def test_flow_control_stops_at_window_and_survives_lost_window_update() -> None:
    net = Net(delay=0.005)
    client, server, _ = open_pair(net, rcv_buf_size=64 * 1024)
    data = payload(1 << 20)
    sent = 0

    def writer() -> None:
        nonlocal sent
        sent += client.send(memoryview(data)[sent : sent + 65536], net.now)

    # The receiver does not read: the sender stops once the window is full.
    net.run(lambda: net.now > 3.0 and not net.heap, app=writer)  # stop with an idle link
    assert server.readable == 64 * 1024
    assert client.snd_wnd == 0
    assert client.stats.bytes_acked == 64 * 1024
    assert client.unsent_or_unacked > 0
    assert client.stats.zero_window_probes >= 2  # persist timer kept asking
    assert client.state is S.ESTABLISHED and client.error is None
    last_data = max(s.time for s in net.segments(A_IP) if s.payload_len)
    assert last_data < 0.5

    # The reader wakes up; the window update it sends is lost.
    lost: list[Seen] = []

    def drop(s: Seen) -> bool:
        if s.src == B_IP and not lost:
            lost.append(s)
            return True
        return False

    net.drop = drop
    probes = client.stats.zero_window_probes
    got = bytearray(server.recv())
    net.flush()
    assert lost and lost[0].hdr.window > 0  # the update went out, and was dropped

    def app() -> None:
        writer()
        got.extend(server.recv())

    elapsed = net.run(lambda: len(got) >= len(data), app=app, limit=120.0)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert client.stats.zero_window_probes > probes  # a probe found the open window
    assert elapsed < 10.0


# -------------------------------------------------------------------- closing


def test_rst_from_closed_port_gives_econnrefused() -> None:
    net = Net()
    client = net.a.connect(40000, B_IP, 81)
    seen = states(client)
    events: list[str | None] = []
    client.on_event = lambda: events.append(client.error)
    net.run()
    assert net.b.rsts_sent == 1
    assert client.state is S.CLOSED and client.error == "ECONNREFUSED"
    assert events and events[-1] == "ECONNREFUSED"
    assert seen == [S.SYN_SENT]  # on_event was replaced; the state is what matters
    with pytest.raises(SocketError) as exc:
        client.recv()
    assert exc.value.errno_name == "ECONNREFUSED"
    with pytest.raises(SocketError):
        client.send(b"x", net.now)


def test_active_close_then_passive_close() -> None:
    net = Net(delay=0.01)
    client, server, _ = open_pair(net)
    cs, ss = states(client), states(server)
    client.send(b"request", net.now)
    client.close(net.now)
    assert client.state is S.FIN_WAIT_1
    with pytest.raises(SocketError) as exc:
        client.send(b"more", net.now)
    assert exc.value.errno_name == "EPIPE"
    net.run(lambda: server.state is S.CLOSE_WAIT and client.state is S.FIN_WAIT_2)
    assert server.recv() == b"request" and server.at_eof
    # Half-close: the server can still answer.
    server.send(b"response", net.now)
    server.close(net.now)
    net.run(lambda: client.state is S.TIME_WAIT)
    closed_at = net.now
    assert client.recv() == b"response" and client.at_eof
    net.run()
    assert cs == [S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2, S.TIME_WAIT, S.CLOSED]
    assert ss == [S.ESTABLISHED, S.CLOSE_WAIT, S.LAST_ACK, S.CLOSED]
    assert net.now - closed_at == pytest.approx(60.0, abs=0.05)  # 2*MSL as Linux
    assert client.error is None and server.error is None
    assert not net.a.conns and not net.b.conns


def test_time_wait_reacks_a_retransmitted_fin() -> None:
    dropped: list[Seen] = []

    def drop(s: Seen) -> bool:
        # Lose the client's ACK of the server's FIN once.
        if s.src == A_IP and s.hdr.flags == ACK and net.a.conns and not dropped:
            if next(iter(net.a.conns.values())).state is not S.TIME_WAIT:
                return False
            dropped.append(s)
            return True
        return False

    net = Net(delay=0.01, drop=drop)
    client, server, _ = open_pair(net)
    client.close(net.now)
    net.run(lambda: server.state is S.CLOSE_WAIT)
    server.close(net.now)
    net.run(lambda: server.state is S.CLOSED)
    assert dropped and client.state is S.TIME_WAIT
    assert server.stats.retransmits == 1 and server.error is None


def test_simultaneous_close() -> None:
    net = Net(delay=0.01)
    client, server, _ = open_pair(net)
    net.run()
    cs, ss = states(client), states(server)
    client.close(net.now)
    server.close(net.now)
    net.run(lambda: client.state is server.state is S.TIME_WAIT)
    net.run()
    assert cs == ss == [S.ESTABLISHED, S.FIN_WAIT_1, S.CLOSING, S.TIME_WAIT, S.CLOSED]
    assert client.at_eof and server.at_eof


def test_fin_rides_on_the_last_queued_segment() -> None:
    net = Net(delay=0.01)
    client, server, _ = open_pair(net)
    client.send(b"x" * 30_000, net.now)  # more than the initial cwnd (10 MSS)
    client.close(net.now)
    got = bytearray()
    net.run(lambda: server.at_eof, app=lambda: got.extend(server.recv()))
    assert got == b"x" * 30_000
    fins = [s for s in net.segments(A_IP) if s.hdr.flags & FIN]
    assert len(fins) == 1 and fins[0].payload_len > 0
    assert server.state is S.CLOSE_WAIT


def test_abort_resets_the_peer() -> None:
    net = Net(delay=0.01)
    client, server, _ = open_pair(net)
    events: list[TCPState] = []
    server.on_event = lambda: events.append(server.state)
    client.send(b"data", net.now)
    client.abort(net.now)
    assert client.state is S.CLOSED and client.error is None
    net.run()
    assert server.state is S.CLOSED and server.error == "ECONNRESET"
    assert S.CLOSED in events
    assert server.recv() == b"data"  # what arrived before the RST, as Linux
    with pytest.raises(SocketError) as exc:
        server.recv()
    assert exc.value.errno_name == "ECONNRESET"


def test_out_of_window_rst_gets_challenge_ack() -> None:
    net = Net()
    client, _, _ = open_pair(net)
    net.run()
    bogus = TCPHeader(80, 40000, seq=(client.rcv_nxt + 1000) & MASK, flags=RST)
    client.receive(bogus, b"", net.now)
    assert client.state is S.ESTABLISHED
    out = [parse(s)[0] for s in client.segments_to_send()]
    assert [h.flags for h in out] == [ACK] and out[0].ack == client.rcv_nxt


# ------------------------------------------------------------------- timeouts


def test_etimedout_when_the_peer_vanishes() -> None:
    net = Net(delay=0.01)
    client, _, _ = open_pair(net)
    net.run()
    net.loss = 1.0  # the peer's node is gone
    client.send(b"are you there?", net.now)
    t0 = net.now
    elapsed = net.run(lambda: client.state is S.CLOSED, limit=2000.0)
    assert client.error == "ETIMEDOUT"
    assert client.stats.timeouts == 16 and client.stats.retransmits == 15
    # 0.2 s doubling to the 120 s ceiling: like Linux's ~15 minutes.
    assert 800.0 < elapsed < 1000.0, elapsed
    with pytest.raises(SocketError) as exc:
        client.recv()
    assert exc.value.errno_name == "ETIMEDOUT"
    rtx = [s.time - t0 for s in net.segments(A_IP) if s.payload_len]
    gaps = [b - a for a, b in itertools.pairwise(rtx)]
    assert gaps[:3] == pytest.approx([0.2, 0.4, 0.8])
    assert max(gaps) == pytest.approx(120.0)


def test_syn_timeout() -> None:
    net = Net(loss=1.0)
    client = net.a.connect(40000, B_IP, 80)
    elapsed = net.run(lambda: client.state is S.CLOSED)
    assert client.error == "ETIMEDOUT"
    assert elapsed == pytest.approx(127.0)  # 1+2+...+64 s, tcp_syn_retries = 6


def test_max_retries_is_configurable() -> None:
    net = Net()
    client = net.a.connect(40000, B_IP, 80, syn_retries=1)
    net.loss = 1.0
    assert net.run(lambda: client.state is S.CLOSED) == pytest.approx(3.0)


def test_listener_backlog_drops_syns() -> None:
    net = Net()
    lst = net.b.listen(80, backlog=1)
    first = net.a.connect(40001, B_IP, 80)
    net.run(lambda: lst.queued == 1)
    second = net.a.connect(40002, B_IP, 80)
    net.run(lambda: lst.overflows > 0, limit=0.5)
    assert lst.overflows >= 1 and second.state is S.SYN_SENT
    accepted = lst.accept()
    assert accepted is not None and accepted.remote_port == first.local_port
    net.run(lambda: lst.queued == 1, limit=5.0)  # the retransmitted SYN gets in
    nxt = lst.accept()
    assert nxt is not None and nxt.remote_port == 40002
