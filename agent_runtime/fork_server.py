"""The preloaded fork server: ADK imported once, then one ``fork()`` per run.

``python -m agent_runtime.fork_server`` is started by the supervisor daemon
with a ``SOCK_SEQPACKET`` socket on fd 3. It imports ADK, the session service
and the apps named in ``$ADK_SUPERVISOR_PRELOAD`` (a JSON list of
``package.module:attribute`` references), freezes the garbage collector so
those objects stay shared with every child, then serves requests, several at
a time: each reply carries the request's task id, and replies go out in the
order the runs became ready, not the order they were asked for::

    request  {"task_id": "...", "spec_path": "/path/of/the/RunSpec.json",
              "cgroup": "/sys/fs/cgroup/.../run-x" | null, "log": "/path"}
    reply    {"task_id": "...", "pid": 1234}  or  {"task_id": "...", "error": "..."}

A run is forked through a short-lived intermediate that is cloned straight into
the run's cgroup (``clone3(CLONE_INTO_CGROUP)``, see :mod:`._clone_into`; where
that is not available it joins the cgroup first), so the run is born inside it;
the intermediate exits at once: the run is orphaned to
the daemon (the nearest child subreaper), which reaps it and reads its exit
status exactly as for a child it forked itself. The run starts its own session
(and process group) before it reports its PID, so a group kill the daemon sends
as soon as it knows the PID reaches it. Once orphaned it sets its parent-death
signal (set earlier, the intermediate's exit would fire it) and executes
``agent_runtime.child.execute``. The server forks an intermediate and goes back
to its socket: the intermediate's own fork, its cgroup join and the run's
``setsid`` happen while the server takes the next request.

Spawning this way costs milliseconds instead of an interpreter start and an
ADK import (about 0.9 s here), and a killed run tears down only the pages it
wrote, not the whole ADK heap it shares with the server.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import gc
import json
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.adk.agents import LlmAgent
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import InMemoryRunner
from google.genai import types

from ._clone_into import clone_into
from .app_loader import load_app
from .child import execute
from .process_control import enter_limits, join_cgroup, set_parent_death_signal
from .run_spec import PRELOAD_ENV, SERVER_FD, TASK_ENV, RunSpec
from .sessions import service  # noqa: F401  (preloaded for every run)

__all__ = ["main"]


def _stamp_marker(task_id: str) -> None:
    """Writes ``TASK_ENV=<task_id>`` over the placeholder in this process's original environment.

    The pgroup kill mechanism and reconcile find a run's escaped processes by
    that marker in ``/proc/<pid>/environ``, which shows the environment block
    the process was exec'd with, not ``os.environ``: a forked run must change
    the block itself. Written by hand because no library edits it; the block
    lies in this process's own memory between ``env_start`` and ``env_end``
    (``/proc/self/stat`` fields 50 and 51).
    """
    stat = Path("/proc/self/stat").read_bytes()
    fields = stat[stat.rindex(b")") + 2 :].split()
    start, end = int(fields[47]), int(fields[48])
    block = ctypes.string_at(start, end - start)
    key = f"{TASK_ENV}=".encode()
    at = 0 if block.startswith(key) else block.index(b"\0" + key) + 1
    value_at = at + len(key)
    room = block.index(b"\0", value_at) - value_at
    value = task_id.encode()
    if len(value) > room:
        raise ValueError(f"task id longer than {room} bytes")
    ctypes.memmove(start + value_at, value + b"\0" * (room - len(value)), room)


def _become_run(
    spec: RunSpec, daemon: int, intermediate: int, log_fd: int, go: int, server: socket.socket
) -> None:
    """In the forked run (its own session already): wait to be the daemon's, run the spec."""
    while (parent := os.getppid()) != daemon:  # the intermediate exits right after the fork
        if parent != intermediate:  # the daemon died meanwhile: nobody would reap or kill us
            os._exit(127)
        time.sleep(0.0001)
    # Run only once the daemon has our PID: the server writes "go" after its reply went
    # out. If the server died first, the daemon retries the run elsewhere: we must not run.
    if os.read(go, 1) != b"g":
        os._exit(127)
    os.close(go)
    try:
        set_parent_death_signal(signal.SIGKILL)
    except OSError:
        os._exit(127)
    if os.getppid() != daemon:  # the daemon died before the prctl
        os._exit(127)
    server.close()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    _stamp_marker(spec.task_id)
    os.environ[TASK_ENV] = spec.task_id
    if spec.workspace is not None:
        try:
            os.chdir(spec.workspace)
        except OSError as exc:
            print(f"cannot enter the run's workspace: {exc}", file=sys.stderr, flush=True)
            os._exit(127)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    code = execute(spec)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@dataclass(slots=True)
class _Fork:
    """A run forked but not yet answered for: its PID arrives on ``pid_pipe``, and its
    intermediate's exit (after which the run is the daemon's child) on ``exited``."""

    task_id: str
    intermediate: int
    pid_pipe: int
    go: int
    exited: int
    pid: bytes | None = None
    reaped: bool = False


def _fork_run(
    request: dict[str, Any], daemon: int, server: socket.socket, inherited: list[int]
) -> _Fork:
    """Forks the run's intermediate; the run's PID comes later on the returned pipe.

    ``inherited`` are the pipes of the other runs in flight: the new processes close
    their copies, or a dead server's runs would wait for "go" until this one exited.
    """
    task_id = str(request["task_id"])
    spec = RunSpec.take(request["spec_path"])
    cgroup: str | None = request.get("cgroup")
    log_fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    go_read, go_write = os.pipe()
    read_end, write_end = os.pipe()
    cgroup_fd = -1
    try:
        intermediate = -1
        if cgroup and clone_into is not None:
            try:
                cgroup_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
                intermediate = clone_into(cgroup_fd)
            except OSError as exc:  # an old kernel, a seccomp filter: join it by writing
                print(f"fork server: clone3 into {cgroup} failed ({exc})", file=sys.stderr)
        born_inside = intermediate >= 0
        if not born_inside:
            intermediate = os.fork()
        if intermediate == 0:
            try:
                os.close(read_end)
                os.close(go_write)
                for fd in (*inherited, cgroup_fd):
                    if fd >= 0:
                        os.close(fd)
                if cgroup and not born_inside:
                    join_cgroup(cgroup)
                enter_limits(request.get("limit_cgroups", []), request.get("rlimits", []))
                me = os.getpid()
                if os.fork() == 0:
                    try:
                        # Its own session and process group before anyone learns its PID:
                        # a group kill sent the moment the daemon knows the run must reach
                        # it (before, it was still in the server's group).
                        os.setsid()
                        os.write(write_end, b"%d" % os.getpid())
                        os.close(write_end)
                        _become_run(spec, daemon, me, log_fd, go_read, server)
                    except BaseException:  # os._exit below would swallow it
                        traceback.print_exc()
                    finally:
                        os._exit(127)
            except BaseException:  # a cgroup join, a limit, a fork refused (EAGAIN)
                print(f"fork server: intermediate of {request.get('task_id')!r}:", file=sys.stderr)
                traceback.print_exc()
                os._exit(1)
            finally:
                os._exit(0)
    except BaseException:
        os.close(read_end)
        os.close(go_write)
        raise
    finally:
        os.close(write_end)
        os.close(log_fd)
        os.close(go_read)
        if cgroup_fd >= 0:
            os.close(cgroup_fd)
    try:
        exited = os.pidfd_open(intermediate)
    except BaseException:
        os.close(read_end)
        os.close(go_write)
        raise
    return _Fork(task_id, intermediate, read_end, go_write, exited)


class _WarmUpLlm(BaseLlm):
    """A model that answers at once: the warm-up runs the whole LLM-agent path (flows,
    request processors, tool handling), which ADK imports on its first use."""

    model: str = "warm-up"

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        yield LlmResponse(content=types.Content(role="model", parts=[types.Part(text="ok")]))


def _warm_up_tool() -> str:
    """Unused: declared so the tool-declaration path is imported too."""
    return "ok"


async def _warm_up() -> None:
    # ADK imports much of itself lazily on the first invocation (its workflow
    # engine alone is ~0.4 s here): one in-memory invocation pulls all of it in.
    agent = LlmAgent(name="warm_up", model=_WarmUpLlm(), tools=[_warm_up_tool])
    runner = InMemoryRunner(agent=agent, app_name="warm_up")
    session = await runner.session_service.create_session(app_name="warm_up", user_id="u")
    message = types.Content(role="user", parts=[types.Part(text="warm up")])
    async for _ in runner.run_async(user_id="u", session_id=session.id, new_message=message):
        pass
    await runner.close()


def _preload(refs: list[str]) -> None:
    # Loading here is the point of the server: every run forks with all of it in memory.
    try:
        asyncio.run(_warm_up())
    except Exception:
        print("fork server: the warm-up invocation failed:", file=sys.stderr)
        traceback.print_exc()
    for ref in refs:
        try:
            load_app(ref)
        except Exception:
            print(f"fork server: cannot preload {ref!r}:", file=sys.stderr)
            traceback.print_exc()


_COLLAPSE = 25  # MADV_COLLAPSE (linux/mman.h)


def _collapse_heap() -> int:
    """Asks the kernel to back the preloaded heap with 2 MiB pages; returns the bytes.

    Each fork copies the server's page tables and each run's exit frees its copy:
    with ~100 MB of ADK in 4 KiB pages that is ~25,000 entries, several ms of
    kernel time per run here. A huge page is one entry (a run that writes into one
    gets it split and copies only the 4 KiB it wrote). ``MADV_COLLAPSE`` (Linux
    6.1+) works whatever the THP sysfs mode but "never"; where it fails the heap
    simply stays in small pages.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    huge = 1 << 21
    done = 0
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        low, high = (int(x, 16) for x in fields[0].split("-"))
        name = fields[5] if len(fields) > 5 else ""
        if fields[1][:2] != "rw" or name not in ("", "[heap]"):
            continue  # only private anonymous memory: Python's arenas and malloc's heap
        start, end = (low + huge - 1) & ~(huge - 1), high & ~(huge - 1)
        size = end - start
        if size > 0 and libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(size), _COLLAPSE) == 0:
            done += size
    return done


def _cache_redis_version() -> None:
    # redis-py looks its own version up in the installed metadata (a dozen file reads,
    # 2-3 ms) for every connection it makes: once here instead of once in every run.
    import redis.utils

    redis.utils.get_lib_version = functools.cache(redis.utils.get_lib_version)
    redis.utils.get_lib_version()


def _answer(server: socket.socket, fork: _Fork) -> None:
    """Replies for ``fork`` (its PID, or that its intermediate failed), then lets it run."""
    reply: dict[str, object] = {"task_id": fork.task_id}
    if fork.pid:
        reply["pid"] = int(fork.pid)
    else:
        reply["error"] = f"could not fork run {fork.task_id} (see the fork server's log)"
    try:
        server.send(json.dumps(reply).encode())
        if fork.pid:
            os.write(fork.go, b"g")
    except BrokenPipeError:
        pass  # the daemon is gone: closing "go" unwritten ends the run unstarted
    finally:
        os.close(fork.go)


def _serve(server: socket.socket, daemon: int) -> int:
    """Takes requests as they come; answers each once its run has its own session and is
    the daemon's child (its intermediate exited), as a lone spawn would be."""
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ)
    forks: dict[int, _Fork] = {}  # by the pipe its PID arrives on and by its exit's pidfd
    while True:
        for key, _ in selector.select():
            if key.fileobj is not server:
                fork = forks.pop(key.fd)
                selector.unregister(key.fd)
                if key.fd == fork.pid_pipe:
                    try:
                        fork.pid = os.read(fork.pid_pipe, 32)
                    finally:
                        os.close(fork.pid_pipe)
                else:
                    os.waitpid(fork.intermediate, 0)  # it exited: this does not block
                    os.close(fork.exited)
                    fork.reaped = True
                if fork.pid is not None and fork.reaped:
                    _answer(server, fork)
                continue
            while True:  # every request queued so far, then back to the PIDs
                try:
                    message = server.recv(1 << 20, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    break
                if not message:
                    return 0
                task_id = None
                try:
                    request = json.loads(message)
                    task_id = request.get("task_id")
                    inherited = [selector.fileno(), *forks]
                    inherited += list({f.go for f in forks.values()})
                    fork = _fork_run(request, daemon, server, inherited)
                except Exception as exc:
                    traceback.print_exc()
                    reply = {"task_id": task_id, "error": f"{type(exc).__name__}: {exc}"}
                    try:
                        server.send(json.dumps(reply).encode())
                    except BrokenPipeError:
                        return 0
                    continue
                for fd in (fork.pid_pipe, fork.exited):
                    forks[fd] = fork
                    selector.register(fd, selectors.EVENT_READ)


def main() -> int:
    """Serves spawn requests on fd 3 until the daemon closes its end."""
    server = socket.socket(fileno=SERVER_FD)
    daemon = os.getppid()
    _cache_redis_version()
    _preload(json.loads(os.environ.get(PRELOAD_ENV, "[]")))
    if threading.active_count() > 1:
        print(
            "fork server: an import started threads; forking such a process is unsafe",
            file=sys.stderr,
        )
    gc.freeze()
    huge = _collapse_heap()
    print(
        f"fork server {os.getpid()} ready ({huge >> 20} MiB of its heap in huge pages)",
        file=sys.stderr,
        flush=True,
    )
    return _serve(server, daemon)


if __name__ == "__main__":
    sys.exit(main())
