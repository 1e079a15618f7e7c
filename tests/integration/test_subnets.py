"""The flannel subnet manager against a real etcd 3.5 on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import aetcd
import pytest
from emunet.nodes.etcd_server import EtcdNotFound, EtcdServer, find_etcd_binary
from emunet.nodes.subnets import EtcdUnavailable, Lease, SubnetManager

from emunet.cluster.flannel import (
    AllocationKind,
    LeaseAdded,
    LeaseEvent,
    LeaseRemoved,
    LeaseRevoked,
    NetworkConfig,
    encode_lease_value,
    subnet_key,
)
from emunet.errors import ConfigError

pytestmark = pytest.mark.integration

CONFIG = NetworkConfig.create("10.244.0.0/16")
PREFIX = "/coreos.com/network"
PEER = IPv4Network("10.244.200.0/24")
PEER_IP = IPv4Address("172.18.0.200")


@contextlib.asynccontextmanager
async def raw_client(etcd: EtcdServer) -> AsyncIterator[aetcd.Client]:
    client = aetcd.Client(etcd.host, etcd.client_port, timeout=5)
    try:
        yield client
    finally:
        await client.close()


def manager(etcd: EtcdServer, ip: str, **kwargs: object) -> SubnetManager:
    return SubnetManager(etcd.endpoint, public_ip=ip, **kwargs)  # type: ignore[arg-type]


async def acquire_when_back(mgr: SubnetManager, within: float = 5.0) -> Lease:
    """What an agent does after an outage: retry until etcd answers again."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await mgr.acquire()
        except EtcdUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


class Collector:
    """Runs ``manager.watch()`` in a task and queues what it yields (or raises)."""

    def __init__(self, mgr: SubnetManager) -> None:
        self.queue: asyncio.Queue[LeaseEvent | BaseException] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run(mgr))

    async def _run(self, mgr: SubnetManager) -> None:
        try:
            async for event in mgr.watch():
                self.queue.put_nowait(event)
        except Exception as exc:
            self.queue.put_nowait(exc)

    async def next(self, timeout: float = 5.0) -> LeaseEvent | BaseException:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def take(self, count: int, timeout: float = 5.0) -> list[LeaseEvent | BaseException]:
        return [await self.next(timeout) for _ in range(count)]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def test_three_nodes_get_distinct_leases_in_flannels_format(etcd: EtcdServer) -> None:
    ips = ["172.18.0.3", "172.18.0.4", "172.18.0.5"]
    async with (
        manager(etcd, ips[0]) as m1,
        manager(etcd, ips[1]) as m2,
        manager(etcd, ips[2]) as m3,
    ):
        assert await m1.ensure_config(CONFIG) == CONFIG
        started = time.perf_counter()
        leases = await asyncio.gather(m1.acquire(), m2.acquire(), m3.acquire())
        elapsed = time.perf_counter() - started
        assert elapsed < 2.0, f"three concurrent acquisitions took {elapsed:.3f} s"
        subnets = [lease.subnet for lease in leases]
        assert len(set(subnets)) == 3
        for lease, ip in zip(leases, ips, strict=True):
            assert lease.subnet.prefixlen == 24
            assert CONFIG.subnet_min <= lease.subnet.network_address <= CONFIG.subnet_max
            assert lease.kind is AllocationKind.ALLOCATED
            assert lease.key == f"{PREFIX}/subnets/{lease.subnet.network_address}-24"
            assert lease.public_ip == IPv4Address(ip)

        async with raw_client(etcd) as client:
            config = await client.get(b"/coreos.com/network/config")
            assert config.value == (
                b'{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"udp","Port":8285}}'
            )
            for lease, ip in zip(leases, ips, strict=True):
                got = await client.get(lease.key.encode())
                assert got.value == b'{"PublicIP":"%s","PublicIPv6":null}' % ip.encode()
                assert got.lease != 0  # attached to an etcd lease
                info = await client.get_lease_info(got.lease, keys=False)
                assert 86000 < info.TTL <= 86400 and info.grantedTTL == 86400

        etcdctl = find_etcd_binary("etcdctl")
        out = subprocess.run(
            [etcdctl, "--endpoints", etcd.client_url, "get", "--prefix", f"{PREFIX}/subnets"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        expected = "".join(
            f"{PREFIX}/subnets/{lease.subnet.network_address}-24\n"
            f'{{"PublicIP":"{lease.public_ip}","PublicIPv6":null}}\n'
            for lease in sorted(leases, key=lambda lease: lease.key)
        )
        assert out == expected


async def test_restart_reuses_the_lease_and_subnet_env(etcd: EtcdServer, tmp_path: Path) -> None:
    env_path = tmp_path / "run" / "flannel" / "subnet.env"
    async with manager(etcd, "172.18.0.3", subnet_env_path=env_path) as m1:
        await m1.ensure_config(CONFIG)
        first = await m1.acquire()
        first_id = m1.etcd_lease_id
    net = first.subnet
    assert env_path.read_text() == (
        "FLANNEL_NETWORK=10.244.0.0/16\n"
        f"FLANNEL_SUBNET={net.network_address + 1}/24\n"
        "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
    )
    # same public IP: flannel reuses the lease found in etcd, with a new etcd lease
    async with manager(etcd, "172.18.0.3") as m2:
        again = await m2.acquire()
        assert (again.subnet, again.kind) == (net, AllocationKind.REUSED)
        assert m2.etcd_lease_id != first_id
    # the key is gone (e.g. expired) but subnet.env remembers it: take it again if free
    async with raw_client(etcd) as client:
        await client.delete(first.key.encode())
    async with manager(etcd, "172.18.0.3", subnet_env_path=env_path) as m3:
        previous = await m3.acquire()
        assert (previous.subnet, previous.kind) == (net, AllocationKind.PREVIOUS)
    # a different node never takes a live subnet
    async with manager(etcd, "172.18.0.9") as m4:
        assert (await m4.acquire()).subnet != net


async def test_config_written_only_if_absent_and_required(etcd: EtcdServer) -> None:
    async with manager(etcd, "172.18.0.3") as m1:
        with pytest.raises(ConfigError, match="flannel config not found in etcd"):
            await m1.acquire()
        other = NetworkConfig.create("10.10.0.0/16", subnet_len=26)
        assert await m1.ensure_config(other) == other
        assert await m1.ensure_config(CONFIG) == other  # kept, not overwritten
        lease = await m1.acquire()
        assert lease.subnet.prefixlen == 26 and lease.subnet.subnet_of(other.network)


async def test_watch_sees_adds_removes_and_lease_expiry(etcd: EtcdServer) -> None:
    async with manager(etcd, "172.18.0.3") as m1, manager(etcd, "172.18.0.4", ttl=2) as m2:
        await m1.ensure_config(CONFIG)
        own = await m1.acquire()
        async with raw_client(etcd) as client:
            await client.put(subnet_key(PEER).encode(), encode_lease_value(PEER_IP))
        watch = Collector(m1)
        try:
            assert await watch.next() == LeaseAdded(PEER, PEER_IP)  # from the snapshot
            short = await m2.acquire()
            assert await watch.next() == LeaseAdded(short.subnet, short.public_ip)
            async with raw_client(etcd) as client:
                await client.delete(subnet_key(PEER).encode())
            assert await watch.next() == LeaseRemoved(PEER, PEER_IP)
            # m2 stops renewing: etcd expires its 2 s lease and deletes the key
            await m2.close()
            started = time.perf_counter()
            assert await watch.next(timeout=8) == LeaseRemoved(short.subnet, short.public_ip)
            assert time.perf_counter() - started < 6
            assert watch.queue.empty()
            assert own.subnet not in {short.subnet, PEER}
        finally:
            await watch.stop()


async def test_renewal_replaces_the_etcd_lease_before_expiry(etcd: EtcdServer) -> None:
    async with manager(etcd, "172.18.0.3", ttl=2) as m1:
        await m1.ensure_config(CONFIG)
        lease = await m1.acquire()
        first_id = m1.etcd_lease_id
        await asyncio.sleep(4.5)  # more than twice the TTL
        assert m1.renewals >= 2 and m1.renew_failures == 0
        async with raw_client(etcd) as client:
            got = await client.get(lease.key.encode())
            assert got is not None and got.value == encode_lease_value(lease.public_ip)
            assert got.lease == m1.etcd_lease_id != first_id  # a NEW lease, no KeepAlive


async def test_revoking_our_own_lease_raises_lease_revoked(etcd: EtcdServer) -> None:
    async with manager(etcd, "172.18.0.3") as m1:
        await m1.ensure_config(CONFIG)
        lease = await m1.acquire()
        watch = Collector(m1)
        try:
            async with raw_client(etcd) as client:
                await asyncio.sleep(0.3)  # the watch is established
                await client.revoke_lease(m1.etcd_lease_id)
            error = await watch.next()
            assert isinstance(error, LeaseRevoked)
            assert str(error).startswith(f"Lease has been revoked: {lease.subnet}")
            # and a renewal never brings the deleted key back
            assert await m1.renew() is False
            assert m1.revoked is not None
        finally:
            await watch.stop()


async def test_compaction_while_disconnected_relists(etcd: EtcdServer) -> None:
    gone = IPv4Network("10.244.201.0/24")
    new = IPv4Network("10.244.202.0/24")
    async with manager(etcd, "172.18.0.3", watch_backoff=(3.0, 3.0)) as m1:
        await m1.ensure_config(CONFIG)
        await m1.acquire()
        async with raw_client(etcd) as client:
            await client.put(subnet_key(gone).encode(), encode_lease_value(PEER_IP))
        watch = Collector(m1)
        try:
            assert await watch.next() == LeaseAdded(gone, PEER_IP)
            await etcd.stop()  # the watch breaks and waits 3 s before reconnecting
            await etcd.start()
            async with raw_client(etcd) as client:
                await client.delete(subnet_key(gone).encode())
                put = await client.put(subnet_key(new).encode(), encode_lease_value(PEER_IP))
                await client.compact(put.header.revision, physical=True)
            events = await watch.take(2, timeout=8)
            assert events == [LeaseRemoved(gone, PEER_IP), LeaseAdded(new, PEER_IP)]
            assert m1.relists == 1 and m1.watch_reconnects >= 1
        finally:
            await watch.stop()


async def test_etcd_outage_watch_reconnects_and_catches_up(etcd: EtcdServer) -> None:
    async with manager(etcd, "172.18.0.3") as m1, manager(etcd, "172.18.0.4") as m2:
        await m1.ensure_config(CONFIG)
        await m1.acquire()
        watch = Collector(m1)
        try:
            await asyncio.sleep(0.3)
            await etcd.stop()
            with pytest.raises(EtcdUnavailable, match=rf"^etcd unreachable at {etcd.endpoint}"):
                await m2.acquire()
            await asyncio.sleep(3)
            await etcd.start()
            peer = await acquire_when_back(m2)  # a change made while m1's watch was down
            event = await watch.next(timeout=8)
            assert event == LeaseAdded(peer.subnet, peer.public_ip)
            assert m1.watch_reconnects >= 2 and m1.relists == 0  # resumed, no relist
        finally:
            await watch.stop()


async def test_unreachable_etcd_is_one_clear_error(free_port: Callable[[], int]) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    async with SubnetManager(endpoint, public_ip="172.18.0.3") as m1:
        with pytest.raises(EtcdUnavailable) as info:
            await m1.acquire()
    assert str(info.value) == f"etcd unreachable at {endpoint} (connection refused)"


async def test_etcd_server_refuses_bad_setups(tmp_path: Path, free_port: Callable[[], int]) -> None:
    with pytest.raises(ConfigError, match="loopback"):
        EtcdServer(tmp_path, 2379, 2380, host="10.0.0.1")
    with pytest.raises(EtcdNotFound):
        find_etcd_binary("etcd-does-not-exist")
    port = free_port()
    async with EtcdServer(tmp_path / "a", port, free_port()):
        with pytest.raises(Exception, match=re.escape(f"127.0.0.1:{port}")):
            async with EtcdServer(tmp_path / "b", port, free_port()):
                pass
