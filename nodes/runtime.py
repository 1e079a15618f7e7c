"""The asyncio adapter of one node's data plane.

Theory of operation
-------------------
:class:`NodeRuntime` owns everything a sans-I/O :class:`~emunet.dataplane.node.Node`
cannot: two UDP sockets, the loop clock and one timer handle. It only moves
bytes and supplies time:

* **overlay** (``node_ip:8285``): flanneld's UDP socket. Each datagram is one
  raw IPv4 packet; it goes to ``node.overlay_received((ip, port), data, now)``.
  Overlay datagram actions are sent from it.
* **underlay wire** (``node_ip:8286``): emunet's stand-in for the node network.
  An :class:`UnderlayPacket` (an IPv4 packet leaving the node's ``eth0`` for a
  next hop on the node network, e.g. a pod reaching another node's IP or a
  NodePort) is sent as one UDP datagram to ``(next_hop, 8286)``; what arrives
  there is handed to ``node.underlay_received``. The kernel does not route
  between emulated nodes, so this wire is the node network's "cable".

The sockets are :class:`~emunet.nodes.udp_port.UDPPort` objects: one readable event
reads a batch of datagrams (``recvmmsg`` in a stream, one ``recvfrom`` after a
pause), each only queues its packet in the node (``defer=True``) with the
batch's one clock reading, and the batch ends
with one flush; app calls only queue work and schedule one coalesced flush with
``call_soon``. A flush: ``take_actions()`` runs the
node's queue over the whole batch, as one NAPI poll would (TCP acknowledges
a batch's segments once), and returns what leaves the node; each action
becomes one ``sendto``, except that a run of datagrams to one peer of one size
(the last may be shorter; :func:`datagram_runs`), on the overlay or the wire,
goes to the kernel as one UDP GSO send
(``UDP_SEGMENT``, up to :data:`GSO_SEGMENTS` datagrams): one syscall instead of
one per datagram, and the peer's socket receives the same separate datagrams
(the kernel segments them; a host ``tcpdump`` on the link may show the batch
as one large packet). ``EMUNET_GSO=0`` turns it off; a kernel without it
(``EIO``, ``EOPNOTSUPP``...) has it turned off after :data:`GSO_FAILURES`
refusals; a segment size the path's MTU refuses (``EINVAL``, ``EMSGSIZE``) caps
that socket's GSO sends below it (larger datagrams go one by one, fragmented as
before); any other error sends the run one by one. Then the single timer
handle is re-armed from ``get_timer()`` (``loop.call_later``) when the node's
next deadline is earlier than the armed one; a later deadline (an RTO pushed on
by each ACK) keeps it: it fires early, finds nothing due and re-arms. Timers
flush at once.

Time is ``time.monotonic()``, which is what asyncio's ``loop.time()`` returns;
uvloop's ``loop.time()`` is libuv's millisecond clock cached once per loop
iteration, too coarse for ping RTTs and TCP's RTT estimator, so the runtime
reads the monotonic clock itself and converts deadlines to ``call_later``.

Nothing here blocks: a port's ``sendto`` never waits, and when the
port's send queue passes :data:`TX_BUFFER_LIMIT` the datagram is dropped and
counted (a congested link loses packets, it does not stall the node). Per
socket receive queues are bounded in the data plane; taps (tcpdump, captures)
feed bounded deques that drop and count.

The app API wraps the data plane's pod sockets: :meth:`NodeRuntime.udp_bind`,
:meth:`NodeRuntime.open_connection`, :meth:`NodeRuntime.start_server`,
:meth:`NodeRuntime.ping` / :meth:`NodeRuntime.ping_socket`; the socket objects
they return are :mod:`emunet.nodes.sockets`'.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as errno_mod
import logging
import os
import socket
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, Generic, TypeVar, cast

from emunet.nodes.address_map import AddressMap
from emunet.nodes.process import Service
from emunet.nodes.sockets import PingEndpoint, Stream, StreamServer, UDPEndpoint, os_error
from emunet.nodes.udp_port import UDPPort

from emunet.dataplane.actions import UnderlayPacket
from emunet.dataplane.netns import Namespace
from emunet.dataplane.node import Node
from emunet.dataplane.sockets import EchoReply, SocketErrorEvent
from emunet.dataplane.trace import Drop
from emunet.errors import ConfigError, SocketError

__all__ = ["WIRE_PORT", "BoundedQueue", "NodeRuntime"]

log = logging.getLogger(__name__)

WIRE_PORT = 8286  # emunet's underlay wire (node network stand-in)
TX_BUFFER_LIMIT = 4 * 1024 * 1024  # bytes queued in a UDP port before we drop
SOCKET_BUFFER = 4 * 1024 * 1024  # SO_RCVBUF / SO_SNDBUF asked of the kernel
_TIMER_FLOOR = 0.0005  # a timer that stays due re-arms this much later, never spins
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)  # linux/udp.h (Python 3.11 lacks it)
# datagrams per GSO send: the kernel takes 64 (128 since 6.x), but before 5.16 it
# counted the headers too, so 64 full segments were one too many
GSO_SEGMENTS = 63
GSO_BYTES = 65000  # and their bytes, under a UDP datagram's 65,507
GSO_FAILURES = 8  # refusals of GSO itself before it is turned off for good
# the kernel has no UDP GSO here (no checksum offload, xfrm, an old kernel)
_GSO_UNSUPPORTED = frozenset({errno_mod.ENOPROTOOPT, errno_mod.EOPNOTSUPP, errno_mod.EIO})
_GSO_TOO_BIG = frozenset({errno_mod.EINVAL, errno_mod.EMSGSIZE})  # segment > path MTU
_GSO_SIZE = struct.Struct("=H")


T = TypeVar("T")


class BoundedQueue(Generic[T]):
    """A FIFO that drops new items when full and counts them; ``get`` awaits."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: deque[T] = deque()
        self.dropped = 0
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: T) -> bool:
        if len(self.items) >= self.limit:
            self.dropped += 1
            return False
        self.items.append(item)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
        return True

    async def get(self) -> T:
        while not self.items:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self.items.popleft()

    def __len__(self) -> int:
        return len(self.items)

    async def take(self, count: int, end: float, clock: Callable[[], float]) -> AsyncIterator[T]:
        """Yield up to ``count`` items as they come, until ``clock()`` reaches ``end``
        (a capture's ``-c`` and timeout)."""
        for _ in range(count):
            left = end - clock()
            if left <= 0:
                return
            try:
                item = await asyncio.wait_for(self.get(), left)
            except TimeoutError:
                return
            yield item


@dataclass
class RuntimeStats:
    """Counters of the adapter (the data plane counts its own drops)."""

    overlay_rx: int = 0
    overlay_tx: int = 0
    overlay_tx_dropped: int = 0
    wire_rx: int = 0
    wire_tx: int = 0
    wire_tx_dropped: int = 0
    socket_errors: int = 0
    internal_errors: int = 0
    timer_fires: int = 0
    flushes: int = 0
    app_errors: int = 0
    gso_sends: int = 0
    gso_refused: int = 0

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if isinstance(v, int)}


def _udp_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno_mod.EADDRINUSE:
            raise ConfigError(f"UDP {host}:{port} is already in use") from None
        if exc.errno == errno_mod.EADDRNOTAVAIL:
            raise ConfigError(f"cannot bind UDP {host}:{port}: not a local address") from None
        raise ConfigError(f"cannot bind UDP {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def read_udp_drops(wanted: dict[str, str], path: str = "/proc/net/udp") -> dict[str, int]:
    """``{name: drops}`` for the sockets whose ``local_address`` column (``HEXIP:HEXPORT``)
    is a key of ``wanted``; nothing where the table cannot be read."""
    out = {name: 0 for name in wanted.values()}
    try:
        with open(path) as table:
            next(table, None)
            for line in table:
                cols = line.split()
                if len(cols) >= 13 and cols[1] in wanted:
                    out[wanted[cols[1]]] += int(cols[-1])
    except (OSError, ValueError):
        pass
    return out


def datagram_runs(
    actions: list[Any], limit: int
) -> Iterator[tuple[bool, object, list[bytes | bytearray]]]:
    """``(wire, destination, payloads)`` for each run of consecutive actions that one
    GSO send can carry: the same kind (an :class:`UnderlayPacket` to one next hop, or
    an overlay datagram to one peer), at most ``limit`` datagrams and
    :data:`GSO_BYTES` bytes, each as long as the first but the last, which may be
    shorter. In order; ``limit`` 1 gives one datagram per run."""
    run: list[bytes | bytearray] = []
    kind = False
    key: object = None
    size = total = 0
    for action in actions:
        if isinstance(action, UnderlayPacket):
            wire, dst, payload = True, action.next_hop, action.packet
        else:
            wire, dst, payload = False, action[0], action[1]
        length = len(payload)
        if run and (
            length == 0  # an empty datagram goes alone (GSO cannot carry it)
            or wire is not kind
            or dst != key
            or length > size
            or len(run) >= limit
            or total + length > GSO_BYTES
            or len(run[-1]) < size
        ):
            yield kind, key, run
            run = []
        if not run:
            kind, key, size, total = wire, dst, length, 0
        run.append(payload)
        total += length
    if run:
        yield kind, key, run


class NodeRuntime(Service):
    """Drives one :class:`Node` from an asyncio loop; ``async with NodeRuntime(node):``."""

    def __init__(
        self,
        node: Node,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        bind_ip: IPv4Address | str | None = None,
        overlay_port: int | None = None,
        wire_port: int = WIRE_PORT,
        address_map: AddressMap | None = None,
    ) -> None:
        self.node = node
        self._loop = loop
        self.address_map = address_map
        self._to_real: dict[str, str] = {}
        self._to_emulated: dict[str, str] = {}
        if bind_ip is None:
            bind_ip = (
                node.node_ip if address_map is None else address_map.to_real(str(node.node_ip))
            )
        self.bind_ip = str(bind_ip)
        self.overlay_port = overlay_port if overlay_port is not None else node.flannel.port
        self.wire_port = wire_port
        self.stats = RuntimeStats()
        self._overlay: UDPPort | None = None
        self._gso_cap: dict[socket.socket, int] = {}  # largest segment a socket's path takes
        self.gso = os.environ.get("EMUNET_GSO", "1") != "0"
        self._wire: UDPPort | None = None
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: dict[str, set[asyncio.Task[Any]]] = {}
        self._closed = False
        self._wall_offset = 0.0
        self.started_at = 0.0

    # ------------------------------------------------------------ lifecycle

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        """The data plane's clock: ``time.monotonic()`` (see the module docstring)."""
        return time.monotonic()

    def wall(self, now: float) -> float:
        """Convert a loop time to Unix time (pcap timestamps)."""
        return now + self._wall_offset

    async def start(self) -> None:
        loop = self.loop
        self._wall_offset = time.time() - time.monotonic()
        self.started_at = self.now()
        ov = _udp_socket(self.bind_ip, self.overlay_port)
        try:
            wire = _udp_socket(self.bind_ip, self.wire_port)
        except ConfigError:
            ov.close()
            raise
        try:
            self._overlay = UDPPort(
                loop, ov, self._overlay_in, self._batch_read, self._socket_error
            )
            self._wire = UDPPort(loop, wire, self._wire_in, self._batch_read, self._socket_error)
        except BaseException:
            for port, sock in ((self._overlay, ov), (self._wire, wire)):
                (port or sock).close()
            self._overlay = self._wire = None
            raise
        self.poke()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = [t for ts in self._tasks.values() for t in ts]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        self._tasks.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for tr in (self._overlay, self._wire):
            if tr is not None:
                tr.close()
        self._overlay = self._wire = None

    # ------------------------------------------------------------ data path

    def real(self, ip: str) -> str:
        """The socket address of an emulated node address (identity without a map)."""
        amap = self.address_map
        if amap is None:
            return ip
        real = self._to_real.get(ip)
        if real is None:
            real = self._to_real[ip] = amap.to_real(ip)
        return real

    def kernel_drops(self) -> dict[str, int]:
        """Datagrams the kernel dropped in our sockets' receive buffers (the drops
        column of /proc/net/udp, which counts per socket): a congested node loses
        packets before the data plane sees them."""
        wanted: dict[str, str] = {}
        for name, tr in (("overlay", self._overlay), ("wire", self._wire)):
            if tr is None:
                continue
            ip, port = tr.sock.getsockname()[:2]
            packed = socket.inet_aton(ip)[::-1].hex().upper()
            wanted[f"{packed}:{port:04X}"] = name
        return read_udp_drops(wanted)

    def _socket_error(self, exc: BaseException) -> None:
        self.stats.socket_errors += 1

    def _batch_read(self) -> None:
        """A port handed over the datagrams of one readable event: run them."""
        if not self._closed:
            self.flush()

    def _overlay_in(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        self.stats.overlay_rx += 1
        try:
            amap = self.address_map
            if amap is not None:
                src = self._to_emulated.get(addr[0])
                if src is None:
                    src = self._to_emulated[addr[0]] = amap.to_emulated(addr[0])
                addr = (src, addr[1])
            self.node.overlay_received(addr, data, now, defer=True)
        except Exception:  # one bad datagram never stops the node
            self._bad_datagram(addr)

    def _wire_in(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        self.stats.wire_rx += 1
        try:
            if len(data) < 20:
                self.node.root.drop(now, self.node.eth0, Drop.MALFORMED, "wire datagram")
                return
            self.node.underlay_received(data, now, defer=True)
        except Exception:
            self._bad_datagram(addr)

    def _bad_datagram(self, addr: tuple[str, int]) -> None:
        self.stats.internal_errors += 1
        log.exception("error handling a datagram from %s", addr)

    def poke(self) -> None:
        """Schedule one flush (coalesced): run the node's queue, send, re-arm the timer."""
        if not self._flush_scheduled and not self._closed:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self, floor: float | None = None) -> None:
        """Run the node's queue, send its actions, re-arm its timer (not before
        ``floor``: after a timer fired, so a timer due again at once cannot spin)."""
        self._flush_scheduled = False
        if self._closed:
            return
        self.stats.flushes += 1
        try:
            actions = self.node.take_actions()
        except Exception:
            self.stats.internal_errors += 1
            log.exception("node %s: error running its queue", self.node.name)
            actions = self.node.actions.copy()  # the list stays: emitters hold its append
            self.node.actions.clear()
        ov, wp = self._overlay, self._wire  # GSO sends go straight to their sockets
        for wire, key, payloads in datagram_runs(actions, GSO_SEGMENTS if self.gso else 1):
            if wire:  # UnderlayPacket: raw IPv4 to a next hop on the node network
                self._send_wire(wp, wp.sock if wp else None, cast(IPv4Address, key), payloads)
            else:  # an overlay datagram, sent now: the agent's time is real
                dst = cast(tuple[str, int], key)
                addr = (self.real(dst[0]), dst[1]) if self.address_map else dst
                if self._send(ov, ov.sock if ov else None, addr, payloads):
                    self.stats.overlay_tx += len(payloads)
                else:
                    self.stats.overlay_tx_dropped += len(payloads)
        self._arm_timer(floor)

    def _send_wire(
        self,
        tr: UDPPort | None,
        sock: socket.socket | None,
        hop: IPv4Address,
        payloads: list[bytes | bytearray],
    ) -> None:
        """Send raw IPv4 packets to ``hop``'s wire port, counted as sent or dropped."""
        if self._send(tr, sock, (self.real(str(hop)), self.wire_port), payloads):
            self.stats.wire_tx += len(payloads)
        else:
            self.stats.wire_tx_dropped += len(payloads)

    def _send(
        self,
        tr: UDPPort | None,
        sock: socket.socket | None,
        addr: tuple[str, int],
        payloads: list[bytes | bytearray],
    ) -> bool:
        """Send ``payloads`` to ``addr``: a run in one GSO send, else one ``sendto``
        each (the port queues what the kernel cannot take yet, in order).
        False: dropped, the port's backlog is full (or it is closed)."""
        if tr is None or tr.get_write_buffer_size() > TX_BUFFER_LIMIT:
            return False
        size = len(payloads[0])
        if (
            len(payloads) > 1
            and sock is not None
            and size <= self._gso_cap.get(sock, GSO_BYTES)
            and tr.get_write_buffer_size() == 0
        ):
            try:
                sock.sendmsg(
                    [b"".join(payloads)],
                    [(socket.SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(size))],
                    0,
                    addr,
                )
            except (BlockingIOError, InterruptedError):
                pass  # the kernel buffer is full: the port queues them
            except OSError as exc:
                self._gso_failed(sock, size, exc)
            else:
                self.stats.gso_sends += 1
                return True
        for payload in payloads:
            tr.sendto(payload, addr)
        return True

    def _gso_failed(self, sock: socket.socket, size: int, exc: OSError) -> None:
        """A GSO send failed (its datagrams go one by one): learn what it says."""
        if exc.errno in _GSO_TOO_BIG:  # segments of ``size`` exceed the path's MTU
            self._gso_cap[sock] = min(self._gso_cap.get(sock, GSO_BYTES), size - 1)
        if exc.errno not in _GSO_UNSUPPORTED:
            return  # the datagrams themselves will meet the error, as without GSO
        self.stats.gso_refused += 1
        if self.stats.gso_refused >= GSO_FAILURES and self.gso:
            self.gso = False
            log.warning(
                "%s: UDP GSO refused (%s): sending datagrams one by one",
                self.node.name,
                exc.strerror or exc,
            )

    def _arm_timer(self, floor: float | None = None) -> None:
        try:
            t = self.node.get_timer()
        except Exception:
            self.stats.internal_errors += 1
            log.exception("node %s: get_timer failed", self.node.name)
            t = None
        if t is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
                self._timer_at = None
            return
        if floor is not None and t < floor:
            # after a firing: libuv counts whole milliseconds, so a deadline closer
            # than the floor could fire early again and again; at most the floor late
            t = floor
        if self._timer is not None and self._timer_at is not None and self._timer_at <= t:
            return  # it fires early, runs nothing due and re-arms: no churn per flush
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = t
        self._timer = self.loop.call_later(max(0.0, t - self.now()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._closed:
            return
        now = self.now()
        self.stats.timer_fires += 1
        try:
            self.node.handle_timer(now)
        except Exception:
            self.stats.internal_errors += 1
            log.exception("node %s: handle_timer failed", self.node.name)
        self.flush(floor=now + _TIMER_FLOOR)

    # ------------------------------------------------------------- app tasks

    def spawn(
        self, owner: str, coro: Coroutine[Any, Any, Any], *, name: str | None = None
    ) -> asyncio.Task[Any]:
        """Run an app coroutine on behalf of ``owner`` (a pod name); cancelled with it."""
        task = self.loop.create_task(coro, name=name)
        group = self._tasks.setdefault(owner, set())
        group.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            group.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self.stats.app_errors += 1
                exc = t.exception()
                log.warning("%s: task %s failed: %s", owner, t.get_name(), exc)

        task.add_done_callback(done)
        return task

    async def cancel_tasks(self, owner: str) -> None:
        tasks = list(self._tasks.pop(owner, ()))
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t

    def namespace(self, pod: str) -> Namespace:
        return self.node.namespace(pod)

    # ----------------------------------------------------------------- UDP

    async def udp_bind(
        self, pod: str, port: int = 0, addr: IPv4Address | str = "0.0.0.0"
    ) -> UDPEndpoint:
        """A UDP socket bound in ``pod`` (port 0: an ephemeral port)."""
        sock = self.namespace(pod).udp_socket()
        try:
            sock.bind(addr, port)
        except SocketError as exc:
            raise os_error(exc.errno_name, str(exc)) from None
        return UDPEndpoint(self, sock)

    # ----------------------------------------------------------------- ping

    def ping_socket(self, pod: str, ident: int | None = None) -> PingEndpoint:
        return PingEndpoint(self, self.namespace(pod).ping_socket(ident))

    async def ping(
        self,
        pod: str,
        dst: IPv4Address | str,
        seq: int = 1,
        timeout: float = 1.0,
        ttl: int = 64,
        size: int = 56,
    ) -> EchoReply | SocketErrorEvent | None:
        """One echo request: the reply, the ICMP error it caused, or None on timeout."""
        ep = self.ping_socket(pod)
        try:
            ep.send(dst, seq, bytes(size), ttl=ttl)
            return await ep.receive(timeout)
        finally:
            ep.close()

    # ----------------------------------------------------------------- TCP

    async def open_connection(
        self, pod: str, host: IPv4Address | str, port: int, *, timeout: float | None = None
    ) -> tuple[Stream, Stream]:
        """Connect from ``pod``; returns ``(reader, writer)`` (the same :class:`Stream`)."""
        ns = self.namespace(pod)
        try:
            conn = ns.tcp_connect(IPv4Address(host), port, self.now())
        except SocketError as exc:
            raise os_error(exc.errno_name, str(exc)) from None
        stream = Stream(self, conn)
        self.poke()
        try:
            await asyncio.wait_for(stream.wait_established(), timeout)
        except TimeoutError:
            conn.abort(self.now())
            self.poke()
            raise os_error("ETIMEDOUT", f"connect to {host}:{port} timed out") from None
        return stream, stream

    async def start_server(
        self,
        pod: str,
        port: int,
        handler: Callable[[Stream, Stream], Awaitable[None]],
        *,
        addr: IPv4Address | str = "0.0.0.0",
        backlog: int = 128,
    ) -> StreamServer:
        """Listen in ``pod``; each accepted connection runs ``handler(reader, writer)``."""
        ns = self.namespace(pod)
        try:
            listener = ns.tcp_listen(port, addr, backlog)
        except SocketError as exc:
            raise os_error(exc.errno_name, str(exc)) from None
        server = StreamServer(self, pod, ns, listener, handler)
        listener.on_event = server._on_accept
        return server

    # ----------------------------------------------------------------- taps

    def tap(
        self, netns: str, iface: str, fn: Callable[[float, bytes | bytearray], None]
    ) -> Callable[[], None]:
        """Call ``fn(now, data)`` for each frame seen on an interface; returns the remover."""
        ns = self.node.namespace(netns)
        dev = ns.interfaces.get(iface)
        if dev is None:
            raise ConfigError(f"no interface {iface!r} in {netns} on {self.node.name}")
        dev.taps.append(fn)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                dev.taps.remove(fn)

        return remove
