"""``adk-supervisor``: run the daemon, and submit, abort, read and wait for tasks."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
from pydantic import ValidationError

from .client import SupervisorClient, TaskNotFoundError
from .config import Settings, load_settings
from .daemon import Supervisor
from .redis_server import RedisServer, RedisServerError

__all__ = ["main"]

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adk-supervisor",
        description="Run Google ADK agent runs in supervised process trees.",
        epilog="example: adk-supervisor submit examples.agents:weather_agent 'hi' --user-id u1 --wait",
    )
    parser.add_argument("--config", type=Path, help="TOML config file (default: $ADK_SUPERVISOR_CONFIG, "
                        "else /etc/adk-supervisor/config.toml if present)")  # fmt: skip
    parser.add_argument("--redis-url", help="override redis_url from the config")
    parser.add_argument("--json", action="store_true", help="print data as JSON")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the daemon in the foreground",
                   epilog="example: adk-supervisor --config config.toml run")  # fmt: skip
    p = sub.add_parser(
        "submit", help="queue a run", epilog="example: adk-supervisor submit slow 'go' --user-id u1"
    )
    p.add_argument("app", help="app name from [apps], or package.module:attribute")
    p.add_argument("message")
    p.add_argument("--user-id", required=True)
    p.add_argument("--session-id")
    p.add_argument("--task-id")
    p.add_argument("--timeout", type=float, help="seconds before the run is killed as timed_out")
    p.add_argument("--wait", action="store_true", help="wait for the run to end")
    p = sub.add_parser(
        "abort", help="abort a task", epilog="example: adk-supervisor abort 3f2a... --reason stuck"
    )
    p.add_argument("task_id")
    p.add_argument("--reason", default="")
    p = sub.add_parser(
        "get", help="print a task record", epilog="example: adk-supervisor get 3f2a..."
    )
    p.add_argument("task_id")
    p = sub.add_parser("wait", help="wait for a task to end; exit 0 only if it completed",
                       epilog="example: adk-supervisor wait 3f2a... --timeout 60")  # fmt: skip
    p.add_argument("task_id")
    p.add_argument("--timeout", type=float)
    return parser


def _print(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(record, sort_keys=True))
        return
    width = max(map(len, record), default=0)
    for key in sorted(record):
        print(f"{key:<{width}}  {record[key]}")


async def _serve(settings: Settings, redis_url: str | None) -> None:
    supervisor = Supervisor(settings, redis_url=redis_url)
    async with anyio.create_task_group() as tg:

        async def on_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    logging.getLogger("adk_supervisor").info(
                        "%s: stopping", signal.Signals(signum).name
                    )
                    supervisor.stop()
                    return

        tg.start_soon(on_signals)
        await supervisor.serve()
        tg.cancel_scope.cancel()


async def _client_command(args: argparse.Namespace, settings: Settings, url: str) -> int:
    async with SupervisorClient(url, settings.key_prefix) as client:
        if args.command == "submit":
            task_id = await client.submit(args.app, args.message, user_id=args.user_id,
                                          session_id=args.session_id, task_id=args.task_id,
                                          timeout_s=args.timeout)  # fmt: skip
            if not args.wait:
                _print({"task_id": task_id}, args.json)
                return 0
            record = await client.wait(task_id)
            _print(record, args.json)
            return 0 if record.get("state") == "completed" else 1
        if args.command == "abort":
            heard = await client.abort(args.task_id, args.reason)
            _print({"task_id": args.task_id, "abort_published_to": heard}, args.json)
            return 0
        if args.command == "get":
            _print(await client.get(args.task_id), args.json)
            return 0
        record = await client.wait(args.task_id, args.timeout)
        _print(record, args.json)
        return 0 if record.get("state") == "completed" else 1


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; returns the exit code (2 on bad usage or bad config)."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except (ValidationError, FileNotFoundError, ValueError) as exc:
        print(f"adk-supervisor: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    url = args.redis_url or settings.redis_url or "redis://localhost:6379/0"
    try:
        if args.command == "run":
            if args.redis_url or settings.redis_url:
                anyio.run(_serve, settings, url)
                return 0
            # No redis_url configured: run on a private, persistent Redis in state_dir.
            with RedisServer(settings.state_dir.resolve() / "redis", appendonly=True) as embedded:
                logging.getLogger("adk_supervisor").info(
                    "no redis_url configured: embedded Redis at %s (data in %s)",
                    embedded.url, embedded.data_dir,
                )  # fmt: skip
                anyio.run(_serve, settings, embedded.url)
            return 0
        return anyio.run(_client_command, args, settings, url)
    except RedisServerError as exc:
        print(f"adk-supervisor: {exc}", file=sys.stderr)
        return 1
    except TaskNotFoundError as exc:
        print(f"adk-supervisor: {exc}", file=sys.stderr)
        return 1
    except TimeoutError:
        print("adk-supervisor: timed out waiting for the task", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
