"""The control API's token: a secret every request presents, created by ``up``.

Local mode writes it to ``<state dir>/token`` (mode 0600) and hands its path to
the agents and the internet (``--token-file``); the compose fabric gets it as
``EMUNET_CONTROL_TOKEN`` in every container's environment (``emunet up
--compose`` makes one; a file started by hand without it runs without a token,
as the agents' own default). Clients read it from where their fabric keeps it
(``emunet.control.fabric``); inside a container, from the environment.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from emunet.errors import ConfigError

__all__ = ["TOKEN_ENV", "new_token", "read_token", "write_token"]

TOKEN_ENV = "EMUNET_CONTROL_TOKEN"
_MAX = 256


def new_token() -> str:
    return secrets.token_urlsafe(24)


def write_token(path: Path, token: str) -> None:
    """Create ``path`` readable by its owner only, holding ``token``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    os.chmod(path, 0o600)


def read_token(path: Path | None) -> str | None:
    """The token in ``path`` (None when there is no such file)."""
    if path is None:
        return None
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the control token ({exc.strerror})") from None
    if not text or len(text) > _MAX or not text.isprintable():
        raise ConfigError(f"{path}: not a control token")
    return text
