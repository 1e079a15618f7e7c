"""``kubectl apply``'s diff rules, as pure functions.

Theory of operation
-------------------
``emunet apply -f FILE`` walks the manifest's objects in order. For each one it
reads what the registry holds under the same name, asks :func:`decide` what to
do and then does it (:func:`emunet.control.objects_cmd.apply_objects`). Nothing
here does I/O or reads a clock.

* **Deployment**: the same spec (uid and creation time aside) is ``unchanged``
  (its pods are still reconciled); another spec is ``configured`` and keeps the
  stored uid and creation time; a new template replaces the old pods (the
  Recreate strategy).
* **Service**: the same spec is ``unchanged``, where the same spec ignores what
  the registry allocated (the cluster IP, a NodePort the manifest leaves out)
  and a targetPort that only repeats the port; anything else is ``configured``.
* **Pod**: a pod spec is immutable (as in Kubernetes): the stored pod with its
  status taken away must equal the manifest's, else :class:`ConfigError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TypeAlias

from emunet.cluster.registry import Deployment, Pod, PodPhase, Service
from emunet.errors import ConfigError

__all__ = [
    "Change",
    "Manifested",
    "Step",
    "decide",
    "decide_deployment",
    "decide_pod",
    "decide_service",
    "needs_ready_node",
    "same_service",
]

Manifested: TypeAlias = Pod | Deployment | Service


class Change(StrEnum):
    """What apply did to an object (the last word of its output line)."""

    CREATED = "created"
    CONFIGURED = "configured"
    UNCHANGED = "unchanged"


_RESOURCE = {Deployment: "deployment.apps", Service: "service", Pod: "pod"}


@dataclass(frozen=True, slots=True)
class Step:
    """What to do with one manifest object.

    ``obj`` is what to write (for an unchanged Deployment: the stored one, to
    reconcile); ``recreate_pods``: a Deployment's template changed, so its old
    pods go once the new spec is stored."""

    change: Change
    obj: Manifested
    recreate_pods: bool = False

    @property
    def line(self) -> str:
        """kubectl's output line: ``deployment.apps/web configured``."""
        return f"{_RESOURCE[type(self.obj)]}/{self.obj.name} {self.change.value}"


def needs_ready_node(objects: Iterable[Manifested]) -> bool:
    """Whether some object has pods to schedule (a Deployment with replicas and no
    ``nodeName``, a pod without one): then apply refuses a cluster with no Ready node."""
    return any(
        (isinstance(o, Deployment) and o.replicas > 0 and not o.template.node_name)
        or (isinstance(o, Pod) and not o.node_name)
        for o in objects
    )


def decide_deployment(old: Deployment | None, new: Deployment) -> Step:
    if old is None:
        return Step(Change.CREATED, new)
    if replace(old, uid="", created="") == new:
        return Step(Change.UNCHANGED, old)
    return Step(
        Change.CONFIGURED,
        replace(new, uid=old.uid, created=old.created),
        recreate_pods=old.template != new.template,
    )


def same_service(old: Service, new: Service) -> bool:
    """Whether the stored ``old`` already is the manifest's ``new``: allocated fields
    (cluster IP, uid, creation time, a NodePort ``new`` leaves to the allocator) and
    a targetPort equal to the port do not count."""

    def norm(s: Service) -> Service:
        ports = tuple(replace(p, target_port=p.effective_target, node_port=0) for p in s.ports)
        return replace(s, ports=ports, cluster_ip=None, uid="", created="")

    return norm(old) == norm(new) and all(
        not want.node_port or want.node_port == have.node_port
        for want, have in zip(new.ports, old.ports, strict=False)
    )


def decide_service(old: Service | None, new: Service) -> Step:
    if old is None:
        return Step(Change.CREATED, new)
    if same_service(old, new):
        return Step(Change.UNCHANGED, new)
    return Step(Change.CONFIGURED, new)


def decide_pod(old: Pod | None, new: Pod) -> Step:
    """A new pod is created (the caller schedules it when ``nodeName`` is empty);
    an existing one must not change. Raises :class:`ConfigError` if it would."""
    if old is None:
        return Step(Change.CREATED, new)
    spec = replace(old, uid="", created="", phase=PodPhase.PENDING, pod_ip=None,
                   host_ip=None, message="", node_name=new.node_name or "")  # fmt: skip
    if spec != new:
        raise ConfigError(f'pod "{new.name}": a pod spec cannot be changed; delete the pod first')
    return Step(Change.UNCHANGED, new)


def decide(old: Manifested | None, new: Manifested) -> Step:
    """The step for ``new`` given the stored object of its kind and name (or None)."""
    if isinstance(new, Deployment):
        assert old is None or isinstance(old, Deployment)
        return decide_deployment(old, new)
    if isinstance(new, Service):
        assert old is None or isinstance(old, Service)
        return decide_service(old, new)
    assert old is None or isinstance(old, Pod)
    return decide_pod(old, new)
