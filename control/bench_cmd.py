"""``emunet bench``: what each path of the fabric costs, beside a bare baseline.

Order of work: the baseline (bare uvloop relay chains of 1 and 2 hops, a bare
ping-pong), the in-process Services measure, then every path of every fabric
(:mod:`emunet.control.bench_run`). Which fabrics: the one ``--fabric`` /
``--etcd`` names; else the running local fabric (or, when none runs, a
temporary one this command starts and stops) and, when Docker runs one, the
compose fabric too. Its objects (``bench-*``) are deleted afterwards.

``--quick`` keeps every path and measure with shorter trials (under two
minutes on the local fabric); the full run also writes ``bench.json``,
``bench.md`` (the tables) and ``bench.png`` (``--save DIR``, default
``./emunet-bench``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import platform
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from emunet.control import bench_baseline, bench_services
from emunet.control.args import Output
from emunet.control.bench_plan import PATHS, PING_INTERVAL, SIZES, goals
from emunet.control.bench_report import markdown, print_report, write_png
from emunet.control.bench_run import FULL, QUICK, FabricBench, Settings
from emunet.control.common import fail, handled, run, settings, state_dir
from emunet.control.fabric import FabricTarget, discover_compose, select_target
from emunet.control.local import LocalFabric
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from emunet.errors import EmunetError

__all__ = ["bench"]


def _steps(s: Settings, fabrics: int) -> int:
    """Progress units: one per trial or measurement."""
    per_path = 1 + len(SIZES) * s.trials + 2 + s.ping_blocks
    baseline = 2 * len(SIZES) * s.trials + 1
    return baseline + 1 + fabrics * (1 + len(PATHS) * per_path)


async def _baseline(s: Settings, step: Callable[[str], None]) -> dict[str, Any]:
    relay: dict[str, Any] = {}
    for hops in sorted({max(1, p.hops) for p in PATHS}):
        with bench_baseline.Chain(hops) as chain:
            sizes: dict[str, Any] = {}
            for size in SIZES:
                last = None
                async for search in bench_baseline.relay_search(
                    chain, size, s.trial_seconds, s.trials
                ):
                    step(f"bare relay chain, {hops} hop(s): {size} B")
                    last = search
                best = last.result if last else None
                sizes[str(size)] = {
                    "zero_loss_pps": best.delivered_pps if best else 0.0,
                    "trials": [asdict(t) for t in (last.trials if last else [])],
                }
            relay[str(hops)] = sizes
    step("bare ping-pong")
    pingpong = await bench_baseline.ping_pong(max(1.0, s.latency_seconds))
    paced = await bench_baseline.ping_pong(s.pings * PING_INTERVAL, interval=PING_INTERVAL)
    del pingpong["rtts_us"]
    pingpong["paced_p50_us"] = paced["p50_us"]
    pingpong["paced_interval"] = PING_INTERVAL
    return {"relay": relay, "pingpong": pingpong}


def _fabrics() -> list[tuple[str, FabricTarget | None, list[str]]]:
    """``(kind, target or None to start a temporary local fabric, CLI options)``."""
    chosen = settings.get("fabric")
    etcd = settings.get("etcd")
    kind = chosen.value if chosen is not None else None
    out: list[tuple[str, FabricTarget | None, list[str]]] = []
    if etcd or kind == "compose":
        t = select_target(fabric=kind, etcd=etcd, state_dir=state_dir())
        opts = ["--fabric", "compose"] if kind == "compose" else ["--etcd", t.etcd]
        return [(t.kind.value, t, opts)]
    _state, alive = LocalFabric(state_dir()).status()
    if any(alive.values()):
        t = select_target(fabric="local", state_dir=state_dir())
        out.append(("local", t, ["--fabric", "local", "--state-dir", str(state_dir())]))
    else:
        out.append(("local", None, []))
    if kind is None and discover_compose().projects:
        t = select_target(fabric="compose")
        out.append(("compose", t, ["--fabric", "compose"]))
    return out


async def _one_fabric(
    kind: str,
    target: FabricTarget | None,
    opts: list[str],
    s: Settings,
    step: Callable[[str], None],
) -> dict[str, Any]:
    temp: tempfile.TemporaryDirectory[str] | None = None
    local: LocalFabric | None = None
    bench: FabricBench | None = None
    try:
        if target is None:  # stopped in the finally below, even when interrupted starting
            temp = tempfile.TemporaryDirectory(prefix="emunet-bench-")
            local = LocalFabric(Path(temp.name) / "state")
            step("starting a temporary local fabric (etcd, 3 agents, the internet)")
            await local.up(3, lambda _text: None)
            target = select_target(fabric="local", state_dir=local.state_dir)
            opts = ["--fabric", "local", "--state-dir", str(local.state_dir)]
        bench = FabricBench(target, opts, s, step)
        await bench.prepare()
        paths = {p.key: await bench.run_path(p) for p in PATHS}
    finally:
        with contextlib.suppress(Exception):
            if local is not None:
                local.down()
            elif bench is not None:
                await bench.cleanup()
        if temp is not None:
            temp.cleanup()
    return {"kind": kind, "description": target.description, "paths": paths}


async def _bench(s: Settings, progress: Progress, task: Any) -> dict[str, Any]:
    # SIGTERM stops the run as Ctrl-C does: the finally blocks delete the bench's
    # objects and stop a temporary fabric (its processes run in their own sessions)
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)

    lines = not progress.console.is_terminal  # a log, not a terminal: one line per step

    def step(text: str) -> None:
        progress.update(task, description=text, advance=1)
        if lines:
            progress.console.print(f"... {text}", highlight=False)

    fabrics = _fabrics()
    progress.update(task, total=_steps(s, len(fabrics)))
    doc: dict[str, Any] = {
        "command": " ".join(["emunet", *sys.argv[1:]]),
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "compiled": _compiled(),
        },
        "quick": s.quick,
    }
    doc["baseline"] = await _baseline(s, step)
    step("Services: 10 vs 10,000 (in process)")
    # the best of several rounds: one alone ranged 1.13-1.30x within minutes (2026-12-03)
    doc["services"] = bench_services.ratio(rounds=3 if s.quick else 5)
    doc["fabrics"] = []
    for kind, target, opts in fabrics:
        fabric = await _one_fabric(kind, target, opts, s, step)
        fabric["baseline"] = doc["baseline"]
        fabric["services"] = doc["services"]
        fabric["goals"] = [asdict(g) for g in goals(fabric)]
        del fabric["baseline"], fabric["services"]
        doc["fabrics"].append(fabric)
    return doc


def _compiled() -> bool:
    from emunet.dataplane import netns

    return str(getattr(netns, "__file__", "")).endswith(".so")


@handled
def bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="shorter trials: every path in under two minutes")
    ] = False,
    output: Annotated[
        Output | None, typer.Option("--output", "-o", help="json: the document, not tables")
    ] = None,
    save: Annotated[
        Path | None,
        typer.Option(
            "--save",
            help="directory for bench.json and bench.png (default for a full run: ./emunet-bench)",
        ),
    ] = None,
) -> None:
    """Measure every path of the fabric: UDP zero-loss rates (64/512/1400 B), TCP
    goodput, latency p50/p90/p99, CPU per packet, beside a bare uvloop baseline."""
    if output not in (None, Output.JSON):
        fail("-o: bench prints json or tables")
    s = QUICK if quick else FULL
    err = Console(stderr=True)
    with Progress(
        TextColumn("{task.description:<48}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task("measuring the bare baseline", total=None)
        try:
            doc = run(_bench(s, progress, task))
        except asyncio.CancelledError:
            typer.echo("terminated", err=True)
            raise typer.Exit(143) from None
        except (TimeoutError, OSError, RuntimeError) as exc:
            raise EmunetError(f"bench failed: {exc}") from None
    if output == Output.JSON:
        typer.echo(json.dumps(doc, indent=2))
    else:
        print_report(doc, Console(width=None if sys.stdout.isatty() else 200))
    folder = save if save is not None else (None if quick else Path("emunet-bench"))
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "bench.json").write_text(json.dumps(doc, indent=2) + "\n")
        (folder / "bench.md").write_text(markdown(doc))
        drawn = write_png(doc, folder / "bench.png")
        note = "" if drawn else " (no PNG: matplotlib is not installed; pip install matplotlib)"
        extra = ", bench.md and bench.png" if drawn else f" and bench.md{note}"
        typer.echo(f"wrote {folder / 'bench.json'}{extra}", err=True)
