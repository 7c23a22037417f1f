"""A run's output streams back live, and a run takes ADK's whole input."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable

import psutil
import pytest
import redis.asyncio as aioredis
from google.adk.events.event import Event
from google.genai import types

from agent_runtime import RedisSessionService
from agent_runtime._event_writer import EventWriter
from agent_runtime.child import _set_fields
from agent_runtime.keys import KeySchema
from agent_runtime.run_events import StaleEpochError
from agent_runtime.run_input import InputTooLarge
from agent_runtime.run_spec import RunSpec
from agent_runtime.sessions.service import FencedWriteError
from supervisor.client import RunEntry, SupervisorClient

from .daemon_harness import Daemon, until_state

pytestmark = pytest.mark.anyio

A = "examples.agents:"


async def _all(client: SupervisorClient, task_id: str, after: str = "0-0") -> list[RunEntry]:
    return [e async for e in client.events(task_id, after=after)]


def _kinds(entries: list[RunEntry]) -> list[str]:
    out = []
    for e in entries:
        if e.type == "state":
            out.append(e.data["state"])
        else:
            parts = (e.data.get("content") or {}).get("parts") or [{}]
            part = parts[0]
            kind = next((k for k in ("functionCall", "functionResponse", "text") if k in part), "?")
            out.append(f"{e.data['author']}:{kind}")
    return out


async def test_a_tool_calling_run_streams_every_event_in_order_then_its_end(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    start_daemon()
    handle = await client.start(A + "weather_agent", "weather?", user_id="u")
    live = await _all(client, handle.task_id)  # attached before the run even started
    assert _kinds(live) == [
        "queued",
        "starting",
        "running",
        "user:text",
        "weather:functionCall",
        "weather:functionResponse",
        "weather:text",
        "completed",
    ]
    # ADK's api_server shape: camelCase, no nulls.
    call = live[4].data
    assert call["invocationId"] and call["content"]["parts"][0]["functionCall"]["name"] == (
        "get_weather"
    )
    assert live[-1].terminal and live[-1].data["detail"]["exit_code"] == 0
    assert (await handle.final_response()).startswith("The tool said: {'city': 'Zurich'")
    # A late reader sees the same entries; a reconnecting one resumes after its last id.
    assert [e.id for e in await _all(client, handle.task_id)] == [e.id for e in live]
    assert await _all(client, handle.task_id, after=live[3].id) == live[4:]


async def test_streaming_sends_partial_text_and_text_is_not_doubled(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    start_daemon()
    handle = await client.start(A + "story_agent", "tell", user_id="u", streaming=True)
    chunks = [t async for t in handle.text()]
    whole = "".join(f"word{i} " for i in range(12))
    assert "".join(chunks) == whole  # the final aggregate is not repeated
    entries = await _all(client, handle.task_id)
    partial = [e for e in entries if e.type == "event" and e.data.get("partial")]
    assert 2 <= len(partial) <= 12, len(partial)
    finals = [e for e in entries if e.type == "event" and e.data["author"] == "story"]
    assert finals[-1].data.get("partial") is None
    # Without streaming: one whole answer, no partials.
    plain = await client.start(A + "story_agent", "tell", user_id="u")
    assert [t async for t in plain.text()] == [whole]


async def test_abort_mid_stream_ends_it_with_killing_then_aborted(
    start_daemon: Callable[..., Daemon], client: SupervisorClient, redis_url: str, key_prefix: str
) -> None:
    start_daemon()
    handle = await client.start(A + "slow_agent", "go", user_id="u")
    seen: list[RunEntry] = []
    pid = 0
    async for entry in handle.entries():
        seen.append(entry)
        if entry.type == "state" and entry.data["state"] == "running":
            pid = int(entry.data["detail"]["pid"])
        if entry.type == "event" and "functionCall" in json.dumps(entry.data):
            # A bare PUBLISH, as any bot or operator can send it.
            publisher = aioredis.Redis.from_url(redis_url)
            await publisher.publish(f"{key_prefix}abort:{handle.task_id}", '{"reason": "stop"}')
            await publisher.aclose()
    kinds = _kinds(seen)
    assert kinds[-2:] == ["killing", "aborted"], kinds
    assert seen[-2].data["detail"] == {"reason": "stop", "signal": "SIGKILL"}
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


async def test_a_run_takes_a_whole_content_and_a_state_delta(
    start_daemon: Callable[..., Daemon], client: SupervisorClient, sessions: RedisSessionService
) -> None:
    start_daemon()
    pixel = base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    )
    content = types.Content(
        role="user",
        parts=[
            types.Part(text="what is in this picture?"),
            types.Part(inline_data=types.Blob(mime_type="image/png", data=pixel)),
        ],
    )
    handle = await client.start(
        A + "weather_agent", content, user_id="u", state_delta={"mood": "curious"}
    )
    record = await handle.wait(60)
    assert record["state"] == "completed", record
    session = await sessions.get_session(app_name="weather", user_id="u", session_id=handle.task_id)
    assert session is not None and session.state["mood"] == "curious"
    first = session.events[0]
    assert first.content is not None and first.content.parts is not None
    assert first.content.parts[1].inline_data is not None
    assert first.content.parts[1].inline_data.data == pixel
    # The answer to a pending tool call (a long-running tool, a confirmation) comes back
    # as a function response; ADK wants its call in the session.
    pending = types.FunctionCall(id="call-9", name="get_weather", args={"city": "Oslo"})
    await sessions.append_event(
        session,
        Event(
            invocation_id="inv-pending",
            author="weather",
            content=types.Content(role="model", parts=[types.Part(function_call=pending)]),
        ),
    )
    answer = types.Content(
        role="user",
        parts=[
            types.Part(
                function_response=types.FunctionResponse(
                    id="call-9", name="get_weather", response={"weather": "rainy"}
                )
            )
        ],
    )
    replied = await client.start(
        A + "weather_agent", answer, user_id="u", session_id=handle.task_id
    )
    assert await replied.final_response() == "The tool said: {'weather': 'rainy'}"


async def test_oversized_or_malformed_input_is_refused_with_a_clear_error(
    start_daemon: Callable[..., Daemon], client: SupervisorClient, key_prefix: str
) -> None:
    with pytest.raises(InputTooLarge, match="over the limit of 1048576"):
        await client.start(A + "weather_agent", "x" * ((1 << 20) + 1), user_id="u")
    start_daemon()
    # Straight onto the stream, past the client's checks: the daemon refuses it too.
    for fields, why in [
        ({"message": "", "content": "[1]"}, "content must be a JSON object"),
        ({"message": "hi", "run_config": '{"streaming": "yes"}'}, "run_config.streaming"),
        ({"message": "x" * (2 << 20)}, "over the limit"),
    ]:
        task = await client.submit(A + "weather_agent", "placeholder", user_id="u")
        await client.client.hset(
            f"{key_prefix}{{{key_prefix}}}task:{task}x", mapping={"state": "queued"}
        )
        await client.client.xadd(
            f"{key_prefix}{{{key_prefix}}}runs",
            {"task_id": f"{task}x", "app": A + "weather_agent", "user_id": "u", **fields},
        )
        record = await until_state(client, f"{task}x", "failed", timeout=30)
        assert why in record["reason"], record
        await asyncio.sleep(0)


async def test_a_forged_end_in_the_stream_does_not_end_a_reader(
    start_daemon: Callable[..., Daemon], client: SupervisorClient, key_prefix: str
) -> None:
    # A run may append to its own stream: a fake terminal entry the record does not
    # show must not make readers stop (or report the wrong outcome).
    start_daemon()
    handle = await client.start(A + "slow_agent", "go", user_id="u")
    await until_state(client, handle.task_id, "running")
    fake = {"task_id": handle.task_id, "state": "completed", "at": 0, "detail": {}}
    await client.client.xadd(
        f"{key_prefix}{{{key_prefix}}}events:{handle.task_id}",
        {"type": "state", "data": json.dumps(fake)},
    )
    await client.abort(handle.task_id, "real end")
    entries = await _all(client, handle.task_id)
    assert "completed" not in _kinds(entries)
    assert entries[-1].data["state"] == "aborted"


async def test_a_stale_attempt_of_a_durable_run_cannot_add_to_its_events_stream(
    redis_url: str, key_prefix: str
) -> None:
    # A process of an earlier attempt (its node frozen, then thawed after a resume) must
    # not feed the readers of the run's current attempt.
    keys = KeySchema(key_prefix)
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.set(keys.task_epoch("t-fenced"), "1")
        event = Event(
            author="a",
            invocation_id="i",
            content=types.Content(role="model", parts=[types.Part(text="late")]),
        )
        stale = EventWriter(client, keys, "t-fenced", epoch=0)
        with pytest.raises(StaleEpochError, match="resumed elsewhere"):
            await stale.add(event)
        assert await client.xlen(keys.run_events("t-fenced")) == 0
        await EventWriter(client, keys, "t-fenced", epoch=1).add(event)
        assert await client.xlen(keys.run_events("t-fenced")) == 1
    finally:
        await client.aclose()


async def test_a_stale_attempt_cannot_write_its_record_fields(
    redis_url: str, key_prefix: str
) -> None:
    # `error` of a stale attempt would become the current attempt's failure reason.
    keys = KeySchema(key_prefix)
    client = aioredis.Redis.from_url(redis_url)
    spec = RunSpec(
        task_id="t-rec",
        app_ref="m:a",
        app_name=None,
        user_id="u",
        session_id="s",
        message="m",
        redis_url=redis_url,
        key_prefix=key_prefix,
        session_ttl=None,
        durable=True,
        epoch=0,
    )
    try:
        await client.set(keys.task_epoch("t-rec"), "1")
        with pytest.raises(FencedWriteError):
            await _set_fields(client, spec, {"error": "from the past"})
        assert await client.hget(keys.task("t-rec"), "error") is None
    finally:
        await client.aclose()
