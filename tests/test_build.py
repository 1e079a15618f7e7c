"""The build under test: `make setup` installs the compiled core (mypyc) where a C
compiler exists; `make test-pure` runs the same unit tests on the pure sources."""

from __future__ import annotations

import os
import shutil
import sysconfig

import pytest

import emunet.dataplane.netns
import emunet.packets.checksum
import emunet.packets.ipv4
import emunet.packets.mac


def compiled(module: object) -> bool:
    return str(getattr(module, "__file__", "")).endswith(sysconfig.get_config_var("EXT_SUFFIX"))


def test_the_core_is_the_build_that_was_asked_for() -> None:
    expect = os.environ.get("EMUNET_EXPECT_BUILD")
    if expect == "pure":
        assert not compiled(emunet.dataplane.netns) and not compiled(emunet.packets.ipv4)
        assert not emunet.packets.checksum.COMPILED  # the big-integer sum, not the loop
        return
    if os.environ.get("EMUNET_PURE") == "1" or shutil.which("cc") is None:
        pytest.skip("a pure install was asked for, or no C compiler: nothing is compiled")
    # make setup, a compiler at hand: the per-packet modules are C extensions
    assert compiled(emunet.dataplane.netns), emunet.dataplane.netns.__file__
    assert compiled(emunet.packets.ipv4), emunet.packets.ipv4.__file__
    assert not compiled(emunet.packets.mac)  # a bytes subclass: interpreted on purpose
    assert emunet.packets.checksum.COMPILED  # the checksum takes its native loop
