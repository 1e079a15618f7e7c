"""The cluster registry in etcd (aetcd adapter).

The objects and rules are pure (:mod:`emunet.cluster.registry`); this module
moves them to and from etcd under ``/registry`` (docs/ARCHITECTURE.md).

API summary
-----------
``async with Registry("127.0.0.1:2379") as reg:``

* Nodes: :meth:`Registry.register_node` writes ``/registry/minions/<name>``
  and the node's Ready lease key ``/registry/leases/kube-node-lease/<name>``
  on an etcd lease (TTL 10 s) kept alive by a task (re-granted if it expired,
  e.g. after an etcd outage); :meth:`Registry.unregister_node` stops that and
  revokes the lease; :meth:`Registry.nodes` / :meth:`Registry.get_node` report
  ``ready`` = the lease key exists.
* Pods: :meth:`get_pod`, :meth:`list_pods`, :meth:`create_pod` (fails with
  :class:`AlreadyExists`), :meth:`put_pod` (create or overwrite),
  :meth:`delete_pod`.
* Services: :meth:`create_service` allocates (or claims the given) ClusterIP
  and NodePorts and writes the Service and its claim keys
  ``/registry/ranges/serviceips/<ip>``, ``/registry/ranges/servicenodeports/<port>``
  in ONE transaction guarded by ``version == 0`` on every key; on a lost race it
  re-reads the claims and tries again. :meth:`update_service` keeps the
  ClusterIP, claims new NodePorts and releases dropped ones (guarded by the
  Service's mod revision). :meth:`delete_service` deletes the Service and its
  claims in one transaction. :meth:`get_service`, :meth:`list_services`.
* Deployments: :meth:`get_deployment`, :meth:`list_deployments`,
  :meth:`put_deployment`, :meth:`delete_deployment`.
* :meth:`Registry.watch` ``(prefix)`` yields :class:`WatchEvent` ``(type,
  key, object)`` with ``type`` "PUT" or "DELETE": a snapshot of the prefix
  (one PUT per key), then changes from the snapshot's revision + 1. It
  reconnects with backoff (0.1 .. 5 s) and resumes after the last revision
  seen; when that revision was compacted it re-lists and emits the difference
  (PUT for new or changed keys, DELETE for vanished ones). With
  ``sync_marker=True`` a ``("SYNC", "", None)`` event follows every (re)list.
  Values that do not parse are counted in :attr:`Registry.malformed` and skipped.

Errors are one-line :class:`EtcdUnavailable` / :class:`EtcdError` (from
``emunet.nodes.etcd``), :class:`NotFound`, :class:`AlreadyExists`, or
:class:`~emunet.errors.ConfigError` (a requested ClusterIP/NodePort is taken).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import random
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Literal

import aetcd
from emunet.nodes.etcd import EtcdClient, EtcdError, EtcdUnavailable

from emunet.cluster import keys
from emunet.cluster.allocators import (
    DEFAULT_SERVICE_CIDR,
    NODE_PORT_RANGE,
    allocate_cluster_ip,
    allocate_node_port,
)
from emunet.cluster.keys import Kind
from emunet.cluster.registry import (
    NODE_LEASE_TTL,
    Deployment,
    ExternalHostInfo,
    NodeInfo,
    Pod,
    Service,
    ServiceType,
)
from emunet.errors import ConfigError, EmunetError

__all__ = [
    "AlreadyExists",
    "EtcdError",
    "EtcdUnavailable",
    "NotFound",
    "Registry",
    "RegistryObject",
    "WatchEvent",
    "now_rfc3339",
]

log = logging.getLogger(__name__)

RegistryObject = NodeInfo | Pod | Service | Deployment | ExternalHostInfo | dict[str, Any]

_TXN_RETRIES = 16


class NotFound(EmunetError):
    """The named object does not exist."""


class AlreadyExists(EmunetError):
    """An object with that name exists already."""


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: Literal["PUT", "DELETE", "SYNC"]
    key: str
    object: RegistryObject | None  # None for DELETE and SYNC


def now_rfc3339() -> str:
    """``metadata.creationTimestamp`` format: ``2024-05-01T12:00:00Z``."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_DECODERS: dict[Kind, Callable[[bytes], RegistryObject]] = {
    Kind.POD: Pod.from_json,
    Kind.SERVICE: Service.from_json,
    Kind.DEPLOYMENT: Deployment.from_json,
    Kind.NODE: NodeInfo.from_json,
    Kind.HOST: ExternalHostInfo.from_json,
}


def decode(key: str, value: bytes) -> RegistryObject:
    """The object stored at ``key``; raises ConfigError when it does not parse."""
    parsed = keys.parse_key(key)
    decoder = _DECODERS.get(parsed[0]) if parsed else None
    if decoder is not None:
        return decoder(value)
    try:
        obj = json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{key}: not valid JSON ({exc})") from None
    return obj if isinstance(obj, dict) else {"value": obj}


class Registry(EtcdClient):
    """The registry client; use as ``async with``. Constructing it does no I/O."""

    _log = log

    def __init__(
        self,
        endpoint: str,
        *,
        request_timeout: float = 5.0,
        service_cidr: IPv4Network = DEFAULT_SERVICE_CIDR,
        node_port_range: tuple[int, int] = NODE_PORT_RANGE,
        watch_backoff: tuple[float, float] = (0.1, 5.0),
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(endpoint, request_timeout=request_timeout, watch_backoff=watch_backoff)
        self.service_cidr = service_cidr
        self.node_port_range = node_port_range
        self._rng = rng or random.Random()
        self._keepalives: dict[str, asyncio.Task[None]] = {}
        self._lease_ids: dict[str, int] = {}
        # counters
        self.malformed = 0
        self.txn_conflicts = 0
        self.lease_regrants = 0

    # -- lifecycle ---------------------------------------------------------

    async def _stop_tasks(self) -> None:
        """Stop keep-alives (on close): node leases then expire on their own."""
        for task in self._keepalives.values():
            task.cancel()
        for task in self._keepalives.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._keepalives.clear()

    def _decode_many(self, kvs: list[Any]) -> list[Any]:
        out = []
        for kv in kvs:
            key = kv.key.decode(errors="replace")
            try:
                out.append(decode(key, kv.value))
            except ConfigError as exc:
                self.malformed += 1
                log.warning("ignoring malformed registry value at %s: %s", key, exc)
        return out

    # -- nodes ---------------------------------------------------------------

    async def register_node(self, node: NodeInfo, ttl: int = NODE_LEASE_TTL) -> None:
        """Write the Node and its Ready lease key, and keep the lease alive."""
        node.validate()
        if ttl < 2:
            raise ConfigError(f"node lease ttl: {ttl} s is too short (at least 2 s)")
        with self._errors():
            await self.client.put(keys.key(Kind.NODE, node.name).encode(), node.to_json().encode())
        await self.hold_lease(keys.key(Kind.NODE_LEASE, node.name), node.name, ttl)

    async def hold_lease(self, key: str, holder: str, ttl: int) -> None:
        """Put ``key`` (a Lease object naming ``holder``) on an etcd lease of ``ttl``
        seconds and keep it alive: it vanishes ``ttl`` seconds after its holder."""
        await self._grant_lease(key, holder, ttl)
        old = self._keepalives.pop(key, None)
        if old is not None:
            old.cancel()
        self._keepalives[key] = asyncio.get_running_loop().create_task(
            self._keepalive(key, holder, ttl), name=f"lease-{holder}"
        )

    async def lease_held(self, key: str) -> bool:
        """Whether somebody holds the lease key ``key`` now."""
        return await self._get(key) is not None

    async def _grant_lease(self, key: str, name: str, ttl: int) -> None:
        value = json.dumps(
            {
                "holderIdentity": name,
                "leaseDurationSeconds": ttl,
                "renewTime": now_rfc3339(),
            },
            separators=(",", ":"),
        )
        with self._errors():
            lease = await self.client.lease(ttl)
            await self.client.put(key.encode(), value.encode(), lease=lease.id)
        self._lease_ids[key] = lease.id

    async def _keepalive(self, key: str, name: str, ttl: int) -> None:
        interval = max(ttl / 3, 0.5)
        while True:
            await asyncio.sleep(interval)
            try:
                with self._errors():
                    reply = await self.client.refresh_lease(self._lease_ids[key])
                if reply is None or reply.TTL <= 0:
                    log.warning("the lease of %s expired; granting a new one", name)
                    self.lease_regrants += 1
                    await self._grant_lease(key, name, ttl)
            except EtcdError as exc:
                log.warning("cannot renew the lease of %s: %s", name, exc)

    async def unregister_node(self, name: str, *, delete: bool = False) -> None:
        """Stop keeping ``name`` alive and revoke its lease (it turns NotReady at
        once); ``delete`` also removes the Node object."""
        key = keys.key(Kind.NODE_LEASE, name)
        task = self._keepalives.pop(key, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        lease_id = self._lease_ids.pop(key, None)
        with self._errors():
            if lease_id is not None:
                with contextlib.suppress(aetcd.ClientError):
                    await self.client.revoke_lease(lease_id)
            await self.client.delete(keys.key(Kind.NODE_LEASE, name).encode())
            if delete:
                await self.client.delete(keys.key(Kind.NODE, name).encode())

    async def nodes(self) -> list[NodeInfo]:
        """Every Node, sorted by name, with ``ready`` from its lease key."""
        kvs, _ = await self._list(keys.prefix(Kind.NODE))
        leases, _ = await self._list(keys.prefix(Kind.NODE_LEASE))
        alive = {kv.key.decode(errors="replace").rsplit("/", 1)[-1] for kv in leases}
        out = [
            replace(n, ready=n.name in alive)
            for n in self._decode_many(kvs)
            if isinstance(n, NodeInfo)
        ]
        return sorted(out, key=lambda n: n.name)

    async def get_node(self, name: str) -> NodeInfo | None:
        got = await self._get(keys.key(Kind.NODE, name))
        if got is None:
            return None
        node = NodeInfo.from_json(got.value)
        lease = await self._get(keys.key(Kind.NODE_LEASE, name))
        return replace(node, ready=lease is not None)

    async def require_node(self, name: str) -> NodeInfo:
        node = await self.get_node(name)
        if node is None:
            known = ", ".join(n.name for n in await self.nodes()) or "none"
            raise NotFound(f"no such node: {name} (nodes: {known})")
        return node

    # -- external hosts (the internet process) ----------------------------------

    async def put_host(self, host: ExternalHostInfo, lease: int | None = None) -> None:
        """Record an external host (on the internet process's etcd lease, if given)."""
        host.validate()
        with self._errors():
            if lease is None:
                await self.client.put(
                    keys.key(Kind.HOST, host.name).encode(), host.to_json().encode()
                )
            else:
                await self.client.put(
                    keys.key(Kind.HOST, host.name).encode(), host.to_json().encode(), lease=lease
                )

    async def hosts(self) -> list[ExternalHostInfo]:
        """Every external host, sorted by segment and name."""
        kvs, _ = await self._list(keys.prefix(Kind.HOST))
        out = [h for h in self._decode_many(kvs) if isinstance(h, ExternalHostInfo)]
        return sorted(out, key=lambda h: (h.segment, h.name))

    async def require_host(self, name: str) -> ExternalHostInfo:
        got = await self._get(keys.key(Kind.HOST, name))
        if got is None:
            names = ", ".join(h.name for h in await self.hosts())
            known = names or "none: is the internet running?"
            raise NotFound(f"no such external host: {name} (hosts: {known})")
        return ExternalHostInfo.from_json(got.value)

    # -- pods ------------------------------------------------------------------

    async def get_pod(self, namespace: str, name: str) -> Pod | None:
        got = await self._get(keys.key(Kind.POD, name, namespace))
        return None if got is None else Pod.from_json(got.value)

    async def require_pod(self, namespace: str, name: str) -> Pod:
        pod = await self.get_pod(namespace, name)
        if pod is None:
            raise NotFound(f'pods "{name}" not found in namespace {namespace}')
        return pod

    async def list_pods(self, namespace: str | None = None) -> list[Pod]:
        kvs, _ = await self._list(keys.prefix(Kind.POD, namespace))
        return [p for p in self._decode_many(kvs) if isinstance(p, Pod)]

    async def create_pod(self, pod: Pod) -> Pod:
        """Create ``pod`` (a uid and creationTimestamp are filled in if empty)."""
        pod.validate()
        if not pod.uid or not pod.created:
            pod = replace(
                pod, uid=pod.uid or str(uuid.uuid4()), created=pod.created or now_rfc3339()
            )
        key = pod.key.encode()
        txn = self.client.transactions
        with self._errors():
            ok, _ = await self.client.transaction(
                compare=[txn.version(key) == 0],
                success=[txn.put(key, pod.to_json().encode())],
                failure=[],
            )
        if not ok:
            raise AlreadyExists(f'pods "{pod.name}" already exists in namespace {pod.namespace}')
        return pod

    async def put_pod(self, pod: Pod) -> None:
        """Create or overwrite (the kubelet's status updates)."""
        pod.validate()
        with self._errors():
            await self.client.put(pod.key.encode(), pod.to_json().encode())

    async def update_pod_if_exists(self, pod: Pod) -> bool:
        """Overwrite ``pod`` only if it still exists (a kubelet must not resurrect
        a pod deleted meanwhile). Returns False when it was gone."""
        key = pod.key.encode()
        txn = self.client.transactions
        with self._errors():
            ok, _ = await self.client.transaction(
                compare=[txn.version(key) > 0],
                success=[txn.put(key, pod.to_json().encode())],
                failure=[],
            )
        return bool(ok)

    async def delete_pod(self, namespace: str, name: str) -> bool:
        with self._errors():
            return bool(await self.client.delete(keys.key(Kind.POD, name, namespace).encode()))

    # -- services ------------------------------------------------------------

    async def get_service(self, namespace: str, name: str) -> Service | None:
        got = await self._get(keys.key(Kind.SERVICE, name, namespace))
        return None if got is None else Service.from_json(got.value)

    async def require_service(self, namespace: str, name: str) -> Service:
        svc = await self.get_service(namespace, name)
        if svc is None:
            raise NotFound(f'services "{name}" not found in namespace {namespace}')
        return svc

    async def list_services(self, namespace: str | None = None) -> list[Service]:
        kvs, _ = await self._list(keys.prefix(Kind.SERVICE, namespace))
        return [s for s in self._decode_many(kvs) if isinstance(s, Service)]

    async def _claims(self) -> tuple[set[IPv4Address], set[int]]:
        ips, _ = await self._list(keys.prefix(Kind.SERVICE_IP))
        ports, _ = await self._list(keys.prefix(Kind.NODE_PORT))
        used_ips: set[IPv4Address] = set()
        for kv in ips:
            with contextlib.suppress(ValueError):
                used_ips.add(IPv4Address(kv.key.decode().rsplit("/", 1)[-1]))
        used_ports: set[int] = set()
        for kv in ports:
            with contextlib.suppress(ValueError):
                used_ports.add(int(kv.key.decode().rsplit("/", 1)[-1]))
        return used_ips, used_ports

    def _claim_value(self, svc: Service) -> bytes:
        return f"{svc.namespace}/{svc.name}".encode()

    async def create_service(self, svc: Service) -> Service:
        """Create ``svc``, allocating its ClusterIP and NodePorts (see module doc)."""
        svc.validate(self.service_cidr)
        if svc.uid == "" or svc.created == "":
            svc = replace(
                svc, uid=svc.uid or str(uuid.uuid4()), created=svc.created or now_rfc3339()
            )
        needs_ports = svc.type != ServiceType.CLUSTER_IP
        key = svc.key.encode()
        txn = self.client.transactions
        for _ in range(_TXN_RETRIES):
            used_ips, used_ports = await self._claims()
            if await self._get(svc.key) is not None:
                raise AlreadyExists(
                    f'services "{svc.name}" already exists in namespace {svc.namespace}'
                )
            ip = svc.cluster_ip
            if ip is None:
                ip = allocate_cluster_ip(used_ips, self.service_cidr, self._rng)
            elif ip in used_ips:
                raise ConfigError(f"spec.clusterIP: {ip}: provided IP is already allocated")
            ports = []
            taken = set(used_ports)
            for i, p in enumerate(svc.ports):
                if needs_ports and p.node_port == 0:
                    p = replace(
                        p,
                        node_port=allocate_node_port(taken, self._rng, self.node_port_range),
                    )
                elif p.node_port and p.node_port in used_ports:
                    raise ConfigError(
                        f"spec.ports[{i}].nodePort: {p.node_port}: provided port is already "
                        "allocated"
                    )
                taken.add(p.node_port)
                ports.append(replace(p, target_port=p.effective_target))
            final = replace(svc, cluster_ip=ip, ports=tuple(ports))
            claim_keys = [keys.key(Kind.SERVICE_IP, str(ip)).encode()] + [
                keys.key(Kind.NODE_PORT, str(n)).encode() for n in sorted(set(final.node_ports))
            ]
            value = self._claim_value(final)
            with self._errors():
                ok, _ = await self.client.transaction(
                    compare=[txn.version(k) == 0 for k in (key, *claim_keys)],
                    success=[txn.put(key, final.to_json().encode())]
                    + [txn.put(k, value) for k in claim_keys],
                    failure=[],
                )
            if ok:
                return final
            self.txn_conflicts += 1
        raise EtcdError("too many conflicts allocating a ClusterIP/NodePort; try again")

    async def update_service(self, svc: Service) -> Service:
        """Replace an existing Service's spec; its ClusterIP is kept (an attempt to
        change it is refused), NodePorts are kept per port name or allocated."""
        svc.validate(self.service_cidr)
        txn = self.client.transactions
        key = svc.key.encode()
        for _ in range(_TXN_RETRIES):
            got = await self._get(svc.key)
            if got is None:
                raise NotFound(f'services "{svc.name}" not found in namespace {svc.namespace}')
            old = Service.from_json(got.value)
            if svc.cluster_ip is not None and svc.cluster_ip != old.cluster_ip:
                raise ConfigError(
                    f"spec.clusterIP: field is immutable ({old.cluster_ip} -> {svc.cluster_ip})"
                )
            _, used_ports = await self._claims()
            mine = set(old.node_ports)
            old_by_name = {(p.name, p.protocol): p.node_port for p in old.ports}
            taken = used_ports - mine
            ports = []
            for i, p in enumerate(svc.ports):
                if svc.type != ServiceType.CLUSTER_IP:
                    if p.node_port == 0:
                        keep = old_by_name.get((p.name, p.protocol), 0)
                        p = replace(
                            p,
                            node_port=keep
                            or allocate_node_port(taken, self._rng, self.node_port_range),
                        )
                    elif p.node_port in taken:
                        raise ConfigError(
                            f"spec.ports[{i}].nodePort: {p.node_port}: provided port is "
                            "already allocated"
                        )
                else:
                    p = replace(p, node_port=0)
                taken.add(p.node_port)
                ports.append(replace(p, target_port=p.effective_target))
            final = replace(
                svc,
                cluster_ip=old.cluster_ip,
                ports=tuple(ports),
                uid=old.uid,
                created=old.created,
                # status belongs to the cloud controller: an update of the spec keeps it
                ingress_ip=old.ingress_ip if svc.type == ServiceType.LOAD_BALANCER else None,
            )
            new_ports = set(final.node_ports)
            claim = [keys.key(Kind.NODE_PORT, str(n)).encode() for n in sorted(new_ports - mine)]
            release = [keys.key(Kind.NODE_PORT, str(n)).encode() for n in sorted(mine - new_ports)]
            value = self._claim_value(final)
            with self._errors():
                ok, _ = await self.client.transaction(
                    compare=[txn.mod(key) == got.mod_revision]
                    + [txn.version(k) == 0 for k in claim],
                    success=[txn.put(key, final.to_json().encode())]
                    + [txn.put(k, value) for k in claim]
                    + [txn.delete(k) for k in release],
                    failure=[],
                )
            if ok:
                return final
            self.txn_conflicts += 1
        raise EtcdError("too many conflicts updating the Service; try again")

    async def set_service_ingress(
        self, namespace: str, name: str, ip: IPv4Address | None, *, expect: str = ""
    ) -> Service | None:
        """Write ``status.loadBalancer.ingress`` (the cloud controller's part of a
        Service), compare-and-swap on the object; ``expect``, when given, is the
        uid the caller saw. None when the Service is gone or was replaced."""
        key = keys.key(Kind.SERVICE, name, namespace)
        txn = self.client.transactions
        for _ in range(_TXN_RETRIES):
            got = await self._get(key)
            if got is None:
                return None
            old = Service.from_json(got.value)
            if expect and old.uid != expect:
                return None
            new = replace(old, ingress_ip=ip)
            with self._errors():
                ok, _ = await self.client.transaction(
                    compare=[txn.mod(key.encode()) == got.mod_revision],
                    success=[txn.put(key.encode(), new.to_json().encode())],
                    failure=[],
                )
            if ok:
                return new
            self.txn_conflicts += 1
        raise EtcdError("too many conflicts writing a Service's status; try again")

    async def delete_service(self, namespace: str, name: str) -> bool:
        """Delete the Service and release its ClusterIP and NodePorts (one Txn)."""
        key = keys.key(Kind.SERVICE, name, namespace)
        txn = self.client.transactions
        for _ in range(_TXN_RETRIES):
            got = await self._get(key)
            if got is None:
                return False
            svc = Service.from_json(got.value)
            claims = [keys.key(Kind.NODE_PORT, str(n)).encode() for n in svc.node_ports]
            if svc.cluster_ip is not None:
                claims.append(keys.key(Kind.SERVICE_IP, str(svc.cluster_ip)).encode())
            with self._errors():
                ok, _ = await self.client.transaction(
                    compare=[txn.mod(key.encode()) == got.mod_revision],
                    success=[txn.delete(key.encode())] + [txn.delete(k) for k in claims],
                    failure=[],
                )
            if ok:
                return True
            self.txn_conflicts += 1
        raise EtcdError("too many conflicts deleting the Service; try again")

    # -- deployments -----------------------------------------------------------

    async def get_deployment(self, namespace: str, name: str) -> Deployment | None:
        got = await self._get(keys.key(Kind.DEPLOYMENT, name, namespace))
        return None if got is None else Deployment.from_json(got.value)

    async def require_deployment(self, namespace: str, name: str) -> Deployment:
        dep = await self.get_deployment(namespace, name)
        if dep is None:
            raise NotFound(f'deployments "{name}" not found in namespace {namespace}')
        return dep

    async def list_deployments(self, namespace: str | None = None) -> list[Deployment]:
        kvs, _ = await self._list(keys.prefix(Kind.DEPLOYMENT, namespace))
        return [d for d in self._decode_many(kvs) if isinstance(d, Deployment)]

    async def deployment_names(self) -> set[tuple[str, str]]:
        """``(namespace, name)`` of every stored Deployment, decodable or not."""
        kvs, _ = await self._list(keys.prefix(Kind.DEPLOYMENT))
        out: set[tuple[str, str]] = set()
        for kv in kvs:
            parsed = keys.parse_key(kv.key)
            if parsed is not None:
                out.add((parsed[1], parsed[2]))
        return out

    async def put_deployment(self, dep: Deployment) -> Deployment:
        dep.validate()
        if not dep.uid or not dep.created:
            dep = replace(
                dep, uid=dep.uid or str(uuid.uuid4()), created=dep.created or now_rfc3339()
            )
        with self._errors():
            await self.client.put(dep.key.encode(), dep.to_json().encode())
        return dep

    async def delete_deployment(self, namespace: str, name: str) -> bool:
        with self._errors():
            return bool(
                await self.client.delete(keys.key(Kind.DEPLOYMENT, name, namespace).encode())
            )

    # -- watch -----------------------------------------------------------------

    async def watch(self, prefix: str, *, sync_marker: bool = False) -> AsyncIterator[WatchEvent]:
        """Snapshot + watch of ``prefix`` forever (see the module doc)."""
        known: dict[str, int] = {}  # key -> mod_revision

        def relist(kvs: list[Any]) -> list[WatchEvent]:
            nonlocal known
            events: list[WatchEvent] = []
            seen: dict[str, int] = {}
            for kv in kvs:
                key = kv.key.decode(errors="replace")
                seen[key] = kv.mod_revision
                if known.get(key) == kv.mod_revision:
                    continue
                obj = self._decode_one(key, kv.value)
                if obj is not None:
                    events.append(WatchEvent("PUT", key, obj))
            events += [WatchEvent("DELETE", key, None) for key in sorted(set(known) - set(seen))]
            known = seen
            if sync_marker:
                events.append(WatchEvent("SYNC", "", None))
            return events

        def apply(change: Any) -> list[WatchEvent]:
            key = change.kv.key.decode(errors="replace")
            if change.kind != aetcd.EventKind.PUT:
                known.pop(key, None)
                return [WatchEvent("DELETE", key, None)]
            known[key] = change.kv.mod_revision
            obj = self._decode_one(key, change.kv.value)
            return [] if obj is None else [WatchEvent("PUT", key, obj)]

        async for event in self.watch_prefix(prefix, relist, apply):
            yield event

    def _decode_one(self, key: str, value: bytes) -> RegistryObject | None:
        try:
            return decode(key, value)
        except ConfigError as exc:
            self.malformed += 1
            log.warning("ignoring malformed registry value at %s: %s", key, exc)
            return None
