"""Session sealing after a hard kill: the next turn on the session sees a well-formed history."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.adk.agents import LlmAgent
from google.adk.events.event import Event
from google.adk.runners import Runner
from google.genai import types

from agent_runtime import SEAL_METADATA_KEY, RedisSessionService, seal_session, seal_task_session
from supervisor.client import SupervisorClient

from .daemon_harness import Daemon
from .plugin_agents import ABORT_MESSAGE, HistoryCheckingLlm, history_problems

pytestmark = pytest.mark.anyio


@pytest.fixture
def daemon(tmp_path: Path, redis_url: str, key_prefix: str) -> Iterator[Daemon]:
    d = Daemon(redis_url, key_prefix, tmp_path / "state", "pgroup")
    d.start()
    yield d
    d.stop()


def _call_event(invocation_id: str) -> Event:
    call = types.FunctionCall(id="call-1", name="slow_lookup", args={"city": "Zurich"})
    return Event(
        invocation_id=invocation_id,
        author="slow",
        content=types.Content(role="model", parts=[types.Part(function_call=call)]),
    )


async def test_seal_answers_dangling_calls_once_and_is_idempotent(
    sessions: RedisSessionService,
) -> None:
    session = await sessions.create_session(app_name="a", user_id="u", session_id="s")
    user = types.Content(role="user", parts=[types.Part(text="go")])
    await sessions.append_event(session, Event(invocation_id="inv-1", author="user", content=user))
    await sessions.append_event(session, _call_event("inv-1"))

    # No invocation id: the invocation of the session's last event is sealed.
    first = await seal_session(
        sessions, app_name="a", user_id="u", session_id="s", reason="killed", state="aborted"
    )
    assert [e.error_code for e in first] == ["INVOCATION_ABORTED", "INVOCATION_ABORTED"]
    response = first[0].get_function_responses()[0]
    assert (response.id, response.name, response.response) == (
        "call-1",
        "slow_lookup",
        {"error": ABORT_MESSAGE},
    )
    assert first[0].author == "slow" and first[0].content is not None
    assert first[1].content is None and first[1].invocation_id == "inv-1"
    assert first[1].custom_metadata == {
        SEAL_METADATA_KEY: {
            "state": "aborted",
            "reason": "killed",
            "task_id": None,
            "invocation_id": "inv-1",
        }
    }
    again = await seal_session(
        sessions, app_name="a", user_id="u", session_id="s", reason="killed", invocation_id="inv-1"
    )
    assert again == []
    stored = await sessions.get_session(app_name="a", user_id="u", session_id="s")
    assert stored is not None and len(stored.events) == 4
    assert (
        await seal_session(sessions, app_name="a", user_id="u", session_id="missing", reason="x")
        == []
    )


@pytest.mark.parametrize("given", [True, False])
async def test_seal_finds_a_call_made_long_before_the_end_of_a_long_invocation(
    sessions: RedisSessionService, given: bool
) -> None:
    # Sealing reads the session's tail only; a call 300 events back into the killed
    # invocation (behind 200 events of earlier turns) must still be answered.
    session = await sessions.create_session(app_name="a", user_id="u", session_id="long")
    for i in range(200):
        text = types.Content(role="model", parts=[types.Part(text=f"old {i}")])
        await sessions.append_event(session, Event(invocation_id="inv-0", author="a", content=text))
    await sessions.append_event(session, _call_event("inv-1"))
    for i in range(300):
        text = types.Content(role="model", parts=[types.Part(text=f"thinking {i}")])
        await sessions.append_event(session, Event(invocation_id="inv-1", author="a", content=text))
    sealed = await seal_session(
        sessions,
        app_name="a",
        user_id="u",
        session_id="long",
        reason="killed",
        invocation_id="inv-1" if given else None,
    )
    answers = [r.id for e in sealed for r in e.get_function_responses()]
    assert answers == ["call-1"]
    assert sealed[-1].content is None and sealed[-1].invocation_id == "inv-1"
    again = await seal_session(
        sessions, app_name="a", user_id="u", session_id="long", reason="killed"
    )
    assert again == []
    stored = await sessions.get_session(app_name="a", user_id="u", session_id="long")
    assert stored is not None and len(stored.events) == 503


async def test_task_without_an_invocation_id_leaves_the_previous_turn_alone(
    sessions: RedisSessionService,
) -> None:
    session = await sessions.create_session(app_name="a", user_id="u", session_id="s")
    user = types.Content(role="user", parts=[types.Part(text="hi")])
    answer = types.Content(role="model", parts=[types.Part(text="hello")])
    await sessions.append_event(session, Event(invocation_id="inv-1", author="user", content=user))
    await sessions.append_event(session, Event(invocation_id="inv-1", author="a", content=answer))
    # The child recorded the app but was killed before its run's first event.
    record = {"adk_app": "a", "user_id": "u", "session_id": "s", "state": "aborted"}
    assert await seal_task_session(sessions, "t-1", record, "aborted", "killed") == []
    stored = await sessions.get_session(app_name="a", user_id="u", session_id="s")
    assert stored is not None and len(stored.events) == 2  # the completed turn is untouched

    # Once the run's first event is in, its invocation id is recorded: that one is sealed.
    await sessions.append_event(session, Event(invocation_id="inv-2", author="user", content=user))
    record["invocation_id"] = "inv-2"
    sealed = await seal_task_session(sessions, "t-2", record, "aborted", "killed")
    assert [(e.invocation_id, e.error_code) for e in sealed] == [("inv-2", "INVOCATION_ABORTED")]
    assert (sealed[0].custom_metadata or {})[SEAL_METADATA_KEY]["task_id"] == "t-2"


async def test_daemon_abort_mid_tool_seals_session_for_the_next_turn(
    daemon: Daemon, sessions: RedisSessionService, redis_url: str, key_prefix: str
) -> None:
    async with SupervisorClient(redis_url, key_prefix) as client:
        task = await client.submit(
            "examples.agents:slow_agent", "go", user_id="u", session_id="chat-1"
        )
        async with asyncio.timeout(60):  # the run sits in its slow tool
            while True:
                s = await sessions.get_session(app_name="slow", user_id="u", session_id="chat-1")
                if s is not None and any(e.get_function_calls() for e in s.events):
                    break
                await asyncio.sleep(0.05)
        await client.abort(task, "operator")
        record = await client.wait(task, 60)
        assert record["state"] == "aborted" and record["signal"] == "SIGKILL"
        async with asyncio.timeout(60):  # sealing follows the record
            while True:
                s = await sessions.get_session(app_name="slow", user_id="u", session_id="chat-1")
                assert s is not None
                if (s.events[-1].custom_metadata or {}).get(SEAL_METADATA_KEY):
                    break
                await asyncio.sleep(0.05)
        record = await client.get(task)

    call_event = next(e for e in s.events if e.get_function_calls())
    assert record["invocation_id"] == call_event.invocation_id and record["adk_app"] == "slow"
    call = call_event.get_function_calls()[0]
    answers = [r.response for e in s.events for r in e.get_function_responses() if r.id == call.id]
    assert answers == [{"error": ABORT_MESSAGE}]
    seal = (s.events[-1].custom_metadata or {})[SEAL_METADATA_KEY]
    assert (seal["state"], seal["reason"], seal["task_id"]) == ("aborted", "operator", task)

    # A new turn on the same session: the model sees the call and its abort answer.
    checker = HistoryCheckingLlm(seen=[])
    runner = Runner(
        agent=LlmAgent(name="slow", model=checker), app_name="slow", session_service=sessions
    )
    message = types.Content(role="user", parts=[types.Part(text="what happened?")])
    async for _ in runner.run_async(user_id="u", session_id="chat-1", new_message=message):
        pass
    contents = checker.seen[0]
    assert history_problems(contents) == []
    # (ADK strips its own call ids from model requests: match by name.)
    assert any(
        p.function_call and p.function_call.name == call.name
        for c in contents
        for p in c.parts or []
    )
    assert any(
        p.function_response and p.function_response.response == {"error": ABORT_MESSAGE}
        for c in contents
        for p in c.parts or []
    )
    assert daemon.logged("session sealed with 2 events")


async def test_reconcile_seals_the_session_of_an_orphan_it_fails(
    tmp_path: Path, sessions: RedisSessionService, redis_url: str, key_prefix: str
) -> None:
    first = Daemon(redis_url, key_prefix, tmp_path / "a", "pgroup")
    first.start()
    try:
        async with SupervisorClient(redis_url, key_prefix) as client:
            task = await client.submit(
                "examples.agents:slow_agent", "go", user_id="u", session_id="chat-2"
            )
            async with asyncio.timeout(60):  # the run sits in its slow tool
                while True:
                    s = await sessions.get_session(
                        app_name="slow", user_id="u", session_id="chat-2"
                    )
                    if s is not None and any(e.get_function_calls() for e in s.events):
                        break
                    await asyncio.sleep(0.05)
            first.kill9()  # the run dies with its daemon (parent-death signal)
            second = Daemon(redis_url, key_prefix, tmp_path / "b", "pgroup", node_id=first.node_id)
            second.start()  # reconcile fails the orphan, then seals its session
            try:
                record = await client.get(task)
                assert record["state"] == "failed" and record["reason"].startswith("orphaned:")
                # Sealing runs in the background once the daemon serves: wait for it before
                # the stop (under load it used to come after, and the test failed).
                async with asyncio.timeout(30):
                    while True:
                        s = await sessions.get_session(
                            app_name="slow", user_id="u", session_id="chat-2"
                        )
                        last = s.events[-1] if s is not None and s.events else None
                        if last is not None and SEAL_METADATA_KEY in (last.custom_metadata or {}):
                            break
                        await asyncio.sleep(0.05)
            finally:
                second.stop()
    finally:
        first.stop()
    s = await sessions.get_session(app_name="slow", user_id="u", session_id="chat-2")
    assert s is not None
    call = next(c for e in s.events for c in e.get_function_calls())
    answers = [r.response for e in s.events for r in e.get_function_responses() if r.id == call.id]
    assert answers == [{"error": ABORT_MESSAGE}]
    seal = (s.events[-1].custom_metadata or {})[SEAL_METADATA_KEY]
    assert (seal["state"], seal["task_id"]) == ("failed", task)
    assert seal["reason"] == record["reason"]
