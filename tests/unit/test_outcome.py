"""A run's terminal state from its wait status and the supervisor's own kill."""

from __future__ import annotations

import resource
import signal

from agent_runtime.task_store import TaskState
from supervisor.daemon.outcome import outcome, signal_name
from supervisor.daemon.reaper import ExitStatus
from supervisor.daemon.runs import KillOrder


def _exited(code: int) -> ExitStatus:
    return ExitStatus(code << 8, None)


def _signalled(number: int) -> ExitStatus:
    return ExitStatus(number, None)


def test_exit_0_is_completed() -> None:
    state, fields = outcome(_exited(0), None)
    assert state is TaskState.COMPLETED
    assert fields == {"exit_code": 0, "reason": "exited 0"}


def test_a_nonzero_exit_fails_with_the_error_the_run_recorded() -> None:
    state, fields = outcome(_exited(1), None, "RuntimeError: broke")
    assert state is TaskState.FAILED and fields["exit_code"] == 1
    assert fields["reason"] == "exit code 1: RuntimeError: broke"


def test_a_signal_nobody_here_sent_is_a_failure_that_says_so() -> None:
    state, fields = outcome(_signalled(signal.SIGSEGV), None)
    assert state is TaskState.FAILED and fields["signal"] == "SIGSEGV"
    assert fields["reason"] == "killed by SIGSEGV (not sent by the supervisor)"


def test_our_kill_is_recorded_as_its_own_state_not_as_a_crash() -> None:
    kill = KillOrder(TaskState.ABORTED, "operator said so", 0.0, [signal.SIGKILL])
    state, fields = outcome(_signalled(signal.SIGKILL), kill)
    assert state is TaskState.ABORTED and fields["reason"] == "operator said so"
    assert fields["signal"] == "SIGKILL" and fields["signal_sent"] == "SIGKILL"


def test_an_exit_that_beat_our_sigkill_stands() -> None:
    # SIGKILL cannot be handled: a leader that still *exited* had done so before it landed.
    kill = KillOrder(TaskState.TIMED_OUT, "timed out after 1s", 0.0, [signal.SIGKILL])
    state, fields = outcome(_exited(0), kill)
    assert state is TaskState.COMPLETED and fields["reason"] == "exited 0"
    assert "signal" not in fields and fields["signal_sent"] == "SIGKILL"
    state, fields = outcome(_exited(3), kill, "ValueError: x")
    assert state is TaskState.FAILED and fields["reason"] == "exit code 3: ValueError: x"


def test_the_signals_sent_and_the_way_the_run_ended_are_both_recorded() -> None:
    # With a grace period the run may handle SIGTERM and exit: that is our abort.
    graceful = KillOrder(TaskState.ABORTED, "stop", 0.0, [signal.SIGTERM])
    state, fields = outcome(_exited(143), graceful)
    assert state is TaskState.ABORTED and fields["exit_code"] == 143
    assert "signal" not in fields and fields["signal_sent"] == "SIGTERM"
    escalated = KillOrder(TaskState.ABORTED, "stop", 0.0, [signal.SIGTERM, signal.SIGKILL])
    _, fields = outcome(_signalled(signal.SIGKILL), escalated)
    assert fields["signal"] == "SIGKILL" and fields["signal_sent"] == "SIGTERM,SIGKILL"


def test_resource_usage_is_recorded() -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _, fields = outcome(ExitStatus(0, usage), None)
    assert float(str(fields["cpu_s"])) > 0 and fields["max_rss_kb"] == usage.ru_maxrss


def test_signals_without_a_name_of_their_own_are_named_by_number() -> None:
    assert signal_name(9) == "SIGKILL"
    assert signal_name(signal.SIGRTMIN + 6) == f"SIG{signal.SIGRTMIN + 6}"
    _, fields = outcome(_signalled(signal.SIGRTMIN + 6), None)
    assert fields["signal"] == f"SIG{signal.SIGRTMIN + 6}"


def test_a_limit_the_run_hit_leads_the_reason_of_its_own_failure() -> None:
    oom = "out of memory: the kernel killed 1 process(es) of the run at memory_max=100 bytes"
    state, fields = outcome(_signalled(signal.SIGKILL), None, "", oom)
    assert state is TaskState.FAILED and fields["limit_hit"] == oom
    assert fields["reason"] == f"{oom} (killed by SIGKILL (not sent by the supervisor))"
    # Our own kill keeps its reason; the limit is still on the record.
    kill = KillOrder(TaskState.ABORTED, "enough", 0.0, [signal.SIGKILL])
    state, fields = outcome(_signalled(signal.SIGKILL), kill, "", "pids_max=4 reached")
    assert state is TaskState.ABORTED and fields["reason"] == "enough"
    assert fields["limit_hit"] == "pids_max=4 reached"
