"""The start-time check of durable apps: ``on_orphan = "resume"`` only for a resumable ADK App.

A non-resumable app given an invocation id silently restarts the whole
invocation (its tools run again, the user message is appended again), so such
a configuration is refused by ``check-config`` and by the daemon at start. The
app is imported in a subprocess (``python -m agent_runtime.durable``): neither
the daemon nor the CLI imports ADK or any app itself.
"""

from __future__ import annotations

import subprocess
import sys

from agent_runtime.run_spec import RESUMABLE_CHECK_MARK

from ..config import Settings
from ..errors import ConfigError

__all__ = ["check_durable_apps", "durable_app_problems"]

_CHECK_TIMEOUT_S = 120.0


def durable_app_problems(settings: Settings) -> list[str]:
    """One line per app with ``on_orphan = "resume"`` that cannot be resumed (empty: all fine)."""
    durable = {n: settings.apps[n] for n in sorted(settings.apps) if settings.durable_for(n)}
    if not durable:
        return []
    # One interpreter for every app: ADK's import (about a second) is paid once.
    args = [part for name, ref in durable.items() for part in (ref, name)]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "agent_runtime.durable", *args],
            capture_output=True,
            text=True,
            timeout=_CHECK_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [
            f'[apps.{n}] on_orphan = "resume": cannot check {r}: {exc}' for n, r in durable.items()
        ]
    verdicts: dict[str, str] = {}
    for line in done.stdout.splitlines():
        mark, _, rest = line.partition("\t")
        if mark == RESUMABLE_CHECK_MARK:
            name, _, why = rest.partition("\t")
            verdicts[name] = why
    problems = []
    for name, ref in durable.items():
        verdict = verdicts.get(name)
        if verdict is None:  # the checker died first (an import that exits the interpreter)
            died = done.stderr.strip()[-2000:] or f"exit {done.returncode}"
            problems.append(f'[apps.{name}] on_orphan = "resume": cannot check {ref}: {died}')
        elif verdict != "ok":
            problems.append(f'[apps.{name}] on_orphan = "resume" refused for {ref}: {verdict}')
    return problems


def check_durable_apps(settings: Settings) -> None:
    """Raises :class:`ConfigError` naming every durable app that cannot be resumed."""
    problems = durable_app_problems(settings)
    if problems:
        raise ConfigError(problems)
