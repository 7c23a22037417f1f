"""The operator console (``/console``): its JSON and SSE over real HTTP, and the page in Chromium.

A real daemon (heartbeat every 0.5 s, so its usage hash is fresh) and a real
gateway share the test Redis; runs are the example ``slow`` agent, which sits
in its tool for a minute.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import psutil
import pytest

from supervisor.client import SupervisorClient

from .cdp import chromium_page
from .daemon_harness import Daemon, until_state
from .gateway_harness import EXAMPLE_APPS, GatewayProcess, tree_gone
from .sse import Frame, frames

pytestmark = pytest.mark.anyio

DAEMON_ENV = {
    "ADK_SUPERVISOR_APPS": json.dumps(EXAMPLE_APPS),
    "ADK_SUPERVISOR_HEARTBEAT_INTERVAL_S": "0.5",
    "ADK_SUPERVISOR_NODE_DEAD_AFTER_S": "5",
}


class Stream:
    """The console's event stream, read frame by frame."""

    def __init__(self, response: httpx.Response) -> None:
        self._frames: AsyncIterator[Frame] = frames(response)

    async def next(self, event: str, match: Callable[[Any], bool], timeout: float = 20) -> Any:
        """The data of the next ``event`` frame for which ``match`` holds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            frame = await anext(self._frames)
            if frame.event == event and match(frame.data):
                return frame.data
        raise AssertionError(f"no {event} frame matched within {timeout}s")


def _row(rows: list[dict[str, Any]], task_id: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["task_id"] == task_id), None)


async def test_the_console_streams_runs_queue_usage_and_ends_and_stop_kills_the_tree(
    start_daemon: Callable[..., Daemon],
    start_gateway: Callable[..., GatewayProcess],
    client: SupervisorClient,
) -> None:
    daemon = start_daemon(**DAEMON_ENV)
    gateway = start_gateway(ADK_SUPERVISOR_GATEWAY_KEEPALIVE_S="0.5")
    async with (
        httpx.AsyncClient(base_url=gateway.url, timeout=30) as http,
        http.stream("GET", "/console/api/events") as reply,
    ):
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        stream = Stream(reply)
        first = await stream.next("snapshot", lambda _: True)
        assert first["live"] == [] and first["queued"] == []
        assert [n["node_id"] for n in first["nodes"]] == [daemon.node_id]
        assert first["nodes"][0]["alive"] is True

        slow = await client.submit("slow", "take your time", user_id="ops", session_id="s1")
        # Each row is the record re-read after a transition: it may be a step ahead.
        first_row = await stream.next("run", lambda r: r["task_id"] == slow)
        assert first_row["state"] in ("queued", "starting", "running")
        assert first_row["app"] == "slow"
        running = first_row
        if "pid" not in running:
            running = await stream.next("run", lambda r: r["task_id"] == slow and "pid" in r)
        assert running["state"] == "running" and running["node_id"] == daemon.node_id
        pid = running["pid"]
        assert running["user_id"] == "ops" and running["started_at"] > 0

        # CPU and memory of the run's tree, from the daemon's usage hash.
        usage = await stream.next("usage", lambda u: slow in u["usage"])
        figures = usage["usage"][slow]
        assert figures["pid"] == pid and figures["rss_bytes"] > 10 << 20 and figures["cpu_s"] > 0

        # A second run of the same session waits for the first.
        behind = await client.submit("slow", "me next", user_id="ops", session_id="s1")
        waiting = await stream.next("run", lambda r: r["task_id"] == behind)
        assert waiting["state"] == "queued"
        state = (await http.get("/console/api/state")).json()
        live = _row(state["live"], slow)
        assert live is not None and live["pid"] == pid, state["live"]
        assert state["usage"][slow]["rss_bytes"] > 0
        row = await _eventually_queued(http, behind)
        assert row["waiting_for"] == slow, row

        # Stop, as the page does: the run's tree dies, the console sees it end with the reason.
        tree = [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
        stopped = await http.post(f"/runs/{slow}/abort", json={"reason": "console test: stuck"})
        assert stopped.status_code == 200, stopped.text
        ended = await stream.next("run", lambda r: r["task_id"] == slow and r["state"] != "running")
        assert ended["state"] == "aborted" and ended["reason"] == "console test: stuck"
        assert not any(psutil.pid_exists(p) for p in tree), tree
        # The waiting run gets its turn; stopping a queued one works the same way.
        await until_state(client, behind, "running")
        assert (await http.post(f"/runs/{behind}/abort", json={"reason": "enough"})).is_success
        await until_state(client, behind, "aborted")
        assert tree_gone(daemon)

    state = (await http_get(gateway, "/console/api/state")).json()
    assert state["live"] == [] and state["queued"] == []
    ends = {r["task_id"]: r for r in state["ended"]}
    assert ends[slow]["state"] == "aborted" and ends[slow]["reason"] == "console test: stuck"
    assert ends[behind]["reason"] == "enough" and ends[behind]["node_id"] == daemon.node_id


async def _eventually_queued(http: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    """The run's row in the snapshot's queue once the daemon parked it behind its session."""
    deadline = time.monotonic() + 10
    while True:
        row = _row((await http.get("/console/api/state")).json()["queued"], task_id)
        if row is not None and row.get("waiting_for"):
            return row
        assert time.monotonic() < deadline, f"{task_id} never shown waiting: {row}"
        await asyncio.sleep(0.05)


async def http_get(gateway: GatewayProcess, path: str, **kwargs: Any) -> httpx.Response:
    """One GET on the gateway."""
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        return await http.get(path, **kwargs)


async def test_the_console_page_and_files_are_served_with_the_gateways_token(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    gateway = start_gateway(ADK_SUPERVISOR_GATEWAY_TOKEN="s3cret")
    for path in ("/console", "/console/api/state", "/console/static/console.js"):
        assert (await http_get(gateway, path)).status_code == 401, path
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        opened = await http.get("/console?token=s3cret")
        assert opened.status_code == 303 and opened.headers["location"] == "/console"
        page = await http.get("/console")  # the cookie the redirect set
        assert page.status_code == 200 and "console/static/console.js" in page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        script = await http.get("/console/static/console.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        assert (await http.get("/console/api/state")).status_code == 200


async def test_garbage_in_the_consoles_keys_is_skipped_not_an_error(
    start_gateway: Callable[..., GatewayProcess], client: SupervisorClient
) -> None:
    keys = client.store.keys
    redis = client.client
    await redis.sadd(keys.nodes, "n1", "bad:node")
    await redis.set(keys.node_tasks("n1"), "not a set")
    await redis.hset(
        keys.node_usage("n1"),
        mapping={"t1": "{not json", "../x": json.dumps({"rss": 1}), "t2": json.dumps([1])},
    )
    await redis.xadd(keys.task_history, {"event": "garbage"})
    await redis.xadd(
        keys.task_history, {"event": json.dumps({"task_id": "t/x", "state": "failed"})}
    )
    await redis.xadd(keys.task_history, {"nothing": "here"})
    await redis.rpush(keys.coordination + "session-queue:a:b:c", "t 1", "\xff")
    await redis.set(keys.runs, "no stream")
    gateway = start_gateway()
    reply = await http_get(gateway, "/console/api/state")
    assert reply.status_code == 200, reply.text
    state = reply.json()
    assert state["live"] == state["queued"] == state["ended"] == []
    assert state["usage"] == {}
    assert [n["node_id"] for n in state["nodes"]] == ["n1"]


async def test_the_console_in_a_real_browser_shows_a_new_run_its_log_and_stop_kills_it(
    start_daemon: Callable[..., Daemon],
    start_gateway: Callable[..., GatewayProcess],
    client: SupervisorClient,
) -> None:
    daemon = start_daemon(**DAEMON_ENV)
    gateway = start_gateway()
    async with chromium_page() as page:
        await page.call("Page.navigate", url=f"{gateway.url}/console")
        await page.wait_for("document.getElementById('link')?.textContent === 'live'")
        await page.js("window.__loaded = true")  # gone if the page reloads

        slow = await client.submit("slow", "take your time", user_id="ops", session_id="b1")
        row = f"#live tr[data-task={json.dumps(slow)}]"
        await page.wait_for(f"!!document.querySelector('{row}')")
        pid = int((await until_state(client, slow, "running"))["pid"])
        await page.wait_for(f"document.querySelector('{row}').innerText.includes('{pid}')")
        await page.wait_for(f"document.querySelector('{row}').innerText.includes('MiB')")
        assert daemon.node_id in await page.js(f"document.querySelector('{row}').innerText")

        await page.click(row)  # its event log: the tool call it sits in
        await page.wait_for("document.getElementById('log').innerText.includes('slow_lookup(')")
        if shot := os.environ.get("CONSOLE_SCREENSHOT"):  # README's picture: this page, now
            await page.wait_for(f"document.querySelector('{row}').innerText.includes('%')")
            png = await page.call("Page.captureScreenshot", format="png")
            await anyio.Path(shot).write_bytes(base64.b64decode(png["data"]))

        await page.js("document.getElementById('stop-reason').value = 'runaway, from the page'")
        tree = [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
        pressed = time.perf_counter()
        await page.click(f"{row} button.stop")
        record = await until_state(client, slow, "aborted", timeout=10)
        print(f"\nconsole Stop -> run aborted: {(time.perf_counter() - pressed) * 1000:.0f} ms")
        assert record["reason"] == "runaway, from the page"
        ended = f"#ended tr[data-task={json.dumps(slow)}]"
        await page.wait_for(
            f"!!document.querySelector('{ended}') && "
            f"document.querySelector('{ended}').innerText.includes('aborted')"
        )
        assert await page.js(f"!document.querySelector('{row}')")
        await page.wait_for("document.getElementById('log').innerText.includes('[aborted]')")
        assert not any(psutil.pid_exists(p) for p in tree), tree
        assert tree_gone(daemon)
        assert await page.js("window.__loaded === true")  # all of it without a reload
        assert page.console_errors() == [], page.console_errors()
