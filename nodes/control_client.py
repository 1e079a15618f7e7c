"""The client of a node agent's control API (docs/ARCHITECTURE.md, "Control API").

The messages are :mod:`emunet.nodes.wire`'s; this module only moves them over one
asyncio TCP connection. ::

    async with ControlClient("127.0.0.11", 10250) as c:
        status = await c.call("status")
        async for frame in c.stream("exec", pod="web-1", argv=["ping", "-c", "1", "x"]):
            if frame.kind == "stream": ...      # {"out": "..."} / {"err": "..."}
            else: ...                           # frame.kind == "result": the final result

Error replies become :class:`ControlError` (``code`` is the server's code;
:class:`ControlNotFound` for ``not_found``); a connection that cannot be made,
breaks, or stays silent beyond the timeout becomes :class:`AgentUnavailable`.
Messages are one line, meant to be shown to a user as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from emunet.nodes.process import Service
from emunet.nodes.wire import (
    MAX_FRAME,
    PROTOCOL_VERSION,
    AgentUnavailable,
    ControlError,
    ControlNotFound,
    Frame,
    decode_body,
    decode_frame_length,
    encode_frame,
    reply_result,
    request_message,
)

from emunet.errors import EmunetError

__all__ = [
    "MAX_FRAME",
    "PROTOCOL_VERSION",
    "AgentUnavailable",
    "ControlClient",
    "ControlError",
    "ControlNotFound",
    "Frame",
    "call",
]


class ControlClient(Service):
    """One connection to one agent; requests run one at a time."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = 10.0,
        connect_timeout: float = 3.0,
        token: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.token = token
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _unavailable(self, detail: str) -> AgentUnavailable:
        return AgentUnavailable(f"node agent unreachable at {self.address} ({detail})")

    async def start(self) -> None:
        """Connect (``async with`` does)."""
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.connect_timeout
            )
        except TimeoutError:
            raise self._unavailable("timed out") from None
        except ConnectionRefusedError:
            raise self._unavailable("connection refused") from None
        except OSError as exc:
            raise self._unavailable(exc.strerror or str(exc)) from None

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _read(self, timeout: float) -> dict[str, Any]:
        reader = self._reader
        if reader is None:
            raise EmunetError("ControlClient is not open; use `async with ControlClient(...)`")
        try:
            header = await asyncio.wait_for(reader.readexactly(4), timeout)
            length = decode_frame_length(header)
            if length > MAX_FRAME:
                raise self._unavailable(f"reply frame of {length} bytes exceeds {MAX_FRAME}")
            body = await asyncio.wait_for(reader.readexactly(length), timeout)
        except TimeoutError:
            raise self._unavailable(f"no reply within {timeout:g} s") from None
        except asyncio.IncompleteReadError:
            raise self._unavailable("connection closed by the agent") from None
        except OSError as exc:
            raise self._unavailable(exc.strerror or str(exc)) from None
        try:
            msg = decode_body(body)
        except Exception as exc:
            raise self._unavailable(f"malformed reply ({type(exc).__name__})") from None
        if not isinstance(msg, dict):
            raise self._unavailable("malformed reply (not a map)")
        return msg

    async def _send(self, op: str, args: dict[str, Any]) -> int:
        writer = self._writer
        if writer is None:
            raise EmunetError("ControlClient is not open; use `async with ControlClient(...)`")
        request_id = next(self._ids)
        frame = encode_frame(request_message(request_id, op, args, self.token))
        try:
            writer.write(frame)
            await asyncio.wait_for(writer.drain(), self.timeout)
        except TimeoutError:
            raise self._unavailable("send timed out") from None
        except OSError as exc:
            raise self._unavailable(exc.strerror or str(exc)) from None
        return request_id

    async def call(self, op: str, **args: Any) -> Any:
        """One request, one reply (stream frames, if any, are dropped)."""
        result: Any = None
        async for frame in self.exchange(op, args):
            if frame.kind == "result":
                result = frame.data
        return result

    async def stream(
        self, op: str, *, idle_timeout: float | None = None, **args: Any
    ) -> AsyncIterator[Frame]:
        """Yield ``Frame("stream", {...})`` per stream frame, then ``Frame("result", r)``.

        ``idle_timeout`` (default: the client's timeout) bounds the wait for
        each frame, not the whole operation.
        """
        async for frame in self.exchange(op, args, idle_timeout=idle_timeout):
            yield frame

    async def exchange(
        self, op: str, args: Mapping[str, Any], *, idle_timeout: float | None = None
    ) -> AsyncIterator[Frame]:
        """:meth:`stream` with the arguments as one map (any key, ``op`` too)."""
        timeout = self.timeout if idle_timeout is None else idle_timeout
        async with self._lock:
            request_id = await self._send(op, dict(args))
            while True:
                msg = await self._read(timeout)
                if msg.get("id") not in (request_id, None):
                    continue  # a late reply to an abandoned request
                if "stream" in msg:
                    yield Frame("stream", msg["stream"])
                    continue
                yield Frame("result", reply_result(msg))
                return


async def call(
    host: str,
    port: int,
    op: str,
    args: Mapping[str, Any] | None = None,
    *,
    on_stream: Callable[[Mapping[str, Any]], None] | None = None,
    timeout: float = 30.0,
    token: str | None = None,
) -> Any:
    """One request on a connection of its own: stream frames go to ``on_stream``,
    the result is returned; the whole exchange is bounded by ``timeout``."""

    async def run() -> Any:
        result: Any = None
        async with ControlClient(host, port, timeout=timeout, token=token) as client:
            async for frame in client.exchange(op, args or {}):
                if frame.kind == "result":
                    result = frame.data
                elif on_stream is not None:
                    on_stream(frame.data)
        return result

    return await asyncio.wait_for(run(), timeout)
