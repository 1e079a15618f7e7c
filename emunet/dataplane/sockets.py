"""Sockets inside a namespace: the API pod apps and pod-shell use.

Sans-I/O: a socket call takes ``now`` and queues packets in the node; what
arrives is queued on the socket and announced through ``on_event`` (a plain
callback; an async adapter sets it to wake a waiting task). ICMP errors that
quote a socket's packets land on ``errors`` with the Linux errno a real socket
would report (``IP_RECVERR`` semantics), so a user sees *why* a send failed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, Final, Protocol

from emunet.errors import SocketError
from emunet.packets import icmp

ANY: Final = IPv4Address(0)
RCVBUF_DATAGRAMS: Final = 4096

# ICMP error (type, code) -> errno name, as Linux's icmp_err_convert table
_ERRNO: Final = {
    (icmp.DEST_UNREACH, icmp.NET_UNREACH): "ENETUNREACH",
    (icmp.DEST_UNREACH, icmp.HOST_UNREACH): "EHOSTUNREACH",
    (icmp.DEST_UNREACH, icmp.PROTO_UNREACH): "ENOPROTOOPT",
    (icmp.DEST_UNREACH, icmp.PORT_UNREACH): "ECONNREFUSED",
    (icmp.DEST_UNREACH, icmp.FRAG_NEEDED): "EMSGSIZE",
    (icmp.DEST_UNREACH, icmp.ADMIN_PROHIBITED): "EHOSTUNREACH",
}


def errno_for(typ: int, code: int) -> str:
    """The errno a socket sees for an ICMP error (time exceeded and the rest: EHOSTUNREACH)."""
    return _ERRNO.get((typ, code), "EHOSTUNREACH")


@dataclass(frozen=True, slots=True)
class SocketErrorEvent:
    """An ICMP error quoting one of our packets (what ``MSG_ERRQUEUE`` yields)."""

    errno_name: str
    icmp_type: int
    icmp_code: int
    offender: IPv4Address  # who sent the ICMP error
    dst: IPv4Address  # the destination of our quoted packet
    mtu: int = 0
    time: float = 0.0
    # which of our packets it quotes: UDP/TCP ports, or the echo identifier and
    # sequence number (ping, traceroute -I)
    sport: int = 0
    dport: int = 0
    seq: int = -1

    def __str__(self) -> str:
        extra = f", mtu {self.mtu}" if self.mtu else ""
        return (
            f"{self.errno_name} from {self.offender} "
            f"(ICMP type {self.icmp_type} code {self.icmp_code}{extra})"
        )


@dataclass(frozen=True, slots=True)
class EchoReply:
    seq: int
    src: IPv4Address
    ttl: int
    size: int
    rtt: float


def _address(addr: IPv4Address | str) -> IPv4Address:
    """``addr`` as an address: ``IPv4Address(an IPv4Address)`` would format and
    re-parse it, on every datagram sent."""
    return addr if isinstance(addr, IPv4Address) else IPv4Address(addr)


class SocketLayer(Protocol):
    """What a socket calls in its namespace's transport layer."""

    def bind_port(
        self, proto: int, addr: IPv4Address, port: int, sock: Any
    ) -> tuple[IPv4Address, int]: ...

    def unbind_port(self, proto: int, local: tuple[IPv4Address, int]) -> None: ...

    def udp_send(
        self, sock: UDPSocket, data: bytes, dst: IPv4Address, dport: int, now: float
    ) -> None: ...

    def ping_send(
        self, sock: PingSocket, dst: IPv4Address, msg: bytes, now: float, ttl: int, df: bool
    ) -> None: ...

    def ping_closed(self, sock: PingSocket) -> None: ...


class _Socket:
    def __init__(self, ns: SocketLayer) -> None:
        self.ns = ns
        self.errors: deque[SocketErrorEvent] = deque(maxlen=256)
        self.on_event: Callable[[], None] | None = None
        self.closed = False

    def _wake(self) -> None:
        if self.on_event is not None:
            self.on_event()

    def error_received(self, ev: SocketErrorEvent) -> None:
        self.errors.append(ev)
        self._wake()


class UDPSocket(_Socket):
    """A UDP socket: bind, sendto, recvfrom; ``ttl`` and ``df`` like IP_TTL/IP_MTU_DISCOVER."""

    def __init__(self, ns: SocketLayer) -> None:
        super().__init__(ns)
        self.local: tuple[IPv4Address, int] | None = None
        self.rx: deque[tuple[bytes, tuple[IPv4Address, int]]] = deque()
        self.ttl = 64
        self.df = True
        self.rx_dropped = 0
        # the transport's last source decision: (dst, route version, src, packed src, dst)
        self.last_route: tuple[IPv4Address, int, IPv4Address, bytes, bytes] | None = None

    def bind(self, addr: IPv4Address | str = ANY, port: int = 0) -> tuple[IPv4Address, int]:
        if self.local is not None:
            raise SocketError("EINVAL", "socket is already bound")
        self.local = self.ns.bind_port(17, IPv4Address(addr), port, self)
        return self.local

    def sendto(self, data: bytes, dst: tuple[IPv4Address | str, int], now: float) -> None:
        if self.closed:
            raise SocketError("EBADF", "socket is closed")
        if self.local is None:
            self.bind()
        assert self.local is not None
        self.ns.udp_send(self, data, _address(dst[0]), dst[1], now)

    def recvfrom(self) -> tuple[bytes, tuple[IPv4Address, int]] | None:
        return self.rx.popleft() if self.rx else None

    def deliver(self, data: bytes, src: tuple[IPv4Address, int]) -> bool:
        if len(self.rx) >= RCVBUF_DATAGRAMS:
            self.rx_dropped += 1
            return False
        self.rx.append((data, src))
        self._wake()
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.local is not None:
                self.ns.unbind_port(17, self.local)


class PingSocket(_Socket):
    """An ICMP echo socket (like Linux's ``SOCK_DGRAM``/``IPPROTO_ICMP`` ping socket)."""

    def __init__(self, ns: SocketLayer, ident: int) -> None:
        super().__init__(ns)
        self.ident = ident
        self.replies: deque[EchoReply] = deque()
        self.sent: dict[int, float] = {}
        self.ttl = 64
        self.last_dst: tuple[IPv4Address, bytes] | None = None  # and its packed bytes

    def send(
        self,
        dst: IPv4Address | str,
        seq: int,
        now: float,
        payload: bytes = b"",
        *,
        ttl: int | None = None,
        df: bool = False,
    ) -> None:
        if self.closed:
            raise SocketError("EBADF", "socket is closed")
        self.sent[seq & 0xFFFF] = now
        msg = icmp.echo(icmp.ECHO_REQUEST, self.ident, seq, payload)
        self.ns.ping_send(self, _address(dst), msg, now, ttl or self.ttl, df)

    def reply_received(self, seq: int, src: IPv4Address, ttl: int, size: int, now: float) -> None:
        sent = self.sent.pop(seq, None)
        rtt = now - sent if sent is not None else 0.0
        self.replies.append(EchoReply(seq, src, ttl, size, rtt))
        self._wake()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.ns.ping_closed(self)
