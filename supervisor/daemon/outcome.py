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
    """Whether the run may have failed on its own (then its ``error`` field tells why)."""
    status = exit_status.status if exit_status is not None else 0
    return not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0) and (
        kill is None or os.WIFEXITED(status)
    )


def outcome(
    exit_status: ExitStatus | None,
    kill: KillOrder | None,
    error: str = "",
    limit_hit: str | None = None,
) -> tuple[TaskState, dict[str, object]]:
    """The terminal state and record fields of a run.

    ``exit_code`` or ``signal`` say how the leader actually ended; ``signal_sent``
    names what the supervisor sent. A kill the supervisor sent wins (an abort is
    ``aborted``, not a crash) unless the leader had already exited on its own: a
    leader sent only SIGKILL that still *exited* did so before the kill landed,
    and that exit stands. Otherwise exit 0 is ``completed`` and anything else
    ``failed``, with ``error`` (what the run wrote to its record) in the reason.
    ``limit_hit`` (what the run's resource limits did: an OOM kill, refused forks)
    is kept in its own field and leads the reason of a run that failed on its own.
    """
    status = exit_status.status if exit_status is not None else 0
    fields: dict[str, object] = {}
    if limit_hit:
        fields["limit_hit"] = limit_hit
    if exit_status is not None and exit_status.rusage is not None:
        usage = exit_status.rusage
        fields["cpu_s"] = f"{usage.ru_utime + usage.ru_stime:.3f}"
        fields["max_rss_kb"] = usage.ru_maxrss
    if os.WIFEXITED(status):
        fields["exit_code"] = os.WEXITSTATUS(status)
    elif os.WIFSIGNALED(status):
        fields["signal"] = signal_name(os.WTERMSIG(status))
    if kill is not None:
        fields["signal_sent"] = ",".join(sig.name for sig in kill.signals)
        exited_first = os.WIFEXITED(status) and signal.SIGTERM not in kill.signals
        if not exited_first:
            fields["reason"] = kill.reason
            return kill.state, fields
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        fields["reason"] = "exited 0"
        return TaskState.COMPLETED, fields
    if os.WIFSIGNALED(status):
        reason = f"killed by {fields['signal']} (not sent by the supervisor)"
    else:
        reason = f"exit code {fields.get('exit_code')}"
    fields["reason"] = f"{reason}: {error}" if error else reason
    if limit_hit:
        fields["reason"] = f"{limit_hit} ({fields['reason']})"
    return TaskState.FAILED, fields
