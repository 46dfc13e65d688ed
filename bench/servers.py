"""The brokers the peers use: addresses, reachability, versions, and the bundled nats-server.

Redis and RabbitMQ are expected to run already (a peer whose server does not answer is skipped).
NATS always comes from :class:`jsqueue.wire.server.NatsServer` (the bundled 2.15 build) on a free
port, never from whatever listens on 4222: the harness starts one per run and exports its URL.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

from jsqueue.wire.server import NatsServer, server_version

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"  # kombu spells the "/" vhost "//"...
PIKA_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"  # ...and pika "%2F"
NATS_ENV = "BENCH_NATS_URL"

#: One Redis database per peer, so purging deletes nothing of anyone else's.
REDIS_DB = {"celery": 12, "arq": 13, "dramatiq": 14}


def redis_url(peer: str) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB[peer]}"


def clear_redis_db(peer: str) -> None:
    """Delete every key of the peer's own Redis database (a scan, so nothing else is touched)."""
    import redis

    client = redis.Redis.from_url(redis_url(peer))
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
    finally:
        client.close()


def nats_url() -> str:
    """The URL of the run's bundled nats-server (set by :func:`bundled_nats`)."""
    url = os.environ.get(NATS_ENV)
    if not url:
        raise RuntimeError(f"${NATS_ENV} is not set: the harness starts the nats-server")
    return url


def reachable(url: str, timeout: float = 1.0) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "", parts.port or 0), timeout=timeout):
            return True
    except OSError:
        return False


def unreachable(*urls: str) -> str | None:
    """A skip note naming the first server that does not answer, or None."""
    for url in urls:
        if not reachable(url):
            parts = urlsplit(url)
            return f"{parts.scheme} server at {parts.hostname}:{parts.port} is unreachable"
    return None


@contextlib.contextmanager
def bundled_nats() -> Iterator[NatsServer]:
    """Start the bundled nats-server with JetStream; export its URL; remove it afterwards."""
    server = NatsServer()
    try:
        server.start()
        os.environ[NATS_ENV] = server.url
        yield server
    finally:
        os.environ.pop(NATS_ENV, None)
        server.cleanup()


def versions_of_servers() -> dict[str, str]:
    """What the servers report: nats-server (bundled), Redis and RabbitMQ (if reachable)."""
    found = {"nats-server (bundled)": server_version()}
    with contextlib.suppress(Exception):
        import redis

        info = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=2).info("server")
        found["Redis server"] = str(info["redis_version"])
    with contextlib.suppress(Exception):
        from kombu.connection import Connection

        with Connection(AMQP_URL, connect_timeout=2) as conn:  # type: ignore[no-untyped-call]
            conn.connect()
            props = conn.connection.server_properties
            version = props.get("version", "?")
            found["RabbitMQ server"] = version.decode() if isinstance(version, bytes) else version
    return found
