"""The status socket's wire format: newline-delimited JSON, one object per line each way.

A request is ``{"cmd": "...", ...}``; a reply is ``{"ok": true, ...}`` or
``{"ok": false, "error": "...", "kind": "..."}``, where ``kind`` (when present)
names the error class so clients need not parse messages: ``not_found`` for
an unknown task, ``bad_request`` for anything the client must change,
``session_busy`` for a submit with ``if_busy: "refuse"`` while another run holds
the session (``task_id`` names that run).
"""

from __future__ import annotations

import json
from typing import Any, Final

from ..errors import RequestError, SessionBusyError, TaskNotFoundError

__all__ = [
    "COMMANDS",
    "MAX_LINE",
    "MAX_REPLY",
    "decode_request",
    "encode",
    "error_reply",
]

COMMANDS: Final = ("ping", "status", "get", "submit", "abort", "drain")
MAX_LINE: Final = 64 * 1024
"""The longest request line the daemon reads."""
MAX_REPLY: Final = 64 * MAX_LINE
"""The longest reply a client reads (a status with many runs is long)."""


def encode(message: dict[str, Any]) -> bytes:
    """One message as its line on the wire."""
    return json.dumps(message, default=str).encode() + b"\n"


def decode_request(line: bytes) -> dict[str, Any]:
    """A request line as a dict with a ``cmd`` string; :class:`RequestError` says what is wrong."""
    try:
        request = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"malformed JSON: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        raise RequestError('a request is a JSON object with a "cmd" string, e.g. {"cmd": "ping"}')
    return request


def error_reply(error: str | Exception) -> dict[str, Any]:
    """The reply for a failed request; an error class the client can act on gets a ``kind``."""
    reply: dict[str, Any] = {"ok": False, "error": str(error)}
    if isinstance(error, TaskNotFoundError):
        reply["kind"] = "not_found"
    elif isinstance(error, RequestError):
        reply["kind"] = "bad_request"
    elif isinstance(error, SessionBusyError):
        reply["kind"] = "session_busy"
        reply["task_id"] = error.task_id
    return reply
