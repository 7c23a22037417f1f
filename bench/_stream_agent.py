"""The scripted streaming agent of ``bench/stream_latency.py``, served by both sides.

Its model reads its script from the user's message, ``chunks=N delay_ms=D tag=T``,
and streams N partial chunks D ms apart (the first at once). Each chunk's text is
``time.monotonic_ns()`` taken as it is yielded, plus a space: the clock is
system-wide on Linux, so the reader, in another process, subtracts it from its own
reading to get the chunk's latency, however the server merged chunks on the way.
If the model is stopped (ADK's server cancels the run when its client hangs up),
it writes the moment to ``$ADK_BENCH_STAMP_DIR/T.stopped``.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncGenerator
from pathlib import Path

from google.adk.agents.llm_agent import LlmAgent
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.genai import types

STAMP_DIR_ENV = "ADK_BENCH_STAMP_DIR"

_SCRIPT = re.compile(r"(\w+)=([\w.-]+)")


def _script(request: LlmRequest) -> dict[str, str]:
    for content in reversed(request.contents):
        if content.role == "user":
            text = "".join(p.text or "" for p in content.parts or ())
            return dict(_SCRIPT.findall(text))
    return {}


class StampStreamLlm(BaseLlm):
    """Streams chunks that carry the monotonic time they were yielded at."""

    model: str = "stamp-stream"

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        script = _script(llm_request)
        chunks = int(script.get("chunks", "10"))
        delay = float(script.get("delay_ms", "2")) / 1000
        tag = script.get("tag", "")
        try:
            for i in range(chunks):
                if i:
                    await asyncio.sleep(delay)
                text = f"{time.monotonic_ns()} "
                yield LlmResponse(
                    content=types.Content(role="model", parts=[types.Part(text=text)]),
                    partial=True,
                )
        except (GeneratorExit, asyncio.CancelledError):
            stamp_dir = os.environ.get(STAMP_DIR_ENV)
            if stamp_dir and tag:
                Path(stamp_dir, f"{tag}.stopped").write_text(str(time.monotonic_ns()))
            raise
        yield LlmResponse(
            content=types.Content(role="model", parts=[types.Part(text=f"{chunks} chunks")])
        )


root_agent = LlmAgent(
    name="stream_bench",
    model=StampStreamLlm(),
    instruction="Stream the scripted chunks.",
)
