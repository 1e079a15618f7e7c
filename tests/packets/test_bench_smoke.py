"""benchmarks/bench_packets.py keeps running and keeps measuring the right thing.

No timing assertions (the machine is shared): tiny iteration counts, and
checks that each loop does the work its row claims.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from emunet.packets import fastpath, ipv4

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_packets.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_packets", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_baseline_reads_the_same_fields_as_fastpath_peek(bench: ModuleType) -> None:
    frame = bench.sample_frame()
    want = fastpath.peek(frame)
    assert want is not None
    assert bench.parse_emunet(3, frame) == want
    assert bench.parse_baseline(3, frame) == want
    assert bench.parse_per_header(3, frame) == want
    eth, ip, udp = bench.parse_typed(3, frame)
    assert (eth.dst, ip.src.packed, ip.ttl, udp.sport, udp.dport) == (
        want[fastpath.ETH_DST],
        want[fastpath.SRC],
        want[fastpath.TTL],
        want[fastpath.SPORT],
        want[fastpath.DPORT],
    )


@pytest.mark.parametrize("loop", ["ttl_baseline", "ttl_emunet", "ttl_generic", "ttl_recompute"])
def test_every_ttl_loop_leaves_a_valid_decremented_header(bench: ModuleType, loop: str) -> None:
    """Each loop resets TTL 64 and decrements once: the header ends as if built with TTL 63."""
    frame = bench.sample_frame()
    h, payload = ipv4.parse(frame, 14)
    fields = {name: getattr(h, name) for name in h.__dataclass_fields__}
    want = frame[:14] + ipv4.build(ipv4.IPv4Header(**{**fields, "ttl": 63}), payload)
    assert bytes(getattr(bench, loop)(5)) == want


def test_run_and_table(bench: ModuleType) -> None:
    empty, rows = bench.run(iterations=50, repeats=1)
    assert empty > 0
    assert [r.name for r in rows][:2] == ["parse: fastpath.peek", "ttl: ipv4.decrement_ttl"]
    assert all(r.emunet_ns > 0 and r.baseline_ns > 0 for r in rows)
    table = bench.format_table(empty, rows)
    for r in rows:
        assert r.name in table
    assert "ratio" in table


def test_main_prints_the_table(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--iterations", "20", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "fastpath.peek" in out and "ipv4.decrement_ttl" in out and "empty loop" in out
