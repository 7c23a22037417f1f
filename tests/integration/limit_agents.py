"""Agents that run into per-run resource limits: memory, processes, CPU."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncGenerator
from pathlib import Path

from google.adk.agents.base_agent import BaseAgent
from google.adk.agents.invocation_context import InvocationContext
from google.adk.events.event import Event
from google.genai import types


def _say(ctx: InvocationContext, author: str, text: str) -> Event:
    return Event(
        author=author,
        invocation_id=ctx.invocation_id,
        content=types.Content(role="model", parts=[types.Part(text=text)]),
    )


class MemoryHogAgent(BaseAgent):
    """Touches 16 MiB more memory every few milliseconds, for ever."""

    async def _run_async_impl(self, ctx: InvocationContext) -> AsyncGenerator[Event, None]:
        yield _say(ctx, self.name, "allocating")
        hoard = []
        while True:
            hoard.append(b"x" * (16 << 20))
            await asyncio.sleep(0.005)


def _in_limited_pids_group() -> bool:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(",") or controllers == "":
            for mount in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup/unified")):
                limit = mount / path.lstrip("/") / "pids.max"
                if limit.exists() and limit.read_text().strip() != "max":
                    return True
    return False


class ForkBombAgent(BaseAgent):
    """Every process forks as fast as it can and keeps going when a fork is refused."""

    async def _run_async_impl(self, ctx: InvocationContext) -> AsyncGenerator[Event, None]:
        # A safety catch for the machine running the tests: bomb only inside a pids group
        # with a limit (the daemon's), never unbounded.
        if not _in_limited_pids_group():
            yield _say(ctx, self.name, "not in a limited pids cgroup: refusing to fork-bomb")
            os._exit(3)
        yield _say(ctx, self.name, "forking")
        while True:
            try:
                os.fork()  # parent and child both go on forking
            except OSError:
                time.sleep(0.01)


class CpuBurnerAgent(BaseAgent):
    """Two threads spin on the CPU until the run is stopped."""

    async def _run_async_impl(self, ctx: InvocationContext) -> AsyncGenerator[Event, None]:
        def spin() -> None:
            while True:
                pass

        for _ in range(2):
            threading.Thread(target=spin, daemon=True).start()
        yield _say(ctx, self.name, "burning")
        await asyncio.sleep(600)


memory_hog_agent = MemoryHogAgent(name="memory_hog")
fork_bomb_agent = ForkBombAgent(name="fork_bomb")
cpu_burner_agent = CpuBurnerAgent(name="cpu_burner")
