"""``emunet bench``'s measurements on one running fabric.

:class:`FabricBench` creates its objects through the CLI (``emunet run`` and
``apply``: a client pod on node1, ``echo`` pods near it on node1 and far on
node2, and one LoadBalancer Service in front of the far pod, which also gives
it a ClusterIP and NodePorts), then measures every path of
:data:`~emunet.control.bench_plan.PATHS` with pod-shell's own tools, run
through the control API's ``exec`` exactly as ``pod-shell`` runs them:

* TCP goodput: ``iperf -c`` against an ``iperf -s`` on the server side;
* UDP at 64, 512 and 1400 B: ``iperf -u -b RATE -l LEN`` against ``iperf -s
  -u``, its server report giving the loss; :class:`RateSearch` picks the rates;
* request/response latency: ``sockperf ping-pong --full-rtt`` against the echo
  app (UDP 7), alone (light load) and beside a 1400 B UDP stream at half the
  path's zero-loss rate (heavy load: a search's short trials find a rate whose
  queues have not yet overflowed, and a longer stream at it fills the 4 MB
  socket buffers, which then measures the buffers, not the path);
* ``ping`` where the destination answers ICMP;
* CPU seconds per packet per node: each process's ``cpuSeconds`` (control API
  ``status``) before and after each UDP trial, over the packets delivered.

The result is a plain dict (JSON's shape: :mod:`emunet.control.bench_report`
prints and plots it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emunet.control import bench_baseline
from emunet.control.bench_plan import (
    PING_INTERVAL,
    SIZES,
    BenchPath,
    RateSearch,
    Trial,
    parse_iperf_sent,
    parse_iperf_tcp,
    parse_iperf_udp,
    parse_ping,
    parse_sockperf,
    percentile,
)
from emunet.control.fabric import FabricTarget
from emunet.control.podshell import PodTarget, find_host, find_pod
from emunet.nodes.control_client import ControlClient
from emunet.nodes.registry import Registry

from emunet.errors import EmunetError

__all__ = ["FULL", "QUICK", "FabricBench", "Settings"]

IPERF_PORT = 5001
ECHO_PORT = 7
NODEPORT_IPERF = 30501
NODEPORT_ECHO = 30507
MAX_BITS = "10g"  # iperf -u's top rate: the sender's full speed
HEAVY_LOAD = 0.5  # heavy load: a 1400 B stream at this share of the zero-loss rate
_SERVER_SECONDS = 3600.0  # servers are stopped by closing their exec, not by -t


@dataclass(frozen=True)
class Settings:
    quick: bool
    tcp_seconds: float
    trial_seconds: float
    trials: int  # per UDP size and path
    latency_seconds: float
    pings: int  # per block
    ping_blocks: int  # of pings through the path, each followed by as many bare ones


QUICK = Settings(True, 1.0, 0.4, 4, 0.8, 30, 1)
FULL = Settings(False, 5.0, 1.0, 6, 2.0, 100, 3)


def _manifest() -> str:
    ports = [
        ("iperf-tcp", "TCP", IPERF_PORT, NODEPORT_IPERF),
        ("iperf-udp", "UDP", IPERF_PORT, NODEPORT_IPERF),
        ("echo", "UDP", ECHO_PORT, NODEPORT_ECHO),
    ]
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "bench-far"},
            "spec": {
                "type": "LoadBalancer",
                "selector": {"app": "bench-far"},
                "ports": [
                    {"name": n, "protocol": p, "port": port, "targetPort": port, "nodePort": np}
                    for n, p, port, np in ports
                ],
            },
        }
    )


class Exec:
    """Commands in one pod or external host, through its control API's ``exec``."""

    def __init__(self, target: PodTarget) -> None:
        self.target = target

    def _client(self) -> ControlClient:
        t = self.target
        return ControlClient(t.host, t.port, timeout=10.0, token=t.token)

    async def _stream(
        self, client: ControlClient, argv: Sequence[str], idle: float
    ) -> tuple[int, str]:
        chunks: list[str] = []
        code = 1
        async for frame in client.stream(
            "exec", idle_timeout=idle, pod=self.target.netns, argv=list(argv)
        ):
            if frame.kind == "stream" and isinstance(frame.data, dict):
                for key in ("out", "err"):
                    text = frame.data.get(key)
                    if isinstance(text, bytes):
                        text = text.decode(errors="replace")
                    if isinstance(text, str):
                        chunks.append(text)
            elif frame.kind == "result" and isinstance(frame.data, dict):
                code = int(frame.data.get("exit", 1))
        return code, "".join(chunks)

    async def run(self, argv: Sequence[str], timeout: float = 60.0) -> tuple[int, str]:
        """Run a command to its end (at most ``timeout`` seconds)."""
        async with self._client() as client, asyncio.timeout(timeout):
            return await self._stream(client, argv, timeout)

    @contextlib.asynccontextmanager
    async def serving(self, argv: Sequence[str]) -> AsyncIterator[None]:
        """Run a server command for the block. It is stopped by closing its exec's
        connection (the agent cancels a command whose client went away), not by
        cancelling a task, so no wait can outlive the block."""
        client = self._client()
        await client.start()
        task = asyncio.create_task(self._stream(client, argv, _SERVER_SECONDS))
        try:
            await asyncio.sleep(0.3)  # it binds its socket
            if task.done():
                _code, out = task.result()
                raise EmunetError(f"{' '.join(argv)} in {self.target.name} stopped: {out.strip()}")
            yield
        finally:
            await client.close()
            await asyncio.wait({task}, timeout=5.0)
            if task.done():
                if not task.cancelled():
                    task.exception()  # retrieved: the closed connection ends it with an error
            else:
                task.cancel()
            await asyncio.sleep(0.6)  # the agent notices the closed exec and unbinds


class FabricBench:
    """Every path of one fabric; ``step(text)`` reports progress."""

    def __init__(
        self,
        target: FabricTarget,
        cli_args: Sequence[str],
        settings: Settings,
        step: Callable[[str], None],
    ) -> None:
        self.target = target
        self.cli_args = list(cli_args)
        self.settings = settings
        self.step = step
        self.pods: dict[str, dict[str, Any]] = {}
        self.addr: dict[str, str] = {}
        self.execs: dict[tuple[str, str], Exec] = {}
        self.controls: dict[str, tuple[str, int]] = {}

    # ------------------------------------------------------------- objects

    async def cli(self, *args: str) -> str:
        argv = [sys.executable, "-P", "-c", "from emunet.control.cli import main; main()"]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            *self.cli_args,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        if proc.returncode != 0:
            raise EmunetError(f"emunet {' '.join(args)}: {err.decode().strip()}")
        return out.decode()

    async def prepare(self) -> None:
        self.step("creating the bench's pods and Service")
        for name, app, on in (
            ("bench-client", "none", "node1"),
            ("bench-near", "echo", "node1"),
            ("bench-far", "echo", "node2"),
        ):
            await self.cli("run", name, "--app", app, "--node", on)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            f.write(_manifest())
        try:
            await self.cli("apply", "-f", f.name)
        finally:
            Path(f.name).unlink()
        for _ in range(300):
            items = json.loads(await self.cli("get", "pods", "-o", "json"))["items"]
            self.pods = {
                p["metadata"]["labels"]["app"].removeprefix("bench-"): p
                for p in items
                if p["metadata"].get("labels", {}).get("app", "").startswith("bench-")
                and p["status"].get("phase") == "Running"
            }
            svc = json.loads(await self.cli("get", "services", "bench-far", "-o", "json"))
            ingress = svc.get("status", {}).get("loadBalancer", {}).get("ingress") or []
            if len(self.pods) == 3 and ingress:
                break
            await asyncio.sleep(0.2)
        else:
            raise EmunetError("the bench's pods or LoadBalancer did not come up in 60 s")
        hosts = json.loads(await self.cli("get", "hosts", "-o", "json"))["items"]
        for label, found in self.pods.items():
            self.addr[f"pod:{label}"] = found["status"]["podIP"]
        for h in hosts:
            self.addr[f"host:{h['metadata']['name']}"] = h["spec"]["ip"]
        self.addr["clusterip"] = svc["spec"]["clusterIP"]
        self.addr["nodeport"] = self.pods["far"]["status"]["hostIP"]
        self.addr["lb"] = ingress[0]["ip"]
        await asyncio.sleep(1.0)  # every node has programmed the Service's rules
        async with Registry(self.target.etcd) as reg:
            for node in await reg.nodes():
                if node.control_endpoint:
                    self.controls[node.name] = self.target.reach(node.control_endpoint)
            served: dict[str, list[str]] = {}  # an internet process's endpoint: its hosts
            for h in await reg.hosts():
                if h.control_endpoint:
                    served.setdefault(h.control_endpoint, []).append(h.name)
            for endpoint, names in served.items():
                label = "internet" if "example" in names else "+".join(sorted(names))
                self.controls[label] = self.target.reach(endpoint)

    async def cleanup(self) -> None:
        for kind, name in (
            ("service", "bench-far"),
            ("deployment", "bench-client"),
            ("deployment", "bench-near"),
            ("deployment", "bench-far"),
        ):
            with contextlib.suppress(EmunetError):
                await self.cli("delete", kind, name)

    async def _exec(self, who: tuple[str, str]) -> Exec:
        found = self.execs.get(who)
        if found is None:
            kind, name = who
            if kind == "pod":
                target = await find_pod(self.target, "default", self.pods[name]["metadata"]["name"])
            else:
                target = await find_host(self.target, name)
            found = self.execs[who] = Exec(target)
        return found

    async def cpu(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, (host, port) in self.controls.items():
            async with ControlClient(host, port, timeout=5.0, token=self.target.token) as c:
                status = await c.call("status")
            out[name] = float(status.get("cpuSeconds", 0.0))
        return out

    # ---------------------------------------------------------------- paths

    def _ports(self, path: BenchPath) -> tuple[int, int]:
        if path.dst == "nodeport":
            return NODEPORT_IPERF, NODEPORT_ECHO
        return IPERF_PORT, ECHO_PORT

    async def run_path(self, path: BenchPath) -> dict[str, Any]:
        s = self.settings
        client = await self._exec(path.client)
        server = await self._exec(path.server)
        dst = self.addr[path.dst]
        iperf, echo = self._ports(path)
        result: dict[str, Any] = {"title": path.title, "hops": path.hops, "dst": dst}
        self.step(f"{path.key}: TCP goodput")
        async with server.serving(
            ["iperf", "-s", "-p", str(IPERF_PORT), "-t", str(int(_SERVER_SECONDS))]
        ):
            code, out = await client.run(
                ["iperf", "-c", dst, "-p", str(iperf), "-t", str(s.tcp_seconds)],
                timeout=s.tcp_seconds + 20,
            )
        result["tcp_bps"] = parse_iperf_tcp(out) if code == 0 else 0.0
        udp: dict[str, Any] = {}
        argv = ["iperf", "-s", "-u", "-p", str(IPERF_PORT), "-t", str(int(_SERVER_SECONDS))]
        async with server.serving(argv):
            for size in SIZES:
                search = RateSearch(s.trials)
                cpu_by_trial: list[dict[str, float]] = []
                while (rate := search.next_rate()) is not None:
                    self.step(f"{path.key}: UDP {size} B, trial {len(search.trials) + 1}")
                    before = await self.cpu()
                    trial = await self.udp_trial(client, dst, iperf, size, rate)
                    after = await self.cpu()
                    search.record(trial)
                    cpu_by_trial.append({k: after[k] - before.get(k, 0.0) for k in after})
                udp[str(size)] = _udp_result(search, cpu_by_trial, size)
            result["udp"] = udp
            best = udp["1400"]["zero_loss_pps"] or udp["1400"]["max_delivered_pps"]
            self.step(f"{path.key}: latency")
            result["latency"] = {
                "light": await self.latency(client, dst, echo),
                "heavy": await self.latency(client, dst, echo, (iperf, best * HEAVY_LOAD)),
            }
        if path.ping:
            result["ping_ms"] = await self.ping(client, path, dst)
        return result

    async def ping(self, client: Exec, path: BenchPath, dst: str) -> dict[str, Any]:
        """``ping -i PING_INTERVAL`` through the path, in blocks each followed by as
        many exchanges of the bare ping-pong at the same pace: the machine's state
        drifts (an idle VM's wake-ups vary twofold from minute to minute), and the
        ratio compares the two under the same conditions."""
        s = self.settings
        argv = ["ping", "-c", str(s.pings), "-i", str(PING_INTERVAL), "-W", "1", dst]
        rtts: list[float] = []
        bare: list[float] = []
        for block in range(s.ping_blocks):
            self.step(f"{path.key}: ping, block {block + 1} of {s.ping_blocks}")
            _code, out = await client.run(argv, timeout=60)
            rtts += parse_ping(out)
            paced = await bench_baseline.ping_pong(s.pings * PING_INTERVAL, interval=PING_INTERVAL)
            bare += paced["rtts_us"]
        return {
            "p50": percentile(rtts, 50),
            "p90": percentile(rtts, 90),
            "p99": percentile(rtts, 99),
            "min": min(rtts, default=0.0),
            "replies": len(rtts),
            "bare_paced_p50_us": percentile(bare, 50),
        }

    async def udp_trial(self, client: Exec, dst: str, port: int, size: int, rate: float) -> Trial:
        s = self.settings
        bits = MAX_BITS if not math.isfinite(rate) else str(max(1, int(rate * size * 8)))
        argv = ["iperf", "-c", dst, "-u", "-p", str(port), "-b", bits, "-l", str(size)]
        argv += ["-t", str(s.trial_seconds)]
        _code, out = await client.run(argv, timeout=s.trial_seconds + 20)
        try:
            sent = parse_iperf_sent(out)
        except ValueError:
            return Trial(rate, 0, 0, s.trial_seconds)
        try:
            lost, _total, seconds = parse_iperf_udp(out)
        except ValueError:  # no report: the FIN was lost with the rest
            return Trial(rate, sent, sent, s.trial_seconds)
        return Trial(rate, sent, min(lost, sent), seconds or s.trial_seconds)

    async def latency(
        self, client: Exec, dst: str, port: int, load: tuple[int, float] | None = None
    ) -> dict[str, float]:
        s = self.settings
        argv = ["sockperf", "ping-pong", "-i", dst, "-p", str(port), "--full-rtt"]
        argv += ["-t", str(s.latency_seconds), "-m", "64"]
        if load is None:
            code, out = await client.run(argv, timeout=s.latency_seconds + 20)
        else:
            iperf_port, pps = load
            bits = str(max(1, int(pps * 1400 * 8)))
            load_argv = ["iperf", "-c", dst, "-u", "-p", str(iperf_port), "-b", bits]
            load_argv += ["-l", "1400", "-t", str(s.latency_seconds + 0.6)]
            stream = asyncio.create_task(client.run(load_argv, timeout=s.latency_seconds + 20))
            await asyncio.sleep(0.3)
            try:
                code, out = await client.run(argv, timeout=s.latency_seconds + 20)
            finally:
                with contextlib.suppress(Exception):
                    await stream
        try:
            return parse_sockperf(out) if code == 0 else {}
        except ValueError:
            return {}


def _udp_result(search: RateSearch, cpu: list[dict[str, float]], size: int) -> dict[str, Any]:
    best = search.result
    trials = search.trials
    out: dict[str, Any] = {
        "zero_loss_pps": best.delivered_pps if best else 0.0,
        "zero_loss_bps": best.delivered_pps * size * 8 if best else 0.0,
        "max_delivered_pps": max((t.delivered_pps for t in trials), default=0.0),
        "trials": [
            {
                "offered_pps": t.offered if math.isfinite(t.offered) else None,
                "sent_pps": t.sent_pps,
                "delivered_pps": t.delivered_pps,
                "loss": t.loss,
            }
            for t in trials
        ],
    }
    if best is not None:
        i = trials.index(best)
        packets = max(1, best.sent - best.lost)
        out["cpu_us_per_packet"] = {k: v * 1e6 / packets for k, v in cpu[i].items()}
    return out
