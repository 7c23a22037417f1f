"""Starting a real gateway (``python -m supervisor gateway``) on a free port against the test Redis."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from supervisor.client import SupervisorClient

from .daemon_harness import ROOT, Daemon

EXAMPLE_APPS = {
    "weather": "examples.agents:weather_agent",
    "slow": "examples.agents:slow_agent",
    "story": "examples.agents:story_agent",
    "raising": "examples.agents:raising_agent",
}
"""The [apps] both the test daemon and the test gateway are configured with."""

_READY = re.compile(r"gateway: ready: (http://\S+)")


class GatewayProcess:
    """``adk-supervisor gateway --port 0`` as a child of the test; ``url`` once it is ready."""

    def __init__(self, redis_url: str, key_prefix: str, log_path: Path, **env: str) -> None:
        self.redis_url = redis_url
        self.log_path = log_path
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "ADK_SUPERVISOR_KEY_PREFIX": key_prefix,
            "ADK_SUPERVISOR_APPS": json.dumps(EXAMPLE_APPS),
            "ADK_SUPERVISOR_STATE_DIR": str(log_path.parent),
            "ADK_SUPERVISOR_LOG_LEVEL": "DEBUG",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 60.0) -> str:
        """Starts the gateway and returns its base URL once it serves."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        command = [sys.executable, "-m", "supervisor", "--redis-url", self.redis_url, "gateway"]
        self.proc = subprocess.Popen(
            [*command, "--port", "0"],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}: {self.log()}")
            found = _READY.search(self.log())
            if found:
                self.url = found.group(1)
                return self.url
            time.sleep(0.05)
        raise RuntimeError(f"gateway not ready after {timeout}s: {self.log()}")

    def log(self) -> str:
        """What the gateway logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int:
        """SIGTERM, then wait for it to exit."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def tree_gone(daemon: Daemon, timeout: float = 10) -> bool:
    """Whether every run process below the daemon is gone within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while daemon.descendants():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


async def task_ids(client: SupervisorClient) -> list[str]:
    """The ids of every task record under the client's key prefix (one test's tasks)."""
    pattern = client.store.keys.task("*")
    return [k.decode()[len(pattern) - 1 :] async for k in client.store.client.scan_iter(pattern)]
