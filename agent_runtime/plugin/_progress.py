"""The plugin's progress writes: every live invocation's, coalesced into one pipeline per round.

One invocation's progress changes at every event; with a write (and a task, and a
pooled connection held until the loop gets round to reading the reply) per
invocation, 100 live invocations kept the client's pool full and the event loop's
ready queue long, and a terminal write queued behind them. Here one owned task
writes every invocation marked since its last round, in one pipelined round trip,
so progress holds one connection whatever the number of invocations, and a
terminal write never waits for it: each progress write only lands on a record that
is not terminal (checked in the write's own script), so one still in flight when
the terminal write goes out cannot overwrite the final figures.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

import redis.asyncio as aioredis

from ..keys import KeySchema
from ..redis_connection import REDIS_ERRORS
from ..task_store import TERMINAL_STATES
from ._tasks import stop_task

__all__ = ["ProgressWriter"]

log = logging.getLogger("adk_supervisor")

_BATCH = 500
"""Records written in one pipeline at most."""

# KEYS: the task record. ARGV: field, value, ... Sets them only while the record is
# live: not on a terminal record, and never creating one that is gone.
_LIVE_HSET = (
    "local state = redis.call('HGET', KEYS[1], 'state')\n"
    "if not state"
    + "".join(f" or state == '{s.value}'" for s in sorted(TERMINAL_STATES))
    + " then return 0 end\n"
    "redis.call('HSET', KEYS[1], unpack(ARGV))\n"
    "return 1\n"
)

Fields = Callable[[], Mapping[str, object]]
"""Gives an invocation's progress fields as they are when its write goes out."""


class ProgressWriter:
    """Coalesces the progress writes of many task records onto one task and one connection."""

    def __init__(self, client: aioredis.Redis, keys: KeySchema) -> None:
        self._keys = keys
        self._client = client
        self._marked: dict[str, Fields] = {}
        self._in_flight: set[str] = set()
        self._written = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def mark(self, task_id: str, fields: Fields) -> None:
        """Schedules a write of ``task_id``'s progress; never blocks the caller."""
        if self._closed:
            return
        self._marked[task_id] = fields
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="adk-plugin-progress"
            )

    async def write_last(self, task_id: str, fields: Mapping[str, object]) -> None:
        """Writes ``task_id``'s final fields now, after any of its writes already sent, and
        only on a live record, as every progress write; raises on Redis trouble."""
        self._marked.pop(task_id, None)
        while task_id in self._in_flight and self._task is not None and not self._task.done():
            await self._written.wait()
        flat = _flat(fields)
        if flat:
            await self._client.eval(_LIVE_HSET, 1, self._keys.task(task_id), *flat)

    def forget(self, task_id: str) -> None:
        """Drops ``task_id``'s pending write; one already sent is left to land (or not)."""
        self._marked.pop(task_id, None)

    async def flush(self) -> None:
        """Waits until every write marked so far has been sent and answered (or failed)."""
        while self._task is not None and not self._task.done():
            await asyncio.wait({self._task})

    async def close(self) -> None:
        """Stops writing; what is still marked is dropped."""
        self._closed = True
        self._marked.clear()
        await stop_task(self._task)
        self._task = None

    async def _run(self) -> None:
        while self._marked and not self._closed:
            batch = list(self._marked.items())[:_BATCH]
            for task_id, _ in batch:
                del self._marked[task_id]
            self._in_flight = {task_id for task_id, _ in batch}
            self._written.clear()
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for task_id, fields in batch:
                        flat = _flat(fields())
                        if flat:
                            # EVAL, not a registered script: redis-py's pipeline asks
                            # SCRIPT EXISTS in a round trip of its own before each batch.
                            pipe.eval(_LIVE_HSET, 1, self._keys.task(task_id), *flat)
                    # A record of the wrong type (anyone can write one) only loses its progress.
                    await pipe.execute(raise_on_error=False)
            except REDIS_ERRORS as exc:
                # Progress is informational: the next mark writes it again.
                log.debug("progress of %d tasks not written (%s)", len(batch), exc)
            finally:
                self._in_flight = set()
                self._written.set()


def _flat(fields: Mapping[str, object]) -> list[str]:
    out: list[str] = []
    for key, value in fields.items():
        if value is not None:
            out += [key, value if isinstance(value, str) else str(value)]
    return out
