"""What every etcd user in the agent and the CLI shares: the client, its errors.

aetcd's exceptions are mapped to two named errors with one-line messages a
user can act on (:class:`EtcdUnavailable`: down, wrong address, timed out;
:class:`EtcdError`: etcd answered but refused). gRPC's default reconnect
backoff grows to 120 s, so after an etcd outage every request would fail fast
for that long; the channel here reconnects within a second instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import aetcd

from emunet.errors import ConfigError, EmunetError

# Quick reconnects after etcd comes back (the first retry after 100 ms, then at
# most every second). Not grpc.min_reconnect_backoff_ms: gRPC uses it as the
# connect timeout too (20 s by default), and at 100 ms a machine busy with 200
# clients timed out waiting for etcd's first HTTP/2 frame ("no answer").
CHANNEL_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
}


class EtcdError(EmunetError):
    """etcd answered, but refused or failed the request."""


class EtcdUnavailable(EtcdError):
    """etcd cannot be reached (down, wrong address, timed out)."""

    def __init__(self, endpoint: str, detail: str = "") -> None:
        message = f"etcd unreachable at {endpoint}"
        super().__init__(f"{message} ({detail})" if detail else message)
        self.endpoint = endpoint


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``127.0.0.1:2379`` or ``http://127.0.0.1:2379`` -> (host, port)."""
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    try:
        port = parts.port or 2379
    except ValueError:
        raise ConfigError(f"etcd endpoint: {endpoint!r} has an invalid port") from None
    if not parts.hostname or parts.scheme != "http":
        raise ConfigError(f"etcd endpoint: {endpoint!r} is not host:port or http://host:port")
    return parts.hostname, port


def short_detail(exc: BaseException) -> str:
    """One line saying why an etcd call failed (gRPC messages are long)."""
    text = str(exc) or type(exc).__name__
    if "Connection refused" in text:
        return "connection refused"
    if "failed to connect" in text:
        return "no answer"
    if "Socket closed" in text or "Stream removed" in text:
        return "connection lost"
    if "Deadline Exceeded" in text or isinstance(exc, TimeoutError):
        return "timed out"
    return text.splitlines()[0][:200]


def new_client(host: str, port: int, timeout: float) -> Any:
    """An aetcd client (``connect()`` builds the channel; no request yet)."""
    return aetcd.Client(host, port, timeout=timeout, options=CHANNEL_OPTIONS)


@contextlib.contextmanager
def etcd_errors(endpoint: str) -> Iterator[None]:
    """Turn aetcd's exceptions into :class:`EtcdUnavailable` / :class:`EtcdError`.

    ``RevisionCompactedError`` passes through: watchers handle it by relisting.
    """
    try:
        yield
    except (
        aetcd.ConnectionFailedError,
        aetcd.ConnectionTimeoutError,
        aetcd.WatchTimeoutError,
        TimeoutError,
        OSError,
    ) as exc:
        raise EtcdUnavailable(endpoint, short_detail(exc)) from None
    except aetcd.RevisionCompactedError:
        raise
    except aetcd.ClientError as exc:
        raise EtcdError(f"etcd at {endpoint} failed the request: {short_detail(exc)}") from None


async def close_quietly(client: Any) -> None:
    """Close a client, bounded in time, whatever state its channel is in."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), 2.0)
