"""``adk-supervisor gateway``: the app on uvicorn, in its own process, until SIGINT or SIGTERM.

One Redis connection pool serves the client and the sessions. On stop, uvicorn
waits a moment for open streams, then cancels them: a ``/run_sse`` or ``/run``
cut that way is handled as a client that left (its run is aborted, unless it
asked to continue).
"""

from __future__ import annotations

import logging

import anyio

from agent_runtime.redis_url import redact_url
from agent_runtime.sessions.service import RedisSessionService

from ..client import SupervisorClient
from ..config import Settings
from .app import create_app

__all__ = ["serve"]

log = logging.getLogger("adk_supervisor")

_GRACEFUL_S = 3


def serve(
    settings: Settings,
    *,
    redis_url: str,
    key_prefix: str | None = None,
    host: str | None = None,
    port: int | None = None,
) -> None:
    """Serves the gateway on ``host:port`` (default ``gateway_listen``) until stopped."""
    listen_host, listen_port = settings.gateway_address
    anyio.run(
        _serve,
        settings,
        redis_url,
        key_prefix or settings.key_prefix,
        listen_host if host is None else host,
        listen_port if port is None else port,
    )


async def _serve(settings: Settings, redis_url: str, key_prefix: str, host: str, port: int) -> None:
    import uvicorn

    async with SupervisorClient(redis_url, key_prefix) as client:
        sessions = RedisSessionService(
            key_prefix=key_prefix, session_ttl=settings.session_ttl_s, redis_client=client.client
        )
        app = create_app(settings, client, sessions, bind_host=host)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_config=None,
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=_GRACEFUL_S,
            )
        )
        async with anyio.create_task_group() as group:
            group.start_soon(_announce, server, settings, redis_url, key_prefix)
            await server.serve()
            group.cancel_scope.cancel()


async def _announce(server: object, settings: Settings, redis_url: str, key_prefix: str) -> None:
    import uvicorn

    assert isinstance(server, uvicorn.Server)
    while not server.started:
        if server.should_exit:
            return
        await anyio.sleep(0.02)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "gateway: serving %d apps (%s) on Redis %s, prefix %r; token %s",
        len(settings.apps),
        ", ".join(sorted(settings.apps)) or "none: add [apps] to the config",
        redact_url(redis_url),
        key_prefix,
        "required" if settings.gateway_token else "not required",
    )
    ui = f"http://{shown}:{port}/dev-ui/" if settings.gateway_dev_ui else "off"
    log.info(
        "gateway: ready: http://%s:%d (ADK web UI: %s; console: http://%s:%d/console)",
        shown,
        port,
        ui,
        shown,
        port,
    )
