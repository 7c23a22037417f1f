"""What a run takes: ADK's whole Runner input, as stream-entry fields.

A run's input is the new message (plain ``message`` text, or ``content``: a
``google.genai.types.Content`` as JSON, with inline bytes, function responses
and the rest), a ``state_delta``, the ``invocation_id`` of a paused invocation
to continue, and ``run_config`` (``streaming``: ``"none"`` or ``"sse"``;
``max_llm_calls``; ``custom_metadata``). On the runs stream each is one field,
the structured ones as JSON. The client builds the fields (:meth:`RunInput.fields`),
the daemon parses untrusted ones back (:func:`parse_input`); both enforce the
same size limit. No ADK import: the content is checked for shape here, and
validated as a ``Content`` by the run itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["DEFAULT_MAX_INPUT_BYTES", "InputTooLarge", "RunInput", "parse_input"]

DEFAULT_MAX_INPUT_BYTES: Final = 1 << 20
"""A run's input (message, content, state delta, run options) at most: 1 MiB."""
_MAX_INVOCATION_ID = 256
_STREAMING = ("none", "sse")


class InputTooLarge(ValueError):
    """The input is over the size limit (its message names both sizes)."""


@dataclass(frozen=True, slots=True)
class RunInput:
    """One run's input; a plain text message is the short form."""

    message: str = ""
    content: dict[str, Any] | None = None
    state_delta: dict[str, Any] | None = None
    invocation_id: str | None = None
    run_config: dict[str, Any] | None = None

    def fields(self, max_bytes: int = DEFAULT_MAX_INPUT_BYTES) -> dict[str, str]:
        """The stream-entry fields; :class:`InputTooLarge` or ValueError if they cannot go."""
        fields = {"message": self.message}
        for name in ("content", "state_delta", "run_config"):
            value = getattr(self, name)
            if value is not None:
                fields[name] = json.dumps(value, separators=(",", ":"))
        if self.invocation_id:
            fields["invocation_id"] = self.invocation_id
        parse_input(fields, max_bytes)  # the daemon's own checks, before anything is queued
        return fields


def _json_object(fields: Mapping[str, str], name: str) -> dict[str, Any] | None:
    raw = fields.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise ValueError(f"{name} must be a JSON object (it is not JSON)") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object, got {type(value).__name__}")
    return value


def parse_input(fields: Mapping[str, str], max_bytes: int = DEFAULT_MAX_INPUT_BYTES) -> RunInput:
    """The input of a stream entry (untrusted); ValueError says what is wrong."""
    size = sum(
        len(fields.get(name, "").encode(errors="replace"))
        for name in ("message", "content", "state_delta", "invocation_id", "run_config")
    )
    if size > max_bytes:
        raise InputTooLarge(
            f"the run's input is {size} bytes, over the limit of {max_bytes} (max_input_bytes)"
        )
    content = _json_object(fields, "content")
    if content is not None:
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise ValueError("content must have a non-empty list of parts")
    state_delta = _json_object(fields, "state_delta")
    run_config = _json_object(fields, "run_config")
    if run_config is not None:
        unknown = set(run_config) - {"streaming", "max_llm_calls", "custom_metadata"}
        if unknown:
            raise ValueError(f"run_config: unknown option(s) {', '.join(sorted(unknown))}")
        if run_config.get("streaming", "none") not in _STREAMING:
            raise ValueError('run_config.streaming must be "none" or "sse"')
        calls = run_config.get("max_llm_calls")
        if calls is not None and (not isinstance(calls, int) or isinstance(calls, bool)):
            raise ValueError("run_config.max_llm_calls must be an integer")
        metadata = run_config.get("custom_metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise ValueError("run_config.custom_metadata must be a JSON object")
    invocation_id = fields.get("invocation_id") or None
    if invocation_id is not None and len(invocation_id) > _MAX_INVOCATION_ID:
        raise ValueError(f"invocation_id is longer than {_MAX_INVOCATION_ID} characters")
    message = fields.get("message", "")
    if not message and content is None and invocation_id is None:
        raise ValueError("missing message (or content, or an invocation_id to continue)")
    return RunInput(message, content, state_delta, invocation_id, run_config)
