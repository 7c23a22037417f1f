"""Sealing the sessions of runs the daemon ended: killed runs, and orphans it failed.

A SIGKILLed run leaves its ADK session with function calls nobody answered;
sealing appends what ADK's own cooperative abort would have written (see
:mod:`agent_runtime.sessions.sealing`). It is best effort and runs after the
kill and the record, so it never delays either. ADK is imported on the first
seal, not at daemon start, so an idle daemon does not carry ADK's memory; and
in a worker thread, because its second of imports on the event loop would hold
up every abort arriving meanwhile.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from types import ModuleType
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
        self._sealing: ModuleType | None = None

    async def _load(self) -> tuple[RedisSessionService, ModuleType]:
        if self._sessions is None or self._sealing is None:
            sealing = await anyio.to_thread.run_sync(
                importlib.import_module, "agent_runtime.sessions.sealing"
            )
            service = await anyio.to_thread.run_sync(
                importlib.import_module, "agent_runtime.sessions.service"
            )
            self._sessions = service.RedisSessionService(
                redis_client=self._store.client,
                key_prefix=self._store.key_prefix,
                session_ttl=self._ttl,
            )
            self._sealing = sealing
        return self._sessions, self._sealing

    async def seal_killed(
        self, task_id: str, state: str, reason: str, given: Mapping[str, str | None]
    ) -> None:
        """Answers a killed run's dangling tool calls, as ADK's abort would; never raises.

        ``given``: the session names the daemon gave the run (``adk_app``, ``user_id``,
        ``session_id``; None where it gave none). They win over the record's, which the
        run itself may have rewritten: the daemon's rights must not seal a session the
        run's own could not touch.

        Redis trouble is logged and skipped: the next turn still works (ADK drops
        unanswered calls), but the model then does not see the abort.
        """
        try:
            sessions, sealing = await self._load()
            with anyio.fail_after(_SEAL_TIMEOUT_S):
                record = await self._store.get(task_id) or {}
                record |= {k: v for k, v in given.items() if v}
                sealed = await sealing.seal_task_session(sessions, task_id, record, state, reason)
            log.info("task %s: session sealed with %d events", task_id, len(sealed))
        except Exception as exc:  # sealing is best effort; the record is already right
            log.warning("task %s: session not sealed (%s)", task_id, exc)

    async def seal_orphans(self, failures: Mapping[str, Mapping[str, object]]) -> None:
        """Seals the sessions of runs a reconcile or a takeover failed; never raises.

        Runs in the background once the daemon serves: with thousands of orphans,
        sealing must not hold back the start.
        """
        ids = list(failures)
        try:
            sessions, sealing = await self._load()
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
                    await sealing.seal_task_session(sessions, task_id, record, "failed", reason)
            except Exception as exc:
                log.warning("task %s: session not sealed at reconcile (%s)", task_id, exc)
