"""The compiled core: mypyc turns emunet's sans-I/O modules into C extensions at
install time (2-3x faster per packet, same code). ``EMUNET_PURE=1`` installs pure
Python; so does a machine where mypyc or a C compiler is missing (said once, on
stderr). Everything else about the package is in pyproject.toml."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
# packets/mac.py subclasses bytes (mypyc cannot compile it); __init__ files hold nothing;
# the control-plane modules of emunet/cluster stay interpreted (not per packet)
INTERPRETED = {"emunet/packets/mac.py"}


def compiled_modules() -> list[str]:
    paths = sorted(
        str(p.relative_to(HERE))
        for folder in ("emunet", "emunet/packets", "emunet/dataplane")
        for p in (HERE / folder).glob("*.py")
        if p.name != "__init__.py"
    )
    # the per-packet path: the data plane, packets, renderers, and kube-proxy's tables
    return [p for p in paths if p not in INTERPRETED] + ["emunet/cluster/kubeproxy.py"]


def ext_modules() -> list[object]:
    if os.environ.get("EMUNET_PURE") == "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as exc:  # pragma: no cover - the build requirements hold mypy
        print(f"emunet: installing pure Python ({exc})", file=sys.stderr)
        return []
    return list(mypycify(compiled_modules(), opt_level="3", group_name="emunet"))


setup(ext_modules=ext_modules())
