"""``python -m tests.integration.fork_burst_probe REDIS_URL STATE_DIR CASE``: spawns several
runs at once through one real fork server, as the daemon does, and prints what each run was
the moment its PID was reported, as JSON (then kills them all).

CASE is ``parallel`` (every run in its own cgroup leaf), ``one-bad`` (one of them names a
cgroup that does not exist), ``one-frozen`` (one of them names a frozen leaf, so its
intermediate stops as it joins: the others must be spawned all the same, then it is
thawed), ``server-killed`` (the server is stopped before it reads
the requests, then killed with all of them in flight) or ``queue-full`` (the same, with a
send buffer so small that some requests wait to be sent when the server is lost).

A separate process because the runs are orphaned to the nearest child subreaper: this
probe is one, as the daemon is.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import uuid
from pathlib import Path

import anyio

from agent_runtime.process_control import set_child_subreaper
from agent_runtime.run_spec import TASK_ENV, RunSpec
from supervisor.errors import SpawnError
from supervisor.process import ForkServerSpawner, RunContainer
from supervisor.process.containment import find_writable_cgroup2

RUNS = 6


def _facts(pid: int) -> dict[str, object]:
    """What the run is right after the spawn returned (before anything else touches it)."""
    cgroup = next(
        line[3:]
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        if line.startswith("0::")
    )
    return {"pid": pid, "pgid": os.getpgid(pid), "sid": os.getsid(pid), "cgroup": cgroup}


def _marked(task_id: str) -> list[int]:
    """Live processes that carry the run's marker (the server stamps it into each run)."""
    marker = f"{TASK_ENV}={task_id}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes()
            state = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and marker in environ.split(b"\0"):
            found.append(int(name))
    return found


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _end(pids: list[int], base: Path) -> None:
    """Kills and reaps the runs, removes their leaves (whatever state the probe left)."""
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for pid in pids:
        os.waitpid(pid, 0)
    leaves = [leaf for leaf in base.iterdir() if leaf.is_dir()]
    for leaf in leaves:  # a stuck intermediate, if the probe failed
        (leaf / "cgroup.freeze").write_text("0")
        (leaf / "cgroup.kill").write_text("1")
    for leaf in leaves:
        while "populated 1" in (leaf / "cgroup.events").read_text():
            time.sleep(0.01)
        leaf.rmdir()
    base.rmdir()


async def main(redis_url: str, state: Path, case: str) -> dict[str, object]:
    set_child_subreaper()
    (state / "specs").mkdir(parents=True, exist_ok=True)
    root = find_writable_cgroup2()
    if root is None:
        raise SystemExit("needs a writable cgroup v2 hierarchy (run as root)")
    own = _facts(os.getpid())["cgroup"]  # root is this cgroup, as /proc/<pid>/cgroup names it
    assert isinstance(own, str)
    base = root / f"fork-burst-{uuid.uuid4().hex[:8]}"
    base.mkdir()
    spawner = ForkServerSpawner([], state / "fork-server.log", state / "specs")
    spawner.start()
    results: dict[str, object] = {}
    pids: list[int] = []
    try:
        # The first answer comes once the server preloaded: the burst then meets a warm one.
        warm = RunSpec(
            "warm", "examples.agents:slow_agent", None, "u", "w", "go", redis_url, "p:", None
        )
        pids.append(await spawner.spawn(warm, RunContainer("warm"), state / "warm.log"))
        if case in ("server-killed", "queue-full"):
            assert spawner.server_pid is not None
            os.kill(spawner.server_pid, signal.SIGSTOP)
        if case == "queue-full":
            # The kernel's smallest send buffer holds a request or two: the rest wait.
            sock = spawner._sock  # the race needs the real socket
            assert sock is not None
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)

        async def one(i: int) -> None:
            task = f"burst-{i}"
            leaf = base / f"run-{i}"
            if case == "one-bad" and i == 0:
                leaf = base / "no-such-leaf"
            else:
                leaf.mkdir()
            if case == "one-frozen" and i == 0:
                (leaf / "cgroup.freeze").write_text("1")
            spec = RunSpec(
                task, "examples.agents:slow_agent", None, "u", task, "go", redis_url, "p:", None
            )
            try:
                pid = await spawner.spawn(spec, RunContainer(task, leaf), state / f"{task}.log")
            except SpawnError as exc:
                results[task] = {"error": str(exc)}
                return
            pids.append(pid)
            results[task] = {**_facts(pid), "leaf": f"{own.rstrip('/')}/{leaf.relative_to(root)}"}
            spawned.append(task)

        spawned: list[str] = []
        async with anyio.create_task_group() as tg:
            for i in range(RUNS):
                tg.start_soon(one, i)
            if case == "one-frozen":
                # One spawn at a time would wait behind the frozen one for ever.
                with anyio.fail_after(60):
                    while len(spawned) < RUNS - 1:
                        await anyio.sleep(0.01)
                results["order"] = list(spawned)
                (base / "run-0" / "cgroup.freeze").write_text("0")
            if case in ("server-killed", "queue-full"):
                # Every request is sent, or waits to be (the spawns wait for their
                # replies), before the kill.
                while len(os.listdir(state / "specs")) < RUNS:
                    await anyio.sleep(0.01)
                await anyio.sleep(0.2)
                os.kill(spawner.server_pid, signal.SIGKILL)  # type: ignore[arg-type]
        # The runs are the probe's (orphaned) children once their intermediates exited.
        for pid in pids:
            while _ppid(pid) != os.getpid():
                await anyio.sleep(0.01)
        # Each started run stamps its marker once told to go: wait for all, then count.
        order = results.pop("order", None)
        started = [task for task, facts in results.items() if "pid" in facts]  # type: ignore[operator]
        with anyio.fail_after(60):
            while not all(_marked(task) for task in started):
                await anyio.sleep(0.05)
        await anyio.sleep(0.3)  # time for a second copy of a run, if there were one, to start
        return {
            "runs": results,
            "restarts": spawner.restarts,
            "marked": {task: len(_marked(task)) for task in results},
            "order": order,
        }
    finally:
        spawner.close()
        _end(pids, base)


if __name__ == "__main__":
    print(json.dumps(anyio.run(main, sys.argv[1], Path(sys.argv[2]), sys.argv[3])))
