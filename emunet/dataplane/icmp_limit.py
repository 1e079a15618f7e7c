"""Linux's rate limits on the ICMP errors a namespace sends (``icmp_send``).

Linux never answers a flood with a flood: ``net/ipv4/icmp.c`` lets an error
out only when both limits allow it (the defaults of kernels 6.12 to 6.18, where
the global credit is per network namespace; checked on this machine's 6.18):

1. **global** (``icmp_global_allow``): a credit of ``icmp_msgs_burst`` (50)
   messages, refilled at ``icmp_msgs_per_sec`` (1000/s), at most every 20 ms
   (``HZ / 50``) and by at most one second's worth. While credit is left, an
   error passes; a passed error spends one credit. Linux spends a random 0-2
   (mean 1) against a side channel (CVE-2020-25705); emunet spends 1, so runs
   repeat;
2. **per destination** (``inet_peer_xrlim_allow``): a token bucket per address
   the errors go to: one error per ``icmp_ratelimit`` (1 s), up to
   ``XRLIM_BURST_FACTOR`` (6) in a burst; a destination not seen before
   starts with a full bucket.

Only the types of ``icmp_ratemask`` (0x1818: destination unreachable, source
quench, time exceeded, parameter problem) are limited, and never
"fragmentation needed", which path MTU discovery depends on. Nor is an error
to one of the namespace's own addresses: it is about a packet that came in on
``lo``, for which ``__icmp_send`` checks neither limit (one REJECTed in OUTPUT,
before reaching ``lo``, would spend global credit in Linux; not here).
A forwarded packet without a route (``ip_error``) first pays one second of the
same destination bucket, capped at 5 (``ip_rt_error_cost`` and
``ip_rt_error_burst``): such errors come 2 at once, then one after each 2 s
without that source's packets (a steady stream's seconds all go to ip_error).
An error held back is counted in the namespace's drops (Linux's
``OutRateLimitGlobal`` / ``OutRateLimitHost`` in ``/proc/net/snmp``).

So a UDP blast at a closed port gets 6 "port unreachable" back, then one a
second, and traceroute's last hop can show ``*`` when its probes come faster.

Time is counted in whole milliseconds (jiffies at ``HZ`` 1000), as the kernel
counts it: a refill exactly 20 ms or a token exactly 1 s later is not lost to
a float's rounding. The steps of one queue run need not come in time order;
time never runs back for a bucket. Destinations are at most :data:`PEERS` per
namespace (Linux's inet_peer cache is bounded too): the least recently used
one is forgotten, and comes back with a full bucket, as a peer Linux's garbage
collector freed.
"""

from __future__ import annotations

from typing import Final

from emunet.dataplane.trace import Drop

RATEMASK: Final = 0x1818  # net.ipv4.icmp_ratemask: types 3, 4, 11, 12
HZ: Final = 1000  # ticks (jiffies) per second
RATELIMIT: Final = HZ  # net.ipv4.icmp_ratelimit (1000 ms): one error per destination
BURST_FACTOR: Final = 6  # XRLIM_BURST_FACTOR: a destination's burst
ERROR_COST: Final = HZ  # ip_rt_error_cost: what ip_error takes of the same bucket
ERROR_BURST: Final = 5 * HZ  # ip_rt_error_burst: the bucket's cap for ip_error
MSGS_PER_SEC: Final = 1000  # net.ipv4.icmp_msgs_per_sec
MSGS_BURST: Final = 50  # net.ipv4.icmp_msgs_burst
REFILL_GAP: Final = HZ // 50  # the global credit's shortest refill (20 ms)
PEERS: Final = 4096  # destinations remembered per namespace
_DEST_UNREACH: Final = 3
_FRAG_NEEDED: Final = 4


class IcmpRateLimit:
    """One namespace's ICMP error limits; ``allow`` says whether an error may go
    out now, and counts the ones held back in ``drops``."""

    def __init__(self, drops: dict[str, int]) -> None:
        self._drops = drops
        self.credit = 0  # icmp_global_credit: the first error refills it
        self._stamp = -HZ  # icmp_global_stamp, in ticks
        # destination (packed) -> (tokens, tick of the last update), in ticks
        self.peers: dict[bytes, tuple[int, int]] = {}

    def allow(self, typ: int, code: int, dst: bytes, local: bool, now: float) -> bool:
        """Whether an error of ``typ``/``code`` to ``dst`` may be sent at ``now``
        (``local``: ``dst`` is one of the namespace's own addresses)."""
        if local or not (RATEMASK >> typ) & 1 or (typ == _DEST_UNREACH and code == _FRAG_NEEDED):
            return True  # came in on lo, or icmpv4_mask_allow: never limited
        tick = round(now * HZ)
        if not self._global_allow(tick):
            self._count(Drop.ICMP_RATELIMIT_GLOBAL)
            return False
        if not self._peer_take(dst, tick, RATELIMIT, BURST_FACTOR * RATELIMIT):
            self._count(Drop.ICMP_RATELIMIT_HOST)
            return False
        self.credit -= 1  # icmp_global_consume
        return True

    def route_error(self, pkt: bytearray, now: float) -> bool:
        """``ip_error``: a forwarded packet ``pkt`` found no route; whether its source's
        bucket still holds ``ip_rt_error_cost`` (capped at ``ip_rt_error_burst``).
        The error it allows then passes :meth:`allow` too, as ``icmp_send``."""
        if self._peer_take(bytes(pkt[12:16]), round(now * HZ), ERROR_COST, ERROR_BURST):
            return True
        self._count(Drop.ICMP_RATELIMIT_HOST)
        return False

    def _global_allow(self, tick: int) -> bool:
        if self.credit > 0:
            return True
        delta = min(tick - self._stamp, HZ)
        incr = MSGS_PER_SEC * delta // HZ
        if delta < REFILL_GAP or not incr:
            return False
        self._stamp = tick
        self.credit = min(self.credit + incr, MSGS_BURST)
        return True

    def _peer_take(self, dst: bytes, tick: int, cost: int, cap: int) -> bool:
        """``inet_peer_xrlim_allow`` (and ``ip_error``'s same arithmetic): add the
        ticks since the last update to ``dst``'s tokens, at most ``cap``, and take
        ``cost`` if they hold it."""
        peers = self.peers
        got = peers.pop(dst, None)  # re-inserted below: the dict is in use order
        if got is None:
            if len(peers) >= PEERS:
                del peers[next(iter(peers))]  # the least recently used
            tokens, last = 60 * HZ, tick  # a new peer was last seen a minute ago
        else:
            tokens, last = got
        if tick > last:
            tokens, last = tokens + (tick - last), tick
        tokens = min(tokens, cap)
        ok = tokens >= cost
        if ok:
            tokens -= cost
        peers[dst] = (tokens, last)
        return ok

    def _count(self, reason: Drop) -> None:
        key = str(reason)
        self._drops[key] = self._drops.get(key, 0) + 1
