"""Every Redis key, stream and channel of adk-supervisor, in one place.

Both packages, the daemon, the client, the runs and the plugin, build names
only through :class:`KeySchema` (task, abort, node and plugin keys) and
:class:`AppKeys` / :class:`SessionKeys` (the session service), so the layout
the README documents is this module and nothing else.

Session keys carry the app name as their Redis Cluster hash tag
(``<prefix>{<app>}:...``), so that one atomic script can touch a session, its
events, its indexes and the ``app:`` / ``user:`` state together. User and
session ids are percent-encoded so that ``:`` inside an id can never make two
different (user, session) pairs collide, and ``{``/``}`` inside an app name can
never move the hash tag.

Every coordination key (task records, run events streams, the runs stream, node
keys, session lines, abort marks, the plugin's keys...) lives under ONE hash tag
derived from the prefix, in every topology: ``<prefix>{<prefix>}<rest>``, e.g.
``adk:{adk:}task:<id>``. So each multi-key atomic step (submit = record + line +
runs stream; a transition = record + events stream + line release) is one script
on one Cluster slot, while sessions, the bulk of the bytes, spread over shards by
app. The tag holds the prefix's ``:``, which an encoded app name never holds, so
no app shares the coordination slot and no ``<prefix>{<app>}:*`` ACL pattern
matches a coordination key. Channels are not keys: their names keep the bare prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, unquote

__all__ = ["DEFAULT_PREFIX", "RUNS_GROUP", "AppKeys", "KeySchema", "SessionKeys", "decode_part"]

DEFAULT_PREFIX: Final = "adk:"
RUNS_GROUP: Final = "supervisors"
"""The consumer group of the runs stream: every daemon sharing a Redis is one consumer."""


@dataclass(frozen=True, slots=True)
class KeySchema:
    """Names of the task, abort, node and plugin keys (and channels) under one ``key_prefix``."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError(
                f"key prefix {self.prefix!r} must not contain '{{' or '}}': they would move "
                "the Redis Cluster hash tags of its keys"
            )

    @property
    def coordination(self) -> str:
        """``<prefix>{<prefix>}``: the start of every coordination key, one Cluster slot.

        The Lua scripts get it as their key prefix and build the names below from it.
        """
        return f"{self.prefix}{{{self.prefix}}}"

    # -- tasks
    def task(self, task_id: str) -> str:
        """Hash: the task record."""
        return f"{self.coordination}task:{task_id}"

    @property
    def task_events(self) -> str:
        """Channel: every task's transitions, as JSON."""
        return f"{self.prefix}task-events"

    def task_channel(self, task_id: str) -> str:
        """Channel: one task's transitions."""
        return f"{self.prefix}task-events:{task_id}"

    def run_events(self, task_id: str) -> str:
        """Capped stream: one run's ADK events and lifecycle (see ``run_events``)."""
        return f"{self.coordination}events:{task_id}"

    @property
    def task_history(self) -> str:
        """Capped stream: every transition, for history readers."""
        return f"{self.coordination}task-history"

    # -- aborts
    def abort_channel(self, task_id: str) -> str:
        """Channel: any message on it aborts the task."""
        return f"{self.prefix}abort:{task_id}"

    @property
    def abort_pattern(self) -> str:
        """The PSUBSCRIBE pattern that matches every abort channel."""
        return f"{self.prefix}abort:*"

    def task_of_abort_channel(self, channel: str) -> str:
        """The task id an abort channel names."""
        return channel[len(self.prefix) + len("abort:") :]

    def abort_mark(self, task_id: str) -> str:
        """String: the durable abort mark (pub/sub alone can lose a message)."""
        return f"{self.coordination}abort-mark:{task_id}"

    # -- the daemon's intake and nodes
    @property
    def runs(self) -> str:
        """Stream: the runs clients submit; consumer group :data:`RUNS_GROUP`."""
        return f"{self.coordination}runs"

    @property
    def nodes(self) -> str:
        """Set: node ids that run (or ran) a daemon on this Redis."""
        return f"{self.coordination}nodes"

    def node_tasks(self, node_id: str) -> str:
        """Set: a node's non-terminal tasks, read by its reconcile and by peers."""
        return f"{self.coordination}node:{node_id}:tasks"

    def node_heartbeat(self, node_id: str) -> str:
        """String with a TTL: exists while the node's daemon reaches Redis."""
        return f"{self.coordination}node:{node_id}:heartbeat"

    def node_usage(self, node_id: str) -> str:
        """Hash with a TTL: the node's live runs' CPU and memory (task id -> JSON), for the
        console; rewritten every heartbeat interval (``daemon/usage.py``)."""
        return f"{self.coordination}node:{node_id}:usage"

    # -- one live run per session (the scripts of task_store.py build the same names)
    @staticmethod
    def session_part(app_name: str, user_id: str, session_id: str) -> str:
        """``<app>:<user>:<session>``, each percent-encoded: names one session's line."""
        return f"{_enc(app_name)}:{_enc(user_id)}:{_enc(session_id)}"

    def session_lease(self, app_name: str, user_id: str, session_id: str) -> str:
        """String: the task id of the one run that may use the session now (its live run,
        or the next one, handed the lease and on its way to a daemon)."""
        return (
            f"{self.coordination}session-lease:{self.session_part(app_name, user_id, session_id)}"
        )

    def session_queue(self, app_name: str, user_id: str, session_id: str) -> str:
        """List: the task ids waiting for the session's lease, in submit order."""
        return (
            f"{self.coordination}session-queue:{self.session_part(app_name, user_id, session_id)}"
        )

    def task_session(self, task_id: str) -> str:
        """String: the session part of a run's line (lease or queue), until its end is recorded.

        Outside the record, which the run may write: a run cannot redirect its release.
        """
        return f"{self.coordination}task-session:{task_id}"

    def task_epoch(self, task_id: str) -> str:
        """String: a durable run's epoch, raised by every resume. Written only by daemons (a
        run may read it): every write of the run's process is checked against it."""
        return f"{self.coordination}task-epoch:{task_id}"

    def task_resume(self, task_id: str) -> str:
        """Hash: what a durable run is started again from (its admitted entry and policy),
        written by the daemon that claims it; gone at its end."""
        return f"{self.coordination}task-resume:{task_id}"

    def tool_journal(self, task_id: str) -> str:
        """Hash: function call id -> ``started@<epoch>``, written before each tool runs."""
        return f"{self.coordination}tool-journal:{task_id}"

    def workspace_snapshot(self, task_id: str) -> str:
        """Hash: the latest workspace snapshot of a durable run (``sha256``, ``tar``, ``epoch``),
        written by the run at each tool boundary; gone at its end."""
        return f"{self.coordination}workspace-snapshot:{task_id}"

    def parked_run(self, task_id: str) -> str:
        """Hash: the runs-stream entry of a waiting run, put back on the stream at its turn."""
        return f"{self.coordination}parked:{task_id}"

    # -- the in-process plugin
    @property
    def plugin_running(self) -> str:
        """Hash: plugin tasks in ``running``, task id -> owning process."""
        return f"{self.coordination}plugin-running"

    def plugin_heartbeat(self, owner: str) -> str:
        """String with a TTL: exists while the plugin process ``owner`` lives."""
        return f"{self.coordination}plugin-heartbeat:{owner}"

    # -- sessions
    def app(self, app_name: str) -> AppKeys:
        """The session keys of one app."""
        return AppKeys.for_app(self.prefix, app_name)


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
