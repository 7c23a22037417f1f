"""The integrity chain of a stored session: each event's SHA-256 chained over the previous one.

:class:`~agent_runtime.sessions.service.RedisSessionService` stores, beside event
``n`` (field ``n`` of the session's events hash), its chain link in field ``h:n``:

    link(n) = sha256(link(n - 1) + "\\n" + event JSON, as stored)    (hex)

with ``link(0)`` the session's :func:`genesis` (bound to its app, user and session
ids, so events copied in from another session do not verify), and keeps the last
link as ``head`` in the session's meta hash, set in the append's own script. The
hash is computed in Python: Redis's Lua has ``redis.sha1hex`` and no SHA-256, and
SHA-256 in interpreted Lua would hold Redis for every append. So the append passes
the head it linked to, and the script refuses it (``HEAD``, like a stale session)
unless that is still the stored head: two appenders can never fork the chain.

:func:`verify_chain` recomputes the chain a page of events per script call and
says what is wrong: an event missing, an event (or its link) altered, or a head that
names another history than the stored events (a truncated or rolled-back session).
A session written before chains existed has no ``head``: it is reported unchained,
not broken. The chain has no key: it catches lost, truncated and corrupted
histories, not a writer with access to Redis who recomputes it.

No ADK import here: ``adk-supervisor verify-session`` stays fast.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Final, Literal

import redis.asyncio as aioredis

from .keys import AppKeys, SessionKeys

__all__ = [
    "ChainReport",
    "SessionIntegrityError",
    "genesis",
    "link",
    "link_field",
    "verify_chain",
]

_GENESIS_TAG: Final = b"adk-supervisor session chain v1\n"
# Events one verify script call reads: ~1 ms of Redis time at ~1 KB per event.
_PAGE: Final = 500

Problem = Literal["ok", "unchained", "not_found", "missing", "altered", "head_mismatch"]


class SessionIntegrityError(RuntimeError):
    """A session whose stored history fails its integrity chain (see :class:`ChainReport`)."""


def genesis(app_name: str, user_id: str, session_id: str) -> str:
    """``link(0)`` of a session: binds its chain to its app, user and session ids."""
    ids = json.dumps([app_name, user_id, session_id], ensure_ascii=False).encode()
    return hashlib.sha256(_GENESIS_TAG + ids).hexdigest()


def link(previous: str, event_json: bytes) -> str:
    """The chain link of an event whose predecessor's link is ``previous``."""
    digest = hashlib.sha256(previous.encode("ascii", "replace"))
    digest.update(b"\n")
    digest.update(event_json)
    return digest.hexdigest()


def link_field(seq: int) -> str:
    """Field of the events hash holding event ``seq``'s link."""
    return f"h:{seq}"


@dataclass(frozen=True, slots=True)
class ChainReport:
    """What :func:`verify_chain` found."""

    ok: bool
    """Nothing wrong: the chain verifies, or the session has none (``chained`` False)."""
    problem: Problem
    """``ok``, ``unchained`` (written before chains existed), ``not_found``, ``missing``
    (an event is gone), ``altered`` (an event or its link was changed), ``head_mismatch``
    (the stored events end elsewhere than the head says: truncated or rolled back)."""
    detail: str
    """One sentence for people: what is wrong, and where."""
    events: int = 0
    """Events the session's meta says it holds."""
    chained: bool = False
    index: int | None = None
    """Position (0-based, as in ``Session.events``) of the first bad event, if one is."""

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return asdict(self)


# KEYS: meta, events. ARGV: first seq, last seq (inclusive; clipped to the meta's seq).
# Returns {ct, seq, head or false, {json or false, link or false, ...}} or false (no session).
_VERIFY_PAGE: Final = r"""
local meta = redis.call('HMGET', KEYS[1], 'ct', 'seq', 'head')
if not meta[1] then
  return false
end
local seq = tonumber(meta[2]) or 0
local first = tonumber(ARGV[1])
local last = math.min(tonumber(ARGV[2]), seq)
local fields = {}
for s = first, last do
  fields[#fields + 1] = s
  fields[#fields + 1] = 'h:' .. s
end
local values = {}
if #fields > 0 then
  values = redis.call('HMGET', KEYS[2], unpack(fields))
end
return {meta[1], meta[2], meta[3], values}
"""


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _at(seq: int, total: int) -> str:
    return f"event {seq - 1} (number {seq} of the {total} stored)"


async def verify_chain(
    client: aioredis.Redis,
    key_prefix: str,
    app_name: str,
    user_id: str,
    session_id: str,
    *,
    page: int = _PAGE,
) -> ChainReport:
    """Recomputes the session's chain from its genesis and compares it with every stored
    link and the head; reads ``page`` events per script call, so a session of any length
    never holds Redis longer than one page. Everything read is treated as untrusted."""
    keys: SessionKeys = AppKeys.for_app(key_prefix, app_name).session(user_id, session_id)
    script = client.register_script(_VERIFY_PAGE)
    previous = genesis(app_name, user_id, session_id)
    first, total, head, created = 1, 0, "", None
    while True:
        reply = await script(keys=[keys.meta, keys.events], args=[first, first + page - 1])
        if not reply:
            if created is None:
                return ChainReport(False, "not_found", f"no session {session_id!r}")
            # Deleted (or expired) while being read: what was read is no verdict.
            return ChainReport(False, "not_found", f"session {session_id!r} went away")
        ct, seq_raw, head_raw, values = reply
        if created is None:
            created = ct
            try:
                total = int(_text(seq_raw))
            except ValueError:
                return ChainReport(
                    False, "altered", f"the session's event count is unreadable: {seq_raw!r}"
                )
            if head_raw is None:
                return ChainReport(
                    True,
                    "unchained",
                    "unchained: the session was written before integrity chains (no head); "
                    "nothing to verify",
                    total,
                )
            head = _text(head_raw)
        elif ct != created:
            return ChainReport(
                False, "not_found", f"session {session_id!r} was replaced while being read"
            )
        for offset in range(0, len(values), 2):
            seq = first + offset // 2
            event_json, stored = values[offset], values[offset + 1]
            if event_json is None:
                return ChainReport(
                    False,
                    "missing",
                    f"{_at(seq, total)} is missing: the history was truncated or damaged",
                    total,
                    True,
                    seq - 1,
                )
            raw = event_json if isinstance(event_json, bytes) else str(event_json).encode()
            expected = link(previous, raw)
            if stored is None or _text(stored) != expected:
                what = "has no chain hash" if stored is None else "does not match its chain hash"
                return ChainReport(
                    False,
                    "altered",
                    f"{_at(seq, total)} was altered: it {what}",
                    total,
                    True,
                    seq - 1,
                )
            previous = expected
        first += page
        if first > total:
            break
    if previous != head:
        return ChainReport(
            False,
            "head_mismatch",
            f"head mismatch: the {total} stored events do not end at the session's head "
            "(the history was truncated or rolled back, or its head altered)",
            total,
            True,
        )
    return ChainReport(True, "ok", f"ok: {total} events, chain verified", total, True)
