"""``emunet up --compose`` / ``emunet down``: the compose fabric's lifecycle.

:class:`ComposeFabric` drives ``docker compose`` (v2, when ``docker compose version``
works) or ``docker-compose`` (v1.29) as a user would, with ``-f FILE -p PROJECT``:

* ``up``: checks that the image exists (the Docker SDK; compose v1 would try to
  pull it), runs ``up -d --remove-orphans`` (never ``--pull``), then polls the
  engine (containers healthy n/m) and etcd through its published port (nodes Ready
  n/m) until every node is Ready and every container healthy, or the timeout.
* More nodes than the compose file has: :func:`extra_nodes` copies the last node
  service (node3) as node4..nodeN, each with its own name, hostname, label,
  ``--name``, ``--node-ip`` and static address (.14, .15, ... at most .99), into a
  generated file passed as a second ``-f`` (``.emunet-compose/<project>.nodes.yml``).
  Fewer: ``up`` names the services to start.
* ``down``: ``down -v --remove-orphans`` with the files the project was started
  with (compose records them on its containers).

The project is ``$EMUNET_COMPOSE_PROJECT`` or ``emunet`` (as ``compose/.env`` names
it), the image ``$EMUNET_IMAGE`` or ``emunet:latest``, the compose file
``--compose-file``, ``$EMUNET_COMPOSE_FILE`` or ``compose/docker-compose.yml`` under
the current directory (else beside this source checkout).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import yaml
from emunet.control.fabric import (
    NAME_LABEL,
    PROJECT_LABEL,
    ROLE_LABEL,
    ComposeProject,
    discover_compose,
    docker_client,
)
from emunet.nodes.etcd import EtcdError
from emunet.nodes.registry import Registry
from emunet.nodes.token import TOKEN_ENV, new_token

from emunet.cluster.registry import NodeInfo
from emunet.errors import ConfigError, EmunetError

__all__ = [
    "DEFAULT_IMAGE",
    "DEFAULT_PROJECT",
    "ComposeFabric",
    "compose_command",
    "default_project",
    "extra_nodes",
    "find_compose_file",
    "image_name",
    "load_compose",
    "node_services",
    "recorded_files",
]

DEFAULT_PROJECT = "emunet"
DEFAULT_IMAGE = "emunet:latest"
COMPOSE_FILE = Path("compose") / "docker-compose.yml"
EXTRA_DIR = ".emunet-compose"
MAX_OCTET = 99  # node IPs end at .99: .100 is the vm, beside the nodes


def default_project(env: Mapping[str, str] | None = None) -> str:
    environ = os.environ if env is None else env
    return environ.get("EMUNET_COMPOSE_PROJECT") or DEFAULT_PROJECT


def image_name(env: Mapping[str, str] | None = None) -> str:
    environ = os.environ if env is None else env
    return environ.get("EMUNET_IMAGE") or DEFAULT_IMAGE


def find_compose_file(
    explicit: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Path:
    """``--compose-file``, else ``$EMUNET_COMPOSE_FILE``, else compose/docker-compose.yml
    in the current directory, else in the source checkout this module comes from."""
    environ = os.environ if env is None else env
    for given, source in ((explicit, "--compose-file"), (environ.get("EMUNET_COMPOSE_FILE"), None)):
        if given:
            path = Path(given).expanduser()
            if not path.is_file():
                raise ConfigError(f"{source or 'EMUNET_COMPOSE_FILE'}: {path}: no such file")
            return path.resolve()
    here = (cwd or Path.cwd()) / COMPOSE_FILE
    if here.is_file():
        return here.resolve()
    beside = Path(__file__).resolve().parents[1] / COMPOSE_FILE
    if beside.is_file():
        return beside
    raise ConfigError(
        f"no compose file: {COMPOSE_FILE} is not in {cwd or Path.cwd()}; run from the emunet "
        "checkout or pass --compose-file FILE (or set EMUNET_COMPOSE_FILE)"
    )


def load_compose(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        raise ConfigError(f"{path}: not a compose file (no services)")
    return doc


def _labels(service: Mapping[str, Any]) -> dict[str, str]:
    labels = service.get("labels") or {}
    if isinstance(labels, list):  # the list form: ["key=value", ...]
        return dict(str(item).partition("=")[::2] for item in labels)
    return {str(k): str(v) for k, v in labels.items()}


def _index(name: str) -> int:
    digits = "".join(ch for ch in name if ch.isdigit())
    return int(digits) if digits else 0


def node_services(doc: Mapping[str, Any]) -> list[tuple[int, str]]:
    """(index, service name) of the node services (label io.emunet.role: node), in order."""
    found = []
    for name, service in doc["services"].items():
        labels = _labels(service or {})
        if labels.get(ROLE_LABEL) == "node":
            found.append((_index(labels.get(NAME_LABEL) or name), str(name)))
    return sorted(found)


def _shift_address(text: str, delta: int, what: str) -> str:
    """``"${EMUNET_NET_PREFIX:-172.18.0}.13"`` shifted by ``delta`` in its last octet."""
    prefix, dot, last = str(text).rpartition(".")
    if not dot or not last.isdigit():
        raise ConfigError(f"{what}: {text!r} does not end in an IPv4 octet")
    octet = int(last) + delta
    if octet > MAX_OCTET:
        raise ConfigError(f"{what}: .{octet} is beyond .{MAX_OCTET} of the node network")
    return f"{prefix}.{octet}"


def _node_copy(template: Mapping[str, Any], from_index: int, to_index: int) -> dict[str, Any]:
    name = f"node{to_index}"
    delta = to_index - from_index
    svc = copy.deepcopy(dict(template))
    svc.pop("container_name", None)
    svc["hostname"] = name
    labels = _labels(svc)
    labels[NAME_LABEL] = name
    svc["labels"] = labels
    command = svc.get("command")
    if not isinstance(command, list):
        raise ConfigError(f"node{from_index}: its command must be a list to copy it")
    out: list[str] = []
    pending = ""
    for arg in (str(a) for a in command):
        if pending == "--name":
            arg = name
        elif pending == "--node-ip":
            arg = _shift_address(arg, delta, f"{name} --node-ip")
        pending = ""
        if arg in ("--name", "--node-ip"):
            pending = arg
        elif arg.startswith("--name="):
            arg = f"--name={name}"
        elif arg.startswith("--node-ip="):
            arg = "--node-ip=" + _shift_address(arg.partition("=")[2], delta, f"{name} --node-ip")
        out.append(arg)
    svc["command"] = out
    networks = svc.get("networks")
    if isinstance(networks, dict):
        for net, conf in networks.items():
            if isinstance(conf, dict) and conf.get("ipv4_address"):
                conf["ipv4_address"] = _shift_address(
                    conf["ipv4_address"], delta, f"{name} networks.{net}.ipv4_address"
                )
    return svc


def extra_nodes(doc: Mapping[str, Any], nodes: int) -> dict[str, Any]:
    """A compose file adding the nodes ``doc`` lacks, up to ``nodes``: copies of its
    last node service (anchors and merge keys already resolved by the YAML loader)."""
    existing = node_services(doc)
    if not existing:
        raise ConfigError("the compose file has no node service (label io.emunet.role: node)")
    last_index, last_name = existing[-1]
    template = doc["services"][last_name]
    services: dict[str, Any] = {}
    for i in range(last_index + 1, nodes + 1):
        try:
            services[f"node{i}"] = _node_copy(template, last_index, i)
        except ConfigError as exc:
            most = i - 1
            raise ConfigError(
                f"--nodes {nodes}: at most {most} nodes with this compose file ({exc})"
            ) from None
    return {"services": services}


def recorded_files(project: ComposeProject) -> list[Path]:
    """The compose files ``project`` was started with, as absolute paths where they can be
    known. Compose v1 records ``-f`` as given (relative to the directory it ran in) and
    the project directory, which is the first file's directory: that directory minus the
    first file's relative directory is where it ran."""
    files = [Path(f) for f in project.config_files]
    if not files:
        return []
    workdir = Path(project.working_dir) if project.working_dir else None
    ran_in: Path | None = None
    first = files[0]
    if not first.is_absolute() and workdir is not None and ".." not in first.parts:
        rel = first.parent.parts
        if not rel:
            ran_in = workdir
        elif workdir.parts[-len(rel) :] == rel:
            ran_in = Path(*workdir.parts[: -len(rel)])
    out = []
    for i, f in enumerate(files):
        if f.is_absolute():
            out.append(f)
        elif ran_in is not None:
            out.append(ran_in / f)
        elif i == 0 and workdir is not None:
            out.append(workdir / f.name)
        else:
            out.append(f)
    return out


DEFAULT_PREFIX = "172.18.0"
_PREFIX_CANDIDATES = (DEFAULT_PREFIX, "172.30.250", "172.31.250", "10.250.0", "192.168.250")


def node_network_prefix(client: Any, project: str) -> str:
    """The node network for ``project``: the one it has if it runs, else the compose
    file's default unless another Docker network overlaps it (the first user network
    gets 172.18.0.0/16; kind's too), else the first free candidate."""
    taken: list[IPv4Network] = []
    try:
        networks = client.networks.list()
    except Exception:
        return DEFAULT_PREFIX
    for net in networks:
        attrs = getattr(net, "attrs", {}) or {}
        configs = (attrs.get("IPAM") or {}).get("Config") or []
        mine = (attrs.get("Labels") or {}).get(PROJECT_LABEL) == project
        for config in configs:
            try:
                subnet = IPv4Network(config.get("Subnet", ""), strict=False)
            except ValueError:
                continue
            if mine and subnet.prefixlen == 24:
                return str(subnet.network_address).rsplit(".", 1)[0]
            taken.append(subnet)
    for prefix in _PREFIX_CANDIDATES:
        want = IPv4Network(f"{prefix}.0/24")
        if not any(want.overlaps(t) for t in taken):
            return prefix
    return DEFAULT_PREFIX


def compose_command(which: Callable[[str], str | None] = shutil.which) -> list[str]:
    """``docker compose`` (v2) when it answers ``version``, else ``docker-compose``."""
    if which("docker"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            probe = subprocess.run(
                ["docker", "compose", "version"], capture_output=True, timeout=15, check=False
            )
            if probe.returncode == 0:
                return ["docker", "compose"]
    if which("docker-compose"):
        return ["docker-compose"]
    raise ConfigError(
        "neither `docker compose` (v2) nor `docker-compose` (v1) is installed: "
        "`emunet up --local` runs the fabric without Docker"
    )


def _client() -> Any:
    try:
        return docker_client()
    except Exception as exc:  # the SDK's errors, ImportError...
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise ConfigError(
            f"docker is not available ({reason}): `emunet up --local` runs the fabric without "
            "Docker"
        ) from None


class ComposeFabric:
    """One compose project of emunet. Constructing it does no I/O."""

    def __init__(
        self,
        compose_file: Path,
        project: str = DEFAULT_PROJECT,
        *,
        image: str = DEFAULT_IMAGE,
        work_dir: Path | None = None,
        ready_timeout: float = 90.0,
        command: Sequence[str] | None = None,
    ) -> None:
        self.compose_file = compose_file
        self.project = project
        self.image = image
        self.work_dir = work_dir or Path.cwd() / EXTRA_DIR
        self.ready_timeout = ready_timeout
        self._command = list(command) if command else None
        self.etcd_endpoint = ""  # etcd's published address, once ``up`` saw it

    @property
    def command(self) -> list[str]:
        if self._command is None:
            self._command = compose_command()
        return self._command

    @property
    def extra_file(self) -> Path:
        return self.work_dir / f"{self.project}.nodes.yml"

    def argv(self, files: Sequence[Path]) -> list[str]:
        out = list(self.command)
        for f in files:
            out += ["-f", str(f)]
        return [*out, "-p", self.project]

    def plan(self, nodes: int) -> tuple[list[Path], list[str], int]:
        """The files, the services to name (none: all) and how many containers ``up``
        starts for ``nodes`` nodes; writes (or removes) the extra nodes file."""
        if nodes < 1:
            raise ConfigError(f"--nodes: must be at least 1, got {nodes}")
        doc = load_compose(self.compose_file)
        existing = node_services(doc)
        files = [self.compose_file]
        services: list[str] = []
        count = len(doc["services"])
        if nodes > len(existing):
            extra = extra_nodes(doc, nodes)
            self.work_dir.mkdir(parents=True, exist_ok=True)
            added = ", ".join(extra["services"])
            header = (
                f"# generated by `emunet up --compose --nodes {nodes}`: {added}, copies of "
                f"{existing[-1][1]} of {self.compose_file}\n"
            )
            self.extra_file.write_text(header + yaml.safe_dump(extra, sort_keys=False))
            files.append(self.extra_file)
            count += len(extra["services"])
        else:
            self.extra_file.unlink(missing_ok=True)
            if nodes < len(existing):
                wanted = {name for index, name in existing if index <= nodes}
                not_nodes = [n for n in doc["services"] if n not in {s for _i, s in existing}]
                services = [*not_nodes, *(n for _i, n in existing if n in wanted)]
                count = len(services)
        return files, services, count

    def check_image(self, client: Any) -> None:
        try:
            client.images.get(self.image)
        except Exception as exc:
            if type(exc).__name__ == "ImageNotFound":
                raise ConfigError(f"image {self.image} not found: run `make image`") from None
            raise ConfigError(f"cannot inspect image {self.image}: {exc}") from None

    async def _run(
        self, verb: str, argv: Sequence[str], say: Callable[[str], None], cwd: Path
    ) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=cwd,
            )
        except OSError as exc:
            raise EmunetError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
        assert proc.stdout is not None
        last = error = ""
        async for raw in proc.stdout:
            for line in raw.decode(errors="replace").replace("\r", "\n").splitlines():
                if line.strip():
                    last = " ".join(line.split())
                    if last.lower().startswith(("error", "service ")):
                        error = last  # compose's own account, not its summary line
                    if not last.endswith(" ..."):  # v1 says "X ..." then "X ... done"
                        say(last)
        code = await proc.wait()
        if code != 0:
            tool = " ".join(self.command)
            why = error or last or "no output"
            raise EmunetError(f"{tool} {verb} failed (exit {code}): {why}")

    async def up(self, nodes: int, say: Callable[[str], None]) -> list[NodeInfo]:
        client = await asyncio.to_thread(_client)
        await asyncio.to_thread(self.check_image, client)
        if "EMUNET_NET_PREFIX" not in os.environ:
            prefix = await asyncio.to_thread(node_network_prefix, client, self.project)
            if prefix != DEFAULT_PREFIX:
                say(f"the node network is {prefix}.0/24 ({DEFAULT_PREFIX}.0/24 is taken here)")
                os.environ["EMUNET_NET_PREFIX"] = prefix  # read by compose's interpolation
        files, services, count = self.plan(nodes)
        argv = [*self.argv(files), "up", "-d", "--remove-orphans", *services]
        say(f"{' '.join(self.command)} up -d: project {self.project}, image {self.image}")
        before = await asyncio.to_thread(discover_compose, client)
        if not os.environ.get(TOKEN_ENV):
            # the control token: the one the project runs with, else a new one (every
            # container gets it in its environment; clients read it from there)
            running = before.projects.get(self.project)
            os.environ[TOKEN_ENV] = (running.token if running else None) or new_token()
        try:
            await self._run("up", argv, say, self.compose_file.parent)
        except EmunetError as exc:
            if self.project in before.projects:
                raise EmunetError(
                    f"{exc} (project {self.project} was already up: if its configuration "
                    "changed, `emunet down` first)"
                ) from None
            raise
        return await self.wait_ready(client, [f"node{i}" for i in range(1, nodes + 1)], count, say)

    async def wait_ready(
        self, client: Any, names: list[str], containers: int, say: Callable[[str], None]
    ) -> list[NodeInfo]:
        deadline = time.monotonic() + self.ready_timeout
        last = ""
        registry: Registry | None = None
        etcd = ""
        try:
            while True:
                view = await asyncio.to_thread(discover_compose, client)
                project = view.projects.get(self.project)
                healthy = sum(c.ready for c in project.containers) if project else 0
                endpoint = (project.etcd_endpoint if project else None) or ""
                if endpoint != etcd and registry is not None:
                    # etcd restarted: its published port may have changed
                    with contextlib.suppress(EtcdError):
                        await registry.__aexit__(None, None, None)
                    registry = None
                etcd = endpoint
                if etcd and registry is None:
                    with contextlib.suppress(EtcdError):
                        registry = await Registry(etcd, request_timeout=2.0).__aenter__()
                nodes: list[NodeInfo] = []
                if registry is not None:
                    with contextlib.suppress(EtcdError):
                        nodes = [n for n in await registry.nodes() if n.name in names]
                ready = [n for n in nodes if n.ready]
                text = (
                    f"containers healthy {healthy}/{containers}, "
                    f"nodes Ready {len(ready)}/{len(names)}"
                )
                if text != last:
                    say(text)
                    last = text
                if len(ready) == len(names) and healthy >= containers:
                    self.etcd_endpoint = etcd
                    return sorted(ready, key=lambda n: _index(n.name))
                if time.monotonic() > deadline:
                    raise EmunetError(self._not_ready(project, names, ready))
                await asyncio.sleep(0.5)
        finally:
            if registry is not None:
                with contextlib.suppress(EtcdError):
                    await registry.__aexit__(None, None, None)

    def _not_ready(
        self, project: ComposeProject | None, names: list[str], ready: list[NodeInfo]
    ) -> str:
        missing = sorted(set(names) - {n.name for n in ready}, key=_index)
        parts = [f"compose fabric not ready after {self.ready_timeout:.0f} s"]
        if missing:
            parts.append(f"nodes not Ready: {', '.join(missing)}")
        if project is not None and project.etcd_endpoint is None:
            parts.append(project.etcd_problem)
        if project is not None:
            bad = [
                f"{c.name} ({c.state}{', ' + c.health if c.health else ''})"
                for c in project.containers
                if not c.ready
            ]
            if bad:
                parts.append(f"containers not healthy: {', '.join(bad)}")
        parts.append(f"see `{' '.join(self.command)} -p {self.project} logs`")
        return "; ".join(parts)

    def down_files(self, project: ComposeProject) -> list[Path]:
        """The files ``project`` was started with that still exist, with this fabric's
        compose file instead of a recorded base file that is gone (``--remove-orphans``
        removes the services of a lost extra file)."""
        recorded = recorded_files(project)
        kept = [f for f in recorded[1:] if f.is_file()]
        base = recorded[0] if recorded and recorded[0].is_file() else self.compose_file
        return [base, *kept]

    async def down(self, project: ComposeProject, say: Callable[[str], None]) -> None:
        files = self.down_files(project)
        argv = [*self.argv(files), "down", "-v", "--remove-orphans"]
        await self._run("down", argv, say, files[0].parent)
        for f in files[1:]:  # a generated extra nodes file goes with its project
            if f.parent.name == EXTRA_DIR:
                f.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    f.parent.rmdir()
