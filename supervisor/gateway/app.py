"""The gateway's ASGI app: ADK's api_server routes, served by supervised runs.

Requests pass, outermost first (after the metrics): the browser guards (DNS rebinding, origins),
CORS (only with ``gateway_allow_origins``; before the token, since a browser's
preflight carries none), the bearer token (with ``gateway_token``), the body
limit, then the routes; around them all, the request metrics (``GET /metrics``). The app talks to Redis only: no agent ever runs in it.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from agent_runtime.sessions.service import RedisSessionService

from ..client import SupervisorClient
from ..config import Settings
from ._app_routes import app_router
from ._auth import TokenGuard
from ._console import mount_console
from ._dev_ui import mount_dev_ui
from ._errors import install_error_handlers
from ._gateway import TASK_HEADER, Gateway
from ._limits import BodyLimit, body_limit
from ._metrics import GatewayMetrics, RequestMetrics
from ._origin import OriginGuard
from ._run_routes import run_router
from ._session_routes import session_router
from ._task_routes import task_router

__all__ = ["create_app"]


def create_app(
    settings: Settings,
    client: SupervisorClient,
    sessions: RedisSessionService,
    *,
    bind_host: str | None = None,
) -> FastAPI:
    """The gateway app for ``settings`` on ``client``'s Redis (the caller closes both).

    ``bind_host`` is the address the server listens on: on a loopback address
    the DNS-rebinding guard is on (None: the host of ``gateway_listen``).
    """
    metrics = GatewayMetrics(settings.node_id)
    gw = Gateway(
        apps=tuple(settings.apps),
        client=client,
        sessions=sessions,
        max_input_bytes=settings.max_input_bytes,
        keepalive_s=settings.gateway_keepalive_s,
        on_disconnect=settings.gateway_on_disconnect,
        metrics=metrics,
    )
    app = FastAPI(
        title="adk-supervisor gateway",
        description="ADK's api_server routes, each run a supervised process tree.",
    )
    install_error_handlers(app)
    # The :cancel route before the sessions', whose POST .../{session_id} would take it.
    app.include_router(task_router(gw))
    app.include_router(app_router(gw))
    app.include_router(session_router(gw))
    app.include_router(run_router(gw))
    mount_console(app, gw)
    app.add_route("/metrics", metrics.response, methods=["GET"], include_in_schema=False)
    if settings.gateway_dev_ui:
        mount_dev_ui(app)

    # add_middleware wraps: the last added is the outermost.
    app.add_middleware(BodyLimit, limit=body_limit(settings.max_input_bytes))
    if settings.gateway_token is not None:
        app.add_middleware(TokenGuard, token=settings.gateway_token.get_secret_value())
    if settings.gateway_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.gateway_allow_origins,
            allow_credentials=True,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=[TASK_HEADER],
        )
    app.add_middleware(
        OriginGuard,
        bind_host=bind_host if bind_host is not None else settings.gateway_address[0],
        allow_origins=settings.gateway_allow_origins,
    )
    # Outermost: a request the guards refuse is counted too.
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app
