"""scripts/fabric-up (`make up`): compose where a Docker engine answers, else local mode,
and it says which. Stubs stand for docker, make and emunet."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fabric-up"


def stub(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def fabric_up(
    tmp_path: Path, choice: str | None, docker: str | None
) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub(bin_dir / "emunet", 'echo "emunet $*"')
    stub(bin_dir / "make", 'echo "make $*"')
    path = [str(bin_dir)]
    if docker is not None:
        stub(bin_dir / "docker", docker)
        path.append("/usr/bin:/bin")  # timeout(1)
    env = {"PATH": ":".join(path), "BIN": str(bin_dir), "MAKE": str(bin_dir / "make")}
    if choice is not None:
        env["EMUNET_FABRIC"] = choice
    return subprocess.run(
        ["/bin/sh", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=30
    )


@pytest.mark.parametrize(
    ("choice", "docker", "mode", "why"),
    [
        (None, 'test "$1" = info', "compose", "a Docker engine answers"),
        ("auto", 'test "$1" = info', "compose", "a Docker engine answers"),
        (None, "exit 1", "local", "no Docker engine answers"),
        (None, None, "local", "no Docker engine answers"),  # docker is not installed
        ("local", 'test "$1" = info', "local", "EMUNET_FABRIC=local"),
        ("compose", None, "compose", "EMUNET_FABRIC=compose"),
    ],
)
def test_fabric_up_chooses_and_says_which(
    tmp_path: Path, choice: str | None, docker: str | None, mode: str, why: str
) -> None:
    proc = fabric_up(tmp_path, choice, docker)
    assert proc.returncode == 0, proc.stderr
    if mode == "compose":
        assert proc.stdout.splitlines() == [
            f"make up: the compose fabric ({why}): make image, then emunet up --compose",
            "make --no-print-directory image",
            "emunet up --compose",
        ]
    else:
        assert proc.stdout.splitlines() == [
            f"make up: local mode ({why}): emunet up --local",
            "emunet up --local",
        ]


def test_fabric_up_refuses_an_unknown_choice(tmp_path: Path) -> None:
    proc = fabric_up(tmp_path, "swarm", None)
    assert proc.returncode == 2
    assert proc.stderr == "make up: EMUNET_FABRIC=swarm: use compose, local or auto\n"


def test_the_makefile_runs_it() -> None:
    makefile = (SCRIPT.parents[1] / "Makefile").read_text()
    assert '\t@BIN=$(BIN) MAKE="$(MAKE)" scripts/fabric-up\n' in makefile
    assert os.access(SCRIPT, os.X_OK)
