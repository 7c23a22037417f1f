"""What every route shares: the apps, the Redis-backed client and sessions, starting a run.

A run the gateway starts is an ordinary supervised run: queued on the runs
stream (``submit_task``, the client's own path, so ``max_input_bytes`` is the
daemon's), run by whichever daemon takes it, read back from its events stream.
Apps are the ``[apps]`` names and nothing else: an HTTP caller never names an
import path. A run's sessions live under its ``[apps]`` name, as the daemon
runs it (``session_app`` in ``daemon/launch.py``), so the sessions the gateway
lists and creates are the ones its runs read and write.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from fastapi import HTTPException
from google.adk.sessions.base_session_service import GetSessionConfig
from google.adk.sessions.session import Session

from agent_runtime.run_events import RunEntry
from agent_runtime.run_input import InputTooLarge, RunInput
from agent_runtime.sessions.service import RedisSessionService
from agent_runtime.task_store import TaskStore

from ..client import SupervisorClient, submit_task
from ._metrics import GatewayMetrics
from ._models import OnDisconnect, RunAgentRequest

__all__ = ["TASK_HEADER", "Gateway"]

TASK_HEADER = "X-ADK-Task-Id"


@dataclass
class Gateway:
    """The gateway's settings and services, handed to every router."""

    apps: Sequence[str]
    client: SupervisorClient
    sessions: RedisSessionService
    max_input_bytes: int
    keepalive_s: float
    on_disconnect: OnDisconnect
    metrics: GatewayMetrics

    @property
    def store(self) -> TaskStore:
        """The task store (records, abort marks)."""
        return self.client.store

    def entries(
        self, task_id: str, *, after: str = "0-0", follow: bool = True
    ) -> AsyncGenerator[RunEntry, None]:
        """The run's stream entries after ``after`` (the client's reader, closable)."""
        return cast(
            AsyncGenerator[RunEntry, None],
            self.client.events(task_id, after=after, follow=follow),
        )

    def app_name(self, name: str | None) -> str:
        """``name`` if it is an app of ``[apps]``; else 400 (none given) or 404."""
        if not name:
            raise HTTPException(400, "appName is required")
        if name not in self.apps:
            shown = name if len(name) <= 200 else name[:200] + "..."
            raise HTTPException(
                404, f"App not found: {shown!r}; this gateway serves {sorted(self.apps)}"
            )
        return name

    async def session(
        self, app: str, user_id: str, session_id: str, *, events: bool = True
    ) -> Session:
        """The session, or 404 as ADK answers."""
        try:
            session = await self.sessions.get_session(
                app_name=app,
                user_id=user_id,
                session_id=session_id,
                config=None if events else GetSessionConfig(num_recent_events=0),
            )
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        if session is None:
            raise HTTPException(404, f"Session not found: {session_id}")
        return session

    async def start(self, app: str, req: RunAgentRequest, *, streaming: bool) -> str:
        """Queues a supervised run of ``req``; returns its task id (413 if its input is too large)."""
        run_config: dict[str, Any] = {}
        if streaming:
            run_config["streaming"] = "sse"
        if req.custom_metadata is not None:
            run_config["custom_metadata"] = req.custom_metadata
        run_input = RunInput(
            content=None
            if req.new_message is None
            else req.new_message.model_dump(mode="json", by_alias=True, exclude_none=True),
            state_delta=req.state_delta,
            invocation_id=req.invocation_id,
            run_config=run_config or None,
        )
        try:
            task_id = await submit_task(
                self.store,
                app,
                run_input,
                user_id=req.user_id,
                session_id=req.session_id,
                task_id=uuid.uuid4().hex,
                max_input_bytes=self.max_input_bytes,
            )
        except InputTooLarge as exc:
            raise HTTPException(413, str(exc)) from None
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        self.metrics.run_started(app)
        return task_id

    async def abort(self, task_id: str, reason: str) -> int:
        """Aborts a run (its whole tree); returns how many daemons heard it live."""
        listeners = await self.client.abort(task_id, reason)
        self.metrics.stop_sent(listeners)
        return listeners
