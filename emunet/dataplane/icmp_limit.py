"""Linux's two rate limits on the ICMP errors a namespace sends (``icmp_send``).

Linux never answers a flood with a flood: ``net/ipv4/icmp.c`` lets an error
out only when both limits allow it (kernel 6.12 and later, where the global
credit is per network namespace):

1. **global** (``icmp_global_allow``): a credit of ``icmp_msgs_burst`` (50)
   messages, refilled at ``icmp_msgs_per_sec`` (1000/s), at most every 20 ms
   (``HZ / 50``) and by at most one second's worth. While credit is left, an
   error passes; a passed error spends one credit. Linux spends a random 0-2
   (mean 1) against a side channel (CVE-2020-25705); emunet spends 1, so runs
   repeat;
2. **per destination** (``inet_peer_xrlim_allow``): a token bucket per address
   the errors go to: one error per ``icmp_ratelimit`` (1 s), up to
   ``XRLIM_BURST_FACTOR`` (6) in a burst; a destination not seen before
   starts with a full bucket. Errors to a local address (the route's device
   is ``lo``) skip it.

Only the types of ``icmp_ratemask`` (0x1818: destination unreachable, source
quench, time exceeded, parameter problem) are limited, and never
"fragmentation needed", which path MTU discovery depends on. An error held
back is counted in the namespace's drops (Linux's ``OutRateLimitGlobal`` /
``OutRateLimitHost`` in ``/proc/net/snmp``).

So a UDP blast at a closed port gets 6 "port unreachable" back, then one a
second, and traceroute's last hop can show ``*`` when its probes come faster.

Destinations are at most :data:`PEERS` per namespace (Linux's inet_peer
cache is bounded too): the least recently used one is forgotten, and comes
back with a full bucket, as a peer Linux's garbage collector freed.
"""

from __future__ import annotations

from typing import Final

from emunet.dataplane.trace import Drop

RATEMASK: Final = 0x1818  # net.ipv4.icmp_ratemask: types 3, 4, 11, 12
RATELIMIT: Final = 1.0  # s: net.ipv4.icmp_ratelimit (1000 ms), one error per destination
BURST_FACTOR: Final = 6  # XRLIM_BURST_FACTOR: a destination's burst
MSGS_PER_SEC: Final = 1000  # net.ipv4.icmp_msgs_per_sec
MSGS_BURST: Final = 50  # net.ipv4.icmp_msgs_burst
REFILL_GAP: Final = 0.02  # s: HZ / 50, the global credit's shortest refill
PEERS: Final = 4096  # destinations remembered per namespace
_DEST_UNREACH: Final = 3
_FRAG_NEEDED: Final = 4


class IcmpRateLimit:
    """One namespace's ICMP error limits; ``allow`` says whether an error may go
    out now, and counts the ones held back in ``drops``."""

    def __init__(self, drops: dict[str, int]) -> None:
        self._drops = drops
        self.credit = 0  # icmp_global_credit: the first error refills it
        self._stamp = float("-inf")  # icmp_global_stamp
        # destination (packed) -> (tokens in seconds, when last updated)
        self.peers: dict[bytes, tuple[float, float]] = {}

    def allow(self, typ: int, code: int, dst: bytes, local: bool, now: float) -> bool:
        """Whether an error of ``typ``/``code`` to ``dst`` may be sent at ``now``
        (``local``: ``dst`` is one of the namespace's own addresses)."""
        if not (RATEMASK >> typ) & 1 or (typ == _DEST_UNREACH and code == _FRAG_NEEDED):
            return True  # icmpv4_mask_allow: never limited
        if not self._global_allow(now):
            self._count(Drop.ICMP_RATELIMIT_GLOBAL)
            return False
        if not local and not self._peer_allow(dst, now):
            self._count(Drop.ICMP_RATELIMIT_HOST)
            return False
        self.credit -= 1  # icmp_global_consume
        return True

    def _global_allow(self, now: float) -> bool:
        if self.credit > 0:
            return True
        delta = min(now - self._stamp, 1.0)
        incr = int(MSGS_PER_SEC * delta)
        if delta < REFILL_GAP or not incr:
            return False
        self._stamp = now
        self.credit = min(self.credit + incr, MSGS_BURST)
        return True

    def _peer_allow(self, dst: bytes, now: float) -> bool:
        peers = self.peers
        got = peers.pop(dst, None)  # re-inserted below: the dict is in use order
        if got is None:
            if len(peers) >= PEERS:
                del peers[next(iter(peers))]  # the least recently used
            tokens, last = BURST_FACTOR * RATELIMIT, now  # a new peer: a full bucket
        else:
            # the steps of one run need not come in time order: time never runs back
            tokens, last = got
            if now > last:
                tokens, last = min(tokens + (now - last), BURST_FACTOR * RATELIMIT), now
        ok = tokens >= RATELIMIT
        if ok:
            tokens -= RATELIMIT
        peers[dst] = (tokens, last)
        return ok

    def _count(self, reason: Drop) -> None:
        key = str(reason)
        self._drops[key] = self._drops.get(key, 0) + 1
