"""benchmarks/bench_ab_fabric.py's pure parts: iperf's figure, medians, ratio and goals."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest


def _load() -> ModuleType:
    path = Path(__file__).parents[1] / "benchmarks" / "bench_ab_fabric.py"
    spec = importlib.util.spec_from_file_location("bench_ab_fabric", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


bench = _load()

# pod-shell's iperf -c output, as this tree and dcf48cf print it
IPERF = """------------------------------------------------------------
Client connecting to 10.244.99.2, TCP port 5001
TCP window size:  256 KByte (default)
------------------------------------------------------------
[  1] local 10.244.73.2 port 40001 connected with 10.244.99.2 port 5001
[ ID] Interval       Transfer     Bandwidth
[  1] 0.0000-2.0147 sec  20.38 MBytes  {rate}
"""


@pytest.mark.parametrize(
    ("rate", "bits"),
    [
        ("84.83 Mbits/sec", 84.83e6),
        ("1.25 Gbits/sec", 1.25e9),
        ("512.00 Kbits/sec", 512e3),
        ("900 bits/sec", 900.0),
    ],
)
def test_parse_goodput_reads_the_summary_line(rate: str, bits: float) -> None:
    assert bench.parse_goodput(IPERF.format(rate=rate)) == pytest.approx(bits)


def test_parse_goodput_takes_the_last_rate() -> None:
    out = (
        "[  1] 0.0-1.0 sec  1 MBytes  8.00 Mbits/sec\n[  1] 0.0-2.0 sec  3 MBytes  12.00 Mbits/sec"
    )
    assert bench.parse_goodput(out) == pytest.approx(12e6)


@pytest.mark.parametrize("out", ["", "connect failed: Connection refused", IPERF[:120]])
def test_parse_goodput_without_a_figure_is_a_value_error(out: str) -> None:
    with pytest.raises(ValueError, match="no iperf rate"):
        bench.parse_goodput(out)


@pytest.mark.parametrize(
    ("this", "base", "median_this", "ratio", "bits_met", "factor_met"),
    [
        ([450e6, 410e6, 500e6], [120e6, 150e6, 100e6], 450e6, 3.75, True, True),
        ([450e6, 410e6, 500e6], [160e6, 150e6, 170e6], 450e6, 2.8125, True, False),
        ([90e6, 80e6, 85e6], [20e6, 30e6, 25e6], 85e6, 3.4, False, True),
        ([88.6e6], [77.0e6], 88.6e6, 88.6 / 77.0, False, False),
        ([400e6, 400e6], [100e6, 200e6], 400e6, 400 / 150, True, False),  # even count
        ([400e6], [0.0], 400e6, float("inf"), True, True),
    ],
)
def test_summarize_medians_ratio_and_goals(
    this: list[float],
    base: list[float],
    median_this: float,
    ratio: float,
    bits_met: bool,
    factor_met: bool,
) -> None:
    s = bench.summarize(this, base)
    assert s.median_this == pytest.approx(median_this)
    assert s.ratio == pytest.approx(ratio)
    assert (s.bits_met, s.factor_met) == (bits_met, factor_met)


def test_summarize_goals_are_inclusive_and_adjustable() -> None:
    assert bench.summarize([300e6], [100e6]).factor_met
    s = bench.summarize([300e6], [100e6], goal_bits=300e6, goal_factor=3.5)
    assert (s.bits_met, s.factor_met) == (True, False)


def test_summarize_needs_both_sides() -> None:
    with pytest.raises(ValueError):
        bench.summarize([], [1.0])


def test_report_prints_rounds_medians_ratio_and_goals() -> None:
    text = bench.report(bench.summarize([90e6, 80e6], [30e6, 20e6]), "this (compiled)", "dcf48cf")
    lines = text.splitlines()
    assert lines[0].split() == ["Mbit/s", "this", "(compiled)", "dcf48cf"]
    assert lines[1].split() == ["round", "1", "90.0", "30.0"]
    assert lines[3].split() == ["median", "85.0", "25.0"]
    assert "ratio this/base: 3.40x" in text
    assert "goal >= 400 Mbit/s: NOT met (85.0)" in text
    assert "goal >= 3x base: met (3.40x)" in text
