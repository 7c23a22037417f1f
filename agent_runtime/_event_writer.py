"""The run's side of its events stream: every event ADK yields, partial text coalesced.

A fast model can stream hundreds of tiny partial chunks a second; each would be
an XADD and a wake-up for every reader. Partial text chunks are therefore sent
at most once per ``interval`` per stream: the first chunk after a quiet spell at
once (no added latency when chunks are sparse), later ones merged into one entry
sent when the interval is over. A non-partial event flushes what is pending
first, so the order of the stream is the order ADK yielded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from .keys import KeySchema
from .redis_connection import REDIS_ERRORS, outage_reply
from .run_events import DEFAULT_EVENTS_MAXLEN, append_entry

if TYPE_CHECKING:
    from google.adk.events.event import Event

__all__ = ["EventWriter"]

COALESCE_S = 0.05
FAILOVER_PATIENCE_S = 30.0
"""How long an entry is retried while Redis cannot take it (a failover in progress)."""


def _retryable(error: BaseException) -> bool:
    # Error replies other than a failover's (WRONGTYPE, a fenced epoch) are final.
    return not isinstance(error, ResponseError) or outage_reply(error)


def _text_only(event: Event) -> bool:
    parts = event.content.parts if event.content else None
    return bool(parts) and all(p.text is not None and not p.thought for p in parts or ())


class EventWriter:
    """Appends one run's events to its stream; :meth:`close` flushes what is pending."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: KeySchema,
        task_id: str,
        *,
        maxlen: int = DEFAULT_EVENTS_MAXLEN,
        epoch: int | None = None,
        interval_s: float = COALESCE_S,
    ) -> None:
        self._client = client
        self._keys = keys
        self._task_id = task_id
        self._maxlen = maxlen
        self._epoch = epoch  # a durable run's: every entry is fenced by it
        self._interval = interval_s
        self._pending: list[Event] = []  # partial chunks not sent yet, merged where they can be
        self._last_flush = 0.0
        self._timer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def add(self, event: Event) -> None:
        """Sends ``event`` (or holds it a moment, if it is a partial text chunk)."""
        async with self._lock:
            if event.partial and _text_only(event):
                self._merge(event)
                if time.monotonic() - self._last_flush >= self._interval:
                    await self._flush()
                elif self._timer is None:
                    self._timer = asyncio.create_task(self._flush_later())
                return
            await self._flush()
            await self._send(event)

    async def close(self) -> None:
        """Sends what is pending and stops the timer."""
        async with self._lock:
            await self._flush()
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
            self._timer = None

    def _merge(self, event: Event) -> None:
        last = self._pending[-1] if self._pending else None
        if (
            last is None
            or last.author != event.author
            or last.branch != event.branch
            or last.content is None
            or event.content is None
        ):
            self._pending.append(event)
            return
        text = "".join(
            p.text or "" for p in (*(last.content.parts or ()), *(event.content.parts or ()))
        )
        part = (event.content.parts or [])[0].model_copy(update={"text": text})
        content = event.content.model_copy(update={"parts": [part]})
        self._pending[-1] = last.model_copy(update={"content": content})

    async def _flush_later(self) -> None:
        await asyncio.sleep(max(0.0, self._last_flush + self._interval - time.monotonic()))
        async with self._lock:
            self._timer = None
            await self._flush()

    async def _flush(self) -> None:
        if self._pending:
            batch, self._pending = self._pending, []
            for event in batch:
                await self._send(event)
            self._last_flush = time.monotonic()

    async def _send(self, event: Event) -> None:
        data = event.model_dump_json(by_alias=True, exclude_none=True)
        # Through a failover (a dead primary until its replica takes over, a few seconds
        # on a Redis Cluster): the run goes on rather than failing on its first refused
        # entry. A retried entry whose first attempt landed shows twice in the stream.
        deadline = time.monotonic() + FAILOVER_PATIENCE_S
        delay = 0.05
        while True:
            try:
                await append_entry(
                    self._client,
                    self._keys,
                    self._task_id,
                    "event",
                    data,
                    maxlen=self._maxlen,
                    epoch=self._epoch,
                )
                return
            except REDIS_ERRORS as exc:
                if not _retryable(exc) or time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
