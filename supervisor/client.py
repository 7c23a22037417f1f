"""Python client of the supervisor: submit, abort, read and wait for tasks, over Redis alone.

Imports neither the daemon nor ADK, so a bot or a CLI call that only submits
and waits loads what it needs in milliseconds.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Self

import anyio
import redis.asyncio as aioredis

from agent_runtime.keys import DEFAULT_PREFIX
from agent_runtime.redis_connection import (
    connect,
    open_pubsub,
    redact_url,
    translate_redis_errors,
)
from agent_runtime.run_events import RunEntry
from agent_runtime.run_events import follow as follow_events
from agent_runtime.run_input import DEFAULT_MAX_INPUT_BYTES, InputTooLarge, RunInput
from agent_runtime.task_store import (
    IF_BUSY_CHOICES,
    TERMINAL_STATES,
    IfBusy,
    SessionRef,
    TaskStore,
    check_task_id,
)
from agent_runtime.trace_context import check_traceparent

from .errors import SessionBusyError, TaskExistsError, TaskNotFoundError

__all__ = ["InputTooLarge", "RunEntry", "RunHandle", "RunInput", "SupervisorClient", "submit_task"]

_FOLLOW_BLOCK_MS = 5000


async def submit_task(
    store: TaskStore,
    app: str,
    message: str | RunInput,
    *,
    user_id: str,
    session_id: str | None = None,
    task_id: str | None = None,
    timeout_s: float | None = None,
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
    traceparent: str | None = None,
    if_busy: IfBusy = "wait",
) -> str:
    """Creates the ``queued`` record and XADDs the run to the runs stream; returns the task id.

    ``message`` is plain text or a whole :class:`RunInput`; an input over
    ``max_input_bytes`` raises :class:`InputTooLarge` before anything is queued.
    ``traceparent`` (a W3C trace context, checked here: ValueError) travels with
    the run to its process, where the run's spans join that trace.
    One live run per session (app, user, session): a run submitted while another
    holds its session waits for its turn, in submit order (``if_busy="wait"``), or
    raises :class:`SessionBusyError` and is not queued (``if_busy="refuse"``).
    Shared by :class:`SupervisorClient` and the daemon's status socket, so both
    queue runs exactly alike.
    """
    if if_busy not in IF_BUSY_CHOICES:
        raise ValueError(f"if_busy must be one of {', '.join(IF_BUSY_CHOICES)}, not {if_busy!r}")
    run_input = message if isinstance(message, RunInput) else RunInput(message=message)
    input_fields = run_input.fields(max_input_bytes)
    task_id = check_task_id(task_id) if task_id else uuid.uuid4().hex
    fields: dict[str, object] = {
        "app": app,
        "user_id": user_id,
        "session_id": session_id or task_id,
    }
    if timeout_s is not None:
        fields["timeout_s"] = timeout_s
    if traceparent:
        fields["traceparent"] = check_traceparent(traceparent)
    entry: dict[str, str] = {"task_id": task_id, "app": app, "user_id": user_id, **input_fields}
    if session_id:
        entry["session_id"] = session_id
    if timeout_s is not None:
        entry["timeout"] = str(timeout_s)
    if traceparent:
        entry["traceparent"] = traceparent
    if if_busy != "wait":
        entry["if_busy"] = if_busy
    session = SessionRef(app, user_id, session_id or task_id)
    queued = await store.submit(task_id, fields, entry, session, if_busy=if_busy)
    if queued.outcome == "exists":
        raise TaskExistsError(f"task {task_id} already exists (state {queued.state})")
    if queued.outcome == "busy":
        holder = queued.other or ""
        raise SessionBusyError(
            f"session {session.session_id!r} (app {app!r}, user {user_id!r}) is busy: "
            f"task {holder} holds it; submitted with if_busy=refuse, so not queued",
            holder,
        )
    return task_id


def _content_json(content: Any) -> dict[str, Any]:
    """A ``google.genai.types.Content`` (or its JSON as a dict) as the JSON a run takes."""
    if isinstance(content, Mapping):
        return dict(content)
    dump = getattr(content, "model_dump", None)
    if dump is None:
        raise TypeError(f"content must be a google.genai Content or a dict, not {type(content)}")
    result: dict[str, Any] = dump(mode="json", by_alias=True, exclude_none=True)
    return result


@dataclass(frozen=True)
class RunHandle:
    """A run started with :meth:`SupervisorClient.start`: follow it, stop it, wait for it."""

    task_id: str
    client: SupervisorClient

    def entries(self, after: str = "0-0") -> AsyncIterator[RunEntry]:
        """Every entry of the run's stream after ``after`` (see :meth:`SupervisorClient.events`)."""
        return self.client.events(self.task_id, after=after)

    async def events(self, after: str = "0-0") -> AsyncIterator[Any]:
        """The ADK ``Event`` objects the run yields as they come, then its terminal record
        (a dict). Loads ADK on first use."""
        from google.adk.events.event import Event

        async for entry in self.entries(after):
            if entry.type == "event":
                yield Event.model_validate(entry.data)
            elif entry.terminal:
                yield await self.client.get(self.task_id)

    async def text(self) -> AsyncIterator[str]:
        """The agents' text as it streams: partial chunks, without the final aggregate
        that repeats them (ADK sends both with ``streaming``); whole texts otherwise."""
        streamed = False
        async for entry in self.entries():
            if entry.type != "event" or entry.data.get("author") == "user":
                continue
            text = _text_of(entry.data)
            if entry.data.get("partial"):
                streamed = True
                if text:
                    yield text
            elif streamed:
                streamed = False  # the aggregate of what was just streamed
            elif text:
                yield text

    async def final_response(self) -> str:
        """The text of the run's last non-partial agent event with text."""
        final = ""
        async for entry in self.entries():
            data = entry.data
            if entry.type == "event" and not data.get("partial") and data.get("author") != "user":
                final = _text_of(data) or final
        return final

    async def abort(self, reason: str = "") -> int:
        """Stops the run: its whole process tree is killed (see :meth:`SupervisorClient.abort`)."""
        return await self.client.abort(self.task_id, reason)

    async def wait(self, timeout_s: float | None = None) -> dict[str, str]:
        """The run's terminal record, once it has one."""
        return await self.client.wait(self.task_id, timeout_s)


def _text_of(data: Mapping[str, Any]) -> str:
    content = data.get("content")
    parts = content.get("parts") if isinstance(content, Mapping) else None
    if not isinstance(parts, list):
        return ""
    return "".join(
        p["text"]
        for p in parts
        if isinstance(p, Mapping) and isinstance(p.get("text"), str) and not p.get("thought")
    )


class SupervisorClient:
    """Talks to every supervisor sharing one Redis (any host).

    Redis out of reach, or refusing calls during a failover, raises
    :class:`~agent_runtime.redis_connection.RedisUnavailableError` from every
    method (retry later: ``abort`` and ``get`` always are safe to; ``submit`` with
    your own ``task_id`` is, a second one is refused with :class:`TaskExistsError`).
    """

    def __init__(self, redis_url: str, key_prefix: str = DEFAULT_PREFIX) -> None:
        self.client: aioredis.Redis = connect(redis_url)
        self.store = TaskStore(self.client, key_prefix)
        self._where = redact_url(redis_url)

    async def close(self) -> None:
        """Closes the Redis connections."""
        await self.client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def submit(
        self,
        app: str,
        message: str | RunInput,
        *,
        user_id: str,
        session_id: str | None = None,
        task_id: str | None = None,
        timeout_s: float | None = None,
        traceparent: str | None = None,
        if_busy: IfBusy = "wait",
    ) -> str:
        """Queues a run and returns its task id (the record is ``queued`` at once).

        ``message``: plain text, or a :class:`RunInput` (see :meth:`start` for the
        keywords that build one). One live run per session: while another run holds
        the session, this one waits for its turn (``if_busy="wait"``, the record
        shows ``waiting_for``), or raises :class:`SessionBusyError` (``"refuse"``)."""
        async with translate_redis_errors(self._where):
            return await submit_task(
                self.store,
                app,
                message,
                user_id=user_id,
                session_id=session_id,
                task_id=task_id,
                timeout_s=timeout_s,
                traceparent=traceparent,
                if_busy=if_busy,
            )

    async def start(
        self,
        app: str,
        message: str | Any = "",
        *,
        user_id: str,
        session_id: str | None = None,
        state_delta: Mapping[str, Any] | None = None,
        invocation_id: str | None = None,
        streaming: bool = False,
        max_llm_calls: int | None = None,
        custom_metadata: Mapping[str, Any] | None = None,
        task_id: str | None = None,
        timeout_s: float | None = None,
        traceparent: str | None = None,
        if_busy: IfBusy = "wait",
    ) -> RunHandle:
        """Queues a run with ADK's whole Runner input and returns its :class:`RunHandle`.

        ``traceparent``: the caller's W3C trace context; ADK's spans of the run join it.

        ``message`` is text or a ``google.genai.types.Content`` (or its JSON as a
        dict): inline data, function responses (the answer to a long-running tool
        or a confirmation) and all. ``invocation_id`` continues a paused
        invocation; ``streaming`` streams partial text (ADK's SSE mode);
        ``if_busy`` as for :meth:`submit`.
        """
        run_config: dict[str, Any] = {}
        if streaming:
            run_config["streaming"] = "sse"
        if max_llm_calls is not None:
            run_config["max_llm_calls"] = max_llm_calls
        if custom_metadata is not None:
            run_config["custom_metadata"] = dict(custom_metadata)
        run_input = RunInput(
            message=message if isinstance(message, str) else "",
            content=None if isinstance(message, str) else _content_json(message),
            state_delta=dict(state_delta) if state_delta is not None else None,
            invocation_id=invocation_id,
            run_config=run_config or None,
        )
        started = await self.submit(
            app,
            run_input,
            user_id=user_id,
            session_id=session_id,
            task_id=task_id,
            timeout_s=timeout_s,
            traceparent=traceparent,
            if_busy=if_busy,
        )
        return RunHandle(started, self)

    def handle(self, task_id: str) -> RunHandle:
        """A handle on any run by its task id (started anywhere, by anyone)."""
        return RunHandle(task_id, self)

    async def events(
        self, task_id: str, *, after: str = "0-0", follow: bool = True
    ) -> AsyncIterator[RunEntry]:
        """The entries of a run's events stream after ``after``, in order, each once.

        With ``follow``, waits for new entries until the terminal one (the last);
        a reader that reconnects passes the id of the last entry it saw. Ends
        early if the run's stream is gone (expired) and its record is terminal;
        :class:`TaskNotFoundError` for a task that does not exist.
        """
        async with translate_redis_errors(self._where):
            async for entry in self._events(task_id, after=after, follow=follow):
                yield entry

    async def _events(self, task_id: str, *, after: str, follow: bool) -> AsyncIterator[RunEntry]:
        if not await self.client.exists(
            self.store.keys.task(task_id), self.store.keys.run_events(task_id)
        ):
            raise TaskNotFoundError(f"no task {task_id!r}")

        async def ended() -> bool:
            record = await self.store.get(task_id)
            return record is None or record.get("state") in TERMINAL_STATES

        async def confirm(entry: RunEntry) -> bool:
            # The daemon writes the terminal entry in the record's own transition; a run
            # could append a fake one to its stream, which the record does not show.
            record = await self.store.get(task_id)
            return record is not None and record.get("state") == entry.data.get("state")

        async for entry in follow_events(
            self.client,
            self.store.keys,
            task_id,
            after=after,
            live=follow,
            block_ms=_FOLLOW_BLOCK_MS,
            ended=ended,
            confirm=confirm,
        ):
            yield entry

    async def abort(self, task_id: str, reason: str = "") -> int:
        """Aborts a task (durably: also before it starts); returns how many daemons heard it live."""
        async with translate_redis_errors(self._where):
            return await self.store.request_abort(task_id, reason)

    async def get(self, task_id: str) -> dict[str, str]:
        """The task record; :class:`TaskNotFoundError` if there is none."""
        async with translate_redis_errors(self._where):
            record = await self.store.get(task_id)
        if record is None:
            raise TaskNotFoundError(f"no task {task_id!r}")
        return record

    async def wait(self, task_id: str, timeout_s: float | None = None) -> dict[str, str]:
        """Waits until the task is terminal and returns its record (TimeoutError after ``timeout_s``)."""
        async with translate_redis_errors(self._where):
            pubsub: Any = open_pubsub(self.client)
            await pubsub.subscribe(self.store.keys.task_channel(task_id))
            try:
                with anyio.fail_after(timeout_s):
                    while True:
                        record = await self.get(task_id)
                        if record.get("state") in TERMINAL_STATES:
                            return record
                        await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            finally:
                await pubsub.aclose()
