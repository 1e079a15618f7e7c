"""iperf -u's accounting and arguments, without a fabric."""

from __future__ import annotations

import pytest
from emunet.nodes.iperf_udp import UdpStats, parse_rate, report_line
from emunet.nodes.shell_env import UsageError


@pytest.mark.parametrize(
    ("text", "bits"),
    [
        ("1M", 1_000_000),
        ("10m", 10_000_000),
        ("500k", 500_000),
        ("1.5G", 1_500_000_000),
        ("64", 64),
    ],
)
def test_rates_take_iperfs_suffixes(text: str, bits: int) -> None:
    assert parse_rate(text) == bits


@pytest.mark.parametrize("text", ["", "M", "fast", "inf", "nan", "-1M", "0", "1e400", "11G"])
def test_absurd_rates_are_one_line_errors(text: str) -> None:
    with pytest.raises(UsageError, match="invalid argument for -b"):
        parse_rate(text)


def test_gaps_are_lost_until_they_arrive_late() -> None:
    s = UdpStats(0.0)
    for seq in (0, 1, 4, 5):  # 2 and 3 missing
        s.received(seq, sent=seq * 0.01, size=100, now=seq * 0.01 + 0.002)
    assert (s.datagrams, s.total, s.lost, s.out_of_order, s.bytes) == (4, 6, 2, 0, 400)
    s.received(2, sent=0.02, size=100, now=0.07)  # late: out of order, no longer lost
    assert (s.datagrams, s.lost, s.out_of_order) == (5, 1, 1)


def test_jitter_is_rfc3550s_running_mean_of_transit_differences() -> None:
    s = UdpStats(0.0)
    # a constant clock offset (1000 s) cancels; transit times 2, 4, 2 ms
    s.received(0, sent=0.000, size=10, now=1000.002)
    assert s.jitter == 0.0
    s.received(1, sent=0.010, size=10, now=1000.014)
    assert s.jitter == pytest.approx(0.002 / 16)
    s.received(2, sent=0.020, size=10, now=1000.022)
    j = 0.002 / 16
    assert s.jitter == pytest.approx(j + (0.002 - j) / 16)


def test_the_report_line_reads_as_iperfs() -> None:
    line = report_line(1, 10.0, 1_310_720, 0.000017, 3, 892)
    assert (
        line
        == "[  1] 0.0000-10.0000 sec  1.25 MBytes  1.05 Mbits/sec    0.017 ms     3/  892 (0.34%)"
    )
