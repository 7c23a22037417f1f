"""Agents that write to their run log: a little (many cheap runs) or a lot (one log over its cap)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncGenerator

from google.adk.agents.base_agent import BaseAgent
from google.adk.agents.invocation_context import InvocationContext
from google.adk.events.event import Event
from google.genai import types

# How many bytes the chatty agent prints, and how long it then holds (for its own test).
BYTES_ENV = "ADK_TEST_LOG_BYTES"
HOLD_ENV = "ADK_TEST_LOG_HOLD_S"


def _say(ctx: InvocationContext, author: str, text: str) -> Event:
    return Event(
        author=author,
        invocation_id=ctx.invocation_id,
        content=types.Content(role="model", parts=[types.Part(text=text)]),
    )


class ChattyAgent(BaseAgent):
    """Prints ``FIRST``, then ADK_TEST_LOG_BYTES bytes (default 2 KB) in 4 KB lines; if
    that is more than 8 KB, spread over a second and followed by 1.5 s of quiet. Then
    prints ``LAST``, holds ADK_TEST_LOG_HOLD_S seconds (default 0) and ends."""

    async def _run_async_impl(self, ctx: InvocationContext) -> AsyncGenerator[Event, None]:
        total = int(os.environ.get(BYTES_ENV, "2000"))
        print("FIRST", flush=True)
        line = "x" * 4095
        chunks = max(1, total // 4096)
        pause = 1.0 / chunks if total > 8192 else 0
        for _ in range(chunks):
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
            if pause:
                await asyncio.sleep(pause)
        if pause:
            await asyncio.sleep(1.5)
        print("LAST", flush=True)
        await asyncio.sleep(float(os.environ.get(HOLD_ENV, "0")))
        yield _say(ctx, self.name, "done")


chatty_agent = ChattyAgent(name="chatty")
