"""Building redis-py asyncio clients from URLs, and turning connection loss into one clear error."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .redis_url import SCHEMES, redact_url

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_POOL_TIMEOUT_S",
    "REDIS_ERRORS",
    "PoolExhaustedError",
    "RedisUnavailableError",
    "WrongTypeError",
    "as_text",
    "connect",
    "describe_reply",
    "redact_url",
    "translate_redis_errors",
    "wrong_type",
]


# Everything a Redis call can raise that is Redis's trouble, not a bug of ours:
# lost connections and timeouts, and error replies such as OOM (maxmemory),
# READONLY (a failover) or MISCONF (disk full). Background loops catch these,
# log, back off and go on; they never let one end the process's work.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, ConnectionError, TimeoutError, OSError)


# redis-py's message when a blocking pool had no free connection in time.
_POOL_EXHAUSTED = "No connection available."


class RedisUnavailableError(ConnectionError):
    """Redis could not be reached; the operation may not have been applied.

    Every write of the session service is safe to retry: a retried append of
    the same event is recognised and not stored twice.
    """


class PoolExhaustedError(RedisUnavailableError):
    """Every connection of the client's pool stayed busy too long; Redis itself answers."""


def as_text(value: bytes | str) -> str:
    """A Redis reply as ``str``, whether the client decodes replies or not.

    Bytes that are not UTF-8 (anyone can write anything to Redis) become U+FFFD.
    """
    return value.decode(errors="replace") if isinstance(value, bytes) else value


# redis-py puts a failed pipeline command in front of Redis's own text.
_WRONGTYPE = re.compile(r"(?:Command # \d+ \(.*\) of pipeline caused error: \('?)?WRONGTYPE ", re.S)


class WrongTypeError(ResponseError):
    """A key holds the wrong kind of value (anyone can write one); the message names the key."""


def wrong_type(error: BaseException) -> bool:
    """Whether ``error`` is Redis refusing a key of the wrong type: no outage, and no
    retry helps until someone deletes the key."""
    return isinstance(error, WrongTypeError) or (
        isinstance(error, ResponseError) and _WRONGTYPE.match(str(error)) is not None
    )


def describe_reply(key: str, error: BaseException) -> str:
    """An error reply about ``key``, said so an operator knows what to do."""
    text = str(error)
    if isinstance(error, WrongTypeError):
        return text  # named its key already
    if wrong_type(error):
        return (
            f"{key} holds the wrong kind of value for adk-supervisor (Redis: {text}); "
            "something else wrote to it: check its content, then DEL it"
        )
    return f"Redis refused a command on {key}: {text}"


DEFAULT_MAX_CONNECTIONS = 128
"""Connections one client opens at most; callers beyond wait for a free one."""
DEFAULT_POOL_TIMEOUT_S = 30.0
"""How long a caller waits for a free connection before :class:`PoolExhaustedError`."""
DEFAULT_SOCKET_TIMEOUT_S = 10.0
"""How long one reply may take before the call fails as unreachable (a frozen Redis, a
failed-over master whose TCP connections hang): above the daemon's 1 s stream block."""
DEFAULT_CONNECT_TIMEOUT_S = 5.0
"""How long opening a connection may take."""


def connect(
    url: str,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    pool_timeout_s: float = DEFAULT_POOL_TIMEOUT_S,
    socket_timeout_s: float = DEFAULT_SOCKET_TIMEOUT_S,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    **kwargs: Any,
) -> aioredis.Redis:
    """A ``redis.asyncio.Redis`` for a ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL.

    Credentials (``redis://user:password@host``) and the database number
    (``/0`` or ``?db=0``) come from the URL, as redis-py parses them. Replies
    are bytes (``decode_responses=False``) unless ``kwargs`` say otherwise.
    The client holds at most ``max_connections``; a caller that finds them all
    busy waits for one, up to ``pool_timeout_s`` (redis-py's default pool fails
    at once instead, which callers could only take for an outage). Every reply
    must come within ``socket_timeout_s`` (redis-py waits for ever by default, so a
    frozen Redis or a connection to a dead master hung every caller); pub/sub's
    blocking reads are exempt (redis-py 8.1 reads them without a timeout).
    """
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ValueError(
            f"unsupported Redis URL {redact_url(url)!r}: use redis://host:port/db, "
            "rediss://host:port/db (TLS) or unix:///path/to/redis.sock"
        )
    kwargs.setdefault("decode_responses", False)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout_s,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=connect_timeout_s,
        **kwargs,
    )
    return aioredis.Redis.from_pool(pool)


@asynccontextmanager
async def translate_redis_errors(where: str) -> AsyncIterator[None]:
    """Re-raises redis-py's connection and timeout errors as :class:`RedisUnavailableError`."""
    try:
        yield
    except AuthenticationError:
        # A subclass of ConnectionError in redis-py, but retrying will not help.
        raise
    except (RedisConnectionError, RedisTimeoutError) as exc:
        if str(exc) == _POOL_EXHAUSTED:
            raise PoolExhaustedError(
                f"every connection to Redis at {where} stayed busy for the pool's whole "
                "timeout: raise max_connections or pool_timeout_s, or send fewer calls at "
                "once; Redis itself answers"
            ) from exc
        raise RedisUnavailableError(
            f"Redis at {where} is unreachable ({exc}); the call may not have been "
            "applied and is safe to retry once Redis is back"
        ) from exc
