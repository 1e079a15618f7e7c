"""Fixtures for the integration tier: real processes on loopback."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from emunet.nodes.etcd_server import EtcdServer


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def etcd(tmp_path: Path) -> AsyncIterator[EtcdServer]:
    """A real single-member etcd on a free loopback port, in a temporary directory."""
    server = EtcdServer(tmp_path / "etcd", free_loopback_port(), free_loopback_port())
    async with server:
        yield server


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Call it to get a free TCP port on 127.0.0.1."""
    return free_loopback_port
