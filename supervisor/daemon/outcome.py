"""How a run ended, from its wait status and the supervisor's own kill: pure, no I/O."""

from __future__ import annotations

import os
import signal

from agent_runtime.task_store import TaskState

from .reaper import ExitStatus
from .runs import KillOrder

__all__ = ["ended_badly", "outcome", "signal_name"]


def signal_name(number: int) -> str:
    """``SIGKILL`` for 9; real-time signals without a name of their own read ``SIG<n>``."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def ended_badly(exit_status: ExitStatus | None, kill: KillOrder | None) -> bool:
    """Whether the run failed on its own (then its ``error`` field tells why)."""
    status = exit_status.status if exit_status is not None else 0
    return kill is None and not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)


def outcome(
    exit_status: ExitStatus | None, kill: KillOrder | None, error: str = ""
) -> tuple[TaskState, dict[str, object]]:
    """The terminal state and record fields of a run.

    A kill the supervisor sent wins whatever the status says (an abort is
    ``aborted``, not a crash); otherwise exit 0 is ``completed`` and anything else
    ``failed``, with ``error`` (what the run wrote to its record) in the reason.
    """
    status = exit_status.status if exit_status is not None else 0
    fields: dict[str, object] = {}
    if exit_status is not None and exit_status.rusage is not None:
        usage = exit_status.rusage
        fields["cpu_s"] = f"{usage.ru_utime + usage.ru_stime:.3f}"
        fields["max_rss_kb"] = usage.ru_maxrss
    if os.WIFEXITED(status):
        fields["exit_code"] = os.WEXITSTATUS(status)
    elif os.WIFSIGNALED(status):
        fields["signal"] = signal_name(os.WTERMSIG(status))
    if kill is not None:
        fields["reason"] = kill.reason
        fields.setdefault("signal", kill.signal.name)
        return kill.state, fields
    if not ended_badly(exit_status, kill):
        fields["reason"] = "exited 0"
        return TaskState.COMPLETED, fields
    if os.WIFSIGNALED(status):
        reason = f"killed by {fields['signal']} (not sent by the supervisor)"
    else:
        reason = f"exit code {fields.get('exit_code')}"
    fields["reason"] = f"{reason}: {error}" if error else reason
    return TaskState.FAILED, fields
