"""An app for the workspace-snapshot tests: a scripted model whose first tool writes a file
in the run's working directory and whose second tool (slow, idempotent) reports what it
finds there.

``DURABLE_TEST_LOG`` names the log file; ``WORKSPACE_TEST_NOTE_BYTES`` the size of the
written file (default: a short text).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncGenerator
from pathlib import Path

from google.adk.agents import LlmAgent
from google.adk.apps import App, ResumabilityConfig
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.genai import types

HOLD_S = float(os.environ.get("DURABLE_TEST_HOLD_S", "2"))
NOTE = "written before the crash"


def _log(line: str) -> None:
    with open(os.environ["DURABLE_TEST_LOG"], "a", encoding="utf-8") as out:
        out.write(f"{time.time():.3f} {line}\n")


def write_note() -> str:
    """Writes note.txt (and sub/more.txt) into the working directory."""
    size = int(os.environ.get("WORKSPACE_TEST_NOTE_BYTES", "0"))
    Path("note.txt").write_bytes(os.urandom(size) if size else NOTE.encode())
    Path("sub").mkdir(exist_ok=True)
    Path("sub/more.txt").write_text("nested")
    _log(f"write_note cwd={os.getcwd()}")
    return "written"


def _small_note() -> str | None:
    note = Path("note.txt")
    return note.read_text() if note.exists() and note.stat().st_size < 1000 else None


async def read_note() -> str:
    """Reports the working directory and note.txt, then holds."""
    found = _small_note()
    _log(f"read_note cwd={os.getcwd()} note={json.dumps(found)}")
    await asyncio.sleep(HOLD_S)
    _log("read_note end")
    return f"note: {found}"


class NoteLlm(BaseLlm):
    """Calls write_note, then read_note, then answers."""

    model: str = "notes"

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        seen = [
            p.function_response.name
            for c in llm_request.contents
            for p in c.parts or []
            if p.function_response is not None
        ]
        if not seen:
            call = types.FunctionCall(name="write_note", args={})
        elif len(seen) == 1:
            call = types.FunctionCall(name="read_note", args={})
        else:
            yield LlmResponse(content=types.Content(role="model", parts=[types.Part(text="done")]))
            return
        yield LlmResponse(
            content=types.Content(role="model", parts=[types.Part(function_call=call)])
        )


notes_app = App(
    name="notes",
    root_agent=LlmAgent(name="noter", model=NoteLlm(), tools=[write_note, read_note]),
    resumability_config=ResumabilityConfig(is_resumable=True),
)
