"""The daemon's operator surface: status socket, sd_notify, Redis heartbeat, drain, shutdown.

A mixin of :class:`~supervisor.daemon.Supervisor`, kept apart from the run
machinery so each can change without touching the other. Every task it starts
lives in the daemon's task group and ends when that group is cancelled.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import anyio
import psutil
from anyio.abc import TaskGroup

from agent_runtime.redis_connection import REDIS_ERRORS, redact_url
from agent_runtime.task_store import TaskState

from .control import ControlHandler
from .peers import node_heartbeat_key, nodes_key
from .process_tree import descendants
from .sd_notify import SdNotifier, watchdog_interval
from .status_socket import StatusSocketServer

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from agent_runtime.task_store import TaskStore

    from .config import Settings
    from .daemon import ActiveRun
    from .process_tree import Containment
    from .spawner import Spawner

__all__ = ["OperatorMixin", "package_version"]

log = logging.getLogger("adk_supervisor")


def package_version() -> str:
    """The installed adk-supervisor version."""
    try:
        return version("adk-supervisor")
    except PackageNotFoundError:
        return "unknown"


def _tree_usage(pid: int) -> tuple[int, float]:
    """RSS bytes and CPU seconds of a process and all its descendants (0 for gone ones)."""
    rss, cpu = 0, 0.0
    # The tree from the kernel's children lists: psutil's recursive children() reads
    # every process on the host, on the event loop, per run, per status request.
    procs = []
    for member in (pid, *descendants(pid)):
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(member))
    for proc in procs:
        try:
            with proc.oneshot():
                rss += proc.memory_info().rss
                times = proc.cpu_times()
                cpu += times.user + times.system
        except psutil.Error:
            continue
    return rss, cpu


class OperatorMixin:
    """Status, drain, heartbeat and shutdown policy of the daemon."""

    if TYPE_CHECKING:
        settings: Settings
        node_id: str
        redis_url: str
        client: aioredis.Redis
        store: TaskStore
        stream: str
        containment: Containment | None
        spawner: Spawner
        runs: dict[str, ActiveRun]
        pid: int
        started_at: float
        draining: bool
        redis_healthy: bool
        embedded_redis: bool
        finished_counts: Counter[str]
        notifier: SdNotifier
        _redis_checked_at: float
        _capacity: anyio.Semaphore
        _outbox_empty: anyio.Event

        def _resolve_app(self, app: str) -> str: ...
        def _kill(self, run: ActiveRun, state: TaskState, reason: str) -> None: ...
        async def _fence(self) -> None: ...

    # ---------------------------------------------------------------- public

    def check_app(self, app: str) -> None:
        """Raises ValueError naming the choices if ``app`` is neither in [apps] nor an import path."""
        self._resolve_app(app)

    def drain(self) -> None:
        """Stops taking new runs; running runs go on to their end."""
        if not self.draining:
            self.draining = True
            log.info("draining: taking no new runs; %d running runs go on", len(self.runs))
            self.notifier.status(self.summary())

    def summary(self) -> str:
        """One line for ``systemctl status`` and logs."""
        done = sum(self.finished_counts.values())
        redis = "redis ok" if self.redis_healthy else "redis DOWN"
        mode = ", draining" if self.draining else ""
        return f"{len(self.runs)} running, {done} finished, {redis}{mode}"

    def status_snapshot(self) -> dict[str, Any]:
        """What ``adk-supervisor status`` shows: node, health, counts and every running run."""
        now = time.monotonic()
        by_ref = {ref: name for name, ref in self.settings.apps.items()}
        runs = []
        for task_id, run in list(self.runs.items()):
            # A reaped leader's PID may name someone else by now: report nothing for it.
            rss, cpu = _tree_usage(run.pid) if run.pidfd is not None else (0, 0.0)
            runs.append({
                "task_id": task_id, "app": by_ref.get(run.spec.app_ref, run.spec.app_ref),
                "user_id": run.spec.user_id, "session_id": run.spec.session_id,
                "pid": run.pid, "elapsed_s": round(now - run.started, 3),
                "timeout_in_s": None if run.deadline is None else round(run.deadline - now, 3),
                "rss_bytes": rss, "cpu_s": round(cpu, 3), "killing": run.kill is not None,
            })  # fmt: skip
        return {
            "node_id": self.node_id,
            "version": package_version(),
            "pid": self.pid,
            "uptime_s": round(time.time() - self.started_at, 3),
            "redis": {
                "url": redact_url(self.redis_url),
                "connected": self.redis_healthy,
                "embedded": self.embedded_redis,
            },
            "kill_mechanism": self.containment.name if self.containment else None,
            "spawner": self.spawner.name,
            "draining": self.draining,
            "max_concurrent_runs": self.settings.max_concurrent_runs,
            "counts": {TaskState.RUNNING.value: len(runs), **self.finished_counts},
            "runs": runs,
            "state_dir": str(self.settings.state_dir),
            "socket_path": str(self.settings.status_socket),
        }

    # ----------------------------------------------------------------- tasks

    async def _start_operator_tasks(self, tg: TaskGroup) -> None:
        """Status socket, heartbeat and watchdog in the daemon's task group, then ``READY=1``."""
        server = StatusSocketServer(
            self.settings.status_socket, ControlHandler(self),  # type: ignore[arg-type]
            mode=self.settings.socket_mode, group=self.settings.socket_group,
            max_connections=self.settings.socket_max_connections,
            idle_timeout_s=self.settings.socket_idle_timeout_s,
        )  # fmt: skip
        await tg.start(server.serve)
        log.info("status socket at %s", self.settings.status_socket)
        await self._check_redis()
        tg.start_soon(self._heartbeat)
        interval = watchdog_interval()
        if interval is not None:
            tg.start_soon(self._watchdog, interval)
        self.notifier.ready(self.summary())

    async def _check_redis(self) -> None:
        interval = self.settings.heartbeat_interval_s
        beat = json.dumps({"pid": self.pid, "at": time.time(), "runs": len(self.runs)})
        try:
            with anyio.fail_after(max(interval, 1.0)):
                async with self.client.pipeline(transaction=False) as pipe:
                    pipe.set(node_heartbeat_key(self.settings.key_prefix, self.node_id),
                             beat, px=int(interval * 3000))  # fmt: skip
                    # Back in the registry, should a peer have taken this node over.
                    pipe.sadd(nodes_key(self.settings.key_prefix), self.node_id)
                    await pipe.execute()
        except REDIS_ERRORS as exc:
            if self.redis_healthy:
                log.warning("Redis lost (%s): kills go on locally, records wait", exc)
            self.redis_healthy = False
        else:
            if not self.redis_healthy:
                log.info("Redis back")
                await self._fence()
            self.redis_healthy = True
            self._redis_checked_at = time.monotonic()
        self.notifier.status(self.summary())

    async def _heartbeat(self) -> None:
        while True:
            await anyio.sleep(self.settings.heartbeat_interval_s)
            await self._check_redis()

    async def _watchdog(self, interval: float) -> None:
        # This task runs on the event loop, so a ping proves the loop turns; it is only
        # sent while the last heartbeat reached Redis recently enough.
        stale_after = 3 * self.settings.heartbeat_interval_s + 1
        while True:
            fresh = time.monotonic() - self._redis_checked_at < stale_after
            if self.redis_healthy and fresh:
                self.notifier.watchdog()
            await anyio.sleep(interval)

    async def _shutdown_runs(self) -> None:
        """The stop path: drain or kill per ``on_shutdown``, record every terminal state."""
        self.draining = True
        policy = self.settings.on_shutdown
        self.notifier.stopping(f"stopping ({policy}): {self.summary()}")
        log.info("shutting down (on_shutdown=%s): %d running runs", policy, len(self.runs))
        if policy == "drain" and self.runs:
            with anyio.move_on_after(self.settings.drain_timeout_s):
                for run in list(self.runs.values()):
                    await run.finished.wait()
            if self.runs:
                log.warning("drain deadline of %gs passed: killing %d runs",
                            self.settings.drain_timeout_s, len(self.runs))  # fmt: skip
        reason = (
            "supervisor shutting down"
            if policy == "kill"
            else f"supervisor shutting down: drain deadline of {self.settings.drain_timeout_s:g}s passed"
        )
        # Until every run slot is back: a run being spawned right now gets killed too.
        with anyio.move_on_after(self.settings.kill_grace_s + 30):
            while self._capacity.value < self.settings.max_concurrent_runs:
                for run in list(self.runs.values()):
                    self._kill(run, TaskState.ABORTED, reason)
                await anyio.sleep(0.02)
        with anyio.move_on_after(10):
            await self._outbox_empty.wait()
        with contextlib.suppress(*REDIS_ERRORS):
            with anyio.fail_after(2):
                await self.client.delete(node_heartbeat_key(self.settings.key_prefix, self.node_id))
        log.info("stopped: %s", self.summary())
