"""Durable runs inside the run's process: the tool-call journal and the resume of an invocation.

A run of an app with ``on_orphan = "resume"`` carries its epoch (raised by
every resume, see :meth:`agent_runtime.task_store.TaskStore.resume`). Its
child adds :class:`JournalPlugin` to the app, which

- records the invocation id in the task record before the user message lands
  in the session, so a resume never sends that message twice;
- writes a durable ``started@<epoch>`` mark for each function call before its
  tool runs, refused (:class:`FencedWriteError`) if the run was resumed since.

A resumed run (epoch above 0) first looks at its invocation's calls that have
no response (:func:`prepare_resume`): one that never started is left to ADK,
which runs it (it never ran: at most once holds); one that started runs again
only if its tool is idempotent, with the same idempotency key
(:func:`idempotency_key`); any other is answered with an "outcome unknown"
error response, and ADK continues with the model without running it again.

A durable run with a workspace (``workspace = true``) also stores a tar of its
working directory after each tool call (fenced like the journal, skipped and
logged when over the cap), and a resumed one restores the latest before it
continues (:func:`restore_workspace`, refusing an unsafe or altered snapshot).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import redis.asyncio as aioredis
from google.adk.agents.invocation_context import InvocationContext
from google.adk.events.event import Event
from google.adk.plugins.base_plugin import BasePlugin
from google.adk.sessions.session import Session
from google.adk.tools.base_tool import BaseTool
from google.adk.tools.tool_context import ToolContext
from google.genai import types

from .keys import KeySchema
from .redis_connection import as_text
from .run_spec import RESUMABLE_CHECK_MARK, TASK_ENV
from .sessions.service import FencedWriteError, RedisSessionService
from .workspace import Snapshot, SnapshotTooLargeError, UnsafeSnapshotError, pack, restore

__all__ = [
    "IDEMPOTENCY_STATE_KEY",
    "OUTCOME_UNKNOWN",
    "FencedWrites",
    "JournalPlugin",
    "ResumePlan",
    "idempotency_key",
    "prepare_resume",
    "restore_workspace",
    "resumable_problem",
]

OUTCOME_UNKNOWN: Final = "outcome unknown: the process running this tool died"
IDEMPOTENCY_STATE_KEY: Final = "temp:adk_supervisor_idempotency_key"
"""Session state key (temporary: never persisted) holding the running tool's idempotency key."""

# KEYS: journal or task record. ARGV: epoch key, epoch, then field/value pairs to set.
# The write is refused unless the run is still at its epoch (absent reads as 0). The epoch
# key is an argument: the run's ACL user may only read it, and Redis refuses a read-only
# key declared to a script.
_FENCED_HSET: Final = r"""
local current = redis.pcall('GET', ARGV[1])
if type(current) ~= 'string' then current = '0' end
if current ~= ARGV[2] then
  return {'FENCED', current}
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
return {'OK', current}
"""


def idempotency_key(tool_context: ToolContext) -> str:
    """``<task_id>:<function_call_id>`` of the running tool call: the same in every attempt
    of a durable run that runs the call again, so the tool can make its effect once."""
    return f"{os.environ.get(TASK_ENV, '')}:{tool_context.function_call_id or ''}"


class FencedWrites:
    """Hash writes of one run, each checked against the run's epoch in the same script."""

    def __init__(self, client: aioredis.Redis, keys: KeySchema, task_id: str, epoch: int) -> None:
        self._script = client.register_script(_FENCED_HSET)
        self._epoch_key = keys.task_epoch(task_id)
        self.epoch = epoch

    async def hset(self, key: str, fields: Mapping[str, str | bytes]) -> None:
        """Sets ``fields`` of hash ``key``; :class:`FencedWriteError` if the run moved on."""
        flat = [item for pair in fields.items() for item in pair]
        status, current = await self._script(
            keys=[key], args=[self._epoch_key, str(self.epoch), *flat]
        )
        if as_text(status) == "FENCED":
            raise FencedWriteError(
                f"write to {key} refused: the run was resumed elsewhere (epoch "
                f"{as_text(current)[:20]}, this process has {self.epoch})"
            )


class JournalPlugin(BasePlugin):
    """Records the invocation id and a ``started`` mark per tool call, fenced by the epoch."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: KeySchema,
        task_id: str,
        epoch: int,
        workspace: Path | None = None,
        snapshot_max_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        super().__init__(name="adk_supervisor_journal")
        self._writes = FencedWrites(client, keys, task_id, epoch)
        self._record = keys.task(task_id)
        self._journal = keys.tool_journal(task_id)
        self._snapshot_key = keys.workspace_snapshot(task_id)
        self._task_id = task_id
        self._workspace = workspace
        self._snapshot_max_bytes = snapshot_max_bytes

    async def on_user_message_callback(
        self, *, invocation_context: InvocationContext, user_message: types.Content
    ) -> types.Content | None:
        # Before the message is in the session: a resume then knows which invocation to
        # continue, and finding none of its events, that the message never landed.
        await self._writes.hset(self._record, {"invocation_id": invocation_context.invocation_id})
        return None

    async def before_tool_callback(
        self, *, tool: BaseTool, tool_args: dict[str, Any], tool_context: ToolContext
    ) -> dict[str, Any] | None:
        call_id = tool_context.function_call_id or ""
        await self._writes.hset(self._journal, {call_id: f"started@{self._writes.epoch}"})
        tool_context.state[IDEMPOTENCY_STATE_KEY] = f"{self._task_id}:{call_id}"
        return None

    async def after_tool_callback(
        self,
        *,
        tool: BaseTool,
        tool_args: dict[str, Any],
        tool_context: ToolContext,
        result: dict[str, Any],
    ) -> dict[str, Any] | None:
        await self._snapshot(tool.name)
        return None

    async def on_tool_error_callback(
        self,
        *,
        tool: BaseTool,
        tool_args: dict[str, Any],
        tool_context: ToolContext,
        error: Exception,
    ) -> dict[str, Any] | None:
        await self._snapshot(tool.name)  # a tool that raised may have written files first
        return None

    async def _snapshot(self, tool_name: str) -> None:
        if self._workspace is None:
            return
        try:
            snapshot = await asyncio.to_thread(pack, self._workspace, self._snapshot_max_bytes)
        except SnapshotTooLargeError as exc:
            # The last snapshot that fit stays: a resume restores that one.
            print(
                f"workspace snapshot skipped after tool {tool_name}: {exc} "
                "(workspace_snapshot_max_bytes)",
                file=sys.stderr,
                flush=True,
            )
            return
        await self._writes.hset(
            self._snapshot_key,
            {"sha256": snapshot.sha256, "tar": snapshot.data, "epoch": str(self._writes.epoch)},
        )


@dataclass(frozen=True, slots=True)
class ResumePlan:
    """What :func:`prepare_resume` found and did."""

    has_events: bool
    """Whether the invocation has events in the session (else the run starts afresh)."""
    replayed: tuple[str, ...] = ()
    """Calls left for ADK to run again (never started, or idempotent)."""
    unknown: tuple[str, ...] = ()
    """Calls answered with :data:`OUTCOME_UNKNOWN`."""


async def prepare_resume(
    sessions: RedisSessionService,
    session: Session,
    invocation_id: str,
    journal: dict[str, str],
    idempotent_tools: Collection[str],
) -> ResumePlan:
    """Answers the invocation's started, unanswered calls of non-idempotent tools with an
    "outcome unknown" error response (appended through ``sessions``, so fenced too)."""
    events = [e for e in session.events if e.invocation_id == invocation_id]
    if not events:
        return ResumePlan(False)
    answered = {r.id for e in events for r in e.get_function_responses() if r.id}
    replayed: list[str] = []
    unknown: list[tuple[Event, types.FunctionCall]] = []
    for event in events:
        for call in event.get_function_calls():
            if not call.id or call.id in answered:
                continue
            started = call.id in journal
            if not started or call.name in idempotent_tools:
                replayed.append(call.id)
            else:
                unknown.append((event, call))
    for event, call in unknown:
        answer = Event(
            invocation_id=invocation_id,
            author=event.author,
            branch=event.branch,
            isolation_scope=event.isolation_scope,
            content=types.Content(
                role="user",
                parts=[
                    types.Part(
                        function_response=types.FunctionResponse(
                            id=call.id, name=call.name, response={"error": OUTCOME_UNKNOWN}
                        )
                    )
                ],
            ),
        )
        await sessions.append_event(session=session, event=answer)
    return ResumePlan(True, tuple(replayed), tuple(c.id or "" for _, c in unknown))


async def restore_workspace(
    client: aioredis.Redis, keys: KeySchema, task_id: str, directory: Path, max_bytes: int
) -> int | None:
    """Restores the run's latest workspace snapshot into the empty ``directory``; returns its
    member count, or None if the run has none. Raises :class:`UnsafeSnapshotError` (with
    ``not resumed:`` first) if the snapshot is malformed, altered or unsafe to extract."""
    raw = await client.hgetall(keys.workspace_snapshot(task_id))
    if not raw:
        return None
    fields = {as_text(k): v for k, v in raw.items()}
    data, digest = fields.get("tar"), fields.get("sha256")
    if not isinstance(data, bytes) or digest is None:
        raise UnsafeSnapshotError("not resumed: the workspace snapshot lacks its tar or its sha256")
    try:
        return await asyncio.to_thread(
            restore, Snapshot(data, as_text(digest)), directory, max_bytes
        )
    except UnsafeSnapshotError as exc:
        raise UnsafeSnapshotError(f"not resumed: workspace {exc}") from exc


def resumable_problem(ref: str, name: str | None) -> str | None:
    """Why the app at ``ref`` cannot have its runs resumed, or None if it can (imports it)."""
    from .app_loader import AppRefError, load_app

    try:
        loaded = load_app(ref, name)
    except AppRefError as exc:
        return str(exc)
    config = loaded.app.resumability_config if loaded.app is not None else None
    if config is None or not config.is_resumable:
        what = "an App" if loaded.app is not None else f"a bare agent ({ref})"
        return (
            f"{what} that is not resumable: ADK given an invocation id then silently restarts "
            "the whole invocation. Wrap it as App(..., resumability_config="
            "ResumabilityConfig(is_resumable=True)) (google.adk.apps), or set "
            'on_orphan = "fail"'
        )
    return None


def main(argv: list[str]) -> int:
    """``python -m agent_runtime.durable REF NAME [REF NAME ...]``: prints one line per app,
    ``<mark><TAB>NAME<TAB>ok`` or ``<mark><TAB>NAME<TAB>why it cannot be resumed``
    (:data:`RESUMABLE_CHECK_MARK` tells them from what an app prints as it is imported);
    exit 1 if any cannot.

    The daemon and check-config run it in one subprocess for every durable app, so
    neither imports ADK or an app itself, and ADK is imported once, not once per app.
    An app missing from the output was not checked (the interpreter died first).
    """
    if len(argv) % 2:
        argv = [*argv, ""]
    failed = False
    for ref, name in zip(argv[::2], argv[1::2], strict=True):
        problem = resumable_problem(ref, name or None)
        verdict = " ".join(problem.split()) if problem else "ok"
        print(f"{RESUMABLE_CHECK_MARK}\t{name}\t{verdict}", flush=True)
        failed = failed or problem is not None
    return 1 if failed else 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
