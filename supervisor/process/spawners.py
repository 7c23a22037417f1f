"""Starting a run's child process, behind one small interface.

- :class:`ForkServerSpawner` (the default) forks each run from a preloaded
  server process that imported ADK and the configured apps once
  (``agent_runtime.fork_server``): milliseconds per spawn.
- :class:`ExecSpawner` forks and execs ``python -m agent_runtime.child``: about
  a second of interpreter start and ADK import per run, and nothing shared.

Either way the run is a child of the daemon (the fork server's runs are
orphaned to it, the child subreaper), inside its container before it executes
any code of its own (a fork-server run is born inside it), and, before the
agent code starts, its own session leader with SIGKILL as its parent-death signal. A spawner returns only the PID: proving identity (pidfd,
start time) is the daemon's job, since only it knows whether it already reaped it.

Forks with ``os.fork`` rather than ``subprocess``: the child must join its
cgroup, start its own session and set its parent-death signal between fork and
exec, and ``subprocess`` would reap children behind the daemon's reaper
(``Popen`` objects waitpid() themselves), stealing exit statuses.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import anyio

from agent_runtime.process_control import set_parent_death_signal
from agent_runtime.run_spec import (
    MARKER_ROOM,
    PRELOAD_ENV,
    RUN_ENV,
    SERVER_FD,
    TASK_ENV,
    RunSpec,
    spec_path,
)

from ..errors import SpawnError
from .containment import RunContainer

__all__ = ["ExecSpawner", "ForkServerSpawner", "Spawner"]

log = logging.getLogger("adk_supervisor")

# -P: the working directory (for the unit, "/") is not put first on sys.path, so an app
# reference cannot import a stray file from it; PYTHONPATH and installed packages still are.
_SAFE_PATH = ("-P", "-m")


class Spawner(Protocol):
    """Starts the child of a run. Called on the daemon's event loop."""

    name: str

    def start(self) -> None:
        """Prepares spawning at daemon start (the fork server starts preloading)."""

    async def spawn(self, spec: RunSpec, container: RunContainer, log_path: Path) -> int:
        """Starts the run inside ``container``; returns its PID (not yet reaped by anyone).

        The spec goes to the run as a file in the spawner's ``spec_dir``, which
        the run removes once it read it.
        """

    def close(self) -> None:
        """Releases what the spawner holds (the fork server); runs are not touched."""


def _fork_exec(
    argv: list[str],
    env: dict[str, str],
    log_path: Path,
    container: RunContainer | None = None,
    keep_fd: int | None = None,
    cwd: str | None = None,
) -> int:
    """fork + exec with the child in its own session and container; returns the PID."""
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    parent = os.getpid()
    try:
        pid = os.fork()
        if pid == 0:  # child: only async-signal-safe-ish syscalls until exec
            try:
                os.setsid()
                if container is not None:
                    container.preexec()
                set_parent_death_signal(signal.SIGKILL)
                if os.getppid() != parent:  # the daemon died before the prctl
                    os._exit(127)
                if cwd is not None:
                    os.chdir(cwd)
                # Out of the way of the fds about to be opened and dup2()ed below.
                kept = None if keep_fd is None else fcntl.fcntl(keep_fd, fcntl.F_DUPFD, 100)
                os.dup2(log_fd, 1)
                os.dup2(log_fd, 2)
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                if kept is not None:
                    os.dup2(kept, SERVER_FD)
                os.closerange(SERVER_FD + 1 if kept is not None else 3, 65536)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
    finally:
        os.close(log_fd)
    return pid


class _ServerGone(SpawnError):
    """The fork server closed its socket before answering."""


class ExecSpawner:
    """fork + exec of ``python -m agent_runtime.child`` (about 1 s of ADK import per run)."""

    name = "exec"

    def __init__(
        self,
        spec_dir: Path,
        python: str = sys.executable,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.spec_dir = spec_dir
        self.python = python
        self.extra_env = extra_env or {}

    async def spawn(self, spec: RunSpec, container: RunContainer, log_path: Path) -> int:
        path = spec.write(self.spec_dir)
        env = {**os.environ, **self.extra_env, RUN_ENV: str(path), TASK_ENV: spec.task_id}
        pid = _fork_exec(
            [self.python, *_SAFE_PATH, "agent_runtime.child"],
            env,
            log_path,
            container,
            cwd=spec.workspace,
        )
        # The child joins too, before exec; this makes the leader a member by the time we return.
        container.adopt(pid)
        return pid

    def start(self) -> None:
        return None

    def close(self) -> None:
        return None


_MAX_SPAWNS_IN_FLIGHT = 16
"""Requests a fork server has at once; the others wait their turn (the reply timeout runs
from the send, not from the wait)."""


class ForkServerSpawner:
    """Forks each run from a server that imported ADK and ``preload`` once.

    The server starts on first use and again if it died. Spawns run in parallel:
    each request goes out at once, and whichever spawn is waiting reads the
    server's replies and hands each to the spawn it names (by task id); the
    others wait for their own reply or for their turn to read.
    """

    name = "fork-server"

    def __init__(
        self,
        preload: Sequence[str],
        log_path: Path,
        spec_dir: Path,
        python: str = sys.executable,
        extra_env: dict[str, str] | None = None,
        reply_timeout_s: float = 60.0,
        max_in_flight: int = _MAX_SPAWNS_IN_FLIGHT,
    ) -> None:
        self.preload = list(preload)
        self.log_path = log_path
        self.spec_dir = spec_dir
        self.python = python
        self.extra_env = extra_env or {}
        self.reply_timeout_s = reply_timeout_s
        self.server_pid: int | None = None
        self._server_pidfd: int | None = None
        self._sock: socket.socket | None = None
        self._generation = 0  # bumped whenever the server is given up: its replies are void
        self._replies: dict[str, dict[str, object] | None] = {}  # spawns in flight
        self._reading = False  # a spawn is reading the socket for everyone
        self._read = anyio.Event()  # set (and replaced) after each read
        self._sending = anyio.Lock()
        # A burst of 1,000 admitted runs had the server fork 1,000 intermediates at once:
        # on 2 cores none was answered within the reply timeout, the server was given up
        # and hundreds of runs failed. Spawning is CPU-bound: a few at a time go as fast.
        self._in_flight = anyio.Semaphore(max_in_flight)
        self.restarts = 0
        """Times a lost server was replaced on the spawn path (the metrics read it)."""

    def start(self) -> None:
        """Starts the server (it preloads in the background; requests queue meanwhile)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {
            **os.environ,
            **self.extra_env,
            PRELOAD_ENV: json.dumps(self.preload),
            # Room each run overwrites with its task id, so /proc/<pid>/environ names it;
            # '#' cannot start a task id, so the placeholder never names a run.
            TASK_ENV: "#" * MARKER_ROOM,
        }
        try:
            argv = [self.python, *_SAFE_PATH, "agent_runtime.fork_server"]
            self.server_pid = _fork_exec(argv, env, self.log_path, keep_fd=theirs.fileno())
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        # Unreaped, the PID is still the server's: the pidfd pins it for close().
        self._server_pidfd = os.pidfd_open(self.server_pid)
        ours.setblocking(False)
        self._sock = ours
        log.info(
            "fork server started: pid=%d, preloading %d apps", self.server_pid, len(self.preload)
        )

    async def spawn(self, spec: RunSpec, container: RunContainer, log_path: Path) -> int:
        task_id = spec.task_id
        if len(task_id.encode()) > MARKER_ROOM:
            raise SpawnError(f"task id longer than {MARKER_ROOM} bytes")
        if task_id in self._replies:
            raise SpawnError(f"task {task_id} is already being spawned")
        async with self._in_flight:
            return await self._spawn(spec, container, log_path)

    async def _spawn(self, spec: RunSpec, container: RunContainer, log_path: Path) -> int:
        task_id = spec.task_id
        request = json.dumps(
            {
                "task_id": task_id,
                "spec_path": str(spec_path(self.spec_dir, task_id)),
                "cgroup": str(container.cgroup) if container.cgroup else None,
                "limit_cgroups": [str(group) for group in container.limits.cgroups],
                "rlimits": [list(pair) for pair in container.limits.rlimits],
                "log": str(log_path),
            }
        ).encode()
        for attempt in (1, 2):
            if self._sock is None:
                self.start()
            generation = self._generation
            # Written for each attempt: a server that died may have taken the file.
            spec.write(self.spec_dir)
            self._replies[task_id] = None
            try:
                try:
                    await self._send(request, generation)
                    answer = await self._reply(task_id, generation)
                except _ServerGone as exc:
                    # A run it forked waits for "go", which a dead server never writes:
                    # nothing of this request runs, so asking a new server is safe.
                    self._lost(generation, exc)
                    if attempt == 2:
                        raise SpawnError(f"the fork server failed twice: {exc}") from exc
                    continue
                except SpawnError as exc:  # no answer in time: replaced, as below
                    self._lost(generation, exc)
                    raise
                except BaseException:
                    # Cancelled (the daemon stops). The server may still fork this run and
                    # answer late: killing it ends such a run unstarted (it waits for "go";
                    # the other spawns in flight retry on a new one). A run already
                    # answered for was started: nobody would watch it, so it is killed.
                    self._kill_answered(task_id)
                    self._lost(generation, None)
                    raise
            finally:
                del self._replies[task_id]
            if "pid" not in answer:
                raise SpawnError(f"the fork server could not fork the run: {answer.get('error')}")
            return int(str(answer["pid"]))
        raise AssertionError("unreachable")

    async def _send(self, request: bytes, generation: int) -> None:
        # One sender at a time: anyio lets only one task wait for a socket to be writable
        # (a second gets BusyResourceError), and a full queue makes every sender wait.
        async with self._sending:
            await self._send_now(request, generation)

    async def _send_now(self, request: bytes, generation: int) -> None:
        while True:
            sock = self._sock
            if sock is None or self._generation != generation:
                # Never to a newer server: this spawn's retry writes its spec file again
                # and asks that one, and a second request would find the file taken.
                raise _ServerGone("the fork server was given up before the request went out")
            try:
                sock.send(request)  # one datagram: concurrent sends never interleave
                return
            except BlockingIOError:
                # Its queue is full (a burst while it preloads): wait, but not for ever.
                try:
                    with anyio.fail_after(self.reply_timeout_s):
                        await anyio.wait_writable(sock)
                except TimeoutError:
                    raise SpawnError(
                        f"the fork server took no request in {self.reply_timeout_s:g}s "
                        f"(still preloading? see {self.log_path})"
                    ) from None
                except anyio.ClosedResourceError:  # another spawn gave this server up
                    raise _ServerGone(
                        "the fork server was given up while the request waited"
                    ) from None
            except OSError as exc:  # the server died before it read anything: resend
                raise _ServerGone(str(exc)) from exc

    def _kill_answered(self, task_id: str) -> None:
        answer = self._replies.get(task_id)
        pid = answer.get("pid") if answer is not None else None
        if isinstance(pid, int) and pid > 0:
            # Its own group (it called setsid before the answer), the daemon's unreaped
            # child: the number cannot name anyone else yet.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)

    async def _reply(self, task_id: str, generation: int) -> dict[str, object]:
        try:
            with anyio.fail_after(self.reply_timeout_s):
                while True:
                    answer = self._replies.get(task_id)
                    if answer is not None:
                        return answer
                    if self._generation != generation:
                        raise _ServerGone(f"the fork server was lost (see {self.log_path})")
                    if self._reading:
                        await self._read.wait()  # another spawn reads; it wakes us
                        continue
                    self._reading = True
                    try:
                        await self._read_one(generation)
                    finally:
                        self._reading = False
                        self._read.set()
                        self._read = anyio.Event()
        except TimeoutError:
            raise SpawnError(
                f"the fork server did not answer in {self.reply_timeout_s:g}s "
                f"(still preloading? see {self.log_path})"
            ) from None

    async def _read_one(self, generation: int) -> None:
        """Reads one reply and files it under its task id."""
        sock = self._sock
        assert sock is not None
        while True:
            try:
                await anyio.wait_readable(sock)
            except anyio.ClosedResourceError:
                return  # given up meanwhile: the generation says so
            try:
                reply = sock.recv(65536)
                break
            except BlockingIOError:
                continue
            except ConnectionResetError:  # it died with requests unread
                reply = b""
                break
        if not reply:
            self._lost(generation, f"the fork server exited (see {self.log_path})")
            return
        answer = json.loads(reply)
        task_id = answer.get("task_id")
        if isinstance(task_id, str) and self._replies.get(task_id, ...) is None:
            self._replies[task_id] = answer
        else:
            log.warning("the fork server answered for %r, which no spawn awaits", task_id)

    def _lost(self, generation: int, why: object) -> None:
        """Gives the server of ``generation`` up (once: later calls for it do nothing)."""
        if self._generation != generation:
            return
        if why is not None:
            log.warning("fork server lost (%s); restarting it", why)
        self.restarts += 1
        self.close()

    def close(self) -> None:
        self._generation += 1
        if self._sock is not None:
            with contextlib.suppress(RuntimeError):  # not on an event loop: nobody waits on it
                anyio.notify_closing(self._sock)
            self._sock.close()
            self._sock = None
        if self._server_pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._server_pidfd, signal.SIGKILL)
            os.close(self._server_pidfd)
            self._server_pidfd = None
        self.server_pid = None
