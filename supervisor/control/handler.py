"""The status socket's commands: ``ping``, ``status``, ``get``, ``submit``, ``abort``, ``drain``.

Every mutating request is logged with the peer's uid and pid (``SO_PEERCRED``).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Protocol

from agent_runtime.redis_url import redact_url
from agent_runtime.run_input import RunInput
from agent_runtime.task_store import IF_BUSY_CHOICES, TaskStore

from ..client import submit_task
from ..errors import RequestError, SessionBusyError, TaskNotFoundError
from .protocol import COMMANDS
from .server import Peer

__all__ = ["ControlHandler", "ControlledNode"]

log = logging.getLogger("adk_supervisor")


class ControlledNode(Protocol):
    """What the handler needs of the daemon it answers for."""

    node_id: str
    pid: int
    redis_url: str
    store: TaskStore

    @property
    def max_input_bytes(self) -> int:
        """The largest run input a submission may carry."""

    @property
    def draining(self) -> bool:
        """Whether the node stopped taking runs."""

    def check_app(self, app: str) -> None:
        """Raises ValueError naming the choices if ``app`` cannot run here."""

    def drain(self) -> int:
        """Stops taking runs; returns how many run on."""

    async def status_snapshot(self) -> dict[str, Any]:
        """What ``status`` answers."""


def _text(request: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = request.get(name)
    if value is None or value == "":
        if required:
            raise RequestError(f'{request["cmd"]}: missing field "{name}" (a non-empty string)')
        return None
    if not isinstance(value, str):
        raise RequestError(f'{request["cmd"]}: field "{name}" must be a string')
    return value


def _seconds(request: dict[str, Any], name: str) -> float | None:
    value = request.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(f'{request["cmd"]}: field "{name}" must be a number of seconds')
    if value <= 0:
        raise RequestError(f'{request["cmd"]}: field "{name}" must be positive')
    return float(value)


class ControlHandler:
    """Answers status socket requests for one daemon."""

    def __init__(self, node: ControlledNode) -> None:
        self.node = node

    async def __call__(self, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """Serves one request; raises :class:`RequestError` for bad input."""
        cmd = request["cmd"]
        sup = self.node
        if cmd == "ping":
            return {
                "node_id": sup.node_id,
                "pid": sup.pid,
                # The CLI reads Redis directly for `wait`: tell it where Redis is. The
                # password only goes to the daemon's own user (or root), not to every
                # member of socket_group.
                "redis_url": (
                    sup.redis_url if peer.uid in (0, os.getuid()) else redact_url(sup.redis_url)
                ),
                "key_prefix": sup.store.key_prefix,
            }
        if cmd == "status":
            return await sup.status_snapshot()
        if cmd == "get":
            task_id = _text(request, "task_id")
            assert task_id is not None
            record = await sup.store.get(task_id)
            if record is None:
                raise TaskNotFoundError(f"no task {task_id!r}")
            return {"task": record}
        if cmd == "submit":
            return await self._submit(request, peer)
        if cmd == "abort":
            task_id = _text(request, "task_id")
            assert task_id is not None
            reason = _text(request, "reason", required=False) or ""
            log.info(
                "abort %s requested over the status socket by uid=%d pid=%d: %s",
                task_id,
                peer.uid,
                peer.pid,
                reason or "(no reason)",
            )
            heard = await sup.store.request_abort(task_id, reason)
            return {"task_id": task_id, "abort_published_to": heard}
        if cmd == "drain":
            log.info("drain requested over the status socket by uid=%d pid=%d", peer.uid, peer.pid)
            return {"draining": True, "running": sup.drain()}
        raise RequestError(f"unknown command {cmd!r}; known commands: {', '.join(COMMANDS)}")

    async def _submit(self, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        sup = self.node
        app = _text(request, "app")
        structured = {k: request.get(k) for k in ("content", "state_delta", "run_config")}
        invocation_id = _text(request, "invocation_id", required=False)
        has_input = structured["content"] is not None or invocation_id is not None
        message = _text(request, "message", required=not has_input) or ""
        user_id = _text(request, "user_id")
        assert app is not None and user_id is not None
        for name, value in structured.items():
            if value is not None and not isinstance(value, dict):
                raise RequestError(f'submit: field "{name}" must be a JSON object')
        run_input = RunInput(
            message=message,
            content=structured["content"],
            state_delta=structured["state_delta"],
            invocation_id=invocation_id,
            run_config=structured["run_config"],
        )
        session_id = _text(request, "session_id", required=False)
        task_id = _text(request, "task_id", required=False)
        timeout_s = _seconds(request, "timeout_s")
        traceparent = _text(request, "traceparent", required=False)
        if_busy = _text(request, "if_busy", required=False) or "wait"
        if if_busy not in IF_BUSY_CHOICES:
            raise RequestError(
                f'submit: field "if_busy" must be one of {", ".join(IF_BUSY_CHOICES)}'
            )
        try:
            sup.check_app(app)
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        try:
            task_id = await submit_task(
                sup.store,
                app,
                run_input,
                user_id=user_id,
                session_id=session_id,
                task_id=task_id,
                timeout_s=timeout_s,
                max_input_bytes=sup.max_input_bytes,
                traceparent=traceparent,
                if_busy="refuse" if if_busy == "refuse" else "wait",
            )
        except SessionBusyError:
            raise
        except ValueError as exc:  # bad input, an invalid task id, or one that exists already
            raise RequestError(str(exc)) from None
        log.info(
            "task %s submitted over the status socket by uid=%d pid=%d: app=%s",
            task_id,
            peer.uid,
            peer.pid,
            app,
        )
        reply: dict[str, Any] = {"task_id": task_id}
        if sup.draining:
            reply["warning"] = (
                "this node is draining: another node (or this one after a restart) will run it"
            )
        return reply
