"""Which runs of a session are live, for ``POST .../sessions/{id}:cancel``.

A session has one live run at a time: the run holding its lease, then the runs
waiting in its queue, in submit order (``<prefix>{<prefix>}session-lease:...`` and
``<prefix>{<prefix>}session-queue:...``, kept by the task store's scripts for every run,
whatever entry point submitted it). Both are read as untrusted: a member
counts only while its task record names this session and is not terminal.
"""

from __future__ import annotations

from agent_runtime.redis_connection import as_text
from agent_runtime.task_store import (
    TERMINAL_STATES,
    InvalidTaskIdError,
    SessionRef,
    TaskStore,
    check_task_id,
)

__all__ = ["live_runs"]

_MAX_QUEUED = 1000


async def live_runs(store: TaskStore, session: SessionRef) -> list[str]:
    """The session's live run and the runs waiting for it, in the order they would run."""
    async with store.client.pipeline(transaction=False) as pipe:
        pipe.get(store.keys.session_lease(*session))
        pipe.lrange(store.keys.session_queue(*session), 0, _MAX_QUEUED - 1)
        holder, queued = await pipe.execute(raise_on_error=False)
    members = [holder] if isinstance(holder, bytes | str) else []
    members += queued if isinstance(queued, list) else []
    candidates: list[str] = []
    for member in members:
        if not isinstance(member, bytes | str):
            continue
        try:
            task_id = check_task_id(as_text(member))
        except InvalidTaskIdError:
            continue
        if task_id not in candidates:
            candidates.append(task_id)
    records = await store.get_many(candidates)
    return [
        task_id
        for task_id, record in zip(candidates, records, strict=True)
        if record is not None
        and record.get("state") not in TERMINAL_STATES
        and (record.get("app"), record.get("user_id"), record.get("session_id")) == session
    ]
