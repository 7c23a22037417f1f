"""Clear 4xx/5xx answers, each ``{"detail": ...}`` as FastAPI's and ADK's are.

A malformed body gets 422 with one line per problem (where and what), without
echoing the body back (it may be a megabyte of base64); Redis out of reach is
503, not a stack trace.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisClusterException, RedisError

from agent_runtime.redis_connection import RedisUnavailableError

from ..errors import TaskNotFoundError

__all__ = ["install_error_handlers"]

log = logging.getLogger("adk_supervisor.gateway")

_MAX_PROBLEMS = 20


async def _invalid(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for error in exc.errors()[:_MAX_PROBLEMS]:
        where = ".".join(str(p) for p in error.get("loc", ()))
        problems.append({"loc": list(error.get("loc", ())), "msg": f"{where}: {error['msg']}"})
    return JSONResponse({"detail": problems}, status_code=422)


async def _not_found(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.error("gateway: %s %s: Redis: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": f"Redis is unavailable: {exc}"}, status_code=503)


def install_error_handlers(app: FastAPI) -> None:
    """Registers the handlers on ``app``."""
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(TaskNotFoundError, _not_found)
    app.add_exception_handler(RedisUnavailableError, _unavailable)
    app.add_exception_handler(RedisError, _unavailable)
    # Not a RedisError: what redis-py's cluster client raises when no node answers.
    app.add_exception_handler(RedisClusterException, _unavailable)
