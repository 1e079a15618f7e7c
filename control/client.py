"""Client of a node agent's control API (docs/ARCHITECTURE.md, "Control API").

Framing: a 4-byte big-endian length, then one msgpack map; requests are
``{"v": 1, "id": n, "op": op, "args": {...}}``. ::

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
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import msgpack

from emunet.errors import EmunetError

__all__ = [
    "MAX_FRAME",
    "PROTOCOL_VERSION",
    "AgentUnavailable",
    "ControlClient",
    "ControlError",
    "ControlNotFound",
    "Frame",
    "decode_frame_length",
    "encode_frame",
]

PROTOCOL_VERSION = 1
MAX_FRAME = 1 << 20
_LEN = struct.Struct(">I")


class ControlError(EmunetError):
    """An error reply of the control API (``code`` is one of its error codes): raised
    by the agent's handlers to answer with it, and by the client on receiving it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ControlNotFound(ControlError):
    """``not_found``: no such pod, namespace, interface..."""


class AgentUnavailable(EmunetError):
    """The agent's control API cannot be reached or stopped answering."""


@dataclass(frozen=True, slots=True)
class Frame:
    kind: Literal["stream", "result"]
    data: Any


def encode_frame(obj: Any) -> bytes:
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise EmunetError(f"control request too large ({len(body)} bytes > {MAX_FRAME})")
    return _LEN.pack(len(body)) + body


def decode_frame_length(header: bytes) -> int:
    (length,) = _LEN.unpack_from(header)
    return int(length)


class ControlClient:
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

    async def __aenter__(self) -> ControlClient:
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
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

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
            msg = msgpack.unpackb(body, raw=False)
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
        request: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": request_id, "op": op, "args": args}
        if self.token is not None:
            request["token"] = self.token
        frame = encode_frame(request)
        try:
            writer.write(frame)
            await asyncio.wait_for(writer.drain(), self.timeout)
        except TimeoutError:
            raise self._unavailable("send timed out") from None
        except OSError as exc:
            raise self._unavailable(exc.strerror or str(exc)) from None
        return request_id

    @staticmethod
    def _result(msg: dict[str, Any]) -> Any:
        if msg.get("ok"):
            return msg.get("result")
        error = msg.get("error")
        if not isinstance(error, dict):
            error = {}
        code = str(error.get("code", "internal"))
        message = str(error.get("message", "the agent reported an error")).splitlines()
        text = message[0] if message else code
        if code == "not_found":
            raise ControlNotFound(code, text)
        raise ControlError(code, text)

    async def call(self, op: str, **args: Any) -> Any:
        """One request, one reply (stream frames, if any, are dropped)."""
        result: Any = None
        async for frame in self.stream(op, **args):
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
        timeout = self.timeout if idle_timeout is None else idle_timeout
        async with self._lock:
            request_id = await self._send(op, args)
            while True:
                msg = await self._read(timeout)
                if msg.get("id") not in (request_id, None):
                    continue  # a late reply to an abandoned request
                if "stream" in msg:
                    yield Frame("stream", msg["stream"])
                    continue
                yield Frame("result", self._result(msg))
                return
