"""One abort subscription per process, shared by every in-process invocation.

:func:`acquire_abort_subscriber` returns the process's :class:`AbortSubscriber`
for a Redis URL and key prefix (one per event loop, since redis-py asyncio
connections belong to the loop that made them): one connection PSUBSCRIBEd to
``<prefix>abort:*`` that dispatches each message to the handlers registered
for its task id. It reconnects with backoff, and on every (re)subscribe it
reads the durable abort marks of the registered tasks, because a message
published while the connection was down is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from ._tasks import stop_task
from .redis_connection import REDIS_ERRORS, as_text, connect
from .task_store import TaskStore, parse_abort_payload

__all__ = ["AbortHandler", "AbortSubscriber", "acquire_abort_subscriber"]

log = logging.getLogger("adk_supervisor")

AbortHandler = Callable[[str], None]
"""Called with the abort reason, on the event loop; must not block."""

_subscribers: dict[tuple[asyncio.AbstractEventLoop, str, str], AbortSubscriber] = {}


class AbortSubscriber:
    """A PSUBSCRIBE on ``<prefix>abort:*`` dispatching to per-task handlers."""

    def __init__(self, redis_url: str, key_prefix: str) -> None:
        self.redis_url = redis_url
        self.key_prefix = key_prefix
        self.pattern = f"{key_prefix}abort:*"
        self.client_name = f"adk-plugin-abort-{os.getpid()}"
        self._client = connect(redis_url, client_name=self.client_name)
        self._store = TaskStore(self._client, key_prefix)
        self._handlers: dict[str, list[AbortHandler]] = {}
        self._refs = 0
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._ever_ready = False
        self.ready = asyncio.Event()
        """Set while the subscription is confirmed (cleared while reconnecting)."""

    def register(self, task_id: str, handler: AbortHandler) -> None:
        """Calls ``handler(reason)`` when an abort for ``task_id`` arrives."""
        self._handlers.setdefault(task_id, []).append(handler)

    def unregister(self, task_id: str, handler: AbortHandler) -> None:
        """Stops delivering ``task_id``'s aborts to ``handler``."""
        handlers = self._handlers.get(task_id)
        if handlers and handler in handlers:
            handlers.remove(handler)
            if not handlers:
                del self._handlers[task_id]

    def registered(self) -> list[str]:
        """Task ids that have a handler."""
        return list(self._handlers)

    async def wait_ready(self, seconds: float) -> bool:
        """Waits up to ``seconds`` for the first subscription; True if it is up.

        Once it has been up, a reconnect does not wait: the durable marks of every
        registered task are read again on resubscribe.
        """
        if self._ever_ready:
            return self.ready.is_set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), seconds)
        return self.ready.is_set()

    def _dispatch(self, task_id: str, payload: bytes | str | None) -> None:
        handlers = list(self._handlers.get(task_id, ()))
        if not handlers:
            return
        reason, well_formed = parse_abort_payload(payload)
        if not well_formed:
            log.warning("abort for %s carries a non-JSON payload: aborting anyway", task_id)
        for handler in handlers:
            try:
                handler(reason)
            except Exception:  # one broken handler must not stop the others
                log.exception("abort handler for %s failed", task_id)

    async def _apply_marks(self) -> None:
        marks = await self._store.abort_marks(self.registered())
        for task_id, payload in marks.items():
            self._dispatch(task_id, payload)

    async def _run(self) -> None:
        prefix_len = len(self.pattern) - 1
        backoff = 0.05
        while not self._closing:
            pubsub = self._client.pubsub()
            try:
                await pubsub.psubscribe(self.pattern)
                while not self._closing:
                    message: dict[str, Any] | None = await pubsub.get_message(timeout=None)
                    if message is None:
                        continue
                    if message["type"] == "psubscribe":
                        # Every (re)subscribe: honour aborts published while we were away.
                        await self._apply_marks()
                        self.ready.set()
                        self._ever_ready = True
                        backoff = 0.05
                    elif message["type"] == "pmessage":
                        channel = as_text(message["channel"])
                        self._dispatch(channel[prefix_len:], message["data"])
            except REDIS_ERRORS as exc:  # down, or an error reply (OOM, READONLY, ...)
                log.warning("abort subscription lost (%s); resubscribing in %.2fs", exc, backoff)
            except Exception:
                # Anything else must not end the subscription for good: every
                # in-process run would silently lose its abort path.
                log.exception("abort subscription failed; resubscribing in %.2fs", backoff)
            finally:
                self.ready.clear()
                with contextlib.suppress(Exception):
                    await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"adk-abort-subscriber:{self.pattern}"
            )

    async def release(self) -> None:
        """Drops one reference; the last one closes the subscription."""
        self._refs -= 1
        if self._refs > 0:
            return
        for key, sub in list(_subscribers.items()):
            if sub is self:
                del _subscribers[key]
        self._closing = True
        await stop_task(self._task)
        self._task = None
        await self._client.aclose()


def acquire_abort_subscriber(redis_url: str, key_prefix: str) -> AbortSubscriber:
    """The shared subscriber of this event loop for ``redis_url`` and ``key_prefix``.

    Call from the event loop; pair every call with one :meth:`AbortSubscriber.release`.
    """
    loop = asyncio.get_running_loop()
    for key in [k for k in _subscribers if k[0].is_closed()]:
        del _subscribers[key]
    sub = _subscribers.get((loop, redis_url, key_prefix))
    if sub is None:
        sub = AbortSubscriber(redis_url, key_prefix)
        _subscribers[(loop, redis_url, key_prefix)] = sub
    sub._refs += 1
    sub._start()
    return sub
