"""What the console shows, read from Redis: the nodes, live runs, queued runs, recent ends.

- Nodes: ``<prefix>{<prefix>}nodes``, each alive while its heartbeat key exists.
- Live runs: the members of every node's ``node:<id>:tasks`` set whose record
  is ``starting`` or ``running`` (a member still ``queued`` is a claim in
  progress: shown as queued).
- Queued runs: the runs stream's entries (acknowledged entries are deleted, so
  what is left is not yet started) and the runs waiting in a session's line
  (``session-queue:*``, found by SCAN: the one read here that grows with the
  key space, done once per snapshot), each while its record is ``queued``.
- Recent ends: the newest terminal transitions of ``<prefix>{<prefix>}task-history``,
  one per task, with the record where it still exists.
- CPU and memory: each node's ``node:<id>:usage`` hash (``daemon/usage.py``),
  as fresh as the node's heartbeat interval.

Everything read is untrusted: ids that are no task ids are skipped, keys of
the wrong type read as empty, strings are cut, numbers checked; every read is
bounded (the ``_MAX_*`` caps).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from agent_runtime.redis_connection import as_text
from agent_runtime.task_store import (
    LIVE_STATES,
    TERMINAL_STATES,
    InvalidTaskIdError,
    TaskState,
    TaskStore,
    check_task_id,
)

__all__ = ["ConsoleView", "parse_transition", "row_of"]

_MAX_NODES = 1000
_MAX_NODE_TASKS = 5000
_MAX_STREAM_QUEUED = 500
_MAX_QUEUE_KEYS = 1000
_MAX_PER_QUEUE = 100
_MAX_SHOWN = 500
_HISTORY_SCAN = 2000
_RECENT_ENDS = 50
_MAX_TEXT = 1000
_MAX_USAGE_FIELDS = 10_000

_TEXT_FIELDS = (
    "state",
    "app",
    "user_id",
    "session_id",
    "node_id",
    "reason",
    "error",
    "signal",
    "waiting_for",
)
_NUMBER_FIELDS = ("created_at", "started_at", "ended_at")
_INT_FIELDS = ("pid", "exit_code")


def _task_id(value: object) -> str | None:
    if not isinstance(value, bytes | str):
        return None
    try:
        return check_task_id(as_text(value))
    except InvalidTaskIdError:
        return None


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    text = value.strip() if isinstance(value, str) else ""
    return int(text) if text.lstrip("-").isdigit() and len(text) <= 20 else None


def row_of(task_id: str, record: Mapping[str, object]) -> dict[str, Any]:
    """A run's row: the record's fields the console shows, checked and cut."""
    row: dict[str, Any] = {"task_id": task_id}
    for name in _TEXT_FIELDS:
        value = record.get(name)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            row[name] = str(value)[:_MAX_TEXT]
    for name in _NUMBER_FIELDS:
        if (number := _number(record.get(name))) is not None:
            row[name] = number
    for name in _INT_FIELDS:
        if (integer := _int(record.get(name))) is not None:
            row[name] = integer
    return row


def _usage(raw: object) -> dict[str, float | int | None] | None:
    try:
        data = json.loads(as_text(raw)) if isinstance(raw, bytes | str) else None
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    pct = _number(data.get("cpu_pct"))
    return {
        "pid": _int(data.get("pid")),
        "rss_bytes": _int(data.get("rss")),
        "cpu_s": _number(data.get("cpu_s")),
        "cpu_pct": pct,
    }


class ConsoleView:
    """Reads the console's snapshot and its periodic figures from one task store's Redis."""

    def __init__(self, store: TaskStore) -> None:
        self._store = store
        self._keys = store.keys

    async def nodes(self) -> list[dict[str, Any]]:
        """Every node of ``<prefix>{<prefix>}nodes``: its id, whether its heartbeat is there, its runs."""
        ids = await self._node_ids()
        async with self._store.client.pipeline(transaction=False) as pipe:
            for node in ids:
                pipe.exists(self._keys.node_heartbeat(node))
                pipe.scard(self._keys.node_tasks(node))
            replies = await pipe.execute(raise_on_error=False)
        return [
            {
                "node_id": node,
                "alive": replies[2 * i] == 1,
                "tasks": replies[2 * i + 1] if isinstance(replies[2 * i + 1], int) else 0,
            }
            for i, node in enumerate(ids)
        ]

    async def _node_ids(self) -> list[str]:
        raw = await self._store.client.srandmember(self._keys.nodes, _MAX_NODES)
        ids = sorted({as_text(n)[:200] for n in raw or () if isinstance(n, bytes | str)})
        return [n for n in ids if n and ":" not in n]

    async def usage(self) -> dict[str, dict[str, float | int | None]]:
        """Task id -> its tree's ``pid``, ``rss_bytes``, ``cpu_s``, ``cpu_pct``, every node's."""
        ids = await self._node_ids()
        async with self._store.client.pipeline(transaction=False) as pipe:
            for node in ids:
                pipe.hlen(self._keys.node_usage(node))
            sizes = await pipe.execute(raise_on_error=False)
        readable = [
            node
            for node, size in zip(ids, sizes, strict=True)
            if isinstance(size, int) and 0 < size <= _MAX_USAGE_FIELDS
        ]
        async with self._store.client.pipeline(transaction=False) as pipe:
            for node in readable:
                pipe.hgetall(self._keys.node_usage(node))
            hashes = await pipe.execute(raise_on_error=False)
        out: dict[str, dict[str, float | int | None]] = {}
        for found in hashes:
            if not isinstance(found, dict):
                continue
            for field, raw in found.items():
                task_id = _task_id(field)
                figures = _usage(raw)
                if task_id is not None and figures is not None:
                    out[task_id] = figures
        return out

    async def snapshot(self) -> dict[str, Any]:
        """Nodes, live runs, queued runs and recent ends, each a list of rows."""
        nodes = await self.nodes()
        live_ids = await self._members([self._keys.node_tasks(n["node_id"]) for n in nodes])
        queued_ids = await self._stream_queued() + await self._line_queued()
        candidates = _unique([*live_ids, *queued_ids])
        records = await self._store.get_many(candidates)
        live: list[dict[str, Any]] = []
        queued: list[dict[str, Any]] = []
        for task_id, record in zip(candidates, records, strict=True):
            state = record.get("state") if record else None
            if record is None or state is None:
                continue
            if state in LIVE_STATES:
                live.append(row_of(task_id, record))
            elif state == TaskState.QUEUED:
                queued.append(row_of(task_id, record))
        live.sort(key=lambda r: r.get("started_at") or r.get("created_at") or 0.0)
        queued.sort(key=lambda r: r.get("created_at") or 0.0)
        now = await self._store.client.time()
        return {
            "now": int(now[0]) + int(now[1]) / 1e6,
            "nodes": nodes,
            "live": live[:_MAX_SHOWN],
            "queued": queued[:_MAX_SHOWN],
            "ended": await self.recent_ends(),
            "usage": await self.usage(),
        }

    async def _members(self, sets: list[str]) -> list[str]:
        async with self._store.client.pipeline(transaction=False) as pipe:
            for key in sets:
                pipe.srandmember(key, _MAX_NODE_TASKS)
            replies = await pipe.execute(raise_on_error=False)
        return _ids(m for reply in replies if isinstance(reply, list) for m in reply)

    async def _stream_queued(self) -> list[str]:
        try:
            entries = await self._store.client.xrange(
                self._keys.runs, min="-", max="+", count=_MAX_STREAM_QUEUED
            )
        except Exception:  # no stream, or a key of another type: nothing queued there
            return []
        return _ids(
            fields.get(b"task_id") for _, fields in entries or () if isinstance(fields, dict)
        )

    async def _line_queued(self) -> list[str]:
        client = self._store.client
        queues: list[bytes] = []
        async for key in client.scan_iter(
            match=self._keys.coordination + "session-queue:*", count=1000, _type="list"
        ):
            queues.append(key)
            if len(queues) >= _MAX_QUEUE_KEYS:
                break
        async with client.pipeline(transaction=False) as pipe:
            for key in queues:
                pipe.lrange(key, 0, _MAX_PER_QUEUE - 1)
            replies = await pipe.execute(raise_on_error=False)
        return _ids(m for reply in replies if isinstance(reply, list) for m in reply)

    async def recent_ends(self) -> list[dict[str, Any]]:
        """The newest terminal transitions of the history stream, one per task, newest first."""
        try:
            entries = await self._store.client.xrevrange(
                self._keys.task_history, max="+", min="-", count=_HISTORY_SCAN
            )
        except Exception:  # no stream, or a key of another type
            return []
        ends: dict[str, dict[str, Any]] = {}
        for _, fields in entries or ():
            event = parse_transition(fields.get(b"event") if isinstance(fields, dict) else None)
            if event is None or event["task_id"] in ends:
                continue
            if event["state"] in TERMINAL_STATES:
                ends[event["task_id"]] = event
                if len(ends) >= _RECENT_ENDS:
                    break
        ids = list(ends)
        records = await self._store.get_many(ids)
        rows = []
        for task_id, record in zip(ids, records, strict=True):
            event = ends[task_id]
            # The record may be gone (its TTL); the event's detail has the end's fields.
            merged: dict[str, object] = {**event["detail"], "ended_at": event["at"]}
            merged.update(record or {})
            merged["state"] = event["state"]
            rows.append(row_of(task_id, merged))
        return rows


def parse_transition(raw: object) -> dict[str, Any] | None:
    """A task-events / task-history JSON transition, checked; None if it is garbage."""
    try:
        data = json.loads(as_text(raw)) if isinstance(raw, bytes | str) else None
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    task_id = _task_id(data.get("task_id"))
    state = data.get("state")
    if task_id is None or not isinstance(state, str) or state not in set(TaskState):
        return None
    detail = data.get("detail")
    return {
        "task_id": task_id,
        "state": state,
        "at": _number(data.get("at")),
        "detail": detail if isinstance(detail, dict) else {},
    }


def _ids(members: Iterable[object]) -> list[str]:
    return _unique(t for m in members if (t := _task_id(m)) is not None)


def _unique(ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(ids))
