"""Per-run resource limits: memory, processes and CPU, with what the host offers.

Each limit uses the best mechanism found at daemon start, chosen per limit:

- ``cgroup2``: the controller's file in the run's own cgroup v2 leaf (a pure v2
  host with the controller delegated: systemd with ``Delegate=yes``);
- ``cgroup1``: a per-run group in the controller's v1 hierarchy, created like
  the v2 leaf and joined before the run executes code of its own (the hybrid
  layout, where ``memory``, ``pids`` and ``cpu`` are v1 hierarchies; root);
- ``rlimit``: ``memory_max`` as ``RLIMIT_AS`` (address space, not resident
  memory); ``pids_max`` and ``cpu_max`` have no per-run rlimit
  (``RLIMIT_NPROC`` counts every process of the user, ``RLIMIT_CPU`` is total
  seconds, not a rate), so they are not enforced and the daemon says so.

Written against the cgroup files directly, like the containment: no library
manages v1 and v2 groups side by side.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["AppliedLimits", "Limiter", "RunLimits"]

log = logging.getLogger(__name__)

Mechanism = Literal["cgroup2", "cgroup1", "rlimit", "none"]
_CONTROLLER = {"memory_max": "memory", "pids_max": "pids", "cpu_max": "cpu"}
# The v1 file a writable hierarchy of each controller must have (pids.max exists below
# the root only, so the node's own group is checked, once created).
_V1_PROBE = {"memory": "memory.limit_in_bytes", "pids": "pids.max", "cpu": "cpu.cfs_quota_us"}
_CPU_PERIOD_US = 100_000


@dataclass(frozen=True, slots=True)
class RunLimits:
    """The limits of one run; None means none."""

    memory_max: int | None = None
    """Bytes of memory (resident and page cache under cgroups, address space under rlimits)."""
    pids_max: int | None = None
    """Processes and threads of the run at once."""
    cpu_max: float | None = None
    """CPUs' worth of time per second (0.5: half a CPU)."""

    def over(self, defaults: RunLimits) -> RunLimits:
        """These limits, each unset one taken from ``defaults``."""
        return RunLimits(
            self.memory_max if self.memory_max is not None else defaults.memory_max,
            self.pids_max if self.pids_max is not None else defaults.pids_max,
            self.cpu_max if self.cpu_max is not None else defaults.cpu_max,
        )

    def set(self) -> dict[str, float]:
        """The limits that are set, by name."""
        values: dict[str, float | None] = {
            "memory_max": self.memory_max,
            "pids_max": self.pids_max,
            "cpu_max": self.cpu_max,
        }
        return {k: v for k, v in values.items() if v is not None}


@dataclass(frozen=True, slots=True)
class AppliedLimits:
    """What a run joins and sets before it executes code of its own."""

    asked: RunLimits = field(default_factory=RunLimits)
    """The limits configured for the run."""
    cgroups: tuple[Path, ...] = ()
    """v1 groups to join (the v2 leaf is the containment's)."""
    rlimits: tuple[tuple[int, int], ...] = ()
    """(resource, value) pairs for setrlimit, soft and hard alike."""


def _v1_dirs() -> dict[str, Path]:
    """This process's own group in each v1 hierarchy of memory, pids and cpu."""
    own: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(","):
                own[controller] = path
    found: dict[str, Path] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            fstype, _, super_options = [*right.split(" "), "", "", ""][:3]
            if fstype != "cgroup":
                continue
            fields = left.split()
            root, mountpoint = fields[3], fields[4]
            for controller in super_options.split(","):
                if controller in _V1_PROBE and controller in own and controller not in found:
                    inner = os.path.relpath(own[controller], root)
                    if not inner.startswith(".."):
                        found[controller] = Path(mountpoint) / inner
    return found


@dataclass
class Limiter:
    """Applies per-run limits for one node; one per daemon."""

    node_id: str
    v2_node_dir: Path | None = None
    """The containment's cgroup v2 directory of this node, when it uses cgroups."""
    mechanisms: dict[str, Mechanism] = field(init=False)
    _v1: dict[str, Path] = field(init=False)

    def __post_init__(self) -> None:
        self._v1 = {}
        self.mechanisms = {}
        v2 = self._enable_v2()
        v1_dirs = _v1_dirs()
        for name, controller in _CONTROLLER.items():
            if controller in v2:
                self.mechanisms[name] = "cgroup2"
            elif (node := self._v1_node(controller, v1_dirs.get(controller))) is not None:
                self._v1[controller] = node
                self.mechanisms[name] = "cgroup1"
            else:
                self.mechanisms[name] = "rlimit" if name == "memory_max" else "none"

    def _enable_v2(self) -> set[str]:
        if self.v2_node_dir is None:
            return set()
        try:
            available = set((self.v2_node_dir / "cgroup.controllers").read_text().split())
        except OSError:
            return set()
        # The node's directory gets a controller only if its parent (the daemon's own
        # cgroup, emptied by containment._leave_own_cgroup) hands it down first.
        parent = self.v2_node_dir.parent
        try:
            handed = set((parent / "cgroup.subtree_control").read_text().split())
        except OSError:
            handed = set()
        for controller in set(_CONTROLLER.values()) - handed:
            with contextlib.suppress(OSError):
                (parent / "cgroup.subtree_control").write_text(f"+{controller}")
        with contextlib.suppress(OSError):
            available = set((self.v2_node_dir / "cgroup.controllers").read_text().split())
        enabled = set()
        for controller in set(_CONTROLLER.values()) & available:
            try:
                (self.v2_node_dir / "cgroup.subtree_control").write_text(f"+{controller}")
                enabled.add(controller)
            except OSError as exc:
                log.info("cgroup v2 controller %s not usable here: %s", controller, exc)
        return enabled

    def _v1_node(self, controller: str, own: Path | None) -> Path | None:
        if own is None or not os.access(own, os.W_OK):
            return None
        node = own / f"adk-supervisor-{self.node_id}"
        try:
            node.mkdir(exist_ok=True)
        except OSError as exc:
            log.info("cgroup v1 %s hierarchy not usable (%s)", controller, exc)
            return None
        if not (node / _V1_PROBE[controller]).exists():
            with contextlib.suppress(OSError):
                node.rmdir()
            return None
        return node

    def describe(self) -> str:
        """Which mechanism each limit uses, for the start-up log."""
        return ", ".join(f"{name}: {mech}" for name, mech in self.mechanisms.items())

    def unenforced(self, limits: RunLimits) -> list[str]:
        """The limits set in ``limits`` that this host cannot enforce."""
        return [name for name in limits.set() if self.mechanisms[name] == "none"]

    def prepare(self, task_id: str, limits: RunLimits, v2_leaf: Path | None) -> AppliedLimits:
        """Creates the run's groups and writes its limits; OSError if the host refuses."""
        cgroups: list[Path] = []
        rlimits: list[tuple[int, int]] = []
        for name, value in limits.set().items():
            controller = _CONTROLLER[name]
            mechanism = self.mechanisms[name]
            if mechanism == "cgroup2" and v2_leaf is not None:
                self._write_v2(v2_leaf, name, value)
            elif mechanism == "cgroup1":
                group = self._v1[controller] / f"run-{task_id}"
                group.mkdir(exist_ok=True)
                self._write_v1(group, name, value)
                cgroups.append(group)
            elif mechanism == "rlimit" and name == "memory_max":
                rlimits.append((resource.RLIMIT_AS, int(value)))
        return AppliedLimits(limits, tuple(cgroups), tuple(rlimits))

    @staticmethod
    def _write_v2(leaf: Path, name: str, value: float) -> None:
        if name == "memory_max":
            (leaf / "memory.max").write_text(str(int(value)))
            with contextlib.suppress(OSError):  # no swap to keep the limit honest
                (leaf / "memory.swap.max").write_text("0")
        elif name == "pids_max":
            (leaf / "pids.max").write_text(str(int(value)))
        else:
            (leaf / "cpu.max").write_text(f"{int(value * _CPU_PERIOD_US)} {_CPU_PERIOD_US}")

    @staticmethod
    def _write_v1(group: Path, name: str, value: float) -> None:
        if name == "memory_max":
            (group / "memory.limit_in_bytes").write_text(str(int(value)))
            with contextlib.suppress(OSError):  # memsw exists only with swap accounting
                (group / "memory.memsw.limit_in_bytes").write_text(str(int(value)))
        elif name == "pids_max":
            (group / "pids.max").write_text(str(int(value)))
        else:
            (group / "cpu.cfs_period_us").write_text(str(_CPU_PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(int(value * _CPU_PERIOD_US)))

    def verdict(self, task_id: str, applied: AppliedLimits, v2_leaf: Path | None) -> str | None:
        """What the run's limits did to it (processes OOM-killed, forks refused), if anything.

        Read once the tree is gone, before the groups are removed.
        """
        limits = applied.asked
        said = []
        if limits.memory_max is not None:
            kills = self._count(task_id, "memory", v2_leaf, "memory.events", "oom_kill")
            if kills is None:
                kills = self._count(task_id, "memory", None, "memory.oom_control", "oom_kill")
            if kills:
                said.append(
                    f"out of memory: the kernel killed {kills} process(es) of the run at "
                    f"memory_max={limits.memory_max} bytes"
                )
        if limits.pids_max is not None:
            refused = self._count(task_id, "pids", v2_leaf, "pids.events", "max")
            if refused:
                said.append(f"pids_max={limits.pids_max} reached: {refused} fork(s) refused")
        return "; ".join(said) or None

    def _count(
        self, task_id: str, controller: str, v2_leaf: Path | None, name: str, key: str
    ) -> int | None:
        if controller in self._v1:
            path = self._v1[controller] / f"run-{task_id}" / name
        elif v2_leaf is not None:
            path = v2_leaf / name
        else:
            return None
        try:
            for line in path.read_text().splitlines():
                word, _, count = line.partition(" ")
                if word == key:
                    return int(count)
        except (OSError, ValueError):
            return None
        return None

    def release(self, task_id: str) -> None:
        """Removes the run's v1 groups once its tree is gone."""
        for node in self._v1.values():
            try:
                (node / f"run-{task_id}").rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:  # still populated: the next start's sweep retries
                log.warning("cgroup %s not removed: %s", node / f"run-{task_id}", exc)

    def sweep(self) -> None:
        """Removes run groups a previous daemon of this node left (their runs are gone)."""
        for node in self._v1.values():
            for group in node.glob("run-*"):
                with contextlib.suppress(OSError):
                    group.rmdir()

    def close(self) -> None:
        """Removes this node's v1 groups at a clean stop."""
        self.sweep()
        for node in self._v1.values():
            with contextlib.suppress(OSError):
                node.rmdir()
