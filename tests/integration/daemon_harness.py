"""Starting a real supervisor daemon process against the test Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil

from supervisor.client import SupervisorClient

ROOT = Path(__file__).resolve().parents[2]


class Daemon:
    """``python -m supervisor run`` as a child of the test, with its own node id and state dir."""

    def __init__(
        self, redis_url: str | None, key_prefix: str, state_dir: Path, mechanism: str, **env: str
    ) -> None:
        self.redis_url = redis_url
        self.key_prefix = key_prefix
        self.state_dir = state_dir
        self.node_id = env.pop("node_id", f"node-{uuid.uuid4().hex[:8]}")
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "ADK_SUPERVISOR_KEY_PREFIX": key_prefix,
            "ADK_SUPERVISOR_NODE_ID": self.node_id,
            "ADK_SUPERVISOR_STATE_DIR": str(state_dir),
            "ADK_SUPERVISOR_KILL_MECHANISM": mechanism,
            "ADK_SUPERVISOR_LOG_LEVEL": "DEBUG",
            "ADK_EXAMPLE_HOLD_S": "60",
            # The tests name agents by import path; production configs name [apps].
            "ADK_SUPERVISOR_ALLOW_IMPORT_PATHS": "true",
            **env,
        }
        self.cwd = ROOT
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = state_dir / "daemon.log"

    def start(self, timeout: float = 30.0) -> None:
        """Starts the daemon and waits until its abort subscription is up."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        seen = len(self.log())  # a restart on the same state_dir appends to the same log
        log = self.log_path.open("ab")
        # No redis_url: the daemon starts its embedded Redis in state_dir.
        url = ["--redis-url", self.redis_url] if self.redis_url else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", *url, "run"],
            env=self.env,
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}: {self.log()}")
            if "ready: reconcile done" in self.log()[seen:]:
                return
            time.sleep(0.02)
        raise RuntimeError(f"daemon not ready after {timeout}s: {self.log()}")

    @property
    def socket_path(self) -> Path:
        """The status socket (``socket_path`` defaults to ``state_dir/supervisor.sock``)."""
        return Path(self.env.get("ADK_SUPERVISOR_SOCKET_PATH", self.state_dir / "supervisor.sock"))

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``adk-supervisor ARGS`` with this daemon's environment (so its config)."""
        return subprocess.run(
            [sys.executable, "-m", "supervisor", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def log(self) -> str:
        """What the daemon logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def logged(self, text: str, timeout: float = 10) -> bool:
        """Whether the daemon logs ``text`` within ``timeout`` seconds.

        A log line may follow the Redis write a test saw (the daemon logs after it
        acted), so a reader of both waits a moment for the line.
        """
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    @property
    def pid(self) -> int:
        """The daemon's PID."""
        assert self.proc is not None
        return self.proc.pid

    def descendants(self) -> list[psutil.Process]:
        """Every live process below the daemon but its fork server: what runs left behind."""
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        found = []
        for proc in children:
            try:  # one that exits meanwhile is gone, not an error
                if proc.status() != psutil.STATUS_ZOMBIE and (
                    "agent_runtime.fork_server" not in proc.cmdline()
                ):
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def kill9(self) -> None:
        """SIGKILLs the daemon, as a crash would."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        """SIGTERM, then wait for a clean exit."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


async def until_state(
    client: SupervisorClient, task_id: str, state: str, timeout: float = 60
) -> dict[str, str]:
    """The task's record once it is in ``state``; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = await client.store.get(task_id)
        if record and record.get("state") == state:
            return record
        await asyncio.sleep(0.02)
    raise AssertionError(f"{task_id} never reached {state}: {await client.store.get(task_id)}")
