"""bench_dataplane's per-frame cost of this tree against an earlier commit, in one run.

The earlier commit is checked out in a temporary git worktree (pure Python, as
it was shipped then); this tree runs as installed (the compiled core where
``make setup`` built it) and as pure Python (a copy of its sources without the
extensions). Runs are interleaved (base, installed, pure, base, ...) so a noisy
machine affects all three alike; the medians and the ratios to the base are
printed.

    python benchmarks/bench_ab.py [REV] [--runs N]     (REV: default HEAD~1)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"(\S+-\d+)\s+(\d+)\s+\d+\s+[\d.]+")


def run_bench(tree: Path, pythonpath: Path) -> dict[str, int]:
    """One run of ``bench_dataplane.py --quick`` of ``tree`` with ``emunet`` from ``pythonpath``."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    out = subprocess.run(
        [sys.executable, str(tree / "benchmarks/bench_dataplane.py"), "--no-profile", "--quick"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    return {m.group(1): int(m.group(2)) for m in map(LINE.match, out.splitlines()) if m}


def pure_copy(dest: Path) -> None:
    """This tree's ``emunet`` sources without compiled extensions."""
    with tarfile.open(dest / "src.tar", "w") as tar:
        tar.add(
            ROOT / "emunet",
            arcname="emunet",
            filter=lambda t: None if t.name.endswith(".so") or "__pycache__" in t.name else t,
        )
    with tarfile.open(dest / "src.tar") as tar:
        tar.extractall(dest / "pure", filter="data")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rev", nargs="?", default="HEAD~1", help="the earlier commit (default HEAD~1)")
    ap.add_argument("--runs", type=int, default=5, help="interleaved rounds (1-50, default 5)")
    args = ap.parse_args()
    if not 1 <= args.runs <= 50:
        ap.error("--runs must be 1-50")
    with tempfile.TemporaryDirectory(prefix="emunet-ab-") as tmp:
        base = Path(tmp) / "base"
        r = subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.rev],
            capture_output=True,
            text=True,
        )
        if r.returncode:
            sys.exit(f"bench_ab: cannot check out {args.rev}: {r.stderr.strip().splitlines()[-1]}")
        try:
            pure_copy(Path(tmp))
            variants = {
                f"base {args.rev} (pure)": (base, base),
                "this tree, installed": (ROOT, ROOT),
                "this tree, pure": (ROOT, Path(tmp) / "pure"),
            }
            results: dict[str, dict[str, list[int]]] = {name: {} for name in variants}
            for i in range(args.runs):
                print(f"round {i + 1}/{args.runs}", file=sys.stderr)
                for name, (tree, path) in variants.items():
                    for path_name, ns in run_bench(tree, path).items():
                        results[name].setdefault(path_name, []).append(ns)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)])
            shutil.rmtree(base, ignore_errors=True)
    names = list(variants)
    heads = "".join(f"{n:>26}" for n in names)
    print(f"{'ns/frame (median)':<20}{heads}  installed/base  pure/base")
    for path_name in results[names[0]]:
        med = [statistics.median(results[n][path_name]) for n in names]
        cols = "".join(f"{m:>26.0f}" for m in med)
        print(f"{path_name:<20}{cols}  {med[1] / med[0]:>14.2f}  {med[2] / med[0]:>9.2f}")


if __name__ == "__main__":
    main()
