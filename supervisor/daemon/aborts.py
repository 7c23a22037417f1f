"""The daemon's end of the abort feed: every abort goes to the run table, at once.

Besides the live feed, the durable abort marks of every run are re-read every
``recheck_interval_s``: a pub/sub link can be silently half-open (an idle NAT
flow dropped), and the marks bound how late an abort can be, whatever happens.

An abort of a run this node does not run may be for a run waiting in its
session's line (one live run per session): with a task store, it is recorded
``aborted`` and taken out of the line at once, a bare PUBLISH as well as
``adk-supervisor abort`` (every daemon tries; the script applies it once).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import anyio
import redis.asyncio as aioredis
from anyio.abc import TaskGroup, TaskStatus

from agent_runtime.abort_feed import Abort, AbortFeed
from agent_runtime.redis_connection import REDIS_ERRORS, WrongTypeError
from agent_runtime.task_store import TaskStore

from .metrics import NodeMetrics
from .runs import RunTable

__all__ = ["AbortListener"]

log = logging.getLogger("adk_supervisor")


class AbortListener:
    """Feeds aborts to a :class:`RunTable`; :meth:`run` serves until cancelled."""

    def __init__(
        self,
        client: aioredis.Redis,
        key_prefix: str,
        runs: RunTable,
        recheck_interval_s: float,
        *,
        store: TaskStore | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._runs = runs
        self._metrics = metrics or NodeMetrics()
        self._interval = recheck_interval_s
        self._feed = AbortFeed(client, key_prefix, self._on_abort, runs.ids)
        self._store = store
        self._tg: TaskGroup | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The feed and the periodic mark re-check; started once the feed is subscribed."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            await tg.start(self._feed.run)
            task_status.started()
            while True:
                await anyio.sleep(self._interval)
                try:
                    await self._feed.recheck()
                except REDIS_ERRORS as exc:
                    log.debug("abort mark re-check skipped: %s", exc)
                except Exception:  # the loop must outlive anything one pass meets
                    log.exception("abort mark re-check failed; retrying at the next one")

    async def recheck(self, task_ids: Iterable[str] | None = None) -> None:
        """Applies the durable marks of ``task_ids`` (default: every run) now; raises Redis errors."""
        await self._feed.recheck(task_ids)

    def _on_abort(self, abort: Abort) -> None:
        done = self._runs.abort(abort.task_id, abort.reason)
        if done == "unknown":
            if self._store is not None and self._tg is not None:
                self._tg.start_soon(self._abort_waiting, abort)
            else:
                log.info("abort for %s: not running on this node, ignored", abort.task_id)
            return
        if done == "parked":
            log.info("abort for %s: arrived while it starts; killed once spawned", abort.task_id)
            return
        latency = time.monotonic() - abort.received
        self._metrics.abort_kill(latency)
        log.info("abort %s: kill sent %.2f ms after receipt", abort.task_id, latency * 1000)

    async def _abort_waiting(self, abort: Abort) -> None:
        """Records ``aborted`` for a run waiting in its session's line (no process to kill)."""
        assert self._store is not None
        try:
            moved = await self._store.abort_waiting(abort.task_id, abort.reason)
        except WrongTypeError as exc:  # no record of ours there: nothing waits
            log.info("abort for %s: not running on this node, ignored (%s)", abort.task_id, exc)
            return
        except REDIS_ERRORS as exc:
            # Its durable mark, if any, still stops it before it starts.
            log.warning(
                "abort for %s: cannot look for it in a session line (%s)", abort.task_id, exc
            )
            return
        if moved.applied:
            log.info("abort for %s: was waiting for its session; recorded aborted", abort.task_id)
        else:
            log.info("abort for %s: not running on this node, ignored", abort.task_id)
