"""The supervisor daemon: takes runs from a Redis stream, runs each in its own process
tree, kills trees on abort or timeout, and records every run in the task state machine.

Concurrency is one anyio task group: the reaper, the abort listener, the
outbox flusher, the stream consumer and one task per run. Kills happen
synchronously in the event loop, with no Redis round trip in between.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import anyio
import redis.asyncio as aioredis
from anyio.abc import TaskStatus
from redis.exceptions import ResponseError

from agent_runtime.child import RunSpec
from agent_runtime.redis_connection import REDIS_ERRORS, as_text, connect, redact_url
from agent_runtime.session_sealing import seal_task_session
from agent_runtime.session_service import RedisSessionService
from agent_runtime.task_store import (
    TaskState,
    TaskStore,
    TransitionResult,
    check_task_id,
    parse_abort_payload,
)

from .config import Settings
from .daemon_ops import OperatorMixin
from .peers import PeerWatch, node_tasks_key
from .process_tree import (
    Containment,
    RunContainer,
    boot_id,
    choose_containment,
    process_start_ticks,
    set_child_subreaper,
)
from .reconcile import reconcile_node, seal_orphans
from .sd_notify import SdNotifier
from .spawner import ExecSpawner, ForkServerSpawner, Spawner

__all__ = ["RUNS_GROUP", "Supervisor", "runs_stream"]

log = logging.getLogger("adk_supervisor")

RUNS_GROUP = "supervisors"


def runs_stream(key_prefix: str) -> str:
    """The stream clients XADD runs to."""
    return f"{key_prefix}runs"


@dataclass(eq=False)
class ActiveRun:
    """A run whose process tree this daemon owns."""

    spec: RunSpec
    container: RunContainer
    pid: int
    pidfd: int | None  # None once reaped: never signal through a reaped PID
    start_ticks: int
    started: float
    deadline: float | None
    exited: anyio.Event = field(default_factory=anyio.Event)
    exited_or_killed: anyio.Event = field(default_factory=anyio.Event)
    finished: anyio.Event = field(default_factory=anyio.Event)
    wait_status: int | None = None
    rusage: Any = None
    kill: tuple[TaskState, str, int] | None = None  # (state, reason, signal) of our kill
    kill_sent_at: float | None = None


class Supervisor(OperatorMixin):
    """One daemon: ``await Supervisor(settings).serve()`` until :meth:`stop`."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis_url: str | None = None,
        spawner: Spawner | None = None,
    ) -> None:
        self.settings = settings
        self.redis_url = redis_url or settings.redis_url or "redis://localhost:6379/0"
        self.node_id = settings.node_id
        self.boot_id = boot_id()
        self.log_dir = settings.state_dir / "logs"
        self.spawner = spawner or (
            ForkServerSpawner(list(settings.apps.values()), self.log_dir / "fork-server.log")
            if settings.spawn_mode == "fork-server"
            else ExecSpawner()
        )
        self.client: aioredis.Redis = connect(self.redis_url)
        self.store = TaskStore(self.client, settings.key_prefix)
        self.stream = runs_stream(settings.key_prefix)
        self.node_key = node_tasks_key(settings.key_prefix, self.node_id)
        self.peers = PeerWatch(
            self.store, self.stream, RUNS_GROUP, self.node_id, settings.node_dead_after_s
        )
        self._claims = 0  # bumped when entries of a gone peer are claimed: re-read pending
        self.containment: Containment | None = None
        self.runs: dict[str, ActiveRun] = {}
        self._by_pid: dict[int, ActiveRun] = {}
        self._outbox: deque[tuple[str, TaskState, dict[str, object]]] = deque()
        self._outbox_wake = anyio.Event()
        self._outbox_empty = anyio.Event()
        self._outbox_empty.set()
        self._stopping = anyio.Event()
        self._child_exited = anyio.Event()
        self._capacity = anyio.Semaphore(settings.max_concurrent_runs)
        # Exit statuses of processes reaped while a spawn was in flight: a forked run
        # may die (and be reaped) before its spawner has told us its PID.
        self._unclaimed: dict[
            int, tuple[int, int, Any]
        ] = {}  # pid -> (reap number, status, rusage)
        self._reaps = 0
        self._spawning = 0
        self._starting: dict[str, str | None] = {}  # task -> parked abort reason
        # Operator surface (status socket, sd_notify, heartbeat, drain): see daemon_ops.py.
        self.pid = os.getpid()
        self.started_at = time.time()
        self.draining = False
        self.redis_healthy = True
        self.embedded_redis = False
        self.finished_counts: Counter[str] = Counter()
        self._redis_checked_at = time.monotonic()
        self.notifier = SdNotifier.from_env()

    # ----------------------------------------------------------------- lifecycle

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Reconciles orphans, then serves until :meth:`stop`; kills remaining runs on the way out."""
        set_child_subreaper()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.containment = choose_containment(self.settings.kill_mechanism, self.node_id)
        self.spawner.start()
        log.info(
            "adk-supervisor node=%s redis=%s kill_mechanism=%s spawner=%s max_concurrent_runs=%d",
            self.node_id, redact_url(self.redis_url), self.containment.name, self.spawner.name,
            self.settings.max_concurrent_runs,
        )  # fmt: skip
        backoff = 0.5
        while True:
            try:
                report = await reconcile_node(
                    self.store, self.node_key, self.boot_id, self.containment
                )
                await self._ensure_group()
                await self.peers.register()
                break
            except REDIS_ERRORS as exc:
                # Exiting would only make systemd restart us into the same outage.
                log.warning("Redis unreachable at start (%s); retrying in %.1fs", exc, backoff)
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
        if report.failed:
            log.warning(
                "reconcile: %d orphaned runs failed (%d killed)", report.failed, report.killed
            )
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._reaper)
                tg.start_soon(self._flush_outbox)
                await tg.start(self._listen_aborts)
                tg.start_soon(self._consume, tg)
                tg.start_soon(self._housekeeping)
                if report.failures:
                    tg.start_soon(seal_orphans, self.store, report.failures,
                                  self.settings.session_ttl_s)  # fmt: skip
                await self._start_operator_tasks(tg)
                log.info("ready: reconcile done, abort subscription up, taking runs")
                task_status.started()
                await self._stopping.wait()
                await self._shutdown_runs()
                tg.cancel_scope.cancel()
        finally:
            self.spawner.close()
            with anyio.CancelScope(shield=True):
                await self.client.aclose()

    def stop(self) -> None:
        """Asks :meth:`serve` to kill its runs, record them and return."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping.is_set()

    async def _ensure_group(self) -> None:
        try:
            await self.client.xgroup_create(self.stream, RUNS_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # ------------------------------------------------------------------- reaping

    async def _reaper(self) -> None:
        # The daemon is a subreaper: it reaps every child, its run leaders and
        # every orphaned grandchild reparented to it.
        with anyio.open_signal_receiver(signal.SIGCHLD) as signals:
            self._reap()
            async for _ in signals:
                self._reap()

    def _reap(self) -> None:
        while True:
            try:
                pid, status, rusage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            # Any reaped process may have been the last of a killed tree: wake the waiters.
            self._child_exited.set()
            self._child_exited = anyio.Event()
            self._reaps += 1
            run = self._by_pid.pop(pid, None)
            if run is None:
                if self._spawning:
                    self._unclaimed[pid] = (self._reaps, status, rusage)
                    if len(self._unclaimed) > 4096:  # grandchildren of busy runs
                        del self._unclaimed[next(iter(self._unclaimed))]
                continue
            self._exited(run, status, rusage)

    @staticmethod
    def _exited(run: ActiveRun, status: int, rusage: Any) -> None:
        run.wait_status = status
        run.rusage = rusage
        if run.pidfd is not None:
            # The pidfd now names a reaped process: never signal through it again.
            os.close(run.pidfd)
            run.pidfd = None
        run.exited.set()
        run.exited_or_killed.set()

    # ------------------------------------------------------------------- aborts

    async def _listen_aborts(self, *, task_status: TaskStatus[None]) -> None:
        pattern = f"{self.settings.key_prefix}abort:*"
        prefix_len = len(pattern) - 1
        started = False
        backoff = 0.05
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.psubscribe(pattern)
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is None:
                        continue
                    if message["type"] == "psubscribe":
                        # Every (re)subscribe: honour aborts published while we were away.
                        await self._apply_abort_marks()
                        backoff = 0.05
                        if not started:
                            started = True
                            task_status.started()
                        continue
                    if message["type"] != "pmessage":
                        continue
                    received = time.monotonic()
                    channel = message["channel"]
                    channel = (
                        channel.decode(errors="replace") if isinstance(channel, bytes) else channel
                    )
                    try:
                        self._on_abort(channel[prefix_len:], message["data"], received)
                    except Exception:  # one bad message must not stop the listener
                        log.exception("abort message on %s could not be handled", channel)
            except REDIS_ERRORS as exc:
                log.warning("abort subscription lost (%s); resubscribing in %.2fs", exc, backoff)
            finally:
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def _on_abort(self, task_id: str, payload: bytes | str | None, received: float) -> None:
        reason, well_formed = parse_abort_payload(payload)
        if not well_formed:
            log.warning(
                "abort for %s carries a non-JSON payload %r: aborting anyway", task_id, payload
            )
        run = self.runs.get(task_id)
        if run is None:
            if task_id in self._starting:
                self._starting[task_id] = reason
                log.info("abort for %s: arrived while it starts; killed once spawned", task_id)
                return
            log.info("abort for %s: not running on this node, ignored", task_id)
            return
        self._kill(run, TaskState.ABORTED, reason)
        log.info(
            "abort %s: kill sent %.2f ms after receipt",
            task_id,
            (time.monotonic() - received) * 1000,
        )

    async def _apply_abort_marks(self) -> None:
        marks = await self.store.abort_marks(list(self.runs))
        for task_id, payload in marks.items():
            run = self.runs.get(task_id)
            if run is not None:
                self._kill(run, TaskState.ABORTED, parse_abort_payload(payload)[0])

    # ---------------------------------------------------------------------- kill

    def _kill(self, run: ActiveRun, state: TaskState, reason: str) -> None:
        """Kills the run's whole tree now (SIGTERM first only with a configured grace)."""
        if run.kill is not None:
            return
        assert self.containment is not None
        if run.exited.is_set():
            # The run already ended on its own: its outcome stands. Leftovers it left
            # behind are being swept anyway (_ensure_tree_gone).
            self.containment.kill(run.container, None, run.pid, signal.SIGKILL)
            return
        grace = self.settings.kill_grace_s
        sig = signal.SIGTERM if grace > 0 else signal.SIGKILL
        run.kill = (state, reason, signal.SIGKILL)
        run.kill_sent_at = time.monotonic()
        run.exited_or_killed.set()
        self.containment.kill(run.container, run.pidfd, run.pid, sig)

    async def _ensure_tree_gone(self, run: ActiveRun) -> None:
        assert self.containment is not None
        if run.kill is not None and self.settings.kill_grace_s > 0:
            with anyio.move_on_after(self.settings.kill_grace_s):
                await run.exited.wait()
        deadline = time.monotonic() + 20
        first = True
        while time.monotonic() < deadline:
            if run.exited.is_set() and not self.containment.populated(run.container):
                return
            # Leftovers (a grace that ran out, or daemons the run left behind) get SIGKILL.
            if first or run.kill is not None:
                self.containment.kill(run.container, run.pidfd, run.pid, signal.SIGKILL)
                first = False
            # Every process of the tree ends as a child of this subreaper, so each death
            # reaches the reaper as SIGCHLD: wake on that, not on a polling tick. The
            # timeout only guards against a missed wake-up.
            with anyio.move_on_after(0.05):
                await self._child_exited.wait()
        log.error("run %s: process tree still populated after kill", run.spec.task_id)

    # ------------------------------------------------------------------- records

    async def _record(self, task_id: str, state: TaskState, fields: dict[str, object]) -> None:
        """Writes a transition now, or keeps it in order until Redis is back."""
        if not self._outbox:
            try:
                await self._write(task_id, state, fields)
                return
            except REDIS_ERRORS as exc:
                log.warning("Redis unreachable (%s): keeping %s=%s for later", exc, task_id, state)
        self._outbox.append((task_id, state, fields))
        if self._outbox_empty.is_set():
            self._outbox_empty = anyio.Event()
        self._outbox_wake.set()

    async def _write(self, task_id: str, state: TaskState, fields: dict[str, object]) -> None:
        result = await self.store.transition(task_id, state, fields)
        if state.terminal:
            await self.client.srem(self.node_key, task_id)
        if not result.applied:
            log.info("task %s: %s not recorded, already %s", task_id, state, result.previous)

    async def _flush_outbox(self) -> None:
        while True:
            await self._outbox_wake.wait()
            self._outbox_wake = anyio.Event()
            while self._outbox:
                task_id, state, fields = self._outbox[0]
                try:
                    await self._write(task_id, state, fields)
                except REDIS_ERRORS:
                    await anyio.sleep(0.2)
                    continue
                self._outbox.popleft()
                log.info("task %s: %s written after Redis came back", task_id, state)
            self._outbox_empty.set()

    # --------------------------------------------------------------------- peers

    async def _housekeeping(self) -> None:
        while True:
            await anyio.sleep(self.settings.heartbeat_interval_s)
            try:
                # A pub/sub link can be silently half-open (an idle NAT flow dropped):
                # the durable marks bound how late an abort can be, whatever happens.
                await self._apply_abort_marks()
                takeovers = await self.peers.sweep()
            except REDIS_ERRORS as exc:
                log.debug("housekeeping skipped: %s", exc)
                continue
            for takeover in takeovers:
                if takeover.claimed:
                    self._claims += 1
                if takeover.failed:
                    await seal_orphans(self.store, takeover.failed, self.settings.session_ttl_s)

    async def _fence(self) -> None:
        """After an outage: kill runs whose record a peer ended while this node was away.

        A peer that stopped seeing this node's heartbeat fails its runs; once a
        record is terminal nobody tracks the processes, so they must not live on.
        """
        runs = list(self.runs.values())
        try:
            records = await self.store.fields_many([r.spec.task_id for r in runs], ("state",))
        except REDIS_ERRORS:
            return
        for run, record in zip(runs, records, strict=True):
            state = record.get("state")
            if state is not None and TaskState(state).terminal and run.kill is None:
                log.warning("task %s was ended (%s) by a peer while this node was cut off "
                            "from Redis: killing its processes", run.spec.task_id, state)  # fmt: skip
                self._kill(run, TaskState.FAILED, f"ended by a peer as {state} during an outage")

    # ------------------------------------------------------------------ consuming

    async def _consume(self, tg: anyio.abc.TaskGroup) -> None:
        # Entries this consumer holds unacknowledged (taken before a crash, or claimed
        # from a gone peer) are re-read from "0" upwards, then new ones with ">".
        cursor: bytes | str | None = None
        claims_seen = -1
        while not self._stopping.is_set() and not self.draining:
            await self._capacity.acquire()
            if self.draining:  # drained while waiting for a free slot
                self._capacity.release()
                return
            if cursor is None and claims_seen != self._claims:
                claims_seen, cursor = self._claims, "0"
            backlog = cursor is not None
            try:
                reply: Any = await self.client.xreadgroup(
                    RUNS_GROUP, self.node_id, {self.stream: ">" if cursor is None else cursor},
                    count=1, block=None if backlog else 1000,
                )  # fmt: skip
            except REDIS_ERRORS as exc:
                self._capacity.release()
                log.warning("cannot read runs (%s); retrying", exc)
                if "NOGROUP" in str(exc):  # the stream or its group was deleted
                    with contextlib.suppress(*REDIS_ERRORS):
                        await self._ensure_group()
                await anyio.sleep(0.5)
                continue
            entries = reply[0][1] if reply else []
            if not entries:
                self._capacity.release()
                cursor = None
                continue
            entry_id, fields = entries[0]
            if backlog:
                cursor = entry_id
            if self.draining:
                # Unacknowledged, it stays pending for this node: its next start re-reads it.
                self._capacity.release()
                log.info(
                    "drain began while run %s was being read: left for the next start", entry_id
                )
                return
            if backlog and not fields:  # a backlog entry already deleted
                await self.client.xack(self.stream, RUNS_GROUP, entry_id)
                self._capacity.release()
                continue
            tg.start_soon(self._run_entry, entry_id, fields)

    async def _run_entry(self, entry_id: bytes, raw: dict[bytes, bytes]) -> None:
        request = {as_text(k): as_text(v) for k, v in raw.items()}
        try:
            await self._start_and_watch(entry_id, request)
        except REDIS_ERRORS as exc:
            # Before the spawn every step is a Redis call; the entry is not acknowledged
            # yet, so it stays pending here and is read again once Redis answers.
            log.warning("run %s: Redis failed while starting it (%s); retrying", entry_id, exc)
            await anyio.sleep(1)
            self._claims += 1
        except Exception:  # one bad entry must not take the daemon (and every run) down
            log.exception("run %s could not be handled; dropping it", entry_id)
            with contextlib.suppress(*REDIS_ERRORS):
                await self.client.xack(self.stream, RUNS_GROUP, entry_id)
        finally:
            self._capacity.release()

    def _resolve_app(self, app: str) -> str:
        if app in self.settings.apps:
            return self.settings.apps[app]
        if ":" in app and not self.settings.allow_import_paths:
            raise ValueError(
                f"app {app!r}: import paths are disabled here (allow_import_paths = false); "
                f"name one of [apps] ({', '.join(sorted(self.settings.apps)) or 'none configured'})"
            )
        if ":" in app:
            return app
        raise ValueError(
            f"unknown app {app!r}: name one of [apps] ({', '.join(sorted(self.settings.apps)) or 'none configured'}) "
            "or give an import path 'package.module:attribute'"
        )

    async def _start_and_watch(self, entry_id: bytes, request: dict[str, str]) -> None:
        task_id = request.get("task_id") or ""
        try:
            if not task_id:
                raise ValueError("missing task_id")
            check_task_id(task_id)
            for name in ("app", "user_id", "message"):
                if not request.get(name):
                    raise ValueError(f"missing {name}")
            app_ref = self._resolve_app(request["app"])
            timeout = (
                float(request["timeout"])
                if request.get("timeout")
                else self.settings.default_timeout_s
            )
            if timeout is not None and not (0 < timeout < math.inf):
                raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
        except ValueError as exc:
            log.warning("run request %s rejected: %s", entry_id, exc)
            if task_id and "invalid task id" not in str(exc):
                # Only a queued record: a stray entry must not end someone's live run.
                await self.store.transition(
                    task_id, TaskState.FAILED, {"reason": f"bad request: {exc}"},
                    allowed_from=(TaskState.QUEUED,),
                )  # fmt: skip
            await self.client.xack(self.stream, RUNS_GROUP, entry_id)
            return
        if task_id in self._starting or task_id in self.runs:
            # A duplicate entry of a run this daemon already handles: leave that one alone.
            log.warning("run request %s: task %s is already being run here", entry_id, task_id)
            await self.client.xack(self.stream, RUNS_GROUP, entry_id)
            return

        # From here until the run is registered, a live abort is parked here (pub/sub
        # alone would drop it: the run is not in self.runs yet).
        self._starting[task_id] = None
        try:
            await self._start_and_watch_registered(entry_id, request, task_id, app_ref, timeout)
        finally:
            self._starting.pop(task_id, None)

    async def _start_and_watch_registered(
        self,
        entry_id: bytes,
        request: dict[str, str],
        task_id: str,
        app_ref: str,
        timeout_s: float | None,
    ) -> None:
        marks = await self.store.abort_marks([task_id])
        if task_id in marks:
            reason = parse_abort_payload(marks[task_id])[0]
            await self._record(task_id, TaskState.ABORTED, {"reason": reason})
            await self.client.xack(self.stream, RUNS_GROUP, entry_id)
            log.info("task %s aborted before it started: %s", task_id, reason)
            return

        session_id = request.get("session_id") or task_id
        starting = {
            "node_id": self.node_id, "boot_id": self.boot_id, "intent": "spawn",
            "app": request["app"], "user_id": request["user_id"], "session_id": session_id,
            "started_at": repr(time.time()),
        }  # fmt: skip
        added = await self.client.sadd(self.node_key, task_id)
        moved = await self.store.transition(task_id, TaskState.STARTING, starting)
        if moved.missing:
            moved = await self.store.create(task_id, TaskState.STARTING, starting)
        if not moved.applied and moved.previous == TaskState.STARTING.value:
            # Our own start, cut short by a Redis error before the spawn (a spawned run
            # would be in self.runs): nothing runs, so it may simply go on.
            (owner,) = await self.store.fields_many([task_id], ("node_id", "boot_id"))
            if owner == {"node_id": self.node_id, "boot_id": self.boot_id}:
                moved = TransitionResult(True, TaskState.STARTING.value)
        await self.client.xack(self.stream, RUNS_GROUP, entry_id)
        if not moved.applied:
            if added:
                await self.client.srem(self.node_key, task_id)
            log.info("task %s not started: it is already %s", task_id, moved.previous)
            return

        spec = RunSpec(
            task_id=task_id, app_ref=app_ref, app_name=None, user_id=request["user_id"],
            session_id=session_id, message=request["message"], redis_url=self.redis_url,
            key_prefix=self.settings.key_prefix, session_ttl=self.settings.session_ttl_s,
        )  # fmt: skip
        parked = self._starting.get(task_id)
        if parked is not None:
            await self._record(task_id, TaskState.ABORTED, {"reason": parked})
            log.info("task %s aborted before it started: %s", task_id, parked)
            return
        assert self.containment is not None
        container = self.containment.prepare(task_id)
        self._spawning += 1
        reaps_before = self._reaps
        try:
            pid = await self.spawner.spawn(spec, container, self.log_dir / f"{task_id}.log")
        except (OSError, ValueError) as exc:
            # A half-started run (the fork server died or stalled mid-request) may be
            # inside the container: sweep it before giving the container up.
            self.containment.kill(container, None, 0, signal.SIGKILL)
            self.containment.release(container)
            log.error("task %s: spawn failed: %s", task_id, exc)
            await self._record(task_id, TaskState.FAILED, {"reason": f"spawn failed: {exc}"})
            return
        finally:
            self._spawning -= 1
        # Only a process reaped during this spawn can be this run: an older entry under
        # the same PID was another process, before the PID was reused.
        unclaimed = self._unclaimed.pop(pid, None)
        early = unclaimed[1:] if unclaimed and unclaimed[0] > reaps_before else None
        if not self._spawning:
            self._unclaimed.clear()
        # Unless reaped above, the PID is still this run's: nobody else reaps it.
        pidfd = os.pidfd_open(pid) if early is None else None
        now = time.monotonic()
        run = ActiveRun(
            spec, container, pid, pidfd, process_start_ticks(pid) or 0 if pidfd else 0,
            now, None if timeout_s is None else now + timeout_s,
        )  # fmt: skip
        self.runs[task_id] = run
        self._by_pid[pid] = run
        parked = self._starting.pop(task_id, None)
        if parked is not None:
            self._kill(run, TaskState.ABORTED, parked)
        if early is not None:
            self._exited(run, *early)
        self._reap()  # the child may already have exited
        await self._record(task_id, TaskState.RUNNING, {
            "pid": pid, "pgid": pid, "start_ticks": run.start_ticks,
            "cgroup": str(container.cgroup or ""),
        })  # fmt: skip
        log.info("task %s started: app=%s pid=%d", task_id, request["app"], pid)
        # An abort published between the check above and registering the run found nothing to kill.
        with contextlib.suppress(*REDIS_ERRORS):
            await self._apply_abort_marks()
        try:
            await self._watch(run)
        finally:
            self.runs.pop(task_id, None)
            self._by_pid.pop(pid, None)
            run.finished.set()

    async def _watch(self, run: ActiveRun) -> None:
        # Until the leader exits, a kill is sent (abort, shutdown) or the deadline passes.
        with anyio.move_on_at(math.inf if run.deadline is None else run.deadline):
            await run.exited_or_killed.wait()
        if run.kill is None and not run.exited.is_set() and run.deadline is not None:
            limit = run.deadline - run.started
            self._kill(run, TaskState.TIMED_OUT, f"timed out after {limit:g}s")
        await self._ensure_tree_gone(run)
        await run.exited.wait()
        gone = time.monotonic()
        assert self.containment is not None
        self.containment.release(run.container)
        state, fields = await self._outcome(run)
        self.finished_counts[state.value] += 1
        duration = gone - run.started
        fields["duration_s"] = f"{duration:.3f}"
        await self._record(run.spec.task_id, state, fields)
        killed = (
            f" (tree gone {(gone - run.kill_sent_at) * 1000:.1f} ms after the kill)"
            if run.kill_sent_at is not None
            else ""
        )
        log.info(
            "task %s %s after %.2fs%s: %s",
            run.spec.task_id, state.value, duration, killed, fields.get("reason"),
        )  # fmt: skip
        if run.kill is not None:
            await self._seal_session(run, state, str(fields.get("reason", "")))

    async def _seal_session(self, run: ActiveRun, state: TaskState, reason: str) -> None:
        """Answers the killed run's dangling tool calls in its session, as ADK's abort would.

        Runs after the kill and the record, so it never delays either; Redis
        trouble is logged and skipped (the next turn still works, ADK drops
        unanswered calls, but the model then does not see the abort).
        """
        try:
            with anyio.fail_after(10):
                record = await self.store.get(run.spec.task_id) or {}
                sessions = RedisSessionService(
                    redis_client=self.client,
                    key_prefix=self.settings.key_prefix,
                    session_ttl=self.settings.session_ttl_s,
                )
                sealed = await seal_task_session(
                    sessions, run.spec.task_id, record, state.value, reason
                )
            log.info("task %s: session sealed with %d events", run.spec.task_id, len(sealed))
        except Exception as exc:  # sealing is best effort; the record is already right
            log.warning("task %s: session not sealed (%s)", run.spec.task_id, exc)

    async def _outcome(self, run: ActiveRun) -> tuple[TaskState, dict[str, object]]:
        status = run.wait_status if run.wait_status is not None else 0
        fields: dict[str, object] = {}
        if run.rusage is not None:
            fields["cpu_s"] = f"{run.rusage.ru_utime + run.rusage.ru_stime:.3f}"
            fields["max_rss_kb"] = run.rusage.ru_maxrss
        if os.WIFEXITED(status):
            fields["exit_code"] = os.WEXITSTATUS(status)
        elif os.WIFSIGNALED(status):
            fields["signal"] = signal.Signals(os.WTERMSIG(status)).name
        if run.kill is not None:
            state, reason, sig = run.kill
            fields["reason"] = reason
            fields.setdefault("signal", signal.Signals(sig).name)
            return state, fields
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            fields["reason"] = "exited 0"
            return TaskState.COMPLETED, fields
        error = ""
        with contextlib.suppress(*REDIS_ERRORS):
            record = await self.store.get(run.spec.task_id)
            error = (record or {}).get("error", "")
        if os.WIFSIGNALED(status):
            reason = f"killed by {fields['signal']} (not sent by the supervisor)"
        else:
            reason = f"exit code {fields.get('exit_code')}"
        fields["reason"] = f"{reason}: {error}" if error else reason
        return TaskState.FAILED, fields
