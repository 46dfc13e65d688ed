"""``jsqueue server``: the bundled nats-server in the foreground, or a suitable one reused.

If something already answers at the URL, it is checked: a JetStream server new enough is reused
(we say so and idle until stopped, so a Procfile stays up); anything else is a one-line error.
Otherwise the bundled binary runs on 127.0.0.1 with JetStream on the store dir until SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from urllib.parse import urlsplit

from jsqueue.config import Settings, redact_url
from jsqueue.errors import ConfigError, JsqueueError
from jsqueue.wire import Broker
from jsqueue.wire.server import NatsServer, listening, server_version

log = logging.getLogger("jsqueue.wire.server")


async def serve(url: str, port: int | None, store_dir: str) -> None:
    """Serve until SIGTERM/SIGINT (or until the server process dies)."""
    split = urlsplit(url.split(",")[0].strip())
    host = split.hostname or "127.0.0.1"
    port = port or split.port or 4222
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if listening(host, port, timeout=1.0):
        await _reuse(f"nats://{host}:{port}" if split.hostname else url, stop)
        return
    if host not in ("127.0.0.1", "localhost"):
        raise ConfigError(
            f"nothing answers at {redact_url(url)} and the bundled server only runs on 127.0.0.1"
        )
    server = NatsServer(port=port, store_dir=_store(store_dir))
    try:
        await asyncio.to_thread(server.start)
        log.info(
            "nats-server %s with JetStream listening on %s (pid %s, store %s)",
            server_version(),
            server.url,
            server.pid,
            server.store_dir,
        )
        await _until_stopped_or_dead(server, stop)
    finally:
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.cleanup)  # its run dir; the store dir is the user's
        log.info("nats-server stopped")


async def _reuse(url: str, stop: asyncio.Event) -> None:
    broker = Broker(Settings(name="jsqueue-server", url=url, provision=False))
    await broker.connect()
    version = broker.server_version
    await broker.close()
    log.info(
        "a JetStream server (v%s) already answers at %s; using it and staying up",
        version,
        redact_url(url),
    )
    await stop.wait()


async def _until_stopped_or_dead(server: NatsServer, stop: asyncio.Event) -> None:
    assert server.process is not None
    while not stop.is_set():
        try:
            async with asyncio.timeout(0.5):
                await stop.wait()
        except TimeoutError:
            code = server.process.poll()
            if code is not None:
                tail = server.log_tail()
                raise JsqueueError(f"nats-server exited with code {code}: {tail}") from None


def _store(store_dir: str) -> Path:
    path = Path(store_dir).absolute()
    path.mkdir(parents=True, exist_ok=True)
    return path
