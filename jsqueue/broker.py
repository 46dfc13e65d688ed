"""The broker layer: the one NATS connection of an app in an event loop.

It connects (failing fast with one line that names the URL), checks the server, provisions streams
and consumers idempotently, publishes with retries under the same ``Nats-Msg-Id``, and answers the
admin questions the CLI asks. nats-py errors are translated here into :mod:`jsqueue.errors`;
together with :mod:`jsqueue.puller` and :mod:`jsqueue.kvstore` this is the only code that imports
nats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js import api as js_api
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from jsqueue.config import BUCKETS, MIN_SERVER_VERSION, Settings, redact_url
from jsqueue.errors import (
    ConnectError,
    ConnectionLost,
    InvalidError,
    JsqueueError,
    PayloadTooLarge,
    ProvisionError,
    PublishError,
    RefusedError,
    TransientError,
)
from jsqueue.kvstore import KvStore
from jsqueue.publisher import Ack, AckedPublisher
from jsqueue.streams import NOT_READY, OWNER_KEY, StreamAdmin

log = logging.getLogger("jsqueue.broker")

#: The subject in nats-py's text of a refused publish: 'permissions violation for publish to "x"'.
_REFUSED_PUBLISH = re.compile(r'publish to "([^"]+)"')
#: Pipelined publishes awaiting their ack at most, in one bulk call.
_MAX_IN_FLIGHT = 20_000
# Publishes are retried on these (with the same Msg-Id, so a retry never stores a job twice).
_RETRYABLE = (
    nats.errors.TimeoutError,
    asyncio.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.ServiceUnavailableError,
)


class Broker(StreamAdmin):
    """A connected NATS client with JetStream, bound to the event loop it connected in."""

    def __init__(self, settings: Settings, *, client_name: str | None = None) -> None:
        self.settings = settings
        self.client_name = client_name or settings.name
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._url = ""
        self._outage = False
        self._reconnect_listeners: list[Callable[[], Awaitable[None]]] = []
        self._consumers_ready: set[str] = set()
        self._kv: dict[str, KvStore] = {}
        self._publisher: AckedPublisher | None = None
        self._last_connect_error: BaseException | None = None
        self._auth_error: BaseException | None = None
        self._refused = ""
        self._closing = False
        #: set when nats-py closed the connection for good (not by :meth:`close`)
        self.lost = asyncio.Event()

    # -- connection ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL connected to, without secrets."""
        return redact_url(self._url) if self._url else "(not connected)"

    @property
    def nc(self) -> NatsClient:
        if self._nc is None:
            raise ConnectError("not connected; use `async with app:` or `await app.connect()`")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise ConnectError("not connected; use `async with app:` or `await app.connect()`")
        return self._js

    @property
    def is_connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def max_payload(self) -> int:
        return self.nc.max_payload

    @property
    def server_version(self) -> str:
        version = self.nc.connected_server_version
        return f"{version.major}.{version.minor}.{version.patch}"

    def on_reconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Call ``callback`` after every reconnect (pull loops re-issue their requests)."""
        self._reconnect_listeners.append(callback)

    async def connect(self, wait: float = 0.0) -> None:
        """Connect, check the server, and provision if the app's settings say so.

        An unreachable server is retried for ``wait`` seconds (logging once), then is a
        :class:`ConnectError`; wrong credentials and unsuitable servers fail at once.
        """
        url = self.settings.resolve_url()
        self._url = url
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        announced = False
        while True:
            try:
                self._nc = await self._open(url)
                break
            except ConnectError as exc:
                if not exc.args[0].startswith("cannot reach") or loop.time() >= deadline:
                    raise
                if not announced:
                    log.warning("waiting up to %.0fs for NATS at %s", wait, redact_url(url))
                    announced = True
                await asyncio.sleep(0.5)
        self._js = self._nc.jetstream(timeout=self.settings.request_timeout)
        self._publisher = AckedPublisher(self._nc, self.settings.request_timeout)
        try:
            await self._publisher.start()
            await self._check_server()
            async for attempt in self.while_electing(max(wait, 3 * self.settings.request_timeout)):
                with attempt:
                    await self.js.account_info()
                    if self.settings.provision:
                        await self.provision()
        except NOT_READY as exc:
            await self.close()
            raise ConnectError(
                f"JetStream at {self.url} did not answer ({type(exc).__name__}); a cluster "
                "without a leader or quorum? Check the servers' logs"
            ) from None
        except BaseException:
            await self.close()
            raise

    async def _open(self, url: str) -> NatsClient:
        servers = [part.strip() for part in url.split(",")]
        options: dict[str, Any] = {
            "servers": servers,
            "name": self.client_name,
            "connect_timeout": max(1, round(self.settings.connect_timeout)),
            # During the first connect each server is tried twice, so a bad URL or wrong
            # credentials fail fast; afterwards we reconnect forever (set below).
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0.25,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnect,
            "closed_cb": self._on_closed,
            "reconnected_cb": self._on_reconnect,
        }
        options.update(self._auth_options())
        nc = NatsClient()
        # Each server twice, each try within connect_timeout, and some slack. The deadline also
        # covers a nats-py connect that stalls after a failed TLS handshake instead of raising.
        deadline = 2 * len(servers) * (self.settings.connect_timeout + 0.5) + 1
        try:
            await asyncio.wait_for(nc.connect(**options), deadline)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            raise self._connect_error(url, exc) from None
        nc.options["max_reconnect_attempts"] = -1
        nc.options["reconnect_time_wait"] = 1
        return nc

    def _connect_error(self, url: str, exc: BaseException) -> ConnectError:
        cause = exc
        if isinstance(exc, nats.errors.NoServersError | TimeoutError):
            # The underlying cause (refused, auth) reached us through the error callback; an
            # authorization failure wins over the "connection reset" that may follow it.
            cause = self._auth_error or self._last_connect_error or exc
        text = str(cause) or type(cause).__name__
        if isinstance(cause, ssl.SSLError):
            return ConnectError(
                f"TLS with NATS at {redact_url(url)} failed ({text}); give the server's CA with "
                "tls_ca_file=... (and tls_cert_file/tls_key_file if it wants a client cert)"
            )
        if _is_auth_error(cause):
            return ConnectError(
                f"NATS at {redact_url(url)} refused the credentials ({text}); check the user, "
                "password, token or creds file"
            )
        return ConnectError(
            f"cannot reach NATS at {redact_url(url)} ({text}); is the server running? "
            "(`jsqueue server` starts one)"
        )

    def _auth_options(self) -> dict[str, Any]:
        s = self.settings
        options: dict[str, Any] = {}
        if s.creds_file:
            options["user_credentials"] = s.creds_file
        if s.nkey_seed_file:
            options["nkeys_seed"] = s.nkey_seed_file
        if s.tls_ca_file or s.tls_cert_file:
            ctx = ssl.create_default_context(cafile=s.tls_ca_file)
            if s.tls_cert_file:
                ctx.load_cert_chain(s.tls_cert_file, s.tls_key_file)
            options["tls"] = ctx
        return options

    async def _check_server(self) -> None:
        version = self.nc.connected_server_version
        found = (version.major, version.minor, version.patch)
        if found < MIN_SERVER_VERSION:
            wanted = ".".join(map(str, MIN_SERVER_VERSION))
            have = ".".join(map(str, found))
            raise ConnectError(
                f"NATS at {self.url} is version {have}; jsqueue needs {wanted} or newer "
                "(message schedules). Run `jsqueue server` for the bundled server, or upgrade"
            )
        try:
            await self.js.account_info()
        except nats.js.errors.ServiceUnavailableError as exc:
            if exc.err_code is None:  # "no responders": nothing serves the JetStream API
                raise ConnectError(
                    f"NATS at {self.url} has no JetStream; start the server with -js (or a "
                    "`jetstream {}` block), or run `jsqueue server`"
                ) from None
        except NOT_READY:
            pass  # retried in connect(): a cluster may still be electing its leader
        except (nats.js.errors.APIError, nats.errors.Error) as exc:
            raise ConnectError(
                f"NATS at {self.url} has no JetStream ({type(exc).__name__}); start the server "
                "with -js (or a `jetstream {}` block), or run `jsqueue server`"
            ) from None

    @property
    def publisher(self) -> AckedPublisher:
        if self._publisher is None:
            raise ConnectError("not connected; use `async with app:` or `await app.connect()`")
        return self._publisher

    @property
    def lost_reason(self) -> str:
        """Why the connection was lost for good, as far as nats-py said."""
        error: BaseException | None = self._nc.last_error if self._nc is not None else None
        error = error or self._last_connect_error
        return str(error) if error else "no reason given"

    async def _on_closed(self) -> None:
        if not self._closing and self._nc is not None:
            self.lost.set()

    async def close(self) -> None:
        self._closing = True
        if self._publisher is not None:
            await self._publisher.close()
            self._publisher = None
        nc, self._nc, self._js = self._nc, None, None
        self._kv.clear()
        self._consumers_ready.clear()
        if nc is not None and not nc.is_closed:
            try:
                await nc.drain()
            except (TimeoutError, nats.errors.Error, OSError):
                await nc.close()

    async def _on_error(self, exc: Exception) -> None:
        self._last_connect_error = exc
        if _is_auth_error(exc):
            self._auth_error = exc
        if "ermissions violation" in str(exc):
            self._refused = str(exc).removeprefix("nats: ")
            refused = _REFUSED_PUBLISH.search(self._refused)
            if refused and self._publisher is not None:
                self._publisher.refuse(
                    refused.group(1),
                    PublishError(
                        f"NATS at {self.url} refused publishing to {refused.group(1)}: "
                        f"{self._refused}; this user lacks the permission (the README lists "
                        "what each role needs)"
                    ),
                )
        if self._nc is None:
            return  # still connecting: the ConnectError will say it
        if not self._outage:
            log.warning("NATS connection problem at %s: %s", self.url, exc or type(exc).__name__)

    async def _on_disconnect(self) -> None:
        if self._nc is not None and not self._nc.is_closed and not self._outage:
            self._outage = True
            log.warning("disconnected from NATS at %s; reconnecting", self.url)

    async def _on_reconnect(self) -> None:
        self._outage = False
        log.warning("reconnected to NATS at %s", self.url)
        for callback in list(self._reconnect_listeners):
            await callback()

    # -- provisioning ------------------------------------------------------------------------

    async def provision(self) -> None:
        """Create or update the jobs and dead-letter streams (idempotent)."""
        s = self.settings
        await self.ensure_stream(
            js_api.StreamConfig(
                name=s.jobs_stream,
                description="jsqueue jobs: ready queues and delayed (scheduled) jobs",
                subjects=[s.queue_subjects, s.schedule_subjects],
                retention=js_api.RetentionPolicy.WORK_QUEUE,
                storage=js_api.StorageType.FILE,
                discard=js_api.DiscardPolicy.OLD,
                max_msgs=-1,
                max_bytes=-1,
                max_age=0,
                duplicate_window=s.duplicate_window,
                num_replicas=s.replicas,
                allow_msg_schedules=True,
                metadata={OWNER_KEY: "jobs"},
            )
        )
        await self.ensure_stream(
            js_api.StreamConfig(
                name=s.dlq_stream,
                description="jsqueue dead letters: jobs that can never succeed",
                subjects=[s.dlq_subjects],
                retention=js_api.RetentionPolicy.LIMITS,
                storage=js_api.StorageType.FILE,
                discard=js_api.DiscardPolicy.OLD,
                max_age=s.dlq_max_age,
                duplicate_window=s.duplicate_window,
                num_replicas=s.replicas,
                metadata={OWNER_KEY: "dlq"},
            )
        )

    async def ensure_consumer(self, queue: str) -> str:
        """Create or update the durable pull consumer of ``queue``; return its name."""
        s = self.settings
        name = s.consumer_name(queue)
        if name in self._consumers_ready:
            return name
        config = js_api.ConsumerConfig(
            durable_name=name,
            description=f"jsqueue workers of queue {queue}",
            filter_subject=s.queue_subject(queue),
            deliver_policy=js_api.DeliverPolicy.ALL,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=s.ack_wait,
            # The worker dead-letters a job past settings.max_deliver itself; the server must
            # keep delivering it so that no job is stranded undelivered in the stream.
            max_deliver=-1,
            max_ack_pending=s.max_ack_pending,
            max_waiting=512,
            num_replicas=0,  # as many as the stream
            metadata={OWNER_KEY: "queue"},
        )
        try:
            async for attempt in self.while_electing():
                with attempt:
                    await self.js.add_consumer(s.jobs_stream, config)
        except NOT_READY:
            raise self.refused(f"creating consumer {name}") from None
        except nats.js.errors.APIError as exc:
            raise ProvisionError(
                f"cannot create consumer {name} on {s.jobs_stream}: {exc.description}"
            ) from None
        self._consumers_ready.add(name)
        return name

    def forget_consumer(self, queue: str) -> None:
        """Make the next :meth:`ensure_consumer` create the consumer again."""
        self._consumers_ready.discard(self.settings.consumer_name(queue))

    async def kv(self, purpose: str, *, ttl: float | None = None, history: int = 1) -> KvStore:
        """The KV bucket ``<prefix>_<purpose>``, created (or its TTL updated) if needed."""
        store = self._kv.get(purpose)
        if store is None:
            try:
                async for attempt in self.while_electing():
                    with attempt:
                        store = await KvStore.open(
                            self.js,
                            self.publisher,
                            self.settings.bucket(purpose),
                            ttl=ttl,
                            history=history,
                            replicas=self.settings.replicas,
                            create=self.settings.provision,
                        )
            except NOT_READY:
                raise self.refused(f"opening the {purpose} bucket") from None
            assert store is not None
            self._kv[purpose] = store
        return store

    def refused(self, doing: str) -> JsqueueError:
        """The error for a request that got no answer: a permission the server refused, if it
        said so, else a timeout."""
        if self._refused:
            return RefusedError(
                f"NATS at {self.url} refused {doing}: {self._refused}; this user lacks the "
                "permission (the README lists what each role needs)"
            )
        return TransientError(f"NATS at {self.url} did not answer {doing} in time")

    # -- publishing --------------------------------------------------------------------------

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> Ack:
        """Publish to JetStream and wait for the server's ack, retrying with the same headers."""
        self._check_size(subject, payload, headers)
        try:
            future = await self.publisher.publish(subject, payload, headers)
            return await future  # the publisher times it out
        except _RETRYABLE:
            pass
        except nats.js.errors.APIError as exc:
            raise self._publish_error(subject, exc) from None
        ack = await self._publish_retrying(subject, payload, headers)
        return Ack(ack.stream, ack.seq, bool(ack.duplicate))

    async def _publish_retrying(
        self, subject: str, payload: bytes, headers: dict[str, str] | None
    ) -> js_api.PubAck:
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_delay(self.settings.publish_timeout),
                wait=wait_exponential(multiplier=0.05, max=1.0),
                retry=retry_if_exception_type(_RETRYABLE),
                reraise=True,
            ):
                with attempt:
                    return await self.js.publish(subject, payload, headers=headers)
        except _RETRYABLE as exc:
            raise PublishError(
                f"NATS at {self.url} did not confirm the publish to {subject} within "
                f"{self.settings.publish_timeout:g}s ({type(exc).__name__}); the job may or may "
                "not be stored: retry with the same job_id, which cannot store it twice"
            ) from None
        except nats.js.errors.APIError as exc:
            raise self._publish_error(subject, exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def publish_many(
        self, messages: Sequence[tuple[str, bytes, dict[str, str] | None]]
    ) -> None:
        """Publish many messages pipelined (not one round trip each); all stored or an error."""
        for subject, payload, headers in messages:
            self._check_size(subject, payload, headers)
        publisher = self.publisher
        futures: list[asyncio.Future[Ack] | None] = []
        for subject, payload, headers in messages:
            try:
                futures.append(await publisher.publish(subject, payload, headers))
            except nats.errors.Error:
                futures.append(None)  # retried below, with the same Msg-Id
            if publisher.in_flight >= _MAX_IN_FLIGHT:  # let acks catch up
                await asyncio.wait([f for f in futures[-_MAX_IN_FLIGHT:] if f], timeout=1)
        waiting = [f for f in futures if f is not None and not f.done()]
        if waiting:  # one wait for the lot, not a timer per message
            await asyncio.wait(waiting, timeout=self.settings.request_timeout)
        for (subject, payload, headers), future in zip(messages, futures, strict=True):
            if future is not None and future.done() and not future.cancelled():
                error = future.exception()
                if error is None:
                    continue
                if isinstance(error, PublishError):  # refused: retrying cannot help
                    raise error
                if isinstance(error, nats.js.errors.APIError) and not isinstance(error, _RETRYABLE):
                    raise self._publish_error(subject, error) from None
            elif future is not None:
                future.cancel()
            await self._publish_retrying(subject, payload, headers)

    def _check_size(self, subject: str, payload: bytes, headers: dict[str, str] | None) -> None:
        if len(payload) + 4096 < self.max_payload:
            return  # far from the limit: subject and our headers are small
        size = (
            len(payload)
            + len(subject)
            + sum(len(k) + len(v) + 4 for k, v in (headers or {}).items())
        )
        if size > self.max_payload:
            raise PayloadTooLarge(
                f"the job is {size} bytes but NATS at {self.url} accepts at most "
                f"{self.max_payload} (max_payload); pass a reference (a URL or key) instead of "
                "the data, or raise max_payload on the server"
            )

    def _publish_error(self, subject: str, exc: nats.js.errors.APIError) -> PublishError:
        return PublishError(f"NATS refused the publish to {subject}: {exc.description or exc}")

    # -- core NATS ---------------------------------------------------------------------------

    async def publish_core(self, subject: str, payload: bytes) -> None:
        """Fire-and-forget core NATS publish (lifecycle events)."""
        await self.nc.publish(subject, payload)

    async def subscribe_core(
        self, subject: str, callback: Callable[[str, bytes], Awaitable[None]]
    ) -> Callable[[], Awaitable[None]]:
        """Subscribe with ``callback(subject, data)``; return an unsubscribe coroutine function."""

        async def on_msg(msg: Any) -> None:
            await callback(msg.subject, msg.data)

        sub = await self.nc.subscribe(subject, cb=on_msg)
        return sub.unsubscribe

    async def flush(self) -> None:
        await self.nc.flush()

    async def destroy_prefix(self) -> None:
        """Delete every stream and KV bucket of this app's prefix (tests and resets)."""
        s = self.settings
        names = [s.jobs_stream, s.dlq_stream, *(f"KV_{s.bucket(b)}" for b in BUCKETS)]
        for name in names:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self.js.delete_stream(name)
        self._kv.clear()
        self._consumers_ready.clear()


#: nats-py errors after which trying again can succeed.
_TRANSIENT = (
    *_RETRYABLE,
    nats.errors.StaleConnectionError,
    nats.errors.ConnectionDrainingError,
    nats.errors.FlushTimeoutError,
    OSError,
)
#: nats-py errors of a request that can never succeed as sent.
_INVALID = (
    nats.errors.MaxPayloadError,
    nats.errors.BadSubjectError,
    nats.errors.BadHeaderError,
    nats.js.errors.InvalidKeyError,
    nats.js.errors.InvalidBucketNameError,
)


def translate(exc: BaseException) -> BaseException:
    """The jsqueue error for a nats-py error (others are returned as they are): transient (try
    again), invalid (never succeeds as sent), refused, or the connection lost for good."""
    if isinstance(exc, JsqueueError) or not isinstance(exc, Exception):
        return exc
    text = str(exc) or type(exc).__name__
    if isinstance(exc, nats.errors.ConnectionClosedError):
        return ConnectionLost(f"the NATS connection is closed: {text}")
    if isinstance(exc, _INVALID):
        return InvalidError(f"NATS cannot take this: {text}")
    if isinstance(exc, _TRANSIENT):
        return TransientError(f"NATS did not answer in time or is unavailable: {text}")
    if isinstance(exc, nats.js.errors.APIError):
        if "ermission" in text:
            return RefusedError(f"NATS refused it: {text}")
        return InvalidError(f"JetStream refused it: {exc.description or text} ({exc.err_code})")
    if isinstance(exc, nats.errors.Error):
        return TransientError(f"NATS error: {text}")
    return exc


def _is_auth_error(exc: BaseException) -> bool:
    return isinstance(exc, nats.errors.AuthorizationError) or "uthorization" in str(exc)
