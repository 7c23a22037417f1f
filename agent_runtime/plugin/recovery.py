"""Process heartbeats and crash recovery for tasks the orchestration plugin runs in-process.

Every process running the plugin owns the tasks it registers: the hash
``<prefix>{<prefix>}plugin-running`` maps each ``running`` task id to its owner (so
recovery never SCANs), and the owner keeps ``<prefix>{<prefix>}plugin-heartbeat:<owner>``
alive with a TTL. A process whose heartbeat expired is dead; :func:`recover_dead`
fails its tasks through the task store's compare-and-set (``failed`` only from
``running``), so when several processes recover at once each task is failed
exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from ..keys import KeySchema
from ..redis_connection import REDIS_ERRORS, as_text, wrong_type
from ..task_store import TaskState, TaskStore
from ._tasks import stop_task

__all__ = [
    "ProcessHeartbeat",
    "RecoveredTask",
    "drop_owned",
    "new_owner_id",
    "recover_dead",
]

log = logging.getLogger("adk_supervisor")

# KEYS: index hash. ARGV: owner, task ids. Removes the entries still owned by ARGV[1].
_DROP_OWNED = r"""
local n = 0
for i = 2, #ARGV do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[1] then
    n = n + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return n
"""


def new_owner_id() -> str:
    """A process identity that PID reuse cannot repeat: host, PID and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


async def drop_owned(client: aioredis.Redis, key_prefix: str, owner: str, *task_ids: str) -> int:
    """Removes the running-index entries of ``task_ids`` that ``owner`` still holds.

    A compare-and-delete: an entry another owner registered under the same task
    id is left alone. Returns how many entries were removed.
    """
    if not task_ids:
        return 0
    removed = await client.eval(
        _DROP_OWNED, 1, KeySchema(key_prefix).plugin_running, owner, *task_ids
    )
    return int(removed)


class ProcessHeartbeat:
    """Refreshes this process's heartbeat key every ``ttl_s / 3`` seconds until stopped.

    ``on_beat``, if given, is awaited after every heartbeat that was written: the
    plugin retries its pending terminal writes there, while Redis is known to answer.
    """

    def __init__(
        self,
        store: TaskStore,
        owner: str,
        ttl_s: float,
        on_beat: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.owner = owner
        self.on_beat = on_beat
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.key = store.keys.plugin_heartbeat(owner)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def beat(self) -> None:
        """Writes the heartbeat once."""
        value = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "at": time.time()})
        await self.store.client.set(self.key, value, px=self.ttl_ms)

    async def _run(self) -> None:
        # The loop must outlive any one failure: once it stops, the key expires and
        # other processes fail this live process's tasks. Only cancellation ends it.
        while not self._stopping:
            beaten = False
            try:
                await self.beat()
                beaten = True
            except REDIS_ERRORS as exc:  # down, or an error reply (OOM, READONLY, ...)
                log.warning("plugin heartbeat not written (%s); retrying", exc)
            except Exception:
                log.exception("plugin heartbeat failed unexpectedly; retrying")
            if beaten and self.on_beat is not None:
                try:
                    await self.on_beat()
                except Exception:
                    log.exception("plugin heartbeat hook failed; retrying at the next beat")
            await asyncio.sleep(self.ttl_ms / 3000)

    def start(self) -> None:
        """Starts the refresh loop on the running event loop (idempotent)."""
        if self._task is None or self._task.done():
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"adk-plugin-heartbeat:{self.owner}"
            )

    async def stop(self) -> None:
        """Stops refreshing and deletes the key (a clean exit is not a crash)."""
        self._stopping = True
        await stop_task(self._task)
        self._task = None
        with contextlib.suppress(*REDIS_ERRORS):
            await self.store.client.delete(self.key)


@dataclass(frozen=True, slots=True)
class RecoveredTask:
    """A task this process moved to ``failed`` because its owner died."""

    task_id: str
    owner: str
    reason: str


async def recover_dead(store: TaskStore, me: str) -> list[RecoveredTask]:
    """Fails the ``running`` tasks of every owner whose heartbeat expired; returns those moved.

    Only the transitions this process applied are returned: a task another
    recovering process failed first (or that ended meanwhile) is not.
    """
    index = store.keys.plugin_running
    raw = await store.client.hgetall(index)
    by_owner: dict[str, list[str]] = {}
    for task_id, owner in raw.items():
        by_owner.setdefault(as_text(owner), []).append(as_text(task_id))
    owners = [o for o in by_owner if o != me]
    if not owners:
        return []
    async with store.client.pipeline(transaction=False) as pipe:
        for owner in owners:
            pipe.exists(store.keys.plugin_heartbeat(owner))
        alive = await pipe.execute()
    recovered: list[RecoveredTask] = []
    for owner, live in zip(owners, alive, strict=True):
        if live:
            continue
        reason = f"recovered: process {owner} stopped heartbeating while running the task"
        for task_id in by_owner[owner]:
            try:
                moved = await store.transition(
                    task_id,
                    TaskState.FAILED,
                    {"reason": reason, "recovered_by": me},
                    allowed_from=(TaskState.RUNNING,),
                )
            except ResponseError as exc:
                if not wrong_type(exc):
                    raise
                # Left alone (and its entry dropped below): retried, it would stop every
                # pass here, before the tasks of every owner after it.
                log.error("crash recovery: %s; its index entry is dropped", exc)
                continue
            if moved.applied:
                recovered.append(RecoveredTask(task_id, owner, reason))
                log.warning("task %s failed by crash recovery: %s", task_id, reason)
        await drop_owned(store.client, store.key_prefix, owner, *by_owner[owner])
    return recovered
