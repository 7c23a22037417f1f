"""An agent for the systemd tests whose run lasts as long as its message says.

Copied into the container as a top-level module (next to ``examples``), so it
imports nothing from the test suite.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from google.adk.agents.base_agent import BaseAgent
from google.adk.agents.invocation_context import InvocationContext
from google.adk.events.event import Event
from google.genai import types


class NapAgent(BaseAgent):
    """Sleeps the number of seconds its user message holds (at most 600), then answers."""

    async def _run_async_impl(self, ctx: InvocationContext) -> AsyncGenerator[Event, None]:
        parts = ctx.user_content.parts if ctx.user_content and ctx.user_content.parts else []
        seconds = min(float(parts[0].text or 0), 600.0) if parts else 0.0
        await asyncio.sleep(seconds)
        yield Event(
            author=self.name,
            invocation_id=ctx.invocation_id,
            content=types.Content(role="model", parts=[types.Part(text=f"slept {seconds:g}s")]),
        )


nap_agent = NapAgent(name="nap")
