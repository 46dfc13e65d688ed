"""The broker: an app's one NATS connection in an event loop, and everything done through it.

Built by composition: a :class:`Connection` (open, check, watch), a :class:`Publisher` (publishes
under ``Nats-Msg-Id``, retried until confirmed), a :class:`Provisioner` (streams and consumers),
:class:`Streams` (reads and admin) and KV buckets (:class:`KvStore`, opened once each). Callers
outside the wire package use this class and those values, and see only jsqueue's errors; the
nats-py client stays inside.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import nats.errors
import nats.js.errors

from jsqueue.config import PRIORITY_NORMAL, Settings, redact_url
from jsqueue.errors import ConnectError, JsqueueError, RefusedError, TransientError
from jsqueue.wire.acks import Ack
from jsqueue.wire.connection import Connection
from jsqueue.wire.errors import NOT_READY, riding_elections, translated, while_electing
from jsqueue.wire.kv import KvStore
from jsqueue.wire.objects import ObjectStore
from jsqueue.wire.provision import Provisioner
from jsqueue.wire.publish import Publisher
from jsqueue.wire.pull import Delivery, Puller
from jsqueue.wire.streams import Streams

log = logging.getLogger("jsqueue.wire.broker")
T = TypeVar("T")


class Broker:
    """A connected NATS client with JetStream, bound to the event loop it connected in."""

    def __init__(
        self, settings: Settings, *, client_name: str | None = None, notify_token: str = ""
    ) -> None:
        self.settings = settings
        self.client_name = client_name or settings.name
        self._connection: Connection | None = None
        self._publisher: Publisher | None = None
        self._provisioner: Provisioner | None = None
        self._streams: Streams | None = None
        self._kv: dict[str, KvStore] = {}
        self._objects: ObjectStore | None = None
        self.lost = asyncio.Event()
        #: the app's middleware (jsqueue.Middleware): the producer runs it on each job it sends
        self.middleware: Sequence[Any] = ()
        #: where workers tell this process that a job it sent has an outcome (the app's, so it
        #: stays the same across its connections)
        token = notify_token or uuid.uuid4().hex[:16]
        self.notify_subject = f"{settings.notify_prefix}.{token}"

    # -- connection ------------------------------------------------------------------------

    async def connect(self, wait: float = 0.0) -> None:
        """Connect, check the server, and provision if the app's settings say so.

        An unreachable server is retried for ``wait`` seconds (logging once), then is a
        :class:`ConnectError`; wrong credentials and unsuitable servers fail at once.
        """
        url = self.settings.resolve_url()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        announced = False
        while True:
            connection = Connection(self.settings, self.client_name)
            try:
                await connection.open(url)
                break
            except ConnectError as exc:
                if not exc.args[0].startswith("cannot reach") or loop.time() >= deadline:
                    raise
                if not announced:
                    log.warning("waiting up to %.0fs for NATS at %s", wait, redact_url(url))
                    announced = True
                await asyncio.sleep(0.5)
        self._connection = connection
        self.lost = connection.lost
        self._publisher = Publisher(connection, self.settings)
        self._provisioner = Provisioner(connection, self.settings)
        self._streams = Streams(connection, self.settings)
        try:
            await self._publisher.start()
            await connection.check_server()
            budget = max(wait, 3 * self.settings.request_timeout)
            async for attempt in while_electing(budget, f"JetStream at {self.url}"):
                with attempt:
                    await connection.jetstream.account_info()
                    if self.settings.provision:
                        await self._provisioner.streams()
        except NOT_READY as exc:
            await self.close()
            raise ConnectError(
                f"JetStream at {self.url} did not answer ({type(exc).__name__}); a cluster "
                "without a leader or quorum? Check the servers' logs"
            ) from None
        except nats.errors.Error as exc:
            await self.close()
            raise ConnectError(f"NATS at {self.url} failed while connecting: {exc}") from None
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection (pending acks and publishes are flushed)."""
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await publisher.close()
        connection, self._connection = self._connection, None
        self._kv.clear()
        self._objects = None
        self._provisioner = self._streams = None
        if connection is not None:
            await connection.close()

    @property
    def connection(self) -> Connection:
        if self._connection is None:
            raise ConnectError("not connected; use `async with app:` or `await app.connect()`")
        return self._connection

    @property
    def url(self) -> str:
        """The URL connected to, without secrets."""
        return self._connection.safe_url if self._connection else "(not connected)"

    @property
    def is_connected(self) -> bool:
        return self._connection is not None and self._connection.is_connected

    @property
    def max_payload(self) -> int:
        return self.connection.max_payload

    @property
    def server_version(self) -> str:
        return self.connection.server_version

    @property
    def lost_reason(self) -> str:
        return self.connection.lost_reason

    def on_reconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Call ``callback`` after every reconnect."""
        self.connection.on_reconnect(callback)

    @property
    def streams(self) -> Streams:
        """Stream reads and admin: counts, states, stored messages, purges."""
        if self._streams is None:
            raise ConnectError("not connected; use `async with app:` or `await app.connect()`")
        return self._streams

    @property
    def _provision(self) -> Provisioner:
        if self._provisioner is None:
            raise ConnectError("not connected; use `async with app:` or `await app.connect()`")
        return self._provisioner

    # -- provisioning ------------------------------------------------------------------------

    async def provision(self) -> None:
        """Create or update the jobs and dead-letter streams (idempotent)."""
        await self._ride("provisioning the streams", self._provision.streams)

    async def ensure_consumer(self, queue: str, priority: int = PRIORITY_NORMAL) -> str:
        """Create or update the durable pull consumer of ``queue``'s jobs of ``priority``;
        return its name."""
        return await self._ride(
            f"creating the consumer of {queue}", self._provision.consumer, queue, priority
        )

    def forget_consumer(self, queue: str, priority: int = PRIORITY_NORMAL) -> None:
        self._provision.forget_consumer(queue, priority)

    def puller(
        self,
        queue: str,
        consumer: str,
        capacity: int,
        on_delivery: Callable[[Delivery], None],
        on_late: Callable[[Delivery], None],
        *,
        priority: int = PRIORITY_NORMAL,
        expires: float = 30.0,
    ) -> Puller:
        """A pull loop on the consumer of ``queue``'s jobs of ``priority``, asking for at most
        ``capacity`` jobs at a time (the worker may change it); a pull request waits at most
        ``expires`` seconds."""
        return Puller(
            self.connection,
            self._provision,
            queue,
            consumer,
            capacity,
            on_delivery,
            on_late,
            priority=priority,
            expires=expires,
        )

    async def pause_consumers(self, consumers: list[str], until: str | None) -> None:
        """Pause ``consumers`` of the jobs stream until ``until`` (RFC 3339), or resume them
        (None). A consumer that does not exist yet is skipped: it is created paused or not by
        whoever creates it."""
        stream = self.settings.jobs_stream
        for name in consumers:
            await self._ride(f"pausing {name}", self._pause_one, stream, name, until)

    @translated
    async def _pause_one(self, stream: str, name: str, until: str | None) -> None:
        js = self.connection.jetstream
        try:
            if until is None:
                await js.resume_consumer(stream, name)
            else:
                await js.pause_consumer(stream, name, until)
        except nats.js.errors.NotFoundError:
            return

    async def kv(self, purpose: str, *, ttl: float | None = None, history: int = 1) -> KvStore:
        """The KV bucket ``<prefix>_<purpose>``, created (or its TTL updated) if needed."""
        store = self._kv.get(purpose)
        if store is None:
            opening = functools.partial(
                KvStore.open,
                self.connection.jetstream,
                self._publisher_or_fail.acks,
                self.settings.bucket(purpose),
                ttl=ttl,
                history=history,
                replicas=self.settings.replicas,
                create=self.settings.provision,
            )
            store = await self._ride(f"opening the {purpose} bucket", opening)
            self._kv[purpose] = store
        return store

    async def objects(self) -> ObjectStore:
        """The object store ``<prefix>_objects`` (created if needed), kept as long as results."""
        if self._objects is None:
            s = self.settings
            opening = functools.partial(
                ObjectStore.open,
                self.connection.jetstream,
                s.object_bucket,
                ttl=s.result_ttl,
                replicas=s.replicas,
                create=s.provision,
                timeout=4 * s.publish_timeout,
            )
            self._objects = await self._ride("opening the object store", opening)
        return self._objects

    async def _ride(self, doing: str, operation: Callable[..., Awaitable[T]], *args: Any) -> T:
        try:
            async for attempt in while_electing(3 * self.settings.request_timeout):
                with attempt:
                    return await operation(*args)
        except (*NOT_READY, TransientError):
            raise self.refused(doing) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def refused(self, doing: str) -> JsqueueError:
        """The error for a request that got no answer: a permission the server refused, if it
        said so, else a time-out."""
        refused = self._connection.refused if self._connection else ""
        if refused:
            return RefusedError(
                f"NATS at {self.url} refused {doing}: {refused}; this user lacks the "
                "permission (the README lists what each role needs)"
            )
        return TransientError(f"NATS at {self.url} did not answer {doing} in time")

    async def riding_elections(self, operation: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await operation(*args)``, retried while JetStream elects a leader (for
        ``3 * request_timeout``); the first try costs nothing extra."""
        return await riding_elections(3 * self.settings.request_timeout, operation, *args)

    # -- publishing --------------------------------------------------------------------------

    @property
    def _publisher_or_fail(self) -> Publisher:
        if self._publisher is None:
            raise ConnectError("not connected; use `async with app:` or `await app.connect()`")
        return self._publisher

    @translated
    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> Ack:
        """Publish to JetStream and wait for the server's ack, retrying with the same headers."""
        return await self._publisher_or_fail.publish(subject, payload, headers)

    @translated
    async def publish_many(
        self, messages: Sequence[tuple[str, bytes, dict[str, str] | None]]
    ) -> None:
        """Publish many messages pipelined (not one round trip each); all stored or an error."""
        await self._publisher_or_fail.publish_many(messages)

    @translated
    async def publish_core(self, subject: str, payload: bytes) -> None:
        """Fire-and-forget core NATS publish (lifecycle events)."""
        await self.connection.publish(subject, payload)

    @translated
    async def subscribe_core(
        self, subject: str, callback: Callable[[str, bytes], Awaitable[None]]
    ) -> Callable[[], Awaitable[None]]:
        """Subscribe with ``callback(subject, data)``; return an unsubscribe coroutine function."""

        async def on_msg(msg: Any) -> None:
            await callback(msg.subject, msg.data)

        sub = await self.connection.subscribe(subject, on_msg)
        return translated(sub.unsubscribe)

    @translated
    async def flush(self) -> None:
        await self.connection.flush()

    async def destroy_prefix(self) -> None:
        """Delete every stream and KV bucket of this app's prefix (tests and resets)."""
        await self.streams.destroy_prefix()
        self._kv.clear()
        self._objects = None
        self._provisioner = Provisioner(self.connection, self.settings)  # consumers went too
