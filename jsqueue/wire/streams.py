"""Reading streams as jsqueue uses them: stored messages, counts, states; purging and deleting.

Part of the wire package: answers are jsqueue's own values (:class:`StoredMessage`,
:class:`StreamState`, :class:`ConsumerState`), never nats-py objects, and errors are translated.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import nats.js.errors
from nats.js import api as js_api

from jsqueue.config import BUCKETS, LEVELS, PRIORITY_NORMAL, Settings
from jsqueue.wire.connection import Connection
from jsqueue.wire.errors import riding_elections, translated


@dataclass(frozen=True)
class StoredMessage:
    """A message read from a stream without consuming it."""

    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]
    time: float = 0.0  # when the server stored it (Unix seconds)


@dataclass(frozen=True)
class StreamState:
    """What the server says of a stream: its settings that matter to jsqueue, and its state."""

    name: str
    subjects: tuple[str, ...]
    retention: str
    replicas: int
    max_age: float
    duplicate_window: float
    allow_msg_schedules: bool
    messages: int
    leader: str | None = None


@dataclass(frozen=True)
class ConsumerState:
    """A consumer: ``pending`` stored and not yet delivered, ``ack_pending`` delivered and not
    acked (running, or waiting out a retry delay)."""

    name: str
    filter_subject: str
    pending: int
    ack_pending: int
    delivered_stream_seq: int
    delivered_consumer_seq: int
    waiting: int
    redelivered: int
    #: servers that hold a copy besides the leader (0 on a single server)
    followers: int = 0


class Streams:
    """Stream reads and admin on one connection."""

    def __init__(self, connection: Connection, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings

    @property
    def _js(self) -> nats.js.JetStreamContext:
        return self.connection.jetstream

    @translated
    async def subject_counts(self, stream: str, subjects: str) -> dict[str, int]:
        """Messages per subject in ``stream`` matching the ``subjects`` filter."""
        info = await self._js.stream_info(stream, subjects_filter=subjects)
        return dict(info.state.subjects or {})

    @translated
    async def state(self, stream: str) -> StreamState:
        info = await self._js.stream_info(stream)
        c = info.config
        return StreamState(
            name=str(c.name),
            subjects=tuple(c.subjects or ()),
            retention=str(getattr(c.retention, "value", c.retention)),
            replicas=int(c.num_replicas or 1),
            max_age=float(c.max_age or 0),
            duplicate_window=float(c.duplicate_window or 0),
            allow_msg_schedules=bool(c.allow_msg_schedules),
            messages=int(info.state.messages),
            leader=info.cluster.leader if info.cluster else None,
        )

    @translated
    async def consumer(self, queue: str, priority: int = PRIORITY_NORMAL) -> ConsumerState | None:
        """The state of the consumer of ``queue``'s jobs of ``priority``, or None."""
        s = self.settings
        try:
            info = await self._js.consumer_info(s.jobs_stream, s.consumer_name(queue, priority))
        except nats.js.errors.NotFoundError:
            return None
        return _consumer(info)

    @translated
    async def consumers(self, stream: str | None = None) -> list[ConsumerState]:
        """Every consumer of ``stream`` (default: the jobs stream)."""
        infos = await self._js.consumers_info(stream or self.settings.jobs_stream)
        return [_consumer(info) for info in infos]

    @translated
    async def get(
        self, stream: str, seq: int, subject: str | None = None, next_: bool = False
    ) -> StoredMessage | None:
        """Message ``seq`` of ``stream`` (or, with ``next_``, the first at or after it on
        ``subject``); None if there is none. Rides out leader elections."""
        budget = 3 * self.settings.request_timeout
        try:
            # positional: (stream, seq, subject, direct, next)
            msg = await riding_elections(
                budget, self._js.get_msg, stream, seq, subject, False, next_
            )
        except nats.js.errors.NotFoundError:
            return None
        return _stored(msg)

    async def messages(self, stream: str, subject: str, start_seq: int = 1) -> list[StoredMessage]:
        """Every message on ``subject`` from ``start_seq``, without consuming them."""
        out: list[StoredMessage] = []
        while True:
            msg = await self.get(stream, start_seq, subject=subject, next_=True)
            if msg is None:
                return out
            out.append(msg)
            start_seq = msg.seq + 1

    async def oldest_ready(self, queue: str) -> float | None:
        """When the oldest job of ``queue`` (any priority) not yet delivered was stored."""
        oldest = None
        for level in LEVELS:
            state = await self.consumer(queue, level)
            start = state.delivered_stream_seq + 1 if state else 1
            subject = self.settings.queue_subject(queue, level)
            msg = await self.get(self.settings.jobs_stream, start, subject=subject, next_=True)
            if msg is not None and (oldest is None or msg.time < oldest):
                oldest = msg.time
        return oldest

    @translated
    async def delete(self, stream: str, seq: int) -> bool:
        try:
            return bool(await self._js.delete_msg(stream, seq))
        except nats.js.errors.NotFoundError:
            return False

    async def purge_subject(self, stream: str, subject: str) -> int:
        """Remove every message on ``subject`` (wildcards allowed); return how many."""
        removed = sum((await self.subject_counts(stream, subject)).values())
        await self.purge(stream, subject)
        return removed

    @translated
    async def purge(self, stream: str, subject: str | None = None) -> None:
        """Remove every message of ``stream`` (on ``subject`` if given)."""
        await self._js.purge_stream(stream, subject=subject)

    @translated
    async def delete_stream(self, stream: str) -> None:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self._js.delete_stream(stream)

    async def destroy_prefix(self) -> None:
        """Delete every stream and KV bucket of this app's prefix (tests and resets)."""
        s = self.settings
        kv = [f"KV_{s.bucket(b)}" for b in BUCKETS]
        for name in [s.jobs_stream, s.dlq_stream, *kv, f"OBJ_{s.object_bucket}"]:
            await self.delete_stream(name)


def _consumer(info: js_api.ConsumerInfo) -> ConsumerState:
    delivered = info.delivered
    return ConsumerState(
        name=str(info.name),
        filter_subject=str(info.config.filter_subject or ""),
        pending=int(info.num_pending or 0),
        ack_pending=int(info.num_ack_pending or 0),
        delivered_stream_seq=int(delivered.stream_seq or 0) if delivered else 0,
        delivered_consumer_seq=int(delivered.consumer_seq or 0) if delivered else 0,
        waiting=int(info.num_waiting or 0),
        redelivered=int(info.num_redelivered or 0),
        followers=len(info.cluster.replicas or []) if info.cluster else 0,
    )


def _stored(msg: js_api.RawStreamMsg) -> StoredMessage:
    return StoredMessage(
        msg.seq or 0,
        msg.subject or "",
        msg.data or b"",
        dict(msg.headers or {}),
        msg.time.timestamp() if msg.time else 0.0,
    )
