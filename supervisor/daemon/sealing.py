"""Sealing the sessions of runs the daemon ended: killed runs, and orphans it failed.

A SIGKILLed run leaves its ADK session with function calls nobody answered;
sealing appends what ADK's own cooperative abort would have written (see
:mod:`agent_runtime.sessions.sealing`). It is best effort and runs after the
kill and the record, so it never delays either. ADK is imported on the first
seal, not at daemon start: an idle daemon does not carry ADK's memory.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import anyio

from agent_runtime.task_store import TaskStore

if TYPE_CHECKING:
    from agent_runtime.sessions.service import RedisSessionService

__all__ = ["Sealer"]

log = logging.getLogger("adk_supervisor")

_SEAL_TIMEOUT_S = 10.0


class Sealer:
    """Seals sessions through the daemon's own Redis client."""

    def __init__(self, store: TaskStore, session_ttl_s: float | None) -> None:
        self._store = store
        self._ttl = session_ttl_s
        self._sessions: RedisSessionService | None = None

    def _service(self) -> RedisSessionService:
        if self._sessions is None:
            from agent_runtime.sessions.service import RedisSessionService

            self._sessions = RedisSessionService(
                redis_client=self._store.client,
                key_prefix=self._store.key_prefix,
                session_ttl=self._ttl,
            )
        return self._sessions

    async def seal_killed(self, task_id: str, state: str, reason: str) -> None:
        """Answers a killed run's dangling tool calls, as ADK's abort would; never raises.

        Redis trouble is logged and skipped: the next turn still works (ADK drops
        unanswered calls), but the model then does not see the abort.
        """
        from agent_runtime.sessions.sealing import seal_task_session

        try:
            with anyio.fail_after(_SEAL_TIMEOUT_S):
                record = await self._store.get(task_id) or {}
                sealed = await seal_task_session(self._service(), task_id, record, state, reason)
            log.info("task %s: session sealed with %d events", task_id, len(sealed))
        except Exception as exc:  # sealing is best effort; the record is already right
            log.warning("task %s: session not sealed (%s)", task_id, exc)

    async def seal_orphans(self, failures: Mapping[str, Mapping[str, object]]) -> None:
        """Seals the sessions of runs a reconcile or a takeover failed; never raises.

        Runs in the background once the daemon serves: with thousands of orphans,
        sealing must not hold back the start.
        """
        from agent_runtime.sessions.sealing import seal_task_session

        ids = list(failures)
        try:
            records = await self._store.get_many(ids)
        except Exception as exc:
            log.warning("reconcile: sessions of orphaned runs not sealed (%s)", exc)
            return
        for task_id, record in zip(ids, records, strict=True):
            reason = str(failures[task_id]["reason"])
            # Only the records this node moved (another writer may have ended one first).
            if record is None or record.get("state") != "failed" or record.get("reason") != reason:
                continue
            try:
                with anyio.fail_after(_SEAL_TIMEOUT_S):
                    await seal_task_session(self._service(), task_id, record, "failed", reason)
            except Exception as exc:
                log.warning("task %s: session not sealed at reconcile (%s)", task_id, exc)
