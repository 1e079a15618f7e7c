"""kube-controller-manager's and kube-scheduler's decisions, as pure functions.

Theory of operation
-------------------
The controller manager process (:mod:`emunet.nodes.controller_manager`) lists
Deployments, pods and nodes from the registry, asks this module what to do
and writes the answer back. Nothing here does I/O or reads a clock.

* **Scheduling** (kube-scheduler's filter and score, reduced): a pod may go
  to a Ready node with room left; a node holds at most :func:`node_capacity`
  pods (its pod CIDR's addresses, less network, broadcast and the gateway:
  253 for a /24, what flannel's host-local IPAM can hand out). The least loaded
  node wins, ties by name. A pod that fits nowhere is created unscheduled,
  ``Pending`` with reason ``Unschedulable`` and the scheduler's message
  (``0/3 nodes are available: 3 Too many pods.``), and is bound once a node
  has room.
  Without a controller manager the CLI places a pod with :func:`schedule_pod`
  (the least loaded Ready node, capacity not checked).
* **Deployment controller**: ``replicas`` non-terminated pods per Deployment;
  surplus pods go not-running first, then from the busiest nodes, newest first
  (the ReplicaSet controller's order). At most :data:`MAX_REPLICAS` replicas.
  A Deployment's pods are named like a ReplicaSet's,
  ``<deployment>-<pod-template-hash>-<5 characters>``
  (:func:`pod_for_deployment`); a pod whose ``pod-template-hash`` label is not
  the template's current one is replaced.
* **Node lifecycle controller**: a node whose lease lapsed is NotReady; after
  ``grace`` seconds (``--node-monitor-grace-period``, 40 s) its pods are
  marked not ready (reason ``NodeNotReady``) and so leave every Service's
  endpoints; after ``toleration`` more seconds (the
  ``node.kubernetes.io/not-ready`` toleration, 300 s) they are evicted
  (deleted), and their Deployments recreate them on Ready nodes. A node that
  comes back is forgotten: its agent marks its remaining pods ready again.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace

from emunet.cluster.registry import MAX_REPLICAS, Deployment, NodeInfo, Pod, PodPhase, PodTemplate
from emunet.errors import EmunetError

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_TOLERATION",
    "MAX_REPLICAS",
    "DeploymentPlan",
    "NodeLifecycle",
    "Unschedulable",
    "deployment_pod_name",
    "node_capacity",
    "plan_deployment",
    "pod_for_deployment",
    "pod_template_hash",
    "schedule",
    "schedule_pod",
    "unschedulable_message",
]

DEFAULT_GRACE = 40.0  # kube-controller-manager --node-monitor-grace-period
DEFAULT_TOLERATION = 300.0  # the default not-ready / unreachable toleration
_UNKNOWN_CAPACITY = 110  # kubelet's --max-pods, for a node without a pod CIDR yet

_TERMINATED = (PodPhase.FAILED, PodPhase.SUCCEEDED)


class Unschedulable(EmunetError):
    """No Ready node can take a pod."""


def node_capacity(node: NodeInfo) -> int:
    """Pods a node can hold: its pod CIDR's host addresses less the cni0 gateway."""
    if node.pod_cidr is None:
        return _UNKNOWN_CAPACITY
    return max(0, node.pod_cidr.num_addresses - 3)


def _load(pods: Iterable[Pod]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in pods:
        if p.node_name and p.phase not in _TERMINATED:
            counts[p.node_name] = counts.get(p.node_name, 0) + 1
    return counts


def unschedulable_message(nodes: Sequence[NodeInfo], load: dict[str, int]) -> str:
    """kube-scheduler's FailedScheduling message: why no node fits."""
    not_ready = sum(1 for n in nodes if not n.ready)
    full = sum(1 for n in nodes if n.ready and load.get(n.name, 0) >= node_capacity(n))
    parts = []
    if full:
        parts.append(f"{full} Too many pods")
    if not_ready:
        parts.append(f"{not_ready} node(s) had untolerated taint {{node.kubernetes.io/not-ready}}")
    why = ", ".join(parts) or "no nodes registered"
    return f"0/{len(nodes)} nodes are available: {why}."


def schedule(nodes: Sequence[NodeInfo], load: dict[str, int], pinned: str = "") -> str | None:
    """The node for one more pod (``pinned``: only that one), or None when none fits.
    ``load`` is updated with the choice."""
    fits = [
        n
        for n in nodes
        if n.ready and load.get(n.name, 0) < node_capacity(n) and (not pinned or n.name == pinned)
    ]
    if not fits:
        return None
    best = min(fits, key=lambda n: (load.get(n.name, 0), n.name)).name
    load[best] = load.get(best, 0) + 1
    return best


def schedule_pod(pods: Iterable[Pod], nodes: Iterable[NodeInfo]) -> str:
    """The Ready node with the fewest (non-terminated) pods, ties by name, whatever
    its capacity (a pod created without a controller manager).

    Raises :class:`Unschedulable` when no node is Ready.
    """
    ready = sorted(n.name for n in nodes if n.ready)
    if not ready:
        raise Unschedulable("no Ready node to schedule the pod on (is the fabric up?)")
    counts = dict.fromkeys(ready, 0)
    for pod in pods:
        if pod.node_name in counts and pod.phase not in _TERMINATED:
            counts[pod.node_name] += 1
    return min(ready, key=lambda name: (counts[name], name))


# ReplicaSet name suffixes use this alphabet (k8s.io/apimachinery rand.String):
# no vowels (no words), no 0/1/3 (confusable).
_RAND_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def pod_template_hash(template: PodTemplate) -> str:
    """10 hex digits identifying a pod template (the ReplicaSet part of pod names)."""
    text = json.dumps(template.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def deployment_pod_name(deployment: Deployment, rng: random.Random | None = None) -> str:
    """``<deployment>-<10 hex>-<5 alnum>``, like a ReplicaSet's pods."""
    rng = rng or random.Random()
    suffix = "".join(rng.choice(_RAND_ALPHABET) for _ in range(5))
    return f"{deployment.name}-{pod_template_hash(deployment.template)}-{suffix}"


def pod_for_deployment(
    deployment: Deployment,
    node_name: str = "",
    rng: random.Random | None = None,
    *,
    uid: str = "",
    created: str = "",
    taken: Collection[str] = (),
) -> Pod:
    """A new Pending pod of ``deployment`` (name unique among ``taken``); the
    template's nodeName, when set, wins over ``node_name``."""
    rng = rng or random.Random()
    name = deployment_pod_name(deployment, rng)
    while name in taken:
        name = deployment_pod_name(deployment, rng)
    labels = dict(deployment.template.labels)
    labels["pod-template-hash"] = pod_template_hash(deployment.template)
    return Pod(
        name=name,
        namespace=deployment.namespace,
        labels=labels,
        uid=uid,
        node_name=deployment.template.node_name or node_name,
        containers=deployment.template.containers,
        owner=deployment.name,
        created=created,
    )


@dataclass
class DeploymentPlan:
    """What the Deployment controller and the scheduler do in one sync."""

    create: list[Pod] = field(default_factory=list)
    delete: list[Pod] = field(default_factory=list)
    bind: list[Pod] = field(default_factory=list)  # unscheduled pods given a node


def _neg(created: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in created)


def plan_deployment(
    deployments: Sequence[Deployment],
    pods: Sequence[Pod],
    nodes: Sequence[NodeInfo],
    rng: random.Random,
    *,
    burst: int = 100,
) -> DeploymentPlan:
    """Create, delete or bind pods so every Deployment has ``replicas`` live pods;
    at most ``burst`` creations and bindings in one sync (etcd is not flooded).

    A pod that fits no node (or not the node its template pins) is created
    unscheduled and bound later: never handed to an agent that cannot hold it.
    """
    plan = DeploymentPlan()
    load = _load(pods)
    budget = burst
    pinned_by = {(d.namespace, d.name): d.template.node_name for d in deployments}
    # the scheduler: bind the unscheduled pods first, oldest first
    waiting = sorted(
        (p for p in pods if not p.node_name and p.phase == PodPhase.PENDING),
        key=lambda p: (p.created, p.name),
    )
    for p in waiting:
        if budget <= 0:
            break
        node = schedule(nodes, load, pinned_by.get((p.namespace, p.owner), ""))
        if node is not None:
            plan.bind.append(replace(p, node_name=node, reason="", message=""))
            budget -= 1
    taken = {(p.namespace, p.name) for p in pods}
    for dep in deployments:
        mine = [p for p in pods if p.owner == dep.name and p.namespace == dep.namespace]
        # a pod of an older template goes (the Recreate strategy): its replacement
        # comes from the template the Deployment has now
        current = pod_template_hash(dep.template)
        stale = [p for p in mine if p.labels.get("pod-template-hash", current) != current]
        plan.delete.extend(stale)
        # a Failed pod (its app crashed, or it could not be created) still counts: the
        # kubelet would restart its container in place (CrashLoopBackOff), so the
        # Deployment does not pile up new pods that fail the same way
        owned = [p for p in mine if p not in stale and p.phase != PodPhase.SUCCEEDED]
        missing = min(dep.replicas, MAX_REPLICAS) - len(owned)
        if missing > 0:
            names = {n for ns, n in taken if ns == dep.namespace}
            for _ in range(min(missing, budget)):
                node = schedule(nodes, load, dep.template.node_name)
                pod = pod_for_deployment(dep, node or "", rng, taken=names)
                if node is None:
                    candidates = [n for n in nodes if n.name == dep.template.node_name] or nodes
                    pod = replace(
                        pod,
                        node_name="",
                        reason="Unschedulable",
                        message=unschedulable_message(candidates, load),
                    )
                names.add(pod.name)
                taken.add((pod.namespace, pod.name))
                plan.create.append(pod)
                budget -= 1
        elif missing < 0:
            counts: dict[str, int] = {}
            for p in owned:
                counts[p.node_name] = counts.get(p.node_name, 0) + 1
            # the ReplicaSet controller's order: unscheduled, not running, busiest, newest
            victims = sorted(
                owned,
                key=lambda p: (
                    bool(p.node_name),
                    p.phase == PodPhase.RUNNING,
                    -counts.get(p.node_name, 0),
                    _neg(p.created),
                    p.name,
                ),
            )[:-missing]
            plan.delete.extend(victims)
    return plan


@dataclass
class NodeLifecycle:
    """Tracks when each node stopped being Ready; decides taints' effects."""

    grace: float = DEFAULT_GRACE
    toleration: float = DEFAULT_TOLERATION
    not_ready_since: dict[str, float] = field(default_factory=dict)

    def observe(self, nodes: Iterable[NodeInfo], now: float) -> None:
        for n in nodes:
            if n.ready:
                self.not_ready_since.pop(n.name, None)
            else:
                self.not_ready_since.setdefault(n.name, now)

    def plan(self, pods: Iterable[Pod], now: float) -> tuple[list[Pod], list[Pod]]:
        """``(pods to mark not ready, pods to evict)``."""
        mark: list[Pod] = []
        evict: list[Pod] = []
        for p in pods:
            since = self.not_ready_since.get(p.node_name)
            if since is None or p.phase in _TERMINATED:
                continue
            down = now - since
            if down >= self.grace + self.toleration:
                evict.append(p)
            elif down >= self.grace and p.phase == PodPhase.RUNNING and p.ready:
                mark.append(
                    p.with_status(
                        p.phase,
                        p.pod_ip,
                        p.host_ip,
                        f"node {p.node_name} is not ready",
                        reason="NodeNotReady",
                        ready=False,
                    )
                )
        return mark, evict
