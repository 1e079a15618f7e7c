"""flannel's subnet manager against a real etcd (aetcd adapter).

The decisions (config defaults, which subnet to take, when to renew, what a
snapshot or a watch event means) live in :mod:`emunet.cluster.flannel`; this
module only moves them to and from etcd:

* :meth:`SubnetManager.acquire` lists ``<prefix>/subnets/``, picks a subnet,
  and creates its key with ``Txn(If(Version(key) == 0), Then(Put(key, value,
  lease)))``, retrying when another node wins the race.
* A renewal task grants a NEW etcd lease and puts the key again before expiry
  (flannel uses no KeepAlive), retrying every minute on failure. Unlike
  flannel, the put is guarded by ``Value(key) == ours``, so a renewal never
  resurrects a lease that was revoked or taken over.
* :meth:`SubnetManager.watch` yields peers' :class:`LeaseAdded` /
  :class:`LeaseRemoved`: a snapshot, then a watch from the next revision;
  on errors it reconnects with backoff (100 ms .. 5 s) and resumes from the
  last revision seen, and re-lists (emitting the diff) when that revision
  was compacted. Our own key disappearing raises :class:`LeaseRevoked`.
* Any etcd connection failure surfaces as :class:`EtcdUnavailable`, one line,
  never a gRPC traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import aetcd
from emunet.nodes.etcd import EtcdClient, EtcdError, EtcdUnavailable, parse_endpoint

from emunet.cluster.flannel import (
    DEFAULT_MTU,
    DEFAULT_PREFIX,
    RENEW_MARGIN,
    SUBNET_TTL,
    AllocationKind,
    LeaseAdded,
    LeaseEvent,
    LeaseRemoved,
    LeaseRevoked,
    LeaseTable,
    MalformedLease,
    NetworkConfig,
    SubnetEnv,
    choose_subnet,
    config_key,
    decode_lease_value,
    encode_lease_value,
    parse_subnet_env,
    parse_subnet_key,
    renew_delay,
    renew_retry_delay,
    subnet_key,
    subnets_prefix,
)
from emunet.errors import ConfigError

__all__ = [
    "EtcdError",
    "EtcdUnavailable",
    "Lease",
    "LeaseAdded",
    "LeaseEvent",
    "LeaseRemoved",
    "LeaseRevoked",
    "SubnetManager",
    "parse_endpoint",
]

log = logging.getLogger(__name__)

_RACE_RETRIES = 10  # flannel's raceRetries
_BACKOFF_MIN = 0.1
_BACKOFF_MAX = 5.0


@dataclass(frozen=True, slots=True)
class Lease:
    """The subnet this node holds."""

    subnet: IPv4Network
    public_ip: IPv4Address
    config: NetworkConfig
    key: str
    kind: AllocationKind  # how it was obtained: reused / previous / allocated
    reservation: bool = False  # a key without an etcd lease: never expires, never renewed


@dataclass(frozen=True, slots=True)
class _Entry:
    public_ip: IPv4Address
    lease_id: int


class SubnetManager(EtcdClient):
    """One node's view of flannel's etcd schema; use as ``async with``.

    ``public_ip`` is required for :meth:`acquire`; a manager without one can
    still :meth:`watch` every lease (e.g. for the CLI).
    """

    _log = log

    def __init__(
        self,
        client_endpoint: str,
        prefix: str = DEFAULT_PREFIX,
        *,
        public_ip: IPv4Address | str | None = None,
        ttl: int = SUBNET_TTL,
        subnet_env_path: str | os.PathLike[str] | None = None,
        mtu: int = DEFAULT_MTU,
        ipmasq: bool = True,
        renew_margin: float = RENEW_MARGIN,
        renew_retry: float | None = None,
        watch_backoff: tuple[float, float] = (_BACKOFF_MIN, _BACKOFF_MAX),
        request_timeout: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(
            client_endpoint, request_timeout=request_timeout, watch_backoff=watch_backoff
        )
        self.prefix = prefix
        self.public_ip = IPv4Address(public_ip) if public_ip is not None else None
        if ttl < 2:
            raise ConfigError(f"ttl: {ttl} s is too short; etcd leases need at least 2 s")
        self.ttl = ttl
        self.subnet_env_path = Path(subnet_env_path) if subnet_env_path is not None else None
        self.mtu = mtu
        self.ipmasq = ipmasq
        self.renew_margin = renew_margin
        self.renew_retry = renew_retry if renew_retry is not None else renew_retry_delay(ttl)
        self._rng = rng or random.Random()
        self._lease: Lease | None = None
        self._etcd_lease_id = 0
        self._renew_task: asyncio.Task[None] | None = None
        self._revoked: LeaseRevoked | None = None
        # counters a test or `emunet describe` can read
        self.renewals = 0
        self.renew_failures = 0
        self.malformed_leases = 0

    # -- lifecycle ---------------------------------------------------------

    async def _stop_tasks(self) -> None:
        """Stop renewing (on close). The lease is kept, as flanneld does."""
        if self._renew_task is not None:
            self._renew_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renew_task
            self._renew_task = None

    @property
    def lease(self) -> Lease | None:
        return self._lease

    @property
    def etcd_lease_id(self) -> int:
        """ID of the etcd lease the key is attached to now (changes at each renewal)."""
        return self._etcd_lease_id

    @property
    def revoked(self) -> LeaseRevoked | None:
        """Set when a renewal found our key gone or taken over."""
        return self._revoked

    # -- config --------------------------------------------------------------

    async def get_config(self) -> NetworkConfig:
        """Read and check ``<prefix>/config``."""
        key = config_key(self.prefix)
        got = await self._get(key)
        if got is None:
            raise ConfigError(
                f"flannel config not found in etcd at {key}; "
                "write one first (e.g. `emunet up --local` does)"
            )
        return NetworkConfig.from_json(got.value)

    async def ensure_config(self, config: NetworkConfig) -> NetworkConfig:
        """Write ``config`` only if no config exists; return the config etcd now holds."""
        key = config_key(self.prefix).encode()
        txn = self.client.transactions
        with self._errors():
            await self.client.transaction(
                compare=[txn.version(key) == 0],
                success=[txn.put(key, config.to_json().encode())],
                failure=[],
            )
        return await self.get_config()

    # -- leases ----------------------------------------------------------------

    def _entries(self, kvs: list[Any]) -> dict[IPv4Network, _Entry]:
        entries: dict[IPv4Network, _Entry] = {}
        for kv in kvs:
            try:
                subnet = parse_subnet_key(kv.key, self.prefix)
                entries[subnet] = _Entry(decode_lease_value(kv.value), kv.lease)
            except MalformedLease as exc:
                self.malformed_leases += 1
                log.warning("ignoring bad subnet lease: %s", exc.reason)
        return entries

    async def _list_entries(self, client: Any) -> dict[IPv4Network, _Entry]:
        kvs, _ = await self._list(subnets_prefix(self.prefix), client)
        return self._entries(kvs)

    async def leases(self) -> dict[IPv4Network, IPv4Address]:
        """Every lease in etcd now (subnet -> PublicIP), ours included."""
        entries = await self._list_entries(self.client)
        return {subnet: entry.public_ip for subnet, entry in entries.items()}

    def _previous_subnet(self) -> IPv4Network | None:
        if self.subnet_env_path is None:
            return None
        try:
            return parse_subnet_env(self.subnet_env_path.read_text()).lease_subnet
        except FileNotFoundError:
            return None
        except (OSError, ConfigError) as exc:
            log.warning("ignoring previous subnet in %s: %s", self.subnet_env_path, exc)
            return None

    async def acquire(self) -> Lease:
        """Take a subnet lease like flanneld's ``AcquireLease``; start renewing it."""
        if self.public_ip is None:
            raise ConfigError("public_ip: required to acquire a subnet lease")
        if self._lease is not None:
            return self._lease
        config = await self.get_config()
        previous = self._previous_subnet()
        value = encode_lease_value(self.public_ip)
        client = self.client
        txn = client.transactions
        for _ in range(_RACE_RETRIES):
            entries = await self._list_entries(client)
            current = {subnet: entry.public_ip for subnet, entry in entries.items()}
            allocation = choose_subnet(config, current, self.public_ip, previous, self._rng)
            for stale in allocation.stale:
                log.info("deleting our lease %s: not compatible with the network config", stale)
                with self._errors():
                    await client.delete(subnet_key(stale, self.prefix).encode())
            key = subnet_key(allocation.subnet, self.prefix)
            reservation = False
            with self._errors():
                if allocation.kind is AllocationKind.REUSED:
                    if entries[allocation.subnet].lease_id == 0:
                        reservation = True  # a reservation: keep it lease-less
                        lease_id = 0
                        await client.put(key.encode(), value)
                    else:
                        lease_id = (await client.lease(self.ttl)).id
                        await client.put(key.encode(), value, lease=lease_id)
                else:
                    lease_id = (await client.lease(self.ttl)).id
                    won, _ = await client.transaction(
                        compare=[txn.version(key.encode()) == 0],
                        success=[txn.put(key.encode(), value, lease=lease_id)],
                        failure=[],
                    )
                    if not won:
                        await client.revoke_lease(lease_id)
                        log.info("lost the race for %s, trying again", allocation.subnet)
                        continue
            lease = Lease(
                allocation.subnet, self.public_ip, config, key, allocation.kind, reservation
            )
            self._lease, self._etcd_lease_id = lease, lease_id
            log.info(
                "acquired lease %s (%s) for %s", lease.subnet, lease.kind.value, lease.public_ip
            )
            self._write_subnet_env(lease)
            if not reservation:
                self._renew_task = asyncio.get_running_loop().create_task(
                    self._renew_loop(lease), name=f"flannel-renew-{lease.subnet}"
                )
            return lease
        raise EtcdError("max retries reached trying to acquire a subnet")

    def _write_subnet_env(self, lease: Lease) -> None:
        if self.subnet_env_path is None:
            return
        env = SubnetEnv.for_lease(lease.config, lease.subnet, self.mtu, self.ipmasq)
        path = self.subnet_env_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(env.render())
            tmp.replace(path)
        except OSError as exc:
            raise ConfigError(f"subnet_env_path: cannot write {path}: {exc.strerror}") from None

    async def renew(self) -> bool:
        """Renew now: grant a new etcd lease, put our key on it if it is still ours.

        Returns False (and records :attr:`revoked`) when the key is gone or held
        by another IP. Raises :class:`EtcdUnavailable` / :class:`EtcdError`.
        """
        lease = self._lease
        if lease is None or lease.reservation:
            return True
        client = self.client
        txn = client.transactions
        key = lease.key.encode()
        value = encode_lease_value(lease.public_ip)
        with self._errors():
            new_id = (await client.lease(self.ttl)).id
            ok, _ = await client.transaction(
                compare=[txn.value(key) == value],
                success=[txn.put(key, value, lease=new_id)],
                failure=[],
            )
            if not ok:
                await client.revoke_lease(new_id)
        if not ok:
            self._revoked = LeaseRevoked(lease.subnet, "its key was gone at renewal")
            return False
        self._etcd_lease_id = new_id
        self.renewals += 1
        return True

    async def _renew_loop(self, lease: Lease) -> None:
        delay = renew_delay(self.ttl, self.renew_margin)
        while True:
            await asyncio.sleep(delay)
            try:
                renewed = await self.renew()
            except EtcdError as exc:
                self.renew_failures += 1
                log.error("error renewing lease %s (trying again in %.0f s): %s",
                          lease.subnet, self.renew_retry, exc)  # fmt: skip
                delay = self.renew_retry
                continue
            if not renewed:
                log.error("Lease has been revoked: %s; not renewing", lease.subnet)
                return
            delay = renew_delay(self.ttl, self.renew_margin)

    # -- peers -------------------------------------------------------------------

    async def watch(self) -> AsyncIterator[LeaseEvent]:
        """Yield peers' lease events forever; raises :class:`LeaseRevoked`.

        Starts with one :class:`LeaseAdded` per existing peer lease. Our own
        lease (once acquired) is never reported.
        """
        own = self._lease
        table = LeaseTable(own.subnet if own else None, own.public_ip if own else None)

        def relist(kvs: list[Any]) -> list[LeaseEvent]:
            entries = self._entries(kvs)
            return table.reset({subnet: entry.public_ip for subnet, entry in entries.items()})

        def check() -> None:
            if self._revoked is not None:
                raise self._revoked

        async for event in self.watch_prefix(
            subnets_prefix(self.prefix),
            relist,
            lambda change: self._apply(table, change),
            check=check,
        ):
            yield event

    def _apply(self, table: LeaseTable, change: Any) -> list[LeaseEvent]:
        try:
            subnet = parse_subnet_key(change.kv.key, self.prefix)
            if change.kind == aetcd.EventKind.PUT:
                return table.put(subnet, decode_lease_value(change.kv.value))
        except MalformedLease as exc:
            self.malformed_leases += 1
            log.warning("ignoring bad subnet lease event: %s", exc.reason)
            return []
        return table.delete(subnet)
