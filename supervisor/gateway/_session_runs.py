"""Which runs of a session are live, for ``POST .../sessions/{id}:cancel``.

Nothing else indexes runs by session, so each gateway adds the task id of every
run it starts to the set ``<prefix>session-runs:<app>:<user>:<session>`` before
it submits the run, and removes it when it sees the run's end. The set is only
a hint: a gateway that died leaves members behind, so ``live`` keeps a member
only while its task record names this session and is not terminal (and
removes the rest); a member whose record does not exist yet (the run is being
submitted) is kept, and an abort of it leaves the durable mark that stops it
from starting. The set expires a day after its last run was added.
"""

from __future__ import annotations

from agent_runtime.keys import KeySchema
from agent_runtime.redis_connection import as_text
from agent_runtime.task_store import TERMINAL_STATES, InvalidTaskIdError, TaskStore, check_task_id

__all__ = ["SessionRuns"]

_TTL_S = 24 * 3600
_MAX_MEMBERS = 1000


class SessionRuns:
    """The live-runs index of sessions (see the module docstring)."""

    def __init__(self, store: TaskStore) -> None:
        self._store = store
        self._redis = store.client
        self._keys: KeySchema = store.keys

    async def add(self, app: str, user_id: str, session_id: str, task_id: str) -> None:
        """Records ``task_id`` as a live run of the session (before it is submitted)."""
        key = self._keys.session_runs(app, user_id, session_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.sadd(key, task_id)
            pipe.expire(key, _TTL_S)
            await pipe.execute()

    async def remove(self, app: str, user_id: str, session_id: str, task_id: str) -> None:
        """Forgets ``task_id`` (it ended, or was never submitted)."""
        await self._redis.srem(self._keys.session_runs(app, user_id, session_id), task_id)

    async def live(self, app: str, user_id: str, session_id: str) -> list[str]:
        """The session's runs that may still be live, oldest record first."""
        key = self._keys.session_runs(app, user_id, session_id)
        raw = await self._redis.srandmember(key, _MAX_MEMBERS)
        members = [as_text(m) for m in raw or () if isinstance(m, bytes | str)]
        valid = []
        stale: list[str] = []
        for task_id in members:
            try:
                valid.append(check_task_id(task_id))
            except InvalidTaskIdError:
                stale.append(task_id)
        live: list[tuple[float, str]] = []
        for task_id, record in zip(valid, await self._store.get_many(valid), strict=True):
            if record is None:
                live.append((float("inf"), task_id))
            elif record.get("state") in TERMINAL_STATES or (
                record.get("app"),
                record.get("user_id"),
                record.get("session_id"),
            ) != (app, user_id, session_id):
                stale.append(task_id)
            else:
                try:
                    created = float(record.get("created_at", "inf"))
                except ValueError:
                    created = float("inf")
                live.append((created, task_id))
        if stale:
            await self._redis.srem(key, *stale)
        return [task_id for _, task_id in sorted(live)]
