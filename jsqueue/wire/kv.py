"""A JetStream KV bucket with jsqueue's errors: create-only writes, guarded updates, watches.

Part of the wire package: its coroutines raise only jsqueue's errors. Keys use ``.`` between
parts, never ``:``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.kv import KeyValue

from jsqueue.errors import JsqueueError, ProvisionError
from jsqueue.wire.acks import Ack, AckedPublisher
from jsqueue.wire.errors import NATS_ERRORS, placement_pending, translate, translated

_NEW_KEY = {"Nats-Expected-Last-Subject-Sequence": "0"}
#: what JetStream answers a create of a key that exists (wrong last sequence) or was deleted
_EXISTS = (10071, 10164)


class KeyExists(JsqueueError):
    """A create found the key already there, or an update found another revision."""


class PendingCreate:
    """A create sent ahead (:meth:`KvStore.send_create`): awaiting it gives the revision, or
    None when the key already exists or was deleted (take :meth:`KvStore.create` then);
    other failures are jsqueue's errors, as from every wire call."""

    __slots__ = ("_future",)

    def __init__(self, future: asyncio.Future[Ack]) -> None:
        self._future = future

    def done(self) -> bool:
        """Whether the answer is here (awaiting it then does not suspend)."""
        return self._future.done()

    def __await__(self) -> Generator[Any, None, int | None]:
        try:
            ack = yield from self._future.__await__()
        except nats.js.errors.APIError as exc:
            if exc.err_code in _EXISTS:
                return None
            raise translate(exc) from None
        except NATS_ERRORS as exc:
            raise translate(exc) from None
        return ack.seq


@dataclass(frozen=True)
class Entry:
    key: str
    value: bytes
    revision: int


class KvStore:
    """One KV bucket. Open it with :meth:`open` (through ``Broker.kv``)."""

    def __init__(
        self,
        js: JetStreamContext,
        publisher: AckedPublisher,
        kv: KeyValue,
        bucket: str,
        replicas: int = 1,
    ) -> None:
        self._js = js
        self._replicas = replicas
        self._publisher = publisher
        self._kv = kv
        self.bucket = bucket
        self.stream = f"KV_{bucket}"

    @classmethod
    @translated
    async def open(
        cls,
        js: JetStreamContext,
        publisher: AckedPublisher,
        bucket: str,
        *,
        ttl: float | None,
        history: int,
        replicas: int,
        create: bool,
    ) -> KvStore:
        """Bind to the bucket, creating it (or updating its TTL) when ``create`` is true."""
        if not create:
            try:
                return cls(js, publisher, await js.key_value(bucket), bucket, replicas)
            except nats.js.errors.BucketNotFoundError:
                raise ProvisionError(
                    f"KV bucket {bucket} does not exist and this app has provision=False; "
                    "start a worker (or an app with provisioning) once to create it"
                ) from None
        config = js_api.KeyValueConfig(
            bucket=bucket,
            history=history,
            ttl=ttl,
            replicas=replicas,
            storage=js_api.StorageType.FILE,
        )
        try:
            kv = await js.create_key_value(config)
        except nats.js.errors.APIError as exc:
            if exc.err_code != 10058:  # exists with another configuration
                raise placement_pending(exc, f"creating KV bucket {bucket}") or ProvisionError(
                    f"cannot create KV bucket {bucket} with replicas={replicas}: {exc.description}"
                ) from None
            # ours from an earlier deployment: take this one's TTL and replicas (1 -> 3 when
            # moving to a cluster)
            info = await js.stream_info(f"KV_{bucket}")
            try:
                await js.update_stream(info.config.evolve(max_age=ttl or 0, num_replicas=replicas))
            except nats.js.errors.APIError as exc:
                raise placement_pending(exc, f"updating KV bucket {bucket}") or ProvisionError(
                    f"cannot update KV bucket {bucket} to replicas={replicas}: {exc.description}"
                ) from None
            kv = await js.key_value(bucket)
        return cls(js, publisher, kv, bucket, replicas)

    @translated
    async def get(self, key: str) -> Entry | None:
        try:
            entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        return Entry(key, entry.value or b"", entry.revision or 0)

    @translated
    async def send_create(self, key: str, value: bytes) -> PendingCreate:
        """Send a create of ``key`` without waiting for the server's answer: many can be in
        flight, each answered in the order sent."""
        future = await self._publisher.publish(f"$KV.{self.bucket}.{key}", value, _NEW_KEY)
        return PendingCreate(future)

    @translated
    async def create(self, key: str, value: bytes, ttl: float | None = None) -> int:
        """Write ``key`` only if it does not exist; :class:`KeyExists` otherwise."""
        if ttl is None:  # the common case, one pipelined publish (no nats-py KV wrapper)
            revision = await (await self.send_create(key, value))  # the publisher times it out
            if revision is not None:
                return revision
            # the key exists, or was deleted (its tombstone needs nats-py's re-create dance)
        try:
            return await self._kv.create(key, value, msg_ttl=ttl)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
            # nats-py may report the loser of a create race either way.
            raise KeyExists(f"{self.bucket}: {key} exists") from None

    @translated
    async def update(self, key: str, value: bytes, last: int) -> int:
        """Write ``key`` only if its revision is still ``last``; :class:`KeyExists` otherwise."""
        try:
            return await self._kv.update(key, value, last=last)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise KeyExists(f"{self.bucket}: {key} changed since revision {last}") from None

    async def swap(self, key: str, value: bytes, seen: Entry | None) -> int:
        """Write ``key`` only if it is still as read: absent (``seen`` None) or at ``seen``'s
        revision; :class:`KeyExists` otherwise (read it again and retry)."""
        if seen is None:
            return await self.create(key, value)
        return await self.update(key, value, seen.revision)

    @translated
    async def put(self, key: str, value: bytes) -> int:
        return await self._kv.put(key, value)

    @translated
    async def delete(
        self, key: str, *, last: int | None = None, marker_ttl: float | None = None
    ) -> None:
        """Remove ``key``; with ``last``, only if its revision is still ``last``
        (:class:`KeyExists` otherwise), leaving a delete marker that lives ``marker_ttl``
        seconds."""
        if last is None:
            await self._kv.purge(key)
            return
        try:
            await self._kv.delete(key, last=last, msg_ttl=marker_ttl)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise KeyExists(f"{self.bucket}: {key} changed since revision {last}") from None

    @translated
    async def values(self, pattern: str = ">") -> list[Entry]:
        """Every live entry whose key matches ``pattern``.

        Read with a pull consumer (last message per key) rather than nats-py's KV watch: a pull
        consumer delivers nothing until asked, so its pending count is exactly how many entries
        to fetch. The watch decides it has seen everything from a consumer-info reply that can
        overtake the deliveries, and under load it may end early with entries missing.
        """
        sub = await self._js.pull_subscribe(
            f"$KV.{self.bucket}.{pattern}",
            stream=self.stream,
            config=js_api.ConsumerConfig(
                deliver_policy=js_api.DeliverPolicy.LAST_PER_SUBJECT,
                ack_policy=js_api.AckPolicy.NONE,
                inactive_threshold=60,
                mem_storage=True,
            ),
        )
        prefix = len(f"$KV.{self.bucket}.")
        entries = []
        try:
            left = (await sub.consumer_info()).num_pending or 0
            while left > 0:
                batch = await sub.fetch(min(left, 1000), timeout=10)
                left -= len(batch)
                for msg in batch:
                    headers = msg.headers or {}
                    if headers.get("KV-Operation") in ("DEL", "PURGE") or (
                        "Nats-Marker-Reason" in headers
                    ):
                        continue  # a deleted or expired key
                    seq = msg.metadata.sequence.stream
                    entries.append(Entry(msg.subject[prefix:], msg.data or b"", seq))
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        return entries

    @translated
    async def count_keys(self, pattern: str) -> int:
        """How many live keys match ``pattern``, answered by the server in one request.

        A consumer that would deliver the last message per matching subject is created once
        (idempotent, named after the pattern, removed after an hour unused); its pending count
        is the number of distinct keys, however many times each was written.
        """
        name = "count_" + hashlib.sha1(pattern.encode()).hexdigest()[:24]
        try:
            info = await self._js.consumer_info(self.stream, name)
        except nats.js.errors.NotFoundError:
            info = await self._js.add_consumer(
                self.stream,
                js_api.ConsumerConfig(
                    name=name,
                    filter_subject=f"$KV.{self.bucket}.{pattern}",
                    deliver_policy=js_api.DeliverPolicy.LAST_PER_SUBJECT,
                    ack_policy=js_api.AckPolicy.NONE,
                    inactive_threshold=3600,
                    mem_storage=True,
                    # as many replicas as the bucket: a memory consumer is otherwise R1, and
                    # with its one node down every count would hang (seen on a cluster)
                    num_replicas=self._replicas,
                ),
            )
        return int(info.num_pending or 0)

    @translated
    async def forget_count(self, pattern: str) -> None:
        """Remove the counting consumer of :meth:`count_keys` (it also expires by itself)."""
        name = "count_" + hashlib.sha1(pattern.encode()).hexdigest()[:24]
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self._js.delete_consumer(self.stream, name)

    @translated
    async def count(self) -> int:
        info = await self._js.stream_info(self.stream)
        return int(info.state.messages)

    @translated
    async def watch_new(
        self,
        callback: Callable[[str, bytes | None, int], Awaitable[None]],
        *,
        replay: bool = False,
        key: str = ">",
    ) -> Callable[[], Awaitable[None]]:
        """Call ``callback(key, value or None if deleted, revision)`` for every write from now
        to keys matching ``key`` (with ``replay``, first for the current value of each).

        One ordered consumer, however many keys are awaited; it resumes across reconnects.
        """
        prefix = f"$KV.{self.bucket}."

        async def on_msg(msg: Any) -> None:
            op = (msg.headers or {}).get("KV-Operation")
            value = None if op in ("DEL", "PURGE") else (msg.data or b"")
            await callback(msg.subject[len(prefix) :], value, msg.metadata.sequence.stream)

        sub = await self._js.subscribe(
            f"{prefix}{key}",
            stream=self.stream,
            cb=on_msg,
            ordered_consumer=True,
            deliver_policy=(
                js_api.DeliverPolicy.LAST_PER_SUBJECT if replay else js_api.DeliverPolicy.NEW
            ),
            inactive_threshold=300,
        )
        return translated(sub.unsubscribe)
