"""control/fabric.py: which fabric the CLI talks to, and reaching a compose fabric's
agents through the ports its containers publish on 127.0.0.1 (no Docker needed:
containers as `docker inspect` described them, in compose_inspect.json)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from emunet.control.fabric import (
    ComposeContainer,
    ComposeProject,
    DockerView,
    FabricKind,
    discover_compose,
    group_projects,
    parse_endpoint,
    pick_project,
    select_target,
)
from emunet.control.local import LocalState, ProcessRecord

from emunet.errors import ConfigError

INSPECT: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "compose_inspect.json").read_text()
)


def containers(data: list[dict[str, Any]] | None = None) -> list[ComposeContainer]:
    out = []
    for attrs in data if data is not None else INSPECT:
        parsed = ComposeContainer.from_inspect(attrs)
        assert parsed is not None
        out.append(parsed)
    return out


def project(data: list[dict[str, Any]] | None = None, name: str = "emunet") -> ComposeProject:
    return group_projects(containers(data))[name]


def renamed(name: str) -> list[dict[str, Any]]:
    data = copy.deepcopy(INSPECT)
    for attrs in data:
        attrs["Config"]["Labels"]["com.docker.compose.project"] = name
    return data


# -- containers as Docker describes them -------------------------------------------


def test_a_container_description_is_parsed() -> None:
    node1 = next(c for c in containers() if c.service == "node1")
    assert node1.name == "emunet_node1_1"
    assert (node1.project, node1.role, node1.emunet_name) == ("emunet", "node", "node1")
    assert (node1.state, node1.health, node1.ready) == ("running", "healthy", True)
    assert [(net, str(ip)) for net, ip in node1.addresses] == [("emunet_nodenet", "172.18.0.11")]
    assert node1.published == (("10250/tcp", "127.0.0.1", 32791),)
    assert node1.config_files == ("compose/docker-compose.yml",)
    assert node1.working_dir == "/home/user/emunet/compose"
    assert node1.describe() == {
        "name": "emunet_node1_1",
        "service": "node1",
        "role": "node",
        "state": "running",
        "health": "healthy",
        "nodeIP": "172.18.0.11",
        "published": "127.0.0.1:32791",
    }


def _unlabel(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda a: a["Config"]["Labels"].pop(key)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # not ours: no role label, an unknown role, no compose project (docker run, Swarm)
        (_unlabel("io.emunet.role"), None),
        (lambda a: a["Config"]["Labels"].update({"io.emunet.role": ""}), None),
        (_unlabel("com.docker.compose.project"), None),
        # a container being created: no network, no port yet
        (lambda a: a.update({"NetworkSettings": {"Networks": {}, "Ports": {}}}), (0, ())),
        (lambda a: a.update({"NetworkSettings": None, "State": None}), (0, ())),
        # stopped: the engine lists its ports without bindings
        (lambda a: a["NetworkSettings"].update({"Ports": {"10250/tcp": None}}), (1, ())),
        (lambda a: a["NetworkSettings"]["Networks"]["emunet_nodenet"].update(IPAddress=""), (0, (
            ("10250/tcp", "127.0.0.1", 32791),
        ))),
    ],
)  # fmt: skip
def test_partial_or_foreign_descriptions(
    change: Callable[[dict[str, Any]], Any], expected: tuple[int, Any] | None
) -> None:
    attrs = copy.deepcopy(INSPECT[4])  # node1
    change(attrs)
    parsed = ComposeContainer.from_inspect(attrs)
    if expected is None:
        assert parsed is None
    else:
        assert parsed is not None and (len(parsed.addresses), parsed.published) == expected


def test_wildcard_and_ipv6_bindings_are_reached_on_loopback() -> None:
    attrs = copy.deepcopy(INSPECT[4])
    attrs["NetworkSettings"]["Ports"]["10250/tcp"] = [
        {"HostIp": "0.0.0.0", "HostPort": "40001"},
        {"HostIp": "::", "HostPort": "40001"},
    ]
    parsed = ComposeContainer.from_inspect(attrs)
    assert parsed is not None
    assert parsed.published_address() == ("127.0.0.1", 40001)


def test_projects_are_grouped_and_ordered_etcd_nodes_internet() -> None:
    other = renamed("emunet-test-1")[:2]
    later = copy.deepcopy(INSPECT[0])  # a service with a role of its own, added later
    later["Name"] = "/emunet_dns_1"
    later["Config"]["Labels"].update({"io.emunet.role": "dns", "io.emunet.name": "dns"})
    cm = copy.deepcopy(INSPECT[0])
    cm["Name"] = "/emunet_controller-manager_1"
    cm["Config"]["Labels"].update(
        {"io.emunet.role": "controller-manager", "io.emunet.name": "controller-manager"}
    )
    cm["Config"]["Labels"]["com.docker.compose.service"] = "controller-manager"
    later["Config"]["Labels"]["com.docker.compose.service"] = "dns"
    projects = group_projects(containers([later, *INSPECT, cm, *other]))
    assert list(projects) == ["emunet", "emunet-test-1"]
    assert [c.service for c in projects["emunet"].containers] == [
        "etcd",
        "controller-manager",
        "node1",
        "node2",
        "node3",
        "internet",
        "vm",
        "dns",
    ]
    assert [c.service for c in projects["emunet-test-1"].containers] == ["node2", "vm"]


def test_reach_translates_container_addresses_to_published_ports() -> None:
    proj = project()
    assert proj.etcd_endpoint == "127.0.0.1:32783"
    view = DockerView({"emunet": proj})
    target = select_target(fabric="compose", env={}, discover=lambda: view)
    assert target.kind == FabricKind.COMPOSE
    assert target.etcd == "127.0.0.1:32783"
    assert target.description == "compose fabric (project emunet)"
    # what the agents record (their node IP) and the internet process (.1, .100)
    assert target.reach("172.18.0.11:10250") == ("127.0.0.1", 32791)
    assert target.reach("172.18.0.12:10250") == ("127.0.0.1", 32777)
    assert target.reach("172.18.0.1:10250") == ("127.0.0.1", 32779)
    assert target.reach("172.18.0.100:10250") == ("127.0.0.1", 32792)
    assert target.reach("node1:10250") == ("127.0.0.1", 32791)  # the service name too
    # anything else passes through unchanged
    assert target.reach("172.18.0.11:8285") == ("172.18.0.11", 8285)
    assert target.reach("10.9.9.9:10250") == ("10.9.9.9", 10250)
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        target.reach("172.18.0.11")


def test_a_compose_fabric_without_a_running_etcd_says_so() -> None:
    data = copy.deepcopy(INSPECT)
    etcd = next(a for a in data if a["Config"]["Labels"]["io.emunet.role"] == "etcd")
    etcd["State"] = {"Status": "exited", "Running": False}
    etcd["NetworkSettings"]["Ports"] = {"2379/tcp": None}
    target = select_target(fabric="compose", env={}, discover=lambda: DockerView(
        {"emunet": project(data)}
    ))  # fmt: skip
    assert target.etcd_endpoint is None
    with pytest.raises(ConfigError, match=r"etcd container .* is not running \(exited\)"):
        _ = target.etcd
    # its agents are still translated (status shows them)
    assert target.reach("172.18.0.11:10250") == ("127.0.0.1", 32791)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:2379", ("127.0.0.1", 2379)), ("etcd:2379", ("etcd", 2379))],
)
def test_parse_endpoint(text: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize("text", ["etcd", ":2379", "etcd:", "etcd:x", "etcd:70000", "etcd:0"])
def test_parse_endpoint_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        parse_endpoint(text)


# -- choosing the target -------------------------------------------------------------


def local_state(tmp_path: Path) -> LocalState:
    return LocalState(
        "127.0.0.1:41234",
        "10.244.0.0/16",
        [ProcessRecord("etcd", 1, "x", "log"), ProcessRecord("node1", 2, "y", "log")],
        0.0,
    )


class World:
    """A machine: maybe a local fabric (running or stale), maybe Docker projects."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        local: str = "none",  # none, running, stale
        projects: dict[str, ComposeProject] | None = None,
        docker_error: str = "",
    ) -> None:
        self.tmp_path = tmp_path
        self.local = local
        self.view = DockerView(projects or {}, docker_error)
        self.docker_calls = 0

    def status(self, state_dir: Path) -> tuple[LocalState | None, dict[str, bool]]:
        assert state_dir == self.tmp_path / "state"
        if self.local == "none":
            return None, {}
        alive = self.local == "running"
        return local_state(self.tmp_path), {"etcd": alive, "node1": alive}

    def discover(self) -> DockerView:
        self.docker_calls += 1
        return self.view

    def select(self, env: dict[str, str] | None = None, **options: Any) -> Any:
        return select_target(
            state_dir=self.tmp_path / "state",
            env=env or {},
            discover=self.discover,
            local_status=self.status,
            **options,
        )


@pytest.mark.parametrize(
    ("local", "has_compose", "expected"),
    [
        ("running", True, FabricKind.LOCAL),  # a running local fabric wins
        ("running", False, FabricKind.LOCAL),
        ("stale", True, FabricKind.COMPOSE),  # a dead local state does not
        ("stale", False, FabricKind.LOCAL),  # ... unless nothing else runs
        ("none", True, FabricKind.COMPOSE),
    ],
)
def test_auto_selection(tmp_path: Path, local: str, has_compose: bool, expected: str) -> None:
    world = World(tmp_path, local=local, projects={"emunet": project()} if has_compose else {})
    target = world.select()
    assert target.kind == expected
    if expected == FabricKind.LOCAL:
        assert target.etcd == "127.0.0.1:41234"
        assert target.description == f"local fabric in {tmp_path / 'state'}"
        assert target.reach("127.0.0.11:10250") == ("127.0.0.11", 10250)
    else:
        assert target.etcd == "127.0.0.1:32783"
    assert world.docker_calls == (0 if local == "running" else 1)  # Docker only if needed


def test_explicit_choices_and_their_order(tmp_path: Path) -> None:
    world = World(tmp_path, local="running", projects={"emunet": project()})
    # --etcd: used as given, no translation (inside a container)
    target = world.select(etcd="etcd:2379")
    assert target.kind == FabricKind.EXPLICIT and target.etcd == "etcd:2379"
    assert target.reach("172.18.0.11:10250") == ("172.18.0.11", 10250)
    assert "from --etcd" in target.description
    env_etcd = world.select({"EMUNET_ETCD": "etcd:2379"})
    assert env_etcd.kind == FabricKind.EXPLICIT and "$EMUNET_ETCD" in env_etcd.description
    # --fabric beats everything; --etcd beats the environment; EMUNET_FABRIC beats EMUNET_ETCD
    assert world.select(fabric="compose").kind == FabricKind.COMPOSE
    assert world.select({"EMUNET_FABRIC": "compose"}, etcd="e:1").kind == FabricKind.EXPLICIT
    both = {"EMUNET_FABRIC": "compose", "EMUNET_ETCD": "e:1"}
    assert world.select(both).kind == FabricKind.COMPOSE
    assert world.select(both, fabric="local").kind == FabricKind.LOCAL
    # auto forces the search even where the environment names an etcd
    assert world.select({"EMUNET_ETCD": "e:1"}, fabric="auto").kind == FabricKind.LOCAL
    assert world.select({"EMUNET_FABRIC": "LOCAL"}).kind == FabricKind.LOCAL
    with pytest.raises(ConfigError, match="--fabric and --etcd exclude each other"):
        world.select(fabric="local", etcd="e:1")
    with pytest.raises(ConfigError, match=r"EMUNET_FABRIC: unknown fabric 'kind' \(use one of"):
        world.select({"EMUNET_FABRIC": "kind"})
    with pytest.raises(ConfigError, match=r"--fabric: unknown fabric"):
        world.select(fabric="swarm")
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        world.select(etcd="nowhere")


def test_nothing_runs_one_error_saying_how_to_start(tmp_path: Path) -> None:
    world = World(tmp_path, docker_error="docker is not available (connection refused)")
    with pytest.raises(ConfigError) as info:
        world.select()
    message = str(info.value)
    assert message.startswith("no etcd endpoint: start a fabric with `emunet up --local`")
    for needed in ("`emunet up --compose`", "`make up`", "--etcd HOST:PORT", "connection refused"):
        assert needed in message, message
    assert "\n" not in message
    with pytest.raises(ConfigError, match=r"^no compose fabric: docker is not available"):
        world.select(fabric="compose")
    with pytest.raises(ConfigError, match=r"`emunet up --local` \(no local fabric in "):
        world.select(fabric="local")
    empty = World(tmp_path)
    with pytest.raises(ConfigError, match="no compose project with emunet containers"):
        empty.select(fabric="compose")


def test_several_projects_need_a_name(tmp_path: Path) -> None:
    projects = group_projects(containers([*INSPECT, *renamed("emunet-test-7")]))
    world = World(tmp_path, projects=projects)
    with pytest.raises(ConfigError) as info:
        world.select()
    assert str(info.value) == (
        "several compose fabrics run (emunet, emunet-test-7): "
        "set EMUNET_COMPOSE_PROJECT to one of them"
    )
    chosen = world.select({"EMUNET_COMPOSE_PROJECT": "emunet-test-7"})
    assert chosen.project is not None and chosen.project.name == "emunet-test-7"
    with pytest.raises(
        ConfigError, match=r"no compose project other .* \(emunet projects: emunet,"
    ):
        world.select({"EMUNET_COMPOSE_PROJECT": "other"}, fabric="compose")
    assert pick_project({}, None) is None


# -- the Docker SDK ---------------------------------------------------------------------


class FakeContainer:
    def __init__(self, attrs: dict[str, Any]) -> None:
        self.attrs = attrs


class FakeContainers:
    def __init__(self, found: list[dict[str, Any]] | Exception) -> None:
        self.found = found
        self.calls: list[dict[str, Any]] = []

    def list(self, **kwargs: Any) -> list[FakeContainer]:
        self.calls.append(kwargs)
        if isinstance(self.found, Exception):
            raise self.found
        return [FakeContainer(a) for a in self.found]


class FakeClient:
    def __init__(self, found: list[dict[str, Any]] | Exception) -> None:
        self.containers = FakeContainers(found)


def test_discovery_asks_for_every_emunet_container() -> None:
    client = FakeClient([*INSPECT, {"Config": {"Labels": {"io.emunet.role": "node"}}}])
    view = discover_compose(client)
    assert view.error == "" and list(view.projects) == ["emunet"]
    assert len(view.projects["emunet"].containers) == 6
    assert client.containers.calls == [
        {"all": True, "filters": {"label": "io.emunet.role"}, "ignore_removed": True}
    ]


def test_discovery_is_quiet_when_docker_fails() -> None:
    view = discover_compose(FakeClient(ConnectionError("Connection aborted.\n  refused")))
    assert view.projects == {}
    assert view.error == "docker is not available (Connection aborted. refused)"


def test_discovery_is_quiet_when_no_docker_engine_answers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The real SDK, pointed at a socket nothing listens on: no exception, a reason."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/docker.sock")
    view = discover_compose()
    assert view.projects == {} and view.error.startswith("docker is not available (")
    with pytest.raises(ConfigError, match=r"^no etcd endpoint: .*docker is not available"):
        select_target(state_dir=tmp_path / "state", env={})


def test_an_etcd_container_detached_from_its_network_says_so() -> None:
    data = copy.deepcopy(INSPECT)
    etcd = next(a for a in data if a["Config"]["Labels"]["io.emunet.role"] == "etcd")
    etcd["NetworkSettings"] = {"Networks": {}, "Ports": {}}  # as the engine shows it then
    proj = project(data)
    assert proj.etcd_endpoint is None
    assert "runs attached to no network: `emunet down` then `emunet up" in proj.etcd_problem
    etcd["NetworkSettings"] = copy.deepcopy(INSPECT[4]["NetworkSettings"])  # no 2379 binding
    assert "publishes no 2379/tcp port on the host" in project(data).etcd_problem
