"""``adk-supervisor run``: the daemon in the foreground, as systemd or a terminal runs it.

Holds the state-dir lock, starts the embedded Redis when no ``redis_url`` is
configured, and turns SIGTERM / SIGINT into a clean stop.
"""

from __future__ import annotations

import logging
import signal

import anyio

from ..config import Settings
from ..errors import StateDirLocked, StateDirUnusable
from ..ops.redis_server import RedisServer
from ..ops.state_lock import StateDirLock
from .durability import check_durable_apps
from .fd_budget import raise_fd_limit
from .node import Supervisor

__all__ = ["run_foreground"]

log = logging.getLogger("adk_supervisor")


def run_foreground(settings: Settings, redis_url: str | None) -> None:
    """Serves until SIGTERM or SIGINT; the runs are killed (or drained) and recorded first."""
    check_durable_apps(settings)
    # Before anything opens a descriptor or forks: the fork server, the runs and an
    # embedded Redis inherit the raised limit.
    raise_fd_limit(settings)
    lock = StateDirLock(settings.state_dir)
    try:
        lock.acquire()
    except StateDirLocked:
        raise
    except OSError as exc:
        raise StateDirUnusable(
            f"cannot use state_dir {settings.state_dir}: {exc.strerror or exc}. Set state_dir "
            "in the config (or ADK_SUPERVISOR_STATE_DIR) to a directory this user may write"
        ) from None
    try:
        if redis_url:
            anyio.run(_serve, settings, redis_url, False)
            return
        # No redis_url configured: a private Redis in state_dir, append-only so records survive.
        server = RedisServer(settings.state_dir / "redis", appendonly=True, die_with_parent=True)
        with server:
            log.info(
                "no redis_url configured: embedded Redis at %s (data in %s); "
                "it stops with the daemon",
                server.url,
                server.data_dir,
            )
            anyio.run(_serve, settings, server.url, True)
    finally:
        lock.release()


async def _serve(settings: Settings, redis_url: str, embedded: bool) -> None:
    supervisor = Supervisor(settings, redis_url=redis_url, embedded_redis=embedded)
    async with anyio.create_task_group() as tg:

        async def on_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                # Kept open while stopping: a second Ctrl-C must not kill the daemon
                # before it has recorded how its runs ended.
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if supervisor.stopping:
                        log.warning("%s: already stopping, recording how runs ended", name)
                        continue
                    log.info("%s: stopping", name)
                    supervisor.stop()

        tg.start_soon(on_signals)
        await supervisor.serve()
        tg.cancel_scope.cancel()
