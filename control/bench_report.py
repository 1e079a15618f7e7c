"""``emunet bench``'s output: rich tables, the JSON document and the PNG plot.

The document (what ``-o json`` prints and ``--save`` writes as ``bench.json``)::

    {"command": ..., "when": ..., "machine": {...}, "quick": bool,
     "baseline": {"relay": {"<hops>": {"<size>": {"zero_loss_pps", "trials"}}},
                  "pingpong": {"p50_us", "p90_us", "p99_us", "paced_p50_us", "paced_interval"}},
     "services": {"ratio", "new_ns_low", ...},
     "fabrics": [{"kind", "paths": {"<path>": {"title", "hops", "tcp_bps",
                  "udp": {"<size>": {"zero_loss_pps", "cpu_us_per_packet", "trials"}},
                  "latency": {"light"|"heavy": {"p50", "p90", "p99"}},
                  "ping_ms": {"p50", "p90", "p99", "min", "replies", "bare_paced_p50_us"}}},
                  "goals": [{"name", "figure", "target", "met"}]}]}

The plot has one row per fabric: offered against delivered packets/s of every
UDP trial at 1400 B (the loss is the distance below the diagonal), and the
latency percentiles of each path at light and heavy load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emunet.control.bench_plan import SIZES
from rich.console import Console
from rich.table import Table

__all__ = ["markdown", "print_report", "write_png"]


def _baseline_pps(doc: dict[str, Any], hops: int, size: int) -> float:
    relay = doc.get("baseline", {}).get("relay", {})
    entry = relay.get(str(max(1, hops)), {}).get(str(size), {})
    return float(entry.get("zero_loss_pps", 0.0))


def _lat(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "-"
    return f"{entry['p50']:.0f}/{entry['p90']:.0f}/{entry['p99']:.0f}"


def throughput_table(doc: dict[str, Any], fabric: dict[str, Any]) -> Table:
    t = Table(title=f"{fabric['kind']} fabric: throughput (ratio: x the bare relay chain)")
    t.add_column("path")
    t.add_column("hops", justify="right")
    t.add_column("TCP Mbit/s", justify="right")
    for size in SIZES:
        t.add_column(f"UDP {size} B kpps (ratio)", justify="right")
    t.add_column("Mbit/s @1400", justify="right")
    t.add_column("CPU µs/pkt @1400", justify="right")
    for p in fabric["paths"].values():
        row = [p["title"], str(p["hops"]), f"{p['tcp_bps'] / 1e6:.0f}"]
        for size in SIZES:
            u = p["udp"][str(size)]
            bare = _baseline_pps(doc, p["hops"], size)
            ratio = f" ({u['zero_loss_pps'] / bare:.2f})" if bare else ""
            row.append(f"{u['zero_loss_pps'] / 1e3:.1f}{ratio}")
        u1400 = p["udp"]["1400"]
        row.append(f"{u1400['zero_loss_bps'] / 1e6:.0f}")
        cpu = u1400.get("cpu_us_per_packet") or {}
        busy = {k: v for k, v in cpu.items() if v > 0.05}
        row.append(" ".join(f"{k}:{v:.0f}" for k, v in sorted(busy.items())) or "-")
        t.add_row(*row)
    for hops in sorted(doc.get("baseline", {}).get("relay", {}), key=int):
        row = [f"bare relay chain, {hops} hop(s)", hops, "-"]
        row += [f"{_baseline_pps(doc, int(hops), s) / 1e3:.1f}" for s in SIZES]
        row += [f"{_baseline_pps(doc, int(hops), 1400) * 1400 * 8 / 1e6:.0f}", "-"]
        t.add_row(*row, style="dim")
    return t


def latency_table(doc: dict[str, Any], fabric: dict[str, Any]) -> Table:
    t = Table(title=f"{fabric['kind']} fabric: request/response latency, µs p50/p90/p99")
    t.add_column("path")
    t.add_column("light load", justify="right")
    t.add_column("heavy load", justify="right")
    t.add_column("ping p50 µs", justify="right")
    t.add_column("x bare at ping's pace (of its µs)", justify="right")
    bare = doc.get("baseline", {}).get("pingpong", {})
    for p in fabric["paths"].values():
        ping = p.get("ping_ms")
        p50 = ping["p50"] * 1000 if ping else None
        paced = (ping or {}).get("bare_paced_p50_us") or bare.get("paced_p50_us")
        ratio = f"{p50 / paced:.2f} (of {paced:.0f})" if p50 and paced else "-"
        t.add_row(
            p["title"],
            _lat(p["latency"].get("light")),
            _lat(p["latency"].get("heavy")),
            f"{p50:.1f}" if p50 is not None else "-",
            ratio,
        )
    if bare:
        lat = {"p50": bare["p50_us"], "p90": bare["p90_us"], "p99": bare["p99_us"]}
        paced = bare.get("paced_p50_us", 0.0)
        t.add_row("bare ping-pong (2 processes)", _lat(lat), "-", f"{paced:.1f}", "1.00")
    return t


def goals_table(fabric: dict[str, Any]) -> Table:
    t = Table(title=f"{fabric['kind']} fabric: goals (issue 13)")
    for col in ("goal", "measured", "target", ""):
        t.add_column(col)
    for g in fabric["goals"]:
        met = g["met"]
        verdict = "not measured" if met is None else ("met" if met else "NOT MET")
        style = "green" if met else ("red" if met is False else "dim")
        t.add_row(g["name"], g["figure"], g["target"], f"[{style}]{verdict}[/{style}]")
    return t


def print_report(doc: dict[str, Any], console: Console) -> None:
    for fabric in doc["fabrics"]:
        console.print(throughput_table(doc, fabric))
        console.print(latency_table(doc, fabric))
        console.print(goals_table(fabric))
    svc = doc.get("services")
    if svc:
        console.print(
            f"Services (in process): new connection {svc['new_ns_low']:.0f} ns/packet with "
            f"{svc['services_low']}, {svc['new_ns_high']:.0f} with {svc['services_high']:,} "
            f"({svc['ratio']:.2f}x)"
        )


def _md_rows(table: Table) -> list[str]:
    cells = [list(c.cells) for c in table.columns]
    head = [str(c.header) for c in table.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in zip(*cells, strict=True):
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return lines


def markdown(doc: dict[str, Any]) -> str:
    """The tables as Markdown (``bench.md``: what the README shows), with the command."""
    out = [
        f"`{doc['command']}` ({doc['when']}, {doc['machine']['cpus']} CPUs, Python "
        f"{doc['machine']['python']}, core {'compiled' if doc['machine']['compiled'] else 'pure'})",
        "",
    ]
    for fabric in doc["fabrics"]:
        for table in (
            throughput_table(doc, fabric),
            latency_table(doc, fabric),
            goals_table(fabric),
        ):
            out += [f"**{table.title}**", "", *_md_rows(table), ""]
    text = "\n".join(out)
    for style in ("green", "red", "dim"):
        text = text.replace(f"[{style}]", "").replace(f"[/{style}]", "")
    return text


def write_png(doc: dict[str, Any], path: Path) -> bool:
    """Draw the plot; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fabrics = doc["fabrics"]
    fig, axes = plt.subplots(len(fabrics), 2, figsize=(13, 4.8 * len(fabrics)), squeeze=False)
    for row, fabric in zip(axes, fabrics, strict=True):
        rate_ax, lat_ax = row
        top = 0.0
        for p in fabric["paths"].values():
            trials = sorted(p["udp"]["1400"]["trials"], key=lambda t: t["sent_pps"])
            xs = [t["sent_pps"] / 1e3 for t in trials]
            ys = [t["delivered_pps"] / 1e3 for t in trials]
            top = max(top, *xs, 0.0)
            rate_ax.plot(xs, ys, marker="o", label=p["title"])
        rate_ax.plot([0, top], [0, top], color="grey", linestyle=":", label="no loss")
        rate_ax.set_title(f"{fabric['kind']}: UDP 1400 B, offered vs delivered")
        rate_ax.set_xlabel("offered (sent) kpps")
        rate_ax.set_ylabel("delivered kpps")
        rate_ax.legend(fontsize=7)
        names = [p["title"] for p in fabric["paths"].values()]
        width = 0.13
        for j, (load, pct) in enumerate(
            (ld, pc) for ld in ("light", "heavy") for pc in ("p50", "p90", "p99")
        ):
            vals = [(p["latency"].get(load) or {}).get(pct, 0.0) for p in fabric["paths"].values()]
            xs = [i + (j - 2.5) * width for i in range(len(names))]
            lat_ax.bar(xs, vals, width, label=f"{load} {pct}")
        lat_ax.set_xticks(range(len(names)), names, rotation=20, fontsize=7, ha="right")
        lat_ax.set_ylabel("request/response µs")
        lat_ax.set_yscale("log")
        lat_ax.set_title(f"{fabric['kind']}: latency percentiles")
        lat_ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
