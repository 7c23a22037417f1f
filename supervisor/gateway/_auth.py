"""The optional bearer token (``gateway_token``): every request but ``GET /health`` carries it.

API clients send ``Authorization: Bearer <token>``. ADK's web UI cannot add a
header to its requests, so a browser opens ``/dev-ui/?token=<token>`` (or the
console's ``/console?token=<token>``) once: the
gateway answers with a cookie (a keyed hash of the token, ``HttpOnly``,
``SameSite=Strict``, so no other site's page can make the browser send it) and
a redirect to the same page without the token in its address; the UI's own
requests then carry the cookie. Comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.parse
from http.cookies import SimpleCookie

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["COOKIE", "TokenGuard"]

COOKIE = "adk_gateway_auth"
_OPEN = frozenset({"/health"})


class TokenGuard:
    """ASGI middleware: 401 unless the request carries the token (header or the UI's cookie)."""

    def __init__(self, app: ASGIApp, *, token: str) -> None:
        self._app = app
        self._token = token.encode()
        self._cookie = hmac.new(self._token, b"adk-gateway-ui", hashlib.sha256).hexdigest()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in _OPEN:
            await self._app(scope, receive, send)
            return
        if self._carries_token(scope):
            await self._app(scope, receive, send)
            return
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        offered = query.get("token", [""])[0].encode()
        if scope["type"] == "http" and offered and hmac.compare_digest(offered, self._token):
            await self._set_cookie(scope, send, query)
            return
        await _unauthorized(scope, receive, send)

    def _carries_token(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, credential = value.partition(b" ")
                if scheme.lower() == b"bearer" and hmac.compare_digest(
                    credential.strip(), self._token
                ):
                    return True
            elif name == b"cookie":
                jar: SimpleCookie = SimpleCookie()
                try:
                    jar.load(value.decode("latin-1"))
                except Exception:  # a malformed Cookie header carries no token
                    continue
                morsel = jar.get(COOKIE)
                if morsel is not None and hmac.compare_digest(
                    morsel.value.encode(), self._cookie.encode()
                ):
                    return True
        return False

    async def _set_cookie(self, scope: Scope, send: Send, query: dict[str, list[str]]) -> None:
        rest = urllib.parse.urlencode(
            [(k, v) for k, values in query.items() if k != "token" for v in values]
        )
        location = scope.get("root_path", "") + scope["path"] + (f"?{rest}" if rest else "")
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [
                    (b"location", location.encode("latin-1")),
                    (
                        b"set-cookie",
                        f"{COOKIE}={self._cookie}; Path=/; HttpOnly; SameSite=Strict{secure}".encode(),
                    ),
                    (b"cache-control", b"no-store"),
                    (b"content-length", b"0"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})


async def _unauthorized(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.close", "code": 1008, "reason": "missing bearer token"})
        return
    body = json.dumps(
        {
            "detail": "missing or wrong bearer token: send 'Authorization: Bearer <gateway_token>'"
            "; in a browser, open /dev-ui/?token=<gateway_token> (or /console?token=...) once"
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b"Bearer"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
