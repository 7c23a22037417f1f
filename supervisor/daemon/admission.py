"""Admission: whether a runs-stream entry is a run this node may start. Pure, no I/O.

Everything in a stream entry is untrusted (anyone who can XADD wrote it): each
field is checked here, and a rejection says what is wrong and whether the entry
named a task whose ``queued`` record should be failed with that reason. An
untrusted value quoted in a rejection is cut to its first
:data:`QUOTED_CHARS` characters: the message goes to the log and to the
record's ``reason``, and a 1 MB app name must not make a 1 MB log line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from agent_runtime.run_input import DEFAULT_MAX_INPUT_BYTES, RunInput, parse_input
from agent_runtime.task_store import IF_BUSY_CHOICES, IfBusy, InvalidTaskIdError, check_task_id
from agent_runtime.trace_context import check_traceparent

from ..errors import SupervisorError

__all__ = ["QUOTED_CHARS", "Rejected", "RunRequest", "admit", "entry_fields", "resolve_app"]

_REQUIRED = ("app", "user_id")
_MAX_TASK_ID = 128  # check_task_id's own bound: longer ids are refused before it quotes them
# No import path is this long; an admitted app is logged and recorded with every run.
_MAX_APP = 1024

# Every field of an entry admission reads (the input's among them); the rest is ignored.
_ENTRY_FIELDS = (
    "task_id",
    "app",
    "user_id",
    "session_id",
    "timeout",
    "if_busy",
    "message",
    "content",
    "state_delta",
    "invocation_id",
    "run_config",
    "traceparent",
)

QUOTED_CHARS = 200
"""How much of an untrusted value a rejection message quotes."""


def _quoted(value: str) -> str:
    """``repr(value)``, cut to its first :data:`QUOTED_CHARS` characters with its size."""
    if len(value) <= QUOTED_CHARS:
        return repr(value)
    size = len(value.encode(errors="replace"))
    return f"{value[:QUOTED_CHARS]!r}... ({size} bytes)"


class Rejected(SupervisorError, ValueError):
    """An entry this node will not run; ``task_id`` is set when its record may be failed."""

    def __init__(self, message: str, task_id: str | None) -> None:
        super().__init__(message)
        self.task_id = task_id


@dataclass(frozen=True, slots=True)
class RunRequest:
    """An admitted run: every field checked, the app resolved to an import path."""

    task_id: str
    app: str
    app_ref: str
    user_id: str
    session_id: str
    input: RunInput
    timeout_s: float | None
    traceparent: str | None = None
    if_busy: IfBusy = "wait"


def entry_fields(entry: Mapping[str, str]) -> dict[str, str]:
    """The fields of ``entry`` that admission reads: what a run waiting for its session keeps
    of its entry (an entry may carry any number of other fields)."""
    return {name: entry[name] for name in _ENTRY_FIELDS if name in entry}


def resolve_app(app: str, apps: Mapping[str, str], allow_import_paths: bool) -> str:
    """The import path of ``app``; ValueError naming the choices if it cannot run here."""
    if app in apps:
        return apps[app]
    choices = ", ".join(sorted(apps)) or "none configured"
    if ":" in app and not allow_import_paths:
        raise ValueError(
            f"app {_quoted(app)}: import paths are disabled here (allow_import_paths = false); "
            f"name one of [apps] ({choices})"
        )
    if ":" in app and len(app) > _MAX_APP:
        raise ValueError(f"app {_quoted(app)}: an import path has at most {_MAX_APP} characters")
    if ":" in app:
        return app
    raise ValueError(
        f"unknown app {_quoted(app)}: name one of [apps] ({choices}) "
        "or give an import path 'package.module:attribute'"
    )


def admit(
    entry: Mapping[str, str],
    apps: Mapping[str, str],
    *,
    allow_import_paths: bool,
    default_timeout_s: float | None,
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
) -> RunRequest:
    """The run an entry asks for; :class:`Rejected` says why not."""
    task_id = entry.get("task_id") or ""
    if not task_id:
        raise Rejected("missing task_id", None)
    if len(task_id) > _MAX_TASK_ID:
        raise Rejected(
            f"invalid task id {_quoted(task_id)}: longer than {_MAX_TASK_ID} characters", None
        )
    try:
        check_task_id(task_id)
    except InvalidTaskIdError as exc:
        # An id that cannot name a task must not touch any record.
        raise Rejected(str(exc), None) from None
    try:
        for name in _REQUIRED:
            if not entry.get(name):
                raise ValueError(f"missing {name}")
        app_ref = resolve_app(entry["app"], apps, allow_import_paths)
        raw_timeout = entry.get("timeout")
        try:
            timeout = float(raw_timeout) if raw_timeout else default_timeout_s
        except ValueError:
            raise ValueError(
                f"timeout must be a number of seconds, got {_quoted(raw_timeout or '')}"
            ) from None
        if timeout is not None and not (0 < timeout < math.inf):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
        run_input = parse_input(entry, max_input_bytes)
        traceparent = check_traceparent(entry["traceparent"]) if entry.get("traceparent") else None
        if_busy = entry.get("if_busy") or "wait"
        if if_busy not in IF_BUSY_CHOICES:
            raise ValueError(
                f"if_busy must be one of {', '.join(IF_BUSY_CHOICES)}, got {_quoted(if_busy)}"
            )
    except ValueError as exc:
        raise Rejected(str(exc), task_id) from None
    return RunRequest(
        task_id=task_id,
        app=entry["app"],
        app_ref=app_ref,
        user_id=entry["user_id"],
        session_id=entry.get("session_id") or task_id,
        input=run_input,
        timeout_s=timeout,
        traceparent=traceparent,
        if_busy="refuse" if if_busy == "refuse" else "wait",  # narrowed for the type
    )
