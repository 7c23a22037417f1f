"""Stopping the plugin's background loops without ever hanging the caller."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["stop_task"]


async def stop_task(task: asyncio.Task[Any] | None, grace_s: float = 5.0) -> None:
    """Cancels ``task`` and waits for it to end, at most ``grace_s`` seconds.

    The wait is bounded because a cancellation delivered while redis-py is
    mid-command has been seen to be swallowed (the loop then carries on); the
    loops also check a stop flag, so such a task still ends at its next turn.
    """
    if task is None or task.done():
        return
    task.cancel()
    await asyncio.wait({task}, timeout=grace_s)
