"""Local delivery's protocol handlers and the socket tables they serve.

Linux's ``ip_local_deliver`` hands a packet to its protocol's handler:
``udp_rcv``, ``tcp_v4_rcv`` or ``icmp_rcv`` (:data:`Transport.handlers`, one
table). Each finds the socket the packet is for and delivers it, or answers as
the kernel does (ICMP port unreachable, a TCP RST). The tables are the
namespace's ports (bind, ephemeral ports, ``EADDRINUSE``), UDP and ping
sockets, TCP connections and listeners. What a handler sends goes back down
through the namespace's :class:`IPLayer` (``ip_send_local``, ``icmp_send``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any, Final, Protocol

from emunet.dataplane.interfaces import Interface
from emunet.dataplane.routing import RouteTable
from emunet.dataplane.sockets import ANY, PingSocket, SocketErrorEvent, UDPSocket, errno_for
from emunet.dataplane.tcp import TCPConnection, TCPListener, rst_for
from emunet.dataplane.trace import Drop, Tracer
from emunet.errors import MalformedFrame, SocketError
from emunet.packets import icmp, ipv4, tcp, udp
from emunet.packets.checksum import internet_checksum, pseudo_header_sum

_U16: Final = struct.Struct("!H")
_PORTS: Final = struct.Struct("!HH")
_UDP_HDR: Final = struct.Struct("!HHHH")
_ADDRS: Final = struct.Struct("!4s4s")  # source and destination of an IPv4 header, at 12
_ANY: Final = ANY.packed  # a wildcard bind's address in the socket tables

BROADCAST_IP: Final = b"\xff\xff\xff\xff"
EPHEMERAL_LOW: Final = 32768
EPHEMERAL_HIGH: Final = 60999


class Ids(Protocol):
    """The machine's sources of port numbers and initial sequence numbers, its
    work queue, and its marks of the namespaces whose timers may have moved."""

    def random_port(self, low: int, high: int) -> int: ...

    def tcp_iss(self) -> int: ...

    def enqueue(self, fn: Callable[..., None], *args: Any) -> None: ...

    def mark_timers(self, ns: Any) -> None: ...


class IPLayer(Protocol):
    """What the transport layer uses of its namespace's IP layer."""

    name: str
    local: dict[bytes, Interface]
    routes: RouteTable
    interfaces: dict[str, Interface]

    def ip_send_local(
        self,
        proto: int,
        src: IPv4Address | None,
        dst: IPv4Address,
        payload: bytes | bytearray,
        now: float,
        *,
        ttl: int = 64,
        df: bool = True,
        owner: Any = None,
        packed: tuple[bytes, bytes] | None = None,
    ) -> None: ...

    def icmp_send(
        self, offending: bytearray, typ: int, code: int, now: float, *, mtu: int = 0
    ) -> None: ...

    def drop(self, now: float, iface: Interface | None, reason: Drop, detail: str = "") -> None: ...

    def trace(self, now: float, iface: str, event: str, detail: str = "") -> None: ...

    def address(self, packed: bytes) -> IPv4Address: ...

    def source_for(self, dev: Interface, target: bytes) -> IPv4Address: ...


Handler = Callable[[Interface, bytearray, int, float], None]


class Transport:
    """UDP, TCP and ICMP above one namespace's IP layer."""

    def __init__(self, ip: IPLayer, ids: Ids, tracer: Tracer) -> None:
        self.ip = ip
        self.ids = ids
        self._tracer = tracer
        self.udp_sockets: dict[tuple[bytes, int], UDPSocket] = {}
        self.ping_sockets: dict[int, PingSocket] = {}
        self.tcp_conns: dict[tuple[bytes, int, bytes, int], TCPConnection] = {}
        self.tcp_listeners: dict[tuple[bytes, int], TCPListener] = {}
        self._bound: dict[tuple[int, int], list[bytes]] = {}
        self._tcp_owned: dict[tuple[IPv4Address, int, IPv4Address, int], TCPConnection] = {}
        # connections whose ACK waits for the end of the current arrival batch
        self._acks_owed: dict[TCPConnection, None] = {}
        # ip_local_deliver's protocol table (inet_protos)
        self.handlers: dict[int, Handler] = {
            ipv4.PROTO_UDP: self.udp_rcv,
            ipv4.PROTO_TCP: self.tcp_rcv,
            ipv4.PROTO_ICMP: self.icmp_rcv,
        }

    # ------------------------------------------------------------ receiving

    def udp_rcv(self, iface: Interface, pkt: bytearray, hlen: int, now: float) -> None:
        ip = self.ip
        n = len(pkt) - hlen
        if n < 8:
            ip.drop(now, iface, Drop.MALFORMED, f"udp: {n} bytes")
            return
        sport, dport, length, csum = _UDP_HDR.unpack_from(pkt, hlen)
        if length < 8 or length > n:
            ip.drop(now, iface, Drop.MALFORMED, f"udp: length {length} with {n} bytes")
            return
        # the payload is copied once, for the socket; the checksum sums that copy,
        # the pseudo-header and the UDP header's four words (a 16-bit-aligned split)
        data = bytes(memoryview(pkt)[hlen + 8 : hlen + length])
        src, dst = _ADDRS.unpack_from(pkt, 12)
        if csum:
            init = pseudo_header_sum(src, dst, 17, length) + sport + dport + length + csum
            if internet_checksum(data, init) != 0:
                ip.drop(now, iface, Drop.MALFORMED, "udp: bad checksum")
                return
        sock = self.udp_sockets.get((dst, dport)) or self.udp_sockets.get((_ANY, dport))
        if sock is None:
            ip.icmp_send(pkt, icmp.DEST_UNREACH, icmp.PORT_UNREACH, now)
            ip.drop(now, iface, Drop.PORT_UNREACHABLE, f"udp port {dport}")
            return
        if sock.deliver(data, (ip.address(src), sport)):
            if self._tracer.enabled:
                ip.trace(now, "", "deliver", f"udp socket :{dport} ({length - 8} bytes)")
        else:
            ip.drop(now, iface, Drop.SOCKET_BUFFER_FULL, f"udp port {dport}")

    def tcp_rcv(self, iface: Interface, pkt: bytearray, hlen: int, now: float) -> None:
        ip = self.ip
        src, dst = bytes(pkt[12:16]), bytes(pkt[16:20])
        try:
            hdr, payload = tcp.parse(memoryview(pkt)[hlen:], verify_with=(src, dst))
        except MalformedFrame as exc:
            ip.drop(now, iface, Drop.MALFORMED, exc.reason)
            return
        conn = self.tcp_conns.get((dst, hdr.dport, src, hdr.sport))
        if conn is not None:
            conn.receive(hdr, payload, now, batched=True)
            if self._tracer.enabled:
                ip.trace(now, "", "deliver", f"tcp socket :{hdr.dport} [{hdr.flag_names}]")
            self.tcp_flush(conn, now)
            if conn.ack_deferred and conn not in self._acks_owed:
                if not self._acks_owed:
                    self.ids.enqueue(self._end_batch)
                self._acks_owed[conn] = None
            return
        listener = self.tcp_listeners.get((dst, hdr.dport)) or self.tcp_listeners.get(
            (_ANY, hdr.dport)
        )
        if listener is not None and hdr.flags & tcp.SYN and not hdr.flags & (tcp.ACK | tcp.RST):
            route = ip.routes.lookup(src)
            mtu = route.dev.mtu if route is not None and src not in ip.local else 65535
            new = listener.receive_syn(
                IPv4Address(src), IPv4Address(dst), hdr, now, self.ids.tcp_iss(), mss=mtu - 40
            )
            if new is not None:
                self.tcp_conns[(dst, hdr.dport, src, hdr.sport)] = new
                new.on_output = self._flusher(new)
                if self._tracer.enabled:
                    ip.trace(now, "", "deliver", f"tcp listener :{hdr.dport} [SYN]")
                self.tcp_flush(new, now)
            return

        rst = rst_for(hdr, len(payload), IPv4Address(dst), IPv4Address(src))
        ip.drop(now, iface, Drop.TCP_NO_LISTENER, f"tcp port {hdr.dport}")
        if rst is not None:
            ip.ip_send_local(6, IPv4Address(dst), IPv4Address(src), rst, now, df=True)

    def icmp_rcv(self, iface: Interface, pkt: bytearray, hlen: int, now: float) -> None:
        ip = self.ip
        mv = memoryview(pkt)[hlen:]
        if len(mv) < 8:
            ip.drop(now, iface, Drop.MALFORMED, f"icmp: {len(mv)} bytes")
            return
        if internet_checksum(mv) != 0:
            ip.drop(now, iface, Drop.MALFORMED, "icmp: bad checksum")
            return
        typ = mv[0]
        spk = bytes(pkt[12:16])
        src = ip.address(spk)
        if typ == icmp.ECHO_REQUEST:
            dst = bytes(pkt[16:20])
            if dst == BROADCAST_IP:
                return  # icmp_echo_ignore_broadcasts=1
            reply = bytearray(mv)
            reply[0] = icmp.ECHO_REPLY
            reply[2:4] = b"\x00\x00"
            _U16.pack_into(reply, 2, internet_checksum(reply))
            if self._tracer.enabled:
                ip.trace(now, "", "deliver", "icmp echo request: replying")
            # the kernel's ICMP socket sends with IP_PMTUDISC_DONT: big replies fragment
            ip.ip_send_local(
                1, ip.address(dst), src, bytes(reply), now, df=False, packed=(dst, spk)
            )
        elif typ == icmp.ECHO_REPLY:
            ident, seq = _PORTS.unpack_from(mv, 4)
            sock = self.ping_sockets.get(ident)
            if sock is None:
                ip.drop(now, iface, Drop.NO_PING_SOCKET, f"id {ident}")
                return
            if self._tracer.enabled:
                ip.trace(now, "", "deliver", f"icmp echo reply id {ident} seq {seq}")
            sock.reply_received(seq, src, pkt[8], len(mv) - 8, now)
        elif typ in (icmp.DEST_UNREACH, icmp.TIME_EXCEEDED):
            self._icmp_error_rcv(iface, src, mv, now)
        else:
            ip.drop(now, iface, Drop.ICMP_TYPE_UNHANDLED, str(typ))

    def _icmp_error_rcv(
        self, iface: Interface, offender: IPv4Address, mv: memoryview, now: float
    ) -> None:
        """An ICMP error quoting one of our packets goes to the socket that sent it."""
        ip = self.ip
        typ, code = mv[0], mv[1]
        mtu = _U16.unpack_from(mv, 6)[0]
        inner = mv[8:]
        if len(inner) < 28 or inner[0] >> 4 != 4:
            ip.drop(now, iface, Drop.MALFORMED, "icmp error: quoted packet too short")
            return
        ihl = (inner[0] & 0x0F) << 2
        if len(inner) < ihl + 8:
            ip.drop(now, iface, Drop.MALFORMED, "icmp error: quoted packet too short")
            return
        proto = inner[9]
        isrc, idst = bytes(inner[12:16]), bytes(inner[16:20])
        target: Any = None
        sport = dport = 0
        seq = -1
        if proto == ipv4.PROTO_UDP:
            sport, dport = _PORTS.unpack_from(inner, ihl)
            target = self.udp_sockets.get((isrc, sport)) or self.udp_sockets.get((_ANY, sport))
        elif proto == ipv4.PROTO_ICMP:
            ident, seq = _PORTS.unpack_from(inner, ihl + 4)
            target = self.ping_sockets.get(ident)
        elif proto == ipv4.PROTO_TCP:
            sport, dport = _PORTS.unpack_from(inner, ihl)
            target = self.tcp_conns.get((isrc, sport, idst, dport))
        ev = SocketErrorEvent(
            errno_for(typ, code),
            typ,
            code,
            offender,
            IPv4Address(idst),
            mtu,
            now,
            sport,
            dport,
            seq,
        )
        if target is None:
            ip.drop(now, iface, Drop.ICMP_ERROR_NO_SOCKET, str(ev))
            return
        if self._tracer.enabled:
            ip.trace(now, "", "deliver", f"icmp error to socket: {ev}")
        if proto == ipv4.PROTO_TCP:
            target.icmp_error(ev.errno_name, now, ev.mtu)
            self.tcp_flush(target, now)
        else:
            target.error_received(ev)

    # ---------------------------------------------------------------- TCP

    def _end_batch(self) -> None:
        """After the segments queued with the first deferred ACK (the machine's
        queue is FIFO, so a batch of packets reaches tcp_rcv before this step):
        one ACK per connection for all its segments of the batch."""
        owed, self._acks_owed = self._acks_owed, {}
        for conn in owed:
            conn.end_batch(conn.now)
            self.tcp_flush(conn, conn.now)

    def tcp_flush(self, conn: TCPConnection, now: float) -> None:
        """Send what a TCP connection has queued; forget it once it is closed."""
        self.ids.mark_timers(self.ip)  # every TCP input, app call and timer ends here
        for seg in conn.segments_to_send():
            self.ip.ip_send_local(6, conn.local_ip, conn.remote_ip, seg, now, df=True, owner=conn)
        if conn.state.name == "CLOSED":
            key = (conn.local_ip.packed, conn.local_port, conn.remote_ip.packed, conn.remote_port)
            if self.tcp_conns.get(key) is conn:
                del self.tcp_conns[key]
                if self._tcp_owned.pop(conn.key, None) is not None:
                    self.unbind_port(6, (conn.local_ip, conn.local_port))

    def _flusher(self, conn: TCPConnection) -> Callable[[], None]:
        """``on_output`` for a connection: an app call queued segments or moved a
        timer: send them now, and the timer is read again."""

        def flush() -> None:
            self.tcp_flush(conn, conn.now)

        return flush

    def tcp_listen(
        self, port: int, addr: IPv4Address | str = ANY, backlog: int = 128
    ) -> TCPListener:
        a = IPv4Address(addr)
        self.bind_port(6, a, port, None)
        listener = TCPListener(a, port, backlog)
        self.tcp_listeners[(a.packed, port)] = listener
        return listener

    def tcp_connect(self, dst: IPv4Address | str, dport: int, now: float) -> TCPConnection:
        ip = self.ip
        d = IPv4Address(dst)
        if d.packed in ip.local or d.is_loopback:
            src = d
            mtu = ip.interfaces["lo"].mtu
        else:
            route = ip.routes.lookup(d.packed)
            if route is None:
                raise SocketError("ENETUNREACH", f"no route to {d} in {ip.name}")
            src = route.src or ip.source_for(route.dev, (route.via or d).packed)
            mtu = route.dev.mtu
        _, lport = self.bind_port(6, src, 0, None)
        conn = TCPConnection(
            src, lport, d, dport, mss=min(mtu, 65535) - 40, iss=self.ids.tcp_iss(), now=now
        )
        self._tcp_owned[conn.key] = conn
        conn.on_output = self._flusher(conn)
        self.tcp_conns[(src.packed, lport, d.packed, dport)] = conn
        conn.connect(now)
        self.tcp_flush(conn, now)
        return conn

    # ------------------------------------------------------ UDP and ping

    def udp_socket(self) -> UDPSocket:
        return UDPSocket(self)

    def ping_socket(self, ident: int | None = None) -> PingSocket:
        if ident is None:
            ident = self.ids.random_port(1, 0xFFFF)
            while ident in self.ping_sockets:
                ident = ident % 0xFFFF + 1
        elif ident in self.ping_sockets:
            raise SocketError("EADDRINUSE", f"ping id {ident} in use")
        sock = PingSocket(self, ident)
        self.ping_sockets[ident] = sock
        return sock

    def udp_send(
        self, sock: UDPSocket, data: bytes, dst: IPv4Address, dport: int, now: float
    ) -> None:
        ip = self.ip
        assert sock.local is not None
        lport = sock.local[1]
        version = ip.routes.prefixes.version  # bumped by every route or address change
        last = sock.last_route
        if last is not None and last[0] is dst and last[1] == version:
            src, spk, dpk = last[2], last[3], last[4]  # a stream of datagrams to one peer
        else:
            src = self._udp_source(sock, dst)
            spk, dpk = src.packed, dst.packed
            sock.last_route = (dst, version, src, spk, dpk)
        seg = udp.build_fast(lport, dport, data, spk, dpk)
        if self._tracer.enabled:
            ip.trace(now, "", "sendto", f"udp {src}:{lport} > {dst}:{dport} ({len(data)} bytes)")
        ip.ip_send_local(
            17, src, dst, seg, now, ttl=sock.ttl, df=sock.df, owner=sock, packed=(spk, dpk)
        )

    def _udp_source(self, sock: UDPSocket, dst: IPv4Address) -> IPv4Address:
        """The source address of a datagram to ``dst``: the bound one, else the
        route's (``ENETUNREACH`` without a route)."""
        ip = self.ip
        assert sock.local is not None
        laddr = sock.local[0]
        if laddr != ANY:
            return laddr
        if dst.packed in ip.local or dst.is_loopback:
            return dst
        route = ip.routes.lookup(dst.packed)
        if route is None:
            raise SocketError("ENETUNREACH", f"no route to {dst} in {ip.name}")
        return route.src or ip.source_for(route.dev, (route.via or dst).packed)

    def ping_send(
        self, sock: PingSocket, dst: IPv4Address, msg: bytes, now: float, ttl: int, df: bool
    ) -> None:
        last = sock.last_dst
        if last is not None and last[0] is dst:
            dpk = last[1]  # ping sends to one address, packed once
        else:
            dpk = dst.packed
            sock.last_dst = (dst, dpk)
        self.ip.ip_send_local(1, None, dst, msg, now, ttl=ttl, df=df, owner=sock, packed=(b"", dpk))

    def ping_closed(self, sock: PingSocket) -> None:
        self.ping_sockets.pop(sock.ident, None)

    # -------------------------------------------------------------- ports

    def bind_port(
        self, proto: int, addr: IPv4Address, port: int, sock: Any
    ) -> tuple[IPv4Address, int]:
        if addr != ANY and addr.packed not in self.ip.local:
            raise SocketError("EADDRNOTAVAIL", f"{addr} is not an address of {self.ip.name}")
        if port == 0:
            port = self._ephemeral(proto)
        elif not 0 < port <= 0xFFFF:
            raise SocketError("EINVAL", f"port {port} out of range")
        owners = self._bound.setdefault((proto, port), [])
        if owners and (addr.packed in owners or _ANY in owners or addr == ANY):
            raise SocketError("EADDRINUSE", f"port {port} is already in use in {self.ip.name}")
        owners.append(addr.packed)
        if proto == 17:
            self.udp_sockets[(addr.packed, port)] = sock
        return addr, port

    def unbind_port(self, proto: int, local: tuple[IPv4Address, int]) -> None:
        addr, port = local
        owners = self._bound.get((proto, port))
        if owners and addr.packed in owners:
            owners.remove(addr.packed)
            if not owners:
                del self._bound[(proto, port)]
        if proto == 17:
            self.udp_sockets.pop((addr.packed, port), None)
        elif proto == 6:
            self.tcp_listeners.pop((addr.packed, port), None)

    def _ephemeral(self, proto: int) -> int:
        span = EPHEMERAL_HIGH - EPHEMERAL_LOW + 1
        start = self.ids.random_port(EPHEMERAL_LOW, EPHEMERAL_HIGH)
        for i in range(span):
            port = EPHEMERAL_LOW + (start - EPHEMERAL_LOW + i) % span
            if (proto, port) not in self._bound:
                return port
        raise SocketError("EADDRINUSE", f"no free ephemeral port in {self.ip.name}")

    # ----------------------------------------------------------- life cycle

    def get_timer(self) -> float | None:
        times = [t for t in (c.get_timer() for c in self.tcp_conns.values()) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for conn in list(self.tcp_conns.values()):
            t = conn.get_timer()
            if t is not None and now >= t:
                conn.handle_timer(now)
                self.tcp_flush(conn, now)

    def close_all(self) -> None:
        """Every socket closed, TCP reset, nothing sent (the namespace is gone)."""
        for sock in list(self.udp_sockets.values()):
            sock.close()
        for ping in list(self.ping_sockets.values()):
            ping.close()
        for conn in list(self.tcp_conns.values()):
            conn.on_output = None
            conn.abort(conn.now)
            conn.segments_to_send()
        self.tcp_conns.clear()
        self.tcp_listeners.clear()
        self._tcp_owned.clear()
        self._bound.clear()
