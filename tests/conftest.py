"""Fixtures for every tier."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _local_fabric_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI and pod-shell a test runs talk to a local fabric unless the test says
    otherwise: a compose fabric that runs on this machine (`make up`, or another test's)
    must neither answer a test's commands nor be stopped by a test's `emunet down`.
    Tests of the selection and of compose fabrics set (or remove) EMUNET_FABRIC
    themselves; `--etcd` still wins over it."""
    monkeypatch.setenv("EMUNET_FABRIC", "local")
