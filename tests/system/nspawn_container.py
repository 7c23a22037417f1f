"""A real systemd to test the unit under: Debian bookworm booted in a ``systemd-nspawn`` container.

PID 1 of the test machines is not systemd, but Debian's systemd boots as PID 1 of
a container (../shared/research/real-systemd-in-nspawn.md has how each step was
found). What takes long is built once per machine and cached under
:data:`CACHE`, each layer in a directory named by a hash of what goes in it:

- ``base-<key>``: ``debootstrap`` of bookworm with systemd, python3, python3-venv
  and redis-server, the host's CA certificates (pip goes through a proxy that
  signs with them) and a redis.conf that listens on a unix socket only (the
  container shares the host's network, whose port 6379 is taken);
- ``venv-<key>``: ``/opt/adk-supervisor/.venv`` with the project's dependencies,
  keyed by the base and the dependency lists of pyproject.toml.

Each :class:`Container` boots on an overlay of both layers with a writable layer
of its own, so the cache stays clean, and runs in cgroups of its own (one
directory in every hierarchy), which go with it. A run killed before its
teardown is swept by the next one (its owner file names a dead process).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

CACHE = Path(os.environ.get("ADK_SUPERVISOR_TEST_CACHE", "/var/cache/adk-supervisor-tests"))
MIRROR = os.environ.get("ADK_SUPERVISOR_TEST_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-venv",
    "procps",
    "redis-server",
    "ca-certificates",
)
# Bump when what _finish_base or _build_venv does changes: the hash cannot see code.
RECIPE = "3"
VENV = "/opt/adk-supervisor/.venv"
REDIS_SOCKET = "/run/redis/redis-server.sock"
# Host commands and the Debian package of each.
HOST_TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "nsenter": "util-linux",
}
INSTALL_HINT = "apt-get install -y --no-install-recommends debootstrap systemd-container"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_STALE_LAYER_S = 7 * 24 * 3600

# Run by the host's python between fork and exec of nspawn: joins the cgroups named
# in argv[1] (a JSON list of cgroup.procs files), then execs the rest of argv.
_JOIN_AND_EXEC = (
    "import json, os, sys\n"
    "for procs in json.loads(sys.argv[1]):\n"
    "    with open(procs, 'w') as f:\n"
    "        f.write(str(os.getpid()))\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


class SetupError(Exception):
    """The container cannot be built or booted; the message says why and what to do."""


def check_host() -> None:
    """Raises :class:`SetupError` naming what to install when the host cannot run a container."""
    if os.geteuid() != 0:
        raise SetupError("the systemd tests boot a systemd-nspawn container: run them as root")
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        raise SetupError(
            f"missing host packages {', '.join(missing)}: `make test` installs them as root "
            f"where apt-get exists, or run: {INSTALL_HINT}"
        )
    if "overlay" not in Path("/proc/filesystems").read_text():
        raise SetupError("the kernel has no overlay file system (modprobe overlay)")
    if _cgroup2_mount() is None:
        raise SetupError("no cgroup2 hierarchy is mounted (nspawn needs one for the container)")


def run(
    cmd: Sequence[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``cmd`` with a bound; a failure raises :class:`SetupError` with its output."""
    try:
        done = subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
    except subprocess.TimeoutExpired as exc:
        raise SetupError(f"{' '.join(cmd)} took over {timeout:g}s: {_tail(exc.stdout)}") from None
    if done.returncode != 0:
        raise SetupError(
            f"{' '.join(cmd)} exited {done.returncode}:\n{_tail(done.stdout)}\n{_tail(done.stderr)}"
        )
    return done


def _tail(text: str | bytes | None, lines: int = 40) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join((text or "").splitlines()[-lines:])


# --- the cache ------------------------------------------------------------------------


@contextlib.contextmanager
def _cache_lock(timeout: float = 1800.0) -> Iterator[None]:
    """Held while layers are built or swept: two test runs never build at once."""
    CACHE.mkdir(parents=True, exist_ok=True)
    fd = os.open(CACHE / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SetupError(
                        f"{CACHE / 'lock'} held for over {timeout:g}s by another test run"
                    ) from None
                time.sleep(1)
        yield
    finally:
        os.close(fd)


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _host_ca_certs() -> dict[str, str]:
    found = sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt"))
    return {str(p): p.read_text(errors="replace") for p in found}


def requirements(pyproject: Path) -> list[str]:
    """What the cached venv holds: the project's dependencies, its embedded extra, its build backend."""
    data = tomllib.loads(pyproject.read_text())
    project = data["project"]
    return [
        *project["dependencies"],
        *project.get("optional-dependencies", {}).get("embedded", []),
        *data["build-system"]["requires"],
    ]


def layers(pyproject: Path) -> list[Path]:
    """The cached read-only layers, topmost first, building the missing ones."""
    base_key = _key(SUITE, MIRROR, PACKAGES, RECIPE, _host_ca_certs())
    base = CACHE / f"base-{base_key}"
    reqs = requirements(pyproject)
    venv = CACHE / f"venv-{_key(base_key, reqs, RECIPE)}"
    with _cache_lock():
        if not base.is_dir():
            _build_base(base)
        if not venv.is_dir():
            _build_venv(venv, base, reqs)
        for layer in (base, venv):
            os.utime(layer)  # last use, for the sweep below
        _sweep_layers(keep={base, venv})
    return [venv, base]


def _sweep_layers(keep: set[Path]) -> None:
    # Layers nobody used for a week: an older pyproject's venv, an older recipe's base.
    for layer in [*CACHE.glob("base-*"), *CACHE.glob("venv-*")]:
        if layer not in keep and time.time() - layer.stat().st_mtime > _STALE_LAYER_S:
            shutil.rmtree(layer, ignore_errors=True)


def _build_base(target: Path) -> None:
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(partial),
            MIRROR,
        ],
        timeout=1800,
    )
    _finish_base(partial)
    partial.rename(target)


def _finish_base(root: Path) -> None:
    certs = root / "usr/local/share/ca-certificates"
    certs.mkdir(parents=True, exist_ok=True)
    for name, text in _host_ca_certs().items():
        (certs / Path(name).name).write_text(text)
    run(["chroot", str(root), "update-ca-certificates"], timeout=120)
    conf = root / "etc/redis/redis.conf"
    lines = conf.read_text().splitlines()
    wanted = {
        "port": "port 0",
        "unixsocket": f"unixsocket {REDIS_SOCKET}",
        "unixsocketperm": "unixsocketperm 770",
    }
    done: set[str] = set()
    for i, line in enumerate(lines):
        words = line.lstrip("# ").split()
        if words and words[0] in wanted and words[0] not in done:
            lines[i] = wanted[words[0]]
            done.add(words[0])
    if done != set(wanted):
        raise SetupError(f"{conf}: no line for {sorted(set(wanted) - done)} to set")
    conf.write_text("\n".join(lines) + "\n")


def _build_venv(target: Path, base: Path, reqs: list[str]) -> None:
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    upper, work, merged = partial / "upper", partial / "work", partial / "merged"
    for d in (upper, work, merged):
        d.mkdir(parents=True)
    _mount_overlay([base], upper, work, merged)
    cgroups = Cgroups(f"adk-build-{uuid.uuid4().hex[:8]}")
    try:
        build = merged / "opt/adk-supervisor-build"
        build.mkdir(parents=True)
        (build / "requirements.txt").write_text("\n".join(reqs) + "\n")
        script = (
            f"python3 -m venv {VENV} && "
            f"{VENV}/bin/pip install --no-cache-dir --disable-pip-version-check --quiet "
            "-r /opt/adk-supervisor-build/requirements.txt"
        )
        cmd = [
            *_nspawn(merged, cgroups),
            "--quiet",
            f"--machine=adk-build-{uuid.uuid4().hex[:6]}",
            "/bin/sh",
            "-ec",
            script,
        ]
        run(cmd, timeout=1800, env=_nspawn_env())
    finally:
        cgroups.destroy()
        _umount(merged)
    # Only the venv is the layer: nspawn left resolv.conf and mount points behind.
    for entry in upper.iterdir():
        if entry.name != "opt":
            _remove(entry)
    for entry in (upper / "opt").iterdir():
        if entry.name != "adk-supervisor":
            _remove(entry)
    upper.rename(target)
    shutil.rmtree(partial, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _mount_overlay(lower: list[Path], upper: Path, work: Path, merged: Path) -> None:
    opts = f"lowerdir={':'.join(map(str, lower))},upperdir={upper},workdir={work}"
    run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], timeout=60)


def _umount(path: Path) -> None:
    if os.path.ismount(path):
        try:
            run(["umount", str(path)], timeout=60)
        except SetupError:
            run(["umount", "--lazy", str(path)], timeout=60)


def _nspawn(root: Path, cgroups: Cgroups) -> list[str]:
    # No machined or system bus on the host: --register=no --keep-unit, and the
    # container's cgroups go next to nspawn's own, so nspawn first joins ours.
    return [
        sys.executable,
        "-c",
        _JOIN_AND_EXEC,
        json.dumps([str(d / "cgroup.procs") for d in cgroups.dirs]),
        "systemd-nspawn",
        "-D",
        str(root),
        "--register=no",
        "--keep-unit",
        "--resolv-conf=copy-host",
    ]


def _nspawn_env() -> dict[str, str]:
    # The host's layout is hybrid; the container gets a pure cgroup v2 tree.
    return {"PATH": _PATH, "LANG": "C.UTF-8", "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}


# --- cgroups of our own ---------------------------------------------------------------


def _cgroup2_mount() -> Path | None:
    return next((m for m, opts in _cgroup_mounts() if opts is None), None)


def _cgroup_mounts() -> list[tuple[Path, set[str] | None]]:
    """(mount point, v1 super options or None for cgroup2) of every cgroup hierarchy."""
    found: list[tuple[Path, set[str] | None]] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _, rest = right.partition(" ")
        mount = Path(left.split()[4])
        if fstype == "cgroup2":
            found.append((mount, None))
        elif fstype == "cgroup":
            found.append((mount, set(rest.split()[-1].split(","))))
    return found


class Cgroups:
    """A directory of ours under this process's own cgroup, in every hierarchy."""

    def __init__(self, name: str) -> None:
        own: dict[str, str] = {}
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            own[controllers] = path
        self.dirs: list[Path] = []
        try:
            for mount, opts in _cgroup_mounts():
                if opts is None:
                    path = own.get("", "/")
                else:
                    path = next((p for c, p in own.items() if c and set(c.split(",")) <= opts), "/")
                d = mount / path.lstrip("/") / name
                d.mkdir()
                self.dirs.append(d)
                if opts is not None and "cpuset" in opts:
                    # A new v1 cpuset takes no process until it has CPUs and memory nodes.
                    for knob in ("cpuset.cpus", "cpuset.mems"):
                        (d / knob).write_text((d.parent / knob).read_text())
        except OSError:
            self.destroy()
            raise

    @classmethod
    def adopt(cls, dirs: list[str]) -> Cgroups:
        """The cgroups a dead test run left behind, to be destroyed."""
        self = cls.__new__(cls)
        self.dirs = [Path(d) for d in dirs]
        return self

    def destroy(self, timeout: float = 15.0) -> None:
        """Kills every process left in them and removes them (deepest first)."""
        deadline = time.monotonic() + timeout
        while self._pids() and time.monotonic() < deadline:
            for d in self.dirs:
                with contextlib.suppress(OSError):
                    (d / "cgroup.kill").write_text("1")  # cgroup2: the whole subtree at once
            for pid in self._pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        for d in self.dirs:
            if d.is_dir():
                for sub, _, _ in sorted(os.walk(d), key=lambda w: -w[0].count("/")):
                    with contextlib.suppress(OSError):
                        os.rmdir(sub)
        left = [str(d) for d in self.dirs if d.exists()]
        if left:
            raise SetupError(f"cgroups not removed (still populated?): {left}")

    def _pids(self) -> set[int]:
        pids: set[int] = set()
        for d in self.dirs:
            for sub, _, files in os.walk(d):
                if "cgroup.procs" in files:
                    with contextlib.suppress(OSError):
                        pids.update(map(int, Path(sub, "cgroup.procs").read_text().split()))
        return pids


# --- booted containers ----------------------------------------------------------------


def _start_ticks(pid: int) -> str | None:
    """The start time of a live ``pid`` (None once it is gone or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return None if stat[0] == "Z" else stat[19]


class Container:
    """Debian's systemd as PID 1 of an nspawn container booted on the cached layers.

    ``root`` is the container's file system seen from the host (files written
    under ``/opt`` or ``/etc`` there are the container's; ``/tmp`` and ``/run``
    inside are mounts of their own); :meth:`run` runs a command inside.
    """

    def __init__(self, lower: list[Path]) -> None:
        self.name = f"adk-t-{uuid.uuid4().hex[:8]}"
        self.dir = CACHE / "runs" / self.name
        self.root = self.dir / "merged"
        self.boot_log = self.dir / "nspawn.log"
        self._lower = lower
        self._nspawn: subprocess.Popen[bytes] | None = None
        self._cgroups: Cgroups | None = None
        self.pid1 = 0

    def boot(self, timeout: float = 120.0) -> None:
        """Mounts the overlay, starts nspawn and waits until the system is up."""
        upper, work = self.dir / "upper", self.dir / "work"
        for d in (upper, work, self.root):
            d.mkdir(parents=True)
        _mount_overlay(self._lower, upper, work, self.root)
        (self.root / "etc/hostname").write_text(self.name + "\n")
        self._cgroups = Cgroups(f"adk-nspawn-{self.name}")
        (self.dir / "owner.json").write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "start_ticks": _start_ticks(os.getpid()),
                    "cgroups": [str(d) for d in self._cgroups.dirs],
                }
            )
        )
        with self.boot_log.open("wb") as log:
            self._nspawn = subprocess.Popen(
                [
                    *_nspawn(self.root, self._cgroups),
                    "-b",
                    f"--machine={self.name}",
                    "--console=read-only",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_nspawn_env(),
            )
        deadline = time.monotonic() + timeout
        self.pid1 = self._find_pid1(deadline)
        # Polled: the first calls find no bus yet (''), or a half set-up container
        # ('offline'), then 'initializing' and 'starting' until boot is done.
        seen: list[str] = []
        while True:
            done = self.run(["systemctl", "is-system-running"], timeout=15, check=False)
            state = done.stdout.strip()
            if state in ("running", "degraded"):
                return
            if not seen or seen[-1] != state:
                seen.append(state)
            if state in ("maintenance", "stopping") or time.monotonic() > deadline:
                raise SetupError(
                    f"the container's systemd is {state!r} after {timeout:g}s (states seen: "
                    f"{seen}): {done.stderr.strip()}\n{_tail(self.boot_log.read_bytes())}"
                )
            time.sleep(0.2)

    def _find_pid1(self, deadline: float) -> int:
        assert self._nspawn is not None
        nspawn = self._nspawn.pid
        while time.monotonic() < deadline:
            if self._nspawn.poll() is not None:
                raise SetupError(
                    f"systemd-nspawn exited {self._nspawn.returncode}:\n{_tail(self.boot_log.read_bytes())}"
                )
            with contextlib.suppress(OSError):
                for child in Path(f"/proc/{nspawn}/task/{nspawn}/children").read_text().split():
                    if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                        return int(child)
            time.sleep(0.1)
        raise SetupError(
            f"no systemd in the container after boot:\n{_tail(self.boot_log.read_bytes())}"
        )

    def run(
        self, cmd: Sequence[str], timeout: float = 30.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Runs ``cmd`` inside the container (all its namespaces), as root, with a clean env."""
        full = [
            "nsenter",
            f"--target={self.pid1}",
            "--all",
            "--",
            "/usr/bin/env",
            "-i",
            f"PATH={_PATH}",
            "LANG=C.UTF-8",
            "HOME=/root",
            "SYSTEMD_COLORS=0",
            "SYSTEMD_PAGER=",
            *cmd,
        ]
        if check:
            return run(full, timeout=timeout)
        try:
            return subprocess.run(
                full, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise SetupError(
                f"{' '.join(cmd)} took over {timeout:g}s: {_tail(exc.stdout)}"
            ) from None

    def journal(self, *args: str) -> str:
        """The container's journal (``journalctl --no-pager`` with ``args``), never raising."""
        try:
            done = self.run(["journalctl", "--no-pager", *args], timeout=30, check=False)
        except SetupError as exc:
            return str(exc)
        return done.stdout + done.stderr

    def destroy(self, timeout: float = 45.0) -> None:
        """Powers the container off (SIGTERM to nspawn, SIGKILL after ``timeout``) and removes it."""
        if self._nspawn is not None and self._nspawn.poll() is None:
            self._nspawn.send_signal(signal.SIGTERM)
            try:
                self._nspawn.wait(timeout)
            except subprocess.TimeoutExpired:
                self._nspawn.kill()
                self._nspawn.wait(10)
        _teardown(self.dir, self._cgroups)


def _teardown(run_dir: Path, cgroups: Cgroups | None) -> None:
    if cgroups is not None:
        cgroups.destroy()
    _umount(run_dir / "merged")
    shutil.rmtree(run_dir, ignore_errors=True)


def sweep_stale() -> None:
    """Tears down containers whose test run died before its own teardown."""
    runs = CACHE / "runs"
    if not runs.is_dir():
        return
    for run_dir in runs.iterdir():
        try:
            owner = json.loads((run_dir / "owner.json").read_text())
        except (OSError, ValueError):
            owner = None
        if owner is None:
            # Either it is starting right now or it died before writing its owner:
            # only the latter is old.
            if time.time() - run_dir.stat().st_mtime < 600:
                continue
            _teardown(run_dir, None)
            continue
        if _start_ticks(owner["pid"]) == owner["start_ticks"]:
            continue  # its test run is alive
        _teardown(run_dir, Cgroups.adopt(owner["cgroups"]))


def boot(pyproject: Path) -> Container:
    """A booted container on the cached layers (built first if missing)."""
    check_host()
    with _cache_lock():
        sweep_stale()
    container = Container(layers(pyproject))
    try:
        container.boot()
    except BaseException:
        if container.boot_log.exists():
            print(f"--- nspawn output ---\n{_tail(container.boot_log.read_bytes(), 80)}")
        container.destroy()
        raise
    return container
