"""What every etcd user in the agent and the CLI shares: the client, its errors.

aetcd's exceptions are mapped to two named errors with one-line messages a
user can act on (:class:`EtcdUnavailable`: down, wrong address, timed out;
:class:`EtcdError`: etcd answered but refused). gRPC's default reconnect
backoff grows to 120 s, so after an etcd outage every request would fail fast
for that long; the channel here reconnects within a second instead.

:class:`EtcdClient` is the base of the two etcd adapters (the cluster
registry, ``emunet.nodes.registry``, and flannel's subnet manager,
``emunet.nodes.subnets``): the connection's lifecycle (``async with``;
constructing one does no I/O), reads with errors mapped, and
:meth:`EtcdClient.watch_prefix`, a snapshot of a prefix followed by its
changes that survives etcd outages (reconnect with backoff, resume after the
last revision seen, re-list when that revision was compacted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar
from urllib.parse import urlsplit

import aetcd

from emunet.errors import ConfigError, EmunetError

T = TypeVar("T")

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


class EtcdClient:
    """One etcd connection for an adapter; use as ``async with``.

    Subclasses stop their own background tasks (lease keep-alives, renewals)
    in :meth:`_stop_tasks`, which :meth:`close` calls before disconnecting.
    Counters: :attr:`watch_reconnects`, :attr:`relists`.
    """

    _log: ClassVar[logging.Logger] = logging.getLogger(__name__)

    def __init__(
        self, endpoint: str, *, request_timeout: float, watch_backoff: tuple[float, float]
    ) -> None:
        self.endpoint = endpoint
        self._host, self._port = parse_endpoint(endpoint)
        self.request_timeout = request_timeout
        self.watch_backoff = watch_backoff
        self._client: Any = None
        self.watch_reconnects = 0
        self.relists = 0

    # -- lifecycle ---------------------------------------------------------

    def _new_client(self) -> Any:
        return new_client(self._host, self._port, self.request_timeout)

    async def __aenter__(self) -> Self:
        self._client = self._new_client()
        with self._errors():
            await self._client.connect()  # builds the channel; no request yet
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the background tasks and disconnect."""
        await self._stop_tasks()
        if self._client is not None:
            await close_quietly(self._client)
            self._client = None

    async def _stop_tasks(self) -> None:
        """Stop the subclass's background tasks (called by :meth:`close`)."""

    @property
    def client(self) -> Any:
        if self._client is None:
            name = type(self).__name__
            raise EmunetError(f"{name} is not open; use `async with {name}(...)`")
        return self._client

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        return etcd_errors(self.endpoint)

    # -- reads -------------------------------------------------------------

    async def _get(self, key: str) -> Any:
        with self._errors():
            return await self.client.get(key.encode())

    async def _list(self, prefix: str, client: Any = None) -> tuple[list[Any], int]:
        """The key-values under ``prefix`` and the revision they were read at."""
        with self._errors():
            listing = await (client or self.client).get_prefix(prefix.encode())
        return list(listing), listing.header.revision

    # -- watch -------------------------------------------------------------

    async def watch_prefix(
        self,
        prefix: str,
        relist: Callable[[list[Any]], list[T]],
        apply: Callable[[Any], list[T]],
        *,
        check: Callable[[], None] | None = None,
    ) -> AsyncIterator[T]:
        """Yield what a snapshot of ``prefix`` and then each change to it mean, forever.

        ``relist(kvs)`` turns a listing into events (at the start, and again
        when the revision to resume from was compacted); ``apply(change)`` one
        watch event. Each (re)connection is a new client: on an etcd error
        the watch waits (``watch_backoff``: doubling from the first value up to
        the second) and resumes from the revision after the last one seen.
        ``check()``, when given, runs before each connection and may raise to
        end the watch.
        """
        backoff_min, backoff_max = self.watch_backoff
        backoff = backoff_min
        revision: int | None = None  # next revision to watch from; None: (re)list first
        while True:
            if check is not None:
                check()
            client = self._new_client()
            try:
                if revision is None:
                    kvs, listed_at = await self._list(prefix, client)
                    events = relist(kvs)
                    revision = listed_at + 1
                    for event in events:
                        yield event
                with self._errors():
                    stream = await client.watch_prefix(prefix.encode(), start_revision=revision)
                    backoff = backoff_min
                    async for change in stream:
                        revision = change.kv.mod_revision + 1
                        for event in apply(change):
                            yield event
                raise EtcdUnavailable(self.endpoint, "watch stream ended")
            except aetcd.RevisionCompactedError as exc:
                self._log.warning(
                    "watch of %s fell behind compaction (%s), re-listing", prefix, exc
                )
                self.relists += 1
                revision = None
            except EtcdError as exc:
                self.watch_reconnects += 1
                self._log.warning(
                    "watch of %s failed (%s); reconnecting in %.1f s", prefix, exc, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, backoff_max)
            finally:
                await close_quietly(client)
