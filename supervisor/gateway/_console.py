"""The operator console: one page, its JSON snapshot and its live stream.

- ``GET /console``: the page (plain files of ``console/`` under
  ``/console/static/``, no build step), behind the same token as every route.
- ``GET /console/api/state``: the snapshot (``_console_view``) as JSON.
- ``GET /console/api/events``: SSE. First ``snapshot`` (subscribed to
  ``<prefix>task-events`` before it is read, so no transition falls between),
  then ``run`` (a run's row, re-read from its record after a transition;
  transitions are gathered for ``_BATCH_S`` and read in one pipeline) and
  every ``_USAGE_EVERY_S`` ``usage`` (the nodes' CPU and memory figures and
  which nodes are alive). A burst of more than ``_MAX_BATCH`` runs sends a new
  ``snapshot`` instead. Redis lost ends the stream with ``lost``; the page's
  EventSource reconnects and starts over from a snapshot.

The page follows a run's log on ``GET /runs/{id}/events`` and stops a run with
``POST /runs/{id}/abort`` (the operator's reason): the task routes every client
uses, so a stop from the page is the ``adk-supervisor abort`` path.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from agent_runtime.redis_connection import REDIS_ERRORS, open_pubsub
from agent_runtime.task_store import TaskStore

from ._console_view import ConsoleView, parse_transition, row_of
from ._gateway import Gateway
from ._sse import EventStream, sse_frame
from ._wire import dumps

__all__ = ["CONSOLE_DIR", "mount_console"]

CONSOLE_DIR = Path(__file__).parent / "console"

_BATCH_S = 0.1
_USAGE_EVERY_S = 2.0
_MAX_BATCH = 1000
# The page's scripts and styles are its own files: no inline script runs, no other origin
# is reached; no other site may frame it (a Stop button under someone else's overlay).
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


async def _frames(view: ConsoleView, store: TaskStore) -> AsyncGenerator[bytes]:
    pubsub: Any = open_pubsub(store.client)
    try:
        await pubsub.subscribe(store.keys.task_events)
        yield sse_frame(dumps(await view.snapshot()), event="snapshot")
        next_usage = time.monotonic() + _USAGE_EVERY_S
        while True:
            pending: dict[str, dict[str, Any]] = {}
            message = await pubsub.get_message(
                ignore_subscribe_messages=True, timeout=max(0.0, next_usage - time.monotonic())
            )
            batch_ends = time.monotonic() + _BATCH_S
            while message is not None and len(pending) <= _MAX_BATCH:
                if (event := parse_transition(message.get("data"))) is not None:
                    pending[event["task_id"]] = event
                remaining = batch_ends - time.monotonic()
                if remaining <= 0:
                    break
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=remaining
                )
            if len(pending) > _MAX_BATCH:
                yield sse_frame(dumps(await view.snapshot()), event="snapshot")
            elif pending:
                records = await store.get_many(pending)
                for (task_id, event), record in zip(pending.items(), records, strict=True):
                    # The record is the truth (a later move may be in it); gone, the event.
                    fields = record or {**event["detail"], "state": event["state"]}
                    yield sse_frame(dumps(row_of(task_id, fields)), event="run")
            if time.monotonic() >= next_usage:
                figures = {"usage": await view.usage(), "nodes": await view.nodes()}
                yield sse_frame(dumps({"now": time.time(), **figures}), event="usage")
                next_usage = time.monotonic() + _USAGE_EVERY_S
    except REDIS_ERRORS as exc:
        yield sse_frame(dumps({"error": f"{type(exc).__name__}: {exc}"}), event="lost")
    finally:
        await pubsub.aclose()


def _router(gw: Gateway) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    view = ConsoleView(gw.store)

    @router.get("/console")
    async def page() -> FileResponse:
        return FileResponse(CONSOLE_DIR / "index.html", headers=_PAGE_HEADERS)

    @router.get("/console/")
    async def page_slash() -> RedirectResponse:
        return RedirectResponse("../console")

    @router.get("/console/api/state")
    async def state() -> JSONResponse:
        return JSONResponse(await view.snapshot(), headers={"Cache-Control": "no-store"})

    @router.get("/console/api/events")
    async def events() -> EventStream:
        return EventStream(_frames(view, gw.store), keepalive_s=gw.keepalive_s)

    return router


def mount_console(app: FastAPI, gw: Gateway) -> None:
    """Adds the console's routes and its static files to ``app``."""
    if not (CONSOLE_DIR / "index.html").is_file():
        raise FileNotFoundError(f"the console's files are not at {CONSOLE_DIR}: reinstall")
    app.include_router(_router(gw))
    app.mount("/console/static", StaticFiles(directory=CONSOLE_DIR), name="console")
