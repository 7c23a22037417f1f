"""Launch: the life of one run on this node, from its stream entry to its sealed session.

entry -> admission -> abort mark checked -> ``starting`` recorded (the entry is
acknowledged with it) -> container prepared -> spawned inside it -> registered
in the run table -> ``running`` recorded -> watched until it exits, is killed
or times out -> tree gone -> terminal state recorded -> session sealed if the
supervisor killed it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import anyio
from redis.exceptions import ResponseError

from agent_runtime.redis_connection import REDIS_ERRORS
from agent_runtime.run_events import append_entry
from agent_runtime.run_spec import RunSpec, spec_path
from agent_runtime.task_store import SessionRef, TaskState, TaskStore, parse_abort_payload

from ..config import Settings
from ..process.containment import Containment
from ..process.identity import process_start_ticks
from ..process.limits import Limiter
from ..process.spawners import Spawner
from .aborts import AbortListener
from .admission import Rejected, RunRequest, admit, entry_fields
from .credentials import RunCredentials
from .intake import Entry
from .metrics import NodeMetrics
from .outcome import ended_badly, outcome
from .reaper import Reaper
from .recorder import Recorder
from .runs import ActiveRun, RunTable
from .sealing import Sealer
from .workspaces import prepare_workspace, remove_workspace, workspace_path

__all__ = ["Launcher", "NodeIdentity"]

log = logging.getLogger("adk_supervisor")

_NOTE_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """Who this daemon is, as its records say: node, boot, and the Redis its runs use."""

    node_id: str
    boot_id: str
    redis_url: str


def _resumable(run: ActiveRun, state: TaskState) -> bool:
    """Whether a durable run's leader was killed by a signal this daemon did not send (the
    OOM killer, a person's ``kill -9``): then it is resumed. One that exited non-zero on its
    own (the agent raised) is not."""
    status = run.exit.status if run.exit is not None else 0
    return (
        run.spec.durable
        and state is TaskState.FAILED
        and run.kill is None
        and os.WIFSIGNALED(status)
    )


def _fence(spec: RunSpec) -> int | None:
    """The epoch a durable run's records are written under (None: not durable)."""
    return spec.epoch if spec.durable else None


class Launcher:
    """Starts, watches and records the runs of one node."""

    def __init__(
        self,
        settings: Settings,
        node: NodeIdentity,
        *,
        store: TaskStore,
        recorder: Recorder,
        runs: RunTable,
        reaper: Reaper,
        containment: Containment,
        limiter: Limiter,
        spawner: Spawner,
        aborts: AbortListener,
        sealer: Sealer,
        credentials: RunCredentials,
        log_dir: Path,
        spec_dir: Path,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._settings = settings
        self._node = node
        self._store = store
        self._node_tasks = store.keys.node_tasks(node.node_id)
        self._recorder = recorder
        self._runs = runs
        self._reaper = reaper
        self._containment = containment
        self._limiter = limiter
        self._spawner = spawner
        self._aborts = aborts
        self._sealer = sealer
        self._credentials = credentials
        self._log_dir = log_dir
        self._spec_dir = spec_dir
        self._metrics = metrics or NodeMetrics()
        self.finished: Counter[str] = Counter()
        """Terminal states of the runs this node ran since it started."""

    async def launch(self, entry: Entry) -> None:
        """Runs one stream entry to its end; Redis errors before the spawn propagate
        (the entry stays pending and is read again)."""
        try:
            request = admit(
                entry.fields,
                self._settings.apps,
                allow_import_paths=self._settings.allow_import_paths,
                default_timeout_s=self._settings.default_timeout_s,
                max_input_bytes=self._settings.max_input_bytes,
            )
        except Rejected as exc:
            self._metrics.rejected()
            log.warning("run request %r rejected: %s", entry.id, exc)
            if exc.task_id is not None:
                # Only a queued record: a stray entry must not end someone's live run.
                await self._store.transition(
                    exc.task_id,
                    TaskState.FAILED,
                    {"reason": f"bad request: {exc}"},
                    allowed_from=(TaskState.QUEUED,),
                )
            await entry.ack()
            return
        self._metrics.taken(request.task_id, request.app)
        if not self._runs.begin_start(request.task_id):
            # A duplicate entry of a run this daemon already handles: leave that one alone.
            log.warning(
                "run request %r: task %s is already being run here", entry.id, request.task_id
            )
            await entry.ack()
            return
        resume: tuple[ActiveRun, TaskState, dict[str, object]] | None = None
        try:
            try:
                run = await self._start(entry, request)
            finally:
                self._runs.end_start(request.task_id)
            if run is not None:
                resume = await self._supervise(run)
        finally:
            # Left behind only if the run never read it (it holds the prompt).
            spec_path(self._spec_dir, request.task_id).unlink(missing_ok=True)
            if self._settings.workspace_for(request.app):
                # Its snapshot, if any, is in Redis: the next attempt starts from that.
                await anyio.to_thread.run_sync(
                    remove_workspace, workspace_path(self._settings.state_dir, request.task_id)
                )
            self._metrics.forget(request.task_id)
            await self._credentials.release(request.task_id)  # if the run never started
        if resume is not None:
            # Only now: the next attempt (its spec file, its Redis user, its place in the
            # run table) must not be taken for this one's leftovers.
            await self._resume(*resume)

    async def _start(self, entry: Entry, request: RunRequest) -> ActiveRun | None:
        """Records ``starting``, spawns and registers the run; None if it must not run."""
        task_id = request.task_id
        marks = await self._store.abort_marks([task_id])
        if task_id in marks:
            await self._aborted_before_start(task_id, parse_abort_payload(marks[task_id])[0])
            await entry.ack()
            return None
        # The run's sessions live under its [apps] name: the name its Redis user is confined to.
        session_app = request.app if request.app in self._settings.apps else None
        try:
            # Before the claim: if Redis fails here, the entry is still pending and read again.
            run_url = await self._credentials.issue(task_id, session_app)
        except ResponseError as exc:
            log.error("task %s: cannot create its Redis user: %s", task_id, exc)
            await self._store.transition(
                task_id,
                TaskState.FAILED,
                {"reason": f"cannot create the run's Redis user: {exc}"},
                allowed_from=(TaskState.QUEUED,),
            )
            await entry.ack()
            return None
        durable = self._settings.durable_for(request.app)
        epoch = 0
        if durable is not None:
            # Before the record says `starting`: a crash from then on finds what to resume.
            epoch = await self._store.save_resume_entry(
                task_id, entry_fields(entry.fields), durable.max_attempts
            )
        if not await self._claim(entry, request):
            return None
        parked = self._runs.parked_abort(task_id)
        if parked is not None:
            await self._aborted_before_start(task_id, parked)
            return None

        workspace = (
            workspace_path(self._settings.state_dir, task_id)
            if self._settings.workspace_for(request.app)
            else None
        )
        spec = RunSpec(
            task_id=task_id,
            app_ref=request.app_ref,
            app_name=session_app,
            user_id=request.user_id,
            session_id=request.session_id,
            message=request.input.message,
            redis_url=run_url,
            key_prefix=self._settings.key_prefix,
            session_ttl=self._settings.session_ttl_s,
            content=request.input.content,
            state_delta=request.input.state_delta,
            invocation_id=request.input.invocation_id,
            run_config=request.input.run_config,
            events_maxlen=self._settings.events_maxlen,
            traceparent=request.traceparent,
            durable=durable is not None,
            epoch=epoch,
            idempotent_tools=list(durable.idempotent_tools) if durable is not None else None,
            workspace=str(workspace) if workspace is not None else None,
            snapshot_max_bytes=int(self._settings.workspace_snapshot_max_bytes),
        )
        # The entry is acknowledged and the record says `starting` from here on: a local
        # error (a full disk, EMFILE) must end the run as `failed`, never be retried as
        # if Redis had failed, which would leave the record `starting` for good.
        try:
            if workspace is not None:
                prepare_workspace(workspace)
            container = self._containment.prepare(task_id)
            try:
                limits = self._settings.limits_for(request.app)
                container.limits = self._limiter.prepare(task_id, limits, container.cgroup)
            except OSError:
                self._limiter.release(task_id)
                self._containment.release(container)
                raise
        except OSError as exc:
            log.error("task %s: cannot prepare its container: %s", task_id, exc)
            await self._recorder.record(
                task_id,
                TaskState.FAILED,
                {"reason": f"cannot prepare the run: {exc}"},
                epoch=_fence(spec),
            )
            return None
        with self._reaper.expecting() as expected:
            try:
                pid = await self._spawner.spawn(spec, container, self._log_dir / f"{task_id}.log")
            except (OSError, ValueError) as exc:
                self._runs.discard(container)
                self._limiter.release(task_id)
                log.error("task %s: spawn failed: %s", task_id, exc)
                await self._recorder.record(
                    task_id,
                    TaskState.FAILED,
                    {"reason": f"spawn failed: {exc}"},
                    epoch=_fence(spec),
                )
                return None
            early_exit = expected.take(pid)
            pidfd, start_ticks, setup_error = None, 0, None
            if early_exit is None:
                # Not reaped (nothing reaps between take() and here): the PID and its
                # group are still this run's.
                self._containment.started(container, pid)
                try:
                    pidfd = os.pidfd_open(pid)
                    start_ticks = process_start_ticks(pid) or 0
                except OSError as exc:
                    setup_error = exc
        now = time.monotonic()
        run = ActiveRun(
            spec,
            container,
            pid,
            pidfd,
            start_ticks,
            now,
            None if request.timeout_s is None else now + request.timeout_s,
        )
        self._runs.add(run)
        self._metrics.spawned(spec)
        if setup_error is not None:
            # Registered all the same, so the usual path waits for the tree to be gone
            # and records the end. Killed before the watch: the reaper must not see the
            # leader die before our kill is on the run (it would read as a foreign signal).
            log.error("task %s: start failed after the spawn: %s", task_id, setup_error)
            self._runs.fail(task_id, f"start failed after the spawn: {setup_error}")
            with contextlib.suppress(OSError):  # unreaped: its group is still the run's
                os.killpg(pid, signal.SIGKILL)
        else:
            log.info("task %s started: app=%s pid=%d", task_id, request.app, pid)
        if early_exit is not None:
            run.on_exit(early_exit)
        else:
            self._reaper.watch(pid, run.on_exit)
        return run

    async def _announce(self, run: ActiveRun) -> None:
        """Records ``running`` and re-reads the abort mark: beside the watch, never before it,
        so a Redis that stalls here cannot hold back the run's deadline."""
        await self._recorder.record(
            run.task_id,
            TaskState.RUNNING,
            {
                "pid": run.pid,
                "pgid": run.pid,
                "start_ticks": run.start_ticks,
                "cgroup": str(run.container.cgroup or ""),
            },
            epoch=_fence(run.spec),
        )
        self._metrics.running(run.task_id)
        # An abort published between the first check and registering the run found
        # nothing to kill. Whatever this raises, the run's watch (a task of the same
        # group) must go on.
        try:
            await self._aborts.recheck([run.task_id])
        except REDIS_ERRORS:
            pass
        except Exception:
            log.exception("task %s: abort mark re-check failed", run.task_id)

    async def _note_kill(self, run: ActiveRun) -> None:
        """Appends ``killing`` to the run's events stream once a kill was sent (after it:
        the kill never waits on Redis), so a reader following the run sees why it stops."""
        await run.exited_or_killed.wait()
        if run.kill is None:
            return
        kill = run.kill
        detail = {"reason": kill.reason, "signal": ",".join(s.name for s in kill.signals)}
        data = json.dumps(
            {"task_id": run.task_id, "state": "killing", "at": time.time(), "detail": detail}
        )
        # Best effort, and bounded: the terminal entry (which waits for this one, to keep
        # the order) carries the outcome anyway.
        with anyio.move_on_after(_NOTE_TIMEOUT_S), contextlib.suppress(Exception):
            await append_entry(
                self._store.client,
                self._store.keys,
                run.task_id,
                "state",
                data,
                maxlen=self._settings.events_maxlen,
            )

    async def _claim(self, entry: Entry, request: RunRequest) -> bool:
        """Moves the record to ``starting`` for this node and acknowledges the entry."""
        task_id = request.task_id
        starting = {
            "node_id": self._node.node_id,
            "boot_id": self._node.boot_id,
            "intent": "spawn",
            "app": request.app,
            "user_id": request.user_id,
            "session_id": request.session_id,
            "started_at": repr(time.time()),
        }
        if request.app in self._settings.apps:
            # The run's ADK app name (its [apps] name, see _start): the run would write it
            # itself before touching its session, one round trip more on its way to start.
            starting["adk_app"] = request.app
        added = await self._recorder.track(task_id)
        # One live run per session: `starting` only with the session's lease, else the
        # entry is parked (acknowledged, no slot held) until the run's turn.
        session = SessionRef(request.app, request.user_id, request.session_id)
        kept = entry_fields(entry.fields)
        turn = await self._store.claim(
            task_id, starting, session, entry.id, kept, if_busy=request.if_busy
        )
        if turn.outcome == "missing":  # an entry XADDed by hand: no record yet
            await self._store.create(
                task_id,
                TaskState.QUEUED,
                {k: starting[k] for k in ("app", "user_id", "session_id")},
            )
            turn = await self._store.claim(
                task_id, starting, session, entry.id, kept, if_busy=request.if_busy
            )
        moved = turn.outcome == "ok"
        if turn.outcome == "rejected" and turn.state == TaskState.STARTING.value:
            # Our own start, cut short by a Redis error before the spawn (a spawned run
            # would be in the run table): nothing runs, so it may simply go on.
            (owner,) = await self._store.fields_many([task_id], ("node_id", "boot_id"))
            moved = owner == {"node_id": self._node.node_id, "boot_id": self._node.boot_id}
        elif turn.outcome == "busy":
            await self._store.transition(
                task_id,
                TaskState.FAILED,
                {"reason": f"session busy: task {turn.other} holds it (if_busy=refuse)"},
                allowed_from=(TaskState.QUEUED,),
            )
        await entry.ack()
        if turn.outcome == "waiting":
            # A bare PUBLISH that arrived while the claim was in flight was parked for a
            # start that is not happening now: the run waits in its line, so end it there
            # (else the abort, which has no durable mark, would be lost).
            parked = self._runs.parked_abort(task_id)
            if parked is not None and (await self._store.abort_waiting(task_id, parked)).applied:
                log.info("task %s: aborted while it waits for its session: %s", task_id, parked)
        if not moved:
            if added:
                await self._store.client.srem(self._node_tasks, task_id)
            why = {"waiting": "waits for", "busy": "refused: its session is busy with"}
            log.info(
                "task %s not started: %s",
                task_id,
                f"{why[turn.outcome]} task {turn.other}"
                if turn.outcome in why
                else f"it is already {turn.state}",
            )
        return moved

    async def _resume(self, run: ActiveRun, state: TaskState, fields: dict[str, object]) -> None:
        """Puts a durable run whose leader a foreign signal killed back on the stream for
        another attempt; else (past its attempts: the reason says so) records its end."""
        if not await self._resumed(run, fields):
            self._metrics.finished(run.spec, state, float(str(fields.get("duration_s", 0))))
            await self._recorder.record(run.task_id, state, fields, epoch=_fence(run.spec))
            log.info("task %s %s: %s", run.task_id, state.value, fields.get("reason"))

    async def _resumed(self, run: ActiveRun, fields: dict[str, object]) -> bool:
        reason = str(fields.get("reason", ""))
        try:
            result = await self._store.resume(
                run.task_id, f"orphaned: {reason}", epoch=run.spec.epoch
            )
        except REDIS_ERRORS as exc:  # the failure goes to the outbox like any other end
            log.warning("task %s: not resumed, Redis unreachable (%s)", run.task_id, exc)
            return False
        if result.outcome == "resumed":
            with contextlib.suppress(*REDIS_ERRORS):
                await self._store.client.srem(self._node_tasks, run.task_id)
            log.warning(
                "task %s: %s; resumed (attempt %s, epoch %s)",
                run.task_id,
                reason,
                result.attempt,
                result.epoch,
            )
            return True
        if result.outcome == "exhausted":
            fields["reason"] = (
                f"{reason}; not resumed: its {result.attempt} attempts (max_attempts) are used up"
            )
        return False

    async def _epoch_current(self, run: ActiveRun) -> bool:
        """Whether a durable run is still at its epoch (no resume happened elsewhere)."""
        try:
            (epoch,) = await self._store.epochs([run.task_id])
        except REDIS_ERRORS:
            return False
        return epoch == run.spec.epoch

    async def _aborted_before_start(self, task_id: str, reason: str) -> None:
        await self._recorder.record(task_id, TaskState.ABORTED, {"reason": reason})
        log.info("task %s aborted before it started: %s", task_id, reason)

    async def _supervise(
        self, run: ActiveRun
    ) -> tuple[ActiveRun, TaskState, dict[str, object]] | None:
        """Watches the run to its end, records how it ended, seals its session if killed.

        A durable run to resume is returned instead of recorded (see :meth:`_resume`)."""
        try:
            # The deadline was armed at the spawn; the watch starts at once, and the
            # terminal record waits for the `running` one (the task group) to keep order.
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._announce, run)
                tg.start_soon(self._note_kill, run)
                gone = await self._runs.watch(run)
            # Read before the groups go: what the limits did (OOM kills, refused forks).
            verdict = self._limiter.verdict(run.task_id, run.container.limits, run.container.cgroup)
            self._containment.release(run.container)
            self._limiter.release(run.task_id)
            error = ""
            if ended_badly(run.exit, run.kill):
                # Only to enrich the reason: anything it raises must not keep the run's
                # end from being recorded (it was, once, an AttributeError of redis-py's).
                with contextlib.suppress(Exception):
                    record = await self._store.get(run.task_id)
                    error = (record or {}).get("error", "")
            state, fields = outcome(run.exit, run.kill, error, verdict)
            self.finished[state.value] += 1
            duration = gone - run.started
            fields["duration_s"] = f"{duration:.3f}"
            # Resumed only once out of the run table: the entry it puts back on the stream
            # may be read here at once, and must not be taken for a duplicate.
            resuming = _resumable(run, state)
            if not resuming:
                self._metrics.finished(run.spec, state, duration)
                await self._recorder.record(run.task_id, state, fields, epoch=_fence(run.spec))
        finally:
            self._runs.remove(run)
            self._metrics.removed(run.spec)
        if resuming:
            return run, state, fields
        await self._credentials.release(run.task_id)
        killed = (
            f" (tree gone {(gone - run.kill.sent_at) * 1000:.1f} ms after the kill)"
            if run.kill is not None
            else ""
        )
        log.info(
            "task %s %s after %.2fs%s: %s",
            run.task_id,
            state.value,
            duration,
            killed,
            fields.get("reason"),
        )
        if run.kill is not None:
            self._metrics.kill_to_gone(run.kill.state, gone - run.kill.sent_at)
            if run.spec.durable and not await self._epoch_current(run):
                log.info("task %s: resumed elsewhere, its session is not sealed", run.task_id)
                return None
            given = {
                "adk_app": run.spec.app_name,
                "user_id": run.spec.user_id,
                "session_id": run.spec.session_id,
            }
            await self._sealer.seal_killed(
                run.task_id, state.value, str(fields.get("reason", "")), given
            )
        return None
