"""The HTTP gateway: ADK's api_server routes and shapes, served by supervised runs, over real HTTP.

A real daemon and a real gateway process (uvicorn on a free port) share the
test Redis; httpx talks to the gateway as ADK's clients and adk web do.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import psutil
import pytest

from supervisor.client import SupervisorClient

from .daemon_harness import Daemon, until_state
from .gateway_harness import EXAMPLE_APPS, GatewayProcess, task_ids, tree_gone
from .sse import Frame, data_frames, frames

pytestmark = pytest.mark.anyio

APPS_ENV = {"ADK_SUPERVISOR_APPS": json.dumps(EXAMPLE_APPS)}
TASK = "x-adk-task-id"


def _message(text: str) -> dict[str, Any]:
    return {"role": "user", "parts": [{"text": text}]}


def _run(app: str, session: str, text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {
        "appName": app,
        "userId": "u",
        "sessionId": session,
        "newMessage": _message(text),
        **extra,
    }


def _kind(event: dict[str, Any]) -> str:
    part = (event.get("content") or {}).get("parts", [{}])[0]
    kind = next((k for k in ("functionCall", "functionResponse", "text") if k in part), "?")
    return f"{event['author']}:{kind}" + (":partial" if event.get("partial") else "")


@pytest.fixture
async def http(
    start_daemon: Callable[..., Daemon], start_gateway: Callable[..., GatewayProcess]
) -> Any:
    """A daemon and a gateway serving EXAMPLE_APPS; an httpx client on the gateway."""
    daemon = start_daemon(**APPS_ENV)
    gateway = start_gateway(ADK_SUPERVISOR_GATEWAY_KEEPALIVE_S="0.5")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
        client.daemon = daemon  # type: ignore[attr-defined]
        client.gateway = gateway  # type: ignore[attr-defined]
        yield client


async def _session(http: httpx.AsyncClient, app: str, session: str, **state: Any) -> Any:
    reply = await http.post(
        f"/apps/{app}/users/u/sessions", json={"sessionId": session, "state": state}
    )
    assert reply.status_code == 200, reply.text
    return reply.json()


async def test_run_sse_streams_a_tool_calling_run_in_order_as_adk_does(
    http: httpx.AsyncClient, client: SupervisorClient
) -> None:
    await _session(http, "weather", "s1")
    started = time.perf_counter()
    async with http.stream("POST", "/run_sse", json=_run("weather", "s1", "weather?")) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        assert reply.headers["x-accel-buffering"] == "no"
        task_id = reply.headers[TASK]
        got = []
        first_event_s = None
        async for frame in frames(reply):
            if frame.comment is None:
                first_event_s = first_event_s or time.perf_counter() - started
                got.append(frame)
    print(f"\n/run_sse weather: first event after {first_event_s * 1000:.0f} ms")
    # The run's echo of the user's message is no api_server event; the rest in order.
    assert [_kind(f.data) for f in got] == [
        "weather:functionCall",
        "weather:functionResponse",
        "weather:text",
    ]
    assert got[0].data["content"]["parts"][0]["functionCall"]["name"] == "get_weather"
    assert got[2].data["content"]["parts"][0]["text"].startswith("The tool said: {'city': 'Zurich'")
    # id: is the events stream's entry id, in order: a client can resume from it.
    stream_ids = [e.id async for e in client.events(task_id) if e.type == "event"]
    assert [f.id for f in got] == stream_ids[1:]
    assert (await client.get(task_id))["state"] == "completed"
    # The run wrote the session the gateway serves: ADK's Session shape, all four events.
    session = (await http.get("/apps/weather/users/u/sessions/s1")).json()
    assert session["id"] == "s1" and session["appName"] == "weather"
    assert [_kind(e) for e in session["events"]] == ["user:text", *[_kind(f.data) for f in got]]
    assert not (await http.get("/runs/" + task_id)).json().get("error")


async def test_streaming_sends_partial_text_then_the_whole(http: httpx.AsyncClient) -> None:
    await _session(http, "story", "s1")
    started = time.perf_counter()
    arrivals = []
    async with http.stream("POST", "/run_sse", json=_run("story", "s1", streaming=True)) as reply:
        got = []
        async for frame in frames(reply):
            if frame.comment is None:
                arrivals.append(time.perf_counter() - started)
                got.append(frame.data)
    partial = [e for e in got if e.get("partial")]
    whole = "".join(f"word{i} " for i in range(12))
    assert len(partial) >= 4, [_kind(e) for e in got]  # 12 words 50 ms apart, 50 ms coalescing
    assert "".join(e["content"]["parts"][0]["text"] for e in partial) == whole
    assert not got[-1].get("partial") and got[-1]["content"]["parts"][0]["text"] == whole
    # The partial text arrives as it is generated, not at the end.
    assert arrivals[0] < arrivals[-1] - 0.3
    print(f"\n/run_sse story streaming: first partial after {arrivals[0] * 1000:.0f} ms")
    # Without streaming: one whole text.
    async with http.stream("POST", "/run_sse", json=_run("story", "s1")) as reply:
        assert [_kind(f.data) for f in await data_frames(reply)] == ["story:text"]


async def test_run_answers_the_runs_events_when_it_ends(http: httpx.AsyncClient) -> None:
    await _session(http, "weather", "s1")
    reply = await http.post("/run", json=_run("weather", "s1"))
    assert reply.status_code == 200, reply.text
    assert [_kind(e) for e in reply.json()] == [
        "weather:functionCall",
        "weather:functionResponse",
        "weather:text",
    ]
    task_id = reply.headers[TASK]
    assert (await http.get(f"/runs/{task_id}")).json()["state"] == "completed"
    # A failed run: ADK's error text, the task and its events.
    await _session(http, "raising", "s1")
    failed = await http.post("/run", json=_run("raising", "s1"))
    assert failed.status_code == 500
    body = failed.json()
    assert body["state"] == "failed" and body["task_id"] == failed.headers[TASK]
    assert body["detail"] == "RuntimeError: the agent broke on purpose"
    assert [e["content"]["parts"][0]["text"] for e in body["events"]] == ["about to fail"]


async def test_a_failed_run_ends_run_sse_with_adks_error_frame(http: httpx.AsyncClient) -> None:
    await _session(http, "raising", "s1")
    async with http.stream("POST", "/run_sse", json=_run("raising", "s1")) as reply:
        got = await data_frames(reply)
    assert got[0].data["content"]["parts"][0]["text"] == "about to fail"
    error = got[-1].data
    assert error["error"] == "RuntimeError: the agent broke on purpose"
    assert error["error_details"]["state"] == "failed"
    assert error["error_details"]["task_id"] == reply.headers[TASK]


async def test_session_routes_in_adks_shapes(http: httpx.AsyncClient) -> None:
    created = await _session(http, "weather", "s1", color="red", **{"app:tier": "gold"})
    assert created == {
        "id": "s1",
        "appName": "weather",
        "userId": "u",
        "state": {"color": "red", "app:tier": "gold"},
        "events": [],
        "lastUpdateTime": created["lastUpdateTime"],
    }
    again = await http.post("/apps/weather/users/u/sessions", json={"sessionId": "s1"})
    assert again.status_code == 409 and again.json() == {"detail": "Session already exists: s1"}
    generated = (await http.post("/apps/weather/users/u/sessions")).json()
    assert generated["id"] and generated["userId"] == "u"
    listed = (await http.get("/apps/weather/users/u/sessions")).json()
    assert sorted(s["id"] for s in listed) == sorted(["s1", generated["id"]])
    patched = await http.patch(
        "/apps/weather/users/u/sessions/s1", json={"stateDelta": {"color": "blue", "n": 1}}
    )
    assert patched.status_code == 200 and patched.json()["state"]["color"] == "blue"
    got = (await http.get("/apps/weather/users/u/sessions/s1")).json()
    assert got["state"] == {"color": "blue", "n": 1, "app:tier": "gold"}
    assert got["events"][0]["author"] == "user"
    assert got["events"][0]["actions"]["stateDelta"] == {"color": "blue", "n": 1}
    assert (await http.delete("/apps/weather/users/u/sessions/s1")).status_code == 200
    gone = await http.get("/apps/weather/users/u/sessions/s1")
    assert gone.status_code == 404 and gone.json() == {"detail": "Session not found: s1"}
    # Import: events restored into a new session; ADK's own protocol events are refused.
    restored = await http.post(
        "/apps/weather/users/u/sessions",
        json={
            "sessionId": "s2",
            "events": [{"author": "user", "content": _message("earlier")}],
        },
    )
    assert restored.status_code == 200, restored.text
    events = (await http.get("/apps/weather/users/u/sessions/s2")).json()["events"]
    assert [e["content"]["parts"][0]["text"] for e in events] == ["earlier"]
    assert "customMetadata" not in events[0]  # the internal restored mark is not shown
    forged = await http.post(
        "/apps/weather/users/u/sessions",
        json={"events": [{"author": "x", "actions": {"stateDelta": {"a": 1}}}]},
    )
    assert forged.status_code == 400 and "event actions" in forged.json()["detail"]
    options = await http.post("/apps/weather/users/u/sessions", json={"options": {"a": 1}})
    assert options.status_code == 400


async def test_a_late_and_a_reconnecting_reader_see_every_entry_once(
    http: httpx.AsyncClient, client: SupervisorClient
) -> None:
    await _session(http, "story", "s1")
    async with http.stream(
        "POST", "/run_sse", json=_run("story", "s1", streaming=True, onDisconnect="continue")
    ) as reply:
        task_id = reply.headers[TASK]
        # A reader that leaves after three entries and comes back with Last-Event-ID.
        seen: list[Frame] = []
        async with http.stream("GET", f"/runs/{task_id}/events") as events:
            assert events.headers[TASK] == task_id
            async for frame in frames(events):
                if frame.comment is None:
                    seen.append(frame)
                if len(seen) == 3:
                    break
        async with http.stream(
            "GET", f"/runs/{task_id}/events", headers={"Last-Event-ID": seen[-1].id or ""}
        ) as events:
            seen += await data_frames(events)
        await data_frames(reply)
    stream = [e async for e in client.events(task_id)]
    assert [f.id for f in seen] == [e.id for e in stream]
    assert [f.event for f in seen] == [e.type for e in stream]
    assert seen[-1].event == "state" and seen[-1].data["state"] == "completed"
    assert seen[0].data["state"] == "queued"
    # A late reader gets the whole run and the stream ends; ?after= resumes as Last-Event-ID.
    async with http.stream("GET", f"/runs/{task_id}/events") as events:
        assert [f.id for f in await data_frames(events)] == [e.id for e in stream]
    async with http.stream("GET", f"/runs/{task_id}/events?after={stream[-2].id}") as events:
        assert [f.id for f in await data_frames(events)] == [stream[-1].id]


async def test_abort_mid_stream_ends_the_streams_with_the_end_and_kills_the_tree(
    http: httpx.AsyncClient, client: SupervisorClient
) -> None:
    daemon: Daemon = http.daemon  # type: ignore[attr-defined]
    await _session(http, "slow", "s1")
    async with http.stream("POST", "/run_sse", json=_run("slow", "s1")) as reply:
        task_id = reply.headers[TASK]
        stream = frames(reply)
        first = await anext(f async for f in stream if f.comment is None)
        assert _kind(first.data) == "slow:functionCall"
        # The run sits in its tool: the idle stream gets keep-alives (every 0.5 s here).
        async with asyncio.timeout(5):
            idle = await anext(stream)
        assert idle.comment == "ping"
        pid = int((await until_state(client, task_id, "running"))["pid"])
        assert psutil.pid_exists(pid)
        watcher_frames: list[Frame] = []

        async def watch() -> None:
            async with http.stream("GET", f"/runs/{task_id}/events") as events:
                watcher_frames.extend(await data_frames(events))

        async with asyncio.timeout(30):
            watcher = asyncio.create_task(watch())
            await asyncio.sleep(0.3)  # the watcher is following live
            aborted_at = time.perf_counter()
            reply_abort = await http.post(f"/runs/{task_id}/abort", json={"reason": "enough"})
            assert reply_abort.status_code == 200, reply_abort.text
            rest = [f async for f in stream if f.comment is None]
            ended_s = time.perf_counter() - aborted_at
            await watcher
    print(f"\nPOST /runs/{{id}}/abort -> /run_sse ended: {ended_s * 1000:.1f} ms")
    assert [f.data["error"] for f in rest] == ["RunAborted: the run ended aborted: enough"]
    assert rest[0].data["error_details"]["state"] == "aborted"
    assert [f.data["state"] for f in watcher_frames if f.event == "state"][-2:] == [
        "killing",
        "aborted",
    ]
    assert (await client.get(task_id))["reason"] == "enough"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert tree_gone(daemon)
    # A second abort of an ended run is refused; the ended run is no live run of its session.
    again = await http.post(f"/runs/{task_id}/abort")
    assert again.status_code == 409 and "already ended (aborted)" in again.json()["detail"]


async def test_a_client_that_leaves_aborts_its_run_unless_it_asked_to_continue(
    http: httpx.AsyncClient, client: SupervisorClient
) -> None:
    daemon: Daemon = http.daemon  # type: ignore[attr-defined]
    await _session(http, "slow", "s1")
    async with http.stream("POST", "/run_sse", json=_run("slow", "s1")) as reply:
        task_id = reply.headers[TASK]
        async for frame in frames(reply):
            if frame.comment is None:
                break  # the tool call: the run sits in its 60 s tool
        await until_state(client, task_id, "running")
        left_at = time.perf_counter()
    record = await until_state(client, task_id, "aborted", timeout=10)
    print(f"\n/run_sse client left -> run aborted: {(time.perf_counter() - left_at) * 1000:.1f} ms")
    assert record["reason"] == "client disconnected (onDisconnect=abort)"
    assert tree_gone(daemon)

    # onDisconnect=continue: the run goes on; :cancel stops it (and answers what it stopped).
    async with http.stream(
        "POST", "/run_sse", json=_run("slow", "s1", onDisconnect="continue")
    ) as reply:
        task_id = reply.headers[TASK]
        async for frame in frames(reply):
            if frame.comment is None:
                break
    await asyncio.sleep(1.0)
    assert (await client.get(task_id))["state"] == "running"
    # A run of the same session submitted elsewhere (the client) waits for the session.
    waiting = await client.submit("slow", "me next", user_id="u", session_id="s1")
    cancelled = await http.post("/apps/slow/users/u/sessions/s1:cancel", json={"reason": "stop"})
    assert cancelled.status_code == 200 and cancelled.json() == {"task_ids": [task_id, waiting]}
    for cancelled_id in (task_id, waiting):
        record = await until_state(client, cancelled_id, "aborted", timeout=10)
        assert record["reason"] == "stop"
    assert tree_gone(daemon)
    nothing = await http.post("/apps/slow/users/u/sessions/s1:cancel")
    assert nothing.json() == {"task_ids": []}

    # /run too: a client that gives up aborts the run.
    with pytest.raises(httpx.ReadTimeout):
        await http.post("/run", json=_run("slow", "s1"), timeout=1.5)
    runs = await task_ids(client)
    assert len(runs) == 4
    for task_id in runs:
        await until_state(client, task_id, "aborted", timeout=10)
    assert tree_gone(daemon)


async def test_inline_image_and_function_response_inputs(http: httpx.AsyncClient) -> None:
    await _session(http, "weather", "s1")
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    image = base64.b64encode(png).decode()
    message = {
        "role": "user",
        "parts": [
            {"text": "what is this?"},
            {"inlineData": {"mimeType": "image/png", "data": image}},
        ],
    }
    reply = await http.post(
        "/run",
        json={
            "appName": "weather",
            "userId": "u",
            "sessionId": "s1",
            "newMessage": message,
            "stateDelta": {"mood": "curious"},
        },
    )
    assert reply.status_code == 200, reply.text
    session = (await http.get("/apps/weather/users/u/sessions/s1")).json()
    assert session["state"] == {"mood": "curious"}
    user = session["events"][0]
    inline = user["content"]["parts"][1]["inlineData"]
    # The bytes reached the run whole (ADK's JSON writes them base64url).
    assert inline["mimeType"] == "image/png" and base64.urlsafe_b64decode(inline["data"]) == png
    # The answer to a pending tool call comes back as a function response; ADK wants its
    # call in the session: a session restored with one (ADK's import) has it.
    pending = {"functionCall": {"id": "call-9", "name": "get_weather", "args": {"city": "Oslo"}}}
    imported = await http.post(
        "/apps/weather/users/u/sessions",
        json={
            "sessionId": "s2",
            "events": [
                {"author": "user", "content": _message("weather in Oslo?")},
                {"author": "weather", "content": {"role": "model", "parts": [pending]}},
            ],
        },
    )
    assert imported.status_code == 200, imported.text
    answer = {
        "role": "user",
        "parts": [
            {
                "functionResponse": {
                    "id": "call-9",
                    "name": "get_weather",
                    "response": {"sky": "grey"},
                }
            }
        ],
    }
    reply = await http.post(
        "/run",
        json={"appName": "weather", "userId": "u", "sessionId": "s2", "newMessage": answer},
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()[-1]["content"]["parts"][0]["text"] == "The tool said: {'sky': 'grey'}"


async def test_clear_4xx_answers(http: httpx.AsyncClient, client: SupervisorClient) -> None:
    await _session(http, "weather", "s1")
    unknown = await http.post("/run_sse", json=_run("nope", "s1"))
    assert unknown.status_code == 404 and "App not found: 'nope'" in unknown.json()["detail"]
    assert (await http.get("/apps/nope/users/u/sessions")).status_code == 404
    missing = await http.post("/run", json=_run("weather", "s2"))
    assert missing.status_code == 404 and missing.json() == {"detail": "Session not found: s2"}
    malformed = await http.post(
        "/run_sse", json=_run("weather", "s1") | {"newMessage": {"parts": "not a list"}}
    )
    assert malformed.status_code == 422
    assert any("newMessage.parts" in p["msg"] for p in malformed.json()["detail"])
    no_message = await http.post(
        "/run", json={"appName": "weather", "userId": "u", "sessionId": "s1"}
    )
    assert no_message.status_code == 422 and "newMessage is required" in no_message.text
    not_json = await http.post("/run", content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 422
    # Over max_input_bytes (1 MiB): refused before the run is queued.
    big = _run("weather", "s1", "x" * (1 << 20))
    too_big = await http.post("/run", json=big)
    assert too_big.status_code == 413 and "over the limit of 1048576" in too_big.json()["detail"]
    huge = _run("weather", "s1", "x" * (2 << 20))
    way_too_big = await http.post("/run_sse", json=huge)
    assert way_too_big.status_code == 413 and "over the gateway's limit" in way_too_big.text

    async def chunks() -> Any:  # no Content-Length: counted as it arrives
        for _ in range(40):
            yield b"x" * 65536

    chunked = await http.post(
        "/run", content=chunks(), headers={"content-type": "application/json"}
    )
    assert chunked.status_code == 413
    for method, path in (
        ("GET", "/runs/nosuchtask"),
        ("POST", "/runs/nosuchtask/abort"),
        ("GET", "/runs/nosuchtask/events"),
    ):
        reply = await http.request(method, path)
        assert reply.status_code == 404 and reply.json() == {"detail": "Task not found: nosuchtask"}
    bad_id = await http.get("/runs/.bad/events")
    assert bad_id.status_code == 400 and "invalid task id" in bad_id.json()["detail"]
    run = await http.post("/run", json=_run("weather", "s1"))
    bad_cursor = await http.get(f"/runs/{run.headers[TASK]}/events", headers={"Last-Event-ID": "x"})
    assert bad_cursor.status_code == 400
    assert (await http.post("/apps/weather/users/u/sessions/s9:cancel")).status_code == 404
    # The refused requests queued nothing: the one run is the one that completed.
    assert await task_ids(client) == [run.headers[TASK]]


async def test_token_and_browser_guards(
    start_daemon: Callable[..., Daemon], start_gateway: Callable[..., GatewayProcess]
) -> None:
    start_daemon(**APPS_ENV)
    gateway = start_gateway(ADK_SUPERVISOR_GATEWAY_TOKEN="sekrit")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        assert (await http.get("/health")).json() == {"status": "ok"}
        refused = await http.get("/list-apps")
        assert refused.status_code == 401 and "Bearer" in refused.json()["detail"]
        assert refused.headers["www-authenticate"] == "Bearer"
        wrong = await http.get("/list-apps", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = await http.get("/list-apps", headers={"Authorization": "Bearer sekrit"})
        assert ok.json() == sorted(EXAMPLE_APPS)
        # A browser: ?token= once sets the cookie and drops the token from the address.
        assert (await http.get("/dev-ui/")).status_code == 401
        login = await http.get("/dev-ui/?token=sekrit&app=weather")
        assert login.status_code == 303 and login.headers["location"] == "/dev-ui/?app=weather"
        assert "HttpOnly" in login.headers["set-cookie"]
        assert "SameSite=Strict" in login.headers["set-cookie"]
        assert "sekrit" not in login.headers["set-cookie"]
        assert (await http.get("/dev-ui/")).status_code == 200  # the cookie jar carries it
        assert (await http.get("/list-apps")).status_code == 200
        # DNS rebinding: a loopback gateway refuses a Host that is not loopback...
        rebound = await http.get("/health", headers={"Host": "evil.example:8000"})
        assert rebound.status_code == 403 and rebound.json() == {
            "detail": "Forbidden: host not allowed"
        }
        # ... and a page from another origin.
        foreign = await http.post(
            "/apps/weather/users/u/sessions", headers={"Origin": "http://evil.example"}
        )
        assert foreign.status_code == 403
        own = await http.post("/apps/weather/users/u/sessions", headers={"Origin": gateway.url})
        assert own.status_code == 200


async def test_ui_files_config_and_stubs(http: httpx.AsyncClient) -> None:
    assert (await http.get("/")).headers["location"] == "/dev-ui/"
    page = await http.get("/dev-ui/")
    assert page.status_code == 200 and "<app-root" in page.text
    config = await http.get("/dev-ui/assets/config/runtime-config.json")
    assert config.json()["backendUrl"] == ""
    assert (await http.get("/list-apps?relative_path=./")).json() == sorted(EXAMPLE_APPS)
    detailed = (await http.get("/list-apps?detailed=true")).json()
    assert [a["name"] for a in detailed["apps"]] == sorted(EXAMPLE_APPS)
    assert (await http.get("/version")).json()["language"] == "python"
    for path, answer in (
        ("/dev/apps/weather/build_graph", {}),
        ("/dev/apps/weather/eval_sets", []),
        ("/dev/apps/weather/debug/trace/session/s1", []),
        ("/config/telemetry", {"telemetry": False}),
    ):
        assert (await http.get(path)).json() == answer, path
    assert (await http.get("/dev/apps/weather/builder")).text == ""


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``GET /metrics``'s samples by (name, labels without ``node``)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, frozenset((k, v) for k, v in s.labels.items() if k != "node")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_count_requests_by_route_open_streams_runs_and_stops(
    http: httpx.AsyncClient,
) -> None:
    def value(samples: dict[Any, float], name: str, **labels: str) -> float:
        return samples.get((name, frozenset(labels.items())), 0.0)

    assert (await http.get("/apps/nope/users/u/sessions")).status_code == 404
    assert (await http.get("/no/such/path")).status_code == 404
    await _session(http, "slow", "m1")
    async with http.stream("POST", "/run_sse", json=_run("slow", "m1")) as reply:
        task_id = reply.headers[TASK]
        stream = frames(reply)
        await anext(f async for f in stream if f.comment is None)
        during = _samples((await http.get("/metrics")).text)
        assert value(during, "adk_gateway_open_streams") == 1
        assert (await http.post(f"/runs/{task_id}/abort")).status_code == 200
        _ = [f async for f in stream]
    # The stream's count drops once its last frame has left.
    async with asyncio.timeout(10):
        while True:
            after = _samples((await http.get("/metrics")).text)
            if value(after, "adk_gateway_open_streams") == 0:
                break
            await asyncio.sleep(0.05)
    assert value(after, "adk_gateway_runs_started_total", app="slow") == 1
    assert value(after, "adk_gateway_stops_total", heard="yes") == 1
    sessions = "/apps/{app_name}/users/{user_id}/sessions"
    assert value(after, "adk_gateway_requests_total", route=sessions, method="GET", code="404") == 1
    assert (
        value(after, "adk_gateway_requests_total", route=sessions, method="POST", code="200") == 1
    )
    assert (
        value(after, "adk_gateway_requests_total", route="/run_sse", method="POST", code="200") == 1
    )
    # A path no route serves is one label value, whatever the caller sent.
    assert (
        value(after, "adk_gateway_requests_total", route="unmatched", method="GET", code="404") == 1
    )
    assert (
        value(after, "adk_gateway_response_start_seconds_count", route="/run_sse", method="POST")
        == 1
    )


async def test_metrics_need_the_token_like_every_route(
    start_daemon: Callable[..., Daemon], start_gateway: Callable[..., GatewayProcess]
) -> None:
    start_daemon(**APPS_ENV)
    gateway = start_gateway(ADK_SUPERVISOR_GATEWAY_TOKEN="sekrit")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        assert (await http.get("/metrics")).status_code == 401
        ok = await http.get("/metrics", headers={"Authorization": "Bearer sekrit"})
        assert ok.status_code == 200
        # The refused scrape was counted, under no route (the guard answered before routing).
        samples = _samples(ok.text)
        assert (
            samples[
                (
                    "adk_gateway_requests_total",
                    frozenset({("route", "unmatched"), ("method", "GET"), ("code", "401")}),
                )
            ]
            == 1
        )
