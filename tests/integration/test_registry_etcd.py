"""The registry client against a real etcd on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

import pytest
from emunet.nodes.etcd_server import EtcdServer
from emunet.nodes.registry import AlreadyExists, EtcdUnavailable, Registry, WatchEvent

from emunet.cluster import keys
from emunet.cluster import registry as model
from emunet.cluster.registry import (
    Container,
    NodeInfo,
    Pod,
    PodPhase,
    Service,
    ServicePortSpec,
    ServiceType,
)
from emunet.errors import ConfigError

pytestmark = pytest.mark.integration

A = IPv4Address


def svc(name: str, **kw: object) -> Service:
    return Service(name=name, selector={"app": name}, ports=(ServicePortSpec(80),), **kw)  # type: ignore[arg-type]


def web_pod(name: str, node: str = "node1") -> Pod:
    return Pod(
        name=name,
        labels={"app": "web"},
        node_name=node,
        containers=(Container("web", "http", {"port": 80}),),
    )


async def test_concurrent_cluster_ips_never_collide(etcd: EtcdServer) -> None:
    # a /27 leaves 28 usable addresses: 24 services from 4 clients fight for them
    cidr = IPv4Network("10.96.0.0/27")
    clients = [Registry(etcd.endpoint, service_cidr=cidr, rng=random.Random(1)) for _ in range(4)]
    for c in clients:
        await c.__aenter__()
    try:
        made = await asyncio.gather(
            *(
                clients[i % 4].create_service(svc(f"s{i}", type=ServiceType.NODE_PORT))
                for i in range(24)
            )
        )
        ips = [s.cluster_ip for s in made]
        assert len(set(ips)) == 24
        assert all(ip in cidr for ip in ips if ip is not None)
        node_ports = [p for s in made for p in s.node_ports]
        assert len(set(node_ports)) == 24
        stored = await clients[0].list_services()
        assert {s.cluster_ip for s in stored} == set(ips)
        claims = await clients[0]._claims()
        assert claims == (set(ips), set(node_ports))
        assert sum(c.txn_conflicts for c in clients) > 0  # the same rng made them race
        # deleting releases both claims in the same transaction
        assert await clients[0].delete_service("default", "s0")
        ips_left, ports_left = await clients[0]._claims()
        assert made[0].cluster_ip not in ips_left
        assert not set(made[0].node_ports) & ports_left
    finally:
        for c in clients:
            await c.close()


async def test_service_claims_and_errors(etcd: EtcdServer) -> None:
    async with Registry(etcd.endpoint) as reg:
        a = await reg.create_service(
            svc("a", type=ServiceType.NODE_PORT, cluster_ip=A("10.96.0.20"))
        )
        assert a.cluster_ip == A("10.96.0.20") and a.uid and a.created
        assert a.ports[0].target_port == 80
        with pytest.raises(AlreadyExists, match='services "a" already exists'):
            await reg.create_service(svc("a"))
        with pytest.raises(
            ConfigError, match=re.escape("spec.clusterIP: 10.96.0.20: provided IP is")
        ):
            await reg.create_service(svc("b", cluster_ip=A("10.96.0.20")))
        taken = a.ports[0].node_port
        with pytest.raises(ConfigError, match=rf"spec.ports\[0\].nodePort: {taken}: provided"):
            await reg.create_service(
                Service(
                    name="c",
                    type=ServiceType.NODE_PORT,
                    selector={"app": "c"},
                    ports=(ServicePortSpec(80, node_port=taken),),
                )
            )
        with pytest.raises(ConfigError, match=re.escape("spec.clusterIP: 10.0.0.1 is not in")):
            await reg.create_service(svc("d", cluster_ip=A("10.0.0.1")))
        # update: ClusterIP kept, NodePort kept, a new port gets one
        two = replace(
            a,
            cluster_ip=None,
            ports=(ServicePortSpec(80, name="http"), ServicePortSpec(81, name="alt")),
        )
        b = await reg.update_service(two)
        assert b.cluster_ip == a.cluster_ip
        assert len(b.node_ports) == 2
        # back to ClusterIP: both NodePorts released
        c = await reg.update_service(
            replace(b, type=ServiceType.CLUSTER_IP, ports=(ServicePortSpec(80),))
        )
        assert c.node_ports == []
        _ips, ports = await reg._claims()
        assert ports == set()
        assert await reg.get_service("default", "a") == c


async def test_pods_and_deployments(etcd: EtcdServer) -> None:
    async with Registry(etcd.endpoint) as reg:
        p = await reg.create_pod(web_pod("web-1"))
        assert p.uid and p.created
        with pytest.raises(AlreadyExists):
            await reg.create_pod(web_pod("web-1"))
        running = p.with_status(PodPhase.RUNNING, A("10.244.1.2"), A("127.0.0.11"))
        assert await reg.update_pod_if_exists(running)
        assert await reg.get_pod("default", "web-1") == running
        assert await reg.delete_pod("default", "web-1")
        assert not await reg.update_pod_if_exists(running)  # never resurrected
        assert await reg.get_pod("default", "web-1") is None
        assert not await reg.delete_pod("default", "web-1")
        dep = model.Deployment(
            "web",
            replicas=2,
            selector={"app": "web"},
            template=model.PodTemplate({"app": "web"}, web_pod("x").containers),
        )
        stored = await reg.put_deployment(dep)
        assert await reg.list_deployments() == [stored]
        assert await reg.delete_deployment("default", "web")


async def test_node_lease_expiry_makes_node_not_ready(etcd: EtcdServer) -> None:
    info = NodeInfo("node1", A("127.0.0.11"), IPv4Network("10.244.1.0/24"), "127.0.0.11:10250")
    reg = Registry(etcd.endpoint)
    await reg.__aenter__()
    await reg.register_node(info, ttl=2)
    async with Registry(etcd.endpoint) as observer:
        assert [n.ready for n in await observer.nodes()] == [True]
        await asyncio.sleep(2.5)  # kept alive past its TTL
        assert (await observer.get_node("node1")) == replace(info, ready=True)
        await reg.close()  # the keep-alive stops: the lease runs out
        deadline = asyncio.get_running_loop().time() + 6
        while (await observer.get_node("node1")).ready:  # type: ignore[union-attr]
            assert asyncio.get_running_loop().time() < deadline, "lease did not expire"
            await asyncio.sleep(0.2)
        nodes = await observer.nodes()
        assert [(n.name, n.ready) for n in nodes] == [("node1", False)]


async def test_unregister_revokes_at_once(etcd: EtcdServer) -> None:
    async with Registry(etcd.endpoint) as reg:
        await reg.register_node(NodeInfo("node2", A("127.0.0.12")), ttl=10)
        assert (await reg.require_node("node2")).ready
        await reg.unregister_node("node2")
        assert not (await reg.require_node("node2")).ready


async def test_watch_snapshot_then_updates(etcd: EtcdServer) -> None:
    async with Registry(etcd.endpoint) as reg:
        await reg.create_pod(web_pod("a"))
        await reg.create_pod(web_pod("b"))
        await reg.client.put(b"/registry/pods/default/bad", b"{not json")
        events: asyncio.Queue[WatchEvent] = asyncio.Queue()

        async def consume() -> None:
            async for ev in reg.watch(keys.prefix(keys.Kind.POD), sync_marker=True):
                await events.put(ev)

        task = asyncio.create_task(consume())
        try:

            async def next_event() -> WatchEvent:
                return await asyncio.wait_for(events.get(), 5)

            snap = [await next_event() for _ in range(3)]
            assert [(e.type, e.key) for e in snap] == [
                ("PUT", "/registry/pods/default/a"),
                ("PUT", "/registry/pods/default/b"),
                ("SYNC", ""),
            ]
            assert isinstance(snap[0].object, Pod) and snap[0].object.name == "a"
            assert reg.malformed == 1
            await reg.create_pod(web_pod("c"))
            await reg.delete_pod("default", "a")
            ev1, ev2 = await next_event(), await next_event()
            assert (ev1.type, ev1.key) == ("PUT", "/registry/pods/default/c")
            assert isinstance(ev1.object, Pod) and ev1.object.node_name == "node1"
            assert (ev2.type, ev2.key, ev2.object) == ("DELETE", "/registry/pods/default/a", None)
        finally:
            task.cancel()


async def test_watch_survives_etcd_restart(etcd: EtcdServer) -> None:
    async with Registry(etcd.endpoint, watch_backoff=(0.1, 0.5)) as reg:
        await reg.create_pod(web_pod("a"))
        watcher = Registry(etcd.endpoint, watch_backoff=(0.1, 0.5))
        events: asyncio.Queue[WatchEvent] = asyncio.Queue()

        async def consume() -> None:
            async for ev in watcher.watch(keys.prefix(keys.Kind.POD)):
                await events.put(ev)

        task = asyncio.create_task(consume())
        try:
            first = await asyncio.wait_for(events.get(), 5)
            assert first.key.endswith("/a")
            await etcd.stop()
            await asyncio.sleep(1.0)
            with pytest.raises(EtcdUnavailable, match=f"etcd unreachable at {etcd.endpoint}"):
                await reg.list_pods()
            await etcd.start()
            for _ in range(50):  # the client's channel reconnects within a second
                try:
                    await reg.create_pod(web_pod("b"))
                    break
                except EtcdUnavailable:
                    await asyncio.sleep(0.1)
            ev = await asyncio.wait_for(events.get(), 15)
            assert (ev.type, ev.key) == ("PUT", "/registry/pods/default/b")
            assert watcher.watch_reconnects >= 1
        finally:
            task.cancel()
            await watcher.close()


async def test_unreachable_is_one_line(free_port: object) -> None:
    port = free_port()  # type: ignore[operator]
    async with Registry(f"127.0.0.1:{port}", request_timeout=2.0) as reg:
        with pytest.raises(EtcdUnavailable) as info:
            await reg.nodes()
    assert str(info.value).startswith(f"etcd unreachable at 127.0.0.1:{port}")
    assert "\n" not in str(info.value)


async def test_a_slow_handshake_is_waited_for_not_called_unreachable(etcd: EtcdServer) -> None:
    """A machine busy with hundreds of clients sends etcd's first HTTP/2 frame late.

    The connection attempt waits for it as long as the request may take (gRPC's
    default, 20 s at least); a 100 ms connect timeout made 97 of 200 concurrent
    pod-shells print `etcd unreachable (no answer)` while etcd was healthy.
    """
    delay = 2.0

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wait: float) -> None:
        await asyncio.sleep(wait)
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(etcd.host, etcd.client_port)
        await asyncio.gather(pipe(client_r, server_w, 0.0), pipe(server_r, client_w, delay))

    proxy = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = proxy.sockets[0].getsockname()[1]
    try:
        async with Registry(f"127.0.0.1:{port}", request_timeout=10.0) as reg:
            started = asyncio.get_running_loop().time()
            assert await reg.nodes() == []
            assert asyncio.get_running_loop().time() - started >= delay
    finally:
        proxy.close()
