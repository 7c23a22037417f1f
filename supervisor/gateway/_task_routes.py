"""Beyond ADK: any run by its task id (record, events, abort) and a session's cancel.

- ``GET /runs/{task_id}``: the task record.
- ``GET /runs/{task_id}/events``: the run's whole events stream as SSE, replayed
  and then followed to its terminal entry: ``id:`` = the stream entry id,
  ``event:`` = ``event`` (an ADK event) or ``state`` (a lifecycle step),
  ``data:`` = its JSON. ``Last-Event-ID`` (or ``?after=``) resumes after that
  entry, so a reader that reconnects sees every entry once. Leaving never
  aborts the run: this is a watcher's stream.
- ``POST /runs/{task_id}/abort``: kills the run's tree (optional JSON ``reason``).
- ``POST /apps/{app}/users/{user}/sessions/{session}:cancel``: aborts the
  session's live run and the runs waiting for it, whoever submitted them (the
  shape proposed for ADK's own server in google/adk-python#2425).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncGenerator
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query
from fastapi.responses import JSONResponse, Response

from agent_runtime.redis_connection import REDIS_ERRORS
from agent_runtime.task_store import TERMINAL_STATES, InvalidTaskIdError, SessionRef, check_task_id

from ._gateway import TASK_HEADER, Gateway
from ._models import AbortRequest
from ._session_runs import live_runs
from ._sse import EventStream, sse_frame
from ._wire import dumps, public_event

__all__ = ["task_router"]

_STREAM_ID = re.compile(r"\d{1,20}-\d{1,20}")


def _task_id(task_id: str) -> str:
    try:
        return check_task_id(task_id)
    except InvalidTaskIdError as exc:
        raise HTTPException(400, str(exc)) from None


async def _entries(gw: Gateway, task_id: str, after: str, follow: bool) -> AsyncGenerator[bytes]:
    try:
        async with contextlib.aclosing(gw.entries(task_id, after=after, follow=follow)) as entries:
            async for entry in entries:
                data = public_event(entry.data) if entry.type == "event" else entry.data
                yield sse_frame(dumps(data), event_id=entry.id, event=entry.type)
    except REDIS_ERRORS as exc:
        yield sse_frame(
            dumps({"error": f"{type(exc).__name__}: lost the run's events stream: {exc}"}),
            event="error",
        )


def task_router(gw: Gateway) -> APIRouter:
    """The task routes and the session cancel."""
    router = APIRouter()

    async def record(task_id: str) -> dict[str, str]:
        found = await gw.store.get(_task_id(task_id))
        if found is None:
            raise HTTPException(404, f"Task not found: {task_id}")
        return found

    @router.get("/runs/{task_id}")
    async def get_run(task_id: str) -> Response:
        return JSONResponse(await record(task_id), headers={TASK_HEADER: task_id})

    @router.get("/runs/{task_id}/events")
    async def run_events(
        task_id: str,
        after: Annotated[str | None, Query(description="resume after this entry id")] = None,
        follow: bool = True,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> Response:
        task_id = _task_id(task_id)
        start = last_event_id or after or "0-0"
        if not _STREAM_ID.fullmatch(start):
            raise HTTPException(
                400, f"Last-Event-ID / after must be a stream id like 0-0, got {start!r}"
            )
        if not await gw.store.client.exists(
            gw.store.keys.task(task_id), gw.store.keys.run_events(task_id)
        ):
            raise HTTPException(404, f"Task not found: {task_id}")
        return EventStream(
            _entries(gw, task_id, start, follow),
            keepalive_s=gw.keepalive_s,
            headers={TASK_HEADER: task_id},
        )

    @router.post("/runs/{task_id}/abort")
    async def abort_run(task_id: str, req: AbortRequest | None = None) -> Response:
        found = await record(task_id)
        if found.get("state") in TERMINAL_STATES:
            raise HTTPException(409, f"Task {task_id} already ended ({found.get('state')})")
        reason = (req.reason if req else "") or "aborted through the gateway"
        heard = await gw.abort(task_id, reason)
        return JSONResponse(
            {"task_id": task_id, "abort_published_to": heard}, headers={TASK_HEADER: task_id}
        )

    @router.post("/apps/{app_name}/users/{user_id}/sessions/{session_id}:cancel")
    async def cancel_session(
        app_name: str, user_id: str, session_id: str, req: AbortRequest | None = None
    ) -> Response:
        app = gw.app_name(app_name)
        await gw.session(app, user_id, session_id, events=False)
        live = await live_runs(gw.store, SessionRef(app, user_id, session_id))
        reason = (req.reason if req else "") or "session cancelled through the gateway"
        for task_id in live:
            await gw.abort(task_id, reason)
        return JSONResponse({"task_ids": live})

    return router
