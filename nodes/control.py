"""The agent's control API server: msgpack frames over TCP (docs/ARCHITECTURE.md).

The frames and messages are :mod:`emunet.nodes.wire`'s (the protocol the CLI's
:mod:`emunet.nodes.control_client` speaks too); this module serves them.

Every bad input gets an error reply and the server keeps serving: a frame
that does not decode, is not a map, has the wrong version or an unknown op
is answered on the same connection (the length prefix keeps the stream in
sync); a length over the limit is answered with ``too_large`` and the
connection is closed (what follows cannot be trusted). Requests on one
connection run one at a time, in order. Output a slow client does not read
is buffered up to :data:`STREAM_BUFFER` bytes per request, then dropped and
counted (the command never waits for the client).

Ops: ``status``, ``dump``, ``exec`` (streams ``out``/``err``), ``trace``,
``capture`` (streams ``pcap`` chunks). ``trace`` without a ``pod`` (or with
a pod of another node) only records this node's hops for ``duration``
seconds, so a client can merge the hops of every node of one probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

from emunet.nodes.process import Service
from emunet.nodes.runtime import BoundedQueue, NodeRuntime
from emunet.nodes.shell import Resolver, run_command
from emunet.nodes.wire import (
    HEADER,
    MAX_FRAME,
    PROTOCOL_VERSION,
    ControlError,
    decode_body,
    encode_frame,
    error_message,
    result_message,
    stream_message,
)

from emunet.dataplane.sockets import SocketErrorEvent
from emunet.dataplane.tcp import TCPState
from emunet.errors import ConfigError, EmunetError
from emunet.packets.pcap import PcapWriter
from emunet.render import bridge_fdb, ip_addr

__all__ = ["MAX_FRAME", "ControlError", "ControlServer"]

log = logging.getLogger(__name__)

STREAM_BUFFER = 4 << 20
MAX_CONNECTIONS = 256
MAX_PER_CLIENT = 128  # connections from one address
GONE_POLL = 0.2  # seconds between checks that a request's client is still there
BUSY_LINGER = 1.0  # a refused client gets this long to read the busy reply
MAX_TRACE_HOPS = 2500  # about 600 KiB of hops: a trace reply fits in one frame
IDLE_TIMEOUT = 300.0  # seconds a connection may sit between requests
BODY_TIMEOUT = 10.0  # seconds to deliver a frame's body once its length was sent
DUMPS = ("routes", "neigh", "fdb", "conntrack", "iptables", "counters", "leases", "pods", "addr")


@dataclass
class ControlStats:
    connections: int = 0
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    stream_dropped_bytes: int = 0
    refused_connections: int = 0
    evicted_idle: int = 0
    abandoned: int = 0

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


class _Conn:
    """One client connection: serialized writes, bounded output buffering."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        self.idle_since: float | None = asyncio.get_running_loop().time()

    @property
    def gone(self) -> bool:
        """The client closed its side (EOF and nothing pipelined)."""
        return self.reader.at_eof() or self.writer.is_closing()

    async def send(self, obj: Any) -> None:
        self.writer.write(encode_frame(obj, limit=None))
        await self.writer.drain()


class _Streamer:
    """Collects a command's output and sends it as ``stream`` frames, never blocking it."""

    def __init__(self, conn: _Conn, rid: Any, stats: ControlStats) -> None:
        self.conn = conn
        self.rid = rid
        self.stats = stats
        self.parts: list[tuple[str, Any]] = []
        self.size = 0
        self.dropped = 0
        self._wake = asyncio.Event()
        self._closed = False
        self.broken = False  # the client went away: output is discarded
        self.on_broken: Callable[[], object] | None = None
        self.task = asyncio.get_running_loop().create_task(self._run())

    def emit(self, kind: str, data: Any) -> None:
        if self.broken:
            return
        n = len(data)
        if self.size + n > STREAM_BUFFER:
            self.dropped += n
            self.stats.stream_dropped_bytes += n
            return
        self.parts.append((kind, data))
        self.size += n
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.25)
            self._wake.clear()
            if self.conn.gone:
                self._broke()
                return
            while self.parts:
                parts, self.parts, self.size = self.parts, [], 0
                merged: list[tuple[str, Any]] = []
                for kind, data in parts:
                    if merged and merged[-1][0] == kind and len(merged[-1][1]) < 65536:
                        merged[-1] = (kind, merged[-1][1] + data)
                    else:
                        merged.append((kind, data))
                try:
                    for kind, data in merged:
                        await self.conn.send(stream_message(self.rid, kind, data))
                except (ConnectionError, OSError):
                    self._broke()
                    return
            if self._closed:
                return

    def _broke(self) -> None:
        self.broken = True
        self.parts.clear()
        if self.on_broken is not None:
            self.on_broken()

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        await self.task


class ControlServer(Service):
    """Serves the control API of one agent; ``async with ControlServer(...)``."""

    def __init__(
        self,
        runtime: NodeRuntime,
        host: str,
        port: int,
        *,
        status: Callable[[], Mapping[str, Any]] | None = None,
        resolver: Resolver | None = None,
        pod_lookup: Callable[[str], str | None] | None = None,
        extra_counters: Callable[[], Mapping[str, int]] | None = None,
        token: str | None = None,
    ) -> None:
        self.runtime = runtime
        self._token = token
        self.host = host
        self.port = port
        self._status = status
        self.resolver = resolver
        self._pod_lookup = pod_lookup
        self._extra_counters = extra_counters
        self.stats = ControlStats()
        self._server: asyncio.Server | None = None
        self._trace_lock = asyncio.Lock()
        self._active: dict[asyncio.Task[Any], _Conn] = {}
        self._ops: dict[str, Callable[[_Conn, Any, dict[str, Any]], Awaitable[Any]]] = {
            "status": self._op_status,
            "dump": self._op_dump,
            "exec": self._op_exec,
            "trace": self._op_trace,
            "capture": self._op_capture,
        }

    @property
    def node(self) -> Any:
        return self.runtime.node

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._client, self.host, self.port, limit=MAX_FRAME + 4
            )
        except OSError as exc:
            raise ConfigError(
                f"control API: cannot listen on {self.host}:{self.port}: {exc.strerror}"
            ) from None
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._active):
            t.cancel()
        for t in list(self._active):
            with contextlib.suppress(BaseException):
                await t
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    # ---------------------------------------------------------- connection

    def _admit(self, conn: _Conn) -> str | None:
        """Make room for a new connection: past a limit (in total, or from the
        client's address) the connection idle the longest of that group is closed;
        when every one of them is busy, the reason to refuse."""
        mine = [(t, c) for t, c in self._active.items() if c.peer == conn.peer]
        for group, limit, what in (
            (mine, MAX_PER_CLIENT, f"{MAX_PER_CLIENT} connections open from {conn.peer}"),
            (list(self._active.items()), MAX_CONNECTIONS, f"{MAX_CONNECTIONS} connections open"),
        ):
            if len(group) < limit:
                continue
            idle = [(c.idle_since, t) for t, c in group if c.idle_since is not None]
            if not idle:
                return what
            _, oldest = min(idle, key=lambda pair: pair[0])
            self.stats.evicted_idle += 1
            self._active.pop(oldest, None)
            oldest.cancel()
        return None

    async def _refuse(self, conn: _Conn, why: str) -> None:
        """A ``busy`` reply the client can read: sent, then what the client sends is
        read for a moment, so closing does not reset the connection under it."""
        self.stats.refused_connections += 1
        with contextlib.suppress(Exception):
            await conn.send(error_message(None, "busy", f"agent busy: {why}; try again"))
            conn.writer.write_eof()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conn.reader.read(MAX_FRAME + 4), BUSY_LINGER)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        conn = _Conn(reader, writer)
        refused = self._admit(conn)
        if refused is not None:
            try:
                await self._refuse(conn, refused)
            finally:
                writer.close()
            return
        if task is not None:
            self._active[task] = conn
        self.stats.connections += 1
        try:
            while True:
                conn.idle_since = asyncio.get_running_loop().time()
                try:
                    # an idle client may keep its connection for a while, not forever
                    head = await asyncio.wait_for(reader.readexactly(4), IDLE_TIMEOUT)
                except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                    return
                conn.idle_since = None
                (length,) = HEADER.unpack(head)
                if length > MAX_FRAME:
                    self.stats.error("too_large")
                    await conn.send(
                        error_message(None, "too_large", f"frame of {length} bytes > {MAX_FRAME}")
                    )
                    return
                try:
                    body = await asyncio.wait_for(reader.readexactly(length), BODY_TIMEOUT)
                except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                    self.stats.error("bad_request")
                    return
                await self._request(conn, body)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            return  # server shutdown: this task is the connection's top level
        except Exception:
            log.exception("control connection failed")
        finally:
            if task is not None:
                self._active.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _request(self, conn: _Conn, body: bytes) -> None:
        self.stats.requests += 1
        rid: Any = None
        try:
            try:
                req = decode_body(body)
            except Exception as exc:
                raise ControlError("bad_request", f"frame is not msgpack: {exc}") from None
            if not isinstance(req, dict):
                raise ControlError("bad_request", "request must be a map")
            rid = req.get("id")
            if not isinstance(rid, int) or isinstance(rid, bool):
                rid = None
                raise ControlError("bad_request", "id: must be an integer")
            if req.get("v") != PROTOCOL_VERSION:
                raise ControlError(
                    "unsupported_version",
                    f"v: {req.get('v')!r} (this agent speaks {PROTOCOL_VERSION})",
                )
            if self._token is not None:
                given = req.get("token")
                if not isinstance(given, str) or not hmac.compare_digest(
                    given.encode(), self._token.encode()
                ):
                    raise ControlError(
                        "unauthorized",
                        "this agent requires its control token (created by `emunet up`; "
                        "the CLI and pod-shell present it)",
                    )
            op = req.get("op")
            args = req.get("args", {})
            if args is None:
                args = {}
            if not isinstance(args, dict):
                raise ControlError("bad_request", "args: must be a map")
            handler = self._ops.get(op) if isinstance(op, str) else None
            if handler is None:
                raise ControlError("unknown_op", f"unknown op {op!r}; use {', '.join(self._ops)}")
            result = await self._while_connected(conn, handler(conn, rid, args))
            await conn.send(result_message(rid, result))
        except ControlError as exc:
            self.stats.error(exc.code)
            await conn.send(error_message(rid, exc.code, str(exc)))
        except EmunetError as exc:
            self.stats.error("bad_request")
            await conn.send(error_message(rid, "bad_request", str(exc)))
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as exc:
            self.stats.error("internal")
            log.exception("control op failed")
            await conn.send(error_message(rid, "internal", f"{type(exc).__name__}: {exc}"))

    async def _while_connected(self, conn: _Conn, work: Awaitable[Any]) -> Any:
        """Run one op; when its client goes away meanwhile (a capture or trace left
        behind), cancel it, so its slot and locks are released at once."""
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=GONE_POLL)
                if done:
                    return task.result()
                if conn.gone:
                    self.stats.abandoned += 1
                    _cancel_until_done(task)
                    with contextlib.suppress(BaseException):
                        await task
                    raise ConnectionError("the client went away")
        finally:
            if not task.done():
                _cancel_until_done(task)

    # ------------------------------------------------------------------ ops

    def _netns(self, name: Any) -> str:
        if name is None or name == "" or name == "root":
            return "root"
        if not isinstance(name, str):
            raise ControlError("bad_request", "netns: must be a string")
        found = self._pod_lookup(name) if self._pod_lookup is not None else None
        if found is None and name in self.node.pods:
            found = name
        if found is None:
            raise ControlError("not_found", f"no pod {name!r} on node {self.node.name}")
        return found

    async def _op_status(self, conn: _Conn, rid: Any, args: dict[str, Any]) -> Any:
        node = self.node
        flannel = getattr(node, "flannel", None)  # an internet site has none
        base: dict[str, Any] = {
            "name": node.name,
            "nodeIP": str(node.node_ip),
            "subnet": str(node.subnet) if flannel is not None else "",
            "ready": True,
            "pods": len(node.pods),
            "leases": len(flannel.leases()) if flannel is not None else 0,
            "uptime": round(self.runtime.now() - self.runtime.started_at, 3),
            "cpuSeconds": round(time.process_time(), 6),  # the process's, all threads
        }
        if self._status is not None:
            base.update(self._status())
        return base

    async def _op_dump(self, conn: _Conn, rid: Any, args: dict[str, Any]) -> Any:
        what = args.get("what")
        if what not in DUMPS:
            raise ControlError("bad_request", f"what: {what!r}; use one of {', '.join(DUMPS)}")
        node = self.node
        now = self.runtime.now()
        ns_name = self._netns(args.get("netns"))
        if what in ("fdb", "leases") and not hasattr(node, "flannel"):
            raise ControlError("bad_request", f"{what}: this process runs no node")
        ns = node.namespace(ns_name)
        if what == "routes":
            return {"lines": ns.routes.dump()}
        if what == "neigh":
            return {"lines": ns.neigh_show(now)}
        if what == "fdb":
            return {"lines": bridge_fdb(node.bridge.show(now))}
        if what == "conntrack":
            return {"lines": node.conntrack_listing(now).splitlines()}
        if what == "iptables":
            return {"lines": node.iptables_save().splitlines()}
        if what == "leases":
            lines = [f"{lease.subnet} via {lease.public_ip}" for lease in node.flannel.leases()]
            return {"lines": [f"{node.subnet} (own) at {node.node_ip}", *lines]}
        if what == "pods":
            rows = [
                {
                    "name": p.name,
                    "namespace": p.namespace,
                    "ip": str(p.ip),
                    "mac": str(p.mac),
                    "veth": p.veth,
                }
                for p in node.pods.values()
            ]
            lines = [f"{r['namespace']}/{r['name']} {r['ip']} {r['mac']} {r['veth']}" for r in rows]
            return {"lines": lines, "rows": rows}
        if what == "addr":
            return {"lines": ip_addr(ns.interfaces.values())}
        # counters
        rows_c: dict[str, Any] = {
            "interfaces": node.counters(),
            "drops": node.drops(),
            "runtime": self.runtime.stats.as_dict(),
            "control": {
                "connections": self.stats.connections,
                "requests": self.stats.requests,
                "stream_dropped_bytes": self.stats.stream_dropped_bytes,
                "refused_connections": self.stats.refused_connections,
                "evicted_idle": self.stats.evicted_idle,
                "abandoned": self.stats.abandoned,
                **{f"error_{k}": v for k, v in self.stats.errors.items()},
            },
        }
        if self._extra_counters is not None:
            rows_c["agent"] = dict(self._extra_counters())
        lines = [
            f"{name}: " + " ".join(f"{k} {v}" for k, v in c.items())
            for name, c in rows_c["interfaces"].items()
        ]
        lines += [f"drop {reason}: {n}" for reason, n in sorted(rows_c["drops"].items())]
        lines += [f"runtime {k}: {v}" for k, v in rows_c["runtime"].items()]
        lines += [f"control {k}: {v}" for k, v in rows_c["control"].items()]
        lines += [f"agent {k}: {v}" for k, v in rows_c.get("agent", {}).items()]
        return {"lines": lines, "rows": rows_c}

    async def _op_exec(self, conn: _Conn, rid: Any, args: dict[str, Any]) -> Any:
        pod = self._netns(args.get("pod"))
        if pod == "root":
            raise ControlError("bad_request", "pod: required (commands run inside a pod)")
        argv = args.get("argv")
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise ControlError("bad_request", "argv: must be a list of strings")
        stdin = args.get("stdin", b"") or b""
        if isinstance(stdin, str):
            stdin = stdin.encode()
        if not isinstance(stdin, bytes):
            raise ControlError("bad_request", "stdin: must be bytes or a string")
        streamer = _Streamer(conn, rid, self.stats)
        cmd = asyncio.ensure_future(
            run_command(
                self.runtime,
                pod,
                argv,
                lambda text: streamer.emit("out", text),
                lambda text: streamer.emit("err", text),
                stdin=stdin,
                resolver=self.resolver,
            )
        )
        streamer.on_broken = lambda: _cancel_until_done(cmd)  # the client is gone: stop it
        try:
            code = await cmd
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if streamer.broken and (task is None or not task.cancelling()):
                raise ConnectionError("client went away during exec") from None
            raise
        finally:
            if not cmd.done():
                cmd.cancel()
            await streamer.close()
        return {"exit": code, "dropped": streamer.dropped}

    async def _op_trace(self, conn: _Conn, rid: Any, args: dict[str, Any]) -> Any:
        proto = args.get("proto", "icmp")
        if proto not in ("icmp", "udp", "tcp"):
            raise ControlError("bad_request", f"proto: {proto!r}; use icmp, udp or tcp")
        duration = _float(args.get("duration", 1.0), "duration", 0.05, 30.0)
        pod_arg = args.get("pod")
        pod: str | None = None
        if pod_arg:
            try:
                pod = self._netns(pod_arg)
            except ControlError:
                pod = None  # a pod of another node: record only
        dst: IPv4Address | None = None
        if pod is not None:
            host = args.get("dst")
            if not isinstance(host, str):
                raise ControlError("bad_request", "dst: required with pod")
            dst = await self._resolve(host)
        port = args.get("port")
        if port is not None and (not isinstance(port, int) or not 0 < port < 65536):
            raise ControlError("bad_request", "port: must be 1-65535")
        tracer = self.node.tracer
        async with self._trace_lock:
            tracer.clear()
            tracer.enabled = True
            result: str = ""
            try:
                if pod is not None and dst is not None:
                    result = await self._probe(pod, dst, proto, port, duration)
                    await asyncio.sleep(0.05)
                else:
                    await asyncio.sleep(duration)
            finally:
                tracer.enabled = False
            # the 6th element is the hop's time on the node's clock (CLOCK_MONOTONIC,
            # shared by every process of the machine): clients merge nodes by it
            hops = [
                [h.node, h.netns, h.iface, h.event, h.detail, h.time]
                for h in tracer.hops[:MAX_TRACE_HOPS]
            ]
            omitted = len(tracer.hops) - len(hops)
            tracer.clear()
        # a busy node records other traffic too: keep the reply under MAX_FRAME
        return {"hops": hops, "result": result, "omitted": omitted}

    async def _resolve(self, host: str) -> IPv4Address:
        try:
            return IPv4Address(host)
        except ValueError:
            pass
        ip = await self.resolver(host) if self.resolver is not None else None
        if ip is None:
            raise ControlError("not_found", f"cannot resolve {host!r}")
        return ip

    async def _probe(
        self, pod: str, dst: IPv4Address, proto: str, port: int | None, timeout: float
    ) -> str:
        rt = self.runtime
        if proto == "icmp":
            reply = await rt.ping(pod, dst, seq=1, timeout=timeout)
            if reply is None:
                return "no reply"
            if isinstance(reply, SocketErrorEvent):
                return str(reply)
            return (
                f"echo reply from {reply.src}: icmp_seq={reply.seq} ttl={reply.ttl} "
                f"time={reply.rtt * 1000:.3f} ms"
            )
        if proto == "udp":
            ep = await rt.udp_bind(pod)
            try:
                ep.sendto(b"emunet trace\n", (dst, port or 33434))
                if not await ep.wait_event(timeout):
                    return "no answer"
                if ep.errors:
                    return str(ep.errors.popleft())
                return "udp reply"
            finally:
                ep.close()
        try:
            _r, w = await rt.open_connection(pod, dst, port or 80, timeout=timeout)
        except OSError as exc:
            return f"connect failed: {exc}"
        if w.conn.state is TCPState.ESTABLISHED:
            w.close()
        else:
            w.abort()
        return "connected"

    async def _op_capture(self, conn: _Conn, rid: Any, args: dict[str, Any]) -> Any:
        netns = self._netns(args.get("netns"))
        iface = args.get("iface", "eth0")
        if not isinstance(iface, str):
            raise ControlError("bad_request", "iface: must be a string")
        count = int(_float(args.get("count", 100), "count", 1, 1_000_000))
        timeout = _float(args.get("timeout", 10.0), "timeout", 0.01, 3600.0)
        dev = self.node.namespace(netns).interfaces.get(iface)
        if dev is None:
            raise ControlError("not_found", f"no interface {iface!r} in {netns}")
        queue: BoundedQueue[tuple[float, bytes]] = BoundedQueue(8192)

        def tap(now: float, data: bytes | bytearray) -> None:
            queue.put((now, bytes(data)))

        remove = self.runtime.tap(netns, iface, tap)
        buf = io.BytesIO()
        writer = PcapWriter(buf, dev.linktype)
        streamer = _Streamer(conn, rid, self.stats)
        seen = 0
        end = self.runtime.now() + timeout
        try:
            streamer.emit("pcap", buf.getvalue())
            buf.seek(0)
            buf.truncate()
            async for now, data in queue.take(count, end, self.runtime.now):
                if streamer.broken:
                    raise ConnectionError("client went away during capture")
                writer.write(self.runtime.wall(now), data)
                seen += 1
                if not queue.items or buf.tell() > 32768 or seen >= count:
                    streamer.emit("pcap", buf.getvalue())
                    buf.seek(0)
                    buf.truncate()
        finally:
            remove()
            await streamer.close()
        return {"packets": seen, "dropped": queue.dropped + streamer.dropped}


def _cancel_until_done(task: asyncio.Future[Any], every: float = 0.05) -> None:
    """Cancel ``task`` and again until it is done (3.11's ``wait_for`` can swallow
    a cancellation that races with its inner future completing)."""
    if task.done():
        return
    task.cancel()
    asyncio.get_running_loop().call_later(every, _cancel_until_done, task, every)


def _float(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ControlError("bad_request", f"{name}: must be a number")
    if not low <= value <= high:
        raise ControlError("bad_request", f"{name}: must be between {low} and {high}")
    return float(value)
