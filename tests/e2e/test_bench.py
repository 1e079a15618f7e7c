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
    assert fabric["paths"]["cross-node"]["ping_ms"]["replies"] == 20
    names = [g["name"] for g in fabric["goals"]]
    assert "cross-node TCP goodput" in names and "same-node ping RTT" in names
    assert all(g["met"] is not None for g in fabric["goals"])
