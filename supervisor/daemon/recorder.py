"""The recorder: writes this node's transitions, and keeps them in order while Redis is away.

A transition that cannot reach Redis goes to the outbox, and every later one
queues behind it, so a record never sees ``aborted`` before ``running``. The
outbox lives in memory: a daemon killed while it holds entries leaves those
records to the next reconcile (which fails them as orphaned).
"""

from __future__ import annotations

import logging
import time
from collections import deque

import anyio
from anyio.abc import TaskStatus
from redis.exceptions import ResponseError

from agent_runtime.redis_connection import REDIS_ERRORS, describe_reply, wrong_type
from agent_runtime.task_store import TaskState, TaskStore

from .metrics import NodeMetrics

__all__ = ["Recorder"]

log = logging.getLogger("adk_supervisor")

_RETRY_S = 0.2


class Recorder:
    """Writes transitions now, or later in order; :meth:`run` is the flusher."""

    def __init__(
        self, store: TaskStore, node_tasks_key: str, metrics: NodeMetrics | None = None
    ) -> None:
        self._store = store
        self._metrics = metrics or NodeMetrics()
        self._node_tasks_key = node_tasks_key
        self._outbox: deque[tuple[str, TaskState, dict[str, object], int | None]] = deque()
        self._wake = anyio.Event()
        self._empty = anyio.Event()
        self._empty.set()

    @property
    def backlog(self) -> int:
        """Transitions waiting for Redis."""
        return len(self._outbox)

    async def record(
        self,
        task_id: str,
        state: TaskState,
        fields: dict[str, object],
        *,
        epoch: int | None = None,
    ) -> None:
        """Writes a transition now, or keeps it in order until Redis is back. Never raises
        for Redis trouble. ``epoch``: a durable run's, written only while it is current."""
        if state.terminal:
            self._metrics.recorded_end(task_id, state)
            # When it ended, not when Redis took it: the outbox may hold it for minutes.
            fields = {"ended_at": repr(time.time()), **fields}
        if not self._outbox:
            try:
                await self._write(task_id, state, fields, epoch)
                return
            except REDIS_ERRORS as exc:
                log.warning("Redis unreachable (%s): keeping %s=%s for later", exc, task_id, state)
            except Exception:
                # redis-py itself can fail mid-failover (an AttributeError from a connection
                # closed under a connect, seen with 8.1): a run's end is kept, never dropped.
                log.exception("writing %s=%s failed: keeping it for later", task_id, state)
        self._outbox.append((task_id, state, fields, epoch))
        if self._empty.is_set():
            self._empty = anyio.Event()
        self._wake.set()

    async def track(self, task_id: str) -> bool:
        """Adds a run to this node's task set (what reconcile and peers read); True if added.

        A set of the wrong type (anyone can write one) is logged and the run goes on:
        the set only lets a restart or a peer find the run, should this daemon die.
        """
        try:
            return bool(await self._store.client.sadd(self._node_tasks_key, task_id))
        except ResponseError as exc:
            if not wrong_type(exc):
                raise
            log.error(
                "task %s: %s; a crash would leave it to no reconcile",
                task_id,
                describe_reply(self._node_tasks_key, exc),
            )
            return False

    async def wait_flushed(self, timeout_s: float) -> bool:
        """Waits up to ``timeout_s`` for the outbox to empty; True if it did."""
        with anyio.move_on_after(timeout_s):
            await self._empty.wait()
        return self._empty.is_set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Flushes the outbox whenever it has entries, until cancelled."""
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            while self._outbox:
                task_id, state, fields, epoch = self._outbox[0]
                try:
                    await self._write(task_id, state, fields, epoch)
                except REDIS_ERRORS:
                    await anyio.sleep(_RETRY_S)
                    continue
                except Exception:  # as in record(): kept, retried
                    log.exception("writing %s=%s failed: retrying", task_id, state)
                    await anyio.sleep(_RETRY_S)
                    continue
                self._outbox.popleft()
                log.info("task %s: %s written after Redis came back", task_id, state)
            self._empty.set()

    async def _write(
        self, task_id: str, state: TaskState, fields: dict[str, object], epoch: int | None
    ) -> None:
        # A key of the wrong type (anyone can write one) is no outage: retried, it would
        # hold every later transition of every run behind it for good.
        try:
            result = await self._store.transition(task_id, state, fields, epoch=epoch)
        except ResponseError as exc:
            if not wrong_type(exc):
                raise
            key = self._store.keys.task(task_id)
            log.error("task %s: %s not recorded: %s", task_id, state, describe_reply(key, exc))
        else:
            if not result.applied:
                log.info("task %s: %s not recorded, already %s", task_id, state, result.previous)
        if state.terminal:
            try:
                await self._store.client.srem(self._node_tasks_key, task_id)
            except ResponseError as exc:
                if not wrong_type(exc):
                    raise
                log.error("task %s: %s", task_id, describe_reply(self._node_tasks_key, exc))
