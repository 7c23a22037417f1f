"""What runs inside ADK agent processes: the Redis session service, the orchestration
plugin, session sealing, and the task store and abort feed they share with the daemon.

``supervisor`` imports this package; this package never imports ``supervisor``.
Every public name loads on first use (PEP 562), so the daemon, the CLI and the
client can import the task store, keys and abort feed without ADK's second of
imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

if TYPE_CHECKING:
    from .plugin import TASK_ID_METADATA_KEY, TIMEOUT_METADATA_KEY, RedisOrchestrationPlugin
    from .redis_connection import RedisUnavailableError, connect
    from .redis_url import redact_url
    from .sessions import SEAL_METADATA_KEY, RedisSessionService, seal_session, seal_task_session

__all__ = [
    "SEAL_METADATA_KEY",
    "TASK_ID_METADATA_KEY",
    "TIMEOUT_METADATA_KEY",
    "RedisOrchestrationPlugin",
    "RedisSessionService",
    "RedisUnavailableError",
    "connect",
    "redact_url",
    "seal_session",
    "seal_task_session",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "RedisUnavailableError": ".redis_connection",
        "connect": ".redis_connection",
        "redact_url": ".redis_url",
        "SEAL_METADATA_KEY": ".sessions",
        "RedisSessionService": ".sessions",
        "seal_session": ".sessions",
        "seal_task_session": ".sessions",
        "TASK_ID_METADATA_KEY": ".plugin",
        "TIMEOUT_METADATA_KEY": ".plugin",
        "RedisOrchestrationPlugin": ".plugin",
    },
)
