"""Cross-node pod -> pod TCP goodput of this tree against an earlier commit, interleaved.

Each measurement starts its own local fabric (``emunet up --local --nodes 3``,
its own ``EMUNET_STATE`` temp dir), runs a client pod on node1 and a ``sink``
pod on node2, and reads pod-shell's ``iperf -c SINK_IP -t S`` (the bytes the
sink acknowledged over the time until it did: goodput), as
``benchmarks/bench_fabric.py`` does for its "pod->pod other node" path; then it
stops the fabric. Rounds alternate this tree and REV (this, REV, this, REV...)
so a noisy machine affects both alike; the medians, their ratio and the goals
of issue 13 (>= 400 Mbit/s; >= 3x REV) are printed.

This tree runs as installed in the interpreter that runs this script (the
compiled core after ``make setup``). REV runs its own CLI and pod-shell, pure
Python as it was then: its sources come from ``git archive`` into
``build/ab/<commit>/src`` with a venv beside them (``pip install -e``, built
once per commit and reused). Both fabrics bind 127.0.0.11-13, so the whole
measurement holds ``flock /tmp/emunet-fabric.lock``.

    python benchmarks/bench_ab_fabric.py [REV] [--rounds N] [--seconds S] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import io
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
LOCK_PATH = Path("/tmp/emunet-fabric.lock")
GOAL_BITS = 400e6  # issue 13, acceptance 2: cross-node goodput on this machine kind
GOAL_FACTOR = 3.0  # ... and at least 3x the base commit's, measured in the same run
_RATE = re.compile(r"([\d.]+) ([KMG]?)bits/sec")
_SCALE = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9}
# the environment that would point a CLI at some other fabric or other sources
_FOREIGN_ENV = ("EMUNET_ETCD", "EMUNET_STATE", "EMUNET_COMPOSE_PROJECT", "PYTHONPATH")


class BenchError(Exception):
    """Something this benchmark needs is missing or failed: one line for the user."""


# -- pure helpers (tests/test_bench_ab_fabric.py) --------------------------------


def parse_goodput(out: str) -> float:
    """Bits/s of iperf's summary line (the last rate in ``out``)."""
    found = _RATE.findall(out)
    if not found:
        raise ValueError(f"no iperf rate in {out.strip()[-200:]!r}")
    value, prefix = found[-1]
    return float(value) * _SCALE[prefix]


@dataclass(frozen=True, slots=True)
class Summary:
    """Medians of both sides, their ratio and whether each goal is met."""

    this: tuple[float, ...]
    base: tuple[float, ...]
    median_this: float
    median_base: float
    ratio: float
    goal_bits: float
    goal_factor: float
    bits_met: bool
    factor_met: bool


def summarize(
    this: Sequence[float],
    base: Sequence[float],
    goal_bits: float = GOAL_BITS,
    goal_factor: float = GOAL_FACTOR,
) -> Summary:
    if not this or not base:
        raise ValueError("both sides need at least one figure")
    m_this, m_base = statistics.median(this), statistics.median(base)
    ratio = m_this / m_base if m_base > 0 else float("inf")
    return Summary(
        tuple(this),
        tuple(base),
        m_this,
        m_base,
        ratio,
        goal_bits,
        goal_factor,
        m_this >= goal_bits,
        ratio >= goal_factor,
    )


def report(summary: Summary, this_name: str, base_name: str) -> str:
    """The table of rounds, the medians, the ratio and the goals, as printed."""
    width = max(len(this_name), len(base_name), 10) + 2
    lines = [f"{'Mbit/s':<10}{this_name:>{width}}{base_name:>{width}}"]
    for i, (a, b) in enumerate(zip(summary.this, summary.base, strict=True), start=1):
        lines.append(f"{f'round {i}':<10}{a / 1e6:>{width}.1f}{b / 1e6:>{width}.1f}")
    m_this, m_base = summary.median_this / 1e6, summary.median_base / 1e6
    lines.append(f"{'median':<10}{m_this:>{width}.1f}{m_base:>{width}.1f}")
    lines.append(f"ratio this/base: {summary.ratio:.2f}x")
    met = {True: "met", False: "NOT met"}
    lines.append(
        f"goal >= {summary.goal_bits / 1e6:.0f} Mbit/s: {met[summary.bits_met]} "
        f"({summary.median_this / 1e6:.1f})"
    )
    lines.append(
        f"goal >= {summary.goal_factor:g}x base: {met[summary.factor_met]} ({summary.ratio:.2f}x)"
    )
    return "\n".join(lines)


# -- the two sides ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Side:
    """How to drive one tree's fabric: its ``emunet`` and ``pod-shell``."""

    name: str
    emunet: Path
    pod_shell: Path


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _git(*argv: str) -> str:
    proc = subprocess.run(["git", "-C", str(ROOT), *argv], capture_output=True, text=True)
    if proc.returncode:
        lines = proc.stderr.strip().splitlines() or ["git failed"]
        raise BenchError(f"git {argv[0]}: {lines[-1]}")
    return proc.stdout.strip()


def this_side() -> Side:
    """This tree as installed in the running interpreter; says whether it is compiled."""
    try:
        import emunet.dataplane.netns as netns
    except ImportError as exc:
        raise BenchError(
            f"emunet is not installed in {sys.executable} ({exc}); `make setup`"
        ) from None
    where = Path(str(netns.__file__)).resolve()
    if ROOT not in where.parents:
        raise BenchError(f"{sys.executable} imports emunet from {where}, not from {ROOT}")
    build = (
        "compiled"
        if str(netns.__file__).endswith(str(sysconfig.get_config_var("EXT_SUFFIX")))
        else "pure"
    )
    bindir = Path(sys.executable).parent
    for tool in ("emunet", "pod-shell"):
        if not (bindir / tool).is_file():
            raise BenchError(
                f"no {tool} beside {sys.executable}: reinstall this tree (`make setup`)"
            )
    return Side(f"this ({build})", bindir / "emunet", bindir / "pod-shell")


def base_side(rev: str) -> Side:
    """REV's sources and venv under build/ab/<commit>/, made once per commit."""
    try:
        sha = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    except BenchError:
        raise BenchError(f"{rev!r} is not a commit of {ROOT}") from None
    home = ROOT / "build" / "ab" / sha
    venv = home / "venv"
    side = Side(f"{rev} (pure)", venv / "bin" / "emunet", venv / "bin" / "pod-shell")
    if (home / "ready").is_file():
        say(f"{rev} = {sha[:12]}: reusing {home.relative_to(ROOT)}")
        return side
    say(f"{rev} = {sha[:12]}: git archive + venv + pip install -e into {home.relative_to(ROOT)}")
    shutil.rmtree(home, ignore_errors=True)
    (home / "src").mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", sha], capture_output=True)
    if archive.returncode:
        raise BenchError(f"git archive {sha[:12]}: {archive.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(home / "src", filter="data")
    steps = (
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin/pip"), "install", "-q", "-e", f"{home / 'src'}[etcd]"],
    )
    env = {**os.environ, "EMUNET_PURE": "1"}
    for argv in steps:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env)
        if proc.returncode:
            tail = (proc.stderr.strip().splitlines() or ["failed"])[-1]
            raise BenchError(f"preparing {rev}: {' '.join(argv[:3])}...: {tail}")
    for tool in (side.emunet, side.pod_shell):
        if not tool.is_file():
            raise BenchError(
                f"{rev} installs no {tool.name}: its CLI differs from what this expects"
            )
    (home / "ready").write_text(sha + "\n")
    return side


# -- one fabric, one figure -------------------------------------------------------


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Cleanup runs to the end: Ctrl-C and SIGTERM are ignored meanwhile (and by
    the cleanup's own child processes, which inherit that)."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _sweep(marker: str) -> None:
    """SIGKILL what still runs with ``marker`` (a fabric's unique state dir) in its
    command line: what ``down`` could not stop, e.g. after an interrupted ``up``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            with contextlib.suppress(OSError):
                os.kill(int(proc.name), signal.SIGKILL)


class Fabric:
    """One local fabric of one side, in its own state dir under ``tmp``."""

    def __init__(self, side: Side, tmp: Path) -> None:
        self.side = side
        self.cwd = tmp
        self.state = tmp / "state"
        env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
        self.env = {**env, "EMUNET_STATE": str(self.state), "EMUNET_FABRIC": "local"}

    def run(self, tool: Path, *argv: str, timeout: float = 180) -> str:
        proc = subprocess.run(
            [str(tool), *argv],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.cwd,
            timeout=timeout,
        )
        if proc.returncode:
            err = " ".join((proc.stderr.strip() or proc.stdout.strip() or "no output").split())
            raise BenchError(f"{self.side.name}: {tool.name} {' '.join(argv)}: {err[-300:]}")
        return proc.stdout

    def cli(self, *argv: str, timeout: float = 180) -> str:
        return self.run(self.side.emunet, *argv, timeout=timeout)

    def shell(self, pod: str, *argv: str, timeout: float = 60) -> str:
        return self.run(self.side.pod_shell, pod, "--", *argv, timeout=timeout)

    def down(self) -> None:
        with shielded():
            if (self.state / "state.json").exists():
                with contextlib.suppress(subprocess.SubprocessError, OSError):
                    subprocess.run(
                        [str(self.side.emunet), "down"],
                        capture_output=True,
                        env=self.env,
                        cwd=self.cwd,
                        timeout=60,
                    )
            _sweep(str(self.state))

    def running_pods(self) -> dict[str, tuple[str, str]]:
        """app label -> (pod name, pod IP) of the Running pods."""
        items = json.loads(self.cli("get", "pods", "-o", "json"))["items"]
        return {
            p["metadata"]["labels"]["app"]: (p["metadata"]["name"], p["status"].get("podIP", ""))
            for p in items
            if p["status"].get("phase") == "Running"
        }


def measure(side: Side, seconds: float) -> float:
    """Start a fabric of ``side``, measure node1 pod -> node2 sink, stop it: bits/s."""
    with tempfile.TemporaryDirectory(prefix="emunet-abf-") as tmp:
        fabric = Fabric(side, Path(tmp))
        try:
            t0 = time.monotonic()
            fabric.cli("up", "--local", "--nodes", "3")
            fabric.cli("run", "client", "--app", "none", "--node", "node1")
            fabric.cli("run", "far", "--app", "sink", "--node", "node2")
            pods: dict[str, tuple[str, str]] = {}
            for _ in range(100):
                pods = fabric.running_pods()
                if {"client", "far"} <= pods.keys() and pods["far"][1]:
                    break
                time.sleep(0.3)
            else:
                raise BenchError(f"{side.name}: the pods are not Running after 30 s: {pods}")
            client, (_, far_ip) = pods["client"][0], pods["far"]
            # node1 routes to node2's subnet once flanneld has seen its lease
            for _ in range(20):
                try:
                    fabric.shell(client, "ping", "-c", "1", "-W", "1", far_ip)
                    break
                except BenchError:
                    time.sleep(0.5)
            else:
                raise BenchError(f"{side.name}: {far_ip} does not answer ping from {client}")
            say(f"  {side.name}: fabric up in {time.monotonic() - t0:.1f} s; iperf {seconds:g} s")
            out = fabric.shell(
                client,
                "iperf",
                "-c",
                far_ip,
                "-p",
                "5001",
                "-t",
                f"{seconds:g}",
                timeout=seconds + 60,
            )
            try:
                return parse_goodput(out)
            except ValueError as exc:
                raise BenchError(f"{side.name}: {exc}") from None
        finally:
            fabric.down()


@contextlib.contextmanager
def fabric_lock() -> Iterator[None]:
    """``flock /tmp/emunet-fabric.lock``: no other fabric binds 127.0.0.11-13 meanwhile."""
    fd = os.open(LOCK_PATH, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for {LOCK_PATH} (another fabric run holds it)...")
            fcntl.flock(fd, fcntl.LOCK_EX)
            say(f"got {LOCK_PATH}")
        yield
    finally:
        os.close(fd)


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "rev", nargs="?", default="dcf48cf", help="the earlier commit (default dcf48cf)"
    )
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (1-20, default 3)")
    ap.add_argument("--seconds", type=float, default=5.0, help="iperf duration (1-60 s, default 5)")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    args = ap.parse_args()
    if not 1 <= args.rounds <= 20:
        ap.error("--rounds must be 1-20")
    if not 1 <= args.seconds <= 60:
        ap.error("--seconds must be 1-60")
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    try:
        this = this_side()
        base = base_side(args.rev)
        figures: dict[Side, list[float]] = {this: [], base: []}
        with fabric_lock():
            load = os.getloadavg()[0]
            say(f"{os.cpu_count()} CPUs, load average {load:.2f} (other work skews both sides)")
            for i in range(1, args.rounds + 1):
                for side in (this, base):
                    say(f"round {i}/{args.rounds}: {side.name}")
                    bits = measure(side, args.seconds)
                    figures[side].append(bits)
                    say(f"  {side.name}: {bits / 1e6:.1f} Mbit/s")
    except BenchError as exc:
        sys.exit(f"bench_ab_fabric: {exc}")
    except subprocess.TimeoutExpired as exc:
        sys.exit(
            f"bench_ab_fabric: timed out after {exc.timeout:g} s: {' '.join(map(str, exc.cmd))}"
        )
    except KeyboardInterrupt:
        sys.exit("bench_ab_fabric: interrupted (fabrics stopped)")
    summary = summarize(figures[this], figures[base])
    print(report(summary, this.name, base.name))
    say(f"done in {time.monotonic() - started:.0f} s")
    if args.json is not None:
        record = {
            "this_commit": _git("describe", "--always", "--dirty", "--abbrev=40"),
            "this_build": this.name,
            "base_commit": _git("rev-parse", f"{args.rev}^{{commit}}"),
            "base_rev": args.rev,
            "seconds": args.seconds,
            "cpus": os.cpu_count(),
            "load_at_start": load,
            "unit": "bits/s",
            **asdict(summary),
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
