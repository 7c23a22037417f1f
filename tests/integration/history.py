"""Reading the task-history stream in tests."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from agent_runtime.task_store import TERMINAL_STATES, TaskStore


async def terminal_events(
    store: TaskStore, task_id: str, timeout: float = 5
) -> list[dict[str, Any]]:
    """The task's terminal events in ``<prefix>task-history``.

    The history append follows the record's transition as a second command, so a
    reader that saw the terminal record may be a moment early: wait (up to
    ``timeout``) for at least one event before answering.
    """
    found: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        history = await store.client.xrange(store.keys.task_history)
        events = [json.loads(fields[b"event"]) for _, fields in history]
        found = [e for e in events if e["task_id"] == task_id and e["state"] in TERMINAL_STATES]
        if found or loop.time() > deadline:
            return found
        await asyncio.sleep(0.05)
