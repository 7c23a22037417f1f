"""A real Sentinel deployment for tests: one master, one replica, three sentinels on free ports."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from agent_runtime.process_control import set_parent_death_signal
from supervisor.ops.redis_server import RedisServer, _free_tcp_port, find_redis_server

SERVICE = "adkmaster"


def _die_with_parent() -> None:
    set_parent_death_signal(signal.SIGTERM)


class _SentinelProcess:
    """``redis-server <conf> --sentinel``: each sentinel rewrites its own config file."""

    def __init__(self, directory: Path, master_port: int) -> None:
        self.port = _free_tcp_port()
        self.directory = directory
        directory.mkdir(parents=True)
        self.conf = directory / "sentinel.conf"
        self.conf.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {directory}\n"
            f"logfile {directory / 'sentinel.log'}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 5000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        self.proc = subprocess.Popen(
            [find_redis_server(), str(self.conf), "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, decode_responses=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class SentinelTopology:
    """The master, its replica and three sentinels that agree on both (quorum 2)."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="adk-sentinel-"))
        self.master = RedisServer(self.directory / "a", tcp=True)
        self.master.start()
        self.replica = RedisServer(
            self.directory / "b",
            tcp=True,
            extra_args=("--replicaof", "127.0.0.1", str(self.master.port)),
        )
        self.replica.start()
        self.sentinels = [
            _SentinelProcess(self.directory / f"s{n}", self.master.port) for n in range(3)
        ]
        self._until(self._settled, 30, "sentinels never saw the replica and each other")

    def url(self, query: str = "", scheme: str = "redis+sentinel") -> str:
        """The ``redis+sentinel://`` URL of the master, through all three sentinels."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"{scheme}://{hosts}/{SERVICE}" + (f"?{query}" if query else "")

    def master_port(self) -> int:
        """The master's port, as the first sentinel that answers says."""
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError), sentinel.client() as client:
                _host, port = client.sentinel_get_master_addr_by_name(SERVICE)
                return int(port)
        raise AssertionError("no sentinel answers")

    def node(self, port: int) -> redis.Redis:
        """A plain client of the data node on ``port``."""
        return redis.Redis(port=port, socket_timeout=5)

    def failover(self, timeout: float = 30) -> tuple[int, int]:
        """``SENTINEL FAILOVER``; returns (old, new) master ports once the new one takes writes."""
        old = self.master_port()
        with self.sentinels[0].client() as client:
            client.execute_command("SENTINEL", "FAILOVER", SERVICE)
        self._until(lambda: self._all_agree_not(old), timeout, "the master never changed")
        new = self.master_port()
        self._until(lambda: self._role(new) == "master", timeout, "the new master never took over")
        return old, new

    def until_demoted(self, port: int, timeout: float = 60) -> None:
        """Waits until the old master ``port`` follows the new one and has synced."""

        def synced() -> bool:
            with self.node(port) as client:
                info = client.info("replication")
            return bool(info.get("role") == "slave" and info.get("master_link_status") == "up")

        self._until(synced, timeout, f"{port} never became a synced replica")

    def _all_agree_not(self, old: int) -> bool:
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                _host, port = client.sentinel_get_master_addr_by_name(SERVICE)
            if int(port) == old:
                return False
        return True

    def _role(self, port: int) -> str:
        with self.node(port) as client:
            return str(client.info("replication").get("role"))

    def _settled(self) -> bool:
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                master = client.sentinel_master(SERVICE)
                if int(master.get("num-other-sentinels", 0)) < 2:
                    return False
                if not client.sentinel_slaves(SERVICE):
                    return False
        with self.node(self.replica.port) as client:
            return bool(client.info("replication").get("master_link_status") == "up")

    @staticmethod
    def _until(check: object, timeout: float, what: str) -> None:
        assert callable(check)
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except redis.RedisError as exc:
                last = exc
            time.sleep(0.05)
        raise AssertionError(f"{what} within {timeout}s (last error: {last})")

    def cleanup(self) -> None:
        """Stops every process and removes the directory."""
        for sentinel in self.sentinels:
            sentinel.stop()
        self.replica.stop()
        self.master.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
