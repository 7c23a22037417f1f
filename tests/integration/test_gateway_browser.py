"""ADK's own web UI, served by the gateway, in a real headless Chromium: chat, then stop.

The UI's stop button only aborts its fetch of ``/run_sse``; the gateway takes
the disconnect as the user's stop and the run's whole process tree dies.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

import pytest

from supervisor.client import SupervisorClient

from .cdp import chromium_page
from .daemon_harness import Daemon, until_state
from .gateway_harness import EXAMPLE_APPS, GatewayProcess, task_ids, tree_gone

pytestmark = pytest.mark.anyio

# Errors that are not the gateway's: web fonts from Google the page cannot load (this host
# has no internet), and the UI's own unhandled rejection of the fetch its stop button aborts.
_NOT_OURS = re.compile(r"https?://(?!127\.0\.0\.1[:/])|^AbortError: signal is aborted")


async def test_the_web_ui_chats_with_a_supervised_agent_and_its_stop_button_kills_the_run(
    start_daemon: Callable[..., Daemon],
    start_gateway: Callable[..., GatewayProcess],
    client: SupervisorClient,
) -> None:
    daemon = start_daemon(ADK_SUPERVISOR_APPS=json.dumps(EXAMPLE_APPS))
    gateway = start_gateway()
    async with chromium_page() as page:
        await page.call("Page.navigate", url=f"{gateway.url}/dev-ui/?app=weather")
        await page.wait_for("!!document.querySelector('textarea')")
        await page.type_and_enter("textarea", "weather in Zurich?")
        await page.wait_for(
            "document.body.innerText.includes(\"The tool said: {'city': 'Zurich'\")"
        )
        [chat] = await task_ids(client)  # a supervised run answered
        await until_state(client, chat, "completed")

        await page.call("Page.navigate", url=f"{gateway.url}/dev-ui/?app=slow")
        await page.wait_for("!!document.querySelector('textarea')")
        await page.type_and_enter("textarea", "take your time")
        await page.wait_for("document.body.innerText.includes('slow_lookup(')")
        [slow] = [t for t in await task_ids(client) if t != chat]
        pid = int((await until_state(client, slow, "running"))["pid"])
        await page.wait_for("!!document.querySelector('button.stop-message-btn')")
        pressed = time.perf_counter()
        await page.click("button.stop-message-btn")
        record = await until_state(client, slow, "aborted", timeout=10)
        print(f"\nweb UI stop -> run aborted: {(time.perf_counter() - pressed) * 1000:.0f} ms")
        assert record["reason"] == "client disconnected (onDisconnect=abort)"
        assert record["signal"] == "SIGKILL" and record["pid"] == str(pid)
        assert tree_gone(daemon)
        await page.wait_for("!document.querySelector('button.stop-message-btn')")
        errors = [e for e in page.console_errors() if not _NOT_OURS.search(e)]
        assert errors == [], errors
