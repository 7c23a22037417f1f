"""``RedisSessionService``: an ADK ``BaseSessionService`` on Redis with O(1) appends.

Layout (see :mod:`agent_runtime.keys`): a session is a small meta hash, a state hash,
an event hash keyed by sequence number and a sorted set of event timestamps;
the app keeps ``app:`` state, per-user ``user:`` state and session indexes. An
append is one EVALSHA that checks for a stale writer, stores the event, applies
the state deltas, updates the indexes and slides the TTL, so its cost does not
depend on how long the session already is. A listing walks its index a page
per script call, so it never holds Redis for longer than one page. Every event
carries a SHA-256 link chained over the previous one, and the session's head moves
in the append's own script (see :mod:`agent_runtime.session_integrity`);
:meth:`RedisSessionService.verify` checks the chain.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Final, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from google.adk.errors._stale_session_error import StaleSessionError
from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.errors.session_not_found_error import SessionNotFoundError
from google.adk.events.event import Event
from google.adk.sessions import _session_util
from google.adk.sessions.base_session_service import (
    BaseSessionService,
    GetSessionConfig,
    ListSessionsResponse,
)
from google.adk.sessions.session import Session
from google.adk.sessions.state import State
from pydantic import TypeAdapter
from typing_extensions import override

from .._replica_wait import run_confirmed
from ..keys import AppKeys, SessionKeys, decode_part
from ..redis_connection import (
    ReplicaWait,
    as_text,
    connect,
    is_cluster,
    redact_url,
    replica_wait_of,
    translate_redis_errors,
)
from ..session_integrity import ChainReport, genesis, link, verify_chain
from . import _scripts as scripts

__all__ = ["FencedWriteError", "RedisSessionService"]


class FencedWriteError(RuntimeError):
    """A write of a durable run's process refused because the run was resumed since (its
    epoch moved on): this process must stop, another one carries the run now."""


logger = logging.getLogger(__name__)

_STALE_MESSAGE: Final = (
    "The session has been modified in storage since it was loaded. "
    "Please reload the session before appending more events."
)
_EVENTS = TypeAdapter(list[Event])
# Query parameters of a session service URI that configure this service and are
# not passed on to redis-py (which rejects unknown ones).
_URI_OPTIONS: Final = ("key_prefix", "session_ttl")
# Index entries one list script call visits: about 3 ms of Redis time (a session
# costs ~12 us to read), so a listing of any size delays other clients' commands
# (aborts, task transitions) by no more than that, and an index of up to this
# many sessions is listed in one round trip.
DEFAULT_LIST_PAGE_SIZE: Final = 250
# Sessions whose chain head (at a revision) a service remembers, so an append links to
# it without reading it first; one not remembered costs one HGET before its append.
_HEADS_KEPT: Final = 4096


def _pairs(flat: Sequence[bytes | str]) -> dict[str, Any]:
    """A Redis ``HGETALL`` reply (flat field/value list) of JSON values, decoded."""
    return {as_text(flat[i]): json.loads(flat[i + 1]) for i in range(0, len(flat), 2)}


def _flatten(mapping: dict[str, Any]) -> list[str]:
    """``[count, field, json, field, json, ...]`` for the scripts' ``hset_pairs``."""
    out = [str(len(mapping))]
    for key, value in mapping.items():
        out.append(key)
        out.append(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
    return out


def _merge(session_state: dict[str, Any], app: dict[str, Any], user: dict[str, Any]) -> None:
    for key, value in app.items():
        session_state[State.APP_PREFIX + key] = value
    for key, value in user.items():
        session_state[State.USER_PREFIX + key] = value


def _split_uri(uri: str) -> tuple[str, dict[str, str]]:
    """Separates this service's own query options from the Redis URL."""
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True)
    own = {k: v for k, v in query if k in _URI_OPTIONS}
    rest = [(k, v) for k, v in query if k not in _URI_OPTIONS]
    return urlunsplit(parts._replace(query=urlencode(rest))), own


class RedisSessionService(BaseSessionService):
    """ADK session service backed by Redis (standalone, Sentinel-managed or Cluster).

    Args:
      redis_url: ``redis://[user:password@]host:port/db``, ``rediss://...`` (TLS),
        ``unix:///path/redis.sock[?db=N]``, ``redis+sentinel://...`` or
        ``redis+cluster://host:port[,host:port...]``.
      key_prefix: prefix of every key, so several apps or tenants can share one Redis.
      session_ttl: seconds a session lives after its last write (sliding);
        ``None`` keeps sessions until deleted. ``app:`` and ``user:`` state never
        expire with a session.
      redis_client: an existing ``redis.asyncio`` client to use instead of
        ``redis_url`` (for Sentinel or Cluster, or shared connection pools); the
        caller keeps ownership and closes it.
      uri: the form ADK's CLI service registry uses
        (``adk web --session_service_uri redis://...``); its query may carry
        ``key_prefix`` and ``session_ttl`` (``0`` or ``none`` = never expire).
        Other keyword arguments the registry passes (``agents_dir``) are ignored.
      list_page_size: index entries ``list_sessions`` reads per Redis script call;
        bounds how long one listing step holds Redis.
      fence: ``(key, epoch)``: every append is refused with :class:`FencedWriteError`
        unless the string ``key`` still holds ``epoch`` (absent reads as 0), checked in
        the append's own script (a supervised durable run's epoch). On Redis Cluster the
        key lies in another slot: it is read by a command of its own right before each
        append, so a resume landing between the two lets that one append through.
      wait_replicas: an append is acknowledged only once ``WAIT`` saw it on this many
        replicas within ``wait_timeout_ms``; otherwise it raises
        :class:`RedisUnavailableError` (it may be stored: a retry is recognised) and the
        client's connections are reopened, so a writer cut off by a failover asks the
        sentinels for the new master. On a Redis Cluster the ``WAIT`` goes to the primary
        of the session's slot, on the connection that took the append. A Sentinel or
        Cluster URL's ``?wait_replicas=N&wait_timeout_ms=T`` sets it (also when that
        client is passed as ``redis_client``, if :func:`~agent_runtime.redis_connection.connect`
        made it).
    """

    def __init__(
        self,
        redis_url: str | None = None,
        key_prefix: str = "adk:",
        session_ttl: float | None = 3600,
        *,
        redis_client: aioredis.Redis | None = None,
        uri: str | None = None,
        list_page_size: int = DEFAULT_LIST_PAGE_SIZE,
        fence: tuple[str, int] | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
        **registry_kwargs: Any,
    ) -> None:
        if registry_kwargs and uri is None:
            raise TypeError(
                f"unexpected keyword arguments {sorted(registry_kwargs)}; "
                "only the uri= form (ADK's service registry) accepts extra arguments"
            )
        if uri is not None:
            if redis_url is not None:
                raise TypeError("pass either redis_url or uri, not both")
            redis_url, options = _split_uri(uri)
            key_prefix = options.get("key_prefix", key_prefix)
            if "session_ttl" in options:
                raw = options["session_ttl"].strip().lower()
                session_ttl = None if raw in ("", "0", "none") else float(raw)
        if session_ttl is not None and (
            isinstance(session_ttl, bool)
            or not isinstance(session_ttl, int | float)
            or session_ttl <= 0
        ):
            raise ValueError(
                f"session_ttl must be a positive number of seconds or None, got {session_ttl!r}"
            )
        if isinstance(list_page_size, bool) or not isinstance(list_page_size, int):
            raise TypeError(f"list_page_size must be an int, got {list_page_size!r}")
        if list_page_size < 1:
            raise ValueError(f"list_page_size must be at least 1, got {list_page_size}")
        self.list_page_size = list_page_size
        self.fence = fence
        if not isinstance(key_prefix, str):
            raise TypeError(f"key_prefix must be a string, got {type(key_prefix).__name__}")
        self.key_prefix = key_prefix
        self.session_ttl = session_ttl
        self._ttl_ms = "0" if session_ttl is None else str(max(1, int(session_ttl * 1000)))
        if redis_client is not None:
            self._client = redis_client
            self._owns_client = False
            self._where = "the provided client"
        else:
            url = redis_url or "redis://localhost:6379"
            self._client = connect(url)
            self._owns_client = True
            self._where = redact_url(url)
        # A Sentinel or Cluster URL's ?wait_replicas= (kept with the client by connect()).
        from_url = replica_wait_of(self._client)
        if from_url is not None and not wait_replicas:
            wait_replicas, wait_timeout_ms = from_url.replicas, from_url.timeout_ms
        if wait_replicas < 0 or wait_timeout_ms < 1:
            raise ValueError("wait_replicas must be >= 0 and wait_timeout_ms >= 1")
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._create = self._client.register_script(scripts.CREATE)
        self._append = self._client.register_script(scripts.APPEND)
        self._get = self._client.register_script(scripts.GET)
        self._list_page = self._client.register_script(scripts.LIST_PAGE)
        # One lock per session serialises this process's appends to it, as
        # DatabaseSessionService does: tasks sharing one Session object (parallel
        # agents) must not fail each other's revision check.
        self._append_locks: weakref.WeakValueDictionary[tuple[str, str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        # (app, user, session) -> (revision, chain head at that revision; '' = unchained).
        self._heads: OrderedDict[tuple[str, str, str], tuple[str, str]] = OrderedDict()

    def _remember_head(self, ids: tuple[str, str, str], rev: str, head: str) -> None:
        self._heads[ids] = (rev, head)
        self._heads.move_to_end(ids)
        if len(self._heads) > _HEADS_KEPT:
            self._heads.popitem(last=False)

    async def _head(self, ids: tuple[str, str, str], meta_key: str, rev: str | None) -> str:
        """The chain head the caller's copy (at revision ``rev``) ends at: remembered, else
        the stored one (if the copy is stale, the append's revision check refuses it)."""
        known = self._heads.get(ids)
        if known is not None and rev and known[0] == rev:
            return known[1]
        return as_text(await self._client.hget(meta_key, "head") or b"")

    async def verify(self, app_name: str, user_id: str, session_id: str) -> ChainReport:
        """Recomputes the session's integrity chain and says whether it holds, or what is
        wrong (an event missing or altered, by its index; a head that names another
        history: truncated). A session from before chains is reported ``unchained``."""
        self._keys(app_name, user_id, session_id)  # validates the ids
        async with translate_redis_errors(self._where):
            return await verify_chain(self._client, self.key_prefix, app_name, user_id, session_id)

    async def _check_fence(self, session_id: str) -> None:
        """The fence as a separate read (Redis Cluster): a resume that lands between this
        read and the append lets that one append through; the next one is refused."""
        assert self.fence is not None
        raw = await self._client.get(self.fence[0])
        current = "0" if raw is None else as_text(raw)
        if current != str(self.fence[1]):
            raise FencedWriteError(
                f"session {session_id}: append refused, the run was resumed elsewhere "
                f"(epoch {current[:20]}, this process has {self.fence[1]})"
            )

    async def _append_durably(self, keys: list[str], args: list[str]) -> Any:
        if not self.wait_replicas:
            return await self._append(keys=keys, args=args)
        return await run_confirmed(
            self._client,
            self._append,
            keys,
            args,
            ReplicaWait(self.wait_replicas, self.wait_timeout_ms),
            self._where,
        )

    @property
    def redis(self) -> aioredis.Redis:
        """The ``redis.asyncio`` client this service uses."""
        return self._client

    async def close(self) -> None:
        """Closes the Redis connections, unless the client was passed in."""
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _keys(self, app_name: str, user_id: str, session_id: str) -> SessionKeys:
        for name, value in (
            ("app_name", app_name),
            ("user_id", user_id),
            ("session_id", session_id),
        ):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        return AppKeys.for_app(self.key_prefix, app_name).session(user_id, session_id)

    @override
    async def create_session(
        self,
        *,
        app_name: str,
        user_id: str,
        state: dict[str, Any] | None = None,
        session_id: str | None = None,
    ) -> Session:
        session_id = session_id.strip() if session_id else None
        session_id = session_id or str(uuid.uuid4())
        keys = self._keys(app_name, user_id, session_id)
        if state is not None and not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        deltas = _session_util.extract_json_safe_state_delta(state or {})
        now = time.time()
        first_head = genesis(app_name, user_id, session_id)
        async with translate_redis_errors(self._where):
            reply = await self._create(
                keys=[
                    keys.meta,
                    keys.state,
                    keys.app.app_state,
                    keys.app.user_state(user_id),
                    keys.app.user_index(user_id),
                ],
                args=[
                    keys.app.base,
                    keys.member,
                    keys.session_part,
                    repr(now),
                    self._ttl_ms,
                    *_flatten(deltas["session"]),
                    *_flatten(deltas["app"]),
                    *_flatten(deltas["user"]),
                    first_head,
                ],
            )
        if as_text(reply[0]) == "EXISTS":
            raise AlreadyExistsError(f"Session with id {session_id} already exists.")
        self._remember_head((app_name, user_id, session_id), "1", first_head)
        session_state = json.loads(json.dumps(deltas["session"]))
        _merge(session_state, _pairs(reply[1]), _pairs(reply[2]))
        session = Session(
            id=session_id,
            app_name=app_name,
            user_id=user_id,
            state=session_state,
            last_update_time=now,
        )
        session._storage_update_marker = "1"
        return session

    @override
    async def get_session(
        self,
        *,
        app_name: str,
        user_id: str,
        session_id: str,
        config: GetSessionConfig | None = None,
    ) -> Session | None:
        session_id = session_id.strip() if isinstance(session_id, str) else session_id
        keys = self._keys(app_name, user_id, session_id)
        recent = (
            ""
            if config is None or config.num_recent_events is None
            else str(config.num_recent_events)
        )
        after = (
            ""
            if config is None or config.after_timestamp is None
            else repr(float(config.after_timestamp))
        )
        async with translate_redis_errors(self._where):
            reply = await self._get(
                keys=[
                    keys.meta,
                    keys.state,
                    keys.events,
                    keys.timestamps,
                    keys.app.app_state,
                    keys.app.user_state(user_id),
                ],
                args=[recent, after],
            )
        if reply is None:
            return None
        _ct, update_time, rev, state_flat, app_flat, user_flat, raw_events, head = reply
        self._remember_head((app_name, user_id, session_id), as_text(rev), as_text(head))
        state = _pairs(state_flat)
        _merge(state, _pairs(app_flat), _pairs(user_flat))
        events = self._decode_events(raw_events)
        session = Session(
            id=session_id,
            app_name=app_name,
            user_id=user_id,
            state=state,
            events=events,
            last_update_time=float(update_time),
        )
        session._storage_update_marker = as_text(rev)
        return session

    @staticmethod
    def _decode_events(raw: Sequence[bytes | str | None]) -> list[Event]:
        # One validate_json over a JSON array is several times faster than one per event.
        items = [as_text(e) for e in raw if e is not None]
        if not items:
            return []
        return _EVENTS.validate_json("[" + ",".join(items) + "]")

    @override
    async def list_sessions(
        self, *, app_name: str, user_id: str | None = None
    ) -> ListSessionsResponse:
        app = AppKeys.for_app(self.key_prefix, app_name)
        if user_id is not None and (not isinstance(user_id, str) or not user_id):
            raise ValueError(f"user_id must be a non-empty string or None, got {user_id!r}")
        index = app.index if user_id is None else app.user_index(user_id)
        user_part = "" if user_id is None else app.session(user_id, "-").user_part
        # Keyed by member: an entry met twice (ZSCAN may repeat entries across a
        # rehash of the index) keeps its last, so latest, copy.
        rows: dict[str, Sequence[Any]] = {}
        user_states: dict[str, dict[str, Any]] = {}
        app_flat: Sequence[Any] = []
        cursor = "0"
        shared = "1"
        async with translate_redis_errors(self._where):
            while True:
                cursor_raw, page, page_app, user_flat = await self._list_page(
                    keys=[index, app.app_state, app.index, app.expiry],
                    args=[app.base, user_part, cursor, self.list_page_size, shared],
                )
                for row in page:
                    rows[as_text(row[0])] = row
                if shared:
                    app_flat = page_app
                    for i in range(0, len(user_flat), 2):
                        user_states[as_text(user_flat[i])] = _pairs(user_flat[i + 1])
                    shared = ""
                cursor = as_text(cursor_raw)
                if cursor == "0":
                    break
            await self._read_user_states(app, rows, user_states)
        app_state = _pairs(app_flat)
        sessions = []
        for member, _ct, update_time, rev, state_flat in rows.values():
            user_part, _, session_part = as_text(member).partition(":")
            state = _pairs(state_flat)
            _merge(state, app_state, user_states.get(user_part, {}))
            session = Session(
                id=decode_part(session_part),
                app_name=app_name,
                user_id=decode_part(user_part),
                state=state,
                last_update_time=float(update_time),
            )
            session._storage_update_marker = as_text(rev)
            sessions.append(session)
        sessions.sort(key=lambda s: (s.last_update_time, s.user_id, s.id))
        return ListSessionsResponse(sessions=sessions)

    async def _read_user_states(
        self, app: AppKeys, rows: dict[str, Sequence[Any]], into: dict[str, dict[str, Any]]
    ) -> None:
        """Reads the ``user:`` state of listed users the first page did not cover.

        One ``HGETALL`` per user, pipelined a page of them per round trip, so no
        round trip holds Redis longer than a page of the listing does.
        """
        missing = sorted({m.partition(":")[0] for m in rows} - into.keys())
        for start in range(0, len(missing), self.list_page_size):
            chunk = missing[start : start + self.list_page_size]
            async with self._client.pipeline(transaction=False) as pipe:
                for part in chunk:
                    pipe.hgetall(app.user_state(decode_part(part)))
                replies = await pipe.execute()
            for part, stored in zip(chunk, replies, strict=True):
                into[part] = {as_text(k): json.loads(v) for k, v in stored.items()}

    @override
    async def delete_session(self, *, app_name: str, user_id: str, session_id: str) -> None:
        keys = self._keys(app_name, user_id, session_id.strip())
        async with (
            translate_redis_errors(self._where),
            self._client.pipeline(transaction=True) as pipe,
        ):
            pipe.delete(keys.meta, keys.state, keys.events, keys.timestamps)
            pipe.zrem(keys.app.index, keys.member)
            pipe.zrem(keys.app.user_index(user_id), keys.session_part)
            pipe.zrem(keys.app.expiry, keys.member)
            await pipe.execute()

    @override
    async def get_user_state(self, *, app_name: str, user_id: str) -> dict[str, Any]:
        key = AppKeys.for_app(self.key_prefix, app_name).user_state(user_id)
        async with translate_redis_errors(self._where):
            stored = await self._client.hgetall(key)
        return {as_text(k): json.loads(v) for k, v in stored.items()}

    @override
    async def append_event(self, session: Session, event: Event) -> Event:
        if not isinstance(event, Event):
            raise TypeError(f"event must be a google.adk Event, got {type(event).__name__}")
        if not isinstance(session, Session):
            raise TypeError(f"session must be a google.adk Session, got {type(session).__name__}")
        if event.partial:
            return event
        self._apply_temp_state(session, event)
        event = self._trim_temp_delta_state(event)
        keys = self._keys(session.app_name, session.user_id, session.id)
        delta = event.actions.state_delta if event.actions and event.actions.state_delta else {}
        deltas = _session_util.extract_json_safe_state_delta(delta)
        event_json = event.model_dump_json(exclude_none=True)
        lock_key = (session.app_name, session.user_id, session.id)
        lock = self._append_locks.get(lock_key)
        if lock is None:
            lock = self._append_locks[lock_key] = asyncio.Lock()
        # On a cluster the epoch key lies in the coordination slot, never the session's:
        # it is read by a command of its own just before the append (see _check_fence).
        split_fence = self.fence is not None and is_cluster(self._client)
        fence_args = [self.fence[0], str(self.fence[1])] if self.fence and not split_fence else []
        async with lock:
            caller_last_id = session.events[-1].id if session.events else ""
            async with translate_redis_errors(self._where):
                if split_fence:
                    await self._check_fence(session.id)
                head = await self._head(lock_key, keys.meta, session._storage_update_marker)
                new_head = link(head, event_json.encode()) if head else ""
                reply = await self._append_durably(
                    [
                        keys.meta,
                        keys.state,
                        keys.events,
                        keys.timestamps,
                        keys.app.app_state,
                        keys.app.user_state(session.user_id),
                        keys.app.user_index(session.user_id),
                    ],
                    [
                        keys.app.base,
                        keys.member,
                        keys.session_part,
                        self._ttl_ms,
                        session._storage_update_marker or "",
                        repr(session.last_update_time),
                        caller_last_id,
                        event.id,
                        repr(event.timestamp),
                        event_json,
                        head,
                        new_head,
                        *_flatten(deltas["session"]),
                        *_flatten(deltas["app"]),
                        *_flatten(deltas["user"]),
                        *fence_args,
                    ],
                )
            status = as_text(reply[0])
            if status == "FENCED":
                raise FencedWriteError(
                    f"session {session.id}: append refused, the run was resumed elsewhere "
                    f"(epoch {as_text(reply[1])[:20]}, this process has {self.fence[1]})"
                    if self.fence
                    else f"session {session.id}: append refused by its fence"
                )
            if status == "NOTFOUND":
                raise SessionNotFoundError(f"Session {session.id} not found.")
            if status in ("STALE", "HEAD"):  # HEAD: the head moved since it was read
                raise StaleSessionError(_STALE_MESSAGE)
            session._storage_update_marker = str(reply[1])
            self._remember_head(
                lock_key,
                session._storage_update_marker,
                as_text(reply[3]) if status == "DUP" else new_head,
            )
            if status == "DUP":
                session.last_update_time = float(reply[2])
                if session.events and session.events[-1] == event:
                    return event
            else:
                session.last_update_time = event.timestamp
            return self._commit_event_to_session(session, event)
