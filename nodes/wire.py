"""The control API's protocol, sans-I/O: one module for the agent and every client.

Framing (docs/ARCHITECTURE.md, "Control API"): a 4-byte big-endian length,
then one msgpack map of at most :data:`MAX_FRAME` bytes. Messages::

    request  {"v": 1, "id": N, "op": str, "args": {...}[, "token": str]}
    stream   {"v": 1, "id": N, "stream": {kind: data}}        (0 or more)
    result   {"v": 1, "id": N, "ok": true, "result": ...}
    error    {"v": 1, "id": N, "ok": false, "error": {"code": str, "message": str}}

An error the agent sends before it knows the request's id (a frame too large, a
refused connection) carries ``"id": None``. The bytes are those of every build
since protocol version 1: compose images of an older build still talk to it.

This module builds and reads messages; :mod:`emunet.nodes.control` (the agent's
server) and :mod:`emunet.nodes.control_client` (the client the CLI and pod-shell
use) move them over asyncio streams.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgpack

from emunet.errors import EmunetError

__all__ = [
    "ERROR_CODES",
    "MAX_FRAME",
    "PROTOCOL_VERSION",
    "AgentUnavailable",
    "ControlError",
    "ControlNotFound",
    "Frame",
    "decode_body",
    "decode_frame_length",
    "encode_frame",
    "error_message",
    "reply_result",
    "request_message",
    "result_message",
    "stream_message",
]

PROTOCOL_VERSION: Final = 1
MAX_FRAME: Final = 1 << 20
HEADER: Final = struct.Struct("!I")  # the frame's length, big-endian

#: Every ``error.code`` the agent sends, and what it means.
ERROR_CODES: Final = {
    "bad_request": "the request or its arguments are malformed",
    "unsupported_version": "the request's v is not PROTOCOL_VERSION",
    "unauthorized": "the agent requires its control token",
    "unknown_op": "no such op",
    "not_found": "no such pod, namespace, interface...",
    "too_large": "a frame over MAX_FRAME (the connection is closed)",
    "busy": "too many connections; try again",
    "internal": "the op failed inside the agent",
}


class ControlError(EmunetError):
    """An error reply of the control API (``code`` is one of :data:`ERROR_CODES`): raised
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
    """What a client reads for one request: each ``stream`` frame, then the ``result``."""

    kind: Literal["stream", "result"]
    data: Any


def encode_frame(obj: Any, *, limit: int | None = MAX_FRAME) -> bytes:
    """The frame of one message. Past ``limit`` bytes a request is the caller's
    mistake (:class:`EmunetError`); the agent sends its replies with ``limit=None``
    and leaves the refusal to the client."""
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    if limit is not None and len(body) > limit:
        raise EmunetError(f"control request too large ({len(body)} bytes > {limit})")
    return HEADER.pack(len(body)) + body


def decode_frame_length(header: bytes) -> int:
    """The body length a 4-byte frame header announces."""
    (length,) = HEADER.unpack_from(header)
    return int(length)


def decode_body(body: bytes) -> Any:
    """One frame's message (msgpack raises when the body is not msgpack)."""
    return msgpack.unpackb(body, raw=False, strict_map_key=False)


def request_message(rid: int, op: str, args: dict[str, Any], token: str | None) -> dict[str, Any]:
    request: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": rid, "op": op, "args": args}
    if token is not None:
        request["token"] = token
    return request


def stream_message(rid: Any, kind: str, data: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": rid, "stream": {kind: data}}


def result_message(rid: Any, result: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": rid, "ok": True, "result": result}


def error_message(rid: Any, code: str, message: str) -> dict[str, Any]:
    return {
        "v": PROTOCOL_VERSION,
        "id": rid,
        "ok": False,
        "error": {"code": code, "message": message},
    }


def reply_result(msg: dict[str, Any]) -> Any:
    """The result of a final reply, or its error raised as :class:`ControlError`
    (:class:`ControlNotFound` for ``not_found``), its message's first line."""
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
