"""Provisioning: the jobs and dead-letter streams and the queue consumers, created idempotently.

Create if missing, update if ours and different, refuse with a clear message a stream of that
name that exists with incompatible settings. Only the fields jsqueue sets are compared (the server
fills in others, e.g. it turns ``allow_rollup_hdrs`` on for schedule streams). Part of the wire
package.
"""

from __future__ import annotations

import logging
from typing import Any

import nats.js.errors
from nats.js import api as js_api

from jsqueue.config import PRIORITY_NORMAL, Settings
from jsqueue.errors import JsqueueError, ProvisionError
from jsqueue.wire.connection import Connection
from jsqueue.wire.errors import placement_pending

log = logging.getLogger("jsqueue.wire.broker")

#: The metadata key that marks a stream as jsqueue's, and which of them.
OWNER_KEY = "jsqueue.owner"
#: The stream settings compared with what the server holds.
_COMPARED = (
    "retention",
    "storage",
    "discard",
    "max_msgs",
    "max_bytes",
    "max_age",
    "duplicate_window",
    "num_replicas",
    "allow_msg_schedules",
)


class Provisioner:
    """Creates and updates what an app needs on one connection."""

    def __init__(self, connection: Connection, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings
        self._consumers_ready: set[str] = set()

    async def streams(self) -> None:
        """Create or update the jobs and dead-letter streams (idempotent)."""
        s = self.settings
        await self.ensure_stream(
            js_api.StreamConfig(
                name=s.jobs_stream,
                description="jsqueue jobs: ready queues, delayed jobs and long retries",
                subjects=[s.queue_subjects, s.schedule_subjects, s.retry_subjects],
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

    async def ensure_stream(self, config: js_api.StreamConfig) -> None:
        """Create the stream, update it if ours and different, refuse it if not ours."""
        js = self.connection.jetstream
        assert config.name
        try:
            info = await js.stream_info(config.name)
        except nats.js.errors.NotFoundError:
            try:
                await js.add_stream(config)
                return
            except nats.js.errors.APIError as exc:
                if exc.err_code != 10058:  # created by a racing process: compare below
                    raise self._stream_error(config.name, exc) from None
                info = await js.stream_info(config.name)
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
            await js.update_stream(merged)
            log.info("updated stream %s: %s", config.name, described)
        except nats.js.errors.APIError as exc:
            raise placement_pending(exc, f"updating stream {config.name}") or ProvisionError(
                f"stream {config.name} has settings jsqueue cannot change in place: {described} "
                f"({exc.description}). Remove the stream or give the app another prefix"
            ) from None

    def _stream_error(self, name: str, exc: nats.js.errors.APIError) -> JsqueueError:
        pending = placement_pending(exc, f"creating stream {name}")
        if pending is not None:
            return pending
        if exc.err_code == 10005 and self.settings.replicas > 1:  # no suitable peers
            return ProvisionError(
                f"cannot create stream {name} with replicas={self.settings.replicas}: NATS at "
                f"{self.connection.safe_url} has fewer JetStream servers than that "
                f"({exc.description}); lower the app's replicas or add servers to the cluster"
            )
        return ProvisionError(f"cannot create stream {name}: {exc.description} ({exc.err_code})")

    async def consumer(self, queue: str, priority: int = PRIORITY_NORMAL) -> str:
        """Create or update the durable pull consumer of ``queue``'s jobs of ``priority``;
        return its name. A paused consumer stays paused (the server keeps ``pause_until`` when
        a config without one is applied again)."""
        s = self.settings
        name = s.consumer_name(queue, priority)
        if name in self._consumers_ready:
            return name
        config = js_api.ConsumerConfig(
            durable_name=name,
            description=f"jsqueue workers of queue {queue}, priority {priority}",
            filter_subject=s.queue_subject(queue, priority),
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
            await self.connection.jetstream.add_consumer(s.jobs_stream, config)
        except nats.js.errors.APIError as exc:
            if isinstance(exc, nats.js.errors.ServiceUnavailableError):
                raise  # an election: the caller retries
            raise ProvisionError(
                f"cannot create consumer {name} on {s.jobs_stream}: {exc.description}"
            ) from None
        self._consumers_ready.add(name)
        return name

    def forget_consumer(self, queue: str, priority: int = PRIORITY_NORMAL) -> None:
        """Make the next :meth:`consumer` create the consumer again."""
        self._consumers_ready.discard(self.settings.consumer_name(queue, priority))


def _differences(
    want: js_api.StreamConfig, have: js_api.StreamConfig
) -> list[tuple[str, Any, Any]]:
    """The fields jsqueue sets whose value on the server differs (server defaults ignored)."""
    diffs = []
    for name in _COMPARED:
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


def _plain(value: Any) -> Any:
    """Enum members as their wire value, for messages."""
    return getattr(value, "value", value)
