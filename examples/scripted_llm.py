"""A scripted ``BaseLlm``: asks for one tool call, then answers with text. No network."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.genai import types


class ScriptedLlm(BaseLlm):
    """Calls ``tool_name`` once per user turn, then replies with the tool's result as text."""

    model: str = "scripted"
    tool_name: str = "get_weather"
    tool_args: dict[str, object] = {"city": "Zurich"}

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        last = llm_request.contents[-1] if llm_request.contents else None
        responses = [p.function_response for p in (last.parts or [])] if last else []
        answered = [r for r in responses if r is not None]
        if answered:
            text = f"The tool said: {answered[-1].response}"
            yield LlmResponse(content=types.Content(role="model", parts=[types.Part(text=text)]))
            return
        call = types.FunctionCall(name=self.tool_name, args=dict(self.tool_args))
        yield LlmResponse(
            content=types.Content(role="model", parts=[types.Part(function_call=call)])
        )


class StreamingScriptedLlm(BaseLlm):
    """Answers every turn with ``words`` words; streamed word by word when the run streams.

    With streaming (ADK's SSE mode) each word is a partial response ``delay_s``
    apart, then the whole text once more as the final response, as Gemini does.
    """

    model: str = "scripted-streaming"
    words: int = 12
    delay_s: float = 0.05

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        chunks = [f"word{i} " for i in range(self.words)]
        if stream:
            for chunk in chunks:
                await asyncio.sleep(self.delay_s)
                yield LlmResponse(
                    content=types.Content(role="model", parts=[types.Part(text=chunk)]),
                    partial=True,
                )
        else:
            await asyncio.sleep(self.delay_s * len(chunks))
        text = "".join(chunks)
        yield LlmResponse(content=types.Content(role="model", parts=[types.Part(text=text)]))
