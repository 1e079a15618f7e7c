"""pod-shell's sockperf: its options and its report."""

from __future__ import annotations

import pytest
from emunet.nodes.shell_env import UsageError
from emunet.nodes.shell_sockperf import _options, latency_report, percentile


def test_options_in_either_form() -> None:
    opts, full = _options(["sockperf", "ping-pong", "-i", "10.0.0.1", "--port=7", "--full-rtt"])
    assert opts == {"-i": "10.0.0.1", "-p": "7"}
    assert full
    opts, full = _options(["sockperf", "pp", "--mps", "100", "-t", "2", "-m", "64"])
    assert opts == {"--mps": "100", "-t": "2", "-m": "64"}
    assert not full


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sockperf"], "usage"),
        (["sockperf", "server"], "usage"),
        (["sockperf", "pp", "--bogus"], "unrecognized option '--bogus'"),
        (["sockperf", "pp", "-i"], "requires an argument"),
    ],
)
def test_bad_options_are_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        _options(argv)


def test_report_has_sockperf_percentiles() -> None:
    lines = latency_report([float(v) for v in range(1, 1001)], dropped=3)
    text = "\n".join(lines)
    assert "avg-latency=500.500" in text
    assert "# dropped messages = 3" in text
    assert "percentile 50.000 =  500.000" in text
    assert "percentile 99.000 =  990.000" in text
    assert "<MAX> observation = 1000.000" in text
    assert "<MIN> observation =    1.000" in text
    assert percentile([], 50) == 0.0


def test_report_without_observations() -> None:
    text = "\n".join(latency_report([], dropped=5))
    assert "Total 0 observations" in text
    assert "percentile 50" not in text
