"""The task state machine in Redis, shared by the supervisor daemon and in-process users.

A task is the hash ``<prefix>task:<task_id>``. Its ``state`` moves
``queued -> starting -> running -> completed | failed | timed_out | aborted``;
each move is one compare-and-set Lua script, so a late exit can never overwrite
an abort and a terminal state is final. Every applied move is published as JSON
on ``<prefix>task-events`` and ``<prefix>task-events:<task_id>`` and appended to
the capped stream ``<prefix>task-history``.
"""

from __future__ import annotations

import enum
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from .keys import DEFAULT_PREFIX, KeySchema
from .redis_connection import WrongTypeError, as_text, describe_reply, wrong_type
from .run_events import DEFAULT_EVENTS_MAXLEN, DEFAULT_EVENTS_TTL_S

__all__ = [
    "LIVE_STATES",
    "TERMINAL_STATES",
    "InvalidTaskIdError",
    "TaskState",
    "TaskStore",
    "TransitionResult",
    "check_task_id",
    "parse_abort_payload",
]

log = logging.getLogger("adk_supervisor")

# Task ids name files (run logs) and cgroup directories: no path separators, no
# leading dot, and short enough for the fork server's environment marker.
_TASK_ID = re.compile(r"[A-Za-z0-9_:@=+-][A-Za-z0-9_.:@=+-]{0,127}")


class InvalidTaskIdError(ValueError):
    """A task id that cannot name a task (its message says what is allowed)."""


def check_task_id(task_id: str) -> str:
    """Returns ``task_id`` if it is a valid task id, else raises :class:`InvalidTaskIdError`."""
    if not _TASK_ID.fullmatch(task_id):
        raise InvalidTaskIdError(
            f"invalid task id {task_id!r}: use 1-128 characters from A-Z a-z 0-9 _ . : @ = + -, "
            "not starting with '.'"
        )
    return task_id


class TaskState(enum.StrEnum):
    """States of a task record."""

    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    ABORTED = "aborted"

    @property
    def terminal(self) -> bool:
        """Whether no transition leaves this state."""
        return self in TERMINAL_STATES


TERMINAL_STATES: Final = frozenset(
    {TaskState.COMPLETED, TaskState.FAILED, TaskState.TIMED_OUT, TaskState.ABORTED}
)

# States whose record names a process that should be alive (reconcile and peers check them).
LIVE_STATES: Final = frozenset({TaskState.STARTING, TaskState.RUNNING})

# Which states each state may be entered from.
_ALLOWED_FROM: Final[dict[TaskState, tuple[TaskState, ...]]] = {
    TaskState.STARTING: (TaskState.QUEUED,),
    TaskState.RUNNING: (TaskState.STARTING,),
    TaskState.COMPLETED: (TaskState.STARTING, TaskState.RUNNING),
    TaskState.FAILED: (TaskState.QUEUED, TaskState.STARTING, TaskState.RUNNING),
    TaskState.TIMED_OUT: (TaskState.STARTING, TaskState.RUNNING),
    TaskState.ABORTED: (TaskState.QUEUED, TaskState.STARTING, TaskState.RUNNING),
}

HISTORY_MAXLEN: Final = 10_000
MAX_ABORT_PAYLOAD: Final = 64 * 1024
"""Abort payloads longer than this are not parsed (they still abort)."""
MAX_REASON: Final = 4096
"""Abort reasons are cut to this many characters before they reach a record."""

# Both scripts also append the move to the run's events stream as a `state` entry
# (see run_events.py), and a terminal move starts that stream's expiry. pcall: a
# key of the wrong type there (anyone's write) must not block the move itself.

# KEYS: task hash, run events stream. ARGV: new state, allowed from-states (space
# separated), event JSON, events channel, per-task channel, TTL in ms (0: none),
# events stream MAXLEN (0: no entry), events stream TTL in ms (0: none), then
# field/value pairs.
_TRANSITION = r"""
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then
  return {'MISSING', ''}
end
local ok = false
for s in string.gmatch(ARGV[2], '%S+') do
  if s == cur then ok = true end
end
if not ok then
  return {'REJECTED', cur}
end
if #ARGV > 8 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 9))
end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
local ttl = tonumber(ARGV[6])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
redis.call('PUBLISH', ARGV[4], ARGV[3])
redis.call('PUBLISH', ARGV[5], ARGV[3])
if tonumber(ARGV[7]) > 0 then
  redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'type', 'state', 'data', ARGV[3])
  if tonumber(ARGV[8]) > 0 then
    redis.pcall('PEXPIRE', KEYS[2], ARGV[8])
  end
end
return {'OK', cur}
"""

# KEYS: task hash, run events stream. ARGV: event JSON, events channel, per-task
# channel, events stream MAXLEN (0: no entry), then field/value pairs.
_CREATE = r"""
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'EXISTS', redis.call('HGET', KEYS[1], 'state') or ''}
end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('PUBLISH', ARGV[2], ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[1])
if tonumber(ARGV[4]) > 0 then
  redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'type', 'state', 'data', ARGV[1])
end
return {'OK', ''}
"""


@dataclass(frozen=True, slots=True)
class TransitionResult:
    """Outcome of a compare-and-set: ``applied``, else the state that prevented it."""

    applied: bool
    previous: str | None

    @property
    def missing(self) -> bool:
        """The task record does not exist."""
        return not self.applied and self.previous is None


def _flat(fields: Mapping[str, object]) -> list[str]:
    out: list[str] = []
    for key, value in fields.items():
        if value is None:
            continue
        out.append(key)
        out.append(
            value
            if isinstance(value, str)
            else json.dumps(value)
            if isinstance(value, dict | list)
            else str(value)
        )
    return out


class TaskStore:
    """Reads and moves task records; the one implementation of the state machine."""

    def __init__(
        self,
        client: aioredis.Redis,
        key_prefix: str = DEFAULT_PREFIX,
        *,
        record_ttl_s: float | None = None,
        history_maxlen: int = HISTORY_MAXLEN,
        events_maxlen: int = DEFAULT_EVENTS_MAXLEN,
        events_ttl_s: float | None = DEFAULT_EVENTS_TTL_S,
    ) -> None:
        """``record_ttl_s``: how long a record lives once terminal (None: for ever);
        ``history_maxlen``: about how many entries each of this store's appends
        leaves in the history stream; ``events_maxlen`` and ``events_ttl_s``: the cap
        of each run's events stream and how long it lives after its terminal entry
        (``events_maxlen=0``: no state entries)."""
        self.client = client
        self.keys = KeySchema(key_prefix)
        self._terminal_ttl_ms = int(record_ttl_s * 1000) if record_ttl_s else 0
        self._history_maxlen = history_maxlen
        self._events_maxlen = events_maxlen
        self._events_ttl_ms = int(events_ttl_s * 1000) if events_ttl_s else 0
        self._transition = client.register_script(_TRANSITION)
        self._create = client.register_script(_CREATE)

    @property
    def key_prefix(self) -> str:
        """The prefix of every key this store touches."""
        return self.keys.prefix

    @asynccontextmanager
    async def _named(self, task_id: str) -> AsyncIterator[None]:
        """Turns Redis's WRONGTYPE about a task key into a :class:`WrongTypeError` naming it."""
        try:
            yield
        except ResponseError as exc:
            if wrong_type(exc):
                raise WrongTypeError(describe_reply(self.keys.task(task_id), exc)) from None
            raise

    @staticmethod
    def _event(task_id: str, state: str, at: float, detail: Mapping[str, object]) -> str:
        return json.dumps({"task_id": task_id, "state": state, "at": at, "detail": dict(detail)})

    async def create(
        self, task_id: str, state: TaskState, fields: Mapping[str, object]
    ) -> TransitionResult:
        """Creates the record in ``state`` unless it exists (then ``previous`` is its state)."""
        now = time.time()
        record = {"task_id": task_id, "state": state.value, "created_at": repr(now), **fields}
        event = self._event(
            task_id, state.value, now, {k: v for k, v in fields.items() if k != "message"}
        )
        async with self._named(task_id):
            status, prev = await self._create(
                keys=[self.keys.task(task_id), self.keys.run_events(task_id)],
                args=[
                    event,
                    self.keys.task_events,
                    self.keys.task_channel(task_id),
                    self._events_maxlen,
                    *_flat(record),
                ],
            )
        applied = as_text(status) == "OK"
        if applied:
            await self._history(event)
        return TransitionResult(applied, None if applied else as_text(prev))

    async def transition(
        self,
        task_id: str,
        state: TaskState,
        fields: Mapping[str, object] | None = None,
        *,
        allowed_from: Iterable[TaskState] | None = None,
    ) -> TransitionResult:
        """Moves the task to ``state`` if its current state allows it; sets ``fields`` with it."""
        fields = dict(fields or {})
        now = time.time()
        if state.terminal:
            fields.setdefault("ended_at", repr(now))
        sources = tuple(allowed_from) if allowed_from is not None else _ALLOWED_FROM[state]
        event = self._event(task_id, state.value, now, fields)
        async with self._named(task_id):
            status, prev = await self._transition(
                keys=[self.keys.task(task_id), self.keys.run_events(task_id)],
                args=[
                    state.value,
                    " ".join(s.value for s in sources),
                    event,
                    self.keys.task_events,
                    self.keys.task_channel(task_id),
                    self._terminal_ttl_ms if state.terminal else 0,
                    self._events_maxlen,
                    self._events_ttl_ms if state.terminal else 0,
                    *_flat(fields),
                ],
            )
        status = as_text(status)
        if status == "OK":
            await self._history(event)
            return TransitionResult(True, as_text(prev))
        return TransitionResult(False, None if status == "MISSING" else as_text(prev))

    async def fail_many(self, failures: Mapping[str, Mapping[str, object]]) -> int:
        """Moves many non-terminal tasks to ``failed`` in pipelined batches; returns how many moved."""
        moved = 0
        items = list(failures.items())
        for start in range(0, len(items), 500):
            batch = items[start : start + 500]
            now = time.time()
            events = []
            async with self.client.pipeline(transaction=False) as pipe:
                for task_id, fields in batch:
                    f = {**fields, "ended_at": repr(now)}
                    event = self._event(task_id, TaskState.FAILED.value, now, f)
                    events.append(event)
                    sources = " ".join(s.value for s in _ALLOWED_FROM[TaskState.FAILED])
                    await self._transition(
                        keys=[self.keys.task(task_id), self.keys.run_events(task_id)],
                        args=[
                            TaskState.FAILED.value,
                            sources,
                            event,
                            self.keys.task_events,
                            self.keys.task_channel(task_id),
                            self._terminal_ttl_ms,
                            self._events_maxlen,
                            self._events_ttl_ms,
                            *_flat(f),
                        ],
                        client=pipe,
                    )
                replies = await pipe.execute()
            async with self.client.pipeline(transaction=False) as pipe:
                for event, (status, _prev) in zip(events, replies, strict=True):
                    if as_text(status) == "OK":
                        moved += 1
                        pipe.xadd(
                            self.keys.task_history,
                            {"event": event},
                            maxlen=self._history_maxlen,
                            approximate=True,
                        )
                replies = await pipe.execute(raise_on_error=False)
                refused = [r for r in replies if isinstance(r, ResponseError)]
                if refused:
                    self._history_refused(refused[0])
        return moved

    async def _history(self, event: str) -> None:
        try:
            await self.client.xadd(
                self.keys.task_history,
                {"event": event},
                maxlen=self._history_maxlen,
                approximate=True,
            )
        except ResponseError as exc:
            self._history_refused(exc)

    def _history_refused(self, error: ResponseError) -> None:
        # The transition is applied already: raising would tell the caller it was not
        # (a client's submit would stop before queueing its run, a retry would find it
        # rejected). A key of the wrong type there is anyone's write away.
        log.error(
            "%s; the transition is applied but missing from the history",
            describe_reply(self.keys.task_history, error),
        )

    async def update(self, task_id: str, fields: Mapping[str, object]) -> None:
        """Sets informational fields (progress, errors) without a state change."""
        flat = _flat(fields)
        if flat:
            await self.client.hset(
                self.keys.task(task_id), mapping=dict(zip(flat[::2], flat[1::2], strict=True))
            )

    async def get(self, task_id: str) -> dict[str, str] | None:
        """The task record as strings, or None if there is none."""
        raw = await self.client.hgetall(self.keys.task(task_id))
        return {as_text(k): as_text(v) for k, v in raw.items()} if raw else None

    async def get_many(self, task_ids: Iterable[str]) -> list[dict[str, str] | None]:
        """Records of many tasks in one pipelined round trip (None for a key that is no record)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hgetall(self.keys.task(task_id))
            replies = await pipe.execute(raise_on_error=False)
        return [
            {as_text(k): as_text(v) for k, v in r.items()} if isinstance(r, dict) and r else None
            for r in replies
        ]

    async def fields_many(
        self, task_ids: Sequence[str], fields: Sequence[str]
    ) -> list[dict[str, str]]:
        """Only ``fields`` of many tasks, in one pipelined round trip (absent fields omitted;
        a key that is no hash reads as an empty record)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hmget(self.keys.task(task_id), fields)
            # A key of the wrong type (anyone can write one) reads as an empty record.
            replies = await pipe.execute(raise_on_error=False)
        return [
            {f: as_text(v) for f, v in zip(fields, values, strict=True) if v is not None}
            if isinstance(values, list)
            else {}
            for values in replies
        ]

    async def request_abort(
        self, task_id: str, reason: str = "", ttl_s: int = 7 * 24 * 3600
    ) -> int:
        """Leaves the durable abort mark, then publishes the abort; returns the subscriber count."""
        payload = json.dumps({"action": "abort", "reason": reason or "aborted by request"})
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.abort_mark(task_id), payload, ex=ttl_s)
            pipe.publish(self.keys.abort_channel(task_id), payload)
            _, receivers = await pipe.execute()
        return int(receivers)

    async def abort_marks(self, task_ids: Iterable[str]) -> dict[str, str]:
        """The abort payloads of those tasks that carry a durable abort mark."""
        ids = list(task_ids)
        if not ids:
            return {}
        values = await self.client.mget([self.keys.abort_mark(t) for t in ids])
        return {t: as_text(v) for t, v in zip(ids, values, strict=True) if v is not None}


def parse_abort_payload(payload: bytes | str | None) -> tuple[str, bool]:
    """The reason an abort message carries, and whether the payload was well-formed JSON.

    Any payload aborts: a JSON object may carry ``reason``; anything else is
    still an abort, with a generic reason. Payloads are untrusted: one over
    :data:`MAX_ABORT_PAYLOAD` bytes is not parsed, nor is JSON nested too deeply
    for the parser, and a reason is cut to :data:`MAX_REASON` characters.
    """
    if payload is None:
        return "aborted", True
    if len(payload) > MAX_ABORT_PAYLOAD:
        return f"aborted (abort payload of {len(payload)} bytes not read)", False
    text = payload.decode(errors="replace") if isinstance(payload, bytes) else payload
    try:
        data: Any = json.loads(text)
    except (ValueError, RecursionError):
        return "aborted (non-JSON abort payload)", False
    if isinstance(data, dict):
        reason = data.get("reason")
        return (str(reason)[:MAX_REASON] if reason else "aborted"), True
    return "aborted", True
