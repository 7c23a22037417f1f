"""Health: the node's Redis heartbeat, its one-line status, and systemd's watchdog.

The heartbeat key tells peers this node is alive; losing Redis is logged once
and shown in ``STATUS=``. Every heartbeat that lands is followed by
``after_beat`` (the node fences its runs then: a node that was cut off, or
frozen, without noticing it, learns that a peer ended its runs). The watchdog ping proves
only that the event loop turns: it goes on while Redis is away, because a
watchdog restart would kill every run of the node and lose the outbox, for an
outage that kills and timeouts ride out locally.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeGuard

import anyio
import redis.asyncio as aioredis
from anyio.abc import TaskStatus
from redis.exceptions import ResponseError

from agent_runtime.keys import KeySchema
from agent_runtime.redis_connection import (
    REDIS_ERRORS,
    describe_reply,
    outage_reply,
    wrong_type,
)

from ..errors import NodeIdInUse
from ..ops.sd_notify import SdNotifier, watchdog_interval
from ..process.identity import process_start_ticks

__all__ = ["Health"]

log = logging.getLogger("adk_supervisor")


class Health:
    """Owns the node's Redis health flag, its heartbeat and the sd_notify link."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: KeySchema,
        node_id: str,
        owner: dict[str, object],
        interval_s: float,
        notifier: SdNotifier,
        summary: Callable[[], str],
        running: Callable[[], int],
        after_beat: Callable[[], Awaitable[None]],
    ) -> None:
        self._client = client
        self._keys = keys
        self._node_id = node_id
        self._owner = owner
        self._registry_broken = False
        self._interval = interval_s
        self.notifier = notifier
        self._summary = summary
        self._running = running
        self._after_beat = after_beat
        self.redis_healthy = True

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """One heartbeat now, then the heartbeat and watchdog loops until cancelled."""
        await self.beat()
        async with anyio.create_task_group() as tg:
            interval = watchdog_interval()
            if interval is not None:
                tg.start_soon(self._watchdog, interval)
            task_status.started()
            while True:
                await anyio.sleep(self._interval)
                await self.beat()

    async def check_node_free(self) -> None:
        """Raises :class:`NodeIdInUse` if another live daemon heartbeats under this node id.

        A heartbeat names its owner. On this host and boot, the owner is live only
        if its process is (a crashed earlier life of this daemon does not count);
        another host's heartbeat counts until it expires, as nothing here can tell
        whether that daemon still runs.
        """
        key = self._keys.node_heartbeat(self._node_id)
        try:
            raw = await self._client.get(key)
        except ResponseError as exc:
            if not wrong_type(exc):
                raise
            log.error(
                "%s; not a daemon's heartbeat, so nobody to collide with", describe_reply(key, exc)
            )
            return
        if raw is None:
            return
        try:
            owner = json.loads(raw).get("owner")
        except (ValueError, RecursionError, AttributeError):
            owner = None
        if not _well_formed(owner):
            log.warning("%s is not a daemon's heartbeat (%r): ignored", key, raw[:80])
            return
        if _live_elsewhere(owner, self._owner):
            raise NodeIdInUse(
                f"node_id {self._node_id} is in use by another live daemon (pid "
                f"{owner.get('pid')} on {owner.get('host')}, state_dir {owner.get('state_dir')}); "
                "give this one its own node_id, or stop the other (or wait for its heartbeat "
                f"to expire: {3 * self._interval:g}s after it stopped)"
            )

    async def beat(self) -> None:
        """Writes the heartbeat once and updates the health flag and ``STATUS=``."""
        beat = json.dumps(
            {"pid": os.getpid(), "owner": self._owner, "at": time.time(), "runs": self._running()}
        )
        try:
            with anyio.fail_after(max(self._interval, 1.0)):
                async with self._client.pipeline(transaction=False) as pipe:
                    pipe.set(
                        self._keys.node_heartbeat(self._node_id),
                        beat,
                        px=int(self._interval * 3000),
                    )
                    # Back in the registry, should a peer have taken this node over.
                    pipe.sadd(self._keys.nodes, self._node_id)
                    replies = await pipe.execute(raise_on_error=False)
            # A failover's READONLY/MASTERDOWN, or NOREPLICAS, is an outage like a lost
            # connection, not a broken registry.
            if outage := next((reply for reply in replies if outage_reply(reply)), None):
                raise outage
            registered = replies[1]
            if isinstance(registered, ResponseError):
                self._registry_broken_once(registered)
        except REDIS_ERRORS as exc:
            if self.redis_healthy:
                log.warning("Redis lost (%s): kills go on locally, records wait", exc)
            self.redis_healthy = False
        else:
            if not self.redis_healthy:
                log.info("Redis back")
            self.redis_healthy = True
            await self._after_beat()
        self.notifier.status(self._summary())

    def _registry_broken_once(self, error: ResponseError) -> None:
        if not self._registry_broken:
            self._registry_broken = True
            log.error(
                "%s; until then peers cannot see this node",
                describe_reply(self._keys.nodes, error),
            )

    async def forget(self) -> None:
        """Deletes the heartbeat at a clean stop (peers need not wait for it to expire)."""
        try:
            with anyio.fail_after(2):
                await self._client.delete(self._keys.node_heartbeat(self._node_id))
        except REDIS_ERRORS:
            pass

    async def _watchdog(self, interval: float) -> None:
        # This task runs on the event loop, so a ping proves the loop turns.
        while True:
            self.notifier.watchdog()
            await anyio.sleep(interval)


def _well_formed(owner: object) -> TypeGuard[dict[str, object]]:
    """Whether a heartbeat's owner has the shape a daemon writes: anything else is garbage,
    and garbage must not keep this daemon from starting (``{}`` names no host, so another)."""
    return (
        isinstance(owner, dict)
        and isinstance(owner.get("host"), str)
        and isinstance(owner.get("boot_id"), str)
        and type(owner.get("pid")) is int
    )


def _live_elsewhere(theirs: dict[str, object], ours: dict[str, object]) -> bool:
    """Whether a heartbeat's owner may be another daemon that still runs."""
    if theirs.get("host") != ours.get("host"):
        return True
    if theirs.get("boot_id") != ours.get("boot_id"):
        return False  # this host rebooted since: that daemon is gone
    pid = theirs.get("pid")
    if not isinstance(pid, int) or pid == ours.get("pid"):
        return False
    ticks = process_start_ticks(pid)  # None for a gone PID, or one no process can have
    return ticks is not None and ticks == theirs.get("start_ticks")
