"""Every error the supervisor package raises on purpose, under one root.

``except SupervisorError`` catches them all; each also keeps the standard
library base it always had (``ValueError`` for bad input, ``LookupError`` for
an unknown task, ...), so existing ``except`` clauses go on working.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ConfigError",
    "ContainmentError",
    "DaemonError",
    "DaemonUnavailable",
    "NodeIdInUse",
    "RedisServerError",
    "RedisTopologyError",
    "RequestError",
    "RunCredentialsUnavailable",
    "SessionBusyError",
    "SocketInUseError",
    "SpawnError",
    "StateDirLocked",
    "StateDirUnusable",
    "SupervisorError",
    "TaskExistsError",
    "TaskNotFoundError",
]


class SupervisorError(Exception):
    """The root of every error adk-supervisor raises on purpose."""


class ConfigError(SupervisorError, ValueError):
    """The configuration is invalid; ``problems`` holds one readable line per problem."""

    def __init__(self, problems: list[str], source: Path | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f" ({source})" if source else ""
        super().__init__(
            f"invalid configuration{where}:\n" + "\n".join(f"  - {p}" for p in problems)
        )


class TaskNotFoundError(SupervisorError, LookupError):
    """No task record has that id."""


class TaskExistsError(SupervisorError, ValueError):
    """A task with that id already exists."""


class SessionBusyError(SupervisorError, ValueError):
    """A run submitted with ``if_busy="refuse"`` for a session another run holds.

    ``task_id`` names that run (the session's live run, or the next one on its way).
    """

    def __init__(self, message: str, task_id: str) -> None:
        super().__init__(message)
        self.task_id = task_id


class RequestError(SupervisorError, ValueError):
    """A request the daemon cannot serve (bad fields, unknown app); says what to send instead."""


class DaemonUnavailable(SupervisorError, ConnectionError):
    """No daemon answers on the status socket."""


class DaemonError(SupervisorError, RuntimeError):
    """The daemon answered a request with an error."""


class SocketInUseError(SupervisorError, RuntimeError):
    """``socket_path`` is served by a live daemon, or is not a socket at all."""


class StateDirLocked(SupervisorError, RuntimeError):
    """Another live daemon holds the state directory."""


class StateDirUnusable(SupervisorError, OSError):
    """``state_dir`` cannot be created or written; the message says what to set."""


class NodeIdInUse(SupervisorError):
    """Another live daemon heartbeats under this node id (another host or state_dir)."""


class RunCredentialsUnavailable(SupervisorError, RuntimeError):
    """``run_credentials = "per_run"``, but the daemon's Redis user may not create ACL users."""


class RedisServerError(SupervisorError, RuntimeError):
    """A redis-server could not be found or started."""


class ContainmentError(SupervisorError, RuntimeError):
    """The configured kill mechanism cannot be used on this host."""


class SpawnError(SupervisorError, OSError):
    """A run's process could not be started (the run is recorded as failed)."""


class RedisTopologyError(SupervisorError, ValueError):
    """``redis_url`` reaches the wrong kind of Redis: a cluster node through a plain URL, a
    replica, a single Redis through a cluster URL. The message says which URL form to use."""
