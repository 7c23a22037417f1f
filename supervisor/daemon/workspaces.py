"""Run workspaces: the working directory of each run of an app with ``workspace = true``.

``state_dir/workspaces/<task_id>``, made afresh by the daemon before each attempt's
spawn (a directory left by an attempt that died with its daemon is emptied: a resume
restores the run's snapshot into an empty directory only) and removed when the
attempt ends. Owned by the daemon's user, which the runs share.
"""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["prepare_workspace", "remove_workspace", "workspace_path"]


def workspace_path(state_dir: Path, task_id: str) -> Path:
    """Where the run ``task_id`` works (task ids are checked at admission: no ``/``)."""
    return state_dir / "workspaces" / task_id


def prepare_workspace(path: Path) -> None:
    """Makes ``path`` an empty directory only its owner can enter (raises OSError)."""
    if path.is_symlink() or path.exists():
        remove_workspace(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.mkdir(mode=0o700)


def remove_workspace(path: Path) -> None:
    """Removes ``path`` and what the run left in it (never following its links)."""
    if path.is_symlink():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)
