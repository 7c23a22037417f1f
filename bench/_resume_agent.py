"""The resume benchmark's agent: a scripted model that calls one slow tool, then answers.

Each tool execution and each model call appends a line to ``RESUME_BENCH_LOG``
(``<time> effect start <key>``, ``<time> effect end``, ``<time> model <n responses>``).
Run as a script, it is the DBOS side of :mod:`resume_bench`:
``python bench/_resume_agent.py dbos SQLITE_PATH WORKFLOW_ID start|recover``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncGenerator

from google.adk.agents import LlmAgent
from google.adk.apps import App, ResumabilityConfig
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.tools.tool_context import ToolContext
from google.genai import types

TOOL_S = float(os.environ.get("RESUME_BENCH_TOOL_S", "5"))


def _log(line: str) -> None:
    with open(os.environ["RESUME_BENCH_LOG"], "a", encoding="utf-8") as out:
        out.write(f"{time.time():.4f} {line}\n")


async def effect(tool_context: ToolContext) -> str:
    """A slow side effect (5 s by default)."""
    task = os.environ.get("ADK_SUPERVISOR_TASK_ID", "")
    _log(f"effect start {task}:{tool_context.function_call_id}")
    await asyncio.sleep(TOOL_S)
    _log("effect end")
    return "effect done"


class ScriptedLlm(BaseLlm):
    """Calls ``effect`` once, then answers with the responses it saw."""

    model: str = "scripted"

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        responses = [
            p.function_response.response
            for c in llm_request.contents
            for p in c.parts or []
            if p.function_response is not None
        ]
        _log(f"model {len(responses)}")
        if responses:
            part = types.Part(text=f"done: {responses}")
        else:
            part = types.Part(function_call=types.FunctionCall(name="effect", args={}))
        yield LlmResponse(content=types.Content(role="model", parts=[part]))


def _agent() -> LlmAgent:
    return LlmAgent(name="worker", model=ScriptedLlm(), tools=[effect])


def _app(name: str) -> App:
    return App(
        name=name,
        root_agent=_agent(),
        resumability_config=ResumabilityConfig(is_resumable=True),
    )


idem_app = _app("resume_idem")
once_app = _app("resume_once")


def _dbos(db: str, workflow_id: str, mode: str) -> None:
    from dbos import DBOS, SetWorkflowID
    from dbos_google_adk import DBOSPlugin
    from google.adk.runners import Runner
    from google.adk.sessions import InMemorySessionService

    DBOS(config={"name": "resume-bench", "system_database_url": f"sqlite:///{db}"})
    runner = Runner(
        app_name="dbos",
        agent=_agent(),
        session_service=InMemorySessionService(),
        plugins=[DBOSPlugin()],
    )

    @DBOS.workflow()
    async def turn(message: str) -> str:
        session = await runner.session_service.create_session(app_name="dbos", user_id="u")
        text = ""
        content = types.Content(role="user", parts=[types.Part(text=message)])
        async for event in runner.run_async(
            user_id="u", session_id=session.id, new_message=content
        ):
            for part in (event.content.parts if event.content else None) or []:
                text = part.text or text
        return text

    async def main() -> None:
        DBOS.launch()  # recovers this executor's pending workflows
        if mode == "start":
            with SetWorkflowID(workflow_id):
                handle = await DBOS.start_workflow_async(turn, "go")
        else:
            handle = await DBOS.retrieve_workflow_async(workflow_id)
        print(await handle.get_result(), flush=True)

    asyncio.run(main())


if __name__ == "__main__":
    _dbos(*sys.argv[2:5])
