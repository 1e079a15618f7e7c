"""The neighbour table (``ip neigh``): ARP entries with Linux's NUD states.

Theory of operation
-------------------
An entry starts INCOMPLETE (broadcast requests, packets queued) and becomes
REACHABLE when ARP confirms it; after ``base_reachable_time`` it is STALE.
Sending with a STALE entry moves it to DELAY, which becomes PROBE (unicast
requests to the cached MAC) unless confirmed in time, and FAILED (forgotten)
after ``ucast_solicit`` unanswered probes.

The table decides; the namespace transmits. Its calls return outcomes (a MAC
to send with, a packet queued, a request due, a drop reason) and never send
anything themselves, so the call graph reads top-down: the namespace asks, the
table answers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from enum import Enum, StrEnum
from ipaddress import IPv4Address
from typing import Final

from emunet.dataplane.interfaces import Interface
from emunet.dataplane.trace import Drop
from emunet.packets.mac import MAC

# Linux neighbour defaults: 3 probes one second apart (mcast_solicit,
# retrans_time), base_reachable_time 30 s, unresolved queue (a packet count
# here rather than unres_qlen_bytes).
ARP_RETRIES: Final = 3
ARP_RETRANS: Final = 1.0
REACHABLE_TIME: Final = 30.0
ARP_QUEUE_MAX: Final = 101
DELAY_FIRST_PROBE_TIME: Final = 5.0
NEIGH_GC_THRESH3: Final = 1024


class Nud(StrEnum):
    """Neighbour Unreachability Detection states (``ip neigh`` prints these)."""

    INCOMPLETE = "INCOMPLETE"
    REACHABLE = "REACHABLE"
    STALE = "STALE"
    DELAY = "DELAY"
    PROBE = "PROBE"
    FAILED = "FAILED"


class Pending(Enum):
    """A packet :meth:`NeighTable.resolve` queued: behind a request already sent, or
    in a new entry whose first request is due."""

    WAITING = "waiting"
    NEW = "new"


class Neighbour:
    """One entry of the table."""

    __slots__ = ("dev", "ip", "mac", "probe_at", "probes", "queue", "state", "updated")

    def __init__(self, ip: bytes, dev: Interface, now: float) -> None:
        self.ip = ip
        self.dev = dev
        self.mac: bytes | None = None
        self.state = Nud.INCOMPLETE
        self.updated = now
        self.probes = 0
        self.probe_at = 0.0  # DELAY/PROBE: when the next unicast probe is due
        self.queue: deque[bytearray] = deque()


class Timeout:
    """What :meth:`NeighTable.expire` found due: a request to send or an entry that failed."""

    __slots__ = ("neighbour", "queued", "unicast")

    def __init__(
        self,
        neighbour: Neighbour,
        unicast: bytes | None = None,
        queued: list[bytearray] | None = None,
    ) -> None:
        self.neighbour = neighbour
        self.unicast = unicast  # a request due: broadcast (None) or a unicast probe
        self.queued = queued  # FAILED: the packets that waited for it (None: a request)


class NeighTable:
    """The ARP cache of one namespace."""

    def __init__(self) -> None:
        self.entries: dict[bytes, Neighbour] = {}
        # the entries in a state with a timer (INCOMPLETE, DELAY, PROBE): a root
        # namespace has an entry per pod it talks to, and few of them wait
        self.timed: dict[bytes, Neighbour] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def used(self, n: Neighbour, now: float) -> None:
        """A packet is sent with this entry's MAC (``neigh_event_send``)."""
        state = n.state
        if state is Nud.REACHABLE:
            if now - n.updated <= REACHABLE_TIME:
                return
            state = n.state = Nud.STALE
        if state is Nud.STALE:
            n.state = Nud.DELAY
            n.probe_at = now + DELAY_FIRST_PROBE_TIME
            self.timed[n.ip] = n

    def resolve(
        self, ip: bytes, dev: Interface, pkt: bytearray, now: float
    ) -> bytes | Pending | Drop:
        """The MAC to send ``pkt`` to ``ip`` with; else the packet waits in the entry's
        queue (:class:`Pending`), or the reason it is dropped."""
        n = self.entries.get(ip)  # never FAILED: those are forgotten
        if n is not None and n.mac is not None:
            if n.state is not Nud.REACHABLE or now - n.updated > REACHABLE_TIME:
                self.used(n, now)  # (a fresh REACHABLE entry stays as it is)
            return n.mac
        new = n is None
        if n is None:
            if len(self.entries) >= NEIGH_GC_THRESH3 and not self._gc():
                return Drop.NEIGH_TABLE_OVERFLOW
            n = self.entries[ip] = self.timed[ip] = Neighbour(ip, dev, now)
        if len(n.queue) >= ARP_QUEUE_MAX:
            return Drop.ARP_QUEUE_FULL
        n.queue.append(pkt)
        return Pending.NEW if new else Pending.WAITING

    def requested(self, n: Neighbour, now: float, unicast: bool) -> None:
        """A request for the entry was sent."""
        n.probes += 1
        if not unicast:
            n.updated = now

    def confirm(
        self, ip: bytes, mac: bytes, dev: Interface, now: float, create: bool
    ) -> Neighbour | Drop | None:
        """ARP told us ``ip`` is at ``mac``: the entry, REACHABLE, its queue to send;
        None when there is no entry and ``create`` is off (``arp_accept=0``: an
        unsolicited reply only refreshes an existing entry); a drop reason when full."""
        n = self.entries.get(ip)
        if n is None:
            if not create:
                return None
            if len(self.entries) >= NEIGH_GC_THRESH3 and not self._gc():
                return Drop.NEIGH_TABLE_OVERFLOW
            n = self.entries[ip] = Neighbour(ip, dev, now)
        n.mac = mac
        n.state = Nud.REACHABLE
        self.timed.pop(ip, None)
        n.updated = max(n.updated, now)  # steps of one queue run need not come in time order
        n.dev = dev
        return n

    def _gc(self) -> bool:
        """Forget STALE and DELAY entries (forced GC at gc_thresh3); True if room."""
        for ip in [ip for ip, n in self.entries.items() if n.state in (Nud.STALE, Nud.DELAY)]:
            self.forget(ip)
        return len(self.entries) < NEIGH_GC_THRESH3

    def forget(self, ip: bytes) -> Neighbour:
        """Remove an entry; it ends FAILED, so whoever still holds it sees it is gone."""
        n = self.entries.pop(ip)
        self.timed.pop(ip, None)
        n.state = Nud.FAILED
        return n

    def forget_dev(self, dev: Interface) -> None:
        for ip in [ip for ip, n in self.entries.items() if n.dev is dev]:
            self.forget(ip)

    def clear(self) -> None:
        for ip in list(self.entries):
            self.forget(ip)

    def delete(self, ip: bytes) -> tuple[Neighbour, list[bytearray]] | None:
        """``ip neigh del``: the entry and the packets that waited for it, or None."""
        n = self.entries.get(ip)
        if n is None:
            return None
        queued, n.queue = list(n.queue), deque()
        self.forget(ip)
        return n, queued

    # ---------------------------------------------------------------- timers

    def get_timer(self) -> float | None:
        """The earliest request or failure due: O(entries waiting), not O(entries)."""
        times = [
            n.updated + ARP_RETRANS if n.state is Nud.INCOMPLETE else n.probe_at
            for n in self.timed.values()
        ]
        return min(times) if times else None

    def expire(self, now: float) -> Iterator[Timeout]:
        """The requests due and the entries that failed, in table order, one at a
        time: the caller acts on each (a request, errors about the packets that
        waited) before the next entry is judged, as the kernel's timers do."""
        for n in list(self.entries.values()):
            if n.state is Nud.INCOMPLETE and now >= n.updated + ARP_RETRANS:
                if n.probes >= ARP_RETRIES:
                    queued, n.queue = list(n.queue), deque()
                    self.forget(n.ip)
                    yield Timeout(n, queued=queued)
                else:
                    yield Timeout(n)
            elif n.state in (Nud.DELAY, Nud.PROBE) and now >= n.probe_at:
                if n.state is Nud.PROBE and n.probes >= ARP_RETRIES:
                    self.forget(n.ip)  # FAILED: the next packet resolves anew
                    yield Timeout(n, queued=[])
                    continue
                if n.state is Nud.DELAY:
                    n.state = Nud.PROBE
                    n.probes = 0
                n.probe_at = now + ARP_RETRANS
                yield Timeout(n, unicast=n.mac)

    # ----------------------------------------------------------------- views

    def show(self, now: float) -> list[tuple[IPv4Address, str, MAC | None, str]]:
        """``(ip, dev, lladdr, state)`` rows as ``ip neigh show`` prints them."""
        rows = []
        for n in self.entries.values():
            state = n.state
            if state is Nud.REACHABLE and now - n.updated > REACHABLE_TIME:
                state = Nud.STALE
            rows.append((IPv4Address(n.ip), n.dev.name, MAC(n.mac) if n.mac else None, str(state)))
        return rows
