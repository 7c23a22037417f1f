"""Example agents for the supervisor's demo and tests; none needs a network.

Reference them as ``examples.agents:<name>`` (``make run`` names them in its config).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncGenerator

from google.adk.agents import LlmAgent
from google.adk.agents.base_agent import BaseAgent
from google.adk.agents.invocation_context import InvocationContext
from google.adk.events.event import Event
from google.genai import types

from .scripted_llm import ScriptedLlm, StreamingScriptedLlm

# Seconds the slow and the process-spawning agents stay alive (overridable for tests).
HOLD_S = float(os.environ.get("ADK_EXAMPLE_HOLD_S", "60"))


def get_weather(city: str) -> dict[str, str]:
    """Returns the weather of a city (scripted)."""
    return {"city": city, "sky": "clear", "temperature_c": "21"}


async def slow_lookup(city: str) -> dict[str, str]:
    """A tool that takes a long time (sleeps HOLD_S seconds)."""
    await asyncio.sleep(HOLD_S)
    return {"city": city, "sky": "eventually clear"}


weather_agent = LlmAgent(
    name="weather", model=ScriptedLlm(), tools=[get_weather], instruction="Answer about weather."
)
slow_agent = LlmAgent(name="slow", model=ScriptedLlm(tool_name="slow_lookup"), tools=[slow_lookup])
# Answers in 12 words, streamed one every 50 ms when the run asks for streaming.
story_agent = LlmAgent(name="story", model=StreamingScriptedLlm())


def _text(ctx: InvocationContext, author: str, text: str) -> Event:
    return Event(
        author=author,
        invocation_id=ctx.invocation_id,
        content=types.Content(role="model", parts=[types.Part(text=text)]),
    )


class RaisingAgent(BaseAgent):
    """Raises: the run ends ``failed`` with exit code 1 and the error in the record."""

    async def _run_async_impl(self, ctx: InvocationContext) -> AsyncGenerator[Event, None]:
        yield _text(ctx, self.name, "about to fail")
        raise RuntimeError("the agent broke on purpose")


class ExitAgent(BaseAgent):
    """Leaves the process with ``os._exit(3)``: ``failed`` with exit code 3."""

    async def _run_async_impl(self, ctx: InvocationContext) -> AsyncGenerator[Event, None]:
        yield _text(ctx, self.name, "exiting with 3")
        os._exit(3)


def _hold() -> None:
    time.sleep(HOLD_S)
    os._exit(0)


class SetsidGrandchildAgent(BaseAgent):
    """Spawns a grandchild that calls setsid() and double-forks, then waits (escapes killpg)."""

    async def _run_async_impl(self, ctx: InvocationContext) -> AsyncGenerator[Event, None]:
        read_end, write_end = os.pipe()
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.write(write_end, f"{os.getpid()}\n".encode())
                _hold()
            os._exit(0)
        grandchild = os.read(read_end, 64).decode().strip()
        yield _text(ctx, self.name, f"grandchild {grandchild} escaped into its own session")
        await asyncio.sleep(HOLD_S)


class ForkManyAgent(BaseAgent):
    """Forks 50 children that wait, then waits itself."""

    children: int = 50

    async def _run_async_impl(self, ctx: InvocationContext) -> AsyncGenerator[Event, None]:
        for _ in range(self.children):
            if os.fork() == 0:
                _hold()
        yield _text(ctx, self.name, f"forked {self.children} children")
        await asyncio.sleep(HOLD_S)


class TermIgnoringAgent(BaseAgent):
    """Ignores SIGTERM (saying so on stdout), then waits: only SIGKILL ends it."""

    async def _run_async_impl(self, ctx: InvocationContext) -> AsyncGenerator[Event, None]:
        signal.signal(signal.SIGTERM, lambda *_: print("got SIGTERM, ignoring it", flush=True))
        yield _text(ctx, self.name, "SIGTERM will not stop me")
        await asyncio.sleep(HOLD_S)


raising_agent = RaisingAgent(name="raising")
term_ignoring_agent = TermIgnoringAgent(name="term_ignoring")
exit3_agent = ExitAgent(name="exit3")
setsid_agent = SetsidGrandchildAgent(name="setsid")
fork50_agent = ForkManyAgent(name="fork50")
