"""What ``emunet bench`` measures and how it decides, with no I/O.

* :data:`PATHS`: the paths of a fabric, each with who sends (a pod or an
  external host), who answers, and how many real socket hops it crosses
  between processes (what its bare baseline is built with).
* :class:`RateSearch`: RFC 2544's throughput, the highest offered rate at
  which nothing is lost, by binary search. The first trial offers the
  sender's full speed; a trial that loses lowers the upper bound, one that
  loses nothing raises the lower bound, until the bounds are within
  ``resolution`` of each other or the trials run out. The first guess after an
  overload is the rate that arrived during it (what the receiver could take).
* parsers of the tools' output (iperf's TCP and UDP reports, sockperf's
  percentiles, ping's replies), :func:`percentile`, and :func:`goals`: issue
  13's speed goals as met / not met.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from emunet.nodes.shell_sockperf import percentile

__all__ = [
    "PATHS",
    "PING_INTERVAL",
    "SIZES",
    "BenchPath",
    "Goal",
    "RateSearch",
    "Trial",
    "goals",
    "parse_iperf_tcp",
    "parse_iperf_udp",
    "parse_ping",
    "parse_sockperf",
    "percentile",
]

SIZES = (64, 512, 1400)  # UDP payload bytes
PING_INTERVAL = 0.01  # ping -i, and the pace of the bare ping-pong it is compared with
_UNITS = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9}


@dataclass(frozen=True)
class BenchPath:
    """One path: ``client`` and ``server`` are ``("pod", app label)`` or
    ``("host", external host name)``; ``dst`` names the address the client
    sends to (``pod:LABEL``, ``host:NAME``, ``clusterip``, ``nodeport``,
    ``lb``); ``hops`` the real socket hops between processes."""

    key: str
    title: str
    client: tuple[str, str]
    server: tuple[str, str]
    dst: str
    hops: int
    ping: bool  # the destination answers ICMP echo (a Service's address does not)


PATHS = (
    BenchPath(
        "same-node", "pod → pod, same node", ("pod", "client"), ("pod", "near"), "pod:near", 0, True
    ),
    BenchPath(
        "cross-node", "pod → pod, other node", ("pod", "client"), ("pod", "far"), "pod:far", 1, True
    ),
    BenchPath(
        "clusterip", "pod → ClusterIP", ("pod", "client"), ("pod", "far"), "clusterip", 1, False
    ),
    # ``vm`` is a machine on the node network (a NodePort is a node address)
    BenchPath("nodeport", "host → NodePort", ("host", "vm"), ("pod", "far"), "nodeport", 1, False),
    # the cloud's balancer (in the internet process) picks a node; from node1 or
    # node3 the packet crosses the overlay to the backend on node2
    BenchPath(
        "loadbalancer", "host → LoadBalancer", ("host", "client"), ("pod", "far"), "lb", 2, False
    ),
    BenchPath(
        "internet",
        "pod → internet host",
        ("pod", "client"),
        ("host", "example"),
        "host:example",
        1,
        True,
    ),
)


@dataclass
class Trial:
    """One UDP trial: what was offered (pps), sent and lost, in ``seconds``."""

    offered: float
    sent: int
    lost: int
    seconds: float

    @property
    def sent_pps(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    @property
    def delivered_pps(self) -> float:
        return (self.sent - self.lost) / self.seconds if self.seconds > 0 else 0.0

    @property
    def loss(self) -> float:
        return self.lost / self.sent if self.sent else 1.0


@dataclass
class RateSearch:
    """RFC 2544 throughput by binary search (see the module docstring).

    ``next_rate()`` is the rate to offer next (pps; ``math.inf`` asks for the
    sender's full speed), or None when the search is over; ``record(trial)``
    reports a trial at that rate; ``result`` is the best trial without loss
    (None when every trial lost)."""

    max_trials: int
    resolution: float = 0.05
    tolerance: float = 0.0  # fraction of datagrams that may be lost (RFC 2544: none)
    trials: list[Trial] = field(default_factory=list)
    low: float = 0.0
    high: float = math.inf
    _next: float | None = math.inf

    def next_rate(self) -> float | None:
        return self._next if len(self.trials) < self.max_trials else None

    def passed(self, trial: Trial) -> bool:
        return trial.sent > 0 and trial.lost <= self.tolerance * trial.sent

    def record(self, trial: Trial) -> None:
        self.trials.append(trial)
        offered = trial.offered if math.isfinite(trial.offered) else trial.sent_pps
        if self.passed(trial):
            if not math.isfinite(trial.offered):
                self._next = None  # the sender's full speed arrives whole
                return
            self.low = max(self.low, offered)
        else:
            self.high = min(self.high, offered)
        if not math.isfinite(self.high):
            self._next = None
            return
        if len(self.trials) == 1 and not self.passed(trial):
            guess = trial.delivered_pps * 0.95
            self._next = guess if guess > 0 else self.high / 2
            return
        if self.high - self.low <= self.resolution * self.high:
            self._next = None
            return
        self._next = (self.low + self.high) / 2

    @property
    def result(self) -> Trial | None:
        good = [t for t in self.trials if self.passed(t)]
        return max(good, key=lambda t: t.delivered_pps) if good else None


def _bits(number: str, unit: str) -> float:
    return float(number) * _UNITS[unit]


def parse_iperf_tcp(out: str) -> float:
    """bits/s of iperf's last report line; ValueError if there is none."""
    found = re.findall(r"([\d.]+) ([KMG]?)bits/sec", out)
    if not found:
        raise ValueError("no iperf rate in its output")
    return _bits(*found[-1])


def parse_iperf_udp(out: str) -> tuple[int, int, float]:
    """``(lost, total, seconds)``: Lost/Total of iperf's UDP "Server Report" and the
    client's own sending time; ValueError without a report."""
    head, sep, tail = out.partition("Server Report:")
    if not sep:
        raise ValueError("no server report (the server did not answer the FIN)")
    m = re.search(r"0\.0000-([\d.]+) sec.*?\s(\d+)/\s*(\d+) \(", tail)
    if m is None:
        raise ValueError("the server report has no Lost/Total")
    sending = re.findall(r"0\.0000-([\d.]+) sec", head)
    seconds = float(sending[-1]) if sending else float(m.group(1))
    return int(m.group(2)), int(m.group(3)), seconds


def parse_iperf_sent(out: str) -> int:
    """Datagrams the iperf UDP client says it sent."""
    m = re.search(r"Sent (\d+) datagrams", out)
    if m is None:
        raise ValueError("no datagram count in iperf's output")
    return int(m.group(1))


def parse_sockperf(out: str) -> dict[str, float]:
    """sockperf's percentiles (µs): ``p50``, ``p90``, ``p99``, ``avg``, ``dropped``."""
    pct = {float(p): float(v) for p, v in re.findall(r"percentile\s+([\d.]+) =\s+([\d.]+)", out)}
    avg = re.search(r"avg-latency=([\d.]+)", out)
    dropped = re.search(r"# dropped messages = (\d+)", out)
    if avg is None or not pct:
        raise ValueError("no latency figures in sockperf's output")
    return {
        "p50": pct.get(50.0, 0.0),
        "p90": pct.get(90.0, 0.0),
        "p99": pct.get(99.0, 0.0),
        "avg": float(avg.group(1)),
        "dropped": float(dropped.group(1)) if dropped else 0.0,
    }


def parse_ping(out: str) -> list[float]:
    """The RTTs (ms) of ping's reply lines."""
    return [float(ms) for ms in re.findall(r"time[=<]([\d.]+) ms", out)]


@dataclass(frozen=True)
class Goal:
    name: str
    figure: str  # what was measured, as printed
    target: str
    met: bool | None  # None: not measured in this run


def _get(doc: dict[str, Any], *keys: str) -> Any:
    cur: Any = doc
    for k in keys:
        if not isinstance(cur, dict) or k not in cur:
            return None
        cur = cur[k]
    return cur


def goals(fabric: dict[str, Any]) -> list[Goal]:
    """Issue 13's goals, from one fabric's results (:mod:`emunet.control.bench_run`'s
    document): each met, not met, or not measured."""
    out: list[Goal] = []
    tcp = _get(fabric, "paths", "cross-node", "tcp_bps")
    out.append(
        Goal(
            "cross-node TCP goodput",
            f"{tcp / 1e6:.0f} Mbit/s" if tcp else "-",
            "≥ 400 Mbit/s",
            tcp >= 400e6 if tcp else None,
        )
    )
    pps = _get(fabric, "paths", "cross-node", "udp", "1400", "zero_loss_pps")
    bare = _get(fabric, "baseline", "relay", "1", "1400", "zero_loss_pps")
    ratio = pps / bare if pps and bare else None
    out.append(
        Goal(
            "cross-node UDP 1400 B zero-loss",
            f"{pps:.0f} pps = {ratio:.2f}x bare" if ratio is not None else "-",
            "≥ 0.5x bare relay chain",
            ratio >= 0.5 if ratio is not None else None,
        )
    )
    ping = _get(fabric, "paths", "cross-node", "ping_ms", "p50")
    bare_rtt = _get(fabric, "paths", "cross-node", "ping_ms", "bare_paced_p50_us") or _get(
        fabric, "baseline", "pingpong", "paced_p50_us"
    )  # the bare ping-pong measured beside the ping, else the one at the run's start
    r = ping * 1000 / bare_rtt if ping and bare_rtt else None
    out.append(
        Goal(
            "cross-node ping p50",
            f"{ping * 1000:.0f} µs = {r:.2f}x bare" if r is not None else "-",
            "≤ 2x bare ping-pong at ping's pace",
            r <= 2.0 if r is not None else None,
        )
    )
    same = _get(fabric, "paths", "same-node", "ping_ms", "p50")
    out.append(
        Goal(
            "same-node ping RTT",
            f"{same * 1000:.1f} µs" if same is not None else "-",
            "> 0",
            same > 0 if same is not None else None,
        )
    )
    svc = _get(fabric, "services", "ratio")
    out.append(
        Goal(
            "10,000 vs 10 Services, new connection",
            f"{svc:.2f}x" if svc else "-",
            "≤ 1.2x",
            svc <= 1.2 if svc else None,
        )
    )
    return out
