"""The two error families of emunet.

* :class:`MalformedFrame` is the *peer's* fault: bytes from the wire that do not
  parse. The data plane counts and drops these; they never escape it.
* :class:`EmunetError` (and subclasses) is the *caller's* fault: a bad
  configuration, an unknown pod, a port already in use. Its message is written
  for a user to act on.
"""

from __future__ import annotations


class MalformedFrame(Exception):
    """Bytes from the wire that do not form a valid header; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EmunetError(Exception):
    """A caller's mistake, with a message a user can act on."""


class ConfigError(EmunetError):
    """Invalid configuration (network CIDRs, topology, service specs...)."""


class SocketError(EmunetError):
    """A socket call failed; ``errno_name`` is the Linux name (EADDRINUSE...)."""

    def __init__(self, errno_name: str, message: str) -> None:
        super().__init__(f"{errno_name}: {message}")
        self.errno_name = errno_name
