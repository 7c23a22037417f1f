"""Event builders shared by the session tests and the benchmark."""

from __future__ import annotations

import time
from typing import Any

from google.adk.events.event import Event
from google.adk.events.event_actions import EventActions
from google.adk.tools.tool_confirmation import ToolConfirmation
from google.genai import types


def text_event(
    text: str,
    *,
    author: str = "user",
    delta: dict[str, Any] | None = None,
    timestamp: float | None = None,
    invocation_id: str = "inv-1",
    partial: bool | None = None,
) -> Event:
    """A plain text event, optionally with a state delta."""
    event = Event(
        author=author,
        invocation_id=invocation_id,
        content=types.Content(
            role="user" if author == "user" else "model", parts=[types.Part(text=text)]
        ),
        actions=EventActions(state_delta=delta or {}),
        partial=partial,
    )
    if timestamp is not None:
        event.timestamp = timestamp
    return event


def full_event() -> Event:
    """An event with (nearly) every field set: the exact round-trip check."""
    call = types.FunctionCall(id="call-1", name="lookup", args={"city": "Zürich", "n": 3, "f": 0.5})
    response = types.FunctionResponse(
        id="call-1", name="lookup", response={"result": ["a", None, 1]}
    )
    return Event(
        author="agent",
        invocation_id="inv-full",
        branch="root.child",
        model_version="scripted-1",
        content=types.Content(
            role="model",
            parts=[
                types.Part(text="hello ✓"),
                types.Part(function_call=call),
                types.Part(function_response=response),
                types.Part.from_bytes(data=bytes(range(256)), mime_type="application/octet-stream"),
            ],
        ),
        grounding_metadata=types.GroundingMetadata(
            web_search_queries=["weather zurich"],
            grounding_chunks=[
                types.GroundingChunk(
                    web=types.GroundingChunkWeb(uri="https://example.org", title="t")
                )
            ],
        ),
        usage_metadata=types.GenerateContentResponseUsageMetadata(
            prompt_token_count=11, candidates_token_count=7, total_token_count=18
        ),
        custom_metadata={"trace": {"id": "abc", "n": [1, 2.5, True, None]}},
        finish_reason=types.FinishReason.STOP,
        turn_complete=True,
        error_code=None,
        avg_logprobs=-0.25,
        citation_metadata=types.CitationMetadata(
            citations=[types.Citation(start_index=0, end_index=5, uri="u")]
        ),
        long_running_tool_ids={"call-1"},
        actions=EventActions(
            state_delta={"k": "v", "app:shared": 1, "user:pref": {"lang": "de"}},
            artifact_delta={"report.txt": 2},
            transfer_to_agent="other",
            escalate=False,
            skip_summarization=True,
            requested_tool_confirmations={
                "call-1": ToolConfirmation(hint="sure?", confirmed=False, payload={"x": 1})
            },
            end_of_agent=True,
            agent_state={"step": 2},
        ),
        timestamp=time.time(),
    )
