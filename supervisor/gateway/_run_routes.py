"""ADK's ``POST /run`` and ``POST /run_sse``, each served by a supervised run.

Both check the app and the session as ADK does (404 before anything starts),
queue the run, answer with its task id in ``X-ADK-Task-Id`` and read the run's
events stream. ``/run_sse`` sends one ``data:`` frame per event as the run
yields it (partial text with ``streaming``), each with ``id:`` = its stream
entry id (adk web ignores it; a client that lost the stream resumes with
``GET /runs/{task_id}/events`` and ``Last-Event-ID``), keep-alive comments on
silence, and ADK's error frame if the run did not complete. ``/run`` answers
the run's events as a list once it ended. A client that leaves before the end
aborts the run (its whole tree), as ADK's server does, unless it asked for
``onDisconnect: "continue"`` (or the setting says so). ``/run_live`` (audio
and video) is refused.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import Any

import anyio
from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import JSONResponse, Response

from agent_runtime.redis_connection import REDIS_ERRORS
from agent_runtime.run_events import RunEntry

from ._gateway import TASK_HEADER, Gateway
from ._models import RunAgentRequest
from ._sse import EventStream, sse_frame
from ._wire import dumps, end_error, is_user_echo, public_event, sse_events

__all__ = ["run_router"]

log = logging.getLogger("adk_supervisor.gateway")

DISCONNECT_REASON = "client disconnected (onDisconnect=abort)"
# /run's answer for a run that did not complete: an agent error is the server's, a
# timeout a gateway timeout, an abort (by someone else) a conflict with the request.
_END_STATUS = {"failed": 500, "timed_out": 504, "aborted": 409}
_ABORT_DEADLINE_S = 5.0


async def _until_disconnect(request: Request, scope: anyio.CancelScope) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


async def _abort_shielded(gw: Gateway, task_id: str) -> None:
    with anyio.CancelScope(shield=True), anyio.move_on_after(_ABORT_DEADLINE_S):
        try:
            await gw.abort(task_id, DISCONNECT_REASON)
            log.info("gateway: task %s aborted: its client disconnected", task_id)
        except REDIS_ERRORS as exc:
            log.error("gateway: cannot abort task %s (client gone): %s", task_id, exc)


async def _sse_frames(
    gw: Gateway, req: RunAgentRequest, task_id: str
) -> AsyncGenerator[bytes, None]:
    split = not req.function_call_event_id  # as ADK: no split when answering a function call
    first = True
    try:
        async with contextlib.aclosing(gw.entries(task_id)) as entries:
            async for entry in entries:
                if entry.type == "event":
                    echo, first = is_user_echo(entry.data, first), False
                    if echo:
                        continue
                    frames = sse_events(entry.data, split_artifacts=split)
                    for i, frame in enumerate(frames):
                        last = i == len(frames) - 1
                        yield sse_frame(dumps(frame), event_id=entry.id if last else None)
                elif entry.terminal:
                    error = end_error(entry.data, await gw.store.get(task_id))
                    if error is not None:
                        yield sse_frame(dumps(error), event_id=entry.id)
    except REDIS_ERRORS as exc:
        log.error("gateway: lost the events stream of task %s: %s", task_id, exc)
        message = f"lost the run's events stream: {exc}"
        yield sse_frame(
            dumps(
                {
                    "error": f"{type(exc).__name__}: {message}",
                    "error_details": {
                        "error_type": type(exc).__name__,
                        "error_message": message,
                        "task_id": task_id,
                    },
                }
            )
        )


def run_router(gw: Gateway) -> APIRouter:
    """The run routes."""
    router = APIRouter()

    @router.post("/run_sse")
    async def run_sse(req: RunAgentRequest) -> Response:
        app = gw.app_name(req.app_name)
        await gw.session(app, req.user_id, req.session_id, events=False)
        task_id = await gw.start(app, req, streaming=req.streaming)
        abort = (req.on_disconnect or gw.on_disconnect) == "abort"

        async def cut() -> None:
            await _abort_shielded(gw, task_id)

        return EventStream(
            _sse_frames(gw, req, task_id),
            keepalive_s=gw.keepalive_s,
            headers={TASK_HEADER: task_id},
            on_cut=cut if abort else None,
        )

    @router.post("/run")
    async def run(req: RunAgentRequest, request: Request) -> Response:
        app = gw.app_name(req.app_name)
        await gw.session(app, req.user_id, req.session_id, events=False)
        task_id = await gw.start(app, req, streaming=False)
        abort = (req.on_disconnect or gw.on_disconnect) == "abort"
        headers = {TASK_HEADER: task_id}
        events: list[dict[str, Any]] = []
        end: RunEntry | None = None
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(_until_disconnect, request, group.cancel_scope)
                first = True
                async with contextlib.aclosing(gw.entries(task_id)) as entries:
                    async for entry in entries:
                        if entry.type == "event":
                            echo, first = is_user_echo(entry.data, first), False
                            if not echo and not entry.data.get("partial"):
                                events.append(public_event(entry.data))
                        elif entry.terminal:
                            end = entry
                group.cancel_scope.cancel()
        finally:
            if end is None and abort:
                await _abort_shielded(gw, task_id)
        if end is None:
            # ADK's answer to a client that left (nginx's "client closed request").
            return Response(status_code=499, headers=headers)
        if end.data.get("state") == "completed":
            return JSONResponse(events, headers=headers)
        error = end_error(end.data, await gw.store.get(task_id)) or {}
        state = str(end.data.get("state"))
        return JSONResponse(
            {
                "detail": error.get("error", f"the run ended {state}"),
                "task_id": task_id,
                "state": state,
                "error_details": error.get("error_details", {}),
                "events": events,
            },
            status_code=_END_STATUS.get(state, 500),
            headers=headers,
        )

    @router.websocket("/run_live")
    async def run_live(websocket: WebSocket) -> None:
        await websocket.close(
            code=1008,
            reason="live (audio/video) runs are not supported by the adk-supervisor gateway",
        )

    return router
