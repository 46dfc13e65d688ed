"""A NATS cluster on loopback for tests and local trials: three (or more) nats-servers with
distinct client and cluster ports, their own store dirs, names, routes to all, and
``sync_interval: always``; nodes are started, killed and restarted by PID.

Exported through :mod:`jsqueue.testing`; part of the wire package (it asks the nodes over NATS).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import time
from pathlib import Path
from types import TracebackType

import nats
import nats.errors
import nats.js.errors

from jsqueue.wire.server import NatsServer, ServerStartError


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


class NatsCluster:
    """``size`` clustered JetStream servers; ``url`` lists every node's client URL."""

    def __init__(self, size: int = 3, name: str = "jsq", base_dir: Path | None = None) -> None:
        self.size = size
        self.name = name
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="jsqueue-cluster-"))
        ports = _free_ports(2 * size)
        self.client_ports, self.cluster_ports = ports[:size], ports[size:]
        self.nodes = [self._node(i) for i in range(size)]

    def _node(self, i: int) -> NatsServer:
        node_dir = self.base_dir / f"n{i + 1}"
        node_dir.mkdir(parents=True, exist_ok=True)
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.cluster_ports)
        config = node_dir / "nats.conf"
        config.write_text(
            f"server_name: n{i + 1}\n"
            f"jetstream {{ store_dir: {node_dir / 'store'}, sync_interval: always }}\n"
            f"cluster {{ name: {self.name}, listen: 127.0.0.1:{self.cluster_ports[i]}, "
            f"routes: [{routes}] }}\n"
        )
        return NatsServer(port=self.client_ports[i], config_file=config, jetstream=False)

    @property
    def url(self) -> str:
        return ",".join(f"nats://127.0.0.1:{p}" for p in self.client_ports)

    def node_url(self, i: int) -> str:
        return f"nats://127.0.0.1:{self.client_ports[i]}"

    def pid(self, i: int) -> int | None:
        return self.nodes[i].pid

    def start(self, timeout: float = 30.0) -> NatsCluster:
        """Start every node and return once JetStream answers (a meta leader is elected)."""
        for node in self.nodes:
            node.start()
        asyncio.run(self.wait_ready(timeout))
        return self

    async def wait_ready(self, timeout: float = 30.0, nodes: list[int] | None = None) -> None:
        """Wait until JetStream answers through each of ``nodes`` (default: all running)."""
        deadline = time.monotonic() + timeout
        for i in nodes if nodes is not None else range(self.size):
            while True:
                try:
                    nc = await nats.connect(
                        self.node_url(i), connect_timeout=2, allow_reconnect=False
                    )
                    try:
                        await nc.jetstream(timeout=2).account_info()
                        break
                    finally:
                        await nc.close()
                except (OSError, nats.errors.Error, nats.js.errors.Error, TimeoutError):
                    if time.monotonic() > deadline:
                        raise ServerStartError(f"cluster node n{i + 1} has no JetStream") from None
                    await asyncio.sleep(0.2)

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (0-based)."""
        self.nodes[i].kill()

    def stop(self, i: int) -> None:
        """SIGTERM node ``i``: a clean shutdown (it hands its leaderships over first)."""
        self.nodes[i].stop()

    def restart(self, i: int, kill: bool = False) -> None:
        self.nodes[i].restart(kill=kill)

    def start_node(self, i: int) -> None:
        self.nodes[i].start()

    async def stream_leader(self, stream: str, timeout: float = 20.0) -> int:
        """Which node (0-based) leads ``stream`` now."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(self.size):
                try:
                    nc = await nats.connect(
                        self.node_url(i), connect_timeout=2, allow_reconnect=False
                    )
                except (OSError, nats.errors.Error, TimeoutError):
                    continue
                try:
                    info = await nc.jetstream(timeout=2).stream_info(stream)
                    leader = info.cluster.leader if info.cluster else None
                    if leader:
                        return int(leader.removeprefix("n")) - 1
                except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
                    pass
                finally:
                    await nc.close()
            if time.monotonic() > deadline:
                raise TimeoutError(f"stream {stream} has no leader after {timeout}s")
            await asyncio.sleep(0.2)

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
