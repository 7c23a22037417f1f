"""Agents whose processes try to leave their run: no marker, own session, orphaned."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncGenerator
from pathlib import Path

from google.adk.agents.base_agent import BaseAgent
from google.adk.agents.invocation_context import InvocationContext
from google.adk.events.event import Event
from google.genai import types


class CleanEnvEscapeAgent(BaseAgent):
    """Starts ``env -i setsid sleep`` as an orphan: no marker, another session, parent gone.

    Writes the escapee's PID to the file named by the message, then waits.
    """

    async def _run_async_impl(self, ctx: InvocationContext) -> AsyncGenerator[Event, None]:
        assert ctx.user_content is not None and ctx.user_content.parts
        pid_file = (ctx.user_content.parts[0].text or "").strip()
        if os.fork() == 0:  # the middle process: exits at once, so the sleep is orphaned
            proc = subprocess.Popen(["env", "-i", "setsid", "sleep", "600"])
            Path(pid_file + ".tmp").write_text(str(proc.pid))  # noqa: ASYNC240 (a forked child)
            os.rename(pid_file + ".tmp", pid_file)
            os._exit(0)
        yield Event(
            author=self.name,
            invocation_id=ctx.invocation_id,
            content=types.Content(role="model", parts=[types.Part(text="escapee started")]),
        )
        await asyncio.sleep(600)


clean_env_escape_agent = CleanEnvEscapeAgent(name="clean_env_escape")
