"""The worker registry: each worker's heartbeat record in the ``<prefix>_workers`` KV bucket.

A record says who the worker is, what it consumes, what it runs now and what it has done; the
bucket's TTL removes a dead worker's record within ``REGISTRY_TTL`` seconds.
"""

from __future__ import annotations

import contextlib
import json
import platform
from importlib import metadata
from typing import Any

from jsqueue.wire import KvStore

REGISTRY_EVERY = 2.0
REGISTRY_TTL = 10.0


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for dist in ("jsqueue", "nats-py"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "unknown"
    return found


class WorkerRegistry:
    """Write and read worker records."""

    def __init__(self, store: KvStore) -> None:
        self.store = store

    async def beat(self, record: dict[str, Any]) -> None:
        await self.store.put(_key(record["id"]), json.dumps(record).encode())

    async def remove(self, worker_id: str) -> None:
        with contextlib.suppress(Exception):  # the server is gone: the TTL removes the record
            await self.store.delete(_key(worker_id))

    async def workers(self) -> list[dict[str, Any]]:
        """Every live worker's record, by id."""
        records = [json.loads(entry.value) for entry in await self.store.values()]
        return sorted(records, key=lambda r: str(r.get("id")))


def _key(worker_id: str) -> str:
    """Worker ids may hold characters KV keys do not allow (a hostname's '.', say)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in worker_id)
