"""`emunet bench --quick` on a real local fabric it starts itself: every path measured
through pod-shell's tools in real agent processes, beside the bare baseline, and the
document and plot it saves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from emunet.control.bench_plan import PATHS, SIZES
from emunet.control.bench_run import QUICK
from emunet.control.local import pid_alive

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-c", "from emunet.control.cli import main; main()"]


def test_bench_quick_measures_every_path_and_saves_json_and_png(tmp_path: Path) -> None:
    env = {**os.environ, "EMUNET_STATE": str(tmp_path / "state")}
    for var in ("EMUNET_ETCD", "EMUNET_FABRIC"):
        env.pop(var, None)
    started = time.monotonic()
    proc = subprocess.run(
        [*CLI, "--fabric", "local", "bench", "--quick", "-o", "json", "--save", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    print(f"emunet bench --quick: {elapsed:.0f} s")
    assert doc["quick"] is True
    assert json.loads((tmp_path / "bench.json").read_text()) == doc
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the baseline: relay chains of 1 and 2 hops at every size, and a ping-pong
    for hops in ("1", "2"):
        for size in SIZES:
            assert doc["baseline"]["relay"][hops][str(size)]["zero_loss_pps"] > 0
    assert doc["baseline"]["pingpong"]["p50_us"] > 0
    (fabric,) = doc["fabrics"]
    assert fabric["kind"] == "local"
    assert set(fabric["paths"]) == {p.key for p in PATHS}
    for key, path in fabric["paths"].items():
        assert path["tcp_bps"] > 1e6, key
        for size in SIZES:
            udp = path["udp"][str(size)]
            assert udp["zero_loss_pps"] > 0, (key, size, udp["trials"])
            assert udp["trials"] and all(t["sent_pps"] > 0 for t in udp["trials"])
            assert udp["cpu_us_per_packet"], (key, size)
        assert path["latency"]["light"]["p50"] > 0, key
        assert path["latency"]["heavy"]["p99"] >= path["latency"]["heavy"]["p50"] > 0, key
    assert fabric["paths"]["cross-node"]["ping_ms"]["replies"] == QUICK.pings * QUICK.ping_blocks
    names = [g["name"] for g in fabric["goals"]]
    assert "cross-node TCP goodput" in names and "same-node ping RTT" in names
    assert all(g["met"] is not None for g in fabric["goals"])


def test_sigterm_stops_the_bench_and_its_temporary_fabric(tmp_path: Path) -> None:
    env = {**os.environ, "EMUNET_STATE": str(tmp_path / "state"), "TMPDIR": str(tmp_path)}
    for var in ("EMUNET_ETCD", "EMUNET_FABRIC"):
        env.pop(var, None)
    proc = subprocess.Popen(
        [*CLI, "--fabric", "local", "bench", "--quick"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    # the temporary fabric's state directory appears under TMPDIR once it starts
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("emunet-bench-*/state/state.json")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    time.sleep(5)
    state = json.loads(next(tmp_path.glob("emunet-bench-*/state/state.json")).read_text())
    procs = [(p["pid"], p["marker"]) for p in state["processes"]]
    proc.send_signal(15)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated" in err
    assert not list(tmp_path.glob("emunet-bench-*"))
    assert not [pid for pid, marker in procs if pid_alive(pid, marker)]
