"""The task state machine in Redis, shared by the supervisor daemon and in-process users.

A task is the hash ``<prefix>{<prefix>}task:<task_id>``. Its ``state`` moves
``queued -> starting -> running -> completed | failed | timed_out | aborted``;
each move is one compare-and-set Lua script, so a late exit can never overwrite
an abort and a terminal state is final. Every applied move is published as JSON
on ``<prefix>task-events`` and ``<prefix>task-events:<task_id>`` and appended to
the capped stream ``<prefix>{<prefix>}task-history``.
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
from typing import Any, Final, Literal, NamedTuple

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from ._replica_wait import run_confirmed
from ._session_line import LINE_LUA, MAX_PARKED_FIELDS
from .keys import DEFAULT_PREFIX, RUNS_GROUP, KeySchema
from .redis_connection import (
    WrongTypeError,
    as_text,
    describe_reply,
    is_cluster,
    replica_wait_of,
    wrong_type,
)
from .run_events import DEFAULT_EVENTS_MAXLEN, DEFAULT_EVENTS_TTL_S

__all__ = [
    "IF_BUSY_CHOICES",
    "LIVE_STATES",
    "TERMINAL_STATES",
    "IfBusy",
    "InvalidTaskIdError",
    "LineResult",
    "ResumeResult",
    "SessionRef",
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
        # Quoted in part: the message is logged and answered, and the id is anyone's input.
        shown = (
            repr(task_id) if len(task_id) <= 200 else f"{task_id[:200]!r}... ({len(task_id)} chars)"
        )
        raise InvalidTaskIdError(
            f"invalid task id {shown}: use 1-128 characters from A-Z a-z 0-9 _ . : @ = + -, "
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
IfBusy = Literal["wait", "refuse"]
IF_BUSY_CHOICES: Final = ("wait", "refuse")
"""What a run submitted for a session that has a live run does: wait for its turn
(the default), or be refused at once."""
MAX_ABORT_PAYLOAD: Final = 64 * 1024
"""Abort payloads longer than this are not parsed (they still abort)."""
MAX_REASON: Final = 4096
"""Abort reasons are cut to this many characters before they reach a record."""
_MAX_QUOTED_ID: Final = 200

# The scripts also append the move to the run's events stream as a `state` entry
# (see run_events.py), and a terminal move starts that stream's expiry. pcall: a
# key of the wrong type there (anyone's write) must not block the move itself.
# The transition, submit and claim scripts start with the session line's library
# (_session_line.py: ARGV[1] is the coordination prefix); a terminal move releases the run's
# place in its session's line in the same script, so no crash can leave it held.

# KEYS: task hash, run events stream. ARGV: coordination prefix, task id, new state, allowed
# from-states (space separated), event JSON, events channel, per-task channel, TTL in
# ms (0: none), events stream MAXLEN (0: no entry), events stream TTL in ms (0: none),
# '1' to move only a run in a session line, then field/value pairs.
_TRANSITION = (
    LINE_LUA
    + r"""
local task = ARGV[2]
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then
  return {'MISSING', ''}
end
local ok = false
for s in string.gmatch(ARGV[4], '%S+') do
  if s == cur then ok = true end
end
if not ok then
  return {'REJECTED', cur}
end
if ARGV[11] == '1' and not get_str(P .. 'task-session:' .. task) then
  return {'REJECTED', cur}
end
if ARGV[12] ~= '' and (get_str(P .. 'task-epoch:' .. task) or '0') ~= ARGV[12] then
  return {'STALE', cur}
end
if #ARGV > 12 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 13))
end
redis.call('HSET', KEYS[1], 'state', ARGV[3])
local ttl = tonumber(ARGV[8])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
redis.call('PUBLISH', ARGV[6], ARGV[5])
redis.call('PUBLISH', ARGV[7], ARGV[5])
if tonumber(ARGV[9]) > 0 then
  redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[9], '*', 'type', 'state', 'data', ARGV[5])
  if tonumber(ARGV[10]) > 0 then
    redis.pcall('PEXPIRE', KEYS[2], ARGV[10])
  end
end
if TERMINAL[ARGV[3]] then
  release(task)
  redis.call('DEL', P .. 'task-resume:' .. task)
  redis.call('DEL', P .. 'workspace-snapshot:' .. task)
  -- Kept as long as the record: a stale process of the run must stay refused; the tool
  -- journal goes with them (it was kept for ever).
  if ttl > 0 then
    redis.pcall('PEXPIRE', P .. 'task-epoch:' .. task, ttl)
    redis.pcall('PEXPIRE', P .. 'tool-journal:' .. task, ttl)
  end
end
return {'OK', cur}
"""
)

# A durable run whose process died without an end of its own (its daemon or node died, or
# a signal nobody here sent killed it) goes back to `queued` for another attempt: its
# epoch is raised (every write of the old process is refused from here on), `attempt`
# bumped, and its saved entry put back on the runs stream with the invocation to resume.
# The run keeps its session's lease (a queued holder is live). Of several daemons that
# notice at once exactly one gets OK. NOPOLICY: the run is not durable (fail it);
# EXHAUSTED: its attempts are used up (fail it); STALE: a resume happened already.
# KEYS: task hash, run events stream. ARGV: coordination prefix, task id, reason, expected epoch
# ('' = any), now, events channel, per-task channel, events stream MAXLEN.
_RESUME = (
    LINE_LUA
    + r"""
local task = ARGV[2]
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then
  return {'MISSING', ''}
end
if cur ~= 'starting' and cur ~= 'running' then
  return {'REJECTED', cur}
end
local saved = redis.pcall('HGETALL', P .. 'task-resume:' .. task)
if type(saved) ~= 'table' or saved.err ~= nil or #saved == 0 or #saved > __MAX_FIELDS__ then
  return {'NOPOLICY', cur}
end
local entry, max_attempts = {}, 1
for i = 1, #saved, 2 do
  if saved[i] == '_max_attempts' then
    max_attempts = tonumber(saved[i + 1]) or 1
  elseif saved[i] ~= 'invocation_id' then
    entry[#entry + 1] = saved[i]
    entry[#entry + 1] = saved[i + 1]
  end
end
local ekey = P .. 'task-epoch:' .. task
local epoch = tonumber(get_str(ekey) or '0') or 0
if ARGV[4] ~= '' and tostring(epoch) ~= ARGV[4] then
  return {'STALE', cur}
end
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '1') or 1
if attempt >= max_attempts then
  return {'EXHAUSTED', tostring(attempt)}
end
epoch = epoch + 1
attempt = attempt + 1
redis.call('SET', ekey, epoch)
local invocation = redis.call('HGET', KEYS[1], 'invocation_id')
if type(invocation) == 'string' and invocation ~= '' and #invocation <= 256 then
  entry[#entry + 1] = 'invocation_id'
  entry[#entry + 1] = invocation
end
redis.call('HDEL', KEYS[1], 'pid', 'pgid', 'start_ticks', 'cgroup', 'node_id', 'boot_id')
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempt', attempt, 'epoch', epoch,
  'resume_reason', ARGV[3])
redis.pcall('XADD', P .. 'runs', '*', unpack(entry))
local event = cjson.encode({task_id = task, state = 'queued', at = tonumber(ARGV[5]),
  detail = {reason = ARGV[3], attempt = attempt, epoch = epoch, resumed_from = cur}})
redis.call('PUBLISH', ARGV[6], event)
redis.call('PUBLISH', ARGV[7], event)
if tonumber(ARGV[8]) > 0 then
  redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[8], '*', 'type', 'state', 'data', event)
end
return {'OK', event}
"""
).replace("__MAX_FIELDS__", str(MAX_PARKED_FIELDS))

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

# A submitted run: its `queued` record, its runs-stream entry and its place in its
# session's line (the free lease, else the end of the queue), all or nothing; with
# if_busy 'refuse', nothing at all while another run holds the session.
# KEYS: task hash, run events stream. ARGV: coordination prefix, task id, session part, if_busy,
# event JSON, events channel, per-task channel, events stream MAXLEN, number n of record
# field/value items, the n record items, then the stream entry's field/value pairs.
_SUBMIT = (
    LINE_LUA
    + r"""
local task, part = ARGV[2], ARGV[3]
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'EXISTS', redis.call('HGET', KEYS[1], 'state') or ''}
end
local runs = P .. 'runs'
local kind = redis.call('TYPE', runs)['ok']
if kind ~= 'none' and kind ~= 'stream' then
  return {'NOSTREAM', kind}
end
local h = holder(part)
local queue = P .. 'session-queue:' .. part
local ahead = ''
if h then
  if ARGV[4] == 'refuse' then
    return {'BUSY', h}
  end
  ahead = redis.call('LINDEX', queue_of(part), -1) or h
end
local n = tonumber(ARGV[9])
redis.call('XADD', runs, '*', unpack(ARGV, 10 + n))
if h then
  redis.call('RPUSH', queue, task)
else
  redis.call('SET', P .. 'session-lease:' .. part, task)
end
redis.call('SET', P .. 'task-session:' .. task, part)
redis.call('HSET', KEYS[1], unpack(ARGV, 10, 9 + n))
if ahead ~= '' then
  redis.call('HSET', KEYS[1], 'waiting_for', ahead)
end
redis.call('PUBLISH', ARGV[6], ARGV[5])
redis.call('PUBLISH', ARGV[7], ARGV[5])
if tonumber(ARGV[8]) > 0 then
  redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[8], '*', 'type', 'state', 'data', ARGV[5])
end
return {'OK', ahead}
"""
)

# A daemon's claim of a queued run it read off the runs stream: `starting` if the run
# holds its session's lease (a run that is in no line yet, XADDed by hand, takes a free
# one), else the entry is parked, acknowledged and deleted (the run waits, holding no
# slot), or with if_busy 'refuse' nothing changes and the caller fails the run.
# KEYS: task hash, run events stream. ARGV: coordination prefix, task id, session part, if_busy,
# event JSON, events channel, per-task channel, events stream MAXLEN, runs-stream entry
# id, consumer group, number n of field/value items to set with `starting`, the n items,
# then the stream entry's field/value pairs.
_CLAIM = (
    LINE_LUA
    + r"""
local task = ARGV[2]
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then
  return {'MISSING', ''}
end
if cur ~= 'queued' then
  return {'REJECTED', cur}
end
local bind = P .. 'task-session:' .. task
local part = get_str(bind) or ARGV[3]
local h = holder(part)
if not h then
  redis.call('SET', P .. 'session-lease:' .. part, task)
  h = task
end
if h ~= task and ARGV[4] == 'refuse' then
  return {'BUSY', h}
end
redis.call('SET', bind, part)
local n = tonumber(ARGV[11])
if h ~= task then
  local queue = queue_of(part)
  local pos = redis.call('LPOS', queue, task)
  local ahead
  if pos then
    ahead = (pos == 0 and h) or redis.call('LINDEX', queue, pos - 1)
  else
    ahead = redis.call('LINDEX', queue, -1) or h
    redis.call('RPUSH', queue, task)
  end
  local parked = P .. 'parked:' .. task
  redis.call('DEL', parked)
  redis.call('HSET', parked, unpack(ARGV, 12 + n))
  redis.call('HSET', KEYS[1], 'waiting_for', ahead)
  redis.pcall('XACK', P .. 'runs', ARGV[10], ARGV[9])
  redis.pcall('XDEL', P .. 'runs', ARGV[9])
  return {'WAITING', ahead}
end
redis.call('HDEL', KEYS[1], 'waiting_for')
if n > 0 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 12, 11 + n))
end
redis.call('HSET', KEYS[1], 'state', 'starting')
redis.call('PUBLISH', ARGV[6], ARGV[5])
redis.call('PUBLISH', ARGV[7], ARGV[5])
if tonumber(ARGV[8]) > 0 then
  redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[8], '*', 'type', 'state', 'data', ARGV[5])
end
return {'OK', cur}
"""
)


class SessionRef(NamedTuple):
    """The ADK session a run uses, as submitted: the app string (an [apps] name or an
    import path), the user id and the session id. One live run per session."""

    app: str
    user_id: str
    session_id: str

    @property
    def part(self) -> str:
        """The session's name in its line's keys (see :meth:`KeySchema.session_part`)."""
        return KeySchema.session_part(self.app, self.user_id, self.session_id)


@dataclass(frozen=True, slots=True)
class LineResult:
    """Outcome of :meth:`TaskStore.submit` or :meth:`TaskStore.claim`.

    ``outcome``: ``ok`` (submitted / claimed), ``exists`` (submit: the task id is
    taken), ``rejected`` (claim: the record is no longer ``queued``), ``missing``
    (claim: no record), ``waiting`` (claim: parked behind another run), ``busy``
    (``if_busy="refuse"`` and another run holds the session). ``state``: the
    record's state before (``ok`` of a claim, ``exists``, ``rejected``).
    ``other``: the run this one waits for (``waiting``, or a submit that joined
    a queue), or the live run that holds the session (``busy``).
    """

    outcome: Literal["ok", "exists", "rejected", "missing", "waiting", "busy"]
    state: str | None = None
    other: str | None = None


@dataclass(frozen=True, slots=True)
class ResumeResult:
    """Outcome of :meth:`TaskStore.resume`.

    ``resumed``: queued again, with its new ``attempt`` and ``epoch``; ``exhausted``:
    ``attempt`` reached the run's ``max_attempts`` (nothing changed: fail it);
    ``nopolicy``: not a durable run (fail it); ``stale``: its epoch moved on (another
    resume won); ``rejected``: not live; ``missing``: no record.
    """

    outcome: Literal["resumed", "exhausted", "nopolicy", "stale", "rejected", "missing"]
    attempt: int | None
    epoch: int | None


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
        self._submit = client.register_script(_SUBMIT)
        self._claim = client.register_script(_CLAIM)
        self._resume = client.register_script(_RESUME)

    @property
    def key_prefix(self) -> str:
        """The prefix of every key this store touches."""
        return self.keys.prefix

    async def _run(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """Runs one of the state machine's scripts; with a URL's ``?wait_replicas=N``,
        acknowledged only once N replicas have its writes (the record, its events stream
        entry, the runs stream entry), so a failover cannot undo it."""
        wait = replica_wait_of(self.client)
        if wait is None:
            return await script(keys=keys, args=args)
        return await run_confirmed(
            self.client, script, keys, args, wait, f"the {self.keys.prefix!r} store"
        )

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

    async def submit(
        self,
        task_id: str,
        fields: Mapping[str, object],
        entry: Mapping[str, str],
        session: SessionRef,
        *,
        if_busy: IfBusy = "wait",
    ) -> LineResult:
        """Queues a run: its ``queued`` record (``fields``), its runs-stream ``entry`` and
        its place in its session's line (the free lease, else the end of the queue: then
        ``other`` names the run ahead of it, and the record's ``waiting_for`` too), all in
        one script. With ``if_busy="refuse"``, nothing is written while another run holds
        the session (``busy``, ``other`` = that run)."""
        now = time.time()
        record: dict[str, object] = {
            "task_id": task_id,
            "state": TaskState.QUEUED.value,
            "created_at": repr(now),
        }
        record.update({k: v for k, v in fields.items() if v is not None})
        event = self._event(
            task_id,
            TaskState.QUEUED.value,
            now,
            {k: v for k, v in fields.items() if k != "message"},
        )
        flat = _flat(record)
        async with self._named(task_id):
            status, other = await self._run(
                self._submit,
                [self.keys.task(task_id), self.keys.run_events(task_id)],
                [
                    self.keys.coordination,
                    task_id,
                    session.part,
                    if_busy,
                    event,
                    self.keys.task_events,
                    self.keys.task_channel(task_id),
                    self._events_maxlen,
                    len(flat),
                    *flat,
                    *_flat(entry),
                ],
            )
        if as_text(status) == "OK":
            await self._history(event)
            return LineResult("ok", None, as_text(other) or None)
        if as_text(status) == "NOSTREAM":
            raise WrongTypeError(f"{self.keys.runs} holds a {as_text(other)}, not a stream")
        return self._line_result(status, other)

    async def claim(
        self,
        task_id: str,
        fields: Mapping[str, object],
        session: SessionRef,
        entry_id: bytes | str,
        entry: Mapping[str, str],
        *,
        if_busy: IfBusy = "wait",
    ) -> LineResult:
        """A daemon's claim of a ``queued`` run it read off the runs stream.

        ``ok``: the run holds its session's lease and is ``starting`` now, with
        ``fields``. ``waiting``: another run holds the session; the entry is parked
        (acknowledged and deleted from the stream, put back on it at the run's turn)
        and ``other`` names the run ahead. ``busy`` (``if_busy="refuse"``): nothing
        changed, the caller fails the run. ``rejected``, ``missing``: as for
        :meth:`transition`.
        """
        now = time.time()
        event = self._event(task_id, TaskState.STARTING.value, now, fields)
        flat = _flat(fields)
        async with self._named(task_id):
            status, other = await self._run(
                self._claim,
                [self.keys.task(task_id), self.keys.run_events(task_id)],
                [
                    self.keys.coordination,
                    task_id,
                    session.part,
                    if_busy,
                    event,
                    self.keys.task_events,
                    self.keys.task_channel(task_id),
                    self._events_maxlen,
                    entry_id,
                    RUNS_GROUP,
                    len(flat),
                    *flat,
                    *_flat(entry),
                ],
            )
        result = self._line_result(status, other)
        if result.outcome == "ok":
            await self._history(event)
        return result

    @staticmethod
    def _line_result(status: bytes | str, other: bytes | str | None) -> LineResult:
        # A task id read from a lease or queue: any length anyone wrote (a real one is at
        # most 128 characters); it ends up in reasons and logs.
        text = as_text(other)[:_MAX_QUOTED_ID] if other is not None else ""
        match as_text(status):
            case "OK":
                return LineResult("ok", text)
            case "EXISTS":
                return LineResult("exists", text)
            case "REJECTED":
                return LineResult("rejected", text)
            case "WAITING":
                return LineResult("waiting", None, text)
            case "BUSY":
                return LineResult("busy", None, text)
        return LineResult("missing")

    async def session_holder(self, session: SessionRef) -> str | None:
        """The task id holding the session's lease (its live run, or the next one on its way
        to a daemon), or None. A read for display: the scripts decide, not this."""
        value = await self.client.get(self.keys.session_lease(*session))
        return as_text(value) if isinstance(value, bytes | str) else None

    async def transition(
        self,
        task_id: str,
        state: TaskState,
        fields: Mapping[str, object] | None = None,
        *,
        allowed_from: Iterable[TaskState] | None = None,
        epoch: int | None = None,
    ) -> TransitionResult:
        """Moves the task to ``state`` if its current state allows it; sets ``fields`` with it.

        A terminal move also releases the run's place in its session's line: the
        next run of that session gets its turn. With ``epoch``, only if the run's
        epoch is still that one (a durable run resumed since is left alone)."""
        return await self._move(
            task_id, state, fields, allowed_from, in_line_only=False, epoch=epoch
        )

    async def abort_waiting(self, task_id: str, reason: str) -> TransitionResult:
        """Records ``aborted`` for a run that is still ``queued`` in a session's line (waiting
        for its turn, or handed it and not yet started), and takes it out of the line; any
        other task is left alone (``applied`` False)."""
        return await self._move(
            task_id,
            TaskState.ABORTED,
            {"reason": reason},
            (TaskState.QUEUED,),
            in_line_only=True,
        )

    async def _move(
        self,
        task_id: str,
        state: TaskState,
        fields: Mapping[str, object] | None,
        allowed_from: Iterable[TaskState] | None,
        *,
        in_line_only: bool,
        epoch: int | None = None,
    ) -> TransitionResult:
        fields = dict(fields or {})
        now = time.time()
        if state.terminal:
            fields.setdefault("ended_at", repr(now))
        sources = tuple(allowed_from) if allowed_from is not None else _ALLOWED_FROM[state]
        event = self._event(task_id, state.value, now, fields)
        async with self._named(task_id):
            status, prev = await self._run(
                self._transition,
                [self.keys.task(task_id), self.keys.run_events(task_id)],
                self._transition_args(task_id, state, sources, event, fields, in_line_only, epoch),
            )
        status = as_text(status)
        if status == "OK":
            await self._history(event)
            return TransitionResult(True, as_text(prev))
        return TransitionResult(False, None if status == "MISSING" else as_text(prev))

    def _transition_args(
        self,
        task_id: str,
        state: TaskState,
        sources: Iterable[TaskState],
        event: str,
        fields: Mapping[str, object],
        in_line_only: bool = False,
        epoch: int | None = None,
    ) -> list[str | int]:
        return [
            self.keys.coordination,
            task_id,
            state.value,
            " ".join(s.value for s in sources),
            event,
            self.keys.task_events,
            self.keys.task_channel(task_id),
            self._terminal_ttl_ms if state.terminal else 0,
            self._events_maxlen,
            self._events_ttl_ms if state.terminal else 0,
            "1" if in_line_only else "0",
            "" if epoch is None else str(epoch),
            *_flat(fields),
        ]

    async def resume(self, task_id: str, reason: str, *, epoch: int | None = None) -> ResumeResult:
        """Puts a durable run whose process died back on the runs stream for another attempt.

        One script: the record goes from ``starting``/``running`` to ``queued`` with
        ``attempt`` + 1 and a new ``epoch`` (every write of the old process is refused
        from then on), keeping its session's lease, and its saved entry goes back on the
        runs stream with the invocation to resume. ``epoch``: only if the run is still
        at that epoch. Of several callers at once exactly one gets ``resumed``.
        """
        async with self._named(task_id):
            status, detail = await self._resume(
                keys=[self.keys.task(task_id), self.keys.run_events(task_id)],
                args=[
                    self.keys.coordination,
                    task_id,
                    reason[:MAX_REASON],
                    "" if epoch is None else str(epoch),
                    repr(time.time()),
                    self.keys.task_events,
                    self.keys.task_channel(task_id),
                    self._events_maxlen,
                ],
            )
        outcome = as_text(status).lower()
        if outcome == "ok":
            event = as_text(detail)
            await self._history(event)
            data = json.loads(event)["detail"]
            return ResumeResult("resumed", int(data["attempt"]), int(data["epoch"]))
        if outcome == "exhausted":
            return ResumeResult("exhausted", int(as_text(detail)), None)
        if outcome in ("nopolicy", "stale", "rejected", "missing"):
            return ResumeResult(outcome, None, None)  # type: ignore[arg-type]
        raise ValueError(f"unexpected resume reply {status!r}")

    async def save_resume_entry(
        self, task_id: str, entry: Mapping[str, str], max_attempts: int
    ) -> int:
        """Saves what a durable run is started again from (set at each claim); returns the
        run's current epoch (0 before its first resume)."""
        flat = _flat({**entry, "_max_attempts": max_attempts})
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.task_resume(task_id))
            pipe.hset(
                self.keys.task_resume(task_id),
                mapping=dict(zip(flat[::2], flat[1::2], strict=True)),
            )
            pipe.get(self.keys.task_epoch(task_id))
            _, _, raw = await pipe.execute()
        return _epoch(raw)

    async def epochs(self, task_ids: Sequence[str]) -> list[int]:
        """The current epoch of each run (0: never resumed; garbage reads as -1)."""
        if not task_ids:
            return []
        values = await self.client.mget([self.keys.task_epoch(t) for t in task_ids])
        return [_epoch(v) for v in values]

    async def fail_many(self, failures: Mapping[str, Mapping[str, object]]) -> int:
        """Moves many non-terminal tasks to ``failed`` in pipelined batches; returns how many moved."""
        moved = 0
        items = list(failures.items())
        if items and is_cluster(self.client):
            # A cluster pipeline does not load its scripts first, as a plain one does: a
            # primary that never saw the script would fail the whole batch with NOSCRIPT.
            await self.client.script_load(_TRANSITION)
        for start in range(0, len(items), 500):
            batch = items[start : start + 500]
            now = time.time()
            events = []
            async with self.client.pipeline(transaction=False) as pipe:
                for task_id, fields in batch:
                    f = {**fields, "ended_at": repr(now)}
                    event = self._event(task_id, TaskState.FAILED.value, now, f)
                    events.append(event)
                    await self._transition(
                        keys=[self.keys.task(task_id), self.keys.run_events(task_id)],
                        args=self._transition_args(
                            task_id,
                            TaskState.FAILED,
                            _ALLOWED_FROM[TaskState.FAILED],
                            event,
                            f,
                        ),
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
        """Leaves the durable abort mark, then publishes the abort; returns the subscriber count.

        A run still waiting in its session's line has no process to kill: it is
        recorded ``aborted`` here at once, and leaves the line."""
        reason = reason or "aborted by request"
        payload = json.dumps({"action": "abort", "reason": reason})
        if is_cluster(self.client):
            # redis-py refuses PUBLISH in a cluster pipeline: the mark first, as below.
            await self.client.set(self.keys.abort_mark(task_id), payload, ex=ttl_s)
            receivers = await self.client.publish(self.keys.abort_channel(task_id), payload)
        else:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.set(self.keys.abort_mark(task_id), payload, ex=ttl_s)
                pipe.publish(self.keys.abort_channel(task_id), payload)
                _, receivers = await pipe.execute()
        try:
            await self.abort_waiting(task_id, reason[:MAX_REASON])
        except WrongTypeError as exc:  # the abort itself is out: the mark and the message
            log.error("abort of %s: %s", task_id, exc)
        return int(receivers)

    async def abort_marks(self, task_ids: Iterable[str]) -> dict[str, str]:
        """The abort payloads of those tasks that carry a durable abort mark."""
        ids = list(task_ids)
        if not ids:
            return {}
        values = await self.client.mget([self.keys.abort_mark(t) for t in ids])
        return {t: as_text(v) for t, v in zip(ids, values, strict=True) if v is not None}


def _epoch(raw: object) -> int:
    """An epoch read from Redis: 0 if absent, -1 if it is no small decimal number."""
    if raw is None:
        return 0
    text = as_text(raw) if isinstance(raw, bytes | str) else ""
    return int(text) if re.fullmatch(r"[0-9]{1,15}", text) else -1


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
