"""adk-supervisor: run Google ADK agents in supervised process trees, and control them.

What users call: :class:`SupervisorClient` (submit, abort, read and wait for
runs from any host), :class:`Settings` and :func:`load_settings` (the daemon's
configuration), and the errors, all under :class:`SupervisorError`. The daemon
itself is ``supervisor.daemon.Supervisor``; importing this package does not
load it, nor ADK; the client and settings load redis-py and pydantic on first
use (PEP 562), so ``adk-supervisor --help`` answers at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent_runtime._lazy import lazy_exports

from .errors import (
    ConfigError,
    ContainmentError,
    DaemonError,
    DaemonUnavailable,
    NodeIdInUse,
    RedisServerError,
    RequestError,
    SessionBusyError,
    SocketInUseError,
    SpawnError,
    StateDirLocked,
    StateDirUnusable,
    SupervisorError,
    TaskExistsError,
    TaskNotFoundError,
)

if TYPE_CHECKING:
    from .client import SupervisorClient, submit_task
    from .config import Settings, load_settings

__all__ = [
    "ConfigError",
    "ContainmentError",
    "DaemonError",
    "DaemonUnavailable",
    "NodeIdInUse",
    "RedisServerError",
    "RequestError",
    "SessionBusyError",
    "Settings",
    "SocketInUseError",
    "SpawnError",
    "StateDirLocked",
    "StateDirUnusable",
    "SupervisorClient",
    "SupervisorError",
    "TaskExistsError",
    "TaskNotFoundError",
    "load_settings",
    "submit_task",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "SupervisorClient": ".client",
        "submit_task": ".client",
        "Settings": ".config",
        "load_settings": ".config",
    },
)
