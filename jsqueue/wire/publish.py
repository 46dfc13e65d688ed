"""Publishing jobs and records to JetStream: one at a time or pipelined, retried under the same
``Nats-Msg-Id`` until the server confirms, refused at once when too large or not permitted.

Part of the wire package: callers get :class:`jsqueue.errors.PublishError` (the job may or may not
be stored: retry with its id), :class:`PayloadTooLarge`, or nothing but the :class:`Ack`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import nats.errors
import nats.js.errors
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from jsqueue.config import Settings
from jsqueue.errors import PayloadTooLarge, PublishError, PublishNotPermitted, PublishRefused
from jsqueue.wire.acks import Ack, AckedPublisher
from jsqueue.wire.connection import Connection
from jsqueue.wire.errors import RETRYABLE

#: Pipelined publishes awaiting their ack at most, in one bulk call.
_MAX_IN_FLIGHT = 20_000


#: bytes a subject and our headers stay under: a payload that much below max_payload fits
_HEADROOM = 4096


class Publisher:
    """Publishes on one connection, with the app's time-outs."""

    def __init__(self, connection: Connection, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings
        self.acks = AckedPublisher(connection.nc, settings.request_timeout)
        connection.on_refusal(self._refused)

    async def start(self) -> None:
        await self.acks.start()

    async def close(self) -> None:
        await self.acks.close()

    def _refused(self, subject: str, text: str) -> None:
        self.acks.refuse(
            subject,
            PublishNotPermitted(
                f"NATS at {self.connection.safe_url} refused publishing to {subject}: {text}; "
                "this user lacks the permission (the README lists what each role needs)"
            ),
        )

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> Ack:
        """Publish and wait for the server's ack, retrying with the same headers."""
        self.check_size(subject, payload, headers)
        try:
            future = await self.acks.publish(subject, payload, headers)
            return await future  # the publisher times it out
        except RETRYABLE:
            pass
        except nats.js.errors.APIError as exc:
            raise self._error(subject, exc) from None
        except nats.errors.MaxPayloadError:
            raise self._too_large(len(payload)) from None
        ack = await self._retrying(subject, payload, headers)
        return Ack(ack.stream or "", ack.seq or 0, bool(ack.duplicate))

    async def _retrying(self, subject: str, payload: bytes, headers: dict[str, str] | None) -> Ack:
        js = self.connection.jetstream
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_delay(self.settings.publish_timeout),
                wait=wait_exponential(multiplier=0.05, max=1.0),
                retry=retry_if_exception_type(RETRYABLE),
                reraise=True,
            ):
                with attempt:
                    ack = await js.publish(subject, payload, headers=headers)
                    return Ack(ack.stream or "", ack.seq or 0, bool(ack.duplicate))
        except RETRYABLE as exc:
            raise PublishError(
                f"NATS at {self.connection.safe_url} did not confirm the publish to {subject} "
                f"within {self.settings.publish_timeout:g}s ({type(exc).__name__}); the job may "
                "or may not be stored: retry with the same job_id, which cannot store it twice"
            ) from None
        except nats.js.errors.APIError as exc:
            raise self._error(subject, exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def publish_many(
        self, messages: Sequence[tuple[str, bytes, dict[str, str] | None]]
    ) -> None:
        """Publish many messages pipelined (not one round trip each); all stored or an error."""
        near = self.connection.max_payload - _HEADROOM  # check_size passes anything smaller
        for subject, payload, headers in messages:
            if len(payload) >= near:
                self.check_size(subject, payload, headers)
        acks = self.acks
        futures: list[asyncio.Future[Ack] | None] = []
        for subject, payload, headers in messages:
            try:
                futures.append(await acks.publish(subject, payload, headers))
            except nats.errors.Error:
                futures.append(None)  # retried below, with the same Msg-Id
            if acks.in_flight >= _MAX_IN_FLIGHT:  # let acks catch up
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
                if isinstance(error, nats.js.errors.APIError) and not isinstance(error, RETRYABLE):
                    raise self._error(subject, error) from None
            elif future is not None:
                future.cancel()
            await self._retrying(subject, payload, headers)

    def check_size(self, subject: str, payload: bytes, headers: dict[str, str] | None) -> None:
        """:class:`PayloadTooLarge` if the message cannot fit the server's max_payload."""
        limit = self.connection.max_payload
        if len(payload) + _HEADROOM < limit:
            return  # far from the limit: subject and our headers are small
        size = (
            len(payload)
            + len(subject)
            + sum(len(k) + len(v) + 4 for k, v in (headers or {}).items())
        )
        if size > limit:
            raise self._too_large(size)

    def _too_large(self, size: int) -> PayloadTooLarge:
        limit = self.connection.max_payload
        return PayloadTooLarge(
            f"the job is {size} bytes but NATS at {self.connection.safe_url} accepts at most "
            f"{limit} (max_payload); pass a reference (a URL or key) instead of the data, or "
            "raise max_payload on the server"
        )

    def _error(self, subject: str, exc: nats.js.errors.APIError) -> PublishError:
        return PublishRefused(f"NATS refused the publish to {subject}: {exc.description or exc}")
