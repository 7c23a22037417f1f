"""The adk-supervisor daemon, its configuration, CLI and client."""

from .redis_server import RedisServer, RedisServerError, find_redis_server

__all__ = ["RedisServer", "RedisServerError", "find_redis_server"]
