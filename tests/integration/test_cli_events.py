"""The CLI's view of a run's output: `submit --follow`, `events`, structured input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from supervisor.client import SupervisorClient

from .daemon_harness import ROOT, Daemon, until_state

pytestmark = pytest.mark.anyio

A = "examples.agents:"


def _popen(daemon: Daemon, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "supervisor", *args],
        env=daemon.env,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_submit_follow_prints_the_run_as_it_happens(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon()
    done = daemon.cli("submit", A + "weather_agent", "weather?", "--user-id", "u", "--follow")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "[queued]" and lines[-1] == "[completed] exited 0", lines
    assert 'weather -> get_weather({"city": "Zurich"})' in lines
    assert any(line.startswith("weather <- get_weather: {") for line in lines)
    assert any(line.startswith("weather: The tool said:") for line in lines)
    assert done.stderr.startswith("task ")


async def test_streamed_text_is_printed_once_as_it_comes(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon()
    args = ("submit", A + "story_agent", "tell", "--user-id", "u", "--follow", "--stream")
    done = daemon.cli(*args)
    assert done.returncode == 0, done.stderr
    story = [line for line in done.stdout.splitlines() if line.startswith("story:")]
    assert story == ["story: " + "".join(f"word{i} " for i in range(12))], done.stdout


async def test_events_replays_a_finished_run_as_json_lines(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    daemon = start_daemon()
    task = await client.submit(A + "weather_agent", "hi", user_id="u")
    await client.wait(task, 60)
    done = daemon.cli("events", task, "--json")
    assert done.returncode == 0, done.stderr
    entries = [json.loads(line) for line in done.stdout.splitlines()]
    assert entries[-1]["type"] == "state" and entries[-1]["data"]["state"] == "completed"
    after = daemon.cli("events", task, "--json", "--after", entries[-2]["id"])
    assert [json.loads(line) for line in after.stdout.splitlines()] == entries[-1:]
    missing = daemon.cli("events", "no-such-task")
    assert missing.returncode == 4 and "no task 'no-such-task'" in missing.stderr


async def test_message_json_and_state_delta_reach_the_run(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    daemon = start_daemon()
    content = {"role": "user", "parts": [{"text": "weather?"}, {"text": "in Oslo"}]}
    proc = _popen(
        daemon,
        *("submit", A + "weather_agent", "--user-id", "u", "--message-json", "-"),
        *("--state-delta", '{"unit": "C"}', "--wait", "--json"),
    )
    out, err = proc.communicate(json.dumps(content), timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["state"] == "completed"
    bad = daemon.cli("submit", "weather", "hi", "--user-id", "u", "--state-delta", "[1]")
    assert bad.returncode == 2 and "--state-delta must be a JSON object" in bad.stderr
    empty = daemon.cli("submit", "weather", "--user-id", "u")
    assert empty.returncode == 2 and "give a message" in empty.stderr


async def test_ctrl_c_while_following_aborts_the_run_unless_detached(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    daemon = start_daemon()
    for detach in (False, True):
        extra = ("--detach",) if detach else ()
        proc = _popen(
            daemon, "submit", A + "slow_agent", "go", "--user-id", "u", "--follow", *extra
        )
        assert proc.stderr is not None and proc.stdout is not None
        task = proc.stderr.readline().split()[1]
        await until_state(client, task, "running")
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 1, err
        if detach:
            assert "stopped following" in err
            assert (await client.get(task))["state"] == "running"
            await client.abort(task, "cleanup")
        else:
            assert "aborted" in err
            record = await client.wait(task, 30)
            assert record["state"] == "aborted" and record["reason"] == "interrupted (Ctrl-C)"


async def test_ctrl_c_at_once_after_submit_aborts_the_run(
    start_daemon: Callable[..., Daemon], client: SupervisorClient
) -> None:
    # The CLI loads its Redis client after printing the task id: a Ctrl-C then (a busy
    # host takes a second) ended the CLI with 130 and left the run going.
    daemon = start_daemon()
    proc = _popen(daemon, "submit", A + "slow_agent", "go", "--user-id", "u", "--follow")
    assert proc.stderr is not None
    task = proc.stderr.readline().split()[1]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert "aborted" in err
    record = await client.wait(task, 30)
    assert record["state"] == "aborted" and record["reason"] == "interrupted (Ctrl-C)"
