"""The object store of values too large for one message: big results and big arguments.

JetStream's object store chunks a value over many messages; its bucket keeps objects as long as
the results (``result_ttl``). Part of the wire package: reads and writes have a time-out and
raise only jsqueue's errors; a missing object is ``None``, not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

import nats.js.errors
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.object_store import ObjectStore as NatsObjectStore

from jsqueue.errors import ProvisionError, TransientError
from jsqueue.wire.errors import placement_pending, translated

T = TypeVar("T")


class ObjectStore:
    """One object store bucket. Open it with :meth:`open` (through ``Broker.objects``)."""

    def __init__(self, store: NatsObjectStore, bucket: str, timeout: float) -> None:
        self._store = store
        self.bucket = bucket
        self.stream = f"OBJ_{bucket}"
        self.timeout = timeout

    @classmethod
    @translated
    async def open(
        cls,
        js: JetStreamContext,
        bucket: str,
        *,
        ttl: float,
        replicas: int,
        create: bool,
        timeout: float,
    ) -> ObjectStore:
        if not create:
            try:
                return cls(await js.object_store(bucket), bucket, timeout)
            except nats.js.errors.BucketNotFoundError:
                raise ProvisionError(
                    f"object store {bucket} does not exist and this app has provision=False; "
                    "start a worker (or an app with provisioning) once to create it"
                ) from None
        config = js_api.ObjectStoreConfig(
            bucket=bucket,
            ttl=ttl,
            replicas=replicas,
            storage=js_api.StorageType.FILE,
            description="jsqueue: results and arguments too large for one message",
        )
        try:
            store = await js.create_object_store(bucket, config)
        except nats.js.errors.APIError as exc:
            if exc.err_code != 10058:  # exists already: ours from an earlier start
                raise placement_pending(exc, f"creating object store {bucket}") or ProvisionError(
                    f"cannot create object store {bucket}: {exc.description}"
                ) from None
            store = await js.object_store(bucket)
        return cls(store, bucket, timeout)

    @translated
    async def put(self, name: str, data: bytes) -> None:
        """Store ``data`` as ``name`` (a second put under one name replaces the first)."""
        await self._within(self._store.put(name, data), f"storing object {name}")

    @translated
    async def get(self, name: str, timeout: float | None = None) -> bytes | None:
        """The object ``name``, or None if there is none (never stored, or expired)."""
        try:
            found = await self._within(self._store.get(name), f"reading object {name}", timeout)
        except nats.js.errors.NotFoundError:
            return None
        return bytes(found.data or b"")

    @translated
    async def delete(self, name: str) -> None:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self._within(self._store.delete(name), f"deleting object {name}")

    async def _within(self, work: Awaitable[T], doing: str, timeout: float | None = None) -> T:
        limit = timeout or self.timeout
        try:
            return await asyncio.wait_for(work, limit)
        except TimeoutError:
            raise TransientError(f"{doing} in {self.bucket} took over {limit:g}s") from None
