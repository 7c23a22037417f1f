"""The gateway's Prometheus metrics (``GET /metrics``, behind the same token as every route).

What an operator of the HTTP front asks that the daemons' metrics cannot answer:
how many requests each route takes and how fast it starts answering, how many
event streams are open now (each holds a Redis connection while it follows a
run), how many runs this gateway queued, by app, and how many stops it sent.

Labels stay bounded: ``route`` is the matched route's template
(``/apps/{app_name}/users/{user_id}/sessions``), never the path a caller sent
(``unmatched`` for a path no route serves); ``app`` is an ``[apps]`` name, and
the gateway starts runs of those only. Every series has the ``node`` label (the
gateway's ``node_id``), as the daemons' do.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["GatewayMetrics", "RequestMetrics"]

_FIRST_BYTE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
_EVENT_STREAM = b"text/event-stream"


class GatewayMetrics:
    """Every metric of one gateway, in its own registry (a test may build several)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "adk_gateway_requests",
            "HTTP requests answered, by route template, method and status code",
            ["node", "route", "method", "code"],
            registry=self.registry,
        )
        self.first_byte = Histogram(
            "adk_gateway_response_start_seconds",
            "Request received -> response headers sent (a stream's frames come later)",
            ["node", "route", "method"],
            buckets=_FIRST_BYTE_BUCKETS,
            registry=self.registry,
        )
        self.open_streams = Gauge(
            "adk_gateway_open_streams",
            "Event-stream responses being sent now (each follows a run's events)",
            ["node"],
            registry=self.registry,
        )
        self.runs_started = Counter(
            "adk_gateway_runs_started",
            "Runs this gateway queued, by app",
            ["node", "app"],
            registry=self.registry,
        )
        self.stops = Counter(
            "adk_gateway_stops",
            "Aborts this gateway published, by whether a live daemon heard them",
            ["node", "heard"],
            registry=self.registry,
        )
        # Present from the start, so a dashboard shows 0 rather than no data.
        self.open_streams.labels(node).set(0)
        for heard in ("yes", "no"):
            self.stops.labels(node, heard)

    def run_started(self, app: str) -> None:
        """Counts a run queued for ``app``."""
        self.runs_started.labels(self.node, app).inc()

    def stop_sent(self, listeners: int) -> None:
        """Counts an abort; ``listeners`` is how many daemons heard it live."""
        self.stops.labels(self.node, "yes" if listeners else "no").inc()

    def response(self, request: Request) -> Response:
        """The text exposition of every metric (what ``GET /metrics`` answers)."""
        del request
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class RequestMetrics:
    """ASGI middleware: counts and times every HTTP request, tracks open event streams.

    Pure ASGI rather than ``BaseHTTPMiddleware``, which would buffer a streaming
    body's task and hide when its first byte left.
    """

    def __init__(self, app: ASGIApp, *, metrics: GatewayMetrics) -> None:
        self._app = app
        self._m = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        method = scope["method"] if scope["method"] in _METHODS else "other"
        status = 500  # what the caller gets if the app raises before answering
        streaming = False

        async def send_timed(message: Message) -> None:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = message["status"]
                route = _route(scope)
                self._m.first_byte.labels(self._m.node, route, method).observe(
                    time.perf_counter() - started
                )
                headers = dict(message.get("headers", []))
                if headers.get(b"content-type", b"").startswith(_EVENT_STREAM):
                    streaming = True
                    self._m.open_streams.labels(self._m.node).inc()
            await send(message)

        try:
            await self._app(scope, receive, send_timed)
        finally:
            if streaming:
                self._m.open_streams.labels(self._m.node).dec()
            self._m.requests.labels(self._m.node, _route(scope), method, str(status)).inc()


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _route(scope: Scope) -> str:
    # Starlette's router leaves the matched route in the scope it was handed.
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else "unmatched"
