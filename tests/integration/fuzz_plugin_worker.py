"""A process serving invocations through the orchestration plugin, driven over stdin, for the fuzz.

``python -m tests.integration.fuzz_plugin_worker <redis_url> <prefix>`` reads one
command a line: ``complete <task_id>`` runs the weather agent, ``hold <task_id>``
runs an agent whose tool never returns (``STARTED <task_id>`` once the tool
runs); each invocation prints ``DONE <task_id>`` (or ``FAILED <task_id> <error>``)
when ``run_async`` returns. The plugin heartbeats and looks for crashed processes
every second, so its recovery reads whatever the test planted. Logs go to stderr.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from google.adk.agents.run_config import RunConfig
from google.adk.apps import App
from google.adk.runners import Runner
from google.genai import types

from agent_runtime import TASK_ID_METADATA_KEY, RedisOrchestrationPlugin, RedisSessionService

from .plugin_agents import ToolGate, slow_agent, weather_agent

HEARTBEAT_TTL_S = 1.0


async def _invoke(runner: Runner, task_id: str) -> None:
    message = types.Content(role="user", parts=[types.Part(text="Zurich")])
    config = RunConfig(custom_metadata={TASK_ID_METADATA_KEY: task_id})
    try:
        async for _ in runner.run_async(
            user_id="u", session_id=task_id, new_message=message, run_config=config
        ):
            pass
    except Exception as exc:
        print(f"FAILED {task_id} {type(exc).__name__}: {exc}", flush=True)
    else:
        print(f"DONE {task_id}", flush=True)


async def _announce_start(gate: ToolGate, task_id: str) -> None:
    await gate.started.wait()
    print(f"STARTED {task_id}", flush=True)


async def serve(redis_url: str, prefix: str) -> None:
    plugin = RedisOrchestrationPlugin(redis_url, prefix, heartbeat_ttl_s=HEARTBEAT_TTL_S)
    sessions = RedisSessionService(redis_url, prefix)
    await plugin.start()
    print("READY", flush=True)
    running: set[asyncio.Task[None]] = set()
    while line := await asyncio.to_thread(sys.stdin.readline):
        command, task_id = line.split()
        if command == "complete":
            agent = weather_agent()
        else:
            gate = ToolGate()
            agent = slow_agent(gate)
            running.add(asyncio.create_task(_announce_start(gate, task_id)))
        app = App(name="papp", root_agent=agent, plugins=[plugin])
        runner = Runner(app=app, session_service=sessions, auto_create_session=True)
        running.add(asyncio.create_task(_invoke(runner, task_id)))
    for task in running:
        task.cancel()
    await plugin.close()


def main() -> None:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    asyncio.run(serve(sys.argv[1], sys.argv[2]))


if __name__ == "__main__":
    main()
