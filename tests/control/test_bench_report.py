"""emunet bench's output from a document: the tables, Markdown and the PNG."""

from __future__ import annotations

import io
from dataclasses import asdict
from pathlib import Path
from typing import Any

from emunet.control.bench_plan import PATHS, SIZES, goals
from emunet.control.bench_report import markdown, print_report, write_png
from rich.console import Console


def document() -> dict[str, Any]:
    paths = {}
    for i, p in enumerate(PATHS):
        paths[p.key] = {
            "title": p.title,
            "hops": p.hops,
            "tcp_bps": 100e6 * (i + 1),
            "udp": {
                str(size): {
                    "zero_loss_pps": 10_000.0 * (i + 1),
                    "zero_loss_bps": 10_000.0 * (i + 1) * size * 8,
                    "max_delivered_pps": 12_000.0,
                    "trials": [
                        {"offered_pps": None, "sent_pps": 20_000.0, "delivered_pps": 12_000.0},
                        {"offered_pps": 11_400.0, "sent_pps": 11_000.0, "delivered_pps": 11_000.0},
                    ],
                    "cpu_us_per_packet": {"node1": 30.0, "node2": 25.0, "node3": 0.0},
                }
                for size in SIZES
            },
            "latency": {
                "light": {"p50": 300.0, "p90": 400.0, "p99": 900.0},
                "heavy": {"p50": 800.0, "p90": 1500.0, "p99": 4000.0},
            },
        }
        if p.ping:
            paths[p.key]["ping_ms"] = {"p50": 0.25, "p90": 0.3, "p99": 0.5}
    paths["internet"]["ping_ms"]["bare_paced_p50_us"] = 125.0  # measured beside its ping
    doc: dict[str, Any] = {
        "command": "emunet bench",
        "when": "2026-12-01T00:00:00+00:00",
        "machine": {"cpus": 2, "python": "3.11.7", "compiled": True},
        "quick": False,
        "baseline": {
            "relay": {h: {str(s): {"zero_loss_pps": 40_000.0} for s in SIZES} for h in ("1", "2")},
            "pingpong": {"p50_us": 60.0, "p90_us": 70.0, "p99_us": 90.0, "paced_p50_us": 100.0},
        },
        "services": {
            "ratio": 1.1,
            "new_ns_low": 2000.0,
            "new_ns_high": 2200.0,
            "services_low": 10,
            "services_high": 10_000,
        },
    }
    fabric = {"kind": "local", "paths": paths}
    fabric["goals"] = [asdict(g) for g in goals({**fabric, **doc})]
    doc["fabrics"] = [fabric]
    return doc


def test_tables_show_figures_ratios_and_goals() -> None:
    buf = io.StringIO()
    print_report(document(), Console(file=buf, width=300))
    text = buf.getvalue()
    assert "pod → pod, other node" in text
    assert "20.0 (0.50)" in text  # kpps, ratio to the 1-hop chain
    assert "node1:30 node2:25" in text  # idle nodes left out
    assert "bare relay chain, 2 hop(s)" in text
    assert "250.0" in text and "2.50 (of 100)" in text  # ping p50 µs, x bare ping-pong
    assert "2.00 (of 125)" in text  # the internet path's, against the ping-pong beside its ping
    assert "cross-node TCP goodput" in text and "NOT MET" in text
    assert "(1.10x)" in text


def test_markdown_has_the_command_and_every_path() -> None:
    md = markdown(document())
    assert md.startswith("`emunet bench` (2026-12-01")
    for p in PATHS:
        assert f"| {p.title} |" in md
    assert "[green]" not in md and "| met |" in md


def test_png_is_written(tmp_path: Path) -> None:
    out = tmp_path / "bench.png"
    assert write_png(document(), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
