"""Pod apps: emulated processes on the pod socket API.

An app is any class with ``async def run(self, ctx: AppContext) -> None``;
the kubelet part of the agent starts one per container, in the pod's
namespace, and cancels it when the pod goes away. ``ctx`` gives the pod's
identity and the asyncio socket wrappers of :mod:`emunet.nodes.sockets`.

Built-in apps (``spec.containers[].app``):

* ``echo``: UDP and TCP echo on port 7 (``args: {port: N}``), like inetd's echo.
* ``http``: a small HTTP/1.1 server answering any path with the pod's name
  and addresses, like the ``traefik/whoami`` image (port 80).
* ``sink``: a TCP server that counts bytes and, at EOF, answers with the
  count (port 5001, iperf's); ``iperf -c`` in pod-shell measures against it.

Writing your own app takes a few lines::

    # myapps.py
    from emunet.nodes.apps import App, AppContext

    class Greeter(App):
        async def run(self, ctx: AppContext) -> None:
            async def greet(reader, writer):
                writer.write(f"hello from {ctx.pod}\\n".encode())
                await writer.drain()
                writer.close()
            server = await ctx.start_server(ctx.port(9000), greet)
            await server.serve_forever()

Then use ``app: myapps:Greeter`` in the pod spec (the module must be
importable by the agent), or register it under the ``emunet.apps`` entry-point
group of your package (``greeter = "myapps:Greeter"``) and say ``app: greeter``.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from ipaddress import IPv4Address
from typing import Any, ClassVar

from emunet.nodes.runtime import NodeRuntime
from emunet.nodes.sockets import Stream, StreamServer, UDPEndpoint

from emunet.errors import ConfigError

__all__ = [
    "BUILTIN_APPS",
    "App",
    "AppContext",
    "EchoApp",
    "HttpApp",
    "SinkApp",
    "load_app",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "emunet.apps"


@dataclass
class AppContext:
    """What an app sees of its pod."""

    runtime: NodeRuntime
    pod: str
    namespace: str
    ip: IPv4Address
    node: str
    args: Mapping[str, Any] = field(default_factory=dict)
    ports: list[int] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def log(self) -> logging.Logger:
        return logging.getLogger(f"emunet.app.{self.namespace}.{self.pod}")

    def port(self, default: int) -> int:
        """``args.port`` of the container, else its first declared port, else ``default``."""
        if "port" in self.args:
            return _port(str(self.args["port"]))
        return self.ports[0] if self.ports else default

    def count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    async def udp_bind(self, port: int = 0) -> UDPEndpoint:
        return await self.runtime.udp_bind(self.pod, port)

    async def start_server(
        self, port: int, handler: Callable[[Stream, Stream], Awaitable[None]]
    ) -> StreamServer:
        return await self.runtime.start_server(self.pod, port, handler)

    async def open_connection(
        self, host: IPv4Address | str, port: int, *, timeout: float | None = None
    ) -> tuple[Stream, Stream]:
        return await self.runtime.open_connection(self.pod, host, port, timeout=timeout)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ConfigError(f"app args.port: {text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ConfigError(f"app args.port: {port} is out of range 1..65535")
    return port


class App:
    """Base class of pod apps (any object with an async ``run(ctx)`` works too)."""

    name: ClassVar[str] = ""

    async def run(self, ctx: AppContext) -> None:
        raise NotImplementedError


class EchoApp(App):
    """UDP and TCP echo (RFC 862) on one port."""

    name = "echo"
    default_port = 7

    async def run(self, ctx: AppContext) -> None:
        port = ctx.port(self.default_port)
        udp = await ctx.udp_bind(port)

        async def tcp_echo(reader: Stream, writer: Stream) -> None:
            ctx.count("tcp_connections")
            while data := await reader.read(65536):
                ctx.count("tcp_bytes", len(data))
                writer.write(data)
                await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await ctx.start_server(port, tcp_echo)
        try:
            while True:
                data, addr = await udp.recvfrom()
                ctx.count("udp_datagrams")
                try:
                    udp.sendto(data, addr)
                except OSError as exc:
                    ctx.count("udp_errors")
                    ctx.log.debug("echo reply to %s failed: %s", addr, exc)
        finally:
            udp.close()
            server.close()


class HttpApp(App):
    """A whoami-like HTTP/1.1 server: any path answers with the pod's identity."""

    name = "http"
    default_port = 80
    max_header = 16 * 1024

    async def run(self, ctx: AppContext) -> None:
        server = await ctx.start_server(ctx.port(self.default_port), self._handler(ctx))
        await server.serve_forever()

    def _handler(self, ctx: AppContext) -> Callable[[Stream, Stream], Awaitable[None]]:
        async def handle(reader: Stream, writer: Stream) -> None:
            ctx.count("connections")
            while True:
                request = await self._read_request(reader)
                if request is None:
                    break
                line, headers = request
                ctx.count("requests")
                keep = self._keep_alive(line, headers)
                writer.write(self._response(ctx, writer, line, headers, keep))
                await writer.drain()
                if not keep:
                    break
            writer.close()
            await writer.wait_closed()

        return handle

    async def _read_request(self, reader: Stream) -> tuple[str, list[tuple[str, str]]] | None:
        try:
            return await self._read_head(reader)
        except ValueError:  # a line longer than max_header: not HTTP, hang up
            return None

    async def _read_head(self, reader: Stream) -> tuple[str, list[tuple[str, str]]] | None:
        size = 0
        line = ""
        while not line:
            raw = await reader.readline(self.max_header)
            if not raw:
                return None
            line = raw.decode("latin-1").strip()
        headers: list[tuple[str, str]] = []
        while True:
            raw = await reader.readline(self.max_header)
            size += len(raw)
            if size > self.max_header:
                return None
            text = raw.decode("latin-1").rstrip("\r\n")
            if not text:
                return line, headers
            name, _, value = text.partition(":")
            headers.append((name.strip(), value.strip()))

    @staticmethod
    def _keep_alive(line: str, headers: list[tuple[str, str]]) -> bool:
        conn = {v.lower() for k, v in headers if k.lower() == "connection"}
        if line.endswith("HTTP/1.0"):
            return "keep-alive" in conn
        return "close" not in conn

    def _response(
        self,
        ctx: AppContext,
        writer: Stream,
        line: str,
        headers: list[tuple[str, str]],
        keep: bool,
    ) -> bytes:
        parts = line.split()
        method = parts[0] if parts else ""
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            body = b"400 Bad Request\n"
            status = "400 Bad Request"
        else:
            ip, port = writer.peername()
            text = [
                f"Hostname: {ctx.pod.rpartition('/')[2]}",
                "IP: 127.0.0.1",
                f"IP: {ctx.ip}",
                f"RemoteAddr: {ip}:{port}",
                f"Node: {ctx.node}",
                line,
                *(f"{k}: {v}" for k, v in headers),
            ]
            body = ("\n".join(text) + "\n").encode()
            status = "200 OK"
        head = (
            f"HTTP/1.1 {status}\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n"
        ).encode()
        return head if method == "HEAD" else head + body


class SinkApp(App):
    """Counts what each TCP connection sends; at EOF answers ``<bytes>\\n``."""

    name = "sink"
    default_port = 5001

    async def run(self, ctx: AppContext) -> None:
        async def sink(reader: Stream, writer: Stream) -> None:
            ctx.count("connections")
            n = 0
            while data := await reader.read(1 << 20):
                n += len(data)
            ctx.count("bytes", n)
            writer.write(f"{n}\n".encode())
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await ctx.start_server(ctx.port(self.default_port), sink)
        await server.serve_forever()


class IdleApp(App):
    """Does nothing (a pause container): the pod only answers ping and pod-shell."""

    name = "none"

    async def run(self, ctx: AppContext) -> None:
        await asyncio.Event().wait()


BUILTIN_APPS: dict[str, type[App]] = {
    "echo": EchoApp,
    "http": HttpApp,
    "sink": SinkApp,
    "none": IdleApp,
    "pause": IdleApp,
}


def load_app(spec: str, *, allow_modules: bool = False) -> Any:
    """An app instance from a built-in name, an installed ``emunet.apps`` entry point,
    or (only when ``allow_modules``: the agent was started with
    ``--allow-module-apps``) any ``module:Class``. A pod's app comes from the
    registry, which anyone with etcd access can write: importing whatever module it
    names (``os:system``) would be running their code in the agent."""
    if not spec:
        return IdleApp()
    cls: Any = BUILTIN_APPS.get(spec)
    if cls is None and ":" in spec and not allow_modules:
        raise ConfigError(
            f"app {spec[:100]!r}: module:Class apps are refused by this agent (start it with "
            f"--allow-module-apps, or install the app as an {ENTRY_POINT_GROUP!r} entry point)"
        )
    if cls is None and ":" in spec:
        module, _, attr = spec.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except Exception as exc:  # whatever a user's module raises while importing
            raise ConfigError(f"app {spec!r}: cannot load it ({exc})") from None
    if cls is None:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == spec:
                try:
                    cls = ep.load()
                except Exception as exc:
                    raise ConfigError(f"app {spec!r}: entry point failed to load: {exc}") from None
                break
    if cls is None:
        known = ", ".join(sorted(BUILTIN_APPS))
        raise ConfigError(
            f"unknown app {spec!r}: use one of {known}, module:Class, "
            f"or an {ENTRY_POINT_GROUP!r} entry point"
        )
    try:
        app = cls() if isinstance(cls, type) else cls
    except Exception as exc:
        raise ConfigError(f"app {spec!r}: cannot create it ({exc})") from None
    if not callable(getattr(app, "run", None)):
        raise ConfigError(f"app {spec!r}: {cls!r} has no run(ctx) method")
    return app
