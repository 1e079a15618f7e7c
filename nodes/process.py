"""What every emunet process (agent, internet, controller manager) does the same
way: its log lines, its event loop (uvloop), one-line errors and exit codes, its
stop signals, and loops that restart after a failure instead of dying.

Exit status: 0 after SIGTERM/SIGINT, 1 when the process had to stop (an
:class:`~emunet.errors.EmunetError`: a port in use, a revoked lease...), 2 for
bad arguments (argparse's own).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, Self

from emunet.nodes.address_map import AddressMap
from emunet.nodes.token import TOKEN_ENV, read_token

from emunet.errors import ConfigError, EmunetError

__all__ = [
    "Service",
    "add_token_option",
    "address_map_arg",
    "network_arg",
    "port_arg",
    "program_parser",
    "restarting",
    "run_main",
    "setup_logging",
    "token_from_args",
    "until_signal",
    "usage_error",
]

_NOISY = ("grpc", "aetcd", "asyncio")


class Service:
    """``async with``: :meth:`start`, and :meth:`close` always (also when starting
    failed half-way, so nothing it had opened is left behind)."""

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def setup_logging(name: str, level: str) -> None:
    """``<time> <name> <LEVEL> <logger>: <message>`` on stderr; the libraries quiet."""
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper()),
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
    )
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_main(prog: str, coro: Coroutine[Any, Any, int]) -> int:
    """Run ``coro`` on uvloop; an EmunetError is one line on stderr and status 1."""
    factory: Callable[[], asyncio.AbstractEventLoop]
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        factory = asyncio.new_event_loop
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coro)
    except EmunetError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


async def until_signal() -> None:
    """Return at SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def restarting(
    make: Callable[[], Awaitable[Any]],
    name: str,
    log: logging.Logger,
    counters: MutableMapping[str, int],
    *,
    first_delay: float = 0.5,
    max_delay: float = 30.0,
) -> None:
    """Run the loop ``make()`` returns; when it fails, log it and start it again after a
    backoff (a dead loop behind a live process would leave its work to nobody)."""
    delay = first_delay
    while True:
        try:
            await make()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            counters["loop_restarts"] = counters.get("loop_restarts", 0) + 1
            log.exception("%s failed; restarting it in %.1f s", name, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)


# --- the programs' parsers -------------------------------------------------------


def program_parser(prog: str, description: str, state_dir_help: str) -> argparse.ArgumentParser:
    """A program's parser with what every one of them takes: ``--etcd``, ``--state-dir``
    and ``--log-level``."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--etcd", required=True, metavar="HOST:PORT", help="etcd client endpoint")
    p.add_argument("--state-dir", type=Path, required=True, help=state_dir_help)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def usage_error(prog: str, message: str) -> int:
    """A bad argument the parser could not see: one line on stderr, status 2."""
    print(f"{prog}: {message}", file=sys.stderr)
    return 2


def address_map_arg(text: str) -> AddressMap:
    try:
        return AddressMap.parse(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def network_arg(text: str) -> IPv4Network:
    try:
        return IPv4Network(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 network (a.b.c.d/n)") from None


def port_arg(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (0-65535)")
    return int(text)


def add_token_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--token-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="the control API's token (every request must present it); without it, "
        f"${TOKEN_ENV} if set, else no token is asked",
    )


def token_from_args(path: Path | None) -> str | None:
    """The token of ``--token-file``, else of the environment, else None."""
    if path is not None:
        token = read_token(path)
        if token is None:
            raise ConfigError(f"--token-file {path}: no such file")
        return token
    return os.environ.get(TOKEN_ENV) or None
