"""Connection tracking, after Linux nf_conntrack.

Theory of operation
-------------------
A connection is one :class:`ConntrackEntry` holding two tuples
``(proto, src, dst, sport, dport)`` (addresses as ints): ``tuples[ORIGINAL]``
as the first packet was seen, and ``tuples[REPLY]``, what a reply looks like
once NAT has been applied (DNAT changes the reply's source, SNAT its
destination). Both tuples index the same entry in one dict, so any packet finds
its connection and its direction with one hash lookup. For ICMP queries the
identifier stands for both ports, the query's type and code keyed above it on
the responder's side (:func:`~emunet.dataplane.nat.icmp_ports`, as Linux keys
them); the entry remembers the type and code.

Life cycle, as in Linux: the first packet of a connection allocates an
*unconfirmed* entry (the table-size check happens here); the NAT hooks bind
addresses on it; it is *confirmed* (inserted under both tuples) when the packet
leaves the stack at POSTROUTING or INPUT. A packet dropped on the way never
leaves a confirmed entry behind (``discard``).

Per-protocol state: TCP runs the one transition table below (Linux's
``tcp_conntracks`` indexed by direction, flag class and state) and takes the
timeout of the new state; ``ASSURED`` once the handshake completes. UDP is
``[UNREPLIED]`` (30 s) until a reply is seen, then 30 s, and ``ASSURED`` with
120 s once the flow is both ways and older than 2 s (Linux's stream rule).
ICMP queries 30 s, anything else 600 s.

Expiry is lazy: every confirmed entry has exactly one item in a heap keyed by
the deadline it had when pushed; refreshing an entry only moves its
``expires``; when the heap item comes due and the entry has been refreshed
since, the item is pushed again. ``get_timer`` is the heap top (sometimes
early, never late); lookups also refuse an entry that is past its deadline.

Table full (``max_entries``): evict the oldest entry that is not ``ASSURED``
(Linux ``early_drop``), else refuse the new connection with
:data:`~emunet.dataplane.trace.Drop.CONNTRACK_FULL`.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from ipaddress import IPv4Address
from typing import Final

from emunet.dataplane.nat import ICMP_QUERY_OF, PORT_MASK

ORIGINAL: Final = 0
REPLY: Final = 1

Tuple = tuple[int, ...]
"""``(proto, src, dst, sport, dport)``; addresses as ints, ICMP id as both ports.

Typed as a tuple of any length on purpose: the compiled core keeps a
fixed-length tuple as a C struct and boxes a new copy (a tuple and its large
ints) each time one meets a dict or a list, so every lookup would allocate
five objects. As ``tuple[int, ...]`` the one tuple object a packet's tuple is
built as is the object every table holds and looks up."""


class TcpState(IntEnum):
    NONE = 0
    SYN_SENT = 1
    SYN_RECV = 2
    ESTABLISHED = 3
    FIN_WAIT = 4
    CLOSE_WAIT = 5
    LAST_ACK = 6
    TIME_WAIT = 7
    CLOSE = 8
    SYN_SENT2 = 9  # simultaneous open


class Status(IntFlag):
    """Linux ``enum ip_conntrack_status`` bits (same values)."""

    EXPECTED = 1 << 0
    SEEN_REPLY = 1 << 1
    ASSURED = 1 << 2
    CONFIRMED = 1 << 3
    SRC_NAT = 1 << 4
    DST_NAT = 1 << 5


class CtState(IntEnum):
    """``-m conntrack --ctstate`` of a packet."""

    NEW = 0
    ESTABLISHED = 1
    RELATED = 2
    INVALID = 3


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Linux defaults (nf_conntrack sysctls); TCP established as kube-proxy sets
    it (``--conntrack-tcp-timeout-established`` 24 h; the kernel default is 5 days)."""

    tcp: tuple[float, ...] = (
        10.0,  # NONE (never used as a lasting state)
        120.0,  # SYN_SENT
        60.0,  # SYN_RECV
        86400.0,  # ESTABLISHED
        120.0,  # FIN_WAIT
        60.0,  # CLOSE_WAIT
        30.0,  # LAST_ACK
        120.0,  # TIME_WAIT
        10.0,  # CLOSE
        120.0,  # SYN_SENT2
    )
    udp: float = 30.0
    udp_stream: float = 120.0
    icmp: float = 30.0
    generic: float = 600.0


DEFAULT_TIMEOUTS: Final = Timeouts()
# a replied UDP connection older than this is a stream (udp_stream timeout, ASSURED)
UDP_STREAM_AFTER: Final = 2.0

# plain ints of the Status bits for the per-packet path (IntFlag arithmetic is slow)
_SEEN_REPLY, _ASSURED, _CONFIRMED = (
    int(Status.SEEN_REPLY),
    int(Status.ASSURED),
    int(Status.CONFIRMED),
)
_SRC_NAT, _DST_NAT = int(Status.SRC_NAT), int(Status.DST_NAT)
_FAST_STATUS: Final = _SEEN_REPLY | _SRC_NAT | _DST_NAT

# --- the TCP state machine (Linux nf_conntrack_proto_tcp.c, tcp_conntracks) ---
# Flag classes, in Linux's order of precedence: RST, SYN(+ACK), FIN, ACK, none.
SYN, SYNACK, FIN, ACK, RST, NOFLAG = range(6)
_IV: Final = -1  # invalid: the packet does not fit the connection
_IG: Final = -2  # ignore: pass the packet, keep the state

_S: Final = TcpState
sNO, sSS, sSR, sES, sFW, sCW, sLA, sTW, sCL, sS2 = (
    _S.NONE, _S.SYN_SENT, _S.SYN_RECV, _S.ESTABLISHED, _S.FIN_WAIT,
    _S.CLOSE_WAIT, _S.LAST_ACK, _S.TIME_WAIT, _S.CLOSE, _S.SYN_SENT2,
)  # fmt: skip
sIV, sIG = _IV, _IG

TCP_TRANSITIONS: Final[tuple[tuple[tuple[int, ...], ...], ...]] = (
    # ORIGINAL direction
    # state:  sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL  sS2
    (
        (sSS, sSS, sIG, sIG, sIG, sIG, sIG, sSS, sSS, sS2),  # syn
        (sIV, sIV, sSR, sIV, sIV, sIV, sIV, sIV, sIV, sSR),  # synack
        (sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV),  # fin
        (sES, sIV, sES, sES, sCW, sCW, sTW, sTW, sCL, sIV),  # ack
        (sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL),  # rst
        (sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV),  # none
    ),
    # REPLY direction
    (
        (sIV, sS2, sIV, sIV, sIV, sIV, sIV, sSS, sIV, sS2),  # syn
        (sIV, sSR, sIG, sIG, sIG, sIG, sIG, sIG, sIG, sSR),  # synack
        (sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV),  # fin
        (sIV, sIG, sSR, sES, sCW, sCW, sTW, sTW, sCL, sIG),  # ack
        (sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL),  # rst
        (sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV),  # none
    ),
)
"""``TCP_TRANSITIONS[direction][flag class][state]`` -> new state, or invalid/ignore."""

_FLAG_FIN, _FLAG_SYN, _FLAG_RST, _FLAG_ACK = 0x01, 0x02, 0x04, 0x10


_ESTABLISHED: Final = int(TcpState.ESTABLISHED)
# the flags that decide a segment's class: with PSH/URG/ECE/CWR masked off, a
# plain ACK is exactly _FLAG_ACK
_ACK_CLASS_MASK: Final = _FLAG_FIN | _FLAG_SYN | _FLAG_RST | _FLAG_ACK
# refresh_established relies on it: a plain ACK keeps ESTABLISHED either way
# (tests/dataplane/test_conntrack.py checks the table says so)


def tcp_flag_class(flags: int) -> int:
    """Linux ``get_conntrack_index``."""
    if flags & _FLAG_RST:
        return RST
    if flags & _FLAG_SYN:
        return SYNACK if flags & _FLAG_ACK else SYN
    if flags & _FLAG_FIN:
        return FIN
    if flags & _FLAG_ACK:
        return ACK
    return NOFLAG


class TcpVerdict(IntEnum):
    OK = 0
    INVALID = 1
    REOPEN = 2  # SYN on a TIME_WAIT/CLOSE connection: kill it, treat as new


_ICMP_REPLY_TYPE: Final = {q: r for r, q in ICMP_QUERY_OF.items()}
_PROTO_NAMES: Final = {6: "tcp", 17: "udp", 1: "icmp"}


class ConntrackEntry:
    """One tracked connection. ``masq`` is the KUBE-MARK-MASQ decision of its
    first packet; ``owner`` is free for the NAT layer (service bookkeeping)."""

    __slots__ = (
        "created",
        "expires",
        "icmp_code",
        "icmp_type",
        "live",
        "mark",
        "masq",
        "owner",
        "state",
        "status",
        "tuples",
    )

    def __init__(self, orig: Tuple, now: float) -> None:
        p, s, d, sp, dp = orig
        self.tuples: tuple[Tuple, ...] = (orig, (p, d, s, dp, sp))  # ORIGINAL, REPLY
        self.state: int = TcpState.NONE
        self.status = 0
        self.mark = 0
        self.expires = now
        self.created = now
        self.icmp_type = 0
        self.icmp_code = 0
        self.masq = False
        self.owner: tuple[str, str] | None = None  # (chain, endpoint) of a DNAT
        self.live = False

    @property
    def proto(self) -> int:
        return self.tuples[0][0]

    @property
    def assured(self) -> bool:
        return bool(self.status & _ASSURED)

    def __repr__(self) -> str:
        return f"<ConntrackEntry {format_entry(self, self.created)}>"


def _tuple_str(t: Tuple, proto: int, icmp: tuple[int, int] | None) -> str:
    s = f"src={IPv4Address(t[1])} dst={IPv4Address(t[2])}"
    if icmp is not None:
        return s + f" type={icmp[0]} code={icmp[1]} id={t[3] & PORT_MASK}"
    if proto in (6, 17):
        return s + f" sport={t[3]} dport={t[4]}"
    return s


def format_entry(e: ConntrackEntry, now: float) -> str:
    """One line of ``conntrack -L``."""
    proto = e.proto
    remaining = max(0, int(e.expires - now))
    out = [f"{_PROTO_NAMES.get(proto, 'unknown'):<8} {proto} {remaining}"]
    if proto == 6:
        out.append(TcpState(e.state).name)
    icmp_o = icmp_r = None
    if proto == 1:
        icmp_o = (e.icmp_type, e.icmp_code)
        icmp_r = (_ICMP_REPLY_TYPE.get(e.icmp_type, e.icmp_type), e.icmp_code)
    out.append(_tuple_str(e.tuples[ORIGINAL], proto, icmp_o))
    if not e.status & _SEEN_REPLY:
        out.append("[UNREPLIED]")
    out.append(_tuple_str(e.tuples[REPLY], proto, icmp_r))
    if e.status & _ASSURED:
        out.append("[ASSURED]")
    out.append(f"mark={e.mark} use=1")
    return " ".join(out)


class ConntrackTable:
    """The connection table of one network namespace."""

    def __init__(
        self,
        max_entries: int = 262144,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        *,
        on_destroy: Callable[[ConntrackEntry], None] | None = None,
    ) -> None:
        self.max_entries = max_entries
        self.timeouts = timeouts
        self.on_destroy = on_destroy
        self._by_tuple: dict[Tuple, tuple[ConntrackEntry, int]] = {}
        self._entries: dict[ConntrackEntry, None] = {}  # confirmed, in creation order
        self._unassured: dict[ConntrackEntry, None] = {}
        self._heap: list[tuple[float, int, ConntrackEntry]] = []
        self._seq = 0
        self._pending = 0  # allocated, not yet confirmed
        self.stats = {"found": 0, "new": 0, "invalid": 0, "early_drop": 0, "drop": 0}

    # --- queries ------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[ConntrackEntry]:
        return iter(list(self._entries))

    def lookup(self, t: Tuple, now: float) -> tuple[ConntrackEntry, int] | None:
        """The live entry a tuple belongs to, with the packet's direction."""
        hit = self._by_tuple.get(t)
        if hit is None:
            return None
        if hit[0].expires <= now:
            self.remove(hit[0])
            return None
        return hit

    def is_taken(self, t: Tuple) -> bool:
        return t in self._by_tuple

    def listing(self, now: float) -> str:
        """``conntrack -L`` output (entries in creation order)."""
        return "".join(format_entry(e, now) + "\n" for e in self._entries)

    # --- life cycle ---------------------------------------------------------

    def allocate(self, orig: Tuple, now: float) -> ConntrackEntry | None:
        """A new unconfirmed entry, or None when the table is full and nothing
        can be evicted."""
        if len(self._entries) + self._pending >= self.max_entries:
            if not self._unassured:
                self.stats["drop"] += 1
                return None
            victim = next(iter(self._unassured))
            self.remove(victim)
            self.stats["early_drop"] += 1
        self._pending += 1
        self.stats["new"] += 1
        return ConntrackEntry(orig, now)

    def confirm(self, e: ConntrackEntry) -> None:
        """Insert under both tuples (the packet left the stack)."""
        if e.live:
            return
        self._pending -= 1
        e.live = True
        e.status |= _CONFIRMED
        self._by_tuple[e.tuples[ORIGINAL]] = (e, ORIGINAL)
        self._by_tuple[e.tuples[REPLY]] = (e, REPLY)
        self._entries[e] = None
        if not e.status & _ASSURED:
            self._unassured[e] = None
        self._seq += 1
        heapq.heappush(self._heap, (e.expires, self._seq, e))

    def discard(self, e: ConntrackEntry) -> None:
        """Forget an unconfirmed entry (its packet was dropped)."""
        if not e.live and not e.status & _CONFIRMED:
            self._pending -= 1
            e.status |= _CONFIRMED  # never counted twice

    def remove(self, e: ConntrackEntry) -> None:
        if not e.live:
            return
        e.live = False
        for t in e.tuples:
            hit = self._by_tuple.get(t)
            if hit is not None and hit[0] is e:
                del self._by_tuple[t]
        del self._entries[e]
        self._unassured.pop(e, None)
        if self.on_destroy is not None:
            self.on_destroy(e)

    def set_reply(self, e: ConntrackEntry, reply: Tuple) -> None:
        """Bind NAT on an unconfirmed entry: its reply tuple changes."""
        e.tuples = (e.tuples[ORIGINAL], reply)

    def set_assured(self, e: ConntrackEntry) -> None:
        if not e.status & _ASSURED:
            e.status |= _ASSURED
            self._unassured.pop(e, None)

    def flush(self, predicate: Callable[[ConntrackEntry], bool]) -> int:
        """Delete every entry matching ``predicate`` (``conntrack -D``); returns the count."""
        doomed = [e for e in self._entries if predicate(e)]
        for e in doomed:
            self.remove(e)
        return len(doomed)

    # --- per-packet state ---------------------------------------------------

    def start(self, e: ConntrackEntry, flags: int, now: float) -> bool:
        """Initial state for the first packet; False if it cannot open a
        connection (TCP without SYN or ACK: Linux ``tcp_new``)."""
        proto = e.proto
        if proto == 6:
            cls = tcp_flag_class(flags)
            new = TCP_TRANSITIONS[ORIGINAL][cls][TcpState.NONE]
            if new < 0:
                return False
            # A mid-stream ACK is picked up as ESTABLISHED (nf_conntrack_tcp_loose=1).
            e.state = new
            e.expires = now + self.timeouts.tcp[new]
        elif proto == 17:
            e.expires = now + self.timeouts.udp
        elif proto == 1:
            e.expires = now + self.timeouts.icmp
        else:
            e.expires = now + self.timeouts.generic
        return True

    def track(
        self, t: Tuple, flags: int, now: float
    ) -> tuple[ConntrackEntry, int, TcpVerdict] | None:
        """A packet of tuple ``t`` (TCP ``flags``) meets its connection: the live
        entry, the packet's direction and :meth:`update`'s verdict; None when there
        is none, or when the packet reopens it (a SYN on TIME_WAIT/CLOSE: the old
        entry is removed, the packet starts a new one)."""
        hit = self.lookup(t, now)
        if hit is None:
            return None
        e, d = hit
        v = self.update(e, d, flags, now)
        if v == TcpVerdict.REOPEN:
            self.remove(e)
            return None
        return e, d, v

    def update(self, e: ConntrackEntry, direction: int, flags: int, now: float) -> TcpVerdict:
        """Advance the state for a packet of an existing connection and refresh its timer."""
        if direction == REPLY and not e.status & _SEEN_REPLY:
            e.status |= _SEEN_REPLY
        proto = e.proto
        to = self.timeouts
        if proto == 6:
            old = e.state
            new = TCP_TRANSITIONS[direction][tcp_flag_class(flags)][old]
            if new == _IG:
                return TcpVerdict.OK
            if new == _IV:
                self.stats["invalid"] += 1
                return TcpVerdict.INVALID
            if (
                direction == ORIGINAL
                and new == TcpState.SYN_SENT
                and old in (TcpState.TIME_WAIT, TcpState.CLOSE)
            ):
                return TcpVerdict.REOPEN
            e.state = new
            if (
                e.status & _SEEN_REPLY
                and new == TcpState.ESTABLISHED
                and old in (TcpState.SYN_RECV, TcpState.ESTABLISHED)
            ):
                self.set_assured(e)
            e.expires = now + to.tcp[new]
        elif proto == 17:
            if e.status & _SEEN_REPLY:
                if now > e.created + UDP_STREAM_AFTER:
                    e.expires = now + to.udp_stream
                    self.set_assured(e)
                else:
                    e.expires = now + to.udp
            else:
                e.expires = now + to.udp
        elif proto == 1:
            e.expires = now + to.icmp
        else:
            if e.status & _SEEN_REPLY:
                self.set_assured(e)
            e.expires = now + to.generic
        return TcpVerdict.OK

    def refresh_established(self, e: ConntrackEntry, flags: int, now: float) -> bool:
        """:meth:`update` for a packet of a live, un-NATed UDP flow or ICMP query that
        has seen its reply, or a plain ACK (PSH/URG/ECE/CWR allowed) of such an
        ESTABLISHED TCP one; False, having changed nothing, for anything else (the
        state table judges it, the NAT rewrites it).

        The same outcome as :meth:`update` (an ACK keeps ESTABLISHED in both
        directions), without its general case analysis: this runs for every
        packet of every cached flow.
        """
        if (
            not e.live
            or e.expires <= now
            or e.status & _FAST_STATUS != _SEEN_REPLY  # replied, not NATed
            or e.masq
        ):
            return False
        proto = e.tuples[0][0]  # e.proto, without the property's call
        if proto == 17:
            if now > e.created + UDP_STREAM_AFTER:
                e.expires = now + self.timeouts.udp_stream
                if not e.status & _ASSURED:
                    self.set_assured(e)
            else:
                e.expires = now + self.timeouts.udp
            return True
        if proto == 1:  # an echo query: no state, its timeout
            e.expires = now + self.timeouts.icmp
            return True
        if proto != 6 or (flags & _ACK_CLASS_MASK) != _FLAG_ACK or e.state != _ESTABLISHED:
            return False
        e.expires = now + self.timeouts.tcp[_ESTABLISHED]
        if not e.status & _ASSURED:
            self.set_assured(e)
        return True

    def refresh_unreplied(self, e: ConntrackEntry, now: float) -> bool:
        """:meth:`update` for an ORIGINAL packet of a live, un-NATed UDP connection
        that has not seen its reply (the caller knows the direction); False, having
        changed nothing, for anything else."""
        if (
            not e.live
            or e.expires <= now
            or e.status & _FAST_STATUS  # replied or NATed
            or e.masq
            or e.tuples[0][0] != 17
        ):
            return False
        e.expires = now + self.timeouts.udp
        return True

    # --- timers -------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` next has work (may be early, never late)."""
        return self._heap[0][0] if self._heap else None

    def handle_timer(self, now: float) -> int:
        """Expire due entries; returns how many were removed."""
        heap = self._heap
        removed = 0
        while heap and heap[0][0] <= now:
            _, _, e = heapq.heappop(heap)
            if not e.live:
                continue
            if e.expires > now:
                self._seq += 1
                heapq.heappush(heap, (e.expires, self._seq, e))
            else:
                self.remove(e)
                removed += 1
        return removed
