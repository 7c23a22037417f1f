"""Run credentials: the Redis user each run connects as, created and deleted by the daemon.

``run_credentials`` picks how runs reach Redis:

- ``per_run``: before the spawn, one ``ACL SETUSER`` creates the user
  ``<prefix>run:<node_id>:<task_id>`` with a random password and the rules of
  :mod:`supervisor.run_acl`; once the run's end is recorded, ``ACL DELUSER``
  deletes it (which also closes any connection still using it). Every
  heartbeat sweeps this node's users: leftovers (a crash, a Redis that was
  away at the delete) are deleted, and users of live runs that Redis lost (a
  restart, a failover to a replica: ACL users are neither persisted nor
  replicated) are created again.
- ``shared``: every run gets ``run_redis_url``, a user the operator made.
- ``daemon``: every run gets the daemon's own URL (what all runs had before).
- ``auto`` (the default): ``shared`` if ``run_redis_url`` is set, else
  ``per_run`` if the daemon's user may create users (tried at start), else
  ``daemon``, with a warning.

On a Redis Cluster there are no per-run users: ACL users live on each node, are not
replicated and not persisted, so a user would have to be created on every primary and
replica before each spawn, and a node away at that moment (failing over, restarting,
added later) would refuse the run at some later command. ``auto`` there is ``shared``
with ``run_redis_url`` (one confined user the operator puts in every node's ACL file),
else ``daemon`` with a warning; ``per_run`` refuses to start.

Nothing here is on the kill path: a kill never waits for a user to be deleted.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from typing import Any, cast

import anyio
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from agent_runtime.redis_connection import REDIS_ERRORS, as_text, is_cluster, redact_url

from ..errors import RunCredentialsUnavailable
from ..run_acl import (
    CredentialsMode,
    run_rules,
    run_user_name,
    run_user_prefix,
    with_credentials,
)

__all__ = ["RunCredentials"]

log = logging.getLogger("adk_supervisor")

# A delete that hangs must not hold the run's slot: the next sweep deletes it instead.
_RELEASE_TIMEOUT_S = 5.0


def _acl(target: aioredis.Redis | aioredis.client.Pipeline, *args: str) -> Any:
    # ACL SETUSER takes its rules as Redis spells them, which redis-py's acl_setuser does
    # not; its execute_command is untyped.
    return cast(Any, target).execute_command("ACL", *args)


class RunCredentials:
    """Issues each run its Redis URL and, with per-run users, owns those users' lives."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        configured: CredentialsMode,
        key_prefix: str,
        node_id: str,
        daemon_url: str,
        run_redis_url: str | None,
    ) -> None:
        self._client = client
        self._configured = configured
        self._key_prefix = key_prefix
        self._node_id = node_id
        self._daemon_url = daemon_url
        self._run_redis_url = run_redis_url
        self._user_prefix = run_user_prefix(key_prefix, node_id)
        self._optional = True
        self._issued: dict[str, list[str]] = {}
        """User name -> its rules, for every user Redis confirmed of a run not over yet."""
        self._pending: set[str] = set()
        """Users whose ``ACL SETUSER`` is on its way: no sweep may take them for leftovers."""
        self.mode: CredentialsMode = "daemon"
        """The mode in force once :meth:`prepare` ran: ``per_run``, ``shared`` or ``daemon``."""

    async def prepare(self) -> None:
        """Settles the mode (trying ``ACL SETUSER`` for ``per_run``/``auto``) and, with per-run
        users, deletes this node's leftovers. Redis errors other than a refusal propagate."""
        configured = self._configured
        if configured == "shared" or (configured == "auto" and self._run_redis_url):
            assert self._run_redis_url is not None  # the configuration requires it
            self.mode = "shared"
            log.info("run credentials: shared, every run connects as %s", self._shared_user())
            return
        if configured == "daemon":
            self.mode = "daemon"
            log.warning(
                'run credentials: daemon (run_credentials = "daemon"): runs connect with the '
                "daemon's own Redis credentials and can do whatever it can"
            )
            return
        if is_cluster(self._client):
            if configured == "per_run":
                raise RunCredentialsUnavailable(
                    'run_credentials = "per_run" cannot work on a Redis Cluster (ACL users '
                    "live on each node, unreplicated): create one confined user on every "
                    'node and set run_credentials = "shared" with run_redis_url '
                    "(check-config prints its rules)"
                )
            self.mode = "daemon"
            log.warning(
                "run credentials: daemon: on a Redis Cluster no per-run ACL users are made "
                "(they would be needed on every node, unreplicated), so runs connect with the "
                "daemon's own credentials and can do whatever it can; create a confined user "
                "on every node and set run_redis_url (check-config prints its rules)"
            )
            return
        try:
            await self._probe()
        except ResponseError as exc:
            if configured == "per_run":
                raise RunCredentialsUnavailable(
                    f'run_credentials = "per_run", but the daemon\'s Redis user cannot create '
                    f"ACL users ({exc}): grant it +acl (and +@admin's ACL SETUSER, DELUSER, "
                    'USERS), or set run_credentials = "shared" with run_redis_url'
                ) from None
            self.mode = "daemon"
            log.warning(
                "run credentials: daemon: the daemon's Redis user cannot create ACL users "
                "(%s), so runs connect with the daemon's own credentials and can do whatever "
                "it can; grant it ACL SETUSER/DELUSER/USERS, or set run_redis_url to a "
                "confined user (README, security)",
                exc,
            )
            return
        self.mode = "per_run"
        await self.sweep()
        log.info("run credentials: per_run, an ACL user per run (%s<task_id>)", self._user_prefix)

    async def _probe(self) -> None:
        """Creates and deletes a disabled user with a run's rules: proves both the right
        to manage users and that this server accepts the rules."""
        name = self._user_prefix + ".probe"  # no task id starts with "."
        rules = run_rules(self._key_prefix, "probe", None, secrets.token_hex(16))
        try:
            await _acl(self._client, "SETUSER", name, *rules, "off")
        except ResponseError as exc:
            if "unknown command" not in str(exc).lower():
                raise
            # Before Redis 7.2 the optional commands do not exist.
            self._optional = False
            rules = run_rules(
                self._key_prefix, "probe", None, secrets.token_hex(16), optional=False
            )
            await _acl(self._client, "SETUSER", name, *rules, "off")
        await _acl(self._client, "DELUSER", name)

    def _shared_user(self) -> str:
        return redact_url(self._run_redis_url or "")

    async def issue(self, task_id: str, session_app: str | None) -> str:
        """The URL the run connects with; with per-run users, creates its user first (one
        round trip). Raises what Redis raises: the run must not start without it."""
        if self.mode == "shared":
            assert self._run_redis_url is not None
            return self._run_redis_url
        if self.mode == "daemon":
            return self._daemon_url
        name = run_user_name(self._key_prefix, self._node_id, task_id)
        password = secrets.token_hex(32)
        rules = run_rules(self._key_prefix, task_id, session_app, password, optional=self._optional)
        self._pending.add(name)
        try:
            await _acl(self._client, "SETUSER", name, *rules)
        finally:
            # Not created (or not known to be): no run uses it, so the sweep deletes it.
            self._pending.discard(name)
        self._issued[name] = rules
        return with_credentials(self._daemon_url, name, password)

    async def release(self, task_id: str) -> None:
        """Deletes the run's user (closing its connections); never raises. What fails here,
        the next sweep deletes."""
        name = run_user_name(self._key_prefix, self._node_id, task_id)
        if self._issued.pop(name, None) is None:
            return
        with anyio.move_on_after(_RELEASE_TIMEOUT_S), contextlib.suppress(*REDIS_ERRORS):
            await _acl(self._client, "DELUSER", name)
            return
        log.info("task %s: its Redis user %s is left for the next sweep", task_id, name)

    async def sweep(self) -> None:
        """Deletes this node's users of no live run; creates again those of live runs that
        Redis lost. Never raises (it runs after every heartbeat)."""
        if self.mode != "per_run":
            return
        # Only users Redis confirmed before it listed them can be missing for a reason.
        confirmed = set(self._issued)
        try:
            users = {as_text(u) for u in await _acl(self._client, "USERS")}
            stale = sorted(
                u
                for u in users
                if u.startswith(self._user_prefix)
                and u not in self._issued
                and u not in self._pending
            )
            # Read after the reply, so a run released meanwhile is not re-created (unless its
            # DELUSER overtakes the SETUSER below: then the next sweep deletes it).
            missing = {
                u: self._issued[u] for u in confirmed if u in self._issued and u not in users
            }
            if not stale and not missing:
                return
            async with self._client.pipeline(transaction=False) as pipe:
                if stale:
                    _acl(pipe, "DELUSER", *stale)
                for name, rules in missing.items():
                    _acl(pipe, "SETUSER", name, *rules)
                await pipe.execute(raise_on_error=False)
        except REDIS_ERRORS as exc:
            log.warning("run credentials: sweep of this node's Redis users failed: %s", exc)
            return
        if stale:
            log.info("run credentials: deleted %d leftover Redis users of runs", len(stale))
        if missing:
            log.warning(
                "run credentials: Redis had lost the users of %d live runs (a restart or "
                "failover): created again",
                len(missing),
            )

    @property
    def issued(self) -> int:
        """How many per-run users exist for runs not over yet."""
        return len(self._issued)
