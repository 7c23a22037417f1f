"""A run's events stream for people: streamed text, one line per tool call and result,
and the lifecycle. Pure: it turns entries into text, the CLI writes it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from agent_runtime.run_events import RunEntry

__all__ = ["RunView"]

_MAX_VALUE = 200


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= _MAX_VALUE else text[:_MAX_VALUE] + "..."


class RunView:
    """Renders entries one by one; partial text flows on one line until its turn ends."""

    def __init__(self) -> None:
        self._streaming = False  # partial text was written and its line is still open

    def render(self, entry: RunEntry) -> str:
        """What to write for ``entry`` (maybe empty; without a trailing newline only
        for streamed text)."""
        if entry.type == "state":
            return self._close() + self._state(entry.data)
        data = entry.data
        author = str(data.get("author", "?"))
        content = data.get("content")
        parts = content.get("parts") if isinstance(content, Mapping) else None
        if data.get("partial"):
            text = "".join(p["text"] for p in parts or () if isinstance(p, Mapping) and "text" in p)
            opening = "" if self._streaming else f"{author}: "
            self._streaming = True
            return opening + text
        if self._streaming:
            # The final event repeats the streamed text: end the line instead.
            self._streaming = False
            return "\n"
        lines = []
        for part in parts or ():
            if not isinstance(part, Mapping):
                continue
            if isinstance(part.get("text"), str) and not part.get("thought"):
                lines.append(f"{author}: {part['text']}")
            elif isinstance(part.get("functionCall"), Mapping):
                call = part["functionCall"]
                lines.append(f"{author} -> {call.get('name')}({_short(call.get('args', {}))})")
            elif isinstance(part.get("functionResponse"), Mapping):
                answer = part["functionResponse"]
                lines.append(
                    f"{author} <- {answer.get('name')}: {_short(answer.get('response', {}))}"
                )
            elif isinstance(part.get("inlineData"), Mapping):
                lines.append(f"{author}: [{part['inlineData'].get('mimeType', 'data')}]")
        if data.get("errorCode"):
            lines.append(f"{author}: error {data['errorCode']}: {data.get('errorMessage', '')}")
        return "".join(line + "\n" for line in lines)

    def _close(self) -> str:
        if self._streaming:
            self._streaming = False
            return "\n"
        return ""

    @staticmethod
    def _state(data: Mapping[str, Any]) -> str:
        raw = data.get("detail")
        detail: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        state = data.get("state")
        if state == "running":
            return f"[running] pid {detail.get('pid')}\n"
        if state == "killing":
            return f"[killing] {detail.get('reason', '')}\n"
        if state in ("completed", "failed", "timed_out", "aborted"):
            reason = detail.get("reason")
            return f"[{state}]" + (f" {reason}" if reason else "") + "\n"
        return f"[{state}]\n"
