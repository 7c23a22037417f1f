"""Sealing a session after its run was killed, as ADK's own cooperative abort would have.

A SIGKILL leaves the ADK session with function calls that never got a
response; the next turn then confuses the model (or ADK silently drops the
orphaned call from the request). :func:`seal_session` appends what
``InvocationContext.abort()`` would have written: for every dangling call of
the invocation, a function response carrying ADK's ``INVOCATION_ABORTED``
error (built by ADK's own helper, so the history is identical to a
cooperative abort), then one content-less ``INVOCATION_ABORTED`` event that
says why the run ended. It is idempotent: a second call appends nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from google.adk.events._abort_events import _build_abort_events
from google.adk.events.event import Event
from google.adk.sessions.base_session_service import BaseSessionService, GetSessionConfig
from google.adk.sessions.session import Session

__all__ = [
    "INVOCATION_ABORTED",
    "SEAL_METADATA_KEY",
    "find_seal",
    "seal_session",
    "seal_task_session",
]

log = logging.getLogger("adk_supervisor")

INVOCATION_ABORTED: Final = "INVOCATION_ABORTED"
# custom_metadata key of the reason event: what ended the run, and the marker
# that makes sealing idempotent.
SEAL_METADATA_KEY: Final = "adk_supervisor_seal"


def find_seal(events: list[Event], invocation_id: str) -> dict[str, Any] | None:
    """The seal metadata already written for ``invocation_id``, if any."""
    for event in reversed(events):
        meta = (event.custom_metadata or {}).get(SEAL_METADATA_KEY)
        if (
            event.invocation_id == invocation_id
            and isinstance(meta, dict)
            and event.error_code == INVOCATION_ABORTED
        ):
            return meta
    return None


def _last_invocation(events: list[Event]) -> str | None:
    for event in reversed(events):
        if event.invocation_id:
            return event.invocation_id
    return None


def _author(events: list[Event], invocation_id: str, fallback: str) -> str:
    # ADK authors its content-less abort event with the root agent; the run's
    # last agent-authored event is the closest thing the supervisor can know.
    for event in reversed(events):
        if event.invocation_id == invocation_id and event.author and event.author != "user":
            return event.author
    return fallback


_FIRST_WINDOW: Final = 64


async def _tail(
    session_service: BaseSessionService,
    app_name: str,
    user_id: str,
    session_id: str,
    invocation_id: str | None,
) -> Session | None:
    """The session with enough of its last events to hold the whole killed invocation.

    Decoding a whole session cost 0.8 s at 5,000 events, on the daemon's event
    loop, for every killed run: only the invocation's own events matter (its
    calls and their answers, the seal), and an invocation's events are the last
    ones. The window grows until it reaches past the invocation's first event.
    """
    window = _FIRST_WINDOW
    while True:
        session = await session_service.get_session(
            app_name=app_name,
            user_id=user_id,
            session_id=session_id,
            config=GetSessionConfig(num_recent_events=window),
        )
        if session is None or len(session.events) < window:
            return session
        invocation = invocation_id or _last_invocation(session.events)
        if session.events[0].invocation_id != invocation:
            return session
        window *= 4


async def seal_session(
    session_service: BaseSessionService,
    *,
    app_name: str,
    user_id: str,
    session_id: str,
    reason: str,
    invocation_id: str | None = None,
    state: str = "aborted",
    task_id: str | None = None,
) -> list[Event]:
    """Seals the killed invocation in the session; returns the events it appended.

    ``invocation_id`` names the killed invocation; without it, the invocation of
    the session's last event is sealed. ``state`` and ``reason`` (and
    ``task_id``) go into the reason event's ``custom_metadata`` under
    :data:`SEAL_METADATA_KEY` and its ``error_message``. A missing session, or
    an invocation already sealed with no call left dangling, appends nothing.
    """
    session = await _tail(session_service, app_name, user_id, session_id, invocation_id)
    if session is None:
        return []
    invocation = invocation_id or _last_invocation(session.events)
    if invocation is None:
        return []
    # ADK's helper returns one content-less abort event when nothing dangles;
    # only the function responses are taken from it, the reason event is ours.
    built = _build_abort_events(
        session.events, invocation_id=invocation, root_agent_name=app_name, branch=None
    )
    to_append = [e for e in built if e.content is not None]
    if find_seal(session.events, invocation) is None:
        to_append.append(
            Event(
                invocation_id=invocation,
                author=_author(session.events, invocation, app_name),
                error_code=INVOCATION_ABORTED,
                error_message=f"Invocation was ended by the supervisor ({state}): {reason}",
                custom_metadata={
                    SEAL_METADATA_KEY: {
                        "state": state,
                        "reason": reason,
                        "task_id": task_id,
                        "invocation_id": invocation,
                    }
                },
            )
        )
    appended = []
    for event in to_append:
        appended.append(await session_service.append_event(session=session, event=event))
    return appended


async def seal_task_session(
    session_service: BaseSessionService,
    task_id: str,
    record: Mapping[str, str],
    state: str,
    reason: str,
) -> list[Event]:
    """Seals the session of a task record written by the child or the plugin.

    Needs the ADK app name the run used (``adk_app``), ``user_id``,
    ``session_id`` and ``invocation_id``. A record without them belongs to a run
    that never wrote to its session: nothing to seal.
    """
    app_name = record.get("adk_app") or ""
    user_id = record.get("user_id") or ""
    session_id = record.get("session_id") or ""
    invocation_id = record.get("invocation_id") or ""
    if not (app_name and user_id and session_id):
        log.debug("task %s: no session recorded, nothing to seal", task_id)
        return []
    if not invocation_id:
        # The child records its invocation id with the run's first event, so a run
        # killed before that added nothing to the session; the session's last
        # invocation is then a previous, completed turn that must stay as it is.
        log.debug("task %s: no invocation recorded, nothing to seal", task_id)
        return []
    return await seal_session(
        session_service,
        app_name=app_name,
        user_id=user_id,
        session_id=session_id,
        reason=reason,
        invocation_id=invocation_id,
        state=state,
        task_id=task_id,
    )
