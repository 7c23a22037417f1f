"""Scripted models and agents for the orchestration plugin's tests: no network."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from google.adk.agents import LlmAgent
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.genai import types

from examples.scripted_llm import ScriptedLlm

ABORT_MESSAGE = "Invocation was aborted by client."


class RaisingLlm(BaseLlm):
    """A model whose every call fails."""

    model: str = "raising"

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        raise RuntimeError("the model broke on purpose")
        yield  # pragma: no cover  (makes this an async generator)


class HistoryCheckingLlm(BaseLlm):
    """Records the request contents it was given and answers with text.

    ``seen`` holds every request's contents, so a test can check the model saw
    a well-formed history: each function call answered by a response with
    the same id in the next content.
    """

    model: str = "history-checker"
    seen: list[list[types.Content]] = []

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        self.seen.append([c.model_copy(deep=True) for c in llm_request.contents])
        yield LlmResponse(content=types.Content(role="model", parts=[types.Part(text="ok")]))


def history_problems(contents: list[types.Content]) -> list[str]:
    """What is wrong with a request history: calls without a response right after them."""
    problems = []
    for i, content in enumerate(contents):
        calls = [p.function_call for p in content.parts or [] if p.function_call]
        if not calls:
            continue
        following = contents[i + 1] if i + 1 < len(contents) else None
        answered = {
            p.function_response.id
            for p in (following.parts or [] if following else [])
            if p.function_response
        }
        for call in calls:
            if call.id not in answered:
                problems.append(f"call {call.name} ({call.id}) has no response after it")
    return problems


class ToolGate:
    """A slow tool whose start a test can await, and whose end it can check."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.finished = False

    async def slow_lookup(self, city: str) -> dict[str, Any]:
        """Looks a city up, slowly."""
        self.started.set()
        await asyncio.sleep(600)
        self.finished = True
        return {"city": city}


def get_weather(city: str) -> dict[str, str]:
    """Returns the weather of a city (scripted)."""
    return {"city": city, "sky": "clear"}


def broken_tool(city: str) -> dict[str, str]:
    """A tool that raises."""
    raise ValueError(f"the tool broke on purpose for {city}")


def weather_agent() -> LlmAgent:
    """Calls get_weather, then answers."""
    return LlmAgent(name="weather", model=ScriptedLlm(), tools=[get_weather])


def broken_tool_agent() -> LlmAgent:
    """Calls a tool that raises."""
    return LlmAgent(name="broken", model=ScriptedLlm(tool_name="broken_tool"), tools=[broken_tool])


def raising_model_agent() -> LlmAgent:
    """Its model raises."""
    return LlmAgent(name="raising", model=RaisingLlm())


def slow_agent(gate: ToolGate) -> LlmAgent:
    """Calls the gate's slow tool."""
    return LlmAgent(
        name="slow", model=ScriptedLlm(tool_name="slow_lookup"), tools=[gate.slow_lookup]
    )
