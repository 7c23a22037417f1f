"""Request bodies: ADK's api_server models (camelCase, snake_case accepted too), plus ours.

``RunAgentRequest`` and the session bodies take what ADK's take, field for
field, so adk web and ADK's clients work unchanged; ``onDisconnect`` is the
gateway's own (what a client that leaves does to its run).
"""

from __future__ import annotations

from typing import Any, Literal

from google.adk.events.event import Event
from google.genai import types
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

__all__ = [
    "AbortRequest",
    "CreateSessionRequest",
    "OnDisconnect",
    "RunAgentRequest",
    "UpdateSessionRequest",
]

OnDisconnect = Literal["abort", "continue"]


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class RunAgentRequest(_Camel):
    """The body of ``/run`` and ``/run_sse`` (ADK's ``RunAgentRequest``)."""

    app_name: str | None = None
    user_id: str = Field(min_length=1)
    session_id: str = Field(min_length=1)
    new_message: types.Content | None = None
    streaming: bool = False
    state_delta: dict[str, Any] | None = None
    function_call_event_id: str | None = None
    invocation_id: str | None = None
    custom_metadata: dict[str, Any] | None = None
    service_tier: str | None = None
    """Accepted for ADK's clients; a supervised run does not pass it on."""
    on_disconnect: OnDisconnect | None = None
    """What the client leaving does to the run: ``abort`` or ``continue`` (default: the setting)."""

    @model_validator(mode="after")
    def _something_to_run(self) -> RunAgentRequest:
        if self.new_message is None and not self.invocation_id:
            raise ValueError("newMessage is required (or invocationId, to resume an invocation)")
        return self


class CreateSessionRequest(_Camel):
    """The body of ``POST .../sessions`` (ADK's ``CreateSessionRequest``)."""

    session_id: str | None = None
    state: dict[str, Any] | None = None
    events: list[Event] | None = None
    options: dict[str, Any] | None = None


class UpdateSessionRequest(_Camel):
    """The body of ``PATCH .../sessions/{id}``: a state delta applied without a run."""

    state_delta: dict[str, Any]


class AbortRequest(BaseModel):
    """The optional body of ``POST /runs/{task_id}/abort``."""

    reason: str = Field(default="", max_length=1000)
