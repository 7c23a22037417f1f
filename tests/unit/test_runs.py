"""The run table's kill decisions, against a containment that records what it was asked."""

from __future__ import annotations

import contextlib
import os
import signal

import anyio
import pytest

from agent_runtime.run_spec import RunSpec
from agent_runtime.task_store import TaskState
from supervisor.daemon.reaper import ExitStatus, Reaper
from supervisor.daemon.runs import ActiveRun, RunTable
from supervisor.process.containment import RunContainer

pytestmark = pytest.mark.anyio


class RecordingContainment:
    """Records each kill instead of sending it (these runs have no processes)."""

    name = "recording"

    def __init__(self) -> None:
        self.kills: list[tuple[str, int]] = []

    def prepare(self, task_id: str) -> RunContainer:
        return RunContainer(task_id)

    def kill(self, container: RunContainer, leader_pidfd: int | None, pgid: int, sig: int) -> None:
        self.kills.append((container.task_id, sig))

    def populated(self, container: RunContainer) -> bool:
        return False

    def release(self, container: RunContainer) -> None:
        return None

    def leftovers(self) -> list[RunContainer]:
        return []

    def close(self) -> None:
        return None


def _run(task_id: str) -> ActiveRun:
    spec = RunSpec(task_id, "m:a", None, "u", task_id, "hi", "redis://x", "p:", None)
    return ActiveRun(spec, RunContainer(task_id), 4_000_000, None, 0, 0.0, None)


def _table(grace_s: float = 0.0) -> tuple[RunTable, RecordingContainment]:
    containment = RecordingContainment()
    return RunTable(containment, Reaper(), grace_s), containment


async def test_the_first_kill_is_the_one_recorded() -> None:
    table, containment = _table()
    run = _run("t1")
    table.add(run)
    assert table.abort("t1", "operator") == "killed"
    table.kill_all("shutting down")
    assert run.kill is not None and run.kill.state is TaskState.ABORTED
    assert run.kill.reason == "operator"
    assert containment.kills == [("t1", signal.SIGKILL)]


async def test_an_abort_during_the_start_is_parked_then_kills_at_registration() -> None:
    table, containment = _table()
    assert table.begin_start("t1") and not table.begin_start("t1")  # a duplicate entry
    assert table.abort("t1", "too early") == "parked"
    assert table.parked_abort("t1") == "too early"
    run = _run("t1")
    table.add(run)
    assert run.kill is not None and run.kill.reason == "too early"
    assert containment.kills == [("t1", signal.SIGKILL)]
    assert table.abort("nobody", "x") == "unknown"


async def test_a_run_that_already_exited_keeps_its_outcome_and_is_only_swept() -> None:
    table, containment = _table()
    run = _run("t1")
    table.add(run)
    run.on_exit(ExitStatus(0, None))
    table.abort("t1", "late")
    assert run.kill is None  # exited 0 stays completed
    assert containment.kills == [("t1", signal.SIGKILL)]  # leftovers are swept anyway


async def test_a_grace_period_sends_sigterm_first() -> None:
    table, containment = _table(grace_s=2.0)
    run = _run("t1")
    table.add(run)
    table.apply_marks({"t1": "marked", "other": "not here"})
    assert containment.kills == [("t1", signal.SIGTERM)]
    assert run.kill is not None and run.kill.signals == [signal.SIGTERM]


async def test_a_record_a_peer_ended_kills_the_run_as_failed() -> None:
    table, _ = _table()
    run = _run("t1")
    table.add(run)
    table.kill_ended_elsewhere("t1", "failed")
    assert run.kill is not None and run.kill.state is TaskState.FAILED
    assert run.kill.reason == "ended by a peer as failed during an outage"


class CountingContainment(RecordingContainment):
    """Counts kills and tree checks; the processes are killed by the test, one at a time."""

    def __init__(self) -> None:
        super().__init__()
        self.checks = 0

    def populated(self, container: RunContainer) -> bool:
        self.checks += 1
        return False


async def test_a_mass_kill_wakes_each_run_at_its_own_exit_only() -> None:
    """Killed at once, each run waits for its own leader: an exit in one run's tree must not
    make every other killed run re-kill and re-read its tree (O(runs) per exit, O(runs^2)
    for a mass abort of 1,000 runs)."""
    containment = CountingContainment()
    reaper = Reaper()
    table = RunTable(containment, reaper, 0.0)
    count = 20
    runs = []
    for i in range(count):
        pid = os.posix_spawnp("sleep", ["sleep", "600"], os.environ)
        run = _run(f"t{i}")
        run.pid = pid
        runs.append(run)
    ended: list[ActiveRun] = []

    async def watch(run: ActiveRun) -> None:
        await table.watch(run)
        ended.append(run)

    try:
        async with anyio.create_task_group() as tg:
            await tg.start(reaper.run)
            for run in runs:
                table.add(run)
                reaper.watch(run.pid, run.on_exit)
                tg.start_soon(watch, run)
            table.kill_all("stopping")
            await anyio.sleep(0.1)  # every watch is waiting for its tree now
            for run in runs:  # the leaders die one by one
                os.kill(run.pid, signal.SIGKILL)
                with anyio.fail_after(30):
                    while run not in ended:
                        await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    finally:
        for run in runs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(run.pid, signal.SIGKILL)
    assert len(ended) == count
    # kill_all's SIGKILL, one more as the watch begins, and one tree check after the reap.
    assert len(containment.kills) <= 2 * count, len(containment.kills)
    assert containment.checks <= 2 * count, containment.checks
