"""Where things are: the config file, and the status socket of the daemon it configures.

The CLI's everyday commands (``status``, ``submit``, ``abort`` through the local
daemon) need nothing of the configuration but the socket's path; finding it
here, with ``tomllib`` and the environment, spares them pydantic's import (a
third of a second on a small machine). :class:`~supervisor.config.Settings`
resolves the same path through the same function, so both always agree.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Final

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_STATE_DIR",
    "ENV_PREFIX",
    "find_config_path",
    "locate_socket",
    "socket_path_for",
]

DEFAULT_CONFIG_PATH: Final = Path("/etc/adk-supervisor/config.toml")
DEFAULT_STATE_DIR: Final = Path("/var/lib/adk-supervisor")
ENV_PREFIX: Final = "ADK_SUPERVISOR_"
_SOCKET_NAME: Final = "supervisor.sock"


def find_config_path(path: Path | str | None = None) -> Path | None:
    """The config file to read: ``path``, else ``$ADK_SUPERVISOR_CONFIG``, else the default if present."""
    chosen = path or os.environ.get(f"{ENV_PREFIX}CONFIG")
    if chosen:
        return Path(chosen)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def socket_path_for(state_dir: Path, socket_path: Path | None) -> tuple[Path, Path]:
    """``state_dir`` and the socket path, made absolute against the current directory.

    The socket is ``socket_path`` if set, else ``state_dir/supervisor.sock``.
    """
    state = state_dir.expanduser().absolute()
    socket = (socket_path or state / _SOCKET_NAME).expanduser().absolute()
    return state, socket


def locate_socket(config: Path | str | None, environ: Mapping[str, str] | None = None) -> Path:
    """The status socket the configuration names, read as :class:`Settings` would read it.

    Environment variables win over the file, as in :class:`Settings`. Raises
    ``OSError`` or ``ValueError`` for an unreadable or malformed file: the
    caller then loads the full settings, which say what is wrong.
    """
    env = os.environ if environ is None else environ
    data: dict[str, object] = {}
    path = find_config_path(config)
    if path is not None:
        data = tomllib.loads(path.read_text(encoding="utf-8"))

    def setting(name: str) -> Path | None:
        value = env.get(f"{ENV_PREFIX}{name.upper()}") or data.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a path")
        return Path(value)

    return socket_path_for(setting("state_dir") or DEFAULT_STATE_DIR, setting("socket_path"))[1]
