"""The node's live runs' CPU and memory, published to Redis for the gateway's console.

A console on any host cannot read this node's /proc, so every
``heartbeat_interval_s`` the node writes one small hash,
``<prefix>{<prefix>}node:<id>:usage`` (field = task id, value = JSON ``pid``, ``rss``
bytes, ``cpu_s`` seconds and ``cpu_pct`` over the last interval, of the run's
whole tree), replaced whole in one transaction and expiring after three
intervals, so a dead node's figures vanish with it. The /proc reads (about
0.3 ms a process) run in a worker thread, as ``status`` does; an idle node
writes nothing after its first empty beat. Redis out of reach skips a beat:
the figures are for display only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable

import anyio
import redis.asyncio as aioredis
from anyio.abc import TaskStatus

from agent_runtime.redis_connection import REDIS_ERRORS

from .runs import ActiveRun
from .status import tree_usage

__all__ = ["UsageBoard"]

log = logging.getLogger("adk_supervisor")

_WRITE_TIMEOUT_S = 2.0


class UsageBoard:
    """Publishes the live runs' tree usage to ``key`` every ``interval_s`` (see the module)."""

    def __init__(
        self,
        client: aioredis.Redis,
        key: str,
        interval_s: float,
        runs: Callable[[], Iterable[ActiveRun]],
    ) -> None:
        self._client = client
        self._key = key
        self._interval = interval_s
        self._ttl_ms = max(1000, int(interval_s * 3000))
        self._runs = runs
        self._cpu_seen: dict[str, tuple[float, float]] = {}
        self._wrote_empty = False

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Publishes until cancelled."""
        task_status.started()
        while True:
            await self.publish()
            await anyio.sleep(self._interval)

    async def publish(self) -> None:
        """Reads the live runs' usage and replaces the node's hash with it, once."""
        runs = [(r.task_id, r.pid, r.pid if r.pidfd is not None else None) for r in self._runs()]
        if not runs and self._wrote_empty:
            return
        # A reaped leader's PID may name someone else by now: nothing is read for it.
        usage = await anyio.to_thread.run_sync(
            lambda: [(0, 0.0) if pid is None else tree_usage(pid) for _, _, pid in runs]
        )
        now = time.monotonic()
        seen: dict[str, tuple[float, float]] = {}
        fields: dict[str, str] = {}
        for (task_id, pid, _), (rss, cpu_s) in zip(runs, usage, strict=True):
            seen[task_id] = (now, cpu_s)
            before = self._cpu_seen.get(task_id)
            pct = None
            if before is not None and now > before[0]:
                pct = round(max(0.0, cpu_s - before[1]) / (now - before[0]) * 100, 1)
            fields[task_id] = json.dumps(
                {"pid": pid, "rss": rss, "cpu_s": round(cpu_s, 3), "cpu_pct": pct}
            )
        self._cpu_seen = seen
        with anyio.move_on_after(_WRITE_TIMEOUT_S), contextlib.suppress(*REDIS_ERRORS):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(self._key)
                if fields:
                    pipe.hset(self._key, mapping=fields)  # type: ignore[arg-type]
                    pipe.pexpire(self._key, self._ttl_ms)
                await pipe.execute()
            self._wrote_empty = not fields
