"""Which fabric the ``emunet`` CLI and ``pod-shell`` talk to, and how to reach it.

A :class:`FabricTarget` is what one invocation talks to: the etcd endpoint this
process can reach, a description for ``emunet status``, and :meth:`~FabricTarget.reach`,
which turns a control endpoint recorded in the registry (a Node's
``status.controlEndpoint``, an external host's, ``"IP:PORT"``) into an address
this process can connect to.

Selection (:func:`select_target`), first match wins:

1. ``--fabric local|compose`` (``auto`` forces the search below);
2. ``--etcd HOST:PORT``: *explicit*, no translation (inside the containers, where
   the compose file sets ``EMUNET_ETCD=etcd:2379`` and container IPs are reachable);
3. ``$EMUNET_FABRIC``, then ``$EMUNET_ETCD`` (the same two, from the environment);
4. a local fabric (``control/local.py``) whose state directory has running processes;
5. a compose fabric found through the Docker SDK: containers labelled
   ``io.emunet.role`` (etcd, controller-manager, node, internet...), grouped by
   ``com.docker.compose.project``
   (several projects: ``$EMUNET_COMPOSE_PROJECT`` picks one);
6. a local state whose processes are all gone (``status`` says degraded, ``up`` restarts);
7. else a one-line error saying how to start a fabric.

A compose fabric is reached without routing to container IPs (Docker Desktop does
not route them): every service publishes its port on 127.0.0.1 with an ephemeral
host port, so etcd is ``127.0.0.1:<published 2379/tcp>`` and an agent's recorded
``<container IP>:10250`` becomes ``127.0.0.1:<published 10250/tcp>`` of the container
that has that IP on one of its networks (``NetworkSettings``). Unknown endpoints pass
through unchanged.

Docker absent, not answering, or its SDK failing to import is no error here: the
compose fabric is then simply not found (the reason goes into the error message
when nothing else is found either).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from emunet.control.local import TOKEN_FILE, LocalFabric, LocalState, default_state_dir
from emunet.nodes.token import TOKEN_ENV, read_token

from emunet.errors import ConfigError

__all__ = [
    "CONTROL_PORT_KEY",
    "ETCD_PORT_KEY",
    "ETCD_TIMEOUT",
    "NAME_LABEL",
    "PROJECT_LABEL",
    "ROLES",
    "ROLE_LABEL",
    "ComposeContainer",
    "ComposeProject",
    "DockerView",
    "FabricChoice",
    "FabricKind",
    "FabricTarget",
    "compose_target",
    "discover_compose",
    "docker_client",
    "explicit_target",
    "fabric_choice",
    "group_projects",
    "local_target",
    "parse_endpoint",
    "pick_project",
    "select_target",
]

ETCD_TIMEOUT = 10.0
"""Seconds the CLI and pod-shell wait for one etcd answer: a healthy etcd behind a
machine busy with hundreds of clients answers late, not never (3 s gave false
"etcd unreachable (no answer)" under load); a refused connection fails at once."""

ROLE_LABEL = "io.emunet.role"
NAME_LABEL = "io.emunet.name"
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
CONFIG_FILES_LABEL = "com.docker.compose.project.config_files"
WORKING_DIR_LABEL = "com.docker.compose.project.working_dir"
# the roles of the compose file's services, in the order `status` lists them; a role
# not named here (a service added later) is still part of its project, listed last
ROLES = ("etcd", "controller-manager", "node", "internet")
ETCD_PORT_KEY = "2379/tcp"
CONTROL_PORT_KEY = "10250/tcp"
DOCKER_TIMEOUT = 3.0  # seconds: a Docker engine that does not answer by then is absent

_NO_FABRIC = (
    "no etcd endpoint: start a fabric with `emunet up --local`, `emunet up --compose` or "
    "`make up`, or pass --etcd HOST:PORT (or set EMUNET_ETCD)"
)


class FabricKind(StrEnum):
    LOCAL = "local"
    COMPOSE = "compose"
    EXPLICIT = "explicit"


class FabricChoice(StrEnum):
    """What ``--fabric`` / ``$EMUNET_FABRIC`` may say."""

    AUTO = "auto"
    LOCAL = "local"
    COMPOSE = "compose"


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``"HOST:PORT"`` -> ``(HOST, PORT)``; a caller's mistake raises :class:`ConfigError`."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"endpoint {endpoint!r} is not HOST:PORT")
    return host, int(port)


# -- compose containers, as the Docker engine describes them ----------------------


def _host_address(host_ip: str) -> str:
    # a wildcard bind is reachable on loopback; anything else as it is published
    return "127.0.0.1" if host_ip in ("", "0.0.0.0", "::") else host_ip


@dataclass(frozen=True, slots=True)
class ComposeContainer:
    """One container of an emunet compose project (from ``docker inspect``)."""

    name: str
    project: str
    service: str
    role: str  # etcd, controller-manager, node, internet...
    emunet_name: str  # io.emunet.name: node1, internet, vm...
    state: str  # running, exited, restarting, created...
    health: str  # healthy, unhealthy, starting, or "" without a healthcheck
    addresses: tuple[tuple[str, IPv4Address], ...]  # (network, IP) per network
    published: tuple[tuple[str, str, int], ...]  # ("10250/tcp", host address, host port)
    config_files: tuple[str, ...] = ()
    working_dir: str = ""
    token: str = ""  # EMUNET_CONTROL_TOKEN in its environment

    @classmethod
    def from_inspect(cls, attrs: Mapping[str, Any]) -> ComposeContainer | None:
        """Parse one ``docker inspect`` object; None unless it is an emunet container of
        a compose project. Tolerates missing sections (a container being created)."""
        config = attrs.get("Config") or {}
        labels = config.get("Labels") or {}
        role = labels.get(ROLE_LABEL, "")
        project = labels.get(PROJECT_LABEL, "")
        if not role or not project:
            return None
        state = attrs.get("State") or {}
        health = (state.get("Health") or {}).get("Status", "")
        settings = attrs.get("NetworkSettings") or {}
        addresses: list[tuple[str, IPv4Address]] = []
        for network, info in sorted((settings.get("Networks") or {}).items()):
            text = (info or {}).get("IPAddress") or ""
            try:
                addresses.append((network, IPv4Address(text)))
            except ValueError:
                continue  # not attached (yet), or not IPv4
        published: list[tuple[str, str, int]] = []
        for key, bindings in sorted((settings.get("Ports") or {}).items()):
            for binding in bindings or ():
                port = str(binding.get("HostPort") or "")
                if not port.isdigit():
                    continue
                address = _host_address(str(binding.get("HostIp") or ""))
                if ":" in address:
                    continue  # an IPv6 binding: the IPv4 one is listed too
                published.append((key, address, int(port)))
        files = labels.get(CONFIG_FILES_LABEL, "")
        token = ""
        for entry in config.get("Env") or ():
            if isinstance(entry, str) and entry.startswith(f"{TOKEN_ENV}="):
                token = entry.partition("=")[2]
        return cls(
            token=token,
            name=str(attrs.get("Name") or "").lstrip("/"),
            project=project,
            service=labels.get(SERVICE_LABEL, ""),
            role=role,
            emunet_name=labels.get(NAME_LABEL, "") or labels.get(SERVICE_LABEL, ""),
            state=str(state.get("Status") or ""),
            health=str(health),
            addresses=tuple(addresses),
            published=tuple(published),
            config_files=tuple(f for f in files.split(",") if f),
            working_dir=labels.get(WORKING_DIR_LABEL, ""),
        )

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def ready(self) -> bool:
        """Running, and healthy when it has a healthcheck."""
        return self.running and self.health in ("", "healthy")

    @property
    def port_key(self) -> str:
        """The container port the host talks to: etcd's client port, else the control API."""
        return ETCD_PORT_KEY if self.role == "etcd" else CONTROL_PORT_KEY

    def published_address(self, key: str | None = None) -> tuple[str, int] | None:
        wanted = key or self.port_key
        for k, address, port in self.published:
            if k == wanted:
                return address, port
        return None

    def describe(self) -> dict[str, Any]:
        published = self.published_address()
        return {
            "name": self.name,
            "service": self.service,
            "role": self.role,
            "state": self.state,
            "health": self.health or None,
            "nodeIP": ",".join(str(ip) for _net, ip in self.addresses) or None,
            "published": f"{published[0]}:{published[1]}" if published else None,
        }


@dataclass(frozen=True, slots=True)
class ComposeProject:
    name: str
    containers: tuple[ComposeContainer, ...]

    @property
    def etcd_endpoint(self) -> str | None:
        """``127.0.0.1:<published 2379/tcp>`` of a running etcd container, if any."""
        for c in self.containers:
            if c.role == "etcd" and c.running:
                published = c.published_address(ETCD_PORT_KEY)
                if published is not None:
                    return f"{published[0]}:{published[1]}"
        return None

    @property
    def etcd_problem(self) -> str:
        etcd = [c for c in self.containers if c.role == "etcd"]
        if not etcd:
            return f"compose project {self.name} has no etcd container"
        if not any(c.running for c in etcd):
            state = ", ".join(sorted({c.state or "unknown" for c in etcd}))
            return (
                f"the etcd container of compose project {self.name} is not running ({state}): "
                "`emunet up --compose` starts it"
            )
        if not any(c.addresses for c in etcd if c.running):
            # seen when the engine resets its networks under running containers
            # (`docker swarm init` / `leave` on Docker 20.10)
            return (
                f"the etcd container of compose project {self.name} runs attached to no network: "
                "`emunet down` then `emunet up --compose` recreate the fabric"
            )
        return (
            f"the etcd container of compose project {self.name} publishes no {ETCD_PORT_KEY} "
            "port on the host (its compose file must have ports: ['127.0.0.1::2379'])"
        )

    @property
    def token(self) -> str | None:
        """The control token the project's containers were started with, if any."""
        for c in self.containers:
            if c.token:
                return c.token
        return None

    def translations(self) -> dict[tuple[str, int], tuple[str, int]]:
        """(container IP or name, container port) -> published (host address, port)."""
        table: dict[tuple[str, int], tuple[str, int]] = {}
        for c in self.containers:
            for key, address, port in c.published:
                number, _slash, proto = key.partition("/")
                if proto != "tcp" or not number.isdigit():
                    continue
                names = [str(ip) for _net, ip in c.addresses]
                names += [n for n in (c.service, c.name) if n]
                for name in names:
                    table.setdefault((name, int(number)), (address, port))
        return table

    @property
    def config_files(self) -> tuple[str, ...]:
        """The compose files the project was started with (compose records them)."""
        for c in self.containers:
            if c.config_files:
                return c.config_files
        return ()

    @property
    def working_dir(self) -> str:
        return next((c.working_dir for c in self.containers if c.working_dir), "")

    def describe(self) -> dict[str, Any]:
        return {
            "fabric": FabricKind.COMPOSE.value,
            "project": self.name,
            "etcd": self.etcd_endpoint,
            "configFiles": list(self.config_files),
            "containers": [c.describe() for c in self.containers],
        }


_ROLE_ORDER = {role: i for i, role in enumerate(ROLES)}  # others: after these


def _container_order(c: ComposeContainer) -> tuple[int, int, str]:
    digits = "".join(ch for ch in c.emunet_name if ch.isdigit())
    order = _ROLE_ORDER.get(c.role, len(ROLES))
    return order, int(digits) if digits else 0, c.emunet_name or c.name


def group_projects(containers: Iterable[ComposeContainer]) -> dict[str, ComposeProject]:
    """Containers by compose project, each project's in order: etcd, nodes, the rest."""
    by_name: dict[str, list[ComposeContainer]] = {}
    for c in containers:
        by_name.setdefault(c.project, []).append(c)
    return {
        name: ComposeProject(name, tuple(sorted(members, key=_container_order)))
        for name, members in sorted(by_name.items())
    }


@dataclass(frozen=True, slots=True)
class DockerView:
    """What the Docker engine showed: emunet compose projects, or why it could not."""

    projects: Mapping[str, ComposeProject] = field(default_factory=dict)
    error: str = ""  # Docker unavailable: a short reason


def docker_client() -> Any:
    """A Docker SDK client that answered, or raise (any exception: the caller decides)."""
    import docker  # imported only when needed: it costs ~0.1 s

    client = docker.from_env(timeout=DOCKER_TIMEOUT)
    client.ping()
    return client


def _short_reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def discover_compose(client: Any = None) -> DockerView:
    """Every emunet compose project the Docker engine runs (stopped containers too).
    Never raises: Docker being absent is a :class:`DockerView` with ``error`` set."""
    try:
        if client is None:
            client = docker_client()
        found = client.containers.list(all=True, filters={"label": ROLE_LABEL}, ignore_removed=True)
        containers = []
        for container in found:
            parsed = ComposeContainer.from_inspect(container.attrs)
            if parsed is not None:
                containers.append(parsed)
    except Exception as exc:  # ImportError, DockerException, requests' errors...
        return DockerView(error=f"docker is not available ({_short_reason(exc)})")
    return DockerView(group_projects(containers))


def pick_project(
    projects: Mapping[str, ComposeProject], wanted: str | None
) -> ComposeProject | None:
    """The project ``wanted`` names, else the only one; several without ``wanted`` is an
    error naming them. None when there is none (or not the wanted one)."""
    if wanted:
        return projects.get(wanted)
    if len(projects) > 1:
        names = ", ".join(projects)
        raise ConfigError(
            f"several compose fabrics run ({names}): set EMUNET_COMPOSE_PROJECT to one of them"
        )
    return next(iter(projects.values()), None)


# -- the target ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FabricTarget:
    """The fabric one invocation talks to."""

    kind: FabricKind
    description: str
    etcd_endpoint: str | None  # None: no reachable etcd (``problem`` says why)
    translations: Mapping[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    project: ComposeProject | None = None
    state_dir: Path | None = None
    problem: str = ""
    token: str | None = None  # what every control request presents

    @property
    def etcd(self) -> str:
        """The etcd endpoint, or a :class:`ConfigError` saying why there is none."""
        if self.etcd_endpoint is None:
            raise ConfigError(self.problem or f"{self.description}: no etcd endpoint")
        return self.etcd_endpoint

    def reach(self, endpoint: str) -> tuple[str, int]:
        """A recorded control endpoint ``"IP:PORT"`` as an address to connect to."""
        key = parse_endpoint(endpoint)
        return self.translations.get(key, key)


def explicit_target(etcd: str, source: str) -> FabricTarget:
    parse_endpoint(etcd)
    return FabricTarget(
        FabricKind.EXPLICIT,
        f"the fabric of etcd {etcd} (from {source})",
        etcd,
        token=os.environ.get(TOKEN_ENV) or None,
    )


def local_target(state_dir: Path, state: LocalState) -> FabricTarget:
    return FabricTarget(
        FabricKind.LOCAL,
        f"local fabric in {state_dir}",
        state.etcd_endpoint,
        state_dir=state_dir,
        token=read_token(state_dir / TOKEN_FILE),
    )


def compose_target(project: ComposeProject) -> FabricTarget:
    return FabricTarget(
        FabricKind.COMPOSE,
        f"compose fabric (project {project.name})",
        project.etcd_endpoint,
        project.translations(),
        project=project,
        problem=project.etcd_problem,
        token=project.token,
    )


def _choice(text: str, source: str) -> FabricChoice:
    try:
        return FabricChoice(text.strip().lower())
    except ValueError:
        names = ", ".join(c.value for c in FabricChoice)
        raise ConfigError(f"{source}: unknown fabric {text!r} (use one of: {names})") from None


def fabric_choice(option: str | None, env: Mapping[str, str] | None = None) -> FabricChoice:
    """``--fabric``, else ``$EMUNET_FABRIC``, else auto."""
    environ = os.environ if env is None else env
    if option:
        return _choice(option, "--fabric")
    if environ.get("EMUNET_FABRIC"):
        return _choice(environ["EMUNET_FABRIC"], "EMUNET_FABRIC")
    return FabricChoice.AUTO


def select_target(
    *,
    fabric: str | None = None,
    etcd: str | None = None,
    state_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    discover: Callable[[], DockerView] | None = None,
    local_status: Callable[[Path], tuple[LocalState | None, dict[str, bool]]] | None = None,
) -> FabricTarget:
    """Choose the fabric (see the module's docstring for the order).

    ``fabric`` and ``etcd`` are the command-line options, ``env`` the environment
    (default ``os.environ``); ``discover`` and ``local_status`` replace the Docker
    engine and the local state directory (tests).
    """
    environ = os.environ if env is None else env
    find_compose = discover or (lambda: discover_compose())
    if fabric and etcd:
        raise ConfigError("--fabric and --etcd exclude each other: give one")
    status = local_status or (lambda d: LocalFabric(d).status())
    if state_dir is None:
        state_dir = Path(environ["EMUNET_STATE"]) if environ.get("EMUNET_STATE") else None
    state_dir = state_dir or default_state_dir()
    choice: FabricChoice | None = None
    if fabric:
        choice = _choice(fabric, "--fabric")
    elif etcd:
        return explicit_target(etcd, "--etcd")
    elif environ.get("EMUNET_FABRIC"):
        choice = _choice(environ["EMUNET_FABRIC"], "EMUNET_FABRIC")
    elif environ.get("EMUNET_ETCD"):
        return explicit_target(environ["EMUNET_ETCD"], "$EMUNET_ETCD")
    wanted_project = environ.get("EMUNET_COMPOSE_PROJECT") or None

    if choice == FabricChoice.LOCAL:
        state, _alive = status(state_dir)
        if state is None:
            raise ConfigError(
                "no etcd endpoint: start a fabric with `emunet up --local` "
                f"(no local fabric in {state_dir})"
            )
        return local_target(state_dir, state)

    if choice == FabricChoice.COMPOSE:
        view = find_compose()
        if view.error:
            raise ConfigError(f"no compose fabric: {view.error}")
        project = pick_project(view.projects, wanted_project)
        if project is None:
            raise ConfigError(_no_compose(view, wanted_project))
        return compose_target(project)

    # auto: a running local fabric, else a compose fabric, else a stale local state
    state, alive = status(state_dir)
    if state is not None and any(alive.values()):
        return local_target(state_dir, state)
    view = find_compose()
    project = pick_project(view.projects, wanted_project)
    if project is not None:
        return compose_target(project)
    if state is not None:
        return local_target(state_dir, state)
    reasons = [f"no local fabric in {state_dir}", view.error or _no_compose(view, wanted_project)]
    raise ConfigError(f"{_NO_FABRIC} ({'; '.join(reasons)})")


def _no_compose(view: DockerView, wanted: str | None) -> str:
    if wanted:
        others = ", ".join(view.projects) or "none"
        return (
            f"no compose project {wanted} (EMUNET_COMPOSE_PROJECT) runs (emunet projects: {others})"
        )
    return "no compose project with emunet containers (`emunet up --compose` starts one)"
