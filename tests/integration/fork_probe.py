"""``python -m tests.integration.fork_probe REDIS_URL STATE_DIR``: spawns one run through a
real fork server, as the daemon does, and prints whether the run led its own process group
the moment its PID was reported (then kills it)."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import anyio

from agent_runtime.process_control import set_child_subreaper
from agent_runtime.run_spec import RunSpec
from supervisor.process import ForkServerSpawner, RunContainer


async def main(redis_url: str, state: Path) -> tuple[int, bool]:
    set_child_subreaper()  # the run is orphaned to us, as to the daemon
    (state / "specs").mkdir(parents=True, exist_ok=True)
    spawner = ForkServerSpawner([], state / "fork-server.log", state / "specs")
    spawner.start()
    try:
        spec = RunSpec(
            "probe",
            "examples.agents:slow_agent",
            None,
            "u",
            "probe",
            "go",
            redis_url,
            "probe:",
            None,
        )
        pid = await spawner.spawn(spec, RunContainer("probe"), state / "probe.log")
        return pid, os.getpgid(pid) == pid
    finally:
        spawner.close()


if __name__ == "__main__":
    pid, leads = anyio.run(main, sys.argv[1], Path(sys.argv[2]))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    print(json.dumps({"pid": pid, "leads_its_group": leads}))
