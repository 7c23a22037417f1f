"""Intake: takes runs off the runs stream, one free run slot at a time.

The node is one consumer of the stream's consumer group. A slot is taken
before an entry is read, so the node never holds more entries than it can run;
the slot goes back when the entry's handler returns (the run ended, or the
entry was rejected). Entries this consumer holds unacknowledged (taken before a
crash, or claimed from a gone peer) are re-read from ``0`` upwards first, then
new ones with ``>``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import redis.asyncio as aioredis
from anyio.abc import TaskGroup, TaskStatus
from redis.exceptions import ResponseError

from agent_runtime.keys import RUNS_GROUP, KeySchema
from agent_runtime.redis_connection import REDIS_ERRORS, as_text, describe_reply, wrong_type

__all__ = ["Entry", "Intake"]

log = logging.getLogger("adk_supervisor")

_RETRY_S = 0.5
_BLOCK_MS = 1000


@dataclass(frozen=True, slots=True)
class Entry:
    """One runs-stream entry, fields decoded (untrusted: see admission)."""

    id: bytes
    fields: dict[str, str]
    _client: aioredis.Redis
    _stream: str

    async def ack(self) -> None:
        """Acknowledges and deletes the entry: no node will read it again.

        Deleted, not only acknowledged: the entry holds the prompt, which the run
        has from here on (its record, its spec, its session), and the stream would
        otherwise keep every prompt ever submitted.
        """
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.xack(self._stream, RUNS_GROUP, self.id)
            pipe.xdel(self._stream, self.id)
            await pipe.execute()


Handler = Callable[[Entry], Awaitable[None]]


class Intake:
    """The stream consumer; each entry goes to ``handler`` in its own task."""

    def __init__(
        self, client: aioredis.Redis, keys: KeySchema, node_id: str, slots: int, handler: Handler
    ) -> None:
        self._client = client
        self._stream = keys.runs
        self._node_id = node_id
        self._slots_total = slots
        self._slots = anyio.Semaphore(slots)
        self._handler = handler
        self._rescans = 0  # bumped when entries should be re-read from "0"
        self._draining = False

    @property
    def draining(self) -> bool:
        """Whether the node stopped taking runs (until it restarts)."""
        return self._draining

    @property
    def idle(self) -> bool:
        """Whether no entry is being read or run."""
        return self._slots.value == self._slots_total

    def drain(self) -> None:
        """Takes no new entries; those already taken run to their end."""
        self._draining = True

    def rescan_pending(self) -> None:
        """Re-reads this consumer's pending entries (claimed from a peer, or left by a failure)."""
        self._rescans += 1

    async def ensure_group(self) -> None:
        """Creates the stream and its consumer group if they do not exist."""
        try:
            await self._client.xgroup_create(self._stream, RUNS_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Consumes until drained; returns once every taken entry's handler returned."""
        async with anyio.create_task_group() as tg:
            task_status.started()
            await self._consume(tg)

    async def _consume(self, tg: TaskGroup) -> None:
        cursor: bytes | str | None = None
        rescans_seen = -1
        while not self._draining:
            await self._slots.acquire()
            handed_off = False
            try:
                if self._draining:  # drained while waiting for a free slot
                    return
                if cursor is None and rescans_seen != self._rescans:
                    rescans_seen, cursor = self._rescans, "0"
                entry, cursor = await self._read(cursor)
                if entry is not None:
                    if self._draining:
                        # Unacknowledged, it stays pending for this node: its next start re-reads it.
                        log.info(
                            "drain began while run %r was being read: left for the next start",
                            entry.id,
                        )
                        return
                    tg.start_soon(self._handle, entry)
                    handed_off = True
            finally:
                if not handed_off:
                    self._slots.release()

    async def _read(self, cursor: bytes | str | None) -> tuple[Entry | None, bytes | str | None]:
        """One entry (or None) and the cursor to read from next (None: new entries)."""
        backlog = cursor is not None
        try:
            reply: Any = await self._client.xreadgroup(
                RUNS_GROUP,
                self._node_id,
                {self._stream: ">" if cursor is None else cursor},
                count=1,
                block=None if backlog else _BLOCK_MS,
            )
            entries = reply[0][1] if reply else []
            if not entries:
                return None, None
            entry_id, raw = entries[0]
            if backlog and not raw:  # a backlog entry deleted from the stream meanwhile
                await self._client.xack(self._stream, RUNS_GROUP, entry_id)
                return None, entry_id
        except REDIS_ERRORS as exc:
            why = describe_reply(self._stream, exc) if isinstance(exc, ResponseError) else exc
            log.warning("cannot read runs (%s); retrying", why)
            if "NOGROUP" in str(exc):  # Redis's own error text: the stream or group was deleted
                with contextlib.suppress(*REDIS_ERRORS):
                    await self.ensure_group()
            await anyio.sleep(_RETRY_S)
            return None, cursor
        fields = {as_text(k): as_text(v) for k, v in raw.items()}
        return Entry(entry_id, fields, self._client, self._stream), entry_id if backlog else None

    async def _handle(self, entry: Entry) -> None:
        try:
            await self._handler(entry)
        except REDIS_ERRORS as exc:
            if wrong_type(exc):
                # No outage: the key stays so, and the entry would come back every second.
                log.error("run %r dropped: %s", entry.id, exc)
                with contextlib.suppress(*REDIS_ERRORS):
                    await entry.ack()
                return
            # Before the spawn every step is a Redis call; the entry is not acknowledged
            # yet, so it stays pending here and is read again once Redis answers.
            log.warning("run %r: Redis failed while starting it (%s); retrying", entry.id, exc)
            await anyio.sleep(1)
            self.rescan_pending()
        except Exception:  # one bad entry must not take the daemon (and every run) down
            log.exception("run %r could not be handled; dropping it", entry.id)
            with contextlib.suppress(*REDIS_ERRORS):
                await entry.ack()
        finally:
            self._slots.release()
