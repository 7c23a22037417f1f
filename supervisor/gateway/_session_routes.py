"""ADK's session routes under ``/apps/{app}/users/{user}/sessions``, on RedisSessionService.

Same paths, bodies, answers and errors as ADK's api_server: a session as
``Session`` JSON (camelCase, no nulls, internal metadata dropped, credential
secrets redacted), 404 ``Session not found``, 409 when it exists, 400 for
options or events a new session cannot take. The store is the one the runs use.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse, Response
from google.adk.auth.auth_credential import _redact_credential_secrets
from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.events.event import Event
from google.adk.events.event_actions import EventActions
from google.adk.sessions.session import Session
from google.adk.utils._function_call_names import CLIENT_FUNCTION_CALL_NAMES

from ._gateway import Gateway
from ._models import CreateSessionRequest, UpdateSessionRequest
from ._wire import public_event

__all__ = ["session_json", "session_router"]

_INTERNAL_PREFIX = "__adk_internal_"
_RESTORED_KEY = _INTERNAL_PREFIX + "restored_event"  # google.adk.events._internal_metadata


def session_json(session: Session) -> dict[str, Any]:
    """A session as ADK's api_server sends it."""
    data = session.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["events"] = [public_event(e) for e in data.get("events", [])]
    redacted: dict[str, Any] = _redact_credential_secrets(data)
    return redacted


def _check_restored(events: list[Event]) -> None:
    # As ADK: events restored into a new session may not claim to be ADK's own.
    for index, event in enumerate(events):
        if event.long_running_tool_ids:
            bad = "long-running tool IDs"
        elif event.actions != EventActions():
            bad = "event actions"
        elif any(c.name in CLIENT_FUNCTION_CALL_NAMES for c in event.get_function_calls()) or any(
            r.name in CLIENT_FUNCTION_CALL_NAMES for r in event.get_function_responses()
        ):
            bad = "ADK protocol function calls"
        else:
            continue
        raise HTTPException(400, f"Session initialization event {index} cannot include {bad}.")


def session_router(gw: Gateway) -> APIRouter:
    """The session routes."""
    router = APIRouter()
    base = "/apps/{app_name}/users/{user_id}/sessions"

    async def create(
        app_name: str,
        user_id: str,
        session_id: str | None,
        state: dict[str, Any] | None,
        events: list[Event] | None = None,
    ) -> Session:
        app = gw.app_name(app_name)
        if events:
            _check_restored(events)
        try:
            session = await gw.sessions.create_session(
                app_name=app, user_id=user_id, state=state, session_id=session_id
            )
        except AlreadyExistsError:
            raise HTTPException(409, f"Session already exists: {session_id}") from None
        except (ValueError, TypeError) as exc:
            raise HTTPException(400, str(exc)) from None
        for event in events or ():
            metadata = {
                k: v
                for k, v in (event.custom_metadata or {}).items()
                if not k.startswith(_INTERNAL_PREFIX)
            }
            event.custom_metadata = {**metadata, _RESTORED_KEY: True}
            await gw.sessions.append_event(session, event)
        return session

    @router.get(base)
    async def list_sessions(app_name: str, user_id: str) -> Response:
        app = gw.app_name(app_name)
        try:
            listed = await gw.sessions.list_sessions(app_name=app, user_id=user_id)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        return JSONResponse([session_json(s) for s in listed.sessions])

    @router.post(base)
    async def create_session(
        app_name: str, user_id: str, req: CreateSessionRequest | None = None
    ) -> Response:
        if req is not None and req.options:
            raise HTTPException(
                400, "Session options are not supported by the configured session service."
            )
        session = await create(
            app_name,
            user_id,
            req.session_id if req else None,
            req.state if req else None,
            req.events if req else None,
        )
        return JSONResponse(session_json(session))

    @router.post(base + "/{session_id}")
    async def create_session_with_id(
        app_name: str, user_id: str, session_id: str, state: dict[str, Any] | None = None
    ) -> Response:
        # ADK's deprecated form, kept for its older clients.
        return JSONResponse(session_json(await create(app_name, user_id, session_id, state)))

    @router.get(base + "/{session_id}")
    async def get_session(app_name: str, user_id: str, session_id: str) -> Response:
        session = await gw.session(gw.app_name(app_name), user_id, session_id)
        return JSONResponse(session_json(session))

    @router.delete(base + "/{session_id}")
    async def delete_session(app_name: str, user_id: str, session_id: str) -> Response:
        app = gw.app_name(app_name)
        try:
            await gw.sessions.delete_session(app_name=app, user_id=user_id, session_id=session_id)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        return JSONResponse(None)

    @router.patch(base + "/{session_id}")
    async def update_session(
        app_name: str, user_id: str, session_id: str, req: UpdateSessionRequest
    ) -> Response:
        session = await gw.session(gw.app_name(app_name), user_id, session_id)
        event = Event(
            invocation_id="p-" + str(uuid.uuid4()),
            author="user",
            actions=EventActions(state_delta=req.state_delta),
        )
        await gw.sessions.append_event(session=session, event=event)
        return JSONResponse(session_json(session))

    return router
