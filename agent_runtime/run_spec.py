"""What the daemon hands a run's process, and the names it hands it under.

Imported by the daemon's spawners as well as by the run itself, so it must stay
free of ADK imports: the daemon never loads ADK to start a run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = [
    "MARKER_ROOM",
    "PRELOAD_ENV",
    "RESUMABLE_CHECK_MARK",
    "RUN_ENV",
    "SERVER_FD",
    "TASK_ENV",
    "RunSpec",
    "spec_path",
]

RUN_ENV: Final = "ADK_SUPERVISOR_RUN"
"""The exec spawner's child finds the path of its :class:`RunSpec` file in this variable."""
TASK_ENV: Final = "ADK_SUPERVISOR_TASK_ID"
"""Every process of a run carries ``TASK_ENV=<task_id>`` in its exec-time environment:
the pgroup sweep and reconcile find escaped processes by it."""
RESUMABLE_CHECK_MARK: Final = "adk-supervisor-resumable"
"""Starts each verdict line of ``python -m agent_runtime.durable`` (the daemon's check of
its durable apps), which tells them from what an app prints as it is imported."""
PRELOAD_ENV: Final = "ADK_SUPERVISOR_PRELOAD"
"""The fork server's apps to import at start (a JSON list of import paths)."""
SERVER_FD: Final = 3
"""The fork server's end of its ``SOCK_SEQPACKET`` socket to the daemon."""
MARKER_ROOM: Final = 128
"""The fork server is exec'd with ``TASK_ENV`` set to this many placeholder bytes; each
run writes its task id over them, so task ids may not be longer."""


@dataclass(frozen=True, slots=True)
class RunSpec:
    """What one run does: the fields the daemon passes to the child."""

    task_id: str
    app_ref: str
    app_name: str | None
    user_id: str
    session_id: str
    message: str
    redis_url: str
    key_prefix: str
    session_ttl: float | None
    content: dict[str, Any] | None = None
    """The new message as ``google.genai.types.Content`` JSON; None: ``message`` as text."""
    state_delta: dict[str, Any] | None = None
    invocation_id: str | None = None
    """Continues that (paused) invocation instead of starting one."""
    run_config: dict[str, Any] | None = None
    """``streaming`` ("none" or "sse"), ``max_llm_calls``, ``custom_metadata``."""
    events_maxlen: int = 10_000
    traceparent: str | None = None
    """The submitter's W3C trace context: the parent of the run's spans (checked at admission)."""
    durable: bool = False
    """The app's runs are resumed if their process dies (``on_orphan = "resume"``): the child
    journals tool calls and fences its session writes with ``epoch``."""
    epoch: int = 0
    """The run's epoch (raised by each resume; above 0: this attempt resumes the run)."""
    idempotent_tools: list[str] | None = None
    """Tools a resume may run again when the run died while they ran."""
    workspace: str | None = None
    """The run's own working directory (the run starts in it), or None: the daemon's."""
    snapshot_max_bytes: int = 16 * 1024 * 1024
    """The cap of a durable run's workspace snapshot (larger ones are skipped and logged)."""

    def to_json(self) -> str:
        """The spec as the JSON the child reads."""
        return json.dumps({f: getattr(self, f) for f in self.__dataclass_fields__})

    @classmethod
    def from_json(cls, raw: str) -> RunSpec:
        """Parses the JSON the daemon wrote."""
        data: dict[str, Any] = json.loads(raw)
        fields: dict[str, Any] = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        return cls(**fields)

    def write(self, spec_dir: Path) -> Path:
        """Writes the spec to a file only this user can read; returns its path.

        A file, not an environment variable or a datagram: a run's input (a long
        prompt, an image) may be far larger than either carries.
        """
        path = spec_path(spec_dir, self.task_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(self.to_json())
        return path

    @classmethod
    def take(cls, path: str | Path) -> RunSpec:
        """Reads the spec file :meth:`write` wrote, and removes it (it holds the prompt)."""
        raw = Path(path).read_text(encoding="utf-8")
        Path(path).unlink(missing_ok=True)
        return cls.from_json(raw)


def spec_path(spec_dir: Path, task_id: str) -> Path:
    """Where the spec file of a run lives until the run has read it."""
    return spec_dir / f"{task_id}.json"
