"""The Redis ACL that confines a run: the keys and commands its user gets, nothing else.

Pure (no I/O, no redis-py), so ``check-config`` can print the rules of a shared
run user without loading the daemon. :mod:`supervisor.daemon.credentials`
creates and deletes the per-run users built from these rules.

A run needs, and gets:

- its app's session keys ``<prefix>{<app>}:*`` (every user's sessions of that
  app: the session scripts keep the app's shared indexes, and sweep its expired
  sessions, whoever they belong to);
- its own task record ``<prefix>{<prefix>}task:<task_id>`` (the child writes ``adk_app``,
  ``invocation_id`` and ``error`` there), its tool-call journal, and read-only its
  epoch (a durable run's writes are checked against it: the run must not raise it);
- the commands of the session service and the task store's ``update``: a few
  hash and sorted-set commands, ``EVALSHA`` (scripts run with the caller's
  rights, checked command by command and key by key), ``MULTI``/``EXEC``;
- no channel at all: a run cannot PUBLISH an abort, nor listen to anyone's.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from agent_runtime.keys import AppKeys, KeySchema

__all__ = [
    "OPTIONAL_RUN_COMMANDS",
    "RUN_COMMANDS",
    "CredentialsMode",
    "acl_glob_escape",
    "explain_run_credentials",
    "password_hash",
    "run_key_patterns",
    "run_rules",
    "run_user_name",
    "run_user_prefix",
    "shared_key_patterns",
    "shared_rules",
    "with_credentials",
]

CredentialsMode = Literal["auto", "per_run", "shared", "daemon"]

RUN_COMMANDS: Final = (
    # redis-py's connection handshake (AUTH itself needs no permission); SELECT when
    # the URL names a database: key patterns hold in every database alike.
    "ping",
    "hello",
    "select",
    # redis-py's Redis Cluster client: the slot map, and the command table it finds keys
    # with (both read-only metadata).
    "cluster|slots",
    "command",
    # The session service's and the task store's scripts, loaded on first use.
    "evalsha",
    "script|load",
    # What those scripts call, and the session service's direct commands.
    "hset",
    "hget",
    "get",
    "hgetall",
    "hmget",
    "zadd",
    "zrem",
    "zrange",
    "zrangebyscore",
    "zscan",
    # The run's own events stream (agent_runtime/run_events.py).
    "xadd",
    "exists",
    "del",
    "pttl",
    "pexpire",
    "persist",
    "time",
    "multi",
    "exec",
    "discard",
)
"""Commands a run's user may send; every other command is refused (``-@all`` first)."""

OPTIONAL_RUN_COMMANDS: Final = ("client|setinfo",)
"""Granted where the server knows them (Redis 7.2+): redis-py sends ``CLIENT SETINFO`` on
every connection and ignores a refusal, but each refusal would be an ACL LOG entry."""

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def acl_glob_escape(text: str) -> str:
    """``text`` as a literal inside a Redis glob pattern (``*?[]\\`` escaped)."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def run_user_prefix(key_prefix: str, node_id: str) -> str:
    """Every run user of one node starts with this: how a daemon finds its leftovers."""
    return f"{key_prefix}run:{node_id}:"


def run_user_name(key_prefix: str, node_id: str, task_id: str) -> str:
    """The ACL user of one run (task ids hold no whitespace, which Redis refuses in names)."""
    return run_user_prefix(key_prefix, node_id) + task_id


def _every_app(key_prefix: str) -> str:
    # Every app's session keys, ``<prefix>{<app>}:...``, and no coordination key
    # ``<prefix>{<prefix>}<name>``: an encoded app name holds no ``}``, a coordination key
    # holds no ``}:`` (its names follow the tag without a ``:``; task and node ids and
    # the prefix hold no braces).
    return acl_glob_escape(key_prefix) + "{*}:*"


def run_key_patterns(key_prefix: str, task_id: str, session_app: str | None) -> list[str]:
    """The key patterns of one run: its app's sessions, its own task record and events stream.

    ``session_app`` None (an import path, whose ADK name the daemon cannot know
    without importing it) allows the sessions of every app.
    """
    sessions = (
        acl_glob_escape(AppKeys.for_app(key_prefix, session_app).base) + "*"
        if session_app
        else _every_app(key_prefix)
    )
    keys = KeySchema(key_prefix)
    return [
        f"~{sessions}",
        f"~{acl_glob_escape(keys.task(task_id))}",
        f"~{acl_glob_escape(keys.run_events(task_id))}",
        f"~{acl_glob_escape(keys.tool_journal(task_id))}",
        f"~{acl_glob_escape(keys.workspace_snapshot(task_id))}",
        # Read only: the epoch every write of the run is checked against is the daemons'.
        f"%R~{acl_glob_escape(keys.task_epoch(task_id))}",
    ]


def shared_key_patterns(key_prefix: str) -> list[str]:
    """The key patterns of one user shared by every run: all sessions, task records and
    events streams."""
    keys = KeySchema(key_prefix)
    return [
        f"~{_every_app(key_prefix)}",
        f"~{acl_glob_escape(keys.task(''))}*",
        f"~{acl_glob_escape(keys.run_events(''))}*",
        f"~{acl_glob_escape(keys.tool_journal(''))}*",
        f"~{acl_glob_escape(keys.workspace_snapshot(''))}*",
        f"%R~{acl_glob_escape(keys.task_epoch(''))}*",
    ]


def _commands(optional: bool) -> list[str]:
    names = [*RUN_COMMANDS, *(OPTIONAL_RUN_COMMANDS if optional else ())]
    return ["-@all", *(f"+{name}" for name in names)]


def password_hash(password: str) -> str:
    """The SHA-256 Redis keeps of a password; ``#<hash>`` sets it without sending the password."""
    return hashlib.sha256(password.encode()).hexdigest()


def run_rules(
    key_prefix: str,
    task_id: str,
    session_app: str | None,
    password: str,
    *,
    optional: bool = True,
) -> list[str]:
    """The ``ACL SETUSER`` rules of one run's user, from a clean slate (``reset``)."""
    return [
        "reset",
        "on",
        f"#{password_hash(password)}",
        "resetchannels",
        *run_key_patterns(key_prefix, task_id, session_app),
        *_commands(optional),
    ]


def shared_rules(key_prefix: str, *, optional: bool = False) -> list[str]:
    """The rules an operator gives the one user of every run (``run_redis_url``), password aside.

    Without :data:`OPTIONAL_RUN_COMMANDS` by default, so the line works on any Redis 6.2+.
    """
    return [
        "on",
        "resetchannels",
        "resetkeys",
        *shared_key_patterns(key_prefix),
        *_commands(optional),
    ]


def with_credentials(url: str, username: str, password: str) -> str:
    """``url`` with ``username:password`` in place of any credentials it carried.

    Both are percent-encoded (redis-py decodes them), so a ``:`` in a user name
    survives; ``username``/``password`` query parameters are dropped.
    """
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    userinfo = f"{quote(username, safe='')}:{quote(password, safe='')}"
    query = "&".join(
        item
        for item in parts.query.split("&")
        if item and item.split("=", 1)[0] not in ("username", "password")
    )
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}", query=query))


def explain_run_credentials(
    mode: CredentialsMode, key_prefix: str, run_redis_url: str | None, *, cluster: bool = False
) -> list[str]:
    """What ``run_credentials`` means for this configuration, for ``check-config``
    (``cluster``: ``redis_url`` names a Redis Cluster, where no per-run users are made)."""
    shared = "ACL SETUSER <user> >PASSWORD " + " ".join(shared_rules(key_prefix))
    if cluster and mode == "auto" and not run_redis_url:
        return [
            "auto on a Redis Cluster: runs get the daemon's own Redis credentials (redis_url), "
            "with a warning: ACL users live on each node, unreplicated, so no per-run user is "
            "made; create one confined user on EVERY node (primaries and replicas, in their "
            "ACL files) and set run_redis_url, for example:",
            f"  {shared}",
        ]
    if mode == "daemon":
        return [
            "runs get the daemon's own Redis credentials (redis_url): a run can do whatever "
            "the daemon can, including aborting other runs and writing any record"
        ]
    if mode == "shared" or (mode == "auto" and run_redis_url):
        return [
            "every run connects with run_redis_url; that user should be confined to the "
            "sessions and the task records, for example:",
            f"  {shared}",
            "(on Redis 7.2+ add +client|setinfo, or each connection leaves an ACL LOG entry; "
            "any run can still write every task record and every app's sessions)",
            *(
                ["on a Redis Cluster, create that user on every node (primaries and replicas)"]
                if cluster
                else []
            ),
        ]
    per_run = (
        "each run gets an ACL user of its own (<key_prefix>run:<node_id>:<task_id>), created "
        "before its spawn and deleted once its end is recorded, limited to its app's sessions "
        "and its own task record, with no channels"
    )
    if mode == "per_run":
        return [per_run + "; the daemon refuses to start if its Redis user may not ACL SETUSER"]
    return [
        f"auto: {per_run}, if the daemon's Redis user may ACL SETUSER (checked at start); "
        "otherwise runs get the daemon's credentials, with a warning"
    ]
