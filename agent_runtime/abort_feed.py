"""The abort feed: every task's abort channel, as one subscription that survives Redis trouble.

Both the supervisor daemon and the in-process plugin listen for aborts through
:class:`AbortFeed`: one ``PSUBSCRIBE <prefix>abort:*`` that delivers each
message to a callback, reconnects with backoff when the link or Redis fails,
and on every (re)subscribe reads the durable abort marks of the tasks the
caller watches, because a message published while the link was down is gone.

Written with anyio, so it runs in the daemon's task group and in a plain
asyncio task of an ADK app alike.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import redis.asyncio as aioredis
from anyio.abc import TaskStatus

from .redis_connection import REDIS_ERRORS, as_text, open_pubsub
from .task_store import TaskStore, parse_abort_payload

__all__ = ["Abort", "AbortFeed"]

log = logging.getLogger("adk_supervisor")

_FIRST_BACKOFF_S = 0.05
_MAX_BACKOFF_S = 2.0


@dataclass(frozen=True, slots=True)
class Abort:
    """One abort, from a message or a durable mark."""

    task_id: str
    reason: str
    received: float
    """``time.monotonic()`` when it arrived, for latency figures."""


class AbortFeed:
    """Delivers every abort to ``on_abort``, on the event loop, until :meth:`stop`.

    Args:
        client: the Redis client to subscribe with (the feed takes one connection).
        key_prefix: the prefix of the abort channels and marks.
        on_abort: called with each :class:`Abort`; must not block. An exception it
            raises is logged and the feed goes on.
        watched: the task ids whose durable marks are re-read on every (re)subscribe.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        key_prefix: str,
        on_abort: Callable[[Abort], None],
        watched: Callable[[], Collection[str]],
    ) -> None:
        self._client = client
        self._store = TaskStore(client, key_prefix)
        self._keys = self._store.keys
        self._on_abort = on_abort
        self._watched = watched
        self._stopping = False
        self._first_subscribe = anyio.Event()
        self.subscribed = False
        """Whether the subscription is confirmed now (False while reconnecting)."""

    async def wait_subscribed(self, seconds: float) -> bool:
        """Waits up to ``seconds`` for the first subscription; True if it is up now.

        Once it has been up, a reconnect does not wait: the marks of every watched
        task are read again when the subscription is back.
        """
        if not self._first_subscribe.is_set():
            with anyio.move_on_after(seconds):
                await self._first_subscribe.wait()
        return self.subscribed

    async def recheck(self, task_ids: Iterable[str] | None = None) -> None:
        """Delivers the durable abort marks of ``task_ids`` (default: every watched task).

        Raises Redis errors: callers on a schedule catch them and try again later.
        """
        ids = list(self._watched() if task_ids is None else task_ids)
        marks = await self._store.abort_marks(ids)
        now = time.monotonic()
        for task_id, payload in marks.items():
            self._deliver(task_id, payload, now)

    def stop(self) -> None:
        """Ends :meth:`run` at its next turn (with cancellation, the way out that never hangs:
        redis-py has been seen to swallow a cancel that lands mid-command)."""
        self._stopping = True

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Subscribes and delivers until stopped; reports started once first subscribed."""
        backoff = _FIRST_BACKOFF_S
        while not self._stopping:
            pubsub: Any = open_pubsub(self._client)
            try:
                await pubsub.psubscribe(self._keys.abort_pattern)
                while not self._stopping:
                    message: dict[str, Any] | None = await pubsub.get_message(timeout=None)
                    if message is None:
                        continue
                    if message["type"] == "psubscribe":
                        # Every (re)subscribe: honour aborts published while we were away.
                        await self.recheck()
                        backoff = _FIRST_BACKOFF_S
                        self.subscribed = True
                        if not self._first_subscribe.is_set():
                            self._first_subscribe.set()
                            task_status.started()
                    elif message["type"] == "pmessage":
                        received = time.monotonic()
                        channel = as_text(message["channel"])
                        task_id = self._keys.task_of_abort_channel(channel)
                        self._deliver(task_id, message["data"], received)
            except REDIS_ERRORS as exc:  # down, or an error reply (OOM, READONLY, ...)
                log.warning("abort subscription lost (%s); resubscribing in %.2fs", exc, backoff)
            except Exception:
                # Anything else must not end the subscription for good: every run
                # would silently lose its abort path.
                log.exception("abort subscription failed; resubscribing in %.2fs", backoff)
            finally:
                self.subscribed = False
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await pubsub.aclose()
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)

    def _deliver(self, task_id: str, payload: bytes | str | None, received: float) -> None:
        # Never raises: one bad message or mark must not stop the feed (a mark would
        # stop it at every resubscribe, for good).
        try:
            reason, well_formed = parse_abort_payload(payload)
            if not well_formed:
                log.warning(
                    "abort for %s carries a non-JSON payload %r: aborting anyway",
                    task_id,
                    payload[:200] if payload is not None else None,
                )
            self._on_abort(Abort(task_id, reason, received))
        except Exception:
            log.exception("abort for %s could not be handled", task_id)
