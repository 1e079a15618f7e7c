"""The controller manager's decisions (pure): scheduling with capacity, the
Deployment controller, node lifecycle (issue 11)."""

from __future__ import annotations

import random
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

import pytest

from emunet.cluster.controllers import (
    NodeLifecycle,
    node_capacity,
    plan_deployment,
    schedule,
)
from emunet.cluster.endpoints import endpoints_for
from emunet.cluster.registry import (
    Container,
    Deployment,
    NodeInfo,
    Pod,
    PodPhase,
    PodTemplate,
    Service,
    ServicePortSpec,
)
from emunet.errors import ConfigError

A = IPv4Address


def nodes(ready: tuple[bool, ...] = (True, True, True), prefix: int = 24) -> list[NodeInfo]:
    return [
        NodeInfo(
            f"node{i + 1}",
            A(f"172.18.0.{11 + i}"),
            IPv4Network(f"10.244.{i + 1}.0/{prefix}"),
            ready=r,
        )
        for i, r in enumerate(ready)
    ]


def dep(replicas: int, pinned: str = "") -> Deployment:
    template = PodTemplate({"app": "web"}, (Container("main", "http"),), pinned)
    return Deployment("web", replicas=replicas, selector={"app": "web"}, template=template)


def test_capacity_comes_from_the_pod_cidr() -> None:
    ns = nodes(prefix=24) + nodes(prefix=28)[:1]
    assert [node_capacity(n) for n in ns] == [253, 253, 253, 13]
    load = {"node1": 253}
    assert schedule(ns[:1], load) is None
    assert schedule(ns[:2], load) == "node2" and load["node2"] == 1


def test_replicas_spread_and_beyond_capacity_wait_unscheduled() -> None:
    small = nodes(prefix=29)  # 5 pods each
    plan = plan_deployment([dep(20)], [], small, random.Random(1))
    scheduled = [p for p in plan.create if p.node_name]
    waiting = [p for p in plan.create if not p.node_name]
    assert len(scheduled) == 15 and len(waiting) == 5
    assert {p.node_name for p in scheduled} == {"node1", "node2", "node3"}
    assert all(p.reason == "Unschedulable" and p.phase == PodPhase.PENDING for p in waiting)
    assert waiting[0].message == "0/3 nodes are available: 3 Too many pods."
    # a node gains room: the oldest waiting pod is bound to it
    gone = next(p for p in scheduled if p.node_name == "node2")
    pods = [replace(p, phase=PodPhase.RUNNING) for p in scheduled if p is not gone] + waiting
    again = plan_deployment([dep(20)], pods, small, random.Random(2))
    assert [p.node_name for p in again.bind] == ["node2"] and not again.bind[0].reason
    assert again.bind[0].name == min(p.name for p in waiting)
    # the Deployment is one short, but the new pod has nowhere to go: it waits
    assert [(p.node_name, p.reason) for p in again.create] == [("", "Unschedulable")]


def test_pinned_pods_never_reach_a_full_node() -> None:
    """255 pods pinned to one node: 253 fit, the others wait with a reason."""
    plan = plan_deployment([dep(255, "node3")], [], nodes(), random.Random(1), burst=1000)
    on_node3 = [p for p in plan.create if p.node_name == "node3"]
    assert len(on_node3) == 253 and len(plan.create) == 255
    assert {p.message for p in plan.create if not p.node_name} == {
        "0/1 nodes are available: 1 Too many pods."
    }


def test_burst_bounds_one_sync_and_replicas_are_capped() -> None:
    plan = plan_deployment([dep(500)], [], nodes(), random.Random(1), burst=100)
    assert len(plan.create) == 100
    with pytest.raises(ConfigError, match=r"spec\.replicas: must be 0 to 1000, got 100000"):
        dep(100000).validate()


def test_scale_down_removes_unscheduled_then_busiest_newest() -> None:
    base = plan_deployment([dep(4)], [], nodes(), random.Random(1)).create
    pods = [replace(p, phase=PodPhase.RUNNING, created=f"2026-01-0{i + 1}T00:00:00Z")
            for i, p in enumerate(base)]  # fmt: skip
    waiting = replace(base[0], name="web-x-wait", node_name="", reason="Unschedulable")
    plan = plan_deployment([dep(4)], [*pods, waiting], nodes(), random.Random(1))
    assert [p.name for p in plan.delete] == ["web-x-wait"]
    plan = plan_deployment([dep(2)], pods, nodes(), random.Random(1))
    busiest = [p for p in pods if p.node_name == "node1"]  # node1 got two of four
    assert len(busiest) == 2 and plan.delete[0] == max(busiest, key=lambda p: p.created)


def test_node_lifecycle_grace_then_eviction_and_endpoints() -> None:
    life = NodeLifecycle(grace=5.0, toleration=10.0)
    pod = Pod("web-1", labels={"app": "web"}, node_name="node2", phase=PodPhase.RUNNING,
              pod_ip=A("10.244.2.5"), owner="web",
              containers=(Container("main", "http"),))  # fmt: skip
    svc = Service("web", selector={"app": "web"}, ports=(ServicePortSpec(80),))
    assert len(endpoints_for(svc, [pod])) == 1
    life.observe(nodes((True, False, True)), now=100.0)
    assert life.plan([pod], 104.0) == ([], [])
    mark, evict = life.plan([pod], 105.0)
    assert evict == [] and mark[0].reason == "NodeNotReady" and not mark[0].ready
    assert endpoints_for(svc, mark) == []  # out of every Service's endpoints
    assert Pod.from_json(mark[0].to_json()) == mark[0]  # status.conditions round trip
    assert life.plan(mark, 110.0) == ([], [])  # marked once
    assert life.plan(mark, 115.0)[1] == mark  # evicted after the toleration
    life.observe(nodes(), now=116.0)  # the node is back: nothing more happens
    assert life.plan(mark, 200.0) == ([], [])


def test_failed_pods_count_and_old_templates_are_replaced() -> None:
    """A crashing app fails its pod: the Deployment keeps it (as a kubelet restarts
    a container in place) instead of piling up new pods that fail the same way."""
    base = plan_deployment([dep(2)], [], nodes(), random.Random(1)).create
    failed = [replace(p, phase=PodPhase.FAILED, reason="Error") for p in base]
    again = plan_deployment([dep(2)], failed, nodes(), random.Random(2))
    assert again.create == [] and again.delete == []
    # a new template: the old pods go, new ones come from the new template
    newer = Deployment(
        "web", replicas=2, selector={"app": "web"},
        template=PodTemplate({"app": "web"}, (Container("main", "echo"),)),
    )  # fmt: skip
    running = [replace(p, phase=PodPhase.RUNNING) for p in base]
    plan = plan_deployment([newer], running, nodes(), random.Random(3))
    assert sorted(p.name for p in plan.delete) == sorted(p.name for p in base)
    assert len(plan.create) == 2 and all(p.containers[0].app == "echo" for p in plan.create)
