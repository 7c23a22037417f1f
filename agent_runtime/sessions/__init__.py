"""The Redis session service for ADK, and sealing a killed run's session."""

from .sealing import SEAL_METADATA_KEY, seal_session, seal_task_session
from .service import RedisSessionService

__all__ = ["SEAL_METADATA_KEY", "RedisSessionService", "seal_session", "seal_task_session"]
