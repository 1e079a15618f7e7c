"""emunet bench's decisions: the RFC 2544 search, the tools' output, the goals."""

from __future__ import annotations

import math

import pytest
from emunet.control.bench_plan import (
    PATHS,
    RateSearch,
    Trial,
    goals,
    parse_iperf_sent,
    parse_iperf_tcp,
    parse_iperf_udp,
    parse_ping,
    parse_sockperf,
    percentile,
)


def run_search(capacity: float, sender_max: float, trials: int) -> RateSearch:
    """A link that loses whatever is offered above ``capacity`` pps."""
    search = RateSearch(trials)
    while (rate := search.next_rate()) is not None:
        sent_pps = sender_max if math.isinf(rate) else min(rate, sender_max)
        sent = int(sent_pps)
        lost = max(0, int(sent_pps - capacity))
        search.record(Trial(rate, sent, lost, 1.0))
    return search


def test_search_starts_at_full_speed_and_stops_when_nothing_is_lost() -> None:
    search = run_search(capacity=1e6, sender_max=50_000, trials=8)
    assert len(search.trials) == 1
    assert math.isinf(search.trials[0].offered)
    assert search.result is not None and search.result.delivered_pps == 50_000


def test_search_converges_below_capacity_without_loss() -> None:
    search = run_search(capacity=20_000, sender_max=50_000, trials=10)
    best = search.result
    assert best is not None and best.lost == 0
    assert 0.9 * 20_000 <= best.delivered_pps <= 20_000
    # the second trial guesses from what arrived under overload
    assert search.trials[1].offered == pytest.approx(20_000 * 0.95)


def test_search_is_bounded_by_its_trials() -> None:
    search = run_search(capacity=1_000, sender_max=50_000, trials=3)
    assert len(search.trials) == 3
    assert search.next_rate() is None


def test_search_with_every_trial_lossy_has_no_result() -> None:
    search = RateSearch(4)
    while (rate := search.next_rate()) is not None:
        search.record(Trial(rate, 100, 10, 1.0))
    assert search.result is None


def test_tolerance_accepts_a_little_loss() -> None:
    search = RateSearch(2, tolerance=0.01)
    search.record(Trial(math.inf, 1000, 5, 1.0))
    assert search.result is not None
    assert search.next_rate() is None


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([], 50) == 0.0
    assert percentile([7.0], 99) == 7.0


UDP_CLIENT = """\
[  1] local 10.244.1.2 port 40000 connected with 10.244.2.2 port 5001
[ ID] Interval       Transfer     Bandwidth
[  1] 0.0000-0.4003 sec  2.10 MBytes  44.00 Mbits/sec
[  1] Sent 1500 datagrams
[  1] Server Report:
[ ID] Interval       Transfer     Bandwidth        Jitter   Lost/Total Datagrams
[  1] 0.0000-0.3990 sec  2.00 MBytes  42.00 Mbits/sec    0.050 ms    12/ 1500 (0.8%)
"""


def test_parse_iperf_udp_reads_the_server_report() -> None:
    lost, total, seconds = parse_iperf_udp(UDP_CLIENT)
    assert (lost, total) == (12, 1500)
    assert seconds == pytest.approx(0.4003)  # the client's sending time
    assert parse_iperf_sent(UDP_CLIENT) == 1500


def test_parse_iperf_udp_without_report_fails() -> None:
    with pytest.raises(ValueError, match="server report"):
        parse_iperf_udp(UDP_CLIENT.split("[  1] Server Report:")[0])


def test_parse_iperf_tcp_takes_the_last_rate() -> None:
    out = "[  1] 0.0000-1.0000 sec  40.00 MBytes  335.54 Mbits/sec\n"
    assert parse_iperf_tcp(out) == pytest.approx(335.54e6)
    assert parse_iperf_tcp("1.2 Gbits/sec") == pytest.approx(1.2e9)
    with pytest.raises(ValueError):
        parse_iperf_tcp("connect failed: Connection refused")


def test_parse_sockperf_and_ping() -> None:
    out = (
        "sockperf: ====> avg-latency=120.500 (std-dev=3.000)\n"
        "sockperf: # dropped messages = 2; # duplicated messages = 0; # out-of-order messages = 0\n"
        "sockperf: ---> percentile 99.000 =  300.000\n"
        "sockperf: ---> percentile 90.000 =  200.000\n"
        "sockperf: ---> percentile 50.000 =  100.000\n"
    )
    got = parse_sockperf(out)
    assert (got["p50"], got["p90"], got["p99"], got["dropped"]) == (100.0, 200.0, 300.0, 2.0)
    ping = "64 bytes from 10.244.2.2: icmp_seq=1 ttl=62 time=0.412 ms\n" * 2
    assert parse_ping(ping) == [0.412, 0.412]


def fabric(tcp: float, pps: float, bare: float, ping: float, pong: float) -> dict[str, object]:
    return {
        "paths": {
            "cross-node": {
                "tcp_bps": tcp,
                "udp": {"1400": {"zero_loss_pps": pps}},
                "ping_ms": {"p50": ping},
            },
            "same-node": {"ping_ms": {"p50": 0.02}},
        },
        "baseline": {
            "relay": {"1": {"1400": {"zero_loss_pps": bare}}},
            "pingpong": {"paced_p50_us": pong},
        },
        "services": {"ratio": 1.1},
    }


def test_goals_met_and_not_met() -> None:
    met = goals(fabric(450e6, 30_000, 50_000, 0.2, 150))
    assert [g.met for g in met] == [True, True, True, True, True]
    missed = goals(fabric(300e6, 10_000, 50_000, 0.5, 150))
    assert [g.met for g in missed][:3] == [False, False, False]
    assert "0.20x bare" in missed[1].figure


def test_the_ping_goal_takes_the_bare_ping_pong_measured_beside_the_ping() -> None:
    doc = fabric(450e6, 30_000, 50_000, 0.3, 100)  # 3x the ping-pong at the run's start
    assert goals(doc)[2].met is False
    doc["paths"]["cross-node"]["ping_ms"]["bare_paced_p50_us"] = 200.0  # type: ignore[index]
    beside = goals(doc)[2]
    assert beside.met is True and "1.50x bare" in beside.figure


def test_goals_not_measured() -> None:
    assert all(g.met is None for g in goals({"paths": {}}))


def test_every_path_is_named_once() -> None:
    keys = [p.key for p in PATHS]
    assert len(keys) == len(set(keys)) == 6
