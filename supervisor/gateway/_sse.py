"""A server-sent events response that keeps idle streams open and notices a leaving client at once.

Starlette's ``StreamingResponse`` under uvicorn (ASGI spec 2.3) does watch for
the disconnect, but gives the body iterator no say in what a cut means. Here the
response runs three things together: the frames' producer, the writer (which
sends a keep-alive comment after ``keepalive_s`` of silence) and a watcher of
``receive()``. When the client leaves before the frames ran out (a closed tab,
adk web's stop button, a proxy recycling the connection) or the server cancels
the response, ``on_cut`` runs, shielded: for a run's own stream that is the abort
that kills its tree. Each frame is one ``send``, so a browser's reader that
splits on lines never gets half a frame from us.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping

import anyio
import anyio.abc
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

__all__ = ["PING", "EventStream", "sse_frame"]

log = logging.getLogger("adk_supervisor.gateway")

PING = b": ping\n\n"
_CUT_DEADLINE_S = 5.0


def sse_frame(data: str, *, event_id: str | None = None, event: str | None = None) -> bytes:
    """One SSE frame: optional ``id:`` and ``event:`` lines, then ``data:`` (one line of JSON)."""
    head = ""
    if event_id is not None:
        head += f"id: {event_id}\n"
    if event is not None:
        head += f"event: {event}\n"
    return f"{head}data: {data}\n\n".encode()


class EventStream(Response):
    """``text/event-stream`` of ``frames`` (each already a whole SSE frame)."""

    media_type = "text/event-stream"

    def __init__(
        self,
        frames: AsyncGenerator[bytes, None],
        *,
        keepalive_s: float,
        headers: Mapping[str, str] | None = None,
        on_cut: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._frames = frames
        self._keepalive_s = keepalive_s
        self._on_cut = on_cut
        self.status_code = 200
        self.background = None
        self.init_headers(
            {
                "Cache-Control": "no-cache",
                # nginx buffers proxied responses by default: a stream would arrive in lumps.
                "X-Accel-Buffering": "no",
                **(headers or {}),
            }
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        finished = False
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            frames_in, frames_out = anyio.create_memory_object_stream[bytes](16)
            async with anyio.create_task_group() as group:
                group.start_soon(self._produce, frames_in)
                group.start_soon(self._watch, receive, group.cancel_scope)
                async with frames_out:
                    while True:
                        frame = PING  # unless a frame comes within keepalive_s
                        with anyio.move_on_after(self._keepalive_s):
                            try:
                                frame = await frames_out.receive()
                            except anyio.EndOfStream:
                                break
                        # Outside the timeout: a slow client must never see half a frame.
                        await send({"type": "http.response.body", "body": frame, "more_body": True})
                finished = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                group.cancel_scope.cancel()
        finally:
            if not finished and self._on_cut is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(_CUT_DEADLINE_S):
                    try:
                        await self._on_cut()
                    except Exception:
                        log.exception("gateway: handling a cut stream failed")

    async def _produce(self, out: anyio.abc.ObjectSendStream[bytes]) -> None:
        async with out, contextlib.aclosing(self._frames) as frames:
            async for frame in frames:
                await out.send(frame)

    @staticmethod
    async def _watch(receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()
