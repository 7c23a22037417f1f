"""``adk-supervisor``: run the daemon; submit, abort, read and wait for tasks; watch the node.

The client commands talk to the local daemon's status socket when one answers
(no Redis URL needed: the daemon tells where its Redis is), else to Redis
directly (``--redis-url`` or ``redis_url``), which works from any host.

Exit codes: 0 success (``wait``: the task completed), 1 the task ended in
another state or the command failed, 2 bad usage or configuration, 3 no daemon
or Redis reachable, 4 no such task, 124 ``wait`` timed out.

Heavy modules load only for the commands that need them: ``--help`` needs none,
``status`` and ``submit`` through the local daemon need the socket client and
the settings, the Redis client loads only to talk to Redis directly, and the
daemon (with its spawners) only for ``run``. Every call answers in well under
a second; none imports ADK.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import textwrap
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import (
    ConfigError,
    DaemonError,
    DaemonUnavailable,
    RedisServerError,
    SocketInUseError,
    StateDirLocked,
    SupervisorError,
    TaskNotFoundError,
)
from .ops.logs import setup_logging

if TYPE_CHECKING:
    from .client import SupervisorClient
    from .config import Settings

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_NOT_FOUND = 4
EXIT_WAIT_TIMEOUT = 124

log = logging.getLogger("adk_supervisor")


class CliError(Exception):
    """A failure to report on stderr with an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------ arguments

_COMMANDS: dict[str, tuple[str, str]] = {
    "run": (
        "run the daemon in the foreground (Ctrl-C or SIGTERM stops it)",
        "adk-supervisor --config /etc/adk-supervisor/config.toml run",
    ),
    "submit": (
        "queue a run of an app; prints its task id",
        "adk-supervisor submit weather 'weather in Zurich?' --user-id u1 --wait",
    ),
    "abort": (
        "abort a task: kills its whole process tree (or stops it from starting)",
        "adk-supervisor abort 3f2a9c... --reason 'stuck in a loop'",
    ),
    "get": ("print a task record", "adk-supervisor get 3f2a9c..."),
    "wait": (
        "wait for a task to end; exit 0 only if it completed",
        "adk-supervisor wait 3f2a9c... --timeout 60 && echo done",
    ),
    "status": ("this node's daemon: health, counts, running runs", "adk-supervisor status --json"),
    "ps": ("running runs on this node (pid, app, elapsed, RSS, CPU)", "adk-supervisor ps"),
    "drain": ("stop taking new runs on this node; running runs finish", "adk-supervisor drain"),
    "check-config": (
        "validate the configuration without starting anything",
        "adk-supervisor --config config.toml check-config",
    ),
}


def _common() -> argparse.ArgumentParser:
    # Accepted before and after the command; SUPPRESS keeps a later parser from resetting them.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="TOML config file (default: $ADK_SUPERVISOR_CONFIG, else "
        "/etc/adk-supervisor/config.toml if present, else built-in defaults)",
    )
    common.add_argument(
        "--redis-url",
        default=argparse.SUPPRESS,
        help="talk to this Redis instead of the local daemon's socket",
    )
    common.add_argument(
        "--socket",
        type=Path,
        default=argparse.SUPPRESS,
        help="status socket of the local daemon (default: socket_path)",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print data as JSON"
    )
    return common


def _parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="adk-supervisor",
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run Google ADK agent runs in supervised process trees, and control them.",
        epilog=textwrap.dedent("""\
            examples:
              adk-supervisor run                                   # the daemon (foreground)
              adk-supervisor submit weather 'hi' --user-id u1 --wait
              adk-supervisor status
            exit codes: 0 ok, 1 failed / task not completed, 2 bad usage or config,
                        3 daemon or Redis unreachable, 4 no such task, 124 wait timed out"""),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers = {}
    for name, (summary, example) in _COMMANDS.items():
        parsers[name] = sub.add_parser(
            name,
            parents=[_common()],
            help=summary,
            description=summary,
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    p = parsers["submit"]
    p.add_argument("app", help="an app name from [apps], or package.module:attribute")
    p.add_argument("message", help="the user message the run starts with")
    p.add_argument("--user-id", required=True, help="ADK user id")
    p.add_argument("--session-id", help="ADK session id (default: the task id)")
    p.add_argument("--task-id", help="choose the task id (default: a random hex id)")
    p.add_argument(
        "--timeout", type=float, metavar="SEC", help="kill the run as timed_out after SEC"
    )
    p.add_argument("--wait", action="store_true", help="wait for the run to end; exit as `wait`")
    p = parsers["abort"]
    p.add_argument("task_id")
    p.add_argument("--reason", default="", help="recorded as the task's reason")
    parsers["get"].add_argument("task_id")
    p = parsers["wait"]
    p.add_argument("task_id")
    p.add_argument("--timeout", type=float, metavar="SEC", help="give up after SEC (exit 124)")
    return parser


# --------------------------------------------------------------------- output


def _print(text: str = "") -> None:
    """print() to stdout that survives a reader leaving early (``| head``), so the
    command still ends with its own exit code."""
    try:
        print(text)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


_FIRST = (
    "task_id",
    "state",
    "app",
    "user_id",
    "session_id",
    "reason",
    "exit_code",
    "signal",
    "node_id",
    "pid",
    "duration_s",
    "cpu_s",
    "max_rss_kb",
)


def _shown(key: str, value: Any) -> Any:
    # Records keep epoch seconds (sortable, zone-free); people read local time.
    if key.endswith("_at"):
        with contextlib.suppress(ValueError, OverflowError, OSError):
            return datetime.fromtimestamp(float(value)).isoformat(sep=" ", timespec="milliseconds")
    return value


def _emit(data: dict[str, Any], as_json: bool, *, ordered: bool = False) -> None:
    if as_json:
        _print(json.dumps(data, sort_keys=True))
        return
    if ordered:
        keys = list(data)
    else:
        keys = [k for k in _FIRST if k in data] + sorted(k for k in data if k not in _FIRST)
    width = max(map(len, keys), default=0)
    for key in keys:
        _print(f"{key:<{width}}  {_shown(key, data[key])}")


def _mib(size: int) -> str:
    return f"{size / 1048576:.1f}M"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (
        f"{hours}h{minutes:02d}m"
        if hours
        else f"{minutes}m{secs:02d}s"
        if minutes
        else f"{seconds:.1f}s"
    )


def _runs_table(runs: list[dict[str, Any]]) -> None:
    if not runs:
        _print("no running runs")
        return
    rows = [("TASK", "APP", "PID", "ELAPSED", "RSS", "CPU", "USER")]
    for run in runs:
        rows.append(
            (
                run["task_id"] + (" (killing)" if run.get("killing") else ""),
                run["app"],
                str(run["pid"]),
                _duration(run["elapsed_s"]),
                _mib(run["rss_bytes"]),
                f"{run['cpu_s']:.1f}s",
                run["user_id"],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        _print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _status_text(status: dict[str, Any]) -> None:
    redis = status["redis"]
    link = "connected" if redis["connected"] else "DISCONNECTED"
    counts = ", ".join(f"{k} {v}" for k, v in sorted(status["counts"].items()))
    _emit(
        {
            "node": status["node_id"],
            "version": status["version"],
            "pid": status["pid"],
            "uptime": _duration(status["uptime_s"]),
            "redis": f"{redis['url']} ({link}{', embedded' if redis['embedded'] else ''})",
            "kill mechanism": status["kill_mechanism"],
            "spawner": status.get("spawner", "?"),
            "taking runs": "no (draining)"
            if status["draining"]
            else f"yes (max {status['max_concurrent_runs']} at once)",
            "counts": counts,
            "socket": status["socket_path"],
        },
        False,
        ordered=True,
    )
    _print()
    _runs_table(status["runs"])


# ------------------------------------------------------------------- commands


def _run_daemon(settings: Settings, redis_url: str | None) -> int:
    import anyio

    from .ops.redis_server import RedisServer
    from .ops.state_lock import StateDirLock

    try:
        lock = StateDirLock(settings.state_dir)
        lock.acquire()
    except StateDirLocked as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(
            f"cannot use state_dir {settings.state_dir}: {exc.strerror or exc}. Set state_dir "
            "in the config (or ADK_SUPERVISOR_STATE_DIR) to a directory this user may write"
        ) from None
    try:
        if redis_url:
            anyio.run(_serve, settings, redis_url, False)
            return EXIT_OK
        # No redis_url configured: a private Redis in state_dir, append-only so records survive.
        server = RedisServer(settings.state_dir / "redis", appendonly=True, die_with_parent=True)
        with server:
            log.info(
                "no redis_url configured: embedded Redis at %s (data in %s); "
                "it stops with the daemon",
                server.url,
                server.data_dir,
            )
            anyio.run(_serve, settings, server.url, True)
        return EXIT_OK
    finally:
        lock.release()


async def _serve(settings: Settings, redis_url: str, embedded: bool) -> None:
    import anyio

    from .daemon import Supervisor

    supervisor = Supervisor(settings, redis_url=redis_url, embedded_redis=embedded)
    async with anyio.create_task_group() as tg:

        async def on_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                # Kept open while stopping: a second Ctrl-C must not kill the daemon
                # before it has recorded how its runs ended.
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if supervisor.stopping:
                        log.warning("%s: already stopping, recording how runs ended", name)
                        continue
                    log.info("%s: stopping", name)
                    supervisor.stop()

        tg.start_soon(on_signals)
        await supervisor.serve()
        tg.cancel_scope.cancel()


async def _daemon_redis(socket: Path) -> tuple[str, str] | None:
    """The local daemon's Redis URL and key prefix, or None if no daemon answers."""
    from .control.client import request

    try:
        reply = await request(socket, "ping", timeout_s=10)
    except DaemonUnavailable:
        return None
    return str(reply["redis_url"]), str(reply["key_prefix"])


def _no_daemon(socket: Path) -> CliError:
    return CliError(
        f"no daemon answers on {socket}. Start one (`adk-supervisor run`, or `make run` in a "
        "checkout), pass the --config it runs with, or pass --redis-url to talk to Redis directly",
        EXIT_UNAVAILABLE,
    )


async def _client_command(args: argparse.Namespace, settings: Settings) -> int:
    from .control.client import request

    socket: Path = args.socket or settings.status_socket
    if args.command in ("status", "ps", "drain"):
        try:
            reply = await request(socket, "status" if args.command == "ps" else args.command)
        except DaemonUnavailable:
            raise _no_daemon(socket) from None
        if args.json:
            _print(json.dumps(reply["runs"] if args.command == "ps" else reply, sort_keys=True))
        elif args.command == "status":
            _status_text(reply)
        elif args.command == "ps":
            _runs_table(reply["runs"])
        else:
            _print(f"draining: no new runs; {reply['running']} running runs go on to their end")
        return EXIT_OK

    # Prefer the local daemon; an explicit --redis-url means "Redis directly".
    local = None if args.redis_url else await _daemon_redis(socket)
    direct: str | None = args.redis_url or settings.redis_url
    if local is not None:
        url, prefix = local
    elif direct:
        url, prefix = direct, settings.key_prefix
    else:
        raise _no_daemon(socket)

    if args.command == "submit":
        if local is not None:
            reply = await request(
                socket,
                "submit",
                app=args.app,
                message=args.message,
                user_id=args.user_id,
                session_id=args.session_id,
                task_id=args.task_id,
                timeout_s=args.timeout,
            )
            task_id = reply["task_id"]
            if reply.get("warning"):
                print(f"adk-supervisor: {reply['warning']}", file=sys.stderr)
        else:
            async with _redis_client(url, prefix) as client:
                task_id = await client.submit(
                    args.app,
                    args.message,
                    user_id=args.user_id,
                    session_id=args.session_id,
                    task_id=args.task_id,
                    timeout_s=args.timeout,
                )
        if args.wait:
            return await _wait(url, prefix, task_id, None, args.json)
        if args.json:
            _emit({"task_id": task_id}, True)
        else:
            _print(task_id)  # alone, so `T=$(adk-supervisor submit ...)` works
        return EXIT_OK
    if args.command == "abort":
        if local is not None:
            reply = await request(socket, "abort", task_id=args.task_id, reason=args.reason)
            heard = int(reply["abort_published_to"])
        else:
            async with _redis_client(url, prefix) as client:
                heard = await client.abort(args.task_id, args.reason)
        _emit({"task_id": args.task_id, "abort_published_to": heard}, args.json)
        return EXIT_OK
    if args.command == "get":
        async with _redis_client(url, prefix) as client:
            _emit(await client.get(args.task_id), args.json)
        return EXIT_OK
    return await _wait(url, prefix, args.task_id, args.timeout, args.json)


def _redis_client(url: str, prefix: str) -> SupervisorClient:
    from .client import SupervisorClient

    return SupervisorClient(url, prefix)


async def _wait(url: str, prefix: str, task_id: str, limit_s: float | None, as_json: bool) -> int:
    try:
        async with _redis_client(url, prefix) as client:
            record = await client.wait(task_id, limit_s)
    except TimeoutError:
        raise CliError(
            f"task {task_id} did not end within {limit_s:g}s", EXIT_WAIT_TIMEOUT
        ) from None
    _emit(record, as_json)
    return EXIT_OK if record.get("state") == "completed" else EXIT_FAILED


def _check_config(args: argparse.Namespace, settings: Settings) -> int:
    from .config import find_config_path

    source = find_config_path(args.config)
    data = settings.model_dump(mode="json")
    data["socket_mode"] = f"{settings.socket_mode:04o}"
    if args.json:
        _print(
            json.dumps({"ok": True, "source": str(source) if source else None, "settings": data})
        )
        return EXIT_OK
    _print(
        f"configuration OK ({source or 'no file: built-in defaults'}, plus ADK_SUPERVISOR_* variables)"
    )
    apps = data.pop("apps")
    _emit(data, False)
    for name, ref in sorted(apps.items()):
        _print(f"app {name} = {ref}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; returns the exit code (2 on bad usage or bad config)."""
    code = _main(argv)
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # `adk-supervisor wait T | head -1`: keep wait's exit code
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return code


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says Redis could not be reached (redis-py loaded only if it was used)."""
    errors = sys.modules.get("redis.exceptions")
    if errors is None:
        return False
    return isinstance(exc, errors.ConnectionError | errors.TimeoutError)


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    # Options given neither before nor after the command (their parsers SUPPRESS defaults).
    for name, default in (("config", None), ("redis_url", None), ("socket", None), ("json", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    from .config import load_settings, unknown_env_vars

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"adk-supervisor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(settings.log_level, settings.log_format)
    for name in unknown_env_vars():
        log.warning("%s is set but names no setting: ignored (a typo?)", name)
    try:
        if args.command == "check-config":
            return _check_config(args, settings)
        if args.command == "run":
            return _run_daemon(settings, args.redis_url or settings.redis_url)
        import anyio

        return anyio.run(_client_command, args, settings)
    except CliError as exc:
        print(f"adk-supervisor: {exc}", file=sys.stderr)
        return exc.code
    except TaskNotFoundError as exc:
        print(f"adk-supervisor: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except DaemonUnavailable as exc:
        print(f"adk-supervisor: cannot reach Redis or the daemon: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except DaemonError as exc:
        print(f"adk-supervisor: the daemon refused: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (SocketInUseError, RedisServerError) as exc:
        print(f"adk-supervisor: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ValueError as exc:  # an invalid task id, or one that exists already
        print(f"adk-supervisor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SupervisorError as exc:
        print(f"adk-supervisor: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ExceptionGroup as group:
        # The daemon's task group wraps a startup failure (a socket another daemon serves).
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        if isinstance(leaf, SupervisorError | OSError):
            print(f"adk-supervisor: {leaf}", file=sys.stderr)
            return EXIT_FAILED
        raise
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if _unreachable(exc):
            print(f"adk-supervisor: cannot reach Redis or the daemon: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        raise
