"""Agents that end their own process with a signal the supervisor did not send."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncGenerator

from google.adk.agents.base_agent import BaseAgent
from google.adk.agents.invocation_context import InvocationContext
from google.adk.events.event import Event

# A real-time signal with no name of its own in Python's signal.Signals.
NAMELESS_SIGNAL = signal.SIGRTMIN + 6


class SelfSignallingAgent(BaseAgent):
    """Sends its own process :data:`NAMELESS_SIGNAL`, whose default action ends it."""

    async def _run_async_impl(self, ctx: InvocationContext) -> AsyncGenerator[Event, None]:
        os.kill(os.getpid(), NAMELESS_SIGNAL)
        yield Event(author=self.name, invocation_id=ctx.invocation_id)


nameless_signal_agent = SelfSignallingAgent(name="nameless_signal")


class TermExitAgent(BaseAgent):
    """Answers SIGTERM by exiting with 143, as many servers do; then waits to be stopped."""

    async def _run_async_impl(self, ctx: InvocationContext) -> AsyncGenerator[Event, None]:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
        yield Event(author=self.name, invocation_id=ctx.invocation_id)
        await asyncio.sleep(120)


term_exit_agent = TermExitAgent(name="term_exit")
