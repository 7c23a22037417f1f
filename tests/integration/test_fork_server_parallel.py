"""The fork server spawns several runs at once, each with every guarantee of a lone spawn:
born in its own cgroup leaf, its own session and process group by the time its PID is
reported, the daemon's child; a request that fails fails alone; a server lost with
requests in flight is replaced and each of them runs exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _probe(redis_url: str, state: Path, case: str) -> dict[str, Any]:
    probe = subprocess.run(
        [sys.executable, "-m", "tests.integration.fork_burst_probe", redis_url, str(state), case],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probe.returncode == 0, probe.stderr
    result: dict[str, Any] = json.loads(probe.stdout.splitlines()[-1])
    return result


def _assert_contained(runs: dict[str, Any]) -> None:
    for task, facts in runs.items():
        assert facts["pgid"] == facts["pid"], (task, facts)
        assert facts["sid"] == facts["pid"], (task, facts)
        assert facts["cgroup"] == facts["leaf"], (task, facts)


def test_concurrent_spawns_each_land_in_their_own_cgroup_and_group(
    tmp_path: Path, redis_url: str
) -> None:
    result = _probe(redis_url, tmp_path, "parallel")
    runs = result["runs"]
    assert len(runs) == 6 and all("pid" in facts for facts in runs.values()), runs
    assert len({facts["pid"] for facts in runs.values()}) == 6
    assert len({facts["cgroup"] for facts in runs.values()}) == 6
    _assert_contained(runs)
    assert result["marked"] == dict.fromkeys(runs, 1)
    assert result["restarts"] == 0


def test_a_failing_request_fails_alone(tmp_path: Path, redis_url: str) -> None:
    # Its intermediate cannot join the cgroup it names: that spawn gets the error, the
    # others started beside it are unaffected and the server is not replaced.
    result = _probe(redis_url, tmp_path, "one-bad")
    runs = result["runs"]
    assert "could not fork run burst-0" in runs.pop("burst-0")["error"]
    assert len(runs) == 5 and all("pid" in facts for facts in runs.values()), runs
    _assert_contained(runs)
    assert result["marked"] == {"burst-0": 0, **dict.fromkeys(runs, 1)}
    assert result["restarts"] == 0


def test_a_server_lost_with_requests_in_flight_is_replaced_once_and_each_run_starts_once(
    tmp_path: Path, redis_url: str
) -> None:
    result = _probe(redis_url, tmp_path, "server-killed")
    runs = result["runs"]
    assert len(runs) == 6 and all("pid" in facts for facts in runs.values()), runs
    _assert_contained(runs)
    assert result["marked"] == dict.fromkeys(runs, 1)
    assert result["restarts"] == 1


def test_spawns_do_not_wait_for_one_whose_intermediate_is_stuck(
    tmp_path: Path, redis_url: str
) -> None:
    # One run's leaf is frozen: its intermediate stops as it joins. The server served one
    # spawn at a time, so the five others waited behind it; now they are answered while
    # it is stuck, and it is answered once thawed, born in its own leaf like the rest.
    result = _probe(redis_url, tmp_path, "one-frozen")
    runs = result["runs"]
    assert sorted(result["order"]) == [f"burst-{i}" for i in range(1, 6)]
    assert len(runs) == 6 and all("pid" in facts for facts in runs.values()), runs
    _assert_contained(runs)
    assert result["marked"] == dict.fromkeys(runs, 1)
