"""What runs inside ADK agent processes: the Redis session service, the orchestration
plugin, session sealing and their helpers.

``supervisor`` imports this package; this package never imports ``supervisor``.
"""

from .orchestration_plugin import (
    TASK_ID_METADATA_KEY,
    TIMEOUT_METADATA_KEY,
    RedisOrchestrationPlugin,
)
from .redis_connection import RedisUnavailableError, connect, redact_url
from .session_sealing import SEAL_METADATA_KEY, seal_session, seal_task_session
from .session_service import RedisSessionService

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
