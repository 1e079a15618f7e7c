"""The app-facing sockets of a pod: asyncio objects over the data plane's sockets.

:class:`UDPEndpoint`, :class:`PingEndpoint`, :class:`Stream` (asyncio's
``StreamReader`` and ``StreamWriter`` in one object) and :class:`StreamServer`
wrap :mod:`emunet.dataplane.sockets` and :mod:`emunet.dataplane.tcp`. A socket
only queues work in the node; its :class:`SocketHost` (the
:class:`~emunet.nodes.runtime.NodeRuntime` that made it) supplies the loop and
the clock and flushes the node on :meth:`SocketHost.poke`. Errors are the
:class:`OSError` subclasses a real socket raises (:func:`os_error`).
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from ipaddress import IPv4Address
from typing import Any, Protocol

from emunet.dataplane.netns import Namespace
from emunet.dataplane.sockets import EchoReply, PingSocket, SocketErrorEvent, UDPSocket
from emunet.dataplane.tcp import TCPConnection, TCPListener, TCPState
from emunet.errors import EmunetError, SocketError

__all__ = [
    "PingEndpoint",
    "SocketHost",
    "Stream",
    "StreamServer",
    "UDPEndpoint",
    "os_error",
]

log = logging.getLogger(__name__)

_CLOSED_FOR_WRITE = frozenset(
    {TCPState.FIN_WAIT_2, TCPState.TIME_WAIT, TCPState.CLOSED}
)  # our FIN was acknowledged (or the connection is gone)


class SocketHost(Protocol):
    """What a socket needs of the runtime that made it."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    def now(self) -> float: ...

    def poke(self) -> None:
        """Flush the node soon: the socket queued work in it."""

    def spawn(
        self, owner: str, coro: Coroutine[Any, Any, Any], *, name: str | None = None
    ) -> asyncio.Task[Any]: ...


def os_error(errno_name: str, message: str = "") -> OSError:
    """The Python exception a real socket raises for a Linux errno name."""
    code = getattr(errno_mod, errno_name, errno_mod.EIO)
    text = message or errno_mod.errorcode.get(code, errno_name)
    classes: dict[str, type[OSError]] = {
        "ECONNREFUSED": ConnectionRefusedError,
        "ECONNRESET": ConnectionResetError,
        "ECONNABORTED": ConnectionAbortedError,
        "EPIPE": BrokenPipeError,
        "ETIMEDOUT": TimeoutError,
    }
    cls = classes.get(errno_name, OSError)
    return cls(code, f"[{errno_name}] {text}")


class _Waker:
    """Wakes the one task waiting on a socket; set as the socket's ``on_event``.

    A wait with a timeout is one future and one timer handle that resolves it
    with False (``wait_for`` over a shielded future costs several callbacks, and
    a ping's round trip is timed across it).
    """

    __slots__ = ("_fut", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._fut: asyncio.Future[bool] | None = None

    def __call__(self) -> None:
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(True)

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait for the next event; False on timeout."""
        fut: asyncio.Future[bool] = self._loop.create_future()
        self._fut = fut
        timer = None if timeout is None else self._loop.call_later(timeout, _expire, fut)
        try:
            return await fut
        finally:
            self._fut = None
            if timer is not None:
                timer.cancel()


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


class UDPEndpoint:
    """An app's UDP socket: ``await recvfrom()``, ``sendto()``, ``close()``."""

    def __init__(self, rt: SocketHost, sock: UDPSocket) -> None:
        self.rt = rt
        self.sock = sock
        self._waker = _Waker(rt.loop)
        sock.on_event = self._waker
        # the text of the last peer address (the data plane hands one address object
        # per peer: formatting it for every datagram of a stream is wasted)
        self._peer: tuple[IPv4Address | None, str] = (None, "")

    @property
    def local(self) -> tuple[IPv4Address, int]:
        assert self.sock.local is not None
        return self.sock.local

    @property
    def errors(self) -> deque[SocketErrorEvent]:
        """ICMP errors about what this socket sent (``MSG_ERRQUEUE``)."""
        return self.sock.errors

    def sendto(self, data: bytes, addr: tuple[IPv4Address | str, int]) -> None:
        try:
            self.sock.sendto(data, addr, self.rt.now())
        except SocketError as exc:
            raise os_error(exc.errno_name, str(exc)) from None
        self.rt.poke()

    async def recvfrom(self, timeout: float | None = None) -> tuple[bytes, tuple[str, int]]:
        """The next datagram; raises ``TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else self.rt.now() + timeout
        while True:
            got = self.sock.recvfrom()
            if got is not None:
                data, (ip, port) = got
                peer = self._peer
                if peer[0] is not ip:
                    peer = self._peer = (ip, str(ip))
                return data, (peer[1], port)
            if self.sock.closed:
                raise os_error("EBADF", "socket is closed")
            left = None if deadline is None else deadline - self.rt.now()
            if left is not None and left <= 0:
                raise TimeoutError("recvfrom timed out")
            await self._waker.wait(left)

    async def recv_many(
        self, limit: int = 64, timeout: float | None = None
    ) -> list[tuple[bytes, tuple[str, int]]]:
        """What ``recvmmsg`` would return: the queued datagrams, at most ``limit``
        (1 to 1024), after waiting for the first; ``TimeoutError`` as ``recvfrom``."""
        if not 1 <= limit <= 1024:
            raise ValueError(f"recv_many: limit {limit} not in 1..1024")
        first = await self.recvfrom(timeout)
        out = [first]
        sock, peer = self.sock, self._peer
        while len(out) < limit and (got := sock.recvfrom()) is not None:
            data, (ip, port) = got
            if peer[0] is not ip:
                peer = self._peer = (ip, str(ip))
            out.append((data, (peer[1], port)))
        return out

    async def wait_event(self, timeout: float | None = None) -> bool:
        """Wait for a datagram or an ICMP error; False on timeout."""
        if self.sock.rx or self.sock.errors:
            return True
        return await self._waker.wait(timeout)

    def close(self) -> None:
        self.sock.close()
        self.sock.on_event = None


class PingEndpoint:
    """An ICMP echo socket: ``send(dst, seq)``, ``await receive(timeout)``."""

    def __init__(self, rt: SocketHost, sock: PingSocket) -> None:
        self.rt = rt
        self.sock = sock
        self._waker = _Waker(rt.loop)
        sock.on_event = self._waker

    def send(
        self, dst: IPv4Address | str, seq: int, payload: bytes = b"", *, ttl: int = 64
    ) -> None:
        try:
            self.sock.send(dst, seq, self.rt.now(), payload, ttl=ttl)
        except SocketError as exc:
            raise os_error(exc.errno_name, str(exc)) from None
        self.rt.poke()

    async def receive(self, timeout: float) -> EchoReply | SocketErrorEvent | None:
        deadline = self.rt.now() + timeout
        while True:
            if self.sock.replies:
                return self.sock.replies.popleft()
            if self.sock.errors:
                return self.sock.errors.popleft()
            left = deadline - self.rt.now()
            if left <= 0 or not await self._waker.wait(left):
                return None

    def close(self) -> None:
        self.sock.close()
        self.sock.on_event = None


class Stream:
    """A TCP connection as an asyncio-like reader and writer in one object.

    ``read``/``readexactly``/``readline`` wait for data; ``write`` queues bytes
    (moved into the connection's send buffer as it frees up) and ``drain``
    waits until they all fit, which is TCP's flow control reaching the app.
    ``close`` sends FIN after the queued bytes; ``wait_closed`` waits for it to
    be acknowledged. A failed connection raises the ``OSError`` a real socket
    would (ConnectionRefusedError, ConnectionResetError, TimeoutError).
    """

    def __init__(self, rt: SocketHost, conn: TCPConnection) -> None:
        self.rt = rt
        self.conn = conn
        self._waker = _Waker(rt.loop)
        # drain() has its own: it only wakes once the pending bytes are all in the
        # send buffer (or the connection failed), not at each ACK that frees space
        self._drain_waker = _Waker(rt.loop)
        self._buf = bytearray()  # read but not yet consumed (readline/readexactly)
        self._pending = bytearray()  # written but not yet accepted by the send buffer
        self._close_requested = False
        self._closed_sent = False
        conn.on_event = self._on_event

    # -------------------------------------------------------------- events

    def _on_event(self) -> None:
        conn = self.conn
        if self._pending and conn.send_space:
            self._push()
        if not self._pending or conn.error is not None or conn.state is TCPState.CLOSED:
            self._drain_waker()
        self._waker()

    def _push(self) -> None:
        conn = self.conn
        if conn.error is not None:
            self._pending.clear()
            return
        if self._pending and conn.state not in (TCPState.CLOSED, TCPState.LISTEN):
            try:
                n = conn.send(self._pending, self.rt.now())
            except SocketError:
                self._pending.clear()
                return
            if n:
                del self._pending[:n]
        if not self._pending and self._close_requested and not self._closed_sent:
            self._closed_sent = True
            conn.close(self.rt.now())
        self.rt.poke()

    def _raise_if_failed(self) -> None:
        if self.conn.error is not None:
            raise os_error(self.conn.error, f"connection to {self.peername()} failed")

    async def wait_established(self) -> None:
        while True:
            state = self.conn.state
            if state is TCPState.ESTABLISHED or state is TCPState.CLOSE_WAIT:
                return
            if self.conn.error is not None:
                self._raise_if_failed()
            if state is TCPState.CLOSED:
                raise os_error("ECONNREFUSED", f"connection to {self.peername()} closed")
            await self._waker.wait()

    # ---------------------------------------------------------------- info

    def peername(self) -> tuple[str, int]:
        return (str(self.conn.remote_ip), self.conn.remote_port)

    def sockname(self) -> tuple[str, int]:
        return (str(self.conn.local_ip), self.conn.local_port)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peername(), "sockname": self.sockname()}.get(name, default)

    # ----------------------------------------------------------------- read

    def _take(self, n: int) -> bytes:
        conn = self.conn
        if not self._buf and conn.readable:
            data = conn.recv(n)  # straight from the receive buffer, no staging copy
            self.rt.poke()  # the window may have reopened
            return data
        if conn.readable:
            self._buf += conn.recv()
            self.rt.poke()  # the window may have reopened
        if n < 0 or n >= len(self._buf):
            data = bytes(self._buf)
            self._buf.clear()
        else:
            data = bytes(self._buf[:n])
            del self._buf[:n]
        return data

    def at_eof(self) -> bool:
        return not self._buf and self.conn.at_eof

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (``-1``: until EOF, like asyncio); ``b""`` at EOF."""
        if n < 0:
            chunks = bytearray()
            while True:
                data = await self.read(1 << 16)
                if not data:
                    return bytes(chunks)
                chunks += data
        while True:
            if self._buf or self.conn.readable:
                return self._take(n)
            if self.conn.at_eof:
                self._raise_if_failed()
                return b""
            if n == 0:
                return b""
            await self._waker.wait()

    async def readexactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            if self.conn.readable:
                self._buf += self.conn.recv()
                self.rt.poke()
                continue
            if self.conn.at_eof:
                partial = bytes(self._buf)
                self._buf.clear()
                raise asyncio.IncompleteReadError(partial, n)
            await self._waker.wait()
        return self._take(n)

    async def readline(self, limit: int = 1 << 16) -> bytes:
        """Up to and including ``\\n`` (or what is left at EOF)."""
        while True:
            i = self._buf.find(b"\n")
            if i >= 0:
                return self._take(i + 1)
            if len(self._buf) >= limit:
                raise ValueError(f"line longer than {limit} bytes")
            if self.conn.readable:
                self._buf += self.conn.recv()
                self.rt.poke()
                continue
            if self.conn.at_eof:
                return self._take(-1)
            await self._waker.wait()

    # ---------------------------------------------------------------- write

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._close_requested:
            raise os_error("EPIPE", "write after close")
        self._raise_if_failed()
        if not data:
            return
        self._pending += data
        self._push()

    def writelines(self, lines: list[bytes]) -> None:
        for line in lines:
            self.write(line)

    @property
    def pending(self) -> int:
        """Bytes written but not yet in the connection's send buffer."""
        return len(self._pending)

    async def drain(self) -> None:
        """Wait until what was written fits in the send buffer (back-pressure)."""
        while self._pending:
            self._raise_if_failed()
            if self.conn.state is TCPState.CLOSED:
                raise os_error("EPIPE", "connection closed")
            await self._drain_waker.wait()
        self._raise_if_failed()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.close()

    def close(self) -> None:
        """Send FIN after the queued bytes (``shutdown(SHUT_WR)``; reading stays possible)."""
        if self._close_requested:
            return
        self._close_requested = True
        self._push()

    def is_closing(self) -> bool:
        return self._close_requested

    def abort(self) -> None:
        self._pending.clear()
        self._close_requested = self._closed_sent = True
        self.conn.abort(self.rt.now())
        self.rt.poke()

    async def wait_closed(self) -> None:
        """Wait until our FIN is acknowledged (or the connection failed)."""
        while (
            not (self.conn.state in _CLOSED_FOR_WRITE and not self._pending)
            and self.conn.error is None
        ):
            await self._waker.wait()


class StreamServer:
    """A listening socket in a pod; ``close()`` stops listening."""

    def __init__(
        self,
        rt: SocketHost,
        pod: str,
        ns: Namespace,
        listener: TCPListener,
        handler: Callable[[Stream, Stream], Awaitable[None]],
    ) -> None:
        self.rt = rt
        self.pod = pod
        self.ns = ns
        self.listener = listener
        self.handler = handler
        self.accepted = 0
        self._closed = False
        self._done = rt.loop.create_future()

    @property
    def port(self) -> int:
        return self.listener.local_port

    def _on_accept(self) -> None:
        while (conn := self.listener.accept()) is not None:
            self.accepted += 1
            stream = Stream(self.rt, conn)
            self.rt.spawn(
                self.pod,
                self._serve(stream),
                name=f"{self.pod}:{self.port}<-{conn.remote_ip}:{conn.remote_port}",
            )

    async def _serve(self, stream: Stream) -> None:
        try:
            await self.handler(stream, stream)
        except (OSError, EmunetError, asyncio.IncompleteReadError) as exc:
            log.debug("%s: connection from %s ended: %s", self.pod, stream.peername(), exc)
        finally:
            if stream.conn.state not in (TCPState.CLOSED, TCPState.TIME_WAIT):
                stream.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.listener.on_event = None
        self.listener.close(self.rt.now())
        self.ns.sockets.unbind_port(6, (self.listener.local_ip, self.listener.local_port))
        self.rt.poke()
        if not self._done.done():
            self._done.set_result(None)

    async def wait_closed(self) -> None:
        await self._done

    async def serve_forever(self) -> None:
        try:
            await self._done
        finally:
            self.close()
