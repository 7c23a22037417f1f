"""Processes of runs: containment (cgroup, pgroup), identity (prove, then signal), spawners."""

from .containment import (
    CgroupContainment,
    Containment,
    PgroupContainment,
    RunContainer,
    choose_containment,
    find_writable_cgroup2,
)
from .identity import boot_id, process_start_ticks, signal_proven
from .spawners import ExecSpawner, ForkServerSpawner, Spawner
from .tree import descendants

__all__ = [
    "CgroupContainment",
    "Containment",
    "ExecSpawner",
    "ForkServerSpawner",
    "PgroupContainment",
    "RunContainer",
    "Spawner",
    "boot_id",
    "choose_containment",
    "descendants",
    "find_writable_cgroup2",
    "process_start_ticks",
    "signal_proven",
]
