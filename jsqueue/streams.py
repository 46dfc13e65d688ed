"""Streams as jsqueue uses them: create or check one, read stored messages, count, purge.

Part of the broker layer: :class:`StreamAdmin` is a base of :class:`jsqueue.broker.Broker`, kept
apart so each module holds one concern (connecting and publishing there, stored messages here).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js import api as js_api
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from jsqueue.config import Settings
from jsqueue.errors import ProvisionError

log = logging.getLogger("jsqueue.broker")

OWNER_KEY = "jsqueue.owner"
T = TypeVar("T")
#: What JetStream answers while it elects a leader (a cluster starting, a node coming back).
NOT_READY = (
    TimeoutError,
    nats.errors.TimeoutError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
)


@dataclass(frozen=True)
class StoredMessage:
    """A message read from a stream without consuming it."""

    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]
    time: float = 0.0  # when the server stored it (Unix seconds)


class StreamAdmin:
    """Stream operations on top of a connection (``js``) and the app's ``settings``."""

    settings: Settings

    @property
    def js(self) -> JetStreamContext:
        raise NotImplementedError

    @property
    def url(self) -> str:
        raise NotImplementedError

    async def riding_elections(self, operation: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await operation(*args)``, retried (with the same arguments) while JetStream answers
        that it is electing a leader; the first try costs nothing extra."""
        try:
            return await operation(*args)
        except NOT_READY:
            pass
        async for attempt in self.while_electing():
            with attempt:
                return await operation(*args)
        raise AssertionError("unreachable")  # pragma: no cover

    def while_electing(self, budget: float | None = None) -> AsyncRetrying:
        """Retry what times out or is "temporarily unavailable" while JetStream elects leaders
        (a cluster starting, a node coming back): by default for ``3 * request_timeout``."""
        return AsyncRetrying(
            stop=stop_after_delay(budget or 3 * self.settings.request_timeout),
            wait=wait_exponential(multiplier=0.1, max=1.0),
            retry=retry_if_exception_type(NOT_READY),
            reraise=True,
        )

    def _provision_error(self, name: str, exc: nats.js.errors.APIError) -> ProvisionError:
        if exc.err_code == 10005 and self.settings.replicas > 1:  # no suitable peers
            return ProvisionError(
                f"cannot create stream {name} with replicas={self.settings.replicas}: NATS at "
                f"{self.url} has fewer JetStream servers than that ({exc.description}); lower "
                "the app's replicas or add servers to the cluster"
            )
        return ProvisionError(f"cannot create stream {name}: {exc.description} ({exc.err_code})")

    async def ensure_stream(self, config: js_api.StreamConfig) -> None:
        """Create the stream, update it if ours and different, refuse it if not ours."""
        assert config.name
        try:
            info = await self.js.stream_info(config.name)
        except nats.js.errors.NotFoundError:
            try:
                await self.js.add_stream(config)
                return
            except nats.js.errors.APIError as exc:
                if exc.err_code != 10058:  # created by a racing process: compare below
                    raise self._provision_error(config.name, exc) from None
                info = await self.js.stream_info(config.name)
        diffs = _differences(config, info.config)
        if not diffs:
            return
        owner = (info.config.metadata or {}).get(OWNER_KEY)
        wanted = (config.metadata or {}).get(OWNER_KEY)
        described = "; ".join(
            f"{k} is {_plain(have)!r}, jsqueue needs {_plain(want)!r}" for k, have, want in diffs
        )
        if owner != wanted:
            raise ProvisionError(
                f"stream {config.name} exists but was not created by jsqueue and differs: "
                f"{described}. Remove it or give the app another prefix"
            )
        try:
            merged = info.config.evolve(**{k: getattr(config, k) for k, _, _ in diffs})
            await self.js.update_stream(merged)
            log.info("updated stream %s: %s", config.name, described)
        except nats.js.errors.APIError as exc:
            raise ProvisionError(
                f"stream {config.name} has settings jsqueue cannot change in place: {described} "
                f"({exc.description}). Remove the stream or give the app another prefix"
            ) from None

    async def stream_subject_counts(self, stream: str, subjects: str) -> dict[str, int]:
        """Messages per subject in ``stream`` matching the ``subjects`` filter."""
        info = await self.js.stream_info(stream, subjects_filter=subjects)
        return dict(info.state.subjects or {})

    async def stream_info(self, stream: str) -> js_api.StreamInfo:
        return await self.js.stream_info(stream)

    async def consumer_info(self, queue: str) -> js_api.ConsumerInfo | None:
        try:
            info: js_api.ConsumerInfo = await self.js.consumer_info(
                self.settings.jobs_stream, self.settings.consumer_name(queue)
            )
        except nats.js.errors.NotFoundError:
            return None
        return info

    async def consumers(self) -> list[js_api.ConsumerInfo]:
        """Every consumer of the jobs stream."""
        infos: list[js_api.ConsumerInfo] = await self.js.consumers_info(self.settings.jobs_stream)
        return infos

    async def get_message(
        self, stream: str, seq: int, subject: str | None = None, next_: bool = False
    ) -> StoredMessage | None:
        """Message ``seq`` of ``stream`` (or, with ``next_``, the first at or after it on
        ``subject``); None if there is none."""
        try:
            # positional: (stream, seq, subject, direct, next)
            msg = await self.riding_elections(self.js.get_msg, stream, seq, subject, False, next_)
        except nats.js.errors.NotFoundError:
            return None
        return _stored(msg)

    async def last_message(self, stream: str, subject: str) -> StoredMessage | None:
        """The last message on ``subject``, or None."""
        try:
            msg = await self.js.get_last_msg(stream, subject)
        except nats.js.errors.NotFoundError:
            return None
        return _stored(msg)

    async def oldest_ready(self, queue: str) -> float | None:
        """When the oldest job of ``queue`` not yet delivered to a worker was stored."""
        info = await self.consumer_info(queue)
        start = (info.delivered.stream_seq + 1) if info and info.delivered else 1
        subject = self.settings.queue_subject(queue)
        msg = await self.get_message(self.settings.jobs_stream, start, subject=subject, next_=True)
        return None if msg is None else msg.time

    async def messages(self, stream: str, subject: str, start_seq: int = 1) -> list[StoredMessage]:
        """Every message on ``subject`` from ``start_seq``, without consuming them."""
        out: list[StoredMessage] = []
        while True:
            msg = await self.get_message(stream, start_seq, subject=subject, next_=True)
            if msg is None:
                return out
            out.append(msg)
            start_seq = msg.seq + 1

    async def delete_message(self, stream: str, seq: int) -> bool:
        try:
            return await self.js.delete_msg(stream, seq)
        except nats.js.errors.NotFoundError:
            return False

    async def purge_subject(self, stream: str, subject: str) -> int:
        """Remove every message on ``subject`` (wildcards allowed); return how many."""
        removed = sum((await self.stream_subject_counts(stream, subject)).values())
        await self.js.purge_stream(stream, subject=subject)
        return removed

    async def purge_stream(self, stream: str, subject: str | None = None) -> None:
        """Remove every message of ``stream`` (on ``subject`` if given)."""
        await self.js.purge_stream(stream, subject=subject)


def _differences(
    want: js_api.StreamConfig, have: js_api.StreamConfig
) -> list[tuple[str, Any, Any]]:
    """The fields jsqueue sets whose value on the server differs (server defaults ignored)."""
    diffs = []
    for name in (
        "retention",
        "storage",
        "discard",
        "max_msgs",
        "max_bytes",
        "max_age",
        "duplicate_window",
        "num_replicas",
        "allow_msg_schedules",
    ):
        wanted = getattr(want, name)
        if wanted is None:
            continue
        got = getattr(have, name)
        if name in ("max_age", "duplicate_window"):
            same = abs(float(got or 0) - float(wanted)) < 1e-3
        elif name in ("max_msgs", "max_bytes"):
            same = (got if got is not None else -1) == wanted
        else:
            same = got == wanted
        if not same:
            diffs.append((name, got, wanted))
    if set(want.subjects or ()) != set(have.subjects or ()):
        diffs.append(("subjects", have.subjects, want.subjects))
    return diffs


def _stored(msg: js_api.RawStreamMsg) -> StoredMessage:
    return StoredMessage(
        msg.seq or 0,
        msg.subject or "",
        msg.data or b"",
        dict(msg.headers or {}),
        msg.time.timestamp() if msg.time else 0.0,
    )


def _plain(value: Any) -> Any:
    """Enum members as their wire value, for messages."""
    return getattr(value, "value", value)
