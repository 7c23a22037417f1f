"""Apps for the durable-run tests: a scripted model and slow tools that log every execution.

``DURABLE_TEST_LOG`` names the file each tool execution appends a line to:
``<tool> start <idempotency key>`` when it begins and ``<tool> end`` when it ends.
Tools hold ``DURABLE_TEST_HOLD_S`` seconds; with ``DURABLE_TEST_RELEASE`` set, slow_effect
holds until that file exists.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncGenerator

from google.adk.agents import LlmAgent
from google.adk.apps import App, ResumabilityConfig
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.tools.tool_context import ToolContext
from google.genai import types

from agent_runtime.durable import IDEMPOTENCY_STATE_KEY, idempotency_key

HOLD_S = float(os.environ.get("DURABLE_TEST_HOLD_S", "2"))


def _log(line: str) -> None:
    with open(os.environ["DURABLE_TEST_LOG"], "a", encoding="utf-8") as out:
        out.write(f"{time.time():.3f} {line}\n")


async def _hold() -> None:
    release = os.environ.get("DURABLE_TEST_RELEASE")
    if release:
        # Held until the test lets go: how long a takeover takes varies with the load.
        while not await asyncio.to_thread(os.path.exists, release):
            await asyncio.sleep(0.05)
    else:
        await asyncio.sleep(HOLD_S)


async def slow_effect(tool_context: ToolContext) -> str:
    """A side effect that must not happen twice (not idempotent)."""
    _log(f"slow_effect start {idempotency_key(tool_context)}")
    await _hold()
    _log("slow_effect end")
    return "effect done"


async def slow_idem(tool_context: ToolContext) -> str:
    """A side effect made once by its idempotency key: safe to run again."""
    key = idempotency_key(tool_context)
    assert tool_context.state.get(IDEMPOTENCY_STATE_KEY) == key
    _log(f"slow_idem start {key}")
    await asyncio.sleep(HOLD_S)
    _log("slow_idem end")
    return "idem done"


class ScriptedLlm(BaseLlm):
    """Calls slow_effect, then slow_idem, then answers with every tool response it saw."""

    model: str = "scripted"

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        responses = [
            {"name": p.function_response.name, "response": p.function_response.response}
            for c in llm_request.contents
            for p in c.parts or []
            if p.function_response is not None
        ]
        if not responses:
            call = types.FunctionCall(name="slow_effect", args={})
        elif len(responses) == 1:
            call = types.FunctionCall(name="slow_idem", args={})
        else:
            text = "done: " + json.dumps(responses, sort_keys=True)
            yield LlmResponse(content=types.Content(role="model", parts=[types.Part(text=text)]))
            return
        yield LlmResponse(
            content=types.Content(role="model", parts=[types.Part(function_call=call)])
        )


durable_app = App(
    name="durable",
    root_agent=LlmAgent(name="worker", model=ScriptedLlm(), tools=[slow_effect, slow_idem]),
    resumability_config=ResumabilityConfig(is_resumable=True),
)


class PoisonLlm(BaseLlm):
    """Kills its own process at every model call: a run that always dies."""

    model: str = "poison"

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        _log("poison call")
        os.kill(os.getpid(), signal.SIGKILL)
        yield LlmResponse()


poison_app = App(
    name="poison",
    root_agent=LlmAgent(name="poisoned", model=PoisonLlm()),
    resumability_config=ResumabilityConfig(is_resumable=True),
)

not_resumable_app = App(name="plain", root_agent=LlmAgent(name="plain", model=ScriptedLlm()))
