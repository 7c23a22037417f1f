"""The scale benchmark's agent and its RQ side (bench/scale_bench.py).

``stamp_agent`` is an ``LlmAgent`` on a scripted model that answers at once:
one trivial ADK invocation. Its first line writes ``time.time()`` to
``$ADK_BENCH_STAMP_DIR/<session id>`` (the session id is the bench's name for
the run, on both sides). Asked ``hold``, it then waits ``ADK_BENCH_HOLD_S``
(an idle live run).

``rq_job`` is the same invocation as an RQ job: a Runner on the same
``RedisSessionService`` (same Redis, its own prefix), session created, one
``run_async``. ``python bench/_scale_agent.py REDIS_URL QUEUE`` is one RQ
worker: it imports ADK and this module and runs one warm-up invocation before
it takes jobs, so each job's work horse forks a warm process, as our fork
server does.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncGenerator
from pathlib import Path

from google.adk.agents import LlmAgent
from google.adk.agents.invocation_context import InvocationContext
from google.adk.events.event import Event
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import Runner
from google.genai import types

STAMP_DIR_ENV = "ADK_BENCH_STAMP_DIR"
HOLD_ENV = "ADK_BENCH_HOLD_S"
APP = "scale"


class AnswerLlm(BaseLlm):
    """Answers every turn with one word, at once."""

    model: str = "scripted-answer"

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        yield LlmResponse(content=types.Content(role="model", parts=[types.Part(text="done")]))


class StampAgent(LlmAgent):
    """Stamps when its first line ran (and holds if asked), then answers as an LlmAgent."""

    async def _run_async_impl(self, ctx: InvocationContext) -> AsyncGenerator[Event, None]:
        at = time.time()
        stamps = os.environ.get(STAMP_DIR_ENV)
        if stamps:
            Path(stamps, ctx.session.id).write_text(repr(at))
        parts = ctx.user_content.parts if ctx.user_content is not None else None
        if parts and parts[0].text == "hold":
            await asyncio.sleep(float(os.environ.get(HOLD_ENV, "3600")))
        async for event in super()._run_async_impl(ctx):
            yield event


stamp_agent = StampAgent(name="stamp", model=AnswerLlm())


async def _invoke(redis_url: str | None, prefix: str, session_id: str, message: str) -> None:
    from google.adk.sessions import InMemorySessionService

    from agent_runtime.sessions.service import RedisSessionService

    service = (
        RedisSessionService(redis_url, prefix, 3600)
        if redis_url is not None
        else InMemorySessionService()
    )
    try:
        runner = Runner(agent=stamp_agent, app_name=APP, session_service=service)
        await service.create_session(app_name=APP, user_id="bench", session_id=session_id)
        content = types.Content(role="user", parts=[types.Part(text=message)])
        async for _ in runner.run_async(
            user_id="bench", session_id=session_id, new_message=content
        ):
            pass
        await runner.close()
    finally:
        if isinstance(service, RedisSessionService):
            await service.close()


def rq_job(redis_url: str, prefix: str, session_id: str, message: str = "go") -> str:
    """One trivial ADK invocation, as an RQ job (runs in the work horse RQ forks)."""
    asyncio.run(_invoke(redis_url, prefix, session_id, message))
    return session_id


def _worker(redis_url: str, queue: str) -> None:
    import redis
    from rq import Queue, Worker

    # Warm, as the fork server is: the LLM-agent path ADK imports on first use.
    saved = os.environ.pop(STAMP_DIR_ENV, None)
    asyncio.run(_invoke(None, "", "warm-up", "go"))
    if saved is not None:
        os.environ[STAMP_DIR_ENV] = saved
    connection = redis.Redis.from_url(redis_url)
    Worker([Queue(queue, connection=connection)], connection=connection).work(
        logging_level="WARNING"
    )


if __name__ == "__main__":
    # Jobs name ``_scale_agent.rq_job``: imported here, before any fork, not per job.
    sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).parent)]
    import _scale_agent

    _scale_agent._worker(sys.argv[1], sys.argv[2])
