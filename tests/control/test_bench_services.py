"""The Services benchmark's measurement: tables of different sizes take turns."""

from __future__ import annotations

from emunet.control import bench_services
from emunet.control.bench_services import BLOCK, measure_all, timed


class Recorder:
    """Stands in for a Netfilter: notes which side each packet went through."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def prerouting(self, pkt: bytearray, iface: str, now: float) -> None:
        self.log.append(self.name)

    def forward(self, pkt: bytearray, iface: str, out: str, now: float) -> None:
        pass

    def postrouting(self, pkt: bytearray, iface: str, src: object, now: float) -> None:
        pass


def test_sides_take_turns_block_by_block() -> None:
    log: list[str] = []
    a, b = Recorder("a", log), Recorder("b", log)
    pkts_a = [bytearray(1)] * (2 * BLOCK + 10)
    pkts_b = [bytearray(1)] * (BLOCK + 3)  # a shorter side sits out the later turns
    best = timed([(a, pkts_a), (b, pkts_b)])  # type: ignore[list-item]
    runs: list[tuple[str, int]] = []
    for side in log:
        if runs and runs[-1][0] == side:
            runs[-1] = (side, runs[-1][1] + 1)
        else:
            runs.append((side, 1))
    assert runs == [("a", BLOCK), ("b", BLOCK), ("a", BLOCK), ("b", 3), ("a", 10)]
    assert len(best) == 2 and all(0 < ns < float("inf") for ns in best)


def test_measure_all_gives_each_size_its_figures() -> None:
    figures = measure_all([3, 30], 2 * BLOCK)
    assert len(figures) == 2
    for new_ns, est_ns in figures:
        assert new_ns > 0 and est_ns > 0
    assert bench_services.measure(3, BLOCK)[0] > 0
