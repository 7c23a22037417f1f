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


def test_requests_waiting_for_a_full_queue_are_asked_again_when_the_server_is_lost(
    tmp_path: Path, redis_url: str
) -> None:
    # A burst while the server is busy fills its queue: spawns wait to send. When the
    # server is lost, those waits ended with anyio's ClosedResourceError, no SpawnError,
    # which the daemon does not catch (the run stayed `starting`, its leaf leaked).
    result = _probe(redis_url, tmp_path, "queue-full")
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


_CLONE_PROBE = """
import json, os, sys, threading
from pathlib import Path
from agent_runtime._clone_into import clone_into
leaf = Path(sys.argv[1])
assert clone_into is not None, "clone3 into a cgroup is not usable here"
fd = os.open(leaf, os.O_RDONLY | os.O_DIRECTORY)
r, w = os.pipe()
pid = clone_into(fd)
if pid == 0:
    # What glibc's fork() would have set up: the thread id, working threads and locks.
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    facts = {
        "cgroup": Path("/proc/self/cgroup").read_text(),
        "tid_is_pid": threading.get_native_id() == os.getpid(),
        "thread_ok": not t.is_alive(),
    }
    os.write(w, json.dumps(facts).encode())
    os._exit(0)
os.close(w)
facts = json.loads(os.read(r, 65536))
_, status = os.waitpid(pid, 0)
print(json.dumps({**facts, "status": status}))
"""


def test_a_process_cloned_into_a_cgroup_is_born_there_with_a_working_interpreter(
    tmp_path: Path,
) -> None:
    # The fork server's intermediates are created this way (clone3 CLONE_INTO_CGROUP).
    from supervisor.process.containment import find_writable_cgroup2

    root = find_writable_cgroup2()
    assert root is not None, "needs a writable cgroup v2 hierarchy: run the tests as root"
    leaf = root / f"clone-into-{os.getpid()}"
    leaf.mkdir()
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _CLONE_PROBE, str(leaf)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        leaf.rmdir()
    assert probe.returncode == 0, probe.stderr
    facts = json.loads(probe.stdout)
    line = next(x for x in facts["cgroup"].splitlines() if x.startswith("0::"))
    assert line.endswith(f"/{leaf.name}"), facts
    assert facts["tid_is_pid"] and facts["thread_ok"] and facts["status"] == 0, facts
