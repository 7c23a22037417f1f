"""Headless Chromium driven over the Chrome DevTools Protocol (a websocket), for the UI test.

Debian's ``chromium`` package is the browser; ``websockets`` (which ADK brings)
is the client. No browser download, no driver binary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import websockets

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # as root, Chromium refuses to start with its sandbox
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
    "--remote-debugging-port=0",
]


def chromium_binary() -> str:
    """The path of Debian's chromium; AssertionError saying how to install it if missing."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise AssertionError(
            "the browser test needs Chromium: `apt-get install -y chromium` as root "
            "(`make pytest` does it through its host-tools step)"
        )
    return path


class Page:
    """One page target: commands, and the events Chromium sent since the last look."""

    def __init__(self, socket: Any) -> None:
        self._socket = socket
        self._next = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []

    async def _read(self) -> None:
        async for raw in self._socket:
            message = json.loads(raw)
            future = self._pending.pop(message.get("id", -1), None)
            if future is not None:
                future.set_result(message)
            else:
                self.events.append(message)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Sends one command and returns its result."""
        self._next += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next] = future
        await self._socket.send(json.dumps({"id": self._next, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, 30)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply["result"]
        return result

    async def js(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        reply = await self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20) -> Any:
        """Polls ``expression`` until it is truthy; its value."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = await self.js(expression)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                text = await self.js("document.body ? document.body.innerText : ''")
                raise AssertionError(
                    f"not true after {timeout}s: {expression}\npage text: {str(text)[-2000:]}"
                    f"\nerrors: {self.console_errors()}"
                )
            await asyncio.sleep(0.05)

    async def type_and_enter(self, selector: str, text: str) -> None:
        """Focuses ``selector``, types ``text`` as a user would, and presses Enter."""
        await self.js(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.call("Input.insertText", text=text)
        key = {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13}
        await self.call("Input.dispatchKeyEvent", type="keyDown", text="\r", **key)
        await self.call("Input.dispatchKeyEvent", type="keyUp", **key)

    async def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element."""
        box = await self.js(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            await self.call(
                "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1
            )

    def console_errors(self) -> list[str]:
        """Errors the page logged (console, exceptions, failed loads) so far."""
        errors = []
        for event in self.events:
            params = event.get("params", {})
            if event.get("method") == "Log.entryAdded" and params["entry"]["level"] == "error":
                entry = params["entry"]
                errors.append(f"{entry['text']} {entry.get('url', '')}".strip())
            elif event.get("method") == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                errors.append(details.get("exception", {}).get("description", details["text"]))
            elif event.get("method") == "Runtime.consoleAPICalled" and params["type"] == "error":
                errors.append(
                    " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
                )
        return errors


@contextlib.asynccontextmanager
async def chromium_page() -> AsyncIterator[Page]:
    """A fresh headless Chromium (own profile) and its first page, closed afterwards."""
    profile = tempfile.mkdtemp(prefix="chromium-")
    proc = subprocess.Popen(
        [chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        endpoint = None
        for line in proc.stderr:  # Chromium says where DevTools listens, then keeps talking
            found = re.search(r"DevTools listening on ws://([^/]+)/", line)
            if found:
                endpoint = found.group(1)
                break
        assert endpoint, f"chromium did not start (exit {proc.poll()})"
        _drain(proc)
        async with httpx.AsyncClient() as http:
            targets = (await http.get(f"http://{endpoint}/json/list")).json()
        page_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        async with websockets.connect(page_url, max_size=64 << 20) as socket:
            page = Page(socket)
            reader = asyncio.create_task(page._read())
            try:
                for domain in ("Runtime", "Network", "Page", "Log"):
                    await page.call(f"{domain}.enable")
                yield page
            finally:
                reader.cancel()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def _drain(proc: subprocess.Popen[str]) -> None:
    """Reads the rest of Chromium's stderr in a thread, so a full pipe never blocks it."""
    stream = proc.stderr
    assert stream is not None
    threading.Thread(target=stream.read, daemon=True).start()
