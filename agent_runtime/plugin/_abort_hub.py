"""One abort feed per process and event loop, shared by every in-process invocation.

:func:`acquire_abort_hub` returns the process's :class:`AbortHub` for a Redis
URL and key prefix (one per event loop, since redis-py asyncio connections
belong to the loop that made them): one :class:`~agent_runtime.abort_feed.AbortFeed`
whose aborts go to the handlers registered for their task id.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

import redis.asyncio as aioredis

from ..abort_feed import Abort, AbortFeed
from ..redis_connection import connect
from ._tasks import stop_task

__all__ = ["AbortHandler", "AbortHub", "acquire_abort_hub"]

log = logging.getLogger("adk_supervisor")

AbortHandler = Callable[[str], None]
"""Called with the abort reason, on the event loop; must not block."""

_hubs: dict[tuple[asyncio.AbstractEventLoop, str, str], AbortHub] = {}


class AbortHub:
    """Per-task abort handlers on one shared feed."""

    def __init__(
        self, redis_url: str, key_prefix: str, client: aioredis.Redis | None = None
    ) -> None:
        # A given client is the caller's (only the feed's pub/sub link is the hub's).
        self._owns_client = client is None
        self._client = client or connect(redis_url, client_name=f"adk-plugin-abort-{os.getpid()}")
        self._handlers: dict[str, list[AbortHandler]] = {}
        self.feed = AbortFeed(self._client, key_prefix, self._dispatch, lambda: self._handlers)
        self._refs = 0
        self._task: asyncio.Task[None] | None = None

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

    def _dispatch(self, abort: Abort) -> None:
        for handler in list(self._handlers.get(abort.task_id, ())):
            try:
                handler(abort.reason)
            except Exception:  # one broken handler must not stop the others
                log.exception("abort handler for %s failed", abort.task_id)

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self.feed.run(), name="adk-abort-feed"
            )

    async def release(self) -> None:
        """Drops one reference; the last one closes the feed."""
        self._refs -= 1
        if self._refs > 0:
            return
        for key, hub in list(_hubs.items()):
            if hub is self:
                del _hubs[key]
        self.feed.stop()
        await stop_task(self._task)
        self._task = None
        if self._owns_client:
            await self._client.aclose()


def acquire_abort_hub(
    redis_url: str, key_prefix: str, *, client: aioredis.Redis | None = None
) -> AbortHub:
    """The shared hub of this event loop for ``redis_url`` (or the given ``client``) and
    ``key_prefix``.

    Call from the event loop; pair every call with one :meth:`AbortHub.release`.
    """
    loop = asyncio.get_running_loop()
    for key in [k for k in _hubs if k[0].is_closed()]:
        del _hubs[key]
    target = redis_url if client is None else f"client:{id(client)}"
    hub = _hubs.get((loop, target, key_prefix))
    if hub is None:
        hub = AbortHub(redis_url, key_prefix, client)
        _hubs[(loop, target, key_prefix)] = hub
    hub._refs += 1
    hub._start()
    return hub
