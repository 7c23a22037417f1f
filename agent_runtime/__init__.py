"""What runs inside ADK agent processes: the Redis session service and its helpers.

``supervisor`` imports this package; this package never imports ``supervisor``.
"""

from .redis_connection import RedisUnavailableError, connect, redact_url
from .session_service import RedisSessionService

__all__ = ["RedisSessionService", "RedisUnavailableError", "connect", "redact_url"]
