"""The browser guards of ADK's api_server: DNS rebinding and cross-origin requests.

A gateway on a loopback address is reachable only from this host, so a request
whose ``Host`` names another host was pointed here by rebound DNS: refused on
every method (the reads are whole session histories). A request carrying
``Origin`` (browsers send it on cross-origin requests and on every POST) must
come from an allowed origin: one of ``gateway_allow_origins``, or the gateway's
own origin, which on a loopback bind with nothing configured must itself be a
loopback host. Clients that are not browsers send no ``Origin`` and pass.
The same rules as ``google/adk/cli/api_server.py``'s ``_OriginCheckMiddleware``,
written out here because that class is private to ADK.
"""

from __future__ import annotations

import ipaddress
import json
import urllib.parse
from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["OriginGuard", "is_loopback"]


def _strip_port(host: str) -> str:
    # A malformed authority comes back whole, so "127.0.0.1:80.evil.com" never reads as loopback.
    if host.startswith("["):
        bare, bracket, suffix = host[1:].partition("]")
        if not bracket:
            return host
    elif host.count(":") == 1:
        bare, _, port = host.partition(":")
        suffix = f":{port}"
    else:
        return host
    if suffix and not (suffix.startswith(":") and suffix[1:].isdigit()):
        return host
    return bare


def is_loopback(host: str) -> bool:
    """Whether ``host`` (with or without a port) names this machine's loopback."""
    bare = _strip_port(host).lower().rstrip(".")
    if bare == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def _header(scope: Scope, name: bytes) -> list[str]:
    return [v.decode("latin-1").strip() for k, v in scope.get("headers", []) if k.lower() == name]


class OriginGuard:
    """ASGI middleware: 403 for rebound DNS and for origins not allowed (see the module docstring)."""

    def __init__(
        self, app: ASGIApp, *, bind_host: str | None, allow_origins: Sequence[str]
    ) -> None:
        self._app = app
        self._loopback_bind = bind_host is not None and is_loopback(bind_host)
        self._origins = frozenset(o.rstrip("/") for o in allow_origins)
        self._any_origin = "*" in self._origins
        hosts = set()
        for origin in self._origins:
            try:
                host = urllib.parse.urlparse(origin).hostname
            except ValueError:
                continue
            if host:
                hosts.add(host.lower())
        self._hosts = frozenset(hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            refusal = self._refusal(scope)
            if refusal is not None:
                await _forbidden(scope, receive, send, refusal)
                return
        await self._app(scope, receive, send)

    def _refusal(self, scope: Scope) -> str | None:
        hosts = _header(scope, b"host")
        if self._loopback_bind and not self._any_origin and hosts:
            if len(hosts) > 1 or "," in hosts[0]:
                return "host not allowed"
            if not is_loopback(hosts[0]) and (
                _strip_port(hosts[0]).lower().rstrip(".") not in self._hosts
            ):
                return "host not allowed"
        origins = _header(scope, b"origin")
        if not origins:
            return None
        origin = origins[0].rstrip("/")
        if self._any_origin or origin in self._origins:
            return None
        if self._loopback_bind and not self._origins:
            try:
                origin_host = urllib.parse.urlparse(origin).hostname or ""
            except ValueError:
                return "origin not allowed"
            if not is_loopback(origin_host):
                return "origin not allowed"
        scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
        own = f"{scheme}://{hosts[0]}" if hosts else None
        return None if origin == own else "origin not allowed"


async def _forbidden(scope: Scope, receive: Receive, send: Send, reason: str) -> None:
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 1008, "reason": f"Forbidden: {reason}"})
        return
    body = json.dumps({"detail": f"Forbidden: {reason}"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
