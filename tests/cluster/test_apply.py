"""apply's diff rules (pure): what each manifest object becomes given the stored one."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

import pytest

from emunet.cluster.apply import (
    Change,
    Step,
    decide,
    decide_deployment,
    decide_pod,
    decide_service,
    needs_ready_node,
    same_service,
)
from emunet.cluster.registry import (
    Container,
    ContainerPort,
    Deployment,
    Pod,
    PodPhase,
    PodTemplate,
    Service,
    ServicePortSpec,
    ServiceType,
)
from emunet.errors import ConfigError

HTTP = Container("web", "http", {"port": 80}, (ContainerPort(80, "TCP", "http"),))
TEMPLATE = PodTemplate({"app": "web"}, (HTTP,))
DEP = Deployment("web", replicas=3, selector={"app": "web"}, template=TEMPLATE)
STORED_DEP = replace(DEP, uid="u-1", created="2024-01-01T00:00:00Z")

SVC = Service("web", type=ServiceType.NODE_PORT, selector={"app": "web"},
              ports=(ServicePortSpec(8080, 80, "TCP"),))  # fmt: skip
# what the registry stores: a cluster IP, a NodePort, a uid and a creation time
STORED_SVC = replace(
    SVC,
    cluster_ip=IPv4Address("10.96.0.10"),
    ports=(ServicePortSpec(8080, 80, "TCP", "", 30080),),
    uid="u-2",
    created="2024-01-01T00:00:00Z",
)

POD = Pod("solo", labels={"app": "solo"}, containers=(HTTP,))
STORED_POD = replace(POD, uid="u-3", created="2024-01-01T00:00:00Z", node_name="node1",
                     message="started").with_status(
    PodPhase.RUNNING, IPv4Address("10.244.1.2"), IPv4Address("192.168.0.11"), "started"
)  # fmt: skip


@pytest.mark.parametrize(
    ("objects", "needs"),
    [
        ([], False),
        ([DEP], True),
        ([replace(DEP, replicas=0)], False),
        ([replace(DEP, template=replace(TEMPLATE, node_name="node1"))], False),
        ([POD], True),
        ([replace(POD, node_name="node1")], False),
        ([SVC], False),
        ([SVC, replace(DEP, replicas=0), POD], True),
    ],
)
def test_needs_ready_node(objects: list[Deployment | Pod | Service], needs: bool) -> None:
    assert needs_ready_node(objects) is needs


def test_deployment_new_is_created() -> None:
    assert decide_deployment(None, DEP) == Step(Change.CREATED, DEP)


def test_deployment_same_spec_is_unchanged_and_reconciles_the_stored_one() -> None:
    step = decide_deployment(STORED_DEP, DEP)
    assert step == Step(Change.UNCHANGED, STORED_DEP)
    assert step.line == "deployment.apps/web unchanged"


@pytest.mark.parametrize(
    ("new", "recreate"),
    [
        (replace(DEP, replicas=5), False),
        (replace(DEP, labels={"tier": "front"}), False),
        (replace(DEP, template=replace(TEMPLATE, node_name="node2")), True),
        (replace(DEP, template=replace(TEMPLATE, containers=(replace(HTTP, app="echo"),))), True),
    ],
)
def test_deployment_other_spec_is_configured_keeping_uid_and_created(
    new: Deployment, recreate: bool
) -> None:
    step = decide_deployment(STORED_DEP, new)
    assert step.change == Change.CONFIGURED
    assert step.obj == replace(new, uid="u-1", created="2024-01-01T00:00:00Z")
    assert step.recreate_pods is recreate
    assert step.line == "deployment.apps/web configured"


@pytest.mark.parametrize(
    ("stored", "manifest", "same"),
    [
        # allocated fields do not count
        (STORED_SVC, SVC, True),
        # a targetPort that repeats the port is the same as none
        (replace(STORED_SVC, ports=(ServicePortSpec(8080, 8080, "TCP", "", 30080),)),
         replace(SVC, ports=(ServicePortSpec(8080, 0, "TCP"),)), True),
        # a NodePort the manifest asks for must be the stored one
        (STORED_SVC, replace(SVC, ports=(ServicePortSpec(8080, 80, "TCP", "", 30080),)), True),
        (STORED_SVC, replace(SVC, ports=(ServicePortSpec(8080, 80, "TCP", "", 30081),)), False),
        (STORED_SVC, replace(SVC, ports=(ServicePortSpec(8081, 80, "TCP"),)), False),
        (STORED_SVC, replace(SVC, ports=(ServicePortSpec(8080, 81, "TCP"),)), False),
        (STORED_SVC, replace(SVC, ports=(ServicePortSpec(8080, 80, "UDP"),)), False),
        (STORED_SVC, replace(SVC, selector={"app": "other"}), False),
        (STORED_SVC, replace(SVC, type=ServiceType.LOAD_BALANCER), False),
        (STORED_SVC, replace(SVC, labels={"tier": "front"}), False),
    ],
)  # fmt: skip
def test_same_service(stored: Service, manifest: Service, same: bool) -> None:
    assert same_service(stored, manifest) is same


@pytest.mark.parametrize(
    ("stored", "manifest", "change"),
    [
        (None, SVC, Change.CREATED),
        (STORED_SVC, SVC, Change.UNCHANGED),
        (STORED_SVC, replace(SVC, selector={"app": "other"}), Change.CONFIGURED),
    ],
)
def test_decide_service(stored: Service | None, manifest: Service, change: Change) -> None:
    step = decide_service(stored, manifest)
    assert step == Step(change, manifest)
    assert step.line == f"service/web {change.value}"


def test_pod_new_is_created_and_an_unchanged_one_is_left() -> None:
    assert decide_pod(None, POD) == Step(Change.CREATED, POD)
    # status, uid, creation time and the scheduler's node are not the spec
    assert decide_pod(STORED_POD, POD) == Step(Change.UNCHANGED, POD)
    assert decide_pod(STORED_POD, replace(POD, node_name="node1")).change == Change.UNCHANGED
    # nodeName is not compared at all (today's rule, kept): another node is "unchanged" too
    assert decide_pod(STORED_POD, replace(POD, node_name="node2")).change == Change.UNCHANGED
    assert decide_pod(None, POD).line == "pod/solo created"


@pytest.mark.parametrize(
    "manifest",
    [
        replace(POD, labels={"app": "other"}),
        replace(POD, containers=(replace(HTTP, args={"port": 81}),)),
        replace(POD, owner="web"),
        replace(POD, namespace="other"),
    ],
)
def test_pod_spec_cannot_change(manifest: Pod) -> None:
    with pytest.raises(ConfigError, match='pod "solo": a pod spec cannot be changed'):
        decide_pod(STORED_POD, manifest)


def test_decide_dispatches_on_the_kind() -> None:
    assert decide(None, DEP).line == "deployment.apps/web created"
    assert decide(STORED_SVC, SVC).line == "service/web unchanged"
    assert decide(STORED_POD, POD).line == "pod/solo unchanged"
