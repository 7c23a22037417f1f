"""An agent that tries Redis writes from inside a real run and reports which were refused.

Its message is a JSON plan, ``{"name": ["COMMAND", "arg", ...], ...}``; a plan
entry ``["SCRIPT", "<lua>", "<key>", ...]`` loads the script and runs it with
``EVALSHA`` on those keys. Each entry goes to Redis through the run's own
connection, the one the session service uses (so with the run's credentials),
and the agent answers with one event whose text is the JSON
``{"name": "ok" | "refused: <error class>: <message>"}``: the session itself then holds
the report, written with those same credentials.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator

from google.adk.agents.base_agent import BaseAgent
from google.adk.agents.invocation_context import InvocationContext
from google.adk.events.event import Event
from google.genai import types
from redis.exceptions import ResponseError


class AclProbeAgent(BaseAgent):
    """Runs its message's plan of Redis commands and answers with what Redis refused."""

    async def _run_async_impl(self, ctx: InvocationContext) -> AsyncGenerator[Event, None]:
        assert ctx.user_content is not None and ctx.user_content.parts
        plan: dict[str, list[str]] = json.loads(ctx.user_content.parts[0].text or "{}")
        client = ctx.session_service.redis  # type: ignore[attr-defined]
        report: dict[str, str] = {}
        for name, command in plan.items():
            try:
                if command[0] == "SCRIPT":
                    sha = await client.script_load(command[1])
                    await client.evalsha(sha, len(command) - 2, *command[2:])
                else:
                    await client.execute_command(*command)
                report[name] = "ok"
            except ResponseError as exc:
                report[name] = f"refused: {type(exc).__name__}: {exc}"
        yield Event(
            author=self.name,
            invocation_id=ctx.invocation_id,
            content=types.Content(role="model", parts=[types.Part(text=json.dumps(report))]),
        )


probe_agent = AclProbeAgent(name="acl_probe_agent")
