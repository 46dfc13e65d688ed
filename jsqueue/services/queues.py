"""Pausing and resuming a queue: workers stop starting its jobs, and nothing is lost.

A pause is a key ``<queue>`` in the ``<prefix>_queues`` bucket, which every worker watches
(:class:`PausedQueues`), and a server-side pause of the queue's consumers, every priority level
(nats-server 2.11+): the workers stop starting its jobs at once, the server stops delivering
them, and jobs sent meanwhile wait in the stream. A worker started while the queue is paused
reads the bucket and stays paused; a consumer created then is paused too. Resuming undoes both.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from jsqueue.config import LEVELS, check_queue
from jsqueue.services.deps import Deps
from jsqueue.wire import Broker, KvStore

log = logging.getLogger("jsqueue.queues")

#: the server keeps a paused consumer paused until then: until resumed, in practice
PAUSED_UNTIL = "9999-01-01T00:00:00Z"


async def _bucket(broker: Broker) -> KvStore:
    return await broker.kv("queues")


def consumers_of(broker: Broker, queue: str) -> list[str]:
    """The consumer names of every level of ``queue``."""
    return [broker.settings.consumer_name(queue, level) for level in LEVELS]


async def pause_queue(app: Deps, queue: str, *, by: str | None = None) -> dict[str, Any]:
    """Pause ``queue``: workers stop starting its jobs within a second; jobs keep arriving and
    wait. Pausing a paused queue changes nothing. Returns what is recorded."""
    check_queue(queue)
    broker = await app.broker()
    note = {"paused": True, "at": time.time(), "by": by or socket.gethostname()}
    store = await _bucket(broker)
    current = await store.get(queue)
    if current is not None:
        note = json.loads(current.value)
    else:
        await store.put(queue, json.dumps(note).encode())
    await broker.pause_consumers(consumers_of(broker, queue), PAUSED_UNTIL)
    log.info("queue %s paused", queue)
    return note


async def resume_queue(app: Deps, queue: str) -> bool:
    """Resume ``queue``; False if it was not paused (its consumers are resumed anyway)."""
    check_queue(queue)
    broker = await app.broker()
    await broker.pause_consumers(consumers_of(broker, queue), None)
    store = await _bucket(broker)
    was = await store.get(queue) is not None
    await store.delete(queue)
    log.info("queue %s resumed", queue)
    return was


async def paused_queues(app: Deps) -> dict[str, dict[str, Any]]:
    """Every paused queue, with when and by whom it was paused."""
    broker = await app.broker()
    return {e.key: json.loads(e.value) for e in await (await _bucket(broker)).values()}


class PausedQueues:
    """The paused queues, kept current by a watch of the queues bucket (for workers)."""

    def __init__(self, on_change: Callable[[str, bool], Awaitable[None]]) -> None:
        self.names: set[str] = set()
        self._on_change = on_change
        self._unwatch: Callable[[], Awaitable[None]] | None = None

    async def start(self, broker: Broker) -> None:
        store = await _bucket(broker)

        async def on_update(key: str, value: bytes | None, revision: int) -> None:
            paused = value is not None
            if (key in self.names) != paused:
                if paused:
                    self.names.add(key)
                else:
                    self.names.discard(key)
                await self._on_change(key, paused)

        self._unwatch = await store.watch_new(on_update)  # first: no change falls in between
        for entry in await store.values():
            self.names.add(entry.key)

    async def stop(self) -> None:
        if self._unwatch is not None:
            unwatch, self._unwatch = self._unwatch, None
            try:
                await unwatch()
            except Exception as exc:  # the connection is gone already
                log.debug("unwatching the queues bucket failed: %r", exc)

    def __contains__(self, queue: object) -> bool:
        return queue in self.names
