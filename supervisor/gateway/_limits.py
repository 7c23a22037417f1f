"""The request body limit: 413 before a byte too many is read.

A body is at most ``max_input_bytes`` (a run's whole input) plus a little for
the JSON around it. A declared ``Content-Length`` over it is refused at once;
a chunked body is counted as it arrives and cut where it passes the limit.
Before the 413 the rest of the body is read and dropped (up to a few times the
limit, for a few seconds): a client still sending when the server answers and
closes would see a reset connection instead of the answer.
"""

from __future__ import annotations

import json

import anyio
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimit", "body_limit"]

_ENVELOPE = 64 * 1024
_DRAIN_FACTOR = 4
_DRAIN_S = 5.0


def body_limit(max_input_bytes: int) -> int:
    """The largest request body the gateway reads, for a run input limit."""
    return max_input_bytes + _ENVELOPE


def _message(size: int, limit: int) -> str:
    return (
        f"request body of {size} bytes or more is over the gateway's limit of {limit} bytes "
        f"(max_input_bytes plus {_ENVELOPE} for the JSON around it)"
    )


class _TooLarge(HTTPException):
    # An HTTPException, so FastAPI's body parsing passes it on as a 413 (any other
    # error while reading the body becomes its generic 400).
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(413, _message(size, limit))


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit`` bytes."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self._app = app
        self._limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.strip().isdigit() and int(value) > self._limit:
                await self._drain(receive)
                await self._refuse(send, int(value))
                return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self._limit:
                    if message.get("more_body"):
                        await self._drain(receive)
                    raise _TooLarge(seen, self._limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if started:
                raise
            await self._refuse(send, seen)

    async def _drain(self, receive: Receive) -> None:
        left = self._limit * _DRAIN_FACTOR
        with anyio.move_on_after(_DRAIN_S):
            while left > 0:
                message = await receive()
                if message["type"] != "http.request":
                    return
                left -= len(message.get("body", b""))
                if not message.get("more_body"):
                    return

    async def _refuse(self, send: Send, size: int) -> None:
        body = json.dumps({"detail": _message(size, self._limit)}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
