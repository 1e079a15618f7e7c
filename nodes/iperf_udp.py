"""pod-shell's ``iperf -u``: iperf 2's UDP test, client and server.

The client sends ``-l`` byte datagrams paced at ``-b`` bits per second for
``-t`` seconds; each starts as iperf 2's does: a 32-bit sequence number and
the send time (seconds, microseconds). The last datagram carries the negated
sequence number (iperf's FIN); the server answers it with its report, which
the client prints as iperf's "Server Report". The server counts what arrives
(:class:`UdpStats`): bytes, datagrams lost (sequence gaps), out of order, and
the interarrival jitter of RFC 3550 section 6.4.1 (the sender's and the
receiver's clocks may differ by a constant: only differences of transit times
count).
"""

from __future__ import annotations

import asyncio
import math
import struct
from ipaddress import IPv4Address

from emunet.nodes.shell_env import Shell, UsageError, clip, human, os_reason, rate
from emunet.nodes.sockets import UDPEndpoint

__all__ = ["UdpStats", "iperf_udp_client", "iperf_udp_server", "parse_rate"]

HEADER = struct.Struct("!iII")  # sequence number, send time (seconds, microseconds)
REPORT = struct.Struct("!iQdddII")  # FIN echo, bytes, duration, jitter (s), rate, lost, total
DEFAULT_LEN = 1470
MIN_LEN = HEADER.size  # a datagram carries at least iperf's header
MAX_LEN = 65507  # UDP's largest payload over IPv4
DEFAULT_RATE = 1_000_000  # iperf 2: 1 Mbit/s unless -b says otherwise
MAX_RATE = 10_000_000_000
FIN_TRIES = 10
FIN_WAIT = 0.25
BAR = "-" * 60
REPORT_HEAD = "[ ID] Interval       Transfer     Bandwidth        Jitter   Lost/Total Datagrams"


def parse_rate(text: str) -> int:
    """``-b``: bits per second, with iperf's suffixes ``k``, ``m``, ``g`` (powers of 1000)."""
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(text[-1:].lower(), 1.0)
    digits = text[:-1] if scale != 1.0 else text
    try:
        value = float(digits) * scale
    except ValueError:
        raise UsageError(f"invalid argument for -b: '{clip(text)}' (bits/sec)") from None
    if not math.isfinite(value) or not 1 <= value <= MAX_RATE:
        raise UsageError(f"invalid argument for -b: '{clip(text)}' (1 to 10G bits/sec)")
    return int(value)


class UdpStats:
    """What an iperf UDP server counts of one client's datagrams."""

    def __init__(self, now: float) -> None:
        self.start = now
        self.last = now
        self.bytes = 0
        self.datagrams = 0
        self.next_seq = 0
        self.lost = 0
        self.out_of_order = 0
        self.jitter = 0.0
        self._transit: float | None = None

    def received(self, seq: int, sent: float, size: int, now: float) -> None:
        """A datagram numbered ``seq``, sent at ``sent`` (the sender's clock), arrived."""
        self.bytes += size
        self.datagrams += 1
        self.last = now
        if seq >= self.next_seq:
            self.lost += seq - self.next_seq  # the gap, until they show up
            self.next_seq = seq + 1
        else:
            self.out_of_order += 1
            self.lost = max(0, self.lost - 1)  # a late one was counted lost
        transit = now - sent
        if self._transit is not None:  # RFC 3550: J += (|D| - J) / 16
            self.jitter += (abs(transit - self._transit) - self.jitter) / 16
        self._transit = transit

    @property
    def total(self) -> int:
        """Datagrams the sender numbered so far (lost ones included)."""
        return self.next_seq

    def line(self, ident: int) -> str:
        """iperf's line with transfer, bandwidth, jitter and Lost/Total."""
        return report_line(
            ident, self.last - self.start, self.bytes, self.jitter, self.lost, self.total
        )


def report_line(
    ident: int, seconds: float, nbytes: int, jitter: float, lost: int, total: int
) -> str:
    """iperf's line of a UDP test: interval, transfer, bandwidth, jitter, Lost/Total."""
    elapsed = max(seconds, 1e-9)
    pct = 100.0 * lost / total if total else 0.0
    return (
        f"[{ident:3d}] 0.0000-{elapsed:.4f} sec  {human(nbytes)}  {rate(nbytes * 8 / elapsed)}"
        f"  {jitter * 1000:7.3f} ms {lost:5d}/{total:5d} ({pct:.2g}%)"
    )


def _stamp(seq: int, now: float) -> bytes:
    sec = int(now)
    return HEADER.pack(seq, sec & 0xFFFFFFFF, int((now - sec) * 1e6))


def _sent_at(data: bytes) -> tuple[int, float]:
    seq, sec, usec = HEADER.unpack_from(data)
    return seq, sec + usec / 1e6


async def iperf_udp_client(
    sh: Shell,
    host: str,
    ip: IPv4Address,
    port: int,
    seconds: float,
    opts: dict[str, str],
    size: int,
) -> int:
    """``iperf -c HOST -u``: ``size``-byte datagrams (``-l``, checked by the caller
    against :data:`MIN_LEN` and :data:`MAX_LEN`) at ``-b``'s rate."""
    try:
        bits = parse_rate(opts["-b"]) if "-b" in opts else DEFAULT_RATE
    except UsageError as exc:
        sh.eprint(f"iperf: {exc}")
        return 1
    gap = size * 8 / bits
    sh.print(BAR)
    sh.print(f"Client connecting to {host}, UDP port {port}")
    sh.print(f"Sending {size} byte datagrams, IPG target: {gap * 1e6:.2f} us")
    sh.print("UDP buffer size:  208 KByte (default)")
    sh.print(BAR)
    try:
        sock = await sh.runtime.udp_bind(sh.pod)
    except OSError as exc:
        sh.eprint(f"bind failed: {os_reason(exc)}")
        return 1
    # Linux's UDP default (IP_PMTUDISC_WANT): a datagram over the path MTU is
    # fragmented, not refused (flannel0's MTU is 1472: 1470 B of iperf is 1498)
    sock.sock.df = False
    try:
        lip, lport = sock.local
        eth0 = sh.ns.interfaces.get("eth0")
        if eth0 is not None and eth0.addresses:  # the address the route picks
            lip = eth0.addresses[0].ip
        sh.print(f"[  1] local {lip} port {lport} connected with {ip} port {port}")
        pad = bytes(size - HEADER.size)
        t0 = sh.now
        seq = 0
        while (now := sh.now) - t0 < seconds:
            due = min(int((now - t0) / gap) + 1, seq + 256)  # catch up, in bounded bursts
            while seq < due:
                try:
                    sock.sendto(_stamp(seq, sh.now) + pad, (ip, port))
                except OSError as exc:
                    sh.eprint(f"iperf: send failed: {os_reason(exc)}")
                    return 1
                seq += 1
            await asyncio.sleep(max(0.0, t0 + seq * gap - sh.now))
        elapsed = sh.now - t0
        sh.print("[ ID] Interval       Transfer     Bandwidth")
        sent = seq * size
        sh.print(f"[  1] 0.0000-{elapsed:.4f} sec  {human(sent)}  {rate(sent * 8 / elapsed)}")
        sh.print(f"[  1] Sent {seq} datagrams")
        return await _fin(sh, sock, seq, pad, ip, port)
    finally:
        sock.close()


async def _fin(
    sh: Shell, sock: UDPEndpoint, seq: int, pad: bytes, ip: IPv4Address, port: int
) -> int:
    """iperf's FIN: the negated sequence number, until the server reports."""
    for _ in range(FIN_TRIES):
        sock.sendto(_stamp(-seq, sh.now) + pad, (ip, port))
        try:
            data, _addr = await sock.recvfrom(timeout=FIN_WAIT)
        except TimeoutError:
            continue
        except OSError as exc:
            sh.eprint(f"iperf: {os_reason(exc)}")
            return 1
        if len(data) < REPORT.size:
            continue
        _fin_seq, nbytes, secs, jitter, _rate, lost, total = REPORT.unpack_from(data)
        sh.print("[  1] Server Report:")
        sh.print(REPORT_HEAD)
        sh.print(report_line(1, secs, nbytes, jitter, lost, total))
        return 0
    sh.print(f"[  1] WARNING: did not receive ack of last datagram after {FIN_TRIES} tries.")
    return 0


async def iperf_udp_server(sh: Shell, port: int, seconds: float) -> int:
    sh.print(BAR)
    sh.print(f"Server listening on UDP port {port}")
    sh.print("UDP buffer size:  208 KByte (default)")
    sh.print(BAR)
    try:
        sock = await sh.runtime.udp_bind(sh.pod, port)
    except OSError as exc:
        sh.eprint(f"bind failed: {os_reason(exc)}")
        return 1
    clients: dict[tuple[str, int], tuple[int, UdpStats]] = {}
    reported: dict[tuple[str, int], bytes] = {}  # a FIN again: its report was lost

    def received(data: bytes, addr: tuple[str, int], now: float) -> None:
        if len(data) < HEADER.size:
            return
        seq, sent = _sent_at(data)
        entry = clients.get(addr)
        if entry is None:
            if seq < 0 and addr in reported:
                sock.sendto(reported[addr], addr)
                return
            if seq < 0 or len(clients) >= 64:
                return  # a stray FIN, or too many clients at once
            entry = (len(clients) + 1, UdpStats(now))
            clients[addr] = entry
            lip, lport = sock.local
            peer = f"{addr[0]} port {addr[1]}"
            sh.print(f"[{entry[0]:3d}] local {lip} port {lport} connected with {peer}")
        ident, stats = entry
        if seq >= 0:
            stats.received(seq, sent, len(data), now)
            return
        # FIN: -seq datagrams were sent; the report goes back, the client is done
        stats.next_seq = max(stats.next_seq, -seq)
        stats.lost = max(0, stats.total - stats.datagrams)
        sh.print(REPORT_HEAD)
        sh.print(stats.line(ident))
        secs = stats.last - stats.start
        report = REPORT.pack(seq, stats.bytes, secs, stats.jitter, 0.0, stats.lost, stats.total)
        sock.sendto(report, addr)
        del clients[addr]
        if len(reported) >= 64:
            reported.pop(next(iter(reported)))
        reported[addr] = report

    deadline = sh.now + seconds
    try:
        while (left := deadline - sh.now) > 0:
            try:
                # what is queued at once (recvmmsg): one clock reading for them all,
                # as the data plane delivered them in one batch
                batch = await sock.recv_many(timeout=left)
            except TimeoutError:
                break
            now = sh.now
            for data, addr in batch:
                received(data, addr, now)
    finally:
        sock.close()
    return 0
