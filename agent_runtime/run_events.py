"""A run's output: one Redis stream per run, ``<prefix>{<prefix>}events:<task_id>``.

Each entry has a field ``type`` and a field ``data`` (JSON):

- ``event``: an ADK ``Event`` the run yielded, in the camelCase shape ADK's
  api_server sends (``model_dump_json(by_alias=True, exclude_none=True)``);
  with ``streaming`` set, partial text events too (coalesced, see the child);
- ``state``: a lifecycle step, the same JSON as a ``task-events`` message
  (``task_id``, ``state``, ``at``, ``detail``): ``running``, ``killing`` (the
  kill was sent, with its reason) and the terminal state, always the stream's
  last entry, written by the daemon (so it exists after a SIGKILL too).

Readers replay from any entry id and follow with ``XREAD BLOCK`` from the last
id they saw, never from ``$``: a reader that joins late or reconnects sees
every entry exactly once, in order, and stops after the terminal entry. The
stream is capped (``MAXLEN ~``) and expires a while after its terminal entry.
No ADK import here: the daemon, the client and the gateway read it as JSON.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import redis.asyncio as aioredis

from .keys import KeySchema
from .redis_connection import as_text

__all__ = [
    "DEFAULT_EVENTS_MAXLEN",
    "DEFAULT_EVENTS_TTL_S",
    "TERMINAL",
    "RunEntry",
    "StaleEpochError",
    "append_entry",
    "follow",
]

DEFAULT_EVENTS_MAXLEN: Final = 10_000
"""Entries a run's stream keeps at most (approximately): its newest."""
DEFAULT_EVENTS_TTL_S: Final = 24 * 3600
"""How long a run's stream lives after its terminal entry."""
TERMINAL: Final = frozenset({"completed", "failed", "timed_out", "aborted"})

_BLOCK_MS = 5000


@dataclass(frozen=True, slots=True)
class RunEntry:
    """One entry of a run's stream: its id, ``event`` or ``state``, and its JSON data."""

    id: str
    type: Literal["event", "state"]
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        """Whether this is the run's last entry (a terminal state)."""
        return self.type == "state" and self.data.get("state") in TERMINAL


# KEYS: the run's events stream. ARGV: epoch key, epoch, MAXLEN, type, data. The entry is
# added only while the run is still at that epoch (absent reads as 0); the epoch key is an
# argument, since the run's Redis user may only read it (see agent_runtime/durable.py).
_FENCED_XADD: Final = r"""
local current = redis.pcall('GET', ARGV[1])
if type(current) ~= 'string' then current = '0' end
if current ~= ARGV[2] then
  return {'FENCED', current}
end
return {'OK', redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*',
                         'type', ARGV[4], 'data', ARGV[5])}
"""


class StaleEpochError(RuntimeError):
    """The run was resumed elsewhere since this process started: its writes are refused."""


async def append_entry(
    client: aioredis.Redis,
    keys: KeySchema,
    task_id: str,
    kind: Literal["event", "state"],
    data: str,
    *,
    maxlen: int = DEFAULT_EVENTS_MAXLEN,
    epoch: int | None = None,
) -> str:
    """XADDs one entry (``data`` already JSON); returns its id. With ``epoch`` (a durable
    run's process), only while the run is still at that epoch: else :class:`StaleEpochError`."""
    if epoch is not None:
        # EVALSHA (a run's Redis user may not EVAL): redis-py loads the script once.
        fenced = client.register_script(_FENCED_XADD)
        status, value = await fenced(
            keys=[keys.run_events(task_id)],
            args=[keys.task_epoch(task_id), str(epoch), str(maxlen), kind, data],
        )
        if as_text(status) == "FENCED":
            raise StaleEpochError(
                f"event of {task_id} refused: the run was resumed elsewhere (epoch "
                f"{as_text(value)[:20]}, this process has {epoch})"
            )
        return as_text(value)
    entry_id = await client.xadd(
        keys.run_events(task_id),
        {"type": kind, "data": data},
        maxlen=maxlen,
        approximate=True,
    )
    return as_text(entry_id)


def _parse(entry_id: bytes | str, fields: dict[Any, Any]) -> RunEntry | None:
    decoded = {as_text(k): as_text(v) for k, v in fields.items()}
    kind = decoded.get("type")
    if kind not in ("event", "state"):
        return None
    try:
        data = json.loads(decoded.get("data", ""))
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    return RunEntry(as_text(entry_id), kind, data)  # type: ignore[arg-type]


async def follow(
    client: aioredis.Redis,
    keys: KeySchema,
    task_id: str,
    *,
    after: str = "0-0",
    live: bool = True,
    block_ms: int = _BLOCK_MS,
    ended: Callable[[], Awaitable[bool]] | None = None,
    confirm: Callable[[RunEntry], Awaitable[bool]] | None = None,
) -> AsyncIterator[RunEntry]:
    """The run's entries after ``after``, in order; with ``live``, waits for new ones
    until the terminal entry. ``ended`` is asked whenever the stream stays quiet for
    ``block_ms``: once it says the run is over (its stream expired or was trimmed
    before the terminal entry), what is left is read and the iteration ends.
    ``confirm`` is asked about each terminal entry: the run itself may append
    to its stream, so a forged end (one the task record does not show) is
    skipped. Malformed entries (anyone can XADD) are skipped too."""
    key = keys.run_events(task_id)
    last = after
    while True:
        reply: Any = await client.xread({key: last}, count=500, block=block_ms if live else None)
        if not reply:
            if not live:
                return
            if ended is not None and await ended():
                live = False  # one more look: the terminal entry may have landed meanwhile
            continue
        for entry_id, fields in reply[0][1]:
            last = as_text(entry_id)
            entry = _parse(entry_id, fields)
            if entry is None or (entry.terminal and confirm and not await confirm(entry)):
                continue
            yield entry
            if entry.terminal:
                return
