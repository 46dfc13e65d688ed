"""From call options to a published job: envelope, subject, headers, publish.

A job whose ``eta`` lies in the future is published as a server-side message schedule on
``<prefix>.sched.<queue>.<job id>`` that fires into its queue subject at that time: it waits on
the server, never in a worker's memory. The job id is sent as ``Nats-Msg-Id``, so publishing it
twice within the duplicate window stores it once. Every path that sends jobs (tasks, canvas,
beat, continuations, replays) comes through here, so each publishes its "enqueued" event.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Protocol

from jsqueue.config import (
    PRIORITY_NORMAL,
    Serializer,
    Settings,
    check_job_id,
    check_priority,
    check_queue,
    remembering,
)
from jsqueue.envelope import Envelope, assemble, encode, new_job_id
from jsqueue.errors import ConfigError, PayloadTooLarge
from jsqueue.middleware import prepare
from jsqueue.services.events import enqueued
from jsqueue.wire import Ack, Broker

MSG_ID = "Nats-Msg-Id"
SCHEDULE = "Nats-Schedule"
SCHEDULE_TARGET = "Nats-Schedule-Target"
#: Bytes kept free below max_payload for the subject and headers; a job larger than that has
#: its arguments moved to the object store.
ARGS_SLACK = 4096
#: A job due sooner than this is published straight to its queue instead of scheduled.
SCHEDULE_MIN_DELAY = 0.01


class Route(Protocol):
    """What sending a job needs to know of its task (a registered :class:`jsqueue.Task`)."""

    @property
    def queue(self) -> str: ...
    @property
    def serializer(self) -> Serializer: ...
    @property
    def priority(self) -> int | None: ...
    def check_arguments(self, args: Sequence[Any], kwargs: dict[str, Any]) -> None: ...


def build_envelope(
    settings: Settings,
    task: str,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    queue: str,
    serializer: Serializer,
    job_id: str | None = None,
    countdown: float | None = None,
    eta: datetime | float | None = None,
    expires: datetime | float | None = None,
    headers: dict[str, str] | None = None,
    priority: int | None = None,
    **extra: Any,
) -> Envelope:
    """Validate call options and build the envelope. ``extra`` sets canvas fields (link, chord)."""
    now = time.time()
    due = expiry = None
    if countdown is not None or eta is not None or expires is not None:
        if countdown is not None and eta is not None:
            raise ConfigError("give countdown= or eta=, not both")
        if countdown is not None:
            if countdown < 0:
                raise ConfigError(f"countdown must be >= 0 seconds, not {countdown!r}")
            due = now + countdown
        else:
            due = to_timestamp(eta, "eta")
        expiry = to_timestamp(expires, "expires", relative_to=now)
    if headers is not None and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ConfigError("headers must map str to str")
    job_id = new_job_id() if job_id is None else check_job_id(job_id)
    args = tuple(args)
    kwargs = kwargs or {}
    queue = _check_queue(queue)
    priority = None if priority is None else check_priority(priority)
    if not extra.keys() <= _CANVAS_FIELDS:  # a field twice, or none: the error Envelope gives
        return Envelope(
            id=job_id,
            task=task,
            args=args,
            kwargs=kwargs,
            queue=queue,
            created=now,
            eta=due,
            expires=expiry,
            headers=headers,
            serializer=serializer,
            priority=priority,
            **extra,
        )
    get = extra.get  # what it does not set has the Envelope's default
    return assemble(
        job_id,
        task,
        args,
        kwargs,
        queue,
        now,
        due,
        expiry,
        get("parent_id"),
        get("root_id"),
        get("link", ()),
        get("chord"),
        headers,
        serializer,
        get("replay_of"),
        get("notify"),
        get("args_object"),
        get("on_error", ()),
        priority,
        get("unique_key"),
    )


#: the fields ``build_envelope`` takes in ``extra`` (the canvas's and the services')
_CANVAS_FIELDS = frozenset(
    {
        "parent_id",
        "root_id",
        "link",
        "chord",
        "replay_of",
        "notify",
        "args_object",
        "on_error",
        "unique_key",
    }
)
#: check_queue for the few queues an app sends to, job after job
_check_queue = remembering(check_queue)


def signature_envelope(
    settings: Settings,
    route: Route | None,
    signature: dict[str, Any],
    extra_args: Sequence[Any] = (),
    **fields: Any,
) -> Envelope:
    """The job a signature (as JSON, see :meth:`jsqueue.Signature.to_dict`) describes, with
    ``extra_args`` in front of its own (unless immutable); ``route`` is its task, if known
    here (its queue, serializer and arguments check)."""
    own = tuple(signature.get("args") or ())
    args = own if signature.get("immutable") else (*extra_args, *own)
    kwargs = dict(signature.get("kwargs") or {})
    if route is not None:
        route.check_arguments(args, kwargs)
    options = {k: v for k, v in (signature.get("options") or {}).items() if v is not None}
    # a moment travels as Unix seconds (see Signature.to_dict)
    if isinstance(options.get("eta"), int | float):
        options["eta"] = datetime.fromtimestamp(float(options["eta"]), UTC)
    if "expires_at" in options:
        options["expires"] = datetime.fromtimestamp(float(options.pop("expires_at")), UTC)
    for name in fields:  # what the caller fixes wins (a chord's callback id, say)
        options.pop(name, None)
    queue = options.pop("queue", None) or (route.queue if route else settings.default_queue)
    if options.get("priority") is None and route is not None and route.priority is not None:
        options["priority"] = route.priority
    serializer: Serializer = route.serializer if route else settings.serializer
    if signature.get("on_error") and "on_error" not in fields:
        fields["on_error"] = tuple(signature["on_error"])
    return build_envelope(
        settings,
        str(signature["task"]),
        args,
        kwargs,
        queue=queue,
        serializer=serializer,
        **options,
        **fields,
    )


def to_timestamp(
    value: datetime | float | None, what: str, relative_to: float | None = None
) -> float | None:
    """A Unix timestamp from an aware datetime, or from seconds after ``relative_to``."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ConfigError(
                f"{what} must be timezone-aware (e.g. datetime.now(UTC) + timedelta(...)); a "
                "naive datetime is ambiguous across machines"
            )
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{what} must be an aware datetime or seconds, not {value!r}")
    if relative_to is not None:
        return relative_to + float(value)
    raise ConfigError(f"{what} must be an aware datetime (use countdown= for seconds)")


def rfc3339(timestamp: float) -> str:
    """UTC RFC 3339 with milliseconds, as message schedules want it; rounded up, so that a job
    never fires before its eta."""
    moment = datetime.fromtimestamp(math.ceil(timestamp * 1000) / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def wire_form(settings: Settings, env: Envelope) -> tuple[str, bytes, dict[str, str]]:
    """The (subject, payload, headers) that carry ``env``."""
    payload = encode(env, settings.secret_key)
    headers = {MSG_ID: env.id}
    target = settings.queue_subject(env.queue, level(env))
    if env.eta is not None and env.eta - time.time() > SCHEDULE_MIN_DELAY:
        headers[SCHEDULE] = f"@at {rfc3339(env.eta)}"
        headers[SCHEDULE_TARGET] = target
        return settings.schedule_subject(env.queue, env.id), payload, headers
    return target, payload, headers


def level(env: Envelope) -> int:
    """The priority level ``env`` is sent at."""
    return PRIORITY_NORMAL if env.priority is None else env.priority


async def send(broker: Broker, env: Envelope) -> Ack:
    """Publish one job and wait until the server stored it."""
    env = prepare(broker.middleware, env)
    subject, payload, headers = wire_form(broker.settings, env)
    if len(payload) + ARGS_SLACK > broker.max_payload:
        subject, payload, headers = await _offload(broker, env, payload)
    ack = await broker.publish(subject, payload, headers)
    if broker.settings.events:
        await enqueued(broker, env)
    return ack


async def send_many(broker: Broker, envelopes: Sequence[Envelope]) -> None:
    """Publish many jobs pipelined; return once the server stored every one."""
    messages = []
    envelopes = [prepare(broker.middleware, env) for env in envelopes]
    settings, fits = broker.settings, broker.max_payload - ARGS_SLACK
    for env in envelopes:
        subject, payload, headers = wire_form(settings, env)
        if len(payload) > fits:
            subject, payload, headers = await _offload(broker, env, payload)
        messages.append((subject, payload, headers))
    await broker.publish_many(messages)
    if broker.settings.events:
        for env in envelopes:
            await enqueued(broker, env)


async def _offload(
    broker: Broker, env: Envelope, payload: bytes
) -> tuple[str, bytes, dict[str, str]]:
    """A job too large for one message: the whole envelope goes to the object store, and a
    small one that names it goes on the queue (the worker loads the arguments from it)."""
    limit = broker.settings.max_object_size
    if len(payload) > limit:
        raise PayloadTooLarge(
            f"the job is {len(payload)} bytes: over the server's max_payload "
            f"({broker.max_payload}) a job's arguments go to the object store, up to "
            f"max_object_size ({limit}); pass a reference (a URL or key) instead of the data"
        )
    name = f"args.{env.id}"
    await (await broker.objects()).put(name, payload)
    return wire_form(broker.settings, replace(env, args=(), kwargs={}, args_object=name))


def replayed(env: Envelope, job_id: str) -> Envelope:
    """A copy of a dead-lettered job under ``job_id`` that records the original's id; it runs
    now and does not expire."""
    return replace(
        env, id=job_id, created=time.time(), eta=None, expires=None, replay_of=env.id, notify=None
    )
