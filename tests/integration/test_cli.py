"""The ``adk-supervisor`` CLI as scripts use it: help, output formats, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.cli import _COMMANDS

from .daemon_harness import ROOT, Daemon

A = "examples.agents:"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


@pytest.mark.parametrize("command", sorted(_COMMANDS))
def test_every_command_has_help_with_an_example(command: str) -> None:
    shown = _cli(command, "--help")
    assert shown.returncode == 0 and "example:" in shown.stdout and "adk-supervisor" in shown.stdout


def test_bad_usage_exits_2() -> None:
    assert _cli("submit", "weather").returncode == 2  # no message, no --user-id
    assert _cli("frobnicate").returncode == 2


@pytest.fixture(scope="module")
def daemon(redis_server: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    from supervisor.ops.redis_server import RedisServer

    assert isinstance(redis_server, RedisServer)
    d = Daemon(
        redis_server.url, "cli-t:", tmp_path_factory.mktemp("cli"), "auto", ADK_EXAMPLE_HOLD_S="30"
    )
    d.start()
    yield d
    d.stop()


def test_submit_prints_the_bare_task_id_and_wait_exits_by_state(daemon: Daemon) -> None:
    submitted = daemon.cli("submit", A + "weather_agent", "hi", "--user-id", "u")
    task = submitted.stdout.strip()
    assert submitted.returncode == 0 and len(task) == 32 and "\n" not in task
    waited = daemon.cli("wait", task, "--json")
    assert waited.returncode == 0 and json.loads(waited.stdout)["state"] == "completed"

    failing = daemon.cli("submit", A + "raising_agent", "go", "--user-id", "u", "--wait")
    assert failing.returncode == 1 and "state" in failing.stdout and "failed" in failing.stdout

    slow = daemon.cli("submit", A + "slow_agent", "go", "--user-id", "u", "--task-id", "cli-slow")
    assert slow.stdout.strip() == "cli-slow"
    assert daemon.cli("wait", "cli-slow", "--timeout", "0.5").returncode == 124
    aborted = daemon.cli("abort", "cli-slow", "--reason", "from the cli")
    assert aborted.returncode == 0 and "abort_published_to" in aborted.stdout
    record = daemon.cli("wait", "cli-slow", "--json")
    assert record.returncode == 1
    assert json.loads(record.stdout)["reason"] == "from the cli"
    # A reader that leaves early (`| head -1`) does not change wait's exit code.
    piped = subprocess.run(
        [
            "bash",
            "-c",
            f"{sys.executable} -m supervisor wait cli-slow | head -1; exit ${{PIPESTATUS[0]}}",
        ],
        # Unbuffered: every line is its own write, so later ones meet the closed pipe.
        env={**daemon.env, "PYTHONUNBUFFERED": "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.returncode == 1 and piped.stdout.startswith("task_id")
    assert "Traceback" not in piped.stderr
    again = daemon.cli("submit", A + "slow_agent", "go", "--user-id", "u", "--task-id", "cli-slow")
    assert again.returncode == 2 and "already exists" in again.stderr


def test_unknown_task_exits_4_over_socket_and_over_redis(daemon: Daemon) -> None:
    assert daemon.cli("get", "no-such-task").returncode == 4
    direct = daemon.cli("--redis-url", daemon.redis_url, "get", "no-such-task")
    assert direct.returncode == 4 and "no task 'no-such-task'" in direct.stderr


def test_get_over_redis_directly_from_another_host(daemon: Daemon) -> None:
    task = daemon.cli("submit", A + "weather_agent", "hi", "--user-id", "u").stdout.strip()
    # --redis-url bypasses the socket: what a client on another host does.
    got = daemon.cli("--redis-url", daemon.redis_url, "wait", task)
    assert got.returncode == 0 and got.stdout.splitlines()[1].split() == ["state", "completed"]


def test_ps_and_status_tables(daemon: Daemon) -> None:
    status = daemon.cli("status")
    assert status.returncode == 0
    assert f"node            {daemon.node_id}" in status.stdout
    assert "redis" in status.stdout and "connected" in status.stdout
    ps = daemon.cli("ps", "--json")
    assert ps.returncode == 0 and isinstance(json.loads(ps.stdout), list)


def test_status_without_a_daemon_says_what_to_do(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "ADK_SUPERVISOR_STATE_DIR": str(tmp_path)}
    for command in ("status", "ps", "get"):
        shown = _cli(command, *(["x"] if command == "get" else []), env=env)
        assert shown.returncode == 3 and "no daemon answers on" in shown.stderr
        assert "adk-supervisor run" in shown.stderr


@pytest.mark.parametrize("path", ["socket", "redis"])
def test_submit_timeout_reaches_the_run_through_either_path(daemon: Daemon, path: str) -> None:
    # Through the socket the timeout used to be taken as the client's own I/O
    # timeout, so the daemon never saw it and the run went on past it.
    direct = ["--redis-url", daemon.redis_url] if path == "redis" else []
    done = daemon.cli(
        *direct,
        "submit",
        A + "slow_agent",
        "go",
        "--user-id",
        "u",
        "--timeout",
        "1",
        "--wait",
        "--json",
    )
    record = json.loads(done.stdout)
    assert record["state"] == "timed_out" and record["timeout_s"] == "1.0", done.stderr
    assert float(record["duration_s"]) < 20
