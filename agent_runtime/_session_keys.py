"""Redis key layout of the session service.

Every key of one app carries the app name as its Redis Cluster hash tag
(``<prefix>{<app>}:...``), so that one atomic script can touch a session, its
events, its indexes and the ``app:`` / ``user:`` state together: all sessions of
one app live in one hash slot.

User and session ids are percent-encoded so that ``:`` inside an id can never
make two different (user, session) pairs collide, and ``{``/``}`` inside an app
name can never move the hash tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote


def _enc(value: str) -> str:
    return quote(value, safe="-_.~@+=")


def decode_part(value: str) -> str:
    """Reverses the percent-encoding of an id inside a key or index member."""
    return unquote(value)


@dataclass(frozen=True, slots=True)
class AppKeys:
    """Keys shared by every session of one app."""

    base: str

    @classmethod
    def for_app(cls, key_prefix: str, app_name: str) -> AppKeys:
        """Builds the key base ``<prefix>{<app>}:`` of one app."""
        if not app_name:
            raise ValueError("app_name must be a non-empty string")
        return cls(f"{key_prefix}{{{_enc(app_name)}}}:")

    @property
    def app_state(self) -> str:
        """Hash of ``app:`` state, field = key without the prefix, value = JSON."""
        return self.base + "app_state"

    @property
    def index(self) -> str:
        """Sorted set of every session of the app: member ``<user>:<session>``, score = update time."""
        return self.base + "idx"

    @property
    def expiry(self) -> str:
        """Sorted set of sessions with a TTL: member ``<user>:<session>``, score = expiry (ms)."""
        return self.base + "exp"

    def user_state(self, user_id: str) -> str:
        """Hash of ``user:`` state of one user."""
        return f"{self.base}user_state:{_enc(user_id)}"

    def user_index(self, user_id: str) -> str:
        """Sorted set of one user's sessions: member ``<session>``, score = update time."""
        return f"{self.base}uidx:{_enc(user_id)}"

    def session(self, user_id: str, session_id: str) -> SessionKeys:
        """Keys of one session."""
        return SessionKeys(self, _enc(user_id), _enc(session_id))


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """Keys of one session; the Lua scripts rebuild the same names from ``member``."""

    app: AppKeys
    user_part: str
    session_part: str

    @property
    def member(self) -> str:
        """The session's member in the app index: ``<user>:<session>``, both encoded."""
        return f"{self.user_part}:{self.session_part}"

    @property
    def meta(self) -> str:
        """Hash: ``ct`` create time, ``ut`` update time, ``rev``, ``seq`` (events), ``lei`` (last event id)."""
        return f"{self.app.base}sess:{self.member}"

    @property
    def state(self) -> str:
        """Hash of session-scoped state (JSON values)."""
        return f"{self.app.base}state:{self.member}"

    @property
    def events(self) -> str:
        """Hash: field = sequence number (1, 2, ...), value = event JSON."""
        return f"{self.app.base}ev:{self.member}"

    @property
    def timestamps(self) -> str:
        """Sorted set: member = sequence number, score = event timestamp."""
        return f"{self.app.base}ts:{self.member}"
