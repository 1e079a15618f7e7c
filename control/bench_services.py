"""Per-packet cost of the Service data path vs the number of Services (in process).

For N Services of 3 endpoints: the cost of the first packet of a new
connection (conntrack allocation, KUBE-SERVICES lookup, endpoint choice,
DNAT, confirm) and of a packet of an established connection (conntrack lookup,
state update, DNAT re-applied), each through prerouting -> forward ->
postrouting; and the time of one kube-proxy sync (``set_services``).

``benchmarks/bench_services.py`` prints the table; ``emunet bench`` reports
the ratio of 10,000 Services to 10 (:func:`ratio`).
"""

from __future__ import annotations

import gc
import random
import time
from ipaddress import IPv4Address, IPv4Network

from emunet.cluster.kubeproxy import Endpoint, Service, ServicePort
from emunet.dataplane.netfilter import Netfilter
from emunet.dataplane.trace import Tracer
from emunet.packets import ipv4, tcp
from emunet.packets.tcp import ACK, SYN, TCPHeader

NODE = IPv4Address("172.18.0.2")
POD = IPv4Address("10.244.1.2")


def services(n: int) -> tuple[list[Service], dict[tuple[str, str], list[Endpoint]]]:
    base = int(IPv4Address("10.96.0.0")) + 16
    svcs = []
    eps: dict[tuple[str, str], list[Endpoint]] = {}
    for i in range(n):
        svc = Service(
            "bench", f"svc{i}", IPv4Address(base + i), (ServicePort("", "TCP", 80, 8080),)
        )
        svcs.append(svc)
        eps[svc.key] = [
            Endpoint(
                IPv4Address(int(IPv4Address("10.244.0.0")) + 256 * (j + 2) + i % 250 + 2), f"n{j}"
            )
            for j in range(3)
        ]
    return svcs, eps


def packet(
    dst: IPv4Address, sport: int, flags: int, src: IPv4Address = POD, dport: int = 80
) -> bytearray:
    seg = tcp.build(TCPHeader(sport, dport, flags=flags), b"", src, dst)
    return bytearray(ipv4.build(ipv4.IPv4Header(src, dst, 6), seg))


def path(nf: Netfilter, pkt: bytearray) -> None:
    nf.prerouting(pkt, "cni0", 0.0)
    nf.forward(pkt, "cni0", "flannel0", 0.0)
    nf.postrouting(pkt, "flannel0", NODE, 0.0)


BLOCK = 500


def timed(sides: list[tuple[Netfilter, list[bytearray]]]) -> list[float]:
    """ns/packet of each side: the fastest block of BLOCK packets (timeit's rule:
    the minimum is the least disturbed by the other processes of a shared
    machine). The sides take turns block by block, so a slow spell of the
    machine (seconds long on a shared VM) meets them alike."""
    best = [float("inf")] * len(sides)
    gc.collect()
    gc.disable()
    try:
        for start in range(0, max(len(pkts) for _, pkts in sides), BLOCK):
            for k, (nf, pkts) in enumerate(sides):
                block = pkts[start : start + BLOCK]
                if not block:
                    continue
                t0 = time.perf_counter_ns()
                for p in block:
                    path(nf, p)
                best[k] = min(best[k], (time.perf_counter_ns() - t0) / len(block))
    finally:
        gc.enable()
    return best


def _netfilter(conntrack_max: int = 262144) -> Netfilter:
    return Netfilter(
        "bench",
        Tracer(enabled=False),
        cluster_cidr=IPv4Network("10.244.0.0/16"),
        service_cidr=IPv4Network("10.96.0.0/12"),
        local_addresses={NODE},
        rng=random.Random(1),
        conntrack_max=conntrack_max,
    )


class _Table:
    """A netfilter with ``n`` Services, and the SYNs of ``packets`` new connections,
    each to a Service drawn at random."""

    def __init__(self, n: int, packets: int) -> None:
        svcs, eps = services(n)
        self.nf = _netfilter(conntrack_max=4 * packets + 16)
        self.nf.set_services(svcs, eps)
        rnd = random.Random(2)
        self.targets = [svcs[rnd.randrange(n)].cluster_ip for _ in range(packets)]
        # new connections: fresh source ports (packets built beforehand)
        self.syns = [packet(dst, 1024 + i % 60000, SYN) for i, dst in enumerate(self.targets)]

    def acks(self) -> list[bytearray]:
        """Complete the handshakes (SYN-ACK from the chosen endpoint); the ACKs of
        the established connections."""
        for i, p in enumerate(self.syns):
            ep = IPv4Address(bytes(p[16:20]))
            path(self.nf, packet(POD, 8080, SYN | ACK, src=ep, dport=1024 + i % 60000))
        return [packet(dst, 1024 + i % 60000, ACK) for i, dst in enumerate(self.targets)]


def measure_all(sizes: list[int], packets: int) -> list[tuple[float, float]]:
    """(new, established) ns/packet with each number of Services, the tables
    measured in turns (:func:`timed`)."""
    tables = [_Table(n, packets) for n in sizes]
    new = timed([(t.nf, t.syns) for t in tables])
    est = timed([(t.nf, t.acks()) for t in tables])
    return list(zip(new, est, strict=True))


def measure(n: int, packets: int) -> tuple[float, float]:
    """(new, established) ns/packet with ``n`` Services."""
    return measure_all([n], packets)[0]


def sync_time(n: int) -> float:
    svcs, eps = services(n)
    nf = _netfilter()
    gc.collect()
    t0 = time.perf_counter()
    nf.set_services(svcs, eps)
    return time.perf_counter() - t0


def ratio(
    low: int = 10, high: int = 10_000, packets: int = 20_000, rounds: int = 3
) -> dict[str, float]:
    """ns/packet of new and established connections with ``low`` and ``high``
    Services, and their ratios: the best of ``rounds`` measurements of each, the two
    tables taking turns block by block (a shared machine only ever makes a
    measurement slower, and a slow spell then slows both)."""
    measure(low, min(packets, 2000))  # warm-up
    lo_new = lo_est = hi_new = hi_est = float("inf")
    for _ in range(rounds):
        (ln, le), (hn, he) = measure_all([low, high], packets)
        lo_new, lo_est = min(lo_new, ln), min(lo_est, le)
        hi_new, hi_est = min(hi_new, hn), min(hi_est, he)
    return {
        "services_low": low,
        "services_high": high,
        "new_ns_low": lo_new,
        "new_ns_high": hi_new,
        "established_ns_low": lo_est,
        "established_ns_high": hi_est,
        "ratio": hi_new / lo_new,
        "established_ratio": hi_est / lo_est,
    }
