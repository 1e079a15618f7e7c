"""A node's UDP socket on the loop: batched receive, buffered send.

:class:`UDPPort` replaces asyncio's datagram transport for the runtime's
overlay and wire sockets. A transport hands the protocol one datagram per
Python call, each with a freshly formatted address; a node under load then
spends a third of its time receiving. Here a readable event of a stream reads a batch:

* when a readable event comes less than :data:`BUSY_GAP` after the last one
  (a stream: a socket with a backlog is reported again at the loop's next
  turn, as a NIC's adaptive interrupt moderation judges the packet rate),
  ``recvmmsg(2)`` (through :mod:`ctypes`, where the C library has it) fills up
  to :data:`BATCH` slots of one anonymous mapping in one system call, the way
  a NAPI poll takes a budget of packets; each datagram is copied out once, and
  a sender's address is formatted once per distinct ``sockaddr`` (a bounded
  cache); elsewhere, or with ``EMUNET_RECVMMSG=0``, ``recvfrom`` until the
  socket is empty, at most :data:`BATCH` times;
* after a pause (a lone ping), one ``recvfrom``: the poll is level-triggered,
  so a socket with more to read is reported again at once, and no call is
  spent finding it empty; on a cold cache the ``ctypes`` call is the dearer
  one (cross-node ping at 10 ms intervals on this machine kind, p50 over three
  runs of 200: 0.63-0.70 ms reading with ``recvfrom``, 0.70-0.77 ms with
  ``recvmmsg``), and so is the empty read (interleaved runs of 400, p50:
  0.75-0.81 ms without it, 0.80-0.85 ms with it; 0.73-0.76 ms with the
  runtime's timer kept for later deadlines too, 0.78-0.85 ms with neither).

Every datagram of the batch goes to ``on_datagram(data, addr, now)`` with the
one ``now`` read when the batch was taken (the kernel stamps a NAPI poll's
packets alike); then ``on_batch()`` runs once (the runtime's flush: one pass
of the node's queue and one send per batch). A batch is at most
:data:`BATCH` datagrams, so other sockets and timers get their turn; the
socket stays readable (level-triggered) until it is drained.

Sending keeps a transport's contract: ``sendto`` never blocks; what the
kernel cannot take yet waits in a FIFO (a copy; ``get_write_buffer_size``
bytes, which the runtime bounds) drained when the socket is writable, in
order. Any other send error goes to ``on_error`` and the datagram is dropped,
as a transport's ``error_received`` would. Unlike asyncio's transport, an
empty datagram is sent, and ``close()`` drops what is still queued (a node
that stops does not finish its sends).

A callback that raises is reported to ``on_error`` and the batch goes on;
a port closed by a callback reads no further.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno as errno_mod
import mmap
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["BATCH", "SLOT", "UDPPort", "recvmmsg_available"]

BATCH = 32  # datagrams read per readable event (recvmmsg's vlen)
SLOT = 65536  # bytes per receive slot: any IPv4 datagram fits
ADDR_CACHE = 1024  # distinct senders whose formatted address is kept
BUSY_GAP = 0.005  # s: a readable event this soon after the last one reads a batch
_MSG_DONTWAIT = 0x40
_MSG_TRUNC = 0x20


class _IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint32)]


def _libc_recvmmsg() -> Any:
    """libc's ``recvmmsg``, or None (not Linux, not exported, or switched off)."""
    if os.environ.get("EMUNET_RECVMMSG", "1") == "0" or not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.recvmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


_RECVMMSG = _libc_recvmmsg()


def recvmmsg_available() -> bool:
    """Whether ports read with ``recvmmsg`` (else ``recvfrom`` in a loop)."""
    return _RECVMMSG is not None


class _MMsgRing:
    """The ``recvmmsg`` vector: :data:`BATCH` slots of one mapping, their
    ``sockaddr_in`` buffers and the ``msg_len`` / ``msg_flags`` words read back."""

    def __init__(self) -> None:
        self.buf = mmap.mmap(-1, BATCH * SLOT)  # pages are touched only as filled
        self.view = memoryview(self.buf)
        self.names = bytearray(BATCH * 16)
        self._cbuf = (ctypes.c_char * (BATCH * SLOT)).from_buffer(self.buf)
        self._cnames = (ctypes.c_char * (BATCH * 16)).from_buffer(self.names)
        self._iovs = (_IOVec * BATCH)()
        self.msgs = (_MMsgHdr * BATCH)()
        base, names = ctypes.addressof(self._cbuf), ctypes.addressof(self._cnames)
        for i in range(BATCH):
            self._iovs[i].base = base + i * SLOT
            self._iovs[i].len = SLOT
            hdr = self.msgs[i].hdr
            hdr.iov = ctypes.addressof(self._iovs[i])
            hdr.iovlen = 1
            hdr.name = names + 16 * i
        self.words = memoryview(self.msgs).cast("B").cast("I")
        self.stride = ctypes.sizeof(_MMsgHdr) // 4
        self.len_at = _MMsgHdr.len.offset // 4
        self.flags_at = (_MMsgHdr.hdr.offset + _MsgHdr.flags.offset) // 4

    def reset(self) -> None:
        """The kernel shortens ``msg_namelen`` to what it wrote: restore it."""
        for i in range(BATCH):
            self.msgs[i].hdr.namelen = 16

    def release(self) -> None:
        self.words.release()
        self.view.release()
        del self._cbuf, self._cnames
        with contextlib.suppress(BufferError):
            self.buf.close()


class UDPPort:
    """One bound, non-blocking UDP socket read in batches on ``loop`` (see the
    module docstring); ``sendto`` / ``get_write_buffer_size`` / ``close`` as a
    datagram transport's; ``sock`` for what goes to the kernel directly (GSO)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        on_datagram: Callable[[bytes, tuple[str, int], float], None],
        on_batch: Callable[[], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        self._loop = loop
        self.sock = sock
        self._fd = sock.fileno()
        self._on_datagram = on_datagram
        self._on_batch = on_batch
        self._on_error = on_error
        self._queue: deque[tuple[bytes, tuple[str, int]]] = deque()
        self._queued = 0
        self._addrs: dict[bytes, tuple[str, int]] = {}
        self._ring = _MMsgRing() if _RECVMMSG is not None else None
        self._stamp = -BUSY_GAP  # when the last readable event came
        self.closed = False
        loop.add_reader(self._fd, self._readable)

    # ---------------------------------------------------------------- receive

    def _readable(self) -> None:
        now = time.monotonic()
        busy = now - self._stamp < BUSY_GAP  # the last read was just now: a stream
        self._stamp = now
        if not busy:
            n = self._read(1, now)
        elif self._ring is not None:
            n = self._read_mmsg(now)
        else:
            n = self._read(BATCH, now)
        if n and not self.closed:
            self._on_batch()

    def _read_mmsg(self, now: float) -> int:
        ring = self._ring
        assert ring is not None and _RECVMMSG is not None
        ring.reset()
        n: int = _RECVMMSG(self._fd, ctypes.addressof(ring.msgs), BATCH, _MSG_DONTWAIT, None)
        if n < 0:
            err = ctypes.get_errno()
            if err not in (errno_mod.EAGAIN, errno_mod.EINTR):
                self._on_error(OSError(err, os.strerror(err)))
            return 0
        words, view, names, addrs = ring.words, ring.view, ring.names, self._addrs
        on_datagram = self._on_datagram
        for i in range(n):
            at = i * ring.stride
            length = words[at + ring.len_at]
            if words[at + ring.flags_at] & _MSG_TRUNC:
                self._on_error(OSError(errno_mod.EMSGSIZE, "datagram truncated"))
                continue
            key = bytes(names[16 * i : 16 * i + 8])  # family, port, address
            addr = addrs.get(key)
            if addr is None:
                if len(addrs) >= ADDR_CACHE:
                    addrs.clear()
                port = int.from_bytes(key[2:4], "big")
                addr = addrs[key] = (socket.inet_ntoa(key[4:8]), port)
            try:
                on_datagram(bytes(view[i * SLOT : i * SLOT + length]), addr, now)
            except Exception as exc:
                self._on_error(exc)
            if self.closed:
                break
        return n

    def _read(self, limit: int, now: float) -> int:
        recvfrom = self.sock.recvfrom
        on_datagram = self._on_datagram
        got = 0
        for _ in range(limit):
            try:
                data, addr = recvfrom(SLOT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._on_error(exc)
                break
            got += 1
            try:
                on_datagram(data, addr, now)
            except Exception as exc:
                self._on_error(exc)
            if self.closed:
                break
        return got

    # ------------------------------------------------------------------- send

    def get_write_buffer_size(self) -> int:
        """Bytes waiting for the kernel to take them."""
        return self._queued

    def sendto(self, data: bytes | bytearray, addr: tuple[str, int]) -> None:
        if self.closed:
            return
        if not self._queue:
            try:
                self.sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self._loop.add_writer(self._fd, self._drain)
            except OSError as exc:
                self._on_error(exc)
                return
        self._queue.append((bytes(data), addr))  # the caller may reuse its buffer
        self._queued += len(data)

    def _drain(self) -> None:
        queue = self._queue
        while queue:
            data, addr = queue[0]
            try:
                self.sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._on_error(exc)
            queue.popleft()
            self._queued -= len(data)
        self._loop.remove_writer(self._fd)

    # ------------------------------------------------------------------ close

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._queue.clear()
        self._queued = 0
        self.sock.close()
        if self._ring is not None:
            self._ring.release()
            self._ring = None
