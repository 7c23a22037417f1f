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
daemon (with its spawners) only for ``run``, FastAPI, uvicorn and ADK only for
``gateway``. Every other call answers in well under a second and imports no ADK.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import textwrap
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .control.client import request
from .errors import (
    ConfigError,
    DaemonError,
    DaemonUnavailable,
    RedisServerError,
    SessionBusyError,
    SocketInUseError,
    SupervisorError,
    TaskNotFoundError,
)
from .paths import locate_socket

if TYPE_CHECKING:
    from agent_runtime.run_input import RunInput

    from .client import SupervisorClient
    from .config import Settings

__all__ = ["main"]

_T = TypeVar("_T")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_NOT_FOUND = 4
EXIT_WAIT_TIMEOUT = 124


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
    "events": (
        "print a run's events stream (its ADK events and lifecycle), following it live",
        "adk-supervisor events 3f2a9c... --follow",
    ),
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
    "gateway": (
        "serve ADK's api_server routes and web UI over HTTP, each run supervised",
        "adk-supervisor --config config.toml gateway --port 8000   # then open /dev-ui/",
    ),
    "verify-session": (
        "check a stored session's integrity chain: exit 0 intact (or unchained), 1 broken",
        "adk-supervisor verify-session weather u1 3f2a9c... --json",
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
        help="talk to this Redis instead of the local daemon's socket (redis://, rediss://, "
        "unix://, redis+sentinel:// or redis+cluster:// URL)",
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
    p.add_argument(
        "message",
        nargs="?",
        default="",
        help="the user message the run starts with (or --message-json)",
    )
    p.add_argument(
        "--message-json",
        metavar="FILE",
        help="the new message as google.genai Content JSON (text, inline data, function "
        "responses), from FILE or - for stdin",
    )
    p.add_argument("--state-delta", metavar="JSON", help="a JSON object merged into the state")
    p.add_argument("--invocation-id", help="continue this paused invocation")
    p.add_argument("--stream", action="store_true", help="stream partial text (ADK's SSE mode)")
    p.add_argument("--user-id", required=True, help="ADK user id")
    p.add_argument("--session-id", help="ADK session id (default: the task id)")
    p.add_argument("--task-id", help="choose the task id (default: a random hex id)")
    p.add_argument(
        "--timeout", type=float, metavar="SEC", help="kill the run as timed_out after SEC"
    )
    p.add_argument(
        "--traceparent",
        help="a W3C trace context (00-<trace id>-<span id>-<flags>): the run's spans join it",
    )
    p.add_argument(
        "--if-busy",
        choices=("wait", "refuse"),
        default="wait",
        help="while another run holds the session: wait for it (default), or refuse (exit 1)",
    )
    p.add_argument("--wait", action="store_true", help="wait for the run to end; exit as `wait`")
    p.add_argument(
        "--follow",
        action="store_true",
        help="print the run as it happens; Ctrl-C aborts it (unless --detach); exit as `wait`",
    )
    p.add_argument(
        "--detach", action="store_true", help="with --follow: Ctrl-C stops following only"
    )
    p = parsers["abort"]
    p.add_argument("task_id")
    p.add_argument("--reason", default="", help="recorded as the task's reason")
    parsers["get"].add_argument("task_id")
    p = parsers["events"]
    p.add_argument("task_id")
    p.add_argument("--follow", action="store_true", help="wait for new entries until the end")
    p.add_argument("--after", default="0-0", metavar="ID", help="start after this entry id")
    p = parsers["wait"]
    p.add_argument("task_id")
    p.add_argument("--timeout", type=float, metavar="SEC", help="give up after SEC (exit 124)")
    p = parsers["verify-session"]
    p.add_argument("app", help="the ADK app name the session is stored under (records: adk_app)")
    p.add_argument("user_id")
    p.add_argument("session_id")
    p = parsers["gateway"]
    p.add_argument("--host", help="address to listen on (default: gateway_listen's, 127.0.0.1)")
    p.add_argument(
        "--port",
        type=int,
        help="port to listen on, 0 for any free one (default: gateway_listen's, 8000)",
    )
    p.add_argument(
        "--wait-daemon",
        type=float,
        default=60.0,
        metavar="SEC",
        help="with no redis_url, wait up to SEC for the local daemon to say where its Redis is",
    )
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
        from datetime import datetime

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


def _settings(args: argparse.Namespace) -> Settings:
    """The full, validated settings (raises ConfigError), with logging set up from them."""
    import logging

    from .config import load_settings, unknown_env_vars
    from .ops.logs import setup_logging

    settings = load_settings(args.config)
    setup_logging(settings.log_level, settings.log_format)
    for name in unknown_env_vars():
        logging.getLogger("adk_supervisor").warning(
            "%s is set but names no setting: ignored (a typo?)", name
        )
    return settings


def _no_daemon(socket: Path) -> CliError:
    return CliError(
        f"no daemon answers on {socket}. Start one (`adk-supervisor run`, or `make run` in a "
        "checkout), pass the --config it runs with, or pass --redis-url to talk to Redis directly",
        EXIT_UNAVAILABLE,
    )


def _socket_and_settings(args: argparse.Namespace) -> tuple[Path, Settings | None]:
    """The local daemon's socket, found without the full settings where possible; the
    settings too when they had to be loaded (a config the fast path cannot read)."""
    if args.socket is not None:
        return args.socket, None
    try:
        return locate_socket(args.config), None
    except (OSError, ValueError):  # the full settings say what is wrong
        settings = _settings(args)
        return settings.status_socket, settings


def _client_command(args: argparse.Namespace) -> int:
    """Every command but ``run`` and ``check-config``.

    The local daemon answers through its socket, found without loading the full
    settings; they load (and are validated) only when no daemon answers and the
    command must reach Redis directly, or must explain why it cannot.
    """
    socket, settings = _socket_and_settings(args)
    if args.command in ("status", "ps", "drain"):
        try:
            status = request(socket, "status" if args.command == "ps" else args.command)
        except DaemonUnavailable:
            settings = settings or _settings(args)  # a config error explains more
            raise _no_daemon(socket) from None
        if args.json:
            _print(json.dumps(status["runs"] if args.command == "ps" else status, sort_keys=True))
        elif args.command == "status":
            _status_text(status)
        elif args.command == "ps":
            _runs_table(status["runs"])
        else:
            _print(f"draining: no new runs; {status['running']} running runs go on to their end")
        return EXIT_OK

    if args.command == "submit":
        args.input = _run_input(args)
    # Prefer the local daemon (one request, no Redis client); --redis-url means Redis directly.
    reply: dict[str, Any] | None = None
    if args.command in ("submit", "abort") and not args.redis_url:
        try:
            reply = _through_daemon(socket, args)
        except DaemonUnavailable:
            reply = None
        if reply is not None and reply.get("warning"):
            print(f"adk-supervisor: {reply['warning']}", file=sys.stderr)
        if reply is not None and args.command == "abort":
            _emit({"task_id": args.task_id, "abort_published_to": reply["heard"]}, args.json)
            return EXIT_OK
        if reply is not None and not (args.wait or args.follow):
            _print_task_id(str(reply["task_id"]), args.json)
            return EXIT_OK

    url, prefix = _redis_target(args, socket, settings)
    if args.command == "submit":
        task_id = (
            str(reply["task_id"])
            if reply
            else _over_redis(
                url,
                prefix,
                lambda client: client.submit(
                    args.app,
                    args.input,
                    user_id=args.user_id,
                    session_id=args.session_id,
                    task_id=args.task_id,
                    timeout_s=args.timeout,
                    traceparent=args.traceparent,
                    if_busy=args.if_busy,
                ),
            )
        )
        if args.follow:
            announce = None if args.json else f"task {task_id}"
            return _follow(
                url,
                prefix,
                task_id,
                "0-0",
                args.json,
                live=True,
                stop=not args.detach,
                announce=announce,
            )
        if args.wait:
            return _wait(url, prefix, task_id, None, args.json)
        _print_task_id(task_id, args.json)
        return EXIT_OK
    if args.command == "events":
        return _follow(
            url, prefix, args.task_id, args.after, args.json, live=args.follow, stop=False
        )
    if args.command == "abort":
        heard = _over_redis(url, prefix, lambda client: client.abort(args.task_id, args.reason))
        _emit({"task_id": args.task_id, "abort_published_to": heard}, args.json)
        return EXIT_OK
    if args.command == "get":
        _emit(_over_redis(url, prefix, lambda client: client.get(args.task_id)), args.json)
        return EXIT_OK
    return _wait(url, prefix, args.task_id, args.timeout, args.json)


def _print_task_id(task_id: str, as_json: bool) -> None:
    if as_json:
        _emit({"task_id": task_id}, True)
    else:
        _print(task_id)  # alone, so `T=$(adk-supervisor submit ...)` works


def _through_daemon(socket: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``submit`` or ``abort`` through the local daemon's socket."""
    if args.command == "abort":
        reply = request(socket, "abort", task_id=args.task_id, reason=args.reason)
        return {"heard": int(reply["abort_published_to"])}
    run_input = args.input
    return request(
        socket,
        "submit",
        app=args.app,
        message=run_input.message,
        content=run_input.content,
        state_delta=run_input.state_delta,
        invocation_id=run_input.invocation_id,
        run_config=run_input.run_config,
        user_id=args.user_id,
        session_id=args.session_id,
        task_id=args.task_id,
        timeout_s=args.timeout,
        traceparent=args.traceparent,
        if_busy=args.if_busy,
    )


def _run_input(args: argparse.Namespace) -> RunInput:
    """The run's input from ``submit``'s arguments; CliError (exit 2) on bad JSON."""
    from agent_runtime.run_input import RunInput

    def load(text: str, what: str) -> dict[str, Any]:
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise CliError(f"{what} is not JSON: {exc}", EXIT_USAGE) from None
        if not isinstance(value, dict):
            raise CliError(f"{what} must be a JSON object", EXIT_USAGE)
        return value

    content = None
    if args.message_json:
        source = sys.stdin if args.message_json == "-" else None
        try:
            text = source.read() if source else Path(args.message_json).read_text()
        except OSError as exc:
            raise CliError(f"cannot read --message-json: {exc}", EXIT_USAGE) from None
        content = load(text, "--message-json")
    if not args.message and content is None and not args.invocation_id:
        raise CliError("give a message, --message-json or --invocation-id", EXIT_USAGE)
    return RunInput(
        message=args.message,
        content=content,
        state_delta=load(args.state_delta, "--state-delta") if args.state_delta else None,
        invocation_id=args.invocation_id,
        run_config={"streaming": "sse"} if args.stream else None,
    )


def _follow(
    url: str,
    prefix: str,
    task_id: str,
    after: str,
    as_json: bool,
    *,
    live: bool,
    stop: bool,
    announce: str | None = None,
) -> int:
    """Prints a run's entries (live: until its end); Ctrl-C aborts it when ``stop``.
    ``announce``: a line for stderr first (the task id of a run just submitted).

    Exits as ``wait`` does once the run ended: 0 only if it completed."""
    ended: list[str] = []

    async def run() -> None:
        from ._run_view import RunView
        from .client import SupervisorClient

        view = RunView()
        async with SupervisorClient(url, prefix) as client:
            async for entry in client.events(task_id, after=after, follow=live):
                if as_json:
                    _print(json.dumps({"id": entry.id, "type": entry.type, "data": entry.data}))
                else:
                    sys.stdout.write(view.render(entry))
                    sys.stdout.flush()
                if entry.terminal:
                    ended.append(str(entry.data.get("state")))

    try:
        # From the line that names the run on: a Ctrl-C any time after it, while the
        # imports load too (a second on a busy host), aborts the run, not just the CLI.
        if announce:
            print(announce, file=sys.stderr, flush=True)
        import anyio

        anyio.run(run)
    except KeyboardInterrupt:
        if not stop:
            raise CliError(f"stopped following {task_id} (it goes on)", EXIT_FAILED) from None
        _over_redis(url, prefix, lambda client: client.abort(task_id, "interrupted (Ctrl-C)"))
        raise CliError(f"aborted {task_id} (Ctrl-C)", EXIT_FAILED) from None
    if not ended:
        return EXIT_OK if not live else EXIT_FAILED
    return EXIT_OK if ended[0] == "completed" else EXIT_FAILED


def _redis_target(
    args: argparse.Namespace, socket: Path, settings: Settings | None
) -> tuple[str, str]:
    """The Redis URL and key prefix to talk to: ``--redis-url``, the local daemon's, or the config's."""
    if not args.redis_url:
        try:
            reply = request(socket, "ping", io_timeout_s=10)
        except DaemonUnavailable:
            pass
        else:
            return str(reply["redis_url"]), str(reply["key_prefix"])
    settings = settings or _settings(args)
    direct: str | None = args.redis_url or settings.redis_url
    if not direct:
        raise _no_daemon(socket)
    return direct, settings.key_prefix


def _over_redis(url: str, prefix: str, call: Callable[[SupervisorClient], Awaitable[_T]]) -> _T:
    """One client call straight to Redis (redis-py and asyncio load only here)."""
    import anyio

    from .client import SupervisorClient

    async def run() -> _T:
        async with SupervisorClient(url, prefix) as client:
            return await call(client)

    try:
        return anyio.run(run)
    except Exception as exc:
        # A wrong URL form (a cluster node through redis://...) named with the URL used.
        failure = _redis_failure(exc, url)
        if failure is None or _unreachable(exc):
            raise
        raise CliError(*failure) from None


def _wait(url: str, prefix: str, task_id: str, limit_s: float | None, as_json: bool) -> int:
    try:
        record = _over_redis(url, prefix, lambda client: client.wait(task_id, limit_s))
    except TimeoutError:
        raise CliError(
            f"task {task_id} did not end within {limit_s:g}s", EXIT_WAIT_TIMEOUT
        ) from None
    _emit(record, as_json)
    return EXIT_OK if record.get("state") == "completed" else EXIT_FAILED


def _gateway(args: argparse.Namespace) -> int:
    """``gateway``: FastAPI, uvicorn and ADK load here, for this command alone."""
    settings = _settings(args)
    url: str | None = args.redis_url or settings.redis_url
    prefix = settings.key_prefix
    if not url:  # the embedded Redis of the local daemon: it says where
        url, prefix = _daemon_redis(args.socket or settings.status_socket, args.wait_daemon)
    from .gateway import serve

    serve(settings, redis_url=url, key_prefix=prefix, host=args.host, port=args.port)
    return EXIT_OK


def _daemon_redis(socket: Path, wait_s: float) -> tuple[str, str]:
    """The local daemon's Redis URL and key prefix, waiting up to ``wait_s`` for it to answer
    (``make run`` starts the gateway beside a daemon that is still starting)."""
    import logging
    import time

    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            reply = request(socket, "ping", io_timeout_s=10)
        except DaemonUnavailable:
            if time.monotonic() >= deadline:
                raise _no_daemon(socket) from None
            if not said:
                logging.getLogger("adk_supervisor").info(
                    "gateway: no redis_url set: waiting up to %gs for the daemon on %s to say "
                    "where its Redis is",
                    wait_s,
                    socket,
                )
                said = True
            time.sleep(0.2)
            continue
        return str(reply["redis_url"]), str(reply["key_prefix"])


def _verify_session(args: argparse.Namespace) -> int:
    """``verify-session``: recomputes the session's chain (no ADK import: it needs none)."""
    socket, settings = _socket_and_settings(args)
    url, prefix = _redis_target(args, socket, settings)
    import anyio

    from agent_runtime.redis_connection import connect
    from agent_runtime.session_integrity import verify_chain

    async def run() -> Any:
        client = connect(url)
        try:
            return await verify_chain(client, prefix, args.app, args.user_id, args.session_id)
        finally:
            await client.aclose()

    report = anyio.run(run)
    if report.problem == "not_found":
        raise CliError(report.detail, EXIT_NOT_FOUND)
    if args.json:
        _print(json.dumps(report.as_dict(), sort_keys=True))
    else:
        _print(report.detail)
    return EXIT_OK if report.ok else EXIT_FAILED


def _check_config(args: argparse.Namespace, settings: Settings) -> int:
    from agent_runtime.redis_url import describe_topology, is_cluster_url, redact_url

    from .config import find_config_path
    from .run_acl import explain_run_credentials

    source = find_config_path(args.config)
    from .daemon.durability import durable_app_problems

    if problems := durable_app_problems(settings):
        for problem in problems:
            print(f"configuration error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    data = settings.model_dump(mode="json")
    data["socket_mode"] = f"{settings.socket_mode:04o}"
    # Under systemd this output (ExecStartPre) goes to the journal: no passwords.
    for key in ("redis_url", "run_redis_url"):
        if data[key]:
            data[key] = redact_url(data[key])
    credentials = explain_run_credentials(
        settings.run_credentials,
        settings.key_prefix,
        settings.run_redis_url,
        cluster=bool(settings.redis_url and is_cluster_url(settings.redis_url)),
    )
    if args.json:
        _print(
            json.dumps(
                {
                    "ok": True,
                    "source": str(source) if source else None,
                    "settings": data,
                    "run_credentials": credentials,
                    "redis": describe_topology(settings.redis_url),
                }
            )
        )
        return EXIT_OK
    _print(
        f"configuration OK ({source or 'no file: built-in defaults'}, plus ADK_SUPERVISOR_* variables)"
    )
    apps = data.pop("apps")
    _emit(data, False)
    for name, ref in sorted(apps.items()):
        _print(f"app {name} = {ref}")
    _print(f"redis: {describe_topology(settings.redis_url)}")
    for line in credentials:
        _print(f"run_credentials: {line}")
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


def _redis_failure(exc: BaseException, url: str | None) -> tuple[str, int] | None:
    """One line and an exit code for a Redis error that reached the top (no traceback for
    Redis's replies); None for anything else. redis-py is loaded only if it was used."""
    connection = sys.modules.get("agent_runtime.redis_connection")
    if connection is None:
        return None
    url = url or os.environ.get("ADK_SUPERVISOR_REDIS_URL")
    explained = connection.explain_redis_error(exc, url)
    if explained is not None:
        return " ".join(explained.split()), EXIT_USAGE
    if isinstance(exc, connection.RedisUnavailableError):
        return f"cannot reach Redis: {' '.join(str(exc).split())}", EXIT_UNAVAILABLE
    if isinstance(exc, connection.RedisClusterException):
        return f"Redis Cluster: {' '.join(str(exc).split())}", EXIT_UNAVAILABLE
    if isinstance(exc, connection.RedisError):
        return f"Redis refused the command: {' '.join(str(exc).split())}", EXIT_FAILED
    return None


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
    try:
        if args.command == "check-config":
            return _check_config(args, _settings(args))
        if args.command == "run":
            from .daemon.foreground import run_foreground

            settings = _settings(args)
            run_foreground(settings, args.redis_url or settings.redis_url)
            return EXIT_OK
        if args.command == "gateway":
            return _gateway(args)
        if args.command == "verify-session":
            return _verify_session(args)
        return _client_command(args)
    except ConfigError as exc:
        print(f"adk-supervisor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CliError as exc:
        print(f"adk-supervisor: {exc}", file=sys.stderr)
        return exc.code
    except TaskNotFoundError as exc:
        print(f"adk-supervisor: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except DaemonUnavailable as exc:
        print(f"adk-supervisor: cannot reach Redis or the daemon: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except SessionBusyError as exc:  # submit --if-busy refuse: not queued
        print(f"adk-supervisor: {exc}", file=sys.stderr)
        return EXIT_FAILED
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
        failure = _redis_failure(exc, getattr(args, "redis_url", None))
        if failure is None:
            raise
        message, code = failure
        print(f"adk-supervisor: {message}", file=sys.stderr)
        return code
