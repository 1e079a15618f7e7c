"""br_netfilter: IPv4 frames bridged between two ports of ``cni0`` cross the
root namespace's iptables hooks (``bridge-nf-call-iptables=1``).

Kubernetes requires it: without it the reply of a same-node Service endpoint
would skip conntrack's reverse DNAT. The bridge calls :meth:`BrNetfilter.hook`
for every IPv4 frame it is about to forward between ports; the hook returns the
(rewritten) frame to forward, or None when it took the packet (dropped,
DNAT'd to a destination the root namespace now routes, or refragmented and
forwarded in pieces).
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address

from emunet.dataplane.frag import fragment
from emunet.dataplane.interfaces import Interface
from emunet.dataplane.netfilter import Netfilter
from emunet.dataplane.netns import Namespace
from emunet.dataplane.trace import Tracer


class BrNetfilter:
    """The hook of one bridge (``cni0``, holding ``gateway_ip``)."""

    def __init__(
        self,
        nf: Netfilter,
        root: Namespace,
        cni0: Interface,
        gateway_ip: IPv4Address,
        *,
        forward: Callable[[Interface | None, bytes, bytes | bytearray, float], None],
        enqueue: Callable[..., None],
        tracer: Tracer,
    ) -> None:
        self.nf = nf
        self.root = root
        self.cni0 = cni0
        self.gateway_ip = gateway_ip
        self._forward = forward
        self._enqueue = enqueue
        self._tracer = tracer

    def hook(
        self, port: Interface, frame: bytes | bytearray, now: float
    ) -> bytes | bytearray | None:
        nf, root, cni0 = self.nf, self.root, self.cni0
        pkt = bytearray(memoryview(frame)[14:])
        n = len(pkt)
        if n < 20 or pkt[0] >> 4 != 4 or (pkt[2] << 8 | pkt[3]) > n:
            return frame  # not for the hooks: the receiving stack drops it with a reason
        total = pkt[2] << 8 | pkt[3]
        if total < n:
            del pkt[total:]
        if not self._tracer.enabled and nf.fast_forward(pkt, now) is not None:
            # established, un-NATed: the hooks change nothing but the padding, trimmed
            # to the IP length as br_validate_ipv4 trims it (the full path, below)
            return frame if total == n else frame[: 14 + total]
        fragmented = bool(pkt[6] & 0x3F or pkt[7])
        if fragmented:
            # nf_defrag: the hooks see whole packets; refragmented after POSTROUTING
            whole = root.reassemble(port, pkt, now)
            if whole is None:
                return None
            pkt = whole
        old_dst = bytes(pkt[16:20])
        if root.nf_refused(port, pkt, nf.prerouting(pkt, "cni0", now), now):
            return None
        if bytes(pkt[16:20]) != old_dst:
            # DNAT'd: no longer a bridging decision, the root namespace routes it
            self._enqueue(root.route_input, cni0, pkt, now)
            return None
        if root.nf_refused(port, pkt, nf.forward(pkt, "cni0", "cni0", now), now):
            return None
        if root.nf_refused(port, pkt, nf.postrouting(pkt, "cni0", self.gateway_ip, now), now):
            return None
        header = bytes(memoryview(frame)[:14])
        if not fragmented:
            return header + pkt
        pieces = fragment(pkt, cni0.mtu) if len(pkt) > cni0.mtu else [pkt]
        for piece in pieces:
            self._forward(port, header[:6], header + piece, now)
        return None
