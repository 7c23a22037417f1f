"""What a run's stream entries look like on the wire: ADK's api_server shapes.

A run writes each event as ADK's ``Event`` JSON (camelCase, no nulls). Before
it leaves the gateway it is made what ADK's server makes it: internal metadata
dropped (``public_event``), credential secrets redacted, and an event carrying
both content and an artifact delta sent as two (content, then the action), as
adk web expects. The run's echo of the user's own message (the run yields it
first, so its invocation id is known at once) is not an ADK api_server event
and is left out of ``/run`` and ``/run_sse``. A run that ends other than
``completed`` ends ``/run_sse`` with ADK's error frame.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Mapping
from typing import Any

from google.adk.auth.auth_credential import _redact_credential_secrets

__all__ = ["dumps", "end_error", "is_user_echo", "public_event", "sse_events"]

_INTERNAL_PREFIX = "__adk_internal_"  # google.adk.events._internal_metadata
_ERROR_TYPES = {"aborted": "RunAborted", "timed_out": "RunTimedOut", "failed": "RunFailed"}


def dumps(data: Any) -> str:
    """Compact JSON, non-ASCII as is (as ADK's ``pydantic_core.to_json``)."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def public_event(data: Mapping[str, Any]) -> dict[str, Any]:
    """The event as ADK's api_server sends it (an untrusted dict in, a new dict out)."""
    event = dict(data)
    metadata = event.get("customMetadata")
    if isinstance(metadata, Mapping) and any(
        isinstance(k, str) and k.startswith(_INTERNAL_PREFIX) for k in metadata
    ):
        kept = {
            k: v
            for k, v in metadata.items()
            if not (isinstance(k, str) and k.startswith(_INTERNAL_PREFIX))
        }
        if kept:
            event["customMetadata"] = kept
        else:
            del event["customMetadata"]
    redacted: dict[str, Any] = _redact_credential_secrets(event)
    return redacted


def is_user_echo(data: Mapping[str, Any], first: bool) -> bool:
    """Whether this event is the run's echo of the new message (its first event, by the user)."""
    return first and data.get("author") == "user"


def sse_events(data: Mapping[str, Any], *, split_artifacts: bool) -> list[dict[str, Any]]:
    """The frames ADK's ``/run_sse`` sends for one event (see the module docstring)."""
    event = public_event(data)
    actions = event.get("actions")
    content = event.get("content")
    if (
        split_artifacts
        and isinstance(actions, Mapping)
        and actions.get("artifactDelta")
        and isinstance(content, Mapping)
        and content.get("parts")
    ):
        content_event = copy.deepcopy(event)
        content_event["actions"]["artifactDelta"] = {}
        artifact_event = copy.deepcopy(event)
        del artifact_event["content"]
        return [content_event, artifact_event]
    return [event]


def end_error(
    state_data: Mapping[str, Any], record: Mapping[str, str] | None
) -> dict[str, Any] | None:
    """ADK's error frame for a run that did not complete (None if it did).

    ``error`` reads as ADK's does (``"<Type>: <message>"``: the agent's exception
    for a failed run); ``error_details`` adds the task id, end state and reason.
    """
    state = str(state_data.get("state", ""))
    if state == "completed":
        return None
    detail = state_data.get("detail")
    detail = detail if isinstance(detail, Mapping) else {}
    record = record or {}
    reason = str(detail.get("reason") or record.get("reason") or "")
    agent_error = record.get("error", "") if state == "failed" else ""
    if agent_error:
        error_type, _, message = agent_error.partition(": ")
        if not message or not error_type.isidentifier():
            error_type, message = _ERROR_TYPES["failed"], agent_error
    else:
        error_type = _ERROR_TYPES.get(state, "RunEnded")
        message = f"the run ended {state}" + (f": {reason}" if reason else "")
    at = state_data.get("at")
    return {
        "error": f"{error_type}: {message}",
        "error_details": {
            "error_type": error_type,
            "error_message": message,
            "timestamp": at if isinstance(at, int | float) else time.time(),
            "task_id": str(state_data.get("task_id", "")),
            "state": state,
            "reason": reason,
        },
    }
