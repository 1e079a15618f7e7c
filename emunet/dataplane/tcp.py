"""TCP endpoints (RFC 9293) for pod network namespaces, sans-I/O.

Theory of operation
-------------------
A :class:`TCPConnection` is one TCB (RFC 9293 section 3.3.2). It never reads a
clock and never touches a socket: every input carries ``now`` (seconds), and
every output is pulled by the caller.

* Input: ``receive(hdr, payload, now)`` with a segment whose IPv4 header and
  TCP checksum the network namespace has already checked and whose 4-tuple
  selected this connection; ``handle_timer(now)`` once ``now >= get_timer()``.
* Output: ``segments_to_send()`` drains complete TCP segments (header, options,
  payload, checksum over the pseudo-header local_ip -> remote_ip); the caller
  wraps each in IPv4 from ``local_ip`` to ``remote_ip``. After *any* call the
  caller drains the segments and re-reads ``get_timer()``. ``on_output`` is
  called when an application call (``connect``/``send``/``recv``/``close``/
  ``abort``) may have queued segments or moved a timer (a send into a closed
  window arms the persist timer and sends nothing), so whoever owns the
  connection table can flush and re-read the timer.
* Application: ``send(data, now) -> int`` (accepted bytes; fewer than offered
  when the send buffer is full, which is the flow-control back-pressure),
  ``recv(max_bytes) -> bytes``, ``at_eof``, ``close(now)`` (FIN after queued
  data, i.e. ``shutdown(SHUT_WR)``; reading stays possible), ``abort(now)``
  (RST). ``on_event`` is called whenever readability, writability, the state
  or ``error`` changed. ``error`` holds a Linux errno name (ECONNREFUSED,
  ECONNRESET, ETIMEDOUT) once the connection failed.
* A :class:`TCPListener` turns SYNs into SYN-RECEIVED connections
  (``receive_syn``) that the namespace adds to its table; once they are
  established ``accept()`` hands them out. A segment that matches neither a
  connection nor a listener gets :func:`rst_for` (RFC 9293 section 3.10.7.1).
* Table lifecycle: a connection whose ``state`` is CLOSED (after a reset, a
  timeout, LAST-ACK or the 60 s TIME-WAIT) has nothing more to say once its
  segments are drained; the namespace drops it from its table then. Receive
  buffers survive CLOSED, so an application can still read what arrived.

Sending: the send buffer holds the bytes from SND.UNA on; SND.NXT walks through
it in MSS-sized segments limited by min(peer window, cwnd). The retransmission
timer follows RFC 6298 (initial RTO 1 s, Karn's rule, Linux's 200 ms floor and
120 s ceiling, exponential backoff, ETIMEDOUT after ``max_retries``). A timeout
goes back to SND.UNA with cwnd = 1 MSS (go-back-N in slow start); three
duplicate ACKs (with limited transmit, RFC 3042, for small windows) trigger
fast retransmit and NewReno recovery (RFC 5681, RFC 6582), where each partial
ACK retransmits the next hole at once. A zero window
arms the persist timer, whose probes (an old sequence number, as Linux sends)
make the peer repeat its window, so a lost window update cannot deadlock.

Receiving: bytes at RCV.NXT go to the receive buffer; segments beyond it are
kept in an out-of-order map, answered with an immediate duplicate ACK, and
merged when the hole is filled. The advertised window is the free buffer space
(window scaling, RFC 7323, when both SYNs carry the option); reads reopen the
window and send an update only once it at least doubled (receiver SWS
avoidance, RFC 9293 section 3.8.6.2.2, with Linux's threshold). ACKs are
delayed up to 40 ms or every second segment (RFC 5681 section 4.2; Linux's
delack floor); the in-order segments of one arrival batch (``receive(...,
batched=True)`` until ``end_batch``) are acknowledged once, as Linux
acknowledges the one segment GRO merges them into.

Sequence numbers are 32-bit and compared modulo 2**32 (RFC 9293 section 3.4).
Not implemented: SACK, timestamps, urgent data, keepalive, Nagle (sending
behaves like TCP_NODELAY), the FIN-WAIT-2 orphan timeout, ECN.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Address
from typing import Final

from emunet.errors import ConfigError, SocketError
from emunet.packets.tcp import (
    ACK,
    FIN,
    MSS,
    NOP,
    PSH,
    RST,
    SYN,
    Option,
    TCPHeader,
    WindowScale,
    build_fast,
    build_options,
    build_segment,
)

MASK: Final = 0xFFFFFFFF
HALF: Final = 0x80000000

RTO_INITIAL: Final = 1.0  # RFC 6298 section 2.1
RTO_MIN: Final = 0.2  # Linux TCP_RTO_MIN
RTO_MAX: Final = 120.0  # Linux TCP_RTO_MAX
DELACK: Final = 0.04  # Linux TCP_DELACK_MIN
TIME_WAIT_LEN: Final = 60.0  # Linux TCP_TIMEWAIT_LEN, i.e. 2*MSL
DEFAULT_BUF: Final = 256 * 1024
DEFAULT_MSS: Final = 536  # RFC 9293 section 3.7.1: no MSS option received
MAX_RETRIES: Final = 15  # Linux net.ipv4.tcp_retries2
SYN_RETRIES: Final = 6  # Linux net.ipv4.tcp_syn_retries
DUPACK_THRESHOLD: Final = 3  # RFC 5681 section 3.2
MAX_WSCALE: Final = 14  # RFC 7323 section 2.3
_CWND_MAX: Final = 1 << 30


def seq_lt(a: int, b: int) -> bool:
    """``a < b`` in sequence space (RFC 9293 section 3.4)."""
    return a != b and ((b - a) & MASK) < HALF


def seq_le(a: int, b: int) -> bool:
    """``a <= b`` in sequence space."""
    return ((b - a) & MASK) < HALF


class TCPState(Enum):
    """RFC 9293 section 3.3.2 connection states."""

    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"


_CLOSED: Final = TCPState.CLOSED
_LISTEN: Final = TCPState.LISTEN
_SYN_SENT: Final = TCPState.SYN_SENT
_SYN_RECEIVED: Final = TCPState.SYN_RECEIVED
_ESTABLISHED: Final = TCPState.ESTABLISHED
_FIN_WAIT_1: Final = TCPState.FIN_WAIT_1
_FIN_WAIT_2: Final = TCPState.FIN_WAIT_2
_CLOSE_WAIT: Final = TCPState.CLOSE_WAIT
_CLOSING: Final = TCPState.CLOSING
_LAST_ACK: Final = TCPState.LAST_ACK
_TIME_WAIT: Final = TCPState.TIME_WAIT

# States in which our data or FIN may still be (re)transmitted.
_SENDING: Final = frozenset({_ESTABLISHED, _CLOSE_WAIT, _FIN_WAIT_1, _CLOSING, _LAST_ACK})
# States in which the peer's data and FIN are still accepted.
_RECEIVING: Final = frozenset({_ESTABLISHED, _FIN_WAIT_1, _FIN_WAIT_2})
# States in which abort() sends a RST (RFC 9293 section 3.10.5).
_RST_ON_ABORT: Final = frozenset(
    {_SYN_RECEIVED, _ESTABLISHED, _FIN_WAIT_1, _FIN_WAIT_2, _CLOSE_WAIT, _CLOSING, _LAST_ACK}
)
# Our FIN acknowledged: next state (RFC 9293 section 3.10.7.4, "fifth, check the ACK").
_ON_FIN_ACKED: Final = {_FIN_WAIT_1: _FIN_WAIT_2, _CLOSING: _TIME_WAIT, _LAST_ACK: _CLOSED}
# The peer's FIN consumed: next state ("eighth, check the FIN bit").
_ON_FIN_RECEIVED: Final = {
    _ESTABLISHED: _CLOSE_WAIT,
    _FIN_WAIT_1: _CLOSING,
    _FIN_WAIT_2: _TIME_WAIT,
}
# close() called: next state (RFC 9293 section 3.10.4).
_ON_CLOSE: Final = {_ESTABLISHED: _FIN_WAIT_1, _CLOSE_WAIT: _LAST_ACK}


@dataclass(slots=True)
class TCPCounters:
    """Per-connection counters, roughly Linux's ``tcp_info``/``nstat`` names."""

    segments_in: int = 0
    segments_out: int = 0
    bytes_in: int = 0  # payload delivered in order to the receive buffer
    bytes_out: int = 0  # payload sent for the first time
    bytes_acked: int = 0
    retransmits: int = 0  # segments sent again (timeout, fast retransmit, go-back-N)
    timeouts: int = 0  # RTO expiries
    fast_retransmits: int = 0
    dup_acks_in: int = 0
    ooo_segments_in: int = 0
    zero_window_probes: int = 0


def _window_shift(buf_size: int) -> int:
    shift = 0
    while (buf_size >> shift) > 0xFFFF and shift < MAX_WSCALE:
        shift += 1
    return shift


class TCPConnection:
    """One TCP connection (TCB). See the module docstring for the protocol."""

    __slots__ = (
        "_backoff",
        "_batching",
        "_changed",
        "_close_pending",
        "_cwnd_acc",
        "_delack_at",
        "_dupacks",
        "_fin_queued",
        "_in_recovery",
        "_limited",
        "_listener",
        "_lp",
        "_max_snd_wnd",
        "_ooo",
        "_ooo_fin",
        "_out",
        "_persist_at",
        "_persist_backoff",
        "_probes",
        "_rcv_adv",
        "_rcv_buf",
        "_rcv_wscale",
        "_recover",
        "_retries",
        "_rp",
        "_rto",
        "_rtt_seq",
        "_rtt_time",
        "_rttvar",
        "_rtx_at",
        "_snd_buf",
        "_snd_mss",
        "_snd_wscale",
        "_srtt",
        "_tw_at",
        "_unacked_segs",
        "_used",
        "_ws_on",
        "ack_now",
        "cwnd",
        "error",
        "fin_received",
        "irs",
        "iss",
        "local_ip",
        "local_port",
        "max_retries",
        "mss",
        "now",
        "on_event",
        "on_output",
        "rcv_buf_size",
        "rcv_nxt",
        "remote_ip",
        "remote_port",
        "snd_buf_size",
        "snd_max",
        "snd_nxt",
        "snd_una",
        "snd_wl1",
        "snd_wl2",
        "snd_wnd",
        "soft_error",
        "ssthresh",
        "state",
        "stats",
        "syn_retries",
    )

    def __init__(
        self,
        local_ip: IPv4Address,
        local_port: int,
        remote_ip: IPv4Address,
        remote_port: int,
        *,
        mss: int,
        iss: int,
        now: float,
        rcv_buf_size: int = DEFAULT_BUF,
        snd_buf_size: int = DEFAULT_BUF,
        max_retries: int = MAX_RETRIES,
        syn_retries: int = SYN_RETRIES,
    ) -> None:
        if not (0 < local_port <= 0xFFFF and 0 < remote_port <= 0xFFFF):
            raise ConfigError(f"tcp ports must be 1..65535, got {local_port} and {remote_port}")
        if not 64 <= mss <= 0xFFFF:
            raise ConfigError(f"tcp mss {mss} out of range (route MTU - 40, at least 64)")
        if rcv_buf_size < mss or snd_buf_size < 1:
            raise ConfigError(
                f"tcp buffers too small: rcv {rcv_buf_size} (>= mss), snd {snd_buf_size}"
            )
        self.local_ip = local_ip
        self.local_port = local_port
        self.remote_ip = remote_ip
        self.remote_port = remote_port
        self.mss = mss
        self.max_retries = max_retries
        self.syn_retries = syn_retries
        self.state = _CLOSED
        self.error: str | None = None
        self.on_event: Callable[[], None] | None = None
        self.on_output: Callable[[], None] | None = None
        self.soft_error: str | None = None
        self.stats = TCPCounters()
        self.now = now
        self._lp = local_ip.packed
        self._rp = remote_ip.packed
        self._out: list[bytes] = []
        self._changed = False
        self._used = False
        self._listener: TCPListener | None = None
        # Send sequence space (RFC 9293 section 3.3.1). snd_max is the highest
        # SND.NXT ever sent: after a timeout SND.NXT goes back to SND.UNA.
        self.iss = iss & MASK
        self.snd_una = self.snd_nxt = self.snd_max = self.iss
        self.snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self._max_snd_wnd = 0
        self.snd_buf_size = snd_buf_size
        self._snd_buf = bytearray()  # bytes from SND.UNA on (acked bytes are dropped)
        self._fin_queued = False
        self._close_pending = False  # close() in SYN-RECEIVED: FIN once established
        self._snd_mss = min(mss, DEFAULT_MSS)
        self._snd_wscale = 0
        self._ws_on = False  # window scaling negotiated (RFC 7323 section 2.2)
        # Receive sequence space.
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_buf_size = rcv_buf_size
        self._rcv_buf = bytearray()
        self._rcv_wscale = _window_shift(rcv_buf_size)
        self._rcv_adv = 0  # right edge of the last advertised window
        self._ooo: dict[int, bytes] = {}
        self._ooo_fin: int | None = None
        self.fin_received = False
        # ACK generation.
        self.ack_now = False
        self._delack_at: float | None = None
        self._unacked_segs = 0
        self._batching = False  # see receive(batched=True)
        # Retransmission (RFC 6298) and persist timers.
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._rto = RTO_INITIAL
        self._backoff = 0
        self._retries = 0
        self._rtx_at: float | None = None
        self._rtt_seq: int | None = None
        self._rtt_time = 0.0
        self._persist_at: float | None = None
        self._persist_backoff = 0
        self._probes = 0
        self._tw_at: float | None = None
        # Congestion control (RFC 5681, NewReno RFC 6582).
        self.cwnd = 0
        self.ssthresh = _CWND_MAX
        self._cwnd_acc = 0
        self._dupacks = 0
        self._limited = 0  # limited transmit allowance (RFC 3042)
        self._in_recovery = False
        self._recover = self.iss

    def __repr__(self) -> str:
        return (
            f"<TCPConnection {self.local_ip}:{self.local_port} -> "
            f"{self.remote_ip}:{self.remote_port} {self.state.value}>"
        )

    # ------------------------------------------------------------------ app API

    @property
    def key(self) -> tuple[IPv4Address, int, IPv4Address, int]:
        """``(local_ip, local_port, remote_ip, remote_port)``: the table key."""
        return (self.local_ip, self.local_port, self.remote_ip, self.remote_port)

    @property
    def readable(self) -> int:
        """Bytes ready for :meth:`recv`."""
        return len(self._rcv_buf)

    @property
    def send_space(self) -> int:
        """Bytes :meth:`send` would accept now (0 once closed for sending)."""
        if self._fin_queued or self.state is _CLOSED:
            return 0
        return self.snd_buf_size - len(self._snd_buf)

    @property
    def unsent_or_unacked(self) -> int:
        """Bytes in the send buffer: not yet sent or not yet acknowledged."""
        return len(self._snd_buf)

    @property
    def at_eof(self) -> bool:
        """No more bytes will arrive and the receive buffer is empty."""
        return not self._rcv_buf and (self.fin_received or self.state is _CLOSED)

    @property
    def srtt(self) -> float | None:
        return self._srtt

    @property
    def rto(self) -> float:
        return self._rto

    def connect(self, now: float) -> None:
        """Active open: send a SYN (RFC 9293 section 3.10.1)."""
        if self._used or self.state is not _CLOSED:
            raise SocketError("EISCONN", f"{self!r} was already opened")
        self._used = True
        self.now = now
        self._set_state(_SYN_SENT)
        self.snd_nxt = self.snd_max = (self.iss + 1) & MASK
        self._send_syn(now)
        self._app_done()

    def send(self, data: bytes | bytearray | memoryview, now: float) -> int:
        """Queue ``data``; returns how many bytes fit in the send buffer."""
        state = self.state
        if self.error is not None:
            raise SocketError(self.error, f"send on a failed connection {self!r}")
        if self._fin_queued or self._close_pending:
            raise SocketError("EPIPE", f"send after close on {self!r}")
        if state is _CLOSED or state is _LISTEN:
            errno = "EPIPE" if self._used else "ENOTCONN"
            raise SocketError(errno, f"send on {self!r}")
        if state not in _SENDING and state is not _SYN_SENT and state is not _SYN_RECEIVED:
            raise SocketError("EPIPE", f"send after close on {self!r}")
        self.now = now
        n = min(self.snd_buf_size - len(self._snd_buf), len(data))
        if n <= 0:
            return 0
        self._snd_buf += memoryview(data)[:n]
        if state in _SENDING:
            self._output(now)
            self._app_done()
        return n

    def recv(self, max_bytes: int = -1) -> bytes:
        """Take up to ``max_bytes`` (all if negative) received bytes.

        Returns ``b""`` when nothing is buffered (check :attr:`at_eof`); raises
        :class:`SocketError` with :attr:`error` when the connection failed and
        nothing is left to read.
        """
        buf = self._rcv_buf
        if not buf:
            if self.error is not None:
                raise SocketError(self.error, f"recv on a failed connection {self!r}")
            return b""
        n = len(buf) if max_bytes < 0 else min(max_bytes, len(buf))
        data = bytes(buf[:n])
        del buf[:n]
        if self.state in _RECEIVING and not self.fin_received:
            # Receiver SWS avoidance, as Linux's tcp_cleanup_rbuf(): announce the
            # window only when what the peer may still send is at most half the
            # buffer and the new window is at least twice that (and >= 1 MSS).
            adv = (self._rcv_adv - self.rcv_nxt) & MASK
            if adv >= HALF:
                adv = 0
            wnd = (self.rcv_buf_size - len(buf)) >> self._rcv_wscale << self._rcv_wscale
            if 2 * adv <= self.rcv_buf_size and wnd >= 2 * adv and wnd >= self.mss:
                self.ack_now = True
                self._output(self.now)
                self._app_done()
        return data

    def close(self, now: float) -> None:
        """Send a FIN after the queued data (RFC 9293 section 3.10.4)."""
        self.now = now
        state = self.state
        if state is _SYN_SENT:
            self._die(None)
        elif state is _SYN_RECEIVED:
            self._close_pending = True
        elif state in _ON_CLOSE and not self._fin_queued:
            self._fin_queued = True
            self._set_state(_ON_CLOSE[state])
            self._output(now)
        self._notify()
        self._app_done()

    def icmp_error(self, errno_name: str, now: float, mtu: int = 0) -> None:
        """An ICMP error quoting one of our segments (Linux ``tcp_v4_err``).

        While connecting it is fatal (a REJECTed Service: ECONNREFUSED at once);
        once synchronized it is only remembered as a soft error, except that
        fragmentation-needed lowers the MSS to the path MTU (RFC 1191).
        """
        self.now = now
        if errno_name == "EMSGSIZE" and mtu:
            if mtu - 40 < self._snd_mss:
                self._snd_mss = max(mtu - 40, 88)
            return
        if self.state in (TCPState.SYN_SENT, TCPState.SYN_RECEIVED):
            self._die(errno_name)
            self._notify()
        else:
            self.soft_error = errno_name

    def abort(self, now: float) -> None:
        """Reset the connection (RFC 9293 section 3.10.5); discards both buffers."""
        self.now = now
        if self.state in _RST_ON_ABORT:
            self._emit(self.snd_max, RST | ACK)
        self._rcv_buf.clear()
        self._die(None)
        self._notify()
        self._app_done()

    # ------------------------------------------------------------ I/O driving

    def segments_to_send(self) -> list[bytes]:
        """Drain the TCP segments (checksummed for local_ip -> remote_ip)."""
        out = self._out
        if not out:
            return []
        self._out = []
        return out

    def get_timer(self) -> float | None:
        """The earliest deadline, or None; call :meth:`handle_timer` then."""
        t: float | None = None
        for at in (self._rtx_at, self._persist_at, self._delack_at, self._tw_at):
            if at is not None and (t is None or at < t):
                t = at
        return t

    def handle_timer(self, now: float) -> None:
        self.now = now
        if self._tw_at is not None and now >= self._tw_at:
            self._tw_at = None
            self._die(None)
        if self._rtx_at is not None and now >= self._rtx_at:
            self._rtx_at = None
            self._on_rto(now)
        if self._persist_at is not None and now >= self._persist_at:
            self._persist_at = None
            self._on_persist(now)
        if self._delack_at is not None and now >= self._delack_at:
            self._delack_at = None
            self.ack_now = True
        self._output(now)
        self._notify()

    def receive(
        self, hdr: TCPHeader, payload: memoryview | bytes, now: float, *, batched: bool = False
    ) -> None:
        """Process one arriving segment addressed to this connection.

        ``batched``: the segment is one of a batch that arrived together, and the
        caller calls :meth:`end_batch` once the batch is through. The ACK owed
        for every second in-order segment then waits for the end of the batch,
        so a batch is acknowledged once, as Linux acknowledges the one large
        segment GRO makes of what a NAPI poll received. ACKs owed for any other
        reason (out of order data, a window overrun, a FIN) still go at once.
        """
        self.now = now
        self._batching = batched
        self.stats.segments_in += 1
        state = self.state
        if state is _SYN_SENT:
            self._receive_syn_sent(hdr, payload, now)
        elif state is _CLOSED or state is _LISTEN:
            rst = rst_for(hdr, len(payload), self.remote_ip, self.local_ip)
            if rst is not None:
                self._out.append(rst)
                self.stats.segments_out += 1
            return
        else:
            self._receive_synchronized(hdr, payload, now)
        self._output(now)
        self._notify()

    @property
    def ack_deferred(self) -> bool:
        """A batched receive owes an ACK that waits for :meth:`end_batch`."""
        return self._batching and self._unacked_segs >= 2

    def end_batch(self, now: float) -> None:
        """The batch of :meth:`receive` calls ended: send the ACK it owes."""
        self._batching = False
        if self._unacked_segs >= 2 and self.state is not _CLOSED:
            self.now = now
            self.ack_now = True
            self._output(now)

    # ------------------------------------------------------------ internals

    def _notify(self) -> None:
        if self._changed:
            self._changed = False
            if self.on_event is not None:
                self.on_event()

    def _app_done(self) -> None:
        if self.on_output is not None:
            self.on_output()

    def _set_state(self, state: TCPState) -> None:
        old = self.state
        self.state = state
        self._changed = True
        listener = self._listener
        if listener is not None and old is _SYN_RECEIVED:
            self._listener = None
            if state is _CLOSED:
                listener._child_gone(self)
            else:
                listener._child_established(self)

    def _die(self, error: str | None) -> None:
        if error is not None:
            self.error = error
        self._rtx_at = self._persist_at = self._delack_at = self._tw_at = None
        self._snd_buf.clear()
        self._ooo.clear()
        self.ack_now = False
        if self.state is not _CLOSED:
            self._set_state(_CLOSED)
        self._changed = True

    def _current_rto(self) -> float:
        rto = self._rto * (1 << self._backoff) if self._backoff < 20 else RTO_MAX
        return rto if rto < RTO_MAX else RTO_MAX

    def _rtt_sample(self, r: float) -> None:
        # RFC 6298 section 2.2-2.3 (alpha = 1/8, beta = 1/4, K = 4).
        if r < 0.0:
            # a segment carries its packet's time, an app's call its caller's clock,
            # which may lag: an ACK sent from a call can seem to precede its data
            r = 0.0
        srtt = self._srtt
        if srtt is None:
            srtt = r
            self._rttvar = r / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(srtt - r)
            srtt = 0.875 * srtt + 0.125 * r
        self._srtt = srtt
        rto = srtt + 4 * self._rttvar
        self._rto = RTO_MIN if rto < RTO_MIN else (RTO_MAX if rto > RTO_MAX else rto)

    def _syn_options(self) -> tuple[Option, ...]:
        # An active opener offers window scaling; a SYN,ACK echoes the offer.
        if self.state is _SYN_SENT or self._ws_on:
            return (MSS(self.mss), NOP(), WindowScale(self._rcv_wscale))
        return (MSS(self.mss),)

    def _send_syn(self, now: float) -> None:
        flags = SYN if self.state is _SYN_SENT else SYN | ACK
        self._emit(self.iss, flags, b"", self._syn_options())
        if self._retries == 0:
            self._rtt_seq = (self.iss + 1) & MASK
            self._rtt_time = now
        else:
            self.stats.retransmits += 1
        self._rtx_at = now + self._current_rto()

    def _peer_syn_options(self, hdr: TCPHeader) -> None:
        peer_mss = hdr.mss
        self._snd_mss = min(self.mss, peer_mss if peer_mss else DEFAULT_MSS)
        ws = hdr.window_scale
        self._ws_on = ws is not None
        if ws is not None:
            self._snd_wscale = min(ws, MAX_WSCALE)
        else:
            self._snd_wscale = 0
            self._rcv_wscale = 0
        # Initial window: RFC 6928 IW10 as Linux.
        self.cwnd = 10 * self._snd_mss

    def _open_passive(self, hdr: TCPHeader, now: float) -> None:
        """From LISTEN on a SYN (RFC 9293 section 3.10.7.2)."""
        self._used = True
        self.irs = hdr.seq
        self.rcv_nxt = (hdr.seq + 1) & MASK
        self._peer_syn_options(hdr)
        self.snd_wnd = self._max_snd_wnd = hdr.window  # never scaled in a SYN
        self.snd_wl1 = hdr.seq
        self.snd_wl2 = self.iss
        self.snd_nxt = self.snd_max = (self.iss + 1) & MASK
        self.state = _SYN_RECEIVED
        self._send_syn(now)

    def _receive_syn_sent(self, hdr: TCPHeader, payload: memoryview | bytes, now: float) -> None:
        # RFC 9293 section 3.10.7.3.
        flags = hdr.flags
        ack = hdr.ack
        if flags & ACK and not (seq_lt(self.iss, ack) and seq_le(ack, self.snd_max)):
            if not flags & RST:
                self._emit(ack, RST)
            return
        if flags & RST:
            if flags & ACK:
                self._die("ECONNREFUSED")
            return
        if not flags & SYN:
            return
        self.irs = hdr.seq
        self.rcv_nxt = (hdr.seq + 1) & MASK
        self._peer_syn_options(hdr)
        self.snd_wnd = self._max_snd_wnd = hdr.window
        self.snd_wl1 = hdr.seq
        self.snd_wl2 = ack
        if not flags & ACK:
            # Simultaneous open: answer with SYN,ACK (RFC 9293 figure 8).
            self._set_state(_SYN_RECEIVED)
            self._emit(self.iss, SYN | ACK, b"", self._syn_options())
            return
        self.snd_una = ack
        if self._rtt_seq is not None:
            self._rtt_sample(now - self._rtt_time)
            self._rtt_seq = None
        self._rtx_at = None
        self._retries = self._backoff = 0
        self._set_state(_ESTABLISHED)
        self.ack_now = True
        if payload or flags & FIN:
            self._receive_data(
                (hdr.seq + 1) & MASK, payload, bool(flags & FIN), now, self._rcv_space()
            )

    def _rcv_space(self) -> int:
        return self.rcv_buf_size - len(self._rcv_buf)

    def _receive_synchronized(
        self, hdr: TCPHeader, payload: memoryview | bytes, now: float
    ) -> None:
        # RFC 9293 section 3.10.7.4, in its order.
        state = self.state
        flags = hdr.flags
        seq = hdr.seq
        plen = len(payload)
        if state is _SYN_RECEIVED and flags & SYN and not flags & (ACK | RST) and seq == self.irs:
            self._send_syn(now)  # our SYN,ACK was lost; the peer repeats its SYN
            return
        # First: is the segment acceptable? (Linux's tcp_sequence: starts no
        # later than the right edge and ends after RCV.NXT.)
        seglen = plen + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        wnd = self._rcv_space()
        off = (seq - self.rcv_nxt) & MASK
        if off >= HALF:
            off -= 1 << 32
        ok = (0 <= off <= wnd) if seglen == 0 else (off + seglen > 0 and off <= wnd)
        if not ok:
            if not flags & RST:
                self.ack_now = True
                if state is _TIME_WAIT and flags & FIN:
                    self._tw_at = now + TIME_WAIT_LEN
            return
        # Second: RST (RFC 5961 section 3: exact match or challenge ACK).
        if flags & RST:
            if off == 0:
                if state is _SYN_RECEIVED and self._listener is not None:
                    self._die(None)
                elif state is _SYN_RECEIVED:
                    self._die("ECONNREFUSED")
                elif state in _RST_ON_ABORT:
                    self._die("ECONNRESET")
                else:
                    self._die(None)
            else:
                self.ack_now = True
            return
        # Fourth: a SYN in a synchronized state gets a challenge ACK (RFC 5961 4).
        if flags & SYN:
            self.ack_now = True
            return
        # Fifth: the ACK field.
        if not flags & ACK:
            return
        ack = hdr.ack
        if state is _SYN_RECEIVED:
            if not (seq_lt(self.snd_una, ack) and seq_le(ack, self.snd_max)):
                self._emit(ack, RST)
                return
            self.snd_una = ack
            if self._rtt_seq is not None:
                self._rtt_sample(now - self._rtt_time)
                self._rtt_seq = None
            self._rtx_at = None
            self._retries = self._backoff = 0
            self.snd_wnd = hdr.window << self._snd_wscale
            self._max_snd_wnd = max(self._max_snd_wnd, self.snd_wnd)
            self.snd_wl1 = seq
            self.snd_wl2 = ack
            self._set_state(_ESTABLISHED)
            if self._close_pending:
                self._close_pending = False
                self._fin_queued = True
                self._set_state(_FIN_WAIT_1)
        elif not self._receive_ack(hdr, seq, ack, plen, flags, now):
            return
        # Seventh and eighth: data and FIN.
        if (plen or flags & FIN) and self.state in _RECEIVING:
            self._receive_data(seq, payload, bool(flags & FIN), now, wnd)

    def _receive_ack(
        self, hdr: TCPHeader, seq: int, ack: int, plen: int, flags: int, now: float
    ) -> bool:
        """Process the ACK field; False when the segment must be dropped."""
        una = self.snd_una
        acked = (ack - una) & MASK
        if acked >= HALF:
            return True  # an old ACK: ignore it, keep the data
        if acked > ((self.snd_max - una) & MASK):
            self.ack_now = True  # acknowledges something not yet sent
            return False
        self._probes = 0
        wnd = hdr.window << self._snd_wscale
        if wnd == 0:
            self._retries = 0  # the peer is alive, only its buffer is full
        if acked:
            self._on_new_ack(ack, acked, now)
        elif plen == 0 and not flags & (SYN | FIN) and wnd == self.snd_wnd and self.snd_max != una:
            self._on_dupack(now)
        # Window update (RFC 9293 section 3.10.7.4, SND.WL1/SND.WL2 rule).
        if seq_lt(self.snd_wl1, seq) or (self.snd_wl1 == seq and seq_le(self.snd_wl2, ack)):
            self.snd_wnd = wnd
            self.snd_wl1 = seq
            self.snd_wl2 = ack
            if wnd > self._max_snd_wnd:
                self._max_snd_wnd = wnd
            if wnd > 0 and self._persist_at is not None:
                self._persist_at = None
                self._persist_backoff = 0
        return True

    def _on_new_ack(self, ack: int, acked: int, now: float) -> None:
        buf = self._snd_buf
        n = acked if acked <= len(buf) else len(buf)
        fin_acked = acked > n  # the only other sequence number left is our FIN
        if n:
            del buf[:n]
            self.stats.bytes_acked += n
            self._changed = True
        self.snd_una = ack
        if seq_lt(self.snd_nxt, ack):
            self.snd_nxt = ack
        if self._rtt_seq is not None and seq_le(self._rtt_seq, ack):
            self._rtt_sample(now - self._rtt_time)
            self._rtt_seq = None
        self._retries = 0
        self._backoff = 0
        mss = self._snd_mss
        if self._in_recovery:
            if seq_le(self._recover, ack):
                # Full ACK: leave fast recovery (RFC 6582 section 3.2 step 3).
                self._in_recovery = False
                flight = (self.snd_max - ack) & MASK
                self.cwnd = min(self.ssthresh, max(flight, mss) + mss)
            else:
                # Partial ACK: the next hole is lost too; resend it at once.
                self._retransmit_head(now)
                self.cwnd = max(self.cwnd - acked + mss, mss)
        elif self.cwnd < self.ssthresh:
            self.cwnd += acked if acked < mss else mss  # slow start
        else:
            self._cwnd_acc += acked if acked < mss else mss  # congestion avoidance
            if self._cwnd_acc >= self.cwnd:
                self._cwnd_acc -= self.cwnd
                self.cwnd += mss
        if self.cwnd > _CWND_MAX:
            self.cwnd = _CWND_MAX
        self._dupacks = 0
        self._limited = 0
        self._rtx_at = None if ack == self.snd_max else now + self._current_rto()
        if fin_acked:
            nxt = _ON_FIN_ACKED.get(self.state)
            if nxt is _TIME_WAIT:
                self._set_state(_TIME_WAIT)
                self._rtx_at = self._persist_at = None
                self._tw_at = now + TIME_WAIT_LEN
            elif nxt is _CLOSED:
                self._die(None)
            elif nxt is not None:
                self._set_state(nxt)

    def _on_dupack(self, now: float) -> None:
        self.stats.dup_acks_in += 1
        mss = self._snd_mss
        if self._in_recovery:
            self.cwnd += mss  # window inflation (RFC 5681 section 3.2 step 4)
            return
        self._dupacks += 1
        if self._dupacks < DUPACK_THRESHOLD:
            # Limited transmit (RFC 3042): each of the first two duplicate ACKs
            # lets one new segment out, so a small window still gets 3 dupacks.
            self._limited = self._dupacks * mss
        elif self._dupacks == DUPACK_THRESHOLD and seq_lt(self._recover, self.snd_una):
            self._limited = 0
            flight = (self.snd_max - self.snd_una) & MASK
            self.ssthresh = max(flight // 2, 2 * mss)
            self._recover = self.snd_max
            self._in_recovery = True
            self.stats.fast_retransmits += 1
            self._retransmit_head(now)
            self.cwnd = self.ssthresh + DUPACK_THRESHOLD * mss

    def _retransmit_head(self, now: float) -> None:
        """Resend the first unacknowledged segment (data, or the FIN)."""
        buf = self._snd_buf
        n = min(self._snd_mss, len(buf))
        una = self.snd_una
        if n:
            fin = self._fin_queued and n == len(buf)
            flags = ACK | PSH | FIN if fin else ACK
            self._emit(una, flags, buf[:n])
        elif self._fin_queued:
            self._emit(una, FIN | ACK)
        else:
            return
        self.stats.retransmits += 1
        self._rtt_seq = None  # Karn's algorithm
        self._rtx_at = now + self._current_rto()

    def _on_rto(self, now: float) -> None:
        state = self.state
        if state is _CLOSED or state is _TIME_WAIT:
            return
        self._retries += 1
        self.stats.timeouts += 1
        handshake = state is _SYN_SENT or state is _SYN_RECEIVED
        if self._retries > (self.syn_retries if handshake else self.max_retries):
            self._die("ETIMEDOUT")
            return
        self._backoff += 1
        self._rtt_seq = None
        if handshake:
            self._send_syn(now)
            return
        if self.snd_una == self.snd_max:
            return
        mss = self._snd_mss
        if self._retries == 1:
            flight = (self.snd_max - self.snd_una) & MASK
            self.ssthresh = max(flight // 2, 2 * mss)  # RFC 5681 equation (4)
        self.cwnd = mss
        self._cwnd_acc = 0
        self._in_recovery = False
        self._dupacks = self._limited = 0
        self._recover = self.snd_max
        self.snd_nxt = self.snd_una  # go back N; _output resends from here
        if self.snd_wnd == 0:
            # The peer shrank its window to zero under outstanding data: the
            # retransmission doubles as a zero-window probe (as Linux does).
            self._retransmit_head(now)

    def _on_persist(self, now: float) -> None:
        if self.state not in _SENDING:
            return
        self._probes += 1
        if self._probes > self.max_retries:
            self._die("ETIMEDOUT")
            return
        # A zero-window probe as Linux sends it: an already-acknowledged
        # sequence number, which the peer must answer with an ACK and its window.
        self._emit((self.snd_una - 1) & MASK, ACK)
        self.stats.zero_window_probes += 1
        self._persist_backoff += 1
        rto = self._rto * (1 << min(self._persist_backoff, 20))
        self._persist_at = now + (rto if rto < RTO_MAX else RTO_MAX)

    def _receive_data(
        self, seq: int, payload: memoryview | bytes, fin: bool, now: float, space: int
    ) -> None:
        rcv_nxt = self.rcv_nxt
        off = (seq - rcv_nxt) & MASK
        if off >= HALF:
            payload = payload[(1 << 32) - off :]  # drop what we already have
            off = 0
        room = space - off
        if len(payload) > room:
            payload = payload[: max(room, 0)]
            fin = False
            self.ack_now = True  # tell the sender about the window it overran
        n = len(payload)
        if off:
            # Out of order: keep it and send a duplicate ACK at once.
            if n:
                old = self._ooo.get(seq)
                if old is None or len(old) < n:
                    self._ooo[seq] = bytes(payload)
                self.stats.ooo_segments_in += 1
            if fin:
                self._ooo_fin = (seq + n) & MASK
            self.ack_now = True
            return
        if n:
            self._rcv_buf += payload
            rcv_nxt = (rcv_nxt + n) & MASK
            self.stats.bytes_in += n
            self._changed = True
            if self._ooo:
                rcv_nxt = self._merge_ooo(rcv_nxt)
                self.ack_now = True  # a hole was (partly) filled: ACK at once
            else:
                self._unacked_segs += 1
                if self._unacked_segs >= 2 and not self._batching:
                    self.ack_now = True
                elif self._delack_at is None:
                    self._delack_at = now + DELACK
            self.rcv_nxt = rcv_nxt
        if fin or (self._ooo_fin is not None and self._ooo_fin == rcv_nxt):
            self._ooo_fin = None
            self._ooo.clear()
            self.rcv_nxt = (rcv_nxt + 1) & MASK
            self.fin_received = True
            self.ack_now = True
            self._changed = True
            nxt = _ON_FIN_RECEIVED.get(self.state)
            if nxt is not None:
                self._set_state(nxt)
                if nxt is _TIME_WAIT:
                    self._rtx_at = self._persist_at = None
                    self._tw_at = now + TIME_WAIT_LEN

    def _merge_ooo(self, rcv_nxt: int) -> int:
        ooo = self._ooo
        progressed = True
        while progressed and ooo:
            progressed = False
            for start in list(ooo):
                behind = (rcv_nxt - start) & MASK
                if behind < HALF:  # start <= rcv_nxt
                    data = ooo.pop(start)
                    if behind < len(data):
                        chunk = data[behind:]
                        self._rcv_buf += chunk
                        self.stats.bytes_in += len(chunk)
                        rcv_nxt = (rcv_nxt + len(chunk)) & MASK
                    progressed = True
        return rcv_nxt

    def _output(self, now: float) -> None:
        """Send what the windows allow, then a pure ACK if one is still owed."""
        if self.state in _SENDING:
            buf = self._snd_buf
            blen = len(buf)
            mss = self._snd_mss
            una = self.snd_una
            remaining = 0
            while True:
                nxt = self.snd_nxt
                off = (nxt - una) & MASK
                remaining = blen - off
                if remaining > 0:
                    cwnd = self.cwnd + self._limited
                    wnd = self.snd_wnd if self.snd_wnd < cwnd else cwnd
                    usable = wnd - off
                    n = mss if mss < remaining else remaining
                    if n > usable:
                        # Sender SWS avoidance (RFC 9293 section 3.8.6.2.1).
                        if usable <= 0 or (off and usable < self._max_snd_wnd // 2):
                            break
                        n = usable
                    fin = self._fin_queued and n == remaining
                    flags = ACK | PSH | FIN if fin else (ACK | PSH if n == remaining else ACK)
                    self._emit(nxt, flags, buf[off : off + n])
                    end = (nxt + n + fin) & MASK
                elif remaining == 0 and self._fin_queued:
                    n = 0
                    self._emit(nxt, FIN | ACK)
                    end = (nxt + 1) & MASK
                else:
                    break
                self.snd_nxt = end
                if seq_lt(nxt, self.snd_max):
                    self.stats.retransmits += 1
                    self._rtt_seq = None
                else:
                    self.stats.bytes_out += n
                    if self._rtt_seq is None:
                        self._rtt_seq = end
                        self._rtt_time = now
                if seq_lt(self.snd_max, end):
                    self.snd_max = end
                if self._rtx_at is None:
                    self._rtx_at = now + self._current_rto()
            if self._rtx_at is None and self._persist_at is None:
                if una != self.snd_max:
                    # Outstanding data always has a timer (RFC 6298 rule 5.1),
                    # even if the peer shrank its window under it.
                    self._rtx_at = now + self._current_rto()
                elif remaining > 0:
                    rto = self._rto * (1 << min(self._persist_backoff, 20))
                    self._persist_at = now + (rto if rto < RTO_MAX else RTO_MAX)
        if self.ack_now and self.state is not _CLOSED and self.state is not _SYN_SENT:
            self._emit(self.snd_max, ACK)

    def _emit(
        self,
        seq: int,
        flags: int,
        payload: bytes | bytearray | memoryview = b"",
        options: tuple[Option, ...] = (),
    ) -> None:
        ack = 0
        window = 0
        if flags & ACK:
            ack = self.rcv_nxt
            space = max(0, self.rcv_buf_size - len(self._rcv_buf))
            if flags & SYN:
                window = space if space < 0xFFFF else 0xFFFF  # never scaled
            else:
                window = space >> self._rcv_wscale
                if window > 0xFFFF:
                    window = 0xFFFF
            self._rcv_adv = (ack + (window << self._rcv_wscale)) & MASK
            self.ack_now = False
            self._delack_at = None
            self._unacked_segs = 0
        elif flags & SYN:
            space = max(0, self.rcv_buf_size - len(self._rcv_buf))
            window = space if space < 0xFFFF else 0xFFFF
        segment = build_segment(
            self.local_port,
            self.remote_port,
            seq & MASK,
            ack,
            flags,
            window,
            payload,
            self._lp,
            self._rp,
            options=build_options(options) if options else b"",
        )
        self._out.append(segment)
        self.stats.segments_out += 1


class TCPListener:
    """A listening socket: turns SYNs into connections, queues them for accept().

    ``receive_syn`` takes only a SYN without ACK/RST/FIN (it returns None for
    anything else; the caller answers an ACK-bearing segment with
    :func:`rst_for`, RFC 9293 section 3.10.7.2). The new connection is in
    SYN-RECEIVED with its SYN,ACK queued; the caller puts it in the connection
    table. It moves to the accept queue once established, and ``on_event``
    fires. SYNs are dropped (None) while the accept queue or the SYN queue
    holds ``backlog`` connections, as Linux drops them when its queues are full.
    """

    __slots__ = (
        "_accept_queue",
        "_pending",
        "backlog",
        "local_ip",
        "local_port",
        "mss",
        "on_event",
        "overflows",
        "rcv_buf_size",
        "snd_buf_size",
    )

    state = TCPState.LISTEN

    def __init__(
        self,
        local_ip: IPv4Address,
        local_port: int,
        backlog: int = 128,
        *,
        mss: int = 1460,
        rcv_buf_size: int = DEFAULT_BUF,
        snd_buf_size: int = DEFAULT_BUF,
    ) -> None:
        if not 0 < local_port <= 0xFFFF:
            raise ConfigError(f"tcp port must be 1..65535, got {local_port}")
        if backlog < 1:
            raise ConfigError(f"listen backlog must be at least 1, got {backlog}")
        self.local_ip = local_ip
        self.local_port = local_port
        self.backlog = backlog
        self.mss = mss
        self.rcv_buf_size = rcv_buf_size
        self.snd_buf_size = snd_buf_size
        self.on_event: Callable[[], None] | None = None
        self.overflows = 0
        self._accept_queue: deque[TCPConnection] = deque()
        self._pending: set[TCPConnection] = set()

    def __repr__(self) -> str:
        return f"<TCPListener {self.local_ip}:{self.local_port}>"

    def receive_syn(
        self,
        src_ip: IPv4Address,
        dst_ip: IPv4Address,
        hdr: TCPHeader,
        now: float,
        iss: int,
        *,
        mss: int | None = None,
    ) -> TCPConnection | None:
        """A SYN from ``src_ip:hdr.sport`` to ``dst_ip:hdr.dport``.

        ``mss`` (route MTU - 40 towards ``src_ip``) defaults to the listener's.
        """
        if hdr.flags & (SYN | ACK | RST | FIN) != SYN:
            return None
        if len(self._accept_queue) >= self.backlog or len(self._pending) >= self.backlog:
            self.overflows += 1
            return None
        conn = TCPConnection(
            dst_ip,
            hdr.dport,
            src_ip,
            hdr.sport,
            mss=mss if mss is not None else self.mss,
            iss=iss,
            now=now,
            rcv_buf_size=self.rcv_buf_size,
            snd_buf_size=self.snd_buf_size,
        )
        conn._listener = self
        conn._open_passive(hdr, now)
        self._pending.add(conn)
        return conn

    def accept(self) -> TCPConnection | None:
        """The oldest established connection not yet accepted, or None."""
        return self._accept_queue.popleft() if self._accept_queue else None

    @property
    def pending(self) -> int:
        """Connections in SYN-RECEIVED (Linux's SYN queue)."""
        return len(self._pending)

    @property
    def queued(self) -> int:
        """Established connections waiting for accept()."""
        return len(self._accept_queue)

    def close(self, now: float) -> list[TCPConnection]:
        """Stop listening: reset the connections never accepted and return them
        (their RSTs are in their ``segments_to_send()``)."""
        dropped = [*self._pending, *self._accept_queue]
        self._pending.clear()
        self._accept_queue.clear()
        for conn in dropped:
            conn._listener = None
            conn.abort(now)
        return dropped

    def _child_established(self, conn: TCPConnection) -> None:
        self._pending.discard(conn)
        self._accept_queue.append(conn)
        if self.on_event is not None:
            self.on_event()

    def _child_gone(self, conn: TCPConnection) -> None:
        self._pending.discard(conn)


def rst_for(
    hdr: TCPHeader, payload_len: int, src_ip: IPv4Address, dst_ip: IPv4Address
) -> bytes | None:
    """The RST answering a segment for which no connection exists.

    ``src_ip``/``dst_ip`` are the *arriving* segment's addresses; the returned
    segment goes from ``dst_ip`` to ``src_ip`` and is checksummed for that.
    RFC 9293 section 3.10.7.1: never answer a RST; if the segment has an ACK
    the RST takes ``seq = SEG.ACK``, otherwise ``seq = 0`` and it acknowledges
    ``SEG.SEQ + SEG.LEN`` (SYN and FIN count).
    """
    flags = hdr.flags
    if flags & RST:
        return None
    if flags & ACK:
        out = TCPHeader(hdr.dport, hdr.sport, hdr.ack, 0, RST, 0)
    else:
        seglen = payload_len + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        out = TCPHeader(hdr.dport, hdr.sport, 0, (hdr.seq + seglen) & MASK, RST | ACK, 0)
    return build_fast(out, b"", dst_ip.packed, src_ip.packed)
