"""What every pod-shell command gets: :class:`Shell` (its pod, output and stdin)
and the argument parsing the commands share, with the real tools' messages."""

from __future__ import annotations

import getopt
import math
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from emunet.nodes.runtime import NodeRuntime

from emunet.errors import EmunetError

__all__ = [
    "Output",
    "Resolver",
    "Shell",
    "UsageError",
    "clip",
    "int_opt",
    "num_opt",
    "os_reason",
    "parse_opts",
]

Resolver = Callable[[str], Awaitable[IPv4Address | None]]
Output = Callable[[str], None]


class UsageError(Exception):
    pass


@dataclass
class Shell:
    """One command's environment: the pod, its output streams and stdin."""

    runtime: NodeRuntime
    pod: str
    out: Output
    err: Output
    stdin: bytes = b""
    resolver: Resolver | None = None

    @property
    def ns(self) -> Any:
        return self.runtime.namespace(self.pod)

    @property
    def now(self) -> float:
        return self.runtime.now()

    def print(self, line: str = "") -> None:
        self.out(line + "\n")

    def eprint(self, line: str = "") -> None:
        self.err(line + "\n")

    async def resolve(self, host: str) -> IPv4Address | None:
        try:
            return IPv4Address(host)
        except ValueError:
            pass
        if host == "localhost":
            return IPv4Address("127.0.0.1")
        if host == self.pod:
            return self.runtime.node.pods[self.pod].ip
        if self.resolver is not None:
            try:
                return await self.resolver(host)
            except EmunetError:
                return None
        return None


def parse_opts(
    argv: list[str], short: str, long: list[str] | None = None
) -> tuple[dict[str, str], list[str]]:
    try:
        pairs, rest = getopt.gnu_getopt(argv, short, long or [])
    except getopt.GetoptError as exc:
        raise UsageError(str(exc)) from None
    return {k: v for k, v in pairs}, rest


def num_opt(opts: dict[str, str], key: str, default: float, what: str, high: float = 1e6) -> float:
    """A non-negative, finite number of at most ``high`` (seconds, mostly): ``inf``,
    ``nan``, ``1e400`` and negative values are refused as the tools refuse them."""
    if key not in opts:
        return default
    text = opts[key]
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"invalid argument for {key}: '{clip(text)}' ({what})") from None
    if not math.isfinite(value) or value < 0 or value > high:
        raise UsageError(f"invalid argument for {key}: '{clip(text)}' ({what}: 0 to {high:g})")
    return value


def int_opt(opts: dict[str, str], key: str, default: int, low: int, high: int) -> int:
    """A decimal integer in ``[low, high]`` (strtol's way: sign and digits only)."""
    if key not in opts:
        return default
    text = opts[key].strip()
    digits = text[1:] if text[:1] in "+-" else text
    if not digits.isdigit() or not digits.isascii() or len(digits) > 12:
        raise UsageError(f"invalid argument: '{clip(opts[key])}'")
    value = int(text)
    if not low <= value <= high:
        raise UsageError(
            f"invalid argument: '{clip(opts[key])}': out of range: {low} <= value <= {high}"
        )
    return value


def clip(text: str, limit: int = 40) -> str:
    """An argument as an error message quotes it: never a whole megabyte."""
    return text if len(text) <= limit else text[:limit] + "..."


def os_reason(exc: OSError) -> str:
    """The C library's text for a socket error (``Network is unreachable``)."""
    if exc.errno:
        return os.strerror(exc.errno)
    return exc.strerror or str(exc)


def human(nbytes: float) -> str:
    for unit, scale in (("GBytes", 1 << 30), ("MBytes", 1 << 20), ("KBytes", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes:.0f} Bytes"


def rate(bits_per_s: float) -> str:
    for unit, scale in (("Gbits/sec", 1e9), ("Mbits/sec", 1e6), ("Kbits/sec", 1e3)):
        if bits_per_s >= scale:
            return f"{bits_per_s / scale:.2f} {unit}"
    return f"{bits_per_s:.0f} bits/sec"
