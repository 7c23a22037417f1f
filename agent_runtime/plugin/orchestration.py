"""``RedisOrchestrationPlugin``: task state, abort, timeouts and crash recovery inside an ADK app.

For ADK apps that run in their own server and cannot sit behind the supervisor
daemon. Each invocation becomes a task record in the same state machine the
daemon uses (:class:`~agent_runtime.task_store.TaskStore`); a PUBLISH on
``<prefix>abort:<task_id>`` (or the durable abort mark) stops it through ADK's
own ``InvocationContext.abort()``, so ADK seals dangling function calls; a
deadline trips the same abort; and a process that finds another plugin
process's heartbeat expired fails that process's ``running`` tasks.

Inside a run the supervisor started (``$ADK_SUPERVISOR_TASK_ID`` is set), the
daemon owns the record's state, its kill and its timeout: the plugin only adds
progress fields to the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import redis.asyncio as aioredis
from google.adk.agents.base_agent import BaseAgent
from google.adk.agents.callback_context import CallbackContext
from google.adk.agents.invocation_context import InvocationContext
from google.adk.events.event import Event
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.plugins.base_plugin import BasePlugin
from google.adk.sessions.base_session_service import BaseSessionService
from google.adk.tools.base_tool import BaseTool
from google.adk.tools.tool_context import ToolContext
from google.genai import types
from redis.exceptions import ResponseError

from ..redis_connection import (
    REDIS_ERRORS,
    WrongTypeError,
    connect,
    describe_reply,
    wrong_type,
)
from ..run_spec import TASK_ENV
from ..sessions.sealing import seal_task_session
from ..task_store import TaskState, TaskStore, parse_abort_payload
from ._abort_hub import AbortHandler, AbortHub, acquire_abort_hub
from ._progress import ProgressWriter
from ._tasks import stop_task
from .recovery import ProcessHeartbeat, drop_owned, new_owner_id, recover_dead

__all__ = ["TASK_ID_METADATA_KEY", "TIMEOUT_METADATA_KEY", "RedisOrchestrationPlugin"]

log = logging.getLogger("adk_supervisor")

TASK_ID_METADATA_KEY: Final = "adk_task_id"
"""``RunConfig.custom_metadata`` key naming the task id of one invocation."""
TIMEOUT_METADATA_KEY: Final = "adk_timeout_s"
"""``RunConfig.custom_metadata`` key giving one invocation's deadline in seconds."""


@dataclass(eq=False)
class _Invocation:
    """What the plugin tracks about one running invocation."""

    task_id: str
    ic: InvocationContext
    owned: bool = False  # the plugin created the record and writes its terminal state
    # The record belongs to another invocation (a duplicate task id): write nothing to it.
    foreign: bool = False
    started: float = field(default_factory=time.monotonic)
    abort: tuple[TaskState, str] | None = None  # why the plugin aborted it
    timer: asyncio.TimerHandle | None = None
    current_agent: str = ""
    model_calls: int = 0
    tool_calls: int = 0
    last_event_at: float | None = None
    error: str | None = None
    # The task driving run_async, and the done-callback watching it for a cancel.
    caller: tuple[asyncio.Task[Any], Callable[[asyncio.Task[Any]], None]] | None = None

    def progress(self) -> dict[str, object]:
        return {
            "invocation_id": self.ic.invocation_id,
            "current_agent": self.current_agent,
            "model_calls": self.model_calls,
            "tool_calls": self.tool_calls,
            "last_event_at": None if self.last_event_at is None else repr(self.last_event_at),
        }


@dataclass(eq=False)
class _TerminalWrite:
    """A terminal state the plugin owes a record (kept until Redis takes it)."""

    state: TaskState
    fields: dict[str, object]
    recorded: bool = False  # the transition is done; only the index entry is left


class RedisOrchestrationPlugin(BasePlugin):
    """Task state tracking, Redis abort, timeouts and crash recovery for an ADK ``App``.

    Args:
        redis_url: ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://`` or
            ``redis+cluster://`` URL of the Redis the supervisor and its clients use.
        key_prefix: the prefix of every key and channel (as the daemon's).
        enable_state_tracking: keep the task record ``<prefix>{<prefix>}task:<task_id>``
            (``running``, then exactly one of ``completed`` / ``failed`` /
            ``aborted`` / ``timed_out``), and this process's heartbeat.
        enable_abort: abort an invocation on a PUBLISH on ``<prefix>abort:<task_id>``
            or a durable abort mark, through ``InvocationContext.abort()``.
        enable_crash_recovery: at start and every ``recovery_interval_s``, fail the
            ``running`` tasks of plugin processes whose heartbeat expired.
        timeout_s: default deadline of every invocation (``None``: none); one
            invocation's own comes from ``RunConfig.custom_metadata["adk_timeout_s"]``.
        heartbeat_ttl_s: how long this process's heartbeat outlives its last
            refresh (refreshed every third of it); a crash is noticed this late.
        recovery_interval_s: how often to look for dead processes (default: the TTL).
        session_service: where crash recovery seals the sessions of the tasks it
            fails; by default the session service of the runner the plugin last saw.
        redis_client: an existing ``redis.asyncio`` client (``Redis`` or ``RedisCluster``)
            to use instead of ``redis_url``, as the session service accepts; the caller
            keeps ownership and closes it, and the plugin runs on that client's event loop.
    """

    def __init__(
        self,
        redis_url: str = "redis://localhost:6379",
        key_prefix: str = "adk:",
        enable_state_tracking: bool = True,
        enable_abort: bool = True,
        enable_crash_recovery: bool = True,
        *,
        timeout_s: float | None = None,
        heartbeat_ttl_s: float = 30.0,
        recovery_interval_s: float | None = None,
        session_service: BaseSessionService | None = None,
        name: str = "redis_orchestration",
        redis_client: aioredis.Redis | None = None,
    ) -> None:
        super().__init__(name=name)
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive or None, got {timeout_s}")
        if heartbeat_ttl_s <= 0:
            raise ValueError(f"heartbeat_ttl_s must be positive, got {heartbeat_ttl_s}")
        self.redis_url = redis_url
        self.key_prefix = key_prefix
        self.enable_state_tracking = enable_state_tracking
        self.enable_abort = enable_abort
        self.enable_crash_recovery = enable_crash_recovery
        self.timeout_s = timeout_s
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.recovery_interval_s = recovery_interval_s or heartbeat_ttl_s
        self.session_service = session_service
        self.owner = new_owner_id()
        self._invocations: dict[str, _Invocation] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._given_client = redis_client
        self._client: aioredis.Redis | None = None
        self._store: TaskStore | None = None
        self._progress: ProgressWriter | None = None
        self._aborts: AbortHub | None = None
        self._heartbeat: ProcessHeartbeat | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._handlers: dict[int, AbortHandler] = {}
        # Terminal writes Redis refused, by task id; retried from the heartbeat loop.
        self._pending: dict[str, _TerminalWrite] = {}

    @property
    def supervised_task_id(self) -> str | None:
        """The supervisor's task id when this process is a supervised run, else None.

        Inside a supervised run the daemon owns state, kill and timeout. Read at
        every use, never cached at construction: apps build their plugin at import,
        and the supervisor's fork server imports apps once (with a placeholder in
        ``$ADK_SUPERVISOR_TASK_ID``) and sets the real id in each forked run.
        """
        return os.environ.get(TASK_ENV) or None

    # ------------------------------------------------------------- lifecycle

    @property
    def store(self) -> TaskStore:
        """The task store on this plugin's Redis client (after :meth:`start`)."""
        if self._store is None:
            raise RuntimeError("the plugin has not started: await plugin.start() or run an agent")
        return self._store

    async def start(self) -> list[str]:
        """Connects, starts the heartbeat, the abort subscription and crash recovery.

        Runs by itself on the first invocation; call it at server start to
        recover crashed processes' tasks right away. Returns the ids of the
        tasks this call's recovery failed.
        """
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return []
        self._loop = loop
        # Resources of a previous (closed) event loop cannot be reused here.
        self._client = self._given_client or connect(self.redis_url)
        self._store = TaskStore(self._client, self.key_prefix)
        self._progress = ProgressWriter(self._client, self._store.keys)
        if self.supervised_task_id is not None:
            return []
        if self.enable_abort:
            self._aborts = acquire_abort_hub(
                self.redis_url, self.key_prefix, client=self._given_client
            )
        if self.enable_state_tracking:
            self._heartbeat = ProcessHeartbeat(
                self._store, self.owner, self.heartbeat_ttl_s, on_beat=self._retry_terminal_writes
            )
            with contextlib.suppress(*REDIS_ERRORS):
                await self._heartbeat.beat()
            self._heartbeat.start()
        recovered: list[str] = []
        if self.enable_crash_recovery:
            recovered = await self.recover_crashed()
            self._recovery = loop.create_task(self._recover_periodically())
        return recovered

    async def recover_crashed(self) -> list[str]:
        """Fails the ``running`` tasks of plugin processes whose heartbeat expired, once.

        Returns the ids this call failed; a task another process recovered
        first is not among them. Seals the recovered tasks' sessions when a
        session service is known.
        """
        if self._store is None:
            await self.start()
        store = self.store
        try:
            recovered = await recover_dead(store, self.owner)
        except REDIS_ERRORS as exc:
            if wrong_type(exc):  # the running index: recovery moves nothing until it is fixed
                log.error(
                    "crash recovery skipped: %s", describe_reply(store.keys.plugin_running, exc)
                )
            else:
                log.warning("crash recovery skipped: Redis unreachable (%s)", exc)
            return []
        if self.session_service is not None:
            for task in recovered:
                try:
                    record = await store.get(task.task_id) or {}
                    await seal_task_session(
                        self.session_service, task.task_id, record, "failed", task.reason
                    )
                except Exception:  # sealing is best effort; the record is already right
                    log.exception("task %s: session not sealed after recovery", task.task_id)
        return [t.task_id for t in recovered]

    async def _recover_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.recovery_interval_s)
            if self._recovery is not asyncio.current_task():
                # Closed (or restarted) while asleep, its cancel swallowed: a pass
                # now would reconnect through recover_crashed's start().
                return
            try:
                await self.recover_crashed()
            except Exception:  # the loop must survive anything one pass meets
                log.exception("crash recovery pass failed")

    async def close(self) -> None:
        """Stops the heartbeat, recovery and the abort subscription (the runner calls this)."""
        recovery, self._recovery = self._recovery, None  # also the loop's stop flag
        await stop_task(recovery)
        if self._pending:
            # A last try; what still fails is failed by crash recovery once the
            # heartbeat (deleted below) is gone.
            try:
                await self._retry_terminal_writes()
            except REDIS_ERRORS as exc:
                log.warning(
                    "%d task records left running: Redis unreachable (%s)", len(self._pending), exc
                )
        if self._heartbeat is not None:
            await self._heartbeat.stop()
            self._heartbeat = None
        if self._progress is not None:
            await self._progress.close()
            self._progress = None
        if self._aborts is not None:
            await self._aborts.release()
            self._aborts = None
        if self._client is not None and self._client is not self._given_client:
            with contextlib.suppress(*REDIS_ERRORS):
                await self._client.aclose()
        self._client = None
        self._store = None
        self._loop = None

    # --------------------------------------------------------------- helpers

    def _task_id(self, ic: InvocationContext) -> str:
        if self.supervised_task_id is not None:
            return self.supervised_task_id
        meta = ic.run_config.custom_metadata if ic.run_config else None
        supplied = (meta or {}).get(TASK_ID_METADATA_KEY)
        return str(supplied) if supplied else ic.invocation_id

    def _timeout(self, ic: InvocationContext) -> float | None:
        meta = ic.run_config.custom_metadata if ic.run_config else None
        raw: Any = (meta or {}).get(TIMEOUT_METADATA_KEY)
        if raw is None:
            return self.timeout_s
        try:
            value = float(raw)
        except (TypeError, ValueError):
            log.warning("ignoring %s=%r: not a number of seconds", TIMEOUT_METADATA_KEY, raw)
            return self.timeout_s
        return value if value > 0 else None

    def _abort(self, inv: _Invocation, state: TaskState, reason: str) -> None:
        """Trips ADK's cooperative abort; the first cause wins."""
        if inv.abort is None:
            inv.abort = (state, reason)
            log.info("task %s: aborting invocation (%s: %s)", inv.task_id, state.value, reason)
        inv.ic.abort()

    def _on_abort_message(self, inv: _Invocation) -> AbortHandler:
        def handler(reason: str) -> None:
            self._abort(inv, TaskState.ABORTED, reason)

        return handler

    def _touch(self, inv: _Invocation) -> None:
        """Schedules a progress write; writes coalesce and never block the agent."""
        # Only a record this invocation owns, or the daemon's: never one of its own making.
        if self._progress is not None and (inv.owned or self.supervised_task_id is not None):
            self._progress.mark(inv.task_id, inv.progress)

    async def _register(self, inv: _Invocation) -> None:
        """Creates the ``running`` record and sets ``inv.owned``, or ``inv.foreign`` for a duplicate."""
        store = self.store
        ic = inv.ic
        fields: dict[str, object] = {
            "app": ic.app_name,
            "adk_app": ic.app_name,
            "user_id": ic.user_id,
            "session_id": ic.session.id,
            "invocation_id": ic.invocation_id,
            "node_id": socket.gethostname(),
            "pid": os.getpid(),
            "owner": self.owner,
            "tracker": "plugin",
            "started_at": repr(time.time()),
            "agent": _agent_name(ic),
        }
        # Index first: a crash between the two leaves an index entry recovery drops,
        # never a `running` record nobody can recover. HSETNX: a caller may reuse a
        # task id that a live invocation (here or elsewhere) holds; that one keeps it.
        index = store.keys.plugin_running
        try:
            taken = await store.client.hsetnx(index, inv.task_id, self.owner)
        except ResponseError as exc:
            if wrong_type(exc):
                raise WrongTypeError(describe_reply(index, exc)) from None
            raise
        if not taken:
            inv.foreign = True
            log.warning(
                "task %s is already running in another invocation: this invocation "
                "leaves its record alone",
                inv.task_id,
            )
            return
        created = await store.create(inv.task_id, TaskState.RUNNING, fields)
        if created.applied:
            inv.owned = True
            return
        # A caller may pre-create the record (queued/starting) under its own id.
        moved = await store.transition(
            inv.task_id,
            TaskState.RUNNING,
            fields,
            allowed_from=(TaskState.QUEUED, TaskState.STARTING),
        )
        if moved.applied:
            inv.owned = True
            return
        inv.foreign = True
        await drop_owned(store.client, self.key_prefix, self.owner, inv.task_id)
        log.warning(
            "task %s is already %s: this invocation leaves its record alone",
            inv.task_id,
            moved.previous,
        )

    async def _finish(self, inv: _Invocation, state: TaskState, reason: str) -> None:
        """Ends one invocation: stops its timer and abort handler, records ``state`` once."""
        if inv.timer is not None:
            inv.timer.cancel()
        if inv.caller is not None:
            inv.caller[0].remove_done_callback(inv.caller[1])
        if self._aborts is not None:
            self._aborts.unregister(inv.task_id, self._handlers.pop(id(inv), _noop))
        if self._store is None or inv.foreign:
            return
        fields: dict[str, object] = {
            **inv.progress(),
            "duration_s": f"{time.monotonic() - inv.started:.3f}",
        }
        if inv.error:
            fields["error"] = inv.error[-4000:]
        if not inv.owned:
            # The daemon's record (or none, untracked): the last figures, on a live record only.
            if self._progress is not None:
                with contextlib.suppress(*REDIS_ERRORS):
                    await self._progress.write_last(inv.task_id, fields)
            return
        # The terminal write does not wait for progress: a progress write still in
        # flight cannot land on a terminal record.
        if self._progress is not None:
            self._progress.forget(inv.task_id)
        # The end time is taken now, not when a retry finally lands.
        write = _TerminalWrite(state, {**fields, "reason": reason, "ended_at": repr(time.time())})
        try:
            await self._write_terminal(inv.task_id, write)
        except REDIS_ERRORS as exc:
            # The heartbeat keeps this process's tasks alive, so nobody else would
            # ever end this record: keep the write and retry it at every heartbeat.
            self._pending[inv.task_id] = write
            log.warning(
                "task %s: %s not recorded yet (%s); retrying while the process lives",
                inv.task_id,
                state,
                exc,
            )

    async def _write_terminal(self, task_id: str, write: _TerminalWrite) -> None:
        """Records a terminal state, then drops this process's index entry; raises on Redis trouble.

        Safe to repeat: the transition is a compare-and-set, and a write whose
        reply was lost is recognised by the state it left.
        """
        store = self.store
        if not write.recorded:
            result = await store.transition(task_id, write.state, write.fields)
            write.recorded = True
            if not result.applied and result.previous != write.state.value:
                log.info(
                    "task %s: %s not recorded, already %s", task_id, write.state, result.previous
                )
        await drop_owned(store.client, self.key_prefix, self.owner, task_id)

    async def _retry_terminal_writes(self) -> None:
        """Retries the terminal writes Redis refused; stops at the first failure."""
        if self._store is None:
            return
        for task_id, write in list(self._pending.items()):
            await self._write_terminal(task_id, write)
            self._pending.pop(task_id, None)
            log.info("task %s: %s recorded on retry", task_id, write.state)

    def _on_caller_task_done(self, invocation_id: str, _task: asyncio.Task[Any]) -> None:
        # Cancelling run_async skips every ADK callback; if the caller's task
        # ends with the invocation still open, record that rather than leave
        # the record `running` until this process dies.
        inv = self._invocations.pop(invocation_id, None)
        if inv is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.create_task(
                self._finish(inv, TaskState.FAILED, "cancelled: run_async was cancelled")
            )

    # ------------------------------------------------------------ callbacks

    async def before_run_callback(
        self, *, invocation_context: InvocationContext
    ) -> types.Content | None:
        """Registers the invocation: record ``running``, abort handler, deadline."""
        ic = invocation_context
        if self.session_service is None:
            self.session_service = ic.session_service
        try:
            await self.start()
        except REDIS_ERRORS as exc:
            log.warning("orchestration plugin cannot reach Redis (%s)", exc)
        inv = _Invocation(self._task_id(ic), ic, current_agent=_agent_name(ic))
        self._invocations[ic.invocation_id] = inv
        caller = asyncio.current_task()
        if caller is not None:
            inv.caller = (caller, functools.partial(self._on_caller_task_done, ic.invocation_id))
            caller.add_done_callback(inv.caller[1])
        if self._store is None:
            return None
        if self.supervised_task_id is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                await self._store.update(inv.task_id, {"adk_app": ic.app_name, **inv.progress()})
            return None
        if self._aborts is not None:
            # Registered before the record exists: an abort cannot fall in between.
            handler = self._on_abort_message(inv)
            self._handlers[id(inv)] = handler
            self._aborts.register(inv.task_id, handler)
        try:
            if self.enable_state_tracking:
                await self._register(inv)
            if self._aborts is not None:
                await self._aborts.feed.wait_subscribed(1.0)
                marks = await self._store.abort_marks([inv.task_id])
                if inv.task_id in marks:
                    self._abort(inv, TaskState.ABORTED, parse_abort_payload(marks[inv.task_id])[0])
        except REDIS_ERRORS as exc:
            log.warning("task %s: not registered in Redis (%s)", inv.task_id, exc)
        timeout = self._timeout(ic)
        if timeout is not None:
            inv.timer = asyncio.get_running_loop().call_later(
                timeout, self._abort, inv, TaskState.TIMED_OUT, f"timed out after {timeout:g}s"
            )
        return None

    async def after_run_callback(self, *, invocation_context: InvocationContext) -> None:
        """Records ``completed``, or ``aborted`` / ``timed_out`` for an aborted run."""
        inv = self._invocations.pop(invocation_context.invocation_id, None)
        if inv is None:
            return
        if not invocation_context.is_aborted:
            await self._finish(inv, TaskState.COMPLETED, "completed")
        elif inv.abort is not None:
            await self._finish(inv, *inv.abort)
        else:
            await self._finish(inv, TaskState.ABORTED, "aborted by the caller's abort_signal")

    async def on_run_error_callback(
        self, *, invocation_context: InvocationContext, error: Exception
    ) -> None:
        """Records ``failed`` with the error that escaped the run."""
        inv = self._invocations.pop(invocation_context.invocation_id, None)
        if inv is None:
            return
        text = f"{type(error).__name__}: {error}"
        inv.error = inv.error or text
        await self._finish(inv, TaskState.FAILED, inv.error)

    async def on_agent_error_callback(
        self, *, agent: BaseAgent, callback_context: CallbackContext, error: Exception
    ) -> None:
        """Keeps the agent's error; the run ends ``failed`` with it once the error escapes."""
        inv = self._invocations.get(callback_context.invocation_id)
        if inv is not None and inv.error is None:
            inv.error = f"{type(error).__name__}: {error}"
            self._touch(inv)

    async def on_model_error_callback(
        self, *, callback_context: CallbackContext, llm_request: LlmRequest, error: Exception
    ) -> LlmResponse | None:
        """Keeps the model's error (a later plugin may still recover from it)."""
        inv = self._invocations.get(callback_context.invocation_id)
        if inv is not None and inv.error is None:
            inv.error = f"{type(error).__name__}: {error}"
            self._touch(inv)
        return None

    async def before_agent_callback(
        self, *, agent: BaseAgent, callback_context: CallbackContext
    ) -> types.Content | None:
        """Records the current agent; honours a durable abort mark before the agent runs."""
        inv = self._invocations.get(callback_context.invocation_id)
        if inv is None:
            return None
        inv.current_agent = agent.name
        self._touch(inv)
        if self._aborts is not None and self._store is not None and inv.abort is None:
            try:
                marks = await self._store.abort_marks([inv.task_id])
            except REDIS_ERRORS:
                return None
            if inv.task_id in marks:
                self._abort(inv, TaskState.ABORTED, parse_abort_payload(marks[inv.task_id])[0])
        return None

    async def before_model_callback(
        self, *, callback_context: CallbackContext, llm_request: LlmRequest
    ) -> LlmResponse | None:
        """Counts model calls."""
        inv = self._invocations.get(callback_context.invocation_id)
        if inv is not None:
            inv.model_calls += 1
            self._touch(inv)
        return None

    async def before_tool_callback(
        self, *, tool: BaseTool, tool_args: dict[str, Any], tool_context: ToolContext
    ) -> dict[str, Any] | None:
        """Counts tool calls."""
        inv = self._invocations.get(tool_context.invocation_id)
        if inv is not None:
            inv.tool_calls += 1
            self._touch(inv)
        return None

    async def on_event_callback(
        self, *, invocation_context: InvocationContext, event: Event
    ) -> Event | None:
        """Records the time of the invocation's last event."""
        inv = self._invocations.get(invocation_context.invocation_id)
        if inv is not None:
            inv.last_event_at = time.time()
            self._touch(inv)
        return None


def _agent_name(ic: InvocationContext) -> str:
    return ic.agent.name if ic.agent is not None else ""


def _noop(reason: str) -> None:
    del reason
