"""Python client of the supervisor: submit, abort, read and wait for tasks, over Redis alone.

Imports neither the daemon nor ADK, so a bot or a CLI call that only submits
and waits loads what it needs in milliseconds.
"""

from __future__ import annotations

import uuid
from typing import Any, Self

import anyio
import redis.asyncio as aioredis

from agent_runtime.keys import DEFAULT_PREFIX
from agent_runtime.redis_connection import connect
from agent_runtime.task_store import TERMINAL_STATES, TaskState, TaskStore, check_task_id

from .errors import TaskExistsError, TaskNotFoundError

__all__ = ["SupervisorClient", "submit_task"]


async def submit_task(
    store: TaskStore,
    app: str,
    message: str,
    *,
    user_id: str,
    session_id: str | None = None,
    task_id: str | None = None,
    timeout_s: float | None = None,
) -> str:
    """Creates the ``queued`` record and XADDs the run to the runs stream; returns the task id.

    Shared by :class:`SupervisorClient` and the daemon's status socket, so both
    queue runs exactly alike.
    """
    task_id = check_task_id(task_id) if task_id else uuid.uuid4().hex
    fields: dict[str, object] = {
        "app": app,
        "user_id": user_id,
        "session_id": session_id or task_id,
    }
    if timeout_s is not None:
        fields["timeout_s"] = timeout_s
    created = await store.create(task_id, TaskState.QUEUED, fields)
    if not created.applied:
        raise TaskExistsError(f"task {task_id} already exists (state {created.previous})")
    entry: dict[str, str] = {"task_id": task_id, "app": app, "user_id": user_id, "message": message}
    if session_id:
        entry["session_id"] = session_id
    if timeout_s is not None:
        entry["timeout"] = str(timeout_s)
    await store.client.xadd(store.keys.runs, entry)  # type: ignore[arg-type]
    return task_id


class SupervisorClient:
    """Talks to every supervisor sharing one Redis (any host)."""

    def __init__(self, redis_url: str, key_prefix: str = DEFAULT_PREFIX) -> None:
        self.client: aioredis.Redis = connect(redis_url)
        self.store = TaskStore(self.client, key_prefix)

    async def close(self) -> None:
        """Closes the Redis connections."""
        await self.client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def submit(
        self,
        app: str,
        message: str,
        *,
        user_id: str,
        session_id: str | None = None,
        task_id: str | None = None,
        timeout_s: float | None = None,
    ) -> str:
        """Queues a run and returns its task id (the record is ``queued`` at once)."""
        return await submit_task(
            self.store,
            app,
            message,
            user_id=user_id,
            session_id=session_id,
            task_id=task_id,
            timeout_s=timeout_s,
        )

    async def abort(self, task_id: str, reason: str = "") -> int:
        """Aborts a task (durably: also before it starts); returns how many daemons heard it live."""
        return await self.store.request_abort(task_id, reason)

    async def get(self, task_id: str) -> dict[str, str]:
        """The task record; :class:`TaskNotFoundError` if there is none."""
        record = await self.store.get(task_id)
        if record is None:
            raise TaskNotFoundError(f"no task {task_id!r}")
        return record

    async def wait(self, task_id: str, timeout_s: float | None = None) -> dict[str, str]:
        """Waits until the task is terminal and returns its record (TimeoutError after ``timeout_s``)."""
        pubsub: Any = self.client.pubsub()
        await pubsub.subscribe(self.store.keys.task_channel(task_id))
        try:
            with anyio.fail_after(timeout_s):
                while True:
                    record = await self.get(task_id)
                    if record.get("state") in TERMINAL_STATES:
                        return record
                    await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        finally:
            await pubsub.aclose()
